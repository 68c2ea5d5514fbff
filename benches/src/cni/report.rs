//! `results.md` of the `cni` scenario: the latencies and rates as tables, with the goals next to
//! the numbers.

use std::fmt::Write as _;

use super::results::{PhaseResult, Plugin, Results, Verb, VerbResult};
use crate::report::{thousands, warnings_section};
use crate::scenario::goal::{Goal, goals_section};
use crate::scenario::stats::format_ms;

/// gannet-cni's p50 goal: at least this many times faster than the reference plugins.
pub const GOAL_SPEEDUP: f64 = 2.0;
/// gannet-cni's p99 goal, in milliseconds (below).
pub const GOAL_P99_MS: f64 = 20.0;

fn format_rate(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1}")
    } else {
        thousands(rate)
    }
}

fn format_cpu(result: &VerbResult) -> String {
    format_ms(result.cpu_user_ms_mean + result.cpu_system_ms_mean)
}

/// The sequential phase, which the goals are stated for.
fn sequential(results: &Results) -> Option<&PhaseResult> {
    results.phases.iter().find(|p| p.concurrency == 1)
}

/// The goals, judged on the sequential phase: gannet-cni's p50 at least twice as fast as the
/// reference plugins', and its p99 under 20 ms, for ADD and DEL.
#[must_use]
pub fn goals(results: &Results) -> Vec<Goal> {
    let phase = sequential(results);
    let get = |plugin, verb| phase.and_then(|p| p.get(plugin, verb));
    let mut goals = Vec::new();
    for verb in Verb::ALL {
        let ours = get(Plugin::Gannet, verb);
        let theirs = get(Plugin::Reference, verb);
        let p50s = ours
            .zip(theirs)
            .map(|(o, t)| (o.latency.p50_ms, t.latency.p50_ms))
            .filter(|(o, _)| *o > 0.0);
        goals.push(Goal::judged(
            format!(
                "{} {verb} p50 ≥ {GOAL_SPEEDUP:.0}× faster than {}",
                Plugin::Gannet,
                Plugin::Reference
            ),
            p50s,
            |(o, t)| format!("{:.2}× ({} vs {})", t / o, format_ms(o), format_ms(t)),
            |(o, t)| t / o >= GOAL_SPEEDUP,
        ));
    }
    for verb in Verb::ALL {
        goals.push(Goal::judged(
            format!("{} {verb} p99 < {GOAL_P99_MS:.0} ms", Plugin::Gannet),
            get(Plugin::Gannet, verb).map(|r| r.latency.p99_ms),
            format_ms,
            |p99| p99 < GOAL_P99_MS,
        ));
    }
    goals
}

/// Renders `results` as markdown; `chart` is the latency chart's file name, if one was drawn.
#[must_use]
pub fn render(results: &Results, chart: Option<&str>) -> String {
    let s = &results.settings;
    let m = &results.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# gannet-bench: cni\n\n\
         How long a runtime waits for a CNI plugin: gannet-cni (built-in IPAM) and the reference \
         plugins `bridge` + `host-local`, {} pods each, side by side in one run{}. Started {}, \
         took {:.0} s.\n",
        s.pods,
        if s.quick { " (`--quick`)" } else { "" },
        results.started_at,
        results.wall_seconds
    );

    let _ = writeln!(
        out,
        "## Latency and throughput\n\n\
         | concurrency | plugin | ADD p50 | ADD p90 | ADD p99 | ADD max | ADD pods/s | DEL p50 | DEL p99 | DEL max | DEL pods/s |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for phase in &results.phases {
        for plugin in Plugin::ALL {
            let (Some(add), Some(del)) =
                (phase.get(plugin, Verb::Add), phase.get(plugin, Verb::Del))
            else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {plugin} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                phase.concurrency,
                format_ms(add.latency.p50_ms),
                format_ms(add.latency.p90_ms),
                format_ms(add.latency.p99_ms),
                format_ms(add.latency.max_ms),
                format_rate(add.pods_per_second),
                format_ms(del.latency.p50_ms),
                format_ms(del.latency.p99_ms),
                format_ms(del.latency.max_ms),
                format_rate(del.pods_per_second),
            );
        }
    }
    out.push('\n');
    if let Some(chart) = chart {
        let _ = writeln!(out, "![latency percentiles per plugin]({chart})\n");
    }

    goals_section(
        &mut out,
        Some("Sequential invocations (concurrency 1), wall time of the plugin process."),
        &goals(results),
    );

    let _ = writeln!(
        out,
        "## CPU time, and latency as the node fills up\n\n\
         CPU: mean user + kernel CPU time of the plugin process and the children it waited for \
         (`host-local` for the bridge plugin), from `wait4(2)`; the rest of the wall time is \
         waiting (for the kernel, locks, a CPU). First/last tenth: p50 of the first and the last \
         tenth of the pods, i.e. with an almost empty and an almost full node.\n\n\
         | concurrency | plugin | ADD wall (mean) | ADD CPU | ADD p50 first / last tenth | DEL wall (mean) | DEL CPU | DEL p50 first / last tenth |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for phase in &results.phases {
        for plugin in Plugin::ALL {
            let (Some(add), Some(del)) =
                (phase.get(plugin, Verb::Add), phase.get(plugin, Verb::Del))
            else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {plugin} | {} | {} | {} / {} | {} | {} | {} / {} |",
                phase.concurrency,
                format_ms(add.latency.mean_ms),
                format_cpu(add),
                format_ms(add.first_tenth_p50_ms),
                format_ms(add.last_tenth_p50_ms),
                format_ms(del.latency.mean_ms),
                format_cpu(del),
                format_ms(del.first_tenth_p50_ms),
                format_ms(del.last_tenth_p50_ms),
            );
        }
    }
    out.push('\n');

    let root = &results.root_namespace;
    out.push_str("## Root network namespace\n\n");
    if root.differences.is_empty() {
        let _ = writeln!(
            out,
            "Unchanged after the run: links ({}), addresses, the nftables ruleset ({} lines) and \
             {} forwarding/ARP/ND sysctls{}.\n",
            root.links.join(", "),
            root.nft_ruleset_lines,
            root.sysctls_compared,
            match root.in_init_netns {
                Some(true) => " (the harness ran in PID 1's network namespace)",
                Some(false) => " (note: the harness did not run in PID 1's network namespace)",
                None => "",
            }
        );
    } else {
        out.push_str("**Changed during the run:**\n\n");
        for line in &root.differences {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
    }

    warnings_section(&mut out, &results.warnings);

    let concurrency: Vec<String> = s.concurrency.iter().map(ToString::to_string).collect();
    let _ = write!(
        out,
        "## How it was measured\n\n\
         - Both plugins do the same job: per pod a veth pair with `{}` in the pod's network \
         namespace holding an address from a /24 and a default route, the other end in the node's \
         namespace; addresses from a file-based store (gannet-cni's built-in IPAM; `host-local`, \
         which the bridge plugin runs as a second process). The reference attaches the host ends to \
         a bridge `{}` with the gateway address (`isGateway: true`, `ipMasq: false`); gannet-cni \
         routes a /32 per pod. `cniVersion` {}.\n\
         - Each plugin runs in a node network namespace of its own (the invoking thread joins it \
         with `setns`, then starts the plugin with the `CNI_*` variables, `CNI_ARGS` as the \
         kubelet sets them, and the configuration on stdin), one network namespace per pod; the \
         IPAM stores live in a temporary directory. Latency = wall time from starting the plugin \
         until it exited and its output was read: what a runtime waits for.\n\
         - {} pods per plugin, after {} uncounted ADD + DEL per plugin. Rounds of {} pods (× the \
         concurrency): in every round both plugins, in a random order (seed {}), ADD their next \
         pods; after all ADDs, the same for DEL. Pods/s = pods ÷ the sum of that plugin's round \
         times. Concurrency measured: {} (at more than 1, that many invocations of one plugin run \
         at once; on {} CPUs they also wait for a CPU).\n\
         - After all ADDs: one address per pod, all distinct, a veth and an address record per pod \
         in the node, and the first and last pod holding their address; after all DELs, at once: no \
         veth in service, no record, no `eth0` in those pods; and then (waited for, at most 60 s) \
         no veth at all and no interface but `lo` in those pods. gannet-cni's DEL leaves its veth \
         pair down and renamed to a detached process that deletes it: that deletion is not in \
         its DEL latency, and it runs while the following DELs (of both plugins) are measured.\n\
         - Percentiles by nearest rank (always a measured value; with {} samples p99 is the {}th \
         fastest).\n\
         - Machine: {}; {} CPUs ({}); {}; gannet {}.\n",
        s.ifname,
        super::BRIDGE,
        s.cni_version,
        s.pods,
        s.warmup_pods,
        s.round_size,
        s.seed,
        concurrency.join(", "),
        m.nproc,
        s.pods,
        (0.99 * s.pods as f64).ceil().max(1.0),
        m.kernel,
        m.nproc,
        m.cpu_model,
        m.memory,
        m.gannet_commit,
    );
    for info in &results.plugins {
        let _ = writeln!(
            out,
            "- {}: {} ({}); configuration:\n\n  ```json\n  {}\n  ```",
            info.plugin, info.binary, info.version, info.config
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cni::results::{Sample, Settings};
    use crate::machine::Machine;
    use crate::scenario::rootns::RootCheck;

    fn verb_result(p50: f64, p99: f64) -> VerbResult {
        // 100 samples: 98 at p50, one at p99, one slower still (p99 by nearest rank is the 99th).
        let mut walls = vec![p50; 98];
        walls.push(p99);
        walls.push(p99 * 2.0);
        let samples = walls
            .into_iter()
            .enumerate()
            .map(|(pod, wall_ms)| Sample {
                pod,
                wall_ms,
                user_ms: 1.0,
                system_ms: 2.0,
            })
            .collect();
        VerbResult::new(samples, 0.5).expect("samples")
    }

    fn phase(
        concurrency: usize,
        gannet: [(f64, f64); 2],
        reference: [(f64, f64); 2],
    ) -> PhaseResult {
        let mut results = BTreeMap::new();
        for (plugin, values) in [(Plugin::Gannet, gannet), (Plugin::Reference, reference)] {
            let mut verbs = BTreeMap::new();
            for (verb, (p50, p99)) in Verb::ALL.into_iter().zip(values) {
                verbs.insert(verb, verb_result(p50, p99));
            }
            results.insert(plugin, verbs);
        }
        PhaseResult {
            concurrency,
            pods_per_round: 10 * concurrency,
            order: BTreeMap::new(),
            results,
        }
    }

    fn results(phases: Vec<PhaseResult>, differences: Vec<String>) -> Results {
        Results {
            scenario: "cni",
            started_at: "2026-01-02T03:04:05Z".into(),
            wall_seconds: 42.0,
            settings: Settings {
                quick: false,
                pods: 100,
                round_size: 10,
                concurrency: phases.iter().map(|p| p.concurrency).collect(),
                seed: 7,
                cni_version: "1.0.0",
                ifname: "eth0",
                warmup_pods: 1,
            },
            machine: Machine {
                kernel: "6.1.0".into(),
                nproc: 2,
                ..Machine::default()
            },
            plugins: Vec::new(),
            phases,
            root_namespace: RootCheck {
                in_init_netns: Some(true),
                links: vec!["eth0".into(), "lo".into()],
                nft_ruleset_lines: 0,
                sysctls_compared: 12,
                differences,
            },
            warnings: vec!["something odd".into()],
        }
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(format_ms(0.123), "0.12 ms");
        assert_eq!(format_ms(4.56789), "4.57 ms");
        assert_eq!(format_ms(12.345), "12.3 ms");
        assert_eq!(format_ms(1234.6), "1,235 ms");
        assert_eq!(format_rate(3.21), "3.2");
        assert_eq!(format_rate(1234.0), "1,234");
    }

    #[test]
    fn table_has_a_row_per_concurrency_and_plugin() {
        let md = render(
            &results(
                vec![
                    phase(1, [(3.0, 5.0), (2.0, 4.0)], [(9.0, 30.0), (5.0, 8.0)]),
                    phase(4, [(6.0, 9.0), (4.0, 6.0)], [(20.0, 60.0), (9.0, 12.0)]),
                ],
                Vec::new(),
            ),
            Some("latency.png"),
        );
        // 100 samples over 0.5 s: 200 pods/s.
        assert!(
            md.contains("| 1 | gannet-cni | 3.00 ms | 3.00 ms | 5.00 ms | 10.0 ms | 200 | 2.00 ms | 4.00 ms | 8.00 ms | 200 |"),
            "{md}"
        );
        assert!(
            md.contains("| 4 | bridge+host-local | 20.0 ms | 20.0 ms | 60.0 ms | 120 ms | 200 |"),
            "{md}"
        );
        assert_eq!(
            md.lines()
                .filter(|l| l.starts_with("| 1 |") || l.starts_with("| 4 |"))
                .count(),
            8,
            "{md}"
        );
        assert!(md.contains("![latency percentiles per plugin](latency.png)"));
        assert!(
            md.contains(
                "| 1 | gannet-cni | 3.09 ms | 3.00 ms | 3.00 ms / 3.00 ms | 2.08 ms | 3.00 ms | 2.00 ms / 2.00 ms |"
            ),
            "{md}"
        );
        assert!(md.contains("- something odd"));
        assert!(
            md.contains("Unchanged after the run: links (eth0, lo)"),
            "{md}"
        );
        assert!(md.contains("p99 is the 99th"), "{md}");
    }

    #[test]
    fn goals_use_the_sequential_phase() {
        let md = render(
            &results(
                vec![
                    phase(1, [(3.0, 5.0), (2.0, 25.0)], [(9.0, 30.0), (3.0, 8.0)]),
                    phase(4, [(60.0, 90.0), (40.0, 60.0)], [(20.0, 60.0), (9.0, 12.0)]),
                ],
                Vec::new(),
            ),
            None,
        );
        assert!(
            md.contains("| gannet-cni ADD p50 ≥ 2× faster than bridge+host-local | 3.00× (3.00 ms vs 9.00 ms) | **met** |"),
            "{md}"
        );
        assert!(
            md.contains("| gannet-cni DEL p50 ≥ 2× faster than bridge+host-local | 1.50× (2.00 ms vs 3.00 ms) | **not met** |"),
            "{md}"
        );
        assert!(
            md.contains("| gannet-cni ADD p99 < 20 ms | 5.00 ms | **met** |"),
            "{md}"
        );
        assert!(
            md.contains("| gannet-cni DEL p99 < 20 ms | 25.0 ms | **not met** |"),
            "{md}"
        );
        assert!(!md.contains("!["), "no chart, no image: {md}");
    }

    #[test]
    fn root_namespace_changes_are_listed() {
        let md = render(
            &results(
                vec![phase(1, [(3.0, 5.0); 2], [(9.0, 30.0); 2])],
                vec!["link appeared: cni0".into()],
            ),
            None,
        );
        assert!(
            md.contains("**Changed during the run:**\n\n- link appeared: cni0"),
            "{md}"
        );
    }
}
