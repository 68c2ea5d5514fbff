//! What a backend that goes takes with it: its id's epoch, its affinity entries, the connected
//! UDP sockets to it.

use std::{collections::BTreeMap, time::Instant};

use gannet_common::{AFFINITY_NETNS, AffinityKey, AffinityValue};
use gannet_k8s::{Backend, Frontend, Protocol};

use super::super::{Reconciler, service_key};
use super::{CheckedMaps, GRACE, backends, frontend, state};

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
