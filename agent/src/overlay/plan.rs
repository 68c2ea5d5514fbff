//! What one remote node needs on this node, per mode: the kernel entries that send packets for
//! its pod CIDRs to it. Pure: computed from the node and this node's underlay, no kernel access.

use std::net::IpAddr;

use gannet_k8s::{ClusterNode, format_mac};
use ipnet::IpNet;
use serde::Serialize;

use super::Mode;
use super::underlay::Underlay;

/// One kernel entry the overlay owns. The variants' order is the order entries are added in
/// (a route only ever points at a neighbour that exists, a neighbour at a forwarding entry that
/// exists); they are removed in the reverse order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Entry {
    /// VXLAN forwarding entry: frames for the remote VTEP's MAC go to its underlay address.
    Fdb { mac: [u8; 6], dst: IpAddr },
    /// Permanent neighbour on the VXLAN device: the remote pod CIDR's gateway address is the
    /// remote VTEP.
    Neighbour { ip: IpAddr, mac: [u8; 6] },
    /// The route to a remote pod CIDR.
    Route {
        dst: IpNet,
        via: IpAddr,
        oif: u32,
        onlink: bool,
    },
    /// `ebpf` mode: the node-map entry sending a remote pod CIDR to its node's underlay address,
    /// framed for its VTEP MAC.
    Node {
        cidr: IpNet,
        ip: IpAddr,
        mac: [u8; 6],
    },
}

impl Entry {
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Fdb { mac, dst } => format!("fdb {} dst {dst}", format_mac(*mac)),
            Self::Neighbour { ip, mac } => format!("neigh {ip} lladdr {}", format_mac(*mac)),
            Self::Route {
                dst,
                via,
                oif,
                onlink,
            } => format!(
                "route {dst} via {via} dev {oif}{}",
                if *onlink { " onlink" } else { "" }
            ),
            Self::Node { cidr, ip, mac } => {
                format!("node-map {cidr} to {ip} lladdr {}", format_mac(*mac))
            }
        }
    }
}

/// How a remote node is reached, for `gannetd status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Plan {
    #[serde(skip)]
    pub(crate) entries: Vec<Entry>,
    /// Why (part of) the node cannot be reached; `None` when everything is programmed.
    pub(crate) problem: Option<String>,
}

/// The entries for `remote` in `mode`; `vtep` is the VXLAN device's index (vxlan mode). In
/// `ebpf` mode a node needs what it needs in `vxlan` mode (its VTEP MAC and an address of the
/// underlay's family), written to the node map instead of the kernel's tables.
/// `taken` are pod CIDRs already claimed (this node's and earlier nodes'): a node claiming an
/// overlapping one is reported, not programmed.
pub(crate) fn plan(
    mode: Mode,
    remote: &ClusterNode,
    underlay: &Underlay,
    vtep: Option<u32>,
    taken: &[(String, IpNet)],
) -> Plan {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    if remote.pod_cidrs.is_empty() {
        problems.push("has no pod CIDR yet".to_owned());
    }
    let underlay_v4 = underlay.ip.is_ipv4();
    let tunnel_dst = remote.internal_ip_of_family(underlay_v4);
    for cidr in &remote.pod_cidrs {
        if let Some((owner, other)) = taken
            .iter()
            .find(|(_, other)| other.contains(cidr) || cidr.contains(other))
        {
            problems.push(format!(
                "its pod CIDR {cidr} overlaps {other} of node {owner}: not routed"
            ));
            continue;
        }
        match mode {
            Mode::Vxlan => {
                let (Some(mac), Some(dst), Some(vtep)) = (remote.vtep_mac, tunnel_dst, vtep) else {
                    continue;
                };
                let gateway = cidr.network();
                entries.push(Entry::Fdb { mac, dst });
                entries.push(Entry::Neighbour { ip: gateway, mac });
                entries.push(Entry::Route {
                    dst: *cidr,
                    via: gateway,
                    oif: vtep,
                    onlink: true,
                });
            }
            Mode::HostGw => {
                let Some(via) = remote.internal_ip_of_family(matches!(cidr, IpNet::V4(_))) else {
                    problems.push(format!(
                        "has no InternalIP of the family of {cidr}: host-gw cannot route it"
                    ));
                    continue;
                };
                if !underlay.on_segment(via) {
                    problems.push(format!(
                        "its address {via} is not on this node's segment ({} {}): host-gw needs all nodes on one L2 segment (use --overlay vxlan)",
                        underlay.name,
                        underlay
                            .subnets
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    continue;
                }
                entries.push(Entry::Route {
                    dst: *cidr,
                    via,
                    oif: underlay.index,
                    onlink: false,
                });
            }
            Mode::Ebpf => {
                let (Some(mac), Some(ip)) = (remote.vtep_mac, tunnel_dst) else {
                    continue;
                };
                entries.push(Entry::Node {
                    cidr: cidr.trunc(),
                    ip,
                    mac,
                });
            }
            Mode::None => {}
        }
    }
    if matches!(mode, Mode::Vxlan | Mode::Ebpf) && !remote.pod_cidrs.is_empty() {
        if remote.vtep_mac.is_none() {
            problems.push(
                "has no gannet.io/vtep-mac annotation (no VXLAN device there yet)".to_owned(),
            );
        }
        if tunnel_dst.is_none() {
            problems.push(format!(
                "has no InternalIP of the underlay's family ({})",
                if underlay_v4 { "IPv4" } else { "IPv6" }
            ));
        }
    }
    entries.sort();
    entries.dedup();
    Plan {
        entries,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn underlay() -> Underlay {
        Underlay {
            name: "eth0".to_owned(),
            index: 2,
            mtu: 1500,
            ip: "10.99.0.11".parse().unwrap(),
            subnets: vec!["10.99.0.0/24".parse().unwrap()],
        }
    }

    fn node(name: &str, ip: &str, cidrs: &[&str], mac: Option<[u8; 6]>) -> ClusterNode {
        ClusterNode {
            name: name.to_owned(),
            internal_ips: vec![ip.parse().unwrap()],
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            vtep_mac: mac,
        }
    }

    const MAC: [u8; 6] = [0x0e, 1, 2, 3, 4, 5];

    #[test]
    fn vxlan_nodes_get_fdb_neighbour_and_onlink_routes_per_family() {
        let remote = node(
            "n2",
            "10.99.0.12",
            &["10.244.2.0/24", "fd00:244:2::/64"],
            Some(MAC),
        );
        let plan = plan(Mode::Vxlan, &remote, &underlay(), Some(9), &[]);
        assert_eq!(plan.problem, None);
        let described: Vec<String> = plan.entries.iter().map(Entry::describe).collect();
        assert_eq!(
            described,
            [
                "fdb 0e:01:02:03:04:05 dst 10.99.0.12",
                "neigh 10.244.2.0 lladdr 0e:01:02:03:04:05",
                "neigh fd00:244:2:: lladdr 0e:01:02:03:04:05",
                "route 10.244.2.0/24 via 10.244.2.0 dev 9 onlink",
                "route fd00:244:2::/64 via fd00:244:2:: dev 9 onlink",
            ]
        );
    }

    #[test]
    fn ebpf_nodes_get_a_node_map_entry_per_pod_cidr() {
        let remote = node(
            "n2",
            "10.99.0.12",
            &["10.244.2.0/24", "fd00:244:2::/64"],
            Some(MAC),
        );
        let p = plan(Mode::Ebpf, &remote, &underlay(), Some(9), &[]);
        assert_eq!(p.problem, None);
        let described: Vec<String> = p.entries.iter().map(Entry::describe).collect();
        assert_eq!(
            described,
            [
                "node-map 10.244.2.0/24 to 10.99.0.12 lladdr 0e:01:02:03:04:05",
                "node-map fd00:244:2::/64 to 10.99.0.12 lladdr 0e:01:02:03:04:05",
            ]
        );

        let no_mac = node("n3", "10.99.0.13", &["10.244.3.0/24"], None);
        let p = plan(Mode::Ebpf, &no_mac, &underlay(), Some(9), &[]);
        assert!(p.entries.is_empty());
        assert!(p.problem.unwrap().contains("vtep-mac"));
    }

    #[test]
    fn what_cannot_be_programmed_is_said() {
        let no_mac = node("n2", "10.99.0.12", &["10.244.2.0/24"], None);
        let p = plan(Mode::Vxlan, &no_mac, &underlay(), Some(9), &[]);
        assert!(p.entries.is_empty());
        assert!(p.problem.unwrap().contains("vtep-mac"));

        let far = node("n3", "192.0.2.7", &["10.244.3.0/24"], None);
        let p = plan(Mode::HostGw, &far, &underlay(), None, &[]);
        assert!(p.entries.is_empty());
        assert!(p.problem.unwrap().contains("not on this node's segment"));

        let near = node("n4", "10.99.0.14", &["10.244.4.0/24"], None);
        let p = plan(Mode::HostGw, &near, &underlay(), None, &[]);
        assert_eq!(p.problem, None);
        assert_eq!(
            p.entries[0].describe(),
            "route 10.244.4.0/24 via 10.99.0.14 dev 2"
        );

        let overlapping = node("n5", "10.99.0.15", &["10.244.4.0/25"], None);
        let taken = [("n4".to_owned(), "10.244.4.0/24".parse().unwrap())];
        let p = plan(Mode::HostGw, &overlapping, &underlay(), None, &taken);
        assert!(p.entries.is_empty());
        assert!(
            p.problem
                .unwrap()
                .contains("overlaps 10.244.4.0/24 of node n4")
        );
    }
}
