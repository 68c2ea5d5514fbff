//! `results.md`: the results as markdown tables, with the goals next to the numbers.

use std::fmt::Write as _;

use crate::cni::results::LatencyStats;
use crate::peer::Metric;
use crate::results::{LoadTime, MetricResult, Programming, Results, RunResult, Variant};

/// The size the goals are stated for.
pub const GOAL_SERVICES: usize = 10_000;
/// gannet's rr goal, as a ratio to direct.
pub const GOAL_RR: f64 = 0.97;
/// gannet's crr goal, as a ratio to direct.
pub const GOAL_CRR: f64 = 0.95;
/// gannet-nft's goal for programming the services, as a speed-up over `nft -f` of kube-proxy's
/// rules.
pub const GOAL_PROGRAMMING_SPEEDUP: f64 = 10.0;
/// gannet-nft's goal for one endpoint change's p99, in milliseconds.
pub const GOAL_CHANGE_P99_MS: f64 = 50.0;

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
    for metric in [Metric::Rr, Metric::Crr] {
        let (measured, met) = match (
            run.get(Variant::GannetNft, metric),
            run.get(Variant::KubeProxyNft, metric),
        ) {
            (Some(ours), Some(theirs)) => {
                let ratio = ours.median / theirs.median;
                (
                    format!("{ratio:.3}× ({})", compare(ours, theirs).0),
                    Some(ratio >= 1.0),
                )
            }
            _ => ("–".to_owned(), None),
        };
        let _ = writeln!(
            out,
            "| gannet-nft {metric} ≥ kube-proxy-nft | {measured} | {} |",
            verdict(met)
        );
    }
    programming_goals(out, results.programming.as_ref());
    out.push_str(
        "\nMet (gannet ahead of kube-proxy): ahead on rr and crr, and not behind on stream (bulk \
         throughput is bound by copying the bytes, the same work on every path). \"Within \
         noise\": the difference is smaller than the half range of either side's samples; the \
         gannet-nft rows compare the medians alone.\n",
    );
    out.push('\n');
}

/// The goal rows of the programming measurement (as rows of the goals table).
fn programming_goals(out: &mut String, programming: Option<&Programming>) {
    let Some(p) = programming else {
        let _ = writeln!(
            out,
            "| gannet-nft programs {0} services × 10 endpoints ≥ {GOAL_PROGRAMMING_SPEEDUP:.0}× \
             faster than `nft -f` of kube-proxy's rules | – | not measured |\n\
             | gannet-nft: one endpoint change p99 < {GOAL_CHANGE_P99_MS:.0} ms | – | not \
             measured |",
            format_services(GOAL_SERVICES)
        );
        return;
    };
    let size = format!(
        "{} services × {} endpoints",
        format_services(p.services),
        p.endpoints_per_service
    );
    let (measured, met) = match p.speedup() {
        Some((speedup, lower_bound)) => (
            format!(
                "{}{speedup:.1}× (gannet-nft {}, `nft -f` {}{})",
                if lower_bound { "> " } else { "" },
                format_seconds(p.gannet_nft_seconds),
                if lower_bound { "killed after " } else { "" },
                format_seconds(p.kube_proxy_nft.seconds().map_or(0.0, |(s, _)| s)),
            ),
            Some(speedup >= GOAL_PROGRAMMING_SPEEDUP),
        ),
        None => ("–".to_owned(), None),
    };
    let _ = writeln!(
        out,
        "| gannet-nft programs {size} ≥ {GOAL_PROGRAMMING_SPEEDUP:.0}× faster than `nft -f` of \
         kube-proxy's rules | {measured} | {} |",
        verdict(met)
    );
    for (source, latency, made) in [
        (
            "through gannet-control",
            &p.control_change_latency,
            "gRPC Apply of the slice",
        ),
        (
            "through the manifest directory",
            &p.change_latency,
            "slice file renamed",
        ),
    ] {
        let (measured, met) = match latency {
            Some(latency) => (
                format!(
                    "{} ({} changes, {size})",
                    format_ms(latency.table.p99_ms),
                    latency.table.count
                ),
                Some(latency.table.p99_ms < GOAL_CHANGE_P99_MS),
            ),
            None => ("–".to_owned(), None),
        };
        let _ = writeln!(
            out,
            "| gannet-nft: one endpoint change p99 < {GOAL_CHANGE_P99_MS:.0} ms, {source} ({made} \
             → element in the table) | {measured} | {} |",
            verdict(met)
        );
    }
}

fn format_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn latency_row(out: &mut String, what: &str, stats: Option<&LatencyStats>) {
    match stats {
        Some(s) => {
            let _ = writeln!(
                out,
                "| {what} | {} | {} | {} | {} | {} | {} |",
                s.count,
                format_ms(s.min_ms),
                format_ms(s.p50_ms),
                format_ms(s.p90_ms),
                format_ms(s.p99_ms),
                format_ms(s.max_ms)
            );
        }
        None => {
            let _ = writeln!(out, "| {what} | – | – | – | – | – | – |");
        }
    }
}

/// The section of the programming measurement.
fn programming_section(out: &mut String, p: &Programming, sync_interval_ms: u64) {
    let _ = writeln!(
        out,
        "## Programming {} services × {} endpoints, and endpoint changes (gannet-nft)\n\n\
         | | time | |\n|---|---:|---|",
        format_services(p.services),
        p.endpoints_per_service
    );
    let _ = writeln!(
        out,
        "| gannet-nft: manifests written → gannetd logged every service programmed | {} | its \
         table then held {} frontends, {} of them with a backend in the last slot; manifests {} |",
        format_seconds(p.gannet_nft_seconds),
        thousands(p.table.services as f64),
        thousands(p.table.last_slot_addresses as f64),
        format_bytes(p.manifest_bytes)
    );
    if let Some(seconds) = p.control_sync_seconds {
        let _ = writeln!(
            out,
            "| gannet-nft watching gannet-control (which held the services): gannetd started → \
             every service programmed | {} | |",
            format_seconds(seconds)
        );
    }
    let nft = match &p.kube_proxy_nft {
        crate::control::report::PeerLoad::Done {
            seconds,
            user_seconds,
            system_seconds,
            input_bytes,
            ..
        } => format!(
            "| `nft -f` of kube-proxy's rules | {} | user {}, sys {}; rules {} |",
            format_seconds(*seconds),
            format_seconds(*user_seconds),
            format_seconds(*system_seconds),
            format_bytes(*input_bytes)
        ),
        crate::control::report::PeerLoad::TimedOut {
            timeout_seconds,
            input_bytes,
        } => format!(
            "| `nft -f` of kube-proxy's rules | > {} (killed) | rules {} |",
            format_seconds(*timeout_seconds),
            format_bytes(*input_bytes)
        ),
        crate::control::report::PeerLoad::Skipped => {
            "| `nft -f` of kube-proxy's rules | – | not run |".to_owned()
        }
    };
    let _ = writeln!(out, "{nft}");
    if let Some((speedup, lower_bound)) = p.speedup() {
        let _ = writeln!(
            out,
            "| `nft -f` ÷ gannet-nft | {}{speedup:.1}× | |",
            if lower_bound { "> " } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "\nBoth into an empty node namespace of their own. gannet-nft: from writing the manifest \
         files (every Service, and every EndpointSlice) until gannetd's `services synced` line \
         (it scans the directory every {sync_interval_ms} ms); its table was then read back. \
         `nft -f`: the same services as kube-proxy's nftables mode programs them, wall-clock \
         time and CPU time.\n"
    );
    if p.change_latency.is_none() && p.control_change_latency.is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "Endpoint changes, one at a time: one endpoint address of one service's EndpointSlice \
         replaced by a fresh address, timed until `nft monitor` in the node namespace reported \
         the new element of the slot's address map (the kernel committed it). Through the \
         manifest directory: the slice's own file renamed into the directory, at a random moment \
         of gannetd's {sync_interval_ms} ms scan cycle; gannetd reads that file, joins again only \
         the Service it touches and programs the frontends that changed. Through \
         gannet-control: the changed slice applied with the gRPC Apply (as `gannetctl apply` \
         does) to a gannet-control holding the same services, watched by a fresh gannetd \
         (`--control`), which gets the change of one service.\n\n\
         | latency | changes | min | p50 | p90 | p99 | max |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    if let Some(latency) = &p.control_change_latency {
        latency_row(
            out,
            "**gannet-control: Apply called → element in the table**",
            Some(&latency.table),
        );
        latency_row(
            out,
            "gannet-control: the Apply call alone",
            latency.call.as_ref(),
        );
        latency_row(
            out,
            "gannet-control: Apply called → `services synced` logged",
            Some(&latency.logged),
        );
    }
    if let Some(latency) = &p.change_latency {
        latency_row(
            out,
            "**manifest directory: slice renamed → element in the table**",
            Some(&latency.table),
        );
        latency_row(
            out,
            "manifest directory: slice renamed → gannetd reads it (its scan interval)",
            latency.noticed.as_ref(),
        );
        latency_row(
            out,
            "manifest directory: gannetd reads it → element in the table",
            latency.after_noticed.as_ref(),
        );
        latency_row(
            out,
            "manifest directory: slice renamed → `services synced` logged",
            Some(&latency.logged),
        );
    }
    out.push_str("\nPercentiles are nearest-rank: always a measured value.\n\n");
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
         - **gannet-nft** (e): gannetd with its nftables data plane (`--dataplane nftables`) in \
         the node namespace, given the same YAML; the client connects to the cluster IP and its \
         packets are translated in the node's netfilter hooks by gannet's table \
         `inet gannet-services`;\n\
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
         | services | gannetd sync | gannetd nftables sync | `nft -f` | `iptables-restore` | manifest | nft rules | iptables rules |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in &results.runs {
        let l = &run.load;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            format_services(run.services),
            format_seconds(l.gannetd_sync_seconds),
            format_seconds(l.gannetd_nft_sync_seconds),
            format_load(&l.nft),
            format_load(&l.iptables_restore),
            format_bytes(l.manifest_bytes),
            format_bytes(l.nft_rules_bytes),
            format_bytes(l.iptables_rules_bytes),
        );
    }
    let _ = writeln!(
        out,
        "\ngannetd sync (eBPF maps) and gannetd nftables sync (gannet-nft's table): from writing \
         the manifest file until gannetd logged that every service was \
         programmed (it scans the directory every {} ms and parses the YAML). `nft -f` and \
         `iptables-restore --noflush`: loading kube-proxy's rules into an empty node namespace, \
         wall-clock time and the command's CPU time in user space and in the kernel.\n",
        s.gannetd_sync_interval_ms
    );

    if let Some(p) = &results.programming {
        let interval = s
            .programming
            .as_ref()
            .map_or(0, |p| p.gannetd_sync_interval_ms);
        programming_section(&mut out, p, interval);
    }

    warnings_section(&mut out, &results.warnings);

    let root = &results.root_namespace;
    let _ = writeln!(
        out,
        "## Root network namespace\n\nCompared before and after the run ({} links, {} lines of \
         `nft list ruleset`, {} sysctls): {}.\n",
        root.links.len(),
        root.nft_ruleset_lines,
        root.sysctls_compared,
        if root.differences.is_empty() {
            "unchanged".to_owned()
        } else {
            format!("**changed**: {}", root.differences.join("; "))
        }
    );

    let _ = writeln!(
        out,
        "## How it was measured\n\n\
         - Topology: routed, as a CNI does it: per pod a network namespace with `eth0` holding a \
         10.244.0.x/32, a default route via 169.254.1.1 (a permanent neighbour entry for the host \
         veth's MAC); in the node namespace a /32 route per pod through its host veth and \
         `ip_forward=1`. Every path goes pod → node → pod, so kube-proxy's DNAT and the replies pass \
         the node's netfilter hooks and conntrack (so do gannet-nft's: its gannetd runs in that \
         path's node namespace and programs its table there; nothing else untracks pod-to-pod \
         traffic there). Each path has its own node namespace with its own \
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
         - Order: for every N, {} round(s); in each round the five paths run back to back in a \
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

    use std::net::Ipv4Addr;

    use super::*;
    use crate::cni::results::RootCheck;
    use crate::control::report::PeerLoad;
    use crate::machine::Machine;
    use crate::results::{
        ChangeLatency, ChangeSample, LoadTimes, MetricResult, ProgrammingSettings, Settings,
        TableCounts,
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
            md.contains(
                "| > 75.0× (gannet-nft 8.00 s, `nft -f` killed after 600.00 s) | **met** |"
            ),
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
            md.contains("Compared before and after the run (0 links"),
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
