//! Kubernetes' validation rules for the two kinds gannet serves, reduced to what gannet uses.
//!
//! Each check reports every problem of the object, each naming the field path, so a person can fix
//! a manifest in one go.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
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
/// Where `loadBalancerSourceRanges` were kept before the field existed; cloud load balancers still
/// read it when the field is empty.
const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

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

/// `spec.type`, for the types that have cluster IPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// Whether every node accepts the service on its node ports.
    fn has_node_ports(self) -> bool {
        matches!(self, Self::NodePort | Self::LoadBalancer)
    }

    fn name(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
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
    /// `None`: reached only through its cluster IPs.
    pub(crate) external: Option<ValidExternal>,
}

#[derive(Debug)]
pub(crate) struct ValidServicePort {
    /// Position in `spec.ports`, to name the field in errors found later.
    pub(crate) index: usize,
    /// `""` when unnamed.
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
    pub(crate) node_port: Option<u16>,
}

/// Addresses with the position of their first mention in the list they come from, to name the
/// field in errors found later; sorted and deduplicated by the map.
pub(crate) type IndexedIps = BTreeMap<IpAddr, usize>;

/// How a Service is reached from outside the cluster, for both families: the join hands each
/// frontend its family's part.
#[derive(Debug)]
pub(crate) struct ValidExternal {
    /// Type `NodePort` or `LoadBalancer`.
    pub(crate) on_node_ports: bool,
    /// `spec.externalIPs`, with their index.
    pub(crate) external_ips: IndexedIps,
    /// `status.loadBalancer.ingress[].ip` of a `LoadBalancer` in VIP mode, with their index.
    pub(crate) load_balancer_ips: IndexedIps,
    pub(crate) local_only: bool,
    pub(crate) health_check_node_port: Option<u16>,
    /// Truncated, sorted and deduplicated.
    pub(crate) source_ranges: Vec<IpNet>,
}

/// Checks a Service as the API server would, for the fields gannet uses.
pub(crate) fn check_service(service: &Service) -> Result<Checked<ValidService>, Vec<FieldError>> {
    check_service_with(service, true)
}

/// [`check_service`]; with `require_allocated` false, a Service without a cluster IP passes (with
/// none in [`ValidService::cluster_ips`]), and so does one without node ports: a control plane
/// allocates them.
pub(crate) fn check_service_with(
    service: &Service,
    require_allocated: bool,
) -> Result<Checked<ValidService>, Vec<FieldError>> {
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let mut errors = Vec::new();

    // `None` when invalid: the checks that depend on the type are then left out.
    let service_type = match non_empty(spec.type_.as_deref()) {
        None | Some("ClusterIP") => Some(ServiceType::ClusterIp),
        Some("NodePort") => Some(ServiceType::NodePort),
        Some("LoadBalancer") => Some(ServiceType::LoadBalancer),
        Some("ExternalName") => {
            return Ok(Checked::Skip(
                "type ExternalName is a DNS alias, not a cluster IP",
            ));
        }
        Some(other) => {
            errors.push(FieldError::at(
                "spec.type",
                format!("type {other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName"),
            ));
            None
        }
    };

    let cluster_ips = match cluster_ip_entries(spec, require_allocated) {
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
    // Kubernetes allocates node ports to NodePort services, and to LoadBalancers unless told not
    // to.
    let node_ports = NodePorts {
        service_type,
        required: require_allocated
            && match service_type {
                Some(ServiceType::NodePort) => true,
                Some(ServiceType::LoadBalancer) => {
                    spec.allocate_load_balancer_node_ports != Some(false)
                }
                Some(ServiceType::ClusterIp) | None => false,
            },
    };
    let ports = check_service_ports(spec, node_ports, &mut errors);
    let session_affinity_timeout = check_session_affinity(spec, &mut errors);
    let external = check_external(service, spec, service_type, &ports, &mut errors);

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Checked::Serve(ValidService {
        namespace: namespace_or_default(service.metadata.namespace.as_deref()).to_owned(),
        name: name.unwrap_or_default().to_owned(),
        cluster_ips,
        ports,
        session_affinity_timeout,
        external,
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

/// What `spec.ports[].nodePort` may be.
#[derive(Clone, Copy)]
struct NodePorts {
    /// `None` when `spec.type` is invalid: node ports are then not checked against it.
    service_type: Option<ServiceType>,
    /// Must be set: there is no control plane to allocate them.
    required: bool,
}

fn check_service_ports(
    spec: &ServiceSpec,
    node_ports: NodePorts,
    errors: &mut Vec<FieldError>,
) -> Vec<ValidServicePort> {
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        errors.push(FieldError::at(
            "spec.ports",
            "at least one port is required",
        ));
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut numbers: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut node_numbers: HashMap<(u16, Protocol), usize> = HashMap::new();
    let mut valid = Vec::with_capacity(ports.len());
    for (index, port) in ports.iter().enumerate() {
        let field = format!("spec.ports[{index}]");
        let number = check_port_number(port.port, &format!("{field}.port"), errors);
        let protocol = check_protocol(
            port.protocol.as_deref(),
            &format!("{field}.protocol"),
            errors,
        );
        let node_field = format!("{field}.nodePort");
        let node_port = check_node_port(port.node_port, &node_field, node_ports, errors);
        if let (Some(node_port), Some(protocol)) = (node_port, protocol) {
            match node_numbers.entry((node_port, protocol)) {
                Entry::Occupied(first) => errors.push(FieldError::at(
                    node_field,
                    format!(
                        "duplicate nodePort {node_port}/{protocol} (also spec.ports[{}])",
                        first.get()
                    ),
                )),
                Entry::Vacant(slot) => {
                    slot.insert(index);
                }
            }
        }

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
                    node_port,
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

/// `spec.ports[].nodePort`; 0 is unset, as in Kubernetes. The API server also keeps it in the
/// cluster's node port range (30000-32767 by default); the control plane that allocates node
/// ports checks that, a manifest may use any port.
fn check_node_port(
    value: Option<i32>,
    field: &str,
    node_ports: NodePorts,
    errors: &mut Vec<FieldError>,
) -> Option<u16> {
    let Some(value) = value.filter(|&value| value != 0) else {
        if node_ports.required
            && let Some(service_type) = node_ports.service_type
        {
            errors.push(FieldError::at(
                field,
                format!(
                    "must be set for type {}: gannetd does not allocate node ports without a \
                     control plane",
                    service_type.name()
                ),
            ));
        }
        return None;
    };
    if let Some(service_type) = node_ports.service_type
        && !service_type.has_node_ports()
    {
        errors.push(FieldError::at(
            field,
            format!(
                "may not be set when type is {}: only NodePort and LoadBalancer services have \
                 node ports",
                service_type.name()
            ),
        ));
        return None;
    }
    let number = u16::try_from(value).ok();
    if number.is_none() {
        errors.push(FieldError::at(
            field,
            format!("port {value} is out of range 1..=65535"),
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

/// The fields that say how a Service is reached from outside the cluster. `None` when it is not:
/// a `ClusterIP` service without external or load-balancer IPs.
fn check_external(
    service: &Service,
    spec: &ServiceSpec,
    service_type: Option<ServiceType>,
    ports: &[ValidServicePort],
    errors: &mut Vec<FieldError>,
) -> Option<ValidExternal> {
    let external_ips = check_external_ips(spec, errors);
    let has_external_ips = !spec.external_ips.as_deref().unwrap_or_default().is_empty();
    let policy = check_external_traffic_policy(spec, service_type, has_external_ips, errors);
    let on_node_ports = service_type.is_some_and(ServiceType::has_node_ports);
    let health_check_node_port = policy
        .and_then(|local| check_health_check_node_port(spec, service_type, local, ports, errors));
    let source_ranges = check_source_ranges(service, spec, service_type, errors);
    let mut load_balancer_ips = check_load_balancer_ingress(service, errors);
    if service_type != Some(ServiceType::LoadBalancer) {
        // Left over from an earlier type, or written by hand: not a load balancer of this
        // service.
        load_balancer_ips.clear();
    }

    let reachable = on_node_ports || !external_ips.is_empty() || !load_balancer_ips.is_empty();
    reachable.then(|| ValidExternal {
        on_node_ports,
        external_ips,
        load_balancer_ips,
        // Kubernetes honours Local for node ports and the addresses of such services only.
        local_only: on_node_ports && policy == Some(true),
        health_check_node_port,
        source_ranges,
    })
}

/// `spec.externalIPs`, which the API server checks as IP addresses that can be routed to a node.
fn check_external_ips(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> IndexedIps {
    let mut ips = IndexedIps::new();
    for (i, text) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        match text.parse::<IpAddr>() {
            Err(_) => errors.push(FieldError::at(
                field,
                format!("{text:?} is not an IP address"),
            )),
            Ok(ip) => match special_range(ip) {
                Some(range) => {
                    errors.push(FieldError::at(
                        field,
                        format!("{text:?} may not be {range}"),
                    ));
                }
                None => {
                    ips.entry(ip).or_insert(i);
                }
            },
        }
    }
    ips
}

/// The ranges that the API server refuses as external IPs, as they name no node.
fn special_range(ip: IpAddr) -> Option<&'static str> {
    let (link_local, link_local_multicast) = match ip {
        IpAddr::V4(v4) => (v4.is_link_local(), v4.octets()[..3] == [224, 0, 0]),
        IpAddr::V6(v6) => (
            v6.segments()[0] & 0xffc0 == 0xfe80,
            v6.segments()[0] & 0xff0f == 0xff02,
        ),
    };
    if ip.is_unspecified() {
        Some("unspecified (0.0.0.0, ::)")
    } else if ip.is_loopback() {
        Some("in the loopback range (127.0.0.0/8, ::1/128)")
    } else if link_local {
        Some("in the link-local range (169.254.0.0/16, fe80::/10)")
    } else if link_local_multicast {
        Some("in the link-local multicast range (224.0.0.0/24, ff02::/16)")
    } else {
        None
    }
}

/// `spec.externalTrafficPolicy`: `Some(true)` for Local, `Some(false)` for Cluster or unset,
/// `None` when invalid.
fn check_external_traffic_policy(
    spec: &ServiceSpec,
    service_type: Option<ServiceType>,
    has_external_ips: bool,
    errors: &mut Vec<FieldError>,
) -> Option<bool> {
    const FIELD: &str = "spec.externalTrafficPolicy";
    let Some(text) = non_empty(spec.external_traffic_policy.as_deref()) else {
        return Some(false);
    };
    let local = match text {
        "Local" => true,
        "Cluster" => false,
        other => {
            errors.push(FieldError::at(
                FIELD,
                format!("{other:?} is not Cluster or Local"),
            ));
            return None;
        }
    };
    // The API server's rule: the field belongs to services reachable from outside (it defaults
    // it to Cluster for them), and a ClusterIP service is only with external IPs.
    if let Some(service_type) = service_type
        && !service_type.has_node_ports()
        && !has_external_ips
    {
        errors.push(FieldError::at(
            FIELD,
            format!(
                "may only be set for a service reachable from outside the cluster (type \
                 NodePort or LoadBalancer, or with spec.externalIPs), not type {} without \
                 external IPs",
                service_type.name()
            ),
        ));
        return None;
    }
    Some(local)
}

/// `spec.healthCheckNodePort`; 0 is unset. `local`: the policy is Local.
fn check_health_check_node_port(
    spec: &ServiceSpec,
    service_type: Option<ServiceType>,
    local: bool,
    ports: &[ValidServicePort],
    errors: &mut Vec<FieldError>,
) -> Option<u16> {
    const FIELD: &str = "spec.healthCheckNodePort";
    let value = spec.health_check_node_port.filter(|&value| value != 0)?;
    if let Some(service_type) = service_type
        && !(service_type == ServiceType::LoadBalancer && local)
    {
        errors.push(FieldError::at(
            FIELD,
            "may only be set when type is LoadBalancer and externalTrafficPolicy is Local",
        ));
        return None;
    }
    let Ok(number) = u16::try_from(value) else {
        errors.push(FieldError::at(
            FIELD,
            format!("port {value} is out of range 1..=65535"),
        ));
        return None;
    };
    // Kubernetes allocates both from one range: a port is one or the other.
    if let Some(port) = ports.iter().find(|port| port.node_port == Some(number)) {
        errors.push(FieldError::at(
            FIELD,
            format!(
                "port {number} is already the nodePort of spec.ports[{}]",
                port.index
            ),
        ));
        return None;
    }
    Some(number)
}

/// `spec.loadBalancerSourceRanges`, or the older annotation when the field is empty, as the API
/// server checks them (padding spaces allowed); truncated to their prefix.
fn check_source_ranges(
    service: &Service,
    spec: &ServiceSpec,
    service_type: Option<ServiceType>,
    errors: &mut Vec<FieldError>,
) -> Vec<IpNet> {
    let listed = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    let annotation = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(SOURCE_RANGES_ANNOTATION));
    // (field of the whole, (field, text) of each range)
    let (field, entries): (String, Vec<(String, &str)>) = if !listed.is_empty() {
        let entries = listed
            .iter()
            .enumerate()
            .map(|(i, text)| (format!("spec.loadBalancerSourceRanges[{i}]"), text.trim()))
            .collect();
        ("spec.loadBalancerSourceRanges".to_owned(), entries)
    } else if let Some(annotation) = annotation {
        let field = format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION:?}]");
        let text = annotation.trim();
        let entries = if text.is_empty() {
            Vec::new()
        } else {
            text.split(',')
                .map(|range| (field.clone(), range.trim()))
                .collect()
        };
        (field, entries)
    } else {
        return Vec::new();
    };
    if let Some(service_type) = service_type
        && service_type != ServiceType::LoadBalancer
    {
        errors.push(FieldError::at(
            field,
            format!(
                "may only be set when type is LoadBalancer, not {}",
                service_type.name()
            ),
        ));
        return Vec::new();
    }
    let mut ranges = Vec::with_capacity(entries.len());
    for (field, text) in entries {
        match text.parse::<IpNet>() {
            Ok(range) => ranges.push(range.trunc()),
            Err(_) => errors.push(FieldError::at(
                field,
                format!("{text:?} is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32"),
            )),
        }
    }
    ranges.sort_unstable();
    ranges.dedup();
    ranges
}

/// `status.loadBalancer.ingress[]`: the IPs of entries in VIP mode (the default), with their
/// index. Entries with only a hostname have none; entries in Proxy mode are left out as
/// kube-proxy leaves them out: that load balancer forwards to the nodes itself, and clients in
/// the cluster must go through it.
fn check_load_balancer_ingress(service: &Service, errors: &mut Vec<FieldError>) -> IndexedIps {
    let ingress = service
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|load_balancer| load_balancer.ingress.as_deref())
        .unwrap_or_default();
    let mut ips = IndexedIps::new();
    for (i, entry) in ingress.iter().enumerate() {
        let field = format!("status.loadBalancer.ingress[{i}]");
        let ip = non_empty(entry.ip.as_deref()).and_then(|text| match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errors.push(FieldError::at(
                    format!("{field}.ip"),
                    format!("{text:?} is not an IP address"),
                ));
                None
            }
        });
        let vip = match non_empty(entry.ip_mode.as_deref()) {
            None | Some("VIP") => true,
            Some("Proxy") => false,
            Some(other) => {
                errors.push(FieldError::at(
                    format!("{field}.ipMode"),
                    format!("{other:?} is not VIP or Proxy"),
                ));
                false
            }
        };
        match ip {
            Some(ip) if vip => {
                ips.entry(ip).or_insert(i);
            }
            Some(ip) => tracing::debug!(
                service = meta_label("Service", &service.metadata),
                %ip,
                "load balancer IP in Proxy mode: the load balancer forwards, not served as a VIP"
            ),
            None => {}
        }
    }
    ips
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
    /// The endpoints that can take traffic, ready or serving and terminating, in slice order.
    pub(crate) endpoints: Vec<ValidEndpoint>,
}

/// An endpoint that can take traffic: ready, or (only used when no endpoint is ready) serving and
/// terminating. Endpoints that are neither are not kept.
#[derive(Debug)]
pub(crate) struct ValidEndpoint {
    /// The first address.
    pub(crate) ip: IpAddr,
    /// `false`: serving and terminating.
    pub(crate) ready: bool,
    /// `nodeName`, when set.
    pub(crate) node_name: Option<String>,
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

    let endpoints = family
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
            endpoints,
        })),
        _ => Err(errors),
    }
}

/// Checks every address and returns the endpoints that can take traffic, each by its first
/// address. Addresses of one endpoint are fungible, and like kube-proxy gannet uses only the first
/// (kubernetes/kubernetes#106267).
fn check_endpoints(
    slice: &EndpointSlice,
    family: Family,
    errors: &mut Vec<FieldError>,
) -> Vec<ValidEndpoint> {
    let mut usable = Vec::new();
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
        // Kubernetes: "ready: nil should be interpreted as true", serving "nil should be
        // interpreted as ... the same as ready", terminating "nil should be interpreted as false".
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions
            .and_then(|conditions| conditions.ready)
            .unwrap_or(true);
        let serving = conditions
            .and_then(|conditions| conditions.serving)
            .unwrap_or(ready);
        let terminating = conditions
            .and_then(|conditions| conditions.terminating)
            .unwrap_or(false);
        if (ready || (serving && terminating))
            && let Some(ip) = first
        {
            usable.push(ValidEndpoint {
                ip,
                ready,
                node_name: non_empty(endpoint.node_name.as_deref()).map(str::to_owned),
            });
        }
    }
    usable
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
