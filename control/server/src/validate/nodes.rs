//! Nodes: the VTEP MAC annotation, pod CIDRs, addresses.

use std::net::IpAddr;

use gannet_k8s::FieldProblem;
use k8s_openapi::api::core::v1::Node;

use super::{VTEP_MAC_ANNOTATION, problem};

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|part| part.len() == 2 && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(super) fn validate_node(node: &Node, problems: &mut Vec<FieldProblem>) {
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
