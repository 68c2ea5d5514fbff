//! The `clusterip` scenario: client pod → cluster IP → backend pod, five ways, at several numbers
//! of programmed services; and how long programming many services and changing one endpoint
//! take ([`programming`]).
//!
//! For every number of services N: one routed node per path (each with a client pod and three
//! backend pods running the peer server), kube-proxy's nftables rules loaded into the nft path's
//! node and its iptables rules into the iptables path's node, gannetd started on a cgroup of our
//! own and given the N services as YAML, and a second gannetd with its nftables data plane in the
//! gannet-nft path's node namespace, given the same YAML; then a connectivity check of every path,
//! then rounds in which the five paths are measured back to back in a random order.

pub mod cli;
pub mod programming;

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gannet_testkit::{Cgroup, ChildGuard, Netns, spawn};
use indicatif::ProgressBar;

use crate::agent::{self, Agent, SYNC_INTERVAL_MS};
use crate::kubeproxy::{iptables, nft};
use crate::peer::{self, ClientOptions, Metric, Sample, Traffic};
use crate::results::{
    LoadTime, LoadTimes, MetricResult, Programming, RunResult, Settings, Variant,
};
use crate::services::{
    self, ENDPOINTS_PER_SERVICE, SERVICE_PORT, Service, TARGET_PORT, bench_services,
};
use crate::topology::RoutedNode;
use crate::util::{Rng, check_interrupted, note};

/// The client pod's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
/// The backend pods' addresses: the measured service's endpoints.
pub const BACKEND_IPS: [Ipv4Addr; ENDPOINTS_PER_SERVICE] = [
    Ipv4Addr::new(10, 244, 0, 11),
    Ipv4Addr::new(10, 244, 0, 12),
    Ipv4Addr::new(10, 244, 0, 13),
];
/// The backends' ids in crr replies.
const BACKEND_IDS: [char; ENDPOINTS_PER_SERVICE] = ['a', 'b', 'c'];
/// Connections of the connectivity check of every path.
const CHECK_CONNECTIONS: u64 = 30;
/// How long a peer server may take to listen.
const SERVER_READY: Duration = Duration::from_secs(10);
/// How long loading rules or syncing gannetd may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Slack on top of a measurement's own length before its client is killed.
const CLIENT_SLACK: Duration = Duration::from_secs(20);

/// The binaries the scenario runs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The agent.
    pub gannetd: PathBuf,
    /// The traffic peer.
    pub peer: PathBuf,
    /// The control plane (the programming measurement's changes through it).
    pub gannet_control: PathBuf,
}

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--quick` (only recorded; the other fields already say what to do).
    pub quick: bool,
    /// The numbers of services to measure at.
    pub service_counts: Vec<usize>,
    /// Rounds (per number of services), their length, order and CPU.
    pub traffic: Traffic,
    /// The programming measurement (N × E services, endpoint changes), if it runs.
    pub programming: Option<programming::Config>,
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
            endpoints_per_service: ENDPOINTS_PER_SERVICE,
            measured_service: "last",
            peer_threads: 1,
            peer_cpu: self.traffic.peer_cpu,
            gannetd_sync_interval_ms: SYNC_INTERVAL_MS,
            programming: self.programming.as_ref().map(programming::Config::settings),
        }
    }

    /// How many measurements the whole run takes (for the progress bar).
    #[must_use]
    pub fn measurements(&self) -> u64 {
        // Each change is made twice: through the manifest directory and through gannet-control.
        let changes = self.programming.as_ref().map_or(0, |p| 2 * p.changes);
        (self.service_counts.len() * self.traffic.rounds * Variant::ALL.len() * Metric::ALL.len()
            + changes) as u64
    }
}

/// One path's node, pods and servers.
#[derive(Debug)]
struct PathSetup {
    // Field order is drop order: the servers before their namespaces.
    servers: Vec<ChildGuard>,
    node: RoutedNode,
}

impl PathSetup {
    fn new(variant: Variant, tools: &Tools, cpu: Option<usize>) -> anyhow::Result<PathSetup> {
        let mut pods = vec![CLIENT_IP];
        pods.extend(BACKEND_IPS);
        let node = RoutedNode::new(variant.short(), &pods)?;
        // Room for many short connections from one client.
        node.pods()[0]
            .netns
            .sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        let mut setup = PathSetup {
            servers: Vec::new(),
            node,
        };
        for (pod, id) in setup.node.pods()[1..].iter().zip(BACKEND_IDS) {
            let server = start_server(&tools.peer, &pod.netns, id, cpu)
                .with_context(|| format!("starting the peer server in pod {}", pod.ip))?;
            setup.servers.push(server);
        }
        Ok(setup)
    }

    fn client(&self) -> &Netns {
        &self.node.pods()[0].netns
    }
}

/// Starts a peer server in `netns` listening on every address at [`TARGET_PORT`], answering crr
/// requests with `id`, pinned to `cpu` if given, and waits until it listens.
///
/// # Errors
/// If it cannot start or does not listen within 10 s.
pub fn start_server(
    peer: &Path,
    netns: &Netns,
    id: char,
    cpu: Option<usize>,
) -> anyhow::Result<ChildGuard> {
    let mut cmd = Command::new(peer);
    cmd.args(["server", "--listen"])
        .arg(format!("0.0.0.0:{TARGET_PORT}"))
        .arg("--id")
        .arg(id.to_string());
    if let Some(cpu) = cpu {
        cmd.arg(format!("--cpu={cpu}"));
    }
    let mut server = spawn(cmd, Some(netns), None)?;
    server.wait_for_line(peer::READY_LINE, SERVER_READY)?;
    Ok(server)
}

/// Where a path's client connects for `metric`.
fn targets(variant: Variant, metric: Metric, vip: Ipv4Addr) -> Vec<SocketAddrV4> {
    match (variant, metric) {
        // Without a load balancer, crr spreads its connections over the backends itself.
        (Variant::Direct, Metric::Crr) => BACKEND_IPS
            .iter()
            .map(|&ip| SocketAddrV4::new(ip, TARGET_PORT))
            .collect(),
        (Variant::Direct, _) => vec![SocketAddrV4::new(BACKEND_IPS[0], TARGET_PORT)],
        _ => vec![SocketAddrV4::new(vip, SERVICE_PORT)],
    }
}

/// Runs `cmd` in `netns` (and `cgroup`) with stdin closed and waits up to `timeout` for it,
/// like `gannet_testkit::run_in`, but gives up (killing it) as soon as the harness is interrupted.
fn run_interruptible(
    cmd: Command,
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = spawn(cmd, Some(netns), cgroup)?;
    child.close_stdin();
    let deadline = Instant::now() + timeout;
    // On every early return the guard kills the child.
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_output(Duration::from_secs(1));
        }
        if Instant::now() >= deadline {
            bail!(
                "{program} did not finish within {timeout:?}; killed; stderr: {}",
                child.stderr_so_far().trim()
            );
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs one peer client in `netns` (and `cgroup`), pinned to `cpu` if given, and parses its
/// sample; gives up when the harness is interrupted.
///
/// # Errors
/// If the client fails, prints no sample or takes far longer than it was asked to.
pub fn run_client(
    peer: &Path,
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    options: &ClientOptions,
    cpu: Option<usize>,
) -> anyhow::Result<Sample> {
    let metric = options.metric;
    let mut cmd = Command::new(peer);
    cmd.arg(metric.name());
    for addr in &options.addrs {
        cmd.arg("--addr").arg(addr.to_string());
    }
    cmd.arg(format!("--seconds={}", options.duration.as_secs_f64()))
        .arg(format!("--warmup={}", options.warmup.as_secs_f64()));
    if let Some(max) = options.max_operations {
        cmd.arg(format!("--max-operations={max}"));
    }
    if let Some(cpu) = cpu {
        cmd.arg(format!("--cpu={cpu}"));
    }
    let timeout = options.duration + options.warmup + CLIENT_SLACK;
    let output = run_interruptible(cmd, netns, cgroup, timeout)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "peer {metric} to {:?} failed ({}): {}",
            options.addrs,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .with_context(|| format!("peer {metric} printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("parsing the peer's report {line:?}"))
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

/// Runs `cmd` inside `netns` and returns how long it took, and its user and system CPU time
/// (the harness reaps no other child meanwhile).
///
/// # Errors
/// If it fails, takes longer than `timeout`, or the harness is interrupted.
pub fn timed_load(
    mut cmd: Command,
    netns: &Netns,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<LoadTime> {
    cmd.env("LC_ALL", "C");
    let (user, sys) = children_cpu();
    let start = Instant::now();
    let output = run_interruptible(cmd, netns, None, timeout)?;
    let took = start.elapsed();
    let (user_after, sys_after) = children_cpu();
    ensure!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(LoadTime {
        seconds: took.as_secs_f64(),
        user_seconds: user_after - user,
        system_seconds: sys_after - sys,
    })
}

/// Everything that lives while one number of services is measured.
struct Bench<'a> {
    config: &'a Config,
    tools: &'a Tools,
    progress: &'a ProgressBar,
    // Field order is drop order: the gannetds before the cgroup, then the paths (the nft
    // gannetd's namespace is the gannet-nft path's node).
    agent: Option<Agent>,
    nft_agent: Option<Agent>,
    cgroup: Option<Cgroup>,
    paths: BTreeMap<Variant, PathSetup>,
    vip: Ipv4Addr,
    warnings: Vec<String>,
}

impl Bench<'_> {
    fn path(&self, variant: Variant) -> &PathSetup {
        &self.paths[&variant]
    }

    fn client_cgroup(&self, variant: Variant) -> Option<&Cgroup> {
        (variant == Variant::Gannet)
            .then_some(self.cgroup.as_ref())
            .flatten()
    }

    fn sample(
        &self,
        variant: Variant,
        metric: Metric,
        duration: Duration,
        warmup: Duration,
        max: Option<u64>,
    ) -> anyhow::Result<Sample> {
        let options = ClientOptions {
            metric,
            addrs: targets(variant, metric, self.vip),
            duration,
            warmup,
            max_operations: max,
        };
        run_client(
            &self.tools.peer,
            self.path(variant).client(),
            self.client_cgroup(variant),
            &options,
            self.config.traffic.peer_cpu,
        )
        .with_context(|| format!("{variant} {metric}"))
    }

    /// Loads every path's service state and returns the load times.
    fn program(&mut self, services: &[Service], scratch: &Path) -> anyhow::Result<LoadTimes> {
        let n = services.len();
        let mut load = LoadTimes::default();

        self.progress
            .set_message(format!("{n} services: nft -f kube-proxy rules"));
        let nft_file = scratch.join(format!("kube-proxy-{n}.nft"));
        let rules = nft::ruleset(services);
        load.nft_rules_bytes = rules.len();
        fs::write(&nft_file, rules).with_context(|| format!("writing {}", nft_file.display()))?;
        let mut cmd = Command::new("nft");
        cmd.arg("-f").arg(&nft_file);
        load.nft = timed_load(
            cmd,
            self.path(Variant::KubeProxyNft).node.node(),
            "nft -f",
            LOAD_TIMEOUT,
        )?;
        check_interrupted()?;

        self.progress
            .set_message(format!("{n} services: iptables-restore kube-proxy rules"));
        let ipt_file = scratch.join(format!("kube-proxy-{n}.iptables"));
        let rules = iptables::restore_input(services);
        load.iptables_rules_bytes = rules.len();
        fs::write(&ipt_file, rules).with_context(|| format!("writing {}", ipt_file.display()))?;
        let mut cmd = Command::new("iptables-restore");
        cmd.args(["-w", "30", "--noflush"]).arg(&ipt_file);
        load.iptables_restore = timed_load(
            cmd,
            self.path(Variant::KubeProxyIptables).node.node(),
            "iptables-restore",
            LOAD_TIMEOUT,
        )?;
        check_interrupted()?;

        self.progress.set_message(format!("{n} services: gannetd"));
        let manifest_dir = scratch.join(format!("manifests-{n}"));
        fs::create_dir(&manifest_dir)
            .with_context(|| format!("creating {}", manifest_dir.display()))?;
        let cgroup = self.cgroup.insert(Cgroup::new()?);
        let agent = self
            .agent
            .insert(Agent::start(&self.tools.gannetd, cgroup, &manifest_dir)?);
        let start = Instant::now();
        services::write_manifests(&manifest_dir, services)?;
        load.manifest_bytes = fs::metadata(manifest_dir.join(services::MANIFEST_FILE))
            .map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX));
        load.gannetd_sync_seconds = agent
            .wait_synced(n as u64, start, LOAD_TIMEOUT)?
            .as_secs_f64();
        check_interrupted()?;

        self.progress
            .set_message(format!("{n} services: gannetd --dataplane nftables"));
        let manifest_dir = scratch.join(format!("manifests-nft-{n}"));
        fs::create_dir(&manifest_dir)
            .with_context(|| format!("creating {}", manifest_dir.display()))?;
        let state_dir = scratch.join(format!("state-nft-{n}"));
        let args = agent::nft_args("bench-nft", SYNC_INTERVAL_MS);
        let node = agent::Node {
            netns: self.paths[&Variant::GannetNft].node.node(),
            tag: "nft",
            state_dir: &state_dir,
            args: &args,
        };
        let cgroup = self
            .cgroup
            .as_ref()
            .context("the cgroup was created above")?;
        let nft_agent = self.nft_agent.insert(Agent::start_nft(
            &self.tools.gannetd,
            cgroup,
            &manifest_dir,
            node,
        )?);
        let start = Instant::now();
        services::write_manifests(&manifest_dir, services)?;
        load.gannetd_nft_sync_seconds = nft_agent
            .wait_synced(n as u64, start, LOAD_TIMEOUT)?
            .as_secs_f64();
        Ok(load)
    }

    /// Checks that every path reaches the backends, and that the gannet path's cluster IP is
    /// only reachable through gannetd (a client outside its cgroup gets nowhere).
    fn check(&mut self) -> anyhow::Result<BTreeMap<Variant, BTreeMap<String, u64>>> {
        let mut spread = BTreeMap::new();
        for variant in Variant::ALL {
            self.progress.set_message(format!("checking {variant}"));
            let sample = self.sample(
                variant,
                Metric::Crr,
                Duration::from_secs(20),
                Duration::ZERO,
                Some(CHECK_CONNECTIONS),
            )?;
            ensure!(
                sample.operations == CHECK_CONNECTIONS && sample.error_count() == 0,
                "connectivity check of {variant}: {} of {CHECK_CONNECTIONS} connections to {:?} \
                 succeeded, failures {:?}",
                sample.operations,
                targets(variant, Metric::Crr, self.vip),
                sample.errors
            );
            if sample.backends.len() < BACKEND_IPS.len() {
                self.warnings.push(format!(
                    "{variant}: the connectivity check reached only backends {:?} in {CHECK_CONNECTIONS} connections",
                    sample.backends
                ));
            }
            spread.insert(variant, sample.backends);
        }
        // Without gannetd's cgroup, the gannet path's cluster IP leads nowhere.
        let options = ClientOptions {
            metric: Metric::Crr,
            addrs: targets(Variant::Gannet, Metric::Crr, self.vip),
            duration: Duration::from_secs(5),
            warmup: Duration::ZERO,
            max_operations: Some(1),
        };
        let outside = run_client(
            &self.tools.peer,
            self.path(Variant::Gannet).client(),
            None,
            &options,
            self.config.traffic.peer_cpu,
        )?;
        ensure!(
            outside.operations == 0,
            "a client outside gannetd's cgroup reached cluster IP {} in the gannet path: the \
             measurement would not be gannet's",
            self.vip
        );
        // The gannet-nft path's node holds gannet's table and nothing else that could translate.
        let node = self.path(Variant::GannetNft).node.node();
        let tables = crate::control::output_in(node, "nft", &["list", "tables"])?;
        let tables: Vec<&str> = tables.lines().map(str::trim).collect();
        ensure!(
            tables == [format!("table inet {}", programming::TABLE)],
            "the gannet-nft node should hold gannet's table only, it holds {tables:?}"
        );
        Ok(spread)
    }
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
) -> anyhow::Result<RunResult> {
    let services = bench_services(n, &BACKEND_IPS)?;
    let vip = services
        .last()
        .map(|s| s.cluster_ip)
        .context("no services")?;
    let mut bench = Bench {
        config,
        tools,
        progress,
        agent: None,
        nft_agent: None,
        cgroup: None,
        paths: BTreeMap::new(),
        vip,
        warnings: Vec::new(),
    };
    for variant in Variant::ALL {
        check_interrupted()?;
        progress.set_message(format!(
            "{n} services: building the {variant} node and pods"
        ));
        bench.paths.insert(
            variant,
            PathSetup::new(variant, tools, config.traffic.peer_cpu)?,
        );
    }
    let load = bench.program(&services, scratch)?;
    note(
        progress,
        format!(
            "{n} services programmed: gannetd {:.3} s, gannetd nftables {:.3} s, nft -f {:.3} s, \
             iptables-restore {:.3} s",
            load.gannetd_sync_seconds,
            load.gannetd_nft_sync_seconds,
            load.nft.seconds,
            load.iptables_restore.seconds
        ),
    );
    check_interrupted()?;
    let backend_spread = bench.check()?;

    let mut samples: BTreeMap<Variant, BTreeMap<Metric, Vec<f64>>> = BTreeMap::new();
    let mut order = Vec::with_capacity(bench.config.traffic.rounds);
    for round in 0..bench.config.traffic.rounds {
        let mut variants = Variant::ALL;
        rng.shuffle(&mut variants);
        order.push(variants.to_vec());
        for variant in variants {
            for metric in Metric::ALL {
                check_interrupted()?;
                progress.set_message(format!(
                    "{n} services, round {}/{}: {variant} {metric}",
                    round + 1,
                    bench.config.traffic.rounds
                ));
                let sample = bench.sample(
                    variant,
                    metric,
                    bench.config.traffic.duration,
                    bench.config.traffic.warmup,
                    None,
                )?;
                ensure!(
                    sample.value > 0.0,
                    "{variant} {metric} at {n} services measured nothing: {sample:?}"
                );
                if sample.error_count() > 0 {
                    bench.warnings.push(format!(
                        "{n} services, {variant} {metric}, round {}: {} failed operations {:?}",
                        round + 1,
                        sample.error_count(),
                        sample.errors
                    ));
                }
                samples
                    .entry(variant)
                    .or_default()
                    .entry(metric)
                    .or_default()
                    .push(sample.value);
                progress.inc(1);
            }
        }
    }
    warnings.append(&mut bench.warnings);

    let mut run = RunResult {
        services: n,
        load,
        order,
        results: samples
            .into_iter()
            .map(|(variant, metrics)| {
                let metrics = metrics
                    .into_iter()
                    .filter_map(|(metric, values)| {
                        MetricResult::from_samples(metric, values).map(|r| (metric, r))
                    })
                    .collect();
                (variant, metrics)
            })
            .collect(),
        backend_spread,
    };
    run.compute_ratios();
    // `bench` drops here: gannetd stopped and cleaned up, its cgroup removed, the namespaces
    // deleted.
    Ok(run)
}

/// What the scenario measured.
#[derive(Debug)]
pub struct Measured {
    /// One result per number of services.
    pub runs: Vec<RunResult>,
    /// The programming measurement, if it ran.
    pub programming: Option<Programming>,
}

/// Runs the scenario: every number of services, then the programming measurement.
///
/// # Errors
/// If any step fails or the run is interrupted; everything created is removed either way.
pub fn run(
    config: &Config,
    tools: &Tools,
    progress: &ProgressBar,
    scratch: &Path,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Measured> {
    let mut rng = Rng::new(config.traffic.seed);
    let mut runs = Vec::with_capacity(config.service_counts.len());
    for &n in &config.service_counts {
        let run = run_size(n, config, tools, &mut rng, progress, scratch, warnings)
            .with_context(|| format!("at {n} services"))?;
        note(progress, summary_line(&run));
        runs.push(run);
    }
    let programming = config
        .programming
        .as_ref()
        .map(|p| {
            let binaries = programming::Tools {
                gannetd: &tools.gannetd,
                gannet_control: &tools.gannet_control,
            };
            let measured = programming::run(p, binaries, progress, scratch, &mut rng, warnings)
                .with_context(|| {
                    format!(
                        "programming {} services × {} endpoints",
                        p.services, p.endpoints
                    )
                })?;
            note(progress, programming_line(&measured));
            anyhow::Ok(measured)
        })
        .transpose()?;
    Ok(Measured { runs, programming })
}

/// One line for the terminal: the programming measurement.
fn programming_line(p: &Programming) -> String {
    let nft = p.kube_proxy_nft.seconds().map_or_else(
        || "not run".to_owned(),
        |(s, killed)| format!("{}{s:.1} s", if killed { "> " } else { "" }),
    );
    let mut changes = String::new();
    for (source, latency) in [
        ("manifest directory", &p.change_latency),
        ("gannet-control", &p.control_change_latency),
    ] {
        if let Some(c) = latency {
            changes.push_str(&format!(
                "; endpoint change ({source}) p50 {:.1} ms, p99 {:.1} ms ({} changes)",
                c.table.p50_ms, c.table.p99_ms, c.table.count
            ));
        }
    }
    format!(
        "{} services × {} endpoints: gannet-nft {:.2} s, nft -f {nft}{changes}",
        p.services, p.endpoints_per_service, p.gannet_nft_seconds
    )
}

/// One line per size for the terminal: the ratios of every path and metric.
fn summary_line(run: &RunResult) -> String {
    let mut parts = Vec::new();
    for variant in &Variant::ALL[1..] {
        let ratios: Vec<String> = Metric::ALL
            .iter()
            .filter_map(|&m| {
                run.get(*variant, m)
                    .and_then(|r| r.ratio_to_direct)
                    .map(|r| format!("{m} {r:.2}"))
            })
            .collect();
        parts.push(format!("{variant}: {}", ratios.join(" ")));
    }
    format!("{} services, × direct: {}", run.services, parts.join(" | "))
}
