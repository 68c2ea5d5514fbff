//! Id pools, backends' reference counts, and what a switch releases: freed after the grace
//! period.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use gannet_common::{BackendValue, SlotKey};
use gannet_k8s::Backend;
use tracing::{debug, warn};

use super::maps::{AffinityPurge, MapOpError, ServiceMaps};
use super::values::{backend_value, index};
use super::{BackendEntry, Deferred, Reconciler};

/// Hands out small integer ids, reusing freed ones.
#[derive(Debug, Default)]
pub(super) struct IdPool {
    next: u32,
    free: BTreeSet<u32>,
}

impl IdPool {
    pub(super) fn alloc(&mut self) -> u32 {
        if let Some(id) = self.free.pop_first() {
            return id;
        }
        self.next += 1;
        self.next
    }

    pub(super) fn release(&mut self, id: u32) {
        self.free.insert(id);
    }

    /// Marks ids found in adopted maps as taken.
    pub(super) fn adopt(&mut self, used: &BTreeSet<u32>) {
        self.next = used.last().copied().unwrap_or(0);
        self.free = (1..self.next).filter(|id| !used.contains(id)).collect();
    }
}

impl<M: ServiceMaps> Reconciler<M> {
    pub(super) fn acquire_backend(&mut self, backend: &Backend) -> Result<u32, MapOpError> {
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

    pub(super) fn release_backend(&mut self, backend: &Backend, now: Instant) {
        if let Some(entry) = self.backends.get_mut(backend) {
            entry.users = entry.users.saturating_sub(1);
            if entry.users == 0 {
                self.defer(now, Deferred::Backend(*backend));
            }
        }
    }

    pub(super) fn defer(&mut self, now: Instant, item: Deferred) {
        self.deferred.push_back((now + self.grace, item));
    }

    pub(super) fn free(&mut self, item: Deferred) -> Result<(), MapOpError> {
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
    pub(super) fn purge_affinity(&mut self, purge: AffinityPurge) {
        match self.maps.purge_affinity(&Arc::new(purge)) {
            Ok(0) => {}
            Ok(n) => debug!(entries = n, "affinity to removed backends forgotten"),
            Err(e) => warn!(error = %e, "could not purge affinity entries"),
        }
    }
}
