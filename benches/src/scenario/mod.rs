//! The scenario framework: what every benchmark scenario shares, so that a scenario is its
//! topology, its variants and its metrics, and nothing else.
//!
//! A scenario is its arguments (a `clap::Args` struct, in its folder's `cli.rs`) implementing
//! [`Scenario`]: the checked configuration from its flags, what it [`Needs`] (tools, cgroup v2,
//! charts, files, the workspace binaries to build), its tools, the measurement itself, how the
//! measurements become `results.json`, and the `results.md` (with charts and [`Goal`]s) made from
//! them. [`run`] does the rest, the same way for every scenario:
//!
//! 1. the configuration: invalid arguments exit with `EX_USAGE` (64), every problem named;
//! 2. the preflight ([`prepare::preflight`]): root, tools on the PATH, cgroup v2, the chart font,
//!    files, all problems at once;
//! 3. under `cargo run` and without `--no-build`, the binaries it runs are built with the
//!    profile of this one ([`prepare::build_binaries`]);
//! 4. the output directory (`--out`, or `bench-results/<UTC time>/`), the machine, and a
//!    snapshot of the root network namespace ([`rootns`]);
//! 5. the measurement, with a progress bar, a scratch directory (removed afterwards, also on
//!    failure) and a list for warnings;
//! 6. the root namespace again ([`rootns::RootCheck`]); `results.json`, `results.md` and the
//!    charts; the warnings and the goals' verdicts on stderr;
//! 7. exit 0, or 1 if the run failed or changed the root namespace.
//!
//! Also here, for the scenarios' own reports: the statistics ([`stats`]: median, nearest-rank
//! percentiles, latency tables), the goal rows ([`goal`]) and the arguments several scenarios
//! share ([`args`]).

pub mod args;
pub mod goal;
pub mod prepare;
pub mod rootns;
pub mod stats;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

pub use self::goal::Goal;
pub use self::prepare::{Needs, WORKSPACE, find_tool};
use self::rootns::RootCheck;
use crate::machine::{self, Machine};
use crate::util::{self, ScratchDir};

/// `EX_USAGE` from sysexits.h: invalid arguments.
pub const EXIT_USAGE: u8 = 64;

/// A benchmark scenario, implemented by its arguments.
pub trait Scenario {
    /// The subcommand (`clusterip`), also `results.json`'s `scenario`.
    const NAME: &'static str;
    /// Whether the root network namespace is compared before and after the run (and the run
    /// fails if it changed). Without it, [`Finished::root_namespace`] is empty.
    const ROOT_CHECK: bool = true;
    /// The checked configuration.
    type Config;
    /// The binaries and files the measurement runs.
    type Tools;
    /// What the measurement returns.
    type Measured;
    /// `results.json`.
    type Results: Serialize;

    /// The configuration from the flags; every problem, each naming its flag, if any.
    ///
    /// # Errors
    /// The problems.
    fn config(&self) -> Result<Self::Config, Vec<String>>;

    /// `--out`.
    fn out(&self) -> Option<&Path>;

    /// `--no-build`.
    fn no_build(&self) -> bool;

    /// What the run needs of the machine and the workspace.
    fn needs(&self, config: &Self::Config) -> Needs;

    /// The binaries and files, once built.
    ///
    /// # Errors
    /// When one is missing, saying how to build it.
    fn tools(&self) -> anyhow::Result<Self::Tools>;

    /// The progress bar's length and unit (`measurements`).
    fn progress(config: &Self::Config) -> (u64, &'static str);

    /// The measurement.
    ///
    /// # Errors
    /// When it fails; the run then exits with 1.
    fn measure(
        config: &Self::Config,
        tools: &Self::Tools,
        run: &mut Measuring<'_>,
    ) -> anyhow::Result<Self::Measured>;

    /// `results.json` of a finished run.
    fn results(config: &Self::Config, run: Finished, measured: Self::Measured) -> Self::Results;

    /// `results.md`, the charts (drawn into `out`) and the goals of `results`.
    ///
    /// # Errors
    /// When a chart cannot be drawn or written.
    fn report(results: &Self::Results, out: &Path) -> anyhow::Result<Report>;
}

/// What a measurement gets.
pub struct Measuring<'a> {
    /// The progress bar, of [`Scenario::progress`]'s length.
    pub progress: &'a ProgressBar,
    /// A scratch directory, removed after the measurement.
    pub scratch: &'a Path,
    /// The machine the run is on.
    pub machine: &'a Machine,
    /// Anything odd seen, for `results.json` and stderr.
    pub warnings: Vec<String>,
}

/// A finished measurement: what every `results.json` holds besides the scenario's own results.
#[derive(Debug, Clone)]
pub struct Finished {
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// How long the run took until the measurement ended.
    pub wall_seconds: f64,
    /// The machine it ran on.
    pub machine: Machine,
    /// The root network namespace before and after.
    pub root_namespace: RootCheck,
    /// Anything odd seen during the run.
    pub warnings: Vec<String>,
}

/// A scenario's `results.md` and what else its report consists of.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `results.md`.
    pub markdown: String,
    /// The charts drawn, file names in the output directory.
    pub charts: Vec<String>,
    /// The goals, printed with their verdicts at the end.
    pub goals: Vec<Goal>,
    /// The warnings, printed at the end.
    pub warnings: Vec<String>,
}

/// Runs scenario `args` from its flags to its report: exits with `EX_USAGE` (64) on invalid
/// arguments, each named; with 1 if the run fails or changed the root network namespace.
pub fn run<S: Scenario>(args: &S) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("gannet-bench: invalid arguments:");
            for error in errors {
                eprintln!("  {error}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run_checked(args, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gannet-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_checked<S: Scenario>(args: &S, config: &S::Config) -> anyhow::Result<()> {
    let needs = args.needs(config);
    prepare::preflight(S::NAME, &needs)?;
    if !args.no_build() {
        prepare::build_binaries(&needs)?;
    }
    let tools = args.tools()?;

    let started = SystemTime::now();
    let out = output_dir(args.out(), started)?;
    let machine = machine::collect(Some(Path::new(WORKSPACE)));
    let before = if S::ROOT_CHECK {
        Some(rootns::take().context("reading the root network namespace")?)
    } else {
        None
    };
    let clock = Instant::now();
    let (total, unit) = S::progress(config);
    let progress = progress_bar(total, unit);
    let scratch = ScratchDir::new()?;
    let mut measuring = Measuring {
        progress: &progress,
        scratch: scratch.path(),
        machine: &machine,
        warnings: Vec::new(),
    };
    let outcome = S::measure(config, &tools, &mut measuring);
    let warnings = measuring.warnings;
    progress.finish_and_clear();
    drop(scratch);
    let root_namespace = match &before {
        Some(before) => RootCheck::after(before)?,
        None => RootCheck::default(),
    };
    let measured = outcome?;

    let finished = Finished {
        started_at: util::rfc3339(started),
        wall_seconds: clock.elapsed().as_secs_f64(),
        machine,
        root_namespace: root_namespace.clone(),
        warnings,
    };
    let results = S::results(config, finished, measured);
    let report = S::report(&results, &out)?;
    let mut written = vec!["results.json".to_owned(), "results.md".to_owned()];
    written.extend(report.charts.iter().cloned());
    write_results(&out, &results, &report.markdown)?;
    for warning in &report.warnings {
        eprintln!("gannet-bench: warning: {warning}");
    }
    for line in goal::verdict_lines(&report.goals) {
        eprintln!("gannet-bench: {line}");
    }
    eprintln!(
        "gannet-bench: {} done in {:.0} s; wrote {} in {}",
        S::NAME,
        clock.elapsed().as_secs_f64(),
        written.join(", "),
        out.display()
    );
    root_namespace.unchanged()
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

/// `--out`, or `bench-results/<UTC time>/`; created.
fn output_dir(out: Option<&Path>, started: SystemTime) -> anyhow::Result<PathBuf> {
    let out = out.map_or_else(
        || Path::new("bench-results").join(util::compact_timestamp(started)),
        Path::to_path_buf,
    );
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    Ok(out)
}

/// Writes `results.json` (`results`) and `results.md` (`markdown`) into `out`.
fn write_results(out: &Path, results: &impl Serialize, markdown: &str) -> anyhow::Result<()> {
    let json = out.join("results.json");
    fs::write(&json, serde_json::to_string_pretty(results)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let md = out.join("results.md");
    fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))
}
