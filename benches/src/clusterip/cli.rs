//! The `clusterip` subcommand: its flags and how it plugs into the scenario framework.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use super::{Config, Measured, Tools, programming};
use crate::control::objects::{MAX_ENDPOINTS, MAX_ENDPOINTS_PER_SERVICE, MAX_SERVICES};
use crate::peer::Metric;
use crate::results::Results;
use crate::scenario::args::{TrafficArgs, checked, service_counts};
use crate::scenario::{Finished, Measuring, Needs, Report, Scenario, find_tool};
use crate::{chart, report};

#[derive(Debug, Args)]
pub struct ClusterIpArgs {
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
    fn programming(&self, errors: &mut Vec<String>) -> Option<programming::Config> {
        let services = self
            .program_services
            .unwrap_or(if self.quick { 1000 } else { 10_000 });
        let changes = self.changes.unwrap_or(if self.quick { 10 } else { 20 });
        let endpoints = self.program_endpoints;
        if services > MAX_SERVICES {
            errors.push(format!(
                "--program-services {services}: must be at most {MAX_SERVICES}"
            ));
        }
        if !(1..=MAX_ENDPOINTS_PER_SERVICE).contains(&endpoints) {
            errors.push(format!(
                "--program-endpoints {endpoints}: must be between 1 and {MAX_ENDPOINTS_PER_SERVICE}"
            ));
        } else if services * endpoints > MAX_ENDPOINTS {
            errors.push(format!(
                "--program-services {services} × --program-endpoints {endpoints}: at most \
                 {MAX_ENDPOINTS} endpoints in all"
            ));
        }
        if changes > 10_000 {
            errors.push(format!("--changes {changes}: must be at most 10000"));
        }
        if self.program_timeout == 0 {
            errors.push("--program-timeout 0: must be at least 1".to_owned());
        }
        (services > 0).then(|| programming::Config {
            services,
            endpoints,
            changes,
            timeout: Duration::from_secs(self.program_timeout),
        })
    }
}

impl Scenario for ClusterIpArgs {
    const NAME: &'static str = "clusterip";
    type Config = Config;
    type Tools = Tools;
    type Measured = Measured;
    type Results = Results;

    fn config(&self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let default: &[usize] = if self.quick {
            &[1, 1000]
        } else {
            &[1, 1000, 10_000]
        };
        let service_counts = service_counts(self.services.as_ref(), default, &mut errors);
        let traffic = self.traffic.settings(self.quick, &mut errors);
        let programming = self.programming(&mut errors);
        checked(
            Config {
                quick: self.quick,
                service_counts,
                traffic,
                programming,
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

    fn needs(&self, _: &Config) -> Needs {
        Needs {
            tools: vec!["ip", "nft", "iptables", "iptables-restore", "sysctl"],
            cgroup: true,
            charts: true,
            packages: &["gannet-agent", "gannet-bench", "gannet-control"],
            binaries: "gannetd, gannet-bench-peer and gannet-control",
            ..Needs::default()
        }
    }

    fn tools(&self) -> anyhow::Result<Tools> {
        Ok(Tools {
            gannetd: find_tool("gannetd", "gannet-agent")?,
            peer: find_tool("gannet-bench-peer", "gannet-bench")?,
            gannet_control: find_tool("gannet-control", "gannet-control")?,
        })
    }

    fn progress(config: &Config) -> (u64, &'static str) {
        (config.measurements(), "measurements")
    }

    fn measure(
        config: &Config,
        tools: &Tools,
        run: &mut Measuring<'_>,
    ) -> anyhow::Result<Measured> {
        super::run(config, tools, run.progress, run.scratch, &mut run.warnings)
    }

    fn results(config: &Config, run: Finished, measured: Measured) -> Results {
        Results {
            scenario: Self::NAME,
            started_at: run.started_at,
            wall_seconds: run.wall_seconds,
            settings: config.settings(),
            machine: run.machine,
            runs: measured.runs,
            programming: measured.programming,
            root_namespace: run.root_namespace,
            warnings: run.warnings,
        }
    }

    fn report(results: &Results, out: &Path) -> anyhow::Result<Report> {
        let mut charts = Vec::new();
        for metric in Metric::ALL {
            let file = format!("{metric}.png");
            chart::render(&out.join(&file), metric, &results.runs)?;
            charts.push((metric, file));
        }
        Ok(Report {
            markdown: report::render(results, &charts),
            charts: charts.into_iter().map(|(_, file)| file).collect(),
            goals: Vec::new(),
            warnings: results.warnings.clone(),
        })
    }
}
