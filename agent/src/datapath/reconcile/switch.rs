//! One frontend's change, the switch protocol of the module documentation: prepare (steps 1 and
//! 2, and its Maglev table), commit (step 3 and the deferred frees of step 4), undo, remove.

use std::{collections::BTreeSet, time::Instant};

use gannet_common::{MAX_BACKENDS_PER_SERVICE, SVC_F_EXTERNAL, SlotKey};
use gannet_k8s::{Frontend, Protocol, ServicePort};
use ipnet::IpNet;
use tracing::{debug, warn};

use crate::datapath::full;
use crate::nodeport::maglev;

use super::maps::{MapOpError, ServiceMaps};
use super::values::{
    external_flags, index, packet_backends, service_key, service_name, service_value, source_ranges,
};
use super::{Batch, Deferred, Prepared, Programmed, Reconciler};

impl<M: ServiceMaps> Reconciler<M> {
    /// Steps 1 and 2 for `frontend`, and its Maglev table staged when it needs a new one: `None`
    /// when nothing changed. On an error everything written is rolled back.
    pub(super) fn prepare(
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
            full::record(full::SERVICE_SLOTS);
            return Err(MapOpError::Full {
                map: full::SERVICE_SLOTS,
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
    pub(super) fn commit(&mut self, batch: &mut Batch, prepared: Prepared, now: Instant) {
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
    pub(super) fn undo(&mut self, prepared: &Prepared, written: usize, now: Instant) {
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

    pub(super) fn remove(
        &mut self,
        frontend: &Frontend,
        now: Instant,
    ) -> Result<Programmed, MapOpError> {
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
}
