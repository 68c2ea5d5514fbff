//! Unit tests of `results.md`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::control::report::PeerLoad;
use crate::machine::Machine;
use crate::peer::Metric;
use crate::results::{
    ChangeLatency, ChangeSample, LoadTime, LoadTimes, MetricResult, Programming,
    ProgrammingSettings, Results, RunResult, Settings, TableCounts, Variant,
};
use crate::scenario::rootns::RootCheck;

use super::{
    GOAL_SERVICES, Outcome, compare, format_seconds, format_services, format_value, render,
    thousands,
};

fn run(services: usize, gannet_rr: f64) -> RunResult {
    let mut run = RunResult {
        services,
        load: LoadTimes {
            gannetd_sync_seconds: 0.25,
            gannetd_nft_sync_seconds: 0.5,
            nft: LoadTime {
                seconds: 1.5,
                user_seconds: 0.25,
                system_seconds: 1.25,
            },
            iptables_restore: LoadTime {
                seconds: 3.25,
                user_seconds: 3.0,
                system_seconds: 0.2,
            },
            manifest_bytes: 2 * 1024 * 1024,
            nft_rules_bytes: 5000,
            iptables_rules_bytes: 600,
        },
        order: vec![Variant::ALL.to_vec()],
        results: BTreeMap::new(),
        backend_spread: BTreeMap::new(),
    };
    for (variant, rr, crr, stream) in [
        (Variant::Direct, 40_000.0, 10_000.0, 20.0),
        (Variant::Gannet, gannet_rr, 9_800.0, 19.9),
        (Variant::GannetNft, 36_500.0, 6_900.0, 18.0),
        (Variant::KubeProxyNft, 36_000.0, 7_000.0, 18.0),
        (Variant::KubeProxyIptables, 30_000.0, 5_000.0, 17.0),
    ] {
        for (metric, value) in [
            (Metric::Rr, rr),
            (Metric::Crr, crr),
            (Metric::Stream, stream),
        ] {
            run.results.entry(variant).or_default().insert(
                metric,
                MetricResult::from_samples(metric, vec![value]).expect("sample"),
            );
        }
    }
    run.compute_ratios();
    run
}

fn results(quick: bool, runs: Vec<RunResult>) -> Results {
    Results {
        scenario: "clusterip",
        started_at: "2026-01-02T03:04:05Z".into(),
        wall_seconds: 42.0,
        settings: Settings {
            quick,
            service_counts: runs.iter().map(|r| r.services).collect(),
            rounds: 3,
            seconds: 2.0,
            warmup_seconds: 0.2,
            seed: 7,
            endpoints_per_service: 3,
            measured_service: "last",
            peer_threads: 1,
            peer_cpu: Some(1),
            gannetd_sync_interval_ms: 50,
            programming: None,
        },
        machine: Machine {
            kernel: "6.1.0".into(),
            nproc: 2,
            iptables_backend: "nf_tables".into(),
            ..Machine::default()
        },
        runs,
        programming: None,
        root_namespace: RootCheck::default(),
        warnings: vec!["something odd".into()],
    }
}

/// Changes of `table_ms` each (through the manifest directory if `file`, else through
/// gannet-control).
fn changes(table_ms: &[f64], file: bool) -> Vec<ChangeSample> {
    table_ms
        .iter()
        .enumerate()
        .map(|(k, &ms)| ChangeSample {
            service: format!("bench/svc-{k:05}"),
            old: Ipv4Addr::new(10, 128, 0, 1),
            new: Ipv4Addr::new(10, 192, 0, 0),
            slot: 2,
            table_ms: ms,
            noticed_ms: file.then_some(ms / 2.0),
            call_ms: (!file).then_some(1.5),
            logged_ms: ms + 1.0,
        })
        .collect()
}

/// A programming measurement: gannet-nft `gannet` s, `nft -f` `nft` s (killed: a lower
/// bound), changes through the manifest directory of `table_ms` each, through gannet-control
/// 4 ms each.
fn programming(gannet: f64, nft: PeerLoad, table_ms: &[f64]) -> Programming {
    let file = changes(table_ms, true);
    let control = changes(&vec![4.0; table_ms.len()], false);
    Programming {
        services: GOAL_SERVICES,
        endpoints_per_service: 10,
        manifest_bytes: 11 * 1024 * 1024,
        gannet_nft_seconds: gannet,
        control_sync_seconds: Some(2.5),
        table: TableCounts {
            services: GOAL_SERVICES,
            last_slot_addresses: GOAL_SERVICES,
        },
        kube_proxy_nft: nft,
        change_latency: ChangeLatency::of(&file),
        changes: file,
        control_change_latency: ChangeLatency::of(&control),
        control_changes: control,
    }
}

fn nft_done(seconds: f64) -> PeerLoad {
    PeerLoad::Done {
        seconds,
        user_seconds: 4.5,
        system_seconds: seconds - 5.0,
        input_bytes: 47 * 1024 * 1024,
        services_found: GOAL_SERVICES,
    }
}

#[test]
fn programming_goals_and_section() {
    let mut with = results(false, vec![run(GOAL_SERVICES, 39_000.0)]);
    with.settings.programming = Some(ProgrammingSettings {
        services: GOAL_SERVICES,
        endpoints_per_service: 10,
        changes: 4,
        timeout_seconds: 600.0,
        gannetd_sync_interval_ms: 10,
    });
    with.programming = Some(programming(8.0, nft_done(160.0), &[5.0, 7.5, 12.0, 60.0]));
    let md = render(&with, &[]);
    assert!(
        md.contains("| gannet-nft programs 10 000 services × 10 endpoints ≥ 10× faster than `nft -f` of kube-proxy's rules | 20.0× (gannet-nft 8.00 s, `nft -f` 160.00 s) | **met** |"),
        "{md}"
    );
    // Nearest rank: the p99 of 4 changes is the slowest.
    assert!(
        md.contains("| gannet-nft: one endpoint change p99 < 50 ms, through the manifest directory (slice file renamed → element in the table) | 60.0 ms (4 changes, 10 000 services × 10 endpoints) | **not met** |"),
        "{md}"
    );
    assert!(
        md.contains("| gannet-nft: one endpoint change p99 < 50 ms, through gannet-control (gRPC Apply of the slice → element in the table) | 4.00 ms (4 changes, 10 000 services × 10 endpoints) | **met** |"),
        "{md}"
    );
    assert!(
        md.contains("| **manifest directory: slice renamed → element in the table** | 4 | 5.00 ms | 7.50 ms | 60.0 ms | 60.0 ms | 60.0 ms |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| manifest directory: gannetd reads it → element in the table | 4 | 2.50 ms |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| gannet-control: the Apply call alone | 4 | 1.50 ms |"),
        "{md}"
    );
    assert!(
        md.contains("gannetd started → every service programmed | 2.50 s |"),
        "{md}"
    );
    assert!(md.contains("| `nft -f` ÷ gannet-nft | 20.0× | |"), "{md}");
    assert!(md.contains("every 10 ms"), "{md}");
    // rr 36 500 vs 36 000, crr 6 900 vs 7 000 (single samples: no noise).
    assert!(
        md.contains("| gannet-nft rr ≥ kube-proxy-nft | 1.014× (ahead) | **met** |"),
        "{md}"
    );
    assert!(
        md.contains("| gannet-nft crr ≥ kube-proxy-nft | 0.986× (behind) | **not met** |"),
        "{md}"
    );

    // A killed nft -f gives a lower bound; changes under the goal meet it.
    with.programming = Some(programming(
        8.0,
        PeerLoad::TimedOut {
            timeout_seconds: 600.0,
            input_bytes: 1,
        },
        &[5.0, 7.5],
    ));
    let md = render(&with, &[]);
    assert!(
        md.contains("| > 75.0× (gannet-nft 8.00 s, `nft -f` killed after 600.00 s) | **met** |"),
        "{md}"
    );
    assert!(
        md.contains("| 7.50 ms (2 changes, 10 000 services × 10 endpoints) | **met** |"),
        "{md}"
    );
    let latency = with
        .programming
        .as_ref()
        .and_then(|p| p.change_latency.clone())
        .expect("latency");
    assert!(
        latency.call.is_none() && latency.noticed.is_some(),
        "{latency:?}"
    );
    assert!(md.contains("| > 600.00 s (killed) |"), "{md}");

    // Not run: not measured.
    let md = render(&results(false, vec![run(GOAL_SERVICES, 39_000.0)]), &[]);
    assert!(
        md.contains("| gannet-nft: one endpoint change p99 < 50 ms | – | not measured |"),
        "{md}"
    );
    assert!(!md.contains("## Programming"), "{md}");
}

#[test]
fn numbers_are_readable() {
    assert_eq!(thousands(1_234_567.8), "1,234,568");
    assert_eq!(thousands(999.4), "999");
    assert_eq!(thousands(1000.0), "1,000");
    assert_eq!(format_value(Metric::Stream, 12.345), "12.35");
    assert_eq!(format_services(10_000), "10 000");
    assert_eq!(format_seconds(0.25), "250 ms");
    assert_eq!(format_seconds(3.25), "3.25 s");
}

#[test]
fn table_has_a_row_per_size_and_path_with_ratios() {
    let md = render(
        &results(false, vec![run(1, 39_000.0), run(GOAL_SERVICES, 39_000.0)]),
        &[(Metric::Rr, "rr.png".into())],
    );
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| 1 |") || l.starts_with("| 10 000 |"))
        .collect();
    // 5 result rows per size, plus one load-time row per size.
    assert_eq!(rows.len(), 12, "{md}");
    assert!(
        md.contains("| 10 000 | gannet (b) | 39,000 (±0%) | 0.97× | 9,800 (±0%) | 0.98× | 19.90 (±0%) | 0.99× |"),
        "{md}"
    );
    assert!(
        md.contains("| 1 | direct (a) | 40,000 (±0%) | 1.00× |"),
        "{md}"
    );
    assert!(
        md.contains("last of the N rules in `KUBE-SERVICES`"),
        "{md}"
    );
    assert!(md.contains("![rr: ratio to direct](rr.png)"));
    assert!(md.contains("| 10 000 | 250 ms | 500 ms | 1.50 s (user 250 ms, sys 1.25 s) | 3.25 s (user 3.00 s, sys 200 ms) | 2.0 MiB | 5 KiB | 1 KiB |"), "{md}");
    assert!(
        md.contains("| 10 000 | gannet-nft (e) | 36,500 (±0%) | 0.91× |"),
        "{md}"
    );
    assert!(
        md.contains("The root network namespace was compared before and after the run (0 links"),
        "{md}"
    );
    assert!(md.contains("- something odd"));
    // Goals at 10 000: rr 0.975 ≥ 0.97, crr 0.98 ≥ 0.95, ahead of both kube-proxies.
    assert!(
        md.contains("| gannet rr ≥ 0.97× direct | 0.975× | **met** |"),
        "{md}"
    );
    assert!(
        md.contains("| gannet crr ≥ 0.95× direct | 0.980× | **met** |"),
        "{md}"
    );
    assert!(
        md.contains("| gannet ahead of kube-proxy-iptables (rr, crr, stream) | rr 1.30× ahead, crr 1.96× ahead, stream 1.17× ahead | **met** |"),
        "{md}"
    );
    assert!(!md.contains("did not measure"));
}

#[test]
fn differences_smaller_than_the_spread_are_noise() {
    let ours = MetricResult::from_samples(Metric::Rr, vec![100.0, 110.0, 90.0]).expect("ours");
    let close = MetricResult::from_samples(Metric::Rr, vec![96.0]).expect("close");
    let far = MetricResult::from_samples(Metric::Rr, vec![80.0]).expect("far");
    let above = MetricResult::from_samples(Metric::Rr, vec![120.0]).expect("above");
    assert_eq!(compare(&ours, &close), ("within noise", Outcome::Tie));
    assert_eq!(compare(&ours, &far), ("ahead", Outcome::Ahead));
    assert_eq!(compare(&ours, &above), ("behind", Outcome::Behind));

    // A tie on stream still meets the goal; a tie on rr does not.
    let mut tied = run(GOAL_SERVICES, 39_000.0);
    tied.results
        .get_mut(&Variant::Gannet)
        .expect("gannet")
        .insert(
            Metric::Stream,
            MetricResult::from_samples(Metric::Stream, vec![17.5, 18.0, 21.0]).expect("stream"),
        );
    tied.compute_ratios();
    let md = render(&results(false, vec![tied.clone()]), &[]);
    assert!(
        md.contains("| gannet ahead of kube-proxy-nft (rr, crr, stream) | rr 1.08× ahead, crr 1.40× ahead, stream 1.00× within noise | **met** |"),
        "{md}"
    );
    tied.results
        .get_mut(&Variant::Gannet)
        .expect("gannet")
        .insert(
            Metric::Rr,
            MetricResult::from_samples(Metric::Rr, vec![35_000.0, 37_000.0, 40_000.0]).expect("rr"),
        );
    tied.compute_ratios();
    let md = render(&results(false, vec![tied]), &[]);
    assert!(
        md.contains("| gannet ahead of kube-proxy-nft (rr, crr, stream) | rr 1.03× within noise, crr 1.40× ahead, stream 1.00× within noise | within noise |"),
        "{md}"
    );
}

#[test]
fn goals_fall_back_to_the_largest_size_and_report_misses() {
    let md = render(
        &results(true, vec![run(1, 39_000.0), run(1000, 30_000.0)]),
        &[],
    );
    assert!(
        md.contains("which this run did not measure (`--quick`)"),
        "{md}"
    );
    assert!(md.contains("| goal | at 1 000 services | |"), "{md}");
    assert!(
        md.contains("| gannet rr ≥ 0.97× direct | 0.750× | **not met** |"),
        "{md}"
    );
    assert!(
        md.contains("| gannet ahead of kube-proxy-nft (rr, crr, stream) | rr 0.83× behind"),
        "{md}"
    );
}
