//! `gannet-bench`: runs a benchmark scenario and writes `results.json`, `results.md` and charts.
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies are the library's; this binary only calls into it"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use gannet_bench::clusterip::{self, Tools};
use gannet_bench::cni::{self, rootns};
use gannet_bench::control;
use gannet_bench::kubeproxy::{iptables, nft};
use gannet_bench::nodeport;
use gannet_bench::overlay;
use gannet_bench::peer::{Metric, Traffic};
use gannet_bench::results::Results;
use gannet_bench::services::{MAX_SERVICES, bench_services, manifests_yaml, with_node_ports};
use gannet_bench::util::{self, ScratchDir};
use gannet_bench::{chart, machine, report};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `EX_USAGE` from sysexits.h.
const EXIT_USAGE: u8 = 64;
/// The workspace the harness was built from (for building the binaries it needs and the commit).
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[derive(Debug, Parser)]
#[command(
    name = "gannet-bench",
    version,
    about = "gannet's benchmarks: socket-level service load balancing against the limit and kube-proxy. Needs root."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Client pod → ClusterIP → backend pod: direct, gannet, kube-proxy nftables and iptables
    /// rules, at 1, 1 000 and 10 000 programmed services.
    Clusterip(ClusterIpArgs),
    /// CNI ADD and DEL latency and pods per second: gannet-cni next to the reference bridge +
    /// host-local plugins, for 200 pods each.
    Cni(CniArgs),
    /// gannet-control feeding gannetd: full sync of 10 000 services × 10 endpoints to fresh
    /// agents (time, RSS), incremental change latency with 3 agents watching, and kube-proxy's
    /// nft -f / iptables-restore of the same services.
    Control(ControlArgs),
    /// Pod to pod across two nodes, directly and through a ClusterIP: the underlay, a
    /// Flannel-style vxlan setup with the reference CNI plugins, and gannet's overlay modes
    /// (vxlan, host-gw, ebpf).
    Overlay(OverlayArgs),
    /// From outside the cluster to NodeIP:nodePort, the backend on another node: gannet's tc
    /// NodePort program, the same behind its XDP front, gannetd's nftables data plane,
    /// kube-proxy's nftables and iptables rules; per-packet cost of the programs (kernel test
    /// runs), rr, crr and stream, at 1 and 10 000 services.
    Nodeport(NodePortArgs),
    /// Pod start latency under gannetd's kubelet role (apply → Ready, apply → first answer
    /// through the pod's Service) against `ctr run --cni` of the same image and CNI
    /// configuration, and gannetd's memory with the pods running. Needs containerd and runc.
    Pods(PodsArgs),
    /// Print what the clusterip scenario programs for N services: kube-proxy's nftables rules,
    /// its iptables-restore input, or gannetd's manifests. Needs no root.
    Rules(RulesArgs),
}

#[derive(Debug, Args)]
struct PodsArgs {
    /// Pods started each way.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Where to write results.json and results.md [default: bench-results/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not build the binaries first (done by default under `cargo run`).
    #[arg(long)]
    no_build: bool,
}

impl PodsArgs {
    fn config(&self) -> Result<gannet_bench::pods::Config, Vec<String>> {
        if self.pods == 0 || self.pods > 200 {
            return Err(vec![format!("--pods {}: must be 1 to 200", self.pods)]);
        }
        Ok(gannet_bench::pods::Config { pods: self.pods })
    }
}

#[derive(Debug, Args)]
struct RulesArgs {
    /// What to print.
    #[arg(value_enum)]
    what: RulesKind,
    /// Number of services (the last one is the measured one).
    #[arg(long, default_value_t = 2)]
    services: usize,
    /// As `NodePort` services, as the nodeport scenario programs them (node ports from 30000).
    #[arg(long)]
    node_ports: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RulesKind {
    /// `nft -f` input (kube-proxy's nftables mode).
    Nft,
    /// `iptables-restore --noflush` input (kube-proxy's iptables mode).
    Iptables,
    /// Service and EndpointSlice YAML (gannetd's manifest directory).
    Manifests,
}

fn print_rules(args: &RulesArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut services = bench_services(args.services, &clusterip::BACKEND_IPS)?;
    if args.node_ports {
        with_node_ports(&mut services)?;
    }
    let text = match args.what {
        RulesKind::Nft => nft::ruleset(&services),
        RulesKind::Iptables => iptables::restore_input(&services),
        RulesKind::Manifests => manifests_yaml(&services),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

#[derive(Debug, Args)]
struct ClusterIpArgs {
    /// A short run (1 and 1 000 services, 2 rounds of 0.5 s): under a minute.
    #[arg(long)]
    quick: bool,
    /// Where to write results.json, results.md and the charts [default: bench-results/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Numbers of services to measure at, comma-separated [default: 1,1000,10000; --quick: 1,1000].
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<usize>>,
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Services of the programming measurement (gannet-nft and `nft -f` of kube-proxy's rules,
    /// then endpoint changes); 0 skips it [default: 10000; --quick: 1000].
    #[arg(long)]
    program_services: Option<usize>,
    /// Endpoints per service of the programming measurement.
    #[arg(long, default_value_t = 10)]
    program_endpoints: usize,
    /// Endpoint changes timed through gannet-nft after the programming [default: 20; --quick:
    /// 10].
    #[arg(long)]
    changes: Option<usize>,
    /// Seconds `nft -f` of the programming measurement may take before it is killed.
    #[arg(long, default_value_t = 600)]
    program_timeout: u64,
    /// Do not build gannetd and gannet-bench-peer first (done by default under `cargo run`).
    #[arg(long)]
    no_build: bool,
}

impl ClusterIpArgs {
    /// The programming measurement's configuration (`None`: `--program-services 0`); every
    /// problem, each naming its flag, into `errors`.
    fn programming(&self, errors: &mut Vec<String>) -> Option<clusterip::programming::Config> {
        let services = self
            .program_services
            .unwrap_or(if self.quick { 1000 } else { 10_000 });
        let changes = self.changes.unwrap_or(if self.quick { 10 } else { 20 });
        let endpoints = self.program_endpoints;
        if services > control::objects::MAX_SERVICES {
            errors.push(format!(
                "--program-services {services}: must be at most {}",
                control::objects::MAX_SERVICES
            ));
        }
        if !(1..=control::objects::MAX_ENDPOINTS_PER_SERVICE).contains(&endpoints) {
            errors.push(format!(
                "--program-endpoints {endpoints}: must be between 1 and {}",
                control::objects::MAX_ENDPOINTS_PER_SERVICE
            ));
        } else if services * endpoints > control::objects::MAX_ENDPOINTS {
            errors.push(format!(
                "--program-services {services} × --program-endpoints {endpoints}: at most {} \
                 endpoints in all",
                control::objects::MAX_ENDPOINTS
            ));
        }
        if changes > 10_000 {
            errors.push(format!("--changes {changes}: must be at most 10000"));
        }
        if self.program_timeout == 0 {
            errors.push("--program-timeout 0: must be at least 1".to_owned());
        }
        (services > 0).then(|| clusterip::programming::Config {
            services,
            endpoints,
            changes,
            timeout: Duration::from_secs(self.program_timeout),
        })
    }

    /// The scenario's configuration; every problem, each naming its flag, if any.
    fn config(&self) -> Result<clusterip::Config, Vec<String>> {
        let mut errors = Vec::new();
        let default: &[usize] = if self.quick {
            &[1, 1000]
        } else {
            &[1, 1000, 10_000]
        };
        let service_counts = service_counts(self.services.as_ref(), default, &mut errors);
        let traffic = self.traffic.settings(self.quick, &mut errors);
        let programming = self.programming(&mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(clusterip::Config {
            quick: self.quick,
            service_counts,
            traffic,
            programming,
        })
    }
}

#[derive(Debug, Args)]
struct OverlayArgs {
    /// A short run (2 rounds of 0.5 s): about a minute.
    #[arg(long)]
    quick: bool,
    /// Where to write results.json, results.md and the charts [default: bench-results/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    traffic: TrafficArgs,
    /// The directory with the reference plugins `bridge` and `host-local`.
    #[arg(long, default_value = cni::REFERENCE_DIR)]
    reference_dir: PathBuf,
    /// Do not build the binaries first (done by default under `cargo run`).
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, Args)]
struct NodePortArgs {
    /// A short run (1 and 1 000 services, 2 rounds of 0.5 s).
    #[arg(long)]
    quick: bool,
    /// Where to write results.json, results.md and the charts [default: bench-results/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Numbers of services to measure at, comma-separated [default: 1,10000; --quick: 1,1000].
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<usize>>,
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Single runs of every path in the per-packet measurement [default: 20000; --quick: 5000].
    #[arg(long)]
    testrun_calls: Option<u32>,
    /// Do not build the binaries first (done by default under `cargo run`).
    #[arg(long)]
    no_build: bool,
}

/// The numbers of services of `--services`, or the defaults, and every problem with them.
fn service_counts(
    given: Option<&Vec<usize>>,
    default: &[usize],
    errors: &mut Vec<String>,
) -> Vec<usize> {
    let counts = given.cloned().unwrap_or_else(|| default.to_vec());
    if counts.is_empty() {
        errors.push("--services: give at least one number".to_owned());
    }
    for &n in &counts {
        if !(1..=MAX_SERVICES).contains(&n) {
            errors.push(format!(
                "--services {n}: must be between 1 and {MAX_SERVICES}"
            ));
        }
    }
    counts
}

impl NodePortArgs {
    /// The scenario's configuration; every problem, each naming its flag, if any.
    fn config(&self) -> Result<nodeport::Config, Vec<String>> {
        let mut errors = Vec::new();
        let default: &[usize] = if self.quick { &[1, 1000] } else { &[1, 10_000] };
        let service_counts = service_counts(self.services.as_ref(), default, &mut errors);
        let testrun_calls = self
            .testrun_calls
            .unwrap_or(if self.quick { 5000 } else { 20_000 });
        if !(1..=1_000_000).contains(&testrun_calls) {
            errors.push(format!(
                "--testrun-calls {testrun_calls}: must be between 1 and 1000000"
            ));
        }
        let traffic = self.traffic.settings(self.quick, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(nodeport::Config {
            quick: self.quick,
            service_counts,
            traffic,
            testrun_calls,
        })
    }
}

/// The measurement settings of the traffic scenarios (`clusterip`, `overlay`, `nodeport`).
#[derive(Debug, Args)]
struct TrafficArgs {
    /// Measurements of every path and metric [default: 3; --quick: 2].
    #[arg(long)]
    rounds: Option<usize>,
    /// Length of one measurement in seconds [default: 2; --quick: 0.5].
    #[arg(long)]
    seconds: Option<f64>,
    /// Seed of the random measurement order [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// The CPU that every peer (client and servers) runs on [default: the last CPU].
    #[arg(long, conflicts_with = "no_pin")]
    cpu: Option<usize>,
    /// Let the scheduler place the peers (results then depend on where it puts them).
    #[arg(long)]
    no_pin: bool,
}

impl TrafficArgs {
    /// The values (quick: 2 rounds of 0.5 s after 0.1 s of warm-up, else 3 of 2 s after 0.2 s)
    /// and every problem, each naming its flag.
    fn settings(&self, quick: bool, errors: &mut Vec<String>) -> Traffic {
        let rounds = self.rounds.unwrap_or(if quick { 2 } else { 3 });
        if rounds == 0 {
            errors.push("--rounds 0: must be at least 1".to_owned());
        }
        let seconds = self.seconds.unwrap_or(if quick { 0.5 } else { 2.0 });
        if !(0.05..=600.0).contains(&seconds) {
            errors.push(format!("--seconds {seconds}: must be between 0.05 and 600"));
        }
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let peer_cpu = if self.no_pin {
            None
        } else {
            let cpu = self.cpu.unwrap_or(cpus - 1);
            if cpu >= cpus {
                errors.push(format!(
                    "--cpu {cpu}: this machine has CPUs 0 to {}",
                    cpus - 1
                ));
            }
            Some(cpu)
        };
        Traffic {
            rounds,
            duration: Duration::from_secs_f64(seconds.clamp(0.05, 600.0)),
            warmup: Duration::from_secs_f64(if quick { 0.1 } else { 0.2 }),
            seed: self.seed.unwrap_or_else(util::clock_seed),
            peer_cpu,
        }
    }
}

impl OverlayArgs {
    /// The scenario's configuration; every problem, each naming its flag, if any.
    fn config(&self) -> Result<overlay::Config, Vec<String>> {
        let mut errors = Vec::new();
        let traffic = self.traffic.settings(self.quick, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(overlay::Config {
            quick: self.quick,
            traffic,
        })
    }
}

#[derive(Debug, Args)]
struct CniArgs {
    /// A short run: 50 pods per plugin.
    #[arg(long)]
    quick: bool,
    /// Pods per plugin [default: 200; --quick: 50].
    #[arg(long)]
    pods: Option<usize>,
    /// Where to write results.json, results.md and the chart [default: bench-results/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Pods per round and plugin (× the concurrency above 1).
    #[arg(long, default_value_t = 10)]
    round_size: usize,
    /// Also measure with this many invocations of a plugin at a time (1: sequential only).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seed of the random plugin order of the rounds [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// The directory with the reference plugins `bridge` and `host-local`.
    #[arg(long, default_value = cni::REFERENCE_DIR)]
    reference_dir: PathBuf,
    /// Do not build gannet-cni first (done by default under `cargo run`).
    #[arg(long)]
    no_build: bool,
}

impl CniArgs {
    /// The scenario's configuration; every problem, each naming its flag, if any.
    fn config(&self) -> Result<cni::Config, Vec<String>> {
        let mut errors = Vec::new();
        let pods = self.pods.unwrap_or(if self.quick { 50 } else { 200 });
        if !(1..=cni::MAX_PODS).contains(&pods) {
            errors.push(format!(
                "--pods {pods}: must be between 1 and {} (both plugins take addresses from a /24)",
                cni::MAX_PODS
            ));
        }
        if !(1..=1000).contains(&self.round_size) {
            errors.push(format!(
                "--round-size {}: must be between 1 and 1000",
                self.round_size
            ));
        }
        if !(1..=64).contains(&self.concurrency) {
            errors.push(format!(
                "--concurrency {}: must be between 1 and 64",
                self.concurrency
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut concurrency = vec![1];
        if self.concurrency > 1 {
            concurrency.push(self.concurrency);
        }
        Ok(cni::Config {
            quick: self.quick,
            pods,
            round_size: self.round_size,
            concurrency,
            seed: self.seed.unwrap_or_else(util::clock_seed),
        })
    }
}

#[derive(Debug, Args)]
struct ControlArgs {
    /// A short run: 1 000 services, 50 changes, 5 gannetctl runs.
    #[arg(long)]
    quick: bool,
    /// Where to write results.json and results.md [default: bench-results/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Services stored [default: 10000; --quick: 1000].
    #[arg(long)]
    services: Option<usize>,
    /// Endpoints per service (one EndpointSlice each).
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// gannetd agents, started one after another, all watching during the changes.
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// Incremental changes through the gRPC Apply [default: 200; --quick: 50].
    #[arg(long)]
    changes: Option<usize>,
    /// Changes through `gannetctl apply -f` [default: 10; --quick: 5].
    #[arg(long)]
    cli_applies: Option<usize>,
    /// Objects per Apply call while loading gannet-control.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Seconds `nft -f` and `iptables-restore` may take each before they are killed.
    #[arg(long, default_value_t = 600)]
    peer_timeout: u64,
    /// Do not load kube-proxy's rule sets.
    #[arg(long)]
    no_peers: bool,
    /// Seed of the choice of changed services and endpoints [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Extra environment for every gannetd, `KEY=VALUE` (repeatable), e.g. `MALLOC_ARENA_MAX=1`.
    #[arg(long, value_name = "KEY=VALUE")]
    gannetd_env: Vec<String>,
    /// Do not build gannetd, gannet-control and gannetctl first (done by default under `cargo run`).
    #[arg(long)]
    no_build: bool,
}

impl ControlArgs {
    /// The scenario's configuration; every problem, each naming its flag, if any.
    fn config(&self) -> Result<control::Config, Vec<String>> {
        let mut errors = Vec::new();
        let services = self
            .services
            .unwrap_or(if self.quick { 1000 } else { 10_000 });
        if !(1..=control::objects::MAX_SERVICES).contains(&services) {
            errors.push(format!(
                "--services {services}: must be between 1 and {}",
                control::objects::MAX_SERVICES
            ));
        }
        if !(1..=control::objects::MAX_ENDPOINTS_PER_SERVICE).contains(&self.endpoints) {
            errors.push(format!(
                "--endpoints {}: must be between 1 and {}",
                self.endpoints,
                control::objects::MAX_ENDPOINTS_PER_SERVICE
            ));
        } else if services * self.endpoints > control::objects::MAX_ENDPOINTS {
            errors.push(format!(
                "--services × --endpoints: at most {} endpoints in all",
                control::objects::MAX_ENDPOINTS
            ));
        }
        if !(1..=16).contains(&self.agents) {
            errors.push(format!(
                "--agents {}: must be between 1 and 16",
                self.agents
            ));
        }
        let changes = self.changes.unwrap_or(if self.quick { 50 } else { 200 });
        let cli_applies = self.cli_applies.unwrap_or(if self.quick { 5 } else { 10 });
        if changes + cli_applies > 100_000 {
            errors.push("--changes + --cli-applies: at most 100 000".to_owned());
        }
        if !(1..=100_000).contains(&self.batch) {
            errors.push(format!(
                "--batch {}: must be between 1 and 100 000",
                self.batch
            ));
        }
        if !(1..=3600).contains(&self.peer_timeout) {
            errors.push(format!(
                "--peer-timeout {}: must be between 1 and 3600 seconds",
                self.peer_timeout
            ));
        }
        let mut gannetd_env = Vec::new();
        for pair in &self.gannetd_env {
            match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    gannetd_env.push((key.to_owned(), value.to_owned()));
                }
                _ => errors.push(format!("--gannetd-env {pair:?}: must be KEY=VALUE")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(control::Config {
            quick: self.quick,
            services,
            endpoints_per_service: self.endpoints,
            agents: self.agents,
            changes,
            cli_applies,
            batch: self.batch,
            peer_timeout: Duration::from_secs(self.peer_timeout),
            peers: !self.no_peers,
            seed: self.seed.unwrap_or_else(util::clock_seed),
            gannetd_env,
        })
    }
}

/// Checks what a run needs before anything is created, all problems at once: root, `tools` on
/// the PATH, cgroup v2 if `cgroup`, the chart font if `charts`, and `files`.
fn preflight(
    scenario: &str,
    tools: &[&str],
    cgroup: bool,
    charts: bool,
    files: &[(&Path, &str)],
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push(format!(
            "must run as root: it creates network namespaces{} \
             (sudo -E cargo run --release -p gannet-bench -- {scenario})",
            if cgroup {
                " and a cgroup and loads eBPF programs"
            } else {
                " and runs CNI plugins in them"
            }
        ));
    }
    for tool in tools {
        if machine::which(tool).is_none() {
            problems.push(format!(
                "`{tool}` is not on the PATH (Debian: apt-get install iproute2 nftables iptables procps)"
            ));
        }
    }
    if cgroup && let Err(err) = gannet_testkit::cgroup2_root() {
        problems.push(format!("{err:#}"));
    }
    if charts && let Err(err) = chart::load_font() {
        problems.push(format!("{err:#}"));
    }
    for (file, hint) in files {
        if !file.is_file() {
            problems.push(format!("{} is missing ({hint})", file.display()));
        }
    }
    if !problems.is_empty() {
        bail!("cannot run:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// Under `cargo run`, builds `packages`' binaries with the profile this binary has.
fn build_binaries(packages: &[&str], what: &str) -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let exe = std::env::current_exe().context("finding the running executable")?;
    let profile = exe
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .unwrap_or("debug");
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(Path::new(WORKSPACE).join("Cargo.toml"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    for package in packages {
        cmd.args(["-p", package]);
    }
    cmd.arg("--bins");
    eprintln!("gannet-bench: building {what} ({profile})");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building {what} failed ({status})");
    }
    Ok(())
}

/// The workspace binary `name` next to this one (or in `$GANNET_BIN_DIR`); the error says how to
/// build it (`package`).
fn find_tool(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running executable")?;
    let dir = std::env::var_os(gannet_testkit::BIN_DIR_ENV).map(PathBuf::from);
    gannet_testkit::find_bin(name, dir.as_deref(), &exe).with_context(|| {
        format!("{name} is needed; build it with `cargo build --release -p {package}`")
    })
}

/// The clusterip scenario's binaries.
fn tools() -> anyhow::Result<Tools> {
    Ok(Tools {
        gannetd: find_tool("gannetd", "gannet-agent")?,
        peer: find_tool("gannet-bench-peer", "gannet-bench")?,
        gannet_control: find_tool("gannet-control", "gannet-control")?,
    })
}

fn progress_bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {unit}  {{wide_msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn write_reports(out: &Path, results: &Results) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let json = out.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(results)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    written.push(json);
    let mut charts = Vec::new();
    for metric in Metric::ALL {
        let file = format!("{metric}.png");
        let path = out.join(&file);
        chart::render(&path, metric, &results.runs)?;
        charts.push((metric, file));
        written.push(path);
    }
    let md = out.join("results.md");
    fs::write(&md, report::render(results, &charts))
        .with_context(|| format!("writing {}", md.display()))?;
    written.push(md);
    Ok(written)
}

fn clusterip(args: &ClusterIpArgs, config: &clusterip::Config) -> anyhow::Result<()> {
    preflight(
        "clusterip",
        &["ip", "nft", "iptables", "iptables-restore", "sysctl"],
        true,
        true,
        &[],
    )?;
    if !args.no_build {
        build_binaries(
            &["gannet-agent", "gannet-bench", "gannet-control"],
            "gannetd, gannet-bench-peer and gannet-control",
        )?;
    }
    let tools = tools()?;
    let run = CheckedRun::start(args.out.as_deref())?;
    let (measured, warnings, root) = run
        .measure(config.measurements(), |progress, scratch, warnings| {
            clusterip::run(config, &tools, progress, scratch, warnings)
        })?;
    let results = Results {
        scenario: "clusterip",
        started_at: util::rfc3339(run.started),
        wall_seconds: run.seconds(),
        settings: config.settings(),
        machine: run.machine.clone(),
        runs: measured.runs,
        programming: measured.programming,
        root_namespace: root,
        warnings,
    };
    let written = write_reports(&run.out, &results)?;
    for warning in &results.warnings {
        eprintln!("gannet-bench: warning: {warning}");
    }
    eprintln!(
        "gannet-bench: clusterip done in {:.0} s; wrote {}",
        results.wall_seconds,
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    root_unchanged(&results.root_namespace)
}

fn write_cni_reports(out: &Path, results: &cni::results::Results) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let json = out.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(results)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    written.push(json);
    let chart_file = "latency.png";
    let chart_path = out.join(chart_file);
    cni::chart::render(&chart_path, &results.phases)?;
    written.push(chart_path);
    let md = out.join("results.md");
    fs::write(&md, cni::report::render(results, Some(chart_file)))
        .with_context(|| format!("writing {}", md.display()))?;
    written.push(md);
    Ok(written)
}

fn cni_tools(args: &CniArgs) -> anyhow::Result<cni::Tools> {
    Ok(cni::Tools {
        gannet_cni: find_tool("gannet-cni", "gannet-cni")?,
        reference_dir: args.reference_dir.clone(),
    })
}

fn cni(args: &CniArgs, config: &cni::Config) -> anyhow::Result<()> {
    let bridge = args.reference_dir.join("bridge");
    let host_local = args.reference_dir.join("host-local");
    let hint = "Debian: apt-get install containernetworking-plugins, or --reference-dir";
    preflight(
        "cni",
        &["ip", "nft", "readlink"],
        false,
        true,
        &[(&bridge, hint), (&host_local, hint)],
    )?;
    if !args.no_build {
        build_binaries(&["gannet-cni"], "gannet-cni")?;
    }
    let tools = cni_tools(args)?;
    let started = SystemTime::now();
    let out = output_dir(args.out.as_deref(), started)?;
    let machine = machine::collect(Some(Path::new(WORKSPACE)));
    let before = rootns::take().context("reading the root network namespace")?;
    let clock = Instant::now();

    let progress = progress_bar(config.invocations(), "invocations");
    let scratch = ScratchDir::new()?;
    let plugins = cni::plugin_infos(&tools, scratch.path(), &machine.gannet_commit);
    let outcome = cni::run(config, &tools, &progress, scratch.path());
    progress.finish_and_clear();
    drop(scratch);
    let after = rootns::take().context("reading the root network namespace again")?;
    let differences = rootns::differences(&before, &after);
    let phases = outcome?;

    let results = cni::results::Results {
        scenario: "cni",
        started_at: util::rfc3339(started),
        wall_seconds: clock.elapsed().as_secs_f64(),
        settings: config.settings(),
        machine,
        plugins,
        phases,
        root_namespace: root_check(&before, differences),
        warnings: Vec::new(),
    };
    let written = write_cni_reports(&out, &results)?;
    eprintln!(
        "gannet-bench: cni done in {:.0} s; wrote {}",
        results.wall_seconds,
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    root_unchanged(&results.root_namespace)
}

fn control_tools() -> anyhow::Result<control::Tools> {
    Ok(control::Tools {
        gannetd: find_tool("gannetd", "gannet-agent")?,
        gannet_control: find_tool("gannet-control", "gannet-control")?,
        gannetctl: find_tool("gannetctl", "gannetctl")?,
    })
}

fn run_control(args: &ControlArgs, config: &control::Config) -> anyhow::Result<()> {
    let mut tools_needed = vec!["ip", "nft", "ps"];
    if config.peers {
        tools_needed.extend(["iptables", "iptables-restore", "iptables-save"]);
    }
    preflight("control", &tools_needed, true, false, &[])?;
    if !args.no_build {
        build_binaries(
            &["gannet-agent", "gannet-control", "gannetctl"],
            "gannetd, gannet-control and gannetctl",
        )?;
    }
    let tools = control_tools()?;
    let started = SystemTime::now();
    let out = output_dir(args.out.as_deref(), started)?;
    let machine = machine::collect(Some(Path::new(WORKSPACE)));
    let loadavg_start = control::loadavg();
    let busy = control::busy_processes();
    let before = rootns::take().context("reading the root network namespace")?;
    let clock = Instant::now();

    let steps = config.services + config.agents + config.changes + config.cli_applies;
    let progress = progress_bar(steps as u64, "steps");
    let scratch = ScratchDir::new()?;
    let mut warnings = Vec::new();
    let outcome = control::run(config, &tools, &progress, scratch.path(), &mut warnings);
    progress.finish_and_clear();
    drop(scratch);
    let after = rootns::take().context("reading the root network namespace again")?;
    let differences = rootns::differences(&before, &after);
    let measured = outcome?;

    let goals = control::report::goals(
        &measured.agents,
        &measured.incremental,
        &measured.peers,
        config.services,
    );
    let results = control::report::Results {
        scenario: "control",
        started_at: util::rfc3339(started),
        wall_seconds: clock.elapsed().as_secs_f64(),
        settings: config.settings(),
        machine,
        load: control::report::Load {
            loadavg_start,
            loadavg_before_sync: measured.loadavg_before_sync,
            loadavg_end: control::loadavg(),
            busy_processes_at_start: busy,
        },
        store: measured.store,
        agents: measured.agents,
        incremental: measured.incremental,
        cli: measured.cli,
        peers: measured.peers,
        goals,
        root_namespace: root_check(&before, differences),
        warnings,
    };
    write_results(&out, &results, &control::report::render(&results))?;
    print_verdicts(&results.warnings, &results.goals, "undecided");
    eprintln!(
        "gannet-bench: control done in {:.0} s; wrote results.json, results.md in {}",
        results.wall_seconds,
        out.display()
    );
    root_unchanged(&results.root_namespace)
}

fn overlay_tools(args: &OverlayArgs) -> anyhow::Result<overlay::Tools> {
    Ok(overlay::Tools {
        gannetd: find_tool("gannetd", "gannet-agent")?,
        gannet_control: find_tool("gannet-control", "gannet-control")?,
        gannetctl: find_tool("gannetctl", "gannetctl")?,
        gannet_cni: find_tool("gannet-cni", "gannet-cni")?,
        peer: find_tool("gannet-bench-peer", "gannet-bench")?,
        reference_dir: args.reference_dir.clone(),
    })
}

fn run_overlay(args: &OverlayArgs, config: &overlay::Config) -> anyhow::Result<()> {
    let bridge = args.reference_dir.join("bridge");
    let host_local = args.reference_dir.join("host-local");
    let hint = "Debian: apt-get install containernetworking-plugins, or --reference-dir";
    preflight(
        "overlay",
        &["ip", "bridge", "nft", "sysctl"],
        true,
        true,
        &[(&bridge, hint), (&host_local, hint)],
    )?;
    if !args.no_build {
        build_binaries(
            &[
                "gannet-agent",
                "gannet-bench",
                "gannet-cni",
                "gannet-control",
                "gannetctl",
            ],
            "gannetd, gannet-bench-peer, gannet-cni, gannet-control and gannetctl",
        )?;
    }
    let tools = overlay_tools(args)?;
    let run = CheckedRun::start(args.out.as_deref())?;
    let (measured, warnings, root) = run
        .measure(config.measurements(), |progress, scratch, warnings| {
            overlay::run(config, &tools, progress, scratch, warnings)
        })?;
    let results = overlay::report::Results::new(
        util::rfc3339(run.started),
        run.seconds(),
        config.settings(),
        run.machine.clone(),
        measured,
        root,
        warnings,
    );
    let charts = overlay::report::write_charts(&run.out, &results)?;
    let markdown = overlay::report::render(&results, &charts);
    run.finish(
        "overlay",
        &results,
        &markdown,
        &results.goals,
        &results.warnings,
        &results.root_namespace,
    )
}

fn nodeport_tools() -> anyhow::Result<nodeport::Tools> {
    Ok(nodeport::Tools {
        gannetd: find_tool("gannetd", "gannet-agent")?,
        testrun: find_tool("gannet-testrun", "gannet-agent")?,
        gannet_cni: find_tool("gannet-cni", "gannet-cni")?,
        peer: find_tool("gannet-bench-peer", "gannet-bench")?,
    })
}

fn run_nodeport(args: &NodePortArgs, config: &nodeport::Config) -> anyhow::Result<()> {
    preflight(
        "nodeport",
        // ethtool: GRO on the bridge port of the gannet-xdp variant's node A.
        &[
            "ip",
            "nft",
            "iptables",
            "iptables-restore",
            "sysctl",
            "ethtool",
        ],
        true,
        true,
        &[],
    )?;
    if !args.no_build {
        build_binaries(
            &["gannet-agent", "gannet-bench", "gannet-cni"],
            "gannetd, gannet-testrun, gannet-bench-peer and gannet-cni",
        )?;
    }
    let tools = nodeport_tools()?;
    let run = CheckedRun::start(args.out.as_deref())?;
    let (sizes, warnings, root) = run
        .measure(config.measurements(), |progress, scratch, warnings| {
            nodeport::run(config, &tools, progress, scratch, warnings)
        })?;
    let results = nodeport::report::Results::new(
        util::rfc3339(run.started),
        run.seconds(),
        config.settings(),
        run.machine.clone(),
        sizes,
        root,
        warnings,
    );
    let charts = nodeport::report::write_charts(&run.out, &results)?;
    let markdown = nodeport::report::render(&results, &charts);
    run.finish(
        "nodeport",
        &results,
        &markdown,
        &results.goals,
        &results.warnings,
        &results.root_namespace,
    )
}

/// The root namespace check of a run, from the snapshot before and the differences after.
fn root_check(before: &rootns::Snapshot, differences: Vec<String>) -> cni::results::RootCheck {
    cni::results::RootCheck {
        in_init_netns: rootns::in_init_netns(),
        links: before.links.clone(),
        nft_ruleset_lines: before.nft_ruleset.lines().count(),
        sysctls_compared: before.sysctls.len(),
        differences,
    }
}

/// Fails the run if the root network namespace changed during it.
fn root_unchanged(root: &cni::results::RootCheck) -> anyhow::Result<()> {
    if !root.differences.is_empty() {
        bail!(
            "the root network namespace changed during the run:\n  {}",
            root.differences.join("\n  ")
        );
    }
    Ok(())
}

/// A run that reads the root network namespace before and after it: when it started, where it
/// writes, the machine, the namespace before.
struct CheckedRun {
    started: SystemTime,
    clock: Instant,
    out: PathBuf,
    machine: machine::Machine,
    before: rootns::Snapshot,
}

impl CheckedRun {
    /// Creates the output directory (`--out`) and reads the machine and the root namespace.
    fn start(out: Option<&Path>) -> anyhow::Result<CheckedRun> {
        let started = SystemTime::now();
        let out = output_dir(out, started)?;
        let machine = machine::collect(Some(Path::new(WORKSPACE)));
        let before = rootns::take().context("reading the root network namespace")?;
        Ok(CheckedRun {
            started,
            clock: Instant::now(),
            out,
            machine,
            before,
        })
    }

    /// Runs `measure` with a progress bar of `total` measurements, a scratch directory (removed
    /// afterwards, also on failure) and a list for warnings; then reads the root namespace again.
    fn measure<T>(
        &self,
        total: u64,
        measure: impl FnOnce(&ProgressBar, &Path, &mut Vec<String>) -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Vec<String>, cni::results::RootCheck)> {
        let progress = progress_bar(total, "measurements");
        let scratch = ScratchDir::new()?;
        let mut warnings = Vec::new();
        let outcome = measure(&progress, scratch.path(), &mut warnings);
        progress.finish_and_clear();
        drop(scratch);
        let after = rootns::take().context("reading the root network namespace again")?;
        let differences = rootns::differences(&self.before, &after);
        Ok((outcome?, warnings, root_check(&self.before, differences)))
    }

    /// Seconds since the start.
    fn seconds(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    /// Writes `results.json` and `results.md`, prints the warnings and goal verdicts, and fails
    /// if the root namespace changed.
    fn finish(
        &self,
        scenario: &str,
        results: &impl serde::Serialize,
        markdown: &str,
        goals: &[control::report::Goal],
        warnings: &[String],
        root: &cni::results::RootCheck,
    ) -> anyhow::Result<()> {
        write_results(&self.out, results, markdown)?;
        print_verdicts(warnings, goals, "not measured");
        eprintln!(
            "gannet-bench: {scenario} done in {:.0} s; wrote results.json, results.md, rr.png, \
             crr.png, stream.png in {}",
            self.seconds(),
            self.out.display()
        );
        root_unchanged(root)
    }
}

/// Writes `results.json` (`results`) and `results.md` (`markdown`) into `out`.
fn write_results(
    out: &Path,
    results: &impl serde::Serialize,
    markdown: &str,
) -> anyhow::Result<()> {
    let json = out.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(results)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let md = out.join("results.md");
    fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))
}

/// A scenario's warnings and goal verdicts on stderr; `unknown` names a goal without a verdict.
fn print_verdicts(warnings: &[String], goals: &[control::report::Goal], unknown: &str) {
    for warning in warnings {
        eprintln!("gannet-bench: warning: {warning}");
    }
    for goal in goals {
        let verdict = match goal.met {
            Some(true) => "met",
            Some(false) => "not met",
            None => unknown,
        };
        eprintln!("gannet-bench: {}: {} ({verdict})", goal.goal, goal.measured);
    }
}

/// `--out`, or `bench-results/<UTC time>/`; created.
fn output_dir(out: Option<&Path>, started: SystemTime) -> anyhow::Result<PathBuf> {
    let out = out.map_or_else(
        || Path::new("bench-results").join(util::compact_timestamp(started)),
        Path::to_path_buf,
    );
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    Ok(out)
}

/// Runs a scenario with its checked configuration: invalid arguments exit with `EX_USAGE`, each
/// named; a failed run with 1.
fn run_pods(args: &PodsArgs, config: &gannet_bench::pods::Config) -> anyhow::Result<()> {
    if let Some(missing) = gannet_testkit::containerd::prerequisites_missing() {
        bail!("pods: {missing}");
    }
    preflight(
        "pods",
        &["ip", "nsenter", "unshare", "ctr"],
        true,
        true,
        &[],
    )?;
    if !args.no_build {
        build_binaries(
            &[
                "gannet-agent",
                "gannet-control",
                "gannetctl",
                "gannet-cni",
                "gannet-testkit",
            ],
            "gannetd, gannet-control, gannetctl, gannet-cni and gannet-probe",
        )?;
    }
    let started = SystemTime::now();
    let out = output_dir(args.out.as_deref(), started)?;
    let machine = machine::collect(Some(Path::new(WORKSPACE)));
    let progress = progress_bar(config.pods as u64, "pods each way");
    let results = gannet_bench::pods::run(config, machine, &|done| {
        progress.set_position(done as u64);
    });
    progress.finish_and_clear();
    let results = results?;
    let json = out.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let md = out.join("results.md");
    fs::write(&md, gannet_bench::pods::markdown(&results))
        .with_context(|| format!("writing {}", md.display()))?;
    eprintln!(
        "gannet-bench: pods done in {:.0} s; wrote {} and {}",
        results.wall_seconds,
        json.display(),
        md.display()
    );
    Ok(())
}

fn run_scenario<C>(
    config: Result<C, Vec<String>>,
    run: impl FnOnce(&C) -> anyhow::Result<()>,
) -> ExitCode {
    let config = match config {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("gannet-bench: invalid arguments:");
            for error in errors {
                eprintln!("  {error}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gannet-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::catch_interrupts();
    match &cli.scenario {
        Scenario::Rules(args) => match print_rules(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("gannet-bench: {err:#}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Scenario::Clusterip(args) => run_scenario(args.config(), |config| clusterip(args, config)),
        Scenario::Control(args) => run_scenario(args.config(), |config| run_control(args, config)),
        Scenario::Cni(args) => run_scenario(args.config(), |config| cni(args, config)),
        Scenario::Overlay(args) => run_scenario(args.config(), |config| run_overlay(args, config)),
        Scenario::Pods(args) => run_scenario(args.config(), |config| run_pods(args, config)),
        Scenario::Nodeport(args) => {
            run_scenario(args.config(), |config| run_nodeport(args, config))
        }
    }
}
