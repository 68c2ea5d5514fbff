//! Validation of objects as they arrive, before anything is allocated or written: every problem of
//! an object is reported, each naming its field. Service and `EndpointSlice` rules that gannetd
//! applies to manifests come from `gannet-k8s` (ports, node ports, cluster, external and
//! load-balancer IPs, external traffic policy, health check port, source ranges), so both paths
//! agree; the rest (names, target ports, internal traffic policy, Pods, Nodes) follows the
//! Kubernetes API server.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use gannet_api::{Kind, Object};
use gannet_k8s::{ClusterIp, FieldProblem, check_endpoint_slice_object, check_service_object};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, Pod, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The annotation holding a node's VXLAN device MAC address (defined once, with the agent's
/// reading of Nodes).
pub use gannet_k8s::VTEP_MAC_ANNOTATION;

pub(crate) fn problem(field: impl Into<String>, message: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: Some(field.into()),
        message: message.into(),
    }
}

/// Every problem of `object`.
pub(crate) fn validate(object: &Object) -> Vec<FieldProblem> {
    let mut problems = validate_meta(object.kind(), object.metadata());
    match object {
        Object::Service(service) => validate_service(service, &mut problems),
        Object::EndpointSlice(slice) => problems.extend(check_endpoint_slice_object(slice)),
        Object::Pod(pod) => validate_pod(pod, &mut problems),
        Object::Node(node) => validate_node(node, &mut problems),
        Object::Lease(lease) => validate_lease(lease, &mut problems),
    }
    problems
}

/// As the API server: a duration and a transition count that are not negative (duration above 0).
fn validate_lease(lease: &Lease, problems: &mut Vec<FieldProblem>) {
    let Some(spec) = &lease.spec else { return };
    if let Some(seconds) = spec.lease_duration_seconds
        && seconds <= 0
    {
        problems.push(problem(
            "spec.leaseDurationSeconds",
            format!("{seconds}: must be greater than 0"),
        ));
    }
    if let Some(transitions) = spec.lease_transitions
        && transitions < 0
    {
        problems.push(problem(
            "spec.leaseTransitions",
            format!("{transitions}: must not be negative"),
        ));
    }
}

/// RFC 1123 label: at most 63 lowercase alphanumerics or `-`, starting and ending alphanumeric.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// RFC 1035 label (Service names): a DNS label that starts with a letter.
fn is_dns1035_label(text: &str) -> bool {
    is_dns_label(text) && text.starts_with(|c: char| c.is_ascii_lowercase())
}

/// `IANA_SVC_NAME`: at most 15 lowercase alphanumerics or `-`, with a letter, no `--`, not
/// starting or ending with `-`.
pub(crate) fn is_port_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 15
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && text.bytes().any(|b| b.is_ascii_lowercase())
        && !text.contains("--")
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A label value: at most 63 alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric.
fn is_label_value(text: &str) -> bool {
    text.is_empty()
        || (text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name like a label value.
fn is_label_key(text: &str) -> bool {
    let (prefix, name) = match text.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, text),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

fn validate_labels(
    labels: Option<&std::collections::BTreeMap<String, String>>,
    field: &str,
    problems: &mut Vec<FieldProblem>,
) {
    for (key, value) in labels.into_iter().flatten() {
        if !is_label_key(key) {
            problems.push(problem(
                format!("{field}[{key:?}]"),
                "is not a valid label key (a DNS subdomain prefix and '/', then at most 63 \
                 alphanumerics, '-', '_' or '.')",
            ));
        }
        if !is_label_value(value) {
            problems.push(problem(
                format!("{field}[{key:?}]"),
                format!(
                    "{value:?} is not a valid label value (at most 63 alphanumerics, '-', '_' or \
                     '.', starting and ending alphanumeric)"
                ),
            ));
        }
    }
}

fn validate_meta(kind: Kind, meta: &ObjectMeta) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    match meta.name.as_deref().filter(|name| !name.is_empty()) {
        None => problems.push(problem("metadata.name", "must be set")),
        Some(name) if kind == Kind::Service && !is_dns1035_label(name) => problems.push(problem(
            "metadata.name",
            format!(
                "{name:?} is not a valid Service name: at most 63 lowercase letters, digits or \
                 '-', starting with a letter"
            ),
        )),
        Some(name) if !is_dns_subdomain(name) => problems.push(problem(
            "metadata.name",
            format!(
                "{name:?} is not a valid name: lowercase letters, digits, '-' and '.', at most 253"
            ),
        )),
        Some(_) => {}
    }
    if kind.namespaced()
        && let Some(namespace) = meta.namespace.as_deref().filter(|ns| !ns.is_empty())
        && !is_dns_label(namespace)
    {
        problems.push(problem(
            "metadata.namespace",
            format!("{namespace:?} is not a valid namespace: at most 63 lowercase letters, digits or '-'"),
        ));
    }
    validate_labels(meta.labels.as_ref(), "metadata.labels", &mut problems);
    problems
}

fn service_type(spec: &ServiceSpec) -> &str {
    spec.type_
        .as_deref()
        .filter(|type_| !type_.is_empty())
        .unwrap_or("ClusterIP")
}

fn validate_service(service: &Service, problems: &mut Vec<FieldProblem>) {
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

fn validate_protocol(protocol: Option<&str>, field: String, problems: &mut Vec<FieldProblem>) {
    if let Some(protocol) = protocol.filter(|p| !p.is_empty())
        && !matches!(protocol, "TCP" | "UDP" | "SCTP")
    {
        problems.push(problem(
            field,
            format!("{protocol:?} is not TCP, UDP or SCTP"),
        ));
    }
}

/// A container's CPU and memory requests and limits: quantities, requests no more than limits.
fn validate_resources(container: &Container, field: &str, problems: &mut Vec<FieldProblem>) {
    let Some(resources) = &container.resources else {
        return;
    };
    let parse = |map: Option<&BTreeMap<String, Quantity>>,
                 which: &str,
                 resource: &str,
                 problems: &mut Vec<FieldProblem>| {
        let text = &map?.get(resource)?.0;
        gannet_k8s::Quantity::parse(text)
            .map_err(|error| {
                problems.push(problem(
                    format!("{field}.resources.{which}.{resource}"),
                    error.to_string(),
                ));
            })
            .ok()
    };
    for resource in ["cpu", "memory"] {
        let request = parse(resources.requests.as_ref(), "requests", resource, problems);
        let limit = parse(resources.limits.as_ref(), "limits", resource, problems);
        if let (Some(request), Some(limit)) = (request, limit)
            && request > limit
        {
            problems.push(problem(
                format!("{field}.resources.requests.{resource}"),
                format!("must be less than or equal to the {resource} limit of {limit}"),
            ));
        }
    }
}

fn validate_pod(pod: &Pod, problems: &mut Vec<FieldProblem>) {
    match &pod.spec {
        None => problems.push(problem("spec", "must be set")),
        Some(spec) => {
            if spec.containers.is_empty() {
                problems.push(problem(
                    "spec.containers",
                    "at least one container is required",
                ));
            }
            let mut container_names: HashMap<&str, usize> = HashMap::new();
            let mut port_names: HashMap<&str, String> = HashMap::new();
            for (i, container) in spec.containers.iter().enumerate() {
                let field = format!("spec.containers[{i}]");
                if !is_dns_label(&container.name) {
                    problems.push(problem(
                        format!("{field}.name"),
                        format!("{:?} is not a valid container name", container.name),
                    ));
                } else if let Some(first) = container_names.insert(&container.name, i) {
                    problems.push(problem(
                        format!("{field}.name"),
                        format!("duplicate container name (also spec.containers[{first}])"),
                    ));
                }
                for (j, port) in container.ports.iter().flatten().enumerate() {
                    let field = format!("{field}.ports[{j}]");
                    if !(1..=65535).contains(&port.container_port) {
                        problems.push(problem(
                            format!("{field}.containerPort"),
                            format!("port {} is out of range 1..=65535", port.container_port),
                        ));
                    }
                    validate_protocol(
                        port.protocol.as_deref(),
                        format!("{field}.protocol"),
                        problems,
                    );
                    if let Some(name) = port.name.as_deref().filter(|name| !name.is_empty()) {
                        if !is_port_name(name) {
                            problems.push(problem(
                                format!("{field}.name"),
                                format!("{name:?} is not a valid port name (IANA_SVC_NAME)"),
                            ));
                        } else if let Some(first) = port_names.insert(name, field.clone()) {
                            problems.push(problem(
                                format!("{field}.name"),
                                format!("duplicate port name {name:?} (also {first})"),
                            ));
                        }
                    }
                }
            }
            let all_containers = spec
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("spec.containers[{i}]"), c))
                .chain(
                    spec.init_containers
                        .iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c)),
                );
            for (field, container) in all_containers {
                validate_resources(container, &field, problems);
            }
            if let Some(node) = spec.node_name.as_deref().filter(|node| !node.is_empty())
                && !is_dns_subdomain(node)
            {
                problems.push(problem(
                    "spec.nodeName",
                    format!("{node:?} is not a valid node name"),
                ));
            }
        }
    }
    if let Some(status) = &pod.status {
        let ips: Vec<&str> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|ip| ip.ip.as_str())
            .collect();
        let mut families = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            match ip.parse::<IpAddr>() {
                Ok(parsed) => {
                    let v4 = parsed.is_ipv4();
                    if families.contains(&v4) {
                        problems.push(problem(
                            format!("status.podIPs[{i}].ip"),
                            "at most one address per family",
                        ));
                    }
                    families.push(v4);
                }
                Err(_) => problems.push(problem(
                    format!("status.podIPs[{i}].ip"),
                    format!("{ip:?} is not an IP address"),
                )),
            }
        }
        if let Some(pod_ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
            if pod_ip.parse::<IpAddr>().is_err() {
                problems.push(problem(
                    "status.podIP",
                    format!("{pod_ip:?} is not an IP address"),
                ));
            } else if ips.first().is_some_and(|first| *first != pod_ip) {
                problems.push(problem("status.podIP", "must equal status.podIPs[0].ip"));
            }
        }
        if let Some(phase) = status.phase.as_deref()
            && !matches!(
                phase,
                "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown"
            )
        {
            problems.push(problem(
                "status.phase",
                format!("{phase:?} is not Pending, Running, Succeeded, Failed or Unknown"),
            ));
        }
        for (i, condition) in status.conditions.iter().flatten().enumerate() {
            if !matches!(condition.status.as_str(), "True" | "False" | "Unknown") {
                problems.push(problem(
                    format!("status.conditions[{i}].status"),
                    format!("{:?} is not True, False or Unknown", condition.status),
                ));
            }
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|part| part.len() == 2 && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn validate_node(node: &Node, problems: &mut Vec<FieldProblem>) {
    if let Some(mac) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(VTEP_MAC_ANNOTATION))
        && !is_mac(mac)
    {
        problems.push(problem(
            format!("metadata.annotations[{VTEP_MAC_ANNOTATION:?}]"),
            format!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        ));
    }
    if let Some(spec) = &node.spec {
        for (i, cidr) in spec.pod_cidrs.iter().flatten().enumerate() {
            if cidr.parse::<ipnet::IpNet>().is_err() {
                problems.push(problem(
                    format!("spec.podCIDRs[{i}]"),
                    format!("{cidr:?} is not a CIDR"),
                ));
            }
        }
        if let Some(cidr) = spec.pod_cidr.as_deref().filter(|cidr| !cidr.is_empty())
            && cidr.parse::<ipnet::IpNet>().is_err()
        {
            problems.push(problem("spec.podCIDR", format!("{cidr:?} is not a CIDR")));
        }
    }
    for (i, address) in node
        .status
        .iter()
        .flat_map(|status| status.addresses.iter().flatten())
        .enumerate()
    {
        let field = format!("status.addresses[{i}]");
        match address.type_.as_str() {
            "InternalIP" | "ExternalIP" => {
                if address.address.parse::<IpAddr>().is_err() {
                    problems.push(problem(
                        format!("{field}.address"),
                        format!("{:?} is not an IP address", address.address),
                    ));
                }
            }
            "Hostname" | "InternalDNS" | "ExternalDNS" => {}
            other => problems.push(problem(
                format!("{field}.type"),
                format!(
                    "{other:?} is not InternalIP, ExternalIP, Hostname, InternalDNS or ExternalDNS"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &serde_json::Value) -> Object {
        let kind = Kind::from_type(
            json["apiVersion"].as_str().expect("apiVersion"),
            json["kind"].as_str().expect("kind"),
        )
        .expect("a served kind");
        Object::from_json(kind, json.to_string().as_bytes()).expect("test object decodes")
    }

    fn fields(object: &Object) -> Vec<String> {
        validate(object)
            .into_iter()
            .map(|problem| problem.field.unwrap_or_default())
            .collect()
    }

    #[test]
    fn valid_objects_have_no_problems() {
        let service = object(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"type": "NodePort", "selector": {"app": "web"}, "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]}
        }));
        assert_eq!(validate(&service), vec![]);
        let pod = object(&serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx",
                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]}
        }));
        assert_eq!(validate(&pod), vec![]);
    }

    #[test]
    fn pod_resources_are_quantities_and_requests_fit_limits() {
        let pod = object(&serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"},
            "spec": {
                "containers": [
                    {"name": "ok", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                                  "limits": {"cpu": "1", "memory": "1G"}}},
                    {"name": "bad", "resources": {"requests": {"cpu": "lots", "memory": "-1Gi"},
                                                   "limits": {"cpu": "1", "memory": "1Gi"}}},
                    {"name": "over", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}}
                ],
                "initContainers": [{"name": "init", "resources": {"limits": {"memory": "1 Gi"}}}]
            }
        }));
        let problems = validate(&pod);
        let found: Vec<(String, String)> = problems
            .into_iter()
            .map(|p| (p.field.unwrap_or_default(), p.message))
            .collect();
        let fields: Vec<&str> = found.iter().map(|(field, _)| field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.containers[1].resources.requests.cpu",
                "spec.containers[1].resources.requests.memory",
                "spec.containers[2].resources.requests.cpu",
                "spec.initContainers[0].resources.limits.memory",
            ],
            "{found:?}"
        );
        assert!(
            found[0].1.contains("\"lots\" is not a quantity"),
            "{found:?}"
        );
        assert!(found[1].1.contains("must not be negative"), "{found:?}");
        assert_eq!(
            found[2].1,
            "must be less than or equal to the cpu limit of 1500m"
        );
    }

    /// Found by the `control_apply` fuzz target: a headless Service without `spec.ports[0].port`
    /// was stored with port and target port 0, which Apply then refused when given it back.
    #[test]
    fn headless_and_external_name_services_need_valid_ports() {
        for spec in [
            serde_json::json!({"clusterIP": "None", "ports": [{"porlot": 30}]}),
            serde_json::json!({"type": "ExternalName", "externalName": "example.com",
                               "ports": [{"port": 70000}]}),
        ] {
            let service = object(&serde_json::json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "headless"},
                "spec": spec,
            }));
            assert_eq!(fields(&service), vec!["spec.ports[0].port"], "{spec}");
        }
        // A served Service's port is reported once, by gannet-k8s.
        let service = object(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 0, "targetPort": 80}]},
        }));
        assert_eq!(fields(&service), vec!["spec.ports[0].port"]);
    }

    #[test]
    fn every_service_problem_is_named() {
        // gannet-k8s's problems (node port, external traffic policy, external and ingress IPs)
        // come first, each once.
        let service = object(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "Web"},
            "spec": {"externalTrafficPolicy": "Local", "internalTrafficPolicy": "Global",
                     "ports": [{"name": "http", "port": 80, "targetPort": 70000, "nodePort": 30080},
                               {"name": "Bad_Name", "port": 81, "targetPort": "no--good"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3"}, {}]}}
        }));
        assert_eq!(
            fields(&service),
            vec![
                "metadata.name",
                "spec.ports[0].nodePort",
                "spec.externalTrafficPolicy",
                "status.loadBalancer.ingress[0].ip",
                "spec.ports[0].targetPort",
                "spec.ports[1].name",
                "spec.ports[1].targetPort",
                "spec.internalTrafficPolicy",
                "status.loadBalancer.ingress[1]",
            ]
        );
        let external_ips = object(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"externalIPs": ["nope"], "ports": [{"port": 80}]}
        }));
        assert_eq!(fields(&external_ips), vec!["spec.externalIPs[0]"]);
    }

    #[test]
    fn pod_and_node_problems_are_named() {
        let pod = object(&serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"bad key!": "x"}},
            "spec": {"containers": [{"name": "a", "ports": [{"name": "http", "containerPort": 0},
                                                            {"name": "http", "containerPort": 81, "protocol": "ICMP"}]}]},
            "status": {"phase": "Dancing", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}
        }));
        assert_eq!(
            fields(&pod),
            vec![
                "metadata.labels[\"bad key!\"]",
                "spec.containers[0].ports[0].containerPort",
                "spec.containers[0].ports[1].protocol",
                "spec.containers[0].ports[1].name",
                "status.podIPs[1].ip",
                "status.phase",
            ]
        );
        let node = object(&serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "annotations": {"gannet.io/vtep-mac": "zz"}},
            "spec": {"podCIDRs": ["10.244.1.0/33"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "x"}]}
        }));
        assert_eq!(
            fields(&node),
            vec![
                "metadata.annotations[\"gannet.io/vtep-mac\"]",
                "spec.podCIDRs[0]",
                "status.addresses[0].address",
            ]
        );
    }

    #[test]
    fn names() {
        assert!(is_port_name("http") && is_port_name("h2c-8080"));
        assert!(
            !is_port_name("8080")
                && !is_port_name("a--b")
                && !is_port_name("way-too-long-port-name")
        );
        assert!(is_label_key("app.kubernetes.io/name") && is_label_key("app"));
        assert!(!is_label_key("/x") && !is_label_key("a b"));
        assert!(is_mac("02:42:ac:11:00:02") && !is_mac("02:42:ac:11:00"));
    }
}
