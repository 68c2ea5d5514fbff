//! The `overlay` subcommand: its flags and how it plugs into the scenario framework.

use std::path::{Path, PathBuf};

use clap::Args;

use super::report::{self, Results};
use super::{Config, Measured, Tools};
use crate::cni::REFERENCE_DIR;
use crate::cni::cli::reference_plugins;
use crate::scenario::args::{TrafficArgs, checked};
use crate::scenario::{Finished, Measuring, Needs, Report, Scenario, find_tool};

#[derive(Debug, Args)]
pub struct OverlayArgs {
    /// A short run (2 rounds of 0.5 s): about a minute.
    #[arg(long)]
    quick: bool,
    /// Where to write results.json, results.md and the charts [default: bench-results/<UTC time>].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    traffic: TrafficArgs,
    /// The directory with the reference plugins `bridge` and `host-local`.
    #[arg(long, default_value = REFERENCE_DIR)]
    reference_dir: PathBuf,
    /// Do not build the binaries first (done by default under `cargo run`).
    #[arg(long)]
    no_build: bool,
}

impl Scenario for OverlayArgs {
    const NAME: &'static str = "overlay";
    type Config = Config;
    type Tools = Tools;
    type Measured = Measured;
    type Results = Results;

    fn config(&self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let traffic = self.traffic.settings(self.quick, &mut errors);
        checked(
            Config {
                quick: self.quick,
                traffic,
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
            tools: vec!["ip", "bridge", "nft", "sysctl"],
            cgroup: true,
            charts: true,
            files: reference_plugins(&self.reference_dir),
            packages: &[
                "gannet-agent",
                "gannet-bench",
                "gannet-cni",
                "gannet-control",
                "gannetctl",
            ],
            binaries: "gannetd, gannet-bench-peer, gannet-cni, gannet-control and gannetctl",
            ..Needs::default()
        }
    }

    fn tools(&self) -> anyhow::Result<Tools> {
        Ok(Tools {
            gannetd: find_tool("gannetd", "gannet-agent")?,
            gannet_control: find_tool("gannet-control", "gannet-control")?,
            gannetctl: find_tool("gannetctl", "gannetctl")?,
            gannet_cni: find_tool("gannet-cni", "gannet-cni")?,
            peer: find_tool("gannet-bench-peer", "gannet-bench")?,
            reference_dir: self.reference_dir.clone(),
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
        Results::new(config.settings(), run, measured)
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
