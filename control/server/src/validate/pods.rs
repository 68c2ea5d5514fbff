//! Pods, as the API server checks them: containers, their ports and resources, the node name,
//! the status a node reports.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use gannet_k8s::FieldProblem;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::meta::{is_dns_label, is_dns_subdomain, is_port_name};
use super::problem;
use super::services::validate_protocol;

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

pub(super) fn validate_pod(pod: &Pod, problems: &mut Vec<FieldProblem>) {
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
