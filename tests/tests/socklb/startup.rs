//! Starts that must be refused: a pinned map of another layout, bad configuration.

use std::process::Command;

use gannet_testkit::{
    Cgroup, Netns, ScratchDir, agent::AGENT_TIMEOUT, bin_path, bpftool, run_in, unique_name,
};

/// A `--bpf-root` of a test's own under /sys/fs/bpf: `gannetd cleanup` and removed on drop.
struct BpfRoot(std::path::PathBuf);

impl BpfRoot {
    fn new() -> BpfRoot {
        let bpffs = std::path::Path::new("/sys/fs/bpf");
        let kind = Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(bpffs)
            .output()
            .expect("running stat");
        assert_eq!(
            String::from_utf8_lossy(&kind.stdout).trim(),
            "bpf_fs",
            "this test pins a map itself: it needs bpffs mounted at /sys/fs/bpf"
        );
        BpfRoot(bpffs.join(unique_name("gannet-pin")))
    }

    /// Every path below the root, relative to it, sorted.
    fn contents(&self) -> Vec<String> {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("reading the bpf root") {
                let path = entry.expect("a directory entry").path();
                out.push(
                    path.strip_prefix(root)
                        .expect("below the root")
                        .display()
                        .to_string(),
                );
                if path.is_dir() {
                    walk(&path, root, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &self.0, &mut out);
        out.sort();
        out
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let state = ScratchDir::new("gannet-pin-state");
        let _ = Command::new(bin_path("gannetd"))
            .arg("cleanup")
            .arg("--bpf-root")
            .arg(&self.0)
            .arg("--state-dir")
            .arg(&state.0)
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_naming_the_map() {
    // GANNET_BACKENDS (backend id, a u32, → BackendValue, not preallocated) with values of 512
    // bytes: larger than this build's, so the programs' reads pass the verifier and, without a
    // check, the map would be adopted and silently misread.
    let root = BpfRoot::new();
    let maps = root.0.join("maps");
    std::fs::create_dir_all(&maps).expect("creating the bpf root");
    let pin = maps.join("GANNET_BACKENDS");
    bpftool::map_create(
        &pin,
        &[
            "type",
            "hash",
            "key",
            "4",
            "value",
            "512",
            "entries",
            "16",
            "name",
            "GANNET_BACKENDS",
            "flags",
            "1",
        ],
    );

    let netns = Netns::new("pins").expect("creating a namespace");
    let cgroup = Cgroup::new().expect("creating the test cgroup");
    let manifests = ScratchDir::new("gannet-pin-manifests");
    std::fs::create_dir_all(&manifests.0).expect("creating the manifest directory");
    let state = ScratchDir::new("gannet-pin-state");
    let mut cmd = Command::new(bin_path("gannetd"));
    cmd.arg("--cgroup-path")
        .arg(cgroup.path())
        .arg("--bpf-root")
        .arg(&root.0)
        .arg("--manifest-dir")
        .arg(&manifests.0)
        .arg("--state-dir")
        .arg(&state.0)
        .args([
            "--node-name",
            "test-node",
            "--overlay",
            "none",
            "--masquerade=false",
            "--nodeport-interfaces=",
            "--metrics-address",
            gannet_testkit::metrics::TEST_METRICS_ADDRESS,
        ]);
    let output = run_in(cmd, Some(&netns), None, AGENT_TIMEOUT).unwrap_or_else(|e| {
        panic!("gannetd must refuse to start on a pinned map of another layout, but: {e:#}")
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "gannetd must exit with an error, got {}: {stderr}",
        output.status
    );
    for needle in ["GANNET_BACKENDS", "value size 512", "gannetd cleanup"] {
        assert!(
            stderr.contains(needle),
            "the refusal must name the map, what differs and the way out ({needle:?}): {stderr}"
        );
    }
    assert_eq!(
        root.contents(),
        ["maps", "maps/GANNET_BACKENDS"],
        "nothing may be created next to the refused map"
    );
    assert!(
        !state.0.exists(),
        "nothing may be created in the state directory {}",
        state.0.display()
    );
    let attached = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup.path())
        .output()
        .expect("running bpftool");
    let attached = String::from_utf8_lossy(&attached.stdout);
    assert!(
        attached.trim().is_empty() || attached.trim() == "[]",
        "no program may be attached to the cgroup: {attached}"
    );
    let map = bpftool::map_show(&pin);
    assert_eq!(
        map["bytes_value"], 512,
        "the pinned map must be left as it was: {map}"
    );
}

#[test]
fn bad_configuration_exits_64_naming_every_flag() {
    let output = Command::new(bin_path("gannetd"))
        .args([
            "--cgroup-path",
            "/proc",
            "--bpf-root",
            "relative/path",
            "--max-services",
            "0",
            "--server",
            "tcp://nowhere",
            "--node-ip",
            "not-an-ip",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    for flag in [
        "--cgroup-path /proc",
        "--bpf-root relative/path",
        "--max-services 0",
        "--server tcp://nowhere",
        "--node-ip not-an-ip",
    ] {
        assert!(
            stderr.contains(flag),
            "the error must name {flag}: {stderr}"
        );
    }
    let both = Command::new(bin_path("gannetd"))
        .args(["--manifest-dir", "/tmp", "--server", "unix:/tmp/x.sock"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert_eq!(both.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("--manifest-dir and --server"),
        "two sources of services are refused: {stderr}"
    );
    // The overlay's flags (checked before anything is created; the interface is looked up in
    // this namespace, nothing is created in it: `--cgroup-path /proc` alone makes sure of that).
    let overlay = Command::new(bin_path("gannetd"))
        .args([
            "--cgroup-path",
            "/proc",
            "--manifest-dir",
            "/tmp",
            "--vxlan-vni",
            "16777216",
            "--vxlan-port",
            "0",
            "--overlay-interface",
            "no-such-if0",
            "--cluster-cidr",
            "10.244.0.0/33",
            "--pod-mtu",
            "100",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&overlay.stderr);
    assert_eq!(overlay.status.code(), Some(64), "stderr: {stderr}");
    for flag in [
        "--vxlan-vni 16777216",
        "--vxlan-port 0",
        "--overlay-interface no-such-if0",
        "--cluster-cidr 10.244.0.0/33",
        "--pod-mtu 100",
    ] {
        assert!(
            stderr.contains(flag),
            "the error must name {flag}: {stderr}"
        );
    }
    let unbounded = Command::new(bin_path("gannetd"))
        .args([
            "--cgroup-path",
            "/proc",
            "--manifest-dir",
            "/tmp",
            "--overlay",
            "vxlan",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&unbounded.stderr);
    assert_eq!(unbounded.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("--cluster-cidr: required"),
        "masquerade needs to know the cluster: {stderr}"
    );
    // The NodePort flags.
    let nodeport = Command::new(bin_path("gannetd"))
        .args([
            "--cgroup-path",
            "/proc",
            "--manifest-dir",
            "/tmp",
            "--overlay",
            "none",
            "--maglev-table-size",
            "1000",
            "--max-conntrack",
            "0",
            "--nodeport-interfaces",
            "no-such-if1",
            "--nodeport-addresses",
            "10.0.0.0/40",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&nodeport.stderr);
    assert_eq!(nodeport.status.code(), Some(64), "stderr: {stderr}");
    for flag in [
        "--maglev-table-size 1000",
        "--max-conntrack 0",
        "--nodeport-interfaces no-such-if1",
        "--nodeport-addresses 10.0.0.0/40",
    ] {
        assert!(
            stderr.contains(flag),
            "the error must name {flag}: {stderr}"
        );
    }
}
