//! Services: cluster IPs, ports, node ports, session affinity.

use super::external::*;
use super::*;

/// `spec.type`, for the types that have cluster IPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// Whether every node accepts the service on its node ports.
    pub(super) fn has_node_ports(self) -> bool {
        matches!(self, Self::NodePort | Self::LoadBalancer)
    }

    pub(super) fn name(self) -> &'static str {
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

pub(super) enum ClusterIps<'a> {
    Headless,
    /// (field path, text) of each address to parse.
    Entries(Vec<(String, &'a str)>),
}

/// Picks `spec.clusterIPs` when present (dual-stack), else `spec.clusterIP`, and recognises
/// headless services.
pub(super) fn cluster_ip_entries(
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

pub(super) fn parse_cluster_ips(
    entries: &[(String, &str)],
    errors: &mut Vec<FieldError>,
) -> Vec<IpAddr> {
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
pub(super) struct NodePorts {
    /// `None` when `spec.type` is invalid: node ports are then not checked against it.
    service_type: Option<ServiceType>,
    /// Must be set: there is no control plane to allocate them.
    required: bool,
}

pub(super) fn check_service_ports(
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

pub(super) fn check_port_number(
    port: i32,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<u16> {
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
pub(super) fn check_node_port(
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
pub(super) fn check_protocol(
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

pub(super) fn check_session_affinity(
    spec: &ServiceSpec,
    errors: &mut Vec<FieldError>,
) -> Option<u32> {
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
