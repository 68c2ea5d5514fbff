//! The `overlay` scenario: pod to pod across two nodes, and through a `ClusterIP` whose endpoint
//! is the pod on the other node, side by side in one run: the underlay itself (the limit), a
//! Flannel-style vxlan setup with the reference CNI plugins (the peer), and gannet's overlay modes.
//!
//! Every variant gets a two-node cluster of its own (see [`cluster`]); after a connectivity check
//! of every path, rounds follow in which every variant, in a random order, measures rr, crr and
//! stream on each of its paths with the `clusterip` scenario's peer. Medians, ratios to the
//! underlay in the same run.

pub mod cli;
pub mod cluster;
pub mod report;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::clusterip::run_client;
use crate::peer::{ClientOptions, Metric, Sample, Traffic};
use crate::results::MetricResult;
use crate::util::{Rng, check_interrupted, note};
use cluster::{Built, Cluster};

/// The pod network (gannet-control's `--cluster-cidr`, Flannel's network).
pub const CLUSTER_CIDR: &str = crate::services::CLUSTER_CIDR;
/// The service network: not Kubernetes' default 10.96.0.0/12, which holds the testkit's
/// underlay (10.99.0.0/24), and kube-proxy drops traffic to unallocated addresses of it (the
/// nodes' VXLAN packets among them). The cluster IP 10.96.0.10 is in both.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Connections of the connectivity check of every path.
const CHECK_CONNECTIONS: u64 = 30;

/// One way of connecting the two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Node A's namespace to node B's over the underlay: the limit.
    Underlay,
    /// Pods wired as gannet-cni wires them, routed as host-gw routes them, with nothing else: no
    /// netfilter rules, no eBPF. What a veth per pod and forwarding in both nodes cost.
    Routed,
    /// Flannel's vxlan backend with the reference `bridge` + `host-local` plugins.
    Flannel,
    /// gannetd `--overlay vxlan`.
    Vxlan,
    /// gannetd `--overlay host-gw`.
    HostGw,
    /// gannetd `--overlay ebpf`.
    Ebpf,
}

impl Variant {
    /// Every variant, in report order.
    pub const ALL: [Variant; 6] = [
        Variant::Underlay,
        Variant::Routed,
        Variant::Flannel,
        Variant::Vxlan,
        Variant::HostGw,
        Variant::Ebpf,
    ];

    /// The name in reports and JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Variant::Underlay => "underlay",
            Variant::Routed => "routed",
            Variant::Flannel => "flannel",
            Variant::Vxlan => "vxlan",
            Variant::HostGw => "host-gw",
            Variant::Ebpf => "ebpf",
        }
    }

    /// gannetd's `--overlay` for a gannet variant.
    #[must_use]
    pub fn gannet_mode(self) -> Option<&'static str> {
        match self {
            Variant::Underlay | Variant::Routed | Variant::Flannel => None,
            Variant::Vxlan => Some("vxlan"),
            Variant::HostGw => Some("host-gw"),
            Variant::Ebpf => Some("ebpf"),
        }
    }

    /// A short name for namespaces (2 characters).
    #[must_use]
    pub fn short(self) -> &'static str {
        match self {
            Variant::Underlay => "ul",
            Variant::Routed => "rt",
            Variant::Flannel => "fl",
            Variant::Vxlan => "vx",
            Variant::HostGw => "hg",
            Variant::Ebpf => "eb",
        }
    }
}

impl Variant {
    /// The paths it is measured on: the two references have no service.
    #[must_use]
    pub fn targets(self) -> &'static [Target] {
        match self {
            Variant::Underlay | Variant::Routed => &[Target::Pod],
            _ => &Target::ALL,
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The server pod's address (node B's for the underlay).
    Pod,
    /// The service's cluster IP, whose one endpoint is the server pod.
    ClusterIp,
}

impl Target {
    /// Both, in report order.
    pub const ALL: [Target; 2] = [Target::Pod, Target::ClusterIp];

    /// How the tables say it.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Target::Pod => "pod to pod",
            Target::ClusterIp => "via ClusterIP",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The binaries and plugins the scenario runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub gannetd: PathBuf,
    pub gannet_control: PathBuf,
    pub gannetctl: PathBuf,
    pub gannet_cni: PathBuf,
    /// The traffic peer.
    pub peer: PathBuf,
    /// The directory with the reference `bridge` and `host-local` plugins.
    pub reference_dir: PathBuf,
}

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--quick` (only recorded).
    pub quick: bool,
    /// Rounds (of every variant, path and metric), their length, order and CPU.
    pub traffic: Traffic,
}

/// How the run was configured, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub seed: u64,
    /// Threads of every peer (client and server).
    pub peer_threads: usize,
    /// The CPU client and server were pinned to, if any.
    pub peer_cpu: Option<usize>,
    pub underlay_mtu: u32,
    pub cluster_cidr: &'static str,
    pub service_cidr: &'static str,
    pub flannel_vni: u32,
    pub flannel_port: u16,
    pub flannel_mtu: u32,
}

impl Config {
    /// The settings as recorded in the results.
    #[must_use]
    pub fn settings(&self) -> Settings {
        Settings {
            quick: self.quick,
            rounds: self.traffic.rounds,
            seconds: self.traffic.duration.as_secs_f64(),
            warmup_seconds: self.traffic.warmup.as_secs_f64(),
            seed: self.traffic.seed,
            peer_threads: 1,
            peer_cpu: self.traffic.peer_cpu,
            underlay_mtu: gannet_testkit::cluster::UNDERLAY_MTU,
            cluster_cidr: CLUSTER_CIDR,
            service_cidr: SERVICE_CIDR,
            flannel_vni: cluster::FLANNEL_VNI,
            flannel_port: cluster::FLANNEL_PORT,
            flannel_mtu: cluster::FLANNEL_MTU,
        }
    }

    /// Measurements if every variant runs (for the progress bar; a skipped one takes it down).
    #[must_use]
    pub fn measurements(&self) -> u64 {
        let paths: usize = Variant::ALL.iter().map(|v| v.targets().len()).sum();
        (self.traffic.rounds * paths * Metric::ALL.len()) as u64
    }
}

/// One variant's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantResult {
    pub variant: Variant,
    /// Why it was not measured (gannetd refused the mode), if it was not.
    pub skipped: Option<String>,
    /// Building its cluster: namespaces, devices, agents, pods, service, server.
    pub setup_seconds: f64,
    pub client_ip: Option<String>,
    pub server_ip: Option<String>,
    pub cluster_ip: Option<String>,
    /// The MTU of the client's interface (the pod's `eth0`, node A's `eth0` for the underlay).
    pub client_mtu: Option<u32>,
    /// By path, then metric; `ratio_to_direct` is the ratio to the underlay's median.
    pub results: BTreeMap<Target, BTreeMap<Metric, MetricResult>>,
}

impl VariantResult {
    /// The result of `metric` on `target`, if measured.
    #[must_use]
    pub fn get(&self, target: Target, metric: Metric) -> Option<&MetricResult> {
        self.results.get(&target)?.get(&metric)
    }

    fn skipped(variant: Variant, reason: String) -> VariantResult {
        VariantResult {
            variant,
            skipped: Some(reason),
            setup_seconds: 0.0,
            client_ip: None,
            server_ip: None,
            cluster_ip: None,
            client_mtu: None,
            results: BTreeMap::new(),
        }
    }
}

/// What the run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// Every variant, in report order.
    pub variants: Vec<VariantResult>,
    /// The order the variants were measured in, per round.
    pub order: Vec<Vec<Variant>>,
}

/// Fills in every result's ratio to the underlay's median of the same metric.
pub fn compute_ratios(variants: &mut [VariantResult]) {
    let underlay: BTreeMap<Metric, f64> = variants
        .iter()
        .find(|v| v.variant == Variant::Underlay)
        .and_then(|v| v.results.get(&Target::Pod))
        .map(|m| m.iter().map(|(metric, r)| (*metric, r.median)).collect())
        .unwrap_or_default();
    for variant in variants {
        for metrics in variant.results.values_mut() {
            for (metric, result) in metrics.iter_mut() {
                result.ratio_to_direct = underlay
                    .get(metric)
                    .filter(|u| **u > 0.0)
                    .map(|u| result.median / u);
            }
        }
    }
}

fn sample(
    cluster: &Cluster,
    tools: &Tools,
    config: &Config,
    options: &ClientOptions,
    in_cgroup: bool,
) -> anyhow::Result<Sample> {
    run_client(
        &tools.peer,
        cluster.client_netns(),
        cluster.client_cgroup().filter(|_| in_cgroup),
        options,
        config.traffic.peer_cpu,
    )
}

/// Checks every path of `cluster`: `CHECK_CONNECTIONS` connections, all answered; for gannet,
/// also that the cluster IP leads nowhere from outside gannetd's cgroup.
fn check(cluster: &Cluster, tools: &Tools, config: &Config) -> anyhow::Result<()> {
    for target in cluster.targets() {
        let addr = cluster.target(target).context("no address")?;
        let options = ClientOptions {
            metric: Metric::Crr,
            addrs: vec![addr],
            duration: Duration::from_secs(20),
            warmup: Duration::ZERO,
            max_operations: Some(CHECK_CONNECTIONS),
        };
        let result = sample(cluster, tools, config, &options, true)?;
        ensure!(
            result.operations == CHECK_CONNECTIONS && result.error_count() == 0,
            "connectivity check of {} {target}: {} of {CHECK_CONNECTIONS} connections to {addr} \
             succeeded, failures {:?}",
            cluster.variant,
            result.operations,
            result.errors
        );
        if target == Target::ClusterIp && cluster.socket_lb() {
            let options = ClientOptions {
                max_operations: Some(1),
                duration: Duration::from_secs(5),
                ..options
            };
            let outside = sample(cluster, tools, config, &options, false)?;
            ensure!(
                outside.operations == 0,
                "{}: a client outside gannetd's cgroup reached cluster IP {addr}: the \
                 measurement would not be gannet's",
                cluster.variant
            );
        }
    }
    Ok(())
}

/// Runs the scenario.
///
/// # Errors
/// If building a cluster (other than gannetd refusing `--overlay ebpf`), a check or a
/// measurement fails, or the run is interrupted; everything created is removed either way.
pub fn run(
    config: &Config,
    tools: &Tools,
    progress: &ProgressBar,
    scratch: &Path,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Measured> {
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut variants: Vec<VariantResult> = Vec::new();
    for variant in Variant::ALL {
        check_interrupted()?;
        progress.set_message(format!("building the {variant} cluster"));
        match cluster::build(variant, tools, config.traffic.peer_cpu, scratch)
            .with_context(|| format!("building the {variant} cluster"))?
        {
            Built::Ready(cluster) => {
                note(
                    progress,
                    format!(
                        "{variant}: ready in {:.1} s, client {} → server {} (MTU {}){}",
                        cluster.setup_seconds,
                        cluster.client_ip,
                        cluster.server_ip,
                        cluster.client_mtu,
                        cluster
                            .cluster_ip
                            .map(|ip| format!(", cluster IP {ip}"))
                            .unwrap_or_default()
                    ),
                );
                clusters.push(*cluster);
            }
            Built::Skipped(reason) => {
                note(progress, format!("{variant}: skipped: {reason}"));
                warnings.push(format!("{variant} skipped: {reason}"));
                let paths = variant.targets().len() * Metric::ALL.len() * config.traffic.rounds;
                progress.set_length(progress.length().unwrap_or(0).saturating_sub(paths as u64));
                variants.push(VariantResult::skipped(variant, reason));
            }
        }
    }
    for cluster in &clusters {
        check_interrupted()?;
        progress.set_message(format!("checking {}", cluster.variant));
        check(cluster, tools, config)?;
    }

    let mut rng = Rng::new(config.traffic.seed);
    let mut samples: BTreeMap<(Variant, Target), BTreeMap<Metric, Vec<f64>>> = BTreeMap::new();
    let mut order = Vec::with_capacity(config.traffic.rounds);
    for round in 0..config.traffic.rounds {
        let mut indices: Vec<usize> = (0..clusters.len()).collect();
        rng.shuffle(&mut indices);
        order.push(indices.iter().map(|&i| clusters[i].variant).collect());
        for &index in &indices {
            let cluster = &clusters[index];
            for target in cluster.targets() {
                for metric in Metric::ALL {
                    check_interrupted()?;
                    progress.set_message(format!(
                        "round {}/{}: {} {target} {metric}",
                        round + 1,
                        config.traffic.rounds,
                        cluster.variant
                    ));
                    let options = ClientOptions {
                        metric,
                        addrs: vec![cluster.target(target).context("no address")?],
                        duration: config.traffic.duration,
                        warmup: config.traffic.warmup,
                        max_operations: None,
                    };
                    let result = sample(cluster, tools, config, &options, true)
                        .with_context(|| format!("{} {target} {metric}", cluster.variant))?;
                    ensure!(
                        result.value > 0.0,
                        "{} {target} {metric} measured nothing: {result:?}",
                        cluster.variant
                    );
                    if result.error_count() > 0 {
                        warnings.push(format!(
                            "{} {target} {metric}, round {}: {} failed operations {:?}",
                            cluster.variant,
                            round + 1,
                            result.error_count(),
                            result.errors
                        ));
                    }
                    samples
                        .entry((cluster.variant, target))
                        .or_default()
                        .entry(metric)
                        .or_default()
                        .push(result.value);
                    progress.inc(1);
                }
            }
        }
    }

    for cluster in &clusters {
        let mut results = BTreeMap::new();
        for target in cluster.targets() {
            let metrics: BTreeMap<Metric, MetricResult> = samples
                .remove(&(cluster.variant, target))
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(m, values)| MetricResult::from_samples(m, values).map(|r| (m, r)))
                .collect();
            results.insert(target, metrics);
        }
        variants.push(VariantResult {
            variant: cluster.variant,
            skipped: None,
            setup_seconds: cluster.setup_seconds,
            client_ip: Some(cluster.client_ip.to_string()),
            server_ip: Some(cluster.server_ip.to_string()),
            cluster_ip: cluster.cluster_ip.map(|ip| ip.to_string()),
            client_mtu: Some(cluster.client_mtu),
            results,
        });
    }
    variants.sort_by_key(|v| v.variant);
    compute_ratios(&mut variants);
    progress.set_message("removing the clusters");
    // Servers, pods, agents (`gannetd cleanup` in their node), control planes, namespaces.
    drop(clusters);
    Ok(Measured { variants, order })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(variant: Variant, target: Target, values: [f64; 3]) -> VariantResult {
        let mut v = VariantResult::skipped(variant, String::new());
        v.skipped = None;
        v.results.insert(
            target,
            Metric::ALL
                .into_iter()
                .zip(values)
                .filter_map(|(m, value)| MetricResult::from_samples(m, vec![value]).map(|r| (m, r)))
                .collect(),
        );
        v
    }

    #[test]
    fn ratios_are_to_the_underlay() {
        let mut variants = vec![
            result(Variant::Underlay, Target::Pod, [40_000.0, 10_000.0, 20.0]),
            result(
                Variant::Flannel,
                Target::ClusterIp,
                [20_000.0, 5_000.0, 10.0],
            ),
        ];
        compute_ratios(&mut variants);
        let flannel = &variants[1];
        assert_eq!(
            flannel
                .get(Target::ClusterIp, Metric::Rr)
                .and_then(|r| r.ratio_to_direct),
            Some(0.5)
        );
        assert_eq!(
            variants[0]
                .get(Target::Pod, Metric::Stream)
                .and_then(|r| r.ratio_to_direct),
            Some(1.0)
        );
    }

    #[test]
    fn every_path_is_counted_for_the_progress_bar() {
        let config = Config {
            quick: true,
            traffic: crate::peer::Traffic {
                rounds: 2,
                duration: Duration::from_millis(500),
                warmup: Duration::from_millis(100),
                seed: 1,
                peer_cpu: None,
            },
        };
        // Underlay, routed: 1 path each; flannel, vxlan, host-gw, ebpf: 2 each; 3 metrics;
        // 2 rounds.
        assert_eq!(config.measurements(), 2 * 10 * 3);
    }
}
