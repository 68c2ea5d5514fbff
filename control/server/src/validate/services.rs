//! Services: gannet-k8s checks what gannetd also checks in manifests (ports, node ports, IPs,
//! policies, source ranges); here the rest, as the API server: names, target ports, internal
//! traffic policy, IP families, selector, load-balancer status.

use gannet_k8s::{ClusterIp, FieldProblem, check_service_object};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{is_dns_subdomain, is_port_name, validate_labels};
use super::problem;

fn service_type(spec: &ServiceSpec) -> &str {
    spec.type_
        .as_deref()
        .filter(|type_| !type_.is_empty())
        .unwrap_or("ClusterIP")
}

pub(super) fn validate_service(service: &Service, problems: &mut Vec<FieldProblem>) {
    problems.extend(check_service_object(service, ClusterIp::Allocated));
    let Some(spec) = &service.spec else {
        return;
    };
    let type_ = service_type(spec);
    if type_ == "ExternalName" {
        if spec
            .external_name
            .as_deref()
            .is_none_or(|name| !is_dns_subdomain(name))
        {
            problems.push(problem(
                "spec.externalName",
                "must be a DNS name for type ExternalName",
            ));
        }
    } else if spec
        .external_name
        .as_deref()
        .is_some_and(|name| !name.is_empty())
    {
        problems.push(problem(
            "spec.externalName",
            format!("may only be set for type ExternalName, not {type_}"),
        ));
    }

    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        // gannet-k8s checks the ports of the Services gannetd serves; headless and ExternalName
        // ones it skips need a valid port all the same (the registry makes it the default
        // target port).
        let port_field = format!("{field}.port");
        if !(1..=65535).contains(&port.port)
            && !problems
                .iter()
                .any(|found| found.field.as_deref() == Some(port_field.as_str()))
        {
            problems.push(problem(
                port_field,
                format!("port {} is out of range 1..=65535", port.port),
            ));
        }
        if let Some(name) = port.name.as_deref().filter(|name| !name.is_empty())
            && !is_port_name(name)
        {
            problems.push(problem(
                format!("{field}.name"),
                format!("{name:?} is not a valid port name (IANA_SVC_NAME: at most 15 lowercase letters, digits or '-', with a letter)"),
            ));
        }
        match &port.target_port {
            Some(IntOrString::Int(number)) if !(1..=65535).contains(number) => {
                problems.push(problem(
                    format!("{field}.targetPort"),
                    format!("port {number} is out of range 1..=65535"),
                ));
            }
            // Kubernetes also accepts a number written as a string.
            Some(IntOrString::String(name))
                if !is_port_name(name) && name.parse::<u16>().is_err() =>
            {
                problems.push(problem(
                    format!("{field}.targetPort"),
                    format!("{name:?} is neither a port number nor a valid port name"),
                ));
            }
            _ => {}
        }
    }

    match spec
        .internal_traffic_policy
        .as_deref()
        .filter(|value| !value.is_empty())
    {
        None | Some("Cluster" | "Local") => {}
        Some(other) => problems.push(problem(
            "spec.internalTrafficPolicy",
            format!("{other:?} is not Cluster or Local"),
        )),
    }

    match spec.ip_family_policy.as_deref().filter(|p| !p.is_empty()) {
        None | Some("SingleStack" | "PreferDualStack" | "RequireDualStack") => {}
        Some(other) => problems.push(problem(
            "spec.ipFamilyPolicy",
            format!("{other:?} is not SingleStack, PreferDualStack or RequireDualStack"),
        )),
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    for (i, family) in families.iter().enumerate() {
        if !matches!(family.as_str(), "IPv4" | "IPv6") {
            problems.push(problem(
                format!("spec.ipFamilies[{i}]"),
                format!("{family:?} is not IPv4 or IPv6"),
            ));
        }
    }
    if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
        problems.push(problem(
            "spec.ipFamilies",
            "at most one IPv4 and one IPv6 family",
        ));
    }
    validate_labels(spec.selector.as_ref(), "spec.selector", problems);

    let ingress = service
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    // gannet-k8s checks the addresses and modes.
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        if entry.ip.is_none() && entry.hostname.is_none() {
            problems.push(problem(
                format!("status.loadBalancer.ingress[{i}]"),
                "needs an ip or a hostname",
            ));
        }
    }
}

pub(super) fn validate_protocol(
    protocol: Option<&str>,
    field: String,
    problems: &mut Vec<FieldProblem>,
) {
    if let Some(protocol) = protocol.filter(|p| !p.is_empty())
        && !matches!(protocol, "TCP" | "UDP" | "SCTP")
    {
        problems.push(problem(
            field,
            format!("{protocol:?} is not TCP, UDP or SCTP"),
        ));
    }
}
