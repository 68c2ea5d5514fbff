//! What the `cni` scenario found, as written to `results.json`, and the statistics on it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::machine::Machine;
use crate::scenario::rootns::RootCheck;
use crate::scenario::stats::{LatencyStats, percentile};

/// One of the two plugins compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Plugin {
    /// gannet-cni with its built-in IPAM.
    #[serde(rename = "gannet-cni")]
    Gannet,
    /// The reference plugins: `bridge` delegating to `host-local`.
    #[serde(rename = "bridge+host-local")]
    Reference,
}

impl Plugin {
    /// Both, in report order.
    pub const ALL: [Plugin; 2] = [Plugin::Gannet, Plugin::Reference];

    /// The name in reports and JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Plugin::Gannet => "gannet-cni",
            Plugin::Reference => "bridge+host-local",
        }
    }

    /// A short name for namespaces (2 characters, so names stay under 15 bytes).
    #[must_use]
    pub fn short(self) -> &'static str {
        match self {
            Plugin::Gannet => "cg",
            Plugin::Reference => "cr",
        }
    }
}

impl fmt::Display for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A CNI verb that is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Verb {
    /// `CNI_COMMAND=ADD`.
    #[serde(rename = "ADD")]
    Add,
    /// `CNI_COMMAND=DEL`.
    #[serde(rename = "DEL")]
    Del,
}

impl Verb {
    /// Both, in the order they run.
    pub const ALL: [Verb; 2] = [Verb::Add, Verb::Del];

    /// `CNI_COMMAND`.
    #[must_use]
    pub fn command(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// One timed invocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The pod's index.
    pub pod: usize,
    /// Wall time of the plugin process.
    pub wall_ms: f64,
    /// Its CPU time in user space (with the children it waited for).
    pub user_ms: f64,
    /// Its CPU time in the kernel (likewise).
    pub system_ms: f64,
}

/// One plugin's results for one verb at one concurrency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerbResult {
    /// Latency statistics over every pod.
    pub latency: LatencyStats,
    /// Pods per second: pods divided by `wall_seconds`.
    pub pods_per_second: f64,
    /// The sum of the wall times of this plugin's rounds (each from the first invocation's start
    /// until the last one's end), i.e. the time it took for all pods, without the other plugin's
    /// rounds in between.
    pub wall_seconds: f64,
    /// Mean CPU time per invocation in user space, in milliseconds.
    pub cpu_user_ms_mean: f64,
    /// Mean CPU time per invocation in the kernel, in milliseconds. (With tick-based CPU
    /// accounting the kernel splits a process's CPU time between user and kernel by sampling, so
    /// for processes this short only the sum is exact.)
    pub cpu_system_ms_mean: f64,
    /// Median latency of the first tenth of the pods (an emptier node).
    pub first_tenth_p50_ms: f64,
    /// Median latency of the last tenth of the pods (a fuller node).
    pub last_tenth_p50_ms: f64,
    /// Every invocation's wall time in milliseconds, by pod index.
    pub samples_ms: Vec<f64>,
    /// Every invocation's CPU time (user + kernel) in milliseconds, by pod index.
    pub cpu_ms: Vec<f64>,
}

impl VerbResult {
    /// The result of `samples` (in any order) measured in rounds that took `wall_seconds` in all;
    /// `None` if there are no samples.
    #[must_use]
    pub fn new(mut samples: Vec<Sample>, wall_seconds: f64) -> Option<VerbResult> {
        samples.sort_by_key(|s| s.pod);
        let wall: Vec<f64> = samples.iter().map(|s| s.wall_ms).collect();
        let latency = LatencyStats::from_samples(&wall)?;
        let n = samples.len() as f64;
        let tenth = wall.len().div_ceil(10);
        Some(VerbResult {
            first_tenth_p50_ms: percentile(&wall[..tenth], 50.0)?,
            last_tenth_p50_ms: percentile(&wall[wall.len() - tenth..], 50.0)?,
            pods_per_second: if wall_seconds > 0.0 {
                n / wall_seconds
            } else {
                0.0
            },
            wall_seconds,
            cpu_user_ms_mean: samples.iter().map(|s| s.user_ms).sum::<f64>() / n,
            cpu_system_ms_mean: samples.iter().map(|s| s.system_ms).sum::<f64>() / n,
            cpu_ms: samples.iter().map(|s| s.user_ms + s.system_ms).collect(),
            samples_ms: wall,
            latency,
        })
    }
}

/// Everything measured at one concurrency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseResult {
    /// Invocations of one plugin running at the same time (1: sequential).
    pub concurrency: usize,
    /// Pods per round (per plugin).
    pub pods_per_round: usize,
    /// The plugin order of every round, per verb.
    pub order: BTreeMap<Verb, Vec<Vec<Plugin>>>,
    /// By plugin, then by verb.
    pub results: BTreeMap<Plugin, BTreeMap<Verb, VerbResult>>,
}

impl PhaseResult {
    /// The result of `plugin` for `verb`, if measured.
    #[must_use]
    pub fn get(&self, plugin: Plugin, verb: Verb) -> Option<&VerbResult> {
        self.results.get(&plugin)?.get(&verb)
    }
}

/// A plugin as it was run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginInfo {
    /// Which.
    pub plugin: Plugin,
    /// The executable (and for the reference, where `host-local` comes from: `CNI_PATH`).
    pub binary: String,
    /// Its version (the Debian package's for the reference plugins, the commit for gannet-cni).
    pub version: String,
    /// The network configuration it got on stdin (with the run's temporary `dataDir`).
    pub config: serde_json::Value,
}

/// How the run was configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// `--quick` was given.
    pub quick: bool,
    /// Pods per plugin.
    pub pods: usize,
    /// Pods per round and plugin at concurrency 1 (× concurrency at higher concurrency).
    pub round_size: usize,
    /// The concurrencies measured (1 = sequential).
    pub concurrency: Vec<usize>,
    /// Seed of the random plugin order of the rounds.
    pub seed: u64,
    /// `cniVersion` of both configurations.
    pub cni_version: &'static str,
    /// `CNI_IFNAME`.
    pub ifname: &'static str,
    /// Uncounted ADD+DEL pairs per plugin before measuring.
    pub warmup_pods: usize,
}

/// The whole `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    /// The scenario: `cni`.
    pub scenario: &'static str,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// How long the run took.
    pub wall_seconds: f64,
    /// The configuration.
    pub settings: Settings,
    /// The machine it ran on.
    pub machine: Machine,
    /// The plugins as run.
    pub plugins: Vec<PluginInfo>,
    /// One entry per concurrency.
    pub phases: Vec<PhaseResult>,
    /// The check that nothing appeared in the root network namespace.
    pub root_namespace: RootCheck,
    /// Anything odd seen during the run.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_rates() {
        let samples: Vec<Sample> = [(2, 3.0), (0, 1.0), (1, 2.0), (3, 10.0)]
            .into_iter()
            .map(|(pod, wall_ms)| Sample {
                pod,
                wall_ms,
                user_ms: 0.5,
                system_ms: 1.0,
            })
            .collect();
        let result = VerbResult::new(samples, 0.5).expect("samples");
        assert_eq!(result.samples_ms, [1.0, 2.0, 3.0, 10.0], "sorted by pod");
        assert_eq!(result.cpu_ms, [1.5; 4]);
        assert_eq!(result.latency.count, 4);
        assert_eq!(result.latency.min_ms, 1.0);
        assert_eq!(result.latency.p50_ms, 2.0);
        assert_eq!(result.latency.p99_ms, 10.0);
        assert_eq!(result.latency.max_ms, 10.0);
        assert_eq!(result.latency.mean_ms, 4.0);
        assert_eq!(result.pods_per_second, 8.0);
        assert_eq!(result.cpu_user_ms_mean, 0.5);
        // A tenth of 4 pods rounds up to one: the first and the last pod.
        assert_eq!(result.first_tenth_p50_ms, 1.0);
        assert_eq!(result.last_tenth_p50_ms, 10.0);
        assert_eq!(VerbResult::new(Vec::new(), 1.0), None);
        // 20 pods, latency growing with the pod index: the first two and the last two.
        let growing: Vec<Sample> = (0..20)
            .map(|pod| Sample {
                pod,
                wall_ms: 1.0 + pod as f64,
                user_ms: 0.0,
                system_ms: 0.0,
            })
            .collect();
        let result = VerbResult::new(growing, 1.0).expect("samples");
        assert_eq!(result.first_tenth_p50_ms, 1.0);
        assert_eq!(result.last_tenth_p50_ms, 19.0);
    }

    #[test]
    fn names_serialize_as_shown() {
        let mut map = BTreeMap::new();
        map.insert(Plugin::Reference, Verb::Del);
        map.insert(Plugin::Gannet, Verb::Add);
        assert_eq!(
            serde_json::to_string(&map).expect("json"),
            r#"{"gannet-cni":"ADD","bridge+host-local":"DEL"}"#
        );
    }
}
