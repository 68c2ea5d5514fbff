//! The processes of the `control` scenario: gannet-control on a unix socket in the run's scratch
//! directory, and gannetd agents, each in a network namespace, cgroup, bpffs directory and state
//! directory of its own. Their stderr is read line by line on a thread that stamps every line
//! with the moment it arrived, so latencies are measured to the log line, not to a poll.
//! Every guard stops its process and removes what it created when dropped.

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, Read};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gannet_testkit::{Cgroup, Netns};
use serde_json::Value;

use crate::util::check_interrupted;

/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// After a process exited, how long to wait for the end of its stderr.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long gannet-control may take to start serving.
const CONTROL_START_TIMEOUT: Duration = Duration::from_secs(30);

/// One line of a child's stderr and when it arrived.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

impl Line {
    /// The line as a JSON object (gannetd's `--log-format json`), if it is one.
    #[must_use]
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(self.text.trim()).ok()
    }

    /// The `message` of a JSON line.
    #[must_use]
    pub fn message(&self) -> Option<String> {
        let value = self.json()?;
        value
            .get("message")
            .or_else(|| value.get("fields").and_then(|f| f.get("message")))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// A numeric field of a JSON line.
    #[must_use]
    pub fn field(&self, name: &str) -> Option<u64> {
        let value = self.json()?;
        value
            .get(name)
            .or_else(|| value.get("fields").and_then(|f| f.get(name)))
            .and_then(Value::as_u64)
    }
}

#[derive(Debug, Default)]
struct LogState {
    lines: Vec<Line>,
    /// When stderr reached its end (the process exited, or closed it).
    closed: Option<Instant>,
}

/// A child process whose stderr lines are collected with their arrival time; SIGTERM, then
/// SIGKILL, on drop.
#[derive(Debug)]
pub struct Logged {
    child: Child,
    what: String,
    log: Arc<(Mutex<LogState>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    /// Just before the process was started.
    pub started: Instant,
}

impl Logged {
    /// Starts `cmd` (stdin and stdout null, stderr read line by line), in `netns` if given: the
    /// child joins only its network namespace, keeping the harness's mounts (/sys, bpffs).
    ///
    /// # Errors
    /// If the namespace cannot be opened or the program cannot start.
    pub fn spawn(mut cmd: Command, netns: Option<&Netns>, what: &str) -> anyhow::Result<Logged> {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        Self::start(cmd, netns, what, |child| {
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>)
        })
    }

    /// Like [`spawn`](Self::spawn), but reads stdout and stderr together, as one stream of lines
    /// (for a program that reports on stdout, such as `nft monitor`, and complains on stderr).
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn), or if the pipe cannot be created.
    pub fn spawn_merged(
        mut cmd: Command,
        netns: Option<&Netns>,
        what: &str,
    ) -> anyhow::Result<Logged> {
        let (reader, writer) = std::io::pipe().context("creating a pipe")?;
        cmd.stdout(writer.try_clone().context("duplicating a pipe")?)
            .stderr(writer);
        let mut reader = Some(reader);
        Self::start(cmd, netns, what, move |_| {
            reader.take().map(|r| Box::new(r) as Box<dyn Read + Send>)
        })
    }

    /// Starts `cmd` (stdin null) in `netns` and reads the stream `output` takes from the child
    /// line by line on a thread. `cmd` is dropped once the child runs, so that the child holds
    /// the only write ends of its pipes.
    fn start(
        mut cmd: Command,
        netns: Option<&Netns>,
        what: &str,
        output: impl FnOnce(&mut Child) -> Option<Box<dyn Read + Send>>,
    ) -> anyhow::Result<Logged> {
        let netns_file = netns
            .map(|ns| {
                File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))
            })
            .transpose()?;
        if let Some(fd) = netns_file.as_ref().map(File::as_raw_fd) {
            // SAFETY: setns(2) is async-signal-safe and `fd` stays open (netns_file) until the
            // spawn below has returned.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.stdin(Stdio::null());
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        drop(cmd);
        drop(netns_file);
        let stream = output(&mut child).context("the output is piped")?;
        let log = Arc::new((Mutex::new(LogState::default()), Condvar::new()));
        let reader = {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    let n = reader.read_until(b'\n', &mut buf).unwrap_or(0);
                    let at = Instant::now();
                    let (state, ready) = &*log;
                    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                    if n == 0 {
                        state.closed = Some(at);
                        ready.notify_all();
                        return;
                    }
                    state.lines.push(Line {
                        at,
                        text: String::from_utf8_lossy(&buf).trim_end().to_owned(),
                    });
                    ready.notify_all();
                }
            })
        };
        Ok(Logged {
            child,
            what: what.to_owned(),
            log,
            reader: Some(reader),
            started,
        })
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many lines have arrived.
    #[must_use]
    pub fn line_count(&self) -> usize {
        self.state().lines.len()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.log.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last `max` lines, for error messages.
    #[must_use]
    pub fn tail(&self, max: usize) -> String {
        let state = self.state();
        let start = state.lines.len().saturating_sub(max);
        state.lines[start..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the first line at index `from` or later that `matches`, and returns its index
    /// and the line.
    ///
    /// # Errors
    /// If the process exits (its stderr closes) or `timeout` passes first, or the harness is
    /// interrupted.
    pub fn wait_line(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        mut matches: impl FnMut(&Line) -> bool,
    ) -> anyhow::Result<(usize, Line)> {
        let deadline = Instant::now() + timeout;
        let mut next = from;
        loop {
            {
                let (lock, ready) = &*self.log;
                let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    while next < state.lines.len() {
                        if matches(&state.lines[next]) {
                            return Ok((next, state.lines[next].clone()));
                        }
                        next += 1;
                    }
                    if state.closed.is_some() {
                        break;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    // Wake up now and then to notice an interrupt.
                    let wait = (deadline - now).min(Duration::from_millis(100));
                    let (guard, result) = ready
                        .wait_timeout(state, wait)
                        .unwrap_or_else(PoisonError::into_inner);
                    state = guard;
                    if result.timed_out() {
                        break;
                    }
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before logging {what}:\n{}",
                    self.what,
                    self.tail(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {what} within {timeout:?}:\n{}",
                    self.what,
                    self.tail(40)
                );
            }
            check_interrupted()?;
        }
    }

    /// Waits for a line whose JSON `message` is `message`.
    ///
    /// # Errors
    /// As [`wait_line`](Self::wait_line).
    pub fn wait_message(
        &mut self,
        from: usize,
        message: &str,
        timeout: Duration,
    ) -> anyhow::Result<(usize, Line)> {
        self.wait_line(from, timeout, &format!("{message:?}"), |line| {
            line.text.contains(message) && line.message().as_deref() == Some(message)
        })
    }

    /// Waits until the process has closed its stderr (it exits: no polling interval) and reaps
    /// it; returns when stderr closed and the exit status.
    ///
    /// # Errors
    /// If that takes longer than `timeout` (it is then killed on drop), or waitpid fails.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<(Instant, ExitStatus)> {
        let deadline = Instant::now() + timeout;
        let closed = {
            let (lock, ready) = &*self.log;
            let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(at) = state.closed {
                    break Some(at);
                }
                let now = Instant::now();
                if now >= deadline {
                    break None;
                }
                state = ready
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        let Some(closed) = closed else {
            bail!(
                "{} did not exit within {timeout:?}:\n{}",
                self.what,
                self.tail(20)
            );
        };
        let status = self.child.wait().context("waitpid")?;
        Ok((closed, status))
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; reaps it. Idempotent.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None))
            && let Ok(pid) = libc::pid_t::try_from(self.child.id())
        {
            // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped, so
            // the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!(
                "gannet-bench: {} did not exit after SIGTERM; killing it",
                self.what
            );
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // A grandchild that inherited stderr (a wrapper such as heaptrack starts the real
        // program as its child) may keep the pipe open: wait a moment for its end, then leave
        // the reader thread behind rather than hang.
        let deadline = Instant::now() + OUTPUT_GRACE;
        let closed = {
            let (lock, ready) = &*self.log;
            let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while state.closed.is_none() && Instant::now() < deadline {
                state = ready
                    .wait_timeout(state, deadline.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            state.closed.is_some()
        };
        if let Some(reader) = self.reader.take() {
            if closed {
                let _ = reader.join();
            } else {
                eprintln!(
                    "gannet-bench: {} exited, but something it started still holds its stderr",
                    self.what
                );
            }
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A process's memory from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was resident.
    pub hwm_kib: u64,
    /// `RssAnon`: of `VmRSS`, anonymous memory (the heap).
    pub anon_kib: u64,
    /// `RssFile`: of `VmRSS`, mapped files (the binary and libraries).
    pub file_kib: u64,
}

/// Reads `VmRSS`, `VmHWM`, `RssAnon` and `RssFile` from `/proc/PID/status`.
///
/// # Errors
/// If the file cannot be read or lacks them.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path} has no {name}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")?,
    })
}

/// User plus system CPU time of a process so far, in seconds (`/proc/PID/stat`).
#[must_use]
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based, as in proc(5)).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// gannet-control with an embedded store and a unix socket in `dir`.
#[derive(Debug)]
pub struct ControlPlane {
    pub process: Logged,
    socket: PathBuf,
}

impl ControlPlane {
    /// Starts it with `extra_args` (e.g. `--cluster-cidr`) and waits until it serves.
    ///
    /// # Errors
    /// If it does not start in time.
    pub fn start(
        binary: &Path,
        dir: &Path,
        service_cidr: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<ControlPlane> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("control.sock");
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir")
            .arg(dir.join("data"))
            // Nothing scrapes it, and the default port may be taken.
            .arg("--metrics-address=")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--service-cidr")
            .arg(service_cidr)
            .args(["--log-format", "json"])
            .args(extra_args)
            .env("GANNET_LOG", "info");
        let mut process = Logged::spawn(cmd, None, "gannet-control")?;
        process.wait_message(0, "gannet-control started", CONTROL_START_TIMEOUT)?;
        Ok(ControlPlane { process, socket })
    }

    /// `unix:PATH`.
    #[must_use]
    pub fn addr(&self) -> String {
        format!("unix:{}", self.socket.display())
    }
}

/// One gannetd of the scenario and everything it runs in. Drop order: gannetd (stopped, then
/// `gannetd cleanup`), its cgroup, its network namespace, its state directory.
#[derive(Debug)]
pub struct BenchAgent {
    pub name: String,
    pub process: Option<Logged>,
    gannetd: PathBuf,
    pub bpf_root: PathBuf,
    state_dir: PathBuf,
    cgroup: Cgroup,
    netns: Netns,
}

impl BenchAgent {
    /// Starts gannetd number `index` against the control plane at `control`, with the extra
    /// flags `args` (capacities).
    ///
    /// # Errors
    /// If a stale bpffs directory is in the way, the cgroup would be the root, or gannetd does
    /// not start.
    pub fn start(
        gannetd: &Path,
        index: usize,
        control: &str,
        scratch: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<BenchAgent> {
        let name = format!("bench-node-{index}");
        let netns = Netns::new("ctl")?;
        let cgroup = Cgroup::new()?;
        crate::agent::check_cgroup(&cgroup)?;
        let bpf_root = crate::agent::fresh_bpf_root(Some(&index.to_string()))?;
        let state_dir = scratch.join(format!("agent-{index}"));
        let mut agent = BenchAgent {
            name: name.clone(),
            process: None,
            gannetd: gannetd.to_path_buf(),
            bpf_root,
            state_dir,
            cgroup,
            netns,
        };
        let mut cmd = crate::agent::control_command(
            gannetd,
            &agent.cgroup,
            &agent.bpf_root,
            &agent.state_dir,
            control,
        );
        cmd.args(["--node-name", &name])
            .arg(format!("--node-ip=192.0.2.{}", 10 + index))
            .args([
                "--overlay",
                "none",
                "--masquerade=false",
                "--nodeport-interfaces=",
            ])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)));
        agent.process = Some(Logged::spawn(
            cmd,
            Some(&agent.netns),
            &format!("gannetd {name}"),
        )?);
        Ok(agent)
    }

    /// The running gannetd.
    ///
    /// # Errors
    /// If it was stopped.
    pub fn process(&mut self) -> anyhow::Result<&mut Logged> {
        self.process.as_mut().context("gannetd was stopped")
    }

    /// `gannetd status --bpf-root` as JSON: what the pinned maps hold.
    ///
    /// # Errors
    /// If the command fails or prints no JSON.
    pub fn status(&self) -> anyhow::Result<Value> {
        crate::agent::status(&self.gannetd, &self.bpf_root, None, None)
    }

    /// Stops gannetd and removes its programs, links, pins and state with `gannetd cleanup`.
    /// Idempotent.
    ///
    /// # Errors
    /// If cleanup fails or leaves the bpffs directory behind.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
        if !self.bpf_root.exists() && !self.state_dir.exists() {
            return Ok(());
        }
        crate::agent::cleanup(
            &self.gannetd,
            &self.bpf_root,
            self.cgroup.path(),
            Some(&self.state_dir),
            Some(&self.netns),
        )
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("gannet-bench: stopping {}: {err:#}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_in_order_and_waited_for() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            r#"echo '{"message":"a","n":1}' >&2; sleep 0.05; echo '{"fields":{"message":"b","n":2}}' >&2"#,
        ]);
        let mut child = Logged::spawn(cmd, None, "sh").expect("sh");
        let (i, a) = child
            .wait_message(0, "a", Duration::from_secs(5))
            .expect("a");
        assert_eq!((i, a.field("n")), (0, Some(1)));
        // "b" arrives ~50 ms after "a"; asked for a second later, it carries its arrival time,
        // not the time it was asked for.
        std::thread::sleep(Duration::from_secs(1));
        let asked = Instant::now();
        let (j, b) = child
            .wait_message(i + 1, "b", Duration::from_secs(5))
            .expect("b");
        assert_eq!((j, b.field("n")), (1, Some(2)));
        assert!(
            b.at > a.at && b.at < asked,
            "the stamps are not arrival times: a {:?}, b {:?}, asked {asked:?}",
            a.at,
            b.at
        );
        let err = child
            .wait_message(2, "c", Duration::from_secs(5))
            .expect_err("sh exits without c");
        assert!(err.to_string().contains("exited"), "{err:#}");
        let (closed, status) = child.wait_exit(Duration::from_secs(5)).expect("exit");
        assert!(status.success() && closed >= b.at, "{status} {closed:?}");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let (_, status) = Logged::spawn(cmd, None, "sh")
            .expect("sh")
            .wait_exit(Duration::from_secs(5))
            .expect("exit");
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn merged_output_reads_stdout_and_stderr_in_order() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo out; sleep 0.05; echo err >&2; sleep 0.05; echo out2",
        ]);
        let mut child = Logged::spawn_merged(cmd, None, "sh").expect("sh");
        let (closed, status) = child.wait_exit(Duration::from_secs(5)).expect("exit");
        assert!(status.success(), "{status}");
        assert_eq!(child.tail(10), "out\nerr\nout2");
        let (i, line) = child
            .wait_line(0, Duration::from_secs(1), "err", |l| l.text == "err")
            .expect("err line");
        assert!(i == 1 && line.at <= closed, "{i} {line:?}");
    }

    #[test]
    fn stopping_does_not_hang_on_a_grandchild_holding_stderr() {
        let mut cmd = Command::new("sh");
        // The background sleep keeps stderr open after sh is gone; it is killed below.
        cmd.args(["-c", "sleep 30 & echo $! >&2; wait"]);
        let mut child = Logged::spawn(cmd, None, "sh").expect("sh");
        let (_, line) = child
            .wait_line(0, Duration::from_secs(5), "the pid", |_| true)
            .expect("pid line");
        let grandchild: libc::pid_t = line.text.trim().parse().expect("a pid");
        let start = Instant::now();
        child.stop();
        let took = start.elapsed();
        // SAFETY: kill(2) has no memory-safety preconditions; the sleep is ours.
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
        assert!(took < Duration::from_secs(8), "stop took {took:?}");
    }

    #[test]
    fn reads_own_memory_and_cpu() {
        let me = memory(std::process::id()).expect("memory");
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib, "{me:?}");
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
