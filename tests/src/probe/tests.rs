//! Unit tests of the probe's modes, each run in a namespace of its own (loopback only).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::client::{ClientOptions, UdpOptions, hold, stream, tcp_count, udp_count};
use super::icmp::{
    EchoOutcome, IcmpOptions, IcmpReport, echo_request, icmp_echo, internet_checksum, parse_icmpv4,
    parse_icmpv6,
};
use super::report::{Failure, errno_name};
use super::server::{Server, tcp_listen};
use super::{DEFAULT_ICMP_SIZE, ICMP_FRAG_NEEDED, ICMP_TIMEOUT};

use crate::Netns;

/// Runs `f` in a fresh namespace of its own (loopback only), never in the caller's.
fn in_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let netns = Netns::new("unit").expect("creating a netns");
    netns.run(f).expect("joining the netns")
}

fn loopback_server(tcp: bool, udp: bool) -> (Server, u16) {
    // Port 0 lets the kernel choose; TCP and UDP then bind that port separately.
    let server = Server::bind("unit", &["127.0.0.1:0".parse().expect("addr")], tcp, udp)
        .expect("bind loopback");
    let port = server
        .tcp
        .first()
        .map(|l| l.local_addr().expect("addr").port())
        .or_else(|| {
            server
                .udp
                .first()
                .map(|s| s.local_addr().expect("addr").port())
        })
        .expect("a socket");
    server.start().expect("start");
    (server, port)
}

pub(super) fn opts(port: u16) -> ClientOptions {
    ClientOptions {
        to: SocketAddr::from(([127, 0, 0, 1], port)),
        bind: None,
        timeout: Duration::from_millis(500),
    }
}

#[test]
fn tcp_round_trips_on_loopback() {
    in_netns(|| {
        let (server, port) = loopback_server(true, false);
        let report = tcp_count(&opts(port), 3);
        assert_eq!((report.ok, report.failed), (3, 0), "{report:?}");
        assert_eq!(report.backend_count("unit"), 3, "{report:?}");
        assert_eq!(
            report.peers.get(&format!("127.0.0.1:{port}")),
            Some(&3),
            "{report:?}"
        );
        let served = server.report();
        assert_eq!(
            (served.tcp_connections, served.tcp_requests),
            (3, 3),
            "{served:?}"
        );
        assert_eq!(served.clients.get("127.0.0.1"), Some(&3), "{served:?}");
        assert_eq!(served.tcp_clients.get("127.0.0.1"), Some(&3), "{served:?}");
    });
}

#[test]
fn udp_round_trips_on_loopback() {
    in_netns(|| {
        let (_server, port) = loopback_server(false, true);
        for udp in [
            UdpOptions::default(),
            UdpOptions {
                per_request_socket: true,
                connected: false,
            },
            UdpOptions {
                per_request_socket: false,
                connected: true,
            },
        ] {
            let report = udp_count(&opts(port), 4, udp);
            assert_eq!(
                (report.ok, report.backend_count("unit")),
                (4, 4),
                "{udp:?}: {report:?}"
            );
            assert_eq!(
                report.peers.get(&format!("127.0.0.1:{port}")),
                Some(&4),
                "{udp:?}: {report:?}"
            );
        }
    });
}

#[test]
fn refused_connections_fail_fast_by_name() {
    in_netns(|| {
        // Nothing listens in a fresh namespace. (Binding a port and closing it again is not
        // enough: a concurrent fork may briefly keep the listener open.)
        let report = tcp_count(&opts(9), 2);
        assert_eq!(
            (report.ok, report.error_count("ECONNREFUSED")),
            (0, 2),
            "{report:?}"
        );
        let after = report.first_error_after_us.expect("a failure was timed");
        assert!(after < 400_000, "refusal took {after} us");
    });
}

#[test]
fn hold_answers_pings_on_one_connection() {
    in_netns(|| {
        let (server, port) = loopback_server(true, false);
        let mut out = Vec::new();
        let report = hold(&opts(port), &b"ping\n\nping\nbogus\n"[..], &mut out).expect("hold");
        let out = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], format!("connected 127.0.0.1:{port}"), "{out}");
        assert_eq!(&lines[1..3], ["unit", "unit"], "{out}");
        assert!(lines[3].starts_with("error: unknown command"), "{out}");
        assert_eq!(report.ok, 2, "{report:?}");
        assert_eq!(
            server.report().tcp_connections,
            1,
            "pings must share one connection"
        );
    });
}

/// Bound on every ICMP reply in these tests.
const ICMP_WAIT: Duration = Duration::from_millis(1000);

pub(super) fn icmp(to: &str, count: u64, size: usize, dont_fragment: bool) -> IcmpReport {
    let opts = IcmpOptions {
        to: to.parse().expect("address"),
        count,
        size,
        dont_fragment,
        timeout: ICMP_WAIT,
    };
    icmp_echo(&opts).unwrap_or_else(|err| panic!("icmp to {to}: {err:#}"))
}

#[test]
fn icmp_echoes_on_loopback() {
    in_netns(|| {
        for (to, bytes) in [("127.0.0.1", 84), ("::1", 104)] {
            let report = icmp(to, 3, DEFAULT_ICMP_SIZE, false);
            assert_eq!(
                (report.sent, report.ok, report.failed),
                (3, 3, 0),
                "{to}: {report:?}"
            );
            assert_eq!(report.replies_from, [to], "{to}: {report:?}");
            assert_eq!(report.ip_packet_bytes, bytes, "{to}: {report:?}");
            let (p50, max) = (report.rtt_us_p50, report.rtt_us_max);
            assert!(
                p50.is_some() && p50 <= max,
                "{to}: rtt p50 {p50:?}, max {max:?}"
            );
        }
    });
}

#[test]
fn icmp_dont_fragment_above_the_mtu_fails_with_emsgsize() {
    let netns = Netns::new("unit").expect("creating a netns");
    netns
        .ip(&["link", "set", "lo", "mtu", "1400"])
        .expect("lowering lo's MTU");
    netns
        .run(|| {
            for to in ["127.0.0.1", "::1"] {
                let report = icmp(to, 2, 1400, true);
                assert_eq!(
                    (report.ok, report.error_count("EMSGSIZE")),
                    (0, 2),
                    "{to}, 1400 bytes, DF, MTU 1400: {report:?}"
                );
                assert_eq!(report.path_mtu, Some(1400), "{to}: {report:?}");
                let report = icmp(to, 2, 1400, false);
                assert_eq!(
                    report.ok, 2,
                    "{to}, 1400 bytes, fragmentation allowed: {report:?}"
                );
                let report = icmp(to, 1, 1300, true);
                assert_eq!(report.ok, 1, "{to}, 1300 bytes, DF: {report:?}");
            }
        })
        .expect("joining the netns");
}

#[test]
fn icmp_without_a_reply_times_out() {
    let netns = Netns::new("unit").expect("creating a netns");
    // A veth pair inside the namespace, and a neighbour entry with a MAC nobody has: requests
    // leave v0, arrive at v1 (which has no address), and are dropped there.
    let setup = [
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"][..],
        &["addr", "add", "10.9.0.1/24", "dev", "v0"],
        &["link", "set", "v0", "up"],
        &["link", "set", "v1", "up"],
        &[
            "neigh",
            "add",
            "10.9.0.2",
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "v0",
        ],
    ];
    for args in setup {
        netns.ip(args).expect("building v0 - v1");
    }
    let report = netns
        .run(|| {
            icmp_echo(&IcmpOptions {
                to: "10.9.0.2".parse().expect("addr"),
                count: 2,
                size: DEFAULT_ICMP_SIZE,
                dont_fragment: false,
                timeout: Duration::from_millis(200),
            })
            .expect("icmp")
        })
        .expect("joining the netns");
    assert_eq!(
        (report.ok, report.error_count(ICMP_TIMEOUT)),
        (0, 2),
        "{report:?}"
    );
    assert!(report.elapsed_us >= 400_000, "{report:?}");
    assert!(report.replies_from.is_empty(), "{report:?}");
}

/// Namespaces `client` - `router` - `server`: 10.1.0.0/24 and `fd01::/64` between client and
/// router (MTU 1500), 10.2.0.0/24 and `fd02::/64` between router and server (MTU 1280).
fn narrow_path() -> [Netns; 3] {
    let client = Netns::new("pcli").expect("netns");
    let router = Netns::new("prtr").expect("netns");
    let server = Netns::new("psrv").expect("netns");
    let setup = || -> anyhow::Result<()> {
        // See `cluster::disable_dad`: a router with tentative link-local addresses cannot resolve
        // neighbours for forwarded IPv6 packets.
        for ns in [&client, &router, &server] {
            crate::cluster::disable_dad(ns)?;
        }
        client.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "c0",
            "netns",
            router.name(),
        ])?;
        router.ip(&[
            "link",
            "add",
            "s0",
            "mtu",
            "1280",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            "1280",
            "netns",
            server.name(),
        ])?;
        for (ns, dev, v4, v6) in [
            (&client, "eth0", "10.1.0.2/24", "fd01::2/64"),
            (&router, "c0", "10.1.0.1/24", "fd01::1/64"),
            (&router, "s0", "10.2.0.1/24", "fd02::1/64"),
            (&server, "eth0", "10.2.0.2/24", "fd02::2/64"),
        ] {
            ns.ip(&["addr", "add", v4, "dev", dev])?;
            ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        for (ns, v4, v6) in [
            (&client, "10.1.0.1", "fd01::1"),
            (&server, "10.2.0.1", "fd02::1"),
        ] {
            ns.ip(&["route", "add", "default", "via", v4])?;
            ns.ip(&["-6", "route", "add", "default", "via", v6])?;
        }
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // Until the carrier is on (deferred), IPv6 drops what it should route over a link.
        for (ns, dev) in [
            (&client, "eth0"),
            (&router, "c0"),
            (&router, "s0"),
            (&server, "eth0"),
        ] {
            crate::cluster::wait_oper_state(ns, dev, true, Duration::from_secs(5))?;
        }
        Ok(())
    };
    setup().expect("building client - router - server");
    [client, router, server]
}

#[test]
fn icmp_reports_frag_needed_from_a_router_then_emsgsize() {
    let [client, _router, _server] = narrow_path();
    client
        .run(|| {
            for to in ["10.2.0.2", "fd02::2"] {
                let report = icmp(to, 1, 100, true);
                assert_eq!(report.ok, 1, "{to}: small packets must pass: {report:?}");
                assert_eq!(report.replies_from, [to], "{report:?}");
                // 1300 bytes of payload: above the router's 1280-byte link.
                let report = icmp(to, 2, 1300, true);
                assert_eq!(
                    (
                        report.ok,
                        report.error_count(ICMP_FRAG_NEEDED),
                        report.error_count("EMSGSIZE")
                    ),
                    (0, 1, 1),
                    "{to}: expected frag-needed from the router, then EMSGSIZE: {report:?}"
                );
                assert_eq!(report.mtu_reported, Some(1280), "{to}: {report:?}");
                assert_eq!(report.path_mtu, Some(1280), "{to}: {report:?}");
                // The sender (IPv6) or the router (IPv4) fragments when allowed to.
                let report = icmp(to, 2, 1300, false);
                assert_eq!(report.ok, 2, "{to}, fragmentation allowed: {report:?}");
            }
        })
        .expect("joining the client netns");
}

#[test]
fn icmp_parsing_matches_identifier_and_sequence() {
    let request = echo_request(false, 0x1234, 7, 8);
    assert_eq!(internet_checksum(&request), 0, "checksum must verify");
    let ipv4 = |icmp: &[u8]| {
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        packet.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        packet.extend_from_slice(icmp);
        packet
    };
    let mut reply = request.clone();
    reply[0] = 0;
    assert_eq!(
        parse_icmpv4(&ipv4(&reply), 0x1234, 7),
        Some(EchoOutcome::Reply)
    );
    assert_eq!(parse_icmpv4(&ipv4(&reply), 0x1234, 8), None, "other seq");
    assert_eq!(parse_icmpv4(&ipv4(&reply), 0x1235, 7), None, "other id");
    assert_eq!(parse_icmpv4(&ipv4(&request), 0x1234, 7), None, "a request");
    let mut frag_needed = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
    frag_needed.extend_from_slice(&ipv4(&request[..8]));
    assert_eq!(
        parse_icmpv4(&ipv4(&frag_needed), 0x1234, 7),
        Some(EchoOutcome::FragNeeded(1400))
    );
    assert_eq!(parse_icmpv4(&ipv4(&frag_needed), 0x1234, 6), None);

    let request6 = echo_request(true, 0x1234, 7, 8);
    let mut reply6 = request6.clone();
    reply6[0] = 129;
    assert_eq!(parse_icmpv6(&reply6, 0x1234, 7), Some(EchoOutcome::Reply));
    assert_eq!(parse_icmpv6(&request6, 0x1234, 7), None, "a request");
    let mut too_big = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    let mut inner = vec![0x60, 0, 0, 0, 0, 16, 58, 64];
    inner.extend_from_slice(&[0; 32]);
    too_big.extend_from_slice(&inner);
    too_big.extend_from_slice(&request6);
    assert_eq!(
        parse_icmpv6(&too_big, 0x1234, 7),
        Some(EchoOutcome::FragNeeded(1280))
    );
    assert_eq!(parse_icmpv6(&too_big, 0x4321, 7), None);
}

fn sink_server() -> (Server, u16) {
    let server = Server::bind("sink", &["127.0.0.1:0".parse().expect("addr")], true, false)
        .expect("bind loopback")
        .with_sink();
    let port = server.tcp[0].local_addr().expect("addr").port();
    server.start().expect("start");
    (server, port)
}

#[test]
fn stream_delivers_every_byte_to_a_sink() {
    in_netns(|| {
        let (server, port) = sink_server();
        let bytes = 20 * 1024 * 1024;
        let report = stream(&opts(port), bytes);
        assert_eq!(
            (report.ok, report.bytes_sent, report.bytes_acked_by_server),
            (1, bytes, Some(bytes)),
            "{report:?}"
        );
        assert_eq!(report.error, None, "{report:?}");
        assert!(
            report.mss.is_some_and(|mss| mss > 1000),
            "loopback MSS: {report:?}"
        );
        let served = server.report();
        assert_eq!(served.sink_bytes, bytes, "{served:?}");
        assert_eq!(
            (served.tcp_connections, served.tcp_requests),
            (1, 1),
            "{served:?}"
        );
        assert_eq!(served.tcp_clients.get("127.0.0.1"), Some(&1), "{served:?}");
    });
}

#[test]
fn stream_to_a_stalled_peer_times_out() {
    in_netns(|| {
        // Accepts connections in the kernel but never reads: the buffers fill, then writes stall.
        let listener = tcp_listen(&"127.0.0.1:0".parse().expect("addr")).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let opts = ClientOptions {
            timeout: Duration::from_millis(300),
            ..opts(port)
        };
        let bytes = 256 * 1024 * 1024;
        let report = stream(&opts, bytes);
        assert_eq!(
            (report.ok, report.error.as_deref()),
            (0, Some("ETIMEDOUT")),
            "{report:?}"
        );
        assert!(
            report.bytes_sent > 0 && report.bytes_sent < bytes,
            "{report:?}"
        );
        assert!(report.elapsed_us < 5_000_000, "took too long: {report:?}");
        drop(listener);
    });
}

#[test]
fn stream_to_a_closed_port_is_refused() {
    in_netns(|| {
        let report = stream(&opts(9), 1024);
        assert_eq!(
            (report.ok, report.error.as_deref(), report.mss),
            (0, Some("ECONNREFUSED"), None),
            "{report:?}"
        );
    });
}

#[test]
fn errno_names() {
    assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
    assert_eq!(errno_name(9999), "E9999");
    assert_eq!(
        Failure::from(io::Error::from_raw_os_error(libc::EAGAIN)).name(),
        "ETIMEDOUT"
    );
}
