//! podman (Debian 12: 4.3.1) with its CNI network backend, on runc.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gannet_testkit::{run_in, spawn};
use serde_json::Value;

use crate::sandbox::{NETWORK, REFERENCE_PLUGINS, Sandbox, missing_programs, skip, static_busybox};
use crate::scenario::{Attachment, Runtime, pods_reach_each_other_and_the_node};
use crate::shell::Container;

/// The image `podman import` makes of the busybox root file system.
const IMAGE: &str = "localhost/gannet-busybox:test";
/// How long `podman rm -af` may take in cleanup.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A podman whose every file is in the sandbox's temp dir.
pub(crate) struct Podman {
    sandbox: Sandbox,
    containers_conf: PathBuf,
    storage_conf: PathBuf,
}

/// Why the podman test cannot run here, if a package is missing.
pub(crate) fn prerequisites_missing() -> Option<String> {
    missing_programs(&[
        ("podman", "podman"),
        ("conmon", "conmon"),
        ("runc", "runc"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("nft", "nftables"),
        ("tar", "tar"),
    ])
    .or_else(|| static_busybox().err())
}

impl Podman {
    /// A sandbox with podman configured into it and the busybox image imported.
    pub(crate) fn new() -> Podman {
        let sandbox = Sandbox::new("pm");
        let t = sandbox.path().to_owned();
        let containers_conf = t.join("containers.conf");
        let storage_conf = t.join("storage.conf");
        // - default_ulimits: without them podman asks for more open files than this machine's
        //   hard limit (20000) and runc fails ("error setting rlimit type 7").
        // - runc: crun 1.8 refuses this hybrid cgroup layout ("cgroups in hybrid mode not
        //   supported, drop all controllers from cgroupv2").
        // - cgroupfs: there is no systemd to ask for scopes.
        // - cni_plugin_dirs / network_config_dir: gannet-cni and our conflist only.
        fs::write(
            &containers_conf,
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{t}/podman-events.log"
runtime = "runc"
tmp_dir = "{t}/podman-tmp"
image_copy_tmp_dir = "{t}/podman-tmp"
volume_path = "{t}/podman-volumes"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}", "{reference}"]
network_config_dir = "{conf}"
"#,
                t = t.display(),
                bin = sandbox.plugin_dir().display(),
                conf = sandbox.conf_dir().display(),
                reference = REFERENCE_PLUGINS,
            ),
        )
        .expect("writing containers.conf");
        // vfs: no overlay mounts to leak, and the image is 2 MB.
        fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\n\
                 graphroot = \"{t}/podman-root\"\nrunroot = \"{t}/podman-runroot\"\n",
                t = t.display()
            ),
        )
        .expect("writing storage.conf");
        let podman = Podman {
            sandbox,
            containers_conf,
            storage_conf,
        };

        let tarball = t.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(t.join("rootfs"))
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .expect("running tar");
        assert!(status.success(), "tar of the root file system: {status}");
        podman.podman(
            &["import", &tarball.display().to_string(), IMAGE],
            "podman import",
        );
        podman
    }

    /// `podman args…` inside the sandbox.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.sandbox.command("podman");
        cmd.env("CONTAINERS_CONF", &self.containers_conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .args(args);
        cmd
    }

    /// `podman run` arguments for container `name` on the gannet network with `extra` options.
    fn run_args<'a>(&self, name: &'a str, parent: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "run",
            "-i",
            "--name",
            name,
            "--network",
            NETWORK,
            "--cgroup-parent",
            parent,
            "--pull",
            "never",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "/bin/sh"]);
        args
    }

    /// Starts container `name` with `extra` `podman run` options (see [`Runtime::start`]).
    fn start_with(&mut self, name: &str, extra: &[&str]) -> Container {
        let parent = self.sandbox.cgroups.parent();
        let cmd = self.command(&self.run_args(name, &parent, extra));
        let run = spawn(cmd, None, None).expect("starting podman run");
        let mut container = Container::attach(name, run);
        container.cni_id = self
            .podman(
                &["inspect", "--format", "{{.Id}}", name],
                "podman inspect (id)",
            )
            .trim()
            .to_owned();
        container
    }

    /// Runs `podman args…` to completion and returns stdout (panics if it fails).
    fn podman(&self, args: &[&str], what: &str) -> String {
        self.sandbox.run(self.command(args), what)
    }
}

impl Runtime for Podman {
    fn name(&self) -> &'static str {
        "podman"
    }

    fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    fn start(&mut self, name: &str) -> Container {
        self.start_with(name, &[])
    }

    fn check_runtime_view(&mut self, container: &Container, seen: &Attachment) {
        // podman parsed gannet-cni's result: the address and MAC it reports are the pod's.
        let networks = self.podman(
            &[
                "inspect",
                "--format",
                "{{json .NetworkSettings.Networks}}",
                &container.name,
            ],
            "podman inspect (networks)",
        );
        let networks: Value = serde_json::from_str(networks.trim())
            .unwrap_or_else(|e| panic!("podman inspect printed {networks:?}: {e}"));
        let net = &networks[NETWORK];
        assert_eq!(
            (
                net["IPAddress"].as_str(),
                net["GlobalIPv6Address"].as_str(),
                net["MacAddress"].as_str()
            ),
            (Some(&*seen.v4), Some(&*seen.v6), Some(&*seen.mac)),
            "{}: podman's view of its network: {networks}",
            container.name
        );
    }

    fn stop(&mut self, container: &str) {
        self.podman(&["stop", "--time", "0", container], "podman stop");
    }

    fn remove(&mut self, container: &str) {
        self.podman(&["rm", container], "podman rm");
    }

    fn pod_name(&self, name: &str) -> Option<String> {
        Some(name.to_owned())
    }

    fn check_netns(&self, netns: &Path, container: &Container) {
        assert!(
            netns.starts_with("/run/netns/"),
            "{}: podman's CNI_NETNS is {}",
            container.name,
            netns.display()
        );
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Normally there is nothing left; after a failure, let podman stop its containers (and
        // run their DEL) before the sandbox kills whatever remains.
        match run_in(
            self.command(&["rm", "--all", "--force", "--time", "0"]),
            None,
            None,
            CLEANUP_TIMEOUT,
        ) {
            Ok(output) if !output.status.success() => eprintln!(
                "podman rm --all --force: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Ok(_) => {}
            Err(e) => eprintln!("podman rm --all --force: {e:#}"),
        }
    }
}

/// Two podman containers on a gannet-cni network: addresses from gannet's IPAM, pod ↔ pod and
/// pod ↔ node over IPv4 and IPv6, podman's own view of the result, DEL from podman's cleanup
/// process when a container exits.
#[test]
fn podman_cni_backend_runs_pods_on_gannet_cni() {
    if let Some(why) = prerequisites_missing() {
        skip("podman_cni_backend_runs_pods_on_gannet_cni", &why);
        return;
    }
    let mut podman = Podman::new();
    let networks = podman.podman(
        &["network", "ls", "--format", "{{.Name}} {{.Driver}}"],
        "podman network ls",
    );
    assert!(
        networks
            .lines()
            .any(|l| l.trim() == format!("{NETWORK} gannet-cni")),
        "podman does not list the gannet network: {networks}"
    );
    pods_reach_each_other_and_the_node(&mut podman);
}

/// podman's `--ip`, `--ip6` and `--mac-address`: with two addresses podman sends the `ips`
/// capability (which the conflist `install` writes enables), the MAC as `CNI_ARGS` `MAC=`; the
/// container gets exactly those, and a second container asking for a taken address is refused
/// with gannet-cni's error.
#[test]
fn podman_static_addresses_and_mac_are_honoured() {
    if let Some(why) = prerequisites_missing() {
        skip("podman_static_addresses_and_mac_are_honoured", &why);
        return;
    }
    let mut podman = Podman::new();
    let v4 = format!("{}{}", crate::sandbox::POD_V4_PREFIX, 50);
    let v6 = format!("{}{}", crate::sandbox::POD_V6_PREFIX, 50);
    let mac = "02:42:0a:4d:00:32";
    let mut c = podman.start_with("static", &["--ip", &v4, "--ip6", &v6, "--mac-address", mac]);
    let v4_out = c.sh_ok("ip -o -4 addr show dev eth0");
    let v6_out = c.sh_ok("ip -o -6 addr show dev eth0 scope global");
    let link = c.sh_ok("ip -o link show dev eth0");
    assert!(v4_out.contains(&format!("{v4}/32")), "{v4_out}");
    assert!(v6_out.contains(&format!("{v6}/128")), "{v6_out}");
    assert!(link.contains(&format!("link/ether {mac} ")), "{link}");
    let log = podman.sandbox.plugin_log();
    let asked = log
        .lines()
        .find(|l| l.contains("requested by the runtime"))
        .unwrap_or_else(|| panic!("no request in the plugin's log:\n{log}"));
    println!("podman --ip --ip6 --mac-address: {asked}");
    assert!(
        asked.contains("runtimeConfig.ips[0]")
            && asked.contains("runtimeConfig.ips[1]")
            && asked.contains("CNI_ARGS MAC"),
        "podman 4.3 sends two addresses as the ips capability and the MAC in CNI_ARGS: {asked}"
    );
    let records = podman.sandbox.allocations();
    for addr in [&v4, &v6] {
        assert!(
            records.contains(&(addr.clone(), c.cni_id.clone(), "eth0".to_owned())),
            "{addr} is not recorded for the container: {records:?}"
        );
    }

    // A second container asking for the same IPv4 address: podman reports the plugin's error.
    let parent = podman.sandbox.cgroups.parent();
    let args = podman.run_args("clash", &parent, &["--rm", "--ip", &v4]);
    let mut cmd = podman.command(&args);
    cmd.stdin(std::process::Stdio::null());
    let output = run_in(cmd, None, None, Duration::from_secs(60)).expect("podman run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a taken address was given out: {stderr}"
    );
    assert!(
        stderr.contains(&v4) && stderr.contains("already allocated"),
        "podman's error does not carry gannet-cni's: {stderr}"
    );
    assert_eq!(
        podman.sandbox.allocations().len(),
        2,
        "the refused container holds an address: {:?}",
        podman.sandbox.allocations()
    );

    let id = c.cni_id.clone();
    c.exit();
    podman.sandbox.wait_until(
        "DEL of the static container",
        Duration::from_secs(20),
        || {
            let left: Vec<_> = podman
                .sandbox
                .allocations()
                .into_iter()
                .filter(|(_, owner, _)| *owner == id)
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still allocated: {left:?}"))
            }
        },
    );
    podman.remove("static");
}
