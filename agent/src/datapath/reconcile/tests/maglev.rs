//! External frontends: Maglev tables and source ranges, written in batches, only when their
//! backends change, adopted after a restart, and a table that cannot be installed.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use gannet_k8s::{Backend, DesiredState, Frontend, Protocol, ServicePort};

use gannet_common::{SVC_F_EXTERNAL, SVC_F_LOCAL, SVC_F_SOURCE_RANGES};

use super::super::{Reconciler, service_key};
use super::{CheckedMaps, GRACE, backends, frontend, state};

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
    let batches = usize::from(n).div_ceil(super::super::MAX_STAGED_TABLES);
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
