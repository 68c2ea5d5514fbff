//! A lab: its directory, its network namespace, its guests; bringing it up and down, and finding
//! what a killed run left behind.
//!
//! Every lab is recorded twice: `lab.json` in its directory (what `exec` and `down` read), and
//! `/run/gannet-lab/NETNS.json` (the registry, naming the directory and the owner process, if
//! any). `up` and `down` remove every registered lab whose owner process is gone or whose
//! directory no longer holds it, every qemu named after a lab that is not registered, and every
//! `gannet-lab-*` namespace that is not registered.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::channel;
use crate::qemu::{self, Accel};

/// Where labs are registered (a tmpfs: a reboot forgets them, as it does their namespaces).
const REGISTRY: &str = "/run/gannet-lab";
/// Where `ip netns` keeps namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Every lab's namespace name starts with this.
pub(crate) const NETNS_PREFIX: &str = "gannet-lab-";
/// The lab network: node N is `10.77.0.(10+N)/24`.
const LAB_NET: [u8; 3] = [10, 77, 0];
pub(crate) const LAB_PREFIX: u8 = 24;
/// The lab's bridge inside its namespace.
const BRIDGE: &str = "br0";
/// How long qemu gets to exit after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A process that owns a lab: when it is gone, the lab is left behind (`--owner-pid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Owner {
    pub(crate) pid: i32,
    /// From `/proc/PID/stat`, so a recycled pid is not taken for the owner.
    pub(crate) start_time: u64,
}

impl Owner {
    pub(crate) fn of(pid: i32) -> anyhow::Result<Owner> {
        let start_time =
            start_time(pid).with_context(|| format!("--owner-pid {pid}: no such process"))?;
        Ok(Owner { pid, start_time })
    }

    fn alive(self) -> bool {
        start_time(self.pid).is_some_and(|t| t == self.start_time)
    }
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// What `lab.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LabState {
    pub(crate) netns: String,
    pub(crate) image: PathBuf,
    pub(crate) accel: Accel,
    pub(crate) owner: Option<Owner>,
    pub(crate) nodes: Vec<NodeState>,
    /// The overlay gannet runs with, when `up` started gannet.
    pub(crate) overlay: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeState {
    pub(crate) name: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) tap: String,
    pub(crate) dir: PathBuf,
}

impl NodeState {
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("cmd.sock")
    }

    /// Runs a command in this guest.
    pub(crate) fn call(
        &self,
        argv: &[String],
        stdin: &str,
        timeout: Duration,
    ) -> anyhow::Result<gannet_lab::proto::Response> {
        channel::call(
            &self.socket(),
            &self.dir.join("cmd.lock"),
            argv,
            stdin,
            timeout,
        )
    }

    /// Runs `sh -c SCRIPT` in this guest and returns its standard output; fails with its
    /// output when it fails.
    pub(crate) fn sh(&self, script: &str, timeout: Duration) -> anyhow::Result<String> {
        self.sh_with_input(script, "", timeout)
    }

    pub(crate) fn sh_with_input(
        &self,
        script: &str,
        stdin: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let argv = ["sh", "-c", script].map(str::to_owned);
        let r = self.call(&argv, stdin, timeout)?;
        anyhow::ensure!(
            r.success(),
            "{}: `{script}` failed ({}):\n{}{}",
            self.name,
            describe(&r),
            r.stdout,
            r.stderr
        );
        Ok(r.stdout)
    }
}

/// "status 1", "signal 9", "timed out", or why it did not run.
pub(crate) fn describe(r: &gannet_lab::proto::Response) -> String {
    if let Some(e) = &r.error {
        return e.clone();
    }
    if r.timed_out {
        return "timed out".to_owned();
    }
    match (r.status, r.signal) {
        (Some(s), _) => format!("status {s}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "unknown status".to_owned(),
    }
}

pub(crate) fn node_ip(index: usize) -> Ipv4Addr {
    let host = u8::try_from(10 + index).expect("at most 200 nodes");
    Ipv4Addr::new(LAB_NET[0], LAB_NET[1], LAB_NET[2], host)
}

/// The lab in `dir`, from its `lab.json`.
pub(crate) fn load(dir: &Path) -> anyhow::Result<LabState> {
    let path = dir.join("lab.json");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("no lab in {} (`gannet-lab up` makes one)", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// What `up` is asked for.
#[derive(Debug, Clone)]
pub(crate) struct UpOptions {
    pub(crate) nodes: usize,
    pub(crate) image: PathBuf,
    pub(crate) accel: Accel,
    pub(crate) memory_mib: u32,
    pub(crate) cpus: u32,
    pub(crate) owner: Option<Owner>,
    pub(crate) boot_timeout: Duration,
}

/// Removes the lab it names on drop, unless disarmed: a failed `up` leaves nothing.
struct Teardown {
    netns: String,
    dir: PathBuf,
    armed: bool,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if self.armed
            && let Err(error) = remove(&self.netns, Some(&self.dir))
        {
            eprintln!("gannet-lab: cleaning up after a failed up: {error:#}");
        }
    }
}

/// Boots the guests and waits until each one answers on its command channel.
pub(crate) fn up(dir: &Path, options: &UpOptions) -> anyhow::Result<LabState> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    // A lab already in this directory is replaced.
    if let Ok(old) = load(&dir) {
        eprintln!(
            "gannet-lab: removing the lab that was in {} ({})",
            dir.display(),
            old.netns
        );
        remove(&old.netns, Some(&dir))?;
    }
    sweep()?;

    // The pid of `up`, unless a lab of an earlier process with that pid is still up.
    let pid = std::process::id();
    let netns = (0..)
        .map(|n| match n {
            0 => format!("{NETNS_PREFIX}{pid}"),
            n => format!("{NETNS_PREFIX}{pid}-{n}"),
        })
        .find(|name| {
            !Path::new(NETNS_DIR).join(name).exists()
                && !Path::new(REGISTRY).join(format!("{name}.json")).exists()
        })
        .expect("an unused name");
    let mut state = LabState {
        netns: netns.clone(),
        image: options.image.clone(),
        accel: options.accel,
        owner: options.owner,
        nodes: (1..=options.nodes)
            .map(|i| NodeState {
                name: format!("node{i}"),
                ip: node_ip(i),
                tap: format!("tap{i}"),
                dir: dir.join(format!("node{i}")),
            })
            .collect(),
        overlay: None,
    };
    // Recorded before anything exists, so a killed `up` is found by the next one (lab.json
    // first: a registration whose directory does not name its lab counts as left behind).
    write_json(&dir.join("lab.json"), &state)?;
    fs::create_dir_all(REGISTRY)?;
    write_json(
        &Path::new(REGISTRY).join(format!("{netns}.json")),
        &Registration {
            dir: dir.clone(),
            owner: options.owner,
        },
    )?;
    let mut guard = Teardown {
        netns: netns.clone(),
        dir: dir.clone(),
        armed: true,
    };

    ip(&["netns", "add", &netns])?;
    ip(&["-n", &netns, "link", "set", "lo", "up"])?;
    ip(&["-n", &netns, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["-n", &netns, "link", "set", BRIDGE, "up"])?;
    for node in &state.nodes {
        ip(&[
            "-n", &netns, "tuntap", "add", "dev", &node.tap, "mode", "tap",
        ])?;
        ip(&["-n", &netns, "link", "set", &node.tap, "master", BRIDGE])?;
        ip(&["-n", &netns, "link", "set", &node.tap, "up"])?;
    }

    let started = Instant::now();
    for (i, node) in state.nodes.iter().enumerate() {
        // The directory keeps the last run's logs until this one replaces them.
        fs::create_dir_all(&node.dir)?;
        for stale in [
            "cmd.sock",
            "qemu.pid",
            "console.log",
            "gannetd.log",
            "gannet-control.log",
        ] {
            let _ = fs::remove_file(node.dir.join(stale));
        }
        qemu::start(&qemu::Guest {
            netns: &netns,
            node,
            index: i + 1,
            image: &options.image,
            accel: options.accel,
            memory_mib: options.memory_mib,
            cpus: options.cpus,
        })?;
    }
    for node in &state.nodes {
        wait_booted(node, started, options.boot_timeout)?;
        eprintln!(
            "gannet-lab: {} answers after {:.1} s ({}, {}/{LAB_PREFIX})",
            node.name,
            started.elapsed().as_secs_f64(),
            options.accel,
            node.ip
        );
    }
    state.overlay = None;
    write_json(&dir.join("lab.json"), &state)?;
    guard.armed = false;
    Ok(state)
}

fn wait_booted(node: &NodeState, started: Instant, timeout: Duration) -> anyhow::Result<()> {
    let console = node.dir.join("console.log");
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            anyhow::bail!(
                "{} did not answer within {timeout:?}; its console: {}\n{}",
                node.name,
                console.display(),
                tail(&console, 20)
            );
        }
        if node.socket().exists() {
            // The request waits in qemu until the guest's command server opens its port.
            match node.call(&["true".to_owned()], "", left) {
                Ok(r) if r.success() => return Ok(()),
                Ok(r) => anyhow::bail!("{}: `true` failed: {}", node.name, describe(&r)),
                Err(error) if !qemu::running(&node.dir) => {
                    anyhow::bail!(
                        "{}: qemu exited while booting ({error:#}); its console:\n{}",
                        node.name,
                        tail(&console, 30)
                    )
                }
                Err(_) => {}
            }
        } else if !qemu::running(&node.dir) {
            anyhow::bail!(
                "{}: qemu is not running; its console:\n{}",
                node.name,
                tail(&console, 30)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes the lab in `dir` (and whatever else was left behind).
pub(crate) fn down(dir: &Path) -> anyhow::Result<()> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let result = match load(&dir) {
        Ok(state) => remove(&state.netns, Some(&dir)),
        Err(_) => {
            eprintln!("gannet-lab: no lab in {}", dir.display());
            Ok(())
        }
    };
    sweep()?;
    result
}

#[derive(Debug, Serialize, Deserialize)]
struct Registration {
    dir: PathBuf,
    owner: Option<Owner>,
}

/// Removes every lab left behind: registered ones whose owner is gone or whose directory no
/// longer holds them, and namespaces and qemu processes of labs nobody registered.
pub(crate) fn sweep() -> anyhow::Result<()> {
    let mut registered = Vec::new();
    if let Ok(entries) = fs::read_dir(REGISTRY) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(netns) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_owned)
            else {
                continue;
            };
            let registration: Option<Registration> = fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let left_behind = match &registration {
                None => true,
                Some(r) => {
                    r.owner.is_some_and(|o| !o.alive())
                        || load(&r.dir).map_or(true, |s| s.netns != netns)
                }
            };
            if left_behind {
                eprintln!("gannet-lab: removing {netns}, left behind by an earlier run");
                let dir = registration.as_ref().map(|r| r.dir.as_path());
                // Only a directory that still names this lab is the lab's to clean.
                let dir = dir.filter(|d| load(d).is_ok_and(|s| s.netns == netns));
                remove(&netns, dir)?;
            } else {
                registered.push(netns);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NETNS_PREFIX) && !registered.contains(&name) {
                eprintln!("gannet-lab: removing namespace {name}, which no lab registered");
                remove(&name, None)?;
            }
        }
    }
    for (pid, netns) in qemu::all_lab_guests() {
        if !registered.contains(&netns) {
            eprintln!("gannet-lab: stopping qemu {pid} of {netns}, which no lab registered");
            qemu::stop(&[pid], STOP_WAIT);
        }
    }
    Ok(())
}

/// Stops a lab's guests, deletes its namespace (with the bridge and the taps), forgets it, and
/// removes its runtime files from `dir` (consoles and logs stay).
fn remove(netns: &str, dir: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(
        netns.starts_with(NETNS_PREFIX) && !netns.contains('/'),
        "refusing to remove {netns:?}: not a lab's namespace"
    );
    let pids: Vec<i32> = qemu::all_lab_guests()
        .into_iter()
        .filter(|(_, n)| n == netns)
        .map(|(pid, _)| pid)
        .collect();
    qemu::stop(&pids, STOP_WAIT);
    if Path::new(NETNS_DIR).join(netns).exists() {
        ip(&["netns", "del", netns])?;
    }
    if let Some(dir) = dir {
        if let Ok(state) = load(dir) {
            for node in &state.nodes {
                for f in ["cmd.sock", "cmd.lock", "qemu.pid"] {
                    let _ = fs::remove_file(node.dir.join(f));
                }
            }
        }
        let _ = fs::remove_file(dir.join("lab.json"));
    }
    let _ = fs::remove_file(Path::new(REGISTRY).join(format!("{netns}.json")));
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
