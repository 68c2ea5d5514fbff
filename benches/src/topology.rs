//! A routed node, as a CNI like Calico's (and gannet's) builds it: no bridge, one veth pair per pod,
//! the pod's address a /32 on its `eth0` with a default route via the link-local gateway
//! 169.254.1.1, and on the node a /32 route per pod through the pod's host-side veth, with IP
//! forwarding on, and the node's own address on `lo`. Traffic between pods is routed by the node,
//! so kube-proxy's DNAT and the replies go through the node's netfilter hooks and conntrack, as on
//! a real node.
//!
//! Neighbour entries are permanent on both sides (the pods' gateway is the host veth's MAC, the
//! node knows each pod's MAC), so no ARP traffic disturbs a measurement. Nothing is connected to
//! the root namespace.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use gannet_testkit::{Netns, unique_name};

/// The pods' gateway address (never assigned to an interface; answered by the static neighbour).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' interface.
pub const POD_IF: &str = "eth0";
/// The node's own address, on its `lo` (a documentation address: nothing is ever sent to it). It
/// gives the node a source address for ICMP errors, as a real node has, and is the address
/// kube-proxy would accept `NodePort` traffic on.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// One pod of a [`RoutedNode`].
#[derive(Debug)]
pub struct RoutedPod {
    /// The pod's network namespace.
    pub netns: Netns,
    /// The pod's address (a /32 on `eth0`).
    pub ip: Ipv4Addr,
    /// The host side of the pod's veth pair, in the node namespace.
    pub host_veth: String,
}

/// A node namespace with routed pods.
///
/// Dropping it deletes the pod namespaces (killing what runs in them), then the node.
#[derive(Debug)]
pub struct RoutedNode {
    // Field order is drop order: pods before the node.
    pods: Vec<RoutedPod>,
    node: Netns,
}

/// A locally administered MAC derived from an address and a side (0: pod, 1: host).
fn mac(ip: Ipv4Addr, side: u8) -> String {
    let [_, b, c, d] = ip.octets();
    format!("02:{side:02x}:00:{b:02x}:{c:02x}:{d:02x}")
}

impl RoutedNode {
    /// Creates the node namespace (forwarding on) and one pod per address in `pod_ips`.
    ///
    /// # Errors
    /// If a command fails; whatever was created is removed again.
    pub fn new(role: &str, pod_ips: &[Ipv4Addr]) -> anyhow::Result<RoutedNode> {
        let node = Netns::new(&format!("{role}n"))
            .with_context(|| format!("creating the {role} node namespace"))?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
        let mut routed = RoutedNode {
            pods: Vec::with_capacity(pod_ips.len()),
            node,
        };
        for (index, &ip) in pod_ips.iter().enumerate() {
            let pod = routed
                .add_pod(&format!("{role}p{index}"), ip)
                .with_context(|| format!("creating pod {ip} of the {role} node"))?;
            routed.pods.push(pod);
        }
        Ok(routed)
    }

    fn add_pod(&self, name: &str, ip: Ipv4Addr) -> anyhow::Result<RoutedPod> {
        add_routed_pod(&self.node, name, ip)
    }

    /// The node namespace.
    #[must_use]
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The pods, in the order of the addresses given to [`RoutedNode::new`].
    #[must_use]
    pub fn pods(&self) -> &[RoutedPod] {
        &self.pods
    }
}

/// Adds a routed pod to the node namespace `node`: a namespace named after `name` with `eth0`
/// holding `ip`/32 and a default route via [`POD_GATEWAY`], a /32 route to it in `node` through
/// its host veth, permanent neighbour entries on both sides.
///
/// # Errors
/// If a command fails; the pod's namespace is removed again.
pub fn add_routed_pod(node: &Netns, name: &str, ip: Ipv4Addr) -> anyhow::Result<RoutedPod> {
    let netns = Netns::new(name)?;
    let host_veth = unique_name("gbv");
    let pod_mac = mac(ip, 0);
    let host_mac = mac(ip, 1);
    // Both ends are created in our namespaces: the host end in the node, the peer directly
    // in the pod.
    node.ip(&[
        "link",
        "add",
        &host_veth,
        "address",
        &host_mac,
        "type",
        "veth",
        "peer",
        "name",
        POD_IF,
        "address",
        &pod_mac,
        "netns",
        netns.name(),
    ])?;
    let pod = RoutedPod {
        netns,
        ip,
        host_veth,
    };
    node.ip(&["link", "set", &pod.host_veth, "up"])?;
    let host32 = format!("{ip}/32");
    node.ip(&["route", "add", &host32, "dev", &pod.host_veth])?;
    node.ip(&[
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        &pod_mac,
        "dev",
        &pod.host_veth,
        "nud",
        "permanent",
    ])?;
    let gateway = POD_GATEWAY.to_string();
    pod.netns.ip(&["addr", "add", &host32, "dev", POD_IF])?;
    pod.netns.ip(&["link", "set", POD_IF, "up"])?;
    pod.netns
        .ip(&["route", "add", &gateway, "dev", POD_IF, "scope", "link"])?;
    pod.netns
        .ip(&["route", "add", "default", "via", &gateway, "dev", POD_IF])?;
    pod.netns.ip(&[
        "neigh",
        "replace",
        &gateway,
        "lladdr",
        &host_mac,
        "dev",
        POD_IF,
        "nud",
        "permanent",
    ])?;
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_and_distinct_per_side() {
        let ip = Ipv4Addr::new(10, 244, 0, 11);
        assert_eq!(mac(ip, 0), "02:00:00:f4:00:0b");
        assert_eq!(mac(ip, 1), "02:01:00:f4:00:0b");
    }
}
