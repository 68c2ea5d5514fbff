//! The socket load balancer's maps as the reconciler writes them ([`BpfMaps`], the kernel side
//! of `ServiceMaps`), and the connected UDP sockets terminated when their backend goes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{HashMap, IterableMap as _, MapData, MapError},
};
use gannet_common::{
    AffinityKey, AffinityValue, BackendValue, RevNatKey, RevNatValue, ServiceKey, ServiceValue,
    SlotKey, map_names,
};
use tracing::{debug, warn};

use super::reconcile::{MapOpError, ServiceMaps};
use crate::{config::Capacity, sockdiag, sys};

use super::{DataPathError, full, nodeport, purge, reconcile};

/// The load balancer's maps, as the reconciler writes them.
pub struct BpfMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, BackendValue>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    rev_nat: HashMap<MapData, RevNatKey, RevNatValue>,
    /// Walks `affinity` for purges off the main loop (`None`: it could not be started, and
    /// purges walk the map on the loop).
    purger: Option<purge::Purger>,
    capacity: Capacity,
    /// The Maglev tables (from the pod object); until set, external frontends get none.
    external: Option<nodeport::ExternalMaps>,
    /// The NodePort maps purges walk, when there is no purge thread to walk them.
    flows: Option<Box<nodeport::FlowMaps>>,
    /// The cgroup the programs are attached to: connected UDP sockets of its sub-tree are
    /// terminated when their backend goes.
    cgroup: PathBuf,
}

/// Takes a map out of the loaded object. The key and value sizes are checked (a pinned map
/// left by a gannetd of another layout is an error); a pinned map whose capacity differs from
/// the configured one keeps its own, with a warning, and `capacity` is set to what is in effect.
fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    flag: &str,
    capacity: &mut u32,
) -> Result<HashMap<MapData, K, V>, DataPathError> {
    let map = ebpf.take_map(name).ok_or(DataPathError::MissingMap(name))?;
    let map = HashMap::try_from(map).map_err(|source| DataPathError::Map { name, source })?;
    let actual = map
        .map()
        .info()
        .map_err(|source| DataPathError::Map { name, source })?
        .max_entries();
    if actual != *capacity {
        warn!(
            map = name,
            pinned = actual,
            configured = *capacity,
            "{flag} differs from the pinned map's capacity; the pinned capacity stays in effect \
             until `gannetd cleanup` (which interrupts service traffic) and a restart"
        );
        *capacity = actual;
    }
    Ok(map)
}

impl BpfMaps {
    pub(super) fn take(
        ebpf: &mut Ebpf,
        mut capacity: Capacity,
        cgroup: &Path,
    ) -> Result<Self, DataPathError> {
        let c = &mut capacity;
        let affinity = take_map(ebpf, map_names::AFFINITY, "--max-affinity", &mut c.affinity)?;
        let purger = match purge::reopen(&affinity)
            .map_err(|e| e.to_string())
            .and_then(|map| purge::Purger::spawn(map).map_err(|e| e.to_string()))
        {
            Ok(purger) => Some(purger),
            Err(e) => {
                warn!(error = %e, "could not start the affinity purge thread; purges run on the main loop");
                None
            }
        };
        Ok(Self {
            services: take_map(ebpf, map_names::SERVICES, "--max-services", &mut c.services)?,
            slots: take_map(ebpf, map_names::SLOTS, "--max-slots", &mut c.slots)?,
            backends: take_map(ebpf, map_names::BACKENDS, "--max-backends", &mut c.backends)?,
            affinity,
            purger,
            rev_nat: take_map(ebpf, map_names::REV_NAT, "--max-rev-nat", &mut c.rev_nat)?,
            capacity,
            external: None,
            flows: None,
            cgroup: cgroup.to_owned(),
        })
    }

    /// Hands the Maglev tables to the reconciler's maps (they live in the pod object, which is
    /// loaded after this one).
    pub fn set_external(&mut self, mut maglev: nodeport::ExternalMaps) {
        // The maps purges walk go to the purge thread (or stay here without one).
        self.flows = maglev.take_flows().and_then(|flows| match &self.purger {
            Some(purger) => purger.add_flows(Box::new(flows)).err(),
            None => Some(Box::new(flows)),
        });
        self.external = Some(maglev);
    }

    /// Entries in the reverse-NAT map (for status, metrics and tests; walks the map).
    pub fn rev_nat_len(&self) -> usize {
        self.rev_nat.keys().filter(Result::is_ok).count()
    }

    /// Entries in the affinity map (for metrics; walks the map).
    pub fn affinity_len(&self) -> usize {
        self.affinity.keys().filter(Result::is_ok).count()
    }

    /// The capacities in effect (a pinned map keeps its own).
    #[must_use]
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }
}

fn os_error(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

pub(super) fn write_err(
    map: &'static str,
    op: &'static str,
    capacity: u32,
    e: MapError,
) -> MapOpError {
    match os_error(&e) {
        errno if full::is_full_errno(errno) => {
            if op == "update" {
                full::record(map);
            }
            MapOpError::Full { map, capacity }
        }
        _ => MapOpError::Other {
            map,
            op,
            source: io::Error::other(e),
        },
    }
}

pub(super) fn delete_result(map: &'static str, r: Result<(), MapError>) -> Result<(), MapOpError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(e) if os_error(&e) == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(write_err(map, "delete", 0, e)),
    }
}

fn maglev_err(op: &'static str, e: DataPathError) -> MapOpError {
    MapOpError::Other {
        map: map_names::MAGLEV,
        op,
        source: io::Error::other(e),
    }
}

fn list<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, MapOpError> {
    map.iter()
        .map(|r| r.map_err(|e| write_err(name, "iterate", 0, e)))
        .collect()
}

impl ServiceMaps for BpfMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapOpError> {
        let cap = self.capacity.services;
        self.services
            .insert(key, value, 0)
            .map_err(|e| write_err(map_names::SERVICES, "update", cap, e))
    }

    fn del_service(&mut self, key: &ServiceKey) -> Result<(), MapOpError> {
        delete_result(map_names::SERVICES, self.services.remove(key))
    }

    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), MapOpError> {
        let cap = self.capacity.slots;
        self.slots
            .insert(key, backend_id, 0)
            .map_err(|e| write_err(map_names::SLOTS, "update", cap, e))
    }

    fn del_slot(&mut self, key: &SlotKey) -> Result<(), MapOpError> {
        delete_result(map_names::SLOTS, self.slots.remove(key))
    }

    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapOpError> {
        let cap = self.capacity.backends;
        self.backends
            .insert(id, value, 0)
            .map_err(|e| write_err(map_names::BACKENDS, "update", cap, e))
    }

    fn del_backend(&mut self, id: u32) -> Result<(), MapOpError> {
        delete_result(map_names::BACKENDS, self.backends.remove(&id))
    }

    fn purge_affinity(
        &mut self,
        purge: &std::sync::Arc<reconcile::AffinityPurge>,
    ) -> Result<usize, MapOpError> {
        let mut purged = match &self.purger {
            Some(purger) => match purger.purge(std::sync::Arc::clone(purge), purge::PURGE_WAIT) {
                Some(result) => result?,
                None => 0,
            },
            None => purge::purge_map(&mut self.affinity, purge)?,
        };
        if let Some(flows) = &mut self.flows {
            purged += purge::purge_flows(flows, purge);
        }
        Ok(purged)
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapOpError> {
        list(&self.services, map_names::SERVICES)
    }

    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, MapOpError> {
        list(&self.slots, map_names::SLOTS)
    }

    fn backends(&self) -> Result<Vec<(u32, BackendValue)>, MapOpError> {
        list(&self.backends, map_names::BACKENDS)
    }

    fn put_maglev(&mut self, service_id: u32, table: &[u32]) -> Result<(), MapOpError> {
        let Some(maglev) = &mut self.external else {
            return Ok(());
        };
        maglev
            .stage(service_id, table)
            .map_err(|e| maglev_err("create", e))
    }

    fn del_maglev(&mut self, service_id: u32) {
        if let Some(maglev) = &mut self.external {
            maglev.stage_remove(service_id);
        }
    }

    fn maglev_staged(&self) -> usize {
        self.external
            .as_ref()
            .map_or(0, nodeport::ExternalMaps::staged)
    }

    fn flush_maglev(&mut self) -> Vec<(u32, MapOpError)> {
        let Some(maglev) = &mut self.external else {
            return Vec::new();
        };
        maglev
            .flush()
            .into_iter()
            .map(|(id, e)| (id, maglev_err("update", e)))
            .collect()
    }

    fn maglev_ids(&self) -> Result<std::collections::BTreeSet<u32>, MapOpError> {
        Ok(self
            .external
            .as_ref()
            .map(nodeport::ExternalMaps::service_ids)
            .unwrap_or_default())
    }

    fn maglev_table(&self, service_id: u32) -> Option<Vec<u32>> {
        self.external.as_ref()?.get(service_id)
    }

    fn put_ranges(&mut self, service_id: u32, nets: &[ipnet::IpNet]) -> Result<(), MapOpError> {
        let Some(maps) = &mut self.external else {
            return Ok(());
        };
        maps.put_ranges(service_id, nets)
            .map_err(|e| MapOpError::Other {
                map: map_names::SOURCE_RANGES,
                op: "update",
                source: io::Error::other(e),
            })
    }

    fn del_ranges(&mut self, service_id: u32, nets: &[ipnet::IpNet]) -> Result<(), MapOpError> {
        let Some(maps) = &mut self.external else {
            return Ok(());
        };
        maps.del_ranges(service_id, nets)
            .map_err(|e| MapOpError::Other {
                map: map_names::SOURCE_RANGES,
                op: "delete",
                source: io::Error::other(e),
            })
    }

    fn ranges(&self) -> Result<std::collections::BTreeMap<u32, Vec<ipnet::IpNet>>, MapOpError> {
        Ok(self
            .external
            .as_ref()
            .map(nodeport::ExternalMaps::ranges)
            .unwrap_or_default())
    }

    fn maglev_size(&self) -> u32 {
        self.external.as_ref().map_or(
            self.capacity.maglev_table_size,
            nodeport::ExternalMaps::size,
        )
    }

    /// Terminates the connected UDP sockets of the attached cgroup's sub-tree whose peer is a
    /// backend in `gone`, unless the reverse-NAT entry the connect hook left says the socket
    /// reached it through a frontend that still has it (two services sharing a backend). A
    /// socket without such an entry (connected to the backend's address directly, or whose entry
    /// the LRU map evicted) is terminated too: it is talking to an endpoint that left its
    /// service, or (evicted) reconnects through its service. The entry is only this hint: the
    /// socket's translations live in its own storage, which `sock_diag` does not report for UDP
    /// sockets (asked with `INET_DIAG_REQ_SK_BPF_STORAGES`, kernel 6.18 answered UDP sockets
    /// without the attribute).
    ///
    /// Looked at are gannetd's own network namespace and those of the sub-tree's processes
    /// (pods in namespaces of their own), each once, through a netlink socket created there by a
    /// helper thread (`crate::netns`). A namespace that cannot be reached is logged (once per
    /// call, with how many) and the others are still done; only a failure in gannetd's own
    /// namespace is returned as an error.
    fn terminate_udp(
        &mut self,
        gone: &BTreeMap<gannet_k8s::Backend, BTreeSet<u32>>,
    ) -> Result<usize, sockdiag::SockDiagError> {
        let subtree = cgroup_subtree(&self.cgroup);
        let own_ns = crate::netns::current().ok();
        let mut own = sockdiag::DiagSocket::open()?;
        let own_result = self.terminate_in(&mut own, gone, &subtree.ids);
        drop(own);

        let pods = crate::netns::of_processes(subtree.pids, own_ns.as_slice());
        let mut terminated = 0;
        let mut failures = 0;
        let mut first_failure = pods.failed.as_ref().map(|(pid, e, n)| {
            failures += n;
            format!("reading /proc/{pid}/ns/net: {e}")
        });
        let sockets = crate::netns::in_each(&pods.found, sockdiag::DiagSocket::open);
        for (found, socket) in pods.found.iter().zip(sockets) {
            let result = socket.map_err(|e| e.to_string()).and_then(|mut s| {
                self.terminate_in(&mut s, gone, &subtree.ids)
                    .map_err(|e| e.to_string())
            });
            match result {
                Ok(n) => terminated += n,
                Err(e) => {
                    failures += 1;
                    first_failure.get_or_insert_with(|| {
                        format!(
                            "network namespace of pid {} (inode {}): {e}",
                            found.pid, found.id.ino
                        )
                    });
                }
            }
        }
        if let Some(first) = first_failure {
            warn!(
                namespaces = pods.found.len(),
                failures,
                first = %first,
                "connected UDP sockets of removed backends could not be looked at in every pod \
                 network namespace; those left keep sending to them until they reconnect"
            );
        }
        debug!(
            namespaces = pods.found.len(),
            terminated, "pod network namespaces looked at"
        );
        Ok(own_result? + terminated)
    }
}

impl BpfMaps {
    /// [`ServiceMaps::terminate_udp`] in the namespace of `socket`.
    fn terminate_in(
        &self,
        socket: &mut sockdiag::DiagSocket,
        gone: &BTreeMap<gannet_k8s::Backend, BTreeSet<u32>>,
        cgroups: &BTreeSet<u64>,
    ) -> Result<usize, sockdiag::SockDiagError> {
        let v4 = gone.keys().any(|b| b.ip.is_ipv4());
        let mut candidates = Vec::new();
        // An IPv6 socket reaches IPv4 backends through IPv4-mapped addresses (reported as IPv4).
        for family in [sockdiag::AF_INET, sockdiag::AF_INET6] {
            if family == sockdiag::AF_INET && !v4 {
                continue;
            }
            candidates.extend(
                sockdiag::connected_udp(socket, family)?
                    .into_iter()
                    .filter_map(|s| {
                        let backend = gannet_k8s::Backend {
                            ip: s.peer.ip(),
                            port: s.peer.port(),
                        };
                        Some((gone.get_key_value(&backend)?, s))
                    }),
            );
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        let doomed: Vec<sockdiag::UdpSock> = candidates
            .into_iter()
            .filter(|(_, s)| s.cgroup_id.is_some_and(|id| cgroups.contains(&id)))
            .filter(|((backend, frontends), s)| {
                let value = reconcile::backend_value(backend);
                let key = RevNatKey {
                    cookie: s.cookie,
                    addr: value.addr,
                    port: value.port,
                    pad: [0; 6],
                };
                self.rev_nat
                    .get(&key, 0)
                    .map_or(true, |rev| frontends.contains(&rev.service_id))
            })
            .map(|(_, s)| s)
            .collect();
        for s in &doomed {
            debug!(
                local = %s.local,
                peer = %s.peer,
                cookie = s.cookie,
                "terminating a connected UDP socket"
            );
        }
        sockdiag::destroy(socket, &doomed)
    }
}

/// A cgroup sub-tree: the ids of its cgroups and the processes in them.
struct Subtree {
    ids: BTreeSet<u64>,
    pids: Vec<i32>,
}

/// The ids of `root` and every cgroup below it, and the processes in them (`cgroup.procs`).
/// Unreadable directories are skipped (a cgroup removed while we walk).
fn cgroup_subtree(root: &Path) -> Subtree {
    let mut ids = BTreeSet::new();
    let mut pids = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(id) = sys::cgroup_id(&dir) else {
            continue;
        };
        ids.insert(id);
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(
                procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        dirs.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    Subtree { ids, pids }
}
