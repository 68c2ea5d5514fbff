//! Desired service state in, map diffs out.
//!
//! The [`Reconciler`] owns the id spaces of services and backends and the slot generations. It
//! changes a service so that a program looking it up at any instant resolves it to a valid
//! backend of either the old or the new set, never to nothing or to a freed slot:
//!
//! 1. new backends are written to the backend map;
//! 2. the new backend list is written to the slot generation the programs are *not* reading;
//! 3. the service value is replaced in one map update (new count + generation): the switch;
//! 4. after a grace period the old generation's slots and unused backends are freed.
//!
//! A change that cannot be written (a full map) is rolled back before the switch, so the
//! service keeps its previous backends and every other service is untouched.
//!
//! An externally reachable frontend also has a Maglev table (what the NodePort program balances
//! packets from outside with), replaced whole. Installing or removing a table costs the kernel
//! an RCU grace period (about 10 ms), once per batch of tables, so a pass stages the tables it
//! writes and installs them together ([`ServiceMaps::flush_maglev`], at most
//! [`MAX_STAGED_TABLES`] at a time): a frontend whose table changes is switched (step 3) only
//! after its new table is in; one whose table cannot be installed is rolled back like any other
//! failure. A table is built and written only when the backends it is built from change (the
//! table depends on that set alone), not when anything else about the frontend does, and not
//! after a restart that finds it in place.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use gannet_common::{
    BackendValue, MAX_BACKENDS_PER_SERVICE, PROTO_TCP, PROTO_UDP, SVC_F_AFFINITY, SVC_F_EXTERNAL,
    SVC_F_LOCAL, SVC_F_SOURCE_RANGES, ServiceKey, ServiceValue, SlotKey, v4_mapped,
};
use gannet_k8s::{Backend, DesiredState, Frontend, Protocol, ServicePort};
use ipnet::IpNet;
use tracing::{debug, error, info, warn};

use crate::nodeport::maglev;

/// Most Maglev tables one batch installs (see [`ServiceMaps::flush_maglev`]).
pub use super::nodeport::MAX_STAGED_TABLES;

/// How long freed slots and backends stay readable after the switch that released them.
/// Programs hold a value for microseconds; this is generous.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(500);

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MapOpError {
    #[error("map {map} is full (capacity {capacity})")]
    Full { map: &'static str, capacity: u32 },
    #[error("map {map}: {op}: {source}")]
    Other {
        map: &'static str,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The maps of the socket load balancer, as the reconciler writes them. Implemented over the
/// kernel maps (`BpfMaps`); unit tests use an in-memory version that checks every step.
pub trait ServiceMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapOpError>;
    /// Deleting a missing entry is not an error.
    fn del_service(&mut self, key: &ServiceKey) -> Result<(), MapOpError>;
    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), MapOpError>;
    fn del_slot(&mut self, key: &SlotKey) -> Result<(), MapOpError>;
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapOpError>;
    fn del_backend(&mut self, id: u32) -> Result<(), MapOpError>;
    /// Deletes the affinity entries `purge` dooms ([`purge_dooms`]); returns how many were
    /// deleted by the time it returns. The eBPF maps walk their LRU map on a thread of their
    /// own and wait for it only briefly, so a large map's purge finishes after this returns
    /// (see `datapath::purge`).
    fn purge_affinity(&mut self, purge: &Arc<AffinityPurge>) -> Result<usize, MapOpError>;
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapOpError>;
    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, MapOpError>;
    fn backends(&self) -> Result<Vec<(u32, BackendValue)>, MapOpError>;
    /// Writes the Maglev table of an externally reachable service
    /// ([`maglev_size`](Self::maglev_size) backend ids), to replace its table, atomically, at
    /// the next [`flush_maglev`](Self::flush_maglev); until then the service keeps the table it
    /// has. Replaces what was staged for the service.
    fn put_maglev(&mut self, service_id: u32, table: &[u32]) -> Result<(), MapOpError>;
    /// Stages the removal of a service's Maglev table (a missing one is fine) for the next
    /// [`flush_maglev`](Self::flush_maglev). Replaces what was staged for the service.
    fn del_maglev(&mut self, service_id: u32);
    /// Tables and removals staged.
    fn maglev_staged(&self) -> usize;
    /// Installs and removes the staged tables, as few kernel calls as the maps allow (one
    /// batch each). Returns the services whose table could not be installed or removed; the
    /// others took effect.
    fn flush_maglev(&mut self) -> Vec<(u32, MapOpError)>;
    /// Service ids that have a Maglev table.
    fn maglev_ids(&self) -> Result<BTreeSet<u32>, MapOpError>;
    /// A service's Maglev table as installed (when adopting a running data plane): its entries,
    /// or `None` when it has none or it cannot be read.
    fn maglev_table(&self, service_id: u32) -> Option<Vec<u32>>;
    /// Entries of every Maglev table (`--maglev-table-size`).
    fn maglev_size(&self) -> u32;
    /// Adds `loadBalancerSourceRanges` of a service.
    fn put_ranges(&mut self, service_id: u32, nets: &[IpNet]) -> Result<(), MapOpError>;
    /// Removes source ranges of a service; missing ones are fine.
    fn del_ranges(&mut self, service_id: u32, nets: &[IpNet]) -> Result<(), MapOpError>;
    /// Every service's source ranges.
    fn ranges(&self) -> Result<BTreeMap<u32, Vec<IpNet>>, MapOpError>;
    /// Terminates the connected UDP sockets that frontends sent to backends they no longer
    /// have: `gone` maps each such backend to the ids of the UDP frontends that lost it (updated
    /// or removed). Called after the switch and the affinity purge, so a socket that connects
    /// again gets one of the frontend's current backends. Returns how many were terminated.
    fn terminate_udp(
        &mut self,
        gone: &BTreeMap<Backend, BTreeSet<u32>>,
    ) -> Result<usize, crate::sockdiag::SockDiagError>;
}

/// What one [`Reconciler::apply`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Frontends that could not be programmed, with the reason; they keep what they had.
    pub failed: Vec<(Frontend, String)>,
    /// The maps that were full, once per failure they caused (a map's name, or
    /// `service slots` for a service with more backends than one service may have).
    pub full: Vec<&'static str>,
}

impl ApplyReport {
    #[must_use]
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0 || !self.failed.is_empty()
    }
}

/// What a [`Reconciler`] has programmed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Frontends (entries of the service map).
    pub frontends: usize,
    /// Distinct backends: entries of the backend map (a released backend counts until its grace
    /// period is over and it is freed).
    pub backends: usize,
    /// Backend slots of the generations the programs read.
    pub slots: usize,
    /// Maglev tables (externally reachable frontends with backends for packets).
    pub tables: usize,
}

#[derive(Debug, Clone)]
struct Programmed {
    id: u32,
    generation: u8,
    /// Backends in slot order; empty when the service has none ready.
    backends: Vec<Backend>,
    backend_ids: Vec<u32>,
    affinity: Option<u32>,
    /// `SVC_F_EXTERNAL` / `SVC_F_LOCAL`.
    flags: u8,
    /// What the NodePort program balances to: the backends its Maglev table was built from,
    /// sorted; empty when it has no table (a ClusterIP frontend, or no backend for packets).
    packet: Vec<Backend>,
    /// `loadBalancerSourceRanges` in the source-range trie under this id.
    ranges: Vec<IpNet>,
    /// True when adopted state did not read back consistently: rewrite on the next apply.
    dirty: bool,
}

#[derive(Debug)]
struct BackendEntry {
    id: u32,
    /// Services whose current slots reference this backend.
    users: u32,
}

#[derive(Debug, Clone, Copy)]
enum Deferred {
    /// Slots `from..to` of a generation of a service, unless the service is reading that
    /// generation again by then (then only the slots past its count).
    Slots {
        service_id: u32,
        generation: u8,
        to: u32,
    },
    /// A backend, unless a service took it again meanwhile.
    Backend(Backend),
    /// A service id, free for reuse.
    ServiceId(u32),
}

/// Hands out small integer ids, reusing freed ones.
#[derive(Debug, Default)]
struct IdPool {
    next: u32,
    free: BTreeSet<u32>,
}

impl IdPool {
    fn alloc(&mut self) -> u32 {
        if let Some(id) = self.free.pop_first() {
            return id;
        }
        self.next += 1;
        self.next
    }

    fn release(&mut self, id: u32) {
        self.free.insert(id);
    }

    /// Marks ids found in adopted maps as taken.
    fn adopt(&mut self, used: &BTreeSet<u32>) {
        self.next = used.last().copied().unwrap_or(0);
        self.free = (1..self.next).filter(|id| !used.contains(id)).collect();
    }
}

pub struct Reconciler<M> {
    maps: M,
    services: BTreeMap<Frontend, Programmed>,
    by_id: HashMap<u32, Frontend>,
    backends: HashMap<Backend, BackendEntry>,
    service_ids: IdPool,
    backend_ids: IdPool,
    /// The epoch the last backend allocation got ([`BackendValue::epoch`]): each allocation
    /// takes the next one, skipping 0, so an id that is freed and taken again never holds the
    /// same epoch as before (unless 65 535 allocations happen while a stale affinity entry
    /// waits for its id to come back).
    backend_epoch: u16,
    deferred: VecDeque<(Instant, Deferred)>,
    grace: Duration,
    /// This node's name: `externalTrafficPolicy: Local` keeps the endpoints on it.
    node_name: String,
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[must_use]
pub fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey {
        addr: addr16(frontend.ip),
        port: frontend.port.to_be(),
        proto: match frontend.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        pad: 0,
    }
}

fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    let protocol = match key.proto {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    Some(Frontend {
        ip: ip_of(key.addr),
        port: u16::from_be(key.port),
        protocol,
    })
}

/// A backend's map value, with epoch 0 (what an allocation sets is [`Reconciler`]'s).
#[must_use]
pub fn backend_value(backend: &Backend) -> BackendValue {
    BackendValue {
        addr: addr16(backend.ip),
        port: backend.port.to_be(),
        epoch: 0,
    }
}

fn backend_of(value: &BackendValue) -> Backend {
    Backend {
        ip: ip_of(value.addr),
        port: u16::from_be(value.port),
    }
}

fn service_value(
    id: u32,
    generation: u8,
    count: usize,
    affinity: Option<u32>,
    external: u8,
) -> ServiceValue {
    ServiceValue {
        id,
        count: u16::try_from(count).expect("count checked against MAX_BACKENDS_PER_SERVICE"),
        generation,
        flags: external
            | if affinity.is_some() {
                SVC_F_AFFINITY
            } else {
                0
            },
        affinity_timeout: affinity.unwrap_or(0),
        pad: 0,
    }
}

/// The `SVC_F_EXTERNAL`/`SVC_F_LOCAL` flags of a frontend: external when its `ServicePort`
/// says how it is reached from outside (the agent's expansion sets `external` on NodePort,
/// external IP and LoadBalancer IP frontends only).
fn external_flags(spec: &ServicePort) -> u8 {
    let Some(external) = &spec.external else {
        return 0;
    };
    let mut flags = SVC_F_EXTERNAL;
    if external.local_only {
        flags |= SVC_F_LOCAL;
    }
    if !external.source_ranges.is_empty() {
        flags |= SVC_F_SOURCE_RANGES;
    }
    flags
}

/// The source ranges a frontend's packets are checked against.
fn source_ranges(spec: &ServicePort) -> Vec<IpNet> {
    spec.external
        .as_ref()
        .map(|e| e.source_ranges.clone())
        .unwrap_or_default()
}

/// The backends the NodePort program balances an external frontend's packets to: all of them,
/// or with `externalTrafficPolicy: Local` those on `node` (ready ones; when none is ready, the
/// serving-and-terminating ones), as kube-proxy does.
#[must_use]
pub fn packet_backends(spec: &ServicePort, node: &str) -> Vec<Backend> {
    let Some(external) = &spec.external else {
        return Vec::new();
    };
    if !external.local_only {
        return spec.backends.clone();
    }
    let local = |b: &&Backend| spec.backend_nodes.get(&b.ip).map(String::as_str) == Some(node);
    let ready: Vec<Backend> = spec.backends.iter().filter(local).copied().collect();
    if !ready.is_empty() {
        return ready;
    }
    spec.terminating.iter().filter(local).copied().collect()
}

/// The backends of an adopted external frontend's Maglev table (`table`: `None` when it has
/// none, `Some(None)` when it cannot be read), with their ids, sorted (empty when there is no
/// table), and whether the table is one this agent would have written for them. It is not when
/// it has another size (`--maglev-table-size` changed), names a backend id missing from the
/// backend map, or one whose backend is known under another id: the first apply writes it
/// again. The backends it names are returned either way, so that they stay allocated (and the
/// table valid) until then.
fn adopt_table(
    table: Option<Option<Vec<u32>>>,
    size: u32,
    values: &HashMap<u32, BackendValue>,
    known: &HashMap<Backend, BackendEntry>,
) -> (Vec<(u32, Backend)>, bool) {
    let Some(table) = table else {
        return (Vec::new(), true);
    };
    let Some(mut ids) = table else {
        return (Vec::new(), false);
    };
    let mut consistent = ids.len() == size as usize;
    ids.sort_unstable();
    ids.dedup();
    let mut packet = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(value) = values.get(&id) else {
            consistent = false;
            continue;
        };
        let backend = backend_of(value);
        match known.get(&backend) {
            Some(entry) if entry.id != id => consistent = false,
            _ => packet.push((id, backend)),
        }
    }
    packet.sort_unstable_by_key(|(_, b)| *b);
    (packet, consistent)
}

/// `namespace/name` of the service a frontend belongs to.
fn service_name(spec: &ServicePort) -> String {
    format!("{}/{}", spec.namespace, spec.name)
}

fn index(i: usize) -> u32 {
    u32::try_from(i).expect("slot index checked against MAX_BACKENDS_PER_SERVICE")
}

impl<M: ServiceMaps> Reconciler<M> {
    /// Takes over whatever the maps hold (a previous gannetd's state after a restart, or
    /// nothing), so that the first [`apply`](Self::apply) changes only what differs.
    pub fn adopt(mut maps: M, grace: Duration, node_name: &str) -> Result<Self, MapOpError> {
        let backend_values: HashMap<u32, BackendValue> = maps.backends()?.into_iter().collect();
        let mut ranges = maps.ranges()?;
        let mut slots: HashMap<SlotKey, u32> = maps.slots()?.into_iter().collect();
        let tables = maps.maglev_ids()?;
        let mut services = BTreeMap::new();
        let mut by_id = HashMap::new();
        let mut backends: HashMap<Backend, BackendEntry> = HashMap::new();
        let mut used_service_ids = BTreeSet::new();
        let mut stale_services = Vec::new();

        for (key, value) in maps.services()? {
            let Some(frontend) = frontend_of(&key) else {
                stale_services.push(key);
                continue;
            };
            used_service_ids.insert(value.id);
            let mut programmed = Programmed {
                id: value.id,
                generation: value.generation,
                backends: Vec::new(),
                backend_ids: Vec::new(),
                affinity: (value.flags & SVC_F_AFFINITY != 0).then_some(value.affinity_timeout),
                flags: value.flags & (SVC_F_EXTERNAL | SVC_F_LOCAL | SVC_F_SOURCE_RANGES),
                packet: Vec::new(),
                ranges: if value.flags & SVC_F_SOURCE_RANGES != 0 {
                    ranges.remove(&value.id).unwrap_or_default()
                } else {
                    Vec::new()
                },
                dirty: false,
            };
            for i in 0..u32::from(value.count) {
                let slot = SlotKey::new(value.id, value.generation, i);
                match slots
                    .remove(&slot)
                    .and_then(|id| Some((id, backend_values.get(&id)?)))
                {
                    Some((id, backend)) => {
                        programmed.backend_ids.push(id);
                        programmed.backends.push(backend_of(backend));
                    }
                    None => programmed.dirty = true,
                }
            }
            for (backend, id) in programmed.backends.iter().zip(&programmed.backend_ids) {
                backends
                    .entry(*backend)
                    .or_insert(BackendEntry { id: *id, users: 0 })
                    .users += 1;
            }
            if value.flags & SVC_F_EXTERNAL != 0 {
                let table = tables
                    .contains(&value.id)
                    .then(|| maps.maglev_table(value.id));
                let (packet, consistent) =
                    adopt_table(table, maps.maglev_size(), &backend_values, &backends);
                for (id, backend) in packet {
                    backends
                        .entry(backend)
                        .or_insert(BackendEntry { id, users: 0 })
                        .users += 1;
                    programmed.packet.push(backend);
                }
                programmed.dirty |= !consistent;
            }
            by_id.insert(value.id, frontend);
            services.insert(frontend, programmed);
        }
        for key in stale_services {
            maps.del_service(&key)?;
        }
        let external: BTreeSet<u32> = services
            .values()
            .filter(|p: &&Programmed| p.flags & SVC_F_EXTERNAL != 0)
            .map(|p| p.id)
            .collect();
        for &id in &tables {
            if !external.contains(&id) {
                maps.del_maglev(id);
            }
        }
        if let Some((_, e)) = maps.flush_maglev().into_iter().next() {
            return Err(e);
        }
        // Ranges no adopted frontend uses.
        for (id, nets) in ranges {
            maps.del_ranges(id, &nets)?;
        }
        // Slots no live generation reads: leftovers of a switch the previous agent did not
        // finish freeing.
        for key in slots.keys() {
            maps.del_slot(key)?;
        }
        let mut used_backend_ids = BTreeSet::new();
        for (id, value) in &backend_values {
            let backend = backend_of(value);
            match backends.get(&backend) {
                Some(entry) if entry.id == *id => {
                    used_backend_ids.insert(*id);
                }
                _ => maps.del_backend(*id)?,
            }
        }
        let mut service_ids = IdPool::default();
        service_ids.adopt(&used_service_ids);
        let mut backend_ids = IdPool::default();
        backend_ids.adopt(&used_backend_ids);
        // Go on after the newest epoch found (with wrapping, the largest is a good enough
        // guess: what matters is that a freed id's next epoch differs from its last).
        let backend_epoch = backend_values.values().map(|v| v.epoch).max().unwrap_or(0);
        if !services.is_empty() {
            info!(
                services = services.len(),
                backends = backends.len(),
                "adopted the running data plane"
            );
        }
        Ok(Self {
            maps,
            services,
            by_id,
            backends,
            service_ids,
            backend_ids,
            backend_epoch,
            deferred: VecDeque::new(),
            grace,
            node_name: node_name.to_owned(),
        })
    }

    /// Programs `desired`. With `prune`, frontends absent from `desired` are removed;
    /// without it (a source that is known to be incomplete) they are kept.
    pub fn apply(&mut self, desired: &DesiredState, prune: bool, now: Instant) -> ApplyReport {
        let mut batch = Batch::default();
        if prune {
            let gone: Vec<Frontend> = self
                .services
                .keys()
                .filter(|f| !desired.services.contains_key(f))
                .copied()
                .collect();
            for frontend in gone {
                self.remove_into(&mut batch, &frontend, now);
            }
        }
        for (frontend, spec) in &desired.services {
            self.program_into(&mut batch, frontend, spec, now);
        }
        self.finish(batch, now)
    }

    /// Programs a diff: `Some` frontends are added or updated, `None` ones removed (removing
    /// one that is not programmed is nothing). For sources that know what changed, such as a
    /// watch, so a change costs what it touches rather than a pass over every service.
    pub fn apply_changes(
        &mut self,
        changes: &BTreeMap<Frontend, Option<ServicePort>>,
        now: Instant,
    ) -> ApplyReport {
        let mut batch = Batch::default();
        for (frontend, change) in changes {
            match change {
                Some(spec) => self.program_into(&mut batch, frontend, spec, now),
                None if self.services.contains_key(frontend) => {
                    self.remove_into(&mut batch, frontend, now);
                }
                None => {}
            }
        }
        self.finish(batch, now)
    }

    fn remove_into(&mut self, batch: &mut Batch, frontend: &Frontend, now: Instant) {
        match self.remove(frontend, now) {
            Ok(removed) => {
                batch.purge.insert(removed.id, None);
                if frontend.protocol == Protocol::Udp {
                    for backend in &removed.backends {
                        batch
                            .udp_gone
                            .entry(*backend)
                            .or_default()
                            .insert(removed.id);
                    }
                }
                batch.report.removed += 1;
            }
            Err(e) => batch.report.failed.push((*frontend, e.to_string())),
        }
    }

    fn program_into(
        &mut self,
        batch: &mut Batch,
        frontend: &Frontend,
        spec: &ServicePort,
        now: Instant,
    ) {
        match self.prepare(frontend, spec, now) {
            Ok(None) => batch.report.unchanged += 1,
            Ok(Some(prepared)) if prepared.table_staged => {
                batch.waiting.push(prepared);
                if self.maps.maglev_staged() >= MAX_STAGED_TABLES {
                    self.flush(batch, now);
                }
            }
            Ok(Some(prepared)) => self.commit(batch, prepared, now),
            Err(e) => batch.fail(*frontend, &service_name(spec), &spec.port_name, &e),
        }
    }

    /// Installs the staged Maglev tables, then switches the frontends that waited for them (or
    /// rolls back those whose table could not be installed).
    fn flush(&mut self, batch: &mut Batch, now: Instant) {
        let mut failures: HashMap<u32, MapOpError> = self.maps.flush_maglev().into_iter().collect();
        for prepared in std::mem::take(&mut batch.waiting) {
            match failures.remove(&prepared.next.id) {
                None => self.commit(batch, prepared, now),
                Some(e) => {
                    self.undo(&prepared, prepared.next.backend_ids.len(), now);
                    batch.fail(prepared.frontend, &prepared.service, &prepared.port, &e);
                }
            }
        }
        // Removals that failed: the table stays (naming backends that will be freed); the next
        // apply writes the frontend again.
        for (id, e) in failures {
            warn!(service_id = id, error = %e, "could not remove a Maglev table");
            if let Some(p) = self.by_id.get(&id).and_then(|f| self.services.get_mut(f)) {
                p.dirty = true;
            }
        }
    }

    fn finish(&mut self, mut batch: Batch, now: Instant) -> ApplyReport {
        // Switching a waiting frontend may stage removals: flush until nothing is left.
        while !batch.waiting.is_empty() || self.maps.maglev_staged() > 0 {
            self.flush(&mut batch, now);
        }
        if !batch.purge.is_empty() {
            self.purge_affinity(std::mem::take(&mut batch.purge));
        }
        if !batch.udp_gone.is_empty() {
            match self.maps.terminate_udp(&batch.udp_gone) {
                Ok(0) => {}
                Ok(n) => info!(
                    sockets = n,
                    "connected UDP sockets of removed backends terminated"
                ),
                Err(e) => warn!(
                    error = %e,
                    "could not terminate the connected UDP sockets of removed backends; they \
                     keep sending to them until they reconnect"
                ),
            }
        }
        batch.report
    }

    /// Frees what switches released more than the grace period ago.
    pub fn collect_garbage(&mut self, now: Instant) {
        while let Some((due, _)) = self.deferred.front() {
            if *due > now {
                break;
            }
            let (_, item) = self.deferred.pop_front().expect("front exists");
            if let Err(e) = self.free(item) {
                warn!(error = %e, "freeing a released map entry failed; it stays until restart");
            }
        }
    }

    /// Frontends currently programmed, for status output and tests.
    pub fn frontends(&self) -> impl Iterator<Item = (&Frontend, &[Backend])> {
        self.services
            .iter()
            .map(|(f, p)| (f, p.backends.as_slice()))
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// What is programmed, counted from the reconciler's own books (no map is read).
    #[must_use]
    pub fn counts(&self) -> Counts {
        let programmed = self.services.values();
        Counts {
            frontends: self.services.len(),
            backends: self.backends.len(),
            slots: programmed.clone().map(|p| p.backend_ids.len()).sum(),
            tables: programmed
                .filter(|p| p.flags & SVC_F_EXTERNAL != 0 && !p.packet.is_empty())
                .count(),
        }
    }

    /// Steps 1 and 2 for `frontend`, and its Maglev table staged when it needs a new one: `None`
    /// when nothing changed. On an error everything written is rolled back.
    fn prepare(
        &mut self,
        frontend: &Frontend,
        spec: &ServicePort,
        now: Instant,
    ) -> Result<Option<Prepared>, MapOpError> {
        let existing = self.services.get(frontend).cloned();
        let flags = external_flags(spec);
        let mut packet = packet_backends(spec, &self.node_name);
        // The table depends on the set of backends only (`maglev::table`): keep it sorted, so
        // that another order of the same endpoints is no change.
        packet.sort_unstable();
        packet.dedup();
        let ranges = source_ranges(spec);
        if let Some(p) = &existing
            && !p.dirty
            && p.backends == spec.backends
            && p.affinity == spec.session_affinity_timeout
            && p.flags == flags
            && p.packet == packet
            && p.ranges == ranges
        {
            return Ok(None);
        }
        if spec.backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
            return Err(MapOpError::Full {
                map: "service slots",
                capacity: MAX_BACKENDS_PER_SERVICE,
            });
        }

        // 1. Backends.
        let mut backend_ids = Vec::with_capacity(spec.backends.len());
        for backend in &spec.backends {
            match self.acquire_backend(backend) {
                Ok(id) => backend_ids.push(id),
                Err(e) => {
                    for b in &spec.backends[..backend_ids.len()] {
                        self.release_backend(b, now);
                    }
                    return Err(e);
                }
            }
        }

        let mut packet_ids = Vec::with_capacity(packet.len());
        for backend in &packet {
            match self.acquire_backend(backend) {
                Ok(id) => packet_ids.push(id),
                Err(e) => {
                    for b in packet[..packet_ids.len()].iter().chain(&spec.backends) {
                        self.release_backend(b, now);
                    }
                    return Err(e);
                }
            }
        }

        let (id, generation) = match &existing {
            Some(p) => (p.id, 1 - p.generation),
            None => (self.service_ids.alloc(), 0),
        };
        let mut prepared = Prepared {
            frontend: *frontend,
            service: service_name(spec),
            port: spec.port_name.clone(),
            next: Programmed {
                id,
                generation,
                backends: spec.backends.clone(),
                backend_ids,
                affinity: spec.session_affinity_timeout,
                flags,
                packet,
                ranges,
                dirty: false,
            },
            existing,
            table_staged: false,
        };
        let next = &prepared.next;

        // 2. Slots of the generation nobody reads.
        for (i, backend_id) in next.backend_ids.iter().enumerate() {
            if let Err(e) = self
                .maps
                .put_slot(&SlotKey::new(id, generation, index(i)), *backend_id)
            {
                self.undo(&prepared, i, now);
                return Err(e);
            }
        }

        // 2b. An external frontend's new source ranges (ranges that went are removed after the
        // switch), then its Maglev table when the backends it is built from changed (or it was
        // never written, or adopted state did not read back), staged: the switch waits until it
        // is installed.
        if flags & SVC_F_EXTERNAL != 0 {
            if let Err(e) = self.maps.put_ranges(id, &next.ranges) {
                self.undo(&prepared, next.backend_ids.len(), now);
                return Err(e);
            }
            let same_table = prepared.existing.as_ref().is_some_and(|p| {
                !p.dirty && p.flags & SVC_F_EXTERNAL != 0 && p.packet == next.packet
            });
            match (same_table, packet_ids.is_empty()) {
                (true, _) => {}
                // No backend for packets: no table (the program finds none and refuses).
                (false, true) => {
                    if prepared.existing.is_some() {
                        self.maps.del_maglev(id);
                    }
                }
                (false, false) => {
                    let keys: Vec<_> = next
                        .packet
                        .iter()
                        .map(|b| maglev::backend_key(b.ip, b.port))
                        .collect();
                    let table: Vec<u32> = maglev::table(&keys, self.maps.maglev_size())
                        .into_iter()
                        .map(|i| packet_ids[i as usize])
                        .collect();
                    if let Err(e) = self.maps.put_maglev(id, &table) {
                        self.undo(&prepared, next.backend_ids.len(), now);
                        return Err(e);
                    }
                    prepared.table_staged = true;
                }
            }
        }
        Ok(Some(prepared))
    }

    /// Steps 3 and 4 for a prepared frontend (whose new Maglev table, if it needed one, is
    /// installed).
    fn commit(&mut self, batch: &mut Batch, prepared: Prepared, now: Instant) {
        let Prepared {
            frontend,
            ref existing,
            ref next,
            table_staged,
            ..
        } = prepared;
        let id = next.id;

        // 3. The switch.
        let value = service_value(
            id,
            next.generation,
            next.backend_ids.len(),
            next.affinity,
            next.flags,
        );
        if let Err(e) = self.maps.put_service(&service_key(&frontend), &value) {
            if table_staged {
                // Its new table is in, naming backends the rollback releases: take it out (the
                // frontend is written again by the next apply).
                self.maps.del_maglev(id);
                if let Some(p) = self.services.get_mut(&frontend) {
                    p.dirty = true;
                }
            }
            self.undo(&prepared, next.backend_ids.len(), now);
            batch.fail(frontend, &prepared.service, &prepared.port, &e);
            return;
        }
        if next.flags & SVC_F_EXTERNAL == 0
            && existing
                .as_ref()
                .is_some_and(|p| p.flags & SVC_F_EXTERNAL != 0)
        {
            self.maps.del_maglev(id);
        }
        if let Some(old) = existing {
            let gone: Vec<IpNet> = old
                .ranges
                .iter()
                .filter(|n| !next.ranges.contains(n))
                .copied()
                .collect();
            if let Err(e) = self.maps.del_ranges(id, &gone) {
                warn!(%frontend, error = %e, "could not remove source ranges a frontend no longer has");
            }
        }
        debug!(%frontend, id, generation = next.generation, backends = next.backend_ids.len(), "service switched");

        // 4. Release what the old generation held.
        let Prepared { existing, next, .. } = prepared;
        match existing {
            Some(old) => {
                self.defer(
                    now,
                    Deferred::Slots {
                        service_id: id,
                        generation: old.generation,
                        to: index(old.backends.len()),
                    },
                );
                let removed: Vec<u32> = old
                    .backends
                    .iter()
                    .zip(&old.backend_ids)
                    .filter(|(b, _)| !next.backends.contains(b))
                    .map(|(b, backend_id)| {
                        if frontend.protocol == Protocol::Udp {
                            batch.udp_gone.entry(*b).or_default().insert(id);
                        }
                        *backend_id
                    })
                    .collect();
                for b in old.backends.iter().chain(&old.packet) {
                    self.release_backend(b, now);
                }
                batch.report.updated += 1;
                if !removed.is_empty()
                    && let Some(set) = batch
                        .purge
                        .entry(id)
                        .or_insert_with(|| Some(BTreeSet::new()))
                {
                    set.extend(removed);
                }
            }
            None => batch.report.added += 1,
        }
        self.by_id.insert(id, frontend);
        self.services.insert(frontend, next);
    }

    /// Rolls back a prepared frontend that will not be switched: its first `written` slots, the
    /// source ranges it added, its backends, and its id when it was new.
    fn undo(&mut self, prepared: &Prepared, written: usize, now: Instant) {
        let next = &prepared.next;
        for i in 0..written {
            let _ = self
                .maps
                .del_slot(&SlotKey::new(next.id, next.generation, index(i)));
        }
        let old_ranges = prepared.existing.as_ref().map_or(&[][..], |p| &p.ranges);
        let added: Vec<IpNet> = next
            .ranges
            .iter()
            .filter(|n| !old_ranges.contains(n))
            .copied()
            .collect();
        if !added.is_empty()
            && let Err(e) = self.maps.del_ranges(next.id, &added)
        {
            warn!(frontend = %prepared.frontend, error = %e, "could not remove source ranges of a change rolled back");
        }
        for b in next.backends.iter().chain(&next.packet) {
            self.release_backend(b, now);
        }
        if prepared.existing.is_none() {
            self.service_ids.release(next.id);
        }
    }

    fn remove(&mut self, frontend: &Frontend, now: Instant) -> Result<Programmed, MapOpError> {
        let programmed = self.services[frontend].clone();
        self.maps.del_service(&service_key(frontend))?;
        if programmed.flags & SVC_F_EXTERNAL != 0 {
            // Unreachable now; removed with the pass's other table changes.
            self.maps.del_maglev(programmed.id);
        }
        if let Err(e) = self.maps.del_ranges(programmed.id, &programmed.ranges) {
            warn!(%frontend, error = %e, "could not remove the source ranges of a removed frontend");
        }
        self.services.remove(frontend);
        self.by_id.remove(&programmed.id);
        self.defer(
            now,
            Deferred::Slots {
                service_id: programmed.id,
                generation: programmed.generation,
                to: index(programmed.backends.len()),
            },
        );
        for b in programmed.backends.iter().chain(&programmed.packet) {
            self.release_backend(b, now);
        }
        self.defer(now, Deferred::ServiceId(programmed.id));
        debug!(%frontend, id = programmed.id, "service removed");
        Ok(programmed)
    }

    fn acquire_backend(&mut self, backend: &Backend) -> Result<u32, MapOpError> {
        if let Some(entry) = self.backends.get_mut(backend) {
            entry.users += 1;
            return Ok(entry.id);
        }
        let id = self.backend_ids.alloc();
        self.backend_epoch = match self.backend_epoch.wrapping_add(1) {
            0 => 1,
            epoch => epoch,
        };
        let value = BackendValue {
            epoch: self.backend_epoch,
            ..backend_value(backend)
        };
        if let Err(e) = self.maps.put_backend(id, &value) {
            self.backend_ids.release(id);
            return Err(e);
        }
        self.backends
            .insert(*backend, BackendEntry { id, users: 1 });
        Ok(id)
    }

    fn release_backend(&mut self, backend: &Backend, now: Instant) {
        if let Some(entry) = self.backends.get_mut(backend) {
            entry.users = entry.users.saturating_sub(1);
            if entry.users == 0 {
                self.defer(now, Deferred::Backend(*backend));
            }
        }
    }

    fn defer(&mut self, now: Instant, item: Deferred) {
        self.deferred.push_back((now + self.grace, item));
    }

    fn free(&mut self, item: Deferred) -> Result<(), MapOpError> {
        match item {
            Deferred::Slots {
                service_id,
                generation,
                to,
            } => {
                // If the service reads this generation again (switched twice within the grace
                // period), its first `count` slots are live: free only the rest.
                let from = self
                    .by_id
                    .get(&service_id)
                    .and_then(|f| self.services.get(f))
                    .filter(|p| p.generation == generation)
                    .map_or(0, |p| index(p.backends.len()));
                for i in from..to {
                    self.maps
                        .del_slot(&SlotKey::new(service_id, generation, i))?;
                }
            }
            Deferred::Backend(backend) => {
                if let Some(entry) = self.backends.get(&backend)
                    && entry.users == 0
                {
                    let id = entry.id;
                    self.maps.del_backend(id)?;
                    self.backends.remove(&backend);
                    self.backend_ids.release(id);
                }
            }
            Deferred::ServiceId(id) => {
                if !self.by_id.contains_key(&id) {
                    self.service_ids.release(id);
                }
            }
        }
        Ok(())
    }

    /// Forgets affinity to backends a service no longer has (`Some(ids)`) or to any backend of a
    /// removed service (`None`), so pinned clients move on at their next connection.
    fn purge_affinity(&mut self, purge: AffinityPurge) {
        match self.maps.purge_affinity(&Arc::new(purge)) {
            Ok(0) => {}
            Ok(n) => debug!(entries = n, "affinity to removed backends forgotten"),
            Err(e) => warn!(error = %e, "could not purge affinity entries"),
        }
    }
}

/// Affinity to forget after a change: per service id, the backend ids it lost (`Some`) or all
/// of them (`None`: the service went).
pub type AffinityPurge = HashMap<u32, Option<BTreeSet<u32>>>;

/// Whether `purge` dooms an affinity entry of service `service_id` to backend `backend_id`.
#[must_use]
pub fn purge_dooms(purge: &AffinityPurge, service_id: u32, backend_id: u32) -> bool {
    match purge.get(&service_id) {
        Some(None) => true,
        Some(Some(ids)) => ids.contains(&backend_id),
        None => false,
    }
}

/// What one apply has done so far, whose affinity entries to purge and which UDP sockets to
/// terminate at its end, and the frontends waiting for their Maglev tables to be installed.
#[derive(Default)]
struct Batch {
    report: ApplyReport,
    purge: AffinityPurge,
    /// Backends UDP frontends lost, with the ids of those frontends.
    udp_gone: BTreeMap<Backend, BTreeSet<u32>>,
    waiting: Vec<Prepared>,
}

impl Batch {
    /// Reports a frontend that could not be programmed (it keeps its previous state).
    fn fail(&mut self, frontend: Frontend, service: &str, port: &str, e: &MapOpError) {
        error!(
            service,
            port,
            %frontend,
            error = %e,
            "could not program service; it keeps its previous state"
        );
        self.report.failed.push((frontend, e.to_string()));
        if let MapOpError::Full { map, .. } = e {
            self.report.full.push(map);
        }
    }
}

/// A frontend written up to its switch: backends, the slots of the generation nobody reads,
/// new source ranges, and its new Maglev table staged when it needs one.
struct Prepared {
    frontend: Frontend,
    /// `namespace/name` and port name of the service it belongs to, for the log.
    service: String,
    port: String,
    /// What it was (`None`: a new frontend).
    existing: Option<Programmed>,
    /// What it becomes at the switch.
    next: Programmed,
    /// Its new Maglev table is staged: the switch waits until the table is installed.
    table_staged: bool,
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
