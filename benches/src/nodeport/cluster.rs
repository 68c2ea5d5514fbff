//! The clusters of the `nodeport` scenario, one per variant, each on an underlay of its own
//! (`gannet_testkit::cluster::Underlay`: node namespaces and an external client on a bridge in
//! another namespace, no route out of the machine):
//!
//! - node A (10.99.0.11) receives the client's packets at `10.99.0.11:nodePort`; node B
//!   (10.99.0.12) runs the server pod, the measured service's one endpoint; the external client
//!   (10.99.0.250) is on the same segment;
//! - both nodes run gannetd from a manifest directory (`v1 Node` manifests for both nodes, with
//!   the VTEP MACs their devices have) with the overlay [`OVERLAY`] between them, the server pod
//!   is wired by gannet-cni: the pod network is the same for every variant;
//! - `gannet-tc`: node A's gannetd serves the node port with `gannet_nodeport` on its `eth0`
//!   (`--nodeport-interfaces=eth0`; it adds the overlay device for the replies) and gets the N
//!   services as manifests;
//! - `gannet-xdp`: the same with `--nodeport-acceleration xdp`: `gannet_nodeport_xdp` in native
//!   mode on node A's `eth0` (a veth) in front of the tc program. A veth receives the frames its
//!   peer's XDP program transmits only when it runs NAPI itself (an XDP program, or GRO), so
//!   node A's port on the bridge gets GRO (nothing else changes for the packets it receives:
//!   the kernel takes the NAPI path only for the XDP frames and for packets of senders without
//!   segmentation offload). The testkit's `Underlay::wire_like` is not used: it also turns off
//!   transmit checksum offload on every host, which only matters for frames XDP rewrites and
//!   would make the client's load differ from the other variants';
//! - `gannet-nft`: node A's gannetd runs `--dataplane nftables` (started with
//!   [`Agent::start_nft`], which refuses the harness's own and PID 1's namespace, so its table
//!   `inet gannet-services` is in node A's namespace only), same overlay, and gets the N services
//!   as manifests; no program is loaded, the table's nat hooks translate a connection's first
//!   packet (node ports on `--node-ip`, masquerade for the backend on node B), conntrack the
//!   rest, and node A's kernel forwards into the overlay as for kube-proxy;
//! - `kube-proxy-nft`, `kube-proxy-iptables`: gannetd runs with `--nodeport-interfaces=` and no
//!   services; kube-proxy's rules for the N services are loaded into node A, whose kernel
//!   forwards (the testkit's nodes have `ip_forward=1`) into the overlay route to node B's pods.
//!
//! Node B runs the eBPF gannetd with `--nodeport-interfaces=` in every variant (nothing reaches
//! it from outside), so only node A differs between the variants.
//! Field order is drop order: the server, the pod, the agents (stopped, `gannetd cleanup` in
//! their namespace), their cgroups, the namespaces.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use gannet_testkit::cluster::{NODE_IF, Underlay};
use gannet_testkit::{Cgroup, ChildGuard, Netns};
use serde_json::Value;

use super::packet::{self, NodePortState};
use super::{Load, Tools, Variant};
use crate::agent::{Agent, Node};
use crate::clusterip::{start_server, timed_load};
use crate::kubeproxy::{iptables, nft};
use crate::nodes::{cni_add, gannet_cni_config};
use crate::services::{
    CLUSTER_CIDR, MANIFEST_FILE, Service, bench_services, with_node_ports, write_manifests,
};

/// gannetd's `--overlay` between the nodes, in every variant (its default, Flannel's wire
/// format).
pub const OVERLAY: &str = "vxlan";
/// The overlay's device, where replies from node B arrive on node A.
pub const OVERLAY_DEVICE: &str = "gannet.vxlan";
/// The service network: not Kubernetes' default 10.96.0.0/12, which holds the underlay
/// (10.99.0.0/24), and kube-proxy's nftables rules drop new traffic to addresses of it that no
/// service holds (the nodes' VXLAN packets among them). 10 000 cluster IPs from 10.96.0.10 fit.
pub const SERVICE_CIDR: &str = crate::overlay::SERVICE_CIDR;
/// The nodes' pod CIDRs: above the addresses the benchmark's absent endpoints take
/// (`services::bench_services`: 10.244.1.0 onwards, 3 per service).
pub const POD_CIDRS: [&str; 2] = ["10.244.250.0/24", "10.244.251.0/24"];
/// gannet-cni's network name.
const CNI_NETWORK: &str = "gannet-nodeport-bench";
/// How long gannetd may take to program the other node or write its subnet file.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long gannetd may take to program the services (kube-proxy's rule loads have the
/// `clusterip` scenario's limit, 10 minutes).
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long loading kube-proxy's rules may take: `iptables-restore` of 10 000 NodePort services
/// took 7½ minutes on a 2-CPU machine (iptables-nft 1.8.9, almost all of it in user space).
const RULES_TIMEOUT: Duration = Duration::from_secs(1800);
/// The manifest with both Node objects.
const NODES_FILE: &str = "nodes.yaml";
/// What gannetd logs when its XDP program is attached natively.
const XDP_ATTACHED: &str = "NodePort XDP program attached (native)";
/// The tables gannet-nft's node A may hold: gannetd's services table
/// (`datapath::nft::TABLE`) and its overlay's masquerade table (`masquerade::TABLE`).
const NFT_NODE_TABLES: [&str; 2] = ["table inet gannet", "table inet gannet-services"];

/// A `v1 Node` manifest: its pod CIDR, its `InternalIP` and its VTEP MAC (what a control plane
/// would publish).
#[must_use]
pub fn node_yaml(name: &str, ip: Ipv4Addr, pod_cidr: &str, vtep_mac: Option<&str>) -> String {
    let annotation = vtep_mac
        .map(|mac| format!("  annotations:\n    gannet.io/vtep-mac: \"{mac}\"\n"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{annotation}spec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [{pod_cidr}]\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n"
    )
}

/// gannetd's flags on node `index` for `variant`: gannet-nft's node A runs the nftables data
/// plane (which serves node ports on `--node-ip` on every interface: `--nodeport-interfaces`
/// does not apply to it).
fn node_args(variant: Variant, index: usize, name: &str, ip: Ipv4Addr) -> Vec<String> {
    let mut args = Vec::new();
    if variant.nft() && index == 0 {
        args.extend(["--dataplane".to_owned(), "nftables".to_owned()]);
    }
    args.extend([
        "--node-name".into(),
        name.into(),
        format!("--node-ip={ip}"),
        "--overlay".into(),
        OVERLAY.into(),
        "--cluster-cidr".into(),
        CLUSTER_CIDR.into(),
    ]);
    match (variant, index) {
        // Its node ports are on `--node-ip`, on every interface.
        (Variant::GannetNft, 0) => {}
        (Variant::GannetTc | Variant::GannetXdp, 0) => {
            args.push(format!("--nodeport-interfaces={NODE_IF}"));
            if variant.xdp() {
                args.extend(["--nodeport-acceleration".to_owned(), "xdp".to_owned()]);
            }
        }
        _ => args.push("--nodeport-interfaces=".to_owned()),
    }
    args
}

/// One variant's cluster.
#[derive(Debug)]
pub struct Cluster {
    pub variant: Variant,
    // Field order is drop order.
    server: Option<ChildGuard>,
    pod: Option<Netns>,
    /// Node A's, node B's.
    agents: Vec<Agent>,
    cgroups: Vec<Cgroup>,
    underlay: Underlay,
    manifest_dirs: Vec<PathBuf>,
    /// The server pod's address.
    pub server_ip: Ipv4Addr,
    /// How long building it took.
    pub setup_seconds: f64,
}

impl Cluster {
    /// Builds `variant`'s cluster: underlay, external client, gannetd on both nodes with the
    /// overlay programmed, the server pod on node B and its server (pinned to `cpu`).
    ///
    /// # Errors
    /// If a step fails or the run is interrupted; what was created is removed again.
    pub fn build(
        variant: Variant,
        tools: &Tools,
        cpu: Option<usize>,
        scratch: &Path,
    ) -> anyhow::Result<Cluster> {
        let started = Instant::now();
        let mut underlay = Underlay::new(2).context("building the two-node underlay")?;
        let client = underlay
            .add_external()
            .context("adding the external client")?;
        // Room for many short connections from one client.
        client.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        let mut cluster = Cluster {
            variant,
            server: None,
            pod: None,
            agents: Vec::new(),
            cgroups: Vec::new(),
            underlay,
            manifest_dirs: Vec::new(),
            server_ip: Ipv4Addr::UNSPECIFIED,
            setup_seconds: 0.0,
        };
        let short = variant.short();
        for (index, node) in cluster.underlay.nodes().iter().enumerate() {
            crate::util::check_interrupted()?;
            let manifest_dir = scratch.join(format!("np-{short}-manifests-{index}"));
            fs::create_dir_all(&manifest_dir)
                .with_context(|| format!("creating {}", manifest_dir.display()))?;
            cluster.manifest_dirs.push(manifest_dir.clone());
            let state_dir = scratch.join(format!("np-{short}-state-{index}"));
            let cgroup = Cgroup::new()?;
            let args = node_args(variant, index, &node.name, node.ipv4);
            let tag = format!("np-{short}-{index}");
            let spec = Node {
                netns: &node.netns,
                tag: &tag,
                state_dir: &state_dir,
                args: &args,
            };
            let agent = if variant.nft() && index == 0 {
                // Refuses the harness's own and PID 1's namespace and needs the nftables flags:
                // the table goes into node A's namespace and nowhere else.
                Agent::start_nft(&tools.gannetd, &cgroup, &manifest_dir, spec)
            } else {
                Agent::start_node(&tools.gannetd, &cgroup, &manifest_dir, spec)
            };
            cluster.cgroups.push(cgroup);
            cluster
                .agents
                .push(agent.with_context(|| format!("starting gannetd on {}", node.name))?);
        }
        if variant.xdp() {
            // Node A's port on the bridge takes the frames node A's XDP program transmits.
            let port = &cluster.underlay.nodes()[0].underlay_port;
            cluster
                .underlay
                .bridge_ns()
                .ethtool(&["-K", port, "gro", "on"])
                .context("GRO on node A's bridge port, for frames XDP transmits")?;
        }
        cluster.join_nodes()?;
        if variant.xdp() {
            cluster.agents[0]
                .wait_for_log(XDP_ATTACHED, AGENT_TIMEOUT)
                .context("gannetd on node A did not attach its XDP program natively")?;
        }
        cluster.add_server(tools, cpu, scratch)?;
        cluster.setup_seconds = started.elapsed().as_secs_f64();
        Ok(cluster)
    }

    /// Gives both agents both Node manifests (with the VTEP MACs their devices have) and waits
    /// until each programmed the other node and wrote its subnet file.
    fn join_nodes(&mut self) -> anyhow::Result<()> {
        let mut manifests = String::new();
        for (node, pod_cidr) in self.underlay.nodes().iter().zip(POD_CIDRS) {
            let link = node.netns.ip(&["-br", "link", "show", OVERLAY_DEVICE])?;
            let mac = link
                .split_whitespace()
                .nth(2)
                .with_context(|| format!("no MAC in {link:?}"))?
                .to_owned();
            manifests.push_str(&node_yaml(&node.name, node.ipv4, pod_cidr, Some(&mac)));
        }
        for dir in &self.manifest_dirs {
            write_file(dir, NODES_FILE, &manifests)?;
        }
        for agent in &mut self.agents {
            agent.wait_for_log("subnet file written", AGENT_TIMEOUT)?;
            agent.wait_for_log("node programmed", AGENT_TIMEOUT)?;
        }
        Ok(())
    }

    /// The server pod on node B, wired by gannet-cni, and the peer server in it.
    fn add_server(
        &mut self,
        tools: &Tools,
        cpu: Option<usize>,
        scratch: &Path,
    ) -> anyhow::Result<()> {
        let short = self.variant.short();
        let pod = self.pod.insert(Netns::new(&format!("{short}s"))?);
        let node_b = &self.underlay.nodes()[1];
        let state_dir = scratch.join(format!("np-{short}-state-1"));
        let config = gannet_cni_config(
            CNI_NETWORK,
            &state_dir,
            &scratch.join(format!("np-{short}-ipam")),
        );
        let cni_dir = tools
            .gannet_cni
            .parent()
            .context("gannet-cni has no directory")?;
        self.server_ip = cni_add(
            &node_b.netns,
            pod,
            &tools.gannet_cni,
            cni_dir,
            &config,
            &format!("np-{short}-server"),
        )
        .context("wiring the server pod")?;
        self.server = Some(
            start_server(&tools.peer, pod, 's', cpu).context("starting the server in the pod")?,
        );
        Ok(())
    }

    /// The namespace of the external client.
    #[must_use]
    pub fn client_netns(&self) -> &Netns {
        self.underlay
            .external()
            .expect("the external client is added when the cluster is built")
    }

    /// Node A's address (where the node ports are).
    #[must_use]
    pub fn node_ip(&self) -> Ipv4Addr {
        self.underlay.nodes()[0].ipv4
    }

    /// Node A's namespace.
    #[must_use]
    pub fn node_netns(&self) -> &Netns {
        &self.underlay.nodes()[0].netns
    }

    /// Node A's gannetd.
    #[must_use]
    pub fn node_agent(&self) -> &Agent {
        &self.agents[0]
    }

    /// The server pod's address and port: the measured service's endpoint.
    #[must_use]
    pub fn backend(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.server_ip, crate::services::TARGET_PORT)
    }

    /// `n` `NodePort` services, the last one (the measured one) with the server pod as its one
    /// endpoint.
    ///
    /// # Errors
    /// If `n` is out of range.
    pub fn services(&self, n: usize) -> anyhow::Result<Vec<Service>> {
        let mut services = bench_services(n, &[self.server_ip])?;
        with_node_ports(&mut services)?;
        Ok(services)
    }

    /// Where the client connects: node A's address and the measured (last) service's node
    /// port.
    ///
    /// # Errors
    /// If there are no services.
    pub fn target(&self, services: &[Service]) -> anyhow::Result<SocketAddrV4> {
        let port = services
            .last()
            .and_then(|s| s.node_port)
            .context("the measured service has no node port")?;
        Ok(SocketAddrV4::new(self.node_ip(), port))
    }

    /// Programs `services` the variant's way and records how long it took in `load`.
    ///
    /// # Errors
    /// If loading fails or takes longer than its timeout.
    pub fn program(
        &mut self,
        services: &[Service],
        scratch: &Path,
        load: &mut Load,
    ) -> anyhow::Result<()> {
        let n = services.len();
        let node_ip = self.node_ip();
        match self.variant {
            Variant::GannetTc | Variant::GannetXdp | Variant::GannetNft => {
                let dir = &self.manifest_dirs[0];
                let start = Instant::now();
                write_manifests(dir, services)?;
                load.manifest_bytes = fs::metadata(dir.join(MANIFEST_FILE))
                    .map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX));
                // Every service's cluster IP and its node port on node A's one address (both
                // data planes count frontends).
                let frontends = 2 * n as u64;
                let took = self.agents[0]
                    .wait_synced(frontends, start, LOAD_TIMEOUT)?
                    .as_secs_f64();
                if self.variant.nft() {
                    load.gannetd_nft_sync_seconds = Some(took);
                } else {
                    load.gannetd_sync_seconds = Some(took);
                }
                load.gannetd_frontends = Some(frontends);
            }
            Variant::KubeProxyNft => {
                let rules = nft::ruleset_in(services, SERVICE_CIDR, node_ip);
                load.nft_rules_bytes = rules.len();
                let file = write_file(scratch, &format!("np-kube-proxy-{n}.nft"), &rules)?;
                let mut cmd = Command::new("nft");
                cmd.arg("-f").arg(&file);
                load.nft = Some(timed_load(cmd, self.node_netns(), "nft -f", RULES_TIMEOUT)?);
            }
            Variant::KubeProxyIptables => {
                let rules = iptables::restore_input(services);
                load.iptables_rules_bytes = rules.len();
                let file = write_file(scratch, &format!("np-kube-proxy-{n}.iptables"), &rules)?;
                let mut cmd = Command::new("iptables-restore");
                cmd.args(["-w", "30", "--noflush"]).arg(&file);
                load.iptables_restore = Some(timed_load(
                    cmd,
                    self.node_netns(),
                    "iptables-restore",
                    RULES_TIMEOUT,
                )?);
            }
        }
        Ok(())
    }

    /// After the connectivity check (`connections` answered): that the variant's mechanism
    /// served them. gannet: `gannet_nodeport` is on node A's `eth0` (with `gannet-xdp` also
    /// `gannet_nodeport_xdp`) and counted at least that many new flows; gannet-nft: node A's
    /// gannetd reports the nftables data plane and no program, its table holds the measured node
    /// port with the server as its backend, and node A holds no table but gannet's (nothing else
    /// could have translated); kube-proxy: gannetd's NodePort program is off on node A. Returns
    /// what it found, for the report.
    ///
    /// # Errors
    /// If it is not so.
    pub fn check_served_by_variant(
        &self,
        tools: &Tools,
        connections: u64,
        target: SocketAddrV4,
    ) -> anyhow::Result<String> {
        if self.variant.nft() {
            self.check_nft_table(target)
        } else if self.variant.program() {
            // From the pins: `gannetd status` reads every Maglev table, minutes for 10 000.
            let state = packet::state(self, tools)?;
            let new_flows = state.counters.get("new_flows").copied().unwrap_or(0);
            ensure!(
                state.interfaces.iter().any(|i| i == NODE_IF) && new_flows >= connections,
                "gannet_nodeport did not serve the check: interfaces {:?}, new flows {new_flows} \
                 (expected at least {connections})",
                state.interfaces
            );
            let on_xdp = state.xdp_interfaces.iter().any(|i| i == NODE_IF);
            ensure!(
                on_xdp == self.variant.xdp(),
                "{}: gannet_nodeport_xdp on {:?}",
                self.variant,
                state.xdp_interfaces
            );
            let xdp = if on_xdp {
                format!(
                    ", gannet_nodeport_xdp (native) on {}",
                    state.xdp_interfaces.join(", ")
                )
            } else {
                String::new()
            };
            Ok(format!(
                "gannet_nodeport on {}{xdp}: {new_flows} new flows counted",
                state.interfaces.join(", ")
            ))
        } else {
            let status = self.agents[0].status()?;
            let nodeport = &status["nodeport"];
            ensure!(
                nodeport["enabled"] != Value::Bool(true),
                "gannetd's NodePort program is on in the {} cluster: {nodeport}",
                self.variant
            );
            Ok("gannetd's NodePort program off; kube-proxy's rules served".to_owned())
        }
    }

    /// gannet-nft's part of [`check_served_by_variant`](Self::check_served_by_variant).
    fn check_nft_table(&self, target: SocketAddrV4) -> anyhow::Result<String> {
        let status = self.agents[0].status()?;
        ensure!(
            status["dataplane"] == "nftables" && status.get("nodeport").is_none(),
            "gannet-nft's node A should run the nftables data plane and no program: {}",
            status_head(&status)
        );
        let frontend = format!("{target}/TCP");
        let services = status["services"].as_array().map_or(&[][..], Vec::as_slice);
        let entry = services
            .iter()
            .find(|s| s["frontend"] == frontend.as_str())
            .with_context(|| {
                format!(
                    "gannet-nft's table lacks {frontend} ({} frontends)",
                    services.len()
                )
            })?;
        let backend = self.backend().to_string();
        ensure!(
            entry["external"] == true
                && entry["backends"]
                    .as_array()
                    .is_some_and(|b| b == &[Value::from(backend.as_str())]),
            "gannet-nft's table: {frontend} should be external with backend {backend}: {entry}"
        );
        let tables = crate::control::output_in(self.node_netns(), "nft", &["list", "tables"])?;
        let tables: Vec<&str> = tables.lines().map(str::trim).collect();
        check_nft_tables(&tables)?;
        Ok(format!(
            "gannetd --dataplane nftables, no program; {frontend} → {backend} in its table \
             ({} frontends); node A's tables: {}",
            services.len(),
            tables.join(", ")
        ))
    }

    /// gannet's NodePort counters and conntrack usage on node A, for the report; `None` for
    /// kube-proxy and gannet-nft (no program).
    ///
    /// # Errors
    /// If `gannet-testrun --state-only` fails.
    pub fn counters(&self, tools: &Tools) -> anyhow::Result<Option<NodePortState>> {
        if !self.variant.program() {
            return Ok(None);
        }
        packet::state(self, tools).map(Some)
    }
}

/// The start of a `gannetd status` for an error message (its service list may be long).
fn status_head(status: &Value) -> String {
    let mut text = status.to_string();
    if text.len() > 500 {
        let mut end = 500;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Checks `nft list tables` of gannet-nft's node A: gannet's services table, and no table but
/// gannet's (its overlay's masquerade table may be there too).
fn check_nft_tables(tables: &[&str]) -> anyhow::Result<()> {
    ensure!(
        tables.contains(&NFT_NODE_TABLES[1]) && tables.iter().all(|t| NFT_NODE_TABLES.contains(t)),
        "gannet-nft's node A should hold gannet's tables only ({NFT_NODE_TABLES:?}), it holds \
         {tables:?}"
    );
    Ok(())
}

/// Writes `text` to `dir/name` atomically (a temporary file gannetd ignores, renamed over the
/// old one) and returns the path.
fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gannets_node_a_serves_node_ports() {
        let ip = Ipv4Addr::new(10, 99, 0, 11);
        let a = node_args(Variant::GannetTc, 0, "node-0", ip);
        assert!(
            a.contains(&"--nodeport-interfaces=eth0".to_owned()),
            "{a:?}"
        );
        assert!(!a.iter().any(|f| f == "--nodeport-acceleration"), "{a:?}");
        let x = node_args(Variant::GannetXdp, 0, "node-0", ip);
        assert!(
            x.windows(2)
                .any(|w| w == ["--nodeport-acceleration", "xdp"]),
            "{x:?}"
        );
        assert!(
            x.contains(&"--nodeport-interfaces=eth0".to_owned()),
            "{x:?}"
        );
        assert!(
            !node_args(Variant::GannetXdp, 1, "n", ip)
                .iter()
                .any(|f| f == "--nodeport-acceleration"),
            "node B serves no node ports"
        );
        assert!(a.contains(&"--node-ip=10.99.0.11".to_owned()), "{a:?}");
        for (variant, index) in [
            (Variant::GannetTc, 1),
            (Variant::GannetXdp, 1),
            (Variant::GannetNft, 1),
            (Variant::KubeProxyNft, 0),
            (Variant::KubeProxyIptables, 0),
        ] {
            let args = node_args(variant, index, "n", ip);
            assert!(
                args.contains(&"--nodeport-interfaces=".to_owned()),
                "{variant} node {index}: {args:?}"
            );
            // gannet's masquerade table stays: kube-proxy's replies to the overlay address
            // are tracked (see `agent/src/masquerade.rs`).
            assert!(
                !args.iter().any(|f| f.starts_with("--masquerade")),
                "{variant} node {index}: {args:?}"
            );
        }
        assert!(!a.iter().any(|f| f.starts_with("--masquerade")), "{a:?}");
        for (variant, index) in [
            (Variant::GannetTc, 0),
            (Variant::GannetXdp, 0),
            (Variant::GannetNft, 1),
            (Variant::KubeProxyNft, 0),
            (Variant::KubeProxyIptables, 1),
        ] {
            let args = node_args(variant, index, "n", ip);
            assert!(
                !args.iter().any(|f| f.starts_with("--dataplane")),
                "{variant} node {index} runs the eBPF data plane: {args:?}"
            );
        }
    }

    #[test]
    fn gannet_nfts_node_a_runs_the_nftables_data_plane() {
        let ip = Ipv4Addr::new(10, 99, 0, 11);
        let args = node_args(Variant::GannetNft, 0, "node-0", ip);
        assert_eq!(
            args,
            [
                "--dataplane",
                "nftables",
                "--node-name",
                "node-0",
                "--node-ip=10.99.0.11",
                "--overlay",
                "vxlan",
                "--cluster-cidr",
                CLUSTER_CIDR,
            ],
            "the same node and overlay as the other variants, no NodePort program flags \
             (--nodeport-interfaces does not apply to the nftables data plane), the default \
             masquerade"
        );
        // What `Agent::start_nft` requires of the flags.
        assert!(
            args.windows(2).any(|w| w == ["--dataplane", "nftables"]),
            "{args:?}"
        );
    }

    #[test]
    fn gannet_nfts_node_holds_only_gannets_tables() {
        check_nft_tables(&["table inet gannet", "table inet gannet-services"]).expect("both");
        check_nft_tables(&["table inet gannet-services"]).expect("no overlay masquerade table");
        let err = check_nft_tables(&["table inet gannet"]).expect_err("no services table");
        assert!(err.to_string().contains("should hold"), "{err:#}");
        let err = check_nft_tables(&[
            "table inet gannet",
            "table inet gannet-services",
            "table ip kube-proxy",
        ])
        .expect_err("kube-proxy's table would translate too");
        assert!(err.to_string().contains("kube-proxy"), "{err:#}");
        assert!(
            check_nft_tables(&["table inet gannet-services", "table ip nat"]).is_err(),
            "iptables-nft's nat table would translate too"
        );
    }

    #[test]
    fn node_manifests_carry_the_lease_and_the_vtep_mac() {
        let yaml = node_yaml(
            "node-1",
            Ipv4Addr::new(10, 99, 0, 12),
            POD_CIDRS[1],
            Some("0e:00:00:00:00:02"),
        );
        assert!(yaml.contains("kind: Node\n"), "{yaml}");
        assert!(yaml.contains("podCIDRs: [10.244.251.0/24]\n"), "{yaml}");
        assert!(
            yaml.contains("gannet.io/vtep-mac: \"0e:00:00:00:00:02\""),
            "{yaml}"
        );
        assert!(yaml.contains("address: 10.99.0.12\n"), "{yaml}");
    }

    #[test]
    fn pod_cidrs_are_clear_of_the_absent_endpoints() {
        // The largest run's absent endpoints end below the nodes' pod CIDRs.
        let backends = [Ipv4Addr::new(10, 244, 251, 2)];
        let services = bench_services(crate::services::MAX_SERVICES, &backends).expect("services");
        let highest = services
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|ip| **ip != backends[0])
            .max()
            .copied()
            .expect("endpoints");
        assert!(highest < Ipv4Addr::new(10, 244, 250, 0), "{highest}");
    }
}
