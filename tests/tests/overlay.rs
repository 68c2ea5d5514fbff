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

use std::{process::Command, time::Duration};

use gannet_testkit::{
    Cgroup, ChildGuard, Netns, ScratchDir,
    agent::Agent,
    bin_path, bpftool,
    cluster::{EXTERNAL_V4, Underlay},
    cni::{cni, pod_ip},
    control::ControlPlane,
    eventually,
    probe::{IcmpReport, Report, ServeReport, StreamReport, parse_json_output},
    run_in, spawn,
};
use serde_json::{Value, json};

const NODES: usize = 3;
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const CLUSTER_CIDR_V6: &str = "fd00:244::/56";
/// The MTU pods get over VXLAN on a 1500-byte underlay.
const VXLAN_POD_MTU: u32 = 1450;

/// A pod: its namespace, its address, and the `gannet-probe serve` answering as its name.
struct Pod {
    // Field order is drop order: the server before the namespace it runs in.
    server: Option<ChildGuard>,
    netns: Netns,
    ip: String,
    ipv6: Option<String>,
    name: String,
}

/// One node: its gannetd, its cgroup and its pods.
struct Node {
    pods: Vec<Pod>,
    agent: Agent,
    cgroup: Cgroup,
    name: String,
    ipam: ScratchDir,
}

struct Cluster {
    // Drop order: pods and agents (whose cleanup runs inside the node namespaces), the control
    // plane, then the namespaces.
    nodes: Vec<Node>,
    plane: ControlPlane,
    external_server: Option<ChildGuard>,
    underlay: Underlay,
}

fn probe_in(netns: &Netns, cgroup: Option<&Cgroup>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["--timeout-ms", "2000"]).args(args);
    run_in(cmd, Some(netns), cgroup, PROBE_TIMEOUT).expect("running gannet-probe")
}

/// `gannet-probe icmp ARGS…` from `netns`.
fn ping(netns: &Netns, args: &[&str]) -> IcmpReport {
    let output = probe_in(netns, None, &[&["icmp"], args].concat());
    parse_json_output(&output).expect("icmp report")
}

fn serve(netns: &Netns, name: &str, port: u16, extra: &[&str]) -> ChildGuard {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["serve", "--name", name])
        .arg("--listen")
        .arg(format!("0.0.0.0:{port}"))
        .arg("--listen")
        .arg(format!("[::]:{port}"))
        .args(extra);
    let mut server = spawn(cmd, Some(netns), None).expect("starting a server");
    server
        .wait_for_line("ready", Duration::from_secs(10))
        .expect("server ready");
    server
}

fn stop_server(mut server: ChildGuard) -> ServeReport {
    server.kill(libc::SIGTERM).expect("stopping the server");
    let output = server
        .wait_output(Duration::from_secs(10))
        .expect("server exits");
    parse_json_output(&output).expect("server report")
}

impl Cluster {
    /// Three nodes, each in `modes[i]`, each with `pods_per_node` pods serving on port 8080.
    fn new(modes: [&str; NODES], pods_per_node: usize) -> Cluster {
        let mut underlay = Underlay::new(NODES).expect("building the underlay");
        underlay.add_external().expect("the external host");
        let plane = ControlPlane::start(&[
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--cluster-cidr",
            CLUSTER_CIDR_V6,
        ])
        .expect("starting gannet-control");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            plane,
            external_server: None,
            underlay,
        };
        for (i, mode) in modes.iter().enumerate() {
            let node = &cluster.underlay.nodes()[i];
            let cgroup = Cgroup::new().expect("a cgroup for the node");
            let ip = format!("{},{}", node.ipv4, node.ipv6);
            let agent = Agent::start_node(
                &node.netns,
                &cgroup,
                &cluster.plane.addr(),
                &[
                    "--overlay",
                    mode,
                    "--node-name",
                    &node.name,
                    "--node-ip",
                    &ip,
                    "--masquerade=true",
                    "--overlay-resync-seconds",
                    "1",
                ],
            )
            .expect("starting gannetd");
            cluster.nodes.push(Node {
                pods: Vec::new(),
                agent,
                cgroup,
                name: node.name.clone(),
                ipam: ScratchDir::new("gannet-ipam"),
            });
        }
        for i in 0..NODES {
            let node = &mut cluster.nodes[i];
            node.agent.wait_log("subnet file written", 1).unwrap();
            // Every node has the other two programmed (their VTEP MACs are published at
            // registration).
            node.agent.wait_log("node programmed", NODES - 1).unwrap();
        }
        for i in 0..NODES {
            for p in 0..pods_per_node {
                cluster.add_pod(i, &format!("{}-p{p}", cluster.nodes[i].name));
            }
        }
        cluster
    }

    fn cni_conf(&self, node: usize) -> Value {
        let node = &self.nodes[node];
        json!({
            "cniVersion": "1.0.0",
            "name": "gannet-overlay-e2e",
            "type": "gannet-cni",
            "subnetFile": node.agent.subnet_file(),
            "agentSocket": node.agent.cni_socket(),
            "ipam": {"type": "gannet", "dataDir": node.ipam.0},
        })
    }

    fn add_pod(&mut self, node: usize, name: &str) {
        let netns = Netns::new("opod").expect("a pod namespace");
        let result = cni(
            &self.underlay.nodes()[node].netns,
            &netns,
            "ADD",
            name,
            &self.cni_conf(node),
        );
        let ip = pod_ip(&result);
        let ipv6 = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["address"].as_str())
            .find(|a| a.contains(':'))
            .map(|a| a.split('/').next().unwrap_or(a).to_owned());
        let server = serve(&netns, name, 8080, &[]);
        self.nodes[node].pods.push(Pod {
            server: Some(server),
            netns,
            ip,
            ipv6,
            name: name.to_owned(),
        });
    }

    fn pod(&self, node: usize, index: usize) -> &Pod {
        &self.nodes[node].pods[index]
    }

    fn tcp(&self, from: (usize, usize), to: &str, count: u32) -> Report {
        let pod = self.pod(from.0, from.1);
        let output = probe_in(
            &pod.netns,
            Some(&self.nodes[from.0].cgroup),
            &["tcp", "--to", to, "--count", &count.to_string()],
        );
        parse_json_output(&output).expect("probe report")
    }

    fn node_netns(&self, node: usize) -> &Netns {
        &self.underlay.nodes()[node].netns
    }

    /// gannet's routes in a node (`proto 87`), as `ip route` prints them.
    fn overlay_routes(&self, node: usize) -> String {
        let v4 = self
            .node_netns(node)
            .ip(&["route", "show", "proto", "87"])
            .unwrap();
        let v6 = self
            .node_netns(node)
            .ip(&["-6", "route", "show", "proto", "87"])
            .unwrap();
        format!("{v4}{v6}")
    }
}

fn addr(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:8080")
    } else {
        format!("{ip}:8080")
    }
}

fn full_mesh(c: &Cluster) {
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

fn service_across_nodes(c: &Cluster) {
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

fn full_mtu_transfer(c: &Cluster, pod_mtu: u32) {
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
fn conntrack_count(c: &Cluster, node: usize) -> u64 {
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/sys/net/netfilter/nf_conntrack_count");
    let out = run_in(cmd, Some(c.node_netns(node)), None, Duration::from_secs(5)).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn masquerade(c: &mut Cluster) {
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
fn foreign_nat_to_the_overlay_address(c: &Cluster) {
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

fn flow_survives_restart(c: &mut Cluster, mode: &str) {
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

fn status_lists_the_nodes(c: &Cluster, mode: &str) {
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
fn repairs_drift(c: &Cluster) {
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
fn node_map_entries(c: &Cluster, node: usize) -> usize {
    let pin = c.nodes[node].agent.bpf_root().join("maps/GANNET_NODES");
    bpftool::map_keys(&pin).len()
}

/// node-2 leaves while node-0's gannetd is down: node-1 removes its entries at once, node-0 when
/// it is back (the first complete node list sweeps what no node needs).
fn node_leaves(c: &mut Cluster, modes: [&str; NODES]) {
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

/// A router beyond the node with a smaller MTU answers a too-big packet of a masqueraded flow
/// with "fragmentation needed" to the node's address; the node translates it back to the pod
/// that sent the packet (no black hole). The "external" host is that router here, with a far
/// host behind a 1300-byte link.
fn icmp_errors_reach_the_pod(c: &Cluster) {
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

fn cleanup_removes_everything(c: &mut Cluster) {
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

/// `IpForwDatagrams` of a node: packets its IPv4 stack routed on.
fn forwarded(c: &Cluster, node: usize) -> u64 {
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
fn no_host_routing_between_ebpf_nodes(c: &Cluster) {
    let before = (forwarded(c, 0), forwarded(c, 1));
    let tcp = c.tcp((0, 0), &addr(&c.pod(1, 0).ip), 50);
    assert_eq!(tcp.ok, 50, "{tcp:?}");
    let after = (forwarded(c, 0), forwarded(c, 1));
    assert!(
        after.0 - before.0 < 10 && after.1 - before.1 < 10,
        "50 connections (hundreds of packets) crossed without the nodes routing them: forwarded {before:?} → {after:?}"
    );
}

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
