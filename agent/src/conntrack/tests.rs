//! The wire format against hand-written bytes, the parser against malformed input, and
//! [`delete_flows`] against the real kernel: in a network namespace of the test's own, an
//! nftables table of its own DNATs UDP and TCP flows to backends, so that real conntrack
//! entries exist, and the test checks that exactly the ones of one frontend and backend go.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use gannet_testkit::{Netns, spawn};

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// A UDP entry `client → frontend` that DNAT sent to `backend`.
fn udp_entry(client: &str, frontend: &str, backend: &str) -> Entry {
    let (client, frontend, backend) = (addr(client), addr(frontend), addr(backend));
    Entry {
        orig: Tuple {
            src: client.ip(),
            dst: frontend.ip(),
            proto: IPPROTO_UDP,
            src_port: Some(client.port()),
            dst_port: Some(frontend.port()),
            zone: None,
        },
        reply: Tuple {
            src: backend.ip(),
            dst: client.ip(),
            proto: IPPROTO_UDP,
            src_port: Some(backend.port()),
            dst_port: Some(client.port()),
            zone: None,
        },
        zone: None,
        id: Some([0xde, 0xad, 0xbe, 0xef]),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire format, no kernel.

/// Spelled out little-endian: netlink headers are in host byte order.
#[test]
#[cfg(target_endian = "little")]
fn delete_request_bytes() {
    let mut entry = udp_entry("10.0.0.1:40001", "10.96.0.10:53", "10.0.0.2:5353");
    entry.zone = Some(7);
    let got = delete_request(9, AF_INET, &entry);
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        // nlmsghdr: length 88, type (1 << 8) | 2, flags REQUEST | ACK, seq 9, pid 0
        88, 0, 0, 0,  0x02, 0x01,  0x05, 0x00,  9, 0, 0, 0,  0, 0, 0, 0,
        // nfgenmsg: AF_INET, version 0, res_id 0
        2, 0, 0, 0,
        // CTA_TUPLE_ORIG (nested), 52 bytes
        52, 0, 0x01, 0x80,
            // CTA_TUPLE_IP (nested), 20 bytes: V4_SRC, V4_DST
            20, 0, 0x01, 0x80,
                8, 0, 1, 0,  10, 0, 0, 1,
                8, 0, 2, 0,  10, 96, 0, 10,
            // CTA_TUPLE_PROTO (nested), 28 bytes: NUM 17, SRC_PORT 40001, DST_PORT 53
            28, 0, 0x02, 0x80,
                5, 0, 1, 0,  17, 0, 0, 0,
                6, 0, 2, 0,  0x9c, 0x41, 0, 0,
                6, 0, 3, 0,  0, 53, 0, 0,
        // CTA_ZONE 7 (big endian)
        6, 0, 18, 0,  0, 7, 0, 0,
        // CTA_ID, as received
        8, 0, 12, 0,  0xde, 0xad, 0xbe, 0xef,
    ];
    assert_eq!(got, want, "delete request for {entry}");
}

/// Spelled out little-endian: netlink headers are in host byte order.
#[test]
#[cfg(target_endian = "little")]
fn dump_request_filters_ports_everywhere_and_addresses_in_ipv4_only() {
    let v4 = Selector::new(17, addr("10.96.0.10:53"), addr("10.0.0.2:5353")).unwrap();
    let got = dump_request(3, AF_INET, Some(&v4));
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        // nlmsghdr: type (1 << 8) | 1, flags REQUEST | DUMP
        112, 0, 0, 0,  0x01, 0x01,  0x01, 0x03,  3, 0, 0, 0,  0, 0, 0, 0,
        2, 0, 0, 0,
        // CTA_TUPLE_ORIG { IP { V4_DST }, PROTO { NUM, DST_PORT } }
        36, 0, 0x01, 0x80,
            12, 0, 0x01, 0x80,  8, 0, 2, 0,  10, 96, 0, 10,
            20, 0, 0x02, 0x80,  5, 0, 1, 0,  17, 0, 0, 0,  6, 0, 3, 0,  0, 53, 0, 0,
        // CTA_TUPLE_REPLY { IP { V4_SRC }, PROTO { NUM, SRC_PORT } }
        36, 0, 0x02, 0x80,
            12, 0, 0x01, 0x80,  8, 0, 1, 0,  10, 0, 0, 2,
            20, 0, 0x02, 0x80,  5, 0, 1, 0,  17, 0, 0, 0,  6, 0, 2, 0,  0x14, 0xe9, 0, 0,
        // CTA_FILTER { ORIG_FLAGS IP_DST | PROTO_NUM | DST_PORT, REPLY_FLAGS IP_SRC | PROTO_NUM | SRC_PORT }
        20, 0, 25, 0x80,
            8, 0, 1, 0,  0b10_1010, 0, 0, 0,
            8, 0, 2, 0,  0b01_1001, 0, 0, 0,
    ];
    assert_eq!(got, want, "IPv4 dump request");

    let v6 = Selector::new(17, addr("[fd00:96::10]:53"), addr("[fd00:c7::2]:5353")).unwrap();
    let got = dump_request(4, AF_INET6, Some(&v6));
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        88, 0, 0, 0,  0x01, 0x01,  0x01, 0x03,  4, 0, 0, 0,  0, 0, 0, 0,
        10, 0, 0, 0,
        24, 0, 0x01, 0x80,
            20, 0, 0x02, 0x80,  5, 0, 1, 0,  17, 0, 0, 0,  6, 0, 3, 0,  0, 53, 0, 0,
        24, 0, 0x02, 0x80,
            20, 0, 0x02, 0x80,  5, 0, 1, 0,  17, 0, 0, 0,  6, 0, 2, 0,  0x14, 0xe9, 0, 0,
        20, 0, 25, 0x80,
            8, 0, 1, 0,  0b10_1000, 0, 0, 0,
            8, 0, 2, 0,  0b01_1000, 0, 0, 0,
    ];
    assert_eq!(got, want, "IPv6 dump request (no address filter)");

    let all = dump_request(5, AF_INET6, None);
    assert_eq!(
        all.len(),
        NLMSG_HDRLEN + NFGENMSG_LEN,
        "a plain dump has no attributes"
    );
}

/// A dump message as the kernel writes it for `entry` (`ctnetlink_fill_info`, abridged: the
/// tuples, zone, id, and a status and a nested protoinfo that the parser must skip).
fn kernel_message(entry: &Entry) -> Vec<u8> {
    let family = family_of(entry.orig.src);
    let mut req = Request::new(IPCTNL_MSG_CT_NEW, 0, 1, family);
    for (kind, tuple) in [
        (CTA_TUPLE_ORIG, &entry.orig),
        (CTA_TUPLE_REPLY, &entry.reply),
    ] {
        req.nest(kind, |req| {
            put_tuple_ip(req, Some(tuple.src), Some(tuple.dst));
            put_tuple_proto(req, tuple.proto, tuple.src_port, tuple.dst_port);
            if let Some(zone) = tuple.zone {
                req.put(CTA_TUPLE_ZONE, &zone.to_be_bytes());
            }
        });
    }
    if let Some(zone) = entry.zone {
        req.put(CTA_ZONE, &zone.to_be_bytes());
    }
    req.put(3, &0x18u32.to_be_bytes()); // CTA_STATUS
    req.nest(4, |req| req.nest(1, |req| req.put(1, &[3]))); // CTA_PROTOINFO { TCP { STATE } }
    if let Some(id) = entry.id {
        req.put(CTA_ID, &id);
    }
    req.finish()
}

#[test]
fn parses_what_the_kernel_sends() {
    let mut v6 = udp_entry("[fd00::1]:40001", "[fd00:96::10]:53", "[fd00:c7::2]:5353");
    v6.orig.zone = Some(3);
    v6.id = None;
    for entry in [
        udp_entry("10.0.0.1:40001", "10.96.0.10:53", "10.0.0.2:5353"),
        v6,
    ] {
        let message = kernel_message(&entry);
        let parsed: Vec<Message<'_>> = messages(&message).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed.len(), 1, "one message in {message:?}");
        assert_eq!(parse_entry(parsed[0].payload), Ok(entry.clone()));
    }
}

#[test]
fn an_icmp_entry_parses_without_ports_and_matches_nothing() {
    let mut entry = udp_entry("10.0.0.1:1", "10.96.0.10:53", "10.0.0.2:5353");
    for tuple in [&mut entry.orig, &mut entry.reply] {
        tuple.proto = 1;
        tuple.src_port = None;
        tuple.dst_port = None;
    }
    let message = kernel_message(&entry);
    let msg = messages(&message).next().unwrap().unwrap();
    let parsed = parse_entry(msg.payload).unwrap();
    assert_eq!(parsed, entry);
    let selector = Selector::new(17, addr("10.96.0.10:53"), addr("10.0.0.2:5353")).unwrap();
    assert!(!selector.matches(&parsed), "{parsed} matched");
}

#[test]
fn the_selector_wants_protocol_frontend_and_backend() {
    let selector = Selector::new(17, addr("10.96.0.10:53"), addr("10.0.0.2:5353")).unwrap();
    let hit = udp_entry("10.0.0.1:40001", "10.96.0.10:53", "10.0.0.2:5353");
    assert!(selector.matches(&hit), "{hit}");
    let misses = [
        udp_entry("10.0.0.1:40001", "10.96.0.11:53", "10.0.0.2:5353"),
        udp_entry("10.0.0.1:40001", "10.96.0.10:54", "10.0.0.2:5353"),
        udp_entry("10.0.0.1:40001", "10.96.0.10:53", "10.0.0.3:5353"),
        udp_entry("10.0.0.1:40001", "10.96.0.10:53", "10.0.0.2:5354"),
        {
            let mut tcp = hit.clone();
            tcp.orig.proto = IPPROTO_TCP;
            tcp.reply.proto = IPPROTO_TCP;
            tcp
        },
    ];
    for miss in misses {
        assert!(!selector.matches(&miss), "{miss} matched");
    }
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        delete_flows(17, addr("10.96.0.10:53"), addr("[fd00::2]:53")),
        Err(ConntrackError::FamilyMismatch { .. })
    ));
    assert!(matches!(
        delete_flows(1, addr("10.96.0.10:53"), addr("10.0.0.2:53")),
        Err(ConntrackError::UnsupportedProtocol(1))
    ));
}

#[test]
fn malformed_input_is_an_error_never_a_panic() {
    let entry = udp_entry("10.0.0.1:40001", "10.96.0.10:53", "10.0.0.2:5353");
    let message = kernel_message(&entry);
    let payload = &message[NLMSG_HDRLEN..];

    // Every truncation: the message iterator and the entry parser report, they never panic.
    for cut in 0..message.len() {
        let _ = messages(&message[..cut]).count();
        let _ = parse_entry(&payload[..cut.min(payload.len())]);
    }
    assert!(messages(&message[..10]).next().unwrap().is_err());

    // Every single-byte corruption of the entry, into a few telling values.
    for at in 0..payload.len() {
        for value in [0, 1, 3, 4, 0x7f, 0xff] {
            let mut bad = payload.to_vec();
            bad[at] = value;
            let _ = parse_entry(&bad);
        }
    }

    // Pseudo-random bytes (a fixed xorshift, so failures reproduce).
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..2000 {
        let mut junk = vec![0u8; usize::try_from(state % 96).unwrap()];
        for byte in &mut junk {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state.to_le_bytes()[0];
        }
        let _ = messages(&junk).count();
        let _ = parse_entry(&junk);
    }

    // Specific lies: an attribute shorter than its header, or longer than what is left, an
    // address of the wrong size, a tuple without addresses.
    let nfgen = [2u8, 0, 0, 0];
    let cases: [(&str, Vec<u8>); 4] = [
        ("short attribute", [&nfgen[..], &[2, 0, 1, 0x80]].concat()),
        (
            "long attribute",
            [&nfgen[..], &[200, 0, 1, 0x80, 0, 0]].concat(),
        ),
        (
            "3-byte address",
            [
                &nfgen[..],
                &[16, 0, 1, 0x80, 12, 0, 1, 0x80, 7, 0, 1, 0, 10, 0, 0, 0],
            ]
            .concat(),
        ),
        (
            "no addresses",
            [
                &nfgen[..],
                &[16, 0, 1, 0x80, 12, 0, 2, 0x80, 5, 0, 1, 0, 17, 0, 0, 0],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        assert!(parse_entry(&bytes).is_err(), "{what}: {bytes:?} parsed");
    }
}

/// Spelled out little-endian: netlink headers are in host byte order.
#[test]
#[cfg(target_endian = "little")]
fn errors_carry_the_errno_and_the_kernels_message() {
    // NLMSG_ERROR -EINVAL, capped, with an extended-ack message.
    #[rustfmt::skip]
    let payload: Vec<u8> = [
        &(-22i32).to_ne_bytes()[..],
        &[20, 0, 0, 0,  0x02, 0x01,  0x05, 0x00,  9, 0, 0, 0,  0, 0, 0, 0],
        &[12, 0, 1, 0], b"bad tup\0",
    ]
    .concat();
    let msg = Message {
        kind: NLMSG_ERROR,
        flags: NLM_F_CAPPED | NLM_F_ACK_TLVS,
        seq: 9,
        payload: &payload,
    };
    let (err, message) = parse_error(&msg).unwrap().expect("an error");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(message.as_deref(), Some("bad tup"));

    let ack = 0i32.to_ne_bytes();
    let msg = Message {
        kind: NLMSG_ERROR,
        flags: 0,
        seq: 9,
        payload: &ack,
    };
    assert!(parse_error(&msg).unwrap().is_none(), "0 is an ack");
    let msg = Message {
        payload: &ack[..2],
        ..msg
    };
    assert!(parse_error(&msg).is_err(), "2 bytes are no error code");
}

// ---------------------------------------------------------------------------------------------
// The real kernel, in a network namespace of the test's own.

/// The addresses of one family's scenario.
struct Lab {
    /// `ip addr add` arguments for the client and the two backends, on the veth device.
    addresses: [&'static str; 3],
    /// The service range, routed to the veth device.
    services: &'static str,
    client: &'static str,
    /// Frontend, second frontend.
    svc: &'static str,
    svc2: &'static str,
    /// Backend 1 (the one removed), backend 2.
    b1: &'static str,
    b2: &'static str,
    /// nftables family and address keyword.
    nft_family: &'static str,
    nft_addr: &'static str,
    /// The client ports of the UDP entries the kernel's dump filter lets through for the
    /// frontend and b1: the exact ones in IPv4; in IPv6, where the filter has no addresses,
    /// every `udp dport 53` whose reply comes from port 5353 (C and E as well).
    kernel_filtered: &'static [u16],
}

const V4: Lab = Lab {
    addresses: ["10.0.0.1/24", "10.0.0.2/24", "10.0.0.3/24"],
    services: "10.96.0.0/24",
    client: "10.0.0.1",
    svc: "10.96.0.10",
    svc2: "10.96.0.11",
    b1: "10.0.0.2",
    b2: "10.0.0.3",
    nft_family: "ip",
    nft_addr: "ip",
    kernel_filtered: &[40001, 40002, 40007, 40008],
};

const V6: Lab = Lab {
    addresses: ["fd00:c7::1/64", "fd00:c7::2/64", "fd00:c7::3/64"],
    services: "fd00:96::/64",
    client: "fd00:c7::1",
    svc: "fd00:96::10",
    svc2: "fd00:96::11",
    b1: "fd00:c7::2",
    b2: "fd00:c7::3",
    nft_family: "ip6",
    nft_addr: "ip6",
    kernel_filtered: &[40001, 40002, 40003, 40005, 40007, 40008],
};

impl Lab {
    fn sa(&self, ip_: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip(ip_), port)
    }

    /// nft's spelling of `ip:port` (`[v6]:port`).
    fn nft_sa(&self, ip_: &str, port: u16) -> String {
        self.sa(ip_, port).to_string()
    }

    /// The test table: which client source port goes to which backend, and which flows live
    /// in a conntrack zone (40007 in zone 5, 40008 in zone 6 in the original direction only).
    fn ruleset(&self) -> String {
        let (a, svc, svc2) = (self.nft_addr, self.svc, self.svc2);
        let b1 = self.nft_sa(self.b1, 5353);
        let b2 = self.nft_sa(self.b2, 5353);
        let b1_other_port = self.nft_sa(self.b1, 5354);
        format!(
            "table {family} gannet_ct_test {{\n\
             \x20 chain zones {{\n\
             \x20   type filter hook output priority raw; policy accept;\n\
             \x20   udp sport 40007 ct zone set 5\n\
             \x20   udp sport 40008 ct original zone set 6\n\
             \x20 }}\n\
             \x20 chain output {{\n\
             \x20   type nat hook output priority -100; policy accept;\n\
             \x20   {a} daddr {svc} udp dport 53 udp sport {{ 40001, 40002, 40007, 40008 }} dnat to {b1}\n\
             \x20   {a} daddr {svc} udp dport 53 udp sport 40003 dnat to {b2}\n\
             \x20   {a} daddr {svc} udp dport 53 udp sport 40004 dnat to {b1_other_port}\n\
             \x20   {a} daddr {svc2} udp dport 53 dnat to {b1}\n\
             \x20   {a} daddr {svc} tcp dport 53 dnat to {b1}\n\
             \x20 }}\n\
             }}\n",
            family = self.nft_family,
        )
    }

    /// A namespace with a veth device holding the client and backend addresses, a route for
    /// the services, and the DNAT table.
    fn netns(&self) -> Netns {
        let ns = Netns::new("ct").expect("test netns");
        // This kernel has no dummy driver; a veth pair whose ends both stay here does as well.
        ns.ip(&["link", "add", "ct0", "type", "veth", "peer", "name", "ct1"])
            .unwrap();
        ns.ip(&["link", "set", "ct0", "up"]).unwrap();
        ns.ip(&["link", "set", "ct1", "up"]).unwrap();
        for address in self.addresses {
            let mut args = vec!["addr", "add", address, "dev", "ct0"];
            if address.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args).unwrap();
        }
        ns.ip(&["route", "add", self.services, "dev", "ct0"])
            .unwrap();
        let mut nft = spawn(
            {
                let mut cmd = Command::new("nft");
                cmd.args(["-f", "-"]);
                cmd
            },
            Some(&ns),
            None,
        )
        .expect("starting nft in the test netns");
        nft.stdin()
            .expect("nft's stdin")
            .write_all(self.ruleset().as_bytes())
            .expect("writing the ruleset to nft");
        let output = nft.wait_output(Duration::from_secs(10)).expect("nft");
        assert!(
            output.status.success(),
            "nft -f refused the test table ({}):\n{}\n{}",
            output.status,
            self.ruleset(),
            String::from_utf8_lossy(&output.stderr)
        );
        ns
    }
}

/// The table's entries whose original source is the client (whatever else the namespace does,
/// these are the test's).
fn client_entries(lab: &Lab) -> Vec<Entry> {
    let family = family_of(ip(lab.client));
    let mut socket = open_socket().expect("netlink socket");
    dump(&mut socket, family, None)
        .expect("dumping the table")
        .into_iter()
        .filter(|e| e.orig.src == ip(lab.client))
        .collect()
}

/// Which of the client's entries are there, as (protocol, client port) sorted.
fn present(entries: &[Entry]) -> Vec<(u8, u16)> {
    let mut keys: Vec<(u8, u16)> = entries
        .iter()
        .map(|e| (e.orig.proto, e.orig.src_port.unwrap_or(0)))
        .collect();
    keys.sort_unstable();
    keys
}

fn deletes_exactly_the_flows_of_one_frontend_and_backend(lab: &Lab) {
    let ns = lab.netns();
    ns.run(|| {
        let timeout = Some(Duration::from_secs(5));
        // Backends listen, so nothing answers with ICMP and the TCP connection establishes.
        let backends: Vec<UdpSocket> = [(lab.b1, 5353), (lab.b2, 5353), (lab.b1, 5354)]
            .into_iter()
            .map(|(b, port)| {
                let socket = UdpSocket::bind(lab.sa(b, port)).expect("backend socket");
                socket.set_read_timeout(timeout).unwrap();
                socket
            })
            .collect();
        let listener = TcpListener::bind(lab.sa(lab.b1, 5353)).expect("TCP backend");

        // A, B: frontend → b1 (to delete). C: → b2. D: → b1, other port. E: other frontend
        // → b1. F: b1 directly, no DNAT. G: TCP, frontend → b1. H: as A, in zone 5; I: as A,
        // in zone 6 in the original direction (to delete too).
        let flows: [(u16, SocketAddr); 8] = [
            (40001, lab.sa(lab.svc, 53)),
            (40002, lab.sa(lab.svc, 53)),
            (40003, lab.sa(lab.svc, 53)),
            (40004, lab.sa(lab.svc, 53)),
            (40005, lab.sa(lab.svc2, 53)),
            (40006, lab.sa(lab.b1, 5353)),
            (40007, lab.sa(lab.svc, 53)),
            (40008, lab.sa(lab.svc, 53)),
        ];
        let mut clients = Vec::new();
        for (port, to) in flows {
            let client = UdpSocket::bind(lab.sa(lab.client, port)).expect("client socket");
            client
                .send_to(b"query", to)
                .unwrap_or_else(|e| panic!("sending from port {port} to {to}: {e}"));
            clients.push(client);
        }
        // Every datagram arrived where the table sent it (b1:5353 gets A, B, E, F, H and I).
        let mut buf = [0u8; 16];
        for (socket, expected) in backends.iter().zip([6, 1, 1]) {
            for _ in 0..expected {
                socket
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("backend {:?}: {e}", socket.local_addr()));
            }
        }
        let tcp = TcpStream::connect_timeout(&lab.sa(lab.svc, 53), Duration::from_secs(5))
            .expect("TCP connection through the frontend");
        let (_accepted, tcp_client) = listener.accept().expect("accepting the TCP connection");
        let tcp_port = tcp.local_addr().unwrap().port();
        assert_eq!(tcp_client.port(), tcp_port);

        let before = client_entries(lab);
        let udp = |port| (IPPROTO_UDP, port);
        let mut all = vec![
            udp(40001),
            udp(40002),
            udp(40003),
            udp(40004),
            udp(40005),
            udp(40006),
            udp(40007),
            udp(40008),
        ];
        // TCP's source address is the kernel's choice; only count it if it is the client's.
        let tcp_is_clients = tcp.local_addr().unwrap().ip() == ip(lab.client);
        if tcp_is_clients {
            all.push((IPPROTO_TCP, tcp_port));
            all.sort_unstable();
        }
        assert_eq!(present(&before), all, "entries before: {before:#?}");
        let a = before
            .iter()
            .find(|e| e.orig.src_port == Some(40001))
            .unwrap();
        assert_eq!(
            (a.orig.clone(), a.reply.clone()),
            {
                let want = udp_entry(
                    &lab.sa(lab.client, 40001).to_string(),
                    &lab.sa(lab.svc, 53).to_string(),
                    &lab.sa(lab.b1, 5353).to_string(),
                );
                (want.orig, want.reply)
            },
            "entry A as the kernel reports it"
        );
        assert!(a.id.is_some(), "the kernel reports an id");
        let zones = |port| {
            let e = before
                .iter()
                .find(|e| e.orig.src_port == Some(port))
                .unwrap();
            (e.zone, e.orig.zone, e.reply.zone)
        };
        assert_eq!(zones(40001), (None, None, None), "A's zones");
        assert_eq!(zones(40007), (Some(5), None, None), "H's zones");
        assert_eq!(zones(40008), (None, Some(6), None), "I's zones");

        let frontend = lab.sa(lab.svc, 53);
        let backend = lab.sa(lab.b1, 5353);
        // The kernel filters the dump (Linux 5.8 and later), the user-space match decides.
        let selector = Selector::new(IPPROTO_UDP, frontend, backend).unwrap();
        let mut socket = open_socket().expect("netlink socket");
        let filtered = dump(&mut socket, selector.family(), Some(&selector)).expect("dumping");
        let mut ports: Vec<u16> = filtered.iter().filter_map(|e| e.orig.src_port).collect();
        ports.sort_unstable();
        assert_eq!(
            ports, lab.kernel_filtered,
            "kernel-filtered dump: {filtered:#?}"
        );

        assert_eq!(
            delete_flows(IPPROTO_UDP, frontend, backend).expect("deleting"),
            4,
            "deleted count for udp {frontend} → {backend}"
        );
        let after = client_entries(lab);
        let mut want: Vec<(u8, u16)> = all
            .iter()
            .copied()
            .filter(|k| ![udp(40001), udp(40002), udp(40007), udp(40008)].contains(k))
            .collect();
        want.sort_unstable();
        assert_eq!(
            present(&after),
            want,
            "A, B, H and I (udp {frontend} → {backend}) gone, the others kept: {after:#?}"
        );
        assert_eq!(
            delete_flows(IPPROTO_UDP, frontend, backend).expect("deleting again"),
            0,
            "nothing left to delete"
        );

        // The TCP connection through the same frontend and backend is TCP's to delete.
        let tcp_deleted = delete_flows(IPPROTO_TCP, frontend, backend).expect("deleting TCP");
        assert_eq!(tcp_deleted, 1, "the TCP entry of {frontend} → {backend}");
        let after_tcp = client_entries(lab);
        want.retain(|(proto, _)| *proto != IPPROTO_TCP);
        assert_eq!(present(&after_tcp), want, "TCP gone: {after_tcp:#?}");
        drop(clients);
    })
    .expect("running in the test netns");
}

#[test]
fn deletes_exactly_the_flows_of_one_frontend_and_backend_ipv4() {
    deletes_exactly_the_flows_of_one_frontend_and_backend(&V4);
}

#[test]
fn deletes_exactly_the_flows_of_one_frontend_and_backend_ipv6() {
    deletes_exactly_the_flows_of_one_frontend_and_backend(&V6);
}

#[test]
fn kernel_answers_become_errors_or_nothing() {
    let ns = Netns::new("cterr").expect("test netns");
    ns.run(|| {
        let mut socket = open_socket().expect("netlink socket");
        // No such entry: ENOENT, which is fine and deletes nothing.
        let absent = udp_entry("10.0.0.1:40001", "10.96.0.10:53", "10.0.0.2:5353");
        assert_eq!(
            delete(&mut socket, AF_INET, std::slice::from_ref(&absent)).unwrap(),
            0
        );
        // A UDP tuple without ports does not parse in the kernel: EINVAL, with what it was.
        let mut portless = absent.clone();
        portless.orig.src_port = None;
        portless.orig.dst_port = None;
        let err = delete(&mut socket, AF_INET, &[absent.clone(), portless, absent])
            .expect_err("a UDP tuple without ports");
        match &err {
            ConntrackError::Delete {
                deleted, source, ..
            } => {
                assert_eq!(*deleted, 0, "{err}");
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL), "{err}");
            }
            other => panic!("expected a Delete error, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("udp 10.0.0.1 -> 10.96.0.10") && text.contains("os error 22"),
            "message names the entry and the errno: {text}"
        );
        // The socket is still in step: the next exchange works.
        assert!(dump(&mut socket, AF_INET, None).unwrap().is_empty());
    })
    .expect("running in the test netns");
}

/// Many entries: the dump spans several datagrams and the deletes several batches.
#[test]
fn many_flows_span_datagrams_and_batches() {
    const FLOWS: u16 = 300;
    let lab = &V4;
    let ns = lab.netns();
    ns.run(|| {
        let backend = UdpSocket::bind(lab.sa(lab.b1, 5353)).expect("backend socket");
        let frontend = lab.sa(lab.svc2, 53);
        for i in 0..FLOWS {
            let client = UdpSocket::bind(lab.sa(lab.client, 41000 + i)).expect("client socket");
            client.send_to(b"q", frontend).expect("sending");
        }
        let entries = client_entries(lab);
        assert_eq!(entries.len(), usize::from(FLOWS), "one entry per client");
        let deleted = delete_flows(IPPROTO_UDP, frontend, lab.sa(lab.b1, 5353)).expect("deleting");
        assert_eq!(deleted, usize::from(FLOWS));
        assert!(client_entries(lab).is_empty(), "all deleted");
        drop(backend);
    })
    .expect("running in the test netns");
}
