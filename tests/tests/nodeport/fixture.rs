//! The cluster these tests build: three nodes on an underlay, an external client, gannet-control,
//! a gannetd per node, pods and services; the probes and servers they run.

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
    cluster::Underlay,
    cni::{cni, pod_ip},
    control::ControlPlane,
    probe::{Report, ServeReport, parse_json_output},
    run_in, spawn,
};
use serde_json::{Value, json};

pub(crate) const NODES: usize = 3;
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const NODE_PORT: u16 = 30080;
pub(crate) const NODE_PORT_UDP: u16 = 30053;
pub(crate) const LOCAL_NODE_PORT: u16 = 30081;
pub(crate) const HEALTH_PORT: u16 = 32081;
pub(crate) const EXTERNAL_IP: &str = "10.99.0.100";
/// LoadBalancer IPs: one whose source ranges hold the external client, one whose do not.
pub(crate) const LB_OPEN: &str = "10.99.0.101";
pub(crate) const LB_CLOSED: &str = "10.99.0.102";
pub(crate) const TEN_NODE_PORT: u16 = 30090;
/// `ten`'s external IP: the same flows can reach it through any node (as ECMP would send them).
pub(crate) const TEN_IP: &str = "10.99.0.110";
pub(crate) const EMPTY_NODE_PORT: u16 = 30099;
/// `sticky`: `sessionAffinity: ClientIP`.
pub(crate) const STICKY_NODE_PORT: u16 = 30070;
/// `empty`'s external IP: not a node's address, so the NodePort program refuses it itself.
pub(crate) const EMPTY_IP: &str = "10.99.0.103";
/// A UDP NodePort whose backends listen on nothing: they answer with ICMP port unreachable.
pub(crate) const CLOSED_NODE_PORT: u16 = 30098;
/// The node started with the smallest conntrack map gannetd accepts (`SMALL_CONNTRACK`).
pub(crate) const SMALL_CONNTRACK_NODE: usize = 2;
/// Its `--max-conntrack`: 512 flows.
pub(crate) const SMALL_CONNTRACK: u32 = 1024;

pub(crate) struct Pod {
    pub(crate) server: Option<ChildGuard>,
    pub(crate) netns: Netns,
    pub(crate) ip: String,
    pub(crate) ipv6: String,
    pub(crate) name: String,
}

pub(crate) struct Node {
    pub(crate) pods: Vec<Pod>,
    pub(crate) agent: Agent,
    pub(crate) cgroup: Cgroup,
    pub(crate) name: String,
    pub(crate) ipv4: String,
    pub(crate) ipv6: String,
    pub(crate) ipam: ScratchDir,
}

pub(crate) struct Cluster {
    /// gannetd runs `--dataplane nftables`: no program, so no program counters and no Maglev.
    pub(crate) nft: bool,
    pub(crate) nodes: Vec<Node>,
    pub(crate) plane: ControlPlane,
    pub(crate) underlay: Underlay,
}

pub(crate) fn probe_in(netns: &Netns, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["--timeout-ms", "2000"]).args(args);
    run_in(cmd, Some(netns), None, PROBE_TIMEOUT).expect("running gannet-probe")
}

pub(crate) fn serve(netns: &Netns, name: &str, port: u16) -> ChildGuard {
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

pub(crate) fn stop_server(mut server: ChildGuard) -> ServeReport {
    server.kill(libc::SIGTERM).expect("stopping the server");
    let output = server
        .wait_output(Duration::from_secs(10))
        .expect("server exits");
    parse_json_output(&output).expect("server report")
}

pub(crate) fn sock(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

impl Cluster {
    /// Three nodes with `--overlay overlay` and `extra` gannetd flags.
    pub(crate) fn new(overlay: &str, extra: &[&str]) -> Cluster {
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

    pub(crate) fn add_pod(&mut self, node: usize, name: &str) {
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

    pub(crate) fn external(&self) -> &Netns {
        self.underlay.external().expect("external client")
    }

    /// `count` TCP connections from the external client to `to`.
    pub(crate) fn tcp(&self, to: &str, count: u32) -> Report {
        parse_json_output(&probe_in(
            self.external(),
            &["tcp", "--to", to, "--count", &count.to_string()],
        ))
        .expect("probe report")
    }

    pub(crate) fn udp(&self, to: &str, count: u32, extra: &[&str]) -> Report {
        let count = count.to_string();
        let args = [&["udp", "--to", to, "--count", &count][..], extra].concat();
        parse_json_output(&probe_in(self.external(), &args)).expect("probe report")
    }

    /// The services: `web` (NodePort, TCP and UDP, dual-stack, endpoints on every node, an
    /// external IP) and `local` (LoadBalancer, `externalTrafficPolicy: Local`, its endpoint on
    /// node 1 only).
    pub(crate) fn apply_services(&self) {
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
    pub(crate) fn apply_ten(&self, pods: &[(usize, usize)]) {
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
pub(crate) fn http_get(netns: &Netns, to: &str) -> Option<(u16, String)> {
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
