//! Refusing a connection to a frontend without backends. For a frontend address the node holds
//! (a node port), the host stack does it: nothing listens there, so it answers with a TCP RST or
//! an ICMP port unreachable. An external or LoadBalancer IP is not the node's own, and the stack
//! would route the packet on (back towards the network); for TCP the program answers with a RST
//! itself, other protocols are dropped.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NOT_FWDED, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use gannet_common::PROTO_TCP;

use crate::{
    flow::{Flow, TCP_ACK, TCP_SYN},
    packet::{ETH_HLEN, L3, words},
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
    if flow.proto != PROTO_TCP || flow.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return TC_ACT_SHOT;
    }
    tcp_reset(ctx, flow)
}

/// Turns a SYN into the RST+ACK that answers it and sends it back out of the interface it came
/// in on (MACs, addresses and ports swapped; options and payload cut off).
#[inline(always)]
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
