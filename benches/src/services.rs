//! The services a benchmark programs, and the Kubernetes manifests gannetd reads them from.
//!
//! Every service is a `ClusterIP` service (or, for the `nodeport` scenario, a `NodePort` service:
//! [`with_node_ports`]) with one TCP port and three endpoints. Only the measured
//! service, the last one, points at running pods; the others point at addresses of pods that do not
//! exist and are never connected to. The same list feeds gannetd (as YAML) and the kube-proxy rule
//! generators, so all of them program exactly the same services.

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context as _, ensure};

/// Namespace of every benchmark service.
pub const NAMESPACE: &str = "bench";
/// Name of the service port.
pub const PORT_NAME: &str = "http";
/// The services' port.
pub const SERVICE_PORT: u16 = 80;
/// The endpoints' (pods') port, where the peer servers listen.
pub const TARGET_PORT: u16 = 8080;
/// Endpoints per service.
pub const ENDPOINTS_PER_SERVICE: usize = 3;
/// The pod network (kube-proxy's `--cluster-cidr`); the benchmark's pods are in 10.244.0.0/24.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The service network the cluster IPs come from.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The first cluster IP handed out (service `i` gets this plus `i`).
const FIRST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Where the addresses of the pods that do not exist start (service `i`, endpoint `j` gets this
/// plus `3i + j`): above the benchmark's own pods in 10.244.0.0/24.
const FIRST_ABSENT_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 0);
/// Largest number of services the address plan above fits (the absent pods stay in the /16).
pub const MAX_SERVICES: usize = 20_000;
/// The node port of service 0 (service `i` gets this plus `i`): Kubernetes' default range
/// (30000-32767) holds only 2 768, so the benchmark's cluster has a wider one, as a cluster with
/// 10 000 `NodePort` services must (`--service-node-port-range`).
pub const FIRST_NODE_PORT: u16 = 30_000;
/// The manifest file gannetd reads.
pub const MANIFEST_FILE: &str = "services.yaml";

/// The protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as nftables, iptables and kube-proxy's chain names write it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One `ClusterIP` service with one port (TCP unless said otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Port name.
    pub port_name: String,
    /// The cluster IP.
    pub cluster_ip: Ipv4Addr,
    /// The service port's protocol.
    pub protocol: Protocol,
    /// The service port.
    pub port: u16,
    /// The endpoints' addresses (all ready), in order.
    pub endpoints: Vec<Ipv4Addr>,
    /// The endpoints' port.
    pub target_port: u16,
    /// The node port (`type: NodePort`, `externalTrafficPolicy: Cluster`), if any.
    pub node_port: Option<u16>,
}

impl Service {
    /// `namespace/name:port`, as Kubernetes prints a service port name.
    #[must_use]
    pub fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

fn offset(base: Ipv4Addr, by: usize) -> Ipv4Addr {
    let by = u32::try_from(by).expect("address offsets are small");
    Ipv4Addr::from(u32::from(base) + by)
}

/// `count` services; the last one (the measured one) has `measured_endpoints` as endpoints.
///
/// # Errors
/// If `count` is 0 or above [`MAX_SERVICES`], or `measured_endpoints` is empty.
pub fn bench_services(
    count: usize,
    measured_endpoints: &[Ipv4Addr],
) -> anyhow::Result<Vec<Service>> {
    ensure!(
        (1..=MAX_SERVICES).contains(&count),
        "the number of services must be between 1 and {MAX_SERVICES}, not {count}"
    );
    ensure!(
        !measured_endpoints.is_empty(),
        "the measured service needs endpoints"
    );
    Ok((0..count)
        .map(|i| {
            let endpoints = if i + 1 == count {
                measured_endpoints.to_vec()
            } else {
                (0..ENDPOINTS_PER_SERVICE)
                    .map(|j| offset(FIRST_ABSENT_POD, i * ENDPOINTS_PER_SERVICE + j))
                    .collect()
            };
            Service {
                namespace: NAMESPACE.to_owned(),
                name: format!("svc-{i:05}"),
                port_name: PORT_NAME.to_owned(),
                cluster_ip: offset(FIRST_CLUSTER_IP, i),
                protocol: Protocol::Tcp,
                port: SERVICE_PORT,
                endpoints,
                target_port: TARGET_PORT,
                node_port: None,
            }
        })
        .collect())
}

/// Makes every service a `NodePort` service: service `i` gets node port
/// [`FIRST_NODE_PORT`]` + i`.
///
/// # Errors
/// If a port would pass 65535.
pub fn with_node_ports(services: &mut [Service]) -> anyhow::Result<()> {
    for (i, svc) in services.iter_mut().enumerate() {
        let port = u16::try_from(usize::from(FIRST_NODE_PORT) + i)
            .ok()
            .with_context(|| {
                format!("service {i} has no node port left above {FIRST_NODE_PORT}")
            })?;
        svc.node_port = Some(port);
    }
    Ok(())
}

/// The services as Kubernetes YAML: per service a `v1` `Service` and a `discovery.k8s.io/v1`
/// `EndpointSlice`, as the API server would hold them.
#[must_use]
pub fn manifests_yaml(services: &[Service]) -> String {
    let mut out = String::with_capacity(services.len() * 700);
    out.push_str("# Generated by gannet-bench: one Service and one EndpointSlice per service.\n");
    for svc in services {
        out.push_str(&service_yaml(svc));
        out.push_str(&slice_yaml(svc));
    }
    out
}

/// The `v1` `Service` of `svc` as a YAML document (starting with `---`).
#[must_use]
pub fn service_yaml(svc: &Service) -> String {
    let Service {
        namespace,
        name,
        port_name,
        cluster_ip,
        port,
        target_port,
        ..
    } = svc;
    let (kind, node_port) = match svc.node_port {
        Some(node_port) => ("NodePort", format!("\n      nodePort: {node_port}")),
        None => ("ClusterIP", String::new()),
    };
    format!(
        "---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  type: {kind}
  clusterIP: {cluster_ip}
  clusterIPs: [\"{cluster_ip}\"]
  ports:
    - name: {port_name}
      protocol: {protocol}
      port: {port}
      targetPort: {target_port}{node_port}
",
        protocol = svc.protocol.name().to_uppercase()
    )
}

/// The name of the one `EndpointSlice` of `svc`.
#[must_use]
pub fn slice_name(svc: &Service) -> String {
    format!("{}-bench", svc.name)
}

/// The `discovery.k8s.io/v1` `EndpointSlice` of `svc` (its endpoints, all ready) as a YAML
/// document (starting with `---`).
#[must_use]
pub fn slice_yaml(svc: &Service) -> String {
    let Service {
        namespace,
        name,
        port_name,
        target_port,
        ..
    } = svc;
    let slice = slice_name(svc);
    let mut out = format!(
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {slice}
  namespace: {namespace}
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
  - name: {port_name}
    protocol: {protocol}
    port: {target_port}
endpoints:
",
        protocol = svc.protocol.name().to_uppercase()
    );
    for address in &svc.endpoints {
        let _ = writeln!(
            out,
            "  - addresses: [\"{address}\"]\n    conditions: {{ready: true}}"
        );
    }
    out
}

/// Writes the manifests of `services` to `dir/services.yaml` atomically (a temporary file that
/// gannetd ignores, renamed over the old one), so gannetd never reads half a file.
///
/// # Errors
/// If the file cannot be written or renamed.
pub fn write_manifests(dir: &Path, services: &[Service]) -> anyhow::Result<()> {
    write_manifest_file(dir, MANIFEST_FILE, &manifests_yaml(services))
}

/// Writes `yaml` to `dir/name` atomically: into a hidden temporary file (which gannetd ignores),
/// renamed over `name`.
///
/// # Errors
/// If the file cannot be written or renamed.
pub fn write_manifest_file(dir: &Path, name: &str, yaml: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
    rename_into_place(&tmp, &dir.join(name))
}

/// Renames `tmp` to `path`.
///
/// # Errors
/// If the rename fails.
pub fn rename_into_place(tmp: &Path, path: &Path) -> anyhow::Result<()> {
    fs::rename(tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<Ipv4Addr> {
        vec![
            Ipv4Addr::new(10, 244, 0, 11),
            Ipv4Addr::new(10, 244, 0, 12),
            Ipv4Addr::new(10, 244, 0, 13),
        ]
    }

    #[test]
    fn the_last_service_is_the_measured_one() {
        let services = bench_services(3, &backends()).expect("services");
        assert_eq!(services.len(), 3);
        assert_eq!(services[2].endpoints, backends());
        assert_eq!(services[2].cluster_ip, Ipv4Addr::new(10, 96, 0, 12));
        assert_eq!(
            services[0].endpoints,
            vec![
                Ipv4Addr::new(10, 244, 1, 0),
                Ipv4Addr::new(10, 244, 1, 1),
                Ipv4Addr::new(10, 244, 1, 2)
            ]
        );
        assert_eq!(services[1].endpoints[0], Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(services[0].port_name_string(), "bench/svc-00000:http");
    }

    #[test]
    fn addresses_stay_in_their_networks_at_the_largest_size() {
        let services = bench_services(MAX_SERVICES, &backends()).expect("services");
        let last_absent = services[MAX_SERVICES - 2].endpoints[2];
        assert_eq!(
            last_absent.octets()[..2],
            [10, 244],
            "{last_absent} left 10.244/16"
        );
        let last_vip = services[MAX_SERVICES - 1].cluster_ip;
        assert!(
            u32::from(last_vip) < u32::from(Ipv4Addr::new(10, 112, 0, 0)),
            "{last_vip} left 10.96.0.0/12"
        );
        assert!(bench_services(0, &backends()).is_err());
        assert!(bench_services(MAX_SERVICES + 1, &backends()).is_err());
    }

    #[test]
    fn manifests_hold_a_service_and_a_slice_per_service() {
        let services = bench_services(2, &backends()).expect("services");
        let yaml = manifests_yaml(&services);
        assert_eq!(yaml.matches("kind: Service\n").count(), 2, "{yaml}");
        assert_eq!(yaml.matches("kind: EndpointSlice\n").count(), 2, "{yaml}");
        assert!(yaml.contains("clusterIP: 10.96.0.11\n"), "{yaml}");
        assert!(
            yaml.contains("kubernetes.io/service-name: svc-00001\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("  - addresses: [\"10.244.0.13\"]\n    conditions: {ready: true}\n"),
            "{yaml}"
        );
        assert_eq!(yaml.matches("conditions: {ready: true}").count(), 6);
        assert!(yaml.contains("type: ClusterIP\n"), "{yaml}");
        assert!(!yaml.contains("nodePort"), "{yaml}");
        assert!(yaml.contains("  name: svc-00001-bench\n"), "{yaml}");
        // The parts are the whole.
        assert_eq!(
            yaml.split_once('\n').map(|(_, rest)| rest),
            Some(
                [&services[0], &services[1]]
                    .iter()
                    .map(|s| service_yaml(s) + &slice_yaml(s))
                    .collect::<String>()
                    .as_str()
            )
        );
    }

    #[test]
    fn node_port_services_get_consecutive_ports() {
        let mut services = bench_services(3, &backends()).expect("services");
        with_node_ports(&mut services).expect("ports");
        assert_eq!(services[2].node_port, Some(30_002));
        let yaml = manifests_yaml(&services);
        assert_eq!(yaml.matches("type: NodePort\n").count(), 3, "{yaml}");
        assert!(
            yaml.contains("      port: 80\n      targetPort: 8080\n      nodePort: 30002\n---"),
            "{yaml}"
        );
        let mut all = bench_services(MAX_SERVICES, &backends()).expect("services");
        with_node_ports(&mut all).expect("20 000 ports fit");
        assert_eq!(all[MAX_SERVICES - 1].node_port, Some(49_999));
    }
}
