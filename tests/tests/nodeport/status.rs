//! `gannetd status` on the nodes: interfaces, frontends and their backends.

use std::time::Duration;

use gannet_testkit::eventually_ok;
use serde_json::{Value, json};

use crate::fixture::{Cluster, NODE_PORT, NODES, sock};

pub(crate) fn status(c: &Cluster) {
    status_with(c, &["eth0", "gannet.vxlan"]);
}

/// `gannetd status` of the nftables data plane: the frontends as its table holds them.
pub(crate) fn status_nft(c: &Cluster) {
    let status = c.nodes[0].agent.status().unwrap();
    assert_eq!(status["dataplane"], "nftables", "{status:#}");
    assert!(status.get("nodeport").is_none(), "no program: {status:#}");
    node_port_entry_has_every_node(c, &status, "backends");
}

/// The status entry of node 0's node port: external, with a backend on every node (under
/// `field`: the nftables table lists `backends`, the eBPF plane `packet_backends`).
pub(crate) fn node_port_entry_has_every_node(c: &Cluster, status: &Value, field: &str) {
    let frontend = format!("{}/TCP", sock(&c.nodes[0].ipv4, NODE_PORT));
    // The names are written at most once a second after a change (or a restart).
    eventually_ok(
        "the Service port of the node port in gannetd status",
        Duration::from_secs(5),
        || {
            let status = c.nodes[0].agent.status().map_err(|e| format!("{e:#}"))?;
            let service = status["services"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["frontend"] == frontend.as_str())
                .map(|s| s["service"].clone());
            if service == Some(json!("default/web:http")) {
                Ok(())
            } else {
                Err(format!("{frontend}: {service:?}"))
            }
        },
    );
    let services = status["services"].as_array().cloned().unwrap_or_default();
    let entry = services
        .iter()
        .find(|s| s["frontend"] == frontend.as_str())
        .unwrap_or_else(|| panic!("{frontend} in the status: {status:#}"));
    assert_eq!(entry["external"], true, "{entry:#}");
    assert_eq!(
        entry[field].as_array().map(Vec::len),
        Some(NODES),
        "{entry:#}"
    );
}

pub(crate) fn status_with(c: &Cluster, expected_interfaces: &[&str]) {
    let status = c.nodes[0].agent.status().unwrap();
    let np = &status["nodeport"];
    assert_eq!(np["enabled"], true, "{status:#}");
    let interfaces: Vec<&str> = np["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(interfaces, expected_interfaces, "{np:#}");
    assert!(
        np["counters"]["new_flows"].as_u64().unwrap_or(0) > 0,
        "{np:#}"
    );
    assert!(np["conntrack_entries"].as_u64().unwrap_or(0) > 0, "{np:#}");
    node_port_entry_has_every_node(c, &status, "packet_backends");
    // The same, as people read it: one table per part.
    let table = c.nodes[0].agent.status_table().unwrap();
    for part in [
        "Data plane: ebpf",
        "SERVICES",
        "ENDPOINTS",
        "NODEPORT",
        "OVERLAY",
    ] {
        assert!(table.contains(part), "{part} in:\n{table}");
    }
    let frontend = status["services"][0]["frontend"]
        .as_str()
        .unwrap_or_default();
    assert!(
        table.lines().any(|l| l.starts_with(frontend)),
        "a row for {frontend}:\n{table}"
    );
    let line = |key: &str| {
        table
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
    };
    assert!(
        line("interfaces").ends_with(&expected_interfaces.join(",")),
        "{table}"
    );
}
