//! Starting and stopping the guests' qemu processes.

use std::fmt;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::lab::{LAB_PREFIX, NodeState};

/// Every guest's qemu is named `gannet-lab:NETNS:NODE` (`-name`), which is how leftovers are
/// found even without their pid files.
const NAME_PREFIX: &str = "gannet-lab:";

/// How the guests' CPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Accel {
    /// KVM where it works (hardware virtualisation: the `kvm_intel` or `kvm_amd` module), TCG
    /// otherwise.
    Auto,
    /// qemu's emulator: slow, works everywhere.
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

impl Accel {
    /// What `Auto` means on this host. A `/dev/kvm` alone is not enough: a paravirtual KVM
    /// (e.g. PVM, `kvm_pvm`) cannot run a stock guest kernel.
    pub(crate) fn resolve(self) -> Accel {
        match self {
            Accel::Auto => {
                let hardware = ["kvm_intel", "kvm_amd"]
                    .iter()
                    .any(|m| Path::new("/sys/module").join(m).exists());
                if hardware && Path::new("/dev/kvm").exists() {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            other => other,
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        })
    }
}

pub(crate) struct Guest<'a> {
    pub(crate) netns: &'a str,
    pub(crate) node: &'a NodeState,
    pub(crate) index: usize,
    pub(crate) image: &'a Path,
    pub(crate) accel: Accel,
    pub(crate) memory_mib: u32,
    pub(crate) cpus: u32,
}

/// Starts a guest's qemu inside the lab's namespace (only there do its tap and the bridge
/// exist), daemonized; its pid goes to `qemu.pid` in the node's directory.
pub(crate) fn start(guest: &Guest<'_>) -> anyhow::Result<()> {
    let node = guest.node;
    let dir = &node.dir;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (accel, cpu) = match guest.accel {
        Accel::Kvm => ("kvm", "host"),
        _ => ("tcg", "max"),
    };
    let append = format!(
        "console=ttyS0 panic=-1 loglevel=4 gannet.node={} gannet.ip={}/{LAB_PREFIX}",
        node.name, node.ip
    );
    let index = u8::try_from(guest.index).context("at most 200 nodes")?;
    let mac = format!("52:54:00:77:00:{index:02x}");
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", guest.netns))
        .arg("--")
        .arg("qemu-system-x86_64")
        .args([
            "-name",
            &format!("{NAME_PREFIX}{}:{}", guest.netns, node.name),
        ])
        .args(["-accel", accel, "-cpu", cpu])
        .args(["-m", &guest.memory_mib.to_string()])
        .args(["-smp", &guest.cpus.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot"])
        .arg("-kernel")
        .arg(guest.image.join("vmlinuz"))
        .arg("-initrd")
        .arg(guest.image.join("initramfs.cpio"))
        .args(["-append", &append])
        .args(["-serial", &format!("file:{}", path("console.log"))])
        .args(["-device", "virtio-serial-pci"])
        .args([
            "-chardev",
            &format!("socket,id=cmd,path={},server=on,wait=off", path("cmd.sock")),
        ])
        .args(["-device", "virtserialport,chardev=cmd,name=gannet.cmd"]);
    // The services' output (gannet-service in the guest) goes to files here.
    for (id, log) in [("log0", "gannetd.log"), ("log1", "gannet-control.log")] {
        command
            .args(["-chardev", &format!("file,id={id},path={}", path(log))])
            .args([
                "-device",
                &format!("virtserialport,chardev={id},name={log}"),
            ]);
    }
    command
        .args([
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", node.tap),
        ])
        .args(["-device", &format!("virtio-net-pci,netdev=net0,mac={mac}")])
        .args(["-daemonize", "-pidfile", &path("qemu.pid")]);
    let out = command
        .output()
        .context("running qemu-system-x86_64 (vm-images/setup installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "qemu for {} failed: {}",
        node.name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Whether the node's qemu runs.
pub(crate) fn running(dir: &Path) -> bool {
    fs::read_to_string(dir.join("qemu.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Every qemu of a lab on this host: pid and lab namespace, from their `-name`.
pub(crate) fn all_lab_guests() -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !args
            .first()
            .is_some_and(|a| a.ends_with(b"qemu-system-x86_64"))
        {
            continue;
        }
        for pair in args.windows(2) {
            if pair[0] == b"-name" {
                let name = String::from_utf8_lossy(pair[1]);
                if let Some(rest) = name.strip_prefix(NAME_PREFIX)
                    && let Some((netns, _node)) = rest.split_once(':')
                {
                    found.push((pid, netns.to_owned()));
                }
            }
        }
    }
    found
}

/// SIGTERM, then SIGKILL for those still there after `wait`.
pub(crate) fn stop(pids: &[i32], wait: Duration) {
    for &pid in pids {
        // SAFETY: kill(2) on a pid just read from /proc; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + wait;
    let alive = |pid: &i32| Path::new(&format!("/proc/{pid}")).exists();
    while pids.iter().any(alive) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    for pid in pids.iter().filter(|p| alive(p)) {
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + wait;
    while pids.iter().any(alive) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}
