//! Pods on one node, wired by the real gannet-cni binary (invoked as a runtime does) and
//! registered with gannetd, whose tc programs carry pod-to-pod traffic with `bpf_redirect_peer`.
//!
//! The node namespace has IP forwarding switched off: traffic between two pods can only flow
//! through gannet's fast path, and a pod that was not registered with gannetd is unreachable.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

use std::{path::Path, process::Command, time::Duration};

use gannet_testkit::{
    Cgroup, Netns,
    agent::Agent,
    bin_path,
    cni::{ask_agent, cni, pod_ip},
    probe::{Report, ServeReport, SpoofReport, parse_json_output},
    run_in, spawn,
    tcx_counter::{self, TcxCounter},
    unique_name,
};
use serde_json::{Value, json};

fn conf(ipam_dir: &Path, agent_socket: Option<&Path>) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "gannet-e2e",
        "type": "gannet-cni",
        "ipam": {"type": "gannet", "subnet": "10.244.3.0/24", "dataDir": ipam_dir},
    });
    if let Some(socket) = agent_socket {
        conf["agentSocket"] = json!(socket);
    }
    conf
}

fn probe(pod: &Netns, args: &[&str]) -> Report {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(args);
    let output = run_in(cmd, Some(pod), None, Duration::from_secs(60)).expect("probe runs");
    parse_json_output(&output).expect("probe report")
}

fn endpoint_of<'a>(status: &'a Value, ip: &str) -> Option<&'a Value> {
    status["endpoints"].as_array()?.iter().find(|e| {
        e["ips"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|i| i == ip))
    })
}

#[test]
fn pods_registered_by_gannet_cni_talk_through_the_fast_path_only() {
    let node = Netns::new("node").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let mut agent = Agent::start_in(Some(&node), &cgroup, &[]).unwrap();
    let ipam_dir = std::env::temp_dir().join(unique_name("gannet-ipam"));
    let socket = agent.cni_socket();

    let (a, b, c) = (
        Netns::new("pa").unwrap(),
        Netns::new("pb").unwrap(),
        Netns::new("pc").unwrap(),
    );
    let registered = conf(&ipam_dir, Some(&socket));
    let ip_a = pod_ip(&cni(&node, &a, "ADD", "pod-a", &registered));
    let ip_b = pod_ip(&cni(&node, &b, "ADD", "pod-b", &registered));
    // Pod c is wired by the plugin alone, without the agent.
    let ip_c = pod_ip(&cni(&node, &c, "ADD", "pod-c", &conf(&ipam_dir, None)));
    // gannet-cni enables forwarding for routed pods; switch it off so only the fast path can
    // carry pod-to-pod traffic.
    node.sysctl("net.ipv4.ip_forward", "0").unwrap();
    assert!(
        agent.logs().contains("endpoint registered"),
        "gannetd must log the registrations; log:\n{}",
        agent.logs()
    );

    let mut servers = Vec::new();
    for (pod, name) in [(&b, "pod-b"), (&c, "pod-c")] {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(["serve", "--name", name, "--listen", "0.0.0.0:8080"]);
        let mut server = spawn(cmd, Some(pod), None).unwrap();
        server
            .wait_for_line("ready", Duration::from_secs(10))
            .unwrap();
        servers.push(server);
    }

    let to_b = format!("{ip_b}:8080");
    let report = probe(&a, &["tcp", "--to", &to_b, "--count", "20"]);
    assert_eq!(
        (report.ok, report.backend_count("pod-b")),
        (20, 20),
        "pod a → pod b must work with forwarding off (fast path): {report:?}"
    );
    let to_c = format!("{ip_c}:8080");
    let control = probe(
        &a,
        &["--timeout-ms", "300", "tcp", "--to", &to_c, "--count", "2"],
    );
    assert_eq!(
        control.ok, 0,
        "negative control: pod c is not registered and the node does not forward: {control:?}"
    );

    let status = agent.status().unwrap();
    let eb = endpoint_of(&status, &ip_b).unwrap_or_else(|| panic!("pod b in status: {status}"));
    assert!(
        eb["rx_packets"].as_u64().unwrap() >= 20 && eb["tx_packets"].as_u64().unwrap() >= 20,
        "pod b's counters must show the exchange: {eb}"
    );
    assert!(
        endpoint_of(&status, &ip_a).is_some(),
        "pod a in status: {status}"
    );
    assert!(
        endpoint_of(&status, &ip_c).is_none(),
        "pod c must not be an endpoint: {status}"
    );

    // A SIGKILLed and restarted gannetd adopts the pod links.
    agent.stop(libc::SIGKILL).unwrap();
    agent.restart().unwrap();
    let after = probe(&a, &["tcp", "--to", &to_b, "--count", "5"]);
    assert_eq!(after.ok, 5, "after a restart: {after:?}");

    // DEL unregisters: pod b's endpoint disappears from the data plane.
    cni(&node, &b, "DEL", "pod-b", &registered);
    let status = agent.status().unwrap();
    assert!(
        endpoint_of(&status, &ip_b).is_none(),
        "pod b must be gone after DEL: {status}"
    );
    assert!(
        endpoint_of(&status, &ip_a).is_some(),
        "pod a stays: {status}"
    );

    cni(&node, &a, "DEL", "pod-a", &registered);
    cni(&node, &c, "DEL", "pod-c", &conf(&ipam_dir, None));
    drop(servers);
    drop(agent);
    let _ = std::fs::remove_dir_all(&ipam_dir);
}

/// A pod with `CAP_NET_RAW` (what containerd gives by default) writing another pod's address
/// into its packets: gannet's pod program drops them before `bpf_redirect_peer` could hand them
/// to their destination, and counts them; the same pod's packets from its own address pass.
#[test]
fn a_pod_sending_from_another_pods_address_is_dropped_and_counted() {
    let node = Netns::new("node").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let agent = Agent::start_in(Some(&node), &cgroup, &[]).unwrap();
    let ipam_dir = std::env::temp_dir().join(unique_name("gannet-ipam"));
    let registered = conf(&ipam_dir, Some(&agent.cni_socket()));
    let (a, b, c) = (
        Netns::new("pa").unwrap(),
        Netns::new("pb").unwrap(),
        Netns::new("pc").unwrap(),
    );
    let ip_a = pod_ip(&cni(&node, &a, "ADD", "pod-a", &registered));
    let ip_b = pod_ip(&cni(&node, &b, "ADD", "pod-b", &registered));
    let ip_c = pod_ip(&cni(&node, &c, "ADD", "pod-c", &registered));
    // Only the fast path may carry pod-to-pod traffic.
    node.sysctl("net.ipv4.ip_forward", "0").unwrap();

    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args([
        "serve",
        "--name",
        "pod-c",
        "--udp",
        "--listen",
        "0.0.0.0:8080",
    ]);
    let mut server = spawn(cmd, Some(&c), None).unwrap();
    server
        .wait_for_line("ready", Duration::from_secs(10))
        .unwrap();

    let spoof = |from: &str, count: &str| {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        let to = format!("{ip_c}:8080");
        cmd.args(["spoof", "--from", from, "--to", &to, "--count", count]);
        let output = run_in(cmd, Some(&a), None, Duration::from_secs(30)).expect("probe runs");
        let report: SpoofReport = parse_json_output(&output).expect("spoof report");
        assert_eq!(
            report.sent,
            count.parse::<u64>().unwrap(),
            "pod a's kernel must send every datagram: {report:?}"
        );
    };
    // The positive control: the same raw socket, pod a's own address.
    spoof(&ip_a, "5");
    // Pod b's address, from pod a.
    spoof(&ip_b, "7");

    server.kill(libc::SIGTERM).expect("stopping the server");
    let served: ServeReport =
        parse_json_output(&server.wait_output(Duration::from_secs(10)).unwrap())
            .expect("server report");
    assert_eq!(
        served.udp_requests, 5,
        "pod c must get pod a's 5 datagrams from its own address and none of the 7 with pod b's: \
         {served:?}"
    );
    let status = agent.status().unwrap();
    let ea = endpoint_of(&status, &ip_a).unwrap_or_else(|| panic!("pod a in status: {status}"));
    assert_eq!(
        ea["tx_dropped_source"].as_u64(),
        Some(7),
        "pod a's 7 spoofed datagrams must be counted as dropped: {ea}"
    );
    for ip in [&ip_b, &ip_c] {
        let e = endpoint_of(&status, ip).unwrap_or_else(|| panic!("{ip} in status: {status}"));
        assert_eq!(
            e["tx_dropped_source"].as_u64(),
            Some(0),
            "{ip} sent nothing spoofed: {e}"
        );
    }

    for (pod, name) in [(&a, "pod-a"), (&b, "pod-b"), (&c, "pod-c")] {
        cni(&node, pod, "DEL", name, &registered);
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&ipam_dir);
}

/// gannet's pod programs end a tcx chain only for what they handle: everything else continues
/// (`TCX_NEXT`) to the programs attached after them, which see it. Counters attached after
/// gannet's on pod a's host veth see pod a's packets for the host stack (ingress) and the node's
/// packets to pod a (egress), not the ones the fast path redirects.
#[test]
fn programs_after_gannets_on_a_pod_veth_see_what_is_not_gannets_business() {
    let node = Netns::new("node").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let agent = Agent::start_in(Some(&node), &cgroup, &[]).unwrap();
    let ipam_dir = std::env::temp_dir().join(unique_name("gannet-ipam"));
    let registered = conf(&ipam_dir, Some(&agent.cni_socket()));
    let (a, b) = (Netns::new("pa").unwrap(), Netns::new("pb").unwrap());
    let ip_a = pod_ip(&cni(&node, &a, "ADD", "pod-a", &registered));
    let ip_b = pod_ip(&cni(&node, &b, "ADD", "pod-b", &registered));
    node.sysctl("net.ipv4.ip_forward", "0").unwrap();
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args([
        "serve",
        "--name",
        "pod-b",
        "--udp",
        "--listen",
        "0.0.0.0:8080",
    ]);
    let mut server = spawn(cmd, Some(&b), None).unwrap();
    server
        .wait_for_line("ready", Duration::from_secs(10))
        .unwrap();

    let status = agent.status().unwrap();
    let veth_a = endpoint_of(&status, &ip_a)
        .and_then(|e| e["host_ifindex"].as_u64())
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or_else(|| panic!("pod a's host veth in status: {status}"));
    let ingress = TcxCounter::attach(&node, veth_a, tcx_counter::Direction::Ingress).unwrap();
    let egress = TcxCounter::attach(&node, veth_a, tcx_counter::Direction::Egress).unwrap();

    // Pod a to pod b: gannet's business (the fast path redirects it; the chain ends there).
    let to_b = format!("{ip_b}:8080");
    let fast = probe(&a, &["udp", "--to", &to_b, "--count", "50"]);
    assert_eq!(fast.ok, 50, "pod a → pod b through the fast path: {fast:?}");
    let seen = ingress.count().unwrap();
    assert!(
        seen < 50,
        "the fast path's packets must not reach the programs after gannet's: {seen} counted"
    );

    // Pod a to an address that is no pod's: the host stack's (which drops it: no forwarding).
    let elsewhere = probe(
        &a,
        &[
            "--timeout-ms",
            "100",
            "udp",
            "--to",
            "192.0.2.1:9",
            "--count",
            "5",
        ],
    );
    assert_eq!(elsewhere.ok, 0, "nothing answers 192.0.2.1: {elsewhere:?}");
    let more = ingress.count().unwrap() - seen;
    assert!(
        more >= 5,
        "pod a's 5 datagrams for the host stack must reach the program after gannet's at ingress, \
         {more} did"
    );

    // The node to pod a: through the veth's egress.
    let before = egress.count().unwrap();
    let to_a = format!("{ip_a}:9");
    let node_to_a = probe(
        &node,
        &["--timeout-ms", "100", "udp", "--to", &to_a, "--count", "5"],
    );
    assert_eq!(
        node_to_a.ok, 0,
        "nothing listens on pod a's port 9: {node_to_a:?}"
    );
    let sent = egress.count().unwrap() - before;
    assert!(
        sent >= 5,
        "the node's 5 datagrams to pod a must reach the program after gannet's at egress, {sent} did"
    );

    drop((ingress, egress, server));
    for (pod, name) in [(&a, "pod-a"), (&b, "pod-b")] {
        cni(&node, pod, "DEL", name, &registered);
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&ipam_dir);
}

fn register_request(container: &str, ip: &str, host_if: &str, index: u64) -> Value {
    json!({
        "apiVersion": 1,
        "kind": "Register",
        "endpoint": {
            "network": "gannet-e2e",
            "containerId": container,
            "ifName": "eth0",
            "netns": "/proc/self/ns/net",
            "ips": [format!("{ip}/32")],
            "mac": "02:00:00:00:00:09",
            "hostIfName": host_if,
            "hostIfIndex": index,
            "hostMac": "02:00:00:00:00:0a",
            "podNamespace": "default",
            "podName": container,
        }
    })
}

#[test]
fn registrations_of_interfaces_that_are_not_the_pods_veth_are_refused() {
    let node = Netns::new("node").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let agent = Agent::start_in(Some(&node), &cgroup, &[]).unwrap();
    let socket = agent.cni_socket();
    // A veth of the node that gannet-cni did not make for this attachment.
    let foreign = unique_name("fv");
    let peer = unique_name("fp");
    node.ip(&[
        "link", "add", &foreign, "type", "veth", "peer", "name", &peer,
    ])
    .unwrap();
    let shown: Value =
        serde_json::from_str(&node.ip(&["-j", "link", "show", "dev", &foreign]).unwrap()).unwrap();
    let index = shown[0]["ifindex"].as_u64().expect("ifindex");
    for (host_if, index, what) in [
        (foreign.as_str(), index, "a veth gannet-cni did not make"),
        ("lo", 1, "the loopback interface"),
    ] {
        let answer = ask_agent(
            &socket,
            &register_request("intruder", "10.244.3.77", host_if, index),
        );
        assert_eq!(
            answer["ok"], false,
            "a registration naming {what} must be refused: {answer}"
        );
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("not the one gannet-cni makes"),
            "the refusal must say why: {error}"
        );
    }
    let status = agent.status().unwrap();
    assert!(
        endpoint_of(&status, "10.244.3.77").is_none(),
        "no endpoint may be programmed for a refused registration: {status}"
    );
}
