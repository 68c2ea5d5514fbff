//! Static addresses and MACs as runtimes ask for them: `CNI_ARGS` `IP=`/`MAC=` (podman with one
//! `--ip`, `--mac-address`) and the `ips`/`mac` capabilities (`runtimeConfig`).

use gannet_testkit::Netns;
use serde_json::{Value, json};

use crate::harness::{Attach, Node, ip};

fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| i["address"].as_str().expect("address").to_owned())
        .collect()
}

fn pod_mac(pod: &Netns) -> String {
    let out = ip(pod, &["-o", "link", "show", "eth0"]);
    out.split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_owned()
}

#[test]
fn cni_args_ip_and_mac_are_honoured_and_checked() {
    let node = Node::new();
    let conf = node.config("1.0.0", &["10.27.0.0/24", "fd27::/64"]);
    let pod = Netns::new("pod").expect("pod");
    let mut att = Attach::new("static", &pod);
    att.args = "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.27.0.50;MAC=02:42:0a:1b:00:32".into();
    let result = node
        .exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD with IP= and MAC=");
    assert_eq!(
        addresses(&result),
        ["10.27.0.50/32", "fd27::1/128"],
        "the requested IPv4 address, the IPv6 one from the pool: {result}"
    );
    assert_eq!(
        result["interfaces"][1]["mac"], "02:42:0a:1b:00:32",
        "{result}"
    );
    assert_eq!(pod_mac(&pod), "02:42:0a:1b:00:32");
    assert!(ip(&pod, &["addr", "show", "eth0"]).contains("10.27.0.50/32"));
    assert!(
        node.allocations("gnet")
            .contains(&("10.27.0.50".to_owned(), "static".to_owned())),
        "{:?}",
        node.allocations("gnet")
    );
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    node.exec("gannet-cni", "CHECK", Some(&att), &with_prev)
        .expect_ok("CHECK of the static pod");

    // Another pod asking for the same address: refused, nothing created.
    let other_pod = Netns::new("pod").expect("pod");
    let mut other = Attach::new("other", &other_pod);
    other.args = "IP=10.27.0.50".into();
    node.exec("gannet-cni", "ADD", Some(&other), &conf)
        .expect_error(
            102,
            &["CNI_ARGS IP 10.27.0.50", "already allocated to static/eth0"],
            "ADD of a taken address",
        );
    for (args, code, needles) in [
        (
            "IP=10.28.0.5",
            4,
            &["CNI_ARGS IP 10.28.0.5", "not inside any configured range"][..],
        ),
        (
            "IP=10.27.0.255",
            4,
            &["CNI_ARGS IP 10.27.0.255", "not inside any configured range"][..],
        ),
        ("IP=10.27.0.x", 4, &["CNI_ARGS IP=10.27.0.x"][..]),
        (
            "MAC=01:00:5e:00:00:01",
            4,
            &["CNI_ARGS MAC=01:00:5e:00:00:01", "multicast"][..],
        ),
        (
            "MAC=02:00:00:00:00",
            4,
            &["CNI_ARGS MAC=02:00:00:00:00"][..],
        ),
    ] {
        other.args = args.into();
        node.exec("gannet-cni", "ADD", Some(&other), &conf)
            .expect_error(code, needles, args);
    }
    assert_eq!(
        node.host_veths().len(),
        1,
        "a refused ADD created an interface"
    );
    assert_eq!(
        node.allocations("gnet").len(),
        2,
        "a refused ADD kept an address"
    );
    assert!(!ip(&other_pod, &["-o", "link", "show"]).contains("eth0"));

    // Once the first pod is gone, its address can be asked for again at once.
    node.exec("gannet-cni", "DEL", Some(&att), &with_prev)
        .expect_ok("DEL");
    other.args = "IP=10.27.0.50".into();
    let taken_over = node
        .exec("gannet-cni", "ADD", Some(&other), &conf)
        .expect_ok("ADD of the freed address");
    assert_eq!(addresses(&taken_over)[0], "10.27.0.50/32");
    node.exec("gannet-cni", "DEL", Some(&other), &conf)
        .expect_ok("DEL");
    node.wait_for_tombstones(&[&pod, &other_pod]);
}

#[test]
fn ips_and_mac_capabilities_are_honoured_and_checked() {
    let node = Node::new();
    let mut plugin = node.config("1.1.0", &["10.29.0.0/24", "fd29::/64"]);
    plugin["capabilities"] = json!({"ips": true, "mac": true});
    let list = json!({"cniVersion": "1.1.0", "name": "gnet", "plugins": [plugin]});
    let pod = Netns::new("pod").expect("pod");
    let mut att = Attach::new("caps", &pod);
    // CNI_ARGS loses against the capabilities.
    att.args = "IP=10.29.0.9;MAC=02:00:00:00:00:09".into();
    let runtime = json!({"ips": ["10.29.0.60/24", "fd29::60/64"], "mac": "0e:00:00:00:00:60"});
    let result = node
        .add_list(&list, &att, &runtime)
        .unwrap_or_else(|r| panic!("ADD with capabilities: {r:?}"));
    assert_eq!(
        addresses(&result),
        ["10.29.0.60/32", "fd29::60/128"],
        "{result}"
    );
    assert_eq!(pod_mac(&pod), "0e:00:00:00:00:60");
    node.check_list(&list, &att, &result, &runtime)
        .unwrap_or_else(|r| panic!("CHECK: {r:?}"));

    let other_pod = Netns::new("pod").expect("pod");
    let other = Attach::new("other", &other_pod);
    for (runtime, code, needles) in [
        (
            json!({"ips": ["10.30.0.1/24"]}),
            7,
            &[
                "field `runtimeConfig.ips[0]` 10.30.0.1",
                "not inside any configured range",
            ][..],
        ),
        (
            json!({"ips": ["10.29.0.61", "10.29.0.62"]}),
            7,
            &[
                "field `runtimeConfig.ips[1]` 10.29.0.62",
                "both fall into range set 0",
            ][..],
        ),
        (
            json!({"ips": ["fd29::60"]}),
            102,
            &["fd29::60", "already allocated to caps/eth0"][..],
        ),
        (
            json!({"mac": "zz:00:00:00:00:01"}),
            7,
            &["field `runtimeConfig.mac`", "zz:00:00:00:00:01"][..],
        ),
    ] {
        let reply = node
            .add_list(&list, &other, &runtime)
            .expect_err("a refused request");
        reply.expect_error(code, needles, &runtime.to_string());
    }
    assert_eq!(node.host_veths().len(), 1);
    assert_eq!(node.allocations("gnet").len(), 2);
    node.del_list(&list, &att, Some(&result), &runtime)
        .unwrap_or_else(|r| panic!("DEL: {r:?}"));
    node.wait_for_tombstones(&[&pod, &other_pod]);
    assert!(node.allocations("gnet").is_empty());
}
