//! The `cni` scenario: how long a runtime waits for gannet-cni's `ADD` and `DEL`, next to the
//! reference plugins (`bridge` with `host-local`) doing the same job on the same machine in the
//! same run.
//!
//! Each plugin gets a "node" network namespace of its own, where it runs (the invoking thread
//! joined it with `setns`, the plugin is spawned from there), and one network namespace per pod.
//! The pods are handled in rounds: in every round both plugins, in a random order, `ADD` their
//! next few pods one after another (or a few at a time at higher concurrency), so whatever else
//! the machine does hits both alike; then, the same way, `DEL`. Every invocation is checked (exit
//! status, result, and after each pass the links and IPAM records of the node), so a fast failure
//! is never counted as a fast success.

pub mod chart;
pub mod cli;
pub mod exec;
pub mod report;
pub mod results;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use gannet_testkit::Netns;
use indicatif::ProgressBar;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::util::{Rng, check_interrupted, note};
use results::{PhaseResult, Plugin, PluginInfo, Sample, Settings, Verb, VerbResult};

/// The most pods per plugin: both address ranges are a /24.
pub const MAX_PODS: usize = 250;
/// `cniVersion` of both configurations (Debian's reference plugins 1.1.1 speak up to 1.0.0).
pub const CNI_VERSION: &str = "1.0.0";
/// `CNI_IFNAME`.
pub const POD_IF: &str = "eth0";
/// The network name in both configurations.
pub const NETWORK: &str = "benchnet";
/// gannet-cni's pod range.
pub const GANNET_SUBNET: &str = "10.244.1.0/24";
/// The reference plugins' pod range.
pub const REFERENCE_SUBNET: &str = "10.244.2.0/24";
/// The bridge the reference plugin creates in its node namespace.
pub const BRIDGE: &str = "cni0";
/// The reference plugins' directory (Debian's `containernetworking-plugins`).
pub const REFERENCE_DIR: &str = "/usr/lib/cni";
/// Uncounted ADD+DEL pairs per plugin before measuring.
pub const WARMUP_PODS: usize = 1;
/// The pods' Kubernetes namespace in `CNI_ARGS`.
const POD_NAMESPACE: &str = "gannet-bench";
/// How long one invocation may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// gannet-cni's `DEL` leaves the veth pair, down and renamed `gnd…`, to a detached process that
/// deletes it; how long the checks wait for those to finish.
const RETIRED_TIMEOUT: Duration = Duration::from_secs(60);
/// The name prefix of such retired pairs.
const RETIRED_PREFIX: &str = "gnd";

/// The binaries the scenario runs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// gannet-cni.
    pub gannet_cni: PathBuf,
    /// The directory with `bridge` and `host-local`.
    pub reference_dir: PathBuf,
}

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--quick` (only recorded).
    pub quick: bool,
    /// Pods per plugin.
    pub pods: usize,
    /// Pods per round and plugin at concurrency 1.
    pub round_size: usize,
    /// The concurrencies to measure at (1 = sequential), in order.
    pub concurrency: Vec<usize>,
    /// Seed of the plugin order of the rounds.
    pub seed: u64,
}

impl Config {
    /// The settings as recorded in the results.
    #[must_use]
    pub fn settings(&self) -> Settings {
        Settings {
            quick: self.quick,
            pods: self.pods,
            round_size: self.round_size,
            concurrency: self.concurrency.clone(),
            seed: self.seed,
            cni_version: CNI_VERSION,
            ifname: POD_IF,
            warmup_pods: WARMUP_PODS,
        }
    }

    /// Every plugin invocation of the run (for the progress bar).
    #[must_use]
    pub fn invocations(&self) -> u64 {
        let per_plugin = self.concurrency.len() * self.pods + WARMUP_PODS;
        (Plugin::ALL.len() * Verb::ALL.len() * per_plugin) as u64
    }
}

/// A 64-hex-digit container id, as runtimes make them, unique per run, plugin, pass and pod.
fn container_id(plugin: Plugin, pass: &str, pod: &str) -> String {
    let digest = Sha256::digest(
        format!(
            "gannet-bench/{}/{}/{pass}/{pod}",
            std::process::id(),
            plugin.name()
        )
        .as_bytes(),
    );
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The network configuration of `plugin`, its IPAM store under `state`.
#[must_use]
pub fn plugin_config(plugin: Plugin, state: &Path) -> Value {
    match plugin {
        Plugin::Gannet => json!({
            "cniVersion": CNI_VERSION,
            "name": NETWORK,
            "type": "gannet-cni",
            "mtu": 1500,
            "ipam": {
                "type": "gannet",
                "ranges": [[{ "subnet": GANNET_SUBNET }]],
                "dataDir": state.join("gannet-ipam"),
            },
        }),
        Plugin::Reference => json!({
            "cniVersion": CNI_VERSION,
            "name": NETWORK,
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": REFERENCE_SUBNET }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": state.join("host-local"),
            },
        }),
    }
}

/// The directory holding `plugin`'s address records (one file per address).
fn ipam_store(plugin: Plugin, state: &Path) -> PathBuf {
    state
        .join(match plugin {
            Plugin::Gannet => "gannet-ipam",
            Plugin::Reference => "host-local",
        })
        .join(NETWORK)
}

/// The address in an ADD result for the pod interface, checked against `subnet_prefix` and the
/// pod's namespace.
fn result_address(stdout: &[u8], netns: &Path, subnet_prefix: &str) -> anyhow::Result<String> {
    let result: Value = serde_json::from_slice(stdout).context("the result is not JSON")?;
    let sandbox = netns.display().to_string();
    ensure!(
        result["interfaces"].as_array().is_some_and(|ifs| ifs
            .iter()
            .any(|i| i["name"] == POD_IF && i["sandbox"] == sandbox)),
        "the result lists no {POD_IF} in {sandbox}: {result}"
    );
    let address = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("the result has no address: {result}"))?;
    ensure!(
        address.starts_with(subnet_prefix),
        "address {address} is not from {subnet_prefix}0/24"
    );
    Ok(address.split('/').next().unwrap_or(address).to_owned())
}

/// One plugin's node: its namespace, its pods and how it is invoked.
#[derive(Debug)]
struct PluginNode {
    plugin: Plugin,
    // Field order is drop order: the pods before the node.
    pods: Vec<Netns>,
    warmup: Netns,
    node: Netns,
    exe: PathBuf,
    cni_path: String,
    config: Vec<u8>,
    store: PathBuf,
    subnet_prefix: &'static str,
}

/// One round of one plugin.
#[derive(Debug, Default)]
struct Round {
    samples: Vec<Sample>,
    wall: Duration,
    /// (pod, address) for ADD.
    addresses: Vec<(usize, String)>,
}

impl PluginNode {
    fn new(plugin: Plugin, pods: usize, bin: &Path, state: &Path) -> anyhow::Result<PluginNode> {
        let node = Netns::new(&format!("{}n", plugin.short()))
            .with_context(|| format!("creating the {plugin} node namespace"))?;
        let warmup = Netns::new(&format!("{}w", plugin.short()))?;
        let mut created = Vec::with_capacity(pods);
        for _ in 0..pods {
            check_interrupted()?;
            created.push(Netns::new(&format!("{}p", plugin.short()))?);
        }
        let config = plugin_config(plugin, state);
        Ok(PluginNode {
            plugin,
            pods: created,
            warmup,
            node,
            exe: bin.join(match plugin {
                Plugin::Gannet => "gannet-cni",
                Plugin::Reference => "bridge",
            }),
            cni_path: bin.display().to_string(),
            config: serde_json::to_vec(&config)?,
            store: ipam_store(plugin, state),
            subnet_prefix: match plugin {
                Plugin::Gannet => "10.244.1.",
                Plugin::Reference => "10.244.2.",
            },
        })
    }

    /// Checks that a program started from a thread inside the node namespace runs there.
    fn check_placement(&self) -> anyhow::Result<()> {
        let want = format!("net:[{}]", fs::metadata(self.node.path())?.ino());
        let seen = self.node.run(|| -> anyhow::Result<String> {
            let output = Command::new("readlink").arg("/proc/self/ns/net").output()?;
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        })??;
        ensure!(
            seen == want,
            "a plugin started from the {} node thread would run in {seen}, not in the node \
             namespace {want}",
            self.plugin
        );
        Ok(())
    }

    /// One invocation for the pod in `netns` (in the calling thread's namespace: the node's).
    fn call(
        &self,
        verb: Verb,
        pass: &str,
        pod_name: &str,
        netns: &Netns,
    ) -> anyhow::Result<(exec::Outcome, Option<String>)> {
        let id = container_id(self.plugin, pass, pod_name);
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={pod_name};\
             K8S_POD_INFRA_CONTAINER_ID={id}"
        );
        let outcome = exec::invoke(
            &exec::Invocation {
                plugin: &self.exe,
                command: verb.command(),
                container_id: &id,
                netns: netns.path(),
                ifname: POD_IF,
                args: &args,
                cni_path: &self.cni_path,
                config: &self.config,
            },
            EXEC_TIMEOUT,
        )
        .with_context(|| format!("{} {verb} of {pod_name}", self.plugin))?;
        ensure!(
            outcome.status.success(),
            "{} {verb} of {pod_name} failed: {}",
            self.plugin,
            outcome.describe()
        );
        let address = match verb {
            Verb::Add => Some(
                result_address(&outcome.stdout, netns.path(), self.subnet_prefix)
                    .with_context(|| format!("{} ADD of {pod_name}", self.plugin))?,
            ),
            Verb::Del => None,
        };
        Ok((outcome, address))
    }

    /// Runs `verb` for `pods` with `concurrency` invocations at a time, from threads inside the
    /// node namespace.
    fn round(
        &self,
        verb: Verb,
        pass: &str,
        pods: &[usize],
        concurrency: usize,
    ) -> anyhow::Result<Round> {
        self.node.run(|| -> anyhow::Result<Round> {
            let next = AtomicUsize::new(0);
            let failed = AtomicBool::new(false);
            let collected = Mutex::new(Round::default());
            let worker = || -> anyhow::Result<()> {
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let Some(&pod) = pods.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return Ok(());
                    };
                    check_interrupted()?;
                    let name = format!("pod-{pod:03}");
                    let (outcome, address) = self
                        .call(verb, pass, &name, &self.pods[pod])
                        .inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
                    let mut round = collected.lock().expect("round lock");
                    round.samples.push(Sample {
                        pod,
                        wall_ms: outcome.wall.as_secs_f64() * 1e3,
                        user_ms: outcome.user.as_secs_f64() * 1e3,
                        system_ms: outcome.system.as_secs_f64() * 1e3,
                    });
                    if let Some(address) = address {
                        round.addresses.push((pod, address));
                    }
                }
            };
            let start = Instant::now();
            let outcomes: Vec<anyhow::Result<()>> = if concurrency <= 1 {
                vec![worker()]
            } else {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..concurrency).map(|_| scope.spawn(worker)).collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect()
                })
            };
            let wall = start.elapsed();
            outcomes.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
            let mut round = collected.into_inner().expect("round lock");
            round.wall = wall;
            Ok(round)
        })?
    }

    /// ADD then DEL of the warm-up pod (fills the page cache, creates the bridge), checked: the
    /// pod gets its address and a default route, and loses its interface again.
    fn warm_up(&self) -> anyhow::Result<()> {
        let (_, address) = self
            .node
            .run(|| self.call(Verb::Add, "warmup", "warmup", &self.warmup))??;
        let address = address.unwrap_or_default();
        let shown = self
            .warmup
            .ip(&["-4", "-o", "addr", "show", "dev", POD_IF])?;
        ensure!(
            shown.contains(&format!("{address}/")),
            "{}: {address} is not on {POD_IF} in the warm-up pod: {shown}",
            self.plugin
        );
        let route = self.warmup.ip(&["route", "show", "default"])?;
        ensure!(
            route.contains(&format!("dev {POD_IF}")),
            "{}: the warm-up pod has no default route via {POD_IF}: {route:?}",
            self.plugin
        );
        self.node
            .run(|| self.call(Verb::Del, "warmup", "warmup", &self.warmup))??;
        ensure!(
            !self.warmup.ip(&["-o", "link", "show"])?.contains(POD_IF),
            "{}: the warm-up pod still has {POD_IF} after DEL",
            self.plugin
        );
        self.wait_retired(&[&self.warmup])
    }

    /// The veths of the node: (all, not retired).
    fn veth_counts(&self) -> anyhow::Result<(usize, usize)> {
        let out = self.node.ip(&["-o", "link", "show", "type", "veth"])?;
        let live = out
            .lines()
            .filter(|l| {
                l.split(": ")
                    .nth(1)
                    .is_some_and(|name| !name.starts_with(RETIRED_PREFIX))
            })
            .count();
        Ok((out.lines().count(), live))
    }

    fn veth_count(&self) -> anyhow::Result<usize> {
        Ok(self.veth_counts()?.0)
    }

    /// Waits until the node has no veth left at all and each of `pods` only its loopback: the
    /// retired pairs gannet-cni's `DEL` leaves to its detached deletion are gone.
    fn wait_retired(&self, pods: &[&Netns]) -> anyhow::Result<()> {
        let deadline = Instant::now() + RETIRED_TIMEOUT;
        loop {
            let veths = self.veth_count()?;
            if veths == 0 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{}: {RETIRED_TIMEOUT:?} after the last DEL the node still has {veths} veths",
                self.plugin
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // A veth pair goes as a whole: the pods' ends are gone too.
        for pod in pods {
            let links = pod.ip(&["-o", "link", "show"])?;
            ensure!(
                links.lines().count() == 1,
                "{}: pod {} still has links after DEL: {links}",
                self.plugin,
                pod.name()
            );
        }
        Ok(())
    }

    fn records(&self) -> anyhow::Result<usize> {
        let Ok(entries) = fs::read_dir(&self.store) else {
            return Ok(0);
        };
        let mut count = 0;
        for entry in entries {
            let name = entry?.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
            {
                count += 1;
            }
        }
        Ok(count)
    }

    /// After every pod's ADD: a veth and an address record per pod, and the first and last pod
    /// holding their addresses.
    fn check_added(&self, addresses: &BTreeMap<usize, String>) -> anyhow::Result<()> {
        let pods = self.pods.len();
        let distinct: HashSet<&String> = addresses.values().collect();
        ensure!(
            addresses.len() == pods && distinct.len() == pods,
            "{}: {} results with {} distinct addresses for {pods} pods",
            self.plugin,
            addresses.len(),
            distinct.len()
        );
        let (veths, records) = (self.veth_count()?, self.records()?);
        ensure!(
            veths == pods && records == pods,
            "{}: after {pods} ADDs the node has {veths} veths and the store {records} records",
            self.plugin
        );
        for pod in [0, pods - 1] {
            let shown = self.pods[pod].ip(&["-4", "-o", "addr", "show", "dev", POD_IF])?;
            ensure!(
                shown.contains(&format!("{}/", addresses[&pod])),
                "{}: pod {pod} lacks {}: {shown}",
                self.plugin,
                addresses[&pod]
            );
        }
        Ok(())
    }

    /// After every pod's DEL: at once no veth in service, no record, and the first and last pod
    /// without `eth0`; then (waited for) no veth at all and no pod with more than its loopback.
    fn check_deleted(&self) -> anyhow::Result<()> {
        let ((_, live), records) = (self.veth_counts()?, self.records()?);
        ensure!(
            live == 0 && records == 0,
            "{}: after every DEL the node still has {live} veths in service and the store \
             {records} records",
            self.plugin
        );
        for pod in [0, self.pods.len() - 1] {
            let links = self.pods[pod].ip(&["-o", "link", "show"])?;
            ensure!(
                !links.contains(POD_IF),
                "{}: pod {pod} still has {POD_IF} after DEL: {links}",
                self.plugin
            );
        }
        self.wait_retired(&[&self.pods[0], &self.pods[self.pods.len() - 1]])
    }
}

/// The plugin binaries as a runtime's `CNI_PATH` holds them: one directory with gannet-cni,
/// `bridge` and `host-local` (symbolic links).
fn plugin_dir(tools: &Tools, scratch: &Path) -> anyhow::Result<PathBuf> {
    let bin = scratch.join("bin");
    fs::create_dir(&bin).with_context(|| format!("creating {}", bin.display()))?;
    symlink(&tools.gannet_cni, bin.join("gannet-cni"))?;
    for name in ["bridge", "host-local"] {
        let target = tools.reference_dir.join(name);
        ensure!(target.is_file(), "{} is missing", target.display());
        symlink(&target, bin.join(name))?;
    }
    Ok(bin)
}

/// The version of the Debian package holding the reference plugins.
fn reference_version(tools: &Tools) -> String {
    let package = Command::new("dpkg-query")
        .args(["-S"])
        .arg(tools.reference_dir.join("bridge"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(':')
                .next()
                .map(str::to_owned)
        });
    let Some(package) = package else {
        return "unknown (not from a Debian package)".to_owned();
    };
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", &package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| format!("{package} {}", String::from_utf8_lossy(&o.stdout).trim()),
        )
}

/// The plugins as they are run.
#[must_use]
pub fn plugin_infos(tools: &Tools, scratch: &Path, gannet_version: &str) -> Vec<PluginInfo> {
    Plugin::ALL
        .into_iter()
        .map(|plugin| PluginInfo {
            plugin,
            binary: match plugin {
                Plugin::Gannet => tools.gannet_cni.display().to_string(),
                Plugin::Reference => {
                    format!("{0}/bridge, {0}/host-local", tools.reference_dir.display())
                }
            },
            version: match plugin {
                Plugin::Gannet => format!("gannet {gannet_version}"),
                Plugin::Reference => reference_version(tools),
            },
            config: plugin_config(plugin, scratch),
        })
        .collect()
}

fn format_ms(ms: f64) -> String {
    crate::scenario::stats::format_ms(ms)
}

/// One line for the terminal per phase.
fn summary_line(phase: &PhaseResult) -> String {
    let parts: Vec<String> = Plugin::ALL
        .into_iter()
        .filter_map(|plugin| {
            let add = phase.get(plugin, Verb::Add)?;
            let del = phase.get(plugin, Verb::Del)?;
            Some(format!(
                "{plugin}: ADD p50 {} p99 {}, DEL p50 {} p99 {}, {:.0} pods/s",
                format_ms(add.latency.p50_ms),
                format_ms(add.latency.p99_ms),
                format_ms(del.latency.p50_ms),
                format_ms(del.latency.p99_ms),
                add.pods_per_second
            ))
        })
        .collect();
    format!("concurrency {}: {}", phase.concurrency, parts.join(" | "))
}

/// Measures both plugins at one concurrency: `ADD` of every pod, then `DEL` of every pod, in rounds.
fn run_phase(
    nodes: &[PluginNode],
    concurrency: usize,
    config: &Config,
    rng: &mut Rng,
    progress: &ProgressBar,
) -> anyhow::Result<PhaseResult> {
    let per_round = config.round_size * concurrency;
    let pass = format!("c{concurrency}");
    let all: Vec<usize> = (0..config.pods).collect();
    let rounds: Vec<&[usize]> = all.chunks(per_round).collect();
    let mut order = BTreeMap::new();
    let mut samples: BTreeMap<(Plugin, Verb), (Vec<Sample>, Duration)> = BTreeMap::new();
    let mut addresses: BTreeMap<Plugin, BTreeMap<usize, String>> = BTreeMap::new();
    for verb in Verb::ALL {
        let mut verb_order = Vec::with_capacity(rounds.len());
        for (index, pods) in rounds.iter().enumerate() {
            let mut plugins = Plugin::ALL;
            rng.shuffle(&mut plugins);
            verb_order.push(plugins.to_vec());
            for plugin in plugins {
                check_interrupted()?;
                progress.set_message(format!(
                    "concurrency {concurrency}: {verb} round {}/{}: {plugin}",
                    index + 1,
                    rounds.len()
                ));
                let node = nodes
                    .iter()
                    .find(|n| n.plugin == plugin)
                    .context("no node for a plugin")?;
                let round = node.round(verb, &pass, pods, concurrency)?;
                let entry = samples.entry((plugin, verb)).or_default();
                entry.0.extend(round.samples);
                entry.1 += round.wall;
                addresses.entry(plugin).or_default().extend(round.addresses);
                progress.inc(pods.len() as u64);
            }
        }
        order.insert(verb, verb_order);
        progress.set_message(format!("concurrency {concurrency}: checking after {verb}"));
        for node in nodes {
            match verb {
                Verb::Add => node.check_added(&addresses[&node.plugin])?,
                Verb::Del => node.check_deleted()?,
            }
        }
    }
    let mut results: BTreeMap<Plugin, BTreeMap<Verb, VerbResult>> = BTreeMap::new();
    for ((plugin, verb), (samples, wall)) in samples {
        if let Some(result) = VerbResult::new(samples, wall.as_secs_f64()) {
            results.entry(plugin).or_default().insert(verb, result);
        }
    }
    Ok(PhaseResult {
        concurrency,
        pods_per_round: per_round,
        order,
        results,
    })
}

/// Runs the scenario and returns one result per concurrency.
///
/// # Errors
/// If any invocation or check fails or the run is interrupted; everything created (namespaces
/// with the links, bridge and routes the plugins made in them; the IPAM stores under `scratch`)
/// is removed either way.
pub fn run(
    config: &Config,
    tools: &Tools,
    progress: &ProgressBar,
    scratch: &Path,
) -> anyhow::Result<Vec<PhaseResult>> {
    let bin = plugin_dir(tools, scratch)?;
    let mut nodes = Vec::with_capacity(Plugin::ALL.len());
    for plugin in Plugin::ALL {
        progress.set_message(format!(
            "creating the {plugin} node and {} pod namespaces",
            config.pods + WARMUP_PODS
        ));
        nodes.push(PluginNode::new(plugin, config.pods, &bin, scratch)?);
    }
    for node in &nodes {
        node.check_placement()?;
        progress.set_message(format!("warming up {}", node.plugin));
        node.warm_up()
            .with_context(|| format!("warming up {}", node.plugin))?;
        progress.inc((Verb::ALL.len() * WARMUP_PODS) as u64);
    }
    let mut rng = Rng::new(config.seed);
    let mut phases = Vec::with_capacity(config.concurrency.len());
    for &concurrency in &config.concurrency {
        let phase = run_phase(&nodes, concurrency, config, &mut rng, progress)
            .with_context(|| format!("at concurrency {concurrency}"))?;
        note(progress, summary_line(&phase));
        phases.push(phase);
    }
    progress.set_message("removing the namespaces");
    let names: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            n.pods
                .iter()
                .chain([&n.warmup, &n.node])
                .map(|ns| ns.name().to_owned())
        })
        .collect();
    drop(nodes);
    let left: Vec<&String> = names
        .iter()
        .filter(|name| Path::new("/run/netns").join(name).exists())
        .collect();
    ensure!(left.is_empty(), "network namespaces left behind: {left:?}");
    Ok(phases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_look_like_a_runtime_s_and_differ() {
        let a = container_id(Plugin::Gannet, "c1", "pod-001");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, container_id(Plugin::Reference, "c1", "pod-001"));
        assert_ne!(a, container_id(Plugin::Gannet, "c4", "pod-001"));
        assert_eq!(a, container_id(Plugin::Gannet, "c1", "pod-001"));
    }

    #[test]
    fn configurations_keep_state_in_the_scratch_dir_and_masquerade_nothing() {
        let state = Path::new("/tmp/gannet-bench-1");
        let reference = plugin_config(Plugin::Reference, state);
        assert_eq!(reference["ipMasq"], false);
        assert_eq!(reference["isGateway"], true);
        assert_eq!(
            reference["ipam"]["dataDir"],
            "/tmp/gannet-bench-1/host-local"
        );
        let gannet = plugin_config(Plugin::Gannet, state);
        assert_eq!(gannet["ipam"]["dataDir"], "/tmp/gannet-bench-1/gannet-ipam");
        assert!(gannet.get("agentSocket").is_none());
        assert_eq!(
            ipam_store(Plugin::Gannet, state),
            Path::new("/tmp/gannet-bench-1/gannet-ipam/benchnet")
        );
    }

    #[test]
    fn results_are_checked() {
        let netns = Path::new("/run/netns/p1");
        let ok = br#"{"interfaces":[{"name":"gnt1"},{"name":"eth0","sandbox":"/run/netns/p1"}],
                     "ips":[{"address":"10.244.1.7/32","interface":1}]}"#;
        assert_eq!(
            result_address(ok, netns, "10.244.1.").expect("valid"),
            "10.244.1.7"
        );
        let err = result_address(ok, netns, "10.244.2.").expect_err("wrong range");
        assert!(
            format!("{err:#}").contains("not from 10.244.2.0/24"),
            "{err:#}"
        );
        let elsewhere = Path::new("/run/netns/p2");
        assert!(result_address(ok, elsewhere, "10.244.1.").is_err());
        assert!(result_address(b"{\"ips\":[]}", netns, "10.244.1.").is_err());
        assert!(result_address(b"not json", netns, "10.244.1.").is_err());
    }

    #[test]
    fn invocations_count_every_verb_pod_and_plugin() {
        let config = Config {
            quick: false,
            pods: 200,
            round_size: 10,
            concurrency: vec![1, 4],
            seed: 1,
        };
        assert_eq!(config.invocations(), 2 * 2 * (2 * 200 + 1));
    }
}
