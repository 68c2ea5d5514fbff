//! The `overlay` scenario's `results.json`, goals, `results.md` and charts.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{Measured, Settings, Target, Variant, VariantResult};
use crate::chart::{GoalLine, GroupedRatios, Series, write_metric_charts};
use crate::machine::Machine;
use crate::peer::Metric;
use crate::report::{format_value, result_cells, warnings_section};
use crate::scenario::Finished;
use crate::scenario::goal::{Goal, goals_section};
use crate::scenario::rootns::RootCheck;

/// ebpf's rr and crr goal, as a ratio to flannel.
pub const GOAL_EBPF_OVER_FLANNEL: f64 = 1.1;
/// ebpf's stream goal, as a ratio to flannel.
pub const GOAL_EBPF_STREAM_OVER_FLANNEL: f64 = 1.0;
/// ebpf's stream goal, as a ratio to the underlay.
pub const GOAL_EBPF_STREAM_OF_UNDERLAY: f64 = 0.85;
/// host-gw's goal on every metric, as a ratio to the underlay.
pub const GOAL_HOST_GW_OF_UNDERLAY: f64 = 0.95;

/// The whole `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    /// `overlay`.
    pub scenario: &'static str,
    pub started_at: String,
    pub wall_seconds: f64,
    pub settings: Settings,
    pub machine: Machine,
    /// Every variant's setup and results (ratios to the underlay).
    pub variants: Vec<VariantResult>,
    /// The order the variants were measured in, per round.
    pub order: Vec<Vec<Variant>>,
    pub goals: Vec<Goal>,
    /// The root network namespace before and after the run.
    pub root_namespace: RootCheck,
    pub warnings: Vec<String>,
}

impl Results {
    /// Assembles the results; the goals are evaluated here.
    #[must_use]
    pub fn new(settings: Settings, run: Finished, measured: Measured) -> Results {
        let goals = goals(&measured.variants);
        Results {
            scenario: "overlay",
            started_at: run.started_at,
            wall_seconds: run.wall_seconds,
            settings,
            machine: run.machine,
            variants: measured.variants,
            order: measured.order,
            goals,
            root_namespace: run.root_namespace,
            warnings: run.warnings,
        }
    }

    fn variant(&self, variant: Variant) -> Option<&VariantResult> {
        self.variants.iter().find(|v| v.variant == variant)
    }
}

fn find(variants: &[VariantResult], variant: Variant) -> Option<&VariantResult> {
    variants.iter().find(|v| v.variant == variant)
}

/// One goal: `ours` on `target` and `metric` at least `min` × `reference` (`None`: the underlay
/// ratio).
fn goal(
    variants: &[VariantResult],
    ours: Variant,
    reference: Variant,
    target: Target,
    metric: Metric,
    min: f64,
) -> Goal {
    let name = format!("{ours} {metric} ≥ {min:.2}× {reference}, {target}");
    let mine = find(variants, ours);
    if mine.is_some_and(|v| v.skipped.is_some()) {
        return Goal {
            goal: name,
            measured: format!("{ours} skipped (see the results)"),
            met: None,
        };
    }
    let ours_result = mine.and_then(|v| v.get(target, metric));
    let (ratio, against) = if reference == Variant::Underlay {
        (ours_result.and_then(|r| r.ratio_to_direct), None)
    } else {
        let theirs = find(variants, reference).and_then(|v| v.get(target, metric));
        (
            ours_result
                .zip(theirs)
                .filter(|(_, t)| t.median > 0.0)
                .map(|(o, t)| o.median / t.median),
            theirs,
        )
    };
    let measured = match (ratio, ours_result) {
        (Some(ratio), Some(o)) => {
            let detail = against.map_or_else(
                || "of the underlay".to_owned(),
                |t| {
                    format!(
                        "({} vs {} {})",
                        format_value(metric, o.median),
                        format_value(metric, t.median),
                        metric.unit()
                    )
                },
            );
            format!("{ratio:.2}× {detail}")
        }
        _ => "not measured".to_owned(),
    };
    Goal {
        goal: name,
        measured,
        met: ratio.map(|r| r >= min),
    }
}

/// The goals, on both paths: ebpf ≥ 1.1× flannel on rr and crr, ≥ 1.0× on stream, ≥ 0.85× the
/// underlay on stream; host-gw ≥ 0.95× the underlay on every metric.
#[must_use]
pub fn goals(variants: &[VariantResult]) -> Vec<Goal> {
    let mut out = Vec::new();
    for target in Target::ALL {
        for (metric, min) in [
            (Metric::Rr, GOAL_EBPF_OVER_FLANNEL),
            (Metric::Crr, GOAL_EBPF_OVER_FLANNEL),
            (Metric::Stream, GOAL_EBPF_STREAM_OVER_FLANNEL),
        ] {
            out.push(goal(
                variants,
                Variant::Ebpf,
                Variant::Flannel,
                target,
                metric,
                min,
            ));
        }
        out.push(goal(
            variants,
            Variant::Ebpf,
            Variant::Underlay,
            target,
            Metric::Stream,
            GOAL_EBPF_STREAM_OF_UNDERLAY,
        ));
        for metric in Metric::ALL {
            out.push(goal(
                variants,
                Variant::HostGw,
                Variant::Underlay,
                target,
                metric,
                GOAL_HOST_GW_OF_UNDERLAY,
            ));
        }
    }
    out
}

fn describe(variant: Variant) -> &'static str {
    match variant {
        Variant::Underlay => {
            "client in node A's namespace, server in node B's, over the underlay bridge: the limit"
        }
        Variant::Routed => {
            "a pod per node wired as gannet-cni wires them (veth pair, /32 route, static \
             neighbours) and a route to the other node's pod CIDR via its address, and nothing \
             else (no netfilter rules, no eBPF): what a veth per pod and forwarding in both nodes \
             cost on this topology, the floor of every pod network here (a reference, no goal)"
        }
        Variant::Flannel => {
            "`flannel.1` (kernel VXLAN, VNI 1, port 8472, `nolearning`, MTU 1450) per node with the \
             other node's forwarding entry, neighbour and onlink route, flanneld's masquerade \
             rules (nftables), pods on `cni0` by the reference `bridge` + `host-local` plugins; \
             the service as kube-proxy's nftables rules in node A"
        }
        Variant::Vxlan => {
            "gannetd `--overlay vxlan` (kernel VXLAN device `gannet.vxlan`, Flannel's wire format), \
             pods by gannet-cni, the service by gannetd's socket load balancer"
        }
        Variant::HostGw => {
            "gannetd `--overlay host-gw` (a route per node via its underlay address), pods by \
             gannet-cni, the service by gannetd's socket load balancer"
        }
        Variant::Ebpf => {
            "gannetd `--overlay ebpf` (VXLAN in external mode driven by tc programs), pods by \
             gannet-cni, the service by gannetd's socket load balancer"
        }
    }
}

/// The chart of `metric`: groups = the two paths, bars = the variants other than the underlay,
/// as a ratio to the underlay.
#[must_use]
pub fn chart(results: &Results, metric: Metric) -> GroupedRatios {
    let underlay = results
        .variant(Variant::Underlay)
        .and_then(|v| v.get(Target::Pod, metric))
        .map(|r| {
            format!(
                " (underlay {} {})",
                format_value(metric, r.median),
                metric.unit()
            )
        })
        .unwrap_or_default();
    let groups = Target::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == 0 {
                format!("{t}{underlay}")
            } else {
                t.label().to_owned()
            }
        })
        .collect();
    let series = results
        .variants
        .iter()
        .filter(|v| v.variant != Variant::Underlay && v.skipped.is_none())
        .map(|v| Series {
            label: v.variant.name().to_owned(),
            color: color(v.variant),
            ratios: Target::ALL
                .iter()
                .map(|t| v.get(*t, metric).and_then(|r| r.ratio_to_direct))
                .collect(),
        })
        .collect();
    let skipped: Vec<Variant> = results
        .variants
        .iter()
        .filter(|v| v.skipped.is_some())
        .map(|v| v.variant)
        .collect();
    let mut goals = vec![GoalLine {
        value: GOAL_HOST_GW_OF_UNDERLAY,
        label: format!("host-gw goal {GOAL_HOST_GW_OF_UNDERLAY:.2}×"),
        color: color(Variant::HostGw),
    }];
    if metric == Metric::Stream {
        goals.push(GoalLine {
            value: GOAL_EBPF_STREAM_OF_UNDERLAY,
            label: format!("ebpf goal {GOAL_EBPF_STREAM_OF_UNDERLAY:.2}×"),
            color: color(Variant::Ebpf),
        });
    }
    GroupedRatios {
        title: format!("{metric}: {} — ratio to the underlay", metric.describe()),
        groups,
        x_desc: format!(
            "path between the two nodes{}",
            skipped
                .iter()
                .map(|v| format!("; {v}: skipped"))
                .collect::<String>()
        ),
        y_desc: "ratio to the underlay (higher is better)".to_owned(),
        series,
        goals,
    }
}

fn color(variant: Variant) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match variant {
        Variant::Underlay => RGBColor(120, 120, 120),
        Variant::Routed => RGBColor(190, 190, 190),
        Variant::Flannel => RGBColor(230, 159, 0),
        Variant::Vxlan => RGBColor(86, 180, 233),
        Variant::HostGw => RGBColor(0, 158, 115),
        Variant::Ebpf => RGBColor(0, 114, 178),
    }
}

/// Draws `rr.png`, `crr.png` and `stream.png` into `out`; returns the file names per metric.
///
/// # Errors
/// If a chart cannot be drawn or written.
pub fn write_charts(out: &Path, results: &Results) -> anyhow::Result<Vec<(Metric, String)>> {
    write_metric_charts(out, |metric| chart(results, metric))
}

/// The whole `results.md`; `charts` are the chart files (relative paths) per metric.
#[must_use]
pub fn render(results: &Results, charts: &[(Metric, String)]) -> String {
    let s = &results.settings;
    let m = &results.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# gannet-bench: pod to pod across nodes (overlay)\n\n\
         Run of {} ({}), {:.0} s, {} round(s) of {} s per measurement, medians; kernel {}, {} CPUs.\n",
        results.started_at,
        if s.quick { "`--quick`" } else { "full" },
        results.wall_seconds,
        s.rounds,
        s.seconds,
        m.kernel,
        m.nproc,
    );
    out.push_str(
        "Two nodes (network namespaces on a bridge in a third one, MTU 1500); a client on node A, \
         a server on node B, connected directly (pod to pod) and through a `ClusterIP` service \
         whose one endpoint is the server pod:\n\n",
    );
    for variant in Variant::ALL {
        let _ = writeln!(out, "- **{variant}**: {};", describe(variant));
    }
    out.push_str(
        "\nValues are medians, (±x%) is half the range of the samples; × is the ratio to the \
         underlay (node to node) in the same run, for both paths (higher is better).\n\n",
    );

    let _ = writeln!(
        out,
        "## Results\n\n\
         | variant | path | rr (transactions/s) | × underlay | crr (connections/s) | × underlay | stream (Gbit/s) | × underlay |\n\
         |---|---|---:|---:|---:|---:|---:|---:|"
    );
    for v in &results.variants {
        if let Some(reason) = &v.skipped {
            let _ = writeln!(
                out,
                "| {} | skipped: {} | – | – | – | – | – | – |",
                v.variant,
                reason.replace('|', "\\|")
            );
            continue;
        }
        for target in v.results.keys() {
            let path = if v.variant == Variant::Underlay {
                "node to node"
            } else {
                target.label()
            };
            let _ = write!(out, "| {} | {path} |", v.variant);
            for metric in Metric::ALL {
                let (value, ratio) = result_cells(metric, v.get(*target, metric));
                let _ = write!(out, " {value} | {ratio} |");
            }
            out.push('\n');
        }
    }
    out.push('\n');
    for (metric, file) in charts {
        let _ = writeln!(out, "![{metric}: ratio to the underlay]({file})");
    }
    if !charts.is_empty() {
        out.push('\n');
    }

    goals_section(&mut out, None, &results.goals);

    let _ = writeln!(
        out,
        "## The clusters\n\n\
         | variant | client → server | cluster IP | client MTU | setup |\n|---|---|---|---:|---:|"
    );
    for v in &results.variants {
        let dash = || "–".to_owned();
        let _ = writeln!(
            out,
            "| {} | {} → {} | {} | {} | {} |",
            v.variant,
            v.client_ip.clone().unwrap_or_else(dash),
            v.server_ip.clone().unwrap_or_else(dash),
            v.cluster_ip.clone().unwrap_or_else(dash),
            v.client_mtu.map_or_else(dash, |m| m.to_string()),
            if v.skipped.is_some() {
                "skipped".to_owned()
            } else {
                format!("{:.1} s", v.setup_seconds)
            }
        );
    }
    out.push('\n');

    warnings_section(&mut out, &results.warnings);
    let _ = writeln!(
        out,
        "## How it was measured\n\n\
         - Every variant has its own two nodes (`10.99.0.11`, `10.99.0.12` on their own bridge, \
         nothing routed out of the machine); gannet's get a gannet-control of their own \
         (`--cluster-cidr {}`, a unix socket), one gannetd per node namespace (its own cgroup, \
         bpffs directory and state directory; masquerade on, as by default), pods wired by \
         gannet-cni from gannetd's subnet file, and the service (`10.96.0.10:80` → the server \
         pod's 8080) applied with `gannetctl apply`. The gannet client runs in node A's gannetd \
         cgroup on both paths; a client outside it is checked not to reach the cluster IP.\n\
         - Traffic: `gannet-bench-peer`, one thread each side, {}; rr = 1-byte request/response \
         on one connection, crr = connect, 1-byte request, response, close (RST), stream = bulk \
         send on one connection until the server acknowledged every byte. {} s per measurement \
         after {} s of uncounted warm-up (rr, crr); {} round(s), the variants in a random order \
         in each (seed {}), each measuring its paths back to back.\n\
         - Root network namespace: {}.\n\
         - Machine: {}; {} CPUs ({}); {}; {}; cgroup v2 at {}; gannet {}.\n",
        s.cluster_cidr,
        s.peer_cpu.map_or_else(
            || "placed by the scheduler".to_owned(),
            |cpu| format!(
                "client and server pinned to CPU {cpu} (a measurement is the CPU cost of the path)"
            )
        ),
        s.seconds,
        s.warmup_seconds,
        s.rounds,
        s.seed,
        results.root_namespace.summary(),
        m.kernel,
        m.nproc,
        m.cpu_model,
        m.memory,
        m.nft_version,
        m.cgroup2,
        m.gannet_commit,
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::results::MetricResult;

    fn variant(v: Variant, values: &[(Target, [f64; 3])]) -> VariantResult {
        let mut results = BTreeMap::new();
        for (target, vals) in values {
            results.insert(
                *target,
                Metric::ALL
                    .into_iter()
                    .zip(*vals)
                    .filter_map(|(m, x)| MetricResult::from_samples(m, vec![x]).map(|r| (m, r)))
                    .collect(),
            );
        }
        VariantResult {
            variant: v,
            skipped: None,
            setup_seconds: 1.5,
            client_ip: Some("10.244.1.2".into()),
            server_ip: Some("10.244.2.2".into()),
            cluster_ip: Some("10.96.0.10".into()),
            client_mtu: Some(1450),
            results,
        }
    }

    fn results(ebpf_skipped: bool) -> Results {
        let both = |vals| [(Target::Pod, vals), (Target::ClusterIp, vals)];
        let mut variants = vec![
            variant(
                Variant::Underlay,
                &[(Target::Pod, [40_000.0, 10_000.0, 20.0])],
            ),
            variant(Variant::Flannel, &both([30_000.0, 6_000.0, 12.0])),
            variant(Variant::Vxlan, &both([31_000.0, 6_500.0, 12.5])),
            variant(Variant::HostGw, &both([39_000.0, 9_000.0, 19.5])),
            variant(Variant::Ebpf, &both([34_000.0, 6_000.0, 18.0])),
        ];
        if ebpf_skipped {
            variants[4] = VariantResult::skipped(Variant::Ebpf, "not available".into());
        }
        super::super::compute_ratios(&mut variants);
        Results::new(
            super::super::Config {
                quick: true,
                traffic: crate::peer::Traffic {
                    rounds: 2,
                    duration: std::time::Duration::from_millis(500),
                    warmup: std::time::Duration::from_millis(100),
                    seed: 7,
                    peer_cpu: Some(1),
                },
            }
            .settings(),
            Finished {
                started_at: "2026-12-04T00:00:00Z".into(),
                wall_seconds: 40.0,
                machine: Machine::default(),
                root_namespace: RootCheck {
                    in_init_netns: Some(true),
                    links: Vec::new(),
                    nft_ruleset_lines: 0,
                    sysctls_compared: 10,
                    differences: Vec::new(),
                },
                warnings: Vec::new(),
            },
            Measured {
                variants,
                order: Vec::new(),
            },
        )
    }

    #[test]
    fn goals_compare_ebpf_with_flannel_and_host_gw_with_the_underlay() {
        let r = results(false);
        let md = render(&r, &[(Metric::Rr, "rr.png".into())]);
        // 34 000 / 30 000 = 1.13 ≥ 1.1; 6 000 / 6 000 = 1.0 < 1.1.
        assert!(
            md.contains("| ebpf rr ≥ 1.10× flannel, pod to pod | 1.13× (34,000 vs 30,000 transactions/s) | **met** |"),
            "{md}"
        );
        assert!(
            md.contains("| ebpf crr ≥ 1.10× flannel, pod to pod | 1.00× (6,000 vs 6,000 connections/s) | **not met** |"),
            "{md}"
        );
        // 18 / 20 = 0.90 ≥ 0.85.
        assert!(
            md.contains(
                "| ebpf stream ≥ 0.85× underlay, via ClusterIP | 0.90× of the underlay | **met** |"
            ),
            "{md}"
        );
        // host-gw crr 9 000 / 10 000 = 0.90 < 0.95.
        assert!(
            md.contains(
                "| host-gw crr ≥ 0.95× underlay, pod to pod | 0.90× of the underlay | **not met** |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| underlay | node to node | 40,000 (±0%) | 1.00× |"),
            "{md}"
        );
        assert!(
            md.contains("| flannel | via ClusterIP | 30,000 (±0%) | 0.75× |"),
            "{md}"
        );
        assert!(md.contains("![rr: ratio to the underlay](rr.png)"), "{md}");
        assert_eq!(r.goals.len(), 2 * (4 + 3));
    }

    #[test]
    fn a_skipped_ebpf_leaves_its_goals_undecided() {
        let r = results(true);
        let md = render(&r, &[]);
        assert!(md.contains("| ebpf | skipped: not available | – |"), "{md}");
        assert!(
            md.contains("| ebpf rr ≥ 1.10× flannel, pod to pod | ebpf skipped (see the results) | not measured |"),
            "{md}"
        );
        let stream = chart(&r, Metric::Stream);
        assert_eq!(
            stream
                .series
                .iter()
                .map(|s| s.label.as_str())
                .collect::<Vec<_>>(),
            ["flannel", "vxlan", "host-gw"]
        );
        assert_eq!(stream.goals.len(), 2);
        assert!(
            stream.x_desc.ends_with("; ebpf: skipped"),
            "{}",
            stream.x_desc
        );
        assert_eq!(stream.series[2].ratios, [Some(0.975), Some(0.975)]);
    }
}
