//! The `clusterip` scenario's programming measurement: N services × E endpoints (10 000 × 10 by
//! default) programmed by gannetd's nftables data plane and by `nft -f` of kube-proxy's nftables
//! rules, each into an empty node namespace of its own; then K endpoint changes through gannetd,
//! each timed until the kernel reports the new element of gannet's table, fed two ways.
//!
//! 1. **Manifest directory** (as the scenario's other gannetds are fed): `services.yaml` with
//!    every Service and the `EndpointSlice`s of the services that never change, and one file per
//!    changed service with its slice, so that a change rewrites (renames into place) one small
//!    file. The full programming is timed here.
//! 2. **gannet-control** (the control scenario's way: the N services stored through the gRPC
//!    Apply, gannetd watching with `--control`): a change is one changed slice applied through
//!    the gRPC Apply, which reaches gannetd as a change of one service.
//!
//! gannetd runs `--dataplane nftables` in a node namespace of its own (never the root
//! namespace). Its stderr and `nft monitor new`'s output in the node namespace are read on
//! threads that stamp every line with its arrival, so a change's latency is measured to the
//! kernel's notification of the new element, not to a poll.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use gannet_api::{Client, Credentials, Outcome, ServerAddr};
use gannet_testkit::{Cgroup, Netns};
use indicatif::ProgressBar;
use serde_json::Value;

use crate::agent;
use crate::control::objects;
use crate::control::procs::{ControlPlane, Line, Logged};
use crate::control::{PeerRun, load_peer, output_in};
use crate::kubeproxy::nft;
use crate::results::{ChangeLatency, ChangeSample, Programming, ProgrammingSettings, TableCounts};
use crate::services::{self, MANIFEST_FILE, Service};
use crate::util::{Rng, check_interrupted};

/// gannet's nftables table (family `inet`), as gannetd names it (`datapath::nft::TABLE`).
pub const TABLE: &str = "gannet-services";
/// How often this measurement's gannetd scans its manifest directory: gannetd's smallest
/// `--sync-interval-ms`, so that the scan adds as little as it can to a change's latency.
pub const SYNC_INTERVAL_MS: u64 = 10;
/// How long gannetd may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long gannetd may take to program every service.
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one endpoint change may take to reach the table.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for `nft monitor` to report the sentinel table the first time; each attempt
/// waits twice as long as the one before, the last one this long.
const MONITOR_FIRST_WAIT: Duration = Duration::from_secs(2);
const MONITOR_LAST_WAIT: Duration = Duration::from_secs(64);
/// A table of the harness's own whose creation tells that `nft monitor` listens.
const SENTINEL_TABLE: &str = "gannet-bench-monitor-ready";
/// gannetd's log line after it applied a change.
const SYNCED: &str = "services synced";
/// gannet-k8s's debug line when the manifest scan reads a changed file.
const READING: &str = "reading manifest file";
/// gannetd's log line after its first full sync from gannet-control.
const PROGRAMMED: &str = "programmed the control plane's services";
/// Objects per Apply call while storing the services in gannet-control.
const CONTROL_BATCH: usize = 1000;

/// What the measurement does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Services to program.
    pub services: usize,
    /// Endpoints of every service.
    pub endpoints: usize,
    /// Endpoint changes to time.
    pub changes: usize,
    /// How long `nft -f` may take before it is killed.
    pub timeout: Duration,
}

impl Config {
    /// The settings as recorded in the results.
    #[must_use]
    pub fn settings(&self) -> ProgrammingSettings {
        ProgrammingSettings {
            services: self.services,
            endpoints_per_service: self.endpoints,
            changes: self.changes,
            timeout_seconds: self.timeout.as_secs_f64(),
            gannetd_sync_interval_ms: SYNC_INTERVAL_MS,
        }
    }
}

/// gannetd with its nftables data plane in a node namespace of its own, and (once started)
/// `nft monitor` there. Drop order: the monitor, gannetd (stopped, then `gannetd cleanup` in the
/// namespace, which removes the table), its cgroup (named to cleanup only), the namespace.
struct NftNode {
    monitor: Option<Logged>,
    gannetd: Option<Logged>,
    binary: PathBuf,
    bpf_root: PathBuf,
    state_dir: PathBuf,
    cgroup: Cgroup,
    netns: Netns,
}

impl NftNode {
    /// Starts gannetd fed by `source` (its flags: `--manifest-dir DIR`, or `--control ADDR` and
    /// the node's address) in a node namespace of its own, `tag` naming its bpffs and state
    /// directories, and waits until its (empty) table exists.
    fn start(
        gannetd: &Path,
        scratch: &Path,
        tag: &str,
        source: &[String],
    ) -> anyhow::Result<NftNode> {
        let netns = Netns::new("gnp")?;
        agent::check_not_root_netns(&netns)?;
        let cgroup = Cgroup::new()?;
        agent::check_cgroup(&cgroup)?;
        let mut node = NftNode {
            monitor: None,
            gannetd: None,
            binary: gannetd.to_path_buf(),
            bpf_root: agent::fresh_bpf_root(Some(tag))?,
            state_dir: scratch.join(format!("state-{tag}")),
            cgroup,
            netns,
        };
        let mut cmd = Command::new(gannetd);
        cmd.env("GANNET_LOG", "info,gannet_k8s::dir=debug")
            // Several agents per machine; nothing scrapes them.
            .arg("--metrics-address=")
            .arg("--cgroup-path")
            .arg(node.cgroup.path())
            .arg("--bpf-root")
            .arg(&node.bpf_root)
            .arg("--state-dir")
            .arg(&node.state_dir)
            .args(source)
            .args(["--log-format", "json"])
            .args(agent::nft_args("bench-nft", SYNC_INTERVAL_MS));
        let process = node.gannetd.insert(Logged::spawn(
            cmd,
            Some(&node.netns),
            "gannetd --dataplane nftables",
        )?);
        process.wait_message(0, "ready for CNI endpoints", START_TIMEOUT)?;
        Ok(node)
    }

    fn gannetd(&mut self) -> anyhow::Result<&mut Logged> {
        self.gannetd.as_mut().context("gannetd was stopped")
    }

    fn monitor(&mut self) -> anyhow::Result<&mut Logged> {
        self.monitor.as_mut().context("nft monitor is not running")
    }

    /// Starts `nft monitor new` in the namespace and waits until it reports: a table of the
    /// harness's own is created (and removed again) until its line arrives. Before it reports
    /// anything nft reads the whole ruleset, every element included (about 4 s for 10 000
    /// services × 10 endpoints), and starts that over whenever the ruleset changes meanwhile,
    /// so the sentinel is created at growing intervals.
    fn start_monitor(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("nft");
        cmd.args(["monitor", "new"]);
        self.monitor = Some(Logged::spawn_merged(cmd, Some(&self.netns), "nft monitor")?);
        let expected = format!("add table inet {SENTINEL_TABLE}");
        let mut wait = MONITOR_FIRST_WAIT;
        loop {
            output_in(
                &self.netns,
                "nft",
                &["add", "table", "inet", SENTINEL_TABLE],
            )?;
            let seen = self
                .monitor()?
                .wait_line(0, wait, "the sentinel table", |l| l.text.trim() == expected);
            output_in(
                &self.netns,
                "nft",
                &["delete", "table", "inet", SENTINEL_TABLE],
            )?;
            match seen {
                Ok(_) => return Ok(()),
                Err(_) if wait < MONITOR_LAST_WAIT => wait *= 2,
                Err(err) => return Err(err.context("nft monitor reports nothing")),
            }
        }
    }

    /// `nft -j list map inet gannet-services MAP`: its elements as (key, value) pairs.
    fn map(&self, map: &str) -> anyhow::Result<Vec<(Value, Value)>> {
        let json = output_in(
            &self.netns,
            "nft",
            &["-j", "list", "map", "inet", TABLE, map],
        )?;
        map_elements(&json, map)
    }

    /// What the table holds after programming `services`, checked: every frontend, and every
    /// one of them with a backend in the last slot.
    fn counts(&self, services: &[Service]) -> anyhow::Result<TableCounts> {
        let n = services.len();
        let last = services.first().map_or(0, |s| s.endpoints.len()).max(1) - 1;
        let table = TableCounts {
            services: self.map("services4")?.len(),
            last_slot_addresses: self.map(&format!("slot{last}-addr4"))?.len(),
        };
        ensure!(
            table.services == n && table.last_slot_addresses == n,
            "gannetd logged {n} services programmed, but its table holds {} frontends and {} \
             backends in slot {last}",
            table.services,
            table.last_slot_addresses,
        );
        Ok(table)
    }

    /// Checks that the table holds the change `last` made (its new address in its slot).
    fn check_last(&self, last: Option<&ChangeSample>, services: &[Service]) -> anyhow::Result<()> {
        let Some(last) = last else {
            return Ok(());
        };
        let svc = services
            .iter()
            .find(|s| format!("{}/{}", s.namespace, s.name) == last.service)
            .context("the last changed service")?;
        let vip = svc.cluster_ip.to_string();
        let new = last.new.to_string();
        let holds = self
            .map(&format!("slot{}-addr4", last.slot))?
            .iter()
            .any(|(k, v)| k["concat"][0].as_str() == Some(&vip) && v.as_str() == Some(&new));
        ensure!(
            holds,
            "after the changes, slot {} of {vip} does not hold {new} in gannetd's table",
            last.slot
        );
        Ok(())
    }
}

impl Drop for NftNode {
    fn drop(&mut self) {
        if let Some(mut monitor) = self.monitor.take() {
            monitor.stop();
        }
        if let Some(mut gannetd) = self.gannetd.take() {
            gannetd.stop();
        }
        if let Err(err) = agent::cleanup(
            &self.binary,
            &self.bpf_root,
            self.cgroup.path(),
            Some(&self.state_dir),
            Some(&self.netns),
        ) {
            eprintln!("gannet-bench: cleaning up the gannet-nft programming node: {err:#}");
        }
    }
}

/// The elements of map `name` in `nft -j list map …` output, as (key, value) pairs.
///
/// # Errors
/// If the output is not nft's JSON or holds no map `name`.
pub fn map_elements(json: &str, name: &str) -> anyhow::Result<Vec<(Value, Value)>> {
    let value: Value = serde_json::from_str(json).context("parsing nft's JSON")?;
    let map = value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|item| item.get("map").filter(|m| m["name"] == name))
        .with_context(|| format!("nft listed no map {name}"))?;
    Ok(map["elem"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let pair = e.as_array()?;
            Some((pair.first()?.clone(), pair.get(1)?.clone()))
        })
        .collect())
}

/// One element that `nft monitor` reported added to a slot's address map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedBackend {
    /// The slot.
    pub slot: usize,
    /// The frontend as nft prints it: `10.96.0.10 . tcp . 80`.
    pub frontend: String,
    /// The backend address.
    pub backend: Ipv4Addr,
}

/// The backends an `nft monitor` line reports added to gannet's slot address maps, e.g.
/// `add element inet gannet-services slot3-addr4 { 10.96.0.10 . tcp . 80 : 10.192.0.0 }`;
/// empty for every other line.
#[must_use]
pub fn added_backends(line: &str) -> Vec<AddedBackend> {
    let parse = || -> Option<Vec<AddedBackend>> {
        let rest = line
            .trim()
            .strip_prefix("add element inet ")?
            .strip_prefix(TABLE)?
            .strip_prefix(" slot")?;
        let (slot, rest) = rest.split_once("-addr4 { ")?;
        let slot = slot.parse().ok()?;
        let body = rest.strip_suffix(" }")?;
        body.split(", ")
            .map(|element| {
                let (frontend, backend) = element.rsplit_once(" : ")?;
                Some(AddedBackend {
                    slot,
                    frontend: frontend.to_owned(),
                    backend: backend.parse().ok()?,
                })
            })
            .collect()
    };
    parse().unwrap_or_default()
}

/// The file that holds the slice of `svc` (a changed service).
fn slice_file(svc: &Service) -> String {
    format!("slice-{}.yaml", svc.name)
}

/// `count` distinct indices below `n` (all of them if `count ≥ n`), in a random order.
fn pick(rng: &mut Rng, n: usize, count: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut all);
    all.truncate(count.min(n));
    all
}

/// `services.yaml`: every Service, and the slices of the services not in `own_files`.
fn main_manifest(services: &[Service], own_files: &BTreeSet<usize>) -> String {
    let mut out = String::with_capacity(services.len() * 1000);
    out.push_str(
        "# Generated by gannet-bench: every Service; the EndpointSlices of the services that \
         change are in files of their own.\n",
    );
    for (i, svc) in services.iter().enumerate() {
        out.push_str(&services::service_yaml(svc));
        if !own_files.contains(&i) {
            out.push_str(&services::slice_yaml(svc));
        }
    }
    out
}

/// Waits for gannetd's `services synced` line from line `from` on that reports `expected`
/// frontends programmed; fails on one that reports failures.
fn wait_programmed(
    gannetd: &mut Logged,
    from: usize,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<(usize, Line)> {
    let deadline = Instant::now() + timeout;
    let mut next = from;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (index, line) = gannetd.wait_message(next, SYNCED, left)?;
        ensure!(
            line.field("failed") == Some(0),
            "gannetd failed to program services: {}",
            line.text
        );
        let programmed = ["added", "updated", "unchanged"]
            .iter()
            .map(|f| line.field(f).unwrap_or(0))
            .sum::<u64>();
        if programmed == expected {
            return Ok((index, line));
        }
        next = index + 1;
    }
}

fn millis(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// The binaries the measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Tools<'a> {
    /// The agent.
    pub gannetd: &'a Path,
    /// The control plane.
    pub gannet_control: &'a Path,
}

/// Runs the measurement: gannet-nft's full programming and endpoint changes from a manifest
/// directory, endpoint changes through gannet-control, then `nft -f` of kube-proxy's rules.
/// Everything it creates is removed before it returns.
///
/// # Errors
/// If a step fails, gannetd's table does not hold what it should, or the run is interrupted.
pub fn run(
    config: &Config,
    tools: Tools<'_>,
    progress: &ProgressBar,
    scratch: &Path,
    rng: &mut Rng,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Programming> {
    let (n, e) = (config.services, config.endpoints);
    let mut services = objects::services(n, e)?;
    let changed = pick(rng, n, config.changes);
    let own_files: BTreeSet<usize> = changed.iter().copied().collect();

    progress.set_message(format!(
        "gannet-nft: programming {n} services × {e} endpoints"
    ));
    let manifest_dir = scratch.join("manifests-nft-programming");
    fs::create_dir(&manifest_dir)
        .with_context(|| format!("creating {}", manifest_dir.display()))?;
    let source = [
        "--manifest-dir".to_owned(),
        manifest_dir.display().to_string(),
    ];
    let mut node = NftNode::start(tools.gannetd, scratch, "nft-manifests", &source)?;
    let main = main_manifest(&services, &own_files);
    let slices: Vec<(String, String)> = changed
        .iter()
        .map(|&i| (slice_file(&services[i]), services::slice_yaml(&services[i])))
        .collect();
    let manifest_bytes = main.len() + slices.iter().map(|(_, y)| y.len()).sum::<usize>();
    let from = node.gannetd()?.line_count();
    let start = Instant::now();
    for (file, yaml) in &slices {
        services::write_manifest_file(&manifest_dir, file, yaml)?;
    }
    services::write_manifest_file(&manifest_dir, MANIFEST_FILE, &main)?;
    drop(main);
    let (_, synced) = wait_programmed(node.gannetd()?, from, n as u64, SYNC_TIMEOUT)?;
    let gannet_nft_seconds = synced.at.saturating_duration_since(start).as_secs_f64();
    check_interrupted()?;
    progress.set_message("gannet-nft: reading its table back");
    let table = node.counts(&services)?;

    let mut changes = Vec::with_capacity(config.changes);
    if !changed.is_empty() {
        progress.set_message("gannet-nft: starting nft monitor");
        node.start_monitor()?;
        for k in 0..config.changes {
            check_interrupted()?;
            progress.set_message(format!(
                "gannet-nft (manifest directory): endpoint change {}/{}",
                k + 1,
                config.changes
            ));
            let i = changed[k % changed.len()];
            let change = Change::new(&mut services[i], rng, k);
            changes.push(change.through_file(&mut node, &manifest_dir, &services[i], rng)?);
            progress.inc(1);
        }
        node.check_last(changes.last(), &services)?;
    }
    drop(node);
    check_interrupted()?;

    let control = if config.changes > 0 {
        Some(through_control(
            config,
            tools,
            scratch,
            &mut services,
            rng,
            progress,
        )?)
    } else {
        None
    };
    check_interrupted()?;

    progress.set_message(format!(
        "nft -f of kube-proxy's rules for {n} services × {e} endpoints (up to {} s)",
        config.timeout.as_secs()
    ));
    let kube_proxy_nft = load_peer(
        PeerRun {
            role: "gkp",
            file: scratch.join("kube-proxy-programming.nft"),
            rules: nft::ruleset(&services),
            program: "nft",
            args: &["-f"],
            what: "nft -f",
            timeout: config.timeout,
        },
        |netns| {
            let listed = output_in(
                netns,
                "nft",
                &["list", "map", "ip", nft::TABLE, "service-ips"],
            )?;
            let found = listed.matches(": goto service-").count();
            ensure!(
                found == n,
                "after nft -f the service-ips map holds {found} services, not {n}"
            );
            Ok(found)
        },
    )?;
    if let Some((seconds, true)) = kube_proxy_nft.seconds() {
        warnings.push(format!(
            "programming: nft -f of kube-proxy's rules for {n} services × {e} endpoints did not \
             finish within {seconds:.0} s and was killed"
        ));
    }
    let (control_sync_seconds, control_changes) = control.unzip();
    let control_changes = control_changes.unwrap_or_default();
    Ok(Programming {
        services: n,
        endpoints_per_service: e,
        manifest_bytes,
        gannet_nft_seconds,
        control_sync_seconds,
        table,
        kube_proxy_nft,
        change_latency: ChangeLatency::of(&changes),
        changes,
        control_change_latency: ChangeLatency::of(&control_changes),
        control_changes,
    })
}

/// The services stored in a fresh gannet-control, a fresh gannetd watching it (its full sync
/// timed from its start), then `config.changes` endpoint changes of random services, each one
/// changed slice applied through the gRPC Apply.
fn through_control(
    config: &Config,
    tools: Tools<'_>,
    scratch: &Path,
    services: &mut [Service],
    rng: &mut Rng,
    progress: &ProgressBar,
) -> anyhow::Result<(f64, Vec<ChangeSample>)> {
    let n = services.len();
    progress.set_message(format!("gannet-control: storing {n} services"));
    let rt = crate::control::runtime()?;
    let plane = ControlPlane::start(
        tools.gannet_control,
        &scratch.join("control-nft"),
        objects::SERVICE_CIDR,
        &[],
    )?;
    let server: ServerAddr = plane
        .addr()
        .parse()
        .context("the control plane's address")?;
    let mut client = rt
        .block_on(Client::connect(&server, &Credentials::default()))
        .context("connecting to gannet-control")?;
    crate::control::load_store(&rt, &mut client, services, CONTROL_BATCH, progress)?;

    progress.set_message(format!(
        "gannet-nft (gannet-control): full sync of {n} services"
    ));
    let source = [
        "--control".to_owned(),
        plane.addr(),
        format!("--node-ip={}", crate::topology::NODE_IP),
    ];
    let mut node = NftNode::start(tools.gannetd, scratch, "nft-control", &source)?;
    let process = node.gannetd()?;
    let started = process.started;
    let (at, programmed) = process.wait_message(0, PROGRAMMED, SYNC_TIMEOUT)?;
    ensure!(
        programmed.field("frontends") == Some(n as u64),
        "gannetd programmed another number of frontends than the {n} stored: {}",
        programmed.text
    );
    let (_, synced) = wait_programmed(process, at + 1, n as u64, SYNC_TIMEOUT)?;
    let sync_seconds = synced.at.saturating_duration_since(started).as_secs_f64();
    node.counts(services)?;

    progress.set_message("gannet-nft (gannet-control): starting nft monitor");
    node.start_monitor()?;
    let mut samples = Vec::with_capacity(config.changes);
    for k in 0..config.changes {
        check_interrupted()?;
        progress.set_message(format!(
            "gannet-nft (gannet-control): endpoint change {}/{}",
            k + 1,
            config.changes
        ));
        let i = usize::try_from(rng.next_u64() % n as u64).unwrap_or(0);
        // Fresh addresses: after those of the manifest directory's changes.
        let change = Change::new(&mut services[i], rng, config.changes + k);
        let object = objects::slice_object(&services[i])?;
        let (sample, _) = change.observe(&mut node, |start| {
            let applied = rt
                .block_on(async {
                    tokio::time::timeout(
                        CHANGE_TIMEOUT,
                        client.apply(std::slice::from_ref(&object), false),
                    )
                    .await
                })
                .context("an Apply of one slice timed out")?
                .context("applying one changed slice")?;
            ensure!(
                applied.objects.first().map(|(_, o)| *o) == Some(Outcome::Configured),
                "the changed slice was not configured: {:?}",
                applied.objects.first().map(|(_, o)| o)
            );
            Ok(Some(millis(start, Instant::now())))
        })?;
        samples.push(sample);
        progress.inc(1);
    }
    node.check_last(samples.last(), services)?;
    // The agent before the control plane it watches.
    drop(node);
    drop(client);
    drop(plane);
    Ok((sync_seconds, samples))
}

/// One endpoint change about to be made: endpoint `j` of a service replaced by a fresh address.
struct Change {
    service: String,
    frontend: String,
    old: Ipv4Addr,
    new: Ipv4Addr,
}

impl Change {
    /// Replaces a random endpoint of `svc` by the address of change `k`.
    fn new(svc: &mut Service, rng: &mut Rng, k: usize) -> Change {
        let j = usize::try_from(rng.next_u64() % svc.endpoints.len() as u64).unwrap_or(0);
        let old = svc.endpoints[j];
        let new = objects::replacement(k);
        svc.endpoints[j] = new;
        Change {
            service: format!("{}/{}", svc.namespace, svc.name),
            frontend: format!("{} . tcp . {}", svc.cluster_ip, svc.port),
            old,
            new,
        }
    }

    /// Makes the change by renaming the service's rewritten slice file into `manifest_dir`, at a
    /// random moment within two of gannetd's scan intervals, so that the changes do not all land
    /// at the same point of its scan cycle.
    fn through_file(
        self,
        node: &mut NftNode,
        manifest_dir: &Path,
        svc: &Service,
        rng: &mut Rng,
    ) -> anyhow::Result<ChangeSample> {
        let file = slice_file(svc);
        let path = manifest_dir.join(&file);
        let tmp = manifest_dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, services::slice_yaml(svc))
            .with_context(|| format!("writing {}", tmp.display()))?;
        thread::sleep(Duration::from_micros(
            rng.next_u64() % (2 * SYNC_INTERVAL_MS * 1000),
        ));
        let from = node.gannetd()?.line_count();
        let (mut sample, start) = self.observe(node, |_| {
            services::rename_into_place(&tmp, &path)?;
            Ok(None)
        })?;
        // When gannetd's scan read the file: its debug line, before its sync line.
        sample.noticed_ms = node
            .gannetd()?
            .wait_line(from, Duration::ZERO, READING, |l| {
                l.message().as_deref() == Some(READING)
                    && l.json()
                        .and_then(|v| v.get("file").and_then(Value::as_str).map(str::to_owned))
                        .is_some_and(|f| f.ends_with(&file))
            })
            .ok()
            .map(|(_, line)| millis(start, line.at));
        Ok(sample)
    }

    /// Makes the change with `make` (given the start, returning how long its own call took, if
    /// it is a call) and waits for the new element in `node`'s table (`nft monitor`) and for
    /// gannetd's `services synced` line, which must report exactly one updated frontend.
    /// Returns the sample and when the change was made.
    fn observe(
        self,
        node: &mut NftNode,
        make: impl FnOnce(Instant) -> anyhow::Result<Option<f64>>,
    ) -> anyhow::Result<(ChangeSample, Instant)> {
        let log_from = node.gannetd()?.line_count();
        let monitor_from = node.monitor()?.line_count();
        let start = Instant::now();
        let call_ms = make(start)?;
        let Change {
            service,
            frontend,
            old,
            new,
        } = self;
        let (_, added) = node.monitor()?.wait_line(
            monitor_from,
            CHANGE_TIMEOUT,
            &format!("{frontend} : {new} added"),
            |l| {
                added_backends(&l.text)
                    .iter()
                    .any(|a| a.backend == new && a.frontend == frontend)
            },
        )?;
        let slot = added_backends(&added.text)
            .into_iter()
            .find(|a| a.backend == new)
            .map_or(0, |a| a.slot);
        let (_, synced) = node
            .gannetd()?
            .wait_message(log_from, SYNCED, CHANGE_TIMEOUT)?;
        ensure!(
            synced.field("updated") == Some(1) && synced.field("failed") == Some(0),
            "the change of {service} ({old} → {new}): gannetd reported {}",
            synced.text
        );
        let sample = ChangeSample {
            service,
            old,
            new,
            slot,
            table_ms: millis(start, added.at),
            noticed_ms: None,
            call_ms,
            logged_ms: millis(start, synced.at),
        };
        Ok((sample, start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_of_slot_addresses_are_parsed() {
        assert_eq!(
            added_backends(
                "add element inet gannet-services slot3-addr4 { 10.96.0.10 . tcp . 80 : 10.192.0.0 }"
            ),
            vec![AddedBackend {
                slot: 3,
                frontend: "10.96.0.10 . tcp . 80".into(),
                backend: Ipv4Addr::new(10, 192, 0, 0),
            }]
        );
        let two = added_backends(
            "add element inet gannet-services slot10-addr4 { 10.96.0.10 . tcp . 80 : 10.192.0.1, 10.96.0.11 . tcp . 80 : 10.192.0.2 }",
        );
        assert_eq!(two.len(), 2, "{two:?}");
        assert_eq!(two[1].slot, 10);
        assert_eq!(two[1].backend, Ipv4Addr::new(10, 192, 0, 2));
        for other in [
            "add element inet gannet-services hairpin4 { 10.192.0.0 . 10.192.0.0 }",
            "add element inet gannet-services slot3-port4 { 10.96.0.10 . tcp . 80 : 8080 }",
            "delete element inet gannet-services slot3-addr4 { 10.96.0.10 . tcp . 80 : 10.128.0.3 }",
            "add element inet other slot3-addr4 { 10.96.0.10 . tcp . 80 : 10.192.0.0 }",
            "add table inet gannet-bench-monitor-ready",
            "",
        ] {
            assert!(added_backends(other).is_empty(), "{other}");
        }
    }

    #[test]
    fn map_listings_are_counted() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"map": {"family": "inet", "name": "slot0-addr4", "table": "gannet-services", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 20, "map": "ipv4_addr", "elem": [[{"concat": ["10.96.0.10", "tcp", 80]}, "10.128.0.0"], [{"concat": ["10.96.0.11", "tcp", 80]}, "10.128.0.10"]]}}]}"#;
        let elements = map_elements(json, "slot0-addr4").expect("elements");
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[1].1, "10.128.0.10");
        assert_eq!(elements[0].0["concat"][0], "10.96.0.10");
        let empty = r#"{"nftables": [{"metainfo": {}}, {"map": {"name": "services4", "table": "gannet-services"}}]}"#;
        assert!(map_elements(empty, "services4").expect("empty").is_empty());
        assert!(map_elements(empty, "slot0-addr4").is_err());
    }

    #[test]
    fn changed_services_get_files_of_their_own() {
        let services = objects::services(4, 2).expect("services");
        let own = BTreeSet::from([1, 3]);
        let main = main_manifest(&services, &own);
        assert_eq!(main.matches("kind: Service\n").count(), 4, "{main}");
        assert_eq!(main.matches("kind: EndpointSlice\n").count(), 2, "{main}");
        assert!(main.contains("name: svc-00000-bench\n"), "{main}");
        assert!(!main.contains("name: svc-00001-bench\n"), "{main}");
        assert_eq!(slice_file(&services[1]), "slice-svc-00001.yaml");
        let mut rng = Rng::new(7);
        let picked = pick(&mut rng, 10, 4);
        assert_eq!(picked.len(), 4);
        assert_eq!(
            picked.iter().collect::<BTreeSet<_>>().len(),
            4,
            "{picked:?}"
        );
        assert_eq!(pick(&mut rng, 3, 20).len(), 3);
    }
}
