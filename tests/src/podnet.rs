//! A simulated node: a "node" namespace holding a bridge, and pod namespaces attached to it by veth
//! pairs. Nothing connects it to the root namespace, so no packet leaves the machine.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::ensure;

use crate::{Netns, unique_name};

/// The bridge in the node namespace.
pub const BRIDGE: &str = "br0";
/// The pods' interface name.
pub const POD_IF: &str = "eth0";
/// The bridge's (the pods' gateway's) IPv4 address, in a /24.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The bridge's (the pods' gateway's) IPv6 address, in a /64.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);
/// A fixed, locally administered MAC for the bridge, so it does not change as ports are added.
const BRIDGE_MAC: &str = "02:00:0a:f4:00:01";
/// Last octet of pod 0's address.
const FIRST_POD_HOST: usize = 10;
/// Highest usable last octet in the /24.
const LAST_HOST: usize = 254;

/// Pod `index`'s addresses: `10.244.0.(10+index)` and `fd00:244::(10+index)`, the IPv6 address's last
/// group spelling the same digits as the IPv4 address's last octet (pod 0: `fd00:244::10`).
fn pod_addrs(index: usize) -> (Ipv4Addr, Ipv6Addr) {
    let host = FIRST_POD_HOST + index;
    let v4 = u8::try_from(host).expect("pod index checked against the /24");
    let v6 = u16::from_str_radix(&host.to_string(), 16).expect("decimal digits are hex digits");
    (
        Ipv4Addr::new(10, 244, 0, v4),
        Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, v6),
    )
}

/// One pod: its namespace, holding `eth0` with these addresses, default routes via the bridge.
#[derive(Debug)]
pub struct Pod {
    /// The pod's network namespace.
    pub netns: Netns,
    /// The pod's IPv4 address (in 10.244.0.0/24).
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address (in `fd00:244::/64`).
    pub ipv6: Ipv6Addr,
    /// Name of the host side of the pod's veth pair, a port of `br0` in the node namespace.
    pub host_veth: String,
}

/// A simulated node with `pods` pods on bridge `br0` (10.244.0.1/24, `fd00:244::1/64`).
///
/// Dropping it deletes the pod namespaces first (which destroys their veth pairs), then the node.
#[derive(Debug)]
pub struct PodNet {
    // Field order is drop order: pods before the node.
    pods: Vec<Pod>,
    node: Netns,
}

impl PodNet {
    /// Builds the node namespace, its bridge and `pods` pods, all links up. IPv6 addresses are added
    /// with `nodad`, so everything is usable when this returns.
    ///
    /// # Errors
    /// If `pods` does not fit the /24 (at most 245) or any `ip` command fails; whatever was created
    /// is removed again.
    pub fn new(pods: usize) -> anyhow::Result<PodNet> {
        ensure!(
            pods <= LAST_HOST + 1 - FIRST_POD_HOST,
            "{pods} pods do not fit 10.244.0.{FIRST_POD_HOST}-{LAST_HOST}"
        );
        // Declared before `list`, so on an early return the pods are dropped before the node.
        let node = Netns::new("node")?;
        node.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        node.ip(&["link", "set", BRIDGE, "address", BRIDGE_MAC])?;
        node.ip(&["addr", "add", &format!("{GATEWAY_V4}/24"), "dev", BRIDGE])?;
        node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            BRIDGE,
            "nodad",
        ])?;
        node.ip(&["link", "set", BRIDGE, "up"])?;

        let mut list = Vec::with_capacity(pods);
        for index in 0..pods {
            let netns = Netns::new(&format!("pod{index}"))?;
            let (ipv4, ipv6) = pod_addrs(index);
            let host_veth = unique_name("veth");
            // Both ends are created inside our namespaces: the host end in the node, the peer
            // directly in the pod.
            node.ip(&[
                "link",
                "add",
                &host_veth,
                "type",
                "veth",
                "peer",
                "name",
                POD_IF,
                "netns",
                netns.name(),
            ])?;
            node.ip(&["link", "set", &host_veth, "master", BRIDGE, "up"])?;
            netns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", POD_IF])?;
            netns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ipv6}/64"),
                "dev",
                POD_IF,
                "nodad",
            ])?;
            netns.ip(&["link", "set", POD_IF, "up"])?;
            netns.ip(&["route", "add", "default", "via", &GATEWAY_V4.to_string()])?;
            netns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &GATEWAY_V6.to_string(),
            ])?;
            list.push(Pod {
                netns,
                ipv4,
                ipv6,
                host_veth,
            });
        }
        Ok(PodNet { pods: list, node })
    }

    /// The pods, in creation order (pod i has host part 10+i).
    #[must_use]
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The node namespace holding the bridge and the host ends of the veth pairs.
    #[must_use]
    pub fn node(&self) -> &Netns {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_spell_the_same_digits() {
        assert_eq!(
            pod_addrs(0),
            (
                Ipv4Addr::new(10, 244, 0, 10),
                "fd00:244::10".parse().expect("v6")
            )
        );
        assert_eq!(
            pod_addrs(244),
            (
                Ipv4Addr::new(10, 244, 0, 254),
                "fd00:244::254".parse().expect("v6")
            )
        );
    }
}
