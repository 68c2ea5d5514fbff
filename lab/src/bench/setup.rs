//! The workloads of `gannet-lab bench`, set up inside a freshly booted two-node lab: what each
//! variant runs on the guests, the pods and services, and the traffic servers.
//!
//! Every variant but `direct` gets the same three pods: `client` and `near` on node1, `far` on
//! node2, each running the traffic peer (port 8080) and an iperf3 server (5201), and three
//! services: `near` (10.96.0.60) and `far` (10.96.0.61) in front of those pods, `self`
//! (10.96.0.62) in front of the client itself (hairpin). `direct` runs the servers in node2's root
//! network namespace and the clients in node1's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gannet_bench::kubeproxy::nft;
use gannet_bench::overlay::cluster::{
    FLANNEL_DEVICE, FLANNEL_MTU, FLANNEL_PORT, FLANNEL_VNI, flannel_cni_config,
    flannel_masquerade_rules, flannel_pod_cidr, flannel_vtep_mac,
};
use gannet_bench::services::{Protocol, Service};

use super::{Path, Variant};
use crate::lab::NodeState;

/// The peer's port in the server pods.
pub(crate) const PEER_PORT: u16 = 8080;
/// The service port in front of the peer.
pub(crate) const PEER_SERVICE_PORT: u16 = 80;
/// iperf3's port, in the pods and on the services (TCP for its control connection, UDP data).
pub(crate) const IPERF_PORT: u16 = 5201;
/// The service network of the lab's gannet-control (its default).
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// How long a step inside a guest may take (TCG is slow).
const STEP: Duration = Duration::from_secs(120);
/// How long every path gets to answer after the setup (gannet programs services
/// asynchronously).
const REACHABLE: Duration = Duration::from_secs(180);

/// The services: name, cluster IP, the pod behind it.
const SERVICES: [(&str, Ipv4Addr, &str); 3] = [
    ("near", Ipv4Addr::new(10, 96, 0, 60), "near"),
    ("far", Ipv4Addr::new(10, 96, 0, 61), "far"),
    ("self", Ipv4Addr::new(10, 96, 0, 62), "client"),
];
/// The pods: name, node index.
const PODS: [(&str, usize); 3] = [("client", 0), ("near", 0), ("far", 1)];

/// Where the clients of a set-up lab run and what each path connects to.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// The network namespace of node1 the clients run in (`None`: the root namespace).
    pub(crate) client_netns: Option<String>,
    /// Per path: the address and the peer's and iperf3's ports there.
    pub(crate) targets: BTreeMap<Path, Target>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) ip: Ipv4Addr,
    pub(crate) peer_port: u16,
    pub(crate) iperf_port: u16,
}

/// The pods' and services' manifest gannet-control gets.
fn manifest() -> String {
    let mut out = String::new();
    for (name, ip, pod) in SERVICES {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  clusterIP: {ip}\n  selector: {{bench: {pod}}}\n  ports:\n\
             \x20 - {{name: peer, protocol: TCP, port: {PEER_SERVICE_PORT}, targetPort: {PEER_PORT}}}\n\
             \x20 - {{name: iperf, protocol: TCP, port: {IPERF_PORT}, targetPort: {IPERF_PORT}}}\n\
             \x20 - {{name: iperf-udp, protocol: UDP, port: {IPERF_PORT}, targetPort: {IPERF_PORT}}}\n"
        ));
    }
    for (pod, node) in PODS {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: default, labels: {{bench: {pod}}}}}\n\
             spec:\n  nodeName: node{}\n  containers: [{{name: peer, image: gannet-bench-peer}}]\n",
            node + 1
        ));
    }
    out
}

/// Sets up `variant` on the lab's guests (gannet, when the variant is gannet's, is running
/// already) and waits until every path answers.
pub(crate) fn workload(variant: Variant, nodes: &[NodeState]) -> anyhow::Result<Workload> {
    anyhow::ensure!(nodes.len() == 2, "the benchmark's lab has two nodes");
    let workload = match variant {
        Variant::Direct => direct(nodes)?,
        Variant::Flannel => {
            let (workload, ips) = pods(nodes, &flannel(nodes)?)?;
            kube_proxy(nodes, &ips)?;
            workload
        }
        Variant::Vxlan | Variant::HostGw | Variant::Ebpf => {
            nodes[0]
                .sh_with_input("gannetctl apply -f - >/dev/null", &manifest(), STEP)
                .context("applying the benchmark's pods and services")?;
            pods(nodes, "gannet-pod add")?.0
        }
    };
    for (path, target) in &workload.targets {
        wait_reachable(&nodes[0], workload.client_netns.as_deref(), *path, *target)?;
    }
    Ok(workload)
}

/// The servers in node2's root namespace; the clients in node1's.
fn direct(nodes: &[NodeState]) -> anyhow::Result<Workload> {
    start_servers(&nodes[1], None)?;
    Ok(Workload {
        client_netns: None,
        targets: BTreeMap::from([(
            Path::NodeToNode,
            Target {
                ip: nodes[1].ip,
                peer_port: PEER_PORT,
                iperf_port: IPERF_PORT,
            },
        )]),
    })
}

/// The pods (each made by `add NAME`, a command given the pod's name), their servers, and the
/// targets of every path; and the pods' addresses.
fn pods(
    nodes: &[NodeState],
    add: &str,
) -> anyhow::Result<(Workload, BTreeMap<&'static str, Ipv4Addr>)> {
    let mut ips = BTreeMap::new();
    for (pod, node) in PODS {
        let node = &nodes[node];
        node.sh(&format!("{add} {pod} >/dev/null"), STEP)
            .with_context(|| format!("{}: adding pod {pod}", node.name))?;
        let ip = node
            .sh(
                &format!(
                    "ip netns exec {pod} ip -4 -o addr show dev eth0 | awk '{{print $4}}' | cut -d/ -f1"
                ),
                STEP,
            )?
            .trim()
            .parse::<Ipv4Addr>()
            .with_context(|| format!("{}: the address of pod {pod}", node.name))?;
        start_servers(node, Some(pod))?;
        ips.insert(pod, ip);
    }
    let pod = |name: &str| Target {
        ip: ips[name],
        peer_port: PEER_PORT,
        iperf_port: IPERF_PORT,
    };
    let service = |ip: Ipv4Addr| Target {
        ip,
        peer_port: PEER_SERVICE_PORT,
        iperf_port: IPERF_PORT,
    };
    let workload = Workload {
        client_netns: Some("client".to_owned()),
        targets: BTreeMap::from([
            (Path::SameNodePod, pod("near")),
            (Path::SameNodeService, service(SERVICES[0].1)),
            (Path::CrossNodePod, pod("far")),
            (Path::CrossNodeService, service(SERVICES[1].1)),
            (Path::Hairpin, service(SERVICES[2].1)),
        ]),
    };
    Ok((workload, ips))
}

/// The peer and an iperf3 server in `netns` (or the root namespace), detached; waits until the
/// peer listens.
fn start_servers(node: &NodeState, netns: Option<&str>) -> anyhow::Result<()> {
    let exec = netns.map_or(String::new(), |ns| format!("ip netns exec {ns} "));
    let name = netns.unwrap_or("root");
    node.sh(
        &format!(
            "({exec}gannet-bench-peer server --listen 0.0.0.0:{PEER_PORT} >/run/peer-{name}.log 2>&1 </dev/null &) && \
             {exec}iperf3 --server --daemon --port {IPERF_PORT} --logfile /run/iperf3-{name}.log && \
             for _ in $(seq 100); do grep -qx '{ready}' /run/peer-{name}.log && exit 0; sleep 0.1; done; \
             cat /run/peer-{name}.log; exit 1",
            ready = gannet_bench::peer::READY_LINE
        ),
        STEP,
    )
    .with_context(|| format!("{}: starting the servers in {name}", node.name))?;
    Ok(())
}

/// Waits until a short crr run over `path` succeeds: the services are programmed, the routes
/// to the other node are in place.
fn wait_reachable(
    node: &NodeState,
    netns: Option<&str>,
    path: Path,
    target: Target,
) -> anyhow::Result<()> {
    let exec = netns.map_or(String::new(), |ns| format!("ip netns exec {ns} "));
    let check = format!(
        "{exec}gannet-bench-peer crr --addr {}:{} --max-operations 10 --seconds 5 --warmup 0",
        target.ip, target.peer_port
    );
    let started = Instant::now();
    loop {
        let argv = ["sh", "-c", &check].map(str::to_owned);
        let r = node.call(&argv, "", STEP)?;
        let ok = r.success()
            && serde_json::from_str::<gannet_bench::peer::Sample>(r.stdout.trim())
                .is_ok_and(|s| s.operations > 0 && s.error_count() == 0);
        if ok {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < REACHABLE,
            "{}: {} ({}:{}) does not answer within {REACHABLE:?} (`{check}`: {}):\n{}{}",
            node.name,
            path.describe(),
            target.ip,
            target.peer_port,
            crate::lab::describe(&r),
            r.stdout,
            r.stderr
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Flannel's vxlan backend as flanneld programs it (device, the other node's FDB entry,
/// neighbour and onlink route, its masquerade rules) and `br_netfilter` as kube-proxy requires;
/// pods go on `cni0` by the reference `bridge` + `host-local` plugins. Returns the command that
/// adds a pod.
fn flannel(nodes: &[NodeState]) -> anyhow::Result<String> {
    for (index, node) in nodes.iter().enumerate() {
        let own = flannel_pod_cidr(index);
        let gateway = own.split('/').next().unwrap_or(&own).to_owned();
        let mut script = format!(
            "set -e\n\
             modprobe br_netfilter\n\
             sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1\n\
             ip link add {FLANNEL_DEVICE} address {mac} mtu {FLANNEL_MTU} type vxlan id {FLANNEL_VNI} \
             local {ip} dev eth0 dstport {FLANNEL_PORT} nolearning\n\
             ip addr add {gateway}/32 dev {FLANNEL_DEVICE}\n\
             ip link set {FLANNEL_DEVICE} up\n",
            mac = flannel_vtep_mac(index),
            ip = node.ip,
        );
        for (other_index, other) in nodes.iter().enumerate().filter(|(i, _)| *i != index) {
            let cidr = flannel_pod_cidr(other_index);
            let other_gateway = cidr.split('/').next().unwrap_or(&cidr).to_owned();
            let mac = flannel_vtep_mac(other_index);
            script.push_str(&format!(
                "bridge fdb replace {mac} dev {FLANNEL_DEVICE} dst {} self permanent\n\
                 ip neigh replace {other_gateway} lladdr {mac} dev {FLANNEL_DEVICE} nud permanent\n\
                 ip route replace {cidr} via {other_gateway} dev {FLANNEL_DEVICE} onlink\n",
                other.ip
            ));
        }
        let config = flannel_cni_config(index, std::path::Path::new("/var/lib/cni/networks"));
        script.push_str(&format!(
            "mkdir -p /etc/cni/flannel\n\
             cat >/etc/cni/flannel/10-flannel.conf <<'EOF'\n{config}\nEOF\n\
             nft -f - <<'EOF'\n{masq}EOF\n",
            masq = flannel_masquerade_rules(index),
        ));
        node.sh(&script, STEP)
            .with_context(|| format!("{}: setting up the Flannel-style node", node.name))?;
    }
    // What a runtime and flannel's CNI plugin do for a pod: its loopback up, the bridge plugin
    // with the node's configuration.
    Ok("flannel_add() { ip netns add \"$1\" && ip -n \"$1\" link set lo up && CNI_COMMAND=ADD CNI_CONTAINERID=\"$1\" \
        CNI_NETNS=/run/netns/\"$1\" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
        /usr/lib/cni/bridge </etc/cni/flannel/10-flannel.conf; }; flannel_add"
        .to_owned())
}

/// kube-proxy's nftables rules for the three services (their pods at `ips`) on both nodes.
fn kube_proxy(nodes: &[NodeState], ips: &BTreeMap<&str, Ipv4Addr>) -> anyhow::Result<()> {
    let mut services = Vec::new();
    for (name, ip, pod) in SERVICES {
        for (port_name, protocol, port, target_port) in [
            ("peer", Protocol::Tcp, PEER_SERVICE_PORT, PEER_PORT),
            ("iperf", Protocol::Tcp, IPERF_PORT, IPERF_PORT),
            ("iperf-udp", Protocol::Udp, IPERF_PORT, IPERF_PORT),
        ] {
            services.push(Service {
                namespace: "default".to_owned(),
                name: name.to_owned(),
                port_name: port_name.to_owned(),
                cluster_ip: ip,
                protocol,
                port,
                endpoints: vec![ips[pod]],
                target_port,
                node_port: None,
            });
        }
    }
    for node in nodes {
        node.sh_with_input(
            "nft -f -",
            &nft::ruleset_in(&services, SERVICE_CIDR, node.ip),
            STEP,
        )
        .with_context(|| format!("{}: loading kube-proxy's rules", node.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_names_every_pod_and_service() {
        let m = manifest();
        for (name, ip, pod) in SERVICES {
            assert!(
                m.contains(&format!("name: {name}, namespace: default")),
                "{m}"
            );
            assert!(m.contains(&format!("clusterIP: {ip}")), "{m}");
            assert!(m.contains(&format!("selector: {{bench: {pod}}}")), "{m}");
        }
        assert!(m.contains("protocol: UDP, port: 5201"), "{m}");
        assert_eq!(m.matches("kind: Pod").count(), PODS.len());
    }
}
