//! containerd with its CRI plugin on, running on a simulated node, for the kubelet tests: the
//! daemon runs in the node's network namespace and in a private mount namespace of its own, every
//! file of it (root, state, sockets, CNI configuration and plugin directory) in a temp dir.
//!
//! A holder process (`unshare --mount --propagation private`, inside the node namespace) mounts
//! an empty tmpfs on `/run` (the shims' sockets, runc's state, the pods' netns files) and an
//! overlay on `/var/lib` (libcni's cache), and containerd is started in its namespaces
//! (`nsenter --target HOLDER --mount`), so no mount it or its shims make reaches the machine's
//! mount table. The CRI invokes gannet-cni from the temp dir's plugin directory with a conflist
//! naming the test's gannetd. Pods' cgroups go below a cgroup of the test's own
//! (`gannetd --pod-cgroup-parent`, [`Containerd::cgroup_parent`]).
//!
//! On drop (also on panic): every process descending from the node namespace's processes (the
//! containers, under their shims) and then those (containerd, shims, holder) are killed, the
//! pods' cgroups removed in every hierarchy, and the temp dir removed.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{ChildGuard, Netns, bin_path, run_in, spawn, unique_name};

/// The sandbox (pause) image containerd's CRI is configured with.
pub const PAUSE_IMAGE: &str = "gannet.test/pause:1";
/// A busybox image, with `/bin/sh` and busybox's applets as `/bin/busybox APPLET`.
pub const BUSYBOX_IMAGE: &str = "gannet.test/busybox:1";
/// The reference loopback plugin (Debian package containernetworking-plugins).
const LOOPBACK: &str = "/usr/lib/cni/loopback";
/// How long containerd may take to answer after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a helper command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// The holder's script, run as `sh -c SCRIPT sh TEMPDIR`.
const HOLDER_SCRIPT: &str = r#"set -eu
T="$1"
mount -t tmpfs -o mode=0755 gannet-test /run
mount -t overlay gannet-test \
  -o "lowerdir=/var/lib,upperdir=$T/mnt/varlib.upper,workdir=$T/mnt/varlib.work" /var/lib
echo ready
exec sleep infinity
"#;

/// Why the kubelet tests cannot run here, if a program is missing.
#[must_use]
pub fn prerequisites_missing() -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = [
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "runc",
        "unshare",
        "nsenter",
        "tar",
        "sha256sum",
    ]
    .into_iter()
    .filter(|program| !std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    .collect();
    let busybox = Path::new("/bin/busybox").is_file() && Path::new(LOOPBACK).is_file();
    match (missing.is_empty(), busybox) {
        (true, true) => None,
        _ => Some(format!(
            "missing {}{} (Debian packages containerd, runc, util-linux, busybox-static, \
             containernetworking-plugins)",
            missing.join(", "),
            if busybox {
                ""
            } else {
                " /bin/busybox or /usr/lib/cni/loopback"
            }
        )),
    }
}

/// A containerd with the CRI plugin, in `node`'s network namespace.
pub struct Containerd {
    daemon: Option<ChildGuard>,
    holder: Option<ChildGuard>,
    node_path: PathBuf,
    dir: PathBuf,
    cgroup_name: String,
}

impl Containerd {
    /// Starts containerd in `node` and waits until it has booted. Its CRI has no CNI network
    /// until [`Containerd::use_agent`] writes the conflist (it watches its conf dir).
    ///
    /// # Errors
    /// When the directories cannot be laid out or containerd does not answer in time.
    pub fn start(node: &Netns) -> anyhow::Result<Self> {
        let name = unique_name("gannet-ctd");
        let dir = std::env::temp_dir().join(&name);
        let mut containerd = Containerd {
            daemon: None,
            holder: None,
            node_path: node.path().to_owned(),
            dir: dir.clone(),
            cgroup_name: format!("{name}-pods"),
        };
        for sub in [
            "cni-bin",
            "net.d",
            "ipam",
            "opt",
            "mnt/varlib.upper",
            "mnt/varlib.work",
        ] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {sub}"))?;
        }
        std::os::unix::fs::symlink(bin_path("gannet-cni"), dir.join("cni-bin/gannet-cni"))
            .context("linking gannet-cni")?;
        // The CRI brings each sandbox's `lo` up with the reference `loopback` plugin.
        std::os::unix::fs::symlink(LOOPBACK, dir.join("cni-bin/loopback"))
            .context("linking the loopback plugin")?;
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = "{d}/debug.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "native"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni-bin"
  conf_dir = "{d}/net.d"
"#
        );
        fs::write(dir.join("config.toml"), config)?;

        let mut holder = Command::new("unshare");
        holder
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                HOLDER_SCRIPT,
                "sh",
            ])
            .arg(&dir);
        let mut holder = spawn(holder, Some(node), None).context("starting the mount holder")?;
        holder
            .wait_for_line("ready", Duration::from_secs(10))
            .context("the mount namespace's holder")?;
        let holder_pid = holder.pid();
        containerd.holder = Some(holder);

        let mut daemon = Command::new("nsenter");
        daemon
            .arg(format!("--target={holder_pid}"))
            .arg("--mount")
            .arg("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"));
        containerd.daemon = Some(spawn(daemon, Some(node), None).context("starting containerd")?);
        containerd.wait_ready()?;
        Ok(containerd)
    }

    /// Writes the conflist that has the CRI invoke gannet-cni for the gannetd with this CNI
    /// socket and subnet file (IPAM records in [`Containerd::ipam_dir`]).
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn use_agent(&self, agent_socket: &Path, subnet_file: &Path) -> anyhow::Result<()> {
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "gannet",
            "plugins": [{
                "type": "gannet-cni",
                "subnetFile": subnet_file,
                "agentSocket": agent_socket,
                "ipam": {"type": "gannet", "dataDir": self.ipam_dir()},
                "logFile": self.dir.join("gannet-cni.log"),
            }],
        });
        let path = self.dir.join("net.d/10-gannet.conflist");
        fs::write(&path, conflist.to_string())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The conflist's plugin configuration as a runtime hands it to gannet-cni (for a test's
    /// own `cni` calls sharing the IPAM records).
    #[must_use]
    pub fn plugin_conf(&self, agent_socket: &Path, subnet_file: &Path) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "gannet",
            "type": "gannet-cni",
            "subnetFile": subnet_file,
            "agentSocket": agent_socket,
            "ipam": {"type": "gannet", "dataDir": self.ipam_dir()},
        })
    }

    /// `ctr` on its socket, in the CRI's namespace (`k8s.io`).
    #[must_use]
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", "k8s.io"]);
        cmd
    }

    /// The ids of the containers (sandboxes' pause containers included) it has.
    ///
    /// # Errors
    /// When `ctr` fails.
    pub fn container_ids(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut cmd = self.ctr();
        cmd.args(["containers", "ls", "-q"]);
        let output = run_in(cmd, None, None, CMD_TIMEOUT)?;
        anyhow::ensure!(
            output.status.success(),
            "ctr containers ls: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// A process in containerd's mount namespace (its own /run and /var/lib), for a client that
    /// must see the same files (`ctr run`'s fifos).
    ///
    /// # Panics
    /// Never after [`Containerd::start`] returned.
    #[must_use]
    pub fn mount_namespace_pid(&self) -> u32 {
        self.holder.as_ref().expect("started").pid()
    }

    /// `unix://` address of its socket, for `--container-runtime`.
    #[must_use]
    pub fn address(&self) -> String {
        format!("unix://{}", self.dir.join("containerd.sock").display())
    }

    /// For `--pod-cgroup-parent`: a cgroup of this test, removed on drop.
    #[must_use]
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.cgroup_name)
    }

    /// Its log so far.
    #[must_use]
    pub fn logs(&self) -> String {
        self.daemon
            .as_ref()
            .map(ChildGuard::stderr_so_far)
            .unwrap_or_default()
    }

    /// The directory gannet-cni's IPAM keeps its records in.
    #[must_use]
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// Builds an OCI archive of `/bin/busybox` named `name` whose entrypoint is `entrypoint`.
    ///
    /// # Errors
    /// When `tar` or `sha256sum` fail.
    pub fn busybox_archive(&self, name: &str, entrypoint: &[&str]) -> anyhow::Result<PathBuf> {
        oci_archive(&self.dir.join(unique_name("image")), name, entrypoint)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let socket = self.dir.join("containerd.sock");
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!(
                    "containerd did not create {} within {START_TIMEOUT:?}; its log:\n{}",
                    socket.display(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The CRI plugin starts after the socket is bound; give it its moment (gannetd's own
        // Version call at start tells whether it works).
        while !self.logs().contains("containerd successfully booted") {
            if Instant::now() > deadline {
                bail!(
                    "containerd did not finish booting; its log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Every process below (children of children of …) `roots`.
    fn descendants(roots: &BTreeSet<i32>) -> BTreeSet<i32> {
        let mut parents: Vec<(i32, i32)> = Vec::new();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let ppid = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse().ok());
                if let Some(ppid) = ppid {
                    parents.push((pid, ppid));
                }
            }
        }
        let mut found: BTreeSet<i32> = BTreeSet::new();
        let mut frontier: BTreeSet<i32> = roots.clone();
        while !frontier.is_empty() {
            let next: BTreeSet<i32> = parents
                .iter()
                .filter(|(pid, ppid)| frontier.contains(ppid) && !found.contains(pid))
                .map(|(pid, _)| *pid)
                .collect();
            found.extend(&next);
            frontier = next;
        }
        found
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The node namespace's processes (containerd, its shims, the holder) and what runs
        // below them (pause and the containers, in their pods' namespaces).
        let roots: BTreeSet<i32> = Netns::open_path(&self.node_path)
            .and_then(|netns| netns.pids())
            .map(|pids| pids.into_iter().collect())
            .unwrap_or_default();
        let roots: BTreeSet<i32> = roots
            .into_iter()
            .filter(|pid| {
                fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                    let exe = exe.to_string_lossy();
                    exe.contains("containerd") || exe.contains("sleep") || exe.contains("unshare")
                })
            })
            .collect();
        let below = Self::descendants(&roots);
        for pid in below.iter().chain(&roots) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        self.daemon = None;
        self.holder = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while below
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The pods' cgroups, in every hierarchy (cgroup v1 controllers and the unified one).
        // Whatever still runs in them goes first: the node namespace may be gone already (a
        // fixture that dropped it first), and then the walk above found nothing to kill.
        let trees: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (mount, fs_type) = line.split_once(" - ")?;
                let kind = fs_type.split_whitespace().next().unwrap_or_default();
                (kind == "cgroup" || kind == "cgroup2")
                    .then(|| mount.split_whitespace().nth(4))
                    .flatten()
                    .map(|point| Path::new(point).join(&self.cgroup_name))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut left = BTreeSet::new();
            for tree in &trees {
                cgroup_tree_pids(tree, &mut left);
            }
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in &left {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for tree in &trees {
            remove_cgroup_tree(tree);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The processes in a cgroup directory and its sub-cgroups.
fn cgroup_tree_pids(dir: &Path, pids: &mut BTreeSet<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_tree_pids(&entry.path(), pids);
            }
        }
    }
}

/// Removes a cgroup directory and its sub-cgroups, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `sha256:HEX` and the size of a file.
fn digest(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut cmd = Command::new("sha256sum");
    cmd.arg(path);
    let output = run_in(cmd, None, None, CMD_TIMEOUT)?;
    anyhow::ensure!(output.status.success(), "sha256sum {}", path.display());
    let text = String::from_utf8_lossy(&output.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((format!("sha256:{hex}"), fs::metadata(path)?.len()))
}

/// Moves `file` into `layout`'s blobs under its digest; returns the descriptor fields.
fn add_blob(layout: &Path, file: &Path) -> anyhow::Result<(String, u64)> {
    let (digest, size) = digest(file)?;
    let hex = digest.trim_start_matches("sha256:");
    fs::rename(file, layout.join("blobs/sha256").join(hex))?;
    Ok((digest, size))
}

/// An OCI image archive at `<work>.tar` with one layer (`/bin/busybox`, `/bin/sh` linked to
/// it), named `name`, running `entrypoint`.
///
/// # Errors
/// When `tar` or `sha256sum` fail.
pub fn oci_archive(work: &Path, name: &str, entrypoint: &[&str]) -> anyhow::Result<PathBuf> {
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::create_dir_all(rootfs.join("tmp"))?;
    fs::create_dir_all(layout.join("blobs/sha256"))?;
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
    let tar = |args: &[&str], dir: &Path, out: &Path| -> anyhow::Result<()> {
        let mut cmd = Command::new("tar");
        cmd.arg("--numeric-owner")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-cf")
            .arg(out)
            .arg("-C")
            .arg(dir)
            .args(args);
        let output = run_in(cmd, None, None, CMD_TIMEOUT)?;
        anyhow::ensure!(
            output.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    let layer_file = work.join("layer.tar");
    tar(&["bin", "tmp"], &rootfs, &layer_file)?;
    let (layer, layer_size) = add_blob(&layout, &layer_file)?;
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let config_file = work.join("config.json");
    fs::write(&config_file, config.to_string())?;
    let (config_digest, config_size) = add_blob(&layout, &config_file)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer,
            "size": layer_size,
        }],
    });
    let manifest_file = work.join("manifest.json");
    fs::write(&manifest_file, manifest.to_string())?;
    let (manifest_digest, manifest_size) = add_blob(&layout, &manifest_file)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string())?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = work.with_extension("tar");
    tar(&["oci-layout", "index.json", "blobs"], &layout, &archive)?;
    let _ = fs::remove_dir_all(work);
    Ok(archive)
}
