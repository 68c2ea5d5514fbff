//! The switch protocol over a pass: every lookup valid at every step, a full map, a restart,
//! applying without pruning, and changes that touch only what they name.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use gannet_k8s::{Backend, DesiredState, Frontend, Protocol, ServicePort};

use super::super::Reconciler;
use super::{CheckedMaps, GRACE, backends, frontend, state};

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
        super::super::Counts {
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
