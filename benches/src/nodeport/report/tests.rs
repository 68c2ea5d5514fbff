//! Unit tests of the `nodeport` report: goals, tables and charts' series.

use std::collections::BTreeMap;

use super::*;
use crate::nodeport::Load;
use crate::nodeport::packet::{PathCost, ProgramCost, RepeatCheck, Spread};
use crate::results::MetricResult;

fn size(services: usize, hit_ns: f64, values: [[f64; 3]; 5]) -> SizeResult {
    let mut results = BTreeMap::new();
    for (variant, vals) in Variant::ALL.into_iter().zip(values) {
        results.insert(
            variant,
            Metric::ALL
                .into_iter()
                .zip(vals)
                .filter_map(|(m, x)| MetricResult::from_samples(m, vec![x]).map(|r| (m, r)))
                .collect(),
        );
    }
    let path = |path: &str, ns: f64| PathCost {
        path: path.to_owned(),
        what: String::new(),
        interface: "eth0".into(),
        verdicts: BTreeMap::from([("TC_ACT_REDIRECT".to_owned(), 10)]),
        single_run_ns: Spread {
            p10: ns,
            median: ns + 30.0,
            p90: ns + 60.0,
        },
        single_minus_overhead_ns: ns,
        repeated_ns: None,
        ns_per_packet: ns,
    };
    // The XDP program passes the tracked packet untouched: measured with `repeat`.
    let repeated = |name: &str, ns: f64| PathCost {
        verdicts: BTreeMap::from([("XDP_PASS".to_owned(), 10)]),
        single_minus_overhead_ns: ns + 5.0,
        repeated_ns: Some(ns),
        ..path(name, ns)
    };
    let program = |name: &str, hook: &str, paths| ProgramCost {
        program: name.into(),
        hook: hook.into(),
        backend: "10.244.251.2:8080".into(),
        source_at_backend: "10.244.250.0:61000".into(),
        clock_overhead_ns: 30.0,
        repeat_check: RepeatCheck {
            repetitions: 1000,
            last_verdict: "TC_ACT_UNSPEC".into(),
            ns_per_repetition: 40.0,
        },
        paths,
    };
    SizeResult {
        services,
        load: Load::default(),
        target: "10.99.0.11:30000".into(),
        backend: "10.244.251.2:8080".into(),
        checks: BTreeMap::new(),
        gannet_counters: BTreeMap::new(),
        packet: vec![
            program(
                "gannet_nodeport",
                "tc",
                vec![path("miss", 40.0), path("tracked", hit_ns)],
            ),
            program(
                "gannet_nodeport_xdp",
                "xdp",
                vec![repeated("miss", 30.0), repeated("tracked", 90.0)],
            ),
        ],
        order: Vec::new(),
        failed: BTreeMap::new(),
        results,
    }
}

#[test]
fn goals_are_evaluated_at_ten_thousand_services() {
    let sizes = vec![
        // At 1 service everything would fail; the goals look at 10 000.
        size(
            1,
            500.0,
            [
                [1.0, 1.0, 1.0],
                [1.0, 1.0, 1.0],
                [1.0, 1.0, 1.0],
                [2.0, 2.0, 2.0],
                [2.0, 2.0, 2.0],
            ],
        ),
        // gannet-tc, gannet-xdp, gannet-nft, nft, iptables: rr, crr, stream.
        size(
            10_000,
            80.0,
            [
                [100_000.0, 30_000.0, 9.6],
                [95_000.0, 31_200.0, 9.0],
                [89_910.0, 25_000.0, 12.0],
                [90_000.0, 26_000.0, 10.0],
                [80_000.0, 10_000.0, 9.0],
            ],
        ),
    ];
    let goals = goals(&sizes);
    let find = |prefix: &str| {
        goals
            .iter()
            .find(|g| g.goal.starts_with(prefix))
            .unwrap_or_else(|| panic!("no goal {prefix}: {goals:?}"))
    };
    let hit = find("gannet_nodeport (tc) hit path");
    assert_eq!(hit.met, Some(true), "{hit:?}");
    assert!(hit.goal.ends_with("at 10 000 services"), "{hit:?}");
    // 90 ns from repeated runs ≤ 100.
    assert_eq!(find("gannet_nodeport_xdp (xdp) hit path").met, Some(true));
    // 30 000 / 10 000 = 3.0 ≥ 1.5; 30 000 / 26 000 = 1.15 < 1.2.
    assert_eq!(
        find("gannet-tc crr ≥ 1.50× kube-proxy-iptables").met,
        Some(true)
    );
    let nft = find("gannet-tc crr ≥ 1.20× kube-proxy-nft");
    assert_eq!(nft.met, Some(false));
    assert_eq!(nft.measured, "1.154× (30,000 vs 26,000 connections/s)");
    // 31 200 / 26 000 = 1.2.
    assert_eq!(
        find("gannet-xdp crr ≥ 1.20× kube-proxy-nft").met,
        Some(true)
    );
    // 9.6 / 10.0 = 0.96 ≥ 0.95 of the best peer (nft); 9.0 / 10.0 < 0.95.
    let stream = find("gannet-tc stream within 5%");
    assert_eq!(stream.met, Some(true), "{stream:?}");
    assert!(stream.measured.contains("kube-proxy-nft"), "{stream:?}");
    assert_eq!(find("gannet-xdp stream within 5%").met, Some(false));
    // gannet-nft against kube-proxy's nftables rules: rr 0.1 % short (not met, and not
    // shown as 1.00×), crr 25 000 < 26 000.
    let rr = find("gannet-nft rr ≥ 1.00× kube-proxy-nft at 10 000 services");
    assert_eq!(rr.met, Some(false), "{rr:?}");
    assert_eq!(rr.measured, "0.999× (89,910 vs 90,000 transactions/s)");
    let crr = find("gannet-nft crr ≥ 1.00× kube-proxy-nft at 10 000 services");
    assert_eq!(crr.met, Some(false), "{crr:?}");
    assert_eq!(crr.measured, "0.962× (25,000 vs 26,000 connections/s)");
    // The program's goals are not gannet-nft's (it has no program; its stream, the best
    // here, sets no goal either).
    assert!(
        !goals
            .iter()
            .any(|g| g.goal.starts_with("gannet-nft") && !g.goal.contains("kube-proxy-nft")),
        "{goals:?}"
    );
    assert_eq!(goals.len(), PACKET_PROGRAMS.len() + 2 * 3 + 2);
}

#[test]
fn a_failed_measurement_fails_its_goal() {
    let mut s = size(
        10_000,
        80.0,
        [
            [100_000.0, 30_000.0, 9.6],
            [100_000.0, 30_000.0, 9.6],
            [90_000.0, 20_000.0, 9.6],
            [90_000.0, 20_000.0, 10.0],
            [80_000.0, 10_000.0, 9.0],
        ],
    );
    s.results
        .get_mut(&Variant::GannetTc)
        .expect("gannet")
        .remove(&Metric::Stream);
    s.failed.insert(
        Variant::GannetTc,
        BTreeMap::from([(
            Metric::Stream,
            crate::nodeport::Failure {
                rounds: 3,
                first_error: "sending: timed out".into(),
            },
        )]),
    );
    let goals = goals(std::slice::from_ref(&s));
    let stream = goals
        .iter()
        .find(|g| g.goal.starts_with("gannet-tc stream"))
        .expect("the stream goal");
    assert_eq!(stream.met, Some(false), "{stream:?}");
    assert_eq!(
        stream.measured,
        "gannet-tc's stream failed in 3 round(s): sending: timed out"
    );
    let mut md = String::new();
    let results = Results {
        scenario: "nodeport",
        started_at: String::new(),
        wall_seconds: 0.0,
        settings: crate::nodeport::Config {
            quick: false,
            service_counts: vec![10_000],
            traffic: crate::peer::Traffic {
                rounds: 3,
                duration: std::time::Duration::from_secs(2),
                warmup: std::time::Duration::from_millis(200),
                seed: 1,
                peer_cpu: None,
            },
            testrun_calls: 10,
        }
        .settings(),
        machine: Machine::default(),
        sizes: vec![s],
        goals,
        root_namespace: RootCheck::default(),
        warnings: Vec::new(),
    };
    traffic_tables(&mut md, &results);
    assert!(
        md.contains("| 10 000 | gannet-tc | 100,000 (±0%) | 30,000 (±0%) | – **failed** ×3 |"),
        "{md}"
    );
}

#[test]
fn the_report_has_every_table() {
    let mut sizes = vec![size(
        1,
        120.0,
        [
            [100_000.0, 30_000.0, 9.0],
            [96_000.0, 30_000.0, 8.1],
            [88_000.0, 19_000.0, 9.0],
            [90_000.0, 20_000.0, 9.0],
            [80_000.0, 15_000.0, 9.0],
        ],
    )];
    sizes[0].load = Load {
        gannetd_sync_seconds: Some(0.036),
        gannetd_frontends: Some(2),
        gannetd_nft_sync_seconds: Some(0.021),
        ..Load::default()
    };
    let results = Results::new(
        crate::nodeport::Config {
            quick: true,
            service_counts: vec![1],
            traffic: crate::peer::Traffic {
                rounds: 2,
                duration: std::time::Duration::from_millis(500),
                warmup: std::time::Duration::from_millis(100),
                seed: 3,
                peer_cpu: Some(1),
            },
            testrun_calls: 100,
        }
        .settings(),
        Finished {
            started_at: "2026-12-05T00:00:00Z".into(),
            wall_seconds: 60.0,
            machine: Machine::default(),
            root_namespace: RootCheck::default(),
            warnings: Vec::new(),
        },
        sizes,
    );
    let md = render(&results, &[(Metric::Crr, "crr.png".into())]);
    assert!(
        md.contains("| 1 | gannet-tc | 100,000 (±0%) | 30,000 (±0%) | 9.00 (±0%) |"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | gannet-tc ÷ kube-proxy-iptables | 1.25× | 2.00× | 1.00× |"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | gannet-xdp ÷ gannet-tc | 0.96× | 1.00× | 0.90× |"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | gannet-nft | 88,000 (±0%) | 19,000 (±0%) | 9.00 (±0%) |"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | gannet-nft ÷ kube-proxy-nft | 0.98× | 0.95× | 1.00× |"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | gannet-nft ÷ gannet-tc | 0.88× | 0.63× | 1.00× |"),
        "{md}"
    );
    assert!(
        md.contains("**gannet-nft**: gannetd with its nftables"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | 36 ms (2 frontends) | 21 ms (2 frontends) | – | – |"),
        "{md}"
    );
    assert!(
        md.contains("| gannet-nft crr ≥ 1.00× kube-proxy-nft at 1 services | 0.950× (19,000 vs 20,000 connections/s) |"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | gannet_nodeport (tc) | 40 (70) | 120 (150) | – | – | 30 |"),
        "{md}"
    );
    // Repeated runs are marked, the single runs minus the overhead listed as a check.
    assert!(
        md.contains("| 1 | gannet_nodeport_xdp (xdp) | 30 (60) | 90* (120) | – | – | 30 |"),
        "{md}"
    );
    assert!(
        md.contains("tracked (on eth0) XDP_PASS ×10; single runs minus the overhead: 95 ns"),
        "{md}"
    );
    assert!(md.contains("**gannet-xdp**"), "{md}");
    assert!(!md.contains("no XDP program"), "{md}");
    // The goals fall back to the largest size measured: 120 ns > 100 ns.
    assert!(
        md.contains("| gannet_nodeport (tc) hit path ≤ 100 ns per packet at 1 services | 120 ns"),
        "{md}"
    );
    assert!(md.contains("**not met**"), "{md}");
    let crr = chart(&results, Metric::Crr);
    assert_eq!(crr.series.len(), 5);
    assert_eq!(crr.series[0].ratios, [Some(2.0)]);
    assert_eq!(crr.series[2].label, "gannet-nft");
    assert_eq!(crr.series[2].ratios, [Some(19_000.0 / 15_000.0)]);
    assert_eq!(crr.goals.len(), 1);
    assert_eq!(
        summary_line(&results.sizes[0]),
        "1 services, gannet-tc ÷ kube-proxy-nft: rr 1.11 crr 1.50 stream 1.00 | gannet-tc ÷ \
         kube-proxy-iptables: rr 1.25 crr 2.00 stream 1.00 | gannet-xdp ÷ kube-proxy-nft: \
         rr 1.07 crr 1.50 stream 0.90 | gannet-xdp ÷ kube-proxy-iptables: rr 1.20 crr 2.00 \
         stream 0.90 | gannet-nft ÷ kube-proxy-nft: rr 0.98 crr 0.95 stream 1.00 | gannet-nft \
         ÷ kube-proxy-iptables: rr 1.10 crr 1.27 stream 1.00"
    );
}
