//! Child processes started inside a network namespace and/or a cgroup, killed on drop.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};

use crate::cmd::describe;
use crate::{Cgroup, Netns};

/// After a child exits, how long to wait for the rest of its output (a grandchild may hold the pipes).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Starts `cmd` inside `netns` and `cgroup` (each optional), with stdin, stdout and stderr piped.
///
/// The namespace file and `cgroup.procs` are opened before the fork; between fork and exec the child
/// writes `0` to `cgroup.procs` (moving itself) and calls `setns(CLONE_NEWNET)`, so the program
/// starts already placed and its mount namespace (and `/sys`, bpffs) stays the caller's.
/// Any stdio configuration on `cmd` is replaced.
///
/// # Errors
/// If the namespace or cgroup cannot be opened, joining them fails, or the program cannot start.
pub fn spawn(
    mut cmd: Command,
    netns: Option<&Netns>,
    cgroup: Option<&Cgroup>,
) -> anyhow::Result<ChildGuard> {
    let line = describe(&cmd);
    let netns_file = netns
        .map(|ns| File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display())))
        .transpose()?;
    let procs_file = cgroup
        .map(|cg| {
            let procs = cg.path().join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&procs)
                .with_context(|| format!("opening {}", procs.display()))
        })
        .transpose()?;
    let netns_fd = netns_file.as_ref().map(File::as_raw_fd);
    let procs_fd = procs_file.as_ref().map(File::as_raw_fd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if netns_fd.is_some() || procs_fd.is_some() {
        // SAFETY: the hook only makes the async-signal-safe calls write(2) and setns(2) on
        // descriptors that `netns_file` and `procs_file` keep open until spawn() has returned.
        unsafe {
            cmd.pre_exec(move || enter(netns_fd, procs_fd));
        }
    }
    let place = match (netns, cgroup) {
        (Some(ns), Some(cg)) => format!(" in netns {} and cgroup {}", ns.name(), cg.name()),
        (Some(ns), None) => format!(" in netns {}", ns.name()),
        (None, Some(cg)) => format!(" in cgroup {}", cg.name()),
        (None, None) => String::new(),
    };
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`{place}"))?;
    drop((netns_file, procs_file));

    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (line_tx, lines) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if line_tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stderr_buf = Arc::new(Mutex::new(Vec::new()));
    let stderr_reader = {
        let buf = Arc::clone(&stderr_buf);
        thread::spawn(move || {
            let mut stderr = stderr;
            let mut chunk = [0_u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                buf.lock()
                    .expect("stderr buffer lock")
                    .extend_from_slice(&chunk[..n]);
            }
        })
    };
    Ok(ChildGuard {
        child,
        line: format!("{line}{place}"),
        stdin,
        lines,
        unread: Vec::new(),
        stderr: stderr_buf,
        stderr_reader: Some(stderr_reader),
        status: None,
    })
}

/// Runs in the forked child before exec: join the cgroup, then the network namespace.
fn enter(netns_fd: Option<RawFd>, procs_fd: Option<RawFd>) -> std::io::Result<()> {
    if let Some(fd) = procs_fd {
        // "0" moves the writing process itself.
        // SAFETY: `fd` is open and the buffer is a valid one-byte slice.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if let Some(fd) = netns_fd {
        // SAFETY: `fd` is an open network namespace file.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `cmd` in `netns` and `cgroup` (see [`spawn`]) with stdin closed, and waits up to `timeout`
/// for it to exit. A non-zero exit is not an error: check `status` in the output.
///
/// # Errors
/// If the command cannot be started or does not exit within `timeout` (it is then killed).
pub fn run_in(
    cmd: Command,
    netns: Option<&Netns>,
    cgroup: Option<&Cgroup>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let mut child = spawn(cmd, netns, cgroup)?;
    child.close_stdin();
    child.wait_output(timeout)
}

/// A child process started by [`spawn`]; dropping it sends `SIGKILL` and reaps it.
///
/// Stdout is read line by line on a background thread: [`read_line`](Self::read_line) and
/// [`wait_for_line`](Self::wait_for_line) consume lines, [`wait_output`](Self::wait_output) returns
/// the ones not consumed yet. Stderr is collected in the background and shows up in error messages.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    /// Command line and placement, for messages.
    line: String,
    stdin: Option<ChildStdin>,
    lines: Receiver<Vec<u8>>,
    /// Lines skipped by `wait_for_line`, kept for error messages.
    unread: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// The child's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin, until [`close_stdin`](Self::close_stdin) or `wait_output`.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Writes `line` and a newline to the child's stdin and flushes.
    ///
    /// # Errors
    /// If stdin was closed or the write fails (for example because the child exited).
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("stdin of `{}` is closed", self.line))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to stdin of `{}`", self.line))
    }

    /// Closes the child's stdin, so it sees end of file.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Everything the child wrote to stderr so far.
    #[must_use]
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer lock")).into_owned()
    }

    /// The next line of stdout, without its newline.
    ///
    /// # Errors
    /// If no line arrives within `timeout` or stdout ends; the error holds the child's stderr.
    pub fn read_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned()),
            Err(RecvTimeoutError::Timeout) => {
                Err(self.failure(&format!("no line on stdout within {timeout:?}")))
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.failure("stdout ended")),
        }
    }

    /// Reads stdout lines until one contains `contains` and returns it (without its newline); the
    /// lines before it are skipped.
    ///
    /// # Errors
    /// If no such line arrives within `timeout` or stdout ends first; the error lists the skipped
    /// lines and the child's stderr.
    pub fn wait_for_line(&mut self, contains: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    if line.contains(contains) {
                        return Ok(line);
                    }
                    self.unread.push(line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failure(&format!(
                        "no stdout line containing {contains:?} within {timeout:?}"
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failure(&format!(
                        "stdout ended without a line containing {contains:?}"
                    )));
                }
            }
        }
    }

    /// Sends `signal` (for example `libc::SIGTERM`) to the child, unless it has already been reaped.
    ///
    /// # Errors
    /// If kill(2) fails.
    pub fn kill(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet, so
        // the pid is still ours.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill({pid}, {signal})"));
        }
        Ok(())
    }

    /// The exit status if the child has exited (reaping it), without blocking.
    ///
    /// # Errors
    /// If waitpid(2) fails.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("waitpid")?;
        }
        Ok(self.status)
    }

    /// Closes stdin, waits up to `timeout` for the child to exit and returns its status, the stdout
    /// lines not consumed yet and its stderr.
    ///
    /// # Errors
    /// If the child does not exit within `timeout`; it is then killed and the error holds its stderr.
    pub fn wait_output(&mut self, timeout: Duration) -> anyhow::Result<Output> {
        self.close_stdin();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait().map(|status| self.status = Some(status));
                return Err(self.failure(&format!("did not exit within {timeout:?}; killed")));
            }
            thread::sleep(Duration::from_millis(5));
        };
        let grace = Instant::now() + OUTPUT_GRACE;
        let mut stdout = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(grace.saturating_duration_since(Instant::now()))
        {
            stdout.extend_from_slice(&line);
        }
        if let Some(reader) = self.stderr_reader.take() {
            while !reader.is_finished() && Instant::now() < grace {
                thread::sleep(Duration::from_millis(5));
            }
        }
        let stderr = std::mem::take(&mut *self.stderr.lock().expect("stderr buffer lock"));
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        let mut message = format!("`{}`: {what}", self.line);
        if let Some(status) = self.status {
            message.push_str(&format!("; exited: {status}"));
        }
        if !self.unread.is_empty() {
            message.push_str(&format!("; stdout lines skipped: {:?}", self.unread));
        }
        let stderr = self.stderr_so_far();
        if !stderr.trim().is_empty() {
            message.push_str(&format!("; stderr:\n{}", stderr.trim_end()));
        }
        anyhow!(message)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_and_lines() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo one; echo two; echo oops >&2; read x; echo got $x; exit 3",
        ]);
        let mut child = spawn(cmd, None, None).expect("spawn sh");
        assert_eq!(
            child
                .wait_for_line("two", Duration::from_secs(5))
                .expect("line two"),
            "two"
        );
        child.send_line("hello").expect("write stdin");
        assert_eq!(
            child.read_line(Duration::from_secs(5)).expect("reply"),
            "got hello"
        );
        let output = child.wait_output(Duration::from_secs(5)).expect("exit");
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&output.stderr), "oops\n");
        assert!(
            output.stdout.is_empty(),
            "consumed lines came back: {:?}",
            output.stdout
        );
    }

    #[test]
    fn timeouts_kill_and_report_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo starting >&2; sleep 30"]);
        let mut child = spawn(cmd, None, None).expect("spawn sh");
        let err = child
            .wait_for_line("never", Duration::from_millis(300))
            .expect_err("no such line");
        let message = format!("{err:#}");
        assert!(
            message.contains("starting"),
            "stderr missing from {message:?}"
        );
        let err = child
            .wait_output(Duration::from_millis(100))
            .expect_err("sleep outlives timeout");
        assert!(
            format!("{err:#}").contains("killed"),
            "unexpected error {err:#}"
        );
        assert!(
            child.try_wait().expect("waitpid").is_some(),
            "child was not reaped"
        );
    }

    #[test]
    fn bails_for_missing_program() {
        let err =
            spawn(Command::new("/nonexistent/gannet-nothing"), None, None).expect_err("no program");
        assert!(
            format!("{err:#}").contains("/nonexistent/gannet-nothing"),
            "{err:#}"
        );
    }
}
