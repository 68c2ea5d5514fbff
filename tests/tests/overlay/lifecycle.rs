//! The cluster over time: a connection across a restart of gannetd, `gannetd status`, drift
//! repaired, a node leaving, `gannetd cleanup`.

use std::{process::Command, time::Duration};

use gannet_testkit::{bin_path, bpftool, eventually, run_in, spawn};

use crate::fixture::{Cluster, NODES, addr};

pub(crate) fn flow_survives_restart(c: &mut Cluster, mode: &str) {
    let target = addr(&c.pod(1, 0).ip);
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["hold", "--to", &target]);
    let mut held = spawn(cmd, Some(&c.pod(0, 0).netns), None).expect("starting hold");
    held.wait_for_line("connected", Duration::from_secs(10))
        .expect("connected across nodes");
    held.send_line("ping").unwrap();
    assert_eq!(
        held.read_line(Duration::from_secs(5)).unwrap().trim(),
        "node-1-p0"
    );
    let routes_before = c.overlay_routes(0);
    c.nodes[0].agent.stop(libc::SIGKILL).unwrap();
    held.send_line("ping").unwrap();
    assert_eq!(
        held.read_line(Duration::from_secs(5)).unwrap().trim(),
        "node-1-p0",
        "the flow goes on while gannetd is down"
    );
    c.nodes[0].agent.restart().unwrap();
    c.nodes[0].agent.wait_log("overlay ready", 1).unwrap();
    c.nodes[0]
        .agent
        .wait_log("node programmed", NODES - 1)
        .unwrap();
    for _ in 0..3 {
        held.send_line("ping").unwrap();
        assert_eq!(
            held.read_line(Duration::from_secs(5)).unwrap().trim(),
            "node-1-p0",
            "the same connection works after the restart"
        );
    }
    assert_eq!(
        c.overlay_routes(0),
        routes_before,
        "the restart adopted the routes as they were"
    );
    if mode != "host-gw" {
        assert_eq!(
            c.nodes[0].agent.log_count("adopted the VXLAN device"),
            1,
            "the device was adopted, not recreated: {}",
            c.nodes[0].agent.logs()
        );
    }
}

pub(crate) fn status_lists_the_nodes(c: &Cluster, mode: &str) {
    let status = c.nodes[0].agent.status().unwrap();
    let nodes = status["overlay"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["node-1", "node-2"], "{status}");
    for n in &nodes {
        assert_eq!(n["mode"], mode, "{n}");
        assert!(n["problem"].is_null(), "{n}");
        assert!(!n["pod_cidrs"].as_array().unwrap().is_empty(), "{n}");
        assert!(n["ips"].to_string().contains("10.99.0."), "{n}");
    }
}

/// What someone else removes from a node (a route of gannet's, its nftables table) is put
/// back by the next resync, without a restart.
pub(crate) fn repairs_drift(c: &Cluster) {
    let node = c.node_netns(0);
    let routes = c.overlay_routes(0);
    let first = routes
        .lines()
        .next()
        .expect("a route of gannet's")
        .to_owned();
    let dst = first.split_whitespace().next().unwrap().to_owned();
    let family = if dst.contains(':') { "-6" } else { "-4" };
    node.ip(&[family, "route", "del", &dst, "proto", "87"])
        .unwrap();
    let mut cmd = Command::new("nft");
    cmd.args(["delete", "table", "inet", "gannet"]);
    let out = run_in(cmd, Some(node), None, Duration::from_secs(5)).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !c.overlay_routes(0).contains(&first),
        "the route is gone for now"
    );
    eventually("the route to come back", Duration::from_secs(5), || {
        c.overlay_routes(0).contains(&first).then_some(())
    });
    eventually(
        "the nftables table to come back",
        Duration::from_secs(5),
        || {
            let mut cmd = Command::new("nft");
            cmd.args(["list", "tables"]);
            let out = run_in(cmd, Some(node), None, Duration::from_secs(5)).ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains("inet gannet")
                .then_some(())
        },
    );
}

/// Entries in a node's eBPF node map (`--overlay ebpf`), read with bpftool from its pin.
pub(crate) fn node_map_entries(c: &Cluster, node: usize) -> usize {
    let pin = c.nodes[node].agent.bpf_root().join("maps/GANNET_NODES");
    bpftool::map_keys(&pin).len()
}

/// node-2 leaves while node-0's gannetd is down: node-1 removes its entries at once, node-0 when
/// it is back (the first complete node list sweeps what no node needs).
pub(crate) fn node_leaves(c: &mut Cluster, modes: [&str; NODES]) {
    let ebpf_nodes: Vec<usize> = (0..2).filter(|&n| modes[n] == "ebpf").collect();
    for &n in &ebpf_nodes {
        // Two remote nodes, an IPv4 and an IPv6 pod CIDR each.
        assert_eq!(node_map_entries(c, n), 4, "node-{n}'s node map");
    }
    let leaving = c.pod(2, 0).ip.clone();
    let prefix: String = leaving.rsplit_once('.').unwrap().0.to_owned();
    let cidr = format!("{prefix}.0/24");
    let routed = |c: &Cluster, n: usize| {
        if modes[n] == "ebpf" {
            node_map_entries(c, n) == 4
        } else {
            c.overlay_routes(n).contains(&cidr)
        }
    };
    assert!(
        routed(c, 0),
        "node-2's pod CIDR is routed on node-0: {}",
        c.overlay_routes(0)
    );
    // Its agent goes first (else its heartbeat registers it again), then its Node.
    c.nodes[2].agent.stop(libc::SIGTERM).unwrap();
    c.nodes[0].agent.stop(libc::SIGKILL).unwrap();
    let output = c.plane.ctl(&["delete", "node", "node-2"], None).unwrap();
    assert!(output.status.success(), "{output:?}");
    eventually(
        "node-2's entries to vanish on node-1",
        Duration::from_secs(5),
        || (!routed(c, 1)).then_some(()),
    );
    assert!(
        routed(c, 0),
        "nothing changes on node-0 while its gannetd is down"
    );
    c.nodes[0].agent.restart().unwrap();
    eventually(
        "node-0 to sweep node-2's entries after its restart",
        Duration::from_secs(5),
        || (!routed(c, 0)).then_some(()),
    );
    for &n in &ebpf_nodes {
        assert_eq!(
            node_map_entries(c, n),
            2,
            "node-{n}'s node map keeps node-1's CIDRs only"
        );
    }
    for n in 0..2 {
        let neigh = c.node_netns(n).ip(&["neigh", "show"]).unwrap();
        assert!(
            !neigh.contains(&format!("{prefix}.0 ")),
            "node-2's neighbour entry is gone on node-{n}: {neigh}"
        );
        let fdb = {
            let mut cmd = Command::new("bridge");
            cmd.args(["fdb", "show"]);
            let out = run_in(cmd, Some(c.node_netns(n)), None, Duration::from_secs(5)).unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let node2_ip = c.underlay.nodes()[2].ipv4.to_string();
        assert!(
            !fdb.contains(&format!("dst {node2_ip} ")),
            "node-2's forwarding entry is gone on node-{n}: {fdb}\n{}",
            c.nodes[n].agent.logs()
        );
    }
    let tcp = c.tcp((0, 0), &addr(&c.pod(1, 0).ip), 2);
    assert_eq!(tcp.ok, 2, "the remaining nodes still talk: {tcp:?}");
}

pub(crate) fn cleanup_removes_everything(c: &mut Cluster) {
    let node = &mut c.nodes[1];
    node.agent.stop(libc::SIGTERM).unwrap();
    node.agent.cleanup().unwrap();
    let netns = &c.underlay.nodes()[1].netns;
    let links = netns.ip(&["link", "show"]).unwrap();
    assert!(!links.contains("gannet.vxlan"), "{links}");
    let routes = c.overlay_routes(1);
    assert!(routes.trim().is_empty(), "{routes}");
    let tables = {
        let mut cmd = Command::new("nft");
        cmd.args(["list", "tables"]);
        let out = run_in(cmd, Some(netns), None, Duration::from_secs(5)).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!tables.contains("gannet"), "{tables}");
}
