//! The `nodeport` scenario: traffic from outside the cluster to `NodeIP:nodePort`, balanced to a
//! backend on another node, side by side in one run for several numbers of services: gannet's
//! `gannet_nodeport` tc program, the same with its XDP front `gannet_nodeport_xdp`
//! (`--nodeport-acceleration xdp`), gannetd's nftables data plane (`--dataplane nftables`, its
//! table `inet gannet-services` in node A), and the same services as kube-proxy's nftables and
//! iptables modes program them.
//!
//! For every number of services N, every variant gets a cluster of its own ([`cluster`]: two
//! nodes and an external client on an underlay bridge, gannetd's overlay between the nodes, the
//! server pod on node B). The N services are programmed (and timed): written as manifests for
//! gannetd on node A (eBPF or nftables), or loaded with `nft -f` / `iptables-restore` into node
//! A. After a
//! connectivity check of every variant, the per-packet cost of the NodePort programs is measured
//! on gannet's node A ([`packet`]: `gannet-testrun`, `BPF_PROG_TEST_RUN` against gannetd's maps),
//! then rounds follow in which the variants, in a random order, measure rr, crr and stream from
//! the external client with the `clusterip` scenario's peer.
//!
//! The backend is behind the overlay, so the XDP front never sends a packet itself here: it
//! looks every packet up, finds that it leaves through the overlay device (not the interface it
//! came in on) and passes it to tc untouched, which then does the work as in `gannet-tc`. The
//! `gannet-xdp` variant therefore measures what the XDP front costs where it cannot help (its
//! lookups, and native XDP on a veth: the peer can no longer pass segmentation-offloaded
//! packets), not what it saves where it can; its per-packet `reply` path (a reply arriving on
//! the external interface and sent back out of it) shows the latter.

pub mod cli;
pub mod cluster;
pub mod packet;
pub mod report;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::clusterip::run_client;
use crate::peer::{ClientOptions, Metric, Traffic};
use crate::results::{LoadTime, MetricResult};
use crate::util::{Rng, check_interrupted, note};
use cluster::Cluster;
use packet::ProgramCost;

/// The packet programs whose per-packet cost is measured, one row each, each in the node A of
/// the variant that runs it (`gannet-testrun` runs tc and XDP programs alike). In `gannet-xdp`
/// every packet meets the XDP program first and then, passed, the tc program.
pub const PACKET_PROGRAMS: &[PacketProgram] = &[
    PacketProgram {
        hook: "tc",
        name: "gannet_nodeport",
        variant: Variant::GannetTc,
    },
    PacketProgram {
        hook: "xdp",
        name: "gannet_nodeport_xdp",
        variant: Variant::GannetXdp,
    },
];

/// A program of the pod object measured with `gannet-testrun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketProgram {
    /// Where it runs: `tc` or `xdp`.
    pub hook: &'static str,
    /// Its name in the object.
    pub name: &'static str,
    /// The variant whose node A it is measured in.
    pub variant: Variant,
}

/// Connections of the connectivity check of every variant.
const CHECK_CONNECTIONS: u64 = 30;

/// One way of serving the node port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// gannetd's `gannet_nodeport` on node A's underlay interface (tc).
    GannetTc,
    /// The same with `--nodeport-acceleration xdp`: `gannet_nodeport_xdp` in front of it.
    GannetXdp,
    /// gannetd's nftables data plane on node A (`--dataplane nftables`): its table
    /// `inet gannet-services` translates the first packet of a connection, conntrack the rest.
    GannetNft,
    /// kube-proxy's nftables rules in node A.
    KubeProxyNft,
    /// kube-proxy's iptables rules in node A.
    KubeProxyIptables,
}

impl Variant {
    /// Every variant, in report order.
    pub const ALL: [Variant; 5] = [
        Variant::GannetTc,
        Variant::GannetXdp,
        Variant::GannetNft,
        Variant::KubeProxyNft,
        Variant::KubeProxyIptables,
    ];

    /// gannet's variants.
    pub const GANNET: [Variant; 3] = [Variant::GannetTc, Variant::GannetXdp, Variant::GannetNft];

    /// gannet's variants whose node port is served by its eBPF NodePort program (the goals of
    /// the program are theirs).
    pub const PROGRAM: [Variant; 2] = [Variant::GannetTc, Variant::GannetXdp];

    /// The name in reports and JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Variant::GannetTc => "gannet-tc",
            Variant::GannetXdp => "gannet-xdp",
            Variant::GannetNft => "gannet-nft",
            Variant::KubeProxyNft => "kube-proxy-nft",
            Variant::KubeProxyIptables => "kube-proxy-iptables",
        }
    }

    /// A short name for namespaces and directories.
    #[must_use]
    pub fn short(self) -> &'static str {
        match self {
            Variant::GannetTc => "gt",
            Variant::GannetXdp => "gx",
            Variant::GannetNft => "gn",
            Variant::KubeProxyNft => "nf",
            Variant::KubeProxyIptables => "ip",
        }
    }

    /// Whether gannetd serves the node port, with its program or its table (else kube-proxy's
    /// rules do, and gannetd runs with `--nodeport-interfaces=` and no services).
    #[must_use]
    pub fn gannet(self) -> bool {
        matches!(
            self,
            Variant::GannetTc | Variant::GannetXdp | Variant::GannetNft
        )
    }

    /// Whether gannetd's eBPF NodePort program serves the node port (its counters and
    /// per-packet cost are read in node A).
    #[must_use]
    pub fn program(self) -> bool {
        matches!(self, Variant::GannetTc | Variant::GannetXdp)
    }

    /// Whether node A's gannetd runs `--dataplane nftables` (only ever in node A's namespace).
    #[must_use]
    pub fn nft(self) -> bool {
        self == Variant::GannetNft
    }

    /// Whether gannetd runs with `--nodeport-acceleration xdp`.
    #[must_use]
    pub fn xdp(self) -> bool {
        self == Variant::GannetXdp
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The binaries the scenario runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub gannetd: PathBuf,
    /// `gannet-testrun`, the per-packet measurement.
    pub testrun: PathBuf,
    pub gannet_cni: PathBuf,
    /// The traffic peer.
    pub peer: PathBuf,
}

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--quick` (only recorded).
    pub quick: bool,
    /// The numbers of services to measure at.
    pub service_counts: Vec<usize>,
    /// Rounds (of every variant and metric per number of services), their length, order and the
    /// CPU client, server and `gannet-testrun` are pinned to.
    pub traffic: Traffic,
    /// Single runs of every path in the per-packet measurement.
    pub testrun_calls: u32,
}

/// How the run was configured, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub service_counts: Vec<usize>,
    pub rounds: usize,
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub seed: u64,
    pub peer_threads: usize,
    pub peer_cpu: Option<usize>,
    /// gannetd's `--overlay` between the nodes (every variant).
    pub overlay: &'static str,
    /// Endpoints of the measured service (the server pod on node B).
    pub measured_endpoints: usize,
    /// Which service is measured.
    pub measured_service: &'static str,
    pub first_node_port: u16,
    pub service_cidr: &'static str,
    pub cluster_cidr: &'static str,
    pub testrun_calls: u32,
    pub testrun_repeat: u32,
    pub gannetd_sync_interval_ms: u64,
}

impl Config {
    /// The settings as recorded in the results.
    #[must_use]
    pub fn settings(&self) -> Settings {
        Settings {
            quick: self.quick,
            service_counts: self.service_counts.clone(),
            rounds: self.traffic.rounds,
            seconds: self.traffic.duration.as_secs_f64(),
            warmup_seconds: self.traffic.warmup.as_secs_f64(),
            seed: self.traffic.seed,
            peer_threads: 1,
            peer_cpu: self.traffic.peer_cpu,
            overlay: cluster::OVERLAY,
            measured_endpoints: 1,
            measured_service: "last",
            first_node_port: crate::services::FIRST_NODE_PORT,
            service_cidr: cluster::SERVICE_CIDR,
            cluster_cidr: crate::services::CLUSTER_CIDR,
            testrun_calls: self.testrun_calls,
            testrun_repeat: packet::REPEAT,
            gannetd_sync_interval_ms: crate::agent::SYNC_INTERVAL_MS,
        }
    }

    /// How many measurements the whole run takes (for the progress bar).
    #[must_use]
    pub fn measurements(&self) -> u64 {
        (self.service_counts.len() * self.traffic.rounds * Variant::ALL.len() * Metric::ALL.len())
            as u64
    }
}

/// How long programming the services took, per variant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Load {
    /// From writing the manifest until gannetd logged every frontend programmed (its manifest
    /// scan interval, YAML parsing and the Maglev tables included); the last of gannet-tc and
    /// gannet-xdp programmed.
    pub gannetd_sync_seconds: Option<f64>,
    /// Frontends gannetd programmed (cluster IPs and `NodeIP:nodePort`s).
    pub gannetd_frontends: Option<u64>,
    /// The same for gannet-nft's gannetd (`--dataplane nftables`): manifest written → every
    /// frontend in its table (one transaction).
    pub gannetd_nft_sync_seconds: Option<f64>,
    /// `nft -f` of kube-proxy's rules into node A.
    pub nft: Option<LoadTime>,
    /// `iptables-restore --noflush` of kube-proxy's rules into node A.
    pub iptables_restore: Option<LoadTime>,
    pub manifest_bytes: usize,
    pub nft_rules_bytes: usize,
    pub iptables_rules_bytes: usize,
}

/// A metric that failed in some rounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// In how many rounds.
    pub rounds: usize,
    /// Why, the first time.
    pub first_error: String,
}

/// Everything measured at one number of services.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeResult {
    pub services: usize,
    pub load: Load,
    /// Where the client connected (`NodeIP:nodePort` of the measured service).
    pub target: String,
    /// The backend (the server pod on node B).
    pub backend: String,
    /// What each variant's connectivity check found, beyond the answers.
    pub checks: BTreeMap<Variant, String>,
    /// gannet's NodePort counters and conntrack usage on node A, per variant of gannet's
    /// program: after the check, after the per-packet measurement and after the rounds.
    pub gannet_counters: BTreeMap<Variant, BTreeMap<&'static str, packet::NodePortState>>,
    /// The per-packet cost of each program in [`PACKET_PROGRAMS`].
    pub packet: Vec<ProgramCost>,
    /// The order the variants were measured in, per round.
    pub order: Vec<Vec<Variant>>,
    /// Measurements that failed, by variant and metric (their rounds have no sample).
    pub failed: BTreeMap<Variant, BTreeMap<Metric, Failure>>,
    /// By variant, then metric (`ratio_to_direct` unused: the report divides gannet by each
    /// peer).
    pub results: BTreeMap<Variant, BTreeMap<Metric, MetricResult>>,
}

impl SizeResult {
    /// The result of `variant` for `metric`, if measured.
    #[must_use]
    pub fn get(&self, variant: Variant, metric: Metric) -> Option<&MetricResult> {
        self.results.get(&variant)?.get(&metric)
    }

    /// Whether `variant`'s `metric` failed in some round.
    #[must_use]
    pub fn failure(&self, variant: Variant, metric: Metric) -> Option<&Failure> {
        self.failed.get(&variant)?.get(&metric)
    }

    /// `ours`' median divided by `peer`'s.
    #[must_use]
    pub fn over(&self, ours: Variant, peer: Variant, metric: Metric) -> Option<f64> {
        let ours = self.get(ours, metric)?.median;
        let theirs = self.get(peer, metric)?.median;
        (theirs > 0.0).then(|| ours / theirs)
    }

    /// The per-packet cost of `path` of `program`.
    #[must_use]
    pub fn packet_ns(&self, program: &str, path: &str) -> Option<f64> {
        self.packet.iter().find(|p| p.program == program)?.ns(path)
    }
}

/// One sample from the external client of `cluster` to `target`.
fn sample(
    cluster: &Cluster,
    tools: &Tools,
    config: &Config,
    options: &ClientOptions,
) -> anyhow::Result<crate::peer::Sample> {
    run_client(
        &tools.peer,
        cluster.client_netns(),
        None,
        options,
        config.traffic.peer_cpu,
    )
}

/// Checks that `cluster` answers at `target`, and that the variant's own mechanism did:
/// gannet's program counted the new flows; gannet-nft's table holds the node port and is the
/// only one in node A besides gannet's overlay table; for kube-proxy, gannetd's program is off.
fn check(
    cluster: &Cluster,
    tools: &Tools,
    config: &Config,
    target: SocketAddrV4,
) -> anyhow::Result<String> {
    let options = ClientOptions {
        metric: Metric::Crr,
        addrs: vec![target],
        duration: Duration::from_secs(20),
        warmup: Duration::ZERO,
        max_operations: Some(CHECK_CONNECTIONS),
    };
    let result = sample(cluster, tools, config, &options)?;
    ensure!(
        result.operations == CHECK_CONNECTIONS && result.error_count() == 0,
        "connectivity check of {}: {} of {CHECK_CONNECTIONS} connections to {target} succeeded, \
         failures {:?}",
        cluster.variant,
        result.operations,
        result.errors
    );
    cluster.check_served_by_variant(tools, CHECK_CONNECTIONS, target)
}

/// Measures everything at `n` services.
fn run_size(
    n: usize,
    config: &Config,
    tools: &Tools,
    rng: &mut Rng,
    progress: &ProgressBar,
    scratch: &Path,
    warnings: &mut Vec<String>,
) -> anyhow::Result<SizeResult> {
    let mut clusters = Vec::new();
    for variant in Variant::ALL {
        check_interrupted()?;
        progress.set_message(format!("{n} services: building the {variant} cluster"));
        let cluster = Cluster::build(variant, tools, config.traffic.peer_cpu, scratch)
            .with_context(|| format!("building the {variant} cluster"))?;
        clusters.push(cluster);
    }
    let mut load = Load::default();
    let mut target = None;
    for cluster in &mut clusters {
        check_interrupted()?;
        progress.set_message(format!("{n} services: programming {}", cluster.variant));
        let services = cluster.services(n)?;
        target = Some(cluster.target(&services)?);
        cluster
            .program(&services, scratch, &mut load)
            .with_context(|| format!("programming {n} services for {}", cluster.variant))?;
    }
    let target = target.context("no cluster")?;
    note(
        progress,
        format!(
            "{n} services programmed: gannetd {}, gannetd nftables {}, nft -f {}, \
             iptables-restore {}",
            seconds(load.gannetd_sync_seconds),
            seconds(load.gannetd_nft_sync_seconds),
            seconds(load.nft.map(|l| l.seconds)),
            seconds(load.iptables_restore.map(|l| l.seconds)),
        ),
    );

    let mut checks = BTreeMap::new();
    for cluster in &clusters {
        check_interrupted()?;
        progress.set_message(format!("{n} services: checking {}", cluster.variant));
        let found = check(cluster, tools, config, target)
            .with_context(|| format!("checking {}", cluster.variant))?;
        checks.insert(cluster.variant, found);
    }

    let mut gannet_counters = BTreeMap::new();
    let mut packet = Vec::new();
    for cluster in clusters.iter().filter(|c| c.variant.program()) {
        check_interrupted()?;
        progress.set_message(format!(
            "{n} services: per-packet cost in {} (gannet-testrun)",
            cluster.variant
        ));
        let measured = packet::measure(cluster, tools, config, target)
            .with_context(|| format!("measuring the per-packet cost in {}", cluster.variant))?;
        for program in &measured.programs {
            note(progress, format!("{n} services: {}", program.summary()));
        }
        gannet_counters.insert(
            cluster.variant,
            BTreeMap::from([
                ("after the check", measured.before),
                ("after the per-packet measurement", measured.after),
            ]),
        );
        packet.extend(measured.programs);
    }

    let mut samples: BTreeMap<Variant, BTreeMap<Metric, Vec<f64>>> = BTreeMap::new();
    let mut failed: BTreeMap<Variant, BTreeMap<Metric, Failure>> = BTreeMap::new();
    let mut order = Vec::with_capacity(config.traffic.rounds);
    for round in 0..config.traffic.rounds {
        let mut indices: Vec<usize> = (0..clusters.len()).collect();
        rng.shuffle(&mut indices);
        order.push(indices.iter().map(|&i| clusters[i].variant).collect());
        for &index in &indices {
            let cluster = &clusters[index];
            for metric in Metric::ALL {
                check_interrupted()?;
                progress.set_message(format!(
                    "{n} services, round {}/{}: {} {metric}",
                    round + 1,
                    config.traffic.rounds,
                    cluster.variant
                ));
                let options = ClientOptions {
                    metric,
                    addrs: vec![target],
                    duration: config.traffic.duration,
                    warmup: config.traffic.warmup,
                    max_operations: None,
                };
                // A measurement that fails (the peer gives up: a stalled connection) is a
                // result of the variant: recorded, and the run goes on.
                let result = match sample(cluster, tools, config, &options) {
                    Ok(result) if result.value > 0.0 => result,
                    outcome => {
                        let why = match outcome {
                            Ok(result) => format!("measured nothing: {result:?}"),
                            Err(err) => format!("{err:#}"),
                        };
                        warnings.push(format!(
                            "{n} services, {} {metric}, round {}: failed: {why}",
                            cluster.variant,
                            round + 1
                        ));
                        failed
                            .entry(cluster.variant)
                            .or_default()
                            .entry(metric)
                            .or_insert_with(|| Failure {
                                rounds: 0,
                                first_error: why,
                            })
                            .rounds += 1;
                        progress.inc(1);
                        continue;
                    }
                };
                if result.error_count() > 0 {
                    warnings.push(format!(
                        "{n} services, {} {metric}, round {}: {} failed operations {:?}",
                        cluster.variant,
                        round + 1,
                        result.error_count(),
                        result.errors
                    ));
                }
                samples
                    .entry(cluster.variant)
                    .or_default()
                    .entry(metric)
                    .or_default()
                    .push(result.value);
                progress.inc(1);
            }
        }
    }
    for cluster in &clusters {
        if let Some(counters) = cluster.counters(tools)? {
            gannet_counters
                .entry(cluster.variant)
                .or_default()
                .insert("after the rounds", counters);
        }
    }
    let backend = clusters[0].backend().to_string();
    progress.set_message(format!("{n} services: removing the clusters"));
    drop(clusters);
    Ok(SizeResult {
        services: n,
        load,
        target: target.to_string(),
        backend,
        checks,
        gannet_counters,
        packet,
        order,
        failed,
        results: samples
            .into_iter()
            .map(|(variant, metrics)| {
                let metrics = metrics
                    .into_iter()
                    .filter_map(|(m, values)| MetricResult::from_samples(m, values).map(|r| (m, r)))
                    .collect();
                (variant, metrics)
            })
            .collect(),
    })
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |s| format!("{s:.3} s"))
}

/// Runs the scenario and returns one result per number of services.
///
/// # Errors
/// If any step fails or the run is interrupted; everything created is removed either way.
pub fn run(
    config: &Config,
    tools: &Tools,
    progress: &ProgressBar,
    scratch: &Path,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<SizeResult>> {
    let mut rng = Rng::new(config.traffic.seed);
    let mut sizes = Vec::with_capacity(config.service_counts.len());
    for &n in &config.service_counts {
        let size = run_size(n, config, tools, &mut rng, progress, scratch, warnings)
            .with_context(|| format!("at {n} services"))?;
        note(progress, report::summary_line(&size));
        sizes.push(size);
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_and_metric_is_counted_for_the_progress_bar() {
        let config = Config {
            quick: true,
            service_counts: vec![1, 1000],
            traffic: crate::peer::Traffic {
                rounds: 2,
                duration: Duration::from_millis(500),
                warmup: Duration::from_millis(100),
                seed: 1,
                peer_cpu: None,
            },
            testrun_calls: 100,
        };
        assert_eq!(config.measurements(), 2 * 2 * 5 * 3);
        assert!(Variant::GANNET.iter().all(|v| v.gannet()));
        assert!(Variant::PROGRAM.iter().all(|v| v.gannet() && v.program()));
        assert!(
            Variant::ALL
                .iter()
                .filter(|v| v.gannet() && !v.program())
                .eq([&Variant::GannetNft]),
            "gannet-nft is gannet's, served by its table, not a program"
        );
        assert!(
            Variant::ALL
                .iter()
                .filter(|v| v.nft())
                .eq([&Variant::GannetNft])
        );
        let shorts: std::collections::BTreeSet<_> =
            Variant::ALL.iter().map(|v| v.short()).collect();
        assert_eq!(
            shorts.len(),
            Variant::ALL.len(),
            "namespace prefixes are distinct"
        );
        assert_eq!(
            serde_json::to_value(Variant::GannetNft).expect("json"),
            serde_json::json!(Variant::GannetNft.name())
        );
        assert!(
            Variant::ALL
                .iter()
                .filter(|v| v.xdp())
                .eq([&Variant::GannetXdp])
        );
        for program in PACKET_PROGRAMS {
            assert!(program.variant.program(), "{program:?}");
            assert_eq!(program.hook == "xdp", program.variant.xdp(), "{program:?}");
        }
        assert_eq!(config.settings().overlay, cluster::OVERLAY);
    }
}
