//! The `pods` scenario's `results.json`, goals and `results.md`.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Config, Measured};
use crate::control::procs;
use crate::machine::Machine;
use crate::scenario::Finished;
use crate::scenario::goal::{Goal, goals_section};
use crate::scenario::stats::{LatencyStats, latency_header, latency_row};

/// apply → Ready p50 at most this many times `ctr run --cni`'s.
pub const GOAL_READY_OVER_RUNTIME: f64 = 1.2;
/// apply → Ready p99 below this, in milliseconds.
pub const GOAL_READY_P99_MS: f64 = 2000.0;
/// gannetd's resident memory with the pods running below this, in MB.
pub const GOAL_RSS_MB: f64 = 100.0;

/// What the run found.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub scenario: &'static str,
    pub started_at: String,
    pub wall_seconds: f64,
    pub settings: Config,
    pub machine: Machine,
    /// The latencies, in milliseconds, and gannetd's memory.
    #[serde(flatten)]
    pub measured: Measured,
    pub goals: Vec<Goal>,
}

impl Results {
    /// Assembles the results; the goals are evaluated here.
    #[must_use]
    pub fn new(settings: Config, run: Finished, measured: Measured) -> Results {
        let goals = goals(
            measured.gannet_ready.as_ref(),
            measured.runtime_started.as_ref(),
            &measured.agent_memory,
            settings.pods,
        );
        Results {
            scenario: "pods",
            started_at: run.started_at,
            wall_seconds: run.wall_seconds,
            settings,
            machine: run.machine,
            measured,
            goals,
        }
    }
}

/// The goals: p50 within 1.2× of the runtime alone, p99 under 2 s, gannetd under 100 MB.
fn goals(
    ready: Option<&LatencyStats>,
    runtime: Option<&LatencyStats>,
    memory: &procs::Memory,
    pods: usize,
) -> Vec<Goal> {
    vec![
        Goal::judged(
            format!("apply → Ready p50 within {GOAL_READY_OVER_RUNTIME}× of `ctr run --cni` p50"),
            ready.zip(runtime),
            |(g, r)| {
                format!(
                    "{:.2}× ({:.0} ms vs {:.0} ms)",
                    g.p50_ms / r.p50_ms,
                    g.p50_ms,
                    r.p50_ms
                )
            },
            |(g, r)| g.p50_ms / r.p50_ms <= GOAL_READY_OVER_RUNTIME,
        ),
        Goal::judged(
            "apply → Ready p99 < 2 s",
            ready,
            |g| format!("{:.0} ms", g.p99_ms),
            |g| g.p99_ms < GOAL_READY_P99_MS,
        ),
        Goal::judged(
            format!("gannetd RSS with {pods} pods < {GOAL_RSS_MB:.0} MB"),
            Some(memory.rss_kib as f64 * 1024.0 / 1e6),
            |mb| format!("{mb:.1} MB"),
            |mb| mb < GOAL_RSS_MB,
        ),
    ]
}

/// `results.md`: the latency table, gannetd's memory and the goals.
#[must_use]
pub fn markdown(results: &Results) -> String {
    let m = &results.measured;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Pod start latency (gannet-bench pods)\n\n{} pods each way, {}, gannet {}; {} CPUs.\n",
        results.settings.pods,
        results.started_at,
        results.machine.gannet_commit,
        results.machine.nproc
    );
    latency_header(&mut out, "");
    for (what, stats) in [
        ("gannet: `gannetctl apply` returned", &m.gannet_applied),
        ("gannet: apply → Ready", &m.gannet_ready),
        (
            "gannet: apply → first answer through the Service",
            &m.gannet_first_answer,
        ),
        ("runtime alone: `ctr run --cni -d`", &m.runtime_started),
        (
            "CRI alone: `RunPodSandbox` → `StartContainer`",
            &m.cri_started,
        ),
    ] {
        latency_row(&mut out, what, stats.as_ref());
    }
    if let (Some(gannet), Some(cri)) = (&m.gannet_ready, &m.cri_started) {
        let _ = writeln!(
            out,
            "\nThe kubelet role's own share at the median (apply → Ready less the CRI calls \
             alone): {:.0} ms ({:.2}×).",
            gannet.p50_ms - cri.p50_ms,
            gannet.p50_ms / cri.p50_ms
        );
    }
    let _ = writeln!(
        out,
        "\ngannetd with the pods running: RSS {:.1} MiB (peak {:.1} MiB).\n",
        m.agent_memory.rss_kib as f64 / 1024.0,
        m.agent_memory.hwm_kib as f64 / 1024.0
    );
    goals_section(&mut out, None, &results.goals);
    out.push_str(
        "A gannet pod is a sandbox (the pause container and its network) plus its container; \
         `ctr run --cni` starts one container in a network of its own, so the runtime alone does \
         less work for the same running server.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(p50_ms: f64, p99_ms: f64) -> LatencyStats {
        LatencyStats {
            count: 50,
            min_ms: p50_ms,
            p50_ms,
            p90_ms: p99_ms,
            p99_ms,
            max_ms: p99_ms,
            mean_ms: p50_ms,
        }
    }

    #[test]
    fn goals_compare_the_medians_and_bound_p99_and_memory() {
        let memory = procs::Memory {
            rss_kib: 30 * 1024,
            ..procs::Memory::default()
        };
        let met = goals(
            Some(&stats(120.0, 400.0)),
            Some(&stats(100.0, 150.0)),
            &memory,
            50,
        );
        assert_eq!(
            met.iter().map(|g| g.met).collect::<Vec<_>>(),
            [Some(true), Some(true), Some(true)]
        );
        assert!(met[0].measured.starts_with("1.20×"), "{}", met[0].measured);
        let missed = goals(
            Some(&stats(130.0, 2500.0)),
            Some(&stats(100.0, 150.0)),
            &procs::Memory {
                rss_kib: 200 * 1024,
                ..memory
            },
            50,
        );
        assert_eq!(
            missed.iter().map(|g| g.met).collect::<Vec<_>>(),
            [Some(false), Some(false), Some(false)]
        );
        let unmeasured = goals(None, Some(&stats(100.0, 150.0)), &memory, 50);
        assert_eq!(unmeasured[0].met, None);
        assert_eq!(unmeasured[1].met, None);
    }
}
