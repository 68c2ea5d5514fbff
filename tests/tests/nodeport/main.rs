//! Traffic from outside the cluster, end to end: three nodes (network namespaces on an underlay
//! bridge in a fourth), an "external client" namespace on the same underlay, one gannet-control,
//! one gannetd per node with the VXLAN overlay and the NodePort program on its underlay
//! interface, pods wired by the real gannet-cni, real packets from the external client.
//!
//! One test builds the cluster once and checks, in order: NodePort over TCP, UDP and IPv6 through
//! every node, reaching backends on the same and on other nodes; `externalTrafficPolicy: Local`
//! (client address kept, only the local endpoint, nothing from a node without one, the
//! healthCheckNodePort answering 200/503); an external IP; two nodes picking the same backend
//! for the same flow; a tracked connection across a `SIGKILL` and restart of gannetd; `gannetd
//! status`.
//!
//! Nothing here touches the root network namespace or the root cgroup.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

mod external;
mod fixture;
mod flows;
mod status;

use gannet_testkit::cluster::EXTERNAL_V4;

use crate::external::{
    external_ip_and_consistent_hashing, icmp_errors_come_back, local_policy, nodeport_every_node,
    source_ranges_and_rejects,
};
use crate::fixture::{Cluster, NODES, serve, stop_server};
use crate::flows::{
    affinity_pins_a_client, cluster_ips_from_a_pod, flow_survives_restart, full_conntrack, hairpin,
    maglev_across_nodes, udp_flows_of_a_removed_backend_move,
};
use crate::status::{status, status_nft, status_with};

#[test]
fn nodeport_from_outside() {
    let mut c = Cluster::new("vxlan", &[]);
    c.apply_services();
    nodeport_every_node(&c);
    local_policy(&mut c);
    external_ip_and_consistent_hashing(&c);
    source_ranges_and_rejects(&c);
    icmp_errors_come_back(&c);
    cluster_ips_from_a_pod(&c);
    affinity_pins_a_client(&c);
    hairpin(&c);
    full_conntrack(&mut c);
    maglev_across_nodes(&mut c);
    flow_survives_restart(&mut c);
    status(&c);
}

/// `--dataplane nftables`: the same checks of traffic from outside (node ports over TCP, UDP and
/// IPv6 on every node, `externalTrafficPolicy: Local`, an external IP, source ranges, refusals,
/// ICMP errors, hairpin, a flow across a restart), served by gannet's nftables table instead of
/// programs; pods reach services through the same table (no socket load balancer).
#[test]
fn nodeport_from_outside_nftables() {
    let mut c = Cluster::new("vxlan", &["--dataplane", "nftables"]);
    c.apply_services();
    nodeport_every_node(&c);
    local_policy(&mut c);
    external_ip_and_consistent_hashing(&c);
    source_ranges_and_rejects(&c);
    icmp_errors_come_back(&c);
    cluster_ips_from_a_pod(&c);
    affinity_pins_a_client(&c);
    hairpin(&c);
    udp_flows_of_a_removed_backend_move(&mut c);
    flow_survives_restart(&mut c);
    status_nft(&c);
}

/// `--nodeport-acceleration xdp` with host-gw: backends on other nodes and their replies cross
/// the same interface, so XDP sends them itself (`XDP_TX`); local backends pass to tc. The same
/// checks as with tc give the same results.
#[test]
fn nodeport_from_outside_xdp() {
    let mut c = Cluster::new("host-gw", &["--nodeport-acceleration", "xdp"]);
    c.apply_services();
    for node in &c.nodes {
        assert!(
            node.agent
                .log_count("NodePort XDP program attached (native)")
                >= 1,
            "veth has native XDP: {}",
            node.agent.logs()
        );
    }
    nodeport_every_node(&c);
    local_policy(&mut c);
    external_ip_and_consistent_hashing(&c);
    source_ranges_and_rejects(&c);
    flow_survives_restart(&mut c);
    status_with(&c, &["eth0"]);
    let status = c.nodes[0].agent.status().unwrap();
    assert!(
        status["nodeport"]["counters"]["xdp_tx"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "backends on other nodes and their replies were sent from XDP: {:#}",
        status["nodeport"]
    );
    assert_eq!(
        status["nodeport"]["xdp_interfaces"],
        serde_json::json!(["eth0"]),
        "{:#}",
        status["nodeport"]
    );
}

/// `--lb-mode dsr` over the VXLAN overlay: a backend on another node gets the client's own
/// address and answers it directly (the frontend travels in an IPv4 option and comes off on the
/// backend's node); IPv6 keeps SNAT. The same NodePort checks as with SNAT pass.
#[test]
fn nodeport_from_outside_dsr() {
    let mut c = Cluster::new("vxlan", &["--lb-mode", "dsr"]);
    c.apply_services();
    nodeport_every_node(&c);
    // A backend on node 1, reached through node 0, saw the client's address.
    let server = c.nodes[1].pods[0].server.take().expect("the server");
    let seen = stop_server(server);
    c.nodes[1].pods[0].server = Some(serve(
        &c.nodes[1].pods[0].netns,
        &c.nodes[1].pods[0].name,
        8080,
    ));
    assert!(
        seen.tcp_clients.contains_key(&EXTERNAL_V4.to_string()),
        "with DSR the backend sees the client's address: {seen:?}"
    );
    for node in 1..NODES {
        let status = c.nodes[node].agent.status().unwrap();
        assert!(
            status["nodeport"]["counters"]["dsr_in"]
                .as_u64()
                .unwrap_or(0)
                > 0,
            "node {node} took DSR packets: {:#}",
            status["nodeport"]
        );
    }
    flow_survives_restart(&mut c);
}
