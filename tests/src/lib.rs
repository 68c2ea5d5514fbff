//! Test kit for gannet: throw-away network namespaces, cgroup v2 directories, a simulated node with
//! pods on a bridge, a simulated multi-node underlay, child processes placed in both, and the
//! `gannet-probe` traffic tool's reports.
//!
//! Everything here is a guard that removes what it created when dropped, also when a test panics, and
//! every name is unique per process and call, so tests run in parallel. Nothing is ever created in or
//! attached to the root network namespace or the root cgroup: links, addresses and routes are only
//! configured through `ip -n <own namespace>`.

pub mod agent;
pub mod bpftool;
mod cgroup;
pub mod cluster;
mod cmd;
pub mod cni;
pub mod containerd;
pub mod control;
pub mod metrics;
mod netns;
mod podnet;
pub mod probe;
mod process;
pub mod tcx_counter;
mod xdp_pass;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
// Used only by the `gannet-probe` binary; `unused_crate_dependencies` is checked per target.
use clap as _;

pub use crate::cgroup::{CGROUP2_ENV, Cgroup, cgroup2_root};
pub use crate::netns::Netns;
pub use crate::podnet::{BRIDGE, GATEWAY_V4, GATEWAY_V6, POD_IF, Pod, PodNet};
pub use crate::process::{ChildGuard, run_in, spawn};

/// Environment variable naming the directory that holds the workspace binaries (overrides the lookup
/// next to the running test executable).
pub const BIN_DIR_ENV: &str = "GANNET_BIN_DIR";

/// Longest name the kernel accepts for a network interface (`IFNAMSIZ - 1`).
pub const MAX_NAME_LEN: usize = 15;

/// Per-process counter shared by every guard, so two names made by one process never collide.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The next value of the per-process counter.
pub(crate) fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A name of at most 15 bytes (usable for interfaces and namespaces) that is unique across processes
/// and calls: `<prefix>-<pid>-<n>`, pid and counter in base 36, the prefix shortened to fit.
///
/// Uniqueness does not depend on the prefix: the counter is shared by all prefixes, and the two `-`
/// before the pid and the counter make the suffix unambiguous when read from the right.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    let suffix = format!(
        "-{}-{}",
        base36(u64::from(std::process::id())),
        base36(next_id())
    );
    let budget = MAX_NAME_LEN.saturating_sub(suffix.len());
    let mut cut = prefix.len().min(budget);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = format!("{}{suffix}", &prefix[..cut]);
    assert!(
        name.len() <= MAX_NAME_LEN,
        "unique_name: counter overflowed the name length: {name}"
    );
    name
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[usize::try_from(n % 36).expect("digit < 36")]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base-36 digits are ASCII")
}

/// Path of the workspace binary `name` (for example `gannetd` or `gannet-probe`).
///
/// Looks in `$GANNET_BIN_DIR` if set, else in `target/<profile>/` when the current executable runs
/// from `target/<profile>/deps/` (as test executables do), else next to the current executable.
///
/// # Panics
/// If the binary does not exist there; the message says where it looked and how to build it.
#[must_use]
pub fn bin_path(name: &str) -> PathBuf {
    let env_dir = std::env::var_os(BIN_DIR_ENV).map(PathBuf::from);
    let exe = std::env::current_exe().expect("cannot determine the current executable");
    match find_bin(name, env_dir.as_deref(), &exe) {
        Ok(path) => path,
        Err(err) => panic!("{err:#}"),
    }
}

/// The lookup behind [`bin_path`] with its inputs made explicit: `bin_dir` stands for
/// `$GANNET_BIN_DIR` and `current_exe` for the running executable.
///
/// # Errors
/// If the binary is not a file at the chosen location.
pub fn find_bin(name: &str, bin_dir: Option<&Path>, current_exe: &Path) -> anyhow::Result<PathBuf> {
    let dir = if let Some(dir) = bin_dir {
        dir.to_path_buf()
    } else {
        let exe_dir = current_exe
            .parent()
            .with_context(|| format!("{} has no parent directory", current_exe.display()))?;
        match exe_dir.parent() {
            Some(profile_dir) if exe_dir.file_name().is_some_and(|n| n == "deps") => {
                profile_dir.to_path_buf()
            }
            _ => exe_dir.to_path_buf(),
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        let source = if bin_dir.is_some() {
            format!(" (from ${BIN_DIR_ENV})")
        } else {
            String::new()
        };
        bail!(
            "binary `{name}` not found at {}{source}: build it with `cargo build --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// Polls `check` every 50 ms until it returns `Ok`, for at most `timeout`.
///
/// # Panics
/// After `timeout`, naming `what` it waited for and showing the last `Err` it saw.
pub fn eventually_ok<T, E: std::fmt::Debug>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) => assert!(
                std::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last attempt: {last:?}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`.
///
/// # Panics
/// After `timeout`, naming `what` it waited for.
pub fn eventually<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A temporary directory (a unique name under the system's temporary directory, not created),
/// removed with its contents on drop.
#[derive(Debug)]
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// `<tmp>/<prefix>-<pid>-<n>`.
    #[must_use]
    pub fn new(prefix: &str) -> ScratchDir {
        ScratchDir(std::env::temp_dir().join(unique_name(prefix)))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn unique_names_fit_interface_names_and_differ() {
        let names: Vec<String> = (0..1000)
            .map(|_| unique_name("a-very-long-prefix"))
            .collect();
        for name in &names {
            assert!(
                name.len() <= MAX_NAME_LEN,
                "{name:?} is longer than {MAX_NAME_LEN} bytes"
            );
        }
        let distinct: HashSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "unique_name repeated a name");
        let short = unique_name("ns");
        assert!(short.starts_with("ns-"), "prefix lost in {short:?}");
    }

    #[test]
    fn unique_name_never_splits_a_character() {
        let name = unique_name("ééééééééééé");
        assert!(name.len() <= MAX_NAME_LEN, "{name:?} too long");
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(4_194_304), "2hwcg");
    }
}
