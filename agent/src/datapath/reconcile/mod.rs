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
    time::{Duration, Instant},
};

use gannet_common::SVC_F_EXTERNAL;
use gannet_k8s::{Backend, DesiredState, Frontend, Protocol, ServicePort};
use ipnet::IpNet;
use tracing::{error, info, warn};

/// Most Maglev tables one batch installs (see [`ServiceMaps::flush_maglev`]).
pub use super::nodeport::MAX_STAGED_TABLES;

/// How long freed slots and backends stay readable after the switch that released them.
/// Programs hold a value for microseconds; this is generous.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(500);

mod adopt;
mod ids;
mod maps;
mod switch;
mod values;

pub use self::maps::{AffinityPurge, MapOpError, ServiceMaps, purge_dooms};
pub use self::values::{backend_value, packet_backends, service_key};

use self::ids::IdPool;
use self::values::service_name;

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

impl<M: ServiceMaps> Reconciler<M> {
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
mod tests;
