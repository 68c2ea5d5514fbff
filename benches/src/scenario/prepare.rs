//! Before a run: the preflight check, building the binaries a scenario needs (under `cargo run`)
//! and finding them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{chart, machine};

/// The workspace the harness was built from (for building the binaries it needs and the commit).
pub const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// What a scenario needs of the machine before anything is created.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// Programs that must be on the PATH.
    pub tools: Vec<&'static str>,
    /// cgroup v2 (it creates a cgroup and loads eBPF programs).
    pub cgroup: bool,
    /// The chart font (it draws charts).
    pub charts: bool,
    /// Files that must exist, each with a hint how to get it.
    pub files: Vec<(PathBuf, &'static str)>,
    /// Problems the scenario found itself (e.g. a missing runtime), reported with the others.
    pub problems: Vec<String>,
    /// The workspace packages whose binaries it runs, built first under `cargo run`.
    pub packages: &'static [&'static str],
    /// Those binaries, as the build message names them.
    pub binaries: &'static str,
}

/// Checks what a run of `scenario` needs before anything is created, all problems at once: root,
/// the tools on the PATH, cgroup v2, the chart font, the files.
///
/// # Errors
/// Listing every problem.
pub fn preflight(scenario: &str, needs: &Needs) -> anyhow::Result<()> {
    let mut problems = needs.problems.clone();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        problems.push(format!(
            "must run as root: it creates network namespaces{} \
             (sudo -E cargo run --release -p gannet-bench -- {scenario})",
            if needs.cgroup {
                " and a cgroup and loads eBPF programs"
            } else {
                " and runs CNI plugins in them"
            }
        ));
    }
    for tool in &needs.tools {
        if machine::which(tool).is_none() {
            problems.push(format!(
                "`{tool}` is not on the PATH (Debian: apt-get install iproute2 nftables iptables procps)"
            ));
        }
    }
    if needs.cgroup
        && let Err(err) = gannet_testkit::cgroup2_root()
    {
        problems.push(format!("{err:#}"));
    }
    if needs.charts
        && let Err(err) = chart::load_font()
    {
        problems.push(format!("{err:#}"));
    }
    for (file, hint) in &needs.files {
        if !file.is_file() {
            problems.push(format!("{} is missing ({hint})", file.display()));
        }
    }
    if !problems.is_empty() {
        bail!("cannot run:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// Under `cargo run`, builds `needs`' packages' binaries with the profile this binary has.
///
/// # Errors
/// When cargo cannot be run or the build fails.
pub fn build_binaries(needs: &Needs) -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    if needs.packages.is_empty() {
        return Ok(());
    }
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
    for package in needs.packages {
        cmd.args(["-p", package]);
    }
    cmd.arg("--bins");
    let what = needs.binaries;
    eprintln!("gannet-bench: building {what} ({profile})");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building {what} failed ({status})");
    }
    Ok(())
}

/// The workspace binary `name` next to this one (or in `$GANNET_BIN_DIR`); the error says how to
/// build it (`package`).
///
/// # Errors
/// When it is in neither place.
pub fn find_tool(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running executable")?;
    let dir = std::env::var_os(gannet_testkit::BIN_DIR_ENV).map(PathBuf::from);
    gannet_testkit::find_bin(name, dir.as_deref(), &exe).with_context(|| {
        format!("{name} is needed; build it with `cargo build --release -p {package}`")
    })
}
