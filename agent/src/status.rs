//! `gannetd status`: what the data plane holds, read from the pinned maps (so it works whether
//! gannetd is running or not).

use std::{net::IpAddr, path::Path};

use aya::maps::{HashMap, Map, MapData, PerCpuHashMap};
use gannet_common::{
    BackendValue, EndpointKey, EndpointStats, EndpointValue, ServiceKey, ServiceValue, SlotKey,
    map_names,
};
use serde::Serialize;

use crate::datapath::DataPathError;

#[derive(Debug, Serialize)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    pub endpoints: Vec<EndpointStatus>,
    /// The overlay and the other nodes it programmed (when gannetd runs one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<crate::overlay::OverlayStatus>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub frontend: String,
    pub backends: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_seconds: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub host_ifindex: u32,
    pub ips: Vec<IpAddr>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

fn open(bpf_root: &Path, name: &'static str) -> Result<Map, DataPathError> {
    let path = bpf_root.join("maps").join(name);
    let data = MapData::from_pin(&path).map_err(|source| DataPathError::Map { name, source })?;
    Map::from_map_data(data).map_err(|source| DataPathError::Map { name, source })
}

fn ip(addr: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

fn addr_port(addr: [u8; 16], port_be: u16) -> String {
    std::net::SocketAddr::new(ip(addr), u16::from_be(port_be)).to_string()
}

/// Reads the pinned maps under `bpf_root`, and the overlay's report in `state_dir`.
pub fn read(bpf_root: &Path, state_dir: &Path) -> Result<Status, DataPathError> {
    let map_err = |name| move |source| DataPathError::Map { name, source };
    let services: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(open(bpf_root, map_names::SERVICES)?)
            .map_err(map_err(map_names::SERVICES))?;
    let slots: HashMap<_, SlotKey, u32> =
        HashMap::try_from(open(bpf_root, map_names::SLOTS)?).map_err(map_err(map_names::SLOTS))?;
    let backends: HashMap<_, u32, BackendValue> =
        HashMap::try_from(open(bpf_root, map_names::BACKENDS)?)
            .map_err(map_err(map_names::BACKENDS))?;

    let mut out = Vec::new();
    for (key, value) in services.iter().filter_map(Result::ok) {
        let proto = match key.proto {
            gannet_common::PROTO_TCP => "TCP",
            gannet_common::PROTO_UDP => "UDP",
            _ => "?",
        };
        let backends = (0..u32::from(value.count))
            .filter_map(|i| {
                slots
                    .get(&SlotKey::new(value.id, value.generation, i), 0)
                    .ok()
            })
            .filter_map(|id| backends.get(&id, 0).ok())
            .map(|b| addr_port(b.addr, b.port))
            .collect();
        out.push(ServiceStatus {
            frontend: format!("{}/{proto}", addr_port(key.addr, key.port)),
            backends,
            affinity_timeout_seconds: (value.flags & gannet_common::SVC_F_AFFINITY != 0)
                .then_some(value.affinity_timeout),
        });
    }
    out.sort_by(|a, b| a.frontend.cmp(&b.frontend));

    let mut endpoints = Vec::new();
    if bpf_root.join("maps").join(map_names::ENDPOINTS).exists() {
        let eps: HashMap<_, EndpointKey, EndpointValue> =
            HashMap::try_from(open(bpf_root, map_names::ENDPOINTS)?)
                .map_err(map_err(map_names::ENDPOINTS))?;
        let stats: PerCpuHashMap<_, u32, EndpointStats> =
            PerCpuHashMap::try_from(open(bpf_root, map_names::ENDPOINT_STATS)?)
                .map_err(map_err(map_names::ENDPOINT_STATS))?;
        let mut by_ifindex: std::collections::BTreeMap<u32, Vec<IpAddr>> = Default::default();
        for (k, v) in eps.iter().filter_map(Result::ok) {
            by_ifindex.entry(v.ifindex).or_default().push(ip(k.addr));
        }
        for (ifindex, mut ips) in by_ifindex {
            ips.sort();
            let mut e = EndpointStatus {
                host_ifindex: ifindex,
                ips,
                rx_packets: 0,
                rx_bytes: 0,
                tx_packets: 0,
                tx_bytes: 0,
            };
            if let Ok(per_cpu) = stats.get(&ifindex, 0) {
                for s in per_cpu.iter() {
                    e.rx_packets += s.rx_packets;
                    e.rx_bytes += s.rx_bytes;
                    e.tx_packets += s.tx_packets;
                    e.tx_bytes += s.tx_bytes;
                }
            }
            endpoints.push(e);
        }
    }
    Ok(Status {
        services: out,
        endpoints,
        overlay: crate::overlay::read_status(state_dir),
    })
}
