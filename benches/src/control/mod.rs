//! The `control` scenario: gannet-control feeding gannetd agents.
//!
//! A release gannet-control (embedded store and unix socket in the run's scratch directory) is
//! loaded with N selector-less Services and one EndpointSlice each (E endpoints) through the gRPC
//! Apply, in batches. Then fresh gannetd agents are started one after another, each in a network
//! namespace, cgroup v2 sub-directory, bpffs directory and state directory of its own; each one's
//! full sync is timed from its process start to its `programmed the control plane's services`
//! log line, its memory read from `/proc`, and every frontend of its pinned service map compared
//! with what was stored (`gannetd status`). With all agents watching, K incremental changes (one
//! endpoint address of one service replaced) are applied one at a time and timed from just before
//! the Apply call to each agent's `services synced` line; a few real `gannetctl apply -f` runs
//! show the CLI's own cost. Last, kube-proxy's nftables and iptables rule sets for the same
//! services are loaded into empty network namespaces of the harness's with `nft -f` and
//! `iptables-restore`, each bounded by a timeout.

pub mod cli;
pub mod objects;
pub mod procs;
pub mod report;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gannet_api::{Client, Credentials, Kind, Outcome, ServerAddr};
use gannet_common::{DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES, DEFAULT_MAX_SLOTS};
use gannet_testkit::{Netns, run_in, spawn};
use indicatif::ProgressBar;
use serde_json::Value;

use crate::kubeproxy::{iptables, nft};
use crate::scenario::stats::LatencyStats;
use crate::services::Service;
use crate::util::{Rng, check_interrupted, note};
use procs::{BenchAgent, ControlPlane, Logged, cpu_seconds, memory};
use report::{AgentSync, ChangeSample, Cli, Incremental, PeerLoad, Peers, Settings, StoreLoad};

/// How long a fresh agent may take for its full sync.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an agent may take to apply one incremental change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one Apply call may take.
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `gannetctl apply` may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the checks after a peer's load (`nft list`, `iptables-save`) may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(300);

/// The binaries the scenario runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub gannetd: PathBuf,
    pub gannet_control: PathBuf,
    pub gannetctl: PathBuf,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub quick: bool,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub agents: usize,
    pub changes: usize,
    pub cli_applies: usize,
    pub batch: usize,
    pub peer_timeout: Duration,
    pub peers: bool,
    pub seed: u64,
    /// Extra environment for every gannetd, `KEY=VALUE` split.
    pub gannetd_env: Vec<(String, String)>,
}

impl Config {
    /// gannetd's capacity flags: room for every backend of the run, the replaced ones included.
    #[must_use]
    pub fn gannetd_args(&self) -> Vec<String> {
        let backends = self.services * self.endpoints_per_service + self.changes + self.cli_applies;
        let slots = 2 * backends;
        let mut args = Vec::new();
        if backends > DEFAULT_MAX_BACKENDS as usize {
            args.push(format!(
                "--max-backends={}",
                (backends + backends / 4).next_power_of_two()
            ));
        }
        if slots > DEFAULT_MAX_SLOTS as usize {
            args.push(format!("--max-slots={}", slots.next_power_of_two()));
        }
        if self.services > DEFAULT_MAX_SERVICES as usize {
            args.push(format!(
                "--max-services={}",
                self.services.next_power_of_two()
            ));
        }
        args
    }

    /// The settings as recorded.
    #[must_use]
    pub fn settings(&self) -> Settings {
        Settings {
            quick: self.quick,
            services: self.services,
            endpoints_per_service: self.endpoints_per_service,
            agents: self.agents,
            changes: self.changes,
            cli_applies: self.cli_applies,
            batch: self.batch,
            peer_timeout_seconds: self.peer_timeout.as_secs(),
            peers: self.peers,
            seed: self.seed,
            gannetd_args: self.gannetd_args(),
            gannetd_env: self
                .gannetd_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        }
    }
}

/// What [`run`] measured.
#[derive(Debug)]
pub struct Measured {
    pub store: StoreLoad,
    pub agents: Vec<AgentSync>,
    pub incremental: Incremental,
    pub cli: Cli,
    pub peers: Peers,
    pub loadavg_before_sync: String,
}

/// `/proc/loadavg`'s first three fields.
#[must_use]
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Processes other than this one using more than 10 % of a CPU (`ps`), for the record.
#[must_use]
pub fn busy_processes() -> Vec<String> {
    let Ok(output) = Command::new("ps")
        .args(["-eo", "pid,pcpu,comm", "--sort=-pcpu", "--no-headers"])
        .output()
    else {
        return Vec::new();
    };
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let pid = fields.next()?;
            let cpu: f64 = fields.next()?.parse().ok()?;
            let comm = fields.next()?;
            (pid != me && cpu > 10.0).then(|| format!("{comm} (pid {pid}, {cpu:.0} % CPU)"))
        })
        .take(8)
        .collect()
}

/// A single-threaded tokio runtime for the gRPC client.
///
/// # Errors
/// If it cannot be built.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// Loads every service and its slice into gannet-control, `batch` objects per Apply call, and
/// checks that it lists them all.
///
/// # Errors
/// If a call fails or times out, or the listing differs.
pub fn load_store(
    rt: &tokio::runtime::Runtime,
    client: &mut Client,
    services: &[Service],
    batch: usize,
    progress: &ProgressBar,
) -> anyhow::Result<StoreLoad> {
    let mut objects = Vec::with_capacity(services.len() * 2);
    for svc in services {
        objects.push(objects::service_object(svc)?);
        objects.push(objects::slice_object(svc)?);
    }
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    for chunk in objects.chunks(batch) {
        check_interrupted()?;
        let call = Instant::now();
        let applied = rt
            .block_on(async {
                tokio::time::timeout(APPLY_TIMEOUT, client.apply(chunk, false)).await
            })
            .with_context(|| {
                format!(
                    "an Apply of {} objects took over {APPLY_TIMEOUT:?}",
                    chunk.len()
                )
            })?
            .with_context(|| format!("applying {} objects", chunk.len()))?;
        slowest = slowest.max(call.elapsed());
        calls += 1;
        ensure!(
            applied.objects.len() == chunk.len(),
            "gannet-control applied {} of {} objects",
            applied.objects.len(),
            chunk.len()
        );
        progress.inc(chunk.len() as u64 / 2);
    }
    let seconds = start.elapsed().as_secs_f64();
    // The same List calls and decoding (`Client::list`) as an agent's first sync, timed here in
    // the harness.
    let listing = Instant::now();
    for kind in [Kind::Service, Kind::EndpointSlice] {
        let listed = rt
            .block_on(client.list(kind, Some(crate::services::NAMESPACE)))
            .with_context(|| format!("listing {kind}s"))?;
        ensure!(
            listed.items.len() == services.len(),
            "gannet-control lists {} {kind}s, {} were applied",
            listed.items.len(),
            services.len()
        );
    }
    let list_seconds = listing.elapsed().as_secs_f64();
    Ok(StoreLoad {
        objects: objects.len(),
        calls,
        seconds,
        list_seconds,
        slowest_call_seconds: slowest.as_secs_f64(),
        control_memory: None,
    })
}

/// The frontends of a `gannetd status` document with their sorted backends.
fn status_frontends(status: &Value) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let services = status
        .get("services")
        .and_then(Value::as_array)
        .context("gannetd status has no services list")?;
    let mut out = BTreeMap::new();
    for svc in services {
        let frontend = svc
            .get("frontend")
            .and_then(Value::as_str)
            .context("a service without frontend in gannetd status")?;
        let mut backends: Vec<String> = svc
            .get("backends")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|b| b.as_str().map(str::to_owned))
            .collect();
        backends.sort();
        out.insert(frontend.to_owned(), backends);
    }
    Ok(out)
}

/// Compares an agent's pinned service map with `services`: exactly these frontends, each with
/// exactly its backends. Returns the number of frontends compared.
fn verify_maps(agent: &BenchAgent, services: &[Service]) -> anyhow::Result<usize> {
    let found = status_frontends(&agent.status()?)?;
    let mut problems = Vec::new();
    for svc in services {
        let frontend = objects::frontend(svc);
        match found.get(&frontend) {
            None => problems.push(format!("{frontend} ({}) is missing", svc.name)),
            Some(backends) if *backends != objects::backends(svc) => problems.push(format!(
                "{frontend} ({}) has backends {backends:?}, expected {:?}",
                svc.name,
                objects::backends(svc)
            )),
            Some(_) => {}
        }
    }
    if found.len() != services.len() {
        problems.push(format!(
            "{} frontends in the map, {} services stored",
            found.len(),
            services.len()
        ));
    }
    if !problems.is_empty() {
        let count = problems.len();
        problems.truncate(10);
        bail!(
            "{}'s pinned service map does not hold what the control plane has ({count} problems):\n  {}",
            agent.name,
            problems.join("\n  ")
        );
    }
    Ok(found.len())
}

fn since(start: Instant, line: Option<&procs::Line>) -> Option<f64> {
    line.map(|l| l.at.duration_since(start).as_secs_f64())
}

/// Starts agent `index` and times its full sync.
fn start_agent(
    config: &Config,
    tools: &Tools,
    control: &str,
    scratch: &Path,
    index: usize,
) -> anyhow::Result<(BenchAgent, AgentSync, usize)> {
    let mut agent = BenchAgent::start(
        &tools.gannetd,
        index,
        control,
        scratch,
        &config.gannetd_args(),
        &config.gannetd_env,
    )?;
    let process = agent.process()?;
    let start = process.started;
    let programmed_msg = "programmed the control plane's services";
    let (ip, programmed) = process.wait_message(0, programmed_msg, SYNC_TIMEOUT)?;
    let (is, synced) = process.wait_message(ip + 1, "services synced", SYNC_TIMEOUT)?;
    // After the sync's report: whatever gannetd does once the maps are programmed (freeing the
    // list) is done by then.
    let mem = memory(process.pid())?;
    let cpu = cpu_seconds(process.pid());
    let failed = synced.field("failed").unwrap_or(0);
    ensure!(
        failed == 0,
        "{} failed to program {failed} services: {}",
        agent.name,
        synced.text
    );
    let count = synced.field("added").unwrap_or(0)
        + synced.field("updated").unwrap_or(0)
        + synced.field("unchanged").unwrap_or(0);
    let frontends = programmed.field("frontends").unwrap_or(0);
    let n = config.services as u64;
    ensure!(
        frontends == n && count == n,
        "{} programmed {frontends} frontends ({count} in its sync report), {n} were stored: {}",
        agent.name,
        synced.text
    );
    // The earlier milestones, for where the time goes (search the whole log so far).
    let mut find = |message: &str| {
        process
            .wait_line(0, Duration::ZERO, message, |l| {
                l.text.contains(message) && l.message().as_deref() == Some(message)
            })
            .ok()
            .map(|(_, line)| line)
    };
    let attached = find("socket load balancer attached");
    let ready = find("ready for CNI endpoints");
    let registered = find("node registered");
    let received = find("control plane state received");
    let sync = AgentSync {
        node: agent.name.clone(),
        watching_before: index,
        full_sync_seconds: programmed.at.duration_since(start).as_secs_f64(),
        attached_seconds: since(start, attached.as_ref()),
        ready_seconds: since(start, ready.as_ref()),
        registered_seconds: since(start, registered.as_ref()),
        received_seconds: since(start, received.as_ref()),
        frontends,
        programmed: count,
        memory_after_sync: mem,
        memory_at_end: None,
        cpu_seconds_at_sync: cpu,
        verified_frontends: 0,
    };
    Ok((agent, sync, is + 1))
}

/// Waits for the next `services synced` line of every agent after its cursor, checks that it
/// reports exactly one updated frontend, and returns each one's latency from `start`.
fn wait_all_synced(
    agents: &mut [BenchAgent],
    cursors: &mut [usize],
    start: Instant,
    what: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(agents.len());
    for (agent, cursor) in agents.iter_mut().zip(cursors.iter_mut()) {
        let name = agent.name.clone();
        let (i, line) = agent
            .process()?
            .wait_message(*cursor, "services synced", CHANGE_TIMEOUT)
            .with_context(|| format!("{name} after {what}"))?;
        *cursor = i + 1;
        ensure!(
            line.field("updated") == Some(1)
                && line.field("failed").unwrap_or(0) == 0
                && line.field("added").unwrap_or(0) == 0
                && line.field("removed").unwrap_or(0) == 0,
            "{name} reported something else than one updated service after {what}: {}",
            line.text
        );
        out.push(line.at.duration_since(start).as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// Replaces endpoint `j` of `services[i]` with the address of change `k`.
fn change(services: &mut [Service], rng: &mut Rng, k: usize) -> usize {
    let n = services.len() as u64;
    let i = usize::try_from(rng.next_u64() % n).unwrap_or(0);
    let per = services[i].endpoints.len() as u64;
    let j = usize::try_from(rng.next_u64() % per).unwrap_or(0);
    services[i].endpoints[j] = objects::replacement(k);
    i
}

/// The incremental changes through the gRPC Apply.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces of a running bench"
)]
fn incremental(
    rt: &tokio::runtime::Runtime,
    client: &mut Client,
    agents: &mut [BenchAgent],
    cursors: &mut [usize],
    services: &mut [Service],
    rng: &mut Rng,
    changes: usize,
    progress: &ProgressBar,
) -> anyhow::Result<(Incremental, usize)> {
    let mut samples = Vec::with_capacity(changes);
    let mut last = 0;
    for k in 0..changes {
        check_interrupted()?;
        let i = change(services, rng, k);
        last = i;
        let object = objects::slice_object(&services[i])?;
        let start = Instant::now();
        let applied = rt
            .block_on(async {
                tokio::time::timeout(
                    APPLY_TIMEOUT,
                    client.apply(std::slice::from_ref(&object), false),
                )
                .await
            })
            .context("an Apply of one slice timed out")?
            .context("applying one changed slice")?;
        let apply_ms = start.elapsed().as_secs_f64() * 1000.0;
        ensure!(
            applied.objects.first().map(|(_, o)| *o) == Some(Outcome::Configured),
            "the changed slice was not configured: {:?}",
            applied.objects.first().map(|(_, o)| o)
        );
        let what = format!("change {k} ({})", services[i].name);
        let agents_ms = wait_all_synced(agents, cursors, start, &what)?;
        samples.push(ChangeSample {
            service: services[i].name.clone(),
            apply_ms,
            agents_ms,
        });
        progress.inc(1);
    }
    let apply: Vec<f64> = samples.iter().map(|s| s.apply_ms).collect();
    let per_agent = (0..agents.len())
        .map(|a| {
            let v: Vec<f64> = samples.iter().map(|s| s.agents_ms[a]).collect();
            LatencyStats::from_samples(&v)
        })
        .collect();
    let all: Vec<f64> = samples
        .iter()
        .flat_map(|s| s.agents_ms.iter().copied())
        .collect();
    Ok((
        Incremental {
            changes,
            apply_call: LatencyStats::from_samples(&apply),
            per_agent,
            all: LatencyStats::from_samples(&all),
            samples,
            last_change_verified: false,
        },
        last,
    ))
}

/// `gannetctl apply -f FILE` of one changed slice, `runs` times.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces of a running bench"
)]
fn cli_applies(
    tools: &Tools,
    control: &str,
    scratch: &Path,
    agents: &mut [BenchAgent],
    cursors: &mut [usize],
    services: &mut [Service],
    rng: &mut Rng,
    first_change: usize,
    runs: usize,
) -> anyhow::Result<(Cli, Option<usize>)> {
    let mut ctl = Vec::new();
    let mut to_agents = Vec::new();
    let mut last = None;
    let file = scratch.join("changed-slice.json");
    for r in 0..runs {
        check_interrupted()?;
        let i = change(services, rng, first_change + r);
        last = Some(i);
        fs::write(
            &file,
            serde_json::to_vec_pretty(&objects::slice_json(&services[i]))?,
        )
        .with_context(|| format!("writing {}", file.display()))?;
        let mut cmd = Command::new(&tools.gannetctl);
        cmd.arg("--server")
            .arg(control)
            .args(["apply", "-f"])
            .arg(&file);
        let mut process = Logged::spawn(cmd, None, "gannetctl apply")?;
        let start = process.started;
        let (exited, status) = process.wait_exit(CLI_TIMEOUT)?;
        ctl.push(exited.duration_since(start).as_secs_f64() * 1000.0);
        ensure!(
            status.success(),
            "gannetctl apply failed ({status}): {}",
            process.tail(10)
        );
        let what = format!("gannetctl apply {r} ({})", services[i].name);
        to_agents.extend(wait_all_synced(agents, cursors, start, &what)?);
    }
    Ok((
        Cli {
            runs,
            gannetctl: LatencyStats::from_samples(&ctl),
            to_agents: LatencyStats::from_samples(&to_agents),
        },
        last,
    ))
}

/// User and system CPU time of this process's reaped children, in seconds.
fn children_cpu() -> (f64, f64) {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage to write to.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage) } != 0 {
        return (0.0, 0.0);
    }
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

/// Runs `cmd` in `netns` with a timeout: `Ok(None)` if it had to be killed.
fn timed_load(
    mut cmd: Command,
    netns: &Netns,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Option<(f64, f64, f64)>> {
    cmd.env("LC_ALL", "C");
    let (user, sys) = children_cpu();
    let start = Instant::now();
    let mut child = spawn(cmd, Some(netns), None)?;
    child.close_stdin();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if start.elapsed() >= timeout {
            // Dropping the guard kills and reaps it.
            drop(child);
            return Ok(None);
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed().as_secs_f64();
    let output = child.wait_output(Duration::from_secs(5))?;
    let (user_after, sys_after) = children_cpu();
    ensure!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(Some((took, user_after - user, sys_after - sys)))
}

/// Output of `program args…` in `netns`, checked.
///
/// # Errors
/// If it cannot run, fails, or takes longer than 300 s.
pub fn output_in(netns: &Netns, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("LC_ALL", "C");
    let output = run_in(cmd, Some(netns), None, CHECK_TIMEOUT)?;
    ensure!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `nft -f` and `iptables-restore` of kube-proxy's rules for `services`, each into a fresh
/// network namespace, each checked afterwards.
fn peers(
    services: &[Service],
    scratch: &Path,
    timeout: Duration,
    progress: &ProgressBar,
) -> anyhow::Result<Peers> {
    let n = services.len();
    progress.set_message(format!("nft -f of kube-proxy's rules for {n} services"));
    let nft_load = load_peer(
        PeerRun {
            role: "cnft",
            file: scratch.join("kube-proxy.nft"),
            rules: nft::ruleset(services),
            program: "nft",
            args: &["-f"],
            what: "nft -f",
            timeout,
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
    check_interrupted()?;

    progress.set_message(format!(
        "iptables-restore of kube-proxy's rules for {n} services (up to {} s)",
        timeout.as_secs()
    ));
    let ipt_load = load_peer(
        PeerRun {
            role: "cipt",
            file: scratch.join("kube-proxy.iptables"),
            rules: iptables::restore_input(services),
            program: "iptables-restore",
            args: &["-w", "30", "--noflush"],
            what: "iptables-restore",
            timeout,
        },
        |netns| {
            let saved = output_in(netns, "iptables-save", &["-t", "nat"])?;
            let found = saved
                .lines()
                .filter(|l| l.starts_with("-A KUBE-SERVICES ") && l.contains(" -j KUBE-SVC-"))
                .count();
            ensure!(
                found == n,
                "after iptables-restore KUBE-SERVICES jumps to {found} services, not {n}"
            );
            Ok(found)
        },
    )?;
    Ok(Peers {
        nft: nft_load,
        iptables_restore: ipt_load,
    })
}

/// One peer rule load: `program args… FILE` of `rules` in a fresh namespace named after `role`.
/// (The `clusterip` scenario's programming measurement loads kube-proxy's nftables rules the same
/// way.)
pub struct PeerRun<'a> {
    /// Names the namespace.
    pub role: &'a str,
    /// Where the rules are written (removed afterwards).
    pub file: PathBuf,
    /// The rules.
    pub rules: String,
    /// The loader and its arguments before the file.
    pub program: &'a str,
    pub args: &'a [&'a str],
    /// The loader's name in messages.
    pub what: &'a str,
    /// How long it may take before it is killed.
    pub timeout: Duration,
}

/// Runs `run`, then (if it finished in time) `count` in its namespace: how many services the
/// loaded rules hold, checked by `count` itself. The namespace is removed before it returns.
///
/// # Errors
/// If the file cannot be written, the loader fails, or `count` does.
pub fn load_peer(
    run: PeerRun<'_>,
    count: impl FnOnce(&Netns) -> anyhow::Result<usize>,
) -> anyhow::Result<PeerLoad> {
    let netns = Netns::new(run.role)?;
    let input_bytes = run.rules.len();
    fs::write(&run.file, run.rules).with_context(|| format!("writing {}", run.file.display()))?;
    let mut cmd = Command::new(run.program);
    cmd.args(run.args).arg(&run.file);
    let load = match timed_load(cmd, &netns, run.timeout, run.what)? {
        Some((seconds, user_seconds, system_seconds)) => PeerLoad::Done {
            seconds,
            user_seconds,
            system_seconds,
            input_bytes,
            services_found: count(&netns)?,
        },
        None => PeerLoad::TimedOut {
            timeout_seconds: run.timeout.as_secs_f64(),
            input_bytes,
        },
    };
    let _ = fs::remove_file(&run.file);
    Ok(load)
}

/// Runs the scenario. Everything it starts and creates is stopped and removed before it
/// returns, also on an error or an interrupt.
///
/// # Errors
/// If a process does not start, a sync is wrong or incomplete, or a timeout passes.
pub fn run(
    config: &Config,
    tools: &Tools,
    progress: &ProgressBar,
    scratch: &Path,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Measured> {
    let mut services = objects::services(config.services, config.endpoints_per_service)?;
    let rt = runtime()?;
    let mut rng = Rng::new(config.seed);

    progress.set_message(format!(
        "loading gannet-control with {} services × {} endpoints",
        config.services, config.endpoints_per_service
    ));
    let plane = ControlPlane::start(
        &tools.gannet_control,
        &scratch.join("control"),
        objects::SERVICE_CIDR,
        &[],
    )?;
    let control = plane.addr();
    let server: ServerAddr = control.parse().context("the control plane's address")?;
    let mut client = rt
        .block_on(Client::connect(&server, &Credentials::default()))
        .context("connecting to gannet-control")?;
    let mut store = load_store(&rt, &mut client, &services, config.batch, progress)?;
    store.control_memory = memory(plane.process.pid()).ok();
    note(
        progress,
        format!(
            "gannet-control: {} objects in {:.2} s ({} calls)",
            store.objects, store.seconds, store.calls
        ),
    );

    let loadavg_before_sync = loadavg();
    // Field order of the vector is drop order: agents go before the control plane.
    let mut agents: Vec<BenchAgent> = Vec::new();
    let mut syncs = Vec::new();
    let mut cursors = Vec::new();
    for index in 0..config.agents {
        check_interrupted()?;
        progress.set_message(format!(
            "agent {index}: full sync of {} services",
            config.services
        ));
        let (agent, mut sync, cursor) = start_agent(config, tools, &control, scratch, index)?;
        agents.push(agent);
        progress.set_message(format!("agent {index}: checking its pinned maps"));
        sync.verified_frontends = verify_maps(&agents[index], &services)?;
        note(
            progress,
            format!(
                "{}: full sync {:.3} s (state received {:.3} s), RSS {:.1} MiB, {} frontends verified",
                sync.node,
                sync.full_sync_seconds,
                sync.received_seconds.unwrap_or(f64::NAN),
                sync.memory_after_sync.rss_kib as f64 / 1024.0,
                sync.verified_frontends
            ),
        );
        syncs.push(sync);
        cursors.push(cursor);
        progress.inc(1);
    }

    progress.set_message(format!(
        "{} incremental changes, {} agents watching",
        config.changes, config.agents
    ));
    let (mut inc, mut last) = incremental(
        &rt,
        &mut client,
        &mut agents,
        &mut cursors,
        &mut services,
        &mut rng,
        config.changes,
        progress,
    )?;
    progress.set_message("gannetctl apply -f".to_owned());
    let (cli, cli_last) = cli_applies(
        tools,
        &control,
        scratch,
        &mut agents,
        &mut cursors,
        &mut services,
        &mut rng,
        config.changes,
        config.cli_applies,
    )?;
    last = cli_last.unwrap_or(last);
    progress.inc(config.cli_applies as u64);
    for (agent, sync) in agents.iter_mut().zip(&mut syncs) {
        sync.memory_at_end = agent.process().ok().and_then(|p| memory(p.pid()).ok());
    }
    if config.changes + config.cli_applies > 0 {
        let found = status_frontends(&agents[0].status()?)?;
        let svc = &services[last];
        let backends = found.get(&objects::frontend(svc));
        ensure!(
            backends == Some(&objects::backends(svc)),
            "after the last change {}'s map holds {backends:?} for {}, expected {:?}",
            agents[0].name,
            svc.name,
            objects::backends(svc)
        );
        inc.last_change_verified = true;
    }
    if let Some(stats) = &inc.all
        && stats.max_ms > 10.0 * stats.p50_ms.max(1.0)
    {
        warnings.push(format!(
            "the slowest incremental change took {:.1} ms, over 10× the median ({:.1} ms)",
            stats.max_ms, stats.p50_ms
        ));
    }

    progress.set_message("stopping the agents and gannet-control".to_owned());
    for agent in &mut agents {
        agent.stop()?;
    }
    drop(agents);
    drop(client);
    drop(plane);

    let peers = if config.peers {
        peers(
            &services_for_peers(config)?,
            scratch,
            config.peer_timeout,
            progress,
        )?
    } else {
        Peers {
            nft: PeerLoad::Skipped,
            iptables_restore: PeerLoad::Skipped,
        }
    };
    for (what, peer) in [
        ("nft -f", &peers.nft),
        ("iptables-restore", &peers.iptables_restore),
    ] {
        if let PeerLoad::TimedOut {
            timeout_seconds, ..
        } = peer
        {
            warnings.push(format!(
                "{what} did not finish within {timeout_seconds:.0} s and was killed"
            ));
        }
    }
    Ok(Measured {
        store,
        agents: syncs,
        incremental: inc,
        cli,
        peers,
        loadavg_before_sync,
    })
}

/// The services as they were first stored (the peers load the state a fresh agent synced).
fn services_for_peers(config: &Config) -> anyhow::Result<Vec<Service>> {
    objects::services(config.services, config.endpoints_per_service)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: usize, per: usize) -> Config {
        Config {
            quick: false,
            services,
            endpoints_per_service: per,
            agents: 3,
            changes: 200,
            cli_applies: 10,
            batch: 1000,
            peer_timeout: Duration::from_secs(600),
            peers: true,
            seed: 1,
            gannetd_env: Vec::new(),
        }
    }

    #[test]
    fn capacities_grow_only_beyond_gannetds_defaults() {
        assert!(config(1000, 10).gannetd_args().is_empty());
        // 100 000 backends + 210 replacements fit the default 131 072.
        assert!(config(10_000, 10).gannetd_args().is_empty());
        // 200 000 do not.
        assert_eq!(
            config(20_000, 10).gannetd_args()[0],
            "--max-backends=262144"
        );
    }

    #[test]
    fn status_documents_are_read_as_sorted_backends() {
        let status = serde_json::json!({
            "services": [{"frontend": "10.96.0.10:80/TCP", "backends": ["10.128.0.2:8080", "10.128.0.1:8080"]}],
            "endpoints": []
        });
        let found = status_frontends(&status).expect("frontends");
        assert_eq!(
            found.get("10.96.0.10:80/TCP").map(Vec::as_slice),
            Some(["10.128.0.1:8080".to_owned(), "10.128.0.2:8080".to_owned()].as_slice())
        );
    }

    #[test]
    fn changes_replace_one_endpoint_with_a_fresh_address() {
        let mut services = objects::services(5, 3).expect("services");
        let before = services.clone();
        let mut rng = Rng::new(7);
        let i = change(&mut services, &mut rng, 4);
        let changed: Vec<usize> = (0..5).filter(|&s| services[s] != before[s]).collect();
        assert_eq!(changed, [i]);
        assert!(services[i].endpoints.contains(&objects::replacement(4)));
    }
}
