//! Multi-node pod networking, end to end: three nodes (network namespaces on an underlay bridge
//! that lives in a fourth namespace, no route out of the machine), one gannet-control on a unix
//! socket, one gannetd per node (its own cgroup, bpffs directory and state directory), pods wired
//! by the real gannet-cni from each node's lease, real traffic between them.
//!
//! Each mode gets one test that builds the cluster once and checks, in order: the full mesh of
//! pod↔pod TCP, UDP and ICMP; a service with endpoints on all three nodes reached from every node;
//! a full-MTU transfer between nodes; masquerade to a host outside the cluster (and none between
//! pods); a long-running cross-node connection across a `SIGKILL` and restart of gannetd; `gannetd
//! status`; a node leaving the cluster (its entries vanish on the others); `gannetd cleanup`.
//!
//! Nothing here touches the root network namespace or the root cgroup.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

mod fixture;
mod lifecycle;
mod traffic;

use std::{process::Command, time::Duration};

use gannet_testkit::{
    Cgroup, Netns, ScratchDir,
    agent::Agent,
    cluster::Underlay,
    cni::{cni, pod_ip},
    probe::{Report, parse_json_output},
    run_in,
};
use serde_json::json;

use crate::fixture::{CLUSTER_CIDR, Cluster, NODES, VXLAN_POD_MTU, addr, probe_in, serve};
use crate::lifecycle::{
    cleanup_removes_everything, flow_survives_restart, node_leaves, repairs_drift,
    status_lists_the_nodes,
};
use crate::traffic::{
    foreign_nat_to_the_overlay_address, full_mesh, full_mtu_transfer, icmp_errors_reach_the_pod,
    masquerade, no_host_routing_between_ebpf_nodes, service_across_nodes,
};

fn whole_cluster(modes: [&str; NODES], pod_mtu: u32) {
    let mut c = Cluster::new(modes, 2);
    full_mesh(&c);
    if modes[0] == "ebpf" && modes[1] == "ebpf" {
        no_host_routing_between_ebpf_nodes(&c);
    }
    service_across_nodes(&c);
    full_mtu_transfer(&c, pod_mtu);
    masquerade(&mut c);
    if modes[0] != "host-gw" {
        foreign_nat_to_the_overlay_address(&c);
    }
    flow_survives_restart(&mut c, modes[0]);
    if modes.iter().all(|m| *m == modes[0]) {
        status_lists_the_nodes(&c, modes[0]);
    }
    repairs_drift(&c);
    if modes[0] != "host-gw" {
        icmp_errors_reach_the_pod(&c);
    }
    node_leaves(&mut c, modes);
    cleanup_removes_everything(&mut c);
}

#[test]
fn vxlan_cluster() {
    whole_cluster(["vxlan"; NODES], VXLAN_POD_MTU);
}

#[test]
fn ebpf_cluster() {
    whole_cluster(["ebpf"; NODES], VXLAN_POD_MTU);
}

/// vxlan and ebpf nodes in one cluster: the same wire format.
#[test]
fn mixed_vxlan_and_ebpf_cluster() {
    whole_cluster(["ebpf", "vxlan", "ebpf"], VXLAN_POD_MTU);
}

#[test]
fn host_gw_cluster() {
    whole_cluster(["host-gw"; NODES], 1500);
}

/// A `v1 Node` manifest.
fn node_yaml(name: &str, ip: &str, pod_cidr: &str, vtep_mac: Option<&str>) -> String {
    let annotation = vtep_mac
        .map(|mac| format!("  annotations:\n    gannet.io/vtep-mac: \"{mac}\"\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{annotation}spec:\n  podCIDRs: [{pod_cidr}]\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n---\n"
    )
}

/// Without a control plane: Node manifests in each agent's manifest directory give the same
/// overlay, and this node's manifest gives its subnet file.
#[test]
fn node_manifests_build_the_overlay_without_a_control_plane() {
    manifest_cluster("vxlan", false);
}

/// VXLAN over an IPv6 underlay (the nodes' addresses are IPv6; the pods' IPv4): 70 bytes of
/// overhead, the tunnel endpoints IPv6, in both VXLAN modes.
#[test]
fn vxlan_and_ebpf_over_an_ipv6_underlay() {
    manifest_cluster("vxlan", true);
    manifest_cluster("ebpf", true);
}

/// Two nodes in `mode` from Node manifests; the nodes' addresses IPv6 with `ipv6_underlay`.
fn manifest_cluster(mode: &str, ipv6_underlay: bool) {
    let underlay = Underlay::new(2).expect("underlay");
    let node_ip = |i: usize| {
        let node = &underlay.nodes()[i];
        if ipv6_underlay {
            node.ipv6.to_string()
        } else {
            node.ipv4.to_string()
        }
    };
    let mut agents = Vec::new();
    let mut cgroups = Vec::new();
    for (i, node) in underlay.nodes().iter().enumerate() {
        let cgroup = Cgroup::new().unwrap();
        let ip = node_ip(i);
        agents.push(
            Agent::start_in(
                Some(&node.netns),
                &cgroup,
                &[
                    "--overlay",
                    mode,
                    "--node-name",
                    &node.name,
                    "--node-ip",
                    &ip,
                    "--cluster-cidr",
                    CLUSTER_CIDR,
                    "--masquerade=true",
                ],
            )
            .unwrap(),
        );
        cgroups.push(cgroup);
    }
    // The VTEP MACs, as the devices have them (a control plane would publish them).
    let macs: Vec<String> = underlay
        .nodes()
        .iter()
        .map(|node| {
            let link = node
                .netns
                .ip(&["-br", "link", "show", "gannet.vxlan"])
                .unwrap();
            link.split_whitespace().nth(2).unwrap().to_owned()
        })
        .collect();
    let manifests: String = underlay
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, node)| {
            node_yaml(
                &node.name,
                &node_ip(i),
                &format!("10.244.{}.0/24", 10 + i),
                Some(&macs[i]),
            )
        })
        .collect();
    for agent in &mut agents {
        agent
            .apply("nodes.yaml", &manifests, "node programmed")
            .unwrap();
    }
    let subnet = std::fs::read_to_string(agents[0].subnet_file()).unwrap();
    let mtu = if ipv6_underlay { 1430 } else { 1450 };
    assert_eq!(
        subnet,
        format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.10.1/24\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n"
        ),
        "the subnet file comes from this node's manifest"
    );
    let ipam = ScratchDir::new("gannet-ipam");
    let mut pods = Vec::new();
    for (i, node) in underlay.nodes().iter().enumerate() {
        let conf = json!({
            "cniVersion": "1.0.0", "name": "manifest-overlay", "type": "gannet-cni",
            "subnetFile": agents[i].subnet_file(), "agentSocket": agents[i].cni_socket(),
            "ipam": {"type": "gannet", "dataDir": ipam.0.join(&node.name)},
        });
        let netns = Netns::new("mpod").unwrap();
        let ip = pod_ip(&cni(&node.netns, &netns, "ADD", &format!("m{i}"), &conf));
        let server = serve(&netns, &format!("m{i}"), 8080, &[]);
        pods.push((server, netns, ip));
    }
    let report: Report = parse_json_output(&probe_in(
        &pods[0].1,
        None,
        &["tcp", "--to", &addr(&pods[1].2), "--count", "5"],
    ))
    .unwrap();
    assert_eq!(
        (report.ok, report.backend_count("m1")),
        (5, 5),
        "{mode} over IPv{}: {report:?}",
        if ipv6_underlay { 6 } else { 4 }
    );
    drop(pods);
    drop(agents);
}

/// host-gw reports a node that is not on the underlay's segment (log and status) instead of
/// routing into nowhere.
#[test]
fn host_gw_reports_a_node_off_the_segment() {
    let underlay = Underlay::new(1).expect("underlay");
    let node = &underlay.nodes()[0];
    let cgroup = Cgroup::new().unwrap();
    let ip = node.ipv4.to_string();
    let mut agent = Agent::start_in(
        Some(&node.netns),
        &cgroup,
        &[
            "--overlay",
            "host-gw",
            "--node-name",
            &node.name,
            "--node-ip",
            &ip,
            "--masquerade=false",
        ],
    )
    .unwrap();
    let manifests = format!(
        "{}{}",
        node_yaml(&node.name, &ip, "10.244.20.0/24", None),
        node_yaml("far", "192.0.2.50", "10.244.21.0/24", None)
    );
    agent
        .apply("nodes.yaml", &manifests, "not (fully) reachable")
        .unwrap();
    let status = agent.status().unwrap();
    let far = &status["overlay"]["nodes"][0];
    assert_eq!(far["name"], "far", "{status}");
    assert!(
        far["problem"]
            .as_str()
            .is_some_and(|p| p.contains("not on this node's segment")),
        "{status}"
    );
    let routes = node.netns.ip(&["route", "show", "proto", "87"]).unwrap();
    assert!(routes.trim().is_empty(), "no route into nowhere: {routes}");
}

/// A gannetd started in another mode removes what the old one needed and the new one does not:
/// the VXLAN device (vxlan → host-gw), the nftables table (`--masquerade=false`), gannet's routes
/// (→ `none`).
#[test]
fn a_mode_change_leaves_nothing_of_the_old_mode() {
    let underlay = Underlay::new(2).expect("underlay");
    let node = &underlay.nodes()[0];
    let cgroup = Cgroup::new().unwrap();
    let ip = node.ipv4.to_string();
    let manifests = format!(
        "{}{}",
        node_yaml(&node.name, &ip, "10.244.30.0/24", None),
        node_yaml(
            &underlay.nodes()[1].name,
            &underlay.nodes()[1].ipv4.to_string(),
            "10.244.31.0/24",
            Some("0e:00:00:00:00:31")
        )
    );
    let args = |mode: &[&'static str]| {
        let mut all: Vec<String> = ["--node-name", &node.name, "--node-ip", &ip]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        all.extend(mode.iter().map(|s| (*s).to_owned()));
        all
    };
    let nft_tables = || {
        let mut cmd = Command::new("nft");
        cmd.args(["list", "tables"]);
        let out = run_in(cmd, Some(&node.netns), None, Duration::from_secs(5)).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let links = || node.netns.ip(&["link", "show"]).unwrap();
    let routes = || node.netns.ip(&["route", "show", "proto", "87"]).unwrap();

    let vxlan = args(&[
        "--overlay",
        "vxlan",
        "--cluster-cidr",
        CLUSTER_CIDR,
        "--masquerade=true",
    ]);
    let vxlan: Vec<&str> = vxlan.iter().map(String::as_str).collect();
    let mut agent = Agent::start_in(Some(&node.netns), &cgroup, &vxlan).unwrap();
    agent
        .apply("nodes.yaml", &manifests, "node programmed")
        .unwrap();
    assert!(links().contains("gannet.vxlan"), "{}", links());
    assert!(nft_tables().contains("inet gannet"), "{}", nft_tables());
    assert!(
        routes().contains("10.244.31.0/24 via 10.244.31.0 dev gannet.vxlan"),
        "{}",
        routes()
    );

    agent.stop(libc::SIGTERM).unwrap();
    let host_gw = args(&["--overlay", "host-gw", "--masquerade=false"]);
    let host_gw: Vec<&str> = host_gw.iter().map(String::as_str).collect();
    agent.restart_with(&host_gw).unwrap();
    agent.wait_log("node programmed", 1).unwrap();
    assert!(!links().contains("gannet.vxlan"), "{}", links());
    assert!(!nft_tables().contains("gannet"), "{}", nft_tables());
    assert!(
        routes().contains(&format!(
            "10.244.31.0/24 via {} dev eth0",
            underlay.nodes()[1].ipv4
        )),
        "{}",
        routes()
    );

    agent.stop(libc::SIGTERM).unwrap();
    let none = args(&["--overlay", "none"]);
    let none: Vec<&str> = none.iter().map(String::as_str).collect();
    agent.restart_with(&none).unwrap();
    assert!(routes().trim().is_empty(), "{}", routes());
}
