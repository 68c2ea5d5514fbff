//! The two-node clusters of the `overlay` scenario, one per variant, each on an underlay of its
//! own (`gannet_testkit::cluster::Underlay`: node namespaces on a bridge in another namespace, no
//! route out of the machine). Node A (10.99.0.11) holds the client, node B (10.99.0.12) the
//! server.
//!
//! - `underlay`: the server runs in node B's namespace, the client in node A's: no pods;
//! - `routed`: a pod per node wired like gannet-cni wires them (`crate::topology`), a route to
//!   the other node's pod CIDR via its address, and nothing else;
//! - `flannel`: what flanneld's vxlan backend and the reference CNI plugins build: `flannel.1`
//!   (VNI 1, port 8472, `nolearning`, MTU 1450) per node with the other node's forwarding entry,
//!   neighbour and onlink route, flanneld's masquerade rules, pods on `cni0` by `bridge` +
//!   `host-local`, and kube-proxy's nftables rules for the one service in node A;
//! - gannet (`vxlan`, `host-gw`, `ebpf`): gannet-control, one gannetd per node, pods by
//!   gannet-cni from gannetd's subnet file, the service applied with `gannetctl`.
//!
//! Field order is drop order everywhere: the server, then the pods, then the agents (stopped,
//! `gannetd cleanup` inside their node's namespace), the control plane, the namespaces.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gannet_testkit::cluster::{NODE_IF, Underlay, UnderlayNode};
use gannet_testkit::{Cgroup, ChildGuard, Netns, run_in};
use serde_json::{Value, json};

use super::{CLUSTER_CIDR, SERVICE_CIDR, Target, Tools, Variant};
use crate::clusterip::start_server;
use crate::control::procs::{ControlPlane, Logged};
use crate::kubeproxy::nft;
use crate::nodes::{EXEC_TIMEOUT, POD_IF, cni_add, gannet_cni_config, mtu, nft_load, run_tool};
use crate::services::{SERVICE_PORT, Service, TARGET_PORT, bench_services, manifests_yaml};
use crate::topology::add_routed_pod;
use crate::util::check_interrupted;

/// Flannel's VXLAN device.
pub const FLANNEL_DEVICE: &str = "flannel.1";
/// Flannel's VNI.
pub const FLANNEL_VNI: u32 = 1;
/// Flannel's VXLAN port (the Linux default).
pub const FLANNEL_PORT: u16 = 8472;
/// Flannel's pod MTU on a 1500-byte underlay.
pub const FLANNEL_MTU: u32 = 1450;
/// The bridge the reference plugin creates.
pub const FLANNEL_BRIDGE: &str = "cni0";
/// gannet-cni's network name.
const CNI_NETWORK: &str = "gannet-overlay-bench";
/// How long gannetd may take to come up, program the other node or a service.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Flannel's pod CIDR of node `index` (the benchmark hands them out as flanneld's lease would).
#[must_use]
pub fn flannel_pod_cidr(index: usize) -> String {
    format!("10.244.{}.0/24", index + 1)
}

/// The VTEP MAC of node `index`'s `flannel.1` (locally administered; flanneld lets the kernel
/// pick one and publishes it on its Node).
#[must_use]
pub fn flannel_vtep_mac(index: usize) -> String {
    format!("0e:fa:00:00:00:{:02x}", index + 1)
}

/// flanneld's masquerade rules for node `index` (`--ip-masq`, as its nftables mode writes them):
/// traffic between pods is left alone, traffic from pods to outside the cluster is masqueraded,
/// and its forward chain accepts everything to and from the pod network.
#[must_use]
pub fn flannel_masquerade_rules(index: usize) -> String {
    let pod = flannel_pod_cidr(index);
    format!(
        "table ip flannel-ipv4 {{\n\
         \tchain postrtg {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark and 0x4000 == 0x4000 return\n\
         \t\tip saddr {pod} ip daddr {CLUSTER_CIDR} return\n\
         \t\tip saddr {CLUSTER_CIDR} ip daddr {pod} return\n\
         \t\tip saddr != {pod} ip daddr {CLUSTER_CIDR} return\n\
         \t\tip saddr {CLUSTER_CIDR} ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t\tip saddr != {CLUSTER_CIDR} ip daddr {CLUSTER_CIDR} masquerade fully-random\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {CLUSTER_CIDR} accept\n\
         \t\tip daddr {CLUSTER_CIDR} accept\n\
         \t}}\n\
         }}\n"
    )
}

/// The reference plugins' network configuration for node `index`, as Flannel's CNI plugin hands
/// it to `bridge`.
#[must_use]
pub fn flannel_cni_config(index: usize, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": crate::cni::CNI_VERSION,
        "name": "cbr0",
        "type": "bridge",
        "bridge": FLANNEL_BRIDGE,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "mtu": FLANNEL_MTU,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": flannel_pod_cidr(index) }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": ipam_dir,
        },
    })
}

/// The one service: cluster IP 10.96.0.10, port 80 → 8080, its endpoint the server pod.
fn service(server: Ipv4Addr) -> anyhow::Result<Service> {
    bench_services(1, &[server])?
        .pop()
        .context("no service generated")
}

/// gannetd on one node of a gannet cluster; dropping it stops it and runs `gannetd cleanup`
/// inside the node's namespace (device, routes, masquerade table there; programs, pins, state).
#[derive(Debug)]
pub struct OverlayAgent {
    process: Option<Logged>,
    gannetd: PathBuf,
    bpf_root: PathBuf,
    state_dir: PathBuf,
    /// The node namespace (owned by the underlay).
    netns: PathBuf,
    // Last: removed after gannetd detached from it.
    cgroup: Cgroup,
}

impl OverlayAgent {
    /// Starts gannetd `--overlay mode` in `node`'s namespace against the control plane at
    /// `control`. Returns once it was spawned; see [`OverlayAgent::wait_ready`].
    fn start(
        gannetd: &Path,
        node: &UnderlayNode,
        mode: &str,
        control: &str,
        scratch: &Path,
    ) -> anyhow::Result<OverlayAgent> {
        let cgroup = Cgroup::new()?;
        crate::agent::check_cgroup(&cgroup)?;
        let tag = format!("{mode}-{}", node.name);
        let bpf_root = crate::agent::fresh_bpf_root(Some(&tag))?;
        let mut agent = OverlayAgent {
            process: None,
            gannetd: gannetd.to_path_buf(),
            bpf_root,
            state_dir: scratch.join(format!("state-{tag}")),
            netns: node.netns.path().to_path_buf(),
            cgroup,
        };
        let mut cmd = crate::agent::control_command(
            gannetd,
            &agent.cgroup,
            &agent.bpf_root,
            &agent.state_dir,
            control,
        );
        cmd.args(["--overlay", mode, "--node-name", &node.name])
            .arg(format!("--node-ip={}", node.ipv4));
        agent.process = Some(Logged::spawn(
            cmd,
            Some(&node.netns),
            &format!("gannetd --overlay {mode} on {}", node.name),
        )?);
        Ok(agent)
    }

    fn process(&mut self) -> anyhow::Result<&mut Logged> {
        self.process.as_mut().context("gannetd was stopped")
    }

    /// Waits until gannetd serves CNI requests.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.process()?
            .wait_message(0, "ready for CNI endpoints", AGENT_TIMEOUT)
            .map(drop)
    }

    /// Why gannetd exited, from its last error line (or its last lines).
    fn exit_reason(&self) -> String {
        let Some(process) = &self.process else {
            return "stopped".to_owned();
        };
        let tail = process.tail(20);
        tail.lines()
            .rev()
            .find_map(|line| {
                let value: Value = serde_json::from_str(line).ok()?;
                let level = value.get("level")?.as_str()?;
                (level == "ERROR").then(|| {
                    let fields = value.get("fields").unwrap_or(&value);
                    let message = fields.get("message").and_then(Value::as_str);
                    let error = fields.get("error").and_then(Value::as_str);
                    match (message, error) {
                        (Some(m), Some(e)) => format!("{m}: {e}"),
                        (Some(m), None) => m.to_owned(),
                        (None, Some(e)) => e.to_owned(),
                        (None, None) => line.to_owned(),
                    }
                })
            })
            .unwrap_or_else(|| tail.lines().last().unwrap_or("no output").to_owned())
    }

    fn cleanup(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
        if !self.bpf_root.exists() && !self.state_dir.exists() {
            return Ok(());
        }
        let netns = Netns::open_path(&self.netns)?;
        crate::agent::cleanup(
            &self.gannetd,
            &self.bpf_root,
            self.cgroup.path(),
            Some(&self.state_dir),
            Some(&netns),
        )
    }
}

impl Drop for OverlayAgent {
    fn drop(&mut self) {
        if let Err(err) = self.cleanup() {
            eprintln!("gannet-bench: stopping gannetd: {err:#}");
        }
    }
}

/// What building a variant gave.
#[derive(Debug)]
pub enum Built {
    Ready(Box<Cluster>),
    /// gannetd refused the mode (the reason, from its log).
    Skipped(String),
}

/// One variant's two-node cluster, ready to measure.
#[derive(Debug)]
pub struct Cluster {
    pub variant: Variant,
    // Field order is drop order.
    server: Option<ChildGuard>,
    /// Client pod (node A), server pod (node B); none for the underlay.
    pods: Vec<Netns>,
    agents: Vec<OverlayAgent>,
    plane: Option<ControlPlane>,
    underlay: Underlay,
    /// The server's address (pod B, or node B for the underlay).
    pub server_ip: Ipv4Addr,
    /// The client's address.
    pub client_ip: Ipv4Addr,
    /// The service's cluster IP, if the variant has one.
    pub cluster_ip: Option<Ipv4Addr>,
    /// The MTU of the client's interface.
    pub client_mtu: u32,
    /// How long building it took.
    pub setup_seconds: f64,
}

impl Cluster {
    /// The namespace the client runs in.
    #[must_use]
    pub fn client_netns(&self) -> &Netns {
        self.pods.first().unwrap_or(&self.underlay.nodes()[0].netns)
    }

    /// The cgroup the client runs in: node A's gannetd's, for gannet.
    #[must_use]
    pub fn client_cgroup(&self) -> Option<&Cgroup> {
        self.agents.first().map(|a| &a.cgroup)
    }

    /// Where the client connects for `target`, if the variant has it.
    #[must_use]
    pub fn target(&self, target: Target) -> Option<SocketAddrV4> {
        match target {
            Target::Pod => Some(SocketAddrV4::new(self.server_ip, TARGET_PORT)),
            Target::ClusterIp => self
                .cluster_ip
                .map(|ip| SocketAddrV4::new(ip, SERVICE_PORT)),
        }
    }

    /// The targets the variant has.
    #[must_use]
    pub fn targets(&self) -> Vec<Target> {
        Target::ALL
            .into_iter()
            .filter(|t| self.target(*t).is_some())
            .collect()
    }

    /// Whether the client reaches the cluster IP only through gannetd (gannet variants).
    #[must_use]
    pub fn socket_lb(&self) -> bool {
        !self.agents.is_empty()
    }

    fn empty(variant: Variant) -> anyhow::Result<Cluster> {
        let underlay = Underlay::new(2).context("building the two-node underlay")?;
        let (a, b) = (underlay.nodes()[0].ipv4, underlay.nodes()[1].ipv4);
        Ok(Cluster {
            variant,
            server: None,
            pods: Vec::new(),
            agents: Vec::new(),
            plane: None,
            underlay,
            server_ip: b,
            client_ip: a,
            cluster_ip: None,
            client_mtu: 0,
            setup_seconds: 0.0,
        })
    }

    /// Pod namespaces for the client (node A) and the server (node B).
    fn add_pod_namespaces(&mut self) -> anyhow::Result<()> {
        let short = self.variant.short();
        self.pods.push(Netns::new(&format!("{short}c"))?);
        self.pods.push(Netns::new(&format!("{short}s"))?);
        Ok(())
    }

    /// Starts the server (pod B or node B), widens the client's port range, reads its MTU.
    fn finish(
        &mut self,
        tools: &Tools,
        cpu: Option<usize>,
        started: Instant,
    ) -> anyhow::Result<()> {
        let server_ns = self.pods.get(1).unwrap_or(&self.underlay.nodes()[1].netns);
        let server = start_server(&tools.peer, server_ns, 's', cpu)
            .with_context(|| format!("starting the {} server", self.variant))?;
        self.server = Some(server);
        let client = self.client_netns();
        // Room for many short connections from one client.
        client.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        let dev = if self.pods.is_empty() {
            NODE_IF
        } else {
            POD_IF
        };
        self.client_mtu = mtu(client, dev)?;
        self.setup_seconds = started.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Builds `variant`'s cluster.
///
/// # Errors
/// If a step fails or the run is interrupted; what was created is removed again.
pub fn build(
    variant: Variant,
    tools: &Tools,
    cpu: Option<usize>,
    scratch: &Path,
) -> anyhow::Result<Built> {
    let started = Instant::now();
    let mut cluster = Cluster::empty(variant)?;
    check_interrupted()?;
    match variant {
        Variant::Underlay => {}
        Variant::Routed => routed(&mut cluster)?,
        Variant::Flannel => flannel(&mut cluster, tools, scratch)?,
        Variant::Vxlan | Variant::HostGw | Variant::Ebpf => {
            if let Some(reason) = gannet(&mut cluster, tools, scratch)? {
                return Ok(Built::Skipped(reason));
            }
        }
    }
    check_interrupted()?;
    cluster.finish(tools, cpu, started)?;
    Ok(Built::Ready(Box::new(cluster)))
}

/// The routed reference: pods 10.244.1.2 (node A) and 10.244.2.2 (node B), each node routing the
/// other's /24 via its underlay address.
fn routed(cluster: &mut Cluster) -> anyhow::Result<()> {
    let nodes = cluster.underlay.nodes();
    let mut ips = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let ip = Ipv4Addr::new(10, 244, u8::try_from(index + 1)?, 2);
        let pod = add_routed_pod(&node.netns, &format!("rt{index}"), ip)?;
        cluster.pods.push(pod.netns);
        ips.push(ip);
        let other = &nodes[1 - index];
        node.netns.ip(&[
            "route",
            "add",
            &format!("10.244.{}.0/24", 2 - index),
            "via",
            &other.ipv4.to_string(),
            "dev",
            NODE_IF,
        ])?;
    }
    cluster.client_ip = ips[0];
    cluster.server_ip = ips[1];
    Ok(())
}

/// Flannel's vxlan backend as flanneld programs it, the reference plugins' pods, kube-proxy's
/// nftables rules for the service in node A.
fn flannel(cluster: &mut Cluster, tools: &Tools, scratch: &Path) -> anyhow::Result<()> {
    let nodes = cluster.underlay.nodes();
    for (index, node) in nodes.iter().enumerate() {
        let ns = &node.netns;
        let local = node.ipv4.to_string();
        ns.ip(&[
            "link",
            "add",
            FLANNEL_DEVICE,
            "address",
            &flannel_vtep_mac(index),
            "mtu",
            &FLANNEL_MTU.to_string(),
            "type",
            "vxlan",
            "id",
            &FLANNEL_VNI.to_string(),
            "local",
            &local,
            "dev",
            NODE_IF,
            "dstport",
            &FLANNEL_PORT.to_string(),
            "nolearning",
        ])?;
        let own = flannel_pod_cidr(index);
        let network = own.split('/').next().unwrap_or(&own);
        ns.ip(&[
            "addr",
            "add",
            &format!("{network}/32"),
            "dev",
            FLANNEL_DEVICE,
        ])?;
        ns.ip(&["link", "set", FLANNEL_DEVICE, "up"])?;
        nft_load(
            ns,
            &flannel_masquerade_rules(index),
            scratch,
            &format!("flannel-masq-{index}.nft"),
        )?;
    }
    // Per remote node, what flanneld programs from its Node's annotations.
    for (index, node) in nodes.iter().enumerate() {
        for (other_index, other) in nodes.iter().enumerate().filter(|(i, _)| *i != index) {
            let mac = flannel_vtep_mac(other_index);
            let cidr = flannel_pod_cidr(other_index);
            let gateway = cidr.split('/').next().unwrap_or(&cidr).to_owned();
            run_tool(
                &node.netns,
                "bridge",
                &[
                    "fdb",
                    "replace",
                    &mac,
                    "dev",
                    FLANNEL_DEVICE,
                    "dst",
                    &other.ipv4.to_string(),
                    "self",
                    "permanent",
                ],
            )?;
            node.netns.ip(&[
                "neigh",
                "replace",
                &gateway,
                "lladdr",
                &mac,
                "dev",
                FLANNEL_DEVICE,
                "nud",
                "permanent",
            ])?;
            node.netns.ip(&[
                "route",
                "replace",
                &cidr,
                "via",
                &gateway,
                "dev",
                FLANNEL_DEVICE,
                "onlink",
            ])?;
        }
    }
    cluster.add_pod_namespaces()?;
    let bridge = tools.reference_dir.join("bridge");
    let mut ips = Vec::new();
    for (index, role) in ["client", "server"].into_iter().enumerate() {
        let config = flannel_cni_config(index, &scratch.join(format!("flannel-ipam-{index}")));
        ips.push(
            cni_add(
                &cluster.underlay.nodes()[index].netns,
                &cluster.pods[index],
                &bridge,
                &tools.reference_dir,
                &config,
                &format!("flannel-{role}"),
            )
            .with_context(|| format!("wiring the flannel {role} pod"))?,
        );
    }
    cluster.client_ip = ips[0];
    cluster.server_ip = ips[1];
    let svc = service(cluster.server_ip)?;
    let node_a = &cluster.underlay.nodes()[0];
    nft_load(
        &node_a.netns,
        &nft::ruleset_in(std::slice::from_ref(&svc), SERVICE_CIDR, node_a.ipv4),
        scratch,
        "flannel-kube-proxy.nft",
    )
    .context("loading kube-proxy's nftables rules into node A")?;
    cluster.cluster_ip = Some(svc.cluster_ip);
    Ok(())
}

/// gannet-control, gannetd per node, gannet-cni pods, the service through `gannetctl`. `Some`
/// reason if gannetd refuses the mode (`ebpf` may, in this version).
fn gannet(cluster: &mut Cluster, tools: &Tools, scratch: &Path) -> anyhow::Result<Option<String>> {
    let mode = cluster
        .variant
        .gannet_mode()
        .context("not a gannet variant")?;
    let plane = cluster.plane.insert(ControlPlane::start(
        &tools.gannet_control,
        &scratch.join(format!("control-{mode}")),
        SERVICE_CIDR,
        &["--cluster-cidr", CLUSTER_CIDR],
    )?);
    let control = plane.addr();
    for node in cluster.underlay.nodes() {
        cluster.agents.push(OverlayAgent::start(
            &tools.gannetd,
            node,
            mode,
            &control,
            scratch,
        )?);
    }
    for agent in &mut cluster.agents {
        if let Err(err) = agent.wait_ready() {
            let exited = agent
                .process
                .as_mut()
                .map(|p| p.wait_exit(Duration::from_secs(2)));
            if cluster.variant == Variant::Ebpf && matches!(exited, Some(Ok(_))) {
                return Ok(Some(agent.exit_reason()));
            }
            return Err(err);
        }
    }
    for agent in &mut cluster.agents {
        let process = agent.process()?;
        process.wait_message(0, "subnet file written", AGENT_TIMEOUT)?;
        // The other node's entries (its VTEP MAC is published when it registers).
        process.wait_message(0, "node programmed", AGENT_TIMEOUT)?;
    }
    cluster.add_pod_namespaces()?;
    let cni_dir = tools
        .gannet_cni
        .parent()
        .context("gannet-cni has no directory")?
        .to_path_buf();
    let mut ips = Vec::new();
    for (index, role) in ["client", "server"].into_iter().enumerate() {
        let config = gannet_cni_config(
            CNI_NETWORK,
            &cluster.agents[index].state_dir,
            &scratch.join(format!("ipam-{mode}-{index}")),
        );
        ips.push(
            cni_add(
                &cluster.underlay.nodes()[index].netns,
                &cluster.pods[index],
                &tools.gannet_cni,
                &cni_dir,
                &config,
                &format!("{mode}-{role}"),
            )
            .with_context(|| format!("wiring the {mode} {role} pod"))?,
        );
    }
    cluster.client_ip = ips[0];
    cluster.server_ip = ips[1];

    let svc = service(cluster.server_ip)?;
    let file = scratch.join(format!("service-{mode}.yaml"));
    fs::write(&file, manifests_yaml(std::slice::from_ref(&svc)))
        .with_context(|| format!("writing {}", file.display()))?;
    let from = cluster.agents[0].process()?.line_count();
    let mut cmd = Command::new(&tools.gannetctl);
    cmd.arg("--server")
        .arg(&control)
        .args(["apply", "-f"])
        .arg(&file);
    let output = run_in(cmd, None, None, EXEC_TIMEOUT)?;
    if !output.status.success() {
        bail!(
            "gannetctl apply failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let (_, line) = cluster.agents[0].process()?.wait_line(
        from,
        AGENT_TIMEOUT,
        "\"services synced\" with the service",
        |line| {
            line.message().as_deref() == Some("services synced")
                && line.field("added").unwrap_or(0) + line.field("updated").unwrap_or(0) > 0
        },
    )?;
    ensure!(
        line.field("failed") == Some(0),
        "gannetd on node A failed to program the service: {}",
        line.text
    );
    cluster.cluster_ip = Some(svc.cluster_ip);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_configuration_is_flannels() {
        assert_eq!(flannel_pod_cidr(0), "10.244.1.0/24");
        assert_eq!(flannel_vtep_mac(1), "0e:fa:00:00:00:02");
        let config = flannel_cni_config(1, Path::new("/tmp/x"));
        assert_eq!(config["bridge"], "cni0");
        assert_eq!(config["isGateway"], true);
        assert_eq!(config["ipMasq"], false);
        assert_eq!(config["hairpinMode"], true);
        assert_eq!(config["mtu"], 1450);
        assert_eq!(config["ipam"]["ranges"][0][0]["subnet"], "10.244.2.0/24");
        let rules = flannel_masquerade_rules(0);
        assert!(
            rules.contains("ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return"),
            "{rules}"
        );
        assert!(rules.contains("masquerade fully-random"), "{rules}");
    }

    #[test]
    fn the_service_network_leaves_the_underlay_alone() {
        let svc = service(Ipv4Addr::new(10, 244, 2, 2)).expect("a service");
        assert_eq!(svc.cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        let rules = nft::ruleset_in(
            std::slice::from_ref(&svc),
            SERVICE_CIDR,
            gannet_testkit::cluster::node_addrs(0).0,
        );
        // kube-proxy drops traffic to unallocated addresses of the service network: the
        // underlay (10.99.0.0/24) must not be one of them.
        assert!(rules.contains("ip daddr { 10.96.0.0/16 } drop"), "{rules}");
        assert!(!rules.contains("10.96.0.0/12"), "{rules}");
        assert!(rules.contains("dnat to 10.244.2.2:8080"), "{rules}");
    }
}
