//! How a Service is reached from outside: external IPs, traffic policy, health check node port,
//! source ranges, load-balancer ingress.

use super::service::*;
use super::*;

/// The fields that say how a Service is reached from outside the cluster. `None` when it is not:
/// a `ClusterIP` service without external or load-balancer IPs.
pub(super) fn check_external(
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
pub(super) fn check_external_ips(spec: &ServiceSpec, errors: &mut Vec<FieldError>) -> IndexedIps {
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
pub(super) fn special_range(ip: IpAddr) -> Option<&'static str> {
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
pub(super) fn check_external_traffic_policy(
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
pub(super) fn check_health_check_node_port(
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
pub(super) fn check_source_ranges(
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
pub(super) fn check_load_balancer_ingress(
    service: &Service,
    errors: &mut Vec<FieldError>,
) -> IndexedIps {
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
