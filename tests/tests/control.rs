//! gannetd with its services from gannet-control (`--control`), end to end: the real
//! gannet-control binary (embedded store, unix socket in a test directory), `gannetctl apply` of
//! unchanged Kubernetes YAML, gannetd's socket load balancer attached to a test cgroup, real
//! traffic from a client pod to backend pods.
//!
//! Nothing here touches the root network namespace or the root cgroup.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

use std::{process::Command, time::Duration};

use gannet_testkit::{
    Cgroup, ChildGuard, Netns, PodNet, ScratchDir,
    agent::Agent,
    bin_path,
    cni::{cni, pod_ip},
    control::ControlPlane,
    eventually,
    probe::{Report, parse_json_output},
    run_in, spawn, unique_name,
};
use serde_json::{Value, json};

const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the control plane stays away in the outage test, as the issue asks.
const OUTAGE: Duration = Duration::from_secs(60);

fn serve(netns: &Netns, name: &str) -> ChildGuard {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["serve", "--name", name, "--listen", "0.0.0.0:8080"]);
    let mut server = spawn(cmd, Some(netns), None).expect("starting a backend");
    server
        .wait_for_line("ready", Duration::from_secs(10))
        .expect("backend ready");
    server
}

fn probe(netns: &Netns, cgroup: &Cgroup, args: &[&str]) -> Report {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(args);
    let output = run_in(cmd, Some(netns), Some(cgroup), PROBE_TIMEOUT).expect("running the probe");
    parse_json_output(&output).expect("probe report")
}

/// A selector-less Service with a user-supplied EndpointSlice of `backends` (address, ready).
fn service_with_slice(backends: &[(String, bool)]) -> String {
    let endpoints: String = backends
        .iter()
        .map(|(ip, ready)| {
            format!("  - addresses: [\"{ip}\"]\n    conditions:\n      ready: {ready}\n")
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-manual
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
{endpoints}"
    )
}

#[test]
fn control_plane_services_are_balanced_and_survive_a_control_plane_outage() {
    let net = PodNet::new(3).expect("building the pod network");
    let _servers: Vec<ChildGuard> = (1..=2)
        .map(|i| serve(&net.pods()[i].netns, &format!("b{i}")))
        .collect();
    let backend = |i: usize| net.pods()[i].ipv4.to_string();
    let client = &net.pods()[0].netns;
    let cgroup = Cgroup::new().expect("creating the test cgroup");
    let mut plane = ControlPlane::start(&[]).expect("starting gannet-control");
    let mut agent =
        Agent::start_with_control(None, &cgroup, &plane.addr(), &[]).expect("starting gannetd");

    // The node registers, takes a pod-CIDR lease and writes the subnet file for gannet-cni.
    agent.wait_log("subnet file written", 1).unwrap();
    let subnet = std::fs::read_to_string(agent.subnet_file()).unwrap();
    let node = plane.get_json("node", "test-node").unwrap();
    let cidr = node["spec"]["podCIDR"]
        .as_str()
        .unwrap_or_else(|| panic!("the node has a pod CIDR: {node}"));
    let first = cidr.replace(".0/", ".1/");
    assert!(
        subnet.contains(&format!("FLANNEL_SUBNET={first}\n")),
        "the subnet file holds the lease {cidr}: {subnet}"
    );
    assert!(
        node["status"]["addresses"]
            .to_string()
            .contains("192.0.2.10"),
        "the node reports its --node-ip: {node}"
    );

    plane
        .apply(&service_with_slice(&[
            (backend(1), true),
            (backend(2), true),
        ]))
        .unwrap();
    agent.wait_log("services synced", 1).unwrap();
    let report = probe(
        client,
        &cgroup,
        &["tcp", "--to", "10.96.0.10:80", "--count", "60"],
    );
    assert_eq!(report.ok, 60, "through the ClusterIP: {report:?}");
    assert!(
        report.backend_count("b1") > 0 && report.backend_count("b2") > 0,
        "both backends serve: {report:?}"
    );

    // The control plane goes away for a minute while a client loops through the service.
    let loop_ms = (OUTAGE + Duration::from_secs(5)).as_millis().to_string();
    let mut looping = spawn(
        {
            let mut cmd = Command::new(bin_path("gannet-probe"));
            cmd.args([
                "loop",
                "--to",
                "10.96.0.10:80",
                "--duration-ms",
                &loop_ms,
                "--interval-ms",
                "20",
            ]);
            cmd
        },
        Some(client),
        Some(&cgroup),
    )
    .expect("starting the looping client");
    let stopped = std::time::Instant::now();
    plane.stop().unwrap();
    agent.wait_log("control plane unreachable", 1).unwrap();
    std::thread::sleep(OUTAGE);
    let during = probe(
        client,
        &cgroup,
        &["tcp", "--to", "10.96.0.10:80", "--count", "20"],
    );
    assert_eq!(
        during.ok, 20,
        "the last known state stays programmed while the control plane is away: {during:?}"
    );

    // Back again: the agent resumes its watch and catches up with a change made now.
    plane.restart().unwrap();
    let outage = stopped.elapsed();
    let synced = agent.log_count("services synced");
    plane
        .apply(&service_with_slice(&[
            (backend(1), false),
            (backend(2), true),
        ]))
        .unwrap();
    agent.wait_log("services synced", synced + 1).unwrap();
    assert!(
        agent.logs().contains("watching the control plane again"),
        "gannetd says it is back: {}",
        agent.logs()
    );
    // `away` measures the outage (with the watch's backoff, at most 30 s more), not the time
    // until the next change of its kind.
    for line in agent
        .logs()
        .lines()
        .filter(|l| l.contains("watching the control plane again"))
    {
        let away: f64 = line
            .split_once("away=")
            .and_then(|(_, rest)| rest.split_once('s'))
            .and_then(|(seconds, _)| seconds.parse().ok())
            .unwrap_or_else(|| panic!("away=SECONDSs in {line}"));
        assert!(
            away <= outage.as_secs_f64() + 30.0 && !line.contains("Some("),
            "the outage lasted {outage:?}: {line}"
        );
    }
    let after = probe(
        client,
        &cgroup,
        &["tcp", "--to", "10.96.0.10:80", "--count", "30"],
    );
    assert_eq!(
        (after.ok, after.backend_count("b2")),
        (30, 30),
        "after the outage the agent caught up (b1 not ready): {after:?}"
    );

    let output = looping.wait_output(Duration::from_secs(60)).unwrap();
    let looped: Report = parse_json_output(&output).unwrap();
    assert!(
        looped.ok > 500,
        "the client kept making requests during the outage: {looped:?}"
    );
    assert_eq!(
        looped.failed, 0,
        "no request fails while the control plane is away: {looped:?}"
    );
}

#[test]
fn a_pod_wired_by_gannet_cni_becomes_a_service_endpoint() {
    let node = Netns::new("cpnode").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"]).unwrap();
    let mut agent = Agent::start_with_control(Some(&node), &cgroup, &plane.addr(), &[]).unwrap();
    agent.wait_log("subnet file written", 1).unwrap();

    let ipam_dir = std::env::temp_dir().join(unique_name("gannet-ipam"));
    // No ranges: gannet-cni allocates from the lease gannetd wrote.
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "gannet-control-e2e",
        "type": "gannet-cni",
        "subnetFile": agent.subnet_file(),
        "agentSocket": agent.cni_socket(),
        "ipam": {"type": "gannet", "dataDir": ipam_dir},
    });
    plane
        .apply(
            "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels:
    app: web
spec:
  nodeName: test-node
  containers:
  - name: web
    image: busybox
    ports:
    - name: http
      containerPort: 8080
",
        )
        .unwrap();
    let service = plane.get_json("service", "web").unwrap();
    let vip = service["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_else(|| panic!("a ClusterIP was allocated: {service}"))
        .to_owned();
    let to_vip = format!("{vip}:80");

    let web = Netns::new("cpweb").unwrap();
    let client = Netns::new("cpcli").unwrap();
    let web_ip = pod_ip(&cni(&node, &web, "ADD", "web-1", &conf));
    let lease: Value = plane.get_json("node", "test-node").unwrap();
    let cidr = lease["spec"]["podCIDR"].as_str().unwrap().to_owned();
    let prefix = cidr.trim_end_matches(".0/24");
    assert!(
        web_ip.starts_with(&format!("{prefix}.")),
        "the pod's address {web_ip} comes from the node's lease {cidr}"
    );
    let _server = serve(&web, "web-1");
    let _client_ip = pod_ip(&cni(&node, &client, "ADD", "client", &conf));

    // gannetd reports the address; the endpoints controller makes the pod an endpoint; gannetd
    // programs it.
    eventually(
        "Pod web-1 to carry its address",
        Duration::from_secs(10),
        || {
            let pod = plane.get_json("pod", "web-1").ok()?;
            (pod["status"]["podIP"] == web_ip.as_str()).then_some(())
        },
    );
    let tcp = |count: &str| {
        probe(
            &client,
            &cgroup,
            &[
                "--timeout-ms",
                "500",
                "tcp",
                "--to",
                &to_vip,
                "--count",
                count,
            ],
        )
    };
    let report = eventually(
        "the ClusterIP to reach the new pod",
        Duration::from_secs(10),
        || Some(tcp("10")).filter(|report| report.ok == 10),
    );
    assert_eq!(report.backend_count("web-1"), 10, "{report:?}");

    // DEL: the pod's network is gone, so is the endpoint: connections are refused at once.
    cni(&node, &web, "DEL", "web-1", &conf);
    let refused = eventually(
        "the service to lose its only endpoint",
        Duration::from_secs(10),
        || Some(tcp("3")).filter(|report| report.error_count("ECONNREFUSED") == 3),
    );
    assert_eq!(refused.ok, 0, "{refused:?}");
    let pod = plane.get_json("pod", "web-1").unwrap();
    assert!(
        pod["status"]["podIP"].is_null(),
        "the pod's address is withdrawn: {pod}"
    );

    cni(&node, &client, "DEL", "client", &conf);
    drop(agent);
    let _ = std::fs::remove_dir_all(&ipam_dir);
}

#[test]
fn the_conflist_gannet_cni_installs_makes_a_pod_an_endpoint_bound_to_the_node() {
    let node = Netns::new("icnode").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"]).unwrap();
    let mut agent = Agent::start_with_control(Some(&node), &cgroup, &plane.addr(), &[]).unwrap();
    agent.wait_log("subnet file written", 1).unwrap();

    // `gannet-cni install` with this agent's socket and subnet file (on a node: gannetd's
    // defaults, which install writes unless told otherwise).
    let dir = ScratchDir::new("gannet-inst");
    let output = Command::new(bin_path("gannet-cni"))
        .arg("install")
        .arg("--bin-dir")
        .arg(dir.0.join("bin"))
        .arg("--conf-dir")
        .arg(dir.0.join("net.d"))
        .arg("--agent-socket")
        .arg(agent.cni_socket())
        .arg("--subnet-file")
        .arg(agent.subnet_file())
        .output()
        .unwrap();
    assert!(output.status.success(), "gannet-cni install: {output:?}");
    let conflist: Value = serde_json::from_slice(
        &std::fs::read(dir.0.join("net.d/10-gannet.conflist")).expect("the installed conflist"),
    )
    .expect("JSON");
    // The first plugin as a runtime hands it over (name and version injected); only the IPAM
    // store and the log file move into the test's directory, and portmap is left out.
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["ipam"]["dataDir"] = json!(dir.0.join("ipam"));
    conf["logFile"] = json!(dir.0.join("gannet-cni.log"));

    // A Pod that no scheduler placed (no spec.nodeName), selected by a Service.
    plane
        .apply(
            "apiVersion: v1
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
  containers:
  - name: web
    image: busybox
",
        )
        .unwrap();
    let web = Netns::new("icweb").unwrap();
    let web_ip = pod_ip(&cni(&node, &web, "ADD", "web-1", &conf));
    let endpoints = eventually(
        "the pod to become an endpoint of web",
        Duration::from_secs(10),
        || {
            let out = plane.ctl(&["get", "endpointslices"], None).ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains(&web_ip).then_some(text)
        },
    );
    assert!(endpoints.contains("web-"), "{endpoints}");
    let wide = plane.ctl(&["get", "pods", "-o", "wide"], None).unwrap();
    let wide = String::from_utf8_lossy(&wide.stdout).into_owned();
    let row = wide
        .lines()
        .find(|l| l.starts_with("web-1"))
        .unwrap_or_else(|| panic!("web-1 is listed: {wide}"));
    assert!(
        row.contains(&web_ip) && row.split_whitespace().any(|c| c == "test-node"),
        "gannetctl get pods -o wide must show web-1 on test-node with {web_ip}: {wide}"
    );
    cni(&node, &web, "DEL", "web-1", &conf);
    drop(agent);
}

#[test]
fn gannetd_joins_a_tls_control_plane_with_its_agent_certificate() {
    let pki = ScratchDir::new("gannet-pki");
    let output = Command::new(bin_path("gannet-control"))
        .arg("certs")
        .arg("--out")
        .arg(&pki.0)
        .args(["--host", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "gannet-control certs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // TLS on loopback of a namespace of the test's own (a fresh one: the port is free).
    let node = Netns::new("tls").unwrap();
    let pki_dir = pki.0.to_str().unwrap();
    let plane = ControlPlane::start_in(
        Some(&node),
        &["--listen", "127.0.0.1:7443", "--tls-dir", pki_dir],
    )
    .unwrap();
    let cgroup = Cgroup::new().unwrap();
    // The old names (`--control` from the testkit, `--control-tls-dir`) keep working.
    let mut agent = Agent::start_with_control(
        Some(&node),
        &cgroup,
        "https://127.0.0.1:7443",
        &["--control-tls-dir", pki_dir],
    )
    .unwrap();
    agent.wait_log("subnet file written", 1).unwrap();
    plane
        .apply(&service_with_slice(&[("10.244.7.7".to_owned(), true)]))
        .unwrap();
    agent.wait_log("services synced", 1).unwrap();
    let status = agent.status().unwrap();
    let web = status["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["frontend"] == "10.96.0.10:80/TCP")
        .unwrap_or_else(|| panic!("the service is programmed: {status}"));
    assert_eq!(web["backends"], json!(["10.244.7.7:8080"]), "{status}");

    // Without the agent certificate the agent cannot start: the flag names the missing file.
    let empty = ScratchDir::new("gannet-nopki");
    std::fs::create_dir_all(&empty.0).unwrap();
    let refused = Command::new(bin_path("gannetd"))
        .args(["--server", "https://127.0.0.1:7443", "--tls-dir"])
        .arg(&empty.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--tls-dir") && stderr.contains("agent.pem"),
        "names the flag and the file: {stderr}"
    );
    assert_eq!(
        stderr.matches("gannet-control certs").count(),
        1,
        "one hint for all the missing files: {stderr}"
    );
}
