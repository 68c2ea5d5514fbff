//! gannet-cni as the first plugin of a conflist, followed by Debian's reference `portmap`,
//! `bandwidth` and `tuning` (containernetworking-plugins 1.1.1, which speak up to 1.0.0).

use std::process::Command;
use std::time::Duration;

use gannet_testkit::probe::{Report, parse_json_output};
use gannet_testkit::{Netns, bin_path, run_in, spawn};
use serde_json::json;

use crate::harness::{Attach, NODE_V4, Node, ip};

#[test]
fn reference_plugins_chain_after_gannet() {
    let node = Node::new();
    let pod = Netns::new("pod").expect("pod");
    let mut gannet = node.config("1.0.0", &["10.60.0.0/24"]);
    gannet.as_object_mut().expect("object").remove("cniVersion");
    gannet.as_object_mut().expect("object").remove("name");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "gnet",
        "plugins": [
            gannet,
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}, "mtu": 1400},
        ],
    });
    let runtime = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 8_000_000, "egressBurst": 80_000},
    });
    let att = Attach::new("chained", &pod);
    let result = node
        .add_list(&list, &att, &runtime)
        .unwrap_or_else(|r| panic!("chained ADD: {r:?}"));
    // Every plugin passed our interfaces and addresses on; bandwidth added its ifb.
    assert_eq!(result["ips"][0]["address"], "10.60.0.1/32", "{result}");
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .expect("host if")
        .to_owned();
    assert!(host_if.starts_with("gnt"), "{result}");
    assert_eq!(result["interfaces"][1]["name"], "eth0", "{result}");

    // tuning changed the pod side.
    let link = ip(&pod, &["link", "show", "eth0"]);
    assert!(link.contains("mtu 1400"), "tuning's mtu: {link}");
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/sys/net/ipv4/conf/eth0/accept_local");
    let out = run_in(cmd, Some(&pod), None, Duration::from_secs(5)).expect("cat");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "tuning's sysctl"
    );
    // bandwidth shaped the host side (found through our host interface in the result).
    let mut cmd = Command::new("tc");
    cmd.args(["qdisc", "show", "dev", &host_if]);
    let out = run_in(cmd, Some(&node.ns), None, Duration::from_secs(5)).expect("tc");
    let qdiscs = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        qdiscs.contains("tbf") || qdiscs.contains("ingress"),
        "bandwidth's qdisc on {host_if}: {qdiscs}"
    );

    // portmap: the node's port 18080 reaches the pod's 8080.
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args([
        "serve",
        "--name",
        "chained",
        "--tcp",
        "--listen",
        "0.0.0.0:8080",
    ]);
    let mut server = spawn(cmd, Some(&pod), None).expect("server");
    server
        .wait_for_line("ready", Duration::from_secs(10))
        .expect("ready");
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args([
        "--timeout-ms",
        "3000",
        "tcp",
        "--to",
        &format!("{NODE_V4}:18080"),
        "--count",
        "3",
    ]);
    let out = run_in(cmd, Some(&node.ns), None, Duration::from_secs(30)).expect("client");
    let report: Report = parse_json_output(&out).expect("report");
    assert_eq!(
        report.backend_count("chained"),
        3,
        "through portmap's DNAT: {report:?}"
    );

    // portmap 1.1.1's CHECK always looks for IPv6 rules it never created
    // (containernetworking/plugins#819), so CHECK runs on the list without it.
    let mut without_portmap = list.clone();
    without_portmap["plugins"]
        .as_array_mut()
        .expect("plugins")
        .remove(1);
    node.check_list(&without_portmap, &att, &result, &runtime)
        .unwrap_or_else(|r| panic!("chained CHECK: {r:?}"));
    node.del_list(&list, &att, Some(&result), &runtime)
        .unwrap_or_else(|r| panic!("chained DEL: {r:?}"));
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(node.allocations("gnet").is_empty());
    // A second DEL of the whole list (containerd does this) also succeeds.
    node.del_list(&list, &att, None, &runtime)
        .unwrap_or_else(|r| panic!("second chained DEL: {r:?}"));
}
