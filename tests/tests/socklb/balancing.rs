//! How new connections and datagrams are spread over a service's backends, over IPv4 and IPv6,
//! what the client sees of them, and a service without ready backends.

use gannet_testkit::agent::{endpoint_slice_yaml, service_yaml};

use crate::fixture::{Cluster, Plane, VIP6, assert_all_ok};

#[test]
fn tcp_and_udp_reach_backends_and_the_client_sees_only_the_service_address() {
    tcp_and_udp_reach_backends_and_the_client_sees_only_the_service_address_on(Plane::Ebpf);
}

#[test]
fn tcp_and_udp_reach_backends_and_the_client_sees_only_the_service_address_nftables() {
    tcp_and_udp_reach_backends_and_the_client_sees_only_the_service_address_on(Plane::Nftables);
}

fn tcp_and_udp_reach_backends_and_the_client_sees_only_the_service_address_on(plane: Plane) {
    let mut c = Cluster::on(plane, 2, &[]);
    c.publish(None, &[(1, true), (2, true)]);

    let tcp = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "20"]);
    assert_all_ok(&tcp, "TCP through the ClusterIP");
    assert_eq!(
        tcp.peers.keys().collect::<Vec<_>>(),
        vec!["10.96.0.10:80"],
        "getpeername() must return the service address, not a backend: {tcp:?}"
    );

    // DNS-style: one unconnected socket, sendto the service, recvfrom reports the service.
    let udp = c.probe(&["udp", "--to", "10.96.0.10:53", "--count", "20"]);
    assert_all_ok(&udp, "UDP through the ClusterIP");
    assert_eq!(
        udp.peers.keys().collect::<Vec<_>>(),
        vec!["10.96.0.10:53"],
        "UDP replies must arrive from the service address: {udp:?}"
    );

    let connected = c.probe(&[
        "udp",
        "--to",
        "10.96.0.10:53",
        "--count",
        "5",
        "--connected",
    ]);
    assert_all_ok(&connected, "connected UDP through the ClusterIP");

    if plane == Plane::Nftables {
        return;
    }
    // The same client outside the cgroup is not balanced: the VIP is routed nowhere.
    let outside = c.probe_outside_cgroup(&[
        "--timeout-ms",
        "300",
        "tcp",
        "--to",
        "10.96.0.10:80",
        "--count",
        "1",
    ]);
    assert_eq!(
        outside.ok, 0,
        "outside gannetd's cgroup the ClusterIP must not be translated: {outside:?}"
    );
}

#[test]
fn three_backends_share_new_connections_evenly() {
    three_backends_share_new_connections_evenly_on(Plane::Ebpf);
}

#[test]
fn three_backends_share_new_connections_evenly_nftables() {
    three_backends_share_new_connections_evenly_on(Plane::Nftables);
}

fn three_backends_share_new_connections_evenly_on(plane: Plane) {
    let mut c = Cluster::on(plane, 3, &[]);
    c.publish(None, &[(1, true), (2, true), (3, true)]);
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "900"]);
    assert_all_ok(&report, "900 connections");
    for b in ["b1", "b2", "b3"] {
        let n = report.backend_count(b);
        // 33% ± 8% of 900.
        assert!(
            (225..=372).contains(&n),
            "backend {b} got {n} of 900 connections, expected 300 ± 72: {:?}",
            report.backends
        );
    }
}

#[test]
fn udp_sticks_to_one_backend_per_socket() {
    udp_sticks_to_one_backend_per_socket_on(Plane::Ebpf);
}

#[test]
fn udp_sticks_to_one_backend_per_socket_nftables() {
    udp_sticks_to_one_backend_per_socket_on(Plane::Nftables);
}

fn udp_sticks_to_one_backend_per_socket_on(plane: Plane) {
    let mut c = Cluster::on(plane, 3, &[]);
    c.publish(None, &[(1, true), (2, true), (3, true)]);
    let one_socket = c.probe(&["udp", "--to", "10.96.0.10:53", "--count", "60"]);
    assert_all_ok(&one_socket, "60 datagrams on one socket");
    assert_eq!(
        one_socket.backends.len(),
        1,
        "one UDP socket must stay on one backend: {:?}",
        one_socket.backends
    );
    let many = c.probe(&[
        "udp",
        "--to",
        "10.96.0.10:53",
        "--count",
        "90",
        "--per-request-socket",
    ]);
    assert_all_ok(&many, "90 sockets");
    assert_eq!(
        many.backends.len(),
        3,
        "new sockets must spread over all backends: {:?}",
        many.backends
    );
}

#[test]
fn ipv6_services_work_for_tcp_and_udp() {
    ipv6_services_work_for_tcp_and_udp_on(Plane::Ebpf);
}

#[test]
fn ipv6_services_work_for_tcp_and_udp_nftables() {
    ipv6_services_work_for_tcp_and_udp_on(Plane::Nftables);
}

fn ipv6_services_work_for_tcp_and_udp_on(plane: Plane) {
    let mut c = Cluster::on(plane, 2, &[]);
    let endpoints: Vec<(String, bool)> = (1..=2).map(|i| (c.backend_v6(i), true)).collect();
    c.agent
        .apply(
            "v6.yaml",
            &format!(
                "{}---\n{}",
                service_yaml(
                    "web6",
                    &[VIP6],
                    &[("http", 80, "TCP"), ("dns", 53, "UDP")],
                    None
                ),
                endpoint_slice_yaml(
                    "web6-1",
                    "web6",
                    "IPv6",
                    &[("http", "TCP"), ("dns", "UDP")],
                    &endpoints
                )
            ),
            "manifests applied",
        )
        .unwrap();
    let tcp = c.probe(&["tcp", "--to", "[fd00:96::10]:80", "--count", "60"]);
    assert_all_ok(&tcp, "TCP over IPv6");
    assert_eq!(
        tcp.backends.len(),
        2,
        "both v6 backends: {:?}",
        tcp.backends
    );
    assert_eq!(
        tcp.peers.keys().collect::<Vec<_>>(),
        vec!["[fd00:96::10]:80"],
        "getpeername() over IPv6"
    );
    let udp = c.probe(&["udp", "--to", "[fd00:96::10]:53", "--count", "10"]);
    assert_all_ok(&udp, "UDP over IPv6");
    assert_eq!(
        udp.peers.keys().collect::<Vec<_>>(),
        vec!["[fd00:96::10]:53"],
        "UDP replies over IPv6 from the service address"
    );
}

#[test]
fn service_without_ready_backends_refuses_at_once() {
    service_without_ready_backends_refuses_at_once_on(Plane::Ebpf);
}

#[test]
fn service_without_ready_backends_refuses_at_once_nftables() {
    service_without_ready_backends_refuses_at_once_on(Plane::Nftables);
}

fn service_without_ready_backends_refuses_at_once_on(plane: Plane) {
    let mut c = Cluster::on(plane, 1, &[]);
    c.publish(None, &[(1, false)]);
    let tcp = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "5"]);
    assert_eq!(
        (tcp.ok, tcp.error_count("ECONNREFUSED")),
        (0, 5),
        "connect() to a service without ready backends must fail with ECONNREFUSED \
         (not time out, not reach anything): {tcp:?}"
    );
    let udp = c.probe(&["udp", "--to", "10.96.0.10:53", "--count", "3"]);
    assert_eq!(
        (udp.ok, udp.error_count(plane.udp_refusal())),
        (0, 3),
        "sendto() to a service without ready backends must fail with {}: {udp:?}",
        plane.udp_refusal()
    );
}
