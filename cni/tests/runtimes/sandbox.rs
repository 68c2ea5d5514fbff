//! A simulated node that a real container runtime runs on, kept away from the machine: its own
//! network namespace, its own mount namespace over a per-test temp dir, its own cgroup subtree,
//! and the checks that nothing leaked into the root network namespace.
//!
//! The runtimes are started with `nsenter --target <holder> --mount --net`, where the holder is a
//! `sleep` that `unshare --mount --propagation private` placed in a new mount namespace, inside the
//! node's network namespace. In that mount namespace:
//!
//! - `/run`: an empty tmpfs. Podman's netns bind mounts, runc's and conmon's state, containerd's
//!   shim sockets (`/run/containerd/s/…`, not configurable in 1.6).
//! - `/dev/shm`: an empty tmpfs. Podman's lock segment (`libpod_lock`, otherwise shared by every
//!   podman of the machine).
//! - `/etc` and `/var/lib`: overlays whose upper layers are in the temp dir. libcni's result cache
//!   (`/var/lib/cni`, configurable through neither runtime), podman's blob cache
//!   (`/var/lib/containers/cache`), anything else a runtime writes there.
//! - `/etc/cni/net.d`: the temp dir's `net.d`. `ctr run --cni` reads only `/etc/cni/net.d`
//!   (go-cni's default).
//! - `/opt`: the temp dir's `opt`, holding `cni/bin/gannet-cni`. `ctr run --cni` looks for plugins
//!   in `/opt/cni/bin` (then Debian's `/usr/lib/cni`); containerd creates `/opt/containerd`.
//!
//! Mounts made by the runtimes (podman's netns files and shm, runc's) therefore never appear in the
//! machine's mount table, and vanish with the last process of that namespace. The runtimes' own
//! state (podman's root/runroot/tmpdir, containerd's root/state/sockets) is configured into the
//! temp dir as well. Everything is undone on drop, also when a test panics: the processes in the
//! test's cgroups (containers, conmon) and then every process in the node namespace (holder,
//! containerd, shims, conmon) are killed by pid, the cgroups removed, the namespace deleted and the
//! temp dir removed.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use gannet_cni::agent_api::{Request, RequestBody, Response};
use gannet_testkit::{ChildGuard, Netns, run_in, spawn, unique_name};
use serde_json::json;

/// The plugin under test, exactly as built.
pub(crate) const GANNET: &str = env!("CARGO_BIN_EXE_gannet-cni");
/// Debian's reference plugins (a second plugin directory, as a real installation has).
pub(crate) const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The CNI network's name (a podman network of that name; ctr takes the first conflist).
pub(crate) const NETWORK: &str = "gannet";
/// The pods' IPv4 range (the node's subnet file says `10.77.0.1/24`).
pub(crate) const POD_V4_PREFIX: &str = "10.77.0.";
/// The pods' IPv6 range (`fd77::1/64`).
pub(crate) const POD_V6_PREFIX: &str = "fd77::";
/// The pods' MTU (from the node's subnet file).
pub(crate) const POD_MTU: u32 = 1450;
/// The node's own addresses (on the node namespace's loopback).
pub(crate) const NODE_V4: &str = "10.99.0.1";
/// The node's IPv6 address.
pub(crate) const NODE_V6: &str = "fd99::1";
/// Paths the sandbox's mount namespace replaces: the temp dir must not be below one of them.
const REPLACED: [&str; 4] = ["/run", "/etc", "/var/lib", "/opt"];
/// How long a helper command (`ip`, `nft`, a runtime's CLI) may take.
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long cleanup waits for killed processes to leave the cgroups.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The shell script the holder runs (as `sh -c SCRIPT sh TEMPDIR`) in its new mount namespace.
const HOLDER_SCRIPT: &str = r#"set -eu
T="$1"
mount -t tmpfs -o mode=0755 gannet-test /run
mount -t tmpfs -o mode=1777 gannet-test /dev/shm
M="$T/mnt"
mount -t overlay gannet-test -o "lowerdir=/etc,upperdir=$M/etc.upper,workdir=$M/etc.work" /etc
mount -t overlay gannet-test \
  -o "lowerdir=/var/lib,upperdir=$M/varlib.upper,workdir=$M/varlib.work" /var/lib
mount --bind "$T/opt" /opt
mkdir -p /etc/cni/net.d /var/lib/cni
mount --bind "$T/net.d" /etc/cni/net.d
mount --bind "$T/cni-cache" /var/lib/cni
echo ready
exec sleep infinity
"#;

/// Why a test cannot run here, if a program it needs is missing: `(program, Debian package)`.
pub(crate) fn missing_programs(needed: &[(&str, &str)]) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = needed
        .iter()
        .filter(|(program, _)| {
            !std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
                && !Path::new(program).is_file()
        })
        .map(|(program, package)| format!("`{program}` (Debian package {package})"))
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("missing {}", missing.join(", ")))
    }
}

/// Reports that `test` is skipped and why, on the real stderr (not the test harness's captured
/// output, so it shows without `--nocapture`).
pub(crate) fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// The busybox to copy into the container image, if it is a static binary (busybox-static).
pub(crate) fn static_busybox() -> Result<PathBuf, String> {
    let path = PathBuf::from("/bin/busybox");
    let bytes = fs::read(&path).map_err(|e| {
        format!("missing /bin/busybox ({e}): install Debian package busybox-static")
    })?;
    if has_interpreter(&bytes) {
        return Err(
            "/bin/busybox is dynamically linked (Debian package busybox): install busybox-static"
                .to_owned(),
        );
    }
    Ok(path)
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header (is dynamically
/// linked).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |at: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(at..at + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0_u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return true; // not what we can inspect; treat as unusable
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    else {
        return true;
    };
    (0..phnum).any(|i| {
        usize::try_from(phoff + i * phentsize)
            .ok()
            .and_then(|at| read(at, 4))
            .is_none_or(|kind| kind == u64::from(PT_INTERP))
    })
}

/// The node: network namespace, mount namespace holder, temp dir, cgroup subtree, fake agent.
///
/// Field order is drop order (after [`Drop::drop`] has killed the cgroups' processes).
pub(crate) struct Sandbox {
    /// The agent the plugin registers pod endpoints with.
    pub(crate) agent: FakeAgent,
    /// The process holding the private mount namespace.
    holder: ChildGuard,
    /// The node's network namespace (its drop kills every process still inside).
    pub(crate) node: Netns,
    /// The cgroup subtree the runtimes put containers (and podman's conmon) in.
    pub(crate) cgroups: CgroupTree,
    /// Every file of the runtimes and the plugin.
    dir: tempfile::TempDir,
    /// The root namespace as it was before the test.
    pub(crate) root_before: RootSnapshot,
}

impl Sandbox {
    /// A node namespace with the node's addresses, the temp dir laid out (plugin directory with
    /// gannet-cni, `net.d` with the conflist, the container root file system) and the holder of
    /// the mount namespace started.
    pub(crate) fn new(role: &str) -> Sandbox {
        let root_before = RootSnapshot::take();
        let dir = tempfile::Builder::new()
            .prefix("gannet-cni-rt-")
            .tempdir()
            .expect("temp dir");
        let hidden = REPLACED.iter().find(|p| dir.path().starts_with(p));
        assert!(
            hidden.is_none(),
            "the temp dir {} is below {hidden:?}, which the runtimes' mount namespace replaces: \
             set TMPDIR elsewhere",
            dir.path().display()
        );
        let t = dir.path();
        for sub in [
            "opt/cni/bin",
            "net.d",
            "cni-cache",
            "mnt/etc.upper",
            "mnt/etc.work",
            "mnt/varlib.upper",
            "mnt/varlib.work",
            "rootfs/bin",
        ] {
            fs::create_dir_all(t.join(sub)).expect("laying out the temp dir");
        }
        symlink(GANNET, t.join("opt/cni/bin/gannet-cni")).expect("linking the plugin");
        let busybox = static_busybox().expect("checked by the caller");
        make_rootfs(&busybox, &t.join("rootfs"));

        let agent = FakeAgent::start(t.join("agent.sock"));
        // The node's subnet file, as the agent (or Flannel) writes it: the IPAM ranges and the MTU
        // come from there, and the gateway addresses (.1, ::1) are never handed out.
        fs::write(
            t.join("subnet.env"),
            format!(
                "FLANNEL_NETWORK={POD_V4_PREFIX}0/16\nFLANNEL_SUBNET={POD_V4_PREFIX}1/24\n\
                 FLANNEL_IPV6_NETWORK={POD_V6_PREFIX}/56\nFLANNEL_IPV6_SUBNET={POD_V6_PREFIX}1/64\n\
                 FLANNEL_MTU={POD_MTU}\nFLANNEL_IPMASQ=false\n"
            ),
        )
        .expect("writing the subnet file");
        // The conflist `gannet-cni install` writes (`cniVersion` 1.0.0, `cniVersions` up to 1.1.0:
        // both runtimes' libcni honour only the former and refuse 1.1.0 results), with the node's
        // files in the temp dir, the fake agent, and without portmap, which would add netfilter
        // rules.
        let mut conflist = gannet_cni::install::sample_conflist();
        assert_eq!(conflist["name"], NETWORK, "the installed network's name");
        let mut plugin = conflist["plugins"][0].clone();
        assert_eq!(
            plugin["type"], "gannet-cni",
            "the installed conflist's first plugin"
        );
        plugin["subnetFile"] = json!(t.join("subnet.env"));
        plugin["ipam"]["dataDir"] = json!(t.join("ipam"));
        plugin["logFile"] = json!(t.join("gannet-cni.log"));
        plugin["logLevel"] = json!("debug");
        plugin["agentSocket"] = json!(agent.socket);
        conflist["plugins"] = json!([plugin]);
        fs::write(
            t.join("net.d/10-gannet.conflist"),
            serde_json::to_string_pretty(&conflist).expect("json"),
        )
        .expect("writing the conflist");

        let node = Netns::new(&format!("rt{role}")).expect("creating the node namespace");
        node.ip(&["addr", "add", &format!("{NODE_V4}/32"), "dev", "lo"])
            .expect("node IPv4 address");
        node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE_V6}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        .expect("node IPv6 address");

        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(HOLDER_SCRIPT)
            .arg("sh")
            .arg(t);
        let mut holder =
            spawn(cmd, Some(&node), None).expect("starting the mount namespace holder");
        holder
            .wait_for_line("ready", Duration::from_secs(10))
            .expect("the holder set up its mount namespace");

        Sandbox {
            agent,
            holder,
            node,
            cgroups: CgroupTree::new(),
            dir,
            root_before,
        }
    }

    /// The temp dir.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin directory (`/opt/cni/bin` inside the sandbox).
    pub(crate) fn plugin_dir(&self) -> PathBuf {
        self.path().join("opt/cni/bin")
    }

    /// The directory holding the conflist (`/etc/cni/net.d` inside the sandbox).
    pub(crate) fn conf_dir(&self) -> PathBuf {
        self.path().join("net.d")
    }

    /// `program` run inside the sandbox: node network namespace, private mount namespace.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.holder.pid()))
            .args(["--mount", "--net", "--"])
            .arg(program)
            .current_dir("/");
        cmd
    }

    /// Runs `cmd` (from [`command`](Self::command)) to completion and returns its stdout; panics
    /// with its stderr if it fails.
    pub(crate) fn run(&self, cmd: Command, what: &str) -> String {
        let output =
            run_in(cmd, None, None, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert!(
            output.status.success(),
            "{what}: {}\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The host ends in the node namespace: `(name, alias)` of every `gnt…` link.
    pub(crate) fn host_veths(&self) -> Vec<(String, String)> {
        let out = self
            .node
            .ip(&["-o", "link", "show"])
            .expect("ip link in the node namespace");
        out.lines()
            .filter_map(|line| {
                let name = line.split(": ").nth(1)?.split('@').next()?.to_owned();
                let alias = line
                    .split("alias ")
                    .nth(1)
                    .map(|a| a.trim().to_owned())
                    .unwrap_or_default();
                name.starts_with("gnt").then_some((name, alias))
            })
            .collect()
    }

    /// The IPAM store's records: `(address, container id, ifname)`.
    pub(crate) fn allocations(&self) -> Vec<(String, String, String)> {
        let Ok(entries) = fs::read_dir(self.path().join("ipam").join(NETWORK)) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.parse::<std::net::IpAddr>().ok()?;
                let text = fs::read_to_string(entry.path()).ok()?;
                let mut lines = text.lines();
                let id = lines.next().unwrap_or_default().to_owned();
                let ifname = lines.next().unwrap_or_default().to_owned();
                Some((name, id, ifname))
            })
            .collect();
        out.sort();
        out
    }

    /// The plugin's log (for failure messages).
    pub(crate) fn plugin_log(&self) -> String {
        fs::read_to_string(self.path().join("gannet-cni.log")).unwrap_or_default()
    }

    /// `nft list ruleset` in the node namespace.
    pub(crate) fn node_ruleset(&self) -> String {
        let mut cmd = Command::new("nft");
        cmd.args(["list", "ruleset"]);
        let output = run_in(cmd, Some(&self.node), None, CMD_TIMEOUT).expect("nft in the node");
        assert!(
            output.status.success(),
            "nft list ruleset in the node: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Asserts that the root network namespace is as it was before the test, and that the node
    /// namespace holds no netfilter rules (the conflist has no plugin that would add any, and
    /// neither runtime adds its own with a CNI network).
    pub(crate) fn assert_nothing_leaked(&self, when: &str) {
        let now = RootSnapshot::take();
        self.root_before.assert_same(&now, when);
        let ruleset = self.node_ruleset();
        assert!(
            ruleset.trim().is_empty(),
            "{when}: netfilter rules appeared in the node namespace:\n{ruleset}"
        );
    }

    /// Polls `check` (every 50 ms) until it returns `Ok` or `timeout` passes; panics with its last
    /// error and the plugin's log.
    pub(crate) fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match check() {
                Ok(value) => return value,
                Err(why) if Instant::now() >= deadline => panic!(
                    "{what}: not within {timeout:?}: {why}\ngannet-cni log:\n{}",
                    self.plugin_log()
                ),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Containers first (they live in network namespaces of their own, so the node's drop
        // would not find them), then the fields: holder, node (with containerd, shims, conmon),
        // cgroup directories, temp dir.
        self.cgroups.kill_all();
    }
}

/// The container image's root file system: a static busybox and the applets the tests use.
fn make_rootfs(busybox: &Path, root: &Path) {
    fs::copy(busybox, root.join("bin/busybox")).expect("copying busybox");
    for applet in [
        "sh", "ip", "nc", "cat", "echo", "sleep", "seq", "grep", "kill", "true",
    ] {
        symlink("busybox", root.join("bin").join(applet)).expect("linking an applet");
    }
    for sub in ["proc", "sys", "dev", "etc", "tmp", "run"] {
        fs::create_dir_all(root.join(sub)).expect("rootfs directory");
    }
}

/// A cgroup subtree `/<unique>` that the runtimes are told to put their containers under, in every
/// mounted hierarchy (cgroup v1 controllers and the v2 tree of a hybrid host).
pub(crate) struct CgroupTree {
    name: String,
}

impl CgroupTree {
    fn new() -> CgroupTree {
        CgroupTree {
            name: unique_name("gnt-rt"),
        }
    }

    /// The subtree's path as runtimes take it (`/<name>`).
    pub(crate) fn parent(&self) -> String {
        format!("/{}", self.name)
    }

    /// Every mounted cgroup hierarchy whose root is the machine's root cgroup.
    fn hierarchies() -> Vec<PathBuf> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        mountinfo
            .lines()
            .filter_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let fstype = right.split(' ').next()?;
                let fields: Vec<&str> = left.split(' ').collect();
                let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
                (matches!(fstype, "cgroup" | "cgroup2") && *root == "/")
                    .then(|| PathBuf::from(mount_point))
            })
            .collect()
    }

    /// Every directory of the subtree in every hierarchy, deepest first.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.filter_map(Result::ok) {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&entry.path(), out);
                    }
                }
            }
            out.push(dir.to_path_buf());
        }
        let mut out = Vec::new();
        for hierarchy in Self::hierarchies() {
            let top = hierarchy.join(&self.name);
            if top.is_dir() {
                walk(&top, &mut out);
            }
        }
        out
    }

    /// The processes in the subtree.
    pub(crate) fn pids(&self) -> BTreeSet<i32> {
        self.dirs()
            .iter()
            .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }

    /// Kills (SIGKILL, by pid) every process in the subtree until none is left or time is up.
    fn kill_all(&self) {
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "gannet-cni runtime test: processes {pids:?} still in cgroup {} after SIGKILL",
                    self.name
                );
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) has no memory-safety preconditions; these are the processes the
                // runtimes started under this test's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        self.kill_all();
        for dir in self.dirs() {
            if let Err(e) = fs::remove_dir(&dir) {
                eprintln!(
                    "gannet-cni runtime test: removing cgroup {}: {e}",
                    dir.display()
                );
            }
        }
    }
}

/// What the root network namespace looks like: links, routes, forwarding sysctls, netfilter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RootSnapshot {
    links: Vec<String>,
    routes_v4: String,
    routes_v6: String,
    forwarding: Vec<String>,
    ruleset: String,
}

impl RootSnapshot {
    /// Reads the root namespace (this test process's own, which is the root namespace: nothing
    /// here ever changes it, and the runtimes run elsewhere).
    pub(crate) fn take() -> RootSnapshot {
        let run = |args: &[&str]| -> String {
            let output = Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        let mut links: Vec<String> = run(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_owned))
            .collect();
        links.sort();
        let forwarding = [
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "/proc/sys/net/ipv6/conf/default/forwarding",
        ]
        .iter()
        .map(|p| format!("{p}={}", fs::read_to_string(p).unwrap_or_default().trim()))
        .collect();
        RootSnapshot {
            links,
            routes_v4: without_lifetimes(&run(&["ip", "-4", "route", "show", "table", "all"])),
            routes_v6: without_lifetimes(&run(&["ip", "-6", "route", "show", "table", "all"])),
            forwarding,
            ruleset: run(&["nft", "list", "ruleset"]),
        }
    }

    fn assert_same(&self, now: &RootSnapshot, when: &str) {
        assert_eq!(
            self.links, now.links,
            "{when}: links in the root namespace changed"
        );
        assert_eq!(
            self.routes_v4, now.routes_v4,
            "{when}: IPv4 routes in the root namespace changed"
        );
        assert_eq!(
            self.routes_v6, now.routes_v6,
            "{when}: IPv6 routes in the root namespace changed"
        );
        assert_eq!(
            self.forwarding, now.forwarding,
            "{when}: forwarding sysctls of the root namespace changed"
        );
        assert_eq!(
            self.ruleset, now.ruleset,
            "{when}: the root namespace's nftables ruleset changed"
        );
    }
}

/// `ip route` output without the `expires <n>sec` of routes learned from router advertisements,
/// which count down between two snapshots.
fn without_lifetimes(routes: &str) -> String {
    routes
        .lines()
        .map(|line| {
            let mut words = Vec::new();
            let mut iter = line.split_whitespace();
            while let Some(word) = iter.next() {
                if word == "expires" {
                    iter.next();
                } else {
                    words.push(word);
                }
            }
            words.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The other side of `agentSocket`: records every request and answers `ok`.
pub(crate) struct FakeAgent {
    /// The socket path (in the temp dir, reachable from the sandbox's mount namespace).
    pub(crate) socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    fn start(socket: PathBuf) -> FakeAgent {
        let listener = UnixListener::bind(&socket).expect("binding the agent socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((stream, _)) = listener.accept() else {
                        thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    stream.set_nonblocking(false).expect("blocking");
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut line = String::new();
                    if BufReader::new(&stream).read_line(&mut line).unwrap_or(0) == 0 {
                        continue;
                    }
                    let response = match serde_json::from_str::<Request>(&line) {
                        Ok(request) => {
                            requests.lock().expect("lock").push(request);
                            Response::ok()
                        }
                        Err(e) => Response::error(format!("bad request: {e}")),
                    };
                    let mut out = serde_json::to_vec(&response).expect("json");
                    out.push(b'\n');
                    let _ = (&stream).write_all(&out);
                }
            })
        };
        FakeAgent {
            socket,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Every request so far.
    pub(crate) fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    /// Whether an `Unregister` for `container_id` arrived.
    pub(crate) fn unregistered(&self, container_id: &str) -> bool {
        self.requests().iter().any(|r| {
            matches!(&r.body, RequestBody::Unregister { container_id: id, if_name, .. }
                if id == container_id && if_name == "eth0")
        })
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn route_lifetimes_are_ignored() {
    assert_eq!(
        without_lifetimes(
            "default via fe80::1 dev eth0 proto ra metric 1024 expires 1799sec pref medium\n\
             fd00::/64 dev eth0"
        ),
        "default via fe80::1 dev eth0 proto ra metric 1024 pref medium\nfd00::/64 dev eth0"
    );
}

#[test]
fn dynamic_and_static_executables_are_told_apart() {
    let exe = fs::read(std::env::current_exe().expect("current exe")).expect("reading it");
    assert!(
        has_interpreter(&exe),
        "this test binary is dynamically linked"
    );
    // An ELF header with no program headers: a static executable as far as PT_INTERP goes.
    let mut header = vec![0_u8; 64];
    header[..6].copy_from_slice(b"\x7fELF\x02\x01");
    assert!(
        !has_interpreter(&header),
        "no program headers, no interpreter"
    );
    assert!(has_interpreter(b"#!/bin/sh\n"), "a script is not usable");
}
