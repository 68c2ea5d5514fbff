//! ICMP errors that belong to a translated flow: "fragmentation needed" / "packet too big",
//! "unreachable", "time exceeded" and "parameter problem" quote the packet they are about, and
//! that packet carries translated addresses. The error is rewritten like the flow's packets in
//! its direction, quoted packet included, so the host that receives it finds the socket it is
//! about (path MTU discovery through the load balancer keeps working).
//!
//! - An error from the client's side (about a reply the node sent: frontend → client) goes to the
//!   backend: its destination becomes the backend, and the quoted packet becomes backend →
//!   (SNAT address or client).
//! - An error from the backend's side (about a translated client packet: (SNAT address or
//!   client) → backend) goes to the client: it comes from the frontend, and the quoted packet
//!   becomes client → frontend.
//!
//! Checksums: the outer IPv4 header's, the ICMP checksum (over the ICMP message, and for `ICMPv6`
//! the pseudo-header), and the quoted IPv4 header's. The quoted TCP/UDP checksum is left as it is:
//! receivers do not check it (the quoted segment is usually cut short anyway).

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, helpers::bpf_csum_diff, programs::TcContext};
use gannet_common::{CT_F_REPLY, CtEntry, CtKey, PROTO_TCP, PROTO_UDP, v4_mapped};

use crate::{
    flow::Flow,
    packet::{
        Data, ETH_HLEN, IPV4_CSUM, IPV4_DADDR, IPV4_SADDR, IPV6_DADDR, IPV6_SADDR, L3, words,
    },
};

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const IPV6_HLEN: usize = 40;

/// Where an ICMP error and the packet it quotes lie, and what the quoted packet says.
#[derive(Clone, Copy)]
pub(crate) struct IcmpError {
    l3: L3,
    /// Offset of the ICMP header.
    icmp: usize,
    /// Offset of the quoted IP header, and of its transport header.
    inner: usize,
    inner_l4: usize,
    /// The quoted packet's addresses and ports, network order.
    inner_saddr: [u8; 16],
    inner_daddr: [u8; 16],
    inner_sport: u16,
    inner_dport: u16,
    inner_proto: u8,
    /// The outer addresses.
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// Where a rewritten error goes.
pub(crate) enum Direction {
    /// To the backend: forward it like a client's packet.
    ToBackend,
    /// To the client: route it out.
    ToClient,
}

/// Whether ICMP `kind` is an error that quotes a packet.
#[inline(always)]
fn is_error(l3: L3, kind: u8) -> bool {
    match l3 {
        // Destination unreachable, time exceeded, parameter problem.
        L3::V4 => kind == 3 || kind == 11 || kind == 12,
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        L3::V6 => (1..=4).contains(&kind),
    }
}

/// Parses an ICMP error quoting a TCP or UDP packet into `out`.
#[inline(always)]
pub(crate) fn parse(ctx: &TcContext, l3: L3, out: &mut IcmpError) -> bool {
    let data = Data::tc(ctx);
    // SAFETY (all reads): `at` checked the bytes lie within the packet.
    let icmp = match l3 {
        L3::V4 => {
            let Some(h) = data.at::<[u8; 20]>(ETH_HLEN) else {
                return false;
            };
            let h = unsafe { &*h };
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < 20 || h[9] != PROTO_ICMP || u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
                return false;
            }
            out.saddr = v4_mapped([h[12], h[13], h[14], h[15]]);
            out.daddr = v4_mapped([h[16], h[17], h[18], h[19]]);
            ETH_HLEN + ihl
        }
        L3::V6 => {
            let Some(h) = data.at::<[u8; 40]>(ETH_HLEN) else {
                return false;
            };
            let h = unsafe { &*h };
            if h[6] != PROTO_ICMPV6 {
                return false;
            }
            let mut i = 0;
            while i < 16 {
                out.saddr[i] = h[8 + i];
                out.daddr[i] = h[24 + i];
                i += 1;
            }
            ETH_HLEN + IPV6_HLEN
        }
    };
    // The whole ICMP header (a one-byte bound check is one the verifier cannot use).
    let Some(header) = data.at::<[u8; 8]>(icmp) else {
        return false;
    };
    if !is_error(l3, unsafe { (*header)[0] }) {
        return false;
    }
    let inner = icmp + 8;
    let inner_l4 = match l3 {
        L3::V4 => {
            let Some(h) = data.at::<[u8; 20]>(inner) else {
                return false;
            };
            let h = unsafe { &*h };
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < 20 {
                return false;
            }
            out.inner_proto = h[9];
            out.inner_saddr = v4_mapped([h[12], h[13], h[14], h[15]]);
            out.inner_daddr = v4_mapped([h[16], h[17], h[18], h[19]]);
            inner + ihl
        }
        L3::V6 => {
            let Some(h) = data.at::<[u8; 40]>(inner) else {
                return false;
            };
            let h = unsafe { &*h };
            out.inner_proto = h[6];
            let mut i = 0;
            while i < 16 {
                out.inner_saddr[i] = h[8 + i];
                out.inner_daddr[i] = h[24 + i];
                i += 1;
            }
            inner + IPV6_HLEN
        }
    };
    if out.inner_proto != PROTO_TCP && out.inner_proto != PROTO_UDP {
        return false;
    }
    let Some(ports) = data.at::<[u16; 2]>(inner_l4) else {
        return false;
    };
    let ports = unsafe { *ports };
    out.inner_sport = ports[0];
    out.inner_dport = ports[1];
    out.l3 = l3;
    out.icmp = icmp;
    out.inner = inner;
    out.inner_l4 = inner_l4;
    true
}

/// The conntrack key of the flow direction opposite to the quoted packet: the packet the
/// error is about went one way, the flow's entry for the other way says how to translate it back.
#[inline(always)]
pub(crate) fn key_into(e: &IcmpError, key: &mut CtKey) {
    key.saddr = e.inner_daddr;
    key.daddr = e.inner_saddr;
    key.sport = e.inner_dport;
    key.dport = e.inner_sport;
    key.proto = e.inner_proto;
    key.pad = [0; 3];
}

/// Rewrites the error as `tracked` (the entry found under [`key_into`]'s key) says; returns
/// where it goes, or `None` when it could not be written (it must then be dropped).
///
/// The quoted packet is the reverse of `tracked`'s direction, so it becomes
/// `tracked.daddr:dport → tracked.saddr:sport`. An error about a client's packet (`tracked` is a
/// reply entry) then comes from `tracked.saddr` (the frontend) and goes to `tracked.daddr` (the
/// client); one about a reply goes to `tracked.daddr` (the backend).
#[inline(never)]
pub(crate) fn rewrite(ctx: &mut TcContext, e: &IcmpError, tracked: &CtEntry) -> Option<Direction> {
    let csum = e.icmp + 2;
    let direction = if tracked.flags & CT_F_REPLY != 0 {
        Direction::ToClient
    } else {
        Direction::ToBackend
    };
    // The quoted packet.
    if !inner_address(ctx, e, true, &tracked.daddr)
        || !inner_address(ctx, e, false, &tracked.saddr)
        || !inner_port(ctx, e.inner_l4, e.inner_sport, tracked.dport, csum)
        || !inner_port(ctx, e.inner_l4 + 2, e.inner_dport, tracked.sport, csum)
    {
        return None;
    }
    // The outer header.
    if let Direction::ToClient = direction
        && !outer_address(ctx, e, true, &tracked.saddr)
    {
        return None;
    }
    if !outer_address(ctx, e, false, &tracked.daddr) {
        return None;
    }
    Some(direction)
}

#[inline(always)]
fn src_offset(l3: L3) -> usize {
    match l3 {
        L3::V4 => 12,
        L3::V6 => 8,
    }
}

#[inline(always)]
fn dst_offset(l3: L3) -> usize {
    match l3 {
        L3::V4 => 16,
        L3::V6 => 24,
    }
}

/// The checksum difference of replacing 16 bytes.
#[inline(always)]
fn diff16(old: &[u8; 16], new: &[u8; 16]) -> Option<u64> {
    let mut from = words(old);
    let mut to = words(new);
    // SAFETY: two 16-byte buffers on the stack, sizes as passed.
    let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
    u64::try_from(diff).ok()
}

/// An address of the quoted packet: the ICMP checksum covers its bytes, and for IPv4 the quoted
/// header's checksum changes too (and that change is in the ICMP checksum as well). Not inlined
/// (nor is `outer_address`): their frames are siblings under `rewrite`, not one big frame.
#[inline(never)]
fn inner_address(ctx: &mut TcContext, e: &IcmpError, source: bool, new: &[u8; 16]) -> bool {
    let (offset, old) = if source {
        (e.inner + src_offset(e.l3), &e.inner_saddr)
    } else {
        (e.inner + dst_offset(e.l3), &e.inner_daddr)
    };
    let csum = e.icmp + 2;
    if old == new {
        return true;
    }
    match e.l3 {
        L3::V4 => {
            let old4 = u32::from_ne_bytes([old[12], old[13], old[14], old[15]]);
            let bytes = [new[12], new[13], new[14], new[15]];
            let new4 = u32::from_ne_bytes(bytes);
            let inner_csum = e.inner + 10;
            let Ok(before) = ctx.load::<u16>(inner_csum) else {
                return false;
            };
            if ctx.store(offset, &bytes, 0).is_err()
                || ctx
                    .l3_csum_replace(inner_csum, u64::from(old4), u64::from(new4), 4)
                    .is_err()
                || ctx
                    .l4_csum_replace(csum, u64::from(old4), u64::from(new4), 4)
                    .is_err()
            {
                return false;
            }
            let Ok(after) = ctx.load::<u16>(inner_csum) else {
                return false;
            };
            ctx.l4_csum_replace(csum, u64::from(before), u64::from(after), 2)
                .is_ok()
        }
        L3::V6 => {
            let Some(diff) = diff16(old, new) else {
                return false;
            };
            ctx.store(offset, new, 0).is_ok() && ctx.l4_csum_replace(csum, 0, diff, 0).is_ok()
        }
    }
}

#[inline(always)]
fn inner_port(ctx: &mut TcContext, offset: usize, old: u16, new: u16, csum: usize) -> bool {
    old == new
        || (ctx.store(offset, &new, 0).is_ok()
            && ctx
                .l4_csum_replace(csum, u64::from(old), u64::from(new), 2)
                .is_ok())
}

/// An outer address: IPv4's header checksum; `ICMPv6` checksum through the pseudo-header.
#[inline(never)]
fn outer_address(ctx: &mut TcContext, e: &IcmpError, source: bool, new: &[u8; 16]) -> bool {
    let old = if source { &e.saddr } else { &e.daddr };
    let csum = e.icmp + 2;
    if old == new {
        return true;
    }
    match e.l3 {
        L3::V4 => {
            let offset = if source { IPV4_SADDR } else { IPV4_DADDR };
            let old4 = u32::from_ne_bytes([old[12], old[13], old[14], old[15]]);
            let bytes = [new[12], new[13], new[14], new[15]];
            ctx.store(offset, &bytes, 0).is_ok()
                && ctx
                    .l3_csum_replace(
                        IPV4_CSUM,
                        u64::from(old4),
                        u64::from(u32::from_ne_bytes(bytes)),
                        4,
                    )
                    .is_ok()
        }
        L3::V6 => {
            let offset = if source { IPV6_SADDR } else { IPV6_DADDR };
            let Some(diff) = diff16(old, new) else {
                return false;
            };
            ctx.store(offset, new, 0).is_ok()
                && ctx
                    .l4_csum_replace(csum, 0, diff, u64::from(BPF_F_PSEUDO_HDR))
                    .is_ok()
        }
    }
}

/// A `Flow` standing for the rewritten error, for the forwarding functions (which need its
/// family, protocol and addresses).
#[inline(always)]
pub(crate) fn as_flow(e: &IcmpError, tracked: &CtEntry, out: &mut Flow) {
    out.l3 = e.l3;
    out.l4 = e.icmp;
    out.proto = match e.l3 {
        L3::V4 => PROTO_ICMP,
        L3::V6 => PROTO_ICMPV6,
    };
    out.saddr = if tracked.flags & CT_F_REPLY != 0 {
        tracked.saddr
    } else {
        e.saddr
    };
    out.daddr = tracked.daddr;
    out.sport = 0;
    out.dport = 0;
    out.tcp_flags = 0;
}
