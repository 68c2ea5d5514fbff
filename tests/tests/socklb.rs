//! Socket-level ClusterIP load balancing, end to end: gannetd attached to a test cgroup, backend
//! servers in pod namespaces, clients in a pod namespace *and* the test cgroup, real sockets.
//!
//! The behaviour checks run against both data planes, with the same assertions: the eBPF socket
//! load balancer (gannetd in the test's namespace, attached to the test cgroup), and the nftables
//! data plane (`*_nftables`: gannetd runs `--dataplane nftables` in the client pod's namespace,
//! whose table translates the client's connections in the nat output hook, as for a process on a
//! node). Where the planes differ by design the check says so.
//!
//! Nothing here touches the root network namespace or the root cgroup.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use gannet_testkit::{
    Cgroup, ChildGuard, Netns, PodNet, ScratchDir,
    agent::{AGENT_TIMEOUT, Agent, endpoint_slice_yaml, service_yaml},
    bin_path,
    probe::{Report, parse_json_output},
    run_in, spawn, unique_name,
};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// The data plane a check runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plane {
    Ebpf,
    Nftables,
}

impl Plane {
    /// What gannetd logs when a restart takes over what the killed one programmed.
    fn adopted(self) -> &'static str {
        match self {
            Plane::Ebpf => "adopted the running data plane",
            Plane::Nftables => "adopted the nftables table inet gannet-services",
        }
    }

    /// How `sendto()` from a local client to a service without backends fails at once: the
    /// socket load balancer refuses in the hook; the table rejects the datagram in the output
    /// hook, which the kernel reports to the sender as a dropped packet.
    fn udp_refusal(self) -> &'static str {
        match self {
            Plane::Ebpf => "ECONNREFUSED",
            Plane::Nftables => "EPERM",
        }
    }
}

/// A node with one client pod (pod 0) and `n` backend pods (pods 1..=n, named b1..bn) serving
/// TCP and UDP on port 8080 over IPv4 and IPv6, and gannetd attached to the client's cgroup
/// (eBPF) or programming the client pod's namespace (nftables). Field order is drop order.
struct Cluster {
    agent: Agent,
    _servers: Vec<ChildGuard>,
    cgroup: Cgroup,
    net: PodNet,
    plane: Plane,
}

impl Cluster {
    fn new(backends: usize, agent_args: &[&str]) -> Cluster {
        Cluster::on(Plane::Ebpf, backends, agent_args)
    }

    fn on(plane: Plane, backends: usize, agent_args: &[&str]) -> Cluster {
        Cluster::build(plane, false, backends, agent_args)
    }

    /// The eBPF data plane with gannetd in the node's namespace (where the bridge is), not the
    /// test's, as on a node: clients there are host-network ones, clients in pods are in
    /// namespaces of their own.
    fn ebpf_in_node(backends: usize, agent_args: &[&str]) -> Cluster {
        Cluster::build(Plane::Ebpf, true, backends, agent_args)
    }

    fn build(plane: Plane, in_node: bool, backends: usize, agent_args: &[&str]) -> Cluster {
        let net = PodNet::new(backends + 1).expect("building the pod network");
        let mut servers = Vec::new();
        for (i, pod) in net.pods().iter().enumerate().skip(1) {
            let mut cmd = Command::new(bin_path("gannet-probe"));
            cmd.args(["serve", "--name", &format!("b{i}")]).args([
                "--listen",
                "0.0.0.0:8080",
                "--listen",
                "[::]:8080",
            ]);
            let mut server = spawn(cmd, Some(&pod.netns), None).expect("starting a backend");
            server
                .wait_for_line("ready", Duration::from_secs(10))
                .expect("backend ready");
            servers.push(server);
        }
        let cgroup = Cgroup::new().expect("creating the test cgroup");
        let agent = match plane {
            Plane::Ebpf => Agent::start_in(in_node.then(|| net.node()), &cgroup, agent_args),
            Plane::Nftables => {
                let mut args = vec!["--dataplane", "nftables"];
                args.extend_from_slice(agent_args);
                Agent::start_in(Some(&net.pods()[0].netns), &cgroup, &args)
            }
        }
        .expect("starting gannetd");
        Cluster {
            agent,
            _servers: servers,
            cgroup,
            net,
            plane,
        }
    }

    fn backend_v4(&self, i: usize) -> String {
        self.net.pods()[i].ipv4.to_string()
    }

    fn backend_v6(&self, i: usize) -> String {
        self.net.pods()[i].ipv6.to_string()
    }

    /// Publishes service `web` (TCP 80 "http", UDP 53 "dns") with the given ready backends.
    fn publish(&mut self, affinity: Option<u32>, ready: &[(usize, bool)]) {
        self.agent
            .apply(
                "web-svc.yaml",
                &service_yaml(
                    "web",
                    &[VIP4],
                    &[("http", 80, "TCP"), ("dns", 53, "UDP")],
                    affinity,
                ),
                "manifests applied",
            )
            .expect("service applied");
        self.publish_endpoints(ready);
    }

    fn publish_endpoints(&mut self, ready: &[(usize, bool)]) {
        let endpoints: Vec<(String, bool)> = ready
            .iter()
            .map(|(i, r)| (self.backend_v4(*i), *r))
            .collect();
        self.agent
            .apply(
                "web-eps.yaml",
                &endpoint_slice_yaml(
                    "web-1",
                    "web",
                    "IPv4",
                    &[("http", "TCP"), ("dns", "UDP")],
                    &endpoints,
                ),
                "manifests applied",
            )
            .expect("endpoints applied");
    }

    /// Runs gannet-probe in the client pod and the test cgroup; returns its report.
    fn probe(&self, args: &[&str]) -> Report {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(args);
        let output = run_in(
            cmd,
            Some(&self.net.pods()[0].netns),
            Some(&self.cgroup),
            PROBE_TIMEOUT,
        )
        .expect("running the probe");
        parse_json_output(&output).expect("probe report")
    }

    /// Like `probe`, but in the client pod *outside* the cgroup: no load balancing.
    fn probe_outside_cgroup(&self, args: &[&str]) -> Report {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(args);
        let output = run_in(cmd, Some(&self.net.pods()[0].netns), None, PROBE_TIMEOUT)
            .expect("running the probe");
        parse_json_output(&output).expect("probe report")
    }

    /// Whether what gannetd programs is still there: its bpffs directory (eBPF) or its table
    /// in the client pod's namespace (nftables).
    fn holds_state(&self) -> bool {
        match self.plane {
            Plane::Ebpf => self.agent.bpf_root().exists(),
            Plane::Nftables => {
                let mut nft = Command::new("nft");
                nft.args(["list", "table", "inet", "gannet-services"]);
                run_in(nft, Some(&self.net.pods()[0].netns), None, PROBE_TIMEOUT)
                    .expect("running nft")
                    .status
                    .success()
            }
        }
    }

    fn spawn_probe(&self, args: &[&str]) -> ChildGuard {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(args);
        spawn(cmd, Some(&self.net.pods()[0].netns), Some(&self.cgroup)).expect("spawning probe")
    }

    /// A `hold` probe in the node's namespace, in the test cgroup or (`in_cgroup` false)
    /// outside it; returns it once connected, with the `connected` line.
    fn hold_in_node(&self, args: &[&str], in_cgroup: bool) -> (ChildGuard, String) {
        self.hold_in(self.net.node(), args, in_cgroup)
    }

    /// A `hold` probe in pod `pod`'s namespace, in the test cgroup or outside it.
    fn hold_in_pod(&self, pod: usize, args: &[&str], in_cgroup: bool) -> (ChildGuard, String) {
        self.hold_in(&self.net.pods()[pod].netns, args, in_cgroup)
    }

    fn hold_in(&self, netns: &Netns, args: &[&str], in_cgroup: bool) -> (ChildGuard, String) {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.arg("hold").args(args);
        let mut probe =
            spawn(cmd, Some(netns), in_cgroup.then_some(&self.cgroup)).expect("spawning probe");
        let line = probe
            .wait_for_line("connected", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("hold {args:?} must connect: {e:#}"));
        (probe, line)
    }
}

/// Sends `ping` to a `hold` probe and returns its answer (a backend name or `error: ERRNO`).
fn ping(probe: &mut ChildGuard) -> String {
    probe.send_line("ping").expect("writing to the probe");
    probe
        .read_line(Duration::from_secs(5))
        .expect("the probe answers every ping")
        .trim()
        .to_owned()
}

fn assert_all_ok(report: &Report, what: &str) {
    assert!(
        report.failed == 0 && report.ok > 0,
        "{what}: expected every request to succeed, got {report:?}"
    );
}

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
fn client_ip_affinity_pins_a_client_to_one_backend() {
    client_ip_affinity_pins_a_client_to_one_backend_on(Plane::Ebpf);
}

#[test]
fn client_ip_affinity_pins_a_client_to_one_backend_nftables() {
    client_ip_affinity_pins_a_client_to_one_backend_on(Plane::Nftables);
}

fn client_ip_affinity_pins_a_client_to_one_backend_on(plane: Plane) {
    let mut c = Cluster::on(plane, 3, &[]);
    c.publish(Some(600), &[(1, true), (2, true), (3, true)]);
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "60"]);
    assert_all_ok(&report, "connections with ClientIP affinity");
    assert_eq!(
        report.backends.len(),
        1,
        "ClientIP affinity must pin the client to one backend: {:?}",
        report.backends
    );
    // Removing the pinned backend moves the client on, and it stays pinned to the new one.
    let pinned: usize = report.backends.keys().next().unwrap()[1..].parse().unwrap();
    let rest: Vec<(usize, bool)> = (1..=3)
        .filter(|i| *i != pinned)
        .map(|i| (i, true))
        .collect();
    c.publish_endpoints(&rest);
    let after = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "30"]);
    assert_all_ok(&after, "connections after the pinned backend left");
    assert_eq!(
        after.backends.len(),
        1,
        "pinned again: {:?}",
        after.backends
    );
    assert_eq!(
        after.backend_count(&format!("b{pinned}")),
        0,
        "the removed backend must not be used: {:?}",
        after.backends
    );
}

/// A pinned map's entries as bpftool dumps them: (key bytes, value bytes).
fn dump_map(pin: &std::path::Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let output = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin)
        .output()
        .expect("running bpftool");
    assert!(
        output.status.success(),
        "bpftool map dump {}: {}",
        pin.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let entries: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("bpftool's JSON");
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .expect("an array of bytes")
            .iter()
            .map(|b| {
                let hex = b.as_str().expect("a hex byte");
                u8::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex")
            })
            .collect()
    };
    entries
        .as_array()
        .expect("a list of entries")
        .iter()
        .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
        .collect()
}

/// `bpftool map update` of one entry of a pinned map.
fn update_map(pin: &std::path::Path, key: &[u8], value: &[u8]) {
    let hex = |b: &[u8]| b.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>();
    let output = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(pin)
        .arg("key")
        .args(hex(key))
        .arg("value")
        .args(hex(value))
        .output()
        .expect("running bpftool");
    assert!(
        output.status.success(),
        "bpftool map update {}: {}",
        pin.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The id of backend `ip:8080` in `GANNET_BACKENDS` (value: IPv4-mapped address, port in network
/// order), if it is there.
fn backend_id(root: &std::path::Path, ip: std::net::Ipv4Addr) -> Option<u32> {
    let mut want = ip.to_ipv6_mapped().octets().to_vec();
    want.extend_from_slice(&8080u16.to_be_bytes());
    dump_map(&root.join("maps/GANNET_BACKENDS"))
        .into_iter()
        .find(|(_, value)| value.get(..18) == Some(&want[..]))
        .map(|(key, _)| u32::from_ne_bytes(key[..4].try_into().expect("a u32 key")))
}

#[test]
fn affinity_never_follows_a_reused_backend_id_to_another_backend() {
    let mut c = Cluster::new(3, &[]);
    let root = c.agent.bpf_root().to_owned();
    // web, with ClientIP affinity, has b1; the client is pinned to it.
    c.publish(Some(600), &[(1, true)]);
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "1"]);
    assert_eq!(report.backend_count("b1"), 1, "web has only b1: {report:?}");
    let b1 = c.net.pods()[1].ipv4;
    let b1_id = backend_id(&root, b1).expect("b1 in the backend map");
    let affinity_pin = root.join("maps/GANNET_AFFINITY");
    // The client's entries, as a purge that failed (or a crash before it) would leave them.
    let stale = dump_map(&affinity_pin);
    assert!(
        stale.iter().any(|(_, v)| v[..4] == b1_id.to_ne_bytes()),
        "an affinity entry for b1 (id {b1_id}): {stale:?}"
    );

    // b1 leaves web for b2; once b1's id is freed, another service's backend b3 takes it.
    c.publish_endpoints(&[(1, false), (2, true)]);
    gannet_testkit::eventually("b1's backend id to be freed", AGENT_TIMEOUT, || {
        backend_id(&root, b1).is_none().then_some(())
    });
    c.agent
        .apply(
            "other.yaml",
            &format!(
                "{}---\n{}",
                service_yaml("other", &["10.96.0.20"], &[("http", 80, "TCP")], None),
                endpoint_slice_yaml(
                    "other-1",
                    "other",
                    "IPv4",
                    &[("http", "TCP")],
                    &[(c.backend_v4(3), true)],
                )
            ),
            "manifests applied",
        )
        .expect("service other applied");
    assert_eq!(
        backend_id(&root, c.net.pods()[3].ipv4),
        Some(b1_id),
        "b3 must have taken b1's freed id (the case this test is about)"
    );

    // The stale entries come back, fresh (bpf_ktime_get_ns is CLOCK_MONOTONIC).
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) },
        0
    );
    let now_ns =
        u64::try_from(now.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap();
    for (key, value) in &stale {
        let mut value = value.clone();
        value[8..16].copy_from_slice(&now_ns.to_ne_bytes());
        update_map(&affinity_pin, key, &value);
    }
    let after = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "5"]);
    assert_eq!(
        after.backend_count("b2"),
        5,
        "a stale affinity entry must not send web's client to b3, another service's backend \
         that reuses the id: {after:?}"
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

#[test]
fn sigkill_and_restart_drop_no_request_and_adopt_the_data_plane() {
    sigkill_and_restart_drop_no_request_and_adopt_the_data_plane_on(Plane::Ebpf);
}

#[test]
fn sigkill_and_restart_drop_no_request_and_adopt_the_data_plane_nftables() {
    sigkill_and_restart_drop_no_request_and_adopt_the_data_plane_on(Plane::Nftables);
}

fn sigkill_and_restart_drop_no_request_and_adopt_the_data_plane_on(plane: Plane) {
    let mut c = Cluster::on(plane, 2, &[]);
    c.publish(None, &[(1, true), (2, true)]);
    let mut looping = c.spawn_probe(&[
        "loop",
        "--to",
        "10.96.0.10:80",
        "--duration-ms",
        "4000",
        "--interval-ms",
        "2",
    ]);
    std::thread::sleep(Duration::from_millis(700));
    c.agent.stop(libc::SIGKILL).expect("killing gannetd");
    std::thread::sleep(Duration::from_millis(700));
    c.agent.restart().expect("restarting gannetd");
    c.agent
        .wait_log(plane.adopted(), 1)
        .expect("the new gannetd adopts");
    let output = looping.wait_output(Duration::from_secs(30)).unwrap();
    let report: Report = parse_json_output(&output).unwrap();
    assert!(
        report.ok > 100,
        "the client made too few requests: {report:?}"
    );
    assert_eq!(
        report.failed, 0,
        "no request may fail while gannetd is killed and restarted: {report:?}"
    );
    // The restarted agent still applies changes.
    c.publish_endpoints(&[(2, true)]);
    let after = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "30"]);
    assert_eq!(after.backend_count("b2"), 30, "after restart: {after:?}");
}

/// nftables only: a firewall service that runs `nft flush ruleset` takes gannet's table with it;
/// gannetd notices within its repair interval (10 s) and programs the table again.
#[test]
fn a_flushed_ruleset_is_programmed_again_nftables() {
    let mut c = Cluster::on(Plane::Nftables, 2, &[]);
    c.publish(None, &[(1, true), (2, true)]);
    assert_all_ok(
        &c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "5"]),
        "before the flush",
    );
    let synced = c.agent.log_count("services synced");
    let mut nft = Command::new("nft");
    nft.args(["flush", "ruleset"]);
    let output = run_in(nft, Some(&c.net.pods()[0].netns), None, PROBE_TIMEOUT).unwrap();
    assert!(output.status.success(), "nft flush ruleset: {output:?}");
    assert!(!c.holds_state(), "the flush removed the table");
    c.agent
        .wait_log("was removed or changed outside gannetd", 1)
        .expect("gannetd notices the flush");
    c.agent
        .wait_log("services synced", synced + 1)
        .expect("gannetd programs the table again");
    let after = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "20"]);
    assert_all_ok(&after, "after the repair");
    assert_eq!(after.backends.len(), 2, "both backends again: {after:?}");
}

#[test]
fn invalid_manifest_is_rejected_and_the_running_state_stays() {
    invalid_manifest_is_rejected_and_the_running_state_stays_on(Plane::Ebpf);
}

#[test]
fn invalid_manifest_is_rejected_and_the_running_state_stays_nftables() {
    invalid_manifest_is_rejected_and_the_running_state_stays_on(Plane::Nftables);
}

fn invalid_manifest_is_rejected_and_the_running_state_stays_on(plane: Plane) {
    let mut c = Cluster::on(plane, 2, &[]);
    c.publish(None, &[(1, true), (2, true)]);
    // Break the service: SCTP is not supported.
    c.agent
        .apply(
            "web-svc.yaml",
            &service_yaml("web", &[VIP4], &[("http", 80, "SCTP")], None),
            "manifest rejected",
        )
        .unwrap();
    // Another file changes while this one stays bad: the error is not told again.
    c.agent
        .apply(
            "other-svc.yaml",
            &service_yaml("other", &["10.96.0.99"], &[("http", 80, "TCP")], None),
            "services synced",
        )
        .unwrap();
    let logs = c.agent.logs();
    assert_eq!(
        c.agent.log_count("manifest rejected"),
        1,
        "a bad manifest is logged once while it stays bad: {logs}"
    );
    let line = logs
        .lines()
        .find(|l| l.contains("manifest rejected"))
        .unwrap();
    for part in [
        "web-svc.yaml",
        "Service default/web",
        "spec.ports[0].protocol",
    ] {
        assert!(
            line.contains(part),
            "the error must name {part:?}; it says: {line}"
        );
    }
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "20"]);
    assert_all_ok(&report, "the last good state keeps serving");
    assert_eq!(report.backends.len(), 2, "{report:?}");
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

#[test]
fn a_full_map_skips_the_service_that_does_not_fit_and_keeps_the_others() {
    let mut c = Cluster::new(1, &["--max-services", "2"]);
    let b1 = c.backend_v4(1);
    let mut yaml = String::new();
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        yaml.push_str(&service_yaml(
            name,
            &[&format!("10.96.1.{}", i + 1)],
            &[("http", 80, "TCP")],
            None,
        ));
        yaml.push_str("---\n");
        yaml.push_str(&endpoint_slice_yaml(
            &format!("{name}-1"),
            name,
            "IPv4",
            &[("http", "TCP")],
            &[(b1.clone(), true)],
        ));
        yaml.push_str("---\n");
    }
    c.agent
        .apply("three.yaml", &yaml, "manifests applied")
        .unwrap();
    let logs = c.agent.logs();
    assert!(
        logs.contains("could not program service") && logs.contains("default/three"),
        "the log must name the service that did not fit; log:\n{logs}"
    );
    for vip in ["10.96.1.1:80", "10.96.1.2:80"] {
        let report = c.probe(&["tcp", "--to", vip, "--count", "5"]);
        assert_all_ok(&report, vip);
    }
}

#[test]
fn cleanup_detaches_everything() {
    cleanup_detaches_everything_on(Plane::Ebpf);
}

#[test]
fn cleanup_detaches_everything_nftables() {
    cleanup_detaches_everything_on(Plane::Nftables);
}

fn cleanup_detaches_everything_on(plane: Plane) {
    let mut c = Cluster::on(plane, 1, &[]);
    c.publish(None, &[(1, true)]);
    assert_all_ok(
        &c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "3"]),
        "before cleanup",
    );
    let refused = c
        .agent
        .cleanup()
        .expect_err("cleanup must refuse while gannetd runs");
    assert!(
        refused.to_string().contains("still running"),
        "the refusal must say why: {refused:#}"
    );
    assert!(c.holds_state(), "a refused cleanup removes nothing");
    c.agent.stop(libc::SIGTERM).unwrap();
    // SIGTERM leaves the data plane running.
    assert_all_ok(
        &c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "3"]),
        "after SIGTERM",
    );
    c.agent.cleanup().unwrap();
    assert!(
        !c.holds_state(),
        "cleanup must remove {} (eBPF) or the table inet gannet-services (nftables)",
        c.agent.bpf_root().display()
    );
    let after = c.probe(&[
        "--timeout-ms",
        "300",
        "tcp",
        "--to",
        "10.96.0.10:80",
        "--count",
        "1",
    ]);
    assert_eq!(
        after.ok, 0,
        "after cleanup the ClusterIP must no longer be translated: {after:?}"
    );
}

/// A `--bpf-root` of a test's own under /sys/fs/bpf: `gannetd cleanup` and removed on drop.
struct BpfRoot(std::path::PathBuf);

impl BpfRoot {
    fn new() -> BpfRoot {
        let bpffs = std::path::Path::new("/sys/fs/bpf");
        let kind = Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(bpffs)
            .output()
            .expect("running stat");
        assert_eq!(
            String::from_utf8_lossy(&kind.stdout).trim(),
            "bpf_fs",
            "this test pins a map itself: it needs bpffs mounted at /sys/fs/bpf"
        );
        BpfRoot(bpffs.join(unique_name("gannet-pin")))
    }

    /// Every path below the root, relative to it, sorted.
    fn contents(&self) -> Vec<String> {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("reading the bpf root") {
                let path = entry.expect("a directory entry").path();
                out.push(
                    path.strip_prefix(root)
                        .expect("below the root")
                        .display()
                        .to_string(),
                );
                if path.is_dir() {
                    walk(&path, root, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &self.0, &mut out);
        out.sort();
        out
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let state = ScratchDir::new("gannet-pin-state");
        let _ = Command::new(bin_path("gannetd"))
            .arg("cleanup")
            .arg("--bpf-root")
            .arg(&self.0)
            .arg("--state-dir")
            .arg(&state.0)
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_naming_the_map() {
    // GANNET_BACKENDS (backend id, a u32, → BackendValue, not preallocated) with values of 512
    // bytes: larger than this build's, so the programs' reads pass the verifier and, without a
    // check, the map would be adopted and silently misread.
    let root = BpfRoot::new();
    let maps = root.0.join("maps");
    std::fs::create_dir_all(&maps).expect("creating the bpf root");
    let pin = maps.join("GANNET_BACKENDS");
    let created = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "512",
            "entries",
            "16",
            "name",
            "GANNET_BACKENDS",
            "flags",
            "1",
        ])
        .output()
        .expect("running bpftool");
    assert!(
        created.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let netns = Netns::new("pins").expect("creating a namespace");
    let cgroup = Cgroup::new().expect("creating the test cgroup");
    let manifests = ScratchDir::new("gannet-pin-manifests");
    std::fs::create_dir_all(&manifests.0).expect("creating the manifest directory");
    let state = ScratchDir::new("gannet-pin-state");
    let mut cmd = Command::new(bin_path("gannetd"));
    cmd.arg("--cgroup-path")
        .arg(cgroup.path())
        .arg("--bpf-root")
        .arg(&root.0)
        .arg("--manifest-dir")
        .arg(&manifests.0)
        .arg("--state-dir")
        .arg(&state.0)
        .args([
            "--node-name",
            "test-node",
            "--overlay",
            "none",
            "--masquerade=false",
            "--nodeport-interfaces=",
            "--metrics-address",
            gannet_testkit::metrics::TEST_METRICS_ADDRESS,
        ]);
    let output = run_in(cmd, Some(&netns), None, AGENT_TIMEOUT).unwrap_or_else(|e| {
        panic!("gannetd must refuse to start on a pinned map of another layout, but: {e:#}")
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "gannetd must exit with an error, got {}: {stderr}",
        output.status
    );
    for needle in ["GANNET_BACKENDS", "value size 512", "gannetd cleanup"] {
        assert!(
            stderr.contains(needle),
            "the refusal must name the map, what differs and the way out ({needle:?}): {stderr}"
        );
    }
    assert_eq!(
        root.contents(),
        ["maps", "maps/GANNET_BACKENDS"],
        "nothing may be created next to the refused map"
    );
    assert!(
        !state.0.exists(),
        "nothing may be created in the state directory {}",
        state.0.display()
    );
    let attached = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup.path())
        .output()
        .expect("running bpftool");
    let attached = String::from_utf8_lossy(&attached.stdout);
    assert!(
        attached.trim().is_empty() || attached.trim() == "[]",
        "no program may be attached to the cgroup: {attached}"
    );
    let map = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&pin)
        .output()
        .expect("running bpftool");
    let map = String::from_utf8_lossy(&map.stdout);
    assert!(
        map.contains("\"bytes_value\":512"),
        "the pinned map must be left as it was: {map}"
    );
}

#[test]
fn bad_configuration_exits_64_naming_every_flag() {
    let output = Command::new(bin_path("gannetd"))
        .args([
            "--cgroup-path",
            "/proc",
            "--bpf-root",
            "relative/path",
            "--max-services",
            "0",
            "--server",
            "tcp://nowhere",
            "--node-ip",
            "not-an-ip",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    for flag in [
        "--cgroup-path /proc",
        "--bpf-root relative/path",
        "--max-services 0",
        "--server tcp://nowhere",
        "--node-ip not-an-ip",
    ] {
        assert!(
            stderr.contains(flag),
            "the error must name {flag}: {stderr}"
        );
    }
    let both = Command::new(bin_path("gannetd"))
        .args(["--manifest-dir", "/tmp", "--server", "unix:/tmp/x.sock"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert_eq!(both.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("--manifest-dir and --server"),
        "two sources of services are refused: {stderr}"
    );
    // The overlay's flags (checked before anything is created; the interface is looked up in
    // this namespace, nothing is created in it: `--cgroup-path /proc` alone makes sure of that).
    let overlay = Command::new(bin_path("gannetd"))
        .args([
            "--cgroup-path",
            "/proc",
            "--manifest-dir",
            "/tmp",
            "--vxlan-vni",
            "16777216",
            "--vxlan-port",
            "0",
            "--overlay-interface",
            "no-such-if0",
            "--cluster-cidr",
            "10.244.0.0/33",
            "--pod-mtu",
            "100",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&overlay.stderr);
    assert_eq!(overlay.status.code(), Some(64), "stderr: {stderr}");
    for flag in [
        "--vxlan-vni 16777216",
        "--vxlan-port 0",
        "--overlay-interface no-such-if0",
        "--cluster-cidr 10.244.0.0/33",
        "--pod-mtu 100",
    ] {
        assert!(
            stderr.contains(flag),
            "the error must name {flag}: {stderr}"
        );
    }
    let unbounded = Command::new(bin_path("gannetd"))
        .args([
            "--cgroup-path",
            "/proc",
            "--manifest-dir",
            "/tmp",
            "--overlay",
            "vxlan",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&unbounded.stderr);
    assert_eq!(unbounded.status.code(), Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("--cluster-cidr: required"),
        "masquerade needs to know the cluster: {stderr}"
    );
    // The NodePort flags.
    let nodeport = Command::new(bin_path("gannetd"))
        .args([
            "--cgroup-path",
            "/proc",
            "--manifest-dir",
            "/tmp",
            "--overlay",
            "none",
            "--maglev-table-size",
            "1000",
            "--max-conntrack",
            "0",
            "--nodeport-interfaces",
            "no-such-if1",
            "--nodeport-addresses",
            "10.0.0.0/40",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&nodeport.stderr);
    assert_eq!(nodeport.status.code(), Some(64), "stderr: {stderr}");
    for flag in [
        "--maglev-table-size 1000",
        "--max-conntrack 0",
        "--nodeport-interfaces no-such-if1",
        "--nodeport-addresses 10.0.0.0/40",
    ] {
        assert!(
            stderr.contains(flag),
            "the error must name {flag}: {stderr}"
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
