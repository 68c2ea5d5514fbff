//! `gannet-lab bench`: the paths of kubernetes/perf-tests' netperf on identical two-guest labs,
//! one lab per variant: VM to VM directly (the limit), a Flannel-style node (flannel's vxlan
//! backend, the reference bridge plugin, kube-proxy's nftables rules), and gannet with each of
//! its overlays. Every variant gets a fresh lab of its own, all of them up at once, with its pods
//! and services ([`setup`]); then rounds, each measuring every variant's paths and metrics in a
//! random order ([`measure`]); then the memory of gannet's processes, and the labs come down. The
//! report ([`report`]) gives medians and ratios to the direct variant of the same run.

mod measure;
mod report;
mod setup;

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gannet_bench::util::Rng;
use serde::Serialize;

use crate::lab::{self, NodeState};
use measure::Measurement;
pub(crate) use measure::Settings;

/// One way of connecting the guests' workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Variant {
    /// node1's root namespace to node2's over the lab network: the limit.
    Direct,
    /// Flannel's vxlan backend, the reference bridge + host-local plugins, kube-proxy (nftables).
    Flannel,
    /// gannetd `--overlay vxlan`.
    Vxlan,
    /// gannetd `--overlay host-gw`.
    HostGw,
    /// gannetd `--overlay ebpf`.
    Ebpf,
}

impl Variant {
    pub(crate) const ALL: [Variant; 5] = [
        Variant::Direct,
        Variant::Flannel,
        Variant::Vxlan,
        Variant::HostGw,
        Variant::Ebpf,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Flannel => "flannel",
            Variant::Vxlan => "vxlan",
            Variant::HostGw => "host-gw",
            Variant::Ebpf => "ebpf",
        }
    }

    /// gannetd's `--overlay`, for gannet's variants.
    fn overlay(self) -> Option<&'static str> {
        match self {
            Variant::Direct | Variant::Flannel => None,
            Variant::Vxlan => Some("vxlan"),
            Variant::HostGw => Some("host-gw"),
            Variant::Ebpf => Some("ebpf"),
        }
    }

    /// Parses a `--variants` entry.
    pub(crate) fn parse(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// What a client connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Path {
    /// The direct variant's only path.
    NodeToNode,
    SameNodePod,
    SameNodeService,
    CrossNodePod,
    CrossNodeService,
    /// A pod through its own service to itself.
    Hairpin,
}

impl Path {
    /// The paths of the pod variants, in report order.
    pub(crate) const PODS: [Path; 5] = [
        Path::SameNodePod,
        Path::SameNodeService,
        Path::CrossNodePod,
        Path::CrossNodeService,
        Path::Hairpin,
    ];

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Path::NodeToNode => "node → node",
            Path::SameNodePod => "same node: pod → pod",
            Path::SameNodeService => "same node: pod → ClusterIP",
            Path::CrossNodePod => "cross node: pod → pod",
            Path::CrossNodeService => "cross node: pod → ClusterIP",
            Path::Hairpin => "hairpin: pod → own ClusterIP",
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Metric {
    /// TCP single-stream throughput.
    Stream,
    /// UDP throughput received at a fixed offered load.
    Udp,
    /// 1-byte TCP request/response transactions per second.
    Rr,
}

impl Metric {
    pub(crate) const ALL: [Metric; 3] = [Metric::Stream, Metric::Udp, Metric::Rr];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Metric::Stream => "stream",
            Metric::Udp => "udp",
            Metric::Rr => "rr",
        }
    }

    pub(crate) fn unit(self) -> &'static str {
        match self {
            Metric::Stream => "Gbit/s",
            Metric::Udp => "Mbit/s",
            Metric::Rr => "transactions/s",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Metric::Stream => "TCP single-stream throughput",
            Metric::Udp => "UDP throughput received at a fixed offered load",
            Metric::Rr => "1-byte TCP request/response transactions per second",
        }
    }
}

/// How the benchmark runs.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) variants: Vec<Variant>,
    pub(crate) rounds: usize,
    pub(crate) settings: Settings,
    pub(crate) seed: u64,
    /// Where the report goes; the labs live in `labs/` below it.
    pub(crate) out: PathBuf,
    /// How each variant's lab is booted (its `nodes` is 2).
    pub(crate) up: lab::UpOptions,
}

/// What one variant gave.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VariantResult {
    pub(crate) variant: Variant,
    /// Per path and metric, every round's measurement.
    pub(crate) samples: BTreeMap<Path, BTreeMap<Metric, Vec<Measurement>>>,
    /// Resident memory of gannet's processes (gannetd, gannet-control) per node, MiB, after
    /// the measurements; empty where none run.
    pub(crate) gannet_rss_mib: BTreeMap<String, f64>,
    /// How long booting the lab and setting up the workload took, seconds.
    pub(crate) setup_seconds: f64,
    /// Measurements that failed (each is tried [`ATTEMPTS`] times before it is left out).
    pub(crate) failures: Vec<String>,
}

/// How often a measurement is tried: a TCG guest on a loaded host can stall for longer than the
/// peer's 2 s socket timeout.
const ATTEMPTS: usize = 3;

/// Boots every variant's lab, then measures in rounds (each round visits the variants in a
/// random order, and each variant's paths and metrics in a random order), so that a change in the
/// host's load meanwhile touches every variant alike; writes the report and returns its markdown
/// file. The labs are brought down at the end, also when something fails.
pub(crate) fn run(options: &Options) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let mut rng = Rng::new(options.seed);
    let mut labs = Vec::new();
    for &variant in &options.variants {
        eprintln!("gannet-lab bench: setting up {}", variant.name());
        let lab = VariantLab::up(variant, options)
            .with_context(|| format!("setting up variant {}", variant.name()))?;
        eprintln!("  set up in {:.0} s", lab.result.setup_seconds);
        labs.push(lab);
    }
    for round in 0..options.rounds {
        let mut order: Vec<usize> = (0..labs.len()).collect();
        rng.shuffle(&mut order);
        for index in order {
            let lab = &mut labs[index];
            lab.round(round, options.settings, &mut rng);
        }
    }
    let mut results = Vec::new();
    for lab in labs {
        results.push(lab.finish()?);
    }
    report::write(&options.out, options, &results)
}

/// A variant's lab, set up and ready to measure; brought down when dropped.
struct VariantLab {
    dir: PathBuf,
    nodes: Vec<NodeState>,
    workload: setup::Workload,
    result: VariantResult,
}

impl Drop for VariantLab {
    fn drop(&mut self) {
        if let Err(error) = lab::down(&self.dir) {
            eprintln!("gannet-lab bench: bringing the lab down: {error:#}");
        }
    }
}

/// Brings a lab down when dropped, until disarmed (a failed set-up).
struct LabGuard<'a>(Option<&'a FsPath>);

impl Drop for LabGuard<'_> {
    fn drop(&mut self) {
        if let Some(dir) = self.0
            && let Err(error) = lab::down(dir)
        {
            eprintln!("gannet-lab bench: bringing the lab down: {error:#}");
        }
    }
}

impl VariantLab {
    fn up(variant: Variant, options: &Options) -> anyhow::Result<VariantLab> {
        let dir = options.out.join("labs").join(variant.name());
        let started = Instant::now();
        let state = lab::up(&dir, &options.up)?;
        let mut guard = LabGuard(Some(&dir));
        let state = match variant.overlay() {
            Some(overlay) => {
                crate::cluster::start(&dir, state, overlay)?;
                lab::load(&dir)?
            }
            None => state,
        };
        let workload = setup::workload(variant, &state.nodes)?;
        guard.0 = None;
        Ok(VariantLab {
            dir: dir.clone(),
            nodes: state.nodes,
            workload,
            result: VariantResult {
                variant,
                samples: BTreeMap::new(),
                gannet_rss_mib: BTreeMap::new(),
                setup_seconds: started.elapsed().as_secs_f64(),
                failures: Vec::new(),
            },
        })
    }

    /// Measures every path and metric once, in a random order; a measurement that fails is tried
    /// again, and left out (noted in the result's failures) after [`ATTEMPTS`].
    fn round(&mut self, round: usize, settings: Settings, rng: &mut Rng) {
        let mut plan: Vec<(Path, Metric)> = self
            .workload
            .targets
            .keys()
            .flat_map(|&path| Metric::ALL.map(|metric| (path, metric)))
            .collect();
        rng.shuffle(&mut plan);
        for (path, metric) in plan {
            let mut measured = None;
            for attempt in 1..=ATTEMPTS {
                match measure::measure(&self.nodes, &self.workload, path, metric, settings) {
                    Ok(m) => {
                        measured = Some(m);
                        break;
                    }
                    Err(error) => {
                        let failure = format!(
                            "round {}, {}, {}, attempt {attempt} of {ATTEMPTS}: {error:#}",
                            round + 1,
                            path.describe(),
                            metric.name()
                        );
                        eprintln!("  {}: {failure}", self.result.variant.name());
                        self.result.failures.push(failure);
                    }
                }
            }
            let Some(m) = measured else { continue };
            eprintln!(
                "  round {} {:<8} {:<30} {:<6} {:>12.3} {}",
                round + 1,
                self.result.variant.name(),
                path.describe(),
                metric.name(),
                m.value,
                metric.unit()
            );
            self.result
                .samples
                .entry(path)
                .or_default()
                .entry(metric)
                .or_default()
                .push(m);
        }
    }

    /// The result, with the memory of gannet's processes now that they have carried the traffic.
    fn finish(mut self) -> anyhow::Result<VariantResult> {
        if self.result.variant.overlay().is_some() {
            self.result.gannet_rss_mib = gannet_rss(&self.nodes)?;
        }
        Ok(self.result.clone())
    }
}

/// The resident memory of gannetd and gannet-control on each node, MiB.
fn gannet_rss(nodes: &[NodeState]) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut rss = BTreeMap::new();
    for node in nodes {
        let out = node.sh(
            "for p in $(pidof gannetd gannet-control); do awk '/^VmRSS:/ {print $2}' /proc/$p/status; done",
            Duration::from_secs(30),
        )?;
        let kib: Vec<u64> = out
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .collect();
        anyhow::ensure!(
            !kib.is_empty(),
            "{}: no gannetd or gannet-control found to measure: {out:?}",
            node.name
        );
        let kib: u64 = kib.iter().sum();
        #[expect(clippy::cast_precision_loss, reason = "memory sizes far below 2^52")]
        rss.insert(node.name.clone(), kib as f64 / 1024.0);
    }
    Ok(rss)
}
