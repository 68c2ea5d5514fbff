//! The `nodeport` scenario's `results.json`, goals, `results.md` and charts.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{PACKET_PROGRAMS, Settings, SizeResult, Variant};
use crate::chart::{GoalLine, GroupedRatios, Series, write_metric_charts};
use crate::machine::Machine;
use crate::peer::Metric;
use crate::report::{GOAL_SERVICES, format_value, thousands, warnings_section};
use crate::results::LoadTime;
use crate::scenario::Finished;
use crate::scenario::goal::{Goal, goals_section};
use crate::scenario::rootns::RootCheck;

/// The hit path's goal: at most this many nanoseconds per packet.
pub const GOAL_HIT_NS: f64 = 100.0;
/// gannet's crr goal against kube-proxy's iptables rules.
pub const GOAL_CRR_OVER_IPTABLES: f64 = 1.5;
/// gannet's crr goal against kube-proxy's nftables rules.
pub const GOAL_CRR_OVER_NFT: f64 = 1.2;
/// gannet's stream goal: within 5% of the best peer.
pub const GOAL_STREAM_OF_BEST: f64 = 0.95;
/// gannet-nft's rr and crr goal against kube-proxy's nftables rules (issue 10: at least as
/// many).
pub const GOAL_NFT_OVER_KUBE_PROXY_NFT: f64 = 1.0;
/// The path the hit-path goal is about.
pub const HIT_PATH: &str = "tracked";
/// The peers, in report order.
const PEERS: [Variant; 2] = [Variant::KubeProxyNft, Variant::KubeProxyIptables];

/// The whole `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    /// `nodeport`.
    pub scenario: &'static str,
    pub started_at: String,
    pub wall_seconds: f64,
    pub settings: Settings,
    pub machine: Machine,
    /// One entry per number of services.
    pub sizes: Vec<SizeResult>,
    pub goals: Vec<Goal>,
    /// The root network namespace before and after the run.
    pub root_namespace: RootCheck,
    pub warnings: Vec<String>,
}

impl Results {
    /// Assembles the results; the goals are evaluated here.
    #[must_use]
    pub fn new(settings: Settings, run: Finished, sizes: Vec<SizeResult>) -> Results {
        let goals = goals(&sizes);
        Results {
            scenario: "nodeport",
            started_at: run.started_at,
            wall_seconds: run.wall_seconds,
            settings,
            machine: run.machine,
            sizes,
            goals,
            root_namespace: run.root_namespace,
            warnings: run.warnings,
        }
    }
}

/// The size the goals are evaluated at: [`GOAL_SERVICES`], else the largest measured.
fn goal_size(sizes: &[SizeResult]) -> Option<&SizeResult> {
    sizes
        .iter()
        .find(|s| s.services == GOAL_SERVICES)
        .or_else(|| sizes.iter().max_by_key(|s| s.services))
}

fn ratio_goal(size: &SizeResult, metric: Metric, ours: Variant, peer: Variant, min: f64) -> Goal {
    let name = format!(
        "{ours} {metric} ≥ {min:.2}× {peer} at {} services",
        format_services(size.services)
    );
    match (
        size.over(ours, peer, metric),
        size.get(ours, metric),
        size.get(peer, metric),
    ) {
        // Three decimals: at a goal of 1.00× two would show 0.999× as a "1.00×" not met.
        (Some(ratio), Some(ours), Some(theirs)) => Goal {
            goal: name,
            measured: format!(
                "{ratio:.3}× ({} vs {} {})",
                format_value(metric, ours.median),
                format_value(metric, theirs.median),
                metric.unit()
            ),
            met: Some(ratio >= min),
        },
        _ => unmeasured(size, name, ours, metric),
    }
}

/// A goal whose numbers are missing: not met when `ours`' measurement failed, else undecided.
fn unmeasured(size: &SizeResult, goal: String, ours: Variant, metric: Metric) -> Goal {
    match size.failure(ours, metric) {
        Some(failure) => Goal {
            goal,
            measured: format!(
                "{ours}'s {metric} failed in {} round(s): {}",
                failure.rounds, failure.first_error
            ),
            met: Some(false),
        },
        None => Goal {
            goal,
            measured: "not measured".to_owned(),
            met: None,
        },
    }
}

/// The goals at 10 000 services (or the largest size measured): each program's hit path ≤ 100
/// ns per packet; each variant of gannet's program: crr ≥ 1.5× iptables and ≥ 1.2× nft, stream
/// ≥ 0.95× the best peer; gannet-nft: rr and crr ≥ kube-proxy's nftables rules.
#[must_use]
pub fn goals(sizes: &[SizeResult]) -> Vec<Goal> {
    let Some(size) = goal_size(sizes) else {
        return Vec::new();
    };
    let n = format_services(size.services);
    let mut out = Vec::new();
    for program in PACKET_PROGRAMS {
        let cost = size.packet.iter().find(|p| p.program == program.name);
        let hit = cost.and_then(|c| c.paths.iter().find(|p| p.path == HIT_PATH));
        out.push(Goal {
            goal: format!(
                "{} ({}) hit path ≤ {GOAL_HIT_NS:.0} ns per packet at {n} services",
                program.name, program.hook
            ),
            measured: hit.map_or_else(
                || "not measured".to_owned(),
                |h| {
                    format!(
                        "{:.0} ns (single runs: median {:.0} ns, clock overhead {:.0} ns)",
                        h.ns_per_packet,
                        h.single_run_ns.median,
                        cost.map_or(0.0, |c| c.clock_overhead_ns)
                    )
                },
            ),
            met: hit.map(|h| h.ns_per_packet <= GOAL_HIT_NS),
        });
    }
    let best = PEERS
        .into_iter()
        .filter_map(|p| size.get(p, Metric::Stream).map(|r| (p, r.median)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    for gannet in Variant::PROGRAM {
        out.push(ratio_goal(
            size,
            Metric::Crr,
            gannet,
            Variant::KubeProxyIptables,
            GOAL_CRR_OVER_IPTABLES,
        ));
        out.push(ratio_goal(
            size,
            Metric::Crr,
            gannet,
            Variant::KubeProxyNft,
            GOAL_CRR_OVER_NFT,
        ));
        let name = format!("{gannet} stream within 5% of the best peer at {n} services");
        out.push(match (best, size.get(gannet, Metric::Stream)) {
            (Some((peer, theirs)), Some(ours)) if theirs > 0.0 => {
                let ratio = ours.median / theirs;
                Goal {
                    goal: name,
                    measured: format!(
                        "{ratio:.3}× {peer} ({:.2} vs {theirs:.2} Gbit/s)",
                        ours.median
                    ),
                    met: Some(ratio >= GOAL_STREAM_OF_BEST),
                }
            }
            _ => unmeasured(size, name, gannet, Metric::Stream),
        });
    }
    for metric in [Metric::Rr, Metric::Crr] {
        out.push(ratio_goal(
            size,
            metric,
            Variant::GannetNft,
            Variant::KubeProxyNft,
            GOAL_NFT_OVER_KUBE_PROXY_NFT,
        ));
    }
    out
}

fn format_services(n: usize) -> String {
    thousands(n as f64).replace(',', " ")
}

fn format_load(load: Option<&LoadTime>) -> String {
    load.map_or_else(
        || "–".to_owned(),
        |l| {
            format!(
                "{} (user {:.1} s, sys {:.1} s)",
                format_seconds(l.seconds),
                l.user_seconds,
                l.system_seconds
            )
        },
    )
}

fn format_seconds(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.1} s")
    }
}

/// One line per size for the terminal: each gannet variant against each peer.
#[must_use]
pub fn summary_line(size: &SizeResult) -> String {
    let parts: Vec<String> = Variant::GANNET
        .iter()
        .flat_map(|&ours| PEERS.iter().map(move |&peer| (ours, peer)))
        .map(|(ours, peer)| {
            let ratios: Vec<String> = Metric::ALL
                .iter()
                .filter_map(|&m| size.over(ours, peer, m).map(|r| format!("{m} {r:.2}")))
                .collect();
            format!("{ours} ÷ {peer}: {}", ratios.join(" "))
        })
        .collect();
    format!("{} services, {}", size.services, parts.join(" | "))
}

fn color(variant: Variant) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match variant {
        Variant::GannetTc => RGBColor(0, 114, 178),
        Variant::GannetXdp => RGBColor(86, 180, 233),
        Variant::GannetNft => RGBColor(0, 158, 115),
        Variant::KubeProxyNft => RGBColor(230, 159, 0),
        Variant::KubeProxyIptables => RGBColor(120, 120, 120),
    }
}

/// The chart of `metric`: groups = numbers of services, bars = the variants as a ratio to
/// kube-proxy's iptables rules (the reference line at 1), crr's goal against them dashed.
#[must_use]
pub fn chart(results: &Results, metric: Metric) -> GroupedRatios {
    let groups = results
        .sizes
        .iter()
        .map(|s| {
            let base = s
                .get(Variant::KubeProxyIptables, metric)
                .map(|r| {
                    format!(
                        " (iptables {} {})",
                        format_value(metric, r.median),
                        metric.unit()
                    )
                })
                .unwrap_or_default();
            format!(
                "{} service{}{base}",
                format_services(s.services),
                if s.services == 1 { "" } else { "s" }
            )
        })
        .collect();
    let series = Variant::ALL
        .into_iter()
        .map(|variant| Series {
            label: variant.name().to_owned(),
            color: color(variant),
            ratios: results
                .sizes
                .iter()
                .map(|s| {
                    let ours = s.get(variant, metric)?.median;
                    let base = s.get(Variant::KubeProxyIptables, metric)?.median;
                    (base > 0.0).then(|| ours / base)
                })
                .collect(),
        })
        .collect();
    let goals = if metric == Metric::Crr {
        vec![GoalLine {
            value: GOAL_CRR_OVER_IPTABLES,
            label: format!("gannet goal {GOAL_CRR_OVER_IPTABLES:.1}× iptables"),
            color: color(Variant::GannetTc),
        }]
    } else {
        Vec::new()
    };
    GroupedRatios {
        title: format!("{metric} from outside to NodeIP:nodePort — ratio to kube-proxy iptables"),
        groups,
        x_desc: "services programmed (NodePort, backend on the other node)".to_owned(),
        y_desc: "ratio to kube-proxy iptables (higher is better)".to_owned(),
        series,
        goals,
    }
}

/// Draws `rr.png`, `crr.png` and `stream.png` into `out`; returns the file names per metric.
///
/// # Errors
/// If a chart cannot be drawn or written.
pub fn write_charts(out: &Path, results: &Results) -> anyhow::Result<Vec<(Metric, String)>> {
    write_metric_charts(out, |metric| chart(results, metric))
}

fn traffic_tables(out: &mut String, results: &Results) {
    let _ = writeln!(
        out,
        "## From outside to NodeIP:nodePort\n\n\
         | services | variant | rr (transactions/s) | crr (connections/s) | stream (Gbit/s) |\n\
         |---:|---|---:|---:|---:|"
    );
    for size in &results.sizes {
        for variant in Variant::ALL {
            let _ = write!(out, "| {} | {variant} |", format_services(size.services));
            for metric in Metric::ALL {
                let mut cell = size.get(variant, metric).map_or_else(
                    || "–".to_owned(),
                    |r| {
                        format!(
                            "{} (±{:.0}%)",
                            format_value(metric, r.median),
                            r.spread * 50.0
                        )
                    },
                );
                if let Some(failure) = size.failure(variant, metric) {
                    let _ = write!(cell, " **failed** ×{}", failure.rounds);
                }
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "\n| services | ratio | rr | crr | stream |\n|---:|---|---:|---:|---:|"
    );
    for size in &results.sizes {
        let pairs = Variant::GANNET
            .iter()
            .flat_map(|&ours| PEERS.iter().map(move |&peer| (ours, peer)))
            .chain([
                (Variant::GannetXdp, Variant::GannetTc),
                (Variant::GannetNft, Variant::GannetTc),
            ]);
        for (ours, peer) in pairs {
            let _ = write!(
                out,
                "| {} | {ours} ÷ {peer} |",
                format_services(size.services)
            );
            for metric in Metric::ALL {
                let cell = size
                    .over(ours, peer, metric)
                    .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"));
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
    }
    out.push('\n');
}

fn packet_tables(out: &mut String, results: &Results) {
    let _ = writeln!(
        out,
        "## What a packet costs the NodePort programs (`BPF_PROG_TEST_RUN`)\n\n\
         `gannet-testrun` in node A of the variant that runs the program, against its gannetd's \
         maps (the services, Maglev tables and conntrack gannetd programmed, the node's routes). \
         ns per packet; in parentheses the median of the single runs before the clock overhead \
         was subtracted. Values marked * come from repeated runs instead: the program left the \
         packet (and the maps) as it was, so `repeat` measures the path itself (the single runs \
         minus the overhead are listed below, as a check of the subtraction). In `gannet-xdp` a \
         packet meets `gannet_nodeport_xdp` first and then, passed, `gannet_nodeport`: its cost \
         there is the sum of the two rows. The XDP program's `reply` frames arrive on `eth0` (XDP \
         runs only on the external interfaces; in this topology the replies come back through \
         the overlay device, where only tc runs), so that column is what a reply costs XDP when \
         it is sent back out of the interface it came in on (`XDP_TX`).\n\n\
         | services | program | miss | tracked (hit path) | reply | first packet | clock overhead | `repeat` on the tracked frame |\n\
         |---:|---|---:|---:|---:|---:|---:|---|"
    );
    for size in &results.sizes {
        for program in &size.packet {
            let cell = |path: &str| {
                program.paths.iter().find(|p| p.path == path).map_or_else(
                    || "–".to_owned(),
                    |p| {
                        format!(
                            "{:.0}{} ({:.0})",
                            p.ns_per_packet,
                            if p.repeated_ns.is_some() && path != "miss" {
                                "*"
                            } else {
                                ""
                            },
                            p.single_run_ns.median
                        )
                    },
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} ({}) | {} | {} | {} | {} | {:.0} | last verdict {}, {:.0} ns |",
                format_services(size.services),
                program.program,
                program.hook,
                cell("miss"),
                cell("tracked"),
                cell("reply"),
                cell("first-packet"),
                program.clock_overhead_ns,
                program.repeat_check.last_verdict,
                program.repeat_check.ns_per_repetition
            );
        }
    }
    let _ = writeln!(out, "\nVerdicts of the single runs:\n");
    for size in &results.sizes {
        for program in &size.packet {
            let verdicts: Vec<String> = program
                .paths
                .iter()
                .map(|p| {
                    let v: Vec<String> = p
                        .verdicts
                        .iter()
                        .map(|(k, n)| format!("{k} ×{n}"))
                        .collect();
                    let on = if p.interface.is_empty() {
                        String::new()
                    } else {
                        format!(" (on {})", p.interface)
                    };
                    let check = match p.repeated_ns {
                        Some(_) if p.path != "miss" => format!(
                            "; single runs minus the overhead: {:.0} ns",
                            p.single_minus_overhead_ns
                        ),
                        _ => String::new(),
                    };
                    format!("{}{on} {}{check}", p.path, v.join(", "))
                })
                .collect();
            let _ = writeln!(
                out,
                "- {} services, {}: {}; the tracked flow went to {} as {}.",
                format_services(size.services),
                program.program,
                verdicts.join("; "),
                program.backend,
                program.source_at_backend
            );
        }
    }
    out.push('\n');
}

fn load_table(out: &mut String, results: &Results) {
    let _ = writeln!(
        out,
        "## Programming the services\n\n\
         gannetd: manifest written → every frontend logged programmed (gannet-tc and gannet-xdp \
         each; the one programmed last is shown); gannet-nft: the same for its gannetd \
         `--dataplane nftables` (one nftables transaction).\n\n\
         | services | gannetd (manifest → programmed) | gannet-nft (manifest → in its table) | `nft -f` | `iptables-restore` |\n\
         |---:|---:|---:|---:|---:|"
    );
    for size in &results.sizes {
        let l = &size.load;
        let gannetd = |seconds: Option<f64>| {
            seconds.map_or_else(
                || "–".to_owned(),
                |s| {
                    format!(
                        "{} ({} frontends)",
                        format_seconds(s),
                        l.gannetd_frontends.unwrap_or(0)
                    )
                },
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            format_services(size.services),
            gannetd(l.gannetd_sync_seconds),
            gannetd(l.gannetd_nft_sync_seconds),
            format_load(l.nft.as_ref()),
            format_load(l.iptables_restore.as_ref()),
        );
    }
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
        "# gannet-bench: NodePort from outside (nodeport)\n\n\
         Run of {} ({}), {:.0} s, {} round(s) of {} s per measurement, medians; kernel {}, {} CPUs.\n\n\
         An external client (10.99.0.250) connects to `NodeIP:nodePort` of node A (10.99.0.11); \
         the service's one endpoint is a pod on node B, reached over gannetd's `{}` overlay. \
         N `NodePort` services are programmed (the measured one last), five ways:\n\n\
         - **gannet-tc**: gannetd's `gannet_nodeport` tc program on node A's `eth0` (conntrack, \
         Maglev, SNAT to the overlay address, FIB redirect into the overlay);\n\
         - **gannet-xdp**: the same with `--nodeport-acceleration xdp`: `gannet_nodeport_xdp` in \
         native mode on node A's `eth0` (a veth) in front of it. The backend is behind the \
         overlay, so XDP sends nothing itself here: it looks every packet up (conntrack, backend, \
         FIB), finds it leaves through the overlay device rather than `eth0`, and passes it \
         untouched to tc, which does the work as in gannet-tc. This variant measures what the \
         XDP front costs where it cannot help: its lookups on every packet, and native XDP on a \
         veth (the bridge can no longer hand node A segmentation-offloaded packets: the \
         client's stream is segmented in software, each segment meets XDP, GRO rebuilds them \
         behind it). Where XDP does send (a backend or client out of the interface the packet \
         came in on) the per-packet `reply` row below shows its cost;\n\
         - **gannet-nft**: gannetd with its nftables data plane on node A (`--dataplane \
         nftables`, started in node A's namespace only): its table `inet gannet-services` \
         translates a connection's first packet in the nat prerouting hook (`services4` verdict \
         map → `lb-N` → `slot-i` → `dnat`, the masquerade mark for external clients), conntrack \
         the rest; no program is loaded (no per-packet rows below);\n\
         - **kube-proxy-nft**: kube-proxy's nftables rules in node A (`service-nodeports` verdict \
         map, `external-…` chain, masquerade), gannetd's program off;\n\
         - **kube-proxy-iptables**: kube-proxy's iptables rules in node A (`KUBE-SERVICES`, then \
         `KUBE-NODEPORTS`, one rule per node port, `KUBE-EXT-…`, masquerade), gannetd's program \
         off.\n\n\
         Values are medians, (±x%) is half the range of the samples.\n",
        results.started_at,
        if s.quick { "`--quick`" } else { "full" },
        results.wall_seconds,
        s.rounds,
        s.seconds,
        m.kernel,
        m.nproc,
        s.overlay,
    );
    traffic_tables(&mut out, results);
    for (metric, file) in charts {
        let _ = writeln!(out, "![{metric}: ratio to kube-proxy iptables]({file})");
    }
    if !charts.is_empty() {
        out.push('\n');
    }
    packet_tables(&mut out, results);
    load_table(&mut out, results);

    goals_section(&mut out, None, &results.goals);

    let _ = writeln!(out, "## Checks\n");
    for size in &results.sizes {
        for (variant, found) in &size.checks {
            let _ = writeln!(
                out,
                "- {} services, {variant}: {found}",
                format_services(size.services)
            );
        }
        for (variant, states) in &size.gannet_counters {
            for (when, state) in states {
                let counters: Vec<String> = state
                    .counters
                    .iter()
                    .map(|(name, n)| format!("{name} {n}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "- {} services, {variant}'s NodePort programs {when}: {}; conntrack {} of {} \
                     entries",
                    format_services(size.services),
                    counters.join(", "),
                    state.conntrack_entries,
                    state.conntrack_capacity
                );
            }
        }
    }
    out.push('\n');

    warnings_section(&mut out, &results.warnings);
    let _ = writeln!(
        out,
        "## How it was measured\n\n\
         - Every variant has its own cluster per number of services: nodes `10.99.0.11` and \
         `10.99.0.12` and the client `10.99.0.250` on a bridge of their own (nothing routed out \
         of the machine), gannetd on both nodes from a manifest directory (`--overlay {}`, \
         their Node manifests with the VTEP MACs; node B's gannetd is the same in every variant, \
         eBPF with its NodePort program off; gannet-nft's node A runs `--dataplane nftables`), \
         the server pod wired by gannet-cni. The N \
         services have node ports from {} on (service i gets {} + i), the measured one last; \
         the others have 3 endpoints each at addresses of pods that do not exist.\n\
         - Traffic: `gannet-bench-peer`, one thread each side, {}; rr = 1-byte request/response \
         on one connection, crr = connect, 1-byte request, response, close (RST), stream = bulk \
         send on one connection until the server acknowledged every byte. {} s per measurement \
         after {} s of uncounted warm-up (rr, crr); {} round(s), the variants in a random order \
         in each (seed {}).\n\
         - Per packet: `gannet-testrun --calls {}` (one `BPF_PROG_TEST_RUN` per packet and path, \
         interleaved; the clock's overhead measured on the `miss` frame, a single run against \
         {} repetitions, and subtracted).\n\
         - Root network namespace: {}.\n\
         - Machine: {}; {} CPUs ({}); {}; {}; {} ({}); cgroup v2 at {}; gannet {}.\n",
        s.overlay,
        s.first_node_port,
        s.first_node_port,
        s.peer_cpu.map_or_else(
            || "placed by the scheduler".to_owned(),
            |cpu| format!("client, server and gannet-testrun pinned to CPU {cpu}")
        ),
        s.seconds,
        s.warmup_seconds,
        s.rounds,
        s.seed,
        s.testrun_calls,
        s.testrun_repeat,
        results.root_namespace.summary(),
        m.kernel,
        m.nproc,
        m.cpu_model,
        m.memory,
        m.nft_version,
        m.iptables_version,
        m.iptables_backend,
        m.cgroup2,
        m.gannet_commit,
    );
    out
}

#[cfg(test)]
mod tests;
