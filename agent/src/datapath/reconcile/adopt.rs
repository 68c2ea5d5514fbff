//! Taking over a running data plane: what the maps hold becomes the reconciler's books, so the
//! first apply changes only what differs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    time::Duration,
};

use gannet_common::{
    BackendValue, SVC_F_AFFINITY, SVC_F_EXTERNAL, SVC_F_LOCAL, SVC_F_SOURCE_RANGES, SlotKey,
};
use gannet_k8s::Backend;
use tracing::info;

use super::ids::IdPool;
use super::maps::{MapOpError, ServiceMaps};
use super::values::{backend_of, frontend_of};
use super::{BackendEntry, Programmed, Reconciler};

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
}
