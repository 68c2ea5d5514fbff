//! `gannetd status`: what the data plane holds, read from the pinned maps (so it works whether
//! gannetd is running or not).

use std::{net::IpAddr, path::Path};

use aya::maps::{
    Array, HashMap, HashOfMaps, IterableMap as _, Map, MapData, PerCpuArray, PerCpuHashMap,
};
use gannet_common::{
    BackendValue, CtEntry, CtKey, EndpointDrops, EndpointKey, EndpointStats, EndpointValue,
    NODEPORT_F_ENABLED, NODEPORT_F_SNAT_V4, NODEPORT_F_SNAT_V6, NP_STAT_CT_FAILED, NP_STAT_DENIED,
    NP_STAT_DSR_IN, NP_STAT_FIB_FAILED, NP_STAT_FORWARD, NP_STAT_ICMP_ERRORS, NP_STAT_NEW_FLOWS,
    NP_STAT_NO_BACKEND, NP_STAT_REPLIES, NP_STAT_XDP_TX, NodePortConfig, ServiceKey, ServiceValue,
    SlotKey, map_names,
};
use serde::Serialize;

use crate::datapath::{
    DataPathError,
    nodeport::{TableMap, read_table},
};

#[derive(Debug, Serialize)]
pub struct Status {
    /// `ebpf` or `nftables`: which data plane holds the services.
    pub dataplane: &'static str,
    pub services: Vec<ServiceStatus>,
    pub endpoints: Vec<EndpointStatus>,
    /// The overlay and the other nodes it programmed (when gannetd runs one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<crate::overlay::OverlayStatus>,
    /// The NodePort program: where it runs, its SNAT addresses, conntrack use and counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodeport: Option<NodePortStatus>,
}

#[derive(Debug, Serialize)]
pub struct NodePortStatus {
    pub enabled: bool,
    /// Interfaces `gannet_nodeport` is attached to.
    pub interfaces: Vec<String>,
    /// Interfaces `gannet_nodeport_xdp` is attached to (native XDP).
    pub xdp_interfaces: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_v4: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_v6: Option<IpAddr>,
    pub maglev_table_size: u32,
    /// Conntrack entries (two per flow) and the map's capacity.
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
    pub counters: crate::datapath::nodeport::NodePortStats,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub frontend: String,
    /// The Service port it belongs to (`namespace/name:port`), as the running gannetd last
    /// wrote it (`services.json` in the state directory); absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub backends: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_seconds: Option<u32>,
    /// Reachable from outside the node (NodePort, external IP, LoadBalancer IP).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// `externalTrafficPolicy: Local`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
    /// The distinct backends of an external frontend's Maglev table (what packets from
    /// outside are balanced to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_backends: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub host_ifindex: u32,
    pub ips: Vec<IpAddr>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets the pod sent from an address that is not its own, dropped.
    pub tx_dropped_source: u64,
    /// ARP and neighbour advertisements the pod sent for an address not its own, dropped.
    pub tx_dropped_neighbour: u64,
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
/// The nftables data plane's services, when its table exists (`--dataplane nftables`), read
/// from the table.
///
/// # Errors
/// When `nft` cannot be run or the table cannot be read.
pub fn read_nft(state_dir: &Path) -> Result<Option<Status>, crate::datapath::nft::NftError> {
    let Some(plane) = crate::datapath::nft::NftDataPlane::read()? else {
        return Ok(None);
    };
    let services = plane
        .frontends()
        .iter()
        .map(|(frontend, p)| ServiceStatus {
            frontend: frontend.to_string(),
            service: None,
            backends: p.backends.iter().map(ToString::to_string).collect(),
            affinity_timeout_seconds: p.affinity,
            external: p.external,
            local_only: p.external && !p.masquerade,
            packet_backends: p
                .external
                .then(|| p.backends.iter().map(ToString::to_string).collect()),
        })
        .collect();
    Ok(Some(Status {
        dataplane: "nftables",
        services: named(services, state_dir),
        endpoints: Vec::new(),
        overlay: crate::overlay::read_status(state_dir),
        nodeport: None,
    }))
}

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

    let maglev: Option<HashOfMaps<MapData, u32, TableMap>> = open(bpf_root, map_names::MAGLEV)
        .ok()
        .and_then(|m| HashOfMaps::try_from(m).ok());
    // Entries of every table, as the programs index them.
    let table_size = open(bpf_root, map_names::NODEPORT_CONFIG)
        .ok()
        .and_then(|m| Array::<MapData, NodePortConfig>::try_from(m).ok())
        .and_then(|config| config.get(&0, 0).ok())
        .map_or(0, |config| config.maglev_table_size);

    let mut out = Vec::new();
    for (key, value) in services.iter().filter_map(Result::ok) {
        let proto = match key.proto {
            gannet_common::PROTO_TCP => "TCP",
            gannet_common::PROTO_UDP => "UDP",
            _ => "?",
        };
        let external = value.flags & gannet_common::SVC_F_EXTERNAL != 0;
        let packet_backends = external.then(|| {
            // One read-only mapping of the table, not a system call per entry.
            let mut ids: Vec<u32> = maglev
                .as_ref()
                .and_then(|m| m.get(&value.id, 0).ok())
                .and_then(|table| read_table(&table, table_size).ok())
                .unwrap_or_default();
            ids.sort_unstable();
            ids.dedup();
            ids.iter()
                .filter_map(|id| backends.get(id, 0).ok())
                .map(|b| addr_port(b.addr, b.port))
                .collect()
        });
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
            service: None,
            backends,
            affinity_timeout_seconds: (value.flags & gannet_common::SVC_F_AFFINITY != 0)
                .then_some(value.affinity_timeout),
            external,
            local_only: value.flags & gannet_common::SVC_F_LOCAL != 0,
            packet_backends,
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
        // Absent while a gannetd from before the source check runs.
        let drops: Option<PerCpuHashMap<_, u32, EndpointDrops>> =
            open(bpf_root, map_names::ENDPOINT_DROPS)
                .ok()
                .and_then(|m| PerCpuHashMap::try_from(m).ok());
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
                tx_dropped_source: 0,
                tx_dropped_neighbour: 0,
            };
            if let Ok(per_cpu) = stats.get(&ifindex, 0) {
                for s in per_cpu.iter() {
                    e.rx_packets += s.rx_packets;
                    e.rx_bytes += s.rx_bytes;
                    e.tx_packets += s.tx_packets;
                    e.tx_bytes += s.tx_bytes;
                }
            }
            if let Some(Ok(per_cpu)) = drops.as_ref().map(|d| d.get(&ifindex, 0)) {
                for d in per_cpu.iter() {
                    e.tx_dropped_source += d.source;
                    e.tx_dropped_neighbour += d.neighbour;
                }
            }
            endpoints.push(e);
        }
    }
    Ok(Status {
        dataplane: "ebpf",
        services: named(out, state_dir),
        endpoints,
        overlay: crate::overlay::read_status(state_dir),
        nodeport: nodeport_status(bpf_root),
    })
}

/// `services` with the Service port each frontend belongs to, as gannetd last wrote them.
fn named(mut services: Vec<ServiceStatus>, state_dir: &Path) -> Vec<ServiceStatus> {
    let names = crate::names::read(state_dir);
    for service in &mut services {
        service.service = names.get(&service.frontend).cloned();
    }
    services
}

/// The NodePort program's state, when its maps exist.
fn nodeport_status(bpf_root: &Path) -> Option<NodePortStatus> {
    let config: Array<MapData, NodePortConfig> =
        Array::try_from(open(bpf_root, map_names::NODEPORT_CONFIG).ok()?).ok()?;
    let config = config.get(&0, 0).ok()?;
    let conntrack: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(open(bpf_root, map_names::CONNTRACK).ok()?).ok()?;
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open(bpf_root, map_names::NODEPORT_STATS).ok()?).ok()?;
    let sum = |i: u32| stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
    let capacity = conntrack.map().info().map(|i| i.max_entries()).unwrap_or(0);
    Some(NodePortStatus {
        enabled: config.flags & NODEPORT_F_ENABLED != 0,
        interfaces: crate::datapath::nodeport::attached(bpf_root)
            .into_keys()
            .collect(),
        xdp_interfaces: crate::datapath::nodeport::attached_xdp(bpf_root)
            .into_keys()
            .collect(),
        snat_v4: (config.flags & NODEPORT_F_SNAT_V4 != 0).then(|| ip(config.snat_v4)),
        snat_v6: (config.flags & NODEPORT_F_SNAT_V6 != 0).then(|| ip(config.snat_v6)),
        maglev_table_size: config.maglev_table_size,
        conntrack_entries: conntrack.keys().filter(Result::is_ok).count(),
        conntrack_capacity: capacity,
        counters: crate::datapath::nodeport::NodePortStats {
            new_flows: sum(NP_STAT_NEW_FLOWS),
            forwarded: sum(NP_STAT_FORWARD),
            replies: sum(NP_STAT_REPLIES),
            no_backend: sum(NP_STAT_NO_BACKEND),
            conntrack_failed: sum(NP_STAT_CT_FAILED),
            route_failed: sum(NP_STAT_FIB_FAILED),
            denied: sum(NP_STAT_DENIED),
            icmp_errors: sum(NP_STAT_ICMP_ERRORS),
            xdp_tx: sum(NP_STAT_XDP_TX),
            dsr_in: sum(NP_STAT_DSR_IN),
        },
    })
}

/// Columns separated by three spaces, as kubectl aligns them.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

/// `gannetd status` for people: one table per part; `-o json` has every field.
#[must_use]
pub fn render(status: &Status) -> String {
    let mut out = format!("Data plane: {}\n\n", status.dataplane);
    out.push_str(&format!("SERVICES ({})\n", status.services.len()));
    let mut rows = vec![vec![
        "FRONTEND".to_owned(),
        "SERVICE".to_owned(),
        "BACKENDS".to_owned(),
        "OPTIONS".to_owned(),
    ]];
    for service in &status.services {
        let mut options = Vec::new();
        if service.external {
            options.push("external".to_owned());
        }
        if service.local_only {
            options.push("local-only".to_owned());
        }
        if let Some(timeout) = service.affinity_timeout_seconds {
            options.push(format!("affinity={timeout}s"));
        }
        if let Some(packet) = &service.packet_backends
            && packet.len() != service.backends.len()
        {
            options.push(format!("packet-backends={}", packet.len()));
        }
        let backends = match service.backends.len() {
            0 => "<none>".to_owned(),
            1..=3 => service.backends.join(","),
            n => format!("{} + {} more", service.backends[..3].join(","), n - 3),
        };
        rows.push(vec![
            service.frontend.clone(),
            or_dash(service.service.clone().unwrap_or_default()),
            backends,
            or_dash(options.join(",")),
        ]);
    }
    out.push_str(&columns(&rows));
    out.push_str(&format!("\nENDPOINTS ({})\n", status.endpoints.len()));
    let mut rows = vec![
        [
            "IFINDEX", "IPS", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "DROPPED",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for endpoint in &status.endpoints {
        let ips: Vec<String> = endpoint.ips.iter().map(ToString::to_string).collect();
        rows.push(vec![
            endpoint.host_ifindex.to_string(),
            ips.join(","),
            endpoint.rx_packets.to_string(),
            endpoint.rx_bytes.to_string(),
            endpoint.tx_packets.to_string(),
            endpoint.tx_bytes.to_string(),
            (endpoint.tx_dropped_source + endpoint.tx_dropped_neighbour).to_string(),
        ]);
    }
    out.push_str(&columns(&rows));
    if let Some(np) = &status.nodeport {
        out.push_str("\nNODEPORT\n");
        let snat: Vec<String> = np
            .snat_v4
            .iter()
            .chain(np.snat_v6.iter())
            .map(ToString::to_string)
            .collect();
        let counters = serde_json::to_value(np.counters)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let rows = [
            ["enabled", if np.enabled { "yes" } else { "no" }].map(str::to_owned),
            ["interfaces".to_owned(), or_dash(np.interfaces.join(","))],
            ["xdp".to_owned(), or_dash(np.xdp_interfaces.join(","))],
            ["snat".to_owned(), or_dash(snat.join(","))],
            [
                "conntrack".to_owned(),
                format!(
                    "{} of {} entries",
                    np.conntrack_entries, np.conntrack_capacity
                ),
            ],
            ["counters".to_owned(), counters],
        ];
        out.push_str(&columns(&rows.map(|r| r.to_vec())));
    }
    if let Some(overlay) = &status.overlay {
        out.push_str("\nOVERLAY\n");
        let cidrs: Vec<String> = overlay.pod_cidrs.iter().map(ToString::to_string).collect();
        let rows = [
            [
                "mode".to_owned(),
                serde_json::to_value(overlay.mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ],
            [
                "underlay".to_owned(),
                format!(
                    "{} {} (mtu {})",
                    overlay.underlay.interface, overlay.underlay.ip, overlay.underlay.mtu
                ),
            ],
            [
                "device".to_owned(),
                or_dash(overlay.device.clone().unwrap_or_default()),
            ],
            ["pod-cidrs".to_owned(), or_dash(cidrs.join(","))],
            ["pod-mtu".to_owned(), overlay.pod_mtu.to_string()],
        ];
        out.push_str(&columns(&rows.map(|r| r.to_vec())));
        let mut nodes = vec![
            ["NODE", "IPS", "POD-CIDRS", "VTEP-MAC"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for node in &overlay.nodes {
            let ips: Vec<String> = node.ips.iter().map(ToString::to_string).collect();
            let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
            nodes.push(vec![
                node.name.clone(),
                ips.join(","),
                cidrs.join(","),
                or_dash(node.vtep_mac.clone().unwrap_or_default()),
            ]);
        }
        out.push('\n');
        out.push_str(&columns(&nodes));
    }
    out
}
