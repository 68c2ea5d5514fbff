//! `gannet-control` under test: its own data directory (embedded store) and unix socket in a
//! temporary directory, stopped and removed on drop; `gannetctl` run against it.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{ChildGuard, Netns, bin_path, spawn, unique_name};

/// How long gannet-control may take to start serving.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);

/// A running (or stopped, see [`ControlPlane::stop`]) gannet-control.
#[derive(Debug)]
pub struct ControlPlane {
    child: Option<ChildGuard>,
    dir: PathBuf,
    socket: PathBuf,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<PathBuf>,
    extra_args: Vec<String>,
    past_logs: String,
}

impl ControlPlane {
    /// Starts gannet-control on a unix socket with an embedded store in a fresh directory, and
    /// waits until it serves. `extra_args` are passed on (e.g. `--cluster-cidr`).
    ///
    /// # Errors
    /// If it cannot start or does not serve in time; the error quotes its log.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<ControlPlane> {
        Self::start_in(None, extra_args)
    }

    /// Like [`start`](Self::start), in `netns` (for TCP listeners: a namespace of the test's own).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_in(netns: Option<&Netns>, extra_args: &[&str]) -> anyhow::Result<ControlPlane> {
        let dir = std::env::temp_dir().join(unique_name("gannet-cp"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut plane = ControlPlane {
            child: None,
            socket: dir.join("control.sock"),
            dir,
            netns: netns.map(|n| n.path().to_owned()),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            past_logs: String::new(),
        };
        plane.launch()?;
        Ok(plane)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin_path("gannet-control"));
        cmd.arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen")
            .arg(format!("unix:{}", self.socket.display()));
        // Tests run many control planes at once: never the default port.
        if !self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--metrics-address"))
        {
            cmd.args(["--metrics-address", crate::metrics::TEST_METRICS_ADDRESS]);
        }
        cmd.args(&self.extra_args).env("GANNET_LOG", "info");
        let netns = self.netns.as_deref().map(Netns::open_path).transpose()?;
        self.child = Some(spawn(cmd, netns.as_ref(), None)?);
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        // This run's log, not the earlier runs'.
        let started = |plane: &Self| {
            plane
                .child
                .as_ref()
                .is_some_and(|c| c.stderr_so_far().contains("gannet-control started"))
        };
        while !started(self) {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("gannet-control exited ({status}); log:\n{}", self.logs());
            }
            if Instant::now() > deadline {
                bail!(
                    "gannet-control did not start within {CONTROL_TIMEOUT:?}; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `unix:PATH`, for `gannetd --control` and `gannetctl --server`.
    #[must_use]
    pub fn addr(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /metrics` of the running gannet-control (in its network namespace), at the address
    /// it logged.
    ///
    /// # Errors
    /// If it logged no metrics address or the request fails.
    pub fn scrape(&self) -> anyhow::Result<String> {
        let log = self
            .child
            .as_ref()
            .map(ChildGuard::stderr_so_far)
            .unwrap_or_default();
        let address = crate::metrics::address_in_log(&log).with_context(|| {
            format!(
                "gannet-control logged no metrics address; log:\n{}",
                self.logs()
            )
        })?;
        let netns = self.netns.as_deref().map(Netns::open_path).transpose()?;
        crate::metrics::scrape(address, netns.as_ref())
    }

    /// Everything it logged so far (all runs).
    #[must_use]
    pub fn logs(&self) -> String {
        let current = self
            .child
            .as_ref()
            .map(ChildGuard::stderr_so_far)
            .unwrap_or_default();
        format!("{}{current}", self.past_logs)
    }

    /// Stops it (SIGTERM) and waits for it to exit; the data directory stays for a restart.
    ///
    /// # Errors
    /// If it does not exit in time.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("gannet-control is not running")?;
        child.kill(libc::SIGTERM)?;
        let output = child.wait_output(CONTROL_TIMEOUT)?;
        self.past_logs
            .push_str(&String::from_utf8_lossy(&output.stderr));
        Ok(())
    }

    /// Starts it again on the same data directory and socket, after [`stop`](Self::stop).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("gannet-control is still running");
        }
        self.launch()
    }

    /// Runs `gannetctl --server <this> args…` with `stdin` (if any) and returns its output,
    /// whatever its exit status.
    ///
    /// # Errors
    /// If gannetctl cannot be run.
    pub fn ctl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        let mut cmd = Command::new(bin_path("gannetctl"));
        cmd.arg("--server").arg(self.addr()).args(args);
        let mut child = spawn(cmd, None, None)?;
        if let Some(text) = stdin {
            child
                .stdin()
                .context("gannetctl stdin")?
                .write_all(text.as_bytes())
                .context("writing to gannetctl")?;
        }
        child.close_stdin();
        child.wait_output(Duration::from_secs(30))
    }

    /// `gannetctl apply -f -` of `yaml`; fails unless it succeeds.
    ///
    /// # Errors
    /// If gannetctl fails; the error quotes its output.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        let output = self.ctl(&["apply", "-f", "-"], Some(yaml))?;
        if !output.status.success() {
            bail!(
                "gannetctl apply failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `gannetctl get KIND NAME -o json`, parsed.
    ///
    /// # Errors
    /// If gannetctl fails or prints no JSON.
    pub fn get_json(&self, kind: &str, name: &str) -> anyhow::Result<serde_json::Value> {
        let output = self.ctl(&["get", kind, name, "-o", "json"], None)?;
        if !output.status.success() {
            bail!(
                "gannetctl get {kind} {name} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("parsing gannetctl get {kind} {name}"))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
