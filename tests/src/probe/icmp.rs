//! Raw-socket modes: `icmp` (echo requests and the ICMP errors they provoke) and `spoof` (UDP from
//! a forged source address).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::report::Failure;
use super::sys::{
    check, connect_socket, get_int_option, micros, new_socket, poll_readable, recv_from, send_to,
    set_int_option,
};
use super::{ICMP_DEST_UNREACHABLE, ICMP_FRAG_NEEDED, ICMP_TIME_EXCEEDED, ICMP_TIMEOUT, REQUEST};

/// What the `icmp` mode sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpOptions {
    /// Destination of the echo requests (ICMP over IPv4 or IPv6).
    pub to: IpAddr,
    /// Number of echo requests, sent one after the other, each after the previous one's outcome.
    pub count: u64,
    /// ICMP payload bytes after the 8-byte echo header, as ping's `-s`: the IP packet is this plus
    /// 28 (IPv4) or 48 (IPv6) bytes.
    pub size: usize,
    /// Forbid fragmentation: IPv4 `IP_MTU_DISCOVER=IP_PMTUDISC_DO` (DF set), IPv6 `IPV6_DONTFRAG`.
    /// Without it IPv4 packets leave with DF clear (`IP_PMTUDISC_DONT`, routers may fragment) and
    /// IPv6 packets are fragmented by the sender to the path MTU it knows.
    pub dont_fragment: bool,
    /// How long to wait for each reply.
    pub timeout: Duration,
}

/// What the `icmp` mode prints at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpReport {
    /// Echo requests attempted (`ok + failed`), including those `sendto()` refused.
    pub sent: u64,
    /// Requests answered by an echo reply.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Failures by name: `timeout`, `frag-needed`, `dest-unreachable`, `time-exceeded`, or the errno
    /// `sendto()` returned (`EMSGSIZE` for a packet above the path MTU known to the sender with
    /// fragmentation forbidden, `ENETUNREACH`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Distinct source addresses of the echo replies, sorted.
    pub replies_from: Vec<String>,
    /// Median round-trip time of the replies, in microseconds (`null` without replies).
    pub rtt_us_p50: Option<u64>,
    /// Longest round-trip time of the replies, in microseconds (`null` without replies).
    pub rtt_us_max: Option<u64>,
    /// The next-hop MTU in the last "fragmentation needed" / "packet too big" received.
    pub mtu_reported: Option<u32>,
    /// The sender's path MTU to the destination after the run, as the kernel has it cached
    /// (`IP_MTU` / `IPV6_MTU` of a UDP socket connected to it; `null` if it cannot be read).
    pub path_mtu: Option<u32>,
    /// Size of each echo request's IP packet (header, ICMP header and payload).
    pub ip_packet_bytes: u64,
    /// Wall-clock time of the whole run, in microseconds.
    pub elapsed_us: u64,
}

impl IcmpReport {
    /// How many requests failed with `name` (0 if none).
    #[must_use]
    pub fn error_count(&self, name: &str) -> u64 {
        self.errors.get(name).copied().unwrap_or(0)
    }
}

/// What a received ICMP message says about our echo request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EchoOutcome {
    Reply,
    /// "Fragmentation needed" / "packet too big", with the next-hop MTU it reports.
    FragNeeded(u32),
    Unreachable,
    TimeExceeded,
}

/// `icmp` mode: `opts.count` echo requests through a raw socket, one at a time. Replies and ICMP
/// errors are matched to a request by identifier and sequence number; other ICMP traffic the raw
/// socket sees (other pings, neighbour discovery, our own requests on loopback) is ignored.
///
/// # Errors
/// If the raw socket cannot be opened or configured (it needs `CAP_NET_RAW`).
pub fn icmp_echo(opts: &IcmpOptions) -> anyhow::Result<IcmpReport> {
    let start = Instant::now();
    let v6 = opts.to.is_ipv6();
    let socket =
        icmp_socket(opts).with_context(|| format!("opening a raw ICMP socket for {}", opts.to))?;
    let id = echo_id();
    let header = if v6 { 40 } else { 20 };
    let mut report = IcmpReport {
        ip_packet_bytes: u64::try_from(header + 8 + opts.size).unwrap_or(u64::MAX),
        ..IcmpReport::default()
    };
    let mut rtts = Vec::new();
    let mut replies_from = BTreeSet::new();
    let mut buf = vec![0_u8; 65_536];
    let to = SocketAddr::new(opts.to, 0);
    for n in 0..opts.count {
        let seq = u16::try_from(n & 0xffff).expect("masked to 16 bits");
        let request = echo_request(v6, id, seq, opts.size);
        report.sent += 1;
        let began = Instant::now();
        let outcome = send_to(&socket, &request, &to)
            .and_then(|()| await_echo(&socket, v6, id, seq, began + opts.timeout, &mut buf));
        let failure = match outcome {
            Ok((EchoOutcome::Reply, from)) => {
                report.ok += 1;
                rtts.push(micros(began.elapsed()));
                replies_from.insert(from);
                continue;
            }
            Ok((EchoOutcome::FragNeeded(mtu), _)) => {
                report.mtu_reported = Some(mtu);
                Cow::Borrowed(ICMP_FRAG_NEEDED)
            }
            Ok((EchoOutcome::Unreachable, _)) => Cow::Borrowed(ICMP_DEST_UNREACHABLE),
            Ok((EchoOutcome::TimeExceeded, _)) => Cow::Borrowed(ICMP_TIME_EXCEEDED),
            Err(failure) => failure.0,
        };
        report.failed += 1;
        *report.errors.entry(failure.into_owned()).or_default() += 1;
    }
    rtts.sort_unstable();
    report.rtt_us_p50 = rtts.get(rtts.len().saturating_sub(1) / 2).copied();
    report.rtt_us_max = rtts.last().copied();
    report.replies_from = replies_from.iter().map(ToString::to_string).collect();
    report.path_mtu = kernel_path_mtu(opts.to);
    report.elapsed_us = micros(start.elapsed());
    Ok(report)
}

/// What the `spoof` mode prints at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoofReport {
    /// Datagrams the kernel accepted for sending.
    pub sent: u64,
    /// Sends that failed, by errno name.
    pub errors: BTreeMap<String, u64>,
}

/// `spoof` mode: `count` UDP datagrams (the request line) from `from:40000` to `to`, IPv4, with
/// headers of our own through a raw socket (`IPPROTO_RAW`, needs `CAP_NET_RAW`): the source
/// address is whatever `from` says, as an attacker in a pod would send it.
///
/// # Errors
/// If the raw socket cannot be opened.
pub fn spoof_udp(
    from: Ipv4Addr,
    to: std::net::SocketAddrV4,
    count: u64,
) -> anyhow::Result<SpoofReport> {
    const SRC_PORT: u16 = 40_000;
    // SAFETY: socket(2) has no memory-safety preconditions.
    let raw = check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    })
    .context("opening a raw IPv4 socket")?;
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let udp_len = u16::try_from(8 + REQUEST.len()).expect("a short request");
    let total = 20 + udp_len;
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&from.octets());
    packet.extend_from_slice(&to.ip().octets());
    // The kernel fills in the header checksum (and the id, left 0); a UDP checksum of 0 means
    // none, which IPv4 allows.
    packet.extend_from_slice(&SRC_PORT.to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(REQUEST);
    let mut report = SpoofReport::default();
    for _ in 0..count {
        match send_to(&fd, &packet, &SocketAddr::V4(to)) {
            Ok(()) => report.sent += 1,
            Err(failure) => *report.errors.entry(failure.name().to_owned()).or_default() += 1,
        }
    }
    Ok(report)
}

fn icmp_socket(opts: &IcmpOptions) -> io::Result<OwnedFd> {
    let (family, proto) = if opts.to.is_ipv6() {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: socket(2) has no memory-safety preconditions.
    let raw = check(unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    match (opts.to.is_ipv6(), opts.dont_fragment) {
        (false, true) => set_int_option(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?,
        (false, false) => set_int_option(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )?,
        (true, true) => set_int_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?,
        (true, false) => {}
    }
    Ok(fd)
}

/// An identifier for this run's echo requests, different across processes and runs.
fn echo_id() -> u16 {
    let mixed = u64::from(std::process::id()) ^ crate::next_id().wrapping_mul(0x9e37_79b9);
    let [a, b, ..] = mixed.to_le_bytes();
    u16::from_le_bytes([a, b])
}

/// An echo request (ICMP type 8, or 128 over IPv6) with `size` payload bytes. The IPv4 checksum is
/// computed here; over IPv6 the kernel fills it in (it covers the pseudo-header).
pub(super) fn echo_request(v6: bool, id: u16, seq: u16, size: usize) -> Vec<u8> {
    let mut packet = Vec::with_capacity(8 + size);
    packet.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0]);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend((0..=u8::MAX).cycle().take(size));
    if !v6 {
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The one's-complement sum of RFC 1071.
pub(super) fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|pair| {
            u64::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

/// Waits until `deadline` for a reply or an ICMP error about request `id`/`seq`. A socket error
/// the kernel reports meanwhile (an ICMP error it attributed to the socket) is the failure if
/// nothing matching arrives; otherwise the failure is `timeout`.
fn await_echo(
    socket: &OwnedFd,
    v6: bool,
    id: u16,
    seq: u16,
    deadline: Instant,
    buf: &mut [u8],
) -> Result<(EchoOutcome, IpAddr), Failure> {
    let mut pending = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(pending.unwrap_or(Failure(Cow::Borrowed(ICMP_TIMEOUT))));
        }
        match poll_readable(socket, left) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        }
        match recv_from(socket, buf) {
            Ok((n, from)) => {
                let message = &buf[..n];
                let outcome = if v6 {
                    parse_icmpv6(message, id, seq)
                } else {
                    parse_icmpv4(message, id, seq)
                };
                if let Some(outcome) = outcome {
                    return Ok((outcome, from));
                }
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(err) => pending = Some(Failure::from(err)),
        }
    }
}

/// Reads an IPv4 ICMP message as a raw socket receives it (with its IP header).
pub(super) fn parse_icmpv4(packet: &[u8], id: u16, seq: u16) -> Option<EchoOutcome> {
    let icmp = packet.get(ipv4_header_len(packet)?..)?;
    let (kind, code) = (*icmp.first()?, *icmp.get(1)?);
    match kind {
        // Echo reply.
        0 => (echo_ids(icmp)? == (id, seq)).then_some(EchoOutcome::Reply),
        // Destination unreachable, time exceeded: they quote our request's IP header and 8 bytes.
        3 | 11 => {
            let inner = icmp.get(8..)?;
            let inner_icmp = inner.get(ipv4_header_len(inner)?..)?;
            let ours = *inner.get(9)? == 1
                && *inner_icmp.first()? == 8
                && echo_ids(inner_icmp)? == (id, seq);
            ours.then(|| match (kind, code) {
                (3, 4) => {
                    EchoOutcome::FragNeeded(u32::from(u16::from_be_bytes([icmp[6], icmp[7]])))
                }
                (3, _) => EchoOutcome::Unreachable,
                _ => EchoOutcome::TimeExceeded,
            })
        }
        _ => None,
    }
}

/// Reads an ICMP message over IPv6 as a raw socket receives it (without the IPv6 header).
pub(super) fn parse_icmpv6(icmp: &[u8], id: u16, seq: u16) -> Option<EchoOutcome> {
    let kind = *icmp.first()?;
    match kind {
        // Echo reply.
        129 => (echo_ids(icmp)? == (id, seq)).then_some(EchoOutcome::Reply),
        // Destination unreachable, packet too big, time exceeded: they quote our request.
        1..=3 => {
            let inner = icmp.get(8..)?;
            // An IPv6 header (no extension headers: we send none) whose next header is ICMPv6.
            let ours = *inner.first()? >> 4 == 6
                && *inner.get(6)? == 58
                && *inner.get(40)? == 128
                && echo_ids(inner.get(40..)?)? == (id, seq);
            ours.then(|| match kind {
                2 => EchoOutcome::FragNeeded(u32::from_be_bytes([
                    icmp[4], icmp[5], icmp[6], icmp[7],
                ])),
                1 => EchoOutcome::Unreachable,
                _ => EchoOutcome::TimeExceeded,
            })
        }
        _ => None,
    }
}

/// Length of the IPv4 header `packet` starts with, if it starts with one.
fn ipv4_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let len = usize::from(first & 0x0f) * 4;
    (first >> 4 == 4 && len >= 20).then_some(len)
}

/// Identifier and sequence number of an echo request or reply.
fn echo_ids(icmp: &[u8]) -> Option<(u16, u16)> {
    let ids = icmp.get(4..8)?;
    Some((
        u16::from_be_bytes([ids[0], ids[1]]),
        u16::from_be_bytes([ids[2], ids[3]]),
    ))
}

/// The path MTU the kernel has cached for `to`, read through a UDP socket connected to it.
fn kernel_path_mtu(to: IpAddr) -> Option<u32> {
    let addr = SocketAddr::new(to, 9);
    let fd = new_socket(&addr, libc::SOCK_DGRAM).ok()?;
    connect_socket(&fd, &addr, Duration::from_secs(1)).ok()?;
    let (level, name) = if to.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    u32::try_from(get_int_option(&fd, level, name).ok()?).ok()
}
