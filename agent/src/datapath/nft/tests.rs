//! The nftables data plane against the kernel, in a namespace of the test's own: what the table
//! holds after a full sync, that a change touches only the changed frontend's elements, that a
//! new instance adopts the table as it is, and that bad input is refused per frontend.

use std::collections::BTreeMap;
use std::net::IpAddr;

use gannet_k8s::{Backend, DesiredState, External, Frontend, Protocol, ServicePort};
use gannet_testkit::Netns;
use serde_json::Value;

use super::*;

fn frontend(ip: &str, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        ip: ip.parse().unwrap(),
        port,
        protocol,
    }
}

fn backend(ip: &str, port: u16) -> Backend {
    Backend {
        ip: ip.parse().unwrap(),
        port,
    }
}

fn spec(name: &str, backends: &[Backend]) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        name: name.into(),
        port_name: String::new(),
        backends: backends.to_vec(),
        terminating: Vec::new(),
        backend_nodes: BTreeMap::new(),
        session_affinity_timeout: None,
        external: None,
    }
}

fn external(spec: ServicePort, local_only: bool, ranges: &[&str]) -> ServicePort {
    ServicePort {
        external: Some(External {
            node_port: Some(30080),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            local_only,
            health_check_node_port: None,
            source_ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
        }),
        ..spec
    }
}

/// Every element of the table, as `set: key => value` lines, sorted.
fn elements() -> Vec<String> {
    let listing = list().unwrap().expect("the table exists");
    let mut out = Vec::new();
    for item in listing["nftables"].as_array().unwrap() {
        for kind in ["set", "map"] {
            let Some(set) = item.get(kind) else { continue };
            let name = set["name"].as_str().unwrap();
            for elem in set["elem"].as_array().into_iter().flatten() {
                let (k, v) = split_element(elem);
                out.push(if v == Value::Null {
                    format!("{name}: {k}")
                } else {
                    format!("{name}: {k} => {v}")
                });
            }
        }
    }
    out.sort();
    out
}

fn state(services: &[(Frontend, ServicePort)]) -> DesiredState {
    DesiredState {
        services: services.iter().cloned().collect(),
    }
}

#[test]
fn desired_programming_follows_the_traffic_policy() {
    let f = frontend("10.0.0.1", 30080, Protocol::Tcp);
    let local = backend("10.244.1.5", 8080);
    let remote = backend("10.244.2.5", 8080);
    let v6 = backend("fd00::5", 8080);
    let mut s = spec("web", &[local, remote, v6]);
    s.backend_nodes = BTreeMap::from([(local.ip, "n1".to_owned()), (remote.ip, "n2".to_owned())]);
    let cluster = Programmed::desired(&f, &external(s.clone(), false, &[]), "n1");
    assert_eq!(cluster.backends, vec![local, remote], "same family only");
    assert!(cluster.masquerade && cluster.block.is_none());
    let local_here = Programmed::desired(&f, &external(s.clone(), true, &[]), "n1");
    assert_eq!(local_here.backends, vec![local]);
    assert!(!local_here.masquerade);
    let local_elsewhere = Programmed::desired(&f, &external(s.clone(), true, &[]), "n3");
    assert_eq!(local_elsewhere.block, Some(Block::Drop));
    let none = Programmed::desired(&f, &spec("web", &[]), "n1");
    assert_eq!(none.block, Some(Block::Reject));
}

#[test]
fn a_backend_that_stays_keeps_its_slot() {
    let (a, b, c, d) = (
        backend("10.1.0.1", 80),
        backend("10.1.0.2", 80),
        backend("10.1.0.3", 80),
        backend("10.1.0.4", 80),
    );
    let old = Programmed {
        backends: vec![c, a, b],
        ..Programmed::default()
    };
    let new = Programmed {
        backends: vec![a, b, d],
        ..Programmed::default()
    }
    .arranged_after(Some(&old));
    assert_eq!(new.backends, vec![d, a, b]);
    let fewer = Programmed {
        backends: vec![b, c],
        ..Programmed::default()
    }
    .arranged_after(Some(&old));
    // c keeps slot 0; b was in slot 2, which goes: it takes the free slot 1.
    assert_eq!(fewer.backends, vec![c, b]);
}

#[test]
fn the_table_holds_each_frontend_as_elements_and_changes_touch_only_one_frontend() {
    let ns = Netns::new("nftdp").expect("test netns");
    ns.run(|| {
        let mut plane = NftDataPlane::adopt("n1").expect("creating the table");
        plane.set_pod_cidrs(&["10.244.1.0/24".parse().unwrap()]);
        let web = frontend("10.96.0.10", 80, Protocol::Tcp);
        let dns = frontend("10.96.0.53", 53, Protocol::Udp);
        let web6 = frontend("fd00:96::10", 80, Protocol::Tcp);
        let np = frontend("192.168.1.10", 30080, Protocol::Tcp);
        let empty = frontend("10.96.0.99", 80, Protocol::Tcp);
        let sticky = frontend("10.96.0.77", 80, Protocol::Tcp);
        let mut sticky_spec = spec(
            "sticky",
            &[backend("10.244.1.7", 80), backend("10.244.2.7", 80)],
        );
        sticky_spec.session_affinity_timeout = Some(600);
        let (b1, b2, b3) = (
            backend("10.244.1.5", 8080),
            backend("10.244.2.5", 8080),
            backend("10.244.3.5", 8080),
        );
        let desired = state(&[
            (web, spec("web", &[b1, b2])),
            (dns, spec("dns", &[b3])),
            (web6, spec("web", &[backend("fd00:244::5", 8080)])),
            (
                np,
                external(spec("web", &[b1, b2]), false, &["192.168.0.0/16"]),
            ),
            (empty, spec("empty", &[])),
            (sticky, sticky_spec),
        ]);
        let report = plane.apply(&desired, true);
        assert_eq!((report.added, report.failed.len()), (6, 0), "{report:?}");
        let all = elements();
        for expected in [
            r#"services4: {"concat":["10.96.0.10","tcp",80]} => {"goto":{"target":"lb-2"}}"#,
            r#"services4: {"concat":["10.96.0.53","udp",53]} => {"goto":{"target":"lb-1"}}"#,
            r#"services6: {"concat":["fd00:96::10","tcp",80]} => {"goto":{"target":"lb-1"}}"#,
            r#"blocked4: {"concat":["10.96.0.99","tcp",80]} => {"goto":{"target":"reject"}}"#,
            r#"masquerade4: {"concat":["192.168.1.10","tcp",30080]}"#,
            r#"firewall4: {"concat":["192.168.1.10","tcp",30080]}"#,
            r#"pod-cidrs4: {"prefix":{"addr":"10.244.1.0","len":24}}"#,
            r#"services4: {"concat":["10.96.0.77","tcp",80]} => {"goto":{"target":"aff-2"}}"#,
            r#"lb4: {"concat":["10.96.0.77","tcp",80]} => {"goto":{"target":"lb-2"}}"#,
            r#"affinity-600s-4: {"concat":["10.96.0.77","tcp",80]}"#,
        ] {
            assert!(
                all.iter().any(|e| e == expected),
                "missing {expected} in\n{all:#?}"
            );
        }
        assert_eq!(
            all.iter().filter(|e| e.starts_with("slot")).count(),
            2 * (2 + 1 + 1 + 2 + 2),
            "one address and one port per backend slot: {all:#?}"
        );

        // One endpoint of web changes: only web's elements change.
        let before = elements();
        let change = BTreeMap::from([(web, Some(spec("web", &[b1, b3])))]);
        let report = plane.apply_changes(&change);
        assert_eq!(report.updated, 1, "{report:?}");
        let after = elements();
        let removed: Vec<&String> = before.iter().filter(|e| !after.contains(e)).collect();
        let added: Vec<&String> = after.iter().filter(|e| !before.contains(e)).collect();
        assert!(
            removed
                .iter()
                .chain(&added)
                .all(|e| e.contains("10.96.0.10")),
            "only web's elements change: removed {removed:#?}, added {added:#?}"
        );
        assert_eq!(
            added,
            [r#"slot1-addr4: {"concat":["10.96.0.10","tcp",80]} => "10.244.3.5""#],
            "b1 keeps slot 0, b3 takes b2's slot (its port element stays: the same port)"
        );

        // A new instance adopts the table as it is: nothing to change.
        let mut adopted = NftDataPlane::adopt("n1").expect("adopting");
        assert_eq!(adopted.frontends(), plane.frontends());
        let mut desired = desired;
        desired.services.insert(web, spec("web", &[b1, b3]));
        let report = adopted.apply(&desired, true);
        assert_eq!(
            (
                report.added,
                report.updated,
                report.removed,
                report.unchanged
            ),
            (0, 0, 0, 6),
            "{report:?}"
        );
        assert_eq!(elements(), after);

        // Removing everything leaves no element but the pod CIDR.
        let report = adopted.apply(&DesiredState::default(), true);
        assert_eq!(report.removed, 6, "{report:?}");
        assert_eq!(
            elements(),
            [r#"pod-cidrs4: {"prefix":{"addr":"10.244.1.0","len":24}}"#]
        );
        assert!(remove().unwrap());
        assert!(list().unwrap().is_none());
    })
    .expect("running in the test netns");
}

#[test]
fn a_hairpin_element_goes_with_the_last_frontend_using_its_address() {
    let ns = Netns::new("nfthp").expect("test netns");
    ns.run(|| {
        let hairpin = |ip: &str| format!(r#"hairpin4: {{"concat":["{ip}","{ip}"]}}"#);
        let mut plane = NftDataPlane::adopt("n1").expect("creating the table");
        let (web, api) = (
            frontend("10.96.0.10", 80, Protocol::Tcp),
            frontend("10.96.0.11", 80, Protocol::Tcp),
        );
        let (shared, own) = (backend("10.244.1.5", 8080), backend("10.244.1.6", 8080));
        let report = plane.apply(
            &state(&[
                (web, spec("web", &[shared, own])),
                (api, spec("api", &[shared])),
            ]),
            true,
        );
        assert_eq!((report.added, report.failed.len()), (2, 0), "{report:?}");
        for ip in ["10.244.1.5", "10.244.1.6"] {
            assert!(elements().contains(&hairpin(ip)), "{ip}: {:#?}", elements());
        }

        // web lets both go: the address api still uses keeps its element, the other loses it.
        plane.apply_changes(&BTreeMap::from([(web, Some(spec("web", &[])))]));
        let all = elements();
        assert!(all.contains(&hairpin("10.244.1.5")), "{all:#?}");
        assert!(!all.contains(&hairpin("10.244.1.6")), "{all:#?}");

        // An adopting instance counts the users from the table: api's removal takes the last.
        let mut adopted = NftDataPlane::adopt("n1").expect("adopting");
        adopted.apply_changes(&BTreeMap::from([(api, None)]));
        assert!(
            !elements().iter().any(|e| e.starts_with("hairpin")),
            "{:#?}",
            elements()
        );
        assert!(remove().unwrap());
    })
    .expect("running in the test netns");
}

/// Runs `nft` with `args` in the current namespace (the test's).
fn nft(args: &[&str]) {
    let status = std::process::Command::new("nft")
        .args(args)
        .status()
        .expect("running nft");
    assert!(status.success(), "nft {args:?}");
}

#[test]
fn a_table_flushed_or_removed_outside_gannetd_is_programmed_again() {
    let ns = Netns::new("nftrep").expect("test netns");
    ns.run(|| {
        let mut plane = NftDataPlane::adopt("n1").expect("creating the table");
        plane.set_pod_cidrs(&["10.244.1.0/24".parse().unwrap()]);
        let mut sticky = spec("sticky", &[backend("10.244.1.7", 80)]);
        sticky.session_affinity_timeout = Some(600);
        let desired = state(&[
            (
                frontend("10.96.0.10", 80, Protocol::Tcp),
                spec(
                    "web",
                    &[backend("10.244.1.5", 8080), backend("10.244.2.5", 8080)],
                ),
            ),
            (frontend("10.96.0.77", 80, Protocol::Tcp), sticky),
            (
                frontend("10.96.0.99", 80, Protocol::Tcp),
                spec("empty", &[]),
            ),
        ]);
        let report = plane.apply(&desired, true);
        assert_eq!((report.added, report.failed.len()), (3, 0), "{report:?}");
        let programmed = elements();
        let rules = |listing: Option<Value>| {
            listing.expect("the table exists")["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i.get("rule").is_some())
                .count()
        };
        let rule_count = rules(list().unwrap());

        assert!(plane.repair().is_none(), "an intact table is left alone");

        for damage in [
            &["delete", "table", "inet", TABLE][..],
            &["flush", "ruleset"],
            &["delete", "chain", "inet", TABLE, "slot-1"],
        ] {
            if damage[0] == "delete" && damage[1] == "chain" {
                // A chain that rules jump to cannot be deleted before its rules.
                nft(&["flush", "chain", "inet", TABLE, "lb-2"]);
                nft(&["flush", "chain", "inet", TABLE, "aff-1"]);
                nft(&["flush", "chain", "inet", TABLE, "lb-1"]);
                nft(&["flush", "chain", "inet", TABLE, "aff-slot-1"]);
                nft(&["flush", "chain", "inet", TABLE, "slot-1"]);
            }
            nft(damage);
            let report = plane.repair().expect("the damage is found");
            assert_eq!(
                (report.added, report.failed.len()),
                (3, 0),
                "after {damage:?}: {report:?}"
            );
            assert_eq!(elements(), programmed, "after {damage:?}");
            assert_eq!(rules(list().unwrap()), rule_count, "after {damage:?}");
            assert!(plane.repair().is_none(), "repaired after {damage:?}");
        }
        assert!(remove().unwrap());
    })
    .expect("running in the test netns");
}

#[test]
fn a_frontend_the_kernel_refuses_is_reported_and_the_others_are_programmed() {
    let ns = Netns::new("nftbad").expect("test netns");
    ns.run(|| {
        let mut plane = NftDataPlane::adopt("n1").expect("creating the table");
        let good = frontend("10.96.0.10", 80, Protocol::Tcp);
        // Someone else put an element for `bad` into the table, with another verdict than the
        // one gannetd writes: nft refuses to add gannetd's (the key exists).
        let bad = frontend("10.96.0.11", 80, Protocol::Tcp);
        let mut tamper = Elements::default();
        tamper.add(
            "blocked4".into(),
            table::mapping(table::frontend_key(&bad), table::block_verdict(Block::Drop)),
        );
        apply(tamper.commands()).expect("adding the foreign element");
        let bad_spec = spec("bad", &[]);
        let report = plane.apply(
            &state(&[
                (good, spec("good", &[backend("10.244.1.5", 80)])),
                (bad, bad_spec),
            ]),
            true,
        );
        assert_eq!(report.added, 1, "{report:?}");
        assert_eq!(
            report.failed.iter().map(|(f, _)| *f).collect::<Vec<_>>(),
            [bad],
            "{report:?}"
        );
        assert!(elements().iter().any(|e| e.contains("10.96.0.10")));
        assert_eq!(
            elements()
                .into_iter()
                .filter(|e| e.contains("10.96.0.11"))
                .collect::<Vec<_>>(),
            [r#"blocked4: {"concat":["10.96.0.11","tcp",80]} => {"drop":null}"#],
            "nothing of gannet's for the refused frontend; the foreign element as it was"
        );
    })
    .expect("running in the test netns");
}

/// What programming costs (a measurement, not a check: run it by hand on a quiet machine,
/// `cargo test --release -p gannet-agent --lib programming_cost -- --ignored --nocapture`):
/// 10 000 cluster-IP services × 10 endpoints in one full sync, then one endpoint change of one
/// service at a time, in a namespace of the test's own.
#[test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
fn programming_cost() {
    const SERVICES: u32 = 10_000;
    const ENDPOINTS: u32 = 10;
    const CHANGES: usize = 50;
    let ns = Netns::new("nftcost").expect("test netns");
    let report = ns
        .run(|| {
            let ip = |base: u32, i: u32| IpAddr::V4((base + i).into()).to_string();
            let service = |i: u32, shift: u32| {
                let backends: Vec<Backend> = (0..ENDPOINTS)
                    .map(|e| backend(&ip(0x0af4_0000, i * ENDPOINTS + e + shift), 8080))
                    .collect();
                (
                    frontend(&ip(0x0a60_0000, i), 80, Protocol::Tcp),
                    spec(&format!("svc-{i}"), &backends),
                )
            };
            let desired = state(&(0..SERVICES).map(|i| service(i, 0)).collect::<Vec<_>>());
            let mut plane = NftDataPlane::adopt("n1").expect("creating the table");
            let start = std::time::Instant::now();
            let report = plane.apply(&desired, true);
            let full = start.elapsed();
            assert_eq!(report.added, SERVICES as usize, "{report:?}");
            let mut times = Vec::new();
            for c in 0..CHANGES {
                // Service c's last endpoint moves to a new address.
                let i = u32::try_from(c).unwrap();
                let (f, mut s) = service(i, 0);
                s.backends[usize::try_from(ENDPOINTS - 1).unwrap()] =
                    backend(&ip(0x0af5_0000, i), 8080);
                let start = std::time::Instant::now();
                let report = plane.apply_changes(&BTreeMap::from([(f, Some(s))]));
                times.push(start.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(report.updated, 1, "{report:?}");
            }
            times.sort_by(f64::total_cmp);
            let start = std::time::Instant::now();
            assert!(plane.repair().is_none(), "the table is intact");
            let check = start.elapsed();
            let start = std::time::Instant::now();
            let adopted = NftDataPlane::adopt("n1").expect("adopting");
            let adopt = start.elapsed();
            assert_eq!(adopted.frontends().len(), SERVICES as usize);
            format!(
                "{SERVICES} services × {ENDPOINTS} endpoints: full sync {:.2} s; one endpoint \
                 change p50 {:.1} ms, p99 {:.1} ms; structure check (repair) {:.1} ms; \
                 adoption (read back) {:.2} s",
                full.as_secs_f64(),
                times[times.len() / 2],
                times[times.len() * 99 / 100],
                check.as_secs_f64() * 1000.0,
                adopt.as_secs_f64(),
            )
        })
        .expect("running in the test netns");
    println!("{report}");
}
