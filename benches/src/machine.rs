//! Facts about the machine a benchmark ran on, recorded next to the numbers.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// The machine and the tools that shaped the results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// CPUs available to the harness.
    pub nproc: usize,
    /// The first `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// `MemTotal` of /proc/meminfo.
    pub memory: String,
    /// `nft --version`.
    pub nft_version: String,
    /// `iptables --version`.
    pub iptables_version: String,
    /// Which iptables the `iptables-restore` on the path is: `nf_tables` (iptables-nft) or
    /// `legacy`.
    pub iptables_backend: String,
    /// Where `iptables-restore` resolves to.
    pub iptables_restore: String,
    /// The cgroup v2 mount point.
    pub cgroup2: String,
    /// The commit of the workspace the binaries were built from, if known.
    pub gannet_commit: String,
}

fn command_output(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => format!(
            "`{program}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => format!("`{program}` not runnable: {err}"),
    }
}

/// The backend named in `iptables --version` output (`iptables v1.8.9 (nf_tables)`).
#[must_use]
pub fn iptables_backend(version: &str) -> String {
    match version.rsplit_once('(') {
        Some((_, rest)) => rest.trim_end_matches(')').trim().to_owned(),
        // iptables before 1.8 had only the legacy backend and did not say so.
        None => "legacy".to_owned(),
    }
}

/// The value after `key` on the first line of `text` that starts with it (`key: value`).
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default()
}

/// Which program `name` runs, searching `$PATH`, if any.
#[must_use]
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Reads the facts; whatever cannot be read is described in its field instead.
#[must_use]
pub fn collect(workspace: Option<&Path>) -> Machine {
    let iptables_version = command_output("iptables", &["--version"]);
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        nproc: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        cpu_model: field(&cpuinfo, "model name"),
        memory: field(&meminfo, "MemTotal"),
        nft_version: command_output("nft", &["--version"]),
        iptables_backend: iptables_backend(&iptables_version),
        iptables_version,
        iptables_restore: which("iptables-restore")
            .and_then(|p| fs::canonicalize(p).ok())
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        cgroup2: gannet_testkit::cgroup2_root()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        gannet_commit: workspace
            .map(|dir| {
                let head = command_output(
                    "git",
                    &["-C", &dir.to_string_lossy(), "rev-parse", "--short", "HEAD"],
                );
                let dirty = !command_output(
                    "git",
                    &[
                        "-C",
                        &dir.to_string_lossy(),
                        "status",
                        "--porcelain",
                        "--untracked-files=no",
                    ],
                )
                .is_empty();
                if dirty {
                    format!("{head} (modified)")
                } else {
                    head
                }
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_iptables_backend() {
        assert_eq!(iptables_backend("iptables v1.8.9 (nf_tables)"), "nf_tables");
        assert_eq!(iptables_backend("iptables v1.8.7 (legacy)"), "legacy");
        assert_eq!(iptables_backend("iptables v1.6.1"), "legacy");
    }

    #[test]
    fn reads_fields() {
        let text = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\nmodel name\t: other\n";
        assert_eq!(field(text, "model name"), "Some CPU @ 2.0GHz");
        assert_eq!(field(text, "absent"), "");
    }
}
