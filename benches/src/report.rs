//! `results.md`: the results as markdown tables, with the goals next to the numbers.

use std::fmt::Write as _;

use crate::peer::Metric;
use crate::results::{LoadTime, MetricResult, Results, RunResult, Variant};

/// The size the goals are stated for.
pub const GOAL_SERVICES: usize = 10_000;
/// gannet's rr goal, as a ratio to direct.
pub const GOAL_RR: f64 = 0.97;
/// gannet's crr goal, as a ratio to direct.
pub const GOAL_CRR: f64 = 0.95;

/// `1234567.8` → `1,234,568`.
#[must_use]
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < -0.5 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A value of `metric` in its unit, as the tables show it.
#[must_use]
pub fn format_value(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Rr | Metric::Crr => thousands(value),
        Metric::Stream => format!("{value:.2}"),
    }
}

fn format_services(n: usize) -> String {
    thousands(n as f64).replace(',', " ")
}

fn format_seconds(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.2} s")
    }
}

fn format_load(load: &LoadTime) -> String {
    format!(
        "{} (user {}, sys {})",
        format_seconds(load.seconds),
        format_seconds(load.user_seconds),
        format_seconds(load.system_seconds)
    )
}

fn format_bytes(bytes: usize) -> String {
    let bytes = bytes as f64;
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else {
        format!("{:.0} KiB", (bytes / 1024.0).max(1.0))
    }
}

/// A result as two table cells: the median with its half range (`40,000 (±2%)`) and its ratio to
/// the reference (`0.97×`); dashes for what was not measured.
#[must_use]
pub fn result_cells(metric: Metric, result: Option<&MetricResult>) -> (String, String) {
    match result {
        Some(result) => (
            format!(
                "{} (±{:.0}%)",
                format_value(metric, result.median),
                result.spread * 50.0
            ),
            result
                .ratio_to_direct
                .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×")),
        ),
        None => ("–".to_owned(), "–".to_owned()),
    }
}

fn cell(run: &RunResult, variant: Variant, metric: Metric) -> (String, String) {
    result_cells(metric, run.get(variant, metric))
}

fn ratio(run: &RunResult, variant: Variant, metric: Metric) -> Option<f64> {
    run.get(variant, metric)?.ratio_to_direct
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ahead,
    Behind,
    Tie,
}

/// Whether `ours` is ahead of `theirs` by more than the noise of either.
fn compare(ours: &MetricResult, theirs: &MetricResult) -> (&'static str, Outcome) {
    let noise = ours.spread.max(theirs.spread) / 2.0;
    let ratio = ours.median / theirs.median;
    if ratio > 1.0 + noise {
        ("ahead", Outcome::Ahead)
    } else if ratio < 1.0 - noise {
        ("behind", Outcome::Behind)
    } else {
        ("within noise", Outcome::Tie)
    }
}

/// The section listing `goals` with their verdicts (as the `overlay` and `nodeport` reports
/// have it).
pub fn goals_section(out: &mut String, goals: &[crate::control::report::Goal]) {
    let _ = writeln!(
        out,
        "## Goals (shown, not asserted)\n\n| goal | measured | |\n|---|---|---|"
    );
    for g in goals {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            g.goal,
            g.measured.replace('|', "\\|"),
            verdict(g.met)
        );
    }
    out.push('\n');
}

/// The section listing the run's warnings, if it had any.
pub fn warnings_section(out: &mut String, warnings: &[String]) {
    if !warnings.is_empty() {
        out.push_str("## Warnings\n\n");
        for warning in warnings {
            let _ = writeln!(out, "- {warning}");
        }
        out.push('\n');
    }
}

/// A goal's verdict in the tables: met, not met, or not measured (`None`).
#[must_use]
pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn goals(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Goals (shown, not asserted)\n");
    let Some(run) = results
        .runs
        .iter()
        .find(|r| r.services == GOAL_SERVICES)
        .or_else(|| results.runs.iter().max_by_key(|r| r.services))
    else {
        out.push_str("Nothing was measured.\n\n");
        return;
    };
    let n = format_services(run.services);
    if run.services != GOAL_SERVICES {
        let _ = writeln!(
            out,
            "The goals are stated for {} services, which this run did not measure{}; they are \
             evaluated at the largest size it did measure, {n} services.\n",
            format_services(GOAL_SERVICES),
            if results.settings.quick {
                " (`--quick`)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(out, "| goal | at {n} services | |\n|---|---|---|");
    for (metric, goal) in [(Metric::Rr, GOAL_RR), (Metric::Crr, GOAL_CRR)] {
        let measured = ratio(run, Variant::Gannet, metric);
        let _ = writeln!(
            out,
            "| gannet {metric} ≥ {goal:.2}× direct | {} | {} |",
            measured.map_or_else(|| "–".to_owned(), |r| format!("{r:.3}×")),
            verdict(measured.map(|r| r >= goal))
        );
    }
    for rival in [Variant::KubeProxyNft, Variant::KubeProxyIptables] {
        let mut parts = Vec::new();
        let mut outcomes = Vec::new();
        for metric in Metric::ALL {
            if let (Some(ours), Some(theirs)) =
                (run.get(Variant::Gannet, metric), run.get(rival, metric))
            {
                let (word, outcome) = compare(ours, theirs);
                parts.push(format!(
                    "{metric} {:.2}× {word}",
                    ours.median / theirs.median
                ));
                outcomes.push((metric, outcome));
            }
        }
        let verdict = if outcomes.len() < Metric::ALL.len() {
            "not measured"
        } else if outcomes.iter().any(|(_, o)| *o == Outcome::Behind) {
            "**not met**"
        } else if outcomes
            .iter()
            .all(|(m, o)| *m == Metric::Stream || *o == Outcome::Ahead)
        {
            "**met**"
        } else {
            "within noise"
        };
        let _ = writeln!(
            out,
            "| gannet ahead of {rival} (rr, crr, stream) | {} | {verdict} |",
            parts.join(", ")
        );
    }
    out.push_str(
        "\nMet: ahead on rr and crr, and not behind on stream (bulk throughput is bound by \
         copying the bytes, the same work on every path). \"Within noise\": the difference is \
         smaller than the half range of either side's samples.\n",
    );
    out.push('\n');
}

/// The whole `results.md`; `charts` are the chart files (relative paths) per metric.
#[must_use]
pub fn render(results: &Results, charts: &[(Metric, String)]) -> String {
    let s = &results.settings;
    let m = &results.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# gannet-bench: ClusterIP load balancing\n\n\
         Run of {} ({}), {:.0} s, {} round(s) of {} s per measurement, medians; \
         kernel {}, {} CPUs, iptables backend `{}`.\n",
        results.started_at,
        if s.quick { "`--quick`" } else { "full" },
        results.wall_seconds,
        s.rounds,
        s.seconds,
        m.kernel,
        m.nproc,
        m.iptables_backend,
    );
    out.push_str(
        "A client pod connects to a backend pod of the measured service (3 endpoints) while N \
         services are programmed:\n\n\
         - **direct** (a): the client connects to the backend pod's address: the limit;\n\
         - **gannet** (b): the client runs in the cgroup gannetd's socket load balancer is attached \
         to and connects to the cluster IP; gannetd got the services from Kubernetes YAML;\n\
         - **kube-proxy-nft** (c): kube-proxy's nftables rules for the N services in the node \
         namespace, the client connects to the cluster IP;\n\
         - **kube-proxy-iptables** (d): kube-proxy's iptables rules for the N services in the node \
         namespace. **The measured service is the last of the N rules in `KUBE-SERVICES`**, the \
         worst case for its linear chain.\n\n\
         Values are medians, (±x%) is half the range of the samples; × is the ratio to direct at \
         the same N in the same run (higher is better).\n\n",
    );

    let _ = writeln!(
        out,
        "## Results\n\n\
         | services | path | rr (transactions/s) | × direct | crr (connections/s) | × direct | stream (Gbit/s) | × direct |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for run in &results.runs {
        for variant in Variant::ALL {
            let _ = write!(
                out,
                "| {} | {} ({}) |",
                format_services(run.services),
                variant,
                variant.letter()
            );
            for metric in Metric::ALL {
                let (value, ratio) = cell(run, variant, metric);
                let _ = write!(out, " {value} | {ratio} |");
            }
            out.push('\n');
        }
    }
    out.push('\n');
    for (metric, file) in charts {
        let _ = writeln!(out, "![{metric}: ratio to direct]({file})");
    }
    if !charts.is_empty() {
        out.push('\n');
    }

    goals(&mut out, results);

    let _ = writeln!(
        out,
        "## Time to program the services\n\n\
         | services | gannetd sync | `nft -f` | `iptables-restore` | manifest | nft rules | iptables rules |\n\
         |---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in &results.runs {
        let l = &run.load;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            format_services(run.services),
            format_seconds(l.gannetd_sync_seconds),
            format_load(&l.nft),
            format_load(&l.iptables_restore),
            format_bytes(l.manifest_bytes),
            format_bytes(l.nft_rules_bytes),
            format_bytes(l.iptables_rules_bytes),
        );
    }
    let _ = writeln!(
        out,
        "\ngannetd sync: from writing the manifest file until gannetd logged that every service was \
         programmed (it scans the directory every {} ms and parses the YAML). `nft -f` and \
         `iptables-restore --noflush`: loading kube-proxy's rules into an empty node namespace, \
         wall-clock time and the command's CPU time in user space and in the kernel.\n",
        s.gannetd_sync_interval_ms
    );

    warnings_section(&mut out, &results.warnings);

    let _ = writeln!(
        out,
        "## How it was measured\n\n\
         - Topology: routed, as a CNI does it: per pod a network namespace with `eth0` holding a \
         10.244.0.x/32, a default route via 169.254.1.1 (a permanent neighbour entry for the host \
         veth's MAC); in the node namespace a /32 route per pod through its host veth and \
         `ip_forward=1`. Every path goes pod → node → pod, so kube-proxy's DNAT and the replies pass \
         the node's netfilter hooks and conntrack. Each path has its own node namespace with its own \
         pods (client 10.244.0.10, backends .11–.13), built the same way; rules are loaded only \
         into their own node, and gannetd's programs act only on the gannet client's cgroup.\n\
         - Services: {} endpoints each; only the measured service's endpoints exist, the other N−1 \
         services point at addresses of pods that do not exist. The same list is written as \
         Service and EndpointSlice YAML for gannetd and turned into kube-proxy's rules (same \
         chains, hashes, maps, marks and conntrack checks as kube-proxy's own code generates).\n\
         - Traffic: `gannet-bench-peer`, one thread on each side, {}; rr = 1-byte \
         request/response on one connection, crr = connect, 1-byte request, response, close (the server sends FIN, the client RST, \
         so no `TIME_WAIT` sockets pile up and slow later connections), \
         stream = bulk send on one connection, until the server acknowledges every byte. \
         {} s per measurement after {} s of uncounted warm-up (rr, crr).\n\
         - Order: for every N, {} round(s); in each round the four paths run back to back in a \
         random order (seed {}), each measuring rr, crr and stream.\n\
         - Machine: {}; {} CPUs ({}); {}; {}; {} (`iptables-restore` is {}); cgroup v2 at {}; \
         gannet {}.\n",
        s.endpoints_per_service,
        s.peer_cpu.map_or_else(
            || "placed by the scheduler".to_owned(),
            |cpu| format!(
                "client and servers all pinned to CPU {cpu} (a measurement is then the CPU cost \
                 of the path, not a matter of where the scheduler puts the peers)"
            )
        ),
        s.seconds,
        s.warmup_seconds,
        s.rounds,
        s.seed,
        m.kernel,
        m.nproc,
        m.cpu_model,
        m.memory,
        m.nft_version,
        m.iptables_version,
        m.iptables_restore,
        m.cgroup2,
        m.gannet_commit,
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::machine::Machine;
    use crate::results::{LoadTimes, MetricResult, Settings};

    fn run(services: usize, gannet_rr: f64) -> RunResult {
        let mut run = RunResult {
            services,
            load: LoadTimes {
                gannetd_sync_seconds: 0.25,
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
            },
            machine: Machine {
                kernel: "6.1.0".into(),
                nproc: 2,
                iptables_backend: "nf_tables".into(),
                ..Machine::default()
            },
            runs,
            warnings: vec!["something odd".into()],
        }
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
        // 4 result rows per size, plus one load-time row per size.
        assert_eq!(rows.len(), 10, "{md}");
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
        assert!(md.contains("| 10 000 | 250 ms | 1.50 s (user 250 ms, sys 1.25 s) | 3.25 s (user 3.00 s, sys 200 ms) | 2.0 MiB | 5 KiB | 1 KiB |"), "{md}");
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
                MetricResult::from_samples(Metric::Rr, vec![35_000.0, 37_000.0, 40_000.0])
                    .expect("rr"),
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
}
