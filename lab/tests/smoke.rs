//! The lab's smoke test: two qemu guests (TCG on a host without hardware KVM), gannet on them
//! with the vxlan overlay as on real nodes, then pod → pod across the nodes and pod → ClusterIP
//! with the backend on the other node, a Service without endpoints refused, and `down` leaving
//! nothing behind. Then the sweep: a lab whose owner process is gone is removed by the next
//! `down`, of another directory.
//!
//! Needs root, and the workspace's binaries built (`cargo build --bins`, as `scripts/test` does):
//! the image is made from the binaries next to `gannet-lab`. The first run downloads the guest's
//! Debian packages (about 150 MB) into `target/vm-images`.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const LAB: &str = env!("CARGO_BIN_EXE_gannet-lab");

/// How long `up` may take in all (image from the cache, boot under TCG, gannet started).
const UP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the service may take to reach the data plane of the client's node.
const PROGRAMMED: Duration = Duration::from_secs(90);

/// The Service and Pods the test applies (the server on node2, the client on node1).
const MANIFEST: &str = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  clusterIP: 10.96.0.50
  selector: {app: echo}
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: default}
spec:
  clusterIP: 10.96.0.51
  selector: {app: nobody}
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {app: echo}}
spec:
  nodeName: node2
  containers: [{name: httpd, image: busybox, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  nodeName: node1
  containers: [{name: wget, image: busybox}]
";

/// A lab in its own directory, brought down on drop (also when the test panics).
struct Lab {
    dir: PathBuf,
}

impl Lab {
    fn cmd(&self) -> Command {
        let mut c = Command::new(LAB);
        c.arg("--dir").arg(&self.dir);
        c
    }

    fn exec(&self, node: &str, script: &str) -> Output {
        self.cmd()
            .args(["exec", "--timeout", "60", node, "--", "sh", "-c", script])
            .output()
            .expect("running gannet-lab exec")
    }

    /// Runs `script` on `node`; panics with its output unless it succeeds.
    fn ok(&self, node: &str, script: &str) -> String {
        let out = self.exec(node, script);
        assert!(
            out.status.success(),
            "{node}: `{script}` failed ({}):\n{}{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.agent_logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The end of every node's gannetd log, for a failure's message (CI keeps no lab directory).
    fn agent_logs(&self) -> String {
        let mut text = String::new();
        let Ok(nodes) = fs::read_dir(&self.dir) else {
            return text;
        };
        let mut nodes: Vec<PathBuf> = nodes.flatten().map(|e| e.path()).collect();
        nodes.sort();
        for node in nodes {
            let Ok(log) = fs::read_to_string(node.join("gannetd.log")) else {
                continue;
            };
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            text.push_str(&format!(
                "\n--- the end of {}/gannetd.log ---\n{}\n",
                node.display(),
                tail.join("\n")
            ));
        }
        text
    }

    fn state(&self) -> serde_json::Value {
        let text = fs::read_to_string(self.dir.join("lab.json")).expect("reading lab.json");
        serde_json::from_str(&text).expect("parsing lab.json")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cmd().arg("down").status();
    }
}

/// A process standing for the lab's owner: killed on drop.
struct Owner(Child);

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A shell command: an HTTP GET of `/` from pod `pod` to `HOST PORT`, the whole response on
/// stdout. (busybox-static's `wget` crashes in Debian 12, so `nc` speaks HTTP/1.0.)
fn http_get(pod: &str, host_port: &str) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | ip netns exec {pod} nc -w 10 {host_port}")
}

fn lab_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Qemu processes named after the lab namespace `netns`.
fn qemus_of(netns: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.starts_with("qemu-system") && text.contains(&format!("gannet-lab:{netns}:")) {
            found.push(text);
        }
    }
    found
}

fn assert_gone(netns: &str, dir: &Path, nodes: &[&str]) {
    assert!(
        !Path::new("/run/netns").join(netns).exists(),
        "the lab's namespace {netns} is still there"
    );
    assert_eq!(
        qemus_of(netns),
        Vec::<String>::new(),
        "qemu of {netns} still runs"
    );
    assert!(
        !Path::new("/run/gannet-lab")
            .join(format!("{netns}.json"))
            .exists(),
        "{netns} is still registered"
    );
    assert!(
        !dir.join("lab.json").exists(),
        "{} still holds a lab",
        dir.display()
    );
    for node in nodes {
        let node_dir = dir.join(node);
        assert!(
            !node_dir.join("cmd.sock").exists(),
            "{}: the command socket is still there",
            node_dir.display()
        );
        // The consoles stay for debugging, and hold the guest's boot.
        let console = fs::read_to_string(node_dir.join("console.log")).unwrap_or_default();
        assert!(
            console.contains(&format!("gannet-lab: {node} up")),
            "{}: the console log lacks the boot line:\n{console}",
            node_dir.display()
        );
    }
}

#[test]
fn two_guests_pod_to_pod_and_clusterip_across_nodes_then_nothing_left() {
    let owner = Owner(
        Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the owner process"),
    );
    let lab = Lab {
        dir: lab_dir("lab-smoke"),
    };
    let started = Instant::now();
    let mut up = lab
        .cmd()
        .args(["up", "--nodes", "2", "--overlay", "vxlan", "--owner-pid"])
        .arg(owner.0.id().to_string())
        .spawn()
        .expect("starting gannet-lab up");
    let status = loop {
        if let Some(status) = up.try_wait().expect("waiting for gannet-lab up") {
            break status;
        }
        if started.elapsed() > UP_TIMEOUT {
            let _ = up.kill();
            panic!("gannet-lab up did not finish within {UP_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "gannet-lab up failed: {status}");
    eprintln!(
        "up (image, boot, gannet) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let netns = lab.state()["netns"]
        .as_str()
        .expect("lab.json names its namespace")
        .to_owned();

    // Each node is its own kernel with cgroup2 and bpffs mounted, as gannetd needs.
    for node in ["node1", "node2"] {
        let mounts = lab.ok(node, "cat /proc/mounts");
        assert!(
            mounts.contains("/sys/fs/cgroup cgroup2") && mounts.contains("/sys/fs/bpf bpf"),
            "{node}: cgroup2 or bpffs missing:\n{mounts}"
        );
    }
    let nodes = lab.ok("node1", "gannetctl get nodes");
    assert!(
        nodes.contains("node1") && nodes.contains("node2"),
        "both nodes registered:\n{nodes}"
    );

    lab.cmd()
        .args([
            "exec",
            "--stdin",
            "node1",
            "--",
            "gannetctl",
            "apply",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(MANIFEST.as_bytes())?;
            let status = c.wait()?;
            assert!(status.success(), "gannetctl apply failed: {status}");
            Ok(())
        })
        .expect("applying the manifest");

    // The pods, wired by gannet-cni as a runtime would; an HTTP server in the server pod.
    lab.ok(
        "node2",
        "gannet-pod add server >/dev/null && mkdir -p /srv && echo 'server on node2' >/srv/index.html \
         && ip netns exec server httpd -p 8080 -h /srv",
    );
    lab.ok("node1", "gannet-pod add client >/dev/null");
    let server_ip = lab
        .ok(
            "node2",
            "ip netns exec server ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1",
        )
        .trim()
        .to_owned();
    let client_ip = lab
        .ok(
            "node1",
            "ip netns exec client ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1",
        )
        .trim()
        .to_owned();
    assert!(
        server_ip.starts_with("10.244.") && client_ip.starts_with("10.244."),
        "pod addresses from the pod network: server {server_ip:?}, client {client_ip:?}"
    );
    let server_net: Vec<&str> = server_ip.split('.').take(3).collect();
    let client_net: Vec<&str> = client_ip.split('.').take(3).collect();
    assert_ne!(server_net, client_net, "each node has its own pod CIDR");

    let vxlan_tx = |node: &str| -> u64 {
        lab.ok(
            node,
            "cat /sys/class/net/gannet.vxlan/statistics/tx_packets",
        )
        .trim()
        .parse()
        .expect("a packet count")
    };
    let tx_before = vxlan_tx("node1");

    // pod → pod across the nodes
    let body = lab.ok("node1", &http_get("client", &format!("{server_ip} 8080")));
    assert!(
        body.ends_with("\r\n\r\nserver on node2\n"),
        "pod → pod across nodes: {body}"
    );

    // pod → ClusterIP, its only endpoint on the other node: once node2 reported the pod's
    // address and node1's gannetd programmed the endpoint.
    let deadline = Instant::now() + PROGRAMMED;
    let body = loop {
        let out = lab.exec("node1", &http_get("client", "10.96.0.50 80"));
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "pod → ClusterIP 10.96.0.50 still fails after {PROGRAMMED:?}: {}\nendpoints: {}",
            String::from_utf8_lossy(&out.stderr),
            lab.ok("node1", "gannetctl get endpointslices")
        );
        thread::sleep(Duration::from_secs(1));
    };
    assert!(
        body.ends_with("\r\n\r\nserver on node2\n"),
        "pod → ClusterIP across nodes: {body}"
    );
    let tx_after = vxlan_tx("node1");
    assert!(
        tx_after > tx_before,
        "node1 sent the pod's packets through gannet.vxlan ({tx_before} → {tx_after})"
    );

    // A Service without endpoints is refused at once (the socket load balancer's answer).
    let refused = lab.exec(
        "node1",
        &format!("{} 2>&1", http_get("client", "10.96.0.51 80")),
    );
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(
        !refused.status.success() && text.contains("refused"),
        "a Service without endpoints refused: {} {text}",
        refused.status
    );

    let out = lab.cmd().arg("down").output().expect("gannet-lab down");
    assert!(out.status.success(), "down: {out:?}");
    assert_gone(&netns, &lab.dir, &["node1", "node2"]);
    eprintln!("up to down took {:.1} s", started.elapsed().as_secs_f64());

    // A lab whose owner is gone is left behind: the next `down`, of another directory, removes it.
    let orphan = Lab {
        dir: lab_dir("lab-orphan"),
    };
    let out = orphan
        .cmd()
        .args(["up", "--nodes", "1", "--overlay", "off", "--owner-pid"])
        .arg(owner.0.id().to_string())
        .output()
        .expect("gannet-lab up");
    assert!(out.status.success(), "up of a second lab: {out:?}");
    let orphan_netns = orphan.state()["netns"]
        .as_str()
        .expect("lab.json names its namespace")
        .to_owned();
    assert_eq!(
        qemus_of(&orphan_netns).len(),
        1,
        "the second lab's guest runs"
    );
    drop(owner);
    let out = lab.cmd().arg("down").output().expect("gannet-lab down");
    assert!(out.status.success(), "down of an empty directory: {out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("removing {orphan_netns}, left behind")),
        "down names the lab it removed: {said}"
    );
    assert_gone(&orphan_netns, &orphan.dir, &["node1"]);
    eprintln!(
        "the smoke test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The consoles and logs were kept for a failure; this run passed.
    let _ = fs::remove_dir_all(&lab.dir);
    let _ = fs::remove_dir_all(&orphan.dir);
}

/// Bad flags are refused before anything is made, each one named, with status 64; `exec` on a
/// directory without a lab says so.
#[test]
fn bad_flags_are_named_and_nothing_is_made() {
    let dir = lab_dir("lab-flags");
    let out = Command::new(LAB)
        .arg("--dir")
        .arg(&dir)
        .args([
            "up",
            "--nodes",
            "0",
            "--overlay",
            "bogus",
            "--memory",
            "10",
            "--cpus",
            "0",
        ])
        .output()
        .expect("running gannet-lab up");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "status of bad flags: {said}");
    for flag in ["--nodes 0", "--overlay bogus", "--memory 10", "--cpus 0"] {
        assert!(said.contains(flag), "the error names {flag}: {said}");
    }
    assert!(!dir.exists(), "a refused up made {}", dir.display());

    let out = Command::new(LAB)
        .arg("--dir")
        .arg(&dir)
        .args([
            "bench",
            "--variants",
            "direct,calico,direct",
            "--rounds",
            "0",
            "--udp-mbps",
            "0",
        ])
        .output()
        .expect("running gannet-lab bench");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "status of bad flags: {said}");
    for flag in [
        "--variants calico",
        "direct is given twice",
        "--rounds 0",
        "--udp-mbps 0",
    ] {
        assert!(said.contains(flag), "the error names {flag}: {said}");
    }
    assert!(!dir.exists(), "a refused bench made {}", dir.display());

    let out = Command::new(LAB)
        .arg("--dir")
        .arg(&dir)
        .args(["exec", "node1", "--", "true"])
        .output()
        .expect("running gannet-lab exec");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("no lab in"),
        "exec without a lab: {} {said}",
        out.status
    );
}
