//! A named network namespace that is deleted on drop.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cmd::run_checked;
use crate::unique_name;

/// Directory where `ip netns` keeps the namespace bind mounts.
const NETNS_DIR: &str = "/run/netns";

/// How long a sysctl write may take.
const SYSCTL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long drop waits for killed processes to leave the namespace before deleting it.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A network namespace created with `ip netns add` under a unique name, with `lo` up.
///
/// Drop kills every process still inside it (`ip netns pids`) and deletes it, which also destroys
/// the links it holds (and the peers of its veth pairs).
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    /// Whether dropping this guard deletes the namespace (false for [`Netns::open_path`]).
    owned: bool,
}

impl Netns {
    /// Creates a namespace named after `role` (shortened to fit) plus the process id and a counter.
    ///
    /// # Errors
    /// If `ip netns add` or bringing up `lo` fails.
    pub fn new(role: &str) -> anyhow::Result<Netns> {
        let name = unique_name(&format!("gt{role}"));
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on the guard owns the namespace, so a failure below still deletes it.
        let netns = Netns {
            path: Path::new(NETNS_DIR).join(&name),
            name,
            owned: true,
        };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// A handle on an existing namespace `/run/netns/NAME` that this value does not own:
    /// dropping it neither kills processes nor deletes the namespace.
    ///
    /// # Errors
    /// If `path` does not exist or has no file name.
    pub fn open_path(path: &Path) -> anyhow::Result<Netns> {
        anyhow::ensure!(
            path.exists(),
            "network namespace {} does not exist",
            path.display()
        );
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow::anyhow!("{} has no name", path.display()))?
            .to_owned();
        Ok(Netns {
            name,
            path: path.to_path_buf(),
            owned: false,
        })
    }

    /// The namespace's name, as `ip netns` and `ip -n` know it.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount (`/run/netns/NAME`), to open for `setns(2)` or `nsenter --net=`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip -n NAME args...` and returns its stdout.
    ///
    /// # Errors
    /// If `ip` fails; the error holds the command line and `ip`'s stderr.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = run_checked(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Sets sysctl `key` (dotted or slashed, as `sysctl` takes it) to `value` inside this namespace,
    /// by running `sysctl -w` in a child that joined the namespace.
    ///
    /// # Errors
    /// If `sysctl` cannot be started or fails.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new("sysctl");
        cmd.args(["-q", "-w", &format!("{key}={value}")]);
        let line = crate::cmd::describe(&cmd);
        let output = crate::run_in(cmd, Some(self), None, SYSCTL_TIMEOUT)?;
        crate::cmd::check_status(&format!("{line} (in netns {})", self.name), &output)
    }

    /// `ethtool ARGS…` in this namespace.
    ///
    /// # Errors
    /// If `ethtool` cannot run or fails.
    pub fn ethtool(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = Command::new("ethtool");
        cmd.args(args);
        let line = crate::cmd::describe(&cmd);
        let output = crate::run_in(cmd, Some(self), None, SYSCTL_TIMEOUT)?;
        crate::cmd::check_status(&format!("{line} (in netns {})", self.name), &output)
    }

    /// Runs `f` on a new thread that joined this namespace and returns its result; the calling
    /// thread stays where it is. Sockets `f` creates, and threads it spawns, live in this namespace.
    ///
    /// # Errors
    /// If the namespace cannot be joined.
    ///
    /// # Panics
    /// If `f` panics (the panic is propagated).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        let file =
            File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        thread::scope(|scope| {
            let thread = scope.spawn(move || -> anyhow::Result<R> {
                // SAFETY: `file` is an open network namespace file; setns(2) affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("joining netns {}", self.name));
                }
                drop(file);
                Ok(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The ids of the processes whose network namespace is this one (`ip netns pids`).
    ///
    /// # Errors
    /// If `ip netns pids` fails.
    pub fn pids(&self) -> anyhow::Result<Vec<i32>> {
        let output = run_checked(Command::new("ip").args(["netns", "pids", &self.name]))?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect())
    }

    fn kill_all(&self) {
        // Never this process (only a thread of it can be inside, see `run`), but be certain.
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let pids: Vec<i32> = match self.pids() {
                Ok(pids) => pids.into_iter().filter(|&pid| pid != me).collect(),
                Err(err) => {
                    eprintln!(
                        "gannet-testkit: listing processes in netns {}: {err:#}",
                        self.name
                    );
                    return;
                }
            };
            if pids.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "gannet-testkit: processes {pids:?} still in netns {} after SIGKILL",
                    self.name
                );
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        self.kill_all();
        if let Err(err) = run_checked(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("gannet-testkit: deleting netns {}: {err:#}", self.name);
        }
    }
}
