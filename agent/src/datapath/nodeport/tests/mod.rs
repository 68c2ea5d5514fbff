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

mod checksums;
mod cost;
mod dsr;
mod ipv4;
mod ipv6;
mod maglev;
mod snat;
mod xdp;

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

/// Where every fixture runs: the fixtures' node ([`fixture_netns`]) with a bpffs root of its own,
/// the pod programs loaded in it by [`with_programs`](Self::with_programs).
struct FixtureNode {
    ns: Netns,
    /// The MAC of the pod veth's host side.
    host_mac: [u8; 6],
    bpf_root: BpfRoot,
}

impl FixtureNode {
    fn new() -> FixtureNode {
        let (ns, host_mac) = fixture_netns();
        FixtureNode {
            ns,
            host_mac,
            bpf_root: BpfRoot::new(),
        }
    }

    /// The interface index of `ext0`, the external interface.
    fn ext0(&self) -> u32 {
        self.ns
            .run(|| crate::sys::link_info("ext0").expect("ext0").0)
            .expect("running in the test netns")
    }

    /// Runs `f` in the node with the pod programs loaded ([`load`]).
    fn with_programs<R: Send>(&self, f: impl FnOnce(Loaded) -> R + Send) -> R {
        self.with_capacity(&small_capacity(), f)
    }

    /// Like [`with_programs`](Self::with_programs), the maps sized by `capacity`.
    fn with_capacity<R: Send>(
        &self,
        capacity: &PodCapacity,
        f: impl FnOnce(Loaded) -> R + Send,
    ) -> R {
        self.ns
            .run(|| f(load_with(&self.bpf_root, capacity)))
            .expect("running in the test netns")
    }
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

/// Turns the NodePort program on as most fixtures want it: this node's IPv4 address, SNAT to the
/// overlay address for backends elsewhere, Maglev tables of `table_size`, plus `extra` flags
/// (`NODEPORT_F_DSR`).
fn enable_v4(fp: &mut PodFastPath, table_size: u32, extra: u32) {
    fp.nodeport
        .configure(&NodePortConfig {
            snat_v4: v4_mapped(SNAT.octets()),
            snat_v6: [0; 16],
            node_v4: v4_mapped(NODE.octets()),
            node_v6: [0; 16],
            maglev_table_size: table_size,
            flags: NODEPORT_F_ENABLED | NODEPORT_F_SNAT_V4 | extra,
        })
        .expect("configuring the NodePort program");
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
