//! The overlay: how pods of this node reach pods of the other nodes.
//!
//! What happens to a packet a pod sends to a pod of another node: the pod's default route takes
//! it to the host side of its veth; the node routes it by its destination's pod CIDR, which this
//! module programmed from the other node's Node object:
//! - `vxlan` (Flannel's vxlan backend, wire-compatible): `10.244.2.0/24 via 10.244.2.0 dev
//!   gannet.vxlan onlink`; the permanent neighbour `10.244.2.0 lladdr <its VTEP MAC>` and the
//!   forwarding entry `<its VTEP MAC> dst <its node IP>` make the kernel's VXLAN device
//!   encapsulate it to the other node (UDP 8472, VNI 1), whose device decapsulates it and routes
//!   it to the pod's veth;
//! - `host-gw`: `10.244.2.0/24 via <its node IP> dev <underlay>` (nodes on one L2 segment);
//! - `ebpf` (the same wire format as `vxlan`): no per-node kernel entries. `gannet.vxlan` is in
//!   external (collect-metadata) mode and the node map (`GANNET_NODES`, see [`ebpf`]) holds
//!   `10.244.2.0/24 → <its node IP>, <its VTEP MAC>`; the pod's own program (`gannet_from_pod`)
//!   finds the destination there, sets the inner MACs and the tunnel key and redirects the
//!   packet into the device, past the host's routing and netfilter. On the receiving node the
//!   device's ingress program hands it straight to the pod's namespace.
//!
//! Reconciled, never flushed: a node added, removed or changed touches only its own entries, every
//! add is a replace (idempotent, no gap), and a restarted gannetd adopts what is programmed and
//! removes only what no node needs any more (routes it owns carry the route protocol
//! [`ROUTE_PROTOCOL`]).

mod device;
pub mod ebpf;
mod plan;
mod status;
mod sweep;
pub mod underlay;

use std::collections::BTreeMap;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gannet_common::{TUNNEL_F_ENABLED, TUNNEL_F_IPV6_UNDERLAY, TunnelConfig};

use gannet_cni::net::Cidr;
use gannet_cni::netlink::{Netlink, NetlinkError};
use gannet_k8s::{ClusterNode, format_mac};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::datapath::{DataPathError, pods::PodFastPath};
pub use device::cleanup;
use ebpf::TunnelMaps;
use plan::{Entry, Plan, plan};
pub use status::{NodeStatus, OverlayStatus, UnderlayStatus, read_status};
use underlay::Underlay;

/// The VXLAN device gannetd owns.
pub const DEVICE: &str = "gannet.vxlan";
/// The route protocol (`proto 87` in `ip route`) marking the routes gannetd owns.
pub const ROUTE_PROTOCOL: u8 = 87;
/// The overlay's report in the state directory, read by `gannetd status`.
pub const STATUS_FILE: &str = "overlay.json";
/// Flannel's VXLAN port (the Linux default, not IANA's 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
const VXLAN_OVERHEAD_V4: u32 = 50;
/// VXLAN over IPv6: a 40-byte outer header.
const VXLAN_OVERHEAD_V6: u32 = 70;

/// How pods reach other nodes' pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Single node: nothing is programmed for other nodes.
    None,
    /// A kernel VXLAN device with a neighbour, a forwarding entry and a route per node.
    Vxlan,
    /// A route per node via its address (all nodes on one L2 segment).
    HostGw,
    /// A VXLAN device in external mode driven by tc programs.
    Ebpf,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Vxlan => "vxlan",
            Self::HostGw => "host-gw",
            Self::Ebpf => "ebpf",
        }
    }
}

/// The overlay's settings.
#[derive(Clone, Debug)]
pub struct OverlayConfig {
    pub mode: Mode,
    /// `--overlay-interface`.
    pub interface: Option<String>,
    pub vni: u32,
    pub port: u16,
    /// How often [`Overlay::resync`] should run (`None`: never).
    pub resync: Option<std::time::Duration>,
    /// `--node-ip`.
    pub node_ips: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{0}")]
    Underlay(String),
    #[error(transparent)]
    Maps(#[from] ebpf::MapsError),
    #[error("the overlay's programs: {0}")]
    Programs(Box<DataPathError>),
    #[error("--overlay ebpf needs the eBPF data plane (--dataplane ebpf)")]
    NeedsPrograms,
}

impl From<DataPathError> for OverlayError {
    fn from(e: DataPathError) -> Self {
        Self::Programs(Box::new(e))
    }
}

/// What the overlay needs of the eBPF data path: the loaded pod programs (their object holds
/// the VXLAN device's programs of `--overlay ebpf`) and where their maps are pinned.
pub struct Programs<'a> {
    /// `None` with the nftables data plane, which loads no program (and allows no `ebpf`
    /// overlay).
    pub fast_path: Option<&'a mut PodFastPath>,
    pub bpf_root: &'a Path,
}

impl Programs<'_> {
    /// Takes the `ebpf` overlay out of the data path, for every other mode: the device's
    /// programs are detached, the tunnel disabled (the pod programs stop encapsulating) and the
    /// node map emptied. Nothing to do when the mode never ran.
    ///
    /// # Errors
    /// When the links cannot be unpinned or the maps cannot be written.
    pub fn disable_tunnel(&mut self) -> Result<(), OverlayError> {
        let Some(fast_path) = self.fast_path.as_deref_mut() else {
            return Ok(());
        };
        let mut maps = TunnelMaps::open(self.bpf_root)?;
        let was_enabled = maps.config()?.flags & TUNNEL_F_ENABLED != 0;
        maps.set_config(&TunnelConfig::default())?;
        let entries = maps.list()?;
        for (cidr, _) in &entries {
            maps.remove(*cidr)?;
        }
        let detached = fast_path.detach_tunnel()?;
        if was_enabled || detached || !entries.is_empty() {
            info!(
                removed = entries.len(),
                "the ebpf overlay is off: its programs are detached and its node map emptied"
            );
        }
        Ok(())
    }
}

/// The VXLAN device.
#[derive(Clone, Copy, Debug)]
struct Vtep {
    index: u32,
    mac: [u8; 6],
    mtu: u32,
}

/// What is programmed for one remote node.
#[derive(Clone, Debug)]
struct Programmed {
    node: ClusterNode,
    plan: Plan,
}

/// The running overlay.
pub struct Overlay {
    config: OverlayConfig,
    node_name: String,
    netlink: Netlink,
    underlay: Underlay,
    vtep: Option<Vtep>,
    /// This node's pod CIDRs, as last given.
    local_cidrs: Vec<IpNet>,
    /// The node map and tunnel settings (`ebpf` mode).
    tunnel: Option<TunnelMaps>,
    /// The cluster CIDRs routed into the device (`ebpf` mode), as last given.
    cluster_cidrs: Vec<IpNet>,
    programmed: BTreeMap<String, Programmed>,
    /// Whether the kernel was swept of stale entries (after the first complete node list).
    swept: bool,
    status_file: PathBuf,
}

impl Overlay {
    /// Finds the underlay and creates (or adopts) the VXLAN device; in `ebpf` mode also writes
    /// the tunnel's settings and attaches the device's programs (switching those a previous
    /// gannetd left). Nothing is programmed for other nodes until [`apply`](Self::apply).
    ///
    /// # Errors
    /// When the underlay cannot be found, the device cannot be created or (`ebpf`) the maps
    /// cannot be written or the programs attached.
    pub fn start(
        config: OverlayConfig,
        node_name: &str,
        state_dir: &Path,
        mut programs: Programs<'_>,
    ) -> Result<Self, OverlayError> {
        let mut netlink = Netlink::open()?;
        let underlay = underlay::find(&mut netlink, config.interface.as_deref(), &config.node_ips)?;
        let mut overlay = Self {
            node_name: node_name.to_owned(),
            netlink,
            vtep: None,
            local_cidrs: Vec::new(),
            tunnel: None,
            cluster_cidrs: Vec::new(),
            programmed: BTreeMap::new(),
            swept: false,
            status_file: state_dir.join(STATUS_FILE),
            underlay,
            config,
        };
        match overlay.config.mode {
            Mode::Vxlan => {
                programs.disable_tunnel()?;
                overlay.vtep = Some(overlay.ensure_device()?);
            }
            Mode::Ebpf => {
                let vtep = overlay.ensure_device()?;
                overlay.vtep = Some(vtep);
                // Frames the host routes into the device are readdressed by its egress program:
                // no neighbour resolution (which it would drop) on it.
                overlay.netlink.set_noarp(vtep.index, true)?;
                let mut maps = TunnelMaps::open(programs.bpf_root)?;
                let mut flags = TUNNEL_F_ENABLED;
                if overlay.underlay.ip.is_ipv6() {
                    flags |= TUNNEL_F_IPV6_UNDERLAY;
                }
                // Settings before programs: a pod's packet redirected into the device before its
                // own programs are attached is still sent right (the device needs only the key).
                maps.set_config(&TunnelConfig {
                    ifindex: vtep.index,
                    vni: overlay.config.vni,
                    mac: vtep.mac,
                    flags,
                })?;
                programs
                    .fast_path
                    .as_deref_mut()
                    .ok_or(OverlayError::NeedsPrograms)?
                    .attach_tunnel(DEVICE)?;
                overlay.tunnel = Some(maps);
            }
            Mode::HostGw | Mode::None => {
                programs.disable_tunnel()?;
                // A VXLAN mode before: its device (with its entries) is not needed any more.
                if let Some(link) = overlay.netlink.link_by_name(DEVICE)?
                    && link.kind.as_deref() == Some("vxlan")
                    && overlay.netlink.delete_link(link.index)?
                {
                    info!(
                        device = DEVICE,
                        "removed the VXLAN device of an earlier mode"
                    );
                }
            }
        }
        info!(
            mode = overlay.config.mode.name(),
            underlay = overlay.underlay.name,
            node_ip = %overlay.underlay.ip,
            underlay_mtu = overlay.underlay.mtu,
            pod_mtu = overlay.pod_mtu(),
            vtep_mac = overlay.vtep_mac().as_deref().unwrap_or("-"),
            "overlay ready"
        );
        overlay.write_status();
        Ok(overlay)
    }

    /// The MTU pods get: the VXLAN device's, or the underlay's for host-gw.
    pub fn pod_mtu(&self) -> u32 {
        self.vtep.map_or(self.underlay.mtu, |vtep| vtep.mtu)
    }

    /// The VXLAN device's MAC address, published on this node's Node.
    pub fn vtep_mac(&self) -> Option<String> {
        self.vtep.map(|vtep| format_mac(vtep.mac))
    }

    /// This node's address on the underlay.
    pub fn node_ip(&self) -> IpAddr {
        self.underlay.ip
    }

    /// Programs the cluster's nodes (this one included: its pod CIDRs become the VXLAN device's
    /// addresses). `complete` says `nodes` is the whole cluster: then entries gannetd owns that
    /// no node needs are removed too (once, after a start; later removals follow the nodes).
    pub fn apply(&mut self, nodes: &BTreeMap<String, ClusterNode>, complete: bool) {
        if let Some(local) = nodes.get(&self.node_name) {
            self.set_local(&local.pod_cidrs);
        }
        let mut taken: Vec<(String, IpNet)> = self
            .local_cidrs
            .iter()
            .map(|cidr| (self.node_name.clone(), *cidr))
            .collect();
        let mut desired: BTreeMap<&str, Plan> = BTreeMap::new();
        for (name, node) in nodes {
            if *name == self.node_name {
                continue;
            }
            let vtep = self.vtep.map(|v| v.index);
            let plan = plan(self.config.mode, node, &self.underlay, vtep, &taken);
            taken.extend(node.pod_cidrs.iter().map(|c| (name.clone(), *c)));
            desired.insert(name, plan);
        }
        let gone: Vec<String> = self
            .programmed
            .keys()
            .filter(|name| !desired.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.programmed.remove(&name) {
                let failed = self.remove_entries(&old.plan.entries, &[]);
                info!(
                    node = name,
                    removed = old.plan.entries.len() - failed,
                    "node left: its overlay entries are removed"
                );
            }
        }
        for (name, mut plan) in desired {
            let node = &nodes[name];
            let old = self.programmed.get(name);
            let unchanged =
                old.is_some_and(|old| old.plan == plan && old.node == *node && !old.plan.retry());
            if unchanged {
                continue;
            }
            let old_entries = old.map(|o| o.plan.entries.clone()).unwrap_or_default();
            let old_problem = old.and_then(|o| o.plan.problem.clone());
            if let Err(error) = self.add_entries(&plan.entries) {
                error!(node = name, %error, "cannot program the node's overlay entries; retrying with its next change");
                plan.problem = Some(format!("programming failed: {error}"));
            }
            self.remove_entries(&old_entries, &plan.entries);
            if plan.entries != old_entries {
                info!(
                    node = name,
                    mode = self.config.mode.name(),
                    ip = %crate::logging::list(&node.internal_ips),
                    pod_cidrs = %crate::logging::list(&node.pod_cidrs),
                    vtep_mac = node.vtep_mac.map(format_mac).unwrap_or_default(),
                    entries = plan.entries.len(),
                    "node programmed"
                );
            }
            if plan.problem != old_problem
                && let Some(problem) = &plan.problem
            {
                warn!(
                    node = name,
                    problem, "node not (fully) reachable through the overlay"
                );
            }
            self.programmed.insert(
                name.to_owned(),
                Programmed {
                    node: node.clone(),
                    plan,
                },
            );
        }
        if complete && !self.swept {
            self.sweep();
            self.swept = true;
        }
        self.write_status();
    }

    /// Gives the VXLAN device this node's pod CIDRs' network addresses (`10.244.1.0/32`), the
    /// source of packets the node itself sends into the overlay.
    pub fn set_local(&mut self, cidrs: &[IpNet]) {
        if cidrs == self.local_cidrs.as_slice() {
            return;
        }
        if let Some(vtep) = self.vtep {
            let host = |net: &IpNet| Cidr::host(net.network());
            for old in self.local_cidrs.iter().filter(|c| !cidrs.contains(c)) {
                if let Err(error) = self.netlink.delete_address(vtep.index, host(old)) {
                    warn!(%error, "cannot remove the VXLAN device's old address");
                }
            }
            for new in cidrs {
                if let Err(error) = self.netlink.ensure_address(vtep.index, host(new)) {
                    error!(%error, "cannot address the VXLAN device");
                }
            }
        }
        info!(pod_cidrs = %crate::logging::list(cidrs), "this node's pod CIDRs");
        self.local_cidrs = cidrs.to_vec();
    }

    /// Routes the cluster CIDRs into the device (`ebpf` mode): `10.244.0.0/16 dev gannet.vxlan
    /// proto 87`, for what the node itself sends to remote pods (host processes, health checks,
    /// replies from the node's own addresses). Pods' packets never use these routes (their own
    /// programs redirect them), and the per-node work stays in the node map: the device's egress
    /// program (`gannet_to_tunnel`) readdresses these packets for the node owning the
    /// destination and drops those no node owns, so the broad route cannot loop. More specific
    /// routes (this node's pods' own) win as usual. The routes also make remote pods' addresses
    /// pass reverse-path filtering on the device. A route of a cluster CIDR no longer given is
    /// removed; the sweep of node entries leaves these alone.
    pub fn set_cluster(&mut self, cidrs: &[IpNet]) {
        let Some(vtep) = self.vtep.filter(|_| self.config.mode == Mode::Ebpf) else {
            return;
        };
        if cidrs == self.cluster_cidrs.as_slice() {
            return;
        }
        for ipv4 in [true, false] {
            let routes = match self.netlink.routes(ipv4) {
                Ok(routes) => routes,
                Err(error) => {
                    warn!(%error, "cannot list routes to remove stale cluster routes");
                    continue;
                }
            };
            for route in routes {
                let dst = IpNet::new(route.dst.addr(), route.dst.prefix()).ok();
                if self.is_cluster_route(&route)
                    && !dst.is_some_and(|d| cidrs.contains(&d))
                    && let Err(error) = self.netlink.delete_route(route.dst, ROUTE_PROTOCOL)
                {
                    warn!(route = %route.dst, %error, "cannot remove a stale cluster route");
                }
            }
        }
        for cidr in cidrs {
            let dst = Cidr::new(cidr.network(), cidr.prefix_len()).expect("a valid prefix");
            if let Err(error) = self
                .netlink
                .replace_device_route(dst, vtep.index, ROUTE_PROTOCOL)
            {
                error!(%error, "cannot route the cluster CIDR into the VXLAN device; this node's own traffic to remote pods fails");
            }
        }
        info!(cluster_cidrs = %crate::logging::list(cidrs), device = DEVICE, "cluster CIDRs routed into the VXLAN device");
        self.cluster_cidrs = cidrs.to_vec();
    }

    /// Whether `route` is one of `set_cluster`'s: ours, without gateway, into the device.
    fn is_cluster_route(&self, route: &gannet_cni::netlink::RouteEntry) -> bool {
        self.config.mode == Mode::Ebpf
            && route.protocol == ROUTE_PROTOCOL
            && route.gw.is_none()
            && self.vtep.is_some_and(|v| route.oif == Some(v.index))
    }

    fn add_entries(&mut self, entries: &[Entry]) -> Result<(), OverlayError> {
        for entry in entries {
            debug!(entry = entry.describe(), "programming");
            match *entry {
                Entry::Fdb { mac, dst } => {
                    let vtep = self.vtep_index();
                    self.netlink.replace_fdb(vtep, &mac, dst)?;
                }
                Entry::Neighbour { ip, mac } => {
                    let vtep = self.vtep_index();
                    self.netlink.add_neighbour(vtep, ip, &mac)?;
                }
                Entry::Route {
                    dst,
                    via,
                    oif,
                    onlink,
                } => {
                    let dst = Cidr::new(dst.network(), dst.prefix_len()).expect("a valid prefix");
                    self.netlink
                        .replace_route(dst, via, oif, onlink, ROUTE_PROTOCOL)?;
                }
                Entry::Node { cidr, ip, mac } => {
                    if let Some(maps) = &mut self.tunnel {
                        maps.put(cidr, &ebpf::value(ip, mac))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Repairs the kernel's state, whatever happened to it since it was programmed (a route
    /// deleted by hand, `ip neigh flush`, a network service restarted): every entry of every
    /// node is added again (a replace: what is right stays, without a gap), then what no node
    /// needs is removed. Nothing happens before the first complete node list.
    pub fn resync(&mut self) {
        if !self.swept {
            return;
        }
        if let Some(vtep) = self.vtep {
            match self.netlink.link_by_name(DEVICE) {
                Ok(Some(link)) if link.index == vtep.index => {}
                Ok(_) => {
                    error!(
                        device = DEVICE,
                        "the VXLAN device was removed or replaced behind gannetd's back; restart gannetd to recreate it"
                    );
                    return;
                }
                Err(error) => {
                    warn!(%error, "cannot check the VXLAN device");
                    return;
                }
            }
        }
        let plans: Vec<(String, Vec<Entry>)> = self
            .programmed
            .iter()
            .map(|(name, p)| (name.clone(), p.plan.entries.clone()))
            .collect();
        for (name, entries) in plans {
            if let Err(error) = self.add_entries(&entries) {
                warn!(node = name, %error, "cannot repair the node's overlay entries");
            }
        }
        if let Some(vtep) = self.vtep.filter(|_| self.config.mode == Mode::Ebpf) {
            for cidr in self.cluster_cidrs.clone() {
                let dst = Cidr::new(cidr.network(), cidr.prefix_len()).expect("a valid prefix");
                if let Err(error) =
                    self.netlink
                        .replace_device_route(dst, vtep.index, ROUTE_PROTOCOL)
                {
                    warn!(%error, "cannot repair the cluster CIDR's route");
                }
            }
        }
        self.sweep();
    }

    /// Removes `entries` except those in `keep`, last first; returns how many failed (logged).
    fn remove_entries(&mut self, entries: &[Entry], keep: &[Entry]) -> usize {
        let mut failed = 0;
        for entry in entries.iter().rev().filter(|e| !keep.contains(e)) {
            let result: Result<bool, OverlayError> = match *entry {
                // Another node may have taken over the MAC's forwarding entry, the route's
                // destination or the pod CIDR since: remove only what still says what we
                // programmed.
                Entry::Fdb { mac, dst } => {
                    let vtep = self.vtep_index();
                    self.netlink
                        .delete_fdb(vtep, &mac, dst)
                        .map_err(OverlayError::from)
                }
                Entry::Neighbour { ip, .. } => {
                    let vtep = self.vtep_index();
                    self.netlink
                        .delete_neighbour(vtep, ip)
                        .map_err(OverlayError::from)
                }
                Entry::Route { dst, .. } => {
                    let dst = Cidr::new(dst.network(), dst.prefix_len()).expect("a valid prefix");
                    self.netlink
                        .delete_route(dst, ROUTE_PROTOCOL)
                        .map_err(OverlayError::from)
                }
                Entry::Node { cidr, ip, mac } => match &mut self.tunnel {
                    Some(maps) if maps.get(cidr) == Some(ebpf::value(ip, mac)) => {
                        maps.remove(cidr).map_err(OverlayError::from)
                    }
                    _ => Ok(false),
                },
            };
            if let Err(error) = result {
                failed += 1;
                warn!(entry = entry.describe(), %error, "cannot remove a stale overlay entry");
            }
        }
        failed
    }

    fn vtep_index(&self) -> u32 {
        self.vtep.map_or(0, |v| v.index)
    }
}

impl Plan {
    /// A plan whose programming failed is tried again on the next change of any node.
    fn retry(&self) -> bool {
        self.problem
            .as_deref()
            .is_some_and(|p| p.starts_with("programming failed"))
    }
}
