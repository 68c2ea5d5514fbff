//! Packet fixtures for `gannet_nodeport` and the reply path of `gannet_from_pod`, through
//! `BPF_PROG_TEST_RUN`: input frame → expected verdict and expected output frame (addresses,
//! ports, MACs, TTL and both checksums recomputed from scratch by the fixture). Everything runs
//! in a throw-away network namespace with an "external" interface whose neighbours are static.

use std::net::{IpAddr, Ipv4Addr};

use aya::maps::{HashMap, Map, MapData};
use gannet_common::{
    BackendValue, CT_F_REPLY, CT_F_SNAT, NODEPORT_F_ENABLED, NODEPORT_F_SNAT_V4, NodePortConfig,
    PROTO_TCP, SNAT_PORT_MAX, SNAT_PORT_MIN, SVC_F_EXTERNAL, ServiceKey, ServiceValue, map_names,
    v4_mapped,
};
use gannet_testkit::Netns;

use crate::datapath::frame::tcp_v4;
use crate::datapath::pods::{
    Endpoint, PodFastPath,
    tests::{BpfRoot, Case, POD_MAC, host_veth, run_cases, small_capacity},
};

const TC_ACT_OK: u32 = 0;
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
        pad: [0; 2],
    }
}

/// NodePort to a pod of this node (client address kept), its reply back through the pod's veth,
/// NodePort to a pod of another node (SNAT to the overlay address), misses and a frontend without
/// backends.
#[test]
fn nodeport_fixtures() {
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
    let bpf_root = BpfRoot::new();

    let failures = ns
        .run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enabling forwarding");
            let mut fp = PodFastPath::load(bpf_root.path(), &small_capacity())
                .expect("loading the pod programs");
            fp.add(&Endpoint {
                host_ifname: "hveth".into(),
                mac: POD_MAC,
                ips: vec![IpAddr::V4(POD)],
            })
            .expect("adding the endpoint");
            let mut maglev = fp.take_maglev().expect("the Maglev tables");
            let size = maglev.size() as usize;
            let mut services =
                pinned_hash::<ServiceKey, ServiceValue>(&bpf_root, map_names::SERVICES);
            let mut backends = pinned_hash::<u32, BackendValue>(&bpf_root, map_names::BACKENDS);
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
            failures.extend(run_cases(fp.from_pod_program().unwrap(), cases));

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
            if stats.new_flows != 2 || stats.no_backend != 1 || stats.replies != 2 {
                failures.push(format!("counters: {stats:?}"));
            }
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
