//! UDP sockets over time: connected sockets of a removed backend, long-lived sockets while others
//! churn, one socket talking to two services that share a backend.

use std::time::Duration;

use gannet_testkit::{
    ChildGuard,
    agent::{endpoint_slice_yaml, service_yaml},
};

use crate::fixture::{Cluster, Plane, assert_all_ok, ping};

#[test]
fn connected_udp_sockets_of_a_removed_backend_are_terminated_and_reconnect_elsewhere() {
    // gannetd in the node's namespace, as on a node; clients there (host network) and in pods'
    // namespaces of their own: the client pod's, and b2's (a second pod namespace).
    let mut c = Cluster::ebpf_in_node(2, &[]);
    c.publish(None, &[(1, true)]);
    let svc = ["--udp", "--to", "10.96.0.10:53"];
    let (mut udp, connected) = c.hold_in_node(&svc, true);
    assert_eq!(
        connected, "connected 10.96.0.10:53",
        "getpeername() of the UDP socket"
    );
    let (mut in_pod, connected) = c.hold_in_pod(0, &svc, true);
    assert_eq!(
        connected, "connected 10.96.0.10:53",
        "getpeername() of the UDP socket in the client pod"
    );
    let (mut in_b2, _) = c.hold_in_pod(2, &svc, true);
    for (probe, what) in [
        (&mut udp, "in the node's namespace"),
        (&mut in_pod, "in the client pod"),
        (&mut in_b2, "in b2's pod"),
    ] {
        assert_eq!(
            ping(probe),
            "b1",
            "the connected UDP socket {what} must reach b1"
        );
    }
    let (mut tcp, _) = c.hold_in_node(&["--to", "10.96.0.10:80"], true);
    assert_eq!(
        ping(&mut tcp),
        "b1",
        "the held TCP connection must reach b1"
    );
    let (mut tcp_in_pod, _) = c.hold_in_pod(0, &["--to", "10.96.0.10:80"], true);
    assert_eq!(
        ping(&mut tcp_in_pod),
        "b1",
        "the held TCP connection in the client pod must reach b1"
    );
    // UDP sockets connected to b1 itself, by processes outside gannetd's cgroup (in the node's
    // namespace and in the client pod's): not ours.
    let b1 = format!("{}:8080", c.backend_v4(1));
    let (mut outside, _) = c.hold_in_node(&["--udp", "--to", &b1], false);
    assert_eq!(ping(&mut outside), "b1");
    let (mut outside_in_pod, _) = c.hold_in_pod(0, &["--udp", "--to", &b1], false);
    assert_eq!(ping(&mut outside_in_pod), "b1");

    // b1 leaves the service (not ready; its server stays up), b2 joins.
    c.publish_endpoints(&[(1, false), (2, true)]);
    for (probe, what) in [
        (&mut udp, "in the node's namespace"),
        (&mut in_pod, "in the client pod's namespace"),
        (&mut in_b2, "in b2's pod's namespace"),
    ] {
        assert_eq!(
            ping(probe),
            "error: ECONNABORTED",
            "the UDP socket {what} connected to the removed backend must have been terminated"
        );
        probe.send_line("reconnect").unwrap();
        let again = probe.read_line(Duration::from_secs(5)).unwrap();
        assert_eq!(
            again.trim(),
            "connected 10.96.0.10:53",
            "connecting again {what}"
        );
        assert_eq!(
            ping(probe),
            "b2",
            "connecting again {what} must reach the service's remaining backend"
        );
    }
    for (probe, what) in [
        (&mut tcp, "in the node's namespace"),
        (&mut tcp_in_pod, "in the client pod"),
    ] {
        assert_eq!(
            ping(probe),
            "b1",
            "a TCP connection {what} to a removed but running endpoint must keep working"
        );
    }
    for (probe, what) in [
        (&mut outside, "in the node's namespace"),
        (&mut outside_in_pod, "in the client pod"),
    ] {
        assert_eq!(
            ping(probe),
            "b1",
            "a socket {what} outside gannetd's cgroup must be left alone"
        );
    }

    // Deleting the service terminates the sockets connected to its backends too.
    c.agent
        .apply("web-svc.yaml", "", "manifests applied")
        .expect("service deleted");
    for (probe, what) in [
        (&mut udp, "in the node's namespace"),
        (&mut in_pod, "in the client pod"),
    ] {
        assert_eq!(
            ping(probe),
            "error: ECONNABORTED",
            "the UDP socket {what} of a deleted service must have been terminated"
        );
    }
}

/// Sends `command` (`ping-from`, `ping-to ADDR`, `peer`) to a `hold --udp` probe and returns
/// its answer.
fn udp_command(probe: &mut ChildGuard, command: &str) -> String {
    probe.send_line(command).expect("writing to the probe");
    probe
        .read_line(Duration::from_secs(5))
        .expect("the probe answers every command")
        .trim()
        .to_owned()
}

#[test]
fn udp_sockets_keep_their_backend_and_the_service_address_while_others_churn() {
    udp_sockets_keep_their_backend_and_the_service_address_while_others_churn_on(Plane::Ebpf);
}

#[test]
fn udp_sockets_keep_their_backend_and_the_service_address_while_others_churn_nftables() {
    udp_sockets_keep_their_backend_and_the_service_address_while_others_churn_on(Plane::Nftables);
}

/// One pod churning short-lived UDP sockets must not take a long-lived socket's state away: its
/// backend (per-socket stickiness) and the service address its replies and `getpeername()`
/// show. gannetd's LRU maps at their smallest, so node-wide entries would be evicted.
fn udp_sockets_keep_their_backend_and_the_service_address_while_others_churn_on(plane: Plane) {
    let mut c = Cluster::on(
        plane,
        3,
        &["--max-rev-nat", "1024", "--max-affinity", "1024"],
    );
    c.publish(None, &[(1, true), (2, true), (3, true)]);
    let (mut connected, line) = c.hold_in_pod(0, &["--udp", "--to", "10.96.0.10:53"], true);
    assert_eq!(
        line, "connected 10.96.0.10:53",
        "getpeername() after connect"
    );
    let (mut unconnected, _) = c.hold_in_pod(
        0,
        &["--udp", "--unconnected", "--to", "10.96.0.10:53"],
        true,
    );
    let before_connected = udp_command(&mut connected, "ping-from");
    let before_unconnected = udp_command(&mut unconnected, "ping-from");
    for (answer, what) in [
        (&before_connected, "connected"),
        (&before_unconnected, "unconnected"),
    ] {
        assert!(
            answer.starts_with('b') && answer.ends_with(" 10.96.0.10:53"),
            "the {what} socket's reply must come from the service address: {answer}"
        );
    }

    // Four times the maps' capacity of sockets, one request each, from the same pod.
    let churn = c.probe(&[
        "udp",
        "--to",
        "10.96.0.10:53",
        "--count",
        "4096",
        "--per-request-socket",
    ]);
    assert_all_ok(&churn, "4096 short-lived sockets");

    for round in 0..5 {
        assert_eq!(
            udp_command(&mut connected, "ping-from"),
            before_connected,
            "round {round}: the connected socket's reply after the churn (backend, source)"
        );
        assert_eq!(
            udp_command(&mut unconnected, "ping-from"),
            before_unconnected,
            "round {round}: the unconnected socket must keep its backend, and its reply must \
             come from the service address, after the churn"
        );
    }
    assert_eq!(
        udp_command(&mut connected, "peer"),
        "10.96.0.10:53",
        "getpeername() of the connected socket after the churn"
    );
}

/// Publishes service `api` (UDP 53 "dns" at 10.96.0.11) with backend `backend` (a pod index).
fn publish_api(c: &mut Cluster, backend: usize) {
    let endpoints = [(c.backend_v4(backend), true)];
    c.agent
        .apply(
            "api.yaml",
            &format!(
                "{}---\n{}",
                service_yaml("api", &["10.96.0.11"], &[("dns", 53, "UDP")], None),
                endpoint_slice_yaml("api-1", "api", "IPv4", &[("dns", "UDP")], &endpoints)
            ),
            "manifests applied",
        )
        .expect("service api applied");
}

/// Two services sharing a backend, one UDP socket talking to both: `recvmsg` sees only the
/// reply's source, so a reply is attributed to the service this socket last sent to that backend
/// through. When one service loses the backend, the socket moves on for that service only, and a
/// connected socket that reached the backend through the service that keeps it is left alone.
#[test]
fn a_udp_socket_talking_to_two_services_sharing_a_backend() {
    let mut c = Cluster::ebpf_in_node(2, &[]);
    c.publish(None, &[(1, true)]);
    publish_api(&mut c, 1);
    let (mut socket, _) = c.hold_in_pod(
        0,
        &["--udp", "--unconnected", "--to", "10.96.0.10:53"],
        true,
    );
    for to in [
        "10.96.0.10:53",
        "10.96.0.11:53",
        "10.96.0.10:53",
        "10.96.0.11:53",
    ] {
        assert_eq!(
            udp_command(&mut socket, &format!("ping-to {to}")),
            format!("b1 {to}"),
            "a reply to a datagram sent to {to} (both services have only b1)"
        );
    }
    // Both datagrams out before either reply is read: both replies come from b1, and the
    // socket last sent to b1 through api, so both show api (the documented rule; nothing in a
    // reply tells which datagram it answers).
    for to in ["10.96.0.10:53", "10.96.0.11:53"] {
        assert_eq!(udp_command(&mut socket, &format!("send-to {to}")), "sent");
    }
    for reply in 0..2 {
        assert_eq!(
            udp_command(&mut socket, "recv"),
            "b1 10.96.0.11:53",
            "reply {reply} to two datagrams in flight, the last one through api"
        );
    }

    // Connected sockets: one through web, one through api, both to b1. b1 leaves web: only the
    // socket that reached it through web is terminated.
    let (mut via_web, _) = c.hold_in_pod(0, &["--udp", "--to", "10.96.0.10:53"], true);
    let (mut via_api, _) = c.hold_in_pod(0, &["--udp", "--to", "10.96.0.11:53"], true);
    assert_eq!(ping(&mut via_web), "b1");
    assert_eq!(ping(&mut via_api), "b1");
    c.publish_endpoints(&[(1, false), (2, true)]);
    assert_eq!(
        ping(&mut via_web),
        "error: ECONNABORTED",
        "the socket connected to b1 through web, which lost it, must be terminated"
    );
    // The unconnected socket moves on from b1 at its next datagram to web, and keeps b1 for
    // api: the program checks the socket's backend against the service's current slots.
    assert_eq!(
        udp_command(&mut socket, "ping-to 10.96.0.10:53"),
        "b2 10.96.0.10:53",
        "the unconnected socket's next datagram to web, which lost b1"
    );
    assert_eq!(
        udp_command(&mut socket, "ping-to 10.96.0.11:53"),
        "b1 10.96.0.11:53",
        "the unconnected socket's next datagram to api, which keeps b1"
    );
    assert_eq!(
        udp_command(&mut via_api, "ping-from"),
        "b1 10.96.0.11:53",
        "the socket connected to b1 through api, which keeps it, must be left alone; gannetd's \
         log:\n{}",
        c.agent.logs()
    );
}
