//! Kubernetes Nodes to what the overlay needs of them: a node's name, its addresses on the
//! underlay, its pod CIDRs and the MAC address of its VXLAN device.
//!
//! The same check serves Node objects from the control plane's watch and `v1 Node` manifests in
//! a directory, so both sources give the overlay the same nodes.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use crate::error::FieldError;

/// The annotation holding a node's VXLAN device MAC address (`aa:bb:cc:dd:ee:ff`).
pub const VTEP_MAC_ANNOTATION: &str = "gannet.io/vtep-mac";

/// A node as the overlay sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterNode {
    pub name: String,
    /// `status.addresses[type=InternalIP]`, in order.
    pub internal_ips: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`), truncated to their networks.
    pub pod_cidrs: Vec<IpNet>,
    /// The [`VTEP_MAC_ANNOTATION`], when the node has a VXLAN device.
    pub vtep_mac: Option<[u8; 6]>,
}

impl ClusterNode {
    /// The node's pod CIDR of `ip`'s family.
    #[must_use]
    pub fn pod_cidr_of_family(&self, ipv4: bool) -> Option<IpNet> {
        self.pod_cidrs
            .iter()
            .copied()
            .find(|cidr| matches!(cidr, IpNet::V4(_)) == ipv4)
    }

    /// The node's first internal address of the given family.
    #[must_use]
    pub fn internal_ip_of_family(&self, ipv4: bool) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == ipv4)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
#[must_use]
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0_u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Checks a Node and reduces it to a [`ClusterNode`]; every problem names its field.
pub(crate) fn check_node(node: &Node) -> Result<ClusterNode, Vec<FieldError>> {
    let mut problems = Vec::new();
    let name = match node.metadata.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => {
            problems.push(FieldError::at("metadata.name", "must be set"));
            String::new()
        }
    };
    let vtep_mac = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(VTEP_MAC_ANNOTATION))
        .and_then(|text| {
            let mac = parse_mac(text);
            if mac.is_none() {
                problems.push(FieldError::at(
                    format!("metadata.annotations[{VTEP_MAC_ANNOTATION:?}]"),
                    format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
                ));
            }
            mac
        });
    let spec = node.spec.as_ref();
    let (field, texts): (&str, Vec<&str>) = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(list) if !list.is_empty() => {
            ("spec.podCIDRs", list.iter().map(String::as_str).collect())
        }
        _ => (
            "spec.podCIDR",
            spec.and_then(|s| s.pod_cidr.as_deref())
                .into_iter()
                .collect(),
        ),
    };
    let mut pod_cidrs: Vec<IpNet> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let at = if field == "spec.podCIDRs" {
            format!("{field}[{i}]")
        } else {
            field.to_owned()
        };
        match text.parse::<IpNet>() {
            Ok(cidr)
                if pod_cidrs
                    .iter()
                    .any(|c| c.addr().is_ipv4() == cidr.addr().is_ipv4()) =>
            {
                problems.push(FieldError::at(
                    at,
                    format!("{text:?}: a second pod CIDR of the same family"),
                ));
            }
            Ok(cidr) => pod_cidrs.push(cidr.trunc()),
            Err(_) => problems.push(FieldError::at(at, format!("{text:?} is not a CIDR"))),
        }
    }
    let mut internal_ips = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, address) in addresses.into_iter().flatten().enumerate() {
        if address.type_ != "InternalIP" {
            continue;
        }
        match address.address.parse::<IpAddr>() {
            Ok(ip) => internal_ips.push(ip),
            Err(_) => problems.push(FieldError::at(
                format!("status.addresses[{i}].address"),
                format!("{:?} is not an IP address", address.address),
            )),
        }
    }
    if problems.is_empty() {
        Ok(ClusterNode {
            name,
            internal_ips,
            pod_cidrs,
            vtep_mac,
        })
    } else {
        Err(problems)
    }
}

/// Checks a Node from the control plane: the [`ClusterNode`], or the problems as
/// `field: message` lines.
///
/// # Errors
/// Every problem of the object, each naming its field.
pub fn cluster_node(node: &Node) -> Result<ClusterNode, Vec<String>> {
    check_node(node).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| match p.field {
                Some(field) => format!("{field}: {}", p.message),
                None => p.message,
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).expect("a Node")
    }

    #[test]
    fn nodes_reduce_to_what_the_overlay_needs() {
        let n = node(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {VTEP_MAC_ANNOTATION: "0A:58:0a:f4:01:00"}},
            "spec": {"podCIDRs": ["10.244.1.7/24", "fd00:244:1::/64"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "192.0.2.11"},
            ]},
        }));
        let checked = cluster_node(&n).expect("valid");
        assert_eq!(checked.name, "n1");
        assert_eq!(
            checked.internal_ips,
            ["192.0.2.11".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            checked.pod_cidrs,
            [
                "10.244.1.0/24".parse::<IpNet>().unwrap(),
                "fd00:244:1::/64".parse().unwrap()
            ]
        );
        assert_eq!(checked.vtep_mac, Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x00]));
        assert_eq!(format_mac(checked.vtep_mac.unwrap()), "0a:58:0a:f4:01:00");
        // The single-family field counts too.
        let single = node(
            serde_json::json!({"metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.2.0/24"}}),
        );
        assert_eq!(cluster_node(&single).unwrap().pod_cidrs.len(), 1);
    }

    #[test]
    fn bad_nodes_name_every_field() {
        let n = node(serde_json::json!({
            "metadata": {"name": "n1", "annotations": {VTEP_MAC_ANNOTATION: "zz"}},
            "spec": {"podCIDRs": ["10.244.1.0/24", "nonsense", "10.244.9.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "1.2.3"}]},
        }));
        let problems = cluster_node(&n).unwrap_err();
        let text = problems.join("\n");
        for field in [
            "metadata.annotations[\"gannet.io/vtep-mac\"]",
            "spec.podCIDRs[1]",
            "spec.podCIDRs[2]",
            "status.addresses[0].address",
        ] {
            assert!(text.contains(field), "{field} named in {text}");
        }
        assert_eq!(parse_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
    }
}
