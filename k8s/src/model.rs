//! gannet's view of services: what the socket and packet load balancers need and nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Transport protocol of a service port. Kubernetes also knows SCTP; gannet does not balance it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (`TCP`, `UDP`; case-sensitive, as the API server is).
    pub(crate) fn from_k8s(value: &str) -> Option<Self> {
        match value {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// A virtual address that clients connect to: one cluster IP, one service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    /// `10.96.0.10:80/TCP`, `[fd00::1]:53/UDP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.ip, self.port),
            self.protocol
        )
    }
}

/// An endpoint that a frontend's connections are sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for Backend {
    /// `10.244.1.5:8080`, `[fd00:10:244::5]:8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::new(self.ip, self.port).fmt(f)
    }
}

/// What a frontend belongs to and where its connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The service port's name; `""` when the service has a single unnamed port.
    pub port_name: String,
    /// The ready endpoints, sorted and deduplicated; when none of the frontend's endpoints is
    /// ready, its serving-and-terminating ones instead (the same as [`terminating`]), as
    /// kube-proxy falls back (KEP-1669), so that a rolling update never leaves the frontend
    /// without backends while old pods still serve. Empty when neither exists or no
    /// `EndpointSlice` matches: the data plane then refuses connections instead of letting them
    /// time out.
    ///
    /// [`terminating`]: ServicePort::terminating
    pub backends: Vec<Backend>,
    /// The serving-and-terminating endpoints (`conditions.serving` true or unset, `terminating`
    /// true, `ready` not true), sorted and deduplicated; never one that is also in `backends` as
    /// a ready endpoint. For `externalTrafficPolicy: Local`, which falls back per node: the
    /// node's ready endpoints, else its serving-and-terminating ones.
    pub terminating: Vec<Backend>,
    /// `endpoints[].nodeName` of every address in `backends` and `terminating` whose endpoint
    /// names its node (the first slice that names one wins).
    pub backend_nodes: BTreeMap<IpAddr, String>,
    /// `Some(seconds)` when the service has `sessionAffinity: ClientIP` (Kubernetes' default is
    /// 10800).
    pub session_affinity_timeout: Option<u32>,
    /// How the port is reached from outside the cluster; `None` for a `ClusterIP` service port
    /// without external or load-balancer IPs of the frontend's family.
    pub external: Option<External>,
}

/// How a frontend's service port is reached from outside the cluster, for the frontend's address
/// family: on every node's `NodePort`, on external IPs and on load-balancer IPs, each at the
/// service port (`Frontend::port`) and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct External {
    /// `spec.ports[].nodePort` (types `NodePort` and `LoadBalancer`; a `LoadBalancer` with
    /// `allocateLoadBalancerNodePorts: false` may have none). The same for both families of a
    /// dual-stack service.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` of the frontend's family, sorted and deduplicated.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of the frontend's family, sorted and deduplicated; type
    /// `LoadBalancer` only. Entries with only a `hostname` are left out, and so are entries with
    /// `ipMode: Proxy`, as kube-proxy leaves them out: such a load balancer forwards to the
    /// nodes itself, and a client in the cluster must reach it rather than be short-cut to a
    /// backend.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`: external traffic goes to this node's endpoints only,
    /// keeping the client's address. Only ever true for types `NodePort` and `LoadBalancer`
    /// (Kubernetes accepts the field on a `ClusterIP` service with external IPs but gives it
    /// `Cluster` semantics there, and so does gannet).
    pub local_only: bool,
    /// `spec.healthCheckNodePort` (type `LoadBalancer` with `externalTrafficPolicy: Local`; the
    /// API server always allocates one, a manifest may leave it out).
    pub health_check_node_port: Option<u16>,
    /// `spec.loadBalancerSourceRanges`, or when that is empty the comma-separated annotation
    /// `service.beta.kubernetes.io/load-balancer-source-ranges`, of the frontend's family,
    /// truncated to their prefix, sorted and deduplicated; type `LoadBalancer` only. They
    /// restrict the clients of the `load_balancer_ips` (kube-proxy applies them there, not to
    /// the node port or external IPs). Empty: every client. As in kube-proxy, a family without
    /// ranges of its own is open even when the other family has some.
    pub source_ranges: Vec<IpNet>,
}

/// Every frontend gannet should serve, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<Frontend, ServicePort>,
}
