//! gannet's view of services: what the socket load balancer needs and nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

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

/// A ready endpoint that a frontend's connections are sent to.
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
    /// Ready endpoints only, sorted and deduplicated. Empty when no `EndpointSlice` matches: the
    /// data plane then refuses connections instead of letting them time out.
    pub backends: Vec<Backend>,
    /// `Some(seconds)` when the service has `sessionAffinity: ClientIP` (Kubernetes' default is
    /// 10800).
    pub session_affinity_timeout: Option<u32>,
}

/// Every frontend gannet should serve, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<Frontend, ServicePort>,
}
