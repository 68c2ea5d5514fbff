//! containerd (Debian 12: 1.6.20) through `ctr run --cni`, on runc.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gannet_testkit::{ChildGuard, run_in, spawn, unique_name};

use crate::sandbox::{CMD_TIMEOUT, Sandbox, missing_programs, skip, static_busybox};
use crate::scenario::{Runtime, pods_reach_each_other_and_the_node};
use crate::shell::Container;

/// How long the daemon may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A containerd daemon whose every file is in the sandbox's temp dir, and `ctr` talking to it.
pub(crate) struct Containerd {
    // Declared first: the daemon dies before the sandbox's cleanup.
    daemon: ChildGuard,
    sandbox: Sandbox,
    socket: PathBuf,
    /// The containerd namespace the containers live in.
    namespace: String,
}

/// Why the containerd test cannot run here, if a package is missing.
pub(crate) fn prerequisites_missing() -> Option<String> {
    missing_programs(&[
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("runc", "runc"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("nft", "nftables"),
    ])
    .or_else(|| static_busybox().err())
}

impl Containerd {
    /// A sandbox with a containerd daemon of its own running in it.
    pub(crate) fn new() -> Containerd {
        let sandbox = Sandbox::new("ctd");
        let dir = sandbox.path().join("containerd");
        fs::create_dir_all(&dir).expect("containerd directory");
        let socket = dir.join("containerd.sock");
        // The CRI plugin is off: `ctr run --cni` does the CNI calls itself (go-cni in the ctr
        // process), and without a CRI client there is nothing to drive it (see main.rs). With it
        // off, neither `restrict_oom_score_adj` nor its CNI directories matter.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = "{d}/debug.sock"
"#,
            d = dir.display()
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config).expect("writing containerd's config");
        let mut cmd = sandbox.command("containerd");
        cmd.arg("--config").arg(&config_path);
        let daemon = spawn(cmd, None, None).expect("starting containerd");
        let containerd = Containerd {
            daemon,
            sandbox,
            socket,
            namespace: unique_name("gnt"),
        };
        containerd.wait_ready();
        containerd
    }

    fn ctr(&self) -> Command {
        let mut cmd = self.sandbox.command("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", &self.namespace]);
        cmd
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut cmd = self.ctr();
            cmd.arg("version");
            let output = run_in(cmd, None, None, CMD_TIMEOUT).expect("ctr version");
            if output.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within {START_TIMEOUT:?}: {}\ncontainerd's log:\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.daemon.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Runtime for Containerd {
    fn name(&self) -> &'static str {
        "ctr"
    }

    fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    fn start(&mut self, name: &str) -> Container {
        // `--rootfs`: the container's root is the sandbox's busybox directory (no image store,
        // no snapshotter mounts). Foreground, stdin attached: ctr sends DEL only from a foreground
        // `run`, after the task ended (see main.rs).
        let mut cmd = self.ctr();
        cmd.args(["run", "--rm", "--cni", "--rootfs", "--env", "PATH=/bin"])
            .arg("--cgroup")
            .arg(format!("{}/{name}", self.sandbox.cgroups.parent()))
            .arg(self.sandbox.path().join("rootfs"))
            .args([name, "/bin/sh"]);
        let run = spawn(cmd, None, None).expect("starting ctr run");
        let mut container = Container::attach(name, run);
        container.cni_id = format!("{}-{name}", self.namespace);
        container
    }

    fn stop(&mut self, container: &str) {
        let mut cmd = self.ctr();
        cmd.args(["task", "kill", "--signal", "SIGKILL", container]);
        self.sandbox.run(cmd, "ctr task kill");
    }

    fn pod_name(&self, _name: &str) -> Option<String> {
        None
    }

    fn check_netns(&self, netns: &Path, container: &Container) {
        let text = netns.display().to_string();
        assert!(
            text.starts_with("/proc/") && text.ends_with("/ns/net"),
            "{}: ctr's CNI_NETNS is {text}",
            container.name
        );
    }
}

/// Two containers started by `ctr run --cni` against a containerd of the test's own: the same
/// scenario as podman's (addresses, pod ↔ pod, pod ↔ node, DEL when the container exits).
#[test]
fn containerd_ctr_run_cni_runs_pods_on_gannet_cni() {
    if let Some(why) = prerequisites_missing() {
        skip("containerd_ctr_run_cni_runs_pods_on_gannet_cni", &why);
        return;
    }
    let mut containerd = Containerd::new();
    pods_reach_each_other_and_the_node(&mut containerd);
}
