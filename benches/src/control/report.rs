//! What the `control` scenario writes: `results.json` (the types below) and `results.md` (the
//! same as tables, with the goals next to the numbers).

use std::fmt::Write as _;

use serde::Serialize;

use super::procs::Memory;
use crate::machine::Machine;
use crate::report::warnings_section;
use crate::scenario::Goal;
use crate::scenario::goal::goals_section;
use crate::scenario::rootns::RootCheck;
use crate::scenario::stats::{LatencyStats, format_ms, latency_header, latency_row};

/// Incremental changes: p99 from the Apply call to every agent's map update, in ms (below).
pub const GOAL_INCREMENTAL_P99_MS: f64 = 50.0;
/// A fresh agent's full sync, in seconds (below).
pub const GOAL_FULL_SYNC_SECONDS: f64 = 2.0;
/// The full sync at least this many times faster than `iptables-restore` of the same services.
pub const GOAL_SPEEDUP_IPTABLES: f64 = 5.0;
/// An agent's resident memory after the full sync, in bytes (below): 100 MB.
pub const GOAL_RSS_BYTES: u64 = 100_000_000;

/// The run's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub agents: usize,
    pub changes: usize,
    pub cli_applies: usize,
    /// Objects per Apply call while loading the control plane.
    pub batch: usize,
    pub peer_timeout_seconds: u64,
    pub peers: bool,
    pub seed: u64,
    /// The capacity flags every gannetd got.
    pub gannetd_args: Vec<String>,
    /// Extra environment every gannetd got (`--gannetd-env`).
    pub gannetd_env: Vec<String>,
}

/// Loading the objects into gannet-control through the gRPC Apply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreLoad {
    pub objects: usize,
    pub calls: usize,
    pub seconds: f64,
    /// The slowest Apply call.
    pub slowest_call_seconds: f64,
    /// Listing both kinds afterwards with `gannet_api::Client::list` (decoded as an agent does),
    /// one after the other.
    pub list_seconds: f64,
    /// gannet-control's memory after loading.
    pub control_memory: Option<Memory>,
}

/// One agent's full sync.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSync {
    pub node: String,
    /// Agents already running (watching) while this one synced.
    pub watching_before: usize,
    /// Process start → `programmed the control plane's services` (the maps hold every service).
    pub full_sync_seconds: f64,
    /// Process start → `socket load balancer attached` (programs loaded, maps created).
    pub attached_seconds: Option<f64>,
    /// Process start → `ready for CNI endpoints` (the control-plane client starts then).
    pub ready_seconds: Option<f64>,
    /// Process start → `node registered` (first answer of the control plane).
    pub registered_seconds: Option<f64>,
    /// Process start → `control plane state received` (both kinds listed and joined).
    pub received_seconds: Option<f64>,
    /// `frontends` of the `programmed` line.
    pub frontends: u64,
    /// The `services synced` line after it: added + updated + unchanged.
    pub programmed: u64,
    /// Right after the `services synced` line that follows the full sync.
    pub memory_after_sync: Memory,
    /// At the end of the incremental changes.
    pub memory_at_end: Option<Memory>,
    /// gannetd's CPU time (user + system) until just after the full sync.
    pub cpu_seconds_at_sync: Option<f64>,
    /// Frontends in the pinned map whose backends were compared with the expected ones (all).
    pub verified_frontends: usize,
}

/// Latencies of the incremental changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incremental {
    pub changes: usize,
    /// The Apply call alone (until gannet-control answered).
    pub apply_call: Option<LatencyStats>,
    /// Apply call → each agent's `services synced`, per agent (same order as `agents`).
    pub per_agent: Vec<Option<LatencyStats>>,
    /// All agents' latencies together.
    pub all: Option<LatencyStats>,
    /// Per change: the service, the Apply call's and each agent's latency in ms.
    pub samples: Vec<ChangeSample>,
    /// After the last change, the first agent's map held its backends.
    pub last_change_verified: bool,
}

/// One incremental change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeSample {
    pub service: String,
    pub apply_ms: f64,
    pub agents_ms: Vec<f64>,
}

/// `gannetctl apply -f FILE` of one changed slice, the real CLI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cli {
    pub runs: usize,
    /// Start of gannetctl → its exit.
    pub gannetctl: Option<LatencyStats>,
    /// Start of gannetctl → each agent's `services synced` (all agents together).
    pub to_agents: Option<LatencyStats>,
}

/// How loading a peer's rule set ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PeerLoad {
    /// It finished (successfully, and its result was checked).
    Done {
        seconds: f64,
        user_seconds: f64,
        system_seconds: f64,
        input_bytes: usize,
        /// What the check after the load found (services in the verdict map or `KUBE-SERVICES`).
        services_found: usize,
    },
    /// It was killed after `timeout_seconds`.
    TimedOut {
        timeout_seconds: f64,
        input_bytes: usize,
    },
    /// Not run (`--no-peers`).
    Skipped,
}

impl PeerLoad {
    /// `(seconds, is a lower bound)`.
    #[must_use]
    pub fn seconds(&self) -> Option<(f64, bool)> {
        match self {
            Self::Done { seconds, .. } => Some((*seconds, false)),
            Self::TimedOut {
                timeout_seconds, ..
            } => Some((*timeout_seconds, true)),
            Self::Skipped => None,
        }
    }
}

/// kube-proxy's rule sets for the same services.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Peers {
    pub nft: PeerLoad,
    pub iptables_restore: PeerLoad,
}

/// Load of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Load {
    /// `/proc/loadavg` when the run started, before the agents synced, and at the end.
    pub loadavg_start: String,
    pub loadavg_before_sync: String,
    pub loadavg_end: String,
    /// Other processes using a CPU noticeably when the run started (`ps`).
    pub busy_processes_at_start: Vec<String>,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    pub scenario: &'static str,
    pub started_at: String,
    pub wall_seconds: f64,
    pub settings: Settings,
    pub machine: Machine,
    pub load: Load,
    pub store: StoreLoad,
    pub agents: Vec<AgentSync>,
    pub incremental: Incremental,
    pub cli: Cli,
    pub peers: Peers,
    pub goals: Vec<Goal>,
    pub root_namespace: RootCheck,
    pub warnings: Vec<String>,
}

fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.3} s")
    } else {
        format!("{s:.1} s")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn opt_seconds(s: Option<f64>) -> String {
    s.map_or_else(|| "–".to_owned(), seconds)
}

/// The slowest agent's full sync.
#[must_use]
pub fn slowest_sync(agents: &[AgentSync]) -> Option<f64> {
    agents
        .iter()
        .map(|a| a.full_sync_seconds)
        .max_by(f64::total_cmp)
}

/// `peer ÷ gannet` as text: `12.3×`, or `> 12.3×` when the peer timed out.
#[must_use]
pub fn ratio_text(peer: &PeerLoad, gannet_seconds: Option<f64>) -> String {
    match (peer.seconds(), gannet_seconds) {
        (Some((peer, bound)), Some(gannet)) if gannet > 0.0 => {
            format!("{}{:.1}×", if bound { "> " } else { "" }, peer / gannet)
        }
        _ => "–".to_owned(),
    }
}

/// The goals, judged.
#[must_use]
pub fn goals(
    agents: &[AgentSync],
    incremental: &Incremental,
    peers: &Peers,
    services: usize,
) -> Vec<Goal> {
    let slowest = slowest_sync(agents);
    let speedup = match (peers.iptables_restore.seconds(), slowest) {
        (Some((ipt, bound)), Some(sync)) if sync > 0.0 => {
            let ratio = ipt / sync;
            if ratio >= GOAL_SPEEDUP_IPTABLES {
                Some(true)
            } else if bound {
                // A lower bound below the goal decides nothing.
                None
            } else {
                Some(false)
            }
        }
        _ => None,
    };
    vec![
        Goal::judged(
            format!(
                "incremental change, Apply → every agent's map: p99 < {GOAL_INCREMENTAL_P99_MS} ms"
            ),
            incremental.all.as_ref().map(|s| s.p99_ms),
            format_ms,
            |p99| p99 < GOAL_INCREMENTAL_P99_MS,
        ),
        Goal::judged(
            format!(
                "full sync of {services} services to a fresh agent < {GOAL_FULL_SYNC_SECONDS} s \
                 (slowest agent)"
            ),
            slowest,
            seconds,
            |s| s < GOAL_FULL_SYNC_SECONDS,
        ),
        Goal {
            goal: format!("full sync ≥ {GOAL_SPEEDUP_IPTABLES}× faster than iptables-restore"),
            measured: ratio_text(&peers.iptables_restore, slowest),
            met: speedup,
        },
        Goal::judged(
            "agent RSS after the full sync < 100 MB (largest agent)",
            agents.iter().map(|a| a.memory_after_sync.rss_kib).max(),
            |kib| format!("{:.1} MB", kib as f64 * 1024.0 / 1e6),
            |kib| kib * 1024 < GOAL_RSS_BYTES,
        ),
    ]
}

fn peer_row(out: &mut String, what: &str, peer: &PeerLoad, gannet: Option<f64>) {
    let ratio = ratio_text(peer, gannet);
    match peer {
        PeerLoad::Done {
            seconds: s,
            user_seconds,
            system_seconds,
            input_bytes,
            services_found,
        } => {
            let _ = writeln!(
                out,
                "| {what} | {} | {} | {} | {:.1} MB | {services_found} | {ratio} |",
                seconds(*s),
                seconds(*user_seconds),
                seconds(*system_seconds),
                *input_bytes as f64 / 1e6,
            );
        }
        PeerLoad::TimedOut {
            timeout_seconds,
            input_bytes,
        } => {
            let _ = writeln!(
                out,
                "| {what} | > {} (killed) | – | – | {:.1} MB | – | {ratio} |",
                seconds(*timeout_seconds),
                *input_bytes as f64 / 1e6,
            );
        }
        PeerLoad::Skipped => {
            let _ = writeln!(out, "| {what} | not run | – | – | – | – | – |");
        }
    }
}

/// `results.md`.
#[must_use]
pub fn render(r: &Results) -> String {
    let s = &r.settings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# gannet-bench control: {} services × {} endpoints, {} agents\n",
        s.services, s.endpoints_per_service, s.agents
    );
    let _ = writeln!(
        out,
        "Started {} on {} ({} CPUs, kernel {}), gannet {}; {:.0} s in all. Load average at the \
         start {}, before the agents synced {}, at the end {}.\n",
        r.started_at,
        r.machine.cpu_model,
        r.machine.nproc,
        r.machine.kernel,
        r.machine.gannet_commit,
        r.wall_seconds,
        r.load.loadavg_start,
        r.load.loadavg_before_sync,
        r.load.loadavg_end
    );
    if !r.load.busy_processes_at_start.is_empty() {
        let _ = writeln!(
            out,
            "Busy processes at the start: {}.\n",
            r.load.busy_processes_at_start.join("; ")
        );
    }

    goals_section(&mut out, None, &r.goals);

    let _ = writeln!(
        out,
        "## Loading gannet-control\n\n{} objects ({} Services, {} EndpointSlices) in {} Apply \
         calls of up to {} objects: {} ({:.0} objects/s), slowest call {}. Listing both kinds \
         back with `gannet_api::Client::list` (the calls and decoding an agent's first sync \
         makes): {}.{}\n",
        r.store.objects,
        s.services,
        s.services,
        r.store.calls,
        s.batch,
        seconds(r.store.seconds),
        r.store.objects as f64 / r.store.seconds.max(1e-9),
        seconds(r.store.slowest_call_seconds),
        seconds(r.store.list_seconds),
        r.store.control_memory.map_or_else(String::new, |m| format!(
            " gannet-control's RSS then: {} (peak {}).",
            mib(m.rss_kib),
            mib(m.hwm_kib)
        ))
    );

    out.push_str(
        "## Full sync to a fresh agent\n\nFrom starting gannetd to its `programmed the control \
         plane's services` log line; the agents were started one after another, each while the \
         ones before it were watching. Every frontend in each agent's pinned map was then \
         compared with the expected backends.\n\n\
         | agent | watching | attached | registered | state received | **full sync** | frontends \
         | verified | RSS | of it heap | peak RSS | CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for a in &r.agents {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} |",
            a.node,
            a.watching_before,
            opt_seconds(a.attached_seconds),
            opt_seconds(a.registered_seconds),
            opt_seconds(a.received_seconds),
            seconds(a.full_sync_seconds),
            a.frontends,
            a.verified_frontends,
            mib(a.memory_after_sync.rss_kib),
            mib(a.memory_after_sync.anon_kib),
            mib(a.memory_after_sync.hwm_kib),
            opt_seconds(a.cpu_seconds_at_sync),
        );
    }
    let at_end: Vec<String> = r
        .agents
        .iter()
        .filter_map(|a| {
            a.memory_at_end
                .map(|m| format!("{} {}", a.node, mib(m.rss_kib)))
        })
        .collect();
    if !at_end.is_empty() {
        let _ = writeln!(
            out,
            "\nRSS after the incremental changes: {}.",
            at_end.join(", ")
        );
    }

    let _ = writeln!(
        out,
        "\n## Incremental changes\n\n{} times, one endpoint address of one random service's \
         EndpointSlice replaced through the gRPC Apply (what `gannetctl apply` calls), one change \
         at a time; latency from just before the call to each agent's `services synced` log line \
         (written after the BPF maps were updated), stamped as the line arrived. Last change in \
         the first agent's pinned map: {}.\n",
        r.incremental.changes,
        if r.incremental.last_change_verified {
            "verified"
        } else {
            "**not verified**"
        }
    );
    latency_header(&mut out, "");
    latency_row(
        &mut out,
        "Apply call alone",
        r.incremental.apply_call.as_ref(),
    );
    for (agent, stats) in r.agents.iter().zip(&r.incremental.per_agent) {
        latency_row(&mut out, &format!("→ {} map", agent.node), stats.as_ref());
    }
    latency_row(
        &mut out,
        "→ any agent's map (all)",
        r.incremental.all.as_ref(),
    );
    if r.cli.runs > 0 {
        let _ = writeln!(
            out,
            "\n`gannetctl apply -f FILE` (the real CLI, a new process each time), {} runs:\n",
            r.cli.runs
        );
        latency_header(&mut out, "");
        latency_row(
            &mut out,
            "gannetctl until it exits",
            r.cli.gannetctl.as_ref(),
        );
        latency_row(
            &mut out,
            "gannetctl start → agents' maps",
            r.cli.to_agents.as_ref(),
        );
    }

    let slowest = slowest_sync(&r.agents);
    let _ = writeln!(
        out,
        "\n## kube-proxy's rule sets for the same services\n\nLoaded into an empty network \
         namespace of the harness's, each with a timeout of {} s. Ratio: the peer's time ÷ the \
         slowest agent's full sync ({}).\n\n\
         | | wall | user CPU | system CPU | input | services found | ÷ gannet full sync |\n\
         |---|---:|---:|---:|---:|---:|---:|",
        s.peer_timeout_seconds,
        opt_seconds(slowest)
    );
    peer_row(&mut out, "`nft -f`", &r.peers.nft, slowest);
    peer_row(
        &mut out,
        "`iptables-restore --noflush`",
        &r.peers.iptables_restore,
        slowest,
    );

    let _ = writeln!(
        out,
        "\nThe root network namespace was {}.",
        r.root_namespace.summary()
    );
    out.push('\n');
    warnings_section(&mut out, &r.warnings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(sync: f64, rss_kib: u64) -> AgentSync {
        AgentSync {
            node: "n".to_owned(),
            watching_before: 0,
            full_sync_seconds: sync,
            attached_seconds: None,
            ready_seconds: None,
            registered_seconds: None,
            received_seconds: None,
            frontends: 1,
            programmed: 1,
            memory_after_sync: Memory {
                rss_kib,
                hwm_kib: rss_kib,
                anon_kib: rss_kib,
                file_kib: 0,
            },
            memory_at_end: None,
            cpu_seconds_at_sync: None,
            verified_frontends: 1,
        }
    }

    fn incremental(p99_samples: &[f64]) -> Incremental {
        Incremental {
            changes: p99_samples.len(),
            apply_call: None,
            per_agent: Vec::new(),
            all: LatencyStats::from_samples(p99_samples),
            samples: Vec::new(),
            last_change_verified: true,
        }
    }

    fn done(seconds: f64) -> PeerLoad {
        PeerLoad::Done {
            seconds,
            user_seconds: 0.0,
            system_seconds: 0.0,
            input_bytes: 0,
            services_found: 1,
        }
    }

    #[test]
    fn goals_are_judged_against_the_slowest_and_largest_agent() {
        let agents = [agent(0.5, 40_000), agent(1.5, 90_000)];
        let peers = Peers {
            nft: done(3.0),
            iptables_restore: done(7.0),
        };
        let goals = goals(&agents, &incremental(&[10.0, 20.0, 60.0]), &peers, 10);
        let met: Vec<Option<bool>> = goals.iter().map(|g| g.met).collect();
        // p99 of three samples is the largest (60 ms); 1.5 s < 2 s; 7 / 1.5 = 4.7 < 5;
        // 90 000 KiB = 92.2 MB < 100 MB.
        assert_eq!(met, [Some(false), Some(true), Some(false), Some(true)]);
        assert_eq!(goals[2].measured, "4.7×");
    }

    #[test]
    fn a_timed_out_peer_is_a_lower_bound() {
        let agents = [agent(1.0, 1)];
        let timed_out = |timeout_seconds| Peers {
            nft: PeerLoad::Skipped,
            iptables_restore: PeerLoad::TimedOut {
                timeout_seconds,
                input_bytes: 0,
            },
        };
        let goals_of = |peers: &Peers| goals(&agents, &incremental(&[1.0]), peers, 1);
        let decided = goals_of(&timed_out(600.0));
        assert_eq!(
            (decided[2].met, decided[2].measured.as_str()),
            (Some(true), "> 600.0×")
        );
        let undecided = goals_of(&timed_out(3.0));
        assert_eq!(undecided[2].met, None);
        assert_eq!(ratio_text(&PeerLoad::Skipped, Some(1.0)), "–");
    }
}
