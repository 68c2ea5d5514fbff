//! Kubernetes' validation rules for the two kinds gannet serves, reduced to what gannet uses.
//!
//! Each check reports every problem of the object, each naming the field path, so a person can fix
//! a manifest in one go.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::FieldError;
use crate::model::Protocol;

/// The label by which an `EndpointSlice` names the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const DEFAULT_NAMESPACE: &str = "default";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// Kubernetes' upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds` (1 day).
const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// The outcome of checking an object that has no errors.
#[derive(Debug)]
pub(crate) enum Checked<T> {
    /// gannet balances this object.
    Serve(T),
    /// A valid object that gannet has nothing to do for; the reason is logged.
    Skip(&'static str),
}

/// `Service default/web`; just the kind when the object has no name.
pub(crate) fn object_label(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    match name.filter(|name| !name.is_empty()) {
        Some(name) => format!("{kind} {}/{name}", namespace_or_default(namespace)),
        None => kind.to_owned(),
    }
}

pub(crate) fn meta_label(kind: &str, meta: &ObjectMeta) -> String {
    object_label(kind, meta.namespace.as_deref(), meta.name.as_deref())
}

fn namespace_or_default(namespace: Option<&str>) -> &str {
    namespace
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

/// An empty string is how an unset optional string round-trips through Go; Kubernetes treats both
/// alike.
fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|value| !value.is_empty())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// A Service that gannet balances.
#[derive(Debug)]
pub(crate) struct ValidService {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// One address, or one per family for dual-stack services; primary first.
    pub(crate) cluster_ips: Vec<IpAddr>,
    pub(crate) ports: Vec<ValidServicePort>,
    pub(crate) session_affinity_timeout: Option<u32>,
}

#[derive(Debug)]
pub(crate) struct ValidServicePort {
    /// Position in `spec.ports`, to name the field in errors found later.
    pub(crate) index: usize,
    /// `""` when unnamed.
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
}

/// Checks a Service as the API server would, for the fields gannet uses.
pub(crate) fn check_service(service: &Service) -> Result<Checked<ValidService>, Vec<FieldError>> {
    check_service_with(service, true)
}

/// [`check_service`]; with `require_cluster_ip` false, a Service without a cluster IP passes (with
/// none in [`ValidService::cluster_ips`]): a control plane allocates one.
pub(crate) fn check_service_with(
    service: &Service,
    require_cluster_ip: bool,
) -> Result<Checked<ValidService>, Vec<FieldError>> {
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let mut errors = Vec::new();

    match non_empty(spec.type_.as_deref()) {
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer") => {}
        Some("ExternalName") => {
            return Ok(Checked::Skip(
                "type ExternalName is a DNS alias, not a cluster IP",
            ));
        }
        Some(other) => errors.push(FieldError::at(
            "spec.type",
            format!("type {other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName"),
        )),
    }

    let cluster_ips = match cluster_ip_entries(spec, require_cluster_ip) {
        Ok(ClusterIps::Headless) => {
            return Ok(Checked::Skip(
                "headless (clusterIP None): clients resolve the endpoints through DNS",
            ));
        }
        Ok(ClusterIps::Entries(entries)) => parse_cluster_ips(&entries, &mut errors),
        Err(error) => {
            errors.push(error);
            Vec::new()
        }
    };

    let name = non_empty(service.metadata.name.as_deref());
    if name.is_none() {
        errors.push(FieldError::at("metadata.name", "must be set"));
    }
    let ports = check_service_ports(spec, &mut errors);
    let session_affinity_timeout = check_session_affinity(spec, &mut errors);

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Checked::Serve(ValidService {
        namespace: namespace_or_default(service.metadata.namespace.as_deref()).to_owned(),
        name: name.unwrap_or_default().to_owned(),
        cluster_ips,
        ports,
        session_affinity_timeout,
    }))
}

enum ClusterIps<'a> {
    Headless,
    /// (field path, text) of each address to parse.
    Entries(Vec<(String, &'a str)>),
}

/// Picks `spec.clusterIPs` when present (dual-stack), else `spec.clusterIP`, and recognises
/// headless services.
fn cluster_ip_entries(
    spec: &ServiceSpec,
    require_cluster_ip: bool,
) -> Result<ClusterIps<'_>, FieldError> {
    let cluster_ip = non_empty(spec.cluster_ip.as_deref());
    let cluster_ips = spec.cluster_ips.as_deref().unwrap_or_default();

    let entries: Vec<(String, &str)> = if let Some(first) = cluster_ips.first() {
        if let Some(cluster_ip) = cluster_ip
            && cluster_ip != first
        {
            return Err(FieldError::at(
                "spec.clusterIPs[0]",
                format!("{first:?} must equal spec.clusterIP ({cluster_ip:?})"),
            ));
        }
        cluster_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect()
    } else if let Some(cluster_ip) = cluster_ip {
        vec![("spec.clusterIP".to_owned(), cluster_ip)]
    } else if !require_cluster_ip {
        Vec::new()
    } else {
        return Err(FieldError::at(
            "spec.clusterIP",
            "must be set: gannetd does not allocate ClusterIPs without a control plane",
        ));
    };

    if entries.iter().any(|(_, ip)| *ip == "None") {
        if entries.len() > 1 {
            return Err(FieldError::at(
                "spec.clusterIPs",
                "\"None\" (headless) must be the only entry",
            ));
        }
        return Ok(ClusterIps::Headless);
    }
    Ok(ClusterIps::Entries(entries))
}

fn parse_cluster_ips(entries: &[(String, &str)], errors: &mut Vec<FieldError>) -> Vec<IpAddr> {
    if entries.len() > 2 {
        errors.push(FieldError::at(
            "spec.clusterIPs",
            format!(
                "has {} entries: at most two (one IPv4 and one IPv6) are allowed",
                entries.len()
            ),
        ));
        return Vec::new();
    }
    let mut ips = Vec::with_capacity(entries.len());
    for (field, text) in entries {
        match text.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => errors.push(FieldError::at(
                field.clone(),
                format!("{text:?} is not an IP address"),
            )),
        }
    }
    if let [first, second] = ips[..]
        && Family::of(first) == Family::of(second)
    {
        errors.push(FieldError::at(
            "spec.clusterIPs",
            format!(
                "{first} and {second} are both {}: \
                 a dual-stack service has one IPv4 and one IPv6 address",
                Family::of(first).name()
            ),
        ));
    }
    ips
}

fn check_service_ports(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> Vec<ValidServicePort> {
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        errors.push(FieldError::at(
            "spec.ports",
            "at least one port is required",
        ));
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut numbers: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut valid = Vec::with_capacity(ports.len());
    for (index, port) in ports.iter().enumerate() {
        let field = format!("spec.ports[{index}]");
        let number = check_port_number(port.port, &format!("{field}.port"), errors);
        let protocol = check_protocol(
            port.protocol.as_deref(),
            &format!("{field}.protocol"),
            errors,
        );

        let name = non_empty(port.name.as_deref()).unwrap_or_default();
        if name.is_empty() {
            if ports.len() > 1 {
                errors.push(FieldError::at(
                    format!("{field}.name"),
                    "must be set when the service has more than one port",
                ));
            }
        } else {
            match names.entry(name) {
                Entry::Occupied(first) => errors.push(FieldError::at(
                    format!("{field}.name"),
                    format!(
                        "duplicate port name {name:?} (also spec.ports[{}])",
                        first.get()
                    ),
                )),
                Entry::Vacant(slot) => {
                    slot.insert(index);
                }
            }
        }

        let (Some(number), Some(protocol)) = (number, protocol) else {
            continue;
        };
        match numbers.entry((number, protocol)) {
            Entry::Occupied(first) => errors.push(FieldError::at(
                field,
                format!(
                    "duplicate port {number}/{protocol} (also spec.ports[{}])",
                    first.get()
                ),
            )),
            Entry::Vacant(slot) => {
                slot.insert(index);
                valid.push(ValidServicePort {
                    index,
                    name: name.to_owned(),
                    port: number,
                    protocol,
                });
            }
        }
    }
    valid
}

fn check_port_number(port: i32, field: &str, errors: &mut Vec<FieldError>) -> Option<u16> {
    let number = u16::try_from(port).ok().filter(|&number| number != 0);
    if number.is_none() {
        errors.push(FieldError::at(
            field,
            format!("port {port} is out of range 1..=65535"),
        ));
    }
    number
}

/// `None` (unset) is TCP, as Kubernetes defaults it.
fn check_protocol(
    protocol: Option<&str>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Protocol> {
    let Some(text) = non_empty(protocol) else {
        return Some(Protocol::Tcp);
    };
    let protocol = Protocol::from_k8s(text);
    if protocol.is_none() {
        errors.push(FieldError::at(
            field,
            format!("protocol {text} is not supported (gannet balances TCP and UDP)"),
        ));
    }
    protocol
}

fn check_session_affinity(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> Option<u32> {
    match non_empty(spec.session_affinity.as_deref()) {
        None | Some("None") => {
            if spec.session_affinity_config.is_some() {
                errors.push(FieldError::at(
                    "spec.sessionAffinityConfig",
                    "must not be set when sessionAffinity is None (set sessionAffinity: ClientIP)",
                ));
            }
            None
        }
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref())
                .and_then(|client_ip| client_ip.timeout_seconds);
            let Some(timeout) = timeout else {
                return Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
            };
            let valid = u32::try_from(timeout)
                .ok()
                .filter(|seconds| (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(seconds));
            if valid.is_none() {
                errors.push(FieldError::at(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{timeout} is out of range 1..={MAX_AFFINITY_TIMEOUT_SECONDS} seconds"),
                ));
            }
            valid
        }
        Some(other) => {
            errors.push(FieldError::at(
                "spec.sessionAffinity",
                format!("{other:?} is not None or ClientIP"),
            ));
            None
        }
    }
}

/// An `EndpointSlice` that can feed backends.
#[derive(Debug)]
pub(crate) struct ValidSlice {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// The Service named by the `kubernetes.io/service-name` label.
    pub(crate) service_name: String,
    pub(crate) family: Family,
    pub(crate) ports: Vec<ValidSlicePort>,
    /// The address of each ready endpoint, in slice order.
    pub(crate) ready: Vec<IpAddr>,
}

#[derive(Debug)]
pub(crate) struct ValidSlicePort {
    /// `""` when unnamed.
    pub(crate) name: String,
    /// `None`: the slice does not say, so the port cannot carry traffic for gannet.
    pub(crate) port: Option<u16>,
    pub(crate) protocol: Protocol,
}

/// Checks an `EndpointSlice` as the API server would, for the fields gannet uses.
pub(crate) fn check_slice(slice: &EndpointSlice) -> Result<Checked<ValidSlice>, Vec<FieldError>> {
    let mut errors = Vec::new();

    let family = match slice.address_type.as_str() {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        "FQDN" => {
            return Ok(Checked::Skip(
                "addressType FQDN: gannet balances to IP addresses only",
            ));
        }
        other => {
            errors.push(FieldError::at(
                "addressType",
                format!("{other:?} is not IPv4, IPv6 or FQDN"),
            ));
            None
        }
    };

    let name = non_empty(slice.metadata.name.as_deref());
    if name.is_none() {
        errors.push(FieldError::at("metadata.name", "must be set"));
    }
    let service_name = non_empty(
        slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
            .map(String::as_str),
    );
    if service_name.is_none() {
        errors.push(FieldError::at(
            format!("metadata.labels[{SERVICE_NAME_LABEL:?}]"),
            "must be set to the name of the Service this slice belongs to",
        ));
    }

    let ready = family
        .map(|family| check_endpoints(slice, family, &mut errors))
        .unwrap_or_default();
    let ports = check_slice_ports(slice, &mut errors);

    match (family, errors.is_empty()) {
        (Some(family), true) => Ok(Checked::Serve(ValidSlice {
            namespace: namespace_or_default(slice.metadata.namespace.as_deref()).to_owned(),
            name: name.unwrap_or_default().to_owned(),
            service_name: service_name.unwrap_or_default().to_owned(),
            family,
            ports,
            ready,
        })),
        _ => Err(errors),
    }
}

/// Checks every address and returns the first address of each ready endpoint. Addresses of one
/// endpoint are fungible, and like kube-proxy gannet uses only the first
/// (kubernetes/kubernetes#106267).
fn check_endpoints(
    slice: &EndpointSlice,
    family: Family,
    errors: &mut Vec<FieldError>,
) -> Vec<IpAddr> {
    let mut ready = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        if endpoint.addresses.is_empty() {
            errors.push(FieldError::at(
                format!("endpoints[{i}].addresses"),
                "at least one address is required",
            ));
        }
        let mut first = None;
        for (j, text) in endpoint.addresses.iter().enumerate() {
            match text.parse::<IpAddr>() {
                Ok(ip) if Family::of(ip) == family => {
                    first.get_or_insert(ip);
                }
                _ => errors.push(FieldError::at(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!(
                        "{text:?} is not an {} address (addressType {})",
                        family.name(),
                        family.name()
                    ),
                )),
            }
        }
        // Kubernetes: "ready: nil should be interpreted as true".
        let is_ready = endpoint
            .conditions
            .as_ref()
            .and_then(|conditions| conditions.ready)
            .unwrap_or(true);
        if is_ready && let Some(ip) = first {
            ready.push(ip);
        }
    }
    ready
}

fn check_slice_ports(slice: &EndpointSlice, errors: &mut Vec<FieldError>) -> Vec<ValidSlicePort> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut valid = Vec::with_capacity(ports.len());
    for (k, port) in ports.iter().enumerate() {
        let field = format!("ports[{k}]");
        // Unset means "all ports" to some consumers; gannet cannot send traffic to such a port.
        let mut number_valid = true;
        let number = port.port.and_then(|number| {
            let checked = check_port_number(number, &format!("{field}.port"), errors);
            number_valid = checked.is_some();
            checked
        });
        let protocol = check_protocol(
            port.protocol.as_deref(),
            &format!("{field}.protocol"),
            errors,
        );
        let Some(protocol) = protocol.filter(|_| number_valid) else {
            continue;
        };
        let name = non_empty(port.name.as_deref()).unwrap_or_default();
        match names.entry(name) {
            Entry::Occupied(first) => errors.push(FieldError::at(
                format!("{field}.name"),
                format!("duplicate port name {name:?} (also ports[{}])", first.get()),
            )),
            Entry::Vacant(slot) => {
                slot.insert(k);
                valid.push(ValidSlicePort {
                    name: name.to_owned(),
                    port: number,
                    protocol,
                });
            }
        }
    }
    valid
}
