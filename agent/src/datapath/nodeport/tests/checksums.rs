//! Checksum cases the TCP fixtures do not reach: UDP with and without a checksum, IPv4 options.

use super::*;

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
    let node = FixtureNode::new();
    let ext0 = node.ext0();
    let failures = node.with_programs(|Loaded {
            mut fp,
            mut maglev,
            size,
            mut services,
            mut backends,
        }| {
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
            enable_v4(&mut fp, maglev.size(), 0);
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
        });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
