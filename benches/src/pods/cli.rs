//! The `pods` subcommand: its flags and how it plugs into the scenario framework.

use std::path::{Path, PathBuf};

use clap::Args;

use super::report::{self, Results};
use super::{Config, Measured};
use crate::scenario::args::checked;
use crate::scenario::{Finished, Measuring, Needs, Report, Scenario};

#[derive(Debug, Args)]
pub struct PodsArgs {
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

impl Scenario for PodsArgs {
    const NAME: &'static str = "pods";
    // Everything runs in a namespace of the run; gannet-control and containerd's shims are
    // processes of the root namespace, whose links and rules the run does not compare.
    const ROOT_CHECK: bool = false;
    type Config = Config;
    type Tools = ();
    type Measured = Measured;
    type Results = Results;

    fn config(&self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        if self.pods == 0 || self.pods > 200 {
            errors.push(format!("--pods {}: must be 1 to 200", self.pods));
        }
        checked(Config { pods: self.pods }, errors)
    }

    fn out(&self) -> Option<&Path> {
        self.out.as_deref()
    }

    fn no_build(&self) -> bool {
        self.no_build
    }

    fn needs(&self, _: &Config) -> Needs {
        Needs {
            tools: vec!["ip", "nsenter", "unshare", "ctr"],
            cgroup: true,
            charts: true,
            problems: gannet_testkit::containerd::prerequisites_missing()
                .into_iter()
                .collect(),
            packages: &[
                "gannet-agent",
                "gannet-control",
                "gannetctl",
                "gannet-cni",
                "gannet-testkit",
            ],
            binaries: "gannetd, gannet-control, gannetctl, gannet-cni and gannet-probe",
            ..Needs::default()
        }
    }

    /// The binaries are found by the test kit's fixtures.
    fn tools(&self) -> anyhow::Result<()> {
        Ok(())
    }

    fn progress(config: &Config) -> (u64, &'static str) {
        (config.pods as u64, "pods each way")
    }

    fn measure(config: &Config, (): &(), run: &mut Measuring<'_>) -> anyhow::Result<Measured> {
        let progress = run.progress;
        super::run(config, run.scratch, &|done| {
            progress.set_position(done as u64);
        })
    }

    fn results(config: &Config, run: Finished, measured: Measured) -> Results {
        Results::new(config.clone(), run, measured)
    }

    fn report(results: &Results, _: &Path) -> anyhow::Result<Report> {
        Ok(Report {
            markdown: report::markdown(results),
            charts: Vec::new(),
            goals: results.goals.clone(),
            warnings: Vec::new(),
        })
    }
}
