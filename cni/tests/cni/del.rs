//! DEL's promise: when it returns, the pod is cut off (its veth pair down, the host routes gone),
//! its addresses are free and its interface names are free for a new ADD of the same attachment;
//! the pair itself is deleted a moment later by a detached process, or by GC if that process
//! never ran.

use std::time::{Duration, Instant};

use gannet_testkit::Netns;
use serde_json::Value;

use crate::harness::{Attach, Node, ip, link_names};

fn address(result: &Value, index: usize) -> String {
    let cidr = result["ips"][index]["address"].as_str().expect("address");
    cidr.split('/').next().expect("ip").to_owned()
}

/// The `ip -o link` lines of `ns` for links whose name starts with `prefix`.
fn links_starting(ns: &Netns, prefix: &str) -> Vec<String> {
    ip(ns, &["-o", "link", "show"])
        .lines()
        .filter(|l| {
            l.split(": ")
                .nth(1)
                .is_some_and(|name| name.starts_with(prefix))
        })
        .map(str::to_owned)
        .collect()
}

fn is_up(line: &str) -> bool {
    line.split('<')
        .nth(1)
        .and_then(|flags| flags.split('>').next())
        .is_some_and(|flags| flags.split(',').any(|f| f == "UP"))
}

#[test]
fn del_returns_with_the_pod_cut_off_and_everything_free() {
    let node = Node::new();
    let conf = node.config("1.1.0", &["10.25.0.0/24", "fd25::/64"]);
    let pod = Netns::new("pod").expect("pod netns");
    let att = Attach::new("promise", &pod);
    let result = node
        .exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD");
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .expect("host interface")
        .to_owned();
    let (v4, v6) = (address(&result, 0), address(&result, 1));
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    node.exec("gannet-cni", "DEL", Some(&att), &with_prev)
        .expect_ok("DEL");

    // The moment DEL has returned:
    assert!(
        node.allocations("gnet").is_empty(),
        "addresses still allocated after DEL: {:?}",
        node.allocations("gnet")
    );
    let routes = format!(
        "{}{}",
        ip(&node.ns, &["-4", "route", "show"]),
        ip(&node.ns, &["-6", "route", "show"])
    );
    assert!(
        !routes.contains(&format!("{v4} ")) && !routes.contains(&format!("{v6} ")),
        "the node still routes the pod's addresses after DEL: {routes}"
    );
    assert!(
        !link_names(&node.ns).contains(&host_if),
        "{host_if} still exists after DEL"
    );
    assert!(
        !link_names(&pod).contains(&"eth0".to_owned()),
        "the pod still has eth0 after DEL: {:?}",
        link_names(&pod)
    );
    for (ns, side) in [(&node.ns, "node"), (&pod, "pod")] {
        for line in links_starting(ns, "gnd") {
            assert!(!is_up(&line), "a retired {side} end is up: {line}");
        }
    }

    // The same attachment again, at once: same host name, a working pod.
    let again = node
        .exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD of the same attachment right after its DEL");
    assert_eq!(again["interfaces"][0]["name"], host_if.as_str(), "{again}");
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = again;
    node.exec("gannet-cni", "CHECK", Some(&att), &with_prev)
        .expect_ok("CHECK of the re-added pod");
    node.exec("gannet-cni", "DEL", Some(&att), &with_prev)
        .expect_ok("second DEL");
    node.exec("gannet-cni", "DEL", Some(&att), &with_prev)
        .expect_ok("DEL once more (idempotent)");
    // And eventually nothing is left, on either side.
    node.wait_for_tombstones(&[&pod]);
    assert!(node.allocations("gnet").is_empty());
}

#[test]
fn gc_removes_the_pair_of_a_deletion_that_never_ran() {
    let node = Node::new();
    let conf = node.config("1.1.0", &["10.26.0.0/24"]);
    let pod = Netns::new("pod").expect("pod netns");
    let att = Attach::new("orphan", &pod);
    node.exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD");

    // DEL killed after retiring the pair and releasing the address, before the deleting process
    // was started.
    let marker = node.path().join("before-reap");
    let mut child = node.spawn_gannet(
        "DEL",
        &att,
        &conf,
        &[(
            gannet_cni::plugin::PAUSE_ENV,
            &format!("before-reap:{}", marker.display()),
        )],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "DEL never reached before-reap");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill(libc::SIGKILL).expect("SIGKILL");
    let _ = child.wait_output(Duration::from_secs(10));
    let tombstones = links_starting(&node.ns, "gnd");
    assert_eq!(tombstones.len(), 1, "{tombstones:?}");
    assert!(node.allocations("gnet").is_empty());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());

    // Someone else's link with our prefix, without our alias: GC must leave it alone.
    ip(
        &node.ns,
        &[
            "link",
            "add",
            "gndother0",
            "type",
            "veth",
            "peer",
            "name",
            "gndother1",
        ],
    );
    // The attachment comes back meanwhile (its names are free).
    node.exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD while the old pair waits");
    node.gc(&conf, &[&att]).expect_ok("GC");
    let left = links_starting(&node.ns, "gnd");
    assert_eq!(
        left.iter()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .collect::<Vec<_>>()
            .len(),
        2,
        "GC removes the retired pair and nothing else: {left:?}"
    );
    assert!(
        left.iter().all(|l| l.contains("gndother")),
        "GC left the retired pair: {left:?}"
    );
    assert_eq!(node.host_veths().len(), 1, "GC kept the valid interface");
    ip(&node.ns, &["link", "del", "gndother0"]);
    node.exec("gannet-cni", "DEL", Some(&att), &conf)
        .expect_ok("DEL");
    node.wait_for_tombstones(&[&pod]);
}

#[test]
fn del_without_the_netns_deletes_a_live_pair_at_once() {
    let node = Node::new();
    let conf = node.config("1.0.0", &["10.28.0.0/24"]);
    let pod = Netns::new("pod").expect("pod netns");
    let att = Attach::new("nonetns", &pod);
    node.exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD");
    let mut no_netns = att.clone();
    no_netns.netns = String::new();
    node.exec("gannet-cni", "DEL", Some(&no_netns), &conf)
        .expect_ok("DEL without CNI_NETNS");
    // The pod end could not have been renamed: the pair must be gone already, not retired.
    let veths = ip(&node.ns, &["-o", "link", "show", "type", "veth"]);
    assert!(veths.trim().is_empty(), "veths left: {veths}");
    assert_eq!(link_names(&pod), ["lo"], "the pod still has links");
    assert!(node.allocations("gnet").is_empty());
    node.exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD again");
    node.exec("gannet-cni", "DEL", Some(&att), &conf)
        .expect_ok("DEL");
    node.wait_for_tombstones(&[&pod]);
}
