//! Running one CNI plugin invocation as a runtime does, and timing it precisely.
//!
//! The testkit's `spawn` polls for the child's exit every 5 ms and reads its output on two helper
//! threads: fine for tests, too coarse for invocations that take a few milliseconds. Here the
//! plugin is started with `posix_spawn` from the calling thread (so it starts in the calling
//! thread's network namespace: callers run this on a thread that joined the node namespace with
//! `setns`, see `Netns::run`), its configuration is written to stdin, and one `poll(2)` loop waits
//! on its stdout, its stderr and a pidfd that becomes readable when it exits. The wall time is from
//! just before the spawn until the plugin has exited and its output is read: what a runtime waits
//! for. `wait4(2)` then reaps it and reports its CPU time (including children it waited for, such as
//! the IPAM plugin the bridge plugin runs).

use std::ffi::OsString;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::util::check_interrupted;

/// The longest one `poll(2)` waits before checking for Ctrl-C again.
const POLL_SLICE: Duration = Duration::from_millis(200);
/// After the plugin exited, how long to wait for the end of its output (a child it left behind
/// may hold the pipes).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// One plugin invocation: `CNI_*` environment and the network configuration on stdin.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The plugin executable.
    pub plugin: &'a Path,
    /// `CNI_COMMAND`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
    /// `CNI_PATH`.
    pub cni_path: &'a str,
    /// The network configuration (stdin).
    pub config: &'a [u8],
}

/// What an invocation returned and what it cost.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (the result or error object).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// From just before the spawn until it exited and its output was read.
    pub wall: Duration,
    /// CPU time in user space (its own and that of the children it waited for).
    pub user: Duration,
    /// CPU time in the kernel (likewise).
    pub system: Duration,
}

impl Outcome {
    /// stdout and stderr, for error messages.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "{}; stdout: {}; stderr: {}",
            self.status,
            String::from_utf8_lossy(&self.stdout).trim(),
            String::from_utf8_lossy(&self.stderr).trim()
        )
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reaps `pid` and returns its wait status and resource usage.
fn reap(pid: libc::pid_t) -> std::io::Result<(ExitStatus, libc::rusage)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid out-pointers; `pid` is our unreaped child.
        let ret = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        if ret == pid {
            return Ok((ExitStatus::from_raw(status), usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
}

/// Reads what is available from `reader` into `out`; returns false at end of file.
fn drain(reader: &mut impl std::io::Read, out: &mut Vec<u8>) -> bool {
    let mut chunk = [0_u8; 8192];
    match reader.read(&mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            out.extend_from_slice(&chunk[..n]);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
        // A broken pipe or the like: treat as the end.
        Err(_) => false,
    }
}

/// Runs `inv` in the calling thread's network namespace and waits up to `timeout` for it.
///
/// A plugin that fails is not an error here: check `status` in the outcome.
///
/// # Errors
/// If it cannot be started, does not finish within `timeout` (it is killed) or the harness is
/// interrupted (it is killed).
pub fn invoke(inv: &Invocation<'_>, timeout: Duration) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new(inv.plugin);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin")),
        )
        .env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", inv.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", inv.plugin.display()))?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // From here on the child must be reaped on every path: it is, below, before any return.
    let pidfd = pidfd_open(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin may exit without reading all of it (its reply says why); the configuration is
        // far smaller than a pipe's buffer, so this never blocks.
        let _ = stdin.write_all(inv.config);
    }
    let mut stdout_pipe = child.stdout.take();
    let mut stderr_pipe = child.stderr.take();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let deadline = start + timeout;
    let mut exited_at: Option<Instant> = None;
    let failure: Option<anyhow::Error> = match &pidfd {
        Err(e) => Some(anyhow::anyhow!("pidfd_open: {e}")),
        Ok(pidfd) => loop {
            let pipes_open = stdout_pipe.is_some() || stderr_pipe.is_some();
            if exited_at.is_some() && !pipes_open {
                break None;
            }
            let now = Instant::now();
            if now >= deadline {
                break Some(anyhow::anyhow!(
                    "{} {} did not finish within {timeout:?}; killed",
                    inv.plugin.display(),
                    inv.command
                ));
            }
            if exited_at.is_some_and(|t| now >= t + OUTPUT_GRACE) {
                // Something the plugin left behind holds its output open: stop reading.
                break None;
            }
            if let Err(e) = check_interrupted() {
                break Some(e);
            }
            let fd_of = |pipe: Option<RawFd>| pipe.unwrap_or(-1);
            let mut fds = [
                libc::pollfd {
                    fd: if exited_at.is_some() {
                        -1
                    } else {
                        pidfd.as_raw_fd()
                    },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: fd_of(stdout_pipe.as_ref().map(AsRawFd::as_raw_fd)),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: fd_of(stderr_pipe.as_ref().map(AsRawFd::as_raw_fd)),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let wait = deadline.saturating_duration_since(now).min(POLL_SLICE);
            let wait_ms = libc::c_int::try_from(wait.as_millis().max(1)).unwrap_or(1);
            // SAFETY: `fds` is a valid array of pollfd of the length given.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            if ready < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break Some(anyhow::anyhow!("poll: {err}"));
            }
            if fds[0].revents != 0 && exited_at.is_none() {
                exited_at = Some(Instant::now());
            }
            if fds[1].revents != 0
                && let Some(pipe) = stdout_pipe.as_mut()
                && !drain(pipe, &mut stdout)
            {
                stdout_pipe = None;
            }
            if fds[2].revents != 0
                && let Some(pipe) = stderr_pipe.as_mut()
                && !drain(pipe, &mut stderr)
            {
                stderr_pipe = None;
            }
        },
    };
    let wall = start.elapsed();
    if failure.is_some() {
        // Not reaped yet, so the pid is still this child's.
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let reaped = reap(pid);
    if let Some(failure) = failure {
        let stderr = String::from_utf8_lossy(&stderr);
        if stderr.trim().is_empty() {
            return Err(failure);
        }
        return Err(anyhow::anyhow!(
            "{failure:#}; the plugin's stderr so far: {}",
            stderr.trim()
        ));
    }
    let (status, usage) = reaped.context("wait4")?;
    Ok(Outcome {
        status,
        stdout,
        stderr,
        wall,
        user: timeval(usage.ru_utime),
        system: timeval(usage.ru_stime),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `/bin/sh` as the "plugin", with `script` as its stdin (so stdin is delivered when the
    /// script runs at all).
    fn sh(script: &str, timeout: Duration) -> anyhow::Result<Outcome> {
        invoke(
            &Invocation {
                plugin: Path::new("/bin/sh"),
                command: "ADD",
                container_id: "c1",
                netns: Path::new("/nonexistent"),
                ifname: "eth0",
                args: "K8S_POD_NAME=p",
                cni_path: "/nonexistent",
                config: script.as_bytes(),
            },
            timeout,
        )
    }

    #[test]
    fn passes_environment_and_stdin_and_collects_output() {
        let outcome = sh(
            "echo \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME $CNI_ARGS $CNI_NETNS\"; echo oops >&2; exit 3",
            Duration::from_secs(5),
        )
        .expect("runs");
        assert_eq!(outcome.status.code(), Some(3));
        assert_eq!(
            String::from_utf8_lossy(&outcome.stdout),
            "ADD c1 eth0 K8S_POD_NAME=p /nonexistent\n"
        );
        assert_eq!(String::from_utf8_lossy(&outcome.stderr), "oops\n");
    }

    #[test]
    fn times_the_process_not_a_polling_interval() {
        let outcome = sh("sleep 0.05", Duration::from_secs(5)).expect("runs");
        assert!(outcome.status.success(), "{outcome:?}");
        assert!(
            outcome.wall >= Duration::from_millis(50) && outcome.wall < Duration::from_millis(1000),
            "{outcome:?}"
        );
    }

    #[test]
    fn kills_what_outlives_its_timeout() {
        let started = Instant::now();
        let err = sh("exec sleep 30", Duration::from_millis(300)).expect_err("times out");
        assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
