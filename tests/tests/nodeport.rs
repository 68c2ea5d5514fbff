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

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use gannet_testkit::{
    Cgroup, ChildGuard, Netns, ScratchDir,
    agent::Agent,
    bin_path,
    cluster::{EXTERNAL_V4, Underlay},
    cni::{cni, pod_ip},
    control::ControlPlane,
    eventually, eventually_ok,
    probe::{Report, ServeReport, parse_json_output},
    run_in, spawn,
};
use serde_json::{Value, json};

const NODES: usize = 3;
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const NODE_PORT: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
const LOCAL_NODE_PORT: u16 = 30081;
const HEALTH_PORT: u16 = 32081;
const EXTERNAL_IP: &str = "10.99.0.100";
/// LoadBalancer IPs: one whose source ranges hold the external client, one whose do not.
const LB_OPEN: &str = "10.99.0.101";
const LB_CLOSED: &str = "10.99.0.102";
const TEN_NODE_PORT: u16 = 30090;
/// `ten`'s external IP: the same flows can reach it through any node (as ECMP would send them).
const TEN_IP: &str = "10.99.0.110";
const EMPTY_NODE_PORT: u16 = 30099;
/// `sticky`: `sessionAffinity: ClientIP`.
const STICKY_NODE_PORT: u16 = 30070;
/// `empty`'s external IP: not a node's address, so the NodePort program refuses it itself.
const EMPTY_IP: &str = "10.99.0.103";
/// A UDP NodePort whose backends listen on nothing: they answer with ICMP port unreachable.
const CLOSED_NODE_PORT: u16 = 30098;
/// The node started with the smallest conntrack map gannetd accepts (`SMALL_CONNTRACK`).
const SMALL_CONNTRACK_NODE: usize = 2;
/// Its `--max-conntrack`: 512 flows.
const SMALL_CONNTRACK: u32 = 1024;

struct Pod {
    server: Option<ChildGuard>,
    netns: Netns,
    ip: String,
    ipv6: String,
    name: String,
}

struct Node {
    pods: Vec<Pod>,
    agent: Agent,
    cgroup: Cgroup,
    name: String,
    ipv4: String,
    ipv6: String,
    ipam: ScratchDir,
}

struct Cluster {
    /// gannetd runs `--dataplane nftables`: no program, so no program counters and no Maglev.
    nft: bool,
    nodes: Vec<Node>,
    plane: ControlPlane,
    underlay: Underlay,
}

fn probe_in(netns: &Netns, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["--timeout-ms", "2000"]).args(args);
    run_in(cmd, Some(netns), None, PROBE_TIMEOUT).expect("running gannet-probe")
}

fn serve(netns: &Netns, name: &str, port: u16) -> ChildGuard {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["serve", "--name", name])
        .arg("--listen")
        .arg(format!("0.0.0.0:{port}"))
        .arg("--listen")
        .arg(format!("[::]:{port}"));
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

fn sock(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

impl Cluster {
    /// Three nodes with `--overlay overlay` and `extra` gannetd flags.
    fn new(overlay: &str, extra: &[&str]) -> Cluster {
        let mut underlay = Underlay::new(NODES).expect("building the underlay");
        underlay.add_external().expect("the external client");
        if extra.contains(&"xdp") {
            underlay.wire_like().expect("a wire for XDP");
        }
        let plane = ControlPlane::start(&[
            "--cluster-cidr",
            "10.244.0.0/16",
            "--cluster-cidr",
            "fd00:244::/56",
            "--service-cidr",
            "10.96.0.0/16",
            "--service-cidr",
            "fd00:96::/112",
        ])
        .expect("starting gannet-control");
        let mut cluster = Cluster {
            nft: extra.contains(&"nftables"),
            nodes: Vec::new(),
            plane,
            underlay,
        };
        let small_conntrack = SMALL_CONNTRACK.to_string();
        for i in 0..NODES {
            let node = &cluster.underlay.nodes()[i];
            let cgroup = Cgroup::new().expect("a cgroup for the node");
            let ip = format!("{},{}", node.ipv4, node.ipv6);
            let mut args = vec![
                "--overlay",
                overlay,
                "--node-name",
                &node.name,
                "--node-ip",
                &ip,
                "--masquerade=true",
                // The underlay interface (the one holding the node's addresses).
                "--nodeport-interfaces",
                "eth0",
                "--maglev-table-size",
                "1021",
            ];
            args.extend_from_slice(extra);
            if i == SMALL_CONNTRACK_NODE {
                // A conntrack map this small fills up in the test: flows through this node show
                // that a full map still balances new flows (the least recently used are
                // forgotten).
                args.extend(["--max-conntrack", &small_conntrack]);
            }
            let agent = Agent::start_node(&node.netns, &cgroup, &cluster.plane.addr(), &args)
                .expect("starting gannetd");
            cluster.nodes.push(Node {
                pods: Vec::new(),
                agent,
                cgroup,
                name: node.name.clone(),
                ipv4: node.ipv4.to_string(),
                ipv6: node.ipv6.to_string(),
                ipam: ScratchDir::new("gannet-ipam"),
            });
        }
        for i in 0..NODES {
            let node = &mut cluster.nodes[i];
            node.agent.wait_log("subnet file written", 1).unwrap();
            node.agent.wait_log("node programmed", NODES - 1).unwrap();
        }
        for i in 0..NODES {
            let name = format!("{}-p0", cluster.nodes[i].name);
            cluster.add_pod(i, &name);
        }
        cluster
    }

    fn add_pod(&mut self, node: usize, name: &str) {
        let conf = {
            let n = &self.nodes[node];
            json!({
                "cniVersion": "1.0.0",
                "name": "gannet-nodeport-e2e",
                "type": "gannet-cni",
                "subnetFile": n.agent.subnet_file(),
                "agentSocket": n.agent.cni_socket(),
                "ipam": {"type": "gannet", "dataDir": n.ipam.0},
            })
        };
        let netns = Netns::new("nppod").expect("a pod namespace");
        // Every refused datagram gets its ICMP error (the kernel's per-destination limit, a
        // burst of 6, would drop some when one pod draws more of a test's 9 refusals).
        netns
            .sysctl("net.ipv4.icmp_ratelimit", "0")
            .expect("icmp_ratelimit in the pod");
        netns
            .sysctl("net.ipv6.icmp.ratelimit", "0")
            .expect("icmp ratelimit (IPv6) in the pod");
        let result: Value = cni(
            &self.underlay.nodes()[node].netns,
            &netns,
            "ADD",
            name,
            &conf,
        );
        let ip = pod_ip(&result);
        let ipv6 = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["address"].as_str())
            .find(|a| a.contains(':'))
            .map(|a| a.split('/').next().unwrap_or(a).to_owned())
            .expect("dual-stack pods");
        let server = serve(&netns, name, 8080);
        self.nodes[node].pods.push(Pod {
            server: Some(server),
            netns,
            ip,
            ipv6,
            name: name.to_owned(),
        });
    }

    fn external(&self) -> &Netns {
        self.underlay.external().expect("external client")
    }

    /// `count` TCP connections from the external client to `to`.
    fn tcp(&self, to: &str, count: u32) -> Report {
        parse_json_output(&probe_in(
            self.external(),
            &["tcp", "--to", to, "--count", &count.to_string()],
        ))
        .expect("probe report")
    }

    fn udp(&self, to: &str, count: u32, extra: &[&str]) -> Report {
        let count = count.to_string();
        let args = [&["udp", "--to", to, "--count", &count][..], extra].concat();
        parse_json_output(&probe_in(self.external(), &args)).expect("probe report")
    }

    /// The services: `web` (NodePort, TCP and UDP, dual-stack, endpoints on every node, an
    /// external IP) and `local` (LoadBalancer, `externalTrafficPolicy: Local`, its endpoint on
    /// node 1 only).
    fn apply_services(&self) {
        let slice = |family: &str, name: &str, pods: &[(usize, String)]| {
            let endpoints: String = pods
                .iter()
                .map(|(node, ip)| {
                    format!(
                        "  - addresses: [\"{ip}\"]\n    nodeName: {}\n    conditions:\n      ready: true\n",
                        self.nodes[*node].name
                    )
                })
                .collect();
            format!(
                "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels:
    kubernetes.io/service-name: {svc}
addressType: {family}
ports:
- name: http
  port: 8080
  protocol: TCP
- name: dns
  port: 8080
  protocol: UDP
endpoints:
{endpoints}",
                svc = name.split('-').next().unwrap()
            )
        };
        let all4: Vec<(usize, String)> = (0..NODES)
            .map(|n| (n, self.nodes[n].pods[0].ip.clone()))
            .collect();
        let all6: Vec<(usize, String)> = (0..NODES)
            .map(|n| (n, self.nodes[n].pods[0].ipv6.clone()))
            .collect();
        let yaml = format!(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: NodePort
  clusterIPs: [10.96.0.80, \"fd00:96::80\"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalIPs: [\"{EXTERNAL_IP}\"]
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
    nodePort: {NODE_PORT}
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 8080
    nodePort: {NODE_PORT_UDP}
---
{}---
{}---
apiVersion: v1
kind: Service
metadata:
  name: local
  namespace: default
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.81
  externalTrafficPolicy: Local
  healthCheckNodePort: {HEALTH_PORT}
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
    nodePort: {LOCAL_NODE_PORT}
---
{}",
            slice("IPv4", "web-v4", &all4),
            slice("IPv6", "web-v6", &all6),
            slice("IPv4", "local-v4", &[(1, self.nodes[1].pods[0].ip.clone())]),
        );
        self.plane.apply(&yaml).expect("applying the services");
        // `closed`'s endpoints: every pod, on a port where nothing listens.
        let closed_slice = slice("IPv4", "closed-v4", &all4).replace("port: 8080", "port: 9999");
        let lb = |name: &str, ip: &str, range: &str| {
            format!(
                "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [\"{range}\"]
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
status:
  loadBalancer:
    ingress:
    - ip: \"{ip}\"
---
"
            )
        };
        let yaml = format!(
            "{}{}---
{}---
apiVersion: v1
kind: Service
metadata:
  name: empty
  namespace: default
spec:
  type: NodePort
  externalIPs: [\"{EMPTY_IP}\"]
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
    nodePort: {EMPTY_NODE_PORT}
---
apiVersion: v1
kind: Service
metadata:
  name: closed
  namespace: default
spec:
  type: NodePort
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 9999
    nodePort: {CLOSED_NODE_PORT}
---
{}",
            lb("lbopen", LB_OPEN, "10.99.0.240/28"),
            slice("IPv4", "lbopen-v4", &all4),
            lb("lbclosed", LB_CLOSED, "10.99.0.0/28"),
            closed_slice,
        );
        self.plane
            .apply(&yaml)
            .expect("applying the LoadBalancer services");
    }

    /// `ten`: a NodePort service over UDP with the given pods (node, index) as endpoints.
    fn apply_ten(&self, pods: &[(usize, usize)]) {
        let endpoints: String = pods
            .iter()
            .map(|(n, i)| {
                format!(
                    "  - addresses: [\"{}\"]\n    nodeName: {}\n",
                    self.nodes[*n].pods[*i].ip, self.nodes[*n].name
                )
            })
            .collect();
        self.plane
            .apply(&format!(
                "apiVersion: v1
kind: Service
metadata:
  name: ten
  namespace: default
spec:
  type: NodePort
  externalIPs: [\"{TEN_IP}\"]
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 8080
    nodePort: {TEN_NODE_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ten-v4
  namespace: default
  labels:
    kubernetes.io/service-name: ten
addressType: IPv4
ports:
- name: dns
  port: 8080
  protocol: UDP
endpoints:
{endpoints}"
            ))
            .expect("applying ten");
    }
}

/// An HTTP GET from the external client; returns the status code and the body.
fn http_get(netns: &Netns, to: &str) -> Option<(u16, String)> {
    let to = to.to_owned();
    netns
        .run(move || {
            let mut stream =
                TcpStream::connect_timeout(&to.parse().ok()?, Duration::from_secs(2)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(
                stream,
                "GET /healthz HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            let code = text.split_whitespace().nth(1)?.parse().ok()?;
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
            Some((code, body))
        })
        .ok()
        .flatten()
}

fn nodeport_every_node(c: &Cluster) {
    for n in 0..NODES {
        let to = sock(&c.nodes[n].ipv4, NODE_PORT);
        let report = eventually_ok("NodePort answers", Duration::from_secs(15), || {
            let r = c.tcp(&to, 60);
            if r.ok == 60 { Ok(r) } else { Err(Box::new(r)) }
        });
        for pod in 0..NODES {
            let name = &c.nodes[pod].pods[0].name;
            assert!(
                report.backend_count(name) > 0,
                "through {to}, every backend (same node and others) gets connections; {name} got none: {report:?}"
            );
        }
        let udp = c.udp(
            &sock(&c.nodes[n].ipv4, NODE_PORT_UDP),
            20,
            &["--per-request-socket"],
        );
        assert_eq!(
            udp.ok, 20,
            "UDP NodePort through {}: {udp:?}",
            c.nodes[n].name
        );
        let v6 = sock(&c.nodes[n].ipv6, NODE_PORT);
        // The IPv6 slice may be programmed a moment after the IPv4 one.
        let tcp6 = eventually_ok("IPv6 NodePort answers", Duration::from_secs(15), || {
            let r = c.tcp(&v6, 20);
            if r.ok == 20 { Ok(r) } else { Err(Box::new(r)) }
        });
        assert!(
            tcp6.backends.len() > 1,
            "IPv6 NodePort through {v6}: {tcp6:?}"
        );
    }
}

fn local_policy(c: &mut Cluster) {
    // Node 1 has the endpoint: the connection reaches it, with the client's own address.
    let to = sock(&c.nodes[1].ipv4, LOCAL_NODE_PORT);
    let report = eventually(
        "the local NodePort answers",
        Duration::from_secs(15),
        || Some(c.tcp(&to, 10)).filter(|r| r.ok == 10),
    );
    assert_eq!(
        report.backend_count(&c.nodes[1].pods[0].name),
        10,
        "only the local endpoint: {report:?}"
    );
    // Node 0 has none: dropped, not sent to node 1.
    let none = c.tcp(&sock(&c.nodes[0].ipv4, LOCAL_NODE_PORT), 2);
    assert_eq!(
        none.ok, 0,
        "a node without a local endpoint drops: {none:?}"
    );

    let server = c.nodes[1].pods[0].server.take().expect("the server");
    let seen = stop_server(server);
    c.nodes[1].pods[0].server = Some(serve(
        &c.nodes[1].pods[0].netns,
        &c.nodes[1].pods[0].name,
        8080,
    ));
    assert!(
        seen.tcp_clients.contains_key(&EXTERNAL_V4.to_string()),
        "externalTrafficPolicy: Local keeps the client's address: {seen:?}"
    );

    let ok = http_get(c.external(), &sock(&c.nodes[1].ipv4, HEALTH_PORT))
        .expect("health check on node 1");
    assert_eq!(ok.0, 200, "node 1 has a local endpoint: {ok:?}");
    let body: Value = serde_json::from_str(&ok.1).expect("JSON body");
    assert_eq!(body["localEndpoints"], 1, "{body}");
    assert_eq!(body["service"]["name"], "local", "{body}");
    let none = http_get(c.external(), &sock(&c.nodes[0].ipv4, HEALTH_PORT))
        .expect("health check on node 0");
    assert_eq!(none.0, 503, "node 0 has none: {none:?}");
}

fn external_ip_and_consistent_hashing(c: &Cluster) {
    let external = c.external();
    let route_via = |node: usize| {
        external
            .ip(&[
                "route",
                "replace",
                &format!("{EXTERNAL_IP}/32"),
                "via",
                &c.nodes[node].ipv4,
            ])
            .expect("routing the external IP");
    };
    route_via(0);
    let to = sock(EXTERNAL_IP, 80);
    let report = eventually("the external IP answers", Duration::from_secs(15), || {
        Some(c.tcp(&to, 20)).filter(|r| r.ok == 20)
    });
    assert!(
        report.backends.len() > 1,
        "balanced over the backends: {report:?}"
    );
    if c.nft {
        // nftables picks a backend at random per connection, on each node for itself.
        return;
    }

    // One UDP flow (fixed source port) through node 0, then through node 2: the same backend,
    // whichever node the network hands it to.
    let udp_to = sock(EXTERNAL_IP, 53);
    for port in [45001, 45002, 45003] {
        let bind = format!("{EXTERNAL_V4}:{port}");
        let mut picked = Vec::new();
        for node in [0, 2] {
            route_via(node);
            let r = c.udp(&udp_to, 1, &["--bind", &bind]);
            assert_eq!(r.ok, 1, "UDP to the external IP via node {node}: {r:?}");
            picked.push(r.backends.keys().next().cloned().unwrap_or_default());
        }
        assert_eq!(
            picked[0], picked[1],
            "the same flow gets the same backend on every node"
        );
    }
}

fn source_ranges_and_rejects(c: &Cluster) {
    let external = c.external();
    for ip in [LB_OPEN, LB_CLOSED] {
        external
            .ip(&[
                "route",
                "replace",
                &format!("{ip}/32"),
                "via",
                &c.nodes[0].ipv4,
            ])
            .expect("routing the LoadBalancer IP");
    }
    let open = sock(LB_OPEN, 80);
    let report = eventually(
        "the LoadBalancer IP answers",
        Duration::from_secs(15),
        || Some(c.tcp(&open, 10)).filter(|r| r.ok == 10),
    );
    assert!(!report.backends.is_empty(), "{report:?}");
    let closed = c.tcp(&sock(LB_CLOSED, 80), 2);
    assert_eq!(
        closed.ok, 0,
        "a client outside loadBalancerSourceRanges gets nothing: {closed:?}"
    );
    let status = c.nodes[0].agent.status().unwrap();
    assert!(
        c.nft
            || status["nodeport"]["counters"]["denied"]
                .as_u64()
                .unwrap_or(0)
                >= 2,
        "{:#}",
        status["nodeport"]
    );

    // A NodePort without endpoints is refused at once, not left to time out; so is its
    // external IP, which is no node's address (the program answers with a RST).
    external
        .ip(&[
            "route",
            "replace",
            &format!("{EMPTY_IP}/32"),
            "via",
            &c.nodes[0].ipv4,
        ])
        .expect("routing the external IP");
    for to in [sock(&c.nodes[0].ipv4, EMPTY_NODE_PORT), sock(EMPTY_IP, 80)] {
        let refused = c.tcp(&to, 3);
        assert_eq!(
            (refused.ok, refused.errors.get("ECONNREFUSED").copied()),
            (0, Some(3)),
            "{to}: {refused:?}"
        );
        assert!(
            refused.first_error_after_us.is_some_and(|us| us < 500_000),
            "{to} refused within half a second: {refused:?}"
        );
    }
}

fn icmp_errors_come_back(c: &Cluster) {
    // Every backend (local, or on another node behind SNAT) refuses with ICMP port unreachable;
    // the client's connected UDP socket sees ECONNREFUSED only if the error was translated back.
    // (The pods do not rate-limit these errors: see `add_pod`.)
    let to = sock(&c.nodes[0].ipv4, CLOSED_NODE_PORT);
    let frontend = format!("{to}/UDP");
    eventually("closed is programmed", Duration::from_secs(15), || {
        let status = c.nodes[0].agent.status().ok()?;
        status["services"]
            .as_array()?
            .iter()
            .any(|s| {
                s["frontend"] == frontend.as_str()
                    && s["packet_backends"].as_array().map(Vec::len) == Some(NODES)
            })
            .then_some(())
    });
    let report = c.udp(&to, 9, &["--per-request-socket", "--connected"]);
    assert_eq!(
        (report.ok, report.errors.get("ECONNREFUSED").copied()),
        (0, Some(9)),
        "{report:?}"
    );
    let status = c.nodes[0].agent.status().unwrap();
    assert!(
        c.nft
            || status["nodeport"]["counters"]["icmp_errors"]
                .as_u64()
                .unwrap_or(0)
                >= 9,
        "{:#}",
        status["nodeport"]
    );
}

/// The backend each of `ports` (client source ports, one UDP flow each to `ten`'s external IP)
/// gets when the network hands the flows to `node`.
fn udp_backends(c: &Cluster, node: usize, ports: std::ops::Range<u16>) -> Vec<String> {
    c.external()
        .ip(&[
            "route",
            "replace",
            &format!("{TEN_IP}/32"),
            "via",
            &c.nodes[node].ipv4,
        ])
        .expect("routing the external IP");
    let to = sock(TEN_IP, 53);
    ports
        .map(|port| {
            let bind = format!("{EXTERNAL_V4}:{port}");
            let r = c.udp(&to, 1, &["--bind", &bind]);
            assert_eq!(
                r.ok,
                1,
                "UDP flow from port {port} via node {node}: {r:?}; {:#}",
                c.nodes[node].agent.status().unwrap_or_default()
            );
            r.backends.keys().next().cloned().unwrap_or_default()
        })
        .collect()
}

/// nftables data plane: UDP flows (fixed client ports) whose backend is removed from the service
/// go to the remaining backends at their next packet (their conntrack entries are deleted),
/// while flows of the remaining backends stay where they are (theirs are kept).
fn udp_flows_of_a_removed_backend_move(c: &mut Cluster) {
    let all: Vec<(usize, usize)> = (0..NODES).map(|n| (n, 0)).collect();
    c.apply_ten(&all);
    c.external()
        .ip(&[
            "route",
            "replace",
            &format!("{TEN_IP}/32"),
            "via",
            &c.nodes[0].ipv4,
        ])
        .expect("routing the external IP");
    eventually("ten answers", Duration::from_secs(15), || {
        Some(c.udp(&sock(TEN_IP, 53), 10, &["--per-request-socket"])).filter(|r| r.ok == 10)
    });
    const FLOWS: std::ops::Range<u16> = 48_000..48_030;
    let before = udp_backends(c, 0, FLOWS);
    let gone = c.nodes[1].pods[0].name.clone();
    assert!(
        before.contains(&gone),
        "some of 30 flows went to {gone}: {before:?}"
    );
    c.apply_ten(&[(0, 0), (2, 0)]);
    // Logged once the entries are deleted (the table changes first: until then a flow's next
    // packet may still find its entry).
    c.nodes[0]
        .agent
        .wait_log("forgot the UDP flows of a removed backend", 1)
        .expect("gannetd deletes the flows of the removed backend");
    let after = udp_backends(c, 0, FLOWS);
    for (port, (was, is)) in FLOWS.zip(before.iter().zip(&after)) {
        if *was == gone {
            assert_ne!(
                *is, gone,
                "flow from port {port} still goes to the removed backend"
            );
        } else {
            assert_eq!(is, was, "flow from port {port} keeps its backend");
        }
    }
}

fn maglev_across_nodes(c: &mut Cluster) {
    // Ten backends: the three pods there are and seven more.
    for (node, index) in [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2), (0, 3)] {
        let name = format!("{}-p{index}", c.nodes[node].name);
        c.add_pod(node, &name);
    }
    let all: Vec<(usize, usize)> = (0..NODES)
        .flat_map(|n| (0..c.nodes[n].pods.len()).map(move |i| (n, i)))
        .collect();
    assert_eq!(all.len(), 10);
    c.apply_ten(&all);
    for node in 0..NODES {
        c.external()
            .ip(&[
                "route",
                "replace",
                &format!("{TEN_IP}/32"),
                "via",
                &c.nodes[node].ipv4,
            ])
            .expect("routing the external IP");
        eventually("ten answers", Duration::from_secs(15), || {
            Some(c.udp(&sock(TEN_IP, 53), 10, &["--per-request-socket"])).filter(|r| r.ok == 10)
        });
    }
    const FLOWS: std::ops::Range<u16> = 47_000..47_150;
    let before = udp_backends(c, 0, FLOWS);
    let distinct: std::collections::BTreeSet<&String> = before.iter().collect();
    assert!(
        distinct.len() >= 8,
        "150 flows spread over the 10 backends: {distinct:?}"
    );
    // Node 1 has never seen these flows: it picks the same backends.
    let other = udp_backends(c, 1, FLOWS);
    assert_eq!(
        before, other,
        "every node picks the same backend for the same flow"
    );

    // One backend goes; node 2 (fresh to these flows) shows where they go now.
    let (gone_node, gone_index) = (1, 2);
    let gone = c.nodes[gone_node].pods[gone_index].name.clone();
    let rest: Vec<(usize, usize)> = all
        .iter()
        .copied()
        .filter(|p| *p != (gone_node, gone_index))
        .collect();
    c.apply_ten(&rest);
    // Every node has programmed the change for the external IP these flows go to.
    let frontend = format!("{}/UDP", sock(TEN_IP, 53));
    for node in &c.nodes {
        eventually(
            "the node drops the backend",
            Duration::from_secs(15),
            || {
                let status = node.agent.status().ok()?;
                status["services"]
                    .as_array()?
                    .iter()
                    .find(|s| s["frontend"] == frontend.as_str())
                    .filter(|s| s["packet_backends"].as_array().map(Vec::len) == Some(9))
                    .map(|_| ())
            },
        );
    }
    let after = udp_backends(c, SMALL_CONNTRACK_NODE, FLOWS);
    let stayed_on_kept: usize = before.iter().filter(|b| **b != gone).count();
    let moved: usize = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != gone && b != a)
        .count();
    let to_gone: Vec<(u16, &String)> = FLOWS
        .zip(&before)
        .zip(&after)
        .filter(|(_, a)| **a == gone)
        .map(|((port, b), _)| (port, b))
        .collect();
    assert!(
        to_gone.is_empty(),
        "no flow goes to the removed backend {gone}; these did (port, backend before): {to_gone:?}; \
         node 2: {:#}",
        c.nodes[SMALL_CONNTRACK_NODE]
            .agent
            .status()
            .unwrap_or_default()["nodeport"]
    );
    assert!(
        moved * 100 <= before.len() * 12,
        "removing 1 of 10 backends moved {moved} of the {stayed_on_kept} flows on the other nine"
    );
}

fn full_conntrack(c: &mut Cluster) {
    // Node 2's map holds 512 flows; more flows than that are all balanced.
    let to = sock(&c.nodes[SMALL_CONNTRACK_NODE].ipv4, NODE_PORT);
    let flows = SMALL_CONNTRACK / 2 + 200;
    let report = c.tcp(&to, flows);
    assert_eq!(
        report.ok,
        u64::from(flows),
        "a full conntrack map still balances new flows: {report:?}"
    );
    // The agent looks every 10 s.
    let agent = &mut c.nodes[SMALL_CONNTRACK_NODE].agent;
    if agent
        .wait_log("conntrack map is full or nearly", 1)
        .is_err()
    {
        agent
            .wait_log("conntrack map is full or nearly", 1)
            .expect("the agent says the map is full");
    }
}

/// Pods reach the cluster IPs (TCP over IPv4 and IPv6, UDP), every backend on every node: the
/// socket load balancer (eBPF), or the node's nftables table, whose replies from other nodes'
/// pods must be tracked to be translated back.
fn cluster_ips_from_a_pod(c: &Cluster) {
    let pod = &c.nodes[0].pods[0];
    let probe = |args: &[&str]| -> Report {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(["--timeout-ms", "2000"]).args(args);
        let out = run_in(
            cmd,
            Some(&pod.netns),
            Some(&c.nodes[0].cgroup),
            PROBE_TIMEOUT,
        )
        .unwrap();
        parse_json_output(&out).unwrap()
    };
    for to in ["10.96.0.80:80", "[fd00:96::80]:80"] {
        let report = eventually("the cluster IP answers", Duration::from_secs(15), || {
            Some(probe(&["tcp", "--to", to, "--count", "60"])).filter(|r| r.ok == 60)
        });
        assert_eq!(
            report.backends.len(),
            NODES,
            "{to}: every backend, on every node: {report:?}"
        );
    }
    let udp = probe(&[
        "udp",
        "--to",
        "10.96.0.80:53",
        "--count",
        "20",
        "--per-request-socket",
    ]);
    assert_eq!(udp.ok, 20, "UDP to the cluster IP: {udp:?}");
}

/// `sessionAffinity: ClientIP` on a node port: every connection of the external client goes to
/// the backend its first one got.
fn affinity_pins_a_client(c: &Cluster) {
    let endpoints: String = (0..NODES)
        .map(|n| {
            format!(
                "  - addresses: [\"{}\"]\n    nodeName: {}\n",
                c.nodes[n].pods[0].ip, c.nodes[n].name
            )
        })
        .collect();
    c.plane
        .apply(&format!(
            "apiVersion: v1
kind: Service
metadata:
  name: sticky
  namespace: default
spec:
  type: NodePort
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 600
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
    nodePort: {STICKY_NODE_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sticky-v4
  namespace: default
  labels:
    kubernetes.io/service-name: sticky
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
{endpoints}"
        ))
        .expect("applying sticky");
    let to = sock(&c.nodes[0].ipv4, STICKY_NODE_PORT);
    let report = eventually("sticky answers", Duration::from_secs(15), || {
        Some(c.tcp(&to, 30)).filter(|r| r.ok == 30)
    });
    assert_eq!(
        report.backends.len(),
        1,
        "one client, one backend with ClientIP affinity: {report:?}"
    );
}

fn hairpin(c: &Cluster) {
    // A pod under the socket load balancer reaching its own service through the node port.
    let pod = &c.nodes[0].pods[0];
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["--timeout-ms", "2000", "tcp", "--to"])
        .arg(sock(&c.nodes[0].ipv4, NODE_PORT))
        .args(["--count", "30"]);
    let out = run_in(
        cmd,
        Some(&pod.netns),
        Some(&c.nodes[0].cgroup),
        PROBE_TIMEOUT,
    )
    .unwrap();
    let report: Report = parse_json_output(&out).unwrap();
    assert_eq!(report.ok, 30, "{report:?}");
    assert!(
        report.backend_count(&pod.name) > 0,
        "the pod reaches itself through its own service: {report:?}"
    );
}

fn flow_survives_restart(c: &mut Cluster) {
    let to = sock(&c.nodes[0].ipv4, NODE_PORT);
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["hold", "--to", &to]);
    let mut held = spawn(cmd, Some(c.external()), None).expect("starting hold");
    held.wait_for_line("connected", Duration::from_secs(10))
        .expect("connected through the NodePort");
    held.send_line("ping").unwrap();
    let backend = held
        .read_line(Duration::from_secs(5))
        .unwrap()
        .trim()
        .to_owned();
    c.nodes[0].agent.stop(libc::SIGKILL).unwrap();
    held.send_line("ping").unwrap();
    assert_eq!(
        held.read_line(Duration::from_secs(5)).unwrap().trim(),
        backend,
        "the tracked flow goes on while gannetd is down"
    );
    c.nodes[0].agent.restart().unwrap();
    c.nodes[0]
        .agent
        .wait_log("node programmed", NODES - 1)
        .unwrap();
    for _ in 0..3 {
        held.send_line("ping").unwrap();
        assert_eq!(
            held.read_line(Duration::from_secs(5)).unwrap().trim(),
            backend,
            "the same connection, the same backend, after the restart"
        );
    }
}

fn status(c: &Cluster) {
    status_with(c, &["eth0", "gannet.vxlan"]);
}

/// `gannetd status` of the nftables data plane: the frontends as its table holds them.
fn status_nft(c: &Cluster) {
    let status = c.nodes[0].agent.status().unwrap();
    assert_eq!(status["dataplane"], "nftables", "{status:#}");
    assert!(status.get("nodeport").is_none(), "no program: {status:#}");
    node_port_entry_has_every_node(c, &status, "backends");
}

/// The status entry of node 0's node port: external, with a backend on every node (under
/// `field`: the nftables table lists `backends`, the eBPF plane `packet_backends`).
fn node_port_entry_has_every_node(c: &Cluster, status: &Value, field: &str) {
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

fn status_with(c: &Cluster, expected_interfaces: &[&str]) {
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
