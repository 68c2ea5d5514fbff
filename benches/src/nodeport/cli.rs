//! The `nodeport` subcommand: its flags and how it plugs into the scenario framework.

use std::path::{Path, PathBuf};

use clap::Args;

use super::report::{self, Results};
use super::{Config, SizeResult, Tools};
use crate::scenario::args::{TrafficArgs, checked, service_counts};
use crate::scenario::{Finished, Measuring, Needs, Report, Scenario, find_tool};

#[derive(Debug, Args)]
pub struct NodePortArgs {
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

impl Scenario for NodePortArgs {
    const NAME: &'static str = "nodeport";
    type Config = Config;
    type Tools = Tools;
    type Measured = Vec<SizeResult>;
    type Results = Results;

    fn config(&self) -> Result<Config, Vec<String>> {
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
        checked(
            Config {
                quick: self.quick,
                service_counts,
                traffic,
                testrun_calls,
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
            // ethtool: GRO on the bridge port of the gannet-xdp variant's node A.
            tools: vec![
                "ip",
                "nft",
                "iptables",
                "iptables-restore",
                "sysctl",
                "ethtool",
            ],
            cgroup: true,
            charts: true,
            packages: &["gannet-agent", "gannet-bench", "gannet-cni"],
            binaries: "gannetd, gannet-testrun, gannet-bench-peer and gannet-cni",
            ..Needs::default()
        }
    }

    fn tools(&self) -> anyhow::Result<Tools> {
        Ok(Tools {
            gannetd: find_tool("gannetd", "gannet-agent")?,
            testrun: find_tool("gannet-testrun", "gannet-agent")?,
            gannet_cni: find_tool("gannet-cni", "gannet-cni")?,
            peer: find_tool("gannet-bench-peer", "gannet-bench")?,
        })
    }

    fn progress(config: &Config) -> (u64, &'static str) {
        (config.measurements(), "measurements")
    }

    fn measure(
        config: &Config,
        tools: &Tools,
        run: &mut Measuring<'_>,
    ) -> anyhow::Result<Vec<SizeResult>> {
        super::run(config, tools, run.progress, run.scratch, &mut run.warnings)
    }

    fn results(config: &Config, run: Finished, sizes: Vec<SizeResult>) -> Results {
        Results::new(config.settings(), run, sizes)
    }

    fn report(results: &Results, out: &Path) -> anyhow::Result<Report> {
        let charts = report::write_charts(out, results)?;
        Ok(Report {
            markdown: report::render(results, &charts),
            charts: charts.into_iter().map(|(_, file)| file).collect(),
            goals: results.goals.clone(),
            warnings: results.warnings.clone(),
        })
    }
}
