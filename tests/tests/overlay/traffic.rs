//! Traffic across the cluster: the full mesh of pods, a service with endpoints on every node, a
//! full-MTU transfer, masquerade (and none between pods), ICMP errors back to a pod, no host
//! routing between eBPF-mode nodes.

use std::{process::Command, time::Duration};

use gannet_testkit::{
    Netns, ScratchDir,
    cluster::EXTERNAL_V4,
    eventually,
    probe::{Report, StreamReport, parse_json_output},
    run_in,
};

use crate::fixture::{Cluster, NODES, VXLAN_POD_MTU, addr, ping, probe_in, serve, stop_server};

pub(crate) fn full_mesh(c: &Cluster) {
    for from in 0..NODES {
        for to in (0..NODES).filter(|&to| to != from) {
            let target = c.pod(to, 0);
            let tcp = c.tcp((from, 0), &addr(&target.ip), 3);
            assert_eq!(
                (tcp.ok, tcp.backend_count(&target.name)),
                (3, 3),
                "TCP {} → {} ({}): {tcp:?}",
                c.nodes[from].name,
                c.nodes[to].name,
                target.ip
            );
            let v6 = target.ipv6.as_deref().expect("dual-stack pods");
            let tcp6 = c.tcp((from, 0), &addr(v6), 2);
            assert_eq!(tcp6.ok, 2, "TCP over IPv6 {from} → {to} ({v6}): {tcp6:?}");
            let udp: Report = parse_json_output(&probe_in(
                &c.pod(from, 0).netns,
                None,
                &["udp", "--to", &addr(&target.ip), "--count", "3"],
            ))
            .unwrap();
            assert_eq!(udp.ok, 3, "UDP {from} → {to}: {udp:?}");
            let icmp = ping(&c.pod(from, 0).netns, &["--to", &target.ip, "--count", "2"]);
            assert_eq!(
                (icmp.ok, icmp.replies_from.clone()),
                (2, vec![target.ip.clone()]),
                "ICMP {from} → {to}: {icmp:?}"
            );
        }
    }
}

pub(crate) fn service_across_nodes(c: &Cluster) {
    let endpoints: String = (0..NODES)
        .map(|n| {
            format!(
                "  - addresses: [\"{}\"]\n    conditions:\n      ready: true\n",
                c.pod(n, 0).ip
            )
        })
        .collect();
    c.plane
        .apply(&format!(
            "apiVersion: v1
kind: Service
metadata:
  name: spread
  namespace: default
spec:
  clusterIP: 10.96.0.50
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: spread-1
  namespace: default
  labels:
    kubernetes.io/service-name: spread
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
{endpoints}"
        ))
        .unwrap();
    for from in 0..NODES {
        let report = eventually("the service on every node", Duration::from_secs(10), || {
            Some(c.tcp((from, 1), "10.96.0.50:80", 60)).filter(|r| r.ok == 60)
        });
        for to in 0..NODES {
            let name = &c.pod(to, 0).name;
            assert!(
                report.backend_count(name) > 0,
                "from {}: every endpoint receives connections, {name} got none: {report:?}",
                c.nodes[from].name
            );
        }
    }
}

pub(crate) fn full_mtu_transfer(c: &Cluster, pod_mtu: u32) {
    let target = c.pod(2, 0);
    let sink = serve(&target.netns, "sink", 9090, &["--tcp", "--sink"]);
    let stream: StreamReport = parse_json_output(&probe_in(
        &c.pod(0, 0).netns,
        None,
        &[
            "stream",
            "--to",
            &format!("{}:9090", target.ip),
            "--bytes",
            "8388608",
        ],
    ))
    .unwrap();
    drop(sink);
    assert_eq!(
        (stream.ok, stream.bytes_acked_by_server),
        (1, Some(8_388_608)),
        "8 MiB between nodes arrive whole, without a stall: {stream:?}"
    );
    // MSS = MTU − 40 (IPv4 + TCP headers), less 12 for the timestamp option Linux sends.
    assert!(
        stream
            .mss
            .is_some_and(|mss| (pod_mtu - 52..=pod_mtu - 40).contains(&mss)),
        "the pods' MTU ({pod_mtu}) fits the overlay: {stream:?}"
    );
    // Full-size packets with fragmentation forbidden cross without being fragmented or dropped.
    let payload = (pod_mtu - 28).to_string();
    let icmp = ping(
        &c.pod(0, 0).netns,
        &[
            "--to",
            &target.ip,
            "--count",
            "2",
            "--size",
            &payload,
            "--dont-fragment",
        ],
    );
    assert_eq!(icmp.ok, 2, "full-MTU ICMP with DF between nodes: {icmp:?}");
    // One byte more is refused at the pod (its MTU), not black-holed on the way.
    let over = (pod_mtu - 27).to_string();
    let icmp = ping(
        &c.pod(0, 0).netns,
        &[
            "--to",
            &target.ip,
            "--count",
            "1",
            "--size",
            &over,
            "--dont-fragment",
        ],
    );
    assert_eq!(
        icmp.errors.get("EMSGSIZE").copied(),
        Some(1),
        "a packet above the pod MTU is refused at once: {icmp:?}"
    );
}

/// Connections node `node`'s conntrack holds.
pub(crate) fn conntrack_count(c: &Cluster, node: usize) -> u64 {
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/sys/net/netfilter/nf_conntrack_count");
    let out = run_in(cmd, Some(c.node_netns(node)), None, Duration::from_secs(5)).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

pub(crate) fn masquerade(c: &mut Cluster) {
    let external = c.underlay.external().expect("external host");
    c.external_server = Some(serve(external, "outside", 8080, &[]));
    let to = format!("{EXTERNAL_V4}:8080");
    let out = c.tcp((0, 0), &to, 3);
    assert_eq!(
        out.ok, 3,
        "a pod reaches a host outside the cluster: {out:?}"
    );
    // Between pods, the server sees the pod's own address, and neither node tracks the
    // connections (only masqueraded traffic needs conntrack).
    let from_pod = c.pod(0, 1).ip.clone();
    let tracked = (conntrack_count(c, 0), conntrack_count(c, 1));
    let inside = c.tcp((0, 1), &addr(&c.pod(1, 1).ip), 20);
    assert_eq!(inside.ok, 20, "{inside:?}");
    let now = (conntrack_count(c, 0), conntrack_count(c, 1));
    assert!(
        now.0 <= tracked.0 + 2 && now.1 <= tracked.1 + 2,
        "20 pod-to-pod connections left no conntrack entries: {tracked:?} → {now:?}"
    );
    assert!(
        tracked.0 >= 3,
        "the 3 masqueraded connections are tracked: {tracked:?}"
    );
    let seen = stop_server(c.external_server.take().expect("running"));
    let node_ip = c.underlay.nodes()[0].ipv4.to_string();
    assert_eq!(
        seen.tcp_clients.keys().cloned().collect::<Vec<_>>(),
        vec![node_ip],
        "the outside host sees the node's address, not the pod's: {seen:?}"
    );
    let server = c.nodes[1].pods[1].server.take().expect("running");
    let seen = stop_server(server);
    assert!(
        seen.tcp_clients.contains_key(&from_pod) && seen.tcp_clients.len() == 1,
        "pod-to-pod traffic keeps the pod's address {from_pod}: {seen:?}"
    );
}

/// Something else on a node that translates a connection to the node's own overlay address (as
/// kube-proxy does for a node port whose endpoint is on another node, with gannet as the pod
/// network only) gets the replies back: gannet's `notrack` for pod-to-pod traffic leaves
/// packets to the node's own addresses tracked. The translation is a test table of the node's
/// (removed at the end), the client the host outside the cluster.
pub(crate) fn foreign_nat_to_the_overlay_address(c: &Cluster) {
    const TABLE: &str = "gannet_test_kp";
    let node = c.node_netns(0);
    let backend = &c.pod(1, 0).ip;
    let dir = ScratchDir::new("kp-nft");
    std::fs::create_dir_all(&dir.0).expect("a scratch directory");
    let nft = |script: &str| {
        let file = dir.0.join("rules.nft");
        std::fs::write(&file, script).expect("writing the rules");
        let mut cmd = Command::new("nft");
        cmd.arg("-f").arg(&file);
        let out = run_in(cmd, Some(node), None, Duration::from_secs(5)).expect("running nft");
        assert!(out.status.success(), "nft -f: {out:?}");
    };
    nft(&format!(
        "table ip {TABLE} {{\n\
           chain pre {{ type nat hook prerouting priority dstnat; tcp dport 30999 dnat to {backend}:8080; }}\n\
           chain post {{ type nat hook postrouting priority srcnat; ct status dnat masquerade; }}\n\
         }}\n"
    ));
    let external = c.underlay.external().expect("external host");
    let to = format!("{}:30999", c.underlay.nodes()[0].ipv4);
    let output = probe_in(external, None, &["tcp", "--to", &to, "--count", "5"]);
    let report: Report = parse_json_output(&output).expect("probe report");
    nft(&format!("delete table ip {TABLE}\n"));
    assert_eq!(
        report.ok, 5,
        "connections masqueraded to the overlay address get their replies: {report:?}"
    );
}

/// A router beyond the node with a smaller MTU answers a too-big packet of a masqueraded flow
/// with "fragmentation needed" to the node's address; the node translates it back to the pod
/// that sent the packet (no black hole). The "external" host is that router here, with a far
/// host behind a 1300-byte link.
pub(crate) fn icmp_errors_reach_the_pod(c: &Cluster) {
    let router = c.underlay.external().expect("external host");
    let far = Netns::new("far").unwrap();
    router
        .ip(&[
            "link",
            "add",
            "far0",
            "mtu",
            "1300",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            "1300",
            "netns",
            far.name(),
        ])
        .unwrap();
    router
        .ip(&["addr", "add", "10.98.0.1/24", "dev", "far0"])
        .unwrap();
    router.ip(&["link", "set", "far0", "up"]).unwrap();
    router.sysctl("net.ipv4.ip_forward", "1").unwrap();
    far.ip(&["addr", "add", "10.98.0.2/24", "dev", "eth0"])
        .unwrap();
    far.ip(&["link", "set", "eth0", "up"]).unwrap();
    far.ip(&["route", "add", "default", "via", "10.98.0.1"])
        .unwrap();
    let node = c.node_netns(0);
    node.ip(&[
        "route",
        "add",
        "10.98.0.0/24",
        "via",
        &EXTERNAL_V4.to_string(),
    ])
    .unwrap();
    let payload = (VXLAN_POD_MTU - 28).to_string();
    let icmp = ping(
        &c.pod(0, 0).netns,
        &[
            "--to",
            "10.98.0.2",
            "--count",
            "2",
            "--size",
            &payload,
            "--dont-fragment",
        ],
    );
    let small = ping(
        &c.pod(0, 0).netns,
        &["--to", "10.98.0.2", "--count", "1", "--size", "1000"],
    );
    node.ip(&["route", "del", "10.98.0.0/24"]).unwrap();
    assert_eq!(small.ok, 1, "the far host answers small packets: {small:?}");
    assert!(
        icmp.errors.contains_key("frag-needed") && icmp.mtu_reported == Some(1300)
            || icmp.errors.contains_key("EMSGSIZE") && icmp.path_mtu == Some(1300),
        "the pod learns that its packet is too big, and the MTU that fits: {icmp:?}"
    );
}

/// `IpForwDatagrams` of a node: packets its IPv4 stack routed on.
pub(crate) fn forwarded(c: &Cluster, node: usize) -> u64 {
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/net/snmp");
    let out = run_in(cmd, Some(c.node_netns(node)), None, Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut ip_lines = text.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (ip_lines.next().unwrap(), ip_lines.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|n| n == "ForwDatagrams")
        .expect("ForwDatagrams column");
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// In ebpf mode, pod-to-pod traffic between nodes bypasses both nodes' routing: the sending
/// veth's program encapsulates it, the receiving device's program hands it to the pod.
pub(crate) fn no_host_routing_between_ebpf_nodes(c: &Cluster) {
    let before = (forwarded(c, 0), forwarded(c, 1));
    let tcp = c.tcp((0, 0), &addr(&c.pod(1, 0).ip), 50);
    assert_eq!(tcp.ok, 50, "{tcp:?}");
    let after = (forwarded(c, 0), forwarded(c, 1));
    assert!(
        after.0 - before.0 < 10 && after.1 - before.1 < 10,
        "50 connections (hundreds of packets) crossed without the nodes routing them: forwarded {before:?} → {after:?}"
    );
}
