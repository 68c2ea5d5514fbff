//! Packet fixtures for `gannet_nodeport` and the reply path of `gannet_from_pod`, through
//! `BPF_PROG_TEST_RUN`: input frame → expected verdict and expected output frame (addresses,
//! ports, MACs, TTL and both checksums recomputed from scratch by the fixture). Everything runs
//! in a throw-away network namespace with an "external" interface whose neighbours are static.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _};

use aya::maps::{HashMap, IterableMap as _, Map, MapData};
use aya::programs::{TestRun as _, TestRunOptions};
use gannet_common::{
    BackendValue, CT_F_REPLY, CT_F_SNAT, CT_TCP_ESTABLISHED, CT_TCP_FIN, CtEntry, CtKey,
    NODEPORT_F_DSR, NODEPORT_F_ENABLED, NODEPORT_F_SNAT_V4, NodePortConfig, PROTO_TCP, PROTO_UDP,
    SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_F_EXTERNAL, SVC_F_SOURCE_RANGES, ServiceKey, ServiceValue,
    map_names, v4_mapped,
};
use gannet_testkit::Netns;

use crate::datapath::frame::{fold, ipv4_checksum, sum16, tcp_v4};
use crate::datapath::nodeport::{ExternalMaps, monotonic_ns};
use crate::datapath::pods::{
    Endpoint, PodCapacity, PodFastPath,
    tests::{BpfRoot, Case, POD_MAC, host_veth, run_cases, run_cases_from, small_capacity},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// `TC_ACT_UNSPEC` (-1): the next tcx program, then the stack.
const TC_ACT_UNSPEC: u32 = u32::MAX;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 250);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 11);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 12);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
/// This node's overlay address: the SNAT source for backends on other nodes.
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
const NODE_PORT: u16 = 30080;
const CLIENT_PORT: u16 = 40000;
const BACKEND_PORT: u16 = 8080;
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfa];
const OTHER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const EXT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// An Ethernet + IPv4 + ICMP error frame quoting `quoted` (an IP header and 8 bytes of its
/// transport header), every checksum right.
fn icmp_v4(
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    (kind, code): (u8, u8),
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0xa0]; // next-hop MTU 1440
    icmp.extend_from_slice(quoted);
    let csum = fold(sum16(&icmp, 0));
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 2, 0, 0, ttl, 1, 0, 0];
    ip[2..4].copy_from_slice(&u16::try_from(20 + icmp.len()).unwrap().to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// What an ICMP error quotes of a TCP packet: its IP header and the first 8 bytes of TCP.
fn quote(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp_v4([0; 6], [0; 6], src, sport, dst, dport, 64, SYN_ACK)[14..14 + 28].to_vec()
}

/// The RST+ACK a node sends for a SYN (sequence 1000, see `tcp_v4`) to a frontend without
/// backends: no options, no payload, window 0.
fn rst_v4(
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&1001u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, 0x14, 0, 0, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, PROTO_TCP, 0, 20]);
    let csum = fold(sum16(&tcp, sum16(&pseudo, 0)));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;

fn pinned_hash<K: aya::Pod, V: aya::Pod>(root: &BpfRoot, name: &str) -> HashMap<MapData, K, V> {
    let data = MapData::from_pin(root.path().join("maps").join(name)).expect("pinned map");
    HashMap::try_from(Map::HashMap(data)).expect("a hash map")
}

fn service(id: u32, flags: u8) -> ServiceValue {
    ServiceValue {
        id,
        count: 1,
        generation: 0,
        flags,
        affinity_timeout: 0,
        pad: 0,
    }
}

fn frontend(ip: Ipv4Addr, port: u16) -> ServiceKey {
    ServiceKey {
        addr: v4_mapped(ip.octets()),
        port: port.to_be(),
        proto: PROTO_TCP,
        pad: 0,
    }
}

fn backend(ip: Ipv4Addr, port: u16) -> BackendValue {
    BackendValue {
        addr: v4_mapped(ip.octets()),
        port: port.to_be(),
        epoch: 0,
    }
}

/// The fixtures' node: a pod veth (`hveth`, returned: its MAC) and an external interface
/// `ext0` (10.99.0.11/24) whose neighbours (the client, the other node) are static, so the FIB
/// lookup finds their MACs; the other node's pod CIDR is routed via it (as host-gw would).
fn fixture_netns() -> (Netns, [u8; 6]) {
    let ns = Netns::new("npfix").expect("test netns");
    let host_mac = host_veth(&ns);
    // The external interface: its neighbours are static, so the FIB lookup finds their MACs.
    ns.ip(&[
        "link",
        "add",
        "ext0",
        "address",
        "02:00:00:00:00:0b",
        "type",
        "veth",
        "peer",
        "name",
        "ext1",
    ])
    .unwrap();
    ns.ip(&["link", "set", "ext0", "up"]).unwrap();
    ns.ip(&["link", "set", "ext1", "up"]).unwrap();
    ns.ip(&["addr", "add", "10.99.0.11/24", "dev", "ext0"])
        .unwrap();
    ns.ip(&["addr", "add", "fd00:99::11/64", "dev", "ext0", "nodad"])
        .unwrap();
    ns.ip(&[
        "neigh",
        "replace",
        "fd00:99::250",
        "lladdr",
        "02:00:00:00:00:fa",
        "dev",
        "ext0",
        "nud",
        "permanent",
    ])
    .unwrap();
    for (ip, mac) in [
        ("10.99.0.250", "02:00:00:00:00:fa"),
        ("10.99.0.12", "02:00:00:00:00:0c"),
    ] {
        ns.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac,
            "dev",
            "ext0",
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    ns.ip(&[
        "route",
        "add",
        "10.244.2.0/24",
        "via",
        "10.99.0.12",
        "dev",
        "ext0",
    ])
    .unwrap();
    (ns, host_mac)
}

/// The pod object loaded in the fixtures' node, the pod registered, and the maps the fixtures
/// write.
struct Loaded {
    fp: PodFastPath,
    maglev: ExternalMaps,
    size: usize,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, BackendValue>,
}

/// Loads the pod programs (in the fixtures' node: call from inside its namespace).
fn load(bpf_root: &BpfRoot) -> Loaded {
    load_with(bpf_root, &small_capacity())
}

fn load_with(bpf_root: &BpfRoot, capacity: &PodCapacity) -> Loaded {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enabling forwarding");
    let mut fp = PodFastPath::load(bpf_root.path(), capacity).expect("loading the pod programs");
    fp.add(&Endpoint {
        host_ifname: "hveth".into(),
        mac: POD_MAC,
        ips: vec![IpAddr::V4(POD)],
    })
    .expect("adding the endpoint");
    let maglev = fp.take_external().expect("the Maglev tables");
    let size = maglev.size() as usize;
    Loaded {
        fp,
        maglev,
        size,
        services: pinned_hash(bpf_root, map_names::SERVICES),
        backends: pinned_hash(bpf_root, map_names::BACKENDS),
    }
}

/// NodePort to a pod of this node (client address kept), its reply back through the pod's veth,
/// NodePort to a pod of another node (SNAT to the overlay address), misses and a frontend without
/// backends.
#[test]
fn nodeport_fixtures() {
    let (ns, host_mac) = fixture_netns();
    let bpf_root = BpfRoot::new();

    let failures = ns
        .run(|| {
            let Loaded {
                mut fp,
                mut maglev,
                size,
                mut services,
                mut backends,
            } = load(&bpf_root);
            // Service 1: NodePort to the local pod; 2: to a pod of another node; 3: external
            // but without a table (no backend); 4: a ClusterIP, not reachable from outside.
            services
                .insert(frontend(NODE, NODE_PORT), service(1, SVC_F_EXTERNAL), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 1), service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 2), service(3, SVC_F_EXTERNAL), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 3), service(4, 0), 0)
                .unwrap();
            backends.insert(11, backend(POD, BACKEND_PORT), 0).unwrap();
            backends
                .insert(12, backend(REMOTE_POD, BACKEND_PORT), 0)
                .unwrap();
            maglev.put(1, &vec![11; size]).unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            maglev.put(4, &vec![11; size]).unwrap();
            assert_eq!(
                maglev.get(2),
                Some(vec![12; size]),
                "the table read back is not the one written"
            );
            fp.nodeport
                .configure(&NodePortConfig {
                    snat_v4: v4_mapped(SNAT.octets()),
                    snat_v6: [0; 16],
                    node_v4: v4_mapped(NODE.octets()),
                    node_v6: [0; 16],
                    maglev_table_size: maglev.size(),
                    flags: NODEPORT_F_ENABLED | NODEPORT_F_SNAT_V4,
                })
                .unwrap();

            let from_client = |dport| {
                tcp_v4(
                    EXT_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    CLIENT_PORT,
                    NODE,
                    dport,
                    64,
                    SYN,
                )
            };
            let cases: Vec<Case> = vec![
                (
                    "NodePort, backend on this node: DNAT only (client kept), into the pod",
                    from_client(NODE_PORT),
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        host_mac,
                        CLIENT,
                        CLIENT_PORT,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
                (
                    "NodePort, tracked flow: the same translation again",
                    from_client(NODE_PORT),
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        host_mac,
                        CLIENT,
                        CLIENT_PORT,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
                (
                    "external frontend without a backend: to the host stack, which refuses it",
                    from_client(NODE_PORT + 2),
                    TC_ACT_OK,
                    from_client(NODE_PORT + 2),
                ),
                (
                    "a ClusterIP frontend: not for this program",
                    from_client(NODE_PORT + 3),
                    TC_ACT_UNSPEC,
                    from_client(NODE_PORT + 3),
                ),
                (
                    "no frontend: not for this program",
                    from_client(NODE_PORT + 9),
                    TC_ACT_UNSPEC,
                    from_client(NODE_PORT + 9),
                ),
            ];
            let mut failures = run_cases(fp.nodeport_program().unwrap(), cases);

            // externalTrafficPolicy: Local: a table of this node's endpoints means DNAT only; no
            // table (no local endpoint) means drop, not a refusal and not another node.
            let local_only = SVC_F_EXTERNAL | gannet_common::SVC_F_LOCAL;
            services
                .insert(frontend(NODE, NODE_PORT + 5), service(9, local_only), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 6), service(10, local_only), 0)
                .unwrap();
            maglev.put(9, &vec![11; size]).unwrap();
            let cases: Vec<Case> = vec![
                (
                    "externalTrafficPolicy: Local with a local endpoint: DNAT only, into the pod",
                    tcp_v4(
                        EXT_MAC,
                        CLIENT_MAC,
                        CLIENT,
                        CLIENT_PORT + 20,
                        NODE,
                        NODE_PORT + 5,
                        64,
                        SYN,
                    ),
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        host_mac,
                        CLIENT,
                        CLIENT_PORT + 20,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
                (
                    "externalTrafficPolicy: Local without a local endpoint: dropped",
                    tcp_v4(
                        EXT_MAC,
                        CLIENT_MAC,
                        CLIENT,
                        CLIENT_PORT + 20,
                        NODE,
                        NODE_PORT + 6,
                        64,
                        SYN,
                    ),
                    TC_ACT_SHOT,
                    tcp_v4(
                        EXT_MAC,
                        CLIENT_MAC,
                        CLIENT,
                        CLIENT_PORT + 20,
                        NODE,
                        NODE_PORT + 6,
                        64,
                        SYN,
                    ),
                ),
            ];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));

            // A LoadBalancer IP without backends is not the node's: refused with a RST here.
            let lb = Ipv4Addr::new(10, 99, 0, 201);
            services
                .insert(frontend(lb, 80), service(8, SVC_F_EXTERNAL), 0)
                .unwrap();
            let cases: Vec<Case> = vec![(
                "a LoadBalancer IP without a backend: a RST back to the client",
                tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, lb, 80, 64, SYN),
                TC_ACT_REDIRECT,
                rst_v4((CLIENT_MAC, EXT_MAC), (lb, 80), (CLIENT, CLIENT_PORT)),
            )];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
            let key = ServiceKey {
                proto: PROTO_UDP,
                ..frontend(lb, 53)
            };
            services
                .insert(key, service(20, SVC_F_EXTERNAL), 0)
                .unwrap();
            let datagram = udp(
                (EXT_MAC, CLIENT_MAC),
                (IpAddr::V4(CLIENT), CLIENT_PORT),
                (IpAddr::V4(lb), 53),
            );
            let cases: Vec<Case> = vec![(
                "UDP to a LoadBalancer IP without a backend: ICMP port unreachable back",
                datagram.clone(),
                TC_ACT_REDIRECT,
                port_unreachable(&datagram, IpAddr::V4(lb)),
            )];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));

            let cases: Vec<Case> = vec![(
                "the local backend's reply: source back to NodeIP:NodePort, out to the client",
                tcp_v4(
                    host_mac,
                    POD_MAC,
                    POD,
                    BACKEND_PORT,
                    CLIENT,
                    CLIENT_PORT,
                    64,
                    SYN_ACK,
                ),
                TC_ACT_REDIRECT,
                tcp_v4(
                    CLIENT_MAC,
                    EXT_MAC,
                    NODE,
                    NODE_PORT,
                    CLIENT,
                    CLIENT_PORT,
                    63,
                    SYN_ACK,
                ),
            )];
            failures.extend(run_cases_from(
                fp.from_pod_program().unwrap(),
                "hveth",
                cases,
            ));

            let cases: Vec<Case> = vec![(
                "an ICMP error the backend sends about the client's packet: from the frontend, \
                 quoting client → frontend, out to the client",
                icmp_v4(
                    (host_mac, POD_MAC),
                    POD,
                    CLIENT,
                    64,
                    (3, 3),
                    &quote(CLIENT, CLIENT_PORT, POD, BACKEND_PORT),
                ),
                TC_ACT_REDIRECT,
                icmp_v4(
                    (CLIENT_MAC, EXT_MAC),
                    NODE,
                    CLIENT,
                    63,
                    (3, 3),
                    &quote(CLIENT, CLIENT_PORT, NODE, NODE_PORT),
                ),
            )];
            failures.extend(run_cases_from(
                fp.from_pod_program().unwrap(),
                "hveth",
                cases,
            ));

            // Fragmentation needed, from a router on the client's side, about a reply: to the
            // backend, quoting backend → client.
            let router = Ipv4Addr::new(10, 99, 0, 1);
            let cases: Vec<Case> = vec![(
                "an ICMP error about a reply, from the client's side: to the backend",
                icmp_v4(
                    (EXT_MAC, CLIENT_MAC),
                    router,
                    NODE,
                    64,
                    (3, 4),
                    &quote(NODE, NODE_PORT, CLIENT, CLIENT_PORT),
                ),
                TC_ACT_REDIRECT,
                icmp_v4(
                    (POD_MAC, host_mac),
                    router,
                    POD,
                    63,
                    (3, 4),
                    &quote(POD, BACKEND_PORT, CLIENT, CLIENT_PORT),
                ),
            )];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));

            // A backend on another node: SNAT to this node's overlay address and a port of the
            // SNAT range, which only the program knows: read it from the conntrack map.
            let input = from_client(NODE_PORT + 1);
            let cases: Vec<Case> = vec![("probe", input.clone(), TC_ACT_REDIRECT, Vec::new())];
            let _ = run_cases(fp.nodeport_program().unwrap(), cases);
            let entries = fp.nodeport.conntrack_entries();
            let snat_reply = entries.iter().find(|(k, e)| {
                e.flags == CT_F_REPLY | CT_F_SNAT && k.saddr == v4_mapped(REMOTE_POD.octets())
            });
            match snat_reply {
                None => failures.push(format!("no SNAT reply entry in {entries:?}")),
                Some((key, _)) => {
                    let port = u16::from_be(key.dport);
                    if !(SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port) {
                        failures.push(format!("SNAT port {port} outside the range"));
                    }
                    if key.daddr != v4_mapped(SNAT.octets()) {
                        failures.push(format!("SNAT reply key to {:?}", key.daddr));
                    }
                    let cases: Vec<Case> = vec![
                        (
                            "NodePort, backend on another node: SNAT + DNAT, to the next hop",
                            from_client(NODE_PORT + 1),
                            TC_ACT_REDIRECT,
                            tcp_v4(
                                OTHER_NODE_MAC,
                                EXT_MAC,
                                SNAT,
                                port,
                                REMOTE_POD,
                                BACKEND_PORT,
                                63,
                                SYN,
                            ),
                        ),
                        (
                            "its reply (host-gw: on the external interface): back to the client",
                            tcp_v4(
                                EXT_MAC,
                                OTHER_NODE_MAC,
                                REMOTE_POD,
                                BACKEND_PORT,
                                SNAT,
                                port,
                                64,
                                SYN_ACK,
                            ),
                            TC_ACT_REDIRECT,
                            tcp_v4(
                                CLIENT_MAC,
                                EXT_MAC,
                                NODE,
                                NODE_PORT + 1,
                                CLIENT,
                                CLIENT_PORT,
                                63,
                                SYN_ACK,
                            ),
                        ),
                    ];
                    failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
                }
            }
            let stats = fp.nodeport.stats().expect("counters");
            if stats.new_flows != 3
                || stats.no_backend != 4
                || stats.replies != 2
                || stats.icmp_errors != 2
            {
                failures.push(format!("counters: {stats:?}"));
            }

            // loadBalancerSourceRanges: a LoadBalancer IP whose ranges leave the client out
            // drops it; one whose ranges hold it lets it in.
            let lb = Ipv4Addr::new(10, 99, 0, 200);
            let ranged = SVC_F_EXTERNAL | SVC_F_SOURCE_RANGES;
            services
                .insert(frontend(lb, 80), service(5, ranged), 0)
                .unwrap();
            services
                .insert(frontend(lb, 81), service(6, ranged), 0)
                .unwrap();
            maglev.put(5, &vec![11; size]).unwrap();
            maglev.put(6, &vec![11; size]).unwrap();
            maglev
                .put_ranges(5, &["10.99.0.0/28".parse().unwrap()])
                .unwrap();
            maglev
                .put_ranges(
                    6,
                    &[
                        "10.99.0.0/28".parse().unwrap(),
                        "10.99.0.248/29".parse().unwrap(),
                    ],
                )
                .unwrap();
            let to_lb = |dport| {
                tcp_v4(
                    EXT_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    CLIENT_PORT + 1,
                    lb,
                    dport,
                    64,
                    SYN,
                )
            };
            let cases: Vec<Case> = vec![
                (
                    "LoadBalancer IP, client outside its source ranges: dropped",
                    to_lb(80),
                    TC_ACT_SHOT,
                    to_lb(80),
                ),
                (
                    "LoadBalancer IP, client inside one of its source ranges: balanced",
                    to_lb(81),
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        host_mac,
                        CLIENT,
                        CLIENT_PORT + 1,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
            ];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
            if fp.nodeport.stats().expect("counters").denied != 1 {
                failures.push("the dropped client is counted as denied".to_owned());
            }

            // sessionAffinity: ClientIP: every new flow of one client gets the backend its first
            // flow got, whatever its ports hash to.
            backends
                .insert(13, backend(Ipv4Addr::new(10, 244, 2, 8), BACKEND_PORT), 0)
                .unwrap();
            let sticky = ServiceValue {
                affinity_timeout: 60,
                ..service(7, SVC_F_EXTERNAL | gannet_common::SVC_F_AFFINITY)
            };
            services
                .insert(frontend(NODE, NODE_PORT + 4), sticky, 0)
                .unwrap();
            let alternating: Vec<u32> = (0..size)
                .map(|i| if i % 2 == 0 { 12 } else { 13 })
                .collect();
            maglev.put(7, &alternating).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for port in 41000..41016u16 {
                let frame = tcp_v4(
                    EXT_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    port,
                    NODE,
                    NODE_PORT + 4,
                    64,
                    SYN,
                );
                let _ = run_cases(
                    fp.nodeport_program().unwrap(),
                    vec![("affinity", frame, TC_ACT_REDIRECT, Vec::new())],
                );
            }
            for (key, entry) in fp.nodeport.conntrack_entries() {
                if entry.flags & CT_F_REPLY == 0 && entry.service_id == 7 {
                    seen.insert(entry.backend_id);
                    let _ = key;
                }
            }
            if seen.len() != 1 {
                failures.push(format!(
                    "ClientIP affinity: 16 flows of one client went to backends {seen:?}"
                ));
            }
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A flow of another client holding SNAT port `port` to the remote backend of service 2: its
/// client entry (client port `10000 + i`) and its reply entry, both with TCP flags `client_tcp`
/// and `backend_tcp` seen, last seen now.
fn held_port(port: u16, client_tcp: u8, backend_tcp: u8) -> [(CtKey, CtEntry); 2] {
    let client = Ipv4Addr::new(10, 99, 0, 251);
    let client_port = 10_000 + (port - SNAT_PORT_MIN);
    let now = monotonic_ns();
    let key = CtKey {
        saddr: v4_mapped(client.octets()),
        daddr: v4_mapped(NODE.octets()),
        sport: client_port.to_be(),
        dport: (NODE_PORT + 1).to_be(),
        proto: PROTO_TCP,
        pad: [0; 3],
    };
    let entry = CtEntry {
        saddr: v4_mapped(SNAT.octets()),
        daddr: v4_mapped(REMOTE_POD.octets()),
        sport: port.to_be(),
        dport: BACKEND_PORT.to_be(),
        flags: CT_F_SNAT,
        tcp: client_tcp,
        pad: 0,
        service_id: 2,
        backend_id: 12,
        last_seen_ns: now,
    };
    let reply_key = CtKey {
        saddr: v4_mapped(REMOTE_POD.octets()),
        daddr: v4_mapped(SNAT.octets()),
        sport: BACKEND_PORT.to_be(),
        dport: port.to_be(),
        proto: PROTO_TCP,
        pad: [0; 3],
    };
    let reply = CtEntry {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        flags: CT_F_REPLY | CT_F_SNAT,
        tcp: backend_tcp,
        ..entry
    };
    [(key, entry), (reply_key, reply)]
}

/// Every SNAT port to one backend is held: while their flows are open, a new flow is dropped
/// and counted; once they are over (FINs both ways), the new flow takes one over, and the old
/// flow's client entry goes with it.
#[test]
fn snat_ports_of_finished_flows_are_taken_over() {
    let (ns, _) = fixture_netns();
    let bpf_root = BpfRoot::new();
    let failures = ns
        .run(|| {
            let capacity = PodCapacity {
                conntrack: 65_536,
                ..small_capacity()
            };
            let Loaded {
                mut fp,
                mut maglev,
                size,
                mut services,
                mut backends,
            } = load_with(&bpf_root, &capacity);
            services
                .insert(frontend(NODE, NODE_PORT + 1), service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            backends
                .insert(12, backend(REMOTE_POD, BACKEND_PORT), 0)
                .unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            fp.nodeport
                .configure(&NodePortConfig {
                    snat_v4: v4_mapped(SNAT.octets()),
                    snat_v6: [0; 16],
                    node_v4: v4_mapped(NODE.octets()),
                    node_v6: [0; 16],
                    maglev_table_size: maglev.size(),
                    flags: NODEPORT_F_ENABLED | NODEPORT_F_SNAT_V4,
                })
                .unwrap();
            let data = MapData::from_pin(bpf_root.path().join("maps").join(map_names::CONNTRACK))
                .expect("the pinned conntrack map");
            let mut conntrack: HashMap<MapData, CtKey, CtEntry> =
                HashMap::try_from(Map::LruHashMap(data)).expect("an LRU hash map");
            let hold = |conntrack: &mut HashMap<MapData, CtKey, CtEntry>, client_tcp| {
                for port in SNAT_PORT_MIN..=SNAT_PORT_MAX {
                    // The backend has closed its side; the client has not (or has).
                    for (k, v) in held_port(port, client_tcp, CT_TCP_ESTABLISHED | CT_TCP_FIN) {
                        conntrack.insert(k, v, 0).expect("holding a port");
                    }
                }
            };
            hold(&mut conntrack, CT_TCP_ESTABLISHED);
            let ports = usize::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
            let mut failures = Vec::new();
            let held = fp.nodeport.conntrack_entries().len();
            if held != 2 * ports {
                failures.push(format!("{held} entries held, not {}", 2 * ports));
            }
            let syn = |client_port| {
                tcp_v4(
                    EXT_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    client_port,
                    NODE,
                    NODE_PORT + 1,
                    64,
                    SYN,
                )
            };
            failures.extend(run_cases(
                fp.nodeport_program().unwrap(),
                vec![(
                    "every SNAT port held by an open flow: dropped",
                    syn(CLIENT_PORT),
                    TC_ACT_SHOT,
                    syn(CLIENT_PORT),
                )],
            ));
            if fp.nodeport.stats().expect("counters").conntrack_failed != 1 {
                failures.push("the dropped flow is not counted as conntrack_failed".to_owned());
            }

            hold(&mut conntrack, CT_TCP_ESTABLISHED | CT_TCP_FIN);
            let _ = run_cases(
                fp.nodeport_program().unwrap(),
                vec![("probe", syn(CLIENT_PORT + 1), TC_ACT_REDIRECT, Vec::new())],
            );
            let entries = fp.nodeport.conntrack_entries();
            let new_client = entries
                .iter()
                .find(|(k, _)| k.saddr == v4_mapped(CLIENT.octets()));
            match new_client {
                None => failures.push("the new flow was not tracked".to_owned()),
                Some((_, entry)) => {
                    let port = u16::from_be(entry.sport);
                    let [(old_key, _), (reply_key, _)] = held_port(port, 0, 0);
                    if entries.iter().any(|(k, _)| *k == old_key) {
                        failures.push(format!(
                            "the client entry of the flow that held port {port} is still there"
                        ));
                    }
                    match entries.iter().find(|(k, _)| *k == reply_key) {
                        Some((_, reply))
                            if reply.daddr == v4_mapped(CLIENT.octets())
                                && u16::from_be(reply.dport) == CLIENT_PORT + 1 => {}
                        other => failures.push(format!(
                            "port {port}'s reply entry is not the new flow's: {other:?}"
                        )),
                    }
                    failures.extend(run_cases(
                        fp.nodeport_program().unwrap(),
                        vec![(
                            "a flow that took a port over: SNAT with that port",
                            syn(CLIENT_PORT + 1),
                            TC_ACT_REDIRECT,
                            tcp_v4(
                                OTHER_NODE_MAC,
                                EXT_MAC,
                                SNAT,
                                port,
                                REMOTE_POD,
                                BACKEND_PORT,
                                63,
                                SYN,
                            ),
                        )],
                    ));
                }
            }
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// XDP context for a test run: the frame arrived on interface `ifindex` (`struct xdp_md`).
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    md
}

/// Runs `gannet_nodeport_xdp` on `frame` as if it arrived on `ifindex`.
fn xdp_run(fp: &mut PodFastPath, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    let prog = fp.nodeport_xdp_program().unwrap();
    let md = xdp_md(frame.len(), ifindex);
    let mut out = vec![0u8; frame.len() + 64];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&md),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The XDP front: a flow whose translated packet leaves by the interface it came in on (a
/// backend across the segment, its reply to the client) is rewritten and sent back out right
/// there; one for a pod of this node passes untouched to tc, tracked; misses pass.
#[test]
fn nodeport_xdp_fixtures() {
    let (ns, _pod_gateway) = fixture_netns();
    let bpf_root = BpfRoot::new();
    let ext0 = ns
        .run(|| crate::sys::link_info("ext0").expect("ext0").0)
        .expect("running in the test netns");
    let failures = ns
        .run(|| {
            let Loaded {
                mut fp,
                mut maglev,
                size,
                mut services,
                mut backends,
            } = load(&bpf_root);
            services
                .insert(frontend(NODE, NODE_PORT), service(1, SVC_F_EXTERNAL), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 1), service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            backends.insert(11, backend(POD, BACKEND_PORT), 0).unwrap();
            backends.insert(12, backend(REMOTE_POD, BACKEND_PORT), 0).unwrap();
            maglev.put(1, &vec![11; size]).unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            fp.nodeport
                .configure(&NodePortConfig {
                    snat_v4: v4_mapped(SNAT.octets()),
                    snat_v6: [0; 16],
                    node_v4: v4_mapped(NODE.octets()),
                    node_v6: [0; 16],
                    maglev_table_size: maglev.size(),
                    flags: NODEPORT_F_ENABLED | NODEPORT_F_SNAT_V4,
                })
                .unwrap();

            let mut failures = Vec::new();
            let mut check = |name: &str, got: (u32, Vec<u8>), action: u32, expected: &[u8]| {
                if got.0 != action || got.1 != expected {
                    failures.push(format!(
                        "{name}: expected action {action} and\n  {expected:02x?}\n got {} and\n  {:02x?}",
                        got.0, got.1
                    ));
                }
            };

            let to_local = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, NODE, NODE_PORT, 64, SYN);
            let got = xdp_run(&mut fp, ext0, &to_local);
            check("a pod of this node: passed untouched to tc", got, XDP_PASS, &to_local);
            let to_remote =
                tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, NODE, NODE_PORT + 1, 64, SYN);
            let sent = xdp_run(&mut fp, ext0, &to_remote);
            let entries = fp.nodeport.conntrack_entries();
            let tracked = entries.iter().filter(|(_, e)| e.flags & CT_F_REPLY == 0).count();
            if tracked != 2 {
                check("both new flows are tracked", (0, Vec::new()), 1, &[]);
            }
            let port = entries
                .iter()
                .find(|(k, e)| {
                    e.flags == CT_F_REPLY | CT_F_SNAT && k.saddr == v4_mapped(REMOTE_POD.octets())
                })
                .map(|(k, _)| u16::from_be(k.dport));
            let Some(port) = port else {
                return vec![format!("no SNAT reply entry in {entries:?}")];
            };
            check(
                "a backend across the segment: SNAT + DNAT, sent back out from XDP",
                sent,
                XDP_TX,
                &tcp_v4(OTHER_NODE_MAC, EXT_MAC, SNAT, port, REMOTE_POD, BACKEND_PORT, 63, SYN),
            );
            let reply =
                tcp_v4(EXT_MAC, OTHER_NODE_MAC, REMOTE_POD, BACKEND_PORT, SNAT, port, 64, SYN_ACK);
            let got = xdp_run(&mut fp, ext0, &reply);
            check(
                "its reply: back to the client from XDP",
                got,
                XDP_TX,
                &tcp_v4(CLIENT_MAC, EXT_MAC, NODE, NODE_PORT + 1, CLIENT, CLIENT_PORT, 63, SYN_ACK),
            );
            let miss = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, NODE, 9, 64, SYN);
            let got = xdp_run(&mut fp, ext0, &miss);
            check("no frontend: passed", got, XDP_PASS, &miss);
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `frame` (Ethernet + IPv4 without options) with the DSR option naming `frontend:port` after
/// its IPv4 header, as the balancing node sends it.
fn with_dsr_option(frame: &[u8], frontend: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut ip = frame[14..34].to_vec();
    ip[0] = 0x47;
    let total = u16::from_be_bytes([ip[2], ip[3]]) + 8;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x9a, 8]);
    ip.extend_from_slice(&port.to_be_bytes());
    ip.extend_from_slice(&frontend.octets());
    ip[10..12].copy_from_slice(&[0, 0]);
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut out = frame[..14].to_vec();
    out.extend_from_slice(&ip);
    out.extend_from_slice(&frame[34..]);
    out
}

/// `--lb-mode dsr`: the balancing node sends the client's packet on with its own source and the
/// frontend in an IPv4 option; the backend's node takes the option off, delivers the packet and
/// sends the pod's reply to the client from the frontend.
#[test]
fn nodeport_dsr_fixtures() {
    let (ns, host_mac) = fixture_netns();
    let bpf_root = BpfRoot::new();
    let failures = ns
        .run(|| {
            let Loaded {
                mut fp,
                mut maglev,
                size,
                mut services,
                mut backends,
            } = load(&bpf_root);
            services
                .insert(frontend(NODE, NODE_PORT + 1), service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            backends
                .insert(12, backend(REMOTE_POD, BACKEND_PORT), 0)
                .unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            fp.nodeport
                .configure(&NodePortConfig {
                    snat_v4: v4_mapped(SNAT.octets()),
                    snat_v6: [0; 16],
                    node_v4: v4_mapped(NODE.octets()),
                    node_v6: [0; 16],
                    maglev_table_size: maglev.size(),
                    flags: NODEPORT_F_ENABLED | NODEPORT_F_SNAT_V4 | NODEPORT_F_DSR,
                })
                .unwrap();

            let to_remote = tcp_v4(
                EXT_MAC,
                CLIENT_MAC,
                CLIENT,
                CLIENT_PORT,
                NODE,
                NODE_PORT + 1,
                64,
                SYN,
            );
            let plain = tcp_v4(
                OTHER_NODE_MAC,
                EXT_MAC,
                CLIENT,
                CLIENT_PORT,
                REMOTE_POD,
                BACKEND_PORT,
                63,
                SYN,
            );
            let cases: Vec<Case> = vec![(
                "balanced to another node: DNAT only, the frontend in the DSR option",
                to_remote,
                TC_ACT_REDIRECT,
                with_dsr_option(&plain, NODE, NODE_PORT + 1),
            )];
            let mut failures = run_cases(fp.nodeport_program().unwrap(), cases);

            // The backend's node (this one, for a pod of its own): the option comes off.
            let arriving = with_dsr_option(
                &tcp_v4(
                    EXT_MAC,
                    OTHER_NODE_MAC,
                    CLIENT,
                    CLIENT_PORT + 5,
                    POD,
                    BACKEND_PORT,
                    64,
                    SYN,
                ),
                NODE,
                NODE_PORT + 1,
            );
            let unknown = with_dsr_option(
                &tcp_v4(
                    EXT_MAC,
                    OTHER_NODE_MAC,
                    CLIENT,
                    CLIENT_PORT + 6,
                    POD,
                    BACKEND_PORT,
                    64,
                    SYN,
                ),
                Ipv4Addr::new(192, 0, 2, 1),
                80,
            );
            let cases: Vec<Case> = vec![
                (
                    "with the DSR option, for a pod here: option removed, into the pod",
                    arriving,
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        host_mac,
                        CLIENT,
                        CLIENT_PORT + 5,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
                (
                    "a DSR option naming no frontend of the cluster: dropped",
                    unknown.clone(),
                    TC_ACT_SHOT,
                    unknown,
                ),
            ];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
            let cases: Vec<Case> = vec![(
                "the pod's reply: from the frontend, straight to the client",
                tcp_v4(
                    host_mac,
                    POD_MAC,
                    POD,
                    BACKEND_PORT,
                    CLIENT,
                    CLIENT_PORT + 5,
                    64,
                    SYN_ACK,
                ),
                TC_ACT_REDIRECT,
                tcp_v4(
                    CLIENT_MAC,
                    EXT_MAC,
                    NODE,
                    NODE_PORT + 1,
                    CLIENT,
                    CLIENT_PORT + 5,
                    63,
                    SYN_ACK,
                ),
            )];
            failures.extend(run_cases_from(
                fp.from_pod_program().unwrap(),
                "hveth",
                cases,
            ));
            let stats = fp.nodeport.stats().expect("counters");
            if stats.dsr_in != 1 || stats.denied != 1 {
                failures.push(format!("counters: {stats:?}"));
            }
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An Ethernet + IP + UDP frame (TTL 64, payload "hello") with every checksum right.
fn udp(
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&13u16.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(b"hello");
    let csum = fold(sum16(&udp, pseudo_sum(src, dst, PROTO_UDP, udp.len())));
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    frame((dst_mac, src_mac), (src, dst), PROTO_UDP, &udp)
}

/// The one's-complement sum of the pseudo-header of an IPv4 or IPv6 transport header.
fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    sum16(&pseudo, 0)
}

/// Ethernet + an IP header (IPv4: id 0, DF; TTL or hop limit 64) + `payload`.
fn frame(
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
    (src, dst): (IpAddr, IpAddr),
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
            ip[2..4].copy_from_slice(&u16::try_from(20 + payload.len()).unwrap().to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let csum = ipv4_checksum(&ip);
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(payload);
    f
}

/// The ICMP (`ICMPv6`) port unreachable a node sends for `datagram` (a frame from [`udp`]) from
/// `from`: it quotes the datagram's IP and UDP headers.
fn port_unreachable(datagram: &[u8], from: IpAddr) -> Vec<u8> {
    let (dst_mac, src_mac) = (
        datagram[6..12].try_into().unwrap(),
        datagram[0..6].try_into().unwrap(),
    );
    let (to, quote, kind, proto) = if datagram[12..14] == [0x08, 0x00] {
        let to: [u8; 4] = datagram[26..30].try_into().unwrap();
        (IpAddr::from(to), &datagram[14..14 + 28], [3, 3], 1)
    } else {
        let to: [u8; 16] = datagram[22..38].try_into().unwrap();
        (IpAddr::from(to), &datagram[14..14 + 48], [1, 4], 58)
    };
    let mut icmp = vec![kind[0], kind[1], 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let start = if proto == 58 {
        pseudo_sum(from, to, proto, icmp.len())
    } else {
        0
    };
    let csum = fold(sum16(&icmp, start));
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    frame((dst_mac, src_mac), (from, to), proto, &icmp)
}

/// An Ethernet + IPv6 + TCP frame with its checksum right.
#[expect(clippy::too_many_arguments, reason = "a fixture builder")]
fn tcp_v6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: std::net::Ipv6Addr,
    sport: u16,
    dst: std::net::Ipv6Addr,
    dport: u16,
    hop: u8,
    flags: u8,
) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&1000u32.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(b"hello");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::try_from(tcp.len()).unwrap().to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, PROTO_TCP]);
    let csum = fold(sum16(&tcp, sum16(&pseudo, 0)));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(tcp.len()).unwrap().to_be_bytes());
    f.extend_from_slice(&[PROTO_TCP, hop]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&tcp);
    f
}

/// IPv6: a NodePort to a pod of this node (DNAT only, the 16-byte addresses through the
/// pseudo-header), and the pod's reply back to the client.
#[test]
fn nodeport_ipv6_fixtures() {
    let (ns, host_mac) = fixture_netns();
    let bpf_root = BpfRoot::new();
    let failures = ns
        .run(|| {
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
                .expect("enabling IPv6 forwarding");
            let Loaded {
                mut fp,
                mut maglev,
                size,
                mut services,
                mut backends,
            } = load(&bpf_root);
            let node: std::net::Ipv6Addr = "fd00:99::11".parse().unwrap();
            let client: std::net::Ipv6Addr = "fd00:99::250".parse().unwrap();
            let pod: std::net::Ipv6Addr = "fd00:244::12".parse().unwrap();
            fp.add(&Endpoint {
                host_ifname: "hveth".into(),
                mac: POD_MAC,
                ips: vec![IpAddr::V4(POD), IpAddr::V6(pod)],
            })
            .expect("adding the endpoint's IPv6 address");
            let key = ServiceKey {
                addr: node.octets(),
                port: NODE_PORT.to_be(),
                proto: PROTO_TCP,
                pad: 0,
            };
            services.insert(key, service(1, SVC_F_EXTERNAL), 0).unwrap();
            let value = BackendValue {
                addr: pod.octets(),
                port: BACKEND_PORT.to_be(),
                epoch: 0,
            };
            backends.insert(11, value, 0).unwrap();
            maglev.put(1, &vec![11; size]).unwrap();
            fp.nodeport
                .configure(&NodePortConfig {
                    snat_v4: [0; 16],
                    snat_v6: node.octets(),
                    node_v4: [0; 16],
                    node_v6: node.octets(),
                    maglev_table_size: maglev.size(),
                    flags: NODEPORT_F_ENABLED | gannet_common::NODEPORT_F_SNAT_V6,
                })
                .unwrap();
            let cases: Vec<Case> = vec![(
                "IPv6 NodePort, backend on this node: DNAT only, into the pod",
                tcp_v6(
                    EXT_MAC,
                    CLIENT_MAC,
                    client,
                    CLIENT_PORT,
                    node,
                    NODE_PORT,
                    64,
                    SYN,
                ),
                TC_ACT_REDIRECT,
                tcp_v6(
                    POD_MAC,
                    host_mac,
                    client,
                    CLIENT_PORT,
                    pod,
                    BACKEND_PORT,
                    63,
                    SYN,
                ),
            )];
            let mut failures = run_cases(fp.nodeport_program().unwrap(), cases);
            let cases: Vec<Case> = vec![(
                "its reply: from the frontend, out to the client",
                tcp_v6(
                    host_mac,
                    POD_MAC,
                    pod,
                    BACKEND_PORT,
                    client,
                    CLIENT_PORT,
                    64,
                    SYN_ACK,
                ),
                TC_ACT_REDIRECT,
                tcp_v6(
                    CLIENT_MAC,
                    EXT_MAC,
                    node,
                    NODE_PORT,
                    client,
                    CLIENT_PORT,
                    63,
                    SYN_ACK,
                ),
            )];
            failures.extend(run_cases_from(
                fp.from_pod_program().unwrap(),
                "hveth",
                cases,
            ));

            // UDP to an external IPv6 address without backends: ICMPv6 port unreachable.
            let external: std::net::Ipv6Addr = "fd00:99::201".parse().unwrap();
            let key = ServiceKey {
                addr: external.octets(),
                port: 53u16.to_be(),
                proto: PROTO_UDP,
                pad: 0,
            };
            services.insert(key, service(9, SVC_F_EXTERNAL), 0).unwrap();
            let datagram = udp(
                (EXT_MAC, CLIENT_MAC),
                (IpAddr::V6(client), CLIENT_PORT),
                (IpAddr::V6(external), 53),
            );
            let cases: Vec<Case> = vec![(
                "IPv6 UDP to an external IP without a backend: ICMPv6 port unreachable back",
                datagram.clone(),
                TC_ACT_REDIRECT,
                port_unreachable(&datagram, IpAddr::V6(external)),
            )];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The programs' flow hash (`hash` in `ebpf/programs/src/maglev.rs`), transcribed: `MurmurHash3`
/// rounds over the client address, the frontend, both ports as they lie in the packet (network
/// order, read as little-endian `u16`s) and the protocol. Only to predict which entry of a table
/// the program reads; if the two drift apart, the test below fails.
fn flow_hash(saddr: [u8; 16], daddr: [u8; 16], sport: u16, dport: u16, proto: u8) -> u32 {
    fn mix(h: u32, k: u32) -> u32 {
        let k = k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
        (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    }
    fn mix_address(mut h: u32, a: [u8; 16]) -> u32 {
        for word in a.chunks_exact(4) {
            h = mix(h, u32::from_le_bytes(word.try_into().unwrap()));
        }
        h
    }
    let mut h = mix_address(0x6761_6e6e, saddr);
    h = mix_address(h, daddr);
    let wire = |port: u16| u32::from(u16::from_le_bytes(port.to_be_bytes()));
    h = mix(h, (wire(sport) << 16) | wire(dport));
    h = mix(h, u32::from(proto));
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A table is stored two backend ids to a value: the program must read entry `hash % m` of it,
/// neither its neighbour nor another value. Every entry of the table names a backend of its own,
/// so the backend a new flow is tracked with says which entry the program read.
#[test]
fn the_program_reads_the_entry_the_flow_hashes_to() {
    let (ns, _pod_gateway) = fixture_netns();
    let bpf_root = BpfRoot::new();
    let failures = ns
        .run(|| {
            let Loaded {
                mut fp,
                mut maglev,
                size,
                mut services,
                mut backends,
            } = load(&bpf_root);
            const FIRST_ID: u32 = 1000;
            let m = u32::try_from(size).unwrap();
            let table: Vec<u32> = (0..m).map(|i| FIRST_ID + i).collect();
            for i in 0..m {
                let port = 9000 + u16::try_from(i).unwrap();
                backends
                    .insert(FIRST_ID + i, backend(REMOTE_POD, port), 0)
                    .unwrap();
            }
            services
                .insert(frontend(NODE, NODE_PORT), service(8, SVC_F_EXTERNAL), 0)
                .unwrap();
            maglev.put(8, &table).unwrap();
            assert_eq!(maglev.get(8), Some(table), "the table read back");
            fp.nodeport
                .configure(&NodePortConfig {
                    snat_v4: v4_mapped(SNAT.octets()),
                    snat_v6: [0; 16],
                    node_v4: v4_mapped(NODE.octets()),
                    node_v6: [0; 16],
                    maglev_table_size: m,
                    flags: NODEPORT_F_ENABLED | NODEPORT_F_SNAT_V4,
                })
                .unwrap();
            let mut failures = Vec::new();
            let (mut even, mut odd) = (0, 0);
            for port in 42000..42064u16 {
                let frame = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, port, NODE, NODE_PORT, 64, SYN);
                let mut out = vec![0u8; frame.len() + 64];
                let result = fp
                    .nodeport_program()
                    .unwrap()
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        data_out: Some(&mut out),
                        ..TestRunOptions::default()
                    })
                    .expect("BPF_PROG_TEST_RUN");
                let index = flow_hash(
                    v4_mapped(CLIENT.octets()),
                    v4_mapped(NODE.octets()),
                    port,
                    NODE_PORT,
                    PROTO_TCP,
                ) % m;
                if index.is_multiple_of(2) {
                    even += 1;
                } else {
                    odd += 1;
                }
                let tracked = fp.nodeport.conntrack_entries().into_iter().find(|(k, e)| {
                    e.flags & CT_F_REPLY == 0 && e.service_id == 8 && k.sport == port.to_be()
                });
                match tracked {
                    Some((_, entry)) if entry.backend_id == FIRST_ID + index => {}
                    other => failures.push(format!(
                        "client port {port}: verdict {}, expected entry {index} (backend {}), \
                         tracked {:?}",
                        result.return_value,
                        FIRST_ID + index,
                        other.map(|(_, e)| e.backend_id)
                    )),
                }
            }
            assert!(
                even > 0 && odd > 0,
                "the flows must hit both halves of the values ({even} even, {odd} odd entries)"
            );
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The tables through the real maps: many installed with one batch, read back through a memory
/// mapping, two ids to an 8-byte value; installs past the outer map's capacity fail one by one
/// and the rest still go in; removals (of missing tables too) and replacements in a batch.
#[test]
fn tables_are_installed_and_removed_in_batches() {
    let (ns, _pod_gateway) = fixture_netns();
    let bpf_root = BpfRoot::new();
    let failures = ns
        .run(|| {
            let Loaded {
                fp: _fp,
                mut maglev,
                size,
                ..
            } = load(&bpf_root);
            let m = u32::try_from(size).unwrap();
            let capacity = small_capacity().external;
            let table = |id: u32| -> Vec<u32> { (0..m).map(|i| id * 1000 + i % 7).collect() };
            let mut failures = Vec::new();

            // Six more than fit.
            for id in 1..=capacity + 6 {
                maglev.stage(id, &table(id)).unwrap();
            }
            assert_eq!(maglev.staged(), capacity as usize + 6);
            let started = std::time::Instant::now();
            let failed = maglev.flush();
            eprintln!("{} tables installed in {:?}", capacity, started.elapsed());
            assert_eq!(maglev.staged(), 0, "a flush leaves nothing staged");
            let failed_ids: Vec<u32> = failed.iter().map(|(id, _)| *id).collect();
            if failed_ids != (capacity + 1..=capacity + 6).collect::<Vec<_>>() {
                failures.push(format!(
                    "expected the 6 tables past the capacity to fail, failed: {failed:?}"
                ));
            }
            if maglev.service_ids() != (1..=capacity).collect() {
                failures.push(format!("installed: {:?}", maglev.service_ids()));
            }
            for id in [1, 2, capacity / 2, capacity] {
                if maglev.get(id) != Some(table(id)) {
                    failures.push(format!("table {id} read back wrong: {:?}", maglev.get(id)));
                }
            }

            // The layout: ceil(m / 2) values of 8 bytes, entry i in half i % 2 of value i / 2.
            let outer: aya::maps::HashOfMaps<MapData, u32, MapData> =
                aya::maps::HashOfMaps::try_from(Map::HashOfMaps(
                    MapData::from_pin(bpf_root.path().join("maps").join(map_names::MAGLEV))
                        .unwrap(),
                ))
                .unwrap();
            let info = outer.get(&3, 0).unwrap().info().unwrap();
            if (info.value_size(), info.max_entries()) != (8, m.div_ceil(2)) {
                failures.push(format!(
                    "inner map: values of {} bytes × {}, expected 8 × {}",
                    info.value_size(),
                    info.max_entries(),
                    m.div_ceil(2)
                ));
            }
            let inner = super::TableMap::try_from(Map::Array(outer.get(&3, 0).unwrap())).unwrap();
            let t = table(3);
            for (k, pair) in [0u32, 1, m / 2 - 1, m / 2]
                .into_iter()
                .map(|k| (k, inner.get(&k, 0).unwrap()))
            {
                let odd = t.get(2 * k as usize + 1).copied().unwrap_or(0);
                if pair != gannet_common::maglev_pack(t[2 * k as usize], odd) {
                    failures.push(format!("value {k} is {pair:#x}"));
                }
            }

            // Removals (one of a table that is not there) and a replacement, in one batch.
            for id in 1..=10 {
                maglev.stage_remove(id);
            }
            maglev.stage_remove(999);
            maglev.stage(11, &table(12)).unwrap();
            let failed = maglev.flush();
            if !failed.is_empty() {
                failures.push(format!("removals and a replacement failed: {failed:?}"));
            }
            if maglev.service_ids() != (11..=capacity).collect() {
                failures.push(format!("after removals: {:?}", maglev.service_ids()));
            }
            if maglev.get(11) != Some(table(12)) {
                failures.push("table 11 was not replaced".to_owned());
            }
            // One at a time, too.
            maglev.remove(11).unwrap();
            maglev.remove(11).unwrap();
            maglev.put(11, &table(11)).unwrap();
            if maglev.get(11) != Some(table(11)) {
                failures.push("table 11 was not put back".to_owned());
            }
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A pinned Maglev map of the older layout (one `u32` id per value) would make the programs fail
/// to load: it is replaced, and the tables work.
#[test]
fn an_older_pinned_maglev_map_is_replaced() {
    let (ns, _pod_gateway) = fixture_netns();
    let bpf_root = BpfRoot::new();
    let maps_dir = bpf_root.path().join("maps");
    std::fs::create_dir_all(&maps_dir).unwrap();
    let pin = maps_dir.join(map_names::MAGLEV);
    let size = small_capacity().maglev_table_size;
    // The old layout's outer map: BPF_MAP_CREATE of a hash of maps (13) whose template is an
    // array (2) of u32 values.
    let template = aya::maps::Array::<MapData, u32>::create(size, super::TABLE_FLAGS).unwrap();
    let mut attr = [0u32; 32];
    attr[..6].copy_from_slice(&[
        13,
        4,
        4,
        small_capacity().external,
        0,
        u32::try_from(template.map().fd().as_fd().as_raw_fd()).unwrap(),
    ]);
    // SAFETY: a zero-tailed `union bpf_attr` for BPF_MAP_CREATE (0).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "creating the old map: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel returned a new descriptor that we own.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) };
    MapData::from_fd(owned).unwrap().pin(&pin).unwrap();

    let failures = ns
        .run(|| {
            let Loaded {
                fp: _fp,
                mut maglev,
                size,
                ..
            } = load(&bpf_root);
            let mut failures = Vec::new();
            maglev.put(1, &vec![5; size]).unwrap();
            if maglev.get(1) != Some(vec![5; size]) {
                failures.push("the new map does not hold the table".to_owned());
            }
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A map of this layout stays.
    super::retire_incompatible_maglev(&maps_dir).unwrap();
    assert!(pin.exists(), "a pinned map of this layout must stay");
}

/// An Ethernet + IPv4 + UDP frame with [`TCP_PAYLOAD`] (the same 5 bytes), its IPv4 checksum
/// right and its UDP checksum right (`with_csum`; a computed 0 sent as 0xffff) or 0 (none).
#[expect(clippy::too_many_arguments, reason = "a fixture builder")]
fn udp_v4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    ttl: u8,
    with_csum: bool,
) -> Vec<u8> {
    let payload = crate::datapath::frame::TCP_PAYLOAD;
    let len = u16::try_from(8 + payload.len()).unwrap();
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    if with_csum {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, PROTO_UDP]);
        pseudo.extend_from_slice(&len.to_be_bytes());
        let csum = match fold(sum16(&udp, sum16(&pseudo, 0))) {
            0 => 0xffff,
            c => c,
        };
        udp[6..8].copy_from_slice(&csum.to_be_bytes());
    }
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, PROTO_UDP, 0, 0];
    ip[2..4].copy_from_slice(&(20 + len).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// `frame` (Ethernet + IPv4 without options) with four NOP options after its IPv4 header (its
/// header checksum recomputed; the transport checksum does not cover them).
fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let mut ip = frame[14..34].to_vec();
    ip[0] = 0x46;
    let total = u16::from_be_bytes([ip[2], ip[3]]) + 4;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[1, 1, 1, 1]);
    ip[10..12].copy_from_slice(&[0, 0]);
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut f = frame[..14].to_vec();
    f.extend_from_slice(&ip);
    f.extend_from_slice(&frame[34..]);
    f
}

/// The checksum cases the TCP fixtures do not reach, both directions of a flow translated (SNAT) to a pod
/// of another node: UDP with a checksum and without one (0 stays 0), and TCP over IPv4 with
/// options (its ports do not follow the addresses). Every output checksum is computed from
/// scratch by the fixture.
#[test]
fn nodeport_checksum_fixtures() {
    let (ns, _pod_gateway) = fixture_netns();
    let bpf_root = BpfRoot::new();
    let ext0 = ns
        .run(|| crate::sys::link_info("ext0").expect("ext0").0)
        .expect("running in the test netns");
    let failures = ns
        .run(|| {
            let Loaded {
                mut fp,
                mut maglev,
                size,
                mut services,
                mut backends,
            } = load(&bpf_root);
            let udp_frontend = ServiceKey {
                proto: PROTO_UDP,
                ..frontend(NODE, NODE_PORT)
            };
            services
                .insert(udp_frontend, service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT), service(3, SVC_F_EXTERNAL), 0)
                .unwrap();
            backends
                .insert(12, backend(REMOTE_POD, BACKEND_PORT), 0)
                .unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            maglev.put(3, &vec![12; size]).unwrap();
            fp.nodeport
                .configure(&NodePortConfig {
                    snat_v4: v4_mapped(SNAT.octets()),
                    snat_v6: [0; 16],
                    node_v4: v4_mapped(NODE.octets()),
                    node_v6: [0; 16],
                    maglev_table_size: maglev.size(),
                    flags: NODEPORT_F_ENABLED | NODEPORT_F_SNAT_V4,
                })
                .unwrap();
            // The SNAT port of the flow from `client_port`, from its reply entry.
            let snat_port = |fp: &PodFastPath, proto: u8, client_port: u16| {
                fp.nodeport
                    .conntrack_entries()
                    .iter()
                    .find(|(k, e)| {
                        e.flags & CT_F_REPLY != 0
                            && k.proto == proto
                            && e.dport == client_port.to_be()
                    })
                    .map(|(k, _)| u16::from_be(k.dport))
            };
            let mut failures = Vec::new();
            let mut check = |name: &str, got: (u32, Vec<u8>), expected: &[u8]| {
                if got.0 != TC_ACT_REDIRECT || got.1 != expected {
                    failures.push(format!(
                        "{name}: expected verdict {TC_ACT_REDIRECT} and\n  {expected:02x?}\n got {} and\n  {:02x?}",
                        got.0, got.1
                    ));
                }
            };
            let run = |fp: &mut PodFastPath, frame: &[u8]| {
                let (verdict, _, out) = timed_run(fp, false, ext0, frame, 1);
                (verdict, out)
            };
            for (client_port, with_csum) in [(40001, true), (40002, false)] {
                let what = if with_csum { "with a checksum" } else { "without a checksum" };
                let got = run(&mut fp, &udp_v4(
                    EXT_MAC, CLIENT_MAC, CLIENT, client_port, NODE, NODE_PORT, 64, with_csum,
                ));
                let Some(port) = snat_port(&fp, PROTO_UDP, client_port) else {
                    return vec![format!("UDP {what}: no SNAT reply entry")];
                };
                check(
                    &format!("UDP {what}: SNAT + DNAT"),
                    got,
                    &udp_v4(
                        OTHER_NODE_MAC, EXT_MAC, SNAT, port, REMOTE_POD, BACKEND_PORT, 63,
                        with_csum,
                    ),
                );
                let got = run(&mut fp, &udp_v4(
                    EXT_MAC, OTHER_NODE_MAC, REMOTE_POD, BACKEND_PORT, SNAT, port, 64, with_csum,
                ));
                check(
                    &format!("UDP {what}: the reply"),
                    got,
                    &udp_v4(
                        CLIENT_MAC, EXT_MAC, NODE, NODE_PORT, CLIENT, client_port, 63, with_csum,
                    ),
                );
            }
            let client_port = 40003;
            let got = run(&mut fp, &with_ip_options(&tcp_v4(
                EXT_MAC, CLIENT_MAC, CLIENT, client_port, NODE, NODE_PORT, 64, SYN,
            )));
            let Some(port) = snat_port(&fp, PROTO_TCP, client_port) else {
                return vec!["TCP with IP options: no SNAT reply entry".to_owned()];
            };
            check(
                "TCP with IP options: SNAT + DNAT",
                got,
                &with_ip_options(&tcp_v4(
                    OTHER_NODE_MAC, EXT_MAC, SNAT, port, REMOTE_POD, BACKEND_PORT, 63, SYN,
                )),
            );
            let got = run(&mut fp, &with_ip_options(&tcp_v4(
                EXT_MAC, OTHER_NODE_MAC, REMOTE_POD, BACKEND_PORT, SNAT, port, 64, SYN_ACK,
            )));
            check(
                "TCP with IP options: the reply",
                got,
                &with_ip_options(&tcp_v4(
                    CLIENT_MAC, EXT_MAC, NODE, NODE_PORT, CLIENT, client_port, 63, SYN_ACK,
                )),
            );
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The context of a tc test run arriving on `ifindex` (`struct __sk_buff` up to `ifindex`).
fn skb_md(ifindex: u32) -> [u8; 44] {
    let mut md = [0u8; 44];
    md[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    md[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    md
}

/// One test run of `frame`, `repeat` times: verdict, kernel time per repetition (ns), output.
fn timed_run(
    fp: &mut PodFastPath,
    xdp: bool,
    ifindex: u32,
    frame: &[u8],
    repeat: u32,
) -> (u32, f64, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 64];
    let skb = skb_md(ifindex);
    let md = xdp_md(frame.len(), ifindex);
    let options = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(if xdp { &md[..] } else { &skb[..] }),
        repeat,
        ..TestRunOptions::default()
    };
    let result = if xdp {
        fp.nodeport_xdp_program().unwrap().test_run(options)
    } else {
        fp.nodeport_program().unwrap().test_run(options)
    }
    .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, result.duration.as_nanos() as f64, out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What the hit path costs, two ways (a measurement, not a check: run it by hand on a quiet
/// machine, `cargo test -p gannet-agent --lib hit_path_cost -- --ignored --nocapture`):
///
/// - as `gannet-testrun` measures it: single runs of a tracked packet, minus the clock overhead
///   (a single `miss` run against repeated ones);
/// - warm, with `repeat`: a second, synthetic tracked flow translates the first one's output
///   back into its input (client → frontend → SNAT → backend → client → …), so every
///   repetition is a tracked packet with the full SNAT + DNAT rewrite, FIB lookup, TTL and MACs.
///   The frame starts with TTL 255 and runs 200 times; after an even number of repetitions it
///   must be the input again (TTL − 200, MACs of the frontend's neighbour), checksums verifying.
#[test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
fn hit_path_cost() {
    const FRONTEND: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
    const FRONTEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
    const LOOP_BACKEND: u32 = 99;
    const REPEAT: u32 = 200;
    const CALLS: usize = 20_000;
    let (ns, _pod_gateway) = fixture_netns();
    ns.ip(&[
        "neigh",
        "replace",
        "10.99.0.100",
        "lladdr",
        "02:00:00:00:00:64",
        "dev",
        "ext0",
        "nud",
        "permanent",
    ])
    .unwrap();
    let bpf_root = BpfRoot::new();
    let ext0 = ns
        .run(|| crate::sys::link_info("ext0").expect("ext0").0)
        .expect("running in the test netns");
    let report = ns
        .run(|| {
            let Loaded {
                mut fp,
                mut maglev,
                size,
                mut services,
                mut backends,
            } = load(&bpf_root);
            services
                .insert(frontend(FRONTEND, NODE_PORT), service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            backends.insert(12, backend(REMOTE_POD, BACKEND_PORT), 0).unwrap();
            backends.insert(LOOP_BACKEND, backend(FRONTEND, NODE_PORT), 0).unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            fp.nodeport
                .configure(&NodePortConfig {
                    snat_v4: v4_mapped(SNAT.octets()),
                    snat_v6: [0; 16],
                    node_v4: v4_mapped(NODE.octets()),
                    node_v6: [0; 16],
                    maglev_table_size: maglev.size(),
                    flags: NODEPORT_F_ENABLED | NODEPORT_F_SNAT_V4,
                })
                .unwrap();
            let mut conntrack: HashMap<MapData, gannet_common::CtKey, gannet_common::CtEntry> =
                pinned_hash(&bpf_root, map_names::CONNTRACK);
            let mut lines = Vec::new();
            for xdp in [false, true] {
                let name = if xdp { "xdp" } else { "tc" };
                // The flow, from its first packet.
                let syn = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, FRONTEND, NODE_PORT, 64, SYN);
                let (verdict, _, _) = timed_run(&mut fp, xdp, ext0, &syn, 1);
                let key = gannet_common::CtKey {
                    saddr: v4_mapped(CLIENT.octets()),
                    daddr: v4_mapped(FRONTEND.octets()),
                    sport: CLIENT_PORT.to_be(),
                    dport: NODE_PORT.to_be(),
                    proto: PROTO_TCP,
                    pad: [0; 3],
                };
                let entry = conntrack
                    .get(&key, 0)
                    .unwrap_or_else(|e| panic!("{name}: no entry after the SYN (verdict {verdict}): {e}"));
                // The synthetic flow: the translated packet, translated back.
                let back_key = gannet_common::CtKey {
                    saddr: entry.saddr,
                    daddr: entry.daddr,
                    sport: entry.sport,
                    dport: entry.dport,
                    proto: PROTO_TCP,
                    pad: [0; 3],
                };
                let back = gannet_common::CtEntry {
                    saddr: key.saddr,
                    daddr: key.daddr,
                    sport: key.sport,
                    dport: key.dport,
                    backend_id: LOOP_BACKEND,
                    ..entry
                };
                conntrack.insert(back_key, back, 0).unwrap();
                let ack = |ttl| {
                    tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, FRONTEND, NODE_PORT, ttl, 0x10)
                };
                let miss = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, NODE, 9, 64, 0x10);
                let mut single = Vec::new();
                let mut single_miss = Vec::new();
                let mut repeated_miss = Vec::new();
                let mut warm = Vec::new();
                let tracked = ack(64);
                let looped = ack(255);
                let mut verdicts = std::collections::BTreeMap::new();
                for call in 0..CALLS {
                    let (v, t, _) = timed_run(&mut fp, xdp, ext0, &tracked, 1);
                    *verdicts.entry(v).or_insert(0) += 1;
                    single.push(t);
                    single_miss.push(timed_run(&mut fp, xdp, ext0, &miss, 1).1);
                    if call % 10 == 0 {
                        repeated_miss.push(timed_run(&mut fp, xdp, ext0, &miss, 10_000).1);
                        let (v, t, out) = timed_run(&mut fp, xdp, ext0, &looped, REPEAT);
                        let mut expected = ack(255 - REPEAT as u8);
                        expected[..6].copy_from_slice(&FRONTEND_MAC);
                        expected[6..12].copy_from_slice(&EXT_MAC);
                        assert_eq!(
                            out, expected,
                            "{name}: the looped frame after {REPEAT} repetitions (verdict {v})"
                        );
                        warm.push(t);
                    }
                }
                let overhead = median(single_miss.clone()) - median(repeated_miss.clone());
                let mut sorted = warm.clone();
                sorted.sort_by(f64::total_cmp);
                lines.push(format!(
                    "{name}: tracked single {:.0} ns − overhead {:.0} = {:.0} ns (verdicts {verdicts:?}); \
                     warm (repeat {REPEAT}, looped) median {:.0} ns, p10 {:.0} ns; miss repeated {:.0} ns, \
                     single {:.0} ns",
                    median(single.clone()),
                    overhead,
                    median(single) - overhead,
                    median(warm),
                    sorted[sorted.len() / 10],
                    median(repeated_miss),
                    median(single_miss),
                ));
                let _ = conntrack.remove(&back_key);
                let _ = conntrack.remove(&key);
                for (k, e) in fp.nodeport.conntrack_entries() {
                    if e.flags & CT_F_REPLY != 0 {
                        let _ = conntrack.remove(&k);
                    }
                }
            }
            lines
        })
        .expect("running in the test netns");
    for line in report {
        println!("{line}");
    }
}
