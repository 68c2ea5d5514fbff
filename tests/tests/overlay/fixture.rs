//! The cluster these tests build: three nodes on an underlay bridge, gannet-control, a gannetd per
//! node, pods wired by gannet-cni; the probes and servers they run.

use std::{process::Command, time::Duration};

use gannet_testkit::{
    Cgroup, ChildGuard, Netns, ScratchDir,
    agent::Agent,
    bin_path,
    cluster::Underlay,
    cni::{cni, pod_ip},
    control::ControlPlane,
    probe::{IcmpReport, Report, ServeReport, parse_json_output},
    run_in, spawn,
};
use serde_json::{Value, json};

pub(crate) const NODES: usize = 3;
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub(crate) const CLUSTER_CIDR_V6: &str = "fd00:244::/56";
/// The MTU pods get over VXLAN on a 1500-byte underlay.
pub(crate) const VXLAN_POD_MTU: u32 = 1450;

/// A pod: its namespace, its address, and the `gannet-probe serve` answering as its name.
pub(crate) struct Pod {
    // Field order is drop order: the server before the namespace it runs in.
    pub(crate) server: Option<ChildGuard>,
    pub(crate) netns: Netns,
    pub(crate) ip: String,
    pub(crate) ipv6: Option<String>,
    pub(crate) name: String,
}

/// One node: its gannetd, its cgroup and its pods.
pub(crate) struct Node {
    pub(crate) pods: Vec<Pod>,
    pub(crate) agent: Agent,
    pub(crate) cgroup: Cgroup,
    pub(crate) name: String,
    pub(crate) ipam: ScratchDir,
}

pub(crate) struct Cluster {
    // Drop order: pods and agents (whose cleanup runs inside the node namespaces), the control
    // plane, then the namespaces.
    pub(crate) nodes: Vec<Node>,
    pub(crate) plane: ControlPlane,
    pub(crate) external_server: Option<ChildGuard>,
    pub(crate) underlay: Underlay,
}

pub(crate) fn probe_in(
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["--timeout-ms", "2000"]).args(args);
    run_in(cmd, Some(netns), cgroup, PROBE_TIMEOUT).expect("running gannet-probe")
}

/// `gannet-probe icmp ARGS…` from `netns`.
pub(crate) fn ping(netns: &Netns, args: &[&str]) -> IcmpReport {
    let output = probe_in(netns, None, &[&["icmp"], args].concat());
    parse_json_output(&output).expect("icmp report")
}

pub(crate) fn serve(netns: &Netns, name: &str, port: u16, extra: &[&str]) -> ChildGuard {
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

pub(crate) fn stop_server(mut server: ChildGuard) -> ServeReport {
    server.kill(libc::SIGTERM).expect("stopping the server");
    let output = server
        .wait_output(Duration::from_secs(10))
        .expect("server exits");
    parse_json_output(&output).expect("server report")
}

impl Cluster {
    /// Three nodes, each in `modes[i]`, each with `pods_per_node` pods serving on port 8080.
    pub(crate) fn new(modes: [&str; NODES], pods_per_node: usize) -> Cluster {
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

    pub(crate) fn cni_conf(&self, node: usize) -> Value {
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

    pub(crate) fn add_pod(&mut self, node: usize, name: &str) {
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

    pub(crate) fn pod(&self, node: usize, index: usize) -> &Pod {
        &self.nodes[node].pods[index]
    }

    pub(crate) fn tcp(&self, from: (usize, usize), to: &str, count: u32) -> Report {
        let pod = self.pod(from.0, from.1);
        let output = probe_in(
            &pod.netns,
            Some(&self.nodes[from.0].cgroup),
            &["tcp", "--to", to, "--count", &count.to_string()],
        );
        parse_json_output(&output).expect("probe report")
    }

    pub(crate) fn node_netns(&self, node: usize) -> &Netns {
        &self.underlay.nodes()[node].netns
    }

    /// gannet's routes in a node (`proto 87`), as `ip route` prints them.
    pub(crate) fn overlay_routes(&self, node: usize) -> String {
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

pub(crate) fn addr(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:8080")
    } else {
        format!("{ip}:8080")
    }
}
