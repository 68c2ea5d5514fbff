//! gannetd under the harness's control: started on the benchmark's own cgroup and bpffs directory,
//! fed through a manifest directory, stopped and cleaned up by a guard; alone in the harness's
//! namespace (socket load balancing only), as a node of a simulated cluster in the node's
//! namespace ([`Agent::start_node`]), or with its nftables data plane in a node's namespace
//! ([`Agent::start_nft`], never the root namespace).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gannet_testkit::{Cgroup, ChildGuard, Netns, cgroup2_root, run_in, spawn};

use crate::util::check_interrupted;

/// The log line gannetd writes once its programs are attached.
const ATTACHED: &str = "socket load balancer attached";
/// The log line gannetd writes once it serves gannet-cni (its node set up).
const CNI_READY: &str = "ready for CNI endpoints";
/// The log line gannetd writes after applying a change of the manifests.
const SYNCED: &str = "services synced";
/// How long gannetd may take to load and attach its programs.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long gannetd may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `gannetd cleanup` may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often gannetd scans the manifest directory (its `--sync-interval-ms`).
pub const SYNC_INTERVAL_MS: u64 = 50;

/// The bpffs directory of this process's gannetd: `/sys/fs/bpf/gannet-bench-<pid>`.
#[must_use]
pub fn bpf_root() -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/gannet-bench-{}", std::process::id()))
}

/// The flags of a gannetd with the nftables data plane on a single node (no overlay, no
/// masquerade, nothing but its table of services), scanning its manifest directory every
/// `sync_interval_ms`.
#[must_use]
pub fn nft_args(node_name: &str, sync_interval_ms: u64) -> Vec<String> {
    [
        "--dataplane",
        "nftables",
        "--node-name",
        node_name,
        "--overlay",
        "none",
        "--masquerade=false",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([format!("--sync-interval-ms={sync_interval_ms}")])
    .collect()
}

/// Checks that `netns` is neither the harness's own network namespace (where the benchmarks'
/// eBPF gannetd runs, the root namespace on a normal run) nor PID 1's (where readable; some
/// sandboxes do not let even root read it): the nftables data plane programs a table in the
/// namespace gannetd runs in, and the benchmarks never touch the root namespace's rules.
///
/// # Errors
/// If it is one of them, or `netns` or the harness's namespace cannot be read.
pub fn check_not_root_netns(netns: &Netns) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let id = |path: &Path| fs::metadata(path).map(|m| (m.dev(), m.ino()));
    let ours = id(netns.path()).with_context(|| format!("reading {}", netns.path().display()))?;
    let own = Path::new("/proc/thread-self/ns/net");
    let harness = id(own).with_context(|| format!("reading {}", own.display()))?;
    let init = id(Path::new("/proc/1/ns/net")).ok();
    ensure!(
        ours != harness && Some(ours) != init,
        "refusing to run gannetd's nftables data plane in {}: it is the harness's own or the root \
         network namespace",
        netns.path().display()
    );
    Ok(())
}

/// Checks that `cgroup` is a sub-directory of the cgroup v2 root: a benchmark's gannetd never
/// attaches to the root.
///
/// # Errors
/// If it is not, or the root cannot be found.
pub fn check_cgroup(cgroup: &Cgroup) -> anyhow::Result<()> {
    let root = cgroup2_root()?;
    ensure!(
        cgroup.path() != root && cgroup.path().starts_with(&root),
        "refusing to attach to {}: not a sub-directory of the cgroup v2 root {}",
        cgroup.path().display(),
        root.display()
    );
    Ok(())
}

/// A bpffs directory for one of this process's gannetds, `bpf_root()` with `-<tag>` (or alone),
/// checked not to exist yet.
///
/// # Errors
/// If it exists (left by an earlier run).
pub fn fresh_bpf_root(tag: Option<&str>) -> anyhow::Result<PathBuf> {
    let mut path = bpf_root().into_os_string();
    if let Some(tag) = tag {
        path.push(format!("-{tag}"));
    }
    let path = PathBuf::from(path);
    ensure!(
        !path.exists(),
        "{} exists already (left by an earlier run?); remove it with `gannetd cleanup --bpf-root {}`",
        path.display(),
        path.display()
    );
    Ok(path)
}

/// gannetd in a node of a cluster: `cgroup`, `bpf_root`, `state_dir`, the control plane at
/// `control`, JSON logs at `info`; the caller adds the node's name, address and mode.
#[must_use]
pub fn control_command(
    gannetd: &Path,
    cgroup: &Cgroup,
    bpf_root: &Path,
    state_dir: &Path,
    control: &str,
) -> Command {
    let mut cmd = Command::new(gannetd);
    cmd.env("GANNET_LOG", "info")
        // Several agents per machine; nothing scrapes them.
        .arg("--metrics-address=")
        .arg("--cgroup-path")
        .arg(cgroup.path())
        .arg("--bpf-root")
        .arg(bpf_root)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--control")
        .arg(control)
        .args(["--log-format", "json"]);
    cmd
}

/// Runs `gannetd cleanup` for `bpf_root`, `cgroup` and (if given, then also removed) `state_dir`,
/// inside `netns` if given (the namespace that gannetd ran in: the overlay's device, routes and
/// masquerade table are removed from the namespace cleanup runs in); if that fails or leaves the
/// bpffs directory behind, removes the directory (unpinning the links detaches the programs) and
/// says so.
///
/// # Errors
/// If cleanup failed, whether or not the fallback worked.
pub fn cleanup(
    gannetd: &Path,
    bpf_root: &Path,
    cgroup: &Path,
    state_dir: Option<&Path>,
    netns: Option<&Netns>,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(gannetd);
    cmd.arg("cleanup")
        .arg("--bpf-root")
        .arg(bpf_root)
        .arg("--cgroup-path")
        .arg(cgroup);
    if let Some(state_dir) = state_dir {
        cmd.arg("--state-dir").arg(state_dir);
    }
    let output = run_in(cmd, netns, None, CLEANUP_TIMEOUT).context("running gannetd cleanup")?;
    if let Some(state_dir) = state_dir {
        let _ = fs::remove_dir_all(state_dir);
    }
    if !output.status.success() || bpf_root.exists() {
        // Last resort: unpinning the links detaches the programs.
        let removed = fs::remove_dir_all(bpf_root);
        bail!(
            "`gannetd cleanup --bpf-root {}` failed ({}): {}{}",
            bpf_root.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            match removed {
                Ok(()) => "; removed the directory instead".to_owned(),
                Err(err) => format!("; removing the directory failed too: {err}"),
            }
        );
    }
    Ok(())
}

/// `gannetd status` for `bpf_root` (and `state_dir`), run in `netns` if given, as JSON.
///
/// # Errors
/// If the command fails or prints no JSON.
pub fn status(
    gannetd: &Path,
    bpf_root: &Path,
    state_dir: Option<&Path>,
    netns: Option<&Netns>,
) -> anyhow::Result<serde_json::Value> {
    let mut cmd = Command::new(gannetd);
    cmd.args(["status", "-o", "json"])
        .arg("--bpf-root")
        .arg(bpf_root);
    if let Some(state_dir) = state_dir {
        cmd.arg("--state-dir").arg(state_dir);
    }
    let output = run_in(cmd, netns, None, CLEANUP_TIMEOUT).context("running gannetd status")?;
    ensure!(
        output.status.success(),
        "gannetd status failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    serde_json::from_slice(&output.stdout).context("parsing gannetd status")
}

/// A running gannetd; dropping it stops it (SIGTERM, then SIGKILL) and runs `gannetd cleanup`
/// (in its node's namespace, with its state directory, for a node agent).
#[derive(Debug)]
pub struct Agent {
    child: Option<ChildGuard>,
    gannetd: PathBuf,
    bpf_root: PathBuf,
    cgroup: PathBuf,
    /// A node agent's namespace and state directory.
    node: Option<(PathBuf, PathBuf)>,
    /// How many bytes of gannetd's stderr have been looked at for sync lines.
    log_seen: usize,
}

/// Where a node agent runs and how it is told it is a node.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The node's network namespace (gannetd enters only it).
    pub netns: &'a Netns,
    /// Tells this process's node agents apart: the suffix of its bpffs directory.
    pub tag: &'a str,
    /// Its `--state-dir` (CNI socket, subnet file); removed with the agent.
    pub state_dir: &'a Path,
    /// The node's flags: `--node-name`, `--node-ip`, `--overlay`, `--nodeport-interfaces`, …
    pub args: &'a [String],
}

/// What one "services synced" line reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SyncReport {
    added: u64,
    updated: u64,
    unchanged: u64,
    removed: u64,
    failed: u64,
}

impl Agent {
    /// Starts `gannetd` attached to `cgroup`, serving `manifest_dir`, and waits until its programs
    /// are attached.
    ///
    /// # Errors
    /// If `cgroup` is the cgroup v2 root (never attach there), a stale bpffs directory is in the
    /// way, or gannetd does not come up.
    pub fn start(gannetd: &Path, cgroup: &Cgroup, manifest_dir: &Path) -> anyhow::Result<Agent> {
        Self::launch(gannetd, cgroup, manifest_dir, None, ATTACHED)
    }

    /// Starts `gannetd --dataplane nftables` in `node`'s namespace (checked not to be the root
    /// namespace), with `--dataplane nftables` in `node.args` ([`nft_args`] for a node alone,
    /// or a cluster node's flags with an overlay), serving `manifest_dir`, and waits until it
    /// serves CNI requests (its table created). It loads no program; `cgroup` is only named to
    /// `gannetd cleanup`.
    ///
    /// # Errors
    /// If the namespace is the root one, `node.args` do not select the nftables data plane, or
    /// gannetd does not come up.
    pub fn start_nft(
        gannetd: &Path,
        cgroup: &Cgroup,
        manifest_dir: &Path,
        node: Node<'_>,
    ) -> anyhow::Result<Agent> {
        check_not_root_netns(node.netns)?;
        ensure!(
            node.args
                .windows(2)
                .any(|w| w == ["--dataplane", "nftables"]),
            "start_nft needs --dataplane nftables in the node's flags: {:?}",
            node.args
        );
        Self::launch(gannetd, cgroup, manifest_dir, Some(node), CNI_READY)
    }

    /// Starts `gannetd` as a node of a simulated cluster: in `node`'s namespace, with its flags,
    /// attached to `cgroup`, serving `manifest_dir`, and waits until it serves CNI requests.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_node(
        gannetd: &Path,
        cgroup: &Cgroup,
        manifest_dir: &Path,
        node: Node<'_>,
    ) -> anyhow::Result<Agent> {
        let mut agent = Self::launch(gannetd, cgroup, manifest_dir, Some(node), ATTACHED)?;
        agent.wait_for_log(CNI_READY, START_TIMEOUT)?;
        Ok(agent)
    }

    /// Starts gannetd and waits until it has logged `ready`.
    fn launch(
        gannetd: &Path,
        cgroup: &Cgroup,
        manifest_dir: &Path,
        node: Option<Node<'_>>,
        ready: &str,
    ) -> anyhow::Result<Agent> {
        check_cgroup(cgroup)?;
        let bpf_root = fresh_bpf_root(node.map(|n| n.tag))?;
        let mut cmd = Command::new(gannetd);
        cmd.env("GANNET_LOG", "info")
            .arg("--metrics-address=")
            .arg("--cgroup-path")
            .arg(cgroup.path())
            .arg("--bpf-root")
            .arg(&bpf_root)
            .arg("--manifest-dir")
            .arg(manifest_dir)
            .args(["--log-format", "json"]);
        if !node.is_some_and(|n| n.args.iter().any(|a| a.starts_with("--sync-interval-ms"))) {
            cmd.arg(format!("--sync-interval-ms={SYNC_INTERVAL_MS}"));
        }
        match node {
            Some(node) => {
                cmd.arg("--state-dir").arg(node.state_dir).args(node.args);
            }
            // One node: no overlay, no masquerade, no NodePort program (this agent runs in the
            // harness's own namespace).
            None => {
                cmd.args(["--node-name", "bench"]).args([
                    "--overlay",
                    "none",
                    "--masquerade=false",
                    "--nodeport-interfaces=",
                ]);
            }
        }
        let child = spawn(cmd, node.map(|n| n.netns), None).context("starting gannetd")?;
        // From here on the guard cleans up, also if gannetd never gets ready.
        let mut agent = Agent {
            child: Some(child),
            gannetd: gannetd.to_path_buf(),
            bpf_root,
            cgroup: cgroup.path().to_path_buf(),
            node: node.map(|n| (n.netns.path().to_path_buf(), n.state_dir.to_path_buf())),
            log_seen: 0,
        };
        agent.wait_for_log(ready, START_TIMEOUT)?;
        Ok(agent)
    }

    /// Its `--bpf-root`.
    #[must_use]
    pub fn bpf_root(&self) -> &Path {
        &self.bpf_root
    }

    /// `gannetd status` of this agent (run in its node's namespace), as JSON.
    ///
    /// # Errors
    /// If the command fails or prints no JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let state_dir = self.node.as_ref().map(|(_, dir)| dir.as_path());
        status(
            &self.gannetd,
            &self.bpf_root,
            state_dir,
            self.netns()?.as_ref(),
        )
    }

    /// A node agent's namespace (not owned: dropping it deletes nothing).
    fn netns(&self) -> anyhow::Result<Option<Netns>> {
        self.node
            .as_ref()
            .map(|(netns, _)| Netns::open_path(netns))
            .transpose()
    }

    fn child(&mut self) -> anyhow::Result<&mut ChildGuard> {
        self.child.as_mut().context("gannetd was stopped")
    }

    /// Waits until gannetd has logged `message` (anywhere in its log so far).
    ///
    /// # Errors
    /// If gannetd exits, `timeout` passes first, or the harness is interrupted.
    pub fn wait_for_log(&mut self, message: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child()?;
            let log = child.stderr_so_far();
            if log.contains(message) {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!("gannetd exited ({status}) before logging {message:?}:\n{log}");
            }
            if Instant::now() >= deadline {
                bail!("gannetd did not log {message:?} within {timeout:?}:\n{log}");
            }
            check_interrupted()?;
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until gannetd's latest sync report (since the last call) says that `expected`
    /// services are programmed, and returns how long that took from `since`.
    ///
    /// # Errors
    /// If gannetd reports failed services or exits, or `timeout` passes first.
    pub fn wait_synced(
        &mut self,
        expected: u64,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.log_seen;
            let child = self.child()?;
            let log = child.stderr_so_far();
            let mut programmed = None;
            let mut consumed = seen;
            for line in log.get(seen..).unwrap_or_default().split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break;
                }
                consumed += line.len();
                if let Some(report) = parse_sync(line) {
                    ensure!(
                        report.failed == 0,
                        "gannetd failed to program {} services: {line}",
                        report.failed
                    );
                    programmed = Some(report.added + report.updated + report.unchanged);
                }
            }
            if programmed == Some(expected) {
                self.log_seen = consumed;
                return Ok(since.elapsed());
            }
            if let Some(status) = child.try_wait()? {
                bail!("gannetd exited ({status}) before programming {expected} services:\n{log}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "gannetd did not report {expected} programmed services within {timeout:?}:\n{}",
                    tail(&log, 4000)
                );
            }
            check_interrupted()?;
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops gannetd (SIGTERM, SIGKILL after a timeout) and removes its programs, links and pins
    /// with `gannetd cleanup`. Idempotent.
    ///
    /// # Errors
    /// If cleanup fails or leaves the bpffs directory behind.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(libc::SIGTERM);
            // wait_output kills the child if it does not exit in time.
            let _ = child.wait_output(STOP_TIMEOUT);
        }
        let state_dir = self.node.as_ref().map(|(_, dir)| dir.as_path());
        if !self.bpf_root.exists() && !state_dir.is_some_and(Path::exists) {
            return Ok(());
        }
        let netns = self.netns()?;
        cleanup(
            &self.gannetd,
            &self.bpf_root,
            &self.cgroup,
            state_dir,
            netns.as_ref(),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("gannet-bench: stopping gannetd: {err:#}");
        }
    }
}

/// The counts of a JSON "services synced" log line.
fn parse_sync(line: &str) -> Option<SyncReport> {
    if !line.contains(SYNCED) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let field = |name: &str| {
        value
            .get(name)
            .or_else(|| value.get("fields").and_then(|f| f.get(name)))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let message = value
        .get("message")
        .or_else(|| value.get("fields").and_then(|f| f.get("message")))
        .and_then(serde_json::Value::as_str)?;
    (message == SYNCED).then(|| SyncReport {
        added: field("added"),
        updated: field("updated"),
        unchanged: field("unchanged"),
        removed: field("removed"),
        failed: field("failed"),
    })
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gannetds_json_sync_lines() {
        let line = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","added":1000,"updated":0,"removed":0,"unchanged":0,"failed":0,"message":"services synced","target":"gannet_agent::run"}"#;
        assert_eq!(
            parse_sync(line),
            Some(SyncReport {
                added: 1000,
                ..SyncReport::default()
            })
        );
        assert_eq!(
            parse_sync(r#"{"message":"socket load balancer attached"}"#),
            None
        );
        assert_eq!(parse_sync("services synced added=3"), None);
    }

    #[test]
    fn the_nft_data_plane_refuses_the_harness_namespace() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating a network namespace needs root");
            return;
        }
        let own = Netns::open_path(Path::new("/proc/self/ns/net")).expect("own namespace");
        let err = check_not_root_netns(&own).expect_err("the harness's namespace is refused");
        assert!(err.to_string().contains("refusing"), "{err:#}");
        let node = Netns::new("chk").expect("a namespace");
        check_not_root_netns(&node).expect("a namespace of its own is fine");
    }

    #[test]
    fn nft_agents_get_the_nftables_data_plane_alone() {
        let args = nft_args("n", 10);
        assert_eq!(
            args,
            [
                "--dataplane",
                "nftables",
                "--node-name",
                "n",
                "--overlay",
                "none",
                "--masquerade=false",
                "--sync-interval-ms=10"
            ]
        );
    }

    #[test]
    fn bpf_root_is_per_process() {
        assert_eq!(
            bpf_root(),
            PathBuf::from(format!("/sys/fs/bpf/gannet-bench-{}", std::process::id()))
        );
    }
}
