//! The per-packet cost of the NodePort programs: `gannet-testrun` (the agent's benchmark tool)
//! in gannet's node A, against its gannetd's pinned maps, for every program in
//! [`PACKET_PROGRAMS`](super::PACKET_PROGRAMS), each in its variant's cluster. See the tool's
//! documentation for how it measures: one `BPF_PROG_TEST_RUN` per packet, because a repeated run
//! rewrites its own packet, and the clock's overhead subtracted; a path that leaves the packet
//! as it was (an XDP program passing it to tc) also with `repeat`.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use gannet_testkit::cluster::{EXTERNAL_V4, NODE_IF};
use gannet_testkit::run_in;
use serde::{Deserialize, Serialize};

use super::cluster::{Cluster, OVERLAY_DEVICE};
use super::{Config, PACKET_PROGRAMS, Tools, Variant};
use crate::services::FIRST_NODE_PORT;

/// Repetitions of the `miss` frame in one run (its time per repetition).
pub const REPEAT: u32 = 100_000;
/// How long `gannet-testrun` may take.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Nearest-rank percentiles of single runs, in nanoseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
}

/// One path through a program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathCost {
    /// `miss`, `tracked`, `reply`, `first-packet`.
    pub path: String,
    pub what: String,
    /// The interface the frames arrived on.
    #[serde(default)]
    pub interface: String,
    /// The programs' verdicts, by name, and how often.
    pub verdicts: BTreeMap<String, u64>,
    pub single_run_ns: Spread,
    /// The single runs' median minus the clock overhead.
    #[serde(default)]
    pub single_minus_overhead_ns: f64,
    /// The time per repetition of repeated runs: paths that leave the packet and the maps as
    /// they were (`miss`; XDP passing a packet to tc).
    pub repeated_ns: Option<f64>,
    /// What one packet costs (ns): the repeated time where there is one, else the single runs'
    /// median minus the clock overhead.
    pub ns_per_packet: f64,
}

/// What `gannet-testrun` found for one program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub program: String,
    pub hook: String,
    pub backend: String,
    pub source_at_backend: String,
    pub clock_overhead_ns: f64,
    /// What `repeat` would have measured on the tracked frame.
    pub repeat_check: RepeatCheck,
    pub paths: Vec<PathCost>,
}

/// The tracked frame run with `repeat`: its last verdict shows which path the repetitions took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatCheck {
    pub repetitions: u32,
    pub last_verdict: String,
    pub ns_per_repetition: f64,
}

#[derive(Debug, Deserialize)]
struct Report {
    programs: Vec<ProgramCost>,
    state_before: NodePortState,
    state_after: NodePortState,
}

/// The NodePort program's interfaces, counters and conntrack usage, as `gannet-testrun` reads
/// them from gannetd's pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePortState {
    /// Where `gannet_nodeport` (tc) is attached.
    pub interfaces: Vec<String>,
    /// Where `gannet_nodeport_xdp` is attached (native).
    #[serde(default)]
    pub xdp_interfaces: Vec<String>,
    pub counters: BTreeMap<String, u64>,
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
}

/// What one run of `gannet-testrun` found: the per-packet costs, and the program's state before
/// and after.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub programs: Vec<ProgramCost>,
    pub before: NodePortState,
    pub after: NodePortState,
}

impl ProgramCost {
    /// The cost of `path` (ns per packet).
    #[must_use]
    pub fn ns(&self, path: &str) -> Option<f64> {
        self.paths
            .iter()
            .find(|p| p.path == path)
            .map(|p| p.ns_per_packet)
    }

    /// One line for the terminal.
    #[must_use]
    pub fn summary(&self) -> String {
        let paths: Vec<String> = self
            .paths
            .iter()
            .map(|p| format!("{} {:.0} ns", p.path, p.ns_per_packet))
            .collect();
        format!("{} ({}): {}", self.program, self.hook, paths.join(", "))
    }

    /// The variant whose node A the program was measured in.
    #[must_use]
    pub fn variant(&self) -> Option<Variant> {
        PACKET_PROGRAMS
            .iter()
            .find(|p| p.name == self.program)
            .map(|p| p.variant)
    }
}

/// The arguments of `gannet-testrun` for `cluster`'s node A and its frontend `target`: the
/// programs of [`PACKET_PROGRAMS`] measured in `cluster`'s variant.
fn arguments(cluster: &Cluster, config: &Config, target: SocketAddrV4) -> Vec<String> {
    let mut args = vec![
        "--bpf-root".to_owned(),
        cluster.node_agent().bpf_root().display().to_string(),
        format!("--interface={NODE_IF}"),
        format!("--reply-interface={OVERLAY_DEVICE}"),
        format!("--client={EXTERNAL_V4}"),
        format!("--frontend={target}"),
        // Below the first node port: no frontend.
        format!("--miss-port={}", FIRST_NODE_PORT - 1),
        format!("--calls={}", config.testrun_calls),
        format!("--repeat={REPEAT}"),
    ];
    for program in PACKET_PROGRAMS
        .iter()
        .filter(|p| p.variant == cluster.variant)
    {
        args.push(format!("--program={}", program.name));
    }
    if let Some(cpu) = config.traffic.peer_cpu {
        args.push(format!("--cpu={cpu}"));
    }
    args
}

/// Runs `gannet-testrun` with `args` in `cluster`'s node A and returns what it printed.
fn testrun(cluster: &Cluster, tools: &Tools, args: Vec<String>) -> anyhow::Result<Vec<u8>> {
    let mut cmd = Command::new(&tools.testrun);
    cmd.args(args);
    let output = run_in(cmd, Some(cluster.node_netns()), None, TIMEOUT)?;
    ensure!(
        output.status.success(),
        "gannet-testrun failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output.stdout)
}

/// Runs `gannet-testrun` in `cluster`'s node A (a gannet variant's) against the frontend
/// `target`, for the programs measured in that variant.
///
/// # Errors
/// If the tool fails or its report cannot be read.
pub fn measure(
    cluster: &Cluster,
    tools: &Tools,
    config: &Config,
    target: SocketAddrV4,
) -> anyhow::Result<Measured> {
    parse(&testrun(
        cluster,
        tools,
        arguments(cluster, config, target),
    )?)
}

/// The NodePort program's state in `cluster`'s node A (`gannet-testrun --state-only`).
///
/// # Errors
/// If the tool fails or its report cannot be read.
pub fn state(cluster: &Cluster, tools: &Tools) -> anyhow::Result<NodePortState> {
    let bpf_root = cluster.node_agent().bpf_root().display().to_string();
    let stdout = testrun(
        cluster,
        tools,
        vec!["--state-only".to_owned(), format!("--bpf-root={bpf_root}")],
    )?;
    serde_json::from_slice(&stdout).context("reading gannet-testrun's state")
}

fn parse(stdout: &[u8]) -> anyhow::Result<Measured> {
    let report: Report =
        serde_json::from_slice(stdout).context("reading gannet-testrun's report")?;
    Ok(Measured {
        programs: report.programs,
        before: report.state_before,
        after: report.state_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tools_report() {
        let json = r#"{
          "bpf_root": "/sys/fs/bpf/x", "interface": "eth0", "reply_interface": "gannet.vxlan",
          "calls": 10, "repeat": 100, "cpu": 1,
          "state_before": {"interfaces": ["eth0", "gannet.vxlan"], "counters": {"new_flows": 30},
                           "conntrack_entries": 60, "conntrack_capacity": 262144},
          "state_after": {"interfaces": ["eth0", "gannet.vxlan"], "counters": {"new_flows": 1031},
                          "conntrack_entries": 62, "conntrack_capacity": 262144},
          "programs": [{
            "program": "gannet_nodeport", "hook": "tc",
            "client": "10.99.0.250:40000", "frontend": "10.99.0.11:30000",
            "backend": "10.244.251.2:8080", "source_at_backend": "10.244.250.0:61234",
            "clock_overhead_ns": 30.5,
            "repeat_check": {"repetitions": 1000, "last_verdict": "TC_ACT_UNSPEC", "ns_per_repetition": 40.0},
            "paths": [
              {"path": "miss", "what": "w", "verdicts": {"TC_ACT_UNSPEC": 10},
               "single_run_ns": {"p10": 60.0, "median": 70.0, "p90": 80.0},
               "repeated_ns": 39.5, "ns_per_packet": 39.5},
              {"path": "tracked", "what": "w", "verdicts": {"TC_ACT_REDIRECT": 10},
               "single_run_ns": {"p10": 100.0, "median": 110.0, "p90": 130.0},
               "repeated_ns": null, "ns_per_packet": 79.5},
              {"path": "reply", "what": "w", "interface": "eth0", "verdicts": {"XDP_PASS": 10},
               "single_run_ns": {"p10": 100.0, "median": 110.0, "p90": 130.0},
               "single_minus_overhead_ns": 79.5, "repeated_ns": 70.0, "ns_per_packet": 70.0}
            ]
          }]
        }"#;
        let measured = parse(json.as_bytes()).expect("a report");
        assert_eq!(measured.before.counters["new_flows"], 30);
        assert_eq!(measured.after.conntrack_entries, 62);
        let programs = measured.programs;
        assert_eq!(programs.len(), 1);
        let p = &programs[0];
        assert_eq!(p.ns("tracked"), Some(79.5));
        assert_eq!(p.ns("reply"), Some(70.0));
        assert_eq!(p.ns("first-packet"), None);
        assert_eq!(p.paths[2].interface, "eth0");
        assert_eq!(p.paths[1].interface, "", "older reports have no interface");
        assert!(measured.before.xdp_interfaces.is_empty());
        assert_eq!(p.variant(), Some(Variant::GannetTc));
        assert_eq!(p.repeat_check.last_verdict, "TC_ACT_UNSPEC");
        assert_eq!(
            p.summary(),
            "gannet_nodeport (tc): miss 40 ns, tracked 80 ns, reply 70 ns"
        );
    }
}
