//! What a benchmark run found, as written to `results.json`, and the statistics on it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::control::report::PeerLoad;
use crate::machine::Machine;
use crate::peer::Metric;
use crate::scenario::rootns::RootCheck;
use crate::scenario::stats::{LatencyStats, median};

/// One way of getting from the client pod to a backend pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Variant {
    /// (a) The client connects straight to the backend pod's address: the limit.
    #[serde(rename = "direct")]
    Direct,
    /// (b) The client, in gannetd's cgroup, connects to the cluster IP.
    #[serde(rename = "gannet")]
    Gannet,
    /// (e) gannetd's nftables data plane (`--dataplane nftables`) in the node namespace; the
    /// client connects to the cluster IP.
    #[serde(rename = "gannet-nft")]
    GannetNft,
    /// (c) kube-proxy's nftables rules in the node namespace.
    #[serde(rename = "kube-proxy-nft")]
    KubeProxyNft,
    /// (d) kube-proxy's iptables rules in the node namespace.
    #[serde(rename = "kube-proxy-iptables")]
    KubeProxyIptables,
}

impl Variant {
    /// Every variant, in report order.
    pub const ALL: [Variant; 5] = [
        Variant::Direct,
        Variant::Gannet,
        Variant::GannetNft,
        Variant::KubeProxyNft,
        Variant::KubeProxyIptables,
    ];

    /// The name in reports and JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Gannet => "gannet",
            Variant::GannetNft => "gannet-nft",
            Variant::KubeProxyNft => "kube-proxy-nft",
            Variant::KubeProxyIptables => "kube-proxy-iptables",
        }
    }

    /// The letter the task description gives it (gannet-nft came later: e).
    #[must_use]
    pub fn letter(self) -> char {
        match self {
            Variant::Direct => 'a',
            Variant::Gannet => 'b',
            Variant::GannetNft => 'e',
            Variant::KubeProxyNft => 'c',
            Variant::KubeProxyIptables => 'd',
        }
    }

    /// A short name for namespaces (at most 3 characters, so names stay under 15 bytes).
    #[must_use]
    pub fn short(self) -> &'static str {
        match self {
            Variant::Direct => "dir",
            Variant::Gannet => "gan",
            Variant::GannetNft => "gnf",
            Variant::KubeProxyNft => "nft",
            Variant::KubeProxyIptables => "ipt",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metric of one variant at one number of services.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricResult {
    /// The unit of the values.
    pub unit: &'static str,
    /// Every measurement, in the order taken.
    pub samples: Vec<f64>,
    /// Their median: the reported value.
    pub median: f64,
    /// (max − min) / median: how noisy the samples were.
    pub spread: f64,
    /// The median divided by direct's median at the same number of services.
    pub ratio_to_direct: Option<f64>,
}

impl MetricResult {
    /// The result of `samples` (none if there are no samples).
    #[must_use]
    pub fn from_samples(metric: Metric, samples: Vec<f64>) -> Option<MetricResult> {
        let median = median(&samples)?;
        let max = samples.iter().copied().fold(f64::MIN, f64::max);
        let min = samples.iter().copied().fold(f64::MAX, f64::min);
        Some(MetricResult {
            unit: metric.unit(),
            spread: if median > 0.0 {
                (max - min) / median
            } else {
                0.0
            },
            samples,
            median,
            ratio_to_direct: None,
        })
    }
}

/// How long one load command took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LoadTime {
    /// Wall-clock time.
    pub seconds: f64,
    /// CPU time the command spent in user space.
    pub user_seconds: f64,
    /// CPU time the command spent in the kernel.
    pub system_seconds: f64,
}

/// How long programming the services took, per mechanism.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadTimes {
    /// From writing the manifest file until gannetd logged that it programmed every service
    /// (includes its manifest scan interval and YAML parsing).
    pub gannetd_sync_seconds: f64,
    /// The same for the gannet-nft path's gannetd (`--dataplane nftables`): until it logged that
    /// the services' elements were in its table.
    pub gannetd_nft_sync_seconds: f64,
    /// `nft -f` of kube-proxy's nftables rules into an empty node namespace.
    pub nft: LoadTime,
    /// `iptables-restore --noflush` of kube-proxy's iptables rules into an empty node namespace.
    pub iptables_restore: LoadTime,
    /// Size of the manifest file, in bytes.
    pub manifest_bytes: usize,
    /// Size of the nftables input, in bytes.
    pub nft_rules_bytes: usize,
    /// Size of the iptables-restore input, in bytes.
    pub iptables_rules_bytes: usize,
}

/// Everything measured at one number of services.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// Services programmed.
    pub services: usize,
    /// Rule and map load times.
    pub load: LoadTimes,
    /// The order the variants were measured in, per round.
    pub order: Vec<Vec<Variant>>,
    /// By variant, then by metric name.
    pub results: BTreeMap<Variant, BTreeMap<Metric, MetricResult>>,
    /// How the crr connectivity check spread connections over the backends, per variant.
    pub backend_spread: BTreeMap<Variant, BTreeMap<String, u64>>,
}

impl RunResult {
    /// The result of `variant` for `metric`, if measured.
    #[must_use]
    pub fn get(&self, variant: Variant, metric: Metric) -> Option<&MetricResult> {
        self.results.get(&variant)?.get(&metric)
    }

    /// Fills in every `ratio_to_direct` from direct's medians.
    pub fn compute_ratios(&mut self) {
        let direct: BTreeMap<Metric, f64> = self
            .results
            .get(&Variant::Direct)
            .map(|metrics| metrics.iter().map(|(m, r)| (*m, r.median)).collect())
            .unwrap_or_default();
        for metrics in self.results.values_mut() {
            for (metric, result) in metrics.iter_mut() {
                result.ratio_to_direct = direct
                    .get(metric)
                    .filter(|d| **d > 0.0)
                    .map(|d| result.median / d);
            }
        }
    }
}

/// How the run was configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// `--quick` was given.
    pub quick: bool,
    /// The numbers of services measured.
    pub service_counts: Vec<usize>,
    /// Measurements of every variant and metric per number of services.
    pub rounds: usize,
    /// Length of one measurement.
    pub seconds: f64,
    /// Uncounted traffic before each rr and crr measurement.
    pub warmup_seconds: f64,
    /// Seed of the random measurement order.
    pub seed: u64,
    /// Endpoints of every service.
    pub endpoints_per_service: usize,
    /// Which service is measured.
    pub measured_service: &'static str,
    /// Threads of every peer (client and server).
    pub peer_threads: usize,
    /// The CPU every peer was pinned to (client and servers share it), if any.
    pub peer_cpu: Option<usize>,
    /// gannetd's manifest scan interval.
    pub gannetd_sync_interval_ms: u64,
    /// The programming measurement, if run.
    pub programming: Option<ProgrammingSettings>,
}

/// How the programming measurement was configured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgrammingSettings {
    /// Services programmed.
    pub services: usize,
    /// Endpoints of every service.
    pub endpoints_per_service: usize,
    /// Endpoint changes timed.
    pub changes: usize,
    /// How long `nft -f` of kube-proxy's rules may take before it is killed.
    pub timeout_seconds: f64,
    /// The manifest scan interval of this measurement's gannetd.
    pub gannetd_sync_interval_ms: u64,
}

/// N services × E endpoints programmed by gannet-nft and by `nft -f` of kube-proxy's rules, each
/// into an empty node namespace, then endpoint changes through gannet-nft.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Programming {
    /// Services programmed.
    pub services: usize,
    /// Endpoints of every service.
    pub endpoints_per_service: usize,
    /// Size of the manifest files, in bytes.
    pub manifest_bytes: usize,
    /// From writing the manifest files until gannetd logged every service programmed.
    pub gannet_nft_seconds: f64,
    /// A fresh gannetd watching gannet-control, which held the services: from its start until
    /// it logged every service programmed (if the control-plane changes ran).
    pub control_sync_seconds: Option<f64>,
    /// What gannetd's table held afterwards (checked to be every service and endpoint).
    pub table: TableCounts,
    /// `nft -f` of kube-proxy's rules for the same services.
    pub kube_proxy_nft: PeerLoad,
    /// Every endpoint change through the manifest directory, in order.
    pub changes: Vec<ChangeSample>,
    /// Their latencies.
    pub change_latency: Option<ChangeLatency>,
    /// Every endpoint change through gannet-control (the gRPC Apply), in order.
    pub control_changes: Vec<ChangeSample>,
    /// Their latencies.
    pub control_change_latency: Option<ChangeLatency>,
}

impl Programming {
    /// How many times faster gannet-nft programmed the services than `nft -f`, and whether that
    /// is a lower bound (`nft -f` was killed).
    #[must_use]
    pub fn speedup(&self) -> Option<(f64, bool)> {
        let (nft, lower_bound) = self.kube_proxy_nft.seconds()?;
        (self.gannet_nft_seconds > 0.0).then(|| (nft / self.gannet_nft_seconds, lower_bound))
    }
}

/// Elements of gannet's table after the full programming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TableCounts {
    /// Frontends in the `services4` verdict map.
    pub services: usize,
    /// Elements of the last slot's address map (`slot<E-1>-addr4`): every service has a
    /// backend there.
    pub last_slot_addresses: usize,
}

/// One endpoint change: one address of one service's `EndpointSlice` replaced by a fresh one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeSample {
    /// The service, `namespace/name`.
    pub service: String,
    /// The address replaced.
    pub old: Ipv4Addr,
    /// The fresh address put in its place.
    pub new: Ipv4Addr,
    /// The slot map that received the new address.
    pub slot: usize,
    /// The change made (the slice's file renamed into the manifest directory, or the gRPC
    /// Apply called) → the new element reported by `nft monitor` in the node namespace: the
    /// change is in the table.
    pub table_ms: f64,
    /// → gannetd logged that it reads the file (its scan noticed it; manifest directory).
    pub noticed_ms: Option<f64>,
    /// → the gRPC Apply call returned (gannet-control).
    pub call_ms: Option<f64>,
    /// → gannetd's `services synced` line (one frontend updated).
    pub logged_ms: f64,
}

/// Latency statistics of the endpoint changes (nearest-rank percentiles).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeLatency {
    /// Change made → element in the table.
    pub table: LatencyStats,
    /// File renamed → gannetd reads it (the scan interval's share; manifest directory).
    pub noticed: Option<LatencyStats>,
    /// gannetd reads the file → element in the table (gannetd's and nft's work).
    pub after_noticed: Option<LatencyStats>,
    /// The gRPC Apply call alone (gannet-control).
    pub call: Option<LatencyStats>,
    /// Change made → `services synced` logged.
    pub logged: LatencyStats,
}

impl ChangeLatency {
    /// The statistics of `changes`; `None` if there are none.
    #[must_use]
    pub fn of(changes: &[ChangeSample]) -> Option<ChangeLatency> {
        let table: Vec<f64> = changes.iter().map(|c| c.table_ms).collect();
        let noticed: Vec<f64> = changes.iter().filter_map(|c| c.noticed_ms).collect();
        let after: Vec<f64> = changes
            .iter()
            .filter_map(|c| c.noticed_ms.map(|n| c.table_ms - n))
            .collect();
        let calls: Vec<f64> = changes.iter().filter_map(|c| c.call_ms).collect();
        let logged: Vec<f64> = changes.iter().map(|c| c.logged_ms).collect();
        let all = |v: &[f64]| {
            (v.len() == changes.len())
                .then(|| LatencyStats::from_samples(v))
                .flatten()
        };
        Some(ChangeLatency {
            table: LatencyStats::from_samples(&table)?,
            noticed: all(&noticed),
            after_noticed: all(&after),
            call: all(&calls),
            logged: LatencyStats::from_samples(&logged)?,
        })
    }
}

/// The whole `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    /// The scenario: `clusterip`.
    pub scenario: &'static str,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// How long the run took.
    pub wall_seconds: f64,
    /// The configuration.
    pub settings: Settings,
    /// The machine it ran on.
    pub machine: Machine,
    /// One entry per number of services.
    pub runs: Vec<RunResult>,
    /// N services × E endpoints and endpoint changes (gannet-nft and `nft -f`), if run.
    pub programming: Option<Programming>,
    /// The root network namespace before and after the run.
    pub root_namespace: RootCheck,
    /// Anything odd seen during the run (failed connections, one-sided backend spread).
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_to_direct_at_the_same_size() {
        let mut run = RunResult {
            services: 10,
            load: LoadTimes::default(),
            order: Vec::new(),
            results: BTreeMap::new(),
            backend_spread: BTreeMap::new(),
        };
        for (variant, value) in [(Variant::Direct, 200.0), (Variant::Gannet, 190.0)] {
            let result =
                MetricResult::from_samples(Metric::Rr, vec![value, value + 10.0, value - 10.0])
                    .expect("samples");
            run.results
                .entry(variant)
                .or_default()
                .insert(Metric::Rr, result);
        }
        run.compute_ratios();
        let gannet = run.get(Variant::Gannet, Metric::Rr).expect("gannet rr");
        assert_eq!(gannet.ratio_to_direct, Some(0.95));
        assert!((gannet.spread - 20.0 / 190.0).abs() < 1e-12);
        assert_eq!(
            run.get(Variant::Direct, Metric::Rr)
                .and_then(|r| r.ratio_to_direct),
            Some(1.0)
        );
    }
}
