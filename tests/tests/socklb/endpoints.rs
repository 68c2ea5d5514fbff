//! Endpoint changes: a removed endpoint, terminating endpoints, churn under load.

use std::time::{Duration, Instant};

use gannet_testkit::{
    agent::endpoint_slice_yaml,
    probe::{Report, parse_json_output},
};

use crate::fixture::{Cluster, Plane, assert_all_ok};

#[test]
fn removed_endpoint_gets_no_new_connections_but_established_ones_keep_working() {
    removed_endpoint_gets_no_new_connections_but_established_ones_keep_working_on(Plane::Ebpf);
}

#[test]
fn removed_endpoint_gets_no_new_connections_but_established_ones_keep_working_nftables() {
    removed_endpoint_gets_no_new_connections_but_established_ones_keep_working_on(Plane::Nftables);
}

fn removed_endpoint_gets_no_new_connections_but_established_ones_keep_working_on(plane: Plane) {
    let mut c = Cluster::on(plane, 2, &[]);
    // Only b1 at first, so the held connection lands on b1.
    c.publish(None, &[(1, true)]);
    let mut held = c.spawn_probe(&["hold", "--to", "10.96.0.10:80"]);
    held.wait_for_line("connected", Duration::from_secs(10))
        .expect("held connection");
    held.send_line("ping").unwrap();
    let first = held.read_line(Duration::from_secs(5)).unwrap();
    assert_eq!(first.trim(), "b1", "the held connection must reach b1");

    // b1 becomes not ready, b2 ready.
    c.publish_endpoints(&[(1, false), (2, true)]);
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "100"]);
    assert_all_ok(&report, "connections after the change");
    assert_eq!(
        report.backend_count("b1"),
        0,
        "no new connection may reach the removed endpoint: {:?}",
        report.backends
    );

    held.send_line("ping").unwrap();
    let again = held.read_line(Duration::from_secs(5)).unwrap();
    assert_eq!(
        again.trim(),
        "b1",
        "the established connection to the removed endpoint must keep working"
    );
}

#[test]
fn terminating_endpoints_serve_only_while_none_is_ready() {
    terminating_endpoints_serve_only_while_none_is_ready_on(Plane::Ebpf);
}

#[test]
fn terminating_endpoints_serve_only_while_none_is_ready_nftables() {
    terminating_endpoints_serve_only_while_none_is_ready_on(Plane::Nftables);
}

/// kube-proxy's fallback: a service's backends are its ready endpoints, or, while none is
/// ready, the serving and terminating ones (a rollout's last pods draining).
fn terminating_endpoints_serve_only_while_none_is_ready_on(plane: Plane) {
    let mut c = Cluster::on(plane, 2, &[]);
    c.publish(None, &[(1, true), (2, true)]);
    let addresses = [c.backend_v4(1), c.backend_v4(2)];
    let slice = |endpoints: &[(usize, &str)]| {
        let mut yaml = endpoint_slice_yaml(
            "web-1",
            "web",
            "IPv4",
            &[("http", "TCP"), ("dns", "UDP")],
            &[],
        );
        for (i, conditions) in endpoints {
            yaml.push_str(&format!(
                "- addresses: [\"{}\"]\n  conditions: {{{conditions}}}\n",
                addresses[*i - 1]
            ));
        }
        yaml
    };
    let draining = "ready: false, serving: true, terminating: true";
    let gone = "ready: false, serving: false, terminating: true";

    let yaml = slice(&[(1, draining), (2, "ready: true")]);
    c.agent
        .apply("web-eps.yaml", &yaml, "manifests applied")
        .unwrap();
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "40"]);
    assert_all_ok(&report, "a ready and a terminating endpoint");
    assert_eq!(
        report.backend_count("b2"),
        40,
        "while one is ready, a terminating endpoint gets no new connection: {report:?}"
    );

    let yaml = slice(&[(1, draining), (2, gone)]);
    c.agent
        .apply("web-eps.yaml", &yaml, "manifests applied")
        .unwrap();
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "40"]);
    assert_all_ok(&report, "only a serving terminating endpoint");
    assert_eq!(
        report.backend_count("b1"),
        40,
        "with none ready, the serving terminating endpoint serves: {report:?}"
    );

    let yaml = slice(&[(1, gone)]);
    c.agent
        .apply("web-eps.yaml", &yaml, "manifests applied")
        .unwrap();
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "3"]);
    assert_eq!(
        (report.ok, report.error_count("ECONNREFUSED")),
        (0, 3),
        "an endpoint that no longer serves is no backend: {report:?}"
    );
}

#[test]
fn endpoint_churn_under_load_never_fails_a_connection() {
    endpoint_churn_under_load_never_fails_a_connection_on(Plane::Ebpf);
}

#[test]
fn endpoint_churn_under_load_never_fails_a_connection_nftables() {
    endpoint_churn_under_load_never_fails_a_connection_on(Plane::Nftables);
}

fn endpoint_churn_under_load_never_fails_a_connection_on(plane: Plane) {
    let mut c = Cluster::on(plane, 3, &[]);
    c.publish(None, &[(1, true), (2, true), (3, true)]);
    let mut looping = c.spawn_probe(&["loop", "--to", "10.96.0.10:80", "--duration-ms", "3000"]);
    let sets: [&[(usize, bool)]; 4] = [
        &[(1, true)],
        &[(2, true), (3, true)],
        &[(1, true), (2, true), (3, true)],
        &[(3, true)],
    ];
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        c.publish_endpoints(sets[round % sets.len()]);
        round += 1;
    }
    let report: Report =
        parse_json_output(&looping.wait_output(Duration::from_secs(30)).unwrap()).unwrap();
    assert!(round >= 4, "only {round} endpoint changes were applied");
    assert_all_ok(
        &report,
        &format!("connections during {round} endpoint changes"),
    );
}
