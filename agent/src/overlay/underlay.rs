//! The underlay: the interface through which this node reaches the other nodes, its address
//! and MTU.

use std::net::IpAddr;

use gannet_cni::netlink::{Link, Netlink};
use ipnet::IpNet;

use super::{DEVICE, OverlayError};

/// The interface the overlay sends its packets through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// This node's address on it: the VXLAN tunnels' source, the host-gw routes' next hop on
    /// the other nodes.
    pub ip: IpAddr,
    /// The subnets on the interface: host-gw next hops must lie in one of them.
    pub subnets: Vec<IpNet>,
}

impl Underlay {
    /// Whether `ip` is directly reachable on the underlay's segment.
    pub fn on_segment(&self, ip: IpAddr) -> bool {
        self.subnets.iter().any(|net| net.contains(&ip))
    }
}

fn global(net: &IpNet) -> bool {
    let ip = net.addr();
    !ip.is_loopback()
        && match ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        }
}

/// Finds the underlay: `interface` if given; else the interface holding the first of
/// `node_ips`; else the first interface that is up and has a global address. The node's
/// address on it is the first of `node_ips` it holds, else its first global IPv4 address, else
/// its first global IPv6 address.
///
/// # Errors
/// When no such interface exists or it has no usable address.
pub fn find(
    netlink: &mut Netlink,
    interface: Option<&str>,
    node_ips: &[IpAddr],
) -> Result<Underlay, OverlayError> {
    let links = netlink.links()?;
    let mut candidates: Vec<(Link, Vec<IpNet>)> = Vec::new();
    for link in links {
        let subnets: Vec<IpNet> = netlink
            .addresses(link.index)?
            .into_iter()
            .filter_map(|cidr| IpNet::new(cidr.addr(), cidr.prefix()).ok())
            .filter(global)
            .collect();
        candidates.push((link, subnets));
    }
    let chosen = if let Some(name) = interface {
        candidates
            .into_iter()
            .find(|(link, _)| link.name == name)
            .ok_or_else(|| {
                OverlayError::Underlay(format!("--overlay-interface {name}: no such interface"))
            })?
    } else if let Some(first) = node_ips.first() {
        candidates
            .into_iter()
            .find(|(_, nets)| nets.iter().any(|net| net.addr() == *first))
            .ok_or_else(|| {
                OverlayError::Underlay(format!(
                    "--node-ip {first}: no interface holds this address (give --overlay-interface)"
                ))
            })?
    } else {
        candidates
            .into_iter()
            .find(|(link, nets)| {
                link.up && link.name != "lo" && link.name != DEVICE && !nets.is_empty()
            })
            .ok_or_else(|| {
                OverlayError::Underlay(
                    "no interface with a global address to carry the overlay (give --overlay-interface or --node-ip)"
                        .to_owned(),
                )
            })?
    };
    let (link, subnets) = chosen;
    let ip = node_ips
        .iter()
        .copied()
        .find(|ip| subnets.iter().any(|net| net.addr() == *ip))
        .or_else(|| subnets.iter().map(IpNet::addr).find(IpAddr::is_ipv4))
        .or_else(|| subnets.first().map(IpNet::addr))
        .ok_or_else(|| {
            OverlayError::Underlay(format!(
                "interface {} has no global address to carry the overlay",
                link.name
            ))
        })?;
    Ok(Underlay {
        name: link.name,
        index: link.index,
        mtu: link.mtu,
        ip,
        subnets: subnets.iter().map(IpNet::trunc).collect(),
    })
}
