//! The `cni` subcommand: its flags and how it plugs into the scenario framework.

use std::path::{Path, PathBuf};

use clap::Args;

use super::results::{PhaseResult, PluginInfo, Results};
use super::{Config, MAX_PODS, REFERENCE_DIR, Tools};
use crate::scenario::args::{checked, seed};
use crate::scenario::{Finished, Measuring, Needs, Report, Scenario, find_tool};

#[derive(Debug, Args)]
pub struct CniArgs {
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
    #[arg(long, default_value = REFERENCE_DIR)]
    reference_dir: PathBuf,
    /// Do not build gannet-cni first (done by default under `cargo run`).
    #[arg(long)]
    no_build: bool,
}

/// Where the reference plugins come from, if they are missing.
const REFERENCE_HINT: &str =
    "Debian: apt-get install containernetworking-plugins, or --reference-dir";

/// `bridge` and `host-local` in `dir`, each with [`REFERENCE_HINT`] (for [`Needs::files`]).
pub(crate) fn reference_plugins(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    vec![
        (dir.join("bridge"), REFERENCE_HINT),
        (dir.join("host-local"), REFERENCE_HINT),
    ]
}

impl Scenario for CniArgs {
    const NAME: &'static str = "cni";
    type Config = Config;
    type Tools = Tools;
    type Measured = (Vec<PluginInfo>, Vec<PhaseResult>);
    type Results = Results;

    fn config(&self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let pods = self.pods.unwrap_or(if self.quick { 50 } else { 200 });
        if !(1..=MAX_PODS).contains(&pods) {
            errors.push(format!(
                "--pods {pods}: must be between 1 and {MAX_PODS} (both plugins take addresses \
                 from a /24)"
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
        let mut concurrency = vec![1];
        if self.concurrency > 1 {
            concurrency.push(self.concurrency);
        }
        checked(
            Config {
                quick: self.quick,
                pods,
                round_size: self.round_size,
                concurrency,
                seed: seed(self.seed),
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
            tools: vec!["ip", "nft", "readlink"],
            charts: true,
            files: reference_plugins(&self.reference_dir),
            packages: &["gannet-cni"],
            binaries: "gannet-cni",
            ..Needs::default()
        }
    }

    fn tools(&self) -> anyhow::Result<Tools> {
        Ok(Tools {
            gannet_cni: find_tool("gannet-cni", "gannet-cni")?,
            reference_dir: self.reference_dir.clone(),
        })
    }

    fn progress(config: &Config) -> (u64, &'static str) {
        (config.invocations(), "invocations")
    }

    fn measure(
        config: &Config,
        tools: &Tools,
        run: &mut Measuring<'_>,
    ) -> anyhow::Result<Self::Measured> {
        let plugins = super::plugin_infos(tools, run.scratch, &run.machine.gannet_commit);
        Ok((
            plugins,
            super::run(config, tools, run.progress, run.scratch)?,
        ))
    }

    fn results(config: &Config, run: Finished, (plugins, phases): Self::Measured) -> Results {
        Results {
            scenario: Self::NAME,
            started_at: run.started_at,
            wall_seconds: run.wall_seconds,
            settings: config.settings(),
            machine: run.machine,
            plugins,
            phases,
            root_namespace: run.root_namespace,
            warnings: run.warnings,
        }
    }

    fn report(results: &Results, out: &Path) -> anyhow::Result<Report> {
        let chart = "latency.png";
        super::chart::render(&out.join(chart), &results.phases)?;
        Ok(Report {
            markdown: super::report::render(results, Some(chart)),
            charts: vec![chart.to_owned()],
            goals: super::report::goals(results),
            warnings: results.warnings.clone(),
        })
    }
}
