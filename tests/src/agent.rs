//! `gannetd` under test: its own bpffs directory, its own manifest directory, attached to a test
//! cgroup; stopped and cleaned up (`gannetd cleanup`) on drop, also when the test panics.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{Cgroup, ChildGuard, Netns, bin_path, spawn, unique_name};

/// How long gannetd may take to attach, or to apply a manifest change.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running gannetd.
#[derive(Debug)]
pub struct Agent {
    child: Option<ChildGuard>,
    bpf_root: PathBuf,
    cgroup: PathBuf,
    manifest_dir: PathBuf,
    state_dir: PathBuf,
    /// The network namespace gannetd runs in (`None`: the test's own).
    netns: Option<PathBuf>,
    /// `--control ADDR` instead of `--manifest-dir`.
    control: Option<String>,
    extra_args: Vec<String>,
    /// Log output of earlier runs (before restarts), for messages.
    past_logs: String,
}

impl Agent {
    /// Starts gannetd attached to `cgroup`, with an empty manifest directory, and waits until
    /// its programs are attached. `extra_args` are passed on (e.g. `--max-services 2`).
    ///
    /// # Errors
    /// If gannetd cannot start or does not attach in time; the error quotes its log.
    pub fn start(cgroup: &Cgroup, extra_args: &[&str]) -> anyhow::Result<Agent> {
        Self::start_in(None, cgroup, extra_args)
    }

    /// Like [`start`](Self::start), with gannetd running in `netns` (a simulated node: the pod
    /// programs attach to veths of the namespace gannetd runs in).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_in(
        netns: Option<&Netns>,
        cgroup: &Cgroup,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        Self::launch_new(netns, cgroup, None, extra_args)
    }

    /// Starts gannetd with its services from the control plane at `control` (`--control`),
    /// reporting the node address 192.0.2.10 (a documentation address: nothing is sent to it).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with_control(
        netns: Option<&Netns>,
        cgroup: &Cgroup,
        control: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        let mut args = vec!["--node-ip", "192.0.2.10"];
        args.extend_from_slice(extra_args);
        Self::launch_new(netns, cgroup, Some(control), &args)
    }

    /// Starts gannetd as a node of a cluster: in `netns` (a node of
    /// [`Underlay`](crate::cluster::Underlay)), with its services and nodes from the control plane
    /// at `control`, and only `extra_args` besides (`--overlay`, `--node-name`, ...).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_node(
        netns: &Netns,
        cgroup: &Cgroup,
        control: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        Self::launch_new(Some(netns), cgroup, Some(control), extra_args)
    }

    fn launch_new(
        netns: Option<&Netns>,
        cgroup: &Cgroup,
        control: Option<&str>,
        extra_args: &[&str],
    ) -> anyhow::Result<Agent> {
        let name = unique_name("gannet-test");
        let manifest_dir = std::env::temp_dir().join(format!("{name}-manifests"));
        fs::create_dir_all(&manifest_dir)
            .with_context(|| format!("creating {}", manifest_dir.display()))?;
        let mut agent = Agent {
            child: None,
            bpf_root: PathBuf::from("/sys/fs/bpf").join(&name),
            cgroup: cgroup.path().to_owned(),
            manifest_dir,
            state_dir: std::env::temp_dir().join(format!("{name}-state")),
            netns: netns.map(|n| n.path().to_owned()),
            control: control.map(str::to_owned),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            past_logs: String::new(),
        };
        agent.launch()?;
        Ok(agent)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin_path("gannetd"));
        cmd.arg("--cgroup-path")
            .arg(&self.cgroup)
            .arg("--bpf-root")
            .arg(&self.bpf_root);
        match &self.control {
            Some(control) => cmd.arg("--control").arg(control),
            None => cmd.arg("--manifest-dir").arg(&self.manifest_dir),
        };
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--sync-interval-ms", "50"]);
        // Single-node tests run without an overlay, without masquerade and without the NodePort
        // program unless they ask for them (some run in the test's own namespace, which must
        // stay untouched).
        let given = |flag: &str| {
            self.extra_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        // The nftables data plane programs a table in gannetd's namespace: never the root one.
        anyhow::ensure!(
            self.netns.is_some()
                || !self
                    .extra_args
                    .iter()
                    .any(|a| a == "nftables" || a == "--dataplane=nftables"),
            "--dataplane nftables needs a network namespace of the test's own"
        );
        if !given("--node-name") {
            cmd.args(["--node-name", "test-node"]);
        }
        if !given("--overlay") {
            cmd.args(["--overlay", "none"]);
        }
        if !given("--masquerade") {
            cmd.arg("--masquerade=false");
        }
        if !given("--nodeport-interfaces") {
            cmd.arg("--nodeport-interfaces=");
        }
        // Tests run many agents at once: never the default port.
        if !given("--metrics-address") {
            cmd.args(["--metrics-address", crate::metrics::TEST_METRICS_ADDRESS]);
        }
        cmd.args(&self.extra_args)
            .env("GANNET_LOG", "gannet_agent=debug,gannetd=debug,info");
        // gannetd enters only the network namespace: it keeps this process's /sys, cgroup2
        // and bpffs mounts.
        let netns = self.netns.as_deref().map(Netns::open_path).transpose()?;
        self.child = Some(spawn(cmd, netns.as_ref(), None)?);
        self.wait_log("ready for CNI endpoints", 1)?;
        // The first scan of the manifest directory comes after that line. Until it is logged,
        // a test's `apply` would count it as its own and go on before its file is programmed.
        if self.control.is_none() {
            self.wait_log("manifests applied", 1)?;
        }
        Ok(())
    }

    /// The process id of the running gannetd.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// The cgroup gannetd attaches to.
    #[must_use]
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Waits up to `timeout` for gannetd to exit on its own (without a signal) and returns its
    /// status; its log stays in [`logs`](Self::logs).
    ///
    /// # Errors
    /// If it is not running, or still runs after `timeout` (it is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("gannetd is not running")?;
        let output = child.wait_output(timeout);
        match output {
            Ok(output) => {
                self.past_logs
                    .push_str(&String::from_utf8_lossy(&output.stderr));
                Ok(output.status)
            }
            Err(e) => Err(e.context("gannetd did not exit on its own")),
        }
    }

    /// The directory gannetd reads manifests from.
    #[must_use]
    pub fn manifest_dir(&self) -> &Path {
        &self.manifest_dir
    }

    /// gannetd's state directory (CNI socket, endpoint registry).
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The subnet file gannetd writes from its lease (with `--control`).
    #[must_use]
    pub fn subnet_file(&self) -> PathBuf {
        self.state_dir.join("subnet.env")
    }

    /// The CNI socket gannet-cni registers endpoints on.
    #[must_use]
    pub fn cni_socket(&self) -> PathBuf {
        self.state_dir.join("cni.sock")
    }

    /// `gannetd status` as JSON.
    ///
    /// # Errors
    /// If the command fails or prints no JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let output = self.status_output("json")?;
        serde_json::from_str(&output).context("parsing gannetd status")
    }

    /// `gannetd status` as people read it (`-o table`, the default).
    ///
    /// # Errors
    /// If the command fails.
    pub fn status_table(&self) -> anyhow::Result<String> {
        self.status_output("table")
    }

    fn status_output(&self, format: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(bin_path("gannetd"));
        cmd.args(["status", "-o", format])
            .arg("--bpf-root")
            .arg(&self.bpf_root)
            .arg("--state-dir")
            .arg(&self.state_dir);
        // In the agent's namespace: the nftables data plane's table is there.
        let netns = self.netns.as_deref().map(Netns::open_path).transpose()?;
        let output = crate::run_in(cmd, netns.as_ref(), None, AGENT_TIMEOUT)
            .context("running gannetd status")?;
        if !output.status.success() {
            bail!(
                "gannetd status failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8(output.stdout).context("gannetd status is not UTF-8")
    }

    /// Where the running gannetd serves metrics (from its log), in its network namespace.
    ///
    /// # Errors
    /// If it logged no metrics address (metrics off, or not started).
    pub fn metrics_address(&self) -> anyhow::Result<std::net::SocketAddr> {
        let log = self
            .child
            .as_ref()
            .map(ChildGuard::stderr_so_far)
            .unwrap_or_default();
        crate::metrics::address_in_log(&log)
            .with_context(|| format!("gannetd logged no metrics address; log:\n{}", self.logs()))
    }

    /// `GET /metrics` of the running gannetd (from inside its network namespace).
    ///
    /// # Errors
    /// If it serves no metrics or the request fails.
    pub fn scrape(&self) -> anyhow::Result<String> {
        let address = self.metrics_address()?;
        let netns = self.netns.as_deref().map(Netns::open_path).transpose()?;
        crate::metrics::scrape(address, netns.as_ref())
    }

    /// gannetd's bpffs directory.
    #[must_use]
    pub fn bpf_root(&self) -> &Path {
        &self.bpf_root
    }

    /// Writes (atomically: temp file + rename) a manifest file and waits until gannetd has
    /// scanned it and logged `expect` once more than before.
    ///
    /// # Errors
    /// If the file cannot be written or gannetd does not react in time.
    pub fn apply(&mut self, file: &str, yaml: &str, expect: &str) -> anyhow::Result<()> {
        let before = self.log_count(expect);
        self.write(file, yaml)?;
        self.wait_log(expect, before + 1)
    }

    /// Writes a manifest file without waiting.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let tmp = self.manifest_dir.join(format!(".{file}.tmp"));
        let path = self.manifest_dir.join(file);
        fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// Everything gannetd logged so far (all runs).
    #[must_use]
    pub fn logs(&self) -> String {
        let current = self
            .child
            .as_ref()
            .map(ChildGuard::stderr_so_far)
            .unwrap_or_default();
        format!("{}{current}", self.past_logs)
    }

    /// How many log lines of the current run contain `needle`.
    #[must_use]
    pub fn log_count(&self, needle: &str) -> usize {
        self.child
            .as_ref()
            .map(ChildGuard::stderr_so_far)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the current run has logged `needle` at least `count` times.
    ///
    /// # Errors
    /// If that does not happen within [`AGENT_TIMEOUT`] or gannetd exits; quotes the log.
    pub fn wait_log(&mut self, needle: &str, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + AGENT_TIMEOUT;
        loop {
            if self.log_count(needle) >= count {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "gannetd exited ({status}) before logging {needle:?} ×{count}; log:\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "gannetd did not log {needle:?} ×{count} within {AGENT_TIMEOUT:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to gannetd and waits for it to exit.
    ///
    /// # Errors
    /// If it does not exit within [`AGENT_TIMEOUT`].
    pub fn stop(&mut self, signal: libc::c_int) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("gannetd is not running")?;
        child.kill(signal)?;
        let output = child.wait_output(AGENT_TIMEOUT)?;
        self.past_logs
            .push_str(&String::from_utf8_lossy(&output.stderr));
        Ok(output.status)
    }

    /// Starts gannetd again with the same flags, after [`stop`](Self::stop).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("gannetd is still running");
        }
        self.launch()
    }

    /// Starts gannetd again with the same directories but other extra flags (a configuration
    /// change), after [`stop`](Self::stop).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart_with(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        self.extra_args = extra_args.iter().map(|s| (*s).to_owned()).collect();
        self.restart()
    }

    /// Runs `gannetd cleanup` for this agent's bpffs directory and cgroup (after `stop`).
    ///
    /// # Errors
    /// If cleanup fails.
    pub fn cleanup(&self) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin_path("gannetd"));
        cmd.arg("cleanup")
            .arg("--bpf-root")
            .arg(&self.bpf_root)
            .arg("--cgroup-path")
            .arg(&self.cgroup)
            .arg("--state-dir")
            .arg(&self.state_dir);
        // In the agent's namespace: the overlay's device, routes and nftables table are there.
        // When that namespace is already gone (a fixture that dropped it first), so is all of
        // that: the pins are cleaned up from a throwaway namespace, never the test's own.
        let netns = match self.netns.as_deref() {
            Some(path) if !path.exists() => Some(Netns::new("cleanup")?),
            Some(path) => Some(Netns::open_path(path)?),
            None => None,
        };
        let output = crate::run_in(cmd, netns.as_ref(), None, AGENT_TIMEOUT)
            .context("running gannetd cleanup")?;
        if !output.status.success() {
            bail!(
                "gannetd cleanup failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(libc::SIGTERM);
        }
        if let Err(e) = self.cleanup() {
            eprintln!("Agent drop: {e:#}");
        }
        let _ = fs::remove_dir_all(&self.manifest_dir);
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

/// A `v1 Service` manifest. `ports`: (name, port, protocol).
#[must_use]
pub fn service_yaml(
    name: &str,
    cluster_ips: &[&str],
    ports: &[(&str, u16, &str)],
    affinity_timeout: Option<u32>,
) -> String {
    use std::fmt::Write as _;
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {}\n  clusterIPs: [{}]\n  ports:\n",
        cluster_ips[0],
        cluster_ips.join(", ")
    );
    for (port_name, port, proto) in ports {
        let _ = writeln!(
            y,
            "  - name: {port_name}\n    port: {port}\n    protocol: {proto}\n    targetPort: 8080"
        );
    }
    if let Some(timeout) = affinity_timeout {
        let _ = writeln!(
            y,
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {timeout}"
        );
    }
    y
}

/// A `discovery.k8s.io/v1 EndpointSlice` for `service`, all ports on 8080.
/// `endpoints`: (address, ready).
#[must_use]
pub fn endpoint_slice_yaml(
    name: &str,
    service: &str,
    family: &str,
    port_names: &[(&str, &str)],
    endpoints: &[(String, bool)],
) -> String {
    use std::fmt::Write as _;
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {family}\nports:\n"
    );
    for (port_name, proto) in port_names {
        let _ = writeln!(y, "- name: {port_name}\n  port: 8080\n  protocol: {proto}");
    }
    y.push_str("endpoints:\n");
    for (address, ready) in endpoints {
        let _ = writeln!(
            y,
            "- addresses: [\"{address}\"]\n  conditions:\n    ready: {ready}"
        );
    }
    y
}
