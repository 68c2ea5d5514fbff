//! Refusing a connection to a frontend without backends. For a frontend address the node holds
//! (a node port), the host stack does it: nothing listens there, so it answers with a TCP RST or
//! an ICMP port unreachable. An external or LoadBalancer IP is not the node's own, and the stack
//! would route the packet on (back towards the network); the program answers itself, from the
//! frontend's address, out of the interface the packet came in on: a TCP SYN gets a RST, a UDP
//! datagram an ICMP (or `ICMPv6`) port unreachable quoting it, as a host without the port would.
//! Anything else (a TCP segment without SYN, IPv4 options) is dropped.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NOT_FWDED, TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use gannet_common::{PROTO_TCP, PROTO_UDP};

use crate::{
    flow::{Flow, TCP_ACK, TCP_SYN},
    packet::{Data, ETH_HLEN, L3, words},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
#[expect(clippy::cast_possible_truncation, reason = "the struct is 64 bytes")]
const FIB_SIZE: i32 = size_of::<bpf_fib_lookup>() as i32;
/// RST and ACK.
const TCP_RST_ACK: u8 = 0x14;

/// Whether the node holds `flow`'s destination (the FIB delivers it locally).
#[inline(always)]
fn local(ctx: &TcContext, flow: &Flow) -> bool {
    // SAFETY: plain integers and unions of integers; all-zero is valid.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.l4_protocol = flow.proto;
    // SAFETY: the skb pointer is valid for the program's run.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (s, d) = (&flow.saddr, &flow.daddr);
    match flow.l3 {
        L3::V4 => {
            params.family = AF_INET;
            params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([s[12], s[13], s[14], s[15]]);
            params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([d[12], d[13], d[14], d[15]]);
        }
        L3::V6 => {
            params.family = AF_INET6;
            params.__bindgen_anon_3.ipv6_src = words(s);
            params.__bindgen_anon_4.ipv6_dst = words(d);
        }
    }
    // SAFETY: valid skb context; params on the stack, of the size passed.
    let ret = unsafe { fib_lookup(ctx.skb.skb.cast(), &raw mut params, FIB_SIZE, 0) };
    ret == i64::from(BPF_FIB_LKUP_RET_NOT_FWDED)
}

/// Adds the 16-bit words of `bytes` to a one's-complement sum.
#[inline(always)]
fn sum<const N: usize>(mut acc: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    acc
}

#[inline(always)]
fn fold(mut acc: u32) -> [u8; 2] {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = acc as u16;
    (!folded).to_be_bytes()
}

/// Refuses the first packet of `flow` (see the module's documentation); returns the verdict.
#[inline(never)]
pub(crate) fn refuse(ctx: &mut TcContext, flow: &Flow) -> i32 {
    if local(ctx, flow) {
        return TC_ACT_OK;
    }
    if flow.proto == PROTO_UDP {
        return port_unreachable(ctx, flow);
    }
    if flow.proto != PROTO_TCP || flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return TC_ACT_SHOT;
    }
    tcp_reset(ctx, flow)
}

/// The reply frame of [`port_unreachable`]: Ethernet, the new IP header, the ICMP header, then
/// the quoted IP and UDP headers of the refused datagram.
const UNREACH_V4: usize = ETH_HLEN + 20 + 8 + 20 + 8;
const UNREACH_V6: usize = ETH_HLEN + 40 + 8 + 40 + 8;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// Turns a UDP datagram into the ICMP port unreachable that answers it: the frame is cut after
/// the IP and UDP headers, which the error quotes, room for a new IP header and the ICMP header
/// is opened after the MAC header, and the reply goes back out of the interface it came in on.
/// Written in place (the verifier's stack is short).
#[inline(never)]
fn port_unreachable(ctx: &mut TcContext, flow: &Flow) -> i32 {
    let (ip_len, frame_len) = match flow.l3 {
        L3::V4 => (20, UNREACH_V4),
        L3::V6 => (40, UNREACH_V6),
    };
    if flow.l4 != ETH_HLEN + ip_len {
        // IPv4 options or IPv6 extension headers: not worth answering.
        return TC_ACT_SHOT;
    }
    #[expect(clippy::cast_possible_truncation, reason = "a hundred bytes at most")]
    let (cut, room, len) = (
        (ETH_HLEN + ip_len + 8) as u32,
        (ip_len + 8) as i32,
        frame_len as u32,
    );
    // SAFETY: valid skb context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, cut, 0) } != 0
        || ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0).is_err()
        || ctx.pull_data(len).is_err()
    {
        return TC_ACT_SHOT;
    }
    let written = match flow.l3 {
        L3::V4 => Data::tc(ctx)
            .at::<[u8; UNREACH_V4]>(0)
            // SAFETY: `at` checked the frame lies within the packet.
            .is_some_and(|f| unreachable_v4(unsafe { &mut *f }, flow)),
        L3::V6 => Data::tc(ctx)
            .at::<[u8; UNREACH_V6]>(0)
            // SAFETY: as above.
            .is_some_and(|f| unreachable_v6(unsafe { &mut *f }, flow)),
    };
    if !written {
        return TC_ACT_SHOT;
    }
    // SAFETY: the skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: helper valid in tc; out of the interface the datagram came in on.
    #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* fit in i32")]
    let verdict = unsafe { bpf_redirect(ifindex, 0) } as i32;
    verdict
}

/// Swaps the frame's MAC addresses.
#[inline(always)]
fn swap_macs<const N: usize>(f: &mut [u8; N]) {
    let mut i = 0;
    while i < 6 {
        f.swap(i, 6 + i);
        i += 1;
    }
}

/// Adds the 16-bit words of `f[start..end]` to a one's-complement sum.
#[inline(always)]
fn sum_range<const N: usize>(mut acc: u32, f: &[u8; N], start: usize, end: usize) -> u32 {
    let mut i = start;
    while i + 1 < end && i + 1 < N {
        acc += u32::from(u16::from_be_bytes([f[i], f[i + 1]]));
        i += 2;
    }
    acc
}

/// IPv4: from the frontend to the client, ICMP destination unreachable, port unreachable.
#[inline(always)]
fn unreachable_v4(f: &mut [u8; UNREACH_V4], flow: &Flow) -> bool {
    swap_macs(f);
    let (s, d) = (&flow.daddr, &flow.saddr);
    let ip = ETH_HLEN;
    #[expect(clippy::cast_possible_truncation, reason = "56 bytes")]
    let total = ((UNREACH_V4 - ETH_HLEN) as u16).to_be_bytes();
    let header: [u8; 12] = [
        0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, PROTO_ICMP, 0, 0,
    ];
    let mut i = 0;
    while i < 12 {
        f[ip + i] = header[i];
        i += 1;
    }
    let mut i = 0;
    while i < 4 {
        f[ip + 12 + i] = s[12 + i];
        f[ip + 16 + i] = d[12 + i];
        i += 1;
    }
    let csum = fold(sum_range(0, f, ip, ip + 20));
    f[ip + 10] = csum[0];
    f[ip + 11] = csum[1];
    let icmp = ip + 20;
    f[icmp] = 3;
    f[icmp + 1] = 3;
    let mut i = 2;
    while i < 8 {
        f[icmp + i] = 0;
        i += 1;
    }
    let csum = fold(sum_range(0, f, icmp, UNREACH_V4));
    f[icmp + 2] = csum[0];
    f[icmp + 3] = csum[1];
    true
}

/// IPv6: from the frontend to the client, `ICMPv6` destination unreachable, port unreachable.
#[inline(always)]
fn unreachable_v6(f: &mut [u8; UNREACH_V6], flow: &Flow) -> bool {
    swap_macs(f);
    let (s, d) = (&flow.daddr, &flow.saddr);
    let ip = ETH_HLEN;
    #[expect(clippy::cast_possible_truncation, reason = "56 bytes")]
    let payload = (UNREACH_V6 - ETH_HLEN - 40) as u16;
    let len = payload.to_be_bytes();
    let header: [u8; 8] = [0x60, 0, 0, 0, len[0], len[1], PROTO_ICMPV6, 64];
    let mut i = 0;
    while i < 8 {
        f[ip + i] = header[i];
        i += 1;
    }
    let mut i = 0;
    while i < 16 {
        f[ip + 8 + i] = s[i];
        f[ip + 24 + i] = d[i];
        i += 1;
    }
    let icmp = ip + 40;
    f[icmp] = 1;
    f[icmp + 1] = 4;
    let mut i = 2;
    while i < 8 {
        f[icmp + i] = 0;
        i += 1;
    }
    // The pseudo-header: addresses, upper-layer length, next header.
    let pseudo = sum(sum(0, s), d) + u32::from(payload) + u32::from(PROTO_ICMPV6);
    let csum = fold(sum_range(pseudo, f, icmp, UNREACH_V6));
    f[icmp + 2] = csum[0];
    f[icmp + 3] = csum[1];
    true
}

/// Turns a SYN into the RST+ACK that answers it and sends it back out of the interface it came
/// in on (MACs, addresses and ports swapped; options and payload cut off). Not inlined, as
/// [`port_unreachable`], so that [`refuse`] holds the frame of only one of them.
#[inline(never)]
fn tcp_reset(ctx: &mut TcContext, flow: &Flow) -> i32 {
    let ip_len: usize = match flow.l3 {
        L3::V4 => 20,
        L3::V6 => 40,
    };
    if flow.l4 != ETH_HLEN + ip_len {
        // IPv4 options: not worth answering.
        return TC_ACT_SHOT;
    }
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return TC_ACT_SHOT;
    };
    let Ok(seq) = ctx.load::<[u8; 4]>(flow.l4 + 4) else {
        return TC_ACT_SHOT;
    };
    // A SYN takes one sequence number (a payload on a SYN is not acknowledged).
    let ack = u32::from_be_bytes(seq).wrapping_add(1).to_be_bytes();
    let sport = flow.dport.to_ne_bytes();
    let dport = flow.sport.to_ne_bytes();
    let mut tcp: [u8; 20] = [
        sport[0],
        sport[1],
        dport[0],
        dport[1],
        0,
        0,
        0,
        0,
        ack[0],
        ack[1],
        ack[2],
        ack[3],
        0x50,
        TCP_RST_ACK,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    // The pseudo-header: addresses (swapped), protocol, TCP length.
    let (s, d) = (&flow.daddr, &flow.saddr);
    let mut acc = match flow.l3 {
        L3::V4 => {
            let v4 = [s[12], s[13], s[14], s[15], d[12], d[13], d[14], d[15]];
            sum(0, &v4)
        }
        L3::V6 => sum(sum(0, s), d),
    };
    acc += u32::from(PROTO_TCP) + 20;
    let csum = fold(sum(acc, &tcp));
    tcp[16] = csum[0];
    tcp[17] = csum[1];

    let frame_len = ETH_HLEN + ip_len + 20;
    #[expect(clippy::cast_possible_truncation, reason = "a few dozen bytes")]
    let new_len = frame_len as u32;
    // SAFETY: valid skb context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len, 0) } != 0 {
        return TC_ACT_SHOT;
    }
    let swapped = [
        macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2], macs[3],
        macs[4], macs[5],
    ];
    let ok = match flow.l3 {
        L3::V4 => {
            let total = u16::try_from(ip_len + 20).unwrap_or(40).to_be_bytes();
            let mut ip: [u8; 20] = [
                0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0, s[12], s[13],
                s[14], s[15], d[12], d[13], d[14], d[15],
            ];
            let csum = fold(sum(0, &ip));
            ip[10] = csum[0];
            ip[11] = csum[1];
            ctx.store(ETH_HLEN, &ip, 0).is_ok()
        }
        L3::V6 => {
            let Ok(mut ip) = ctx.load::<[u8; 40]>(ETH_HLEN) else {
                return TC_ACT_SHOT;
            };
            ip[4] = 0;
            ip[5] = 20;
            ip[6] = PROTO_TCP;
            ip[7] = 64;
            let mut i = 0;
            while i < 16 {
                ip[8 + i] = s[i];
                ip[24 + i] = d[i];
                i += 1;
            }
            ctx.store(ETH_HLEN, &ip, 0).is_ok()
        }
    };
    if !ok || ctx.store(0, &swapped, 0).is_err() || ctx.store(ETH_HLEN + ip_len, &tcp, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: the skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: helper valid in tc; out of the interface the SYN came in on.
    #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* fit in i32")]
    let verdict = unsafe { bpf_redirect(ifindex, 0) } as i32;
    verdict
}
