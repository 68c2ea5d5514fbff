//! The `control` subcommand: its flags and how it plugs into the scenario framework.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::objects::{MAX_ENDPOINTS, MAX_ENDPOINTS_PER_SERVICE, MAX_SERVICES};
use super::report::{self, Load, Results};
use super::{Config, Measured, Tools, busy_processes, loadavg};
use crate::scenario::args::{checked, seed};
use crate::scenario::{Finished, Measuring, Needs, Report, Scenario, find_tool};

#[derive(Debug, Args)]
pub struct ControlArgs {
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

/// The machine's load when the measurement started, and what it measured.
pub struct Started {
    loadavg: String,
    busy_processes: Vec<String>,
    measured: Measured,
}

impl Scenario for ControlArgs {
    const NAME: &'static str = "control";
    type Config = Config;
    type Tools = Tools;
    type Measured = Started;
    type Results = Results;

    fn config(&self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let services = self
            .services
            .unwrap_or(if self.quick { 1000 } else { 10_000 });
        if !(1..=MAX_SERVICES).contains(&services) {
            errors.push(format!(
                "--services {services}: must be between 1 and {MAX_SERVICES}"
            ));
        }
        if !(1..=MAX_ENDPOINTS_PER_SERVICE).contains(&self.endpoints) {
            errors.push(format!(
                "--endpoints {}: must be between 1 and {MAX_ENDPOINTS_PER_SERVICE}",
                self.endpoints
            ));
        } else if services * self.endpoints > MAX_ENDPOINTS {
            errors.push(format!(
                "--services × --endpoints: at most {MAX_ENDPOINTS} endpoints in all"
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
        checked(
            Config {
                quick: self.quick,
                services,
                endpoints_per_service: self.endpoints,
                agents: self.agents,
                changes,
                cli_applies,
                batch: self.batch,
                peer_timeout: Duration::from_secs(self.peer_timeout),
                peers: !self.no_peers,
                seed: seed(self.seed),
                gannetd_env,
            },
            errors,
        )
    }

    fn out(&self) -> Option<&Path> {
        self.out.as_deref()
    }

    fn no_build(&self) -> bool {
        self.no_build
    }

    fn needs(&self, config: &Config) -> Needs {
        let mut tools = vec!["ip", "nft", "ps"];
        if config.peers {
            tools.extend(["iptables", "iptables-restore", "iptables-save"]);
        }
        Needs {
            tools,
            cgroup: true,
            packages: &["gannet-agent", "gannet-control", "gannetctl"],
            binaries: "gannetd, gannet-control and gannetctl",
            ..Needs::default()
        }
    }

    fn tools(&self) -> anyhow::Result<Tools> {
        Ok(Tools {
            gannetd: find_tool("gannetd", "gannet-agent")?,
            gannet_control: find_tool("gannet-control", "gannet-control")?,
            gannetctl: find_tool("gannetctl", "gannetctl")?,
        })
    }

    fn progress(config: &Config) -> (u64, &'static str) {
        let steps = config.services + config.agents + config.changes + config.cli_applies;
        (steps as u64, "steps")
    }

    fn measure(config: &Config, tools: &Tools, run: &mut Measuring<'_>) -> anyhow::Result<Started> {
        let loadavg = loadavg();
        let busy_processes = busy_processes();
        let measured = super::run(config, tools, run.progress, run.scratch, &mut run.warnings)?;
        Ok(Started {
            loadavg,
            busy_processes,
            measured,
        })
    }

    fn results(config: &Config, run: Finished, started: Started) -> Results {
        let measured = started.measured;
        let goals = report::goals(
            &measured.agents,
            &measured.incremental,
            &measured.peers,
            config.services,
        );
        Results {
            scenario: Self::NAME,
            started_at: run.started_at,
            wall_seconds: run.wall_seconds,
            settings: config.settings(),
            machine: run.machine,
            load: Load {
                loadavg_start: started.loadavg,
                loadavg_before_sync: measured.loadavg_before_sync,
                loadavg_end: loadavg(),
                busy_processes_at_start: started.busy_processes,
            },
            store: measured.store,
            agents: measured.agents,
            incremental: measured.incremental,
            cli: measured.cli,
            peers: measured.peers,
            goals,
            root_namespace: run.root_namespace,
            warnings: run.warnings,
        }
    }

    fn report(results: &Results, _: &Path) -> anyhow::Result<Report> {
        Ok(Report {
            markdown: report::render(results),
            charts: Vec::new(),
            goals: results.goals.clone(),
            warnings: results.warnings.clone(),
        })
    }
}
