//! Conversions between the desired state (frontends, backends, service ports) and the map keys
//! and values the programs read.

use std::net::IpAddr;

use gannet_common::{
    BackendValue, PROTO_TCP, PROTO_UDP, SVC_F_AFFINITY, SVC_F_EXTERNAL, SVC_F_LOCAL,
    SVC_F_SOURCE_RANGES, ServiceKey, ServiceValue, v4_mapped,
};
use gannet_k8s::{Backend, Frontend, Protocol, ServicePort};
use ipnet::IpNet;

pub(super) fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub(super) fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[must_use]
pub fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey {
        addr: addr16(frontend.ip),
        port: frontend.port.to_be(),
        proto: match frontend.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        },
        pad: 0,
    }
}

pub(super) fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    let protocol = match key.proto {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    Some(Frontend {
        ip: ip_of(key.addr),
        port: u16::from_be(key.port),
        protocol,
    })
}

/// A backend's map value, with epoch 0 (what an allocation sets is [`super::Reconciler`]'s).
#[must_use]
pub fn backend_value(backend: &Backend) -> BackendValue {
    BackendValue {
        addr: addr16(backend.ip),
        port: backend.port.to_be(),
        epoch: 0,
    }
}

pub(super) fn backend_of(value: &BackendValue) -> Backend {
    Backend {
        ip: ip_of(value.addr),
        port: u16::from_be(value.port),
    }
}

pub(super) fn service_value(
    id: u32,
    generation: u8,
    count: usize,
    affinity: Option<u32>,
    external: u8,
) -> ServiceValue {
    ServiceValue {
        id,
        count: u16::try_from(count).expect("count checked against MAX_BACKENDS_PER_SERVICE"),
        generation,
        flags: external
            | if affinity.is_some() {
                SVC_F_AFFINITY
            } else {
                0
            },
        affinity_timeout: affinity.unwrap_or(0),
        pad: 0,
    }
}

/// The `SVC_F_EXTERNAL`/`SVC_F_LOCAL` flags of a frontend: external when its `ServicePort`
/// says how it is reached from outside (the agent's expansion sets `external` on NodePort,
/// external IP and LoadBalancer IP frontends only).
pub(super) fn external_flags(spec: &ServicePort) -> u8 {
    let Some(external) = &spec.external else {
        return 0;
    };
    let mut flags = SVC_F_EXTERNAL;
    if external.local_only {
        flags |= SVC_F_LOCAL;
    }
    if !external.source_ranges.is_empty() {
        flags |= SVC_F_SOURCE_RANGES;
    }
    flags
}

/// The source ranges a frontend's packets are checked against.
pub(super) fn source_ranges(spec: &ServicePort) -> Vec<IpNet> {
    spec.external
        .as_ref()
        .map(|e| e.source_ranges.clone())
        .unwrap_or_default()
}

/// The backends the NodePort program balances an external frontend's packets to: all of them,
/// or with `externalTrafficPolicy: Local` those on `node` (ready ones; when none is ready, the
/// serving-and-terminating ones), as kube-proxy does.
#[must_use]
pub fn packet_backends(spec: &ServicePort, node: &str) -> Vec<Backend> {
    let Some(external) = &spec.external else {
        return Vec::new();
    };
    if !external.local_only {
        return spec.backends.clone();
    }
    let local = |b: &&Backend| spec.backend_nodes.get(&b.ip).map(String::as_str) == Some(node);
    let ready: Vec<Backend> = spec.backends.iter().filter(local).copied().collect();
    if !ready.is_empty() {
        return ready;
    }
    spec.terminating.iter().filter(local).copied().collect()
}

/// `namespace/name` of the service a frontend belongs to.
pub(super) fn service_name(spec: &ServicePort) -> String {
    format!("{}/{}", spec.namespace, spec.name)
}

pub(super) fn index(i: usize) -> u32 {
    u32::try_from(i).expect("slot index checked against MAX_BACKENDS_PER_SERVICE")
}
