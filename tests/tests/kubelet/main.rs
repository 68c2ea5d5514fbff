//! gannetd as the kubelet (`--container-runtime`): Pods applied to gannet-control run as
//! containers of a real containerd (Debian's 1.6, its CRI plugin on, started by the test in the
//! node's namespace with every file in a temp dir: see the kit's `containerd.rs`), networked by
//! gannet-cni through containerd's CNI configuration, and reached through their Service's
//! ClusterIP by real packets. The images are OCI archives the test builds from busybox-static and
//! imports with `gannetd image import`; no registry.
//!
//! Nothing here touches the root network namespace; the pods' cgroups are below a cgroup of the
//! test (`--pod-cgroup-parent`). A test whose programs are missing prints `SKIPPED …` and passes.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

mod environment;
mod images;
mod lifecycle;
mod logs;
mod probes;
mod resources;
mod restart;
mod scheduling;
mod volumes;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gannet_testkit::{
    Cgroup, Netns,
    agent::Agent,
    bin_path,
    cni::{cni, pod_ip},
    containerd::{self, BUSYBOX_IMAGE, Containerd, PAUSE_IMAGE},
    control::ControlPlane,
    eventually,
    probe::{Report, parse_json_output},
    run_in,
};
use serde_json::Value;

/// How long a pod may take from apply to running (image unpack, sandbox, CNI).
const START: Duration = Duration::from_secs(60);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

fn skip_reason() -> Option<String> {
    let why = containerd::prerequisites_missing()?;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED kubelet tests: {why}");
    Some(why)
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what` and `diagnose()`
/// (the daemons' logs).
fn wait<T>(
    what: &str,
    timeout: Duration,
    diagnose: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            diagnose()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `gannetd image import FILE --container-runtime ADDR`; the names it printed.
fn import(archive: &Path, runtime: &str) -> String {
    let mut cmd = Command::new(bin_path("gannetd"));
    cmd.args(["image", "import"])
        .arg(archive)
        .args(["--container-runtime", runtime]);
    let output = run_in(cmd, None, None, CMD_TIMEOUT).expect("running gannetd image import");
    assert!(
        output.status.success(),
        "gannetd image import {} failed: {}",
        archive.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn condition(pod: &Value, type_: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Every file below `dir` named `name`.
fn files_named(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_named(&path, name));
            } else if entry.file_name().to_str() == Some(name) {
                found.push(path);
            }
        }
    }
    found
}

/// The process whose command line (arguments joined by spaces) contains `needle`.
fn find_process(needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
}

/// What a pod's network namespace looks like, entered through its process whose command line
/// contains `needle` (for failure messages).
fn inside_pod(needle: &str) -> String {
    let Some(pid) = find_process(needle) else {
        return format!("no process running {needle}");
    };
    let mut out = String::new();
    for args in [
        &["ip", "addr"][..],
        &["ip", "route"],
        &["/bin/busybox", "netstat", "-ltn"],
    ] {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={pid}")).arg("--net").args(args);
        if let Ok(o) = run_in(cmd, None, None, CMD_TIMEOUT) {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
            out.push_str(&String::from_utf8_lossy(&o.stderr));
        }
    }
    out
}

/// The veth interfaces of the node namespace.
fn veths(node: &Netns) -> BTreeSet<String> {
    node.ip(&["-o", "link", "show", "type", "veth"])
        .expect("ip link")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

const WEB: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels:
    app: web
spec:
  nodeName: test-node
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: gannet.test/busybox:1
    workingDir: /tmp
    command: [/bin/sh, -c]
    args:
    - printf '#!/bin/sh\\necho \"$GREETING from $(pwd)\"\\n' > reply && /bin/busybox chmod +x reply && exec /bin/busybox nc -ll -p 8080 -e /tmp/reply
    env:
    - name: GREETING
      value: hello-from-web-1
    ports:
    - containerPort: 8080
";

const MISSING: &str = "apiVersion: v1
kind: Pod
metadata:
  name: missing-1
spec:
  nodeName: test-node
  containers:
  - name: app
    image: gannet.test/not-imported:7
";

/// A node of its own for one test: its namespace, a cgroup, gannet-control, containerd in the
/// namespace and gannetd as its kubelet ([`start_kubelet`]). The fields drop in order: what runs
/// in the namespace goes before the namespace.
struct KubeletNode {
    agent: Agent,
    containerd: Containerd,
    plane: ControlPlane,
    _cgroup: Cgroup,
    _node: Netns,
}

impl KubeletNode {
    /// Everything started; `role` names the namespace.
    fn start(role: &str) -> Self {
        let node = Netns::new(role).unwrap();
        let cgroup = Cgroup::new().unwrap();
        let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"]).unwrap();
        let containerd = Containerd::start(&node).unwrap();
        let (agent, _) = start_kubelet(&node, &cgroup, &plane, &containerd);
        Self {
            agent,
            containerd,
            plane,
            _cgroup: cgroup,
            _node: node,
        }
    }
}

/// gannetd as the kubelet of `containerd` on `node`, ready for pods: its CNI socket in
/// containerd's CNI configuration, the pause and busybox images built and imported. Returns the
/// agent and the busybox archive.
fn start_kubelet(
    node: &Netns,
    cgroup: &Cgroup,
    plane: &ControlPlane,
    containerd: &Containerd,
) -> (Agent, std::path::PathBuf) {
    let runtime = containerd.address();
    let mut agent = Agent::start_with_control(
        Some(node),
        cgroup,
        &plane.addr(),
        &[
            "--container-runtime",
            &runtime,
            "--pod-cgroup-parent",
            &containerd.cgroup_parent(),
        ],
    )
    .unwrap();
    agent.wait_log("subnet file written", 1).unwrap();
    agent.wait_log("container runtime connected", 1).unwrap();
    containerd
        .use_agent(&agent.cni_socket(), &agent.subnet_file())
        .unwrap();
    // The images, built by the test and imported through containerd's API.
    let pause = containerd
        .busybox_archive(PAUSE_IMAGE, &["/bin/busybox", "sleep", "2147483647"])
        .unwrap();
    let busybox = containerd
        .busybox_archive(BUSYBOX_IMAGE, &["/bin/sh"])
        .unwrap();
    assert_eq!(import(&pause, &runtime).trim(), PAUSE_IMAGE);
    assert_eq!(import(&busybox, &runtime).trim(), BUSYBOX_IMAGE);
    (agent, busybox)
}
