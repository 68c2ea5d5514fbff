//! The ClusterIP scenario's `results.md`: settings, machine, the goals table and the tables per
//! metric and variant.

use std::fmt::Write as _;

use crate::peer::Metric;
use crate::results::{Results, Variant};

use super::programming::{programming_goals, programming_section};
use super::{GOAL_CRR, GOAL_RR, GOAL_SERVICES, Outcome, compare, format_services, ratio};
use super::{cell, format_bytes, format_load, format_seconds, warnings_section};
use crate::scenario::goal::verdict;

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

    let _ = writeln!(
        out,
        "## Root network namespace\n\nThe root network namespace was {}.\n",
        results.root_namespace.summary()
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
