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

/// Pods whose container exits: `Always` restarts it (at once, then after 10 s: the restart count
/// grows, `CrashLoopBackOff` with the last exit in between, the pod Running); `OnFailure` leaves
/// a clean exit alone (Succeeded); `Never` leaves a failure alone (Failed).
#[test]
fn exited_containers_follow_the_pods_restart_policy() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbrestart");
    let KubeletNode { agent, plane, .. } = &kubelet;
    let pod = |name: &str, policy: &str, exit: i32| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: test-node\n  \
             restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - {{name: app, image: {BUSYBOX_IMAGE}, command: [/bin/sh, -c, 'sleep 1; exit {exit}']}}\n"
        )
    };
    plane.apply(&pod("crashing", "Always", 3)).unwrap();
    plane.apply(&pod("done", "OnFailure", 0)).unwrap();
    plane.apply(&pod("failed", "Never", 3)).unwrap();
    let diagnose = |name: &str| {
        format!(
            "pod {name}: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", name)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let app = |pod: &Value| pod["status"]["containerStatuses"][0].clone();
    // Restarted at once after the first exit, then backed off for 10 s.
    let backing_off = wait(
        "crashing to back off after its first restart",
        START + Duration::from_secs(30),
        || diagnose("crashing"),
        || {
            let pod = plane.get_json("pod", "crashing").ok()?;
            (app(&pod)["state"]["waiting"]["reason"] == "CrashLoopBackOff").then_some(pod)
        },
    );
    let status = app(&backing_off);
    assert_eq!(status["restartCount"], 1, "{backing_off}");
    assert_eq!(
        status["lastState"]["terminated"]["exitCode"], 3,
        "{backing_off}"
    );
    assert_eq!(backing_off["status"]["phase"], "Running", "{backing_off}");
    assert!(
        status["state"]["waiting"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("back-off 10s"),
        "{backing_off}"
    );
    wait(
        "crashing to be restarted a second time after its back-off",
        Duration::from_secs(40),
        || diagnose("crashing"),
        || {
            let pod = plane.get_json("pod", "crashing").ok()?;
            (app(&pod)["restartCount"].as_i64()? >= 2).then_some(())
        },
    );
    for (name, phase, code) in [("done", "Succeeded", 0), ("failed", "Failed", 3)] {
        let pod = wait(
            &format!("{name} to end {phase}"),
            START,
            || diagnose(name),
            || {
                let pod = plane.get_json("pod", name).ok()?;
                (pod["status"]["phase"] == phase).then_some(pod)
            },
        );
        let status = app(&pod);
        assert_eq!(status["restartCount"], 0, "{pod}");
        assert_eq!(status["state"]["terminated"]["exitCode"], code, "{pod}");
    }
    // Left as they are: no container of theirs was started again.
    std::thread::sleep(Duration::from_secs(3));
    for name in ["done", "failed"] {
        let pod = plane.get_json("pod", name).unwrap();
        assert_eq!(app(&pod)["restartCount"], 0, "{pod}");
    }
}

/// gannet-control's scheduler and a real kubelet node: gannetd registers its CPUs and memory as
/// allocatable (with the standard labels), a Pod without `spec.nodeName` is bound to it and runs,
/// and one asking for more CPU than the node has stays Pending with kube-scheduler's reason.
#[test]
fn a_pod_without_a_node_is_scheduled_onto_the_kubelet_node_and_runs() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbsched");
    let KubeletNode { agent, plane, .. } = &kubelet;
    let registered = plane.get_json("node", "test-node").unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        registered["status"]["allocatable"]["cpu"],
        cpus.to_string(),
        "{registered}"
    );
    assert!(
        registered["status"]["capacity"]["memory"]
            .as_str()
            .is_some_and(|m| m.ends_with("Ki")),
        "{registered}"
    );
    assert_eq!(
        registered["metadata"]["labels"]["kubernetes.io/os"], "linux",
        "{registered}"
    );
    let pod = |name: &str, cpu: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n  \
             - {{name: app, image: {BUSYBOX_IMAGE}, command: [/bin/busybox, sleep, '3600'], \
             resources: {{requests: {{cpu: '{cpu}', memory: 16Mi}}}}}}\n"
        )
    };
    plane.apply(&pod("placed", "100m")).unwrap();
    plane.apply(&pod("too-big", "1000")).unwrap();
    let diagnose = |name: &str| {
        format!(
            "pod {name}: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", name)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let running = wait(
        "placed to be scheduled and run",
        START,
        || diagnose("placed"),
        || {
            let pod = plane.get_json("pod", "placed").ok()?;
            (pod["status"]["phase"] == "Running").then_some(pod)
        },
    );
    assert_eq!(running["spec"]["nodeName"], "test-node", "{running}");
    assert_eq!(condition(&running, "PodScheduled"), "True", "{running}");
    let pending = wait(
        "too-big to be found unschedulable",
        START,
        || diagnose("too-big"),
        || {
            let pod = plane.get_json("pod", "too-big").ok()?;
            (condition(&pod, "PodScheduled") == "False").then_some(pod)
        },
    );
    let scheduled = pending["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(scheduled["reason"], "Unschedulable", "{pending}");
    assert_eq!(
        scheduled["message"], "0/1 nodes are available: 1 Insufficient cpu.",
        "{pending}"
    );
    assert_eq!(pending["spec"]["nodeName"], Value::Null, "{pending}");
    assert_eq!(pending["status"]["phase"], "Pending", "{pending}");
    let described = plane.ctl(&["describe", "pod", "too-big"], None).unwrap();
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        described.contains(
            "PodScheduled  False  Unschedulable  0/1 nodes are available: 1 Insufficient cpu."
        ),
        "gannetctl describe pod shows why: {described}"
    );
    let described = plane.ctl(&["describe", "node", "test-node"], None).unwrap();
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("Allocatable:") && l.ends_with(&format!("cpu: {cpus}"))),
        "gannetctl describe node shows the allocatable CPUs: {described}"
    );
    let wide = plane.ctl(&["get", "pods", "-o", "wide"], None).unwrap();
    let wide = String::from_utf8_lossy(&wide.stdout).into_owned();
    let row = wide
        .lines()
        .find(|l| l.starts_with("placed"))
        .unwrap_or_else(|| panic!("placed is listed: {wide}"));
    assert!(
        row.split_whitespace().any(|c| c == "test-node"),
        "gannetctl get pods -o wide shows the node: {wide}"
    );
}

/// Readiness probes: a pod whose containers run is Ready only once each container's probe
/// passed (httpGet on busybox's httpd, tcpSocket on an `nc` listener, exec of a file test that
/// turns true after a few seconds), and its Service's endpoint turns ready with it; gannet-cni's
/// registration (addresses as soon as the sandbox has its network) does not make it Ready.
#[test]
fn a_pod_is_ready_and_an_endpoint_only_when_its_readiness_probes_pass() {
    if skip_reason().is_some() {
        return;
    }
    let node = Netns::new("kbready").unwrap();
    // An address of the node's own, as a real node has on its uplink: the probes' source.
    node.ip(&["addr", "add", "192.0.2.10/32", "dev", "lo"])
        .unwrap();
    let cgroup = Cgroup::new().unwrap();
    let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"]).unwrap();
    let containerd = Containerd::start(&node).unwrap();
    let (agent, _) = start_kubelet(&node, &cgroup, &plane, &containerd);
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: probed}}\nspec:\n  selector: {{app: probed}}\n  \
         ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: probed, labels: {{app: probed}}}}\nspec:\n  \
         nodeName: test-node\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
         - name: http\n    image: {BUSYBOX_IMAGE}\n    \
         command: [/bin/sh, -c, 'mkdir -p /www && echo ok >/www/healthz && exec /bin/busybox httpd -f -p 8080 -h /www']\n    \
         ports: [{{name: http, containerPort: 8080}}]\n    \
         readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}\n  \
         - name: tcp\n    image: {BUSYBOX_IMAGE}\n    \
         command: [/bin/busybox, nc, -ll, -p, '9090', -e, /bin/true]\n    \
         readinessProbe: {{tcpSocket: {{port: 9090}}, periodSeconds: 1}}\n  \
         - name: exec\n    image: {BUSYBOX_IMAGE}\n    \
         command: [/bin/sh, -c, 'sleep 6; touch /tmp/ready; exec sleep 3600']\n    \
         readinessProbe: {{exec: {{command: [/bin/busybox, test, -f, /tmp/ready]}}, periodSeconds: 1}}\n"
    );
    plane.apply(&manifest).unwrap();
    let diagnose = || {
        format!(
            "node: {}{}\npod probed: {}\nslices: {}\n--- gannetd:\n{}",
            node.ip(&["-4", "addr"]).unwrap_or_default(),
            node.ip(&["-4", "route"]).unwrap_or_default(),
            plane
                .get_json("pod", "probed")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            plane
                .ctl(&["get", "endpointslices", "-o", "json"], None)
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let ready_of = |pod: &Value, name: &str| -> Option<bool> {
        pod["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)?["ready"]
            .as_bool()
    };
    // httpGet and tcpSocket pass while the exec probe's file is not there yet: running, with an
    // address, not Ready, and its endpoint not ready.
    let waiting = wait(
        "the http and tcp containers to be ready, the exec one not yet",
        START,
        diagnose,
        || {
            let pod = plane.get_json("pod", "probed").ok()?;
            (ready_of(&pod, "http")? && ready_of(&pod, "tcp")? && !ready_of(&pod, "exec")?)
                .then_some(pod)
        },
    );
    assert_eq!(waiting["status"]["phase"], "Running", "{waiting}");
    assert_eq!(condition(&waiting, "Ready"), "False", "{waiting}");
    assert!(waiting["status"]["podIP"].is_string(), "{waiting}");
    let pod_ip = waiting["status"]["podIP"].as_str().unwrap().to_owned();
    let endpoint_ready = || -> Option<bool> {
        let out = plane
            .ctl(&["get", "endpointslices", "-o", "json"], None)
            .ok()?;
        let slices: Value = serde_json::from_slice(&out.stdout).ok()?;
        let items = slices["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .find(|e| e["addresses"][0] == pod_ip.as_str())
            .map(|e| e["conditions"]["ready"] == true)
    };
    assert_ne!(
        endpoint_ready(),
        Some(true),
        "an unready pod is no ready endpoint\n{}",
        diagnose()
    );
    // The exec probe's file appears: Ready, and a ready endpoint.
    let ready = wait("the pod to be Ready", START, diagnose, || {
        let pod = plane.get_json("pod", "probed").ok()?;
        (condition(&pod, "Ready") == "True").then_some(pod)
    });
    assert_eq!(condition(&ready, "ContainersReady"), "True", "{ready}");
    wait("its endpoint to be ready", START, diagnose, || {
        endpoint_ready().filter(|r| *r).map(|_| ())
    });
}

/// Liveness and startup probes: a container whose exec liveness probe starts failing (its file
/// is removed a few seconds after each start) is killed with the probe's grace period and
/// restarted, again and again (each new container passes its startup probe afresh), the pod
/// Running throughout; a container whose startup probe never passes is killed and restarted,
/// never started nor Ready, and its liveness probe (which would fail) and readiness probe (which
/// would pass) are never run.
#[test]
fn failing_liveness_and_startup_probes_kill_and_restart_the_container() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kblive");
    let KubeletNode { agent, plane, .. } = &kubelet;
    let alive_test = "exec: {command: [/bin/busybox, test, -f, /tmp/alive]}, periodSeconds: 1";
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: alive}}\nspec:\n  nodeName: test-node\n  \
         terminationGracePeriodSeconds: 30\n  containers:\n  \
         - name: app\n    image: {BUSYBOX_IMAGE}\n    \
         command: [/bin/sh, -c, 'touch /tmp/alive; sleep 4; rm /tmp/alive; exec sleep 3600']\n    \
         startupProbe: {{{alive_test}, failureThreshold: 5}}\n    \
         livenessProbe: {{{alive_test}, failureThreshold: 2, terminationGracePeriodSeconds: 1}}\n\
         ---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: never}}\nspec:\n  nodeName: test-node\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  \
         - name: app\n    image: {BUSYBOX_IMAGE}\n    command: [/bin/busybox, sleep, '3600']\n    \
         startupProbe: {{exec: {{command: [/bin/busybox, test, -f, /tmp/never]}}, periodSeconds: 1, failureThreshold: 2}}\n    \
         livenessProbe: {{exec: {{command: [/bin/busybox, 'false']}}, periodSeconds: 1, failureThreshold: 1}}\n    \
         readinessProbe: {{exec: {{command: [/bin/busybox, 'true']}}, periodSeconds: 1}}\n"
    );
    plane.apply(&manifest).unwrap();
    let diagnose = || {
        let pod = |name| {
            plane
                .get_json("pod", name)
                .map(|p| p.to_string())
                .unwrap_or_default()
        };
        format!(
            "pod alive: {}\npod never: {}\n--- gannetd:\n{}",
            pod("alive"),
            pod("never"),
            agent.logs()
        )
    };
    let app = |pod: &Value| pod["status"]["containerStatuses"][0].clone();
    // Every look at the pod whose startup probe never passes: never started, never Ready.
    let mut never_seen = 0;
    let mut check_never = || {
        if let Ok(pod) = plane.get_json("pod", "never") {
            assert_ne!(condition(&pod, "Ready"), "True", "{pod}");
            assert_ne!(app(&pod)["started"], true, "{pod}");
            assert_ne!(app(&pod)["ready"], true, "{pod}");
            never_seen += 1;
        }
    };
    // The liveness pod's first container passes its startup probe: started and ready.
    wait("alive to start and be ready", START, diagnose, || {
        check_never();
        let pod = plane.get_json("pod", "alive").ok()?;
        (app(&pod)["started"] == true && app(&pod)["ready"] == true).then_some(())
    });
    // Its file goes: killed, restarted at once; the next container's goes too: killed and, after
    // the back-off, restarted.
    let restarted = wait(
        "alive to be restarted twice by its liveness probe",
        START + Duration::from_secs(60),
        diagnose,
        || {
            check_never();
            let pod = plane.get_json("pod", "alive").ok()?;
            (app(&pod)["restartCount"].as_i64()? >= 2).then_some(pod)
        },
    );
    assert_eq!(restarted["status"]["phase"], "Running", "{restarted}");
    // Running again, it shows the attempt the probe killed as its last state.
    wait(
        "alive to run again with its killed attempt as lastState",
        Duration::from_secs(60),
        diagnose,
        || {
            check_never();
            let pod = plane.get_json("pod", "alive").ok()?;
            let app = app(&pod);
            (app["state"]["running"].is_object()
                && app["lastState"]["terminated"]["exitCode"].is_i64()
                && app["lastState"]["terminated"]["containerID"] != app["containerID"])
                .then_some(())
        },
    );
    let logs = agent.logs();
    let kills: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("Killing: container app failed its liveness probe"))
        .filter(|l| l.contains("default/alive"))
        .collect();
    assert!(
        kills.len() >= 2,
        "two liveness kills of alive logged\n{}",
        diagnose()
    );
    assert!(
        kills
            .iter()
            .all(|l| l.contains("grace_seconds=1") && l.contains("exec probe exited with 1")),
        "the kills name the probe's grace period and failure: {kills:#?}"
    );
    // The startup probe that never passes: killed and restarted, still never Ready.
    let never = wait(
        "never to be restarted by its startup probe",
        START,
        diagnose,
        || {
            check_never();
            let pod = plane.get_json("pod", "never").ok()?;
            (app(&pod)["restartCount"].as_i64()? >= 1).then_some(pod)
        },
    );
    assert_eq!(never["status"]["phase"], "Running", "{never}");
    assert!(never_seen > 0, "pod never was never read\n{}", diagnose());
    let logs = agent.logs();
    let never_lines = |needle: &str| {
        logs.lines()
            .filter(|l| l.contains(needle) && l.contains("default/never"))
            .count()
    };
    assert!(
        never_lines("Killing: container app failed its startup probe") >= 1,
        "never's startup kill logged\n{}",
        diagnose()
    );
    assert_eq!(
        never_lines("liveness") + never_lines("readiness"),
        0,
        "never's liveness and readiness probes ran before it started\n{}",
        diagnose()
    );
}

/// Apply → sandbox and container run → Running with the sandbox's IP → endpoint of its Service
/// → a client reaches it through the ClusterIP; a missing image is reported; gannetd SIGKILL +
/// restart adopts the running pod; delete → its containers, veth and IPAM record are gone; a
/// delete with a grace period ends with gannetd removing the stopped Pod.
#[test]
fn pods_bound_to_the_node_run_in_containerd_and_serve_their_service() {
    if skip_reason().is_some() {
        return;
    }
    let node = Netns::new("kbnode").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"]).unwrap();
    let containerd = Containerd::start(&node).unwrap();
    let runtime = containerd.address();
    let parent = containerd.cgroup_parent();
    let (mut agent, busybox) = start_kubelet(&node, &cgroup, &plane, &containerd);
    // Importing again (every blob already there, the image already named) is no error.
    assert_eq!(import(&busybox, &runtime).trim(), BUSYBOX_IMAGE);

    let diagnose = || {
        format!(
            "pod web-1: {}\n--- gannetd:\n{}\n--- containerd:\n{}",
            plane
                .get_json("pod", "web-1")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs(),
            containerd.logs()
        )
    };
    plane.apply(WEB).unwrap();
    let vip = plane.get_json("service", "web").unwrap()["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP")
        .to_owned();
    let pod = wait("web-1 to run and be ready", START, diagnose, || {
        let pod = plane.get_json("pod", "web-1").ok()?;
        // gannet-cni's registration reports the address (and Ready) as soon as the sandbox
        // has its network: wait for the worker's container status.
        (pod["status"]["phase"] == "Running"
            && condition(&pod, "Ready") == "True"
            && pod["status"]["podIP"].is_string()
            && pod["status"]["containerStatuses"][0]["state"]["running"].is_object())
        .then_some(pod)
    });
    let web_ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["name"], "web", "{pod}");
    assert!(status["state"]["running"].is_object(), "{pod}");
    assert_eq!(condition(&pod, "ContainersReady"), "True", "{pod}");
    let container_id = status["containerID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(container_id.starts_with("containerd://"), "{pod}");
    let lease = plane.get_json("node", "test-node").unwrap();
    let prefix = lease["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .trim_end_matches(".0/24")
        .to_owned();
    assert!(
        web_ip.starts_with(&format!("{prefix}.")),
        "the pod's address {web_ip} comes from the node's lease ({prefix}.0/24)"
    );
    let record = files_named(&containerd.ipam_dir(), &web_ip);
    assert_eq!(record.len(), 1, "gannet-cni's IPAM record of {web_ip}");
    let web_veths = veths(&node);
    assert_eq!(web_veths.len(), 1, "web-1's host veth: {web_veths:?}");
    let containers = containerd.container_ids().unwrap();
    assert_eq!(
        containers.len(),
        2,
        "the sandbox's pause container and web: {containers:?}"
    );

    eventually("web-1 to be an endpoint of web", START, || {
        let out = plane.ctl(&["get", "endpointslices"], None).ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains(&web_ip)
            .then_some(())
    });

    // A client pod of the test's own, wired by gannet-cni (the same IPAM records), reaches the
    // container through the ClusterIP.
    let client = Netns::new("kbcli").unwrap();
    let conf = containerd.plugin_conf(&agent.cni_socket(), &agent.subnet_file());
    let _client_ip = pod_ip(&cni(&node, &client, "ADD", "client", &conf));
    // gannet-probe sends a line and reads the reply line: the container's `nc` answers each
    // connection with its script's output.
    let probe = |to: &str, count: u64| {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(["--timeout-ms", "1000", "tcp", "--to", to, "--count"])
            .arg(count.to_string());
        let output = run_in(cmd, Some(&client), Some(&cgroup), CMD_TIMEOUT).expect("gannet-probe");
        parse_json_output(&output).expect("probe report")
    };
    let to_vip = format!("{vip}:80");
    let report = wait(
        "the ClusterIP to answer with web-1's greeting",
        START,
        || {
            format!(
                "{:?}\n{:?}\n{}\n{}",
                probe(&to_vip, 1),
                probe(&format!("{web_ip}:8080"), 1),
                inside_pod("nc -ll"),
                diagnose()
            )
        },
        || Some(probe(&to_vip, 5)).filter(|r: &Report| r.ok == 5),
    );
    let fetch = || probe(&to_vip, 1).backends.into_keys().next();
    assert_eq!(
        report.backend_count("hello-from-web-1 from /tmp"),
        5,
        "command, args, env and workingDir reach the container: {report:?}"
    );

    // The container runs below the cgroup gannetd was given (--pod-cgroup-parent).
    let server = find_process("nc -ll -p 8080").expect("the container's nc runs");
    let cgroups = std::fs::read_to_string(format!("/proc/{server}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("{parent}/")),
        "the container's cgroups are below {parent}: {cgroups}"
    );

    // A pod whose image is not on the node: reported, not retried in a loop, gannetd unharmed.
    plane.apply(MISSING).unwrap();
    let missing = eventually("missing-1 to report its image", START, || {
        let pod = plane.get_json("pod", "missing-1").ok()?;
        let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        (waiting["reason"] == "ErrImageNeverPull").then(|| pod.clone())
    });
    let message = missing["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("gannet.test/not-imported:7"),
        "the message names the image: {missing}"
    );
    assert_eq!(missing["status"]["phase"], "Pending", "{missing}");
    assert_eq!(condition(&missing, "Ready"), "False", "{missing}");

    // gannetd killed and started again: it adopts the sandboxes and the container that run.
    let before = containerd.container_ids().unwrap();
    agent.stop(libc::SIGKILL).unwrap();
    agent.restart().unwrap();
    agent.wait_log("container runtime connected", 1).unwrap();
    // Several resyncs of every pod worker.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        containerd.container_ids().unwrap(),
        before,
        "after the restart the same sandboxes and containers run, none added"
    );
    let pod = plane.get_json("pod", "web-1").unwrap();
    assert_eq!(
        pod["status"]["containerStatuses"][0]["containerID"], container_id,
        "{pod}"
    );
    wait(
        "web-1 to answer through the ClusterIP after the restart",
        Duration::from_secs(10),
        || format!("{:?}\n{}", probe(&to_vip, 1), agent.logs()),
        || (fetch().as_deref() == Some("hello-from-web-1 from /tmp")).then_some(()),
    );

    // Deleted: its containers and sandbox go, and with them its veth and its address.
    let deleted = plane.ctl(&["delete", "pod", "web-1"], None).unwrap();
    assert!(deleted.status.success(), "gannetctl delete: {deleted:?}");
    eventually("web-1's containers to be removed", START, || {
        let ids = containerd.container_ids().ok()?;
        (ids.len() + 2 == before.len()).then_some(())
    });
    eventually("web-1's IPAM record to be released", START, || {
        files_named(&containerd.ipam_dir(), &web_ip)
            .is_empty()
            .then_some(())
    });
    let now = veths(&node);
    assert!(
        web_veths.is_disjoint(&now),
        "web-1's host veth {web_veths:?} is gone: now {now:?}"
    );
    assert!(
        plane.get_json("pod", "web-1").is_err(),
        "web-1 is gone from the control plane"
    );
    let logs = agent.logs();
    assert_eq!(
        logs.matches("sandbox running").count(),
        2,
        "one sandbox for web-1 and one for missing-1, never a second: {logs}"
    );

    // Deleted with a grace period: terminating, its sandbox removed, then gannetd removes the
    // Pod (the control plane alone would keep it for the whole 120 s).
    let deleted = plane
        .ctl(
            &["delete", "pod", "missing-1", "--grace-period", "120"],
            None,
        )
        .unwrap();
    assert!(deleted.status.success(), "gannetctl delete: {deleted:?}");
    wait(
        "missing-1 to be stopped and removed",
        Duration::from_secs(60),
        || format!("{:?}\n{}", containerd.container_ids(), agent.logs()),
        || {
            let gone = plane.get_json("pod", "missing-1").is_err();
            let ids = containerd.container_ids().ok()?;
            (gone && ids.is_empty()).then_some(())
        },
    );
    assert!(
        agent.logs().contains("terminated pod removed"),
        "gannetd removed the terminated pod"
    );
    cni(&node, &client, "DEL", "client", &conf);
}

/// A runtime that is not there stops gannetd at start with an error naming the flag.
#[test]
fn an_unreachable_container_runtime_stops_gannetd_naming_the_flag() {
    let node = Netns::new("kbbad").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let plane = ControlPlane::start(&[]).unwrap();
    let socket = std::env::temp_dir().join(gannet_testkit::unique_name("no-runtime"));
    let address = format!("unix://{}", socket.display());
    let started = Agent::start_with_control(
        Some(&node),
        &cgroup,
        &plane.addr(),
        &["--container-runtime", &address],
    );
    let Err(error) = started else {
        panic!("gannetd must not start without its runtime");
    };
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!("--container-runtime {address}: cannot connect")),
        "the error names the flag and the socket: {text}"
    );
}

/// A test that panics while a pod runs leaves nothing behind: containerd, its shims and the
/// containers are killed, the pods' cgroups and containerd's temp dir removed.
#[test]
fn a_panicking_kubelet_test_leaves_no_runtime_state_behind() {
    if skip_reason().is_some() {
        return;
    }
    let seen = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let node = Netns::new("kbpanic").unwrap();
        let cgroup = Cgroup::new().unwrap();
        let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"]).unwrap();
        let containerd = Containerd::start(&node).unwrap();
        let runtime = containerd.address();
        let parent = containerd.cgroup_parent();
        let mut agent = Agent::start_with_control(
            Some(&node),
            &cgroup,
            &plane.addr(),
            &[
                "--container-runtime",
                &runtime,
                "--pod-cgroup-parent",
                &parent,
            ],
        )
        .unwrap();
        agent.wait_log("subnet file written", 1).unwrap();
        containerd
            .use_agent(&agent.cni_socket(), &agent.subnet_file())
            .unwrap();
        for (name, entrypoint) in [
            (PAUSE_IMAGE, &["/bin/busybox", "sleep", "2147483647"][..]),
            (BUSYBOX_IMAGE, &["/bin/sh"][..]),
        ] {
            let archive = containerd.busybox_archive(name, entrypoint).unwrap();
            import(&archive, &runtime);
        }
        plane
            .apply(
                "apiVersion: v1
kind: Pod
metadata:
  name: doomed
spec:
  nodeName: test-node
  containers:
  - name: app
    image: gannet.test/busybox:1
    command: [/bin/busybox, sleep, '31337']
",
            )
            .unwrap();
        let container = eventually("the doomed pod's container to run", START, || {
            find_process("sleep 31337")
        });
        let daemon = find_process(&format!(
            "{}",
            Path::new(runtime.trim_start_matches("unix://"))
                .with_file_name("config.toml")
                .display()
        ))
        .expect("containerd runs");
        *seen.lock().unwrap() = Some((
            container,
            daemon,
            Path::new(runtime.trim_start_matches("unix://"))
                .parent()
                .unwrap()
                .to_owned(),
            parent,
        ));
        panic!("deliberate panic with a pod running (this message is expected)");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");
    let (container, daemon, dir, parent) = seen
        .into_inner()
        .unwrap()
        .expect("the pod ran before the panic");
    for pid in [container, daemon] {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie_or_gone = state
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z'));
        assert!(zombie_or_gone, "process {pid} survived the panic: {state}");
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
    let leftovers: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|hierarchy| hierarchy.path().join(parent.trim_start_matches('/')))
        .filter(|path| path.exists())
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        leftovers.is_empty(),
        "the pods' cgroups survived: {leftovers:?}"
    );
}

/// `gannetctl logs` reads what the containers wrote from the runtime's log files in gannetd's
/// `--state-dir`: a container's current and previous attempt (`-p`), `--tail`, `--timestamps`,
/// `-f` until the container ends; a pod with two containers needs `-c`. Run elsewhere (a
/// `--state-dir` without the pod), it gets the same from the node's gannetd through
/// gannet-control.
#[test]
fn gannetctl_logs_prints_what_a_container_wrote() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kblogs");
    let KubeletNode { agent, plane, .. } = &kubelet;
    plane
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: talker}}\nspec:\n  nodeName: test-node\n  \
             restartPolicy: OnFailure\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - name: counter\n    image: {BUSYBOX_IMAGE}\n    \
             command: [/bin/sh, -c, 'echo start; echo oops >&2; for i in 1 2 3; do echo line $i; done; sleep 1; exit 1']\n  \
             - name: ticker\n    image: {BUSYBOX_IMAGE}\n    \
             command: [/bin/sh, -c, 'echo one; sleep 5; echo two']\n"
        ))
        .unwrap();
    let state_dir = agent.state_dir().display().to_string();
    let logs_from = |dir: &str, args: &[&str]| {
        let mut all = vec!["logs", "talker", "--state-dir", dir];
        all.extend_from_slice(args);
        plane.ctl(&all, None).unwrap()
    };
    let logs = |args: &[&str]| logs_from(&state_dir, args);
    // Another machine: the pod's log files are not there.
    let elsewhere = |args: &[&str]| logs_from("/nonexistent/gannet-state", args);
    let diagnose = || {
        format!(
            "pod talker: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", "talker")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let status = |pod: &Value, name: &str| {
        pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_default()
    };
    wait("ticker to run", START, diagnose, || {
        let pod = plane.get_json("pod", "talker").ok()?;
        status(&pod, "ticker")["state"]["running"]
            .is_object()
            .then_some(())
    });
    // Follows the ticker from its first line to its end, here and through gannet-control.
    let follower = Command::new(bin_path("gannetctl"))
        .args([
            "--server",
            &plane.addr(),
            "logs",
            "talker",
            "-c",
            "ticker",
            "-f",
        ])
        .args(["--state-dir", "/nonexistent/gannet-state"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = logs(&["-c", "ticker", "-f"]);
    let followed_elsewhere = follower.wait_with_output().unwrap();
    for followed in [followed, followed_elsewhere] {
        assert!(followed.status.success(), "logs -f: {followed:?}");
        assert_eq!(String::from_utf8_lossy(&followed.stdout), "one\ntwo\n");
    }

    let two = logs(&[]);
    assert!(!two.status.success(), "logs without -c: {two:?}");
    let stderr = String::from_utf8_lossy(&two.stderr);
    assert!(
        stderr.contains("choose one of: counter, ticker"),
        "{stderr}"
    );
    wait("counter to be restarted", START, diagnose, || {
        let pod = plane.get_json("pod", "talker").ok()?;
        (status(&pod, "counter")["restartCount"].as_i64()? >= 1).then_some(())
    });
    let previous = logs(&["-c", "counter", "-p"]);
    assert!(previous.status.success(), "logs -p: {previous:?}");
    // Both streams, each in order (the runtime reads them from two pipes: no order between).
    let previous = String::from_utf8_lossy(&previous.stdout).into_owned();
    let stdout: Vec<&str> = previous.lines().filter(|l| *l != "oops").collect();
    assert_eq!(
        stdout,
        ["start", "line 1", "line 2", "line 3"],
        "{previous}"
    );
    assert_eq!(
        previous.lines().filter(|l| *l == "oops").count(),
        1,
        "{previous}"
    );
    assert_eq!(
        String::from_utf8_lossy(&elsewhere(&["-c", "counter", "-p"]).stdout),
        previous,
        "through gannet-control"
    );
    let tail = logs(&["-c", "counter", "-p", "--tail", "1", "--timestamps"]);
    let tail_elsewhere = elsewhere(&["-c", "counter", "-p", "--tail", "1", "--timestamps"]);
    assert_eq!(tail.stdout, tail_elsewhere.stdout, "{tail_elsewhere:?}");
    let tail = String::from_utf8_lossy(&tail.stdout).into_owned();
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 1, "{tail}");
    let (time, rest) = lines[0].split_once(' ').unwrap();
    assert!(time.starts_with("20") && time.ends_with('Z'), "{tail}");
    assert!(rest == "line 3" || rest == "oops", "{tail}");
    // The current attempt writes the same lines (read once it got to its last one).
    wait(
        "the counter's current attempt to log",
        START,
        diagnose,
        || {
            let out = logs(&["-c", "counter"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("line 3")
                .then_some(())
        },
    );
    let missing = logs(&["-c", "nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("container \"nope\" is not valid"),
        "{missing:?}"
    );
}

/// A container's environment as the kubelet makes it: `$(NAME)` references to earlier
/// variables, `fieldRef` (name, labels, node, the sandbox's address) and `resourceFieldRef`
/// (a limit with a divisor); a `secretKeyRef` (gannet-control serves no Secrets) leaves the
/// container waiting with `CreateContainerConfigError` naming the Secret.
#[test]
fn containers_get_their_environment_from_the_pod_and_its_resources() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbenv");
    let KubeletNode { agent, plane, .. } = &kubelet;
    plane
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: envy, labels: {{tier: front}}}}\nspec:\n  \
             nodeName: test-node\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - name: app\n    image: {BUSYBOX_IMAGE}\n    \
             command: [/bin/sh, -c, 'env | sort; exec sleep 3600']\n    \
             resources: {{limits: {{memory: 64Mi}}}}\n    env:\n    \
             - {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}\n    \
             - {{name: TIER, valueFrom: {{fieldRef: {{fieldPath: \"metadata.labels['tier']\"}}}}}}\n    \
             - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}\n    \
             - {{name: IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}\n    \
             - {{name: URL, value: 'http://$(IP):8080/$(POD)'}}\n    \
             - {{name: MEM_MIB, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}\n\
             ---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: secretive}}\nspec:\n  \
             nodeName: test-node\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - name: app\n    image: {BUSYBOX_IMAGE}\n    command: [/bin/busybox, sleep, '3600']\n    \
             env: [{{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: db, key: password}}}}}}]\n"
        ))
        .unwrap();
    let diagnose = || {
        format!(
            "pod envy: {}\npod secretive: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", "envy")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            plane
                .get_json("pod", "secretive")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let state_dir = agent.state_dir().display().to_string();
    let (ip, env) = wait(
        "envy to run and write its environment",
        START,
        diagnose,
        || {
            let pod = plane.get_json("pod", "envy").ok()?;
            let ip = pod["status"]["podIP"].as_str()?.to_owned();
            let out = plane
                .ctl(&["logs", "envy", "--state-dir", &state_dir], None)
                .ok()?;
            let env = String::from_utf8_lossy(&out.stdout).into_owned();
            env.contains("URL=").then_some((ip, env))
        },
    );
    for line in [
        "POD=envy".to_owned(),
        "TIER=front".to_owned(),
        "NODE=test-node".to_owned(),
        format!("IP={ip}"),
        format!("URL=http://{ip}:8080/envy"),
        "MEM_MIB=64".to_owned(),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in\n{env}");
    }
    let waiting = wait("secretive to wait for its Secret", START, diagnose, || {
        let pod = plane.get_json("pod", "secretive").ok()?;
        let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerConfigError").then_some(waiting)
    });
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("secret \"db\" not found")),
        "{waiting}"
    );
}

/// `gannetctl image import FILE --node NAME` sends an archive through gannet-control to the node's
/// gannetd, which imports it into its runtime: a pod of that image then runs there, and its log
/// is read back through gannet-control. A node that is not attached, and a file that is not an
/// archive, are refused with their names.
#[test]
fn gannetctl_image_import_reaches_the_node_through_the_control_plane() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbimage");
    let KubeletNode {
        agent,
        plane,
        containerd,
        ..
    } = &kubelet;
    let image = "gannet.test/imported:2";
    let archive = containerd
        .busybox_archive(image, &["/bin/sh", "-c", "echo imported-ok; sleep 1"])
        .unwrap();
    let archive_text = archive.display().to_string();
    let imported = plane
        .ctl(
            &["image", "import", &archive_text, "--node", "test-node"],
            None,
        )
        .unwrap();
    assert!(imported.status.success(), "{imported:?}\n{}", agent.logs());
    assert_eq!(
        String::from_utf8_lossy(&imported.stdout),
        format!("test-node: imported {image} ({archive_text})\n")
    );
    plane
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: fresh}}\nspec:\n  nodeName: test-node\n  \
             restartPolicy: Never\n  containers:\n  - name: app\n    image: {image}\n"
        ))
        .unwrap();
    let diagnose = || {
        format!(
            "pod fresh: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", "fresh")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    wait(
        "the imported image's pod to succeed",
        START,
        diagnose,
        || {
            let pod = plane.get_json("pod", "fresh").ok()?;
            (pod["status"]["phase"] == "Succeeded").then_some(())
        },
    );
    let logs = plane
        .ctl(
            &["logs", "fresh", "--state-dir", "/nonexistent/gannet-state"],
            None,
        )
        .unwrap();
    assert!(logs.status.success(), "{logs:?}");
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "imported-ok\n",
        "{}",
        agent.logs()
    );

    let elsewhere = plane
        .ctl(
            &["image", "import", &archive_text, "--node", "no-such-node"],
            None,
        )
        .unwrap();
    assert!(!elsewhere.status.success());
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        stderr.contains("no-such-node") && stderr.contains("not connected"),
        "{stderr}"
    );
    let garbage = archive.with_file_name("garbage.tar");
    std::fs::write(&garbage, b"this is not a tar archive").unwrap();
    let garbage_text = garbage.display().to_string();
    let refused = plane
        .ctl(
            &["image", "import", &garbage_text, "--node", "test-node"],
            None,
        )
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&garbage_text) && !stderr.contains(".import-"),
        "the error names the administrator's file, not the node's copy: {stderr}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(agent.state_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".import-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "archives left on the node: {leftovers:?}"
    );
}
