//! The routed pod network: one veth pair per pod interface, configured through netlink.
//!
//! ```text
//!  pod netns                               host (node) netns
//!  eth0 10.244.1.5/32, fd00::5/128   ══veth══  gnt<hash>   (no address)
//!  169.254.1.1/32 dev eth0 scope link          10.244.1.5/32 dev gnt<hash> scope link
//!  default via 169.254.1.1 dev eth0            fd00::5/128  dev gnt<hash>
//!  default via fe80::1 dev eth0                net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1
//!  neigh 169.254.1.1, fe80::1 lladdr <gnt MAC> PERMANENT
//! ```
//!
//! The pod's gateway is a link-local address that exists nowhere: the permanent neighbour entries
//! send every packet to the host side's MAC, so neither proxy ARP nor proxy NDP is needed, and the
//! host routes the packet like any other. The host side needs no address; the kernel answers and
//! forwards through the `/32` (`/128`) routes.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::config::Attachment;
use crate::net::Cidr;
use crate::netlink::{Link, Netlink, NetlinkError, format_mac};
use crate::netns;

/// The pods' IPv4 gateway.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Prefix of host-side interface names.
pub const HOST_IF_PREFIX: &str = "gnt";
/// Prefix of the alias (`IFLA_IFALIAS`) of host-side interfaces: `gannet-cni:<network>/<id>/<if>`.
pub const ALIAS_PREFIX: &str = "gannet-cni:";
/// Prefix of retired ("tombstone") veth ends waiting for their deletion: `gnd` and the link's
/// index in hex, on both sides (an index is unique in its namespace while the link exists).
pub const TOMBSTONE_PREFIX: &str = "gnd";

/// The tombstone name of link `index`.
#[must_use]
pub fn tombstone_name(index: u32) -> String {
    format!("{TOMBSTONE_PREFIX}{index:x}")
}

/// Pod network failures.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The container's namespace cannot be entered.
    #[error("entering netns {}: {source}", path.display())]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A sysctl cannot be set.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        /// The key.
        key: String,
        /// The error.
        source: std::io::Error,
    },
    /// Something is in the way.
    #[error("{0}")]
    Conflict(String),
}

/// The gateway of `ip`'s family.
#[must_use]
pub fn gateway_for(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        IpAddr::V4(GATEWAY_V4)
    } else {
        IpAddr::V6(GATEWAY_V6)
    }
}

/// The host-side interface name of an attachment: `gnt` and 12 hex digits of a hash of network,
/// container id and interface name (stable, so a retried `ADD` or a `DEL` finds it).
#[must_use]
pub fn host_if_name(network: &str, attachment: &Attachment) -> String {
    // FNV-1a, 64 bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in network
        .bytes()
        .chain([0])
        .chain(attachment.container_id.bytes())
        .chain([0])
        .chain(attachment.ifname.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_IF_PREFIX}{:012x}", hash >> 16)
}

/// The alias marking a host-side interface as ours, naming its attachment.
#[must_use]
pub fn alias(network: &str, attachment: &Attachment) -> String {
    format!(
        "{ALIAS_PREFIX}{network}/{}/{}",
        attachment.container_id, attachment.ifname
    )
}

/// The network and attachment named by an alias written by [`alias`].
#[must_use]
pub fn parse_alias(alias: &str) -> Option<(String, Attachment)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let mut parts = rest.splitn(3, '/');
    let (network, id, ifname) = (parts.next()?, parts.next()?, parts.next()?);
    Some((
        network.to_owned(),
        Attachment {
            container_id: id.to_owned(),
            ifname: ifname.to_owned(),
        },
    ))
}

/// What to set up for one pod interface.
#[derive(Debug)]
pub struct PodSpec<'a> {
    /// CNI network name.
    pub network: &'a str,
    /// The attachment.
    pub attachment: &'a Attachment,
    /// The pod's namespace path and open file.
    pub netns_path: &'a Path,
    /// The pod's namespace.
    pub netns: &'a File,
    /// The pod's addresses (`/32`, `/128`).
    pub ips: &'a [Cidr],
    /// MTU of both ends.
    pub mtu: u32,
    /// Extra destinations routed via the gateway (besides the default routes).
    pub extra_routes: &'a [Cidr],
    /// The pod interface's MAC, if the runtime asked for one.
    pub pod_mac: Option<&'a [u8]>,
}

/// The two ends of a pod's veth pair after setup.
#[derive(Debug, Clone)]
pub struct PodLinks {
    /// Host side.
    pub host: Link,
    /// Pod side.
    pub pod: Link,
}

/// Creates and configures the pod's veth pair; on failure removes what it created.
///
/// # Errors
/// See [`NetError`].
pub fn setup(host: &mut Netlink, spec: &PodSpec<'_>) -> Result<PodLinks, NetError> {
    let host_name = host_if_name(spec.network, spec.attachment);
    // A leftover of an interrupted ADD of this very attachment: its pod side goes with it.
    if let Some(stale) = host.link_by_name(&host_name)? {
        tracing::info!(link = %host_name, "removing the leftover host interface of an earlier ADD");
        host.delete_link(stale.index)?;
    }
    in_pod(spec, |pod| {
        if pod.link_by_name(&spec.attachment.ifname)?.is_some() {
            return Err(NetError::Conflict(format!(
                "interface {} already exists in netns {}",
                spec.attachment.ifname,
                spec.netns_path.display()
            )));
        }
        Ok(())
    })?;
    host.create_veth(
        &host_name,
        &spec.attachment.ifname,
        spec.netns,
        spec.mtu,
        spec.pod_mac,
    )?;
    let result = configure(host, spec, &host_name);
    if result.is_err()
        && let Ok(Some(link)) = host.link_by_name(&host_name)
    {
        let _ = host.delete_link(link.index);
    }
    result
}

/// Runs `f` with a netlink socket inside the pod's namespace.
fn in_pod<R: Send>(
    spec: &PodSpec<'_>,
    f: impl FnOnce(&mut Netlink) -> Result<R, NetError> + Send,
) -> Result<R, NetError> {
    netns::run_in(spec.netns, || {
        let mut pod = Netlink::open()?;
        f(&mut pod)
    })
    .map_err(|source| NetError::Netns {
        path: spec.netns_path.to_path_buf(),
        source,
    })?
}

fn configure(
    host: &mut Netlink,
    spec: &PodSpec<'_>,
    host_name: &str,
) -> Result<PodLinks, NetError> {
    let host_link = host
        .link_by_name(host_name)?
        .ok_or_else(|| NetError::Conflict(format!("{host_name} vanished after its creation")))?;
    let has_v6 = spec.ips.iter().any(|ip| !ip.is_ipv4());
    if has_v6 {
        // The host side's link-local address must be usable at once for neighbour discovery.
        sysctl(&format!("net/ipv6/conf/{host_name}/accept_dad"), "0")?;
    }
    host.set_up(host_link.index, Some(&alias(spec.network, spec.attachment)))?;
    let host_mac = host_link.mac.clone();
    let pod_link = in_pod(spec, |pod| {
        let link = pod.link_by_name(&spec.attachment.ifname)?.ok_or_else(|| {
            NetError::Conflict(format!(
                "{} missing in the pod after creating the veth pair",
                spec.attachment.ifname
            ))
        })?;
        pod.set_up(link.index, None)?;
        for ip in spec.ips {
            pod.add_address(link.index, *ip)?;
        }
        let mut families: Vec<bool> = spec.ips.iter().map(Cidr::is_ipv4).collect();
        families.dedup();
        for v4 in families {
            let gateway = if v4 {
                IpAddr::V4(GATEWAY_V4)
            } else {
                IpAddr::V6(GATEWAY_V6)
            };
            pod.add_neighbour(link.index, gateway, &host_mac)?;
            if v4 {
                pod.add_route(Cidr::host(gateway), None, link.index)?;
            }
            let default = Cidr::new(
                if v4 {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                },
                0,
            )
            .expect("prefix 0 fits");
            pod.add_route(default, Some(gateway), link.index)?;
            for extra in spec.extra_routes.iter().filter(|r| r.is_ipv4() == v4) {
                pod.add_route(extra.truncated(), Some(gateway), link.index)?;
            }
        }
        Ok(link)
    })?;
    for ip in spec.ips {
        host.add_route(Cidr::host(ip.addr()), None, host_link.index)?;
    }
    if spec.ips.iter().any(Cidr::is_ipv4) {
        sysctl("net/ipv4/ip_forward", "1")?;
    }
    if has_v6 {
        sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    let host_link = host.link_by_name(host_name)?.unwrap_or(host_link);
    Ok(PodLinks {
        host: host_link,
        pod: pod_link,
    })
}

fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    netns::sysctl_ensure(key, value).map_err(|source| NetError::Sysctl {
        key: key.replace('/', "."),
        source,
    })
}

/// Deletes the host side of an attachment (the pod side goes with it); returns whether it existed.
///
/// # Errors
/// If netlink fails for another reason than the link's absence.
pub fn teardown(
    host: &mut Netlink,
    network: &str,
    attachment: &Attachment,
) -> Result<bool, NetError> {
    let name = host_if_name(network, attachment);
    match host.link_by_name(&name)? {
        Some(link) => Ok(host.delete_link(link.index)?),
        None => Ok(false),
    }
}

/// The pod's namespace as `DEL` knows it.
#[derive(Debug, Clone, Copy)]
pub enum PodNetns<'a> {
    /// `CNI_NETNS` was not given: the pod end cannot be reached.
    Unknown,
    /// `CNI_NETNS` no longer opens: whatever is left of the pod end is unreachable for everyone.
    Gone,
    /// The pod's namespace.
    Open(&'a Path, &'a File),
}

/// What [`retire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retired {
    /// There was no host interface.
    Absent,
    /// The pair was deleted at once (its pod end could not be renamed).
    Deleted,
    /// The pair is down and renamed; the host end, called this, is still to be deleted (the pod
    /// end goes with it).
    Tombstone(String),
}

impl std::fmt::Display for Retired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Absent => f.write_str("no host interface"),
            Self::Deleted => f.write_str("veth pair deleted"),
            Self::Tombstone(name) => write!(
                f,
                "veth pair down, renamed {name}, deleted in the background"
            ),
        }
    }
}

/// Takes an attachment's veth pair out of service without waiting for its deletion: the host end
/// down (the kernel removes the routes through it, and the pod end loses its carrier), the pod
/// end down and renamed to a tombstone in `pod` (so the pod's interface name is free), the host
/// end renamed to a tombstone (so is the host name). When the pod's namespace is
/// [`PodNetns::Unknown`] the pair is deleted at once (a later `ADD` in that namespace would find
/// the old interface otherwise), as it is when a rename fails.
///
/// # Errors
/// If netlink fails for another reason than the link's absence.
pub fn retire(
    host: &mut Netlink,
    network: &str,
    attachment: &Attachment,
    pod: PodNetns<'_>,
) -> Result<Retired, NetError> {
    let name = host_if_name(network, attachment);
    let Some(link) = host.link_by_name(&name)? else {
        return Ok(Retired::Absent);
    };
    let delete_now = |host: &mut Netlink| -> Result<Retired, NetError> {
        Ok(if host.delete_link(link.index)? {
            Retired::Deleted
        } else {
            Retired::Absent
        })
    };
    let pod = match pod {
        PodNetns::Unknown => return delete_now(host),
        PodNetns::Gone => None,
        PodNetns::Open(path, file) => Some((path, file)),
    };
    if !host.set_down(link.index)? {
        return Ok(Retired::Absent);
    }
    if let Some((pod_path, pod_ns)) = pod {
        let ifname = &attachment.ifname;
        let pod_side = netns::run_in(pod_ns, || -> Result<(), NetlinkError> {
            let mut pod = Netlink::open()?;
            let Some(peer) = pod.link_by_name(ifname)? else {
                return Ok(());
            };
            // Only our veth's own peer: anything else of that name is not ours to touch.
            if peer.kind.as_deref() != Some("veth") || peer.peer_index != Some(link.index) {
                return Ok(());
            }
            pod.set_down(peer.index)?;
            pod.rename(peer.index, &tombstone_name(peer.index))?;
            Ok(())
        })
        .map_err(|source| NetError::Netns {
            path: pod_path.to_path_buf(),
            source,
        })
        .and_then(|r| r.map_err(NetError::from));
        if let Err(e) = pod_side {
            tracing::warn!(error = %e, "cannot retire the pod end; deleting the pair now");
            return delete_now(host);
        }
    }
    let tombstone = tombstone_name(link.index);
    match host.rename(link.index, &tombstone) {
        Ok(true) => Ok(Retired::Tombstone(tombstone)),
        Ok(false) => Ok(Retired::Absent),
        Err(e) => {
            tracing::warn!(error = %e, "cannot rename the host end; deleting the pair now");
            delete_now(host)
        }
    }
}

/// The tombstones in the calling namespace left by [`retire`] for `network` (whose deletion has
/// not happened yet, or whose deleting process died).
///
/// # Errors
/// If the links cannot be listed.
pub fn tombstones(host: &mut Netlink, network: &str) -> Result<Vec<Link>, NetError> {
    Ok(host
        .links()?
        .into_iter()
        .filter(|link| {
            link.name.starts_with(TOMBSTONE_PREFIX)
                && link
                    .alias
                    .as_deref()
                    .and_then(parse_alias)
                    .is_some_and(|(net, _)| net == network)
        })
        .collect())
}

/// What `CHECK` expects: the result's view of one attachment.
#[derive(Debug)]
pub struct Expected<'a> {
    /// CNI network name.
    pub network: &'a str,
    /// The attachment.
    pub attachment: &'a Attachment,
    /// Pod namespace path and file.
    pub netns_path: &'a Path,
    /// Pod namespace.
    pub netns: &'a File,
    /// The pod interface's MAC according to the result (empty: not checked).
    pub pod_mac: &'a str,
    /// The host interface's MAC according to the result (empty: not checked).
    pub host_mac: &'a str,
    /// Addresses.
    pub ips: &'a [Cidr],
    /// Extra routes via the gateway.
    pub extra_routes: &'a [Cidr],
}

/// Compares the live state with `expected`; returns every difference, worded for the operator.
///
/// # Errors
/// If the state cannot be read.
pub fn check(host: &mut Netlink, expected: &Expected<'_>) -> Result<Vec<String>, NetError> {
    let mut diffs = Vec::new();
    let host_name = host_if_name(expected.network, expected.attachment);
    let host_link = host.link_by_name(&host_name)?;
    let ifname = &expected.attachment.ifname;
    match &host_link {
        None => diffs.push(format!("host interface {host_name} is missing")),
        Some(link) => {
            if !link.up {
                diffs.push(format!("host interface {host_name} is down"));
            }
            let mac = format_mac(&link.mac);
            if !expected.host_mac.is_empty() && !mac.eq_ignore_ascii_case(expected.host_mac) {
                diffs.push(format!(
                    "host interface {host_name} has MAC {mac}, the result says {}",
                    expected.host_mac
                ));
            }
            for family_v4 in [true, false] {
                let wanted: Vec<&Cidr> = expected
                    .ips
                    .iter()
                    .filter(|ip| ip.is_ipv4() == family_v4)
                    .collect();
                if wanted.is_empty() {
                    continue;
                }
                let routes = host.routes(family_v4)?;
                for ip in wanted {
                    let dst = Cidr::host(ip.addr());
                    if !routes
                        .iter()
                        .any(|r| r.dst == dst && r.oif == Some(link.index) && r.gw.is_none())
                    {
                        diffs.push(format!("host route {dst} dev {host_name} is missing"));
                    }
                }
            }
        }
    }
    let host_mac_bytes = host_link.as_ref().map(|l| l.mac.clone());
    let pod_diffs = netns::run_in(expected.netns, || -> Result<Vec<String>, NetError> {
        let mut diffs = Vec::new();
        let mut pod = Netlink::open()?;
        let Some(link) = pod.link_by_name(ifname)? else {
            diffs.push(format!(
                "interface {ifname} is missing in netns {}",
                expected.netns_path.display()
            ));
            return Ok(diffs);
        };
        if link.kind.as_deref() != Some("veth") {
            diffs.push(format!(
                "interface {ifname} is of kind {}, not veth",
                link.kind.as_deref().unwrap_or("unknown")
            ));
        }
        if !link.up {
            diffs.push(format!("interface {ifname} is down"));
        }
        let mac = format_mac(&link.mac);
        if !expected.pod_mac.is_empty() && !mac.eq_ignore_ascii_case(expected.pod_mac) {
            diffs.push(format!(
                "interface {ifname} has MAC {mac}, the result says {}",
                expected.pod_mac
            ));
        }
        let addresses = pod.addresses(link.index)?;
        for ip in expected.ips {
            if !addresses.contains(ip) {
                diffs.push(format!("interface {ifname} lacks address {ip}"));
            }
        }
        for extra in addresses.iter().filter(|a| {
            !(expected.ips.contains(a) || a.addr().is_ipv6() && is_link_local(a.addr()))
        }) {
            diffs.push(format!(
                "interface {ifname} has address {extra}, which is not in the result"
            ));
        }
        let neighbours = pod.neighbours(link.index)?;
        for v4 in [true, false] {
            if !expected.ips.iter().any(|ip| ip.is_ipv4() == v4) {
                continue;
            }
            let gateway = if v4 {
                IpAddr::V4(GATEWAY_V4)
            } else {
                IpAddr::V6(GATEWAY_V6)
            };
            let routes = pod.routes(v4)?;
            let default = Cidr::new(
                if v4 {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                },
                0,
            )
            .expect("prefix 0 fits");
            for dst in std::iter::once(default).chain(
                expected
                    .extra_routes
                    .iter()
                    .filter(|r| r.is_ipv4() == v4)
                    .map(Cidr::truncated),
            ) {
                if !routes
                    .iter()
                    .any(|r| r.dst == dst && r.gw == Some(gateway) && r.oif == Some(link.index))
                {
                    diffs.push(format!("route {dst} via {gateway} dev {ifname} is missing"));
                }
            }
            match neighbours.iter().find(|n| n.ip == gateway) {
                None => diffs.push(format!(
                    "permanent neighbour entry for gateway {gateway} on {ifname} is missing"
                )),
                Some(n) => {
                    if !n.permanent {
                        diffs.push(format!("neighbour entry for gateway {gateway} is not permanent"));
                    }
                    if let Some(host_mac) = &host_mac_bytes
                        && &n.mac != host_mac
                    {
                        diffs.push(format!(
                            "neighbour entry for gateway {gateway} points to {}, the host side's MAC is {}",
                            format_mac(&n.mac),
                            format_mac(host_mac)
                        ));
                    }
                }
            }
        }
        Ok(diffs)
    })
    .map_err(|source| NetError::Netns {
        path: expected.netns_path.to_path_buf(),
        source,
    })??;
    diffs.extend(pod_diffs);
    Ok(diffs)
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}

/// The host-side interfaces in the calling namespace that this plugin created for `network`,
/// with their attachments.
///
/// # Errors
/// If the links cannot be listed.
pub fn host_interfaces(
    host: &mut Netlink,
    network: &str,
) -> Result<Vec<(Link, Attachment)>, NetError> {
    Ok(host
        .links()?
        .into_iter()
        .filter_map(|link| {
            let (net, attachment) = parse_alias(link.alias.as_deref()?)?;
            (net == network && link.name.starts_with(HOST_IF_PREFIX)).then_some((link, attachment))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = Attachment {
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        let b = Attachment {
            container_id: "abc".into(),
            ifname: "eth1".into(),
        };
        let name = host_if_name("net", &a);
        assert_eq!(name, host_if_name("net", &a));
        assert_eq!(name.len(), 15);
        assert_ne!(name, host_if_name("net", &b));
        assert_ne!(name, host_if_name("other", &a));
        let alias = alias("net", &a);
        assert_eq!(parse_alias(&alias), Some(("net".to_owned(), a)));
        assert_eq!(parse_alias("something else"), None);
    }
}
