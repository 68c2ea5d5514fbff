use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use gannet_common::{
    AFFINITY_NETNS, AffinityKey, AffinityValue, BackendValue, ServiceKey, ServiceValue, SlotKey,
};
use gannet_k8s::{Backend, DesiredState, Frontend, Protocol, ServicePort};

use gannet_common::{SVC_F_EXTERNAL, SVC_F_LOCAL, SVC_F_SOURCE_RANGES};

use super::{MapOpError, Reconciler, ServiceMaps, service_key};

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
                    ip: super::ip_of(b.addr),
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
                        ip: super::ip_of(b.addr),
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
                            super::ip_of(b.addr) == backend.ip
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

#[test]
fn add_update_remove_keeps_every_lookup_valid() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let a = frontend(1, 80);
    let b = frontend(2, 53);

    let report = r.apply(
        &state(&[(a, backends(&[1, 2, 3])), (b, backends(&[3]))]),
        true,
        t0,
    );
    assert_eq!((report.added, report.failed.len()), (2, 0), "{report:?}");
    assert_eq!(r.maps().resolve(&a), Some(backends(&[1, 2, 3])));
    assert_eq!(r.maps().resolve(&b), Some(backends(&[3])));

    // Shrink a, grow b, within the grace period of each other: every op is checked.
    let t1 = t0 + Duration::from_millis(10);
    let report = r.apply(
        &state(&[(a, backends(&[2])), (b, backends(&[3, 4]))]),
        true,
        t1,
    );
    assert_eq!(report.updated, 2, "{report:?}");
    assert_eq!(r.maps().resolve(&a), Some(backends(&[2])));
    // Switch a back before the old generation is freed.
    let t2 = t1 + Duration::from_millis(10);
    r.apply(
        &state(&[(a, backends(&[1, 2, 5])), (b, backends(&[3, 4]))]),
        true,
        t2,
    );
    assert_eq!(r.maps().resolve(&a), Some(backends(&[1, 2, 5])));
    r.collect_garbage(t2 + GRACE * 2);
    assert_eq!(r.maps().resolve(&a), Some(backends(&[1, 2, 5])));
    assert_eq!(r.maps().resolve(&b), Some(backends(&[3, 4])));

    // Only live slots and backends remain after garbage collection.
    assert_eq!(r.maps().slots.len(), 5, "slots: {:?}", r.maps().slots);
    assert_eq!(r.maps().backends.len(), 5, "backends 1,2,3,4,5");

    // Remove b: its entry goes at once, its slots and backend 4 after the grace period.
    let t3 = t2 + GRACE * 3;
    let report = r.apply(&state(&[(a, backends(&[1, 2, 5]))]), true, t3);
    assert_eq!(report.removed, 1);
    assert_eq!(r.maps().resolve(&b), None);
    r.collect_garbage(t3 + GRACE * 2);
    assert_eq!(r.maps().slots.len(), 3);
    let mut left: Vec<_> = r.maps().backends.values().map(|v| v.addr[15]).collect();
    left.sort_unstable();
    assert_eq!(left, vec![1, 2, 5]);
}

#[test]
fn no_backends_means_service_with_zero_count() {
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let a = frontend(1, 80);
    r.apply(&state(&[(a, vec![])]), true, Instant::now());
    assert_eq!(
        r.maps().resolve(&a),
        Some(vec![]),
        "service must exist (fail fast), empty"
    );
}

#[test]
fn full_backend_map_keeps_previous_state_and_other_services() {
    let t0 = Instant::now();
    let maps = CheckedMaps {
        capacity_backends: Some(3),
        ..CheckedMaps::default()
    };
    let mut r = Reconciler::adopt(maps, GRACE, "test-node").unwrap();
    let a = frontend(1, 80);
    let b = frontend(2, 80);
    r.apply(&state(&[(a, backends(&[1, 2]))]), true, t0);
    // b needs two more backends but only one fits: b fails, a is untouched.
    let report = r.apply(
        &state(&[(a, backends(&[1, 2])), (b, backends(&[3, 4]))]),
        true,
        t0,
    );
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, b);
    assert_eq!(
        report.full,
        vec![gannet_common::map_names::BACKENDS],
        "the full map is reported (for gannet_map_full_total): {report:?}"
    );
    assert_eq!(r.maps().resolve(&a), Some(backends(&[1, 2])));
    assert_eq!(r.maps().resolve(&b), None);
    r.collect_garbage(t0 + GRACE * 2);
    assert_eq!(
        r.counts(),
        super::Counts {
            frontends: 1,
            backends: 2,
            slots: 2,
            tables: 0
        },
        "what is programmed is counted: a and its two backends"
    );
    assert_eq!(
        r.maps().backends.len(),
        2,
        "the half-acquired backend 3 was released"
    );
}

#[test]
fn restart_adopts_and_changes_only_differences() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let a = frontend(1, 80);
    let v6 = Frontend {
        ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 1)),
        port: 80,
        protocol: Protocol::Udp,
    };
    let v6_backends = vec![Backend {
        ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 11)),
        port: 53,
    }];
    let desired = state(&[(a, backends(&[1, 2, 3])), (v6, v6_backends.clone())]);
    r.apply(&desired, true, t0);
    // A new reconciler (a restarted agent) over the same maps.
    let maps = std::mem::take(&mut r.maps);
    let mut r2 = Reconciler::adopt(maps, GRACE, "test-node").unwrap();
    let ops_before = r2.maps().ops;
    let report = r2.apply(&desired, true, t0);
    assert_eq!(report.unchanged, 2, "{report:?}");
    assert_eq!(
        r2.maps().ops,
        ops_before,
        "an unchanged state writes nothing"
    );
    assert_eq!(r2.maps().resolve(&v6), Some(v6_backends));
    // And a later change reuses no live id.
    let b = frontend(2, 80);
    let mut next = desired.clone();
    next.services
        .insert(b, state(&[(b, backends(&[9]))]).services[&b].clone());
    r2.apply(&next, true, t0);
    let ids: std::collections::BTreeSet<u32> = r2.maps().services.values().map(|s| s.id).collect();
    assert_eq!(ids.len(), 3, "distinct service ids: {ids:?}");
}

#[test]
fn a_reused_backend_id_gets_a_new_epoch_also_after_a_restart() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let a = frontend(1, 80);
    let b = frontend(2, 80);
    let epoch_of = |r: &Reconciler<CheckedMaps>, last: u8| {
        r.maps()
            .backends
            .iter()
            .find(|(_, v)| v.addr[15] == last)
            .map(|(id, v)| (*id, v.epoch))
            .expect("backend programmed")
    };
    r.apply(&state(&[(a, backends(&[1]))]), true, t0);
    let (id1, epoch1) = epoch_of(&r, 1);
    assert_ne!(epoch1, 0, "0 is what maps of older agents hold");
    // Backend 1 goes; once freed, backend 3 of another service takes its id.
    r.apply(&state(&[(a, backends(&[2]))]), true, t0);
    r.collect_garbage(t0 + GRACE * 2);
    r.apply(
        &state(&[(a, backends(&[2])), (b, backends(&[3]))]),
        true,
        t0 + GRACE * 2,
    );
    let (id3, epoch3) = epoch_of(&r, 3);
    assert_eq!(id3, id1, "the freed id is taken again");
    assert_ne!(epoch3, epoch1, "with another epoch");

    // A restarted agent goes on after the epochs it finds.
    let maps = std::mem::take(&mut r.maps);
    let mut r2 = Reconciler::adopt(maps, GRACE, "test-node").unwrap();
    let t1 = t0 + GRACE * 4;
    r2.apply(
        &state(&[(a, backends(&[2])), (b, backends(&[4]))]),
        true,
        t1,
    );
    r2.collect_garbage(t1 + GRACE * 2);
    r2.apply(
        &state(&[
            (a, backends(&[2])),
            (b, backends(&[4])),
            (frontend(3, 80), backends(&[5])),
        ]),
        true,
        t1 + GRACE * 2,
    );
    let (id5, epoch5) = epoch_of(&r2, 5);
    assert_eq!(id5, id3, "backend 3's freed id is taken again");
    assert!(
        ![0, epoch1, epoch3].contains(&epoch5),
        "a new epoch after the restart: {epoch5} (before: {epoch1}, {epoch3})"
    );
}

#[test]
fn removed_backend_loses_its_affinity_entries() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let a = frontend(1, 80);
    r.apply(&state(&[(a, backends(&[1, 2]))]), true, t0);
    let id = r.maps().services.values().next().unwrap().id;
    let backend_of = |r: &Reconciler<CheckedMaps>, last: u8| {
        *r.maps()
            .backends
            .iter()
            .find(|(_, v)| v.addr[15] == last)
            .unwrap()
            .0
    };
    for (client, last) in [(1u64, 1u8), (2, 2)] {
        let backend_id = backend_of(&r, last);
        r.maps.affinity.insert(
            AffinityKey {
                service_id: id,
                kind: AFFINITY_NETNS,
                client,
            },
            AffinityValue {
                backend_id,
                backend_epoch: 0,
                pad: 0,
                last_used_ns: 0,
            },
        );
    }
    r.apply(&state(&[(a, backends(&[2]))]), true, t0);
    let clients: Vec<u64> = r.maps().affinity.keys().map(|k| k.client).collect();
    assert_eq!(
        clients,
        vec![2],
        "client pinned to removed backend 1 must be forgotten"
    );
}

#[test]
fn udp_backends_that_go_have_their_connected_sockets_terminated() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let tcp = frontend(1, 80);
    let udp = Frontend {
        protocol: Protocol::Udp,
        ..frontend(1, 53)
    };
    let other_udp = Frontend {
        protocol: Protocol::Udp,
        ..frontend(2, 53)
    };
    r.apply(
        &state(&[
            (tcp, backends(&[1, 2])),
            (udp, backends(&[1, 2])),
            (other_udp, backends(&[1, 3])),
        ]),
        true,
        t0,
    );
    assert!(
        r.maps().terminated.is_empty(),
        "nothing went, nothing may be terminated: {:?}",
        r.maps().terminated
    );
    let id_of = |r: &Reconciler<CheckedMaps>, f: &Frontend| r.maps().services[&service_key(f)].id;
    let (udp_id, other_id) = (id_of(&r, &udp), id_of(&r, &other_udp));
    // A socket of `udp` pinned to backend 1, to see that the purge comes first.
    let backend_1 = *r
        .maps()
        .backends
        .iter()
        .find(|(_, v)| v.addr[15] == 1)
        .unwrap()
        .0;
    r.maps.affinity.insert(
        AffinityKey {
            service_id: udp_id,
            kind: gannet_common::AFFINITY_SOCKET,
            client: 7,
        },
        AffinityValue {
            backend_id: backend_1,
            backend_epoch: 0,
            pad: 0,
            last_used_ns: 0,
        },
    );

    // Backend 1 leaves both services; the TCP frontend's connections are left alone.
    r.apply(
        &state(&[
            (tcp, backends(&[2])),
            (udp, backends(&[2])),
            (other_udp, backends(&[3])),
        ]),
        true,
        t0,
    );
    let expected: BTreeMap<Backend, std::collections::BTreeSet<u32>> =
        [(backends(&[1])[0], [udp_id, other_id].into())].into();
    assert_eq!(
        r.maps().terminated,
        vec![(expected, 0)],
        "backend 1's UDP sockets of both frontends, after the affinity purge"
    );

    // A removed UDP frontend: every backend it had.
    r.apply(
        &state(&[(tcp, backends(&[2])), (udp, backends(&[2]))]),
        true,
        t0,
    );
    let expected: BTreeMap<Backend, std::collections::BTreeSet<u32>> =
        [(backends(&[3])[0], [other_id].into())].into();
    assert_eq!(r.maps().terminated.last(), Some(&(expected, 0)));
    assert_eq!(r.maps().terminated.len(), 2);
}

#[test]
fn without_prune_absent_services_stay() {
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let a = frontend(1, 80);
    let t0 = Instant::now();
    r.apply(&state(&[(a, backends(&[1]))]), true, t0);
    let report = r.apply(&DesiredState::default(), false, t0);
    assert_eq!(report.removed, 0);
    assert_eq!(r.maps().resolve(&a), Some(backends(&[1])));
}

#[test]
fn changes_touch_only_the_named_frontends() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let a = frontend(1, 80);
    let b = frontend(2, 80);
    let c = frontend(3, 80);
    r.apply(
        &state(&[(a, backends(&[1, 2])), (b, backends(&[3]))]),
        true,
        t0,
    );
    let ops_before = r.maps().ops;
    let spec_c = state(&[(c, backends(&[4]))]).services[&c].clone();
    let spec_a = state(&[(a, backends(&[2]))]).services[&a].clone();
    let changes: BTreeMap<Frontend, Option<ServicePort>> = [
        (a, Some(spec_a)),
        (b, None),
        (c, Some(spec_c)),
        // Removing a frontend that was never programmed is nothing.
        (frontend(9, 80), None),
    ]
    .into_iter()
    .collect();
    let report = r.apply_changes(&changes, t0);
    assert_eq!(
        (
            report.added,
            report.updated,
            report.removed,
            report.unchanged
        ),
        (1, 1, 1, 0),
        "{report:?}"
    );
    assert!(r.maps().ops > ops_before);
    assert_eq!(r.maps().resolve(&a), Some(backends(&[2])));
    assert_eq!(r.maps().resolve(&b), None);
    assert_eq!(r.maps().resolve(&c), Some(backends(&[4])));
    r.collect_garbage(t0 + GRACE * 2);
    let mut left: Vec<_> = r.maps().backends.values().map(|v| v.addr[15]).collect();
    left.sort_unstable();
    assert_eq!(
        left,
        vec![2, 4],
        "backends 1 and 3 freed after the grace period"
    );
    // The same changes again write nothing.
    let ops_before = r.maps().ops;
    let again: BTreeMap<_, _> = changes.into_iter().filter(|(f, _)| *f != b).collect();
    let report = r.apply_changes(&again, t0);
    assert_eq!(report.unchanged, 2, "{report:?}");
    assert_eq!(
        r.maps().ops,
        ops_before,
        "unchanged frontends write nothing"
    );
}

fn external(
    backends: Vec<Backend>,
    nodes: &[(&str, &str)],
    local_only: bool,
    ranges: &[&str],
) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        name: "ext".into(),
        port_name: String::new(),
        backends,
        terminating: Vec::new(),
        backend_nodes: nodes
            .iter()
            .map(|(ip, node)| (ip.parse().unwrap(), (*node).to_owned()))
            .collect(),
        session_affinity_timeout: None,
        external: Some(gannet_k8s::External {
            node_port: Some(30080),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            local_only,
            health_check_node_port: None,
            source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
        }),
    }
}

/// External frontends get a Maglev table of the right backends (all, or this node's with
/// `externalTrafficPolicy: Local`), their source ranges before the switch, and lose both when
/// they stop being external or go.
#[test]
fn external_frontends_get_tables_and_ranges() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let f = frontend(9, 30080);
    let nodes = [("10.244.0.1", "test-node"), ("10.244.0.2", "other")];
    let mut desired = DesiredState::default();
    desired
        .services
        .insert(f, external(backends(&[1, 2]), &nodes, false, &[]));
    r.apply(&desired, true, t0);
    assert_eq!(r.maps().table_backends(&f), Some(backends(&[1, 2])));
    let value = r.maps().services[&service_key(&f)];
    assert_eq!(value.flags & (SVC_F_EXTERNAL | SVC_F_LOCAL), SVC_F_EXTERNAL);

    // externalTrafficPolicy: Local, and source ranges.
    let t1 = t0 + Duration::from_millis(10);
    desired.services.insert(
        f,
        external(backends(&[1, 2]), &nodes, true, &["192.0.2.0/24"]),
    );
    r.apply(&desired, true, t1);
    assert_eq!(
        r.maps().table_backends(&f),
        Some(backends(&[1])),
        "only this node's"
    );
    assert_eq!(
        r.maps().resolve(&f),
        Some(backends(&[1, 2])),
        "the node's own clients get all"
    );
    let value = r.maps().services[&service_key(&f)];
    assert_eq!(
        value.flags & (SVC_F_LOCAL | SVC_F_SOURCE_RANGES),
        SVC_F_LOCAL | SVC_F_SOURCE_RANGES
    );
    let id = value.id;
    assert_eq!(
        r.maps().ranges[&id],
        vec!["192.0.2.0/24".parse::<ipnet::IpNet>().unwrap()]
    );

    // Ranges change: the new one is added, the old one goes.
    let t2 = t1 + Duration::from_millis(10);
    desired.services.insert(
        f,
        external(backends(&[1, 2]), &nodes, true, &["198.51.100.0/24"]),
    );
    r.apply(&desired, true, t2);
    assert_eq!(
        r.maps().ranges[&id],
        vec!["198.51.100.0/24".parse::<ipnet::IpNet>().unwrap()]
    );

    // No local endpoint: no table (the program drops), the frontend stays.
    let t3 = t2 + Duration::from_millis(10);
    desired
        .services
        .insert(f, external(backends(&[2]), &nodes, true, &[]));
    r.apply(&desired, true, t3);
    assert_eq!(r.maps().table_backends(&f), None);
    assert!(r.maps().ranges.is_empty(), "{:?}", r.maps().ranges);

    // Removed: the table and everything else go.
    let t4 = t3 + Duration::from_millis(10);
    desired
        .services
        .insert(f, external(backends(&[1, 2]), &nodes, false, &[]));
    r.apply(&desired, true, t4);
    assert!(r.maps().table_backends(&f).is_some());
    r.apply(
        &DesiredState::default(),
        true,
        t4 + Duration::from_millis(10),
    );
    r.collect_garbage(t4 + GRACE * 3);
    assert!(
        r.maps().maglev.is_empty(),
        "tables left: {:?}",
        r.maps().maglev.keys()
    );
    assert!(r.maps().backends.is_empty());
}

/// `n` external frontends (node ports 30000 + i), each with three backends of its own.
fn externals(n: u16) -> DesiredState {
    let mut desired = DesiredState::default();
    for i in 0..n {
        let [hi, lo] = i.to_be_bytes();
        let backends = (1..=3u16)
            .map(|last| Backend {
                ip: IpAddr::V4(Ipv4Addr::new(10, 245, hi, lo)),
                port: 8000 + last,
            })
            .collect();
        let f = Frontend {
            ip: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 11)),
            port: 30000 + i,
            protocol: Protocol::Tcp,
        };
        desired
            .services
            .insert(f, external(backends, &[], false, &[]));
    }
    desired
}

/// Installing a table costs the kernel an RCU grace period per batch: a pass installs its tables
/// together, at most `MAX_STAGED_TABLES` at a time, and switches every frontend after its table
/// is in (the checked maps verify every table against the backend map as it goes in).
#[test]
fn tables_are_installed_in_batches() {
    let t0 = Instant::now();
    let maps = CheckedMaps {
        unchecked: true,
        ..CheckedMaps::default()
    };
    let mut r = Reconciler::adopt(maps, GRACE, "test-node").unwrap();
    let n = 1200;
    let desired = externals(n);
    let report = r.apply(&desired, true, t0);
    assert_eq!(
        (report.added, report.failed.len()),
        (usize::from(n), 0),
        "{report:?}"
    );
    let batches = usize::from(n).div_ceil(super::MAX_STAGED_TABLES);
    assert_eq!(
        r.maps().flushes,
        batches,
        "{n} tables must take {batches} batches"
    );
    r.maps().check_now();
    assert_eq!(r.maps().maglev.len(), usize::from(n));
    for (f, spec) in &desired.services {
        let mut expected = spec.backends.clone();
        expected.sort_unstable();
        assert_eq!(
            r.maps().table_backends(f),
            Some(expected),
            "{f}'s table is missing or wrong"
        );
    }

    // Removing them all: one batch of removals.
    r.apply(&DesiredState::default(), true, t0);
    assert_eq!(r.maps().flushes, batches + 1, "one batch of removals");
    assert!(r.maps().maglev.is_empty());
}

/// A table depends only on the set of backends it is built from: it is built and written when
/// that set changes, not when the endpoints come in another order, nor when only the affinity
/// or a backend the NodePort program does not use (another node's, with
/// `externalTrafficPolicy: Local`) changes.
#[test]
fn a_table_is_written_only_when_its_backends_change() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let f = frontend(9, 30080);
    let nodes = [
        ("10.244.0.1", "test-node"),
        ("10.244.0.2", "test-node"),
        ("10.244.0.3", "other"),
        ("10.244.0.4", "other"),
    ];
    let mut desired = DesiredState::default();
    let mut apply = |r: &mut Reconciler<CheckedMaps>, spec: ServicePort| {
        desired.services.insert(f, spec);
        r.apply(&desired, true, t0)
    };
    apply(&mut r, external(backends(&[1, 2, 3]), &nodes, true, &[]));
    assert_eq!(r.maps().tables_written, 1);
    assert_eq!(r.maps().table_backends(&f), Some(backends(&[1, 2])));

    let report = apply(&mut r, external(backends(&[3, 2, 1]), &nodes, true, &[]));
    assert_eq!(
        r.maps().tables_written,
        1,
        "another order of the same endpoints: no new table ({report:?})"
    );
    let report = apply(&mut r, external(backends(&[1, 2, 4]), &nodes, true, &[]));
    assert_eq!(report.updated, 1, "{report:?}");
    assert_eq!(
        r.maps().tables_written,
        1,
        "another node's endpoint changed: the node's own clients see it, the table does not"
    );
    let mut sticky = external(backends(&[1, 2, 4]), &nodes, true, &[]);
    sticky.session_affinity_timeout = Some(60);
    let report = apply(&mut r, sticky);
    assert_eq!(report.updated, 1, "{report:?}");
    assert_eq!(r.maps().tables_written, 1, "affinity alone: no new table");
    assert_eq!(r.maps().table_backends(&f), Some(backends(&[1, 2])));

    apply(&mut r, external(backends(&[1, 4]), &nodes, true, &[]));
    assert_eq!(
        r.maps().tables_written,
        2,
        "a local endpoint went: a new table"
    );
    assert_eq!(r.maps().table_backends(&f), Some(backends(&[1])));
    let flushes = r.maps().flushes;
    let report = apply(&mut r, external(backends(&[1, 4]), &nodes, true, &[]));
    assert_eq!(report.unchanged, 1, "{report:?}");
    assert_eq!(r.maps().flushes, flushes, "nothing to install, no batch");
}

/// A restarted agent reads every table back (one read each) and keeps the ones that are what it
/// would write: nothing is rebuilt or swapped. A table it cannot vouch for (another size) is
/// written again; a backend only a table names (a local terminating endpoint) is not freed.
#[test]
fn restart_adopts_tables_without_rewriting_them() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let mut desired = externals(20);
    // externalTrafficPolicy: Local with only a terminating endpoint on this node: the table
    // names a backend no slot does.
    let local = frontend(9, 30080);
    let mut spec = external(
        backends(&[2]),
        &[("10.244.0.1", "test-node"), ("10.244.0.2", "other")],
        true,
        &[],
    );
    spec.terminating = backends(&[1]);
    desired.services.insert(local, spec);
    r.apply(&desired, true, t0);
    assert_eq!(r.maps().table_backends(&local), Some(backends(&[1])));
    let written = r.maps().tables_written;

    let maps = std::mem::take(&mut r.maps);
    let mut r2 = Reconciler::adopt(maps, GRACE, "test-node").unwrap();
    r2.collect_garbage(t0 + GRACE * 3);
    assert_eq!(
        r2.maps().table_backends(&local),
        Some(backends(&[1])),
        "the backend only the table names must survive adoption"
    );
    let ops = r2.maps().ops;
    let report = r2.apply(&desired, true, t0);
    assert_eq!(report.unchanged, desired.services.len(), "{report:?}");
    assert_eq!(r2.maps().ops, ops, "an unchanged state writes nothing");
    assert_eq!(r2.maps().tables_written, written, "no table rebuilt");

    // A table of another size (say --maglev-table-size changed) is written again.
    let id = r2.maps().services[&service_key(&local)].id;
    r2.maps.maglev.get_mut(&id).unwrap().push(1);
    let maps = std::mem::take(&mut r2.maps);
    let mut r3 = Reconciler::adopt(maps, GRACE, "test-node").unwrap();
    let report = r3.apply(&desired, true, t0);
    assert_eq!(
        (report.updated, report.unchanged),
        (1, desired.services.len() - 1),
        "{report:?}"
    );
    assert_eq!(r3.maps().tables_written, written + 1);
    assert_eq!(r3.maps().table_backends(&local), Some(backends(&[1])));
}

/// A table that cannot be installed fails its frontend like any other write: a new frontend is
/// not switched on, an existing one keeps its backends and its table; the others are programmed.
#[test]
fn a_table_that_cannot_be_installed_leaves_its_frontend_as_it_was() {
    let t0 = Instant::now();
    let mut r = Reconciler::adopt(CheckedMaps::default(), GRACE, "test-node").unwrap();
    let a = frontend(1, 30080);
    let b = frontend(2, 30080);
    let mut desired = DesiredState::default();
    desired
        .services
        .insert(a, external(backends(&[1, 2]), &[], false, &[]));
    r.apply(&desired, true, t0);
    let id_a = r.maps().services[&service_key(&a)].id;

    // b (new) and a (changed) both fail to install their tables.
    r.maps.failing_tables.extend([id_a, id_a + 1]);
    desired
        .services
        .insert(a, external(backends(&[1, 3]), &[], false, &[]));
    desired
        .services
        .insert(b, external(backends(&[4]), &[], false, &["192.0.2.0/24"]));
    let c = frontend(3, 80);
    desired
        .services
        .insert(c, state(&[(c, backends(&[5]))]).services[&c].clone());
    let report = r.apply(&desired, true, t0);
    let mut failed: Vec<Frontend> = report.failed.iter().map(|(f, _)| *f).collect();
    failed.sort_unstable();
    assert_eq!(failed, vec![a, b], "{report:?}");
    assert_eq!(
        report.added, 1,
        "the ClusterIP frontend is programmed: {report:?}"
    );
    assert_eq!(
        r.maps().resolve(&b),
        None,
        "b is not switched on without its table"
    );
    assert!(
        r.maps().ranges.is_empty(),
        "b's source ranges are rolled back: {:?} (report {report:?})",
        r.maps().ranges
    );
    assert_eq!(r.maps().resolve(&a), Some(backends(&[1, 2])));
    assert_eq!(r.maps().table_backends(&a), Some(backends(&[1, 2])));
    r.collect_garbage(t0 + GRACE * 3);
    let mut left: Vec<_> = r.maps().backends.values().map(|v| v.addr[15]).collect();
    left.sort_unstable();
    assert_eq!(
        left,
        vec![1, 2, 5],
        "what the failed changes acquired is freed"
    );

    // Once tables fit again, the next apply programs both.
    r.maps.failing_tables.clear();
    let report = r.apply(&desired, true, t0 + GRACE * 3);
    assert_eq!((report.added, report.updated), (1, 1), "{report:?}");
    assert_eq!(r.maps().table_backends(&a), Some(backends(&[1, 3])));
    assert_eq!(r.maps().table_backends(&b), Some(backends(&[4])));
}
