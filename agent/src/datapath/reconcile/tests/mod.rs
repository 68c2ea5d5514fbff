//! Unit tests of the reconciler against in-memory maps that check, after every single map
//! operation, what a program would see.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use gannet_common::{AffinityKey, AffinityValue, BackendValue, ServiceKey, ServiceValue, SlotKey};
use gannet_k8s::{Backend, DesiredState, Frontend, Protocol, ServicePort};

use gannet_common::{SVC_F_EXTERNAL, SVC_F_SOURCE_RANGES};

use super::{MapOpError, ServiceMaps, service_key};

mod affinity;
mod maglev;
mod switch;

/// A small Maglev table, enough to see every backend in it.
const MAGLEV_SIZE: u32 = 251;

/// In-memory maps that check, after every single operation, what a program looking up any
/// service at that instant would see.
#[derive(Default)]
struct CheckedMaps {
    services: HashMap<ServiceKey, ServiceValue>,
    slots: HashMap<SlotKey, u32>,
    backends: HashMap<u32, BackendValue>,
    affinity: HashMap<AffinityKey, AffinityValue>,
    maglev: HashMap<u32, Vec<u32>>,
    /// Tables written and not yet installed (`Some`), removals (`None`).
    staged: BTreeMap<u32, Option<Vec<u32>>>,
    ranges: BTreeMap<u32, Vec<ipnet::IpNet>>,
    capacity_backends: Option<usize>,
    /// Service ids whose table install fails (as a full outer map would).
    failing_tables: std::collections::BTreeSet<u32>,
    ops: usize,
    /// Maglev tables written (built and staged).
    tables_written: usize,
    /// Flushes that installed or removed something (one RCU grace period each in the kernel).
    flushes: usize,
    /// Skip the check after every operation (it is quadratic in the services; for tests of
    /// many services that check at the end).
    unchecked: bool,
    /// What `terminate_udp` was asked, call by call, with the affinity entries left at the
    /// time (the purge must come first).
    terminated: Vec<(BTreeMap<Backend, std::collections::BTreeSet<u32>>, usize)>,
}

impl CheckedMaps {
    fn check(&self) {
        if !self.unchecked {
            self.check_now();
        }
    }

    fn check_now(&self) {
        for (key, svc) in &self.services {
            for i in 0..u32::from(svc.count) {
                let slot = SlotKey::new(svc.id, svc.generation, i);
                let id = self.slots.get(&slot).unwrap_or_else(|| {
                    panic!(
                        "after op {}: {key:?} slot {i} of gen {} missing",
                        self.ops, svc.generation
                    )
                });
                assert!(
                    self.backends.contains_key(id),
                    "after op {}: {key:?} slot {i} points at freed backend {id}",
                    self.ops
                );
            }
            // What the NodePort program would read: every backend of an external frontend's
            // table is written; ranges are in place before the flag is.
            if svc.flags & SVC_F_EXTERNAL != 0
                && let Some(table) = self.maglev.get(&svc.id)
            {
                for id in table {
                    assert!(
                        self.backends.contains_key(id),
                        "after op {}: {key:?}'s Maglev table names freed backend {id}",
                        self.ops
                    );
                }
            }
            if svc.flags & SVC_F_SOURCE_RANGES != 0 {
                assert!(
                    self.ranges.contains_key(&svc.id),
                    "after op {}: {key:?} checks source ranges it has none of",
                    self.ops
                );
            }
        }
    }

    /// The distinct backends of the Maglev table of `frontend`'s service.
    fn table_backends(&self, frontend: &Frontend) -> Option<Vec<Backend>> {
        let svc = self.services.get(&service_key(frontend))?;
        let table = self.maglev.get(&svc.id)?;
        let mut out: Vec<Backend> = table
            .iter()
            .map(|id| {
                let b = self.backends[id];
                Backend {
                    ip: super::values::ip_of(b.addr),
                    port: u16::from_be(b.port),
                }
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    fn step(&mut self) -> Result<(), MapOpError> {
        self.ops += 1;
        Ok(())
    }

    fn resolve(&self, frontend: &Frontend) -> Option<Vec<Backend>> {
        let svc = self.services.get(&service_key(frontend))?;
        Some(
            (0..u32::from(svc.count))
                .map(|i| {
                    let id = self.slots[&SlotKey::new(svc.id, svc.generation, i)];
                    let b = self.backends[&id];
                    Backend {
                        ip: super::values::ip_of(b.addr),
                        port: u16::from_be(b.port),
                    }
                })
                .collect(),
        )
    }
}

impl ServiceMaps for CheckedMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapOpError> {
        self.services.insert(*key, *value);
        self.check();
        self.step()
    }
    fn del_service(&mut self, key: &ServiceKey) -> Result<(), MapOpError> {
        self.services.remove(key);
        self.check();
        self.step()
    }
    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), MapOpError> {
        self.slots.insert(*key, backend_id);
        self.check();
        self.step()
    }
    fn del_slot(&mut self, key: &SlotKey) -> Result<(), MapOpError> {
        self.slots.remove(key);
        self.check();
        self.step()
    }
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapOpError> {
        if self
            .capacity_backends
            .is_some_and(|c| self.backends.len() >= c)
        {
            return Err(MapOpError::Full {
                map: "GANNET_BACKENDS",
                capacity: 0,
            });
        }
        self.backends.insert(id, *value);
        self.check();
        self.step()
    }
    fn del_backend(&mut self, id: u32) -> Result<(), MapOpError> {
        self.backends.remove(&id);
        self.check();
        self.step()
    }
    fn purge_affinity(
        &mut self,
        purge: &std::sync::Arc<super::AffinityPurge>,
    ) -> Result<usize, MapOpError> {
        let before = self.affinity.len();
        self.affinity
            .retain(|k, v| !super::purge_dooms(purge, k.service_id, v.backend_id));
        Ok(before - self.affinity.len())
    }
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapOpError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, MapOpError> {
        Ok(self.slots.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn backends(&self) -> Result<Vec<(u32, BackendValue)>, MapOpError> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_maglev(&mut self, service_id: u32, table: &[u32]) -> Result<(), MapOpError> {
        assert_eq!(
            table.len(),
            MAGLEV_SIZE as usize,
            "a Maglev table of the wrong size"
        );
        for id in table {
            assert!(
                self.backends.contains_key(id),
                "Maglev table names backend {id}, which is not written"
            );
        }
        self.staged.insert(service_id, Some(table.to_vec()));
        self.tables_written += 1;
        Ok(())
    }

    fn del_maglev(&mut self, service_id: u32) {
        self.staged.insert(service_id, None);
    }

    fn maglev_staged(&self) -> usize {
        self.staged.len()
    }

    /// Each table swapped in (or out) is an operation the invariants are checked after.
    fn flush_maglev(&mut self) -> Vec<(u32, MapOpError)> {
        if self.staged.is_empty() {
            return Vec::new();
        }
        self.flushes += 1;
        let mut failures = Vec::new();
        for (id, table) in std::mem::take(&mut self.staged) {
            match table {
                Some(_) if self.failing_tables.contains(&id) => failures.push((
                    id,
                    MapOpError::Full {
                        map: "GANNET_MAGLEV",
                        capacity: 0,
                    },
                )),
                Some(table) => {
                    for backend in &table {
                        assert!(
                            self.backends.contains_key(backend),
                            "after op {}: service {id}'s Maglev table, installed, names freed \
                             backend {backend}",
                            self.ops
                        );
                    }
                    self.maglev.insert(id, table);
                }
                None => {
                    self.maglev.remove(&id);
                }
            }
            self.check();
            self.ops += 1;
        }
        failures
    }

    fn maglev_ids(&self) -> Result<std::collections::BTreeSet<u32>, MapOpError> {
        Ok(self.maglev.keys().copied().collect())
    }

    fn maglev_table(&self, service_id: u32) -> Option<Vec<u32>> {
        self.maglev.get(&service_id).cloned()
    }

    fn maglev_size(&self) -> u32 {
        MAGLEV_SIZE
    }

    fn put_ranges(&mut self, service_id: u32, nets: &[ipnet::IpNet]) -> Result<(), MapOpError> {
        if nets.is_empty() {
            return Ok(());
        }
        let entry = self.ranges.entry(service_id).or_default();
        for net in nets {
            if !entry.contains(net) {
                entry.push(*net);
            }
        }
        Ok(())
    }

    fn del_ranges(&mut self, service_id: u32, nets: &[ipnet::IpNet]) -> Result<(), MapOpError> {
        if let Some(entry) = self.ranges.get_mut(&service_id) {
            entry.retain(|n| !nets.contains(n));
            if entry.is_empty() {
                self.ranges.remove(&service_id);
            }
        }
        Ok(())
    }

    fn ranges(&self) -> Result<BTreeMap<u32, Vec<ipnet::IpNet>>, MapOpError> {
        Ok(self.ranges.clone())
    }

    fn terminate_udp(
        &mut self,
        gone: &BTreeMap<Backend, std::collections::BTreeSet<u32>>,
    ) -> Result<usize, crate::sockdiag::SockDiagError> {
        // The switch is done: no service resolves to a backend it is told is gone.
        for (backend, ids) in gone {
            for (key, svc) in &self.services {
                if ids.contains(&svc.id) {
                    let now = (0..u32::from(svc.count))
                        .map(|i| {
                            self.backends[&self.slots[&SlotKey::new(svc.id, svc.generation, i)]]
                        })
                        .any(|b| {
                            super::values::ip_of(b.addr) == backend.ip
                                && u16::from_be(b.port) == backend.port
                        });
                    assert!(
                        !now,
                        "{key:?} still resolves to {backend}, which is to be terminated"
                    );
                }
            }
        }
        self.terminated.push((gone.clone(), self.affinity.len()));
        Ok(0)
    }
}

fn frontend(last: u8, port: u16) -> Frontend {
    Frontend {
        ip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, last)),
        port,
        protocol: Protocol::Tcp,
    }
}

fn backends(lasts: &[u8]) -> Vec<Backend> {
    lasts
        .iter()
        .map(|l| Backend {
            ip: IpAddr::V4(Ipv4Addr::new(10, 244, 0, *l)),
            port: 8080,
        })
        .collect()
}

fn state(entries: &[(Frontend, Vec<Backend>)]) -> DesiredState {
    DesiredState {
        services: entries
            .iter()
            .map(|(f, b)| {
                (
                    *f,
                    ServicePort {
                        namespace: "default".into(),
                        name: format!("svc{}", f.port),
                        port_name: String::new(),
                        backends: b.clone(),
                        terminating: Vec::new(),
                        backend_nodes: BTreeMap::new(),
                        session_affinity_timeout: None,
                        external: None,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

const GRACE: Duration = Duration::from_millis(500);
