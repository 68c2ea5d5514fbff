//! The per-pod fast path: the endpoint map and the tc programs on each pod's host-side veth.
//!
//! gannetd runs in the node's network namespace; each pod's host-side veth gets
//! `gannet_from_pod` (tcx ingress) and `gannet_to_pod` (tcx egress). Their links are pinned under
//! `<bpf-root>/links/pods/<ifindex>-{from,to}` and, like the socket programs, switched to the
//! newly loaded programs on restart.
//!
//! The same object holds the overlay's device programs (`--overlay ebpf`): `gannet_from_tunnel`
//! (tcx ingress) and `gannet_to_tunnel` (tcx egress) of the VXLAN device, pinned under
//! `<bpf-root>/links/tunnel-{from,to}` and switched to the new programs by
//! [`PodFastPath::attach_tunnel`] on restart. Their maps (the node map and the tunnel's
//! settings) are pinned with the others and written by `overlay::ebpf`.

use std::{
    collections::BTreeMap,
    fs, io,
    net::IpAddr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues},
    programs::{SchedClassifier, TcAttachType},
};
use gannet_common::{
    EndpointDrops, EndpointKey, EndpointStats, EndpointValue, map_names, v4_mapped,
};
use tracing::{debug, info};

use super::{
    DataPathError, ensure_bpffs, full, io_err,
    nodeport::{self, ExternalMaps, NodePortMaps},
};
use crate::sys;

mod external;
mod links;
mod tunnel;

pub(super) use self::links::pinned_loader;
use self::links::{attach_pinned, host_veth, program, take, xdp_program};

/// The pod programs' object, built by build.rs.
pub(super) static POD_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gannet-pod"));

const FROM_POD: &str = "gannet_from_pod";
const TO_POD: &str = "gannet_to_pod";
const FROM_TUNNEL: &str = "gannet_from_tunnel";
/// Pin names of the tunnel device's links under `<bpf-root>/links`.
const TUNNEL_FROM: &str = "tunnel-from";
const TUNNEL_TO: &str = "tunnel-to";
const TO_TUNNEL: &str = "gannet_to_tunnel";

/// Capacities of the maps the pod object creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCapacity {
    /// Pod addresses of this node (`--max-endpoints`).
    pub endpoints: u32,
    /// Conntrack entries of the NodePort programs, two per flow (`--max-conntrack`).
    pub conntrack: u32,
    /// Externally reachable frontends with a Maglev table.
    pub external: u32,
    /// Entries of each Maglev table (`--maglev-table-size`).
    pub maglev_table_size: u32,
    /// ClientIP affinity entries of clients outside (`--max-affinity`).
    pub affinity: u32,
}

impl Default for PodCapacity {
    fn default() -> Self {
        Self {
            endpoints: gannet_common::DEFAULT_MAX_ENDPOINTS,
            conntrack: gannet_common::DEFAULT_MAX_CONNTRACK,
            external: gannet_common::DEFAULT_MAX_EXTERNAL,
            maglev_table_size: gannet_common::DEFAULT_MAGLEV_TABLE_SIZE,
            affinity: gannet_common::DEFAULT_MAX_NODEPORT_AFFINITY,
        }
    }
}

/// A pod of this node, as the fast path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Name of the pod's host-side veth in the node's namespace.
    pub host_ifname: String,
    /// MAC of the pod's own interface.
    pub mac: [u8; 6],
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
}

/// What the kernel knows about a host-side veth.
#[derive(Debug, Clone, Copy)]
struct HostVeth {
    ifindex: u32,
    mac: [u8; 6],
}

fn key(ip: IpAddr) -> EndpointKey {
    EndpointKey {
        addr: match ip {
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        },
    }
}

pub struct PodFastPath {
    ebpf: Ebpf,
    /// The NodePort programs' maps (settings, counters, conntrack).
    pub nodeport: NodePortMaps,
    /// Taken by the reconciler (it writes the tables) with [`PodFastPath::take_external`].
    maglev: Option<ExternalMaps>,
    bpf_root: PathBuf,
    endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    stats: PerCpuHashMap<MapData, u32, EndpointStats>,
    /// Created by the program at a pod's first drop; removed here with the endpoint.
    drops: PerCpuHashMap<MapData, u32, EndpointDrops>,
    links_dir: PathBuf,
    /// `<bpf-root>/links`: where the tunnel device's links are pinned.
    tunnel_links_dir: PathBuf,
}

impl PodFastPath {
    /// Loads the pod programs (reusing pinned maps) and switches every pinned pod link to them;
    /// links of interfaces that no longer exist are removed with their endpoints.
    pub fn load(bpf_root: &Path, capacity: &PodCapacity) -> Result<Self, DataPathError> {
        ensure_bpffs(bpf_root)?;
        super::pins::check_pinned_maps(bpf_root)?;
        let maps_dir = bpf_root.join("maps");
        let tunnel_links_dir = bpf_root.join("links");
        let links_dir = tunnel_links_dir.join("pods");
        for dir in [&maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        nodeport::retire_incompatible_maglev(&maps_dir)?;
        let mut ebpf = pinned_loader(&maps_dir)
            .map_max_entries(map_names::ENDPOINTS, capacity.endpoints)
            .map_max_entries(map_names::ENDPOINT_STATS, capacity.endpoints)
            .map_max_entries(map_names::ENDPOINT_DROPS, capacity.endpoints)
            .map_max_entries(map_names::CONNTRACK, capacity.conntrack)
            .map_max_entries(map_names::MAGLEV, capacity.external)
            .map_max_entries(map_names::NODEPORT_AFFINITY, capacity.affinity)
            .load(POD_OBJECT)?;
        for name in [FROM_POD, TO_POD, FROM_TUNNEL, TO_TUNNEL, nodeport::PROGRAM] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| DataPathError::Program { name, source })?;
        }
        xdp_program(&mut ebpf)?
            .load()
            .map_err(|source| DataPathError::Program {
                name: nodeport::XDP_PROGRAM,
                source,
            })?;
        let endpoints = take(&mut ebpf, map_names::ENDPOINTS)?;
        let stats = PerCpuHashMap::try_from(
            ebpf.take_map(map_names::ENDPOINT_STATS)
                .ok_or(DataPathError::MissingMap(map_names::ENDPOINT_STATS))?,
        )
        .map_err(|source| DataPathError::Map {
            name: map_names::ENDPOINT_STATS,
            source,
        })?;
        let drops = PerCpuHashMap::try_from(
            ebpf.take_map(map_names::ENDPOINT_DROPS)
                .ok_or(DataPathError::MissingMap(map_names::ENDPOINT_DROPS))?,
        )
        .map_err(|source| DataPathError::Map {
            name: map_names::ENDPOINT_DROPS,
            source,
        })?;
        let nodeport = NodePortMaps::take(&mut ebpf)?;
        let maglev = Some(ExternalMaps::take(
            &mut ebpf,
            capacity.maglev_table_size,
            &maps_dir,
        )?);
        let mut this = Self {
            ebpf,
            nodeport,
            maglev,
            bpf_root: bpf_root.to_owned(),
            endpoints,
            stats,
            drops,
            links_dir,
            tunnel_links_dir,
        };
        this.adopt()?;
        this.adopt_nodeport()?;
        Ok(this)
    }

    /// Switches pinned links to the freshly loaded programs; forgets vanished interfaces.
    fn adopt(&mut self) -> Result<(), DataPathError> {
        let entries = fs::read_dir(&self.links_dir).map_err(io_err(&self.links_dir))?;
        let mut adopted = 0;
        for entry in entries {
            let path = entry.map_err(io_err(&self.links_dir))?.path();
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((ifindex, direction)) = file
                .split_once('-')
                .and_then(|(i, d)| Some((i.parse::<u32>().ok()?, d)))
            else {
                continue;
            };
            let name = if direction == "from" {
                FROM_POD
            } else {
                TO_POD
            };
            if sys::ifname(ifindex).is_err() {
                // The pod's veth is gone (deleted while gannetd was down).
                fs::remove_file(&path).map_err(io_err(&path))?;
                self.forget_ifindex(ifindex)?;
                continue;
            }
            let link = sys::obj_get(&path).map_err(|source| DataPathError::Link {
                name,
                what: "opening pinned pod link",
                source,
            })?;
            let prog = program(&mut self.ebpf, name)?;
            let prog_fd = prog
                .fd()
                .map_err(|source| DataPathError::Program { name, source })?;
            sys::link_update(link.as_fd(), prog_fd.as_fd()).map_err(|source| {
                DataPathError::Link {
                    name,
                    what: "replacing the program of a pinned pod link",
                    source,
                }
            })?;
            adopted += 1;
        }
        if adopted > 0 {
            info!(links = adopted, "adopted the pod fast path");
        }
        Ok(())
    }

    /// Makes `endpoint` reachable through the fast path and attaches its programs. Adding an
    /// endpoint again (e.g. a repeated CNI ADD) converges to the same state: addresses it no
    /// longer has are removed, and a pinned link left by a vanished interface of the same index
    /// is replaced. When it fails, an endpoint that was new here is removed again (no links,
    /// counters or addresses stay behind).
    pub fn add(&mut self, endpoint: &Endpoint) -> Result<u32, DataPathError> {
        let veth = host_veth(&endpoint.host_ifname)?;
        let fresh = self.stats.get(&veth.ifindex, 0).is_err()
            && !self.endpoints().contains_key(&veth.ifindex)
            && ["from", "to"].iter().all(|d| {
                !self
                    .links_dir
                    .join(format!("{}-{d}", veth.ifindex))
                    .exists()
            });
        let added = self.program(endpoint, veth);
        if added.is_err() && fresh {
            let _ = self.remove(veth.ifindex);
        }
        added.map(|()| veth.ifindex)
    }

    fn program(&mut self, endpoint: &Endpoint, veth: HostVeth) -> Result<(), DataPathError> {
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataPathError::Io {
            path: PathBuf::from("/sys/devices/system/cpu/possible"),
            source: e,
        })?;
        if self.stats.get(&veth.ifindex, 0).is_err() {
            let zeros = PerCpuValues::try_from(vec![EndpointStats::default(); ncpus]).map_err(
                |source| DataPathError::Io {
                    path: PathBuf::from("per-cpu stats"),
                    source,
                },
            )?;
            self.stats
                .insert(veth.ifindex, zeros, 0)
                .map_err(|source| DataPathError::Map {
                    name: map_names::ENDPOINT_STATS,
                    source: full::check(map_names::ENDPOINT_STATS, source),
                })?;
        }
        for (name, attach_type, direction) in [
            (FROM_POD, TcAttachType::Ingress, "from"),
            (TO_POD, TcAttachType::Egress, "to"),
        ] {
            let pin = self.links_dir.join(format!("{}-{direction}", veth.ifindex));
            if pin.exists() {
                // Attached to this interface: nothing to do. A link of an interface that is
                // gone (whose index the kernel gave again) is replaced.
                let on = sys::obj_get(&pin)
                    .and_then(|link| sys::tcx_link_ifindex(link.as_fd()))
                    .ok();
                if on == Some(veth.ifindex) {
                    continue;
                }
                debug!(pin = %pin.display(), ?on, ifindex = veth.ifindex, "replacing a stale pod link");
                fs::remove_file(&pin).map_err(io_err(&pin))?;
            }
            attach_pinned(
                &mut self.ebpf,
                name,
                &endpoint.host_ifname,
                attach_type,
                &pin,
            )?;
        }
        let value = EndpointValue {
            ifindex: veth.ifindex,
            flags: 0,
            mac: endpoint.mac,
            host_mac: veth.mac,
        };
        let keys: Vec<EndpointKey> = endpoint.ips.iter().map(|ip| key(*ip)).collect();
        for k in &keys {
            self.endpoints
                .insert(*k, value, 0)
                .map_err(|source| DataPathError::Map {
                    name: map_names::ENDPOINTS,
                    source: full::check(map_names::ENDPOINTS, source),
                })?;
        }
        // Addresses an earlier registration on this veth had and this one has not.
        let dropped: Vec<EndpointKey> = self
            .endpoints
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| v.ifindex == veth.ifindex && !keys.iter().any(|n| n.addr == k.addr))
            .map(|(k, _)| k)
            .collect();
        for k in &dropped {
            let _ = self.endpoints.remove(k);
        }
        debug!(ifname = %endpoint.host_ifname, ifindex = veth.ifindex, ips = ?endpoint.ips, "endpoint added");
        Ok(())
    }

    /// Removes the links, counters and addresses of interfaces that are gone and not in
    /// `known` (the registered endpoints, which the registry removes itself). Returns their
    /// indexes.
    pub fn remove_vanished(
        &mut self,
        known: &std::collections::BTreeSet<u32>,
    ) -> Result<Vec<u32>, DataPathError> {
        let mut candidates: std::collections::BTreeSet<u32> =
            self.endpoints().into_keys().collect();
        candidates.extend(self.stats.keys().filter_map(Result::ok));
        let entries = fs::read_dir(&self.links_dir).map_err(io_err(&self.links_dir))?;
        for entry in entries {
            let path = entry.map_err(io_err(&self.links_dir))?.path();
            if let Some(ifindex) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once('-'))
                .and_then(|(i, _)| i.parse::<u32>().ok())
            {
                candidates.insert(ifindex);
            }
        }
        let mut swept = Vec::new();
        for ifindex in candidates {
            if known.contains(&ifindex) || sys::ifname(ifindex).is_ok() {
                continue;
            }
            self.remove(ifindex)?;
            swept.push(ifindex);
        }
        Ok(swept)
    }

    /// Removes the endpoint on host veth `ifindex`: its addresses, counters and links. Missing
    /// pieces are fine (DEL is best effort and may come twice).
    pub fn remove(&mut self, ifindex: u32) -> Result<(), DataPathError> {
        for direction in ["from", "to"] {
            let pin = self.links_dir.join(format!("{ifindex}-{direction}"));
            match fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&pin)(e)),
            }
        }
        self.forget_ifindex(ifindex)
    }

    fn forget_ifindex(&mut self, ifindex: u32) -> Result<(), DataPathError> {
        let doomed: Vec<EndpointKey> = self
            .endpoints
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.ifindex == ifindex)
            .map(|(k, _)| k)
            .collect();
        for k in &doomed {
            let _ = self.endpoints.remove(k);
        }
        let _ = self.stats.remove(&ifindex);
        let _ = self.drops.remove(&ifindex);
        debug!(ifindex, addresses = doomed.len(), "endpoint removed");
        Ok(())
    }

    /// The endpoint's counters, summed over CPUs.
    pub fn stats(&self, ifindex: u32) -> Option<EndpointStats> {
        let per_cpu = self.stats.get(&ifindex, 0).ok()?;
        Some(
            per_cpu
                .iter()
                .fold(EndpointStats::default(), |a, s| EndpointStats {
                    rx_packets: a.rx_packets + s.rx_packets,
                    rx_bytes: a.rx_bytes + s.rx_bytes,
                    tx_packets: a.tx_packets + s.tx_packets,
                    tx_bytes: a.tx_bytes + s.tx_bytes,
                }),
        )
    }

    /// What the program dropped of the endpoint's packets, summed over CPUs (zero before its
    /// first drop).
    pub fn drops(&self, ifindex: u32) -> EndpointDrops {
        self.drops
            .get(&ifindex, 0)
            .map(|per_cpu| {
                per_cpu
                    .iter()
                    .fold(EndpointDrops::default(), |a, d| EndpointDrops {
                        source: a.source + d.source,
                        neighbour: a.neighbour + d.neighbour,
                    })
            })
            .unwrap_or_default()
    }

    /// Addresses in the endpoint map, by host-side ifindex.
    pub fn endpoints(&self) -> BTreeMap<u32, Vec<[u8; 16]>> {
        let mut out: BTreeMap<u32, Vec<[u8; 16]>> = BTreeMap::new();
        for (k, v) in self.endpoints.iter().filter_map(Result::ok) {
            out.entry(v.ifindex).or_default().push(k.addr);
        }
        out
    }

    /// The `gannet_from_pod` program, for packet tests (`BPF_PROG_TEST_RUN`).
    pub fn from_pod_program(&mut self) -> Result<&mut SchedClassifier, DataPathError> {
        program(&mut self.ebpf, FROM_POD)
    }
}

#[cfg(test)]
pub(crate) mod tests;
