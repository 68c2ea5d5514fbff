//! Real packets through the routed pod network: pod to pod (IPv4 and IPv6) and pod to node.

use std::process::Command;
use std::time::Duration;

use gannet_testkit::probe::{Report, parse_json_output};
use gannet_testkit::{ChildGuard, Netns, bin_path, run_in, spawn};
use serde_json::Value;

use crate::harness::{Attach, NODE_V4, NODE_V6, Node, ip};

fn serve(ns: &Netns, name: &str, listen: &[&str]) -> ChildGuard {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["serve", "--name", name, "--tcp"]);
    for addr in listen {
        cmd.args(["--listen", addr]);
    }
    let mut server = spawn(cmd, Some(ns), None).expect("starting a server");
    server
        .wait_for_line("ready", Duration::from_secs(10))
        .expect("server ready");
    server
}

fn tcp(ns: &Netns, to: &str) -> Report {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["--timeout-ms", "3000", "tcp", "--to", to, "--count", "5"]);
    let output = run_in(cmd, Some(ns), None, Duration::from_secs(30)).expect("running the client");
    parse_json_output(&output).expect("probe report")
}

fn assert_reached(report: &Report, backend: &str, peer: &str, what: &str) {
    assert_eq!(report.ok, 5, "{what}: {report:?}");
    assert_eq!(report.backend_count(backend), 5, "{what}: {report:?}");
    assert_eq!(
        report.peers.keys().collect::<Vec<_>>(),
        [peer],
        "{what}: {report:?}"
    );
}

fn pod_ip(result: &Value, index: usize) -> String {
    let cidr = result["ips"][index]["address"].as_str().expect("address");
    cidr.split('/').next().expect("ip").to_owned()
}

#[test]
fn pods_reach_each_other_and_their_node() {
    let node = Node::new();
    let conf = node.config("1.0.0", &["10.50.0.0/24", "fd50::/64"]);
    let pod_a = Netns::new("poda").expect("pod a");
    let pod_b = Netns::new("podb").expect("pod b");
    let a = node
        .exec("gannet-cni", "ADD", Some(&Attach::new("a", &pod_a)), &conf)
        .expect_ok("ADD a");
    let b = node
        .exec("gannet-cni", "ADD", Some(&Attach::new("b", &pod_b)), &conf)
        .expect_ok("ADD b");
    let (b4, b6) = (pod_ip(&b, 0), pod_ip(&b, 1));
    let (a4, a6) = (pod_ip(&a, 0), pod_ip(&a, 1));

    let _server_b = serve(&pod_b, "pod-b", &["0.0.0.0:8080", "[::]:8080"]);
    let _server_node = serve(
        &node.ns,
        "node",
        &[&format!("{NODE_V4}:8081"), &format!("[{NODE_V6}]:8081")],
    );
    let _server_a = serve(&pod_a, "pod-a", &["0.0.0.0:8082"]);

    assert_reached(
        &tcp(&pod_a, &format!("{b4}:8080")),
        "pod-b",
        &format!("{b4}:8080"),
        "pod a → pod b over IPv4",
    );
    assert_reached(
        &tcp(&pod_a, &format!("[{b6}]:8080")),
        "pod-b",
        &format!("[{b6}]:8080"),
        "pod a → pod b over IPv6",
    );
    assert_reached(
        &tcp(&pod_a, &format!("{NODE_V4}:8081")),
        "node",
        &format!("{NODE_V4}:8081"),
        "pod a → node over IPv4",
    );
    assert_reached(
        &tcp(&pod_b, &format!("[{NODE_V6}]:8081")),
        "node",
        &format!("[{NODE_V6}]:8081"),
        "pod b → node over IPv6",
    );
    assert_reached(
        &tcp(&node.ns, &format!("{a4}:8082")),
        "pod-a",
        &format!("{a4}:8082"),
        "node → pod a",
    );

    // The pods' neighbour tables show the permanent gateway entry, nothing learned by ARP.
    let neigh = ip(&pod_a, &["neigh", "show", "dev", "eth0"]);
    assert!(
        neigh.contains("169.254.1.1") && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    assert!(neigh.contains("fe80::1"), "{neigh}");
    let _ = a6;

    // After DEL of pod b, pod a can no longer reach its address.
    node.exec("gannet-cni", "DEL", Some(&Attach::new("b", &pod_b)), &conf)
        .expect_ok("DEL b");
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args([
        "--timeout-ms",
        "500",
        "tcp",
        "--to",
        &format!("{b4}:8080"),
        "--count",
        "1",
    ]);
    let output = run_in(cmd, Some(&pod_a), None, Duration::from_secs(10)).expect("client");
    let report: Report = parse_json_output(&output).expect("report");
    assert_eq!(
        report.ok, 0,
        "pod b's address still answers after DEL: {report:?}"
    );

    // The same attachment is added again at once (the old pair may still await its deletion):
    // it works, and pod b answers on its new interface.
    let b = node
        .exec("gannet-cni", "ADD", Some(&Attach::new("b", &pod_b)), &conf)
        .expect_ok("ADD b again right after its DEL");
    let b4 = pod_ip(&b, 0);
    assert_reached(
        &tcp(&pod_a, &format!("{b4}:8080")),
        "pod-b",
        &format!("{b4}:8080"),
        "pod a → pod b after b's DEL and ADD",
    );
    for (id, pod) in [("a", &pod_a), ("b", &pod_b)] {
        node.exec("gannet-cni", "DEL", Some(&Attach::new(id, pod)), &conf)
            .expect_ok("final DEL");
    }
    node.wait_for_tombstones(&[&pod_a, &pod_b]);
}
