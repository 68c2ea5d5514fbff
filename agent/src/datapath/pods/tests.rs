//! Packet fixtures for the pod programs, run through `BPF_PROG_TEST_RUN`: input frame →
//! expected verdict and expected output frame. They need root; everything happens in a
//! throw-away network namespace (the host veth the endpoint is added on lives there).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use gannet_common::{TUNNEL_F_ENABLED, TunnelConfig};
use gannet_testkit::{Netns, unique_name};

use super::{Endpoint, PodFastPath};
use crate::datapath::cleanup;
use crate::datapath::frame::ipv4_checksum;
use crate::overlay::ebpf::{TunnelMaps, value};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// `TC_ACT_UNSPEC` (-1), tcx's `TCX_NEXT`: not the program's business, the next program runs.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// A `--bpf-root` of the test's own under /sys/fs/bpf, removed on drop (also on panic).
pub(crate) struct BpfRoot(PathBuf);

impl BpfRoot {
    pub(crate) fn new() -> Self {
        Self(PathBuf::from("/sys/fs/bpf").join(unique_name("gannet-fix")))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        if let Err(e) = cleanup(&self.0) {
            eprintln!("cleaning up {}: {e}", self.0.display());
        }
    }
}

/// Map sizes for fixtures: small, so loading is quick.
pub(crate) fn small_capacity() -> super::PodCapacity {
    super::PodCapacity {
        endpoints: 64,
        conntrack: 1024,
        external: 64,
        maglev_table_size: 251,
        affinity: 64,
    }
}

/// A fixture: name, input frame, expected verdict, expected output frame.
pub(crate) type Case = (&'static str, Vec<u8>, u32, Vec<u8>);

/// Runs every case through `prog` (as received on the loopback device); returns a message per
/// failed case.
pub(crate) fn run_cases(prog: &mut SchedClassifier, cases: Vec<Case>) -> Vec<String> {
    run_cases_on(prog, None, cases)
}

/// Runs every case through `prog` as received on interface `ifname` of the calling thread's
/// namespace (a pod's host veth, for `gannet_from_pod`); returns a message per failed case.
pub(crate) fn run_cases_from(
    prog: &mut SchedClassifier,
    ifname: &str,
    cases: Vec<Case>,
) -> Vec<String> {
    let (ifindex, _) = crate::sys::link_info(ifname).expect("the interface exists");
    run_cases_on(prog, Some(ifindex), cases)
}

/// Offset of `ifindex` in `struct __sk_buff`, the context a tc test run takes: with it the
/// kernel runs the program as if the packet came in on that device.
const SKB_IFINDEX: usize = 40;

fn run_cases_on(prog: &mut SchedClassifier, ifindex: Option<u32>, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    let ctx = ifindex.map(|ifindex| {
        let mut ctx = [0u8; SKB_IFINDEX + 4];
        ctx[SKB_IFINDEX..].copy_from_slice(&ifindex.to_ne_bytes());
        ctx
    });
    for (name, input, verdict, expected) in cases {
        let mut out = vec![0u8; input.len() + 64];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ctx_in: ctx.as_ref().map(<[u8; SKB_IFINDEX + 4]>::as_slice),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        if result.return_value != verdict || out != expected {
            failures.push(format!(
                "{name}: expected verdict {verdict} and\n  {expected:02x?}\n got verdict {} and\n  {out:02x?}",
                result.return_value
            ));
        }
    }
    failures
}

/// A veth pair `hveth`/`pveth` in `ns`, up; returns the MAC of `hveth` (the pod's gateway).
pub(crate) fn host_veth(ns: &Netns) -> [u8; 6] {
    veth(ns, "hveth", "pveth")
}

/// A veth pair `host`/`peer` in `ns`, up; returns the MAC of `host`.
fn veth(ns: &Netns, host: &str, peer: &str) -> [u8; 6] {
    ns.ip(&["link", "add", host, "type", "veth", "peer", "name", peer])
        .unwrap();
    ns.ip(&["link", "set", host, "up"]).unwrap();
    let text = ns.ip(&["-br", "link", "show", host]).unwrap();
    text.split_whitespace()
        .nth(2)
        .unwrap()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

pub(crate) const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const GW_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];

/// The sender of the fixtures' frames: pod .11 on host veth `SENDER_VETH`.
const SENDER_VETH: &str = "sveth";
const SENDER_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);

/// Registers the fixtures' sender (pod .11, `fd00:244::11`) on a veth of its own; returns the
/// host veth's ifindex. Call inside the namespace.
fn add_sender(ns: &Netns, fp: &mut PodFastPath) -> u32 {
    veth(ns, SENDER_VETH, "spveth");
    fp.add(&Endpoint {
        host_ifname: SENDER_VETH.into(),
        mac: SRC_MAC,
        ips: vec![IpAddr::V4(SENDER_V4), "fd00:244::11".parse().unwrap()],
    })
    .expect("adding the sending endpoint")
}

fn frame_v4(dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    frame_v4_from(SENDER_V4, dst, ttl)
}

fn frame_v4_from(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let payload = b"\x30\x39\x1f\x90\x00\x0bhey"; // UDP 12345 → 8080
    let total = u16::try_from(20 + payload.len()).unwrap();
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

fn frame_v6(dst: Ipv6Addr, hop: u8) -> Vec<u8> {
    frame_v6_from("fd00:244::11".parse().unwrap(), dst, hop)
}

fn frame_v6_from(src: Ipv6Addr, dst: Ipv6Addr, hop: u8) -> Vec<u8> {
    ipv6(src, dst, 17, hop, b"\x30\x39\x1f\x90\x00\x0bhey")
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    f.extend_from_slice(&[next, hop]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

/// A neighbour advertisement for `target` (the program does not check the checksum).
fn advert(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    ipv6(src, "ff02::1".parse().unwrap(), 58, 255, &icmp)
}

/// An ARP request (who has 10.244.0.1) from sender address `spa`.
fn arp_request(spa: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&Ipv4Addr::new(10, 244, 0, 1).octets());
    f
}

/// The frame a router would deliver into the pod: MACs set, TTL/hop limit one less.
fn forwarded(f: Vec<u8>, host_mac: [u8; 6]) -> Vec<u8> {
    routed(f, POD_MAC, host_mac)
}

/// The frame a router would send on: MACs `dst` and `src`, TTL/hop limit one less.
fn routed(mut f: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    if f[12..14] == [0x08, 0x00] {
        f[22] -= 1;
        f[24..26].copy_from_slice(&[0, 0]);
        let csum = ipv4_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&csum.to_be_bytes());
    } else {
        f[21] -= 1;
    }
    f
}

#[test]
fn from_pod_fixtures() {
    let ns = Netns::new("fixture").expect("test netns");
    let host_mac = host_veth(&ns);
    let bpf_root = BpfRoot::new();

    let failures = ns
        .run(|| {
            let mut fp = PodFastPath::load(bpf_root.path(), &small_capacity())
                .expect("loading the pod programs");
            let ifindex = fp
                .add(&Endpoint {
                    host_ifname: "hveth".into(),
                    mac: POD_MAC,
                    ips: vec![
                        IpAddr::V4(Ipv4Addr::new(10, 244, 0, 12)),
                        "fd00:244::12".parse().unwrap(),
                    ],
                })
                .expect("adding the endpoint");

            let sender = add_sender(&ns, &mut fp);
            let pod4 = Ipv4Addr::new(10, 244, 0, 12);
            let pod6: Ipv6Addr = "fd00:244::12".parse().unwrap();
            let arp = arp_request(SENDER_V4);
            // (name, input, expected verdict, expected output)
            let cases: Vec<Case> = vec![
                (
                    "IPv4 to a pod of this node: redirected, MACs and TTL rewritten",
                    frame_v4(pod4, 64),
                    TC_ACT_REDIRECT,
                    forwarded(frame_v4(pod4, 64), host_mac),
                ),
                (
                    "IPv6 to a pod of this node: redirected, hop limit decremented",
                    frame_v6(pod6, 64),
                    TC_ACT_REDIRECT,
                    forwarded(frame_v6(pod6, 64), host_mac),
                ),
                (
                    "IPv4 elsewhere: not gannet's business (the next program, then the host stack), untouched",
                    frame_v4(Ipv4Addr::new(10, 244, 7, 7), 64),
                    TC_ACT_UNSPEC,
                    frame_v4(Ipv4Addr::new(10, 244, 7, 7), 64),
                ),
                (
                    "TTL 1: to the host stack (which answers with ICMP)",
                    frame_v4(pod4, 1),
                    TC_ACT_OK,
                    frame_v4(pod4, 1),
                ),
                (
                    "ARP: not gannet's business, untouched",
                    arp.clone(),
                    TC_ACT_UNSPEC,
                    arp,
                ),
            ];

            let mut failures = run_cases_from(fp.from_pod_program().unwrap(), SENDER_VETH, cases);
            // Every case came from the sender: the receiver's counters only saw the two
            // redirected packets.
            let stats = fp.stats(ifindex).expect("counters exist");
            if stats.rx_packets != 2 || stats.tx_packets != 0 {
                failures.push(format!(
                    "receiver's counters: expected 2 packets in, none out, got {stats:?}"
                ));
            }
            let stats = fp.stats(sender).expect("counters exist");
            if stats.tx_packets != 5 {
                failures.push(format!(
                    "sender's counters: expected 5 packets out, got {stats:?}"
                ));
            }
            let drops = fp.drops(sender);
            if drops != gannet_common::EndpointDrops::default() {
                failures.push(format!(
                    "the sender's own packets must pass, got drops {drops:?}"
                ));
            }
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The source check: a pod sends only from its own addresses (IPv6 link-local too), and ARP
/// and neighbour advertisements only for them; the rest is dropped and counted.
#[test]
fn from_pod_drops_what_a_pod_sends_from_addresses_not_its_own() {
    let ns = Netns::new("fixture").expect("test netns");
    let host_mac = host_veth(&ns);
    let bpf_root = BpfRoot::new();

    let failures = ns
        .run(|| {
            let mut fp = PodFastPath::load(bpf_root.path(), &small_capacity())
                .expect("loading the pod programs");
            let sender = add_sender(&ns, &mut fp);
            let pod4 = Ipv4Addr::new(10, 244, 0, 12);
            let pod6: Ipv6Addr = "fd00:244::12".parse().unwrap();
            let victim = fp
                .add(&Endpoint {
                    host_ifname: "hveth".into(),
                    mac: POD_MAC,
                    ips: vec![IpAddr::V4(pod4), IpAddr::V6(pod6)],
                })
                .expect("adding the endpoint");
            let own6: Ipv6Addr = "fd00:244::11".parse().unwrap();
            let link_local: Ipv6Addr = "fe80::11".parse().unwrap();
            let elsewhere = Ipv4Addr::new(10, 244, 7, 7);
            let unchanged =
                |name, input: Vec<u8>, verdict| -> Case { (name, input.clone(), verdict, input) };
            let to = |last: u16| Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, last);
            let cases: Vec<Case> = vec![
                unchanged(
                    "IPv4 from another pod's address (to a third pod): dropped",
                    frame_v4_from(pod4, Ipv4Addr::new(10, 244, 0, 13), 64),
                    TC_ACT_SHOT,
                ),
                unchanged(
                    "IPv4 from an address no pod has: dropped",
                    frame_v4_from(Ipv4Addr::new(10, 244, 0, 99), elsewhere, 64),
                    TC_ACT_SHOT,
                ),
                unchanged(
                    "IPv4 from the victim's address to the victim itself: dropped",
                    frame_v4_from(pod4, pod4, 64),
                    TC_ACT_SHOT,
                ),
                unchanged(
                    "IPv6 from another pod's address: dropped",
                    frame_v6_from(pod6, to(0x13), 64),
                    TC_ACT_SHOT,
                ),
                unchanged(
                    "IPv6 link-local to the gateway: the host stack's, not gannet's business",
                    frame_v6_from(link_local, "fe80::1".parse().unwrap(), 64),
                    TC_ACT_UNSPEC,
                ),
                unchanged(
                    "IPv6 link-local to another pod: not redirected (the host stack does not \
                     forward it)",
                    frame_v6_from(link_local, pod6, 64),
                    TC_ACT_UNSPEC,
                ),
                unchanged(
                    "ARP for the pod's own address: passed",
                    arp_request(SENDER_V4),
                    TC_ACT_UNSPEC,
                ),
                unchanged(
                    "ARP probe (sender 0.0.0.0): passed",
                    arp_request(Ipv4Addr::UNSPECIFIED),
                    TC_ACT_UNSPEC,
                ),
                unchanged(
                    "ARP claiming another pod's address: dropped",
                    arp_request(pod4),
                    TC_ACT_SHOT,
                ),
                unchanged(
                    "neighbour advertisement of the pod's own address: passed",
                    advert(own6, own6),
                    TC_ACT_UNSPEC,
                ),
                unchanged(
                    "neighbour advertisement of the pod's link-local address: passed",
                    advert(link_local, link_local),
                    TC_ACT_UNSPEC,
                ),
                unchanged(
                    "neighbour advertisement of another pod's address, from link-local: dropped",
                    advert(link_local, pod6),
                    TC_ACT_SHOT,
                ),
                unchanged(
                    "neighbour advertisement of another pod's address, from the pod's own: \
                     dropped",
                    advert(own6, pod6),
                    TC_ACT_SHOT,
                ),
                (
                    "and the pod's own traffic still takes the fast path",
                    frame_v4(pod4, 64),
                    TC_ACT_REDIRECT,
                    forwarded(frame_v4(pod4, 64), host_mac),
                ),
            ];
            let mut failures = run_cases_from(fp.from_pod_program().unwrap(), SENDER_VETH, cases);
            let drops = fp.drops(sender);
            let expected = gannet_common::EndpointDrops {
                source: 4,
                neighbour: 3,
            };
            if drops != expected {
                failures.push(format!(
                    "sender's drops: expected {expected:?}, got {drops:?}"
                ));
            }
            if fp.drops(victim) != gannet_common::EndpointDrops::default() {
                failures.push(format!(
                    "the victim dropped nothing: {:?}",
                    fp.drops(victim)
                ));
            }
            let stats = fp.stats(victim).expect("counters exist");
            if stats.rx_packets != 1 {
                failures.push(format!(
                    "only the sender's own packet reached the victim, got {stats:?}"
                ));
            }
            // The drop counters go with the endpoint.
            fp.remove(sender).expect("removing the sender");
            if fp.drops(sender) != gannet_common::EndpointDrops::default() {
                failures.push("the sender's drop counters must go with it".to_owned());
            }
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const NODE_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x02];
const TUNNEL_MAC: [u8; 6] = [0x0e, 0, 0, 0, 0, 0x01];

/// `--overlay ebpf`: a pod's packet for another node's pod CIDR is routed into the VXLAN device;
/// a decapsulated packet for a pod of this node goes into the pod.
///
/// What `BPF_PROG_TEST_RUN` cannot show: the tunnel key `gannet_from_pod` sets (the test skb
/// goes nowhere, and no helper reads another program's key back here; the key's success is
/// part of the verdict: a failing `bpf_skb_set_tunnel_key` would turn it into `TC_ACT_SHOT`),
/// and the VNI check of `gannet_from_tunnel` (a test skb carries no tunnel key, so the program
/// judges it by its inner header alone, as documented there). Both are exercised by a real
/// cross-node exchange.
#[test]
fn tunnel_fixtures() {
    let ns = Netns::new("fixture").expect("test netns");
    let host_mac = host_veth(&ns);
    let bpf_root = BpfRoot::new();

    let failures = ns
        .run(|| {
            let mut fp = PodFastPath::load(bpf_root.path(), &small_capacity())
                .expect("loading the pod programs");
            add_sender(&ns, &mut fp);
            let pod4 = Ipv4Addr::new(10, 244, 0, 12);
            fp.add(&Endpoint {
                host_ifname: "hveth".into(),
                mac: POD_MAC,
                ips: vec![IpAddr::V4(pod4)],
            })
            .expect("adding the endpoint");
            let mut maps = TunnelMaps::open(bpf_root.path()).expect("opening the tunnel maps");
            let node_ip: IpAddr = "10.99.0.12".parse().unwrap();
            for cidr in ["10.244.2.0/24", "fd00:244:2::/64"] {
                maps.put(cidr.parse().unwrap(), &value(node_ip, NODE_MAC))
                    .expect("writing the node map");
            }
            assert_eq!(maps.list().expect("listing the node map").len(), 2);
            let enabled = TunnelConfig {
                // bpf_redirect only records the ifindex; the test run sends nothing.
                ifindex: 1,
                vni: 1,
                mac: TUNNEL_MAC,
                flags: TUNNEL_F_ENABLED,
            };
            maps.set_config(&enabled)
                .expect("writing the tunnel settings");

            let remote4 = Ipv4Addr::new(10, 244, 2, 7);
            let remote6: Ipv6Addr = "fd00:244:2::7".parse().unwrap();
            let elsewhere = Ipv4Addr::new(10, 245, 0, 1);
            let cases: Vec<Case> = vec![
                (
                    "IPv4 to another node's pod: into the tunnel, MACs and TTL rewritten",
                    frame_v4(remote4, 64),
                    TC_ACT_REDIRECT,
                    routed(frame_v4(remote4, 64), NODE_MAC, TUNNEL_MAC),
                ),
                (
                    "IPv6 to another node's pod: into the tunnel, hop limit decremented",
                    frame_v6(remote6, 64),
                    TC_ACT_REDIRECT,
                    routed(frame_v6(remote6, 64), NODE_MAC, TUNNEL_MAC),
                ),
                (
                    "IPv4 in no map: not gannet's business, untouched",
                    frame_v4(elsewhere, 64),
                    TC_ACT_UNSPEC,
                    frame_v4(elsewhere, 64),
                ),
                (
                    "TTL 1 to another node's pod: to the host stack (which answers with ICMP)",
                    frame_v4(remote4, 1),
                    TC_ACT_OK,
                    frame_v4(remote4, 1),
                ),
                (
                    "IPv4 to a pod of this node: still straight into it",
                    frame_v4(pod4, 64),
                    TC_ACT_REDIRECT,
                    forwarded(frame_v4(pod4, 64), host_mac),
                ),
            ];
            let mut failures = run_cases_from(fp.from_pod_program().unwrap(), SENDER_VETH, cases);

            let cases: Vec<Case> = vec![
                (
                    "from the tunnel to a pod of this node: into it, MACs and TTL rewritten",
                    frame_v4(pod4, 64),
                    TC_ACT_REDIRECT,
                    forwarded(frame_v4(pod4, 64), host_mac),
                ),
                (
                    "from the tunnel to no pod of this node: not gannet's business, untouched",
                    frame_v4(remote4, 64),
                    TC_ACT_UNSPEC,
                    frame_v4(remote4, 64),
                ),
            ];
            failures.extend(run_cases(fp.from_tunnel_program().unwrap(), cases));

            maps.set_config(&TunnelConfig::default())
                .expect("disabling the tunnel");
            let cases: Vec<Case> = vec![(
                "tunnel disabled: another node's pod is not gannet's business, untouched",
                frame_v4(remote4, 64),
                TC_ACT_UNSPEC,
                frame_v4(remote4, 64),
            )];
            failures.extend(run_cases_from(
                fp.from_pod_program().unwrap(),
                SENDER_VETH,
                cases,
            ));
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
