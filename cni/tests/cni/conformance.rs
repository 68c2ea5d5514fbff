//! Every supported version × verb, single configurations and conflists.

use gannet_testkit::Netns;
use serde_json::{Value, json};

use crate::harness::{Attach, Node, ip};

/// ADD → CHECK → GC → STATUS → DEL → DEL for one version, as a single configuration.
fn verbs_for(version: &str) {
    let node = Node::new();
    let pod = Netns::new("pod").expect("pod netns");
    let conf = node.config(version, &["10.20.0.0/24", "fd20::/64"]);
    let att = Attach::new("c1", &pod);
    let result = node
        .exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD");

    // The result's shape is the requested version's.
    assert_eq!(result["cniVersion"], version, "{result}");
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 2, "{result}");
    assert!(
        interfaces[0].get("sandbox").is_none(),
        "host side has no sandbox: {result}"
    );
    assert_eq!(interfaces[1]["name"], "eth0");
    assert_eq!(interfaces[1]["sandbox"], pod.path().display().to_string());
    for interface in interfaces {
        let mac = interface["mac"]
            .as_str()
            .expect("every interface has a mac");
        assert_eq!(mac.len(), 17, "{mac}");
        assert_eq!(
            interface.get("mtu").is_some(),
            version == "1.1.0",
            "mtu only in 1.1.0: {result}"
        );
    }
    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{result}");
    assert_eq!(ips[0]["address"], "10.20.0.1/32");
    assert_eq!(ips[0]["gateway"], "169.254.1.1");
    assert_eq!(ips[1]["address"], "fd20::1/128");
    assert_eq!(ips[1]["gateway"], "fe80::1");
    for ip in ips {
        assert_eq!(ip["interface"], 1, "{result}");
        let pre_1_0 = version.starts_with("0.");
        assert_eq!(
            ip.get("version").is_some(),
            pre_1_0,
            "ips[].version only before 1.0.0: {result}"
        );
    }
    if version.starts_with("0.") {
        assert_eq!(ips[0]["version"], "4");
        assert_eq!(ips[1]["version"], "6");
    }
    let routes: Vec<&str> = result["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["dst"].as_str().expect("dst"))
        .collect();
    assert_eq!(routes, ["0.0.0.0/0", "::/0"], "{result}");

    // The kernel state matches.
    let addrs = ip(&pod, &["addr", "show", "eth0"]);
    assert!(
        addrs.contains("10.20.0.1/32") && addrs.contains("fd20::1/128"),
        "{addrs}"
    );
    let host_if = interfaces[0]["name"].as_str().expect("name");
    let host_routes = ip(&node.ns, &["route", "show"]);
    assert!(
        host_routes.contains(&format!("10.20.0.1 dev {host_if}")),
        "{host_routes}"
    );

    // CHECK exists from 0.4.0 on.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    let check = node.exec("gannet-cni", "CHECK", Some(&att), &with_prev);
    if version.starts_with("0.3") {
        check.expect_error(1, &["CHECK"], "CHECK before 0.4.0");
    } else {
        check.expect_ok("CHECK");
    }
    // GC and STATUS exist from 1.1.0 on.
    let gc = node.gc(&conf, &[&att]);
    let status = node.exec("gannet-cni", "STATUS", None, &conf);
    if version == "1.1.0" {
        gc.expect_ok("GC keeping the attachment");
        status.expect_ok("STATUS");
        assert_eq!(
            node.allocations("gnet").len(),
            2,
            "GC kept the valid attachment"
        );
        assert_eq!(
            node.host_veths(),
            [host_if.to_owned()],
            "GC kept the valid interface"
        );
    } else {
        gc.expect_error(1, &["GC"], "GC before 1.1.0");
        status.expect_error(1, &["STATUS"], "STATUS before 1.1.0");
    }
    // VERSION.
    let v = node
        .exec(
            "gannet-cni",
            "VERSION",
            None,
            &json!({"cniVersion": version}),
        )
        .expect_ok("VERSION");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    // DEL (with prevResult), then again: both succeed and everything is gone.
    node.exec("gannet-cni", "DEL", Some(&att), &with_prev)
        .expect_ok("DEL");
    node.exec("gannet-cni", "DEL", Some(&att), &with_prev)
        .expect_ok("second DEL");
    assert!(
        node.host_veths().is_empty(),
        "host veth left: {:?}",
        node.host_veths()
    );
    assert!(
        node.allocations("gnet").is_empty(),
        "allocations left: {:?}",
        node.allocations("gnet")
    );
    let links = ip(&pod, &["-o", "link", "show"]);
    assert!(!links.contains("eth0"), "pod interface left: {links}");
}

#[test]
fn verbs_0_3_0() {
    verbs_for("0.3.0");
}
#[test]
fn verbs_0_3_1() {
    verbs_for("0.3.1");
}
#[test]
fn verbs_0_4_0() {
    verbs_for("0.4.0");
}
#[test]
fn verbs_1_0_0() {
    verbs_for("1.0.0");
}
#[test]
fn verbs_1_1_0() {
    verbs_for("1.1.0");
}

/// A conflist with `cniVersions` for each version: ADD, CHECK, DEL through the runtime harness.
#[test]
fn conflists_of_every_version() {
    let node = Node::new();
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = Netns::new("pod").expect("pod netns");
        let plugin = node.config(version, &["10.21.0.0/24"]);
        let list = json!({
            "cniVersion": "0.3.1",
            "cniVersions": ["0.3.1", version, "9.9.9"],
            "name": "gnet",
            "plugins": [plugin],
        });
        let att = Attach::new(&format!("list{i}"), &pod);
        let result = node
            .add_list(&list, &att, &json!({}))
            .unwrap_or_else(|r| panic!("ADD {version}: {r:?}"));
        assert_eq!(
            result["cniVersion"], version,
            "the newest version of cniVersions we speak: {result}"
        );
        if version != "0.3.1" {
            node.check_list(&list, &att, &result, &json!({}))
                .unwrap_or_else(|r| panic!("CHECK {version}: {r:?}"));
        }
        node.del_list(&list, &att, Some(&result), &json!({}))
            .unwrap_or_else(|r| panic!("DEL {version}: {r:?}"));
    }
    assert!(node.allocations("gnet").is_empty());
}

/// DEL is best-effort: a missing netns, interface or allocation is success.
#[test]
fn del_is_idempotent_and_best_effort() {
    let node = Node::new();
    let conf = node.config("1.0.0", &["10.22.0.0/24"]);
    // Never added.
    let ghost = Attach {
        id: "ghost".into(),
        netns: "/run/netns/does-not-exist".into(),
        ifname: "eth0".into(),
        args: String::new(),
    };
    node.exec("gannet-cni", "DEL", Some(&ghost), &conf)
        .expect_ok("DEL of an unknown container");

    // The pod's netns is gone before DEL (the runtime deleted it first).
    let pod = Netns::new("pod").expect("pod");
    let att = Attach::new("gone", &pod);
    let result = node
        .exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD");
    drop(pod);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result;
    node.exec("gannet-cni", "DEL", Some(&att), &with_prev)
        .expect_ok("DEL after the netns is gone");
    assert!(
        node.allocations("gnet").is_empty(),
        "{:?}",
        node.allocations("gnet")
    );

    // containerd's second DEL: empty CNI_NETNS, no prevResult.
    let pod = Netns::new("pod").expect("pod");
    let att = Attach::new("twice", &pod);
    node.exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD");
    node.exec("gannet-cni", "DEL", Some(&att), &conf)
        .expect_ok("first DEL");
    let mut no_netns = att.clone();
    no_netns.netns = String::new();
    node.exec("gannet-cni", "DEL", Some(&no_netns), &conf)
        .expect_ok("DEL without CNI_NETNS");
    assert!(node.host_veths().is_empty());
    assert!(node.allocations("gnet").is_empty());
}

/// CHECK says precisely what differs.
#[test]
fn check_reports_each_difference() {
    let node = Node::new();
    let pod = Netns::new("pod").expect("pod");
    let conf = node.config("1.1.0", &["10.23.0.0/24"]);
    let att = Attach::new("drift", &pod);
    let result = node
        .exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD");
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    node.exec("gannet-cni", "CHECK", Some(&att), &with_prev)
        .expect_ok("CHECK of an intact pod");

    ip(&pod, &["route", "del", "default"]);
    ip(&pod, &["addr", "add", "10.23.0.77/32", "dev", "eth0"]);
    std::fs::remove_file(node.store("gnet").join("10.23.0.1")).expect("removing the allocation");
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .expect("host if")
        .to_owned();
    ip(&node.ns, &["route", "del", "10.23.0.1/32"]);
    let err = node.exec("gannet-cni", "CHECK", Some(&att), &with_prev);
    err.expect_error(
        101,
        &[
            "route 0.0.0.0/0 via 169.254.1.1 dev eth0 is missing",
            "has address 10.23.0.77/32, which is not in the result",
            "the IPAM store holds [] for drift/eth0, the result says [10.23.0.1]",
            &format!("host route 10.23.0.1/32 dev {host_if} is missing"),
        ],
        "CHECK after drift",
    );

    // A result that names another MAC.
    let mut wrong: Value = with_prev.clone();
    wrong["prevResult"]["interfaces"][1]["mac"] = json!("02:00:00:00:00:99");
    node.exec("gannet-cni", "CHECK", Some(&att), &wrong)
        .expect_error(
            101,
            &["has MAC", "the result says 02:00:00:00:00:99"],
            "CHECK with another MAC",
        );

    ip(&node.ns, &["link", "del", &host_if]);
    node.exec("gannet-cni", "CHECK", Some(&att), &with_prev)
        .expect_error(
            101,
            &[
                &format!("host interface {host_if} is missing"),
                "interface eth0 is missing in netns",
            ],
            "CHECK without the veth",
        );
}
