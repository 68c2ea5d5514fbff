//! The NodePort program in XDP (`--nodeport-acceleration xdp`, native mode on the external
//! interfaces), in front of the tc program, sharing its maps.
//!
//! What happens to a packet arriving at an external interface (`gannet_nodeport_xdp`):
//! 1. It is looked up as in tc (`nodeport.rs`): a tracked flow, or a new flow to an external
//!    frontend (source ranges, Maglev, affinity, conntrack: the same code, so the same
//!    backend and the same entries).
//! 2. When the FIB sends the translated packet back out of the interface it came in on (a
//!    backend on the same segment, a reply to a client there), it is rewritten here and
//!    transmitted (`XDP_TX`) without ever becoming an skb.
//! 3. Otherwise (a pod of this node, the overlay, another interface) it passes untouched
//!    (`XDP_PASS`); the tc program finds the flow tracked and translates it there.
//! 4. Anything else passes (ICMP errors too: tc handles them); a client outside a frontend's
//!    source ranges, and a frontend that must drop, are dropped here.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::bpf_fib_lookup as fib_lookup,
    macros::xdp,
    programs::XdpContext,
};
use gannet_common::{CT_F_DSR, CtEntry, PROTO_UDP};

use crate::{
    csum,
    flow::Flow,
    nodeport,
    packet::{self, Data, ETH_HLEN, L3, words},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
#[expect(clippy::cast_possible_truncation, reason = "the struct is 64 bytes")]
const FIB_SIZE: i32 = size_of::<bpf_fib_lookup>() as i32;

#[xdp]
fn gannet_nodeport_xdp(ctx: XdpContext) -> u32 {
    nodeport::from_xdp(&ctx)
}

/// A tc verdict (`TC_ACT_OK` / `TC_ACT_SHOT`) as an XDP action.
#[inline(always)]
pub(crate) fn action(tc_verdict: i32) -> u32 {
    if tc_verdict == aya_ebpf::bindings::TC_ACT_SHOT {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// Transmits the flow's packet rewritten as `tracked` says when it goes back out of the
/// interface it came in on; otherwise leaves it to tc (`XDP_PASS`, untouched).
#[inline(never)]
pub(crate) fn transmit(ctx: &XdpContext, flow: &Flow, tracked: &CtEntry) -> u32 {
    if tracked.flags & CT_F_DSR != 0 {
        // The DSR option needs room in the packet: tc inserts it.
        return XDP_PASS;
    }
    let mut params = MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: plain integers and unions of integers; all-zero is valid.
    let params = unsafe { packet::zero(&mut params) };
    params.l4_protocol = flow.proto;
    #[expect(clippy::cast_possible_truncation, reason = "an ifindex fits 32 bits")]
    let ingress = ctx.ingress_ifindex() as u32;
    params.ifindex = ingress;
    let data = Data::xdp(ctx);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an IP packet's length fits 16 bits"
    )]
    let tot_len = (data.end - data.start).saturating_sub(ETH_HLEN) as u16;
    params.__bindgen_anon_1.tot_len = tot_len;
    let (s, d) = (&tracked.saddr, &tracked.daddr);
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
    // SAFETY: valid XDP context; params on the stack, of the size passed.
    let ret = unsafe { fib_lookup(ctx.ctx.cast(), &raw mut *params, FIB_SIZE, 0) };
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || params.ifindex != ingress {
        return XDP_PASS;
    }
    if !rewrite(data, flow, tracked) || !hop(data, flow.l3) {
        // Partly rewritten: it cannot be passed on.
        return XDP_DROP;
    }
    let Some(eth) = data.at::<[u8; 12]>(0) else {
        return XDP_DROP;
    };
    let (dmac, smac) = (params.dmac, params.smac);
    // SAFETY: `at` checked the 12 bytes lie within the packet.
    unsafe {
        *eth = [
            dmac[0], dmac[1], dmac[2], dmac[3], dmac[4], dmac[5], smac[0], smac[1], smac[2],
            smac[3], smac[4], smac[5],
        ];
    }
    XDP_TX
}

/// Decrements the TTL / hop limit (with the IPv4 header checksum); `false` when it must not be
/// forwarded (the stack then answers with ICMP — but the packet was rewritten: dropped).
#[inline(always)]
fn hop(data: Data, l3: L3) -> bool {
    match l3 {
        L3::V4 => {
            let Some(h) = data.at::<[u8; 20]>(ETH_HLEN) else {
                return false;
            };
            // SAFETY: `at` checked the header lies within the packet.
            let h = unsafe { &mut *h };
            if h[8] <= 1 {
                return false;
            }
            let old = [h[8], h[9]];
            let new = [h[8] - 1, h[9]];
            let sum = csum::replace([h[10], h[11]], &old, &new);
            h[8] = new[0];
            h[10] = sum[0];
            h[11] = sum[1];
            true
        }
        L3::V6 => {
            let Some(h) = data.at::<[u8; 40]>(ETH_HLEN) else {
                return false;
            };
            // SAFETY: as above.
            let h = unsafe { &mut *h };
            if h[7] <= 1 {
                return false;
            }
            h[7] -= 1;
            true
        }
    }
}

/// Rewrites addresses and ports, with the IPv4 header and TCP/UDP checksums.
#[inline(always)]
fn rewrite(data: Data, flow: &Flow, to: &CtEntry) -> bool {
    // The offsets come from memory: bound them for the verifier (an IPv4 header is at most
    // 60 bytes).
    let l4 = flow.l4;
    if l4 > ETH_HLEN + 60 {
        return false;
    }
    let csum_offset = l4
        + if flow.proto == gannet_common::PROTO_TCP {
            16
        } else {
            6
        };
    let Some(l4_csum) = data.at::<[u8; 2]>(csum_offset) else {
        return false;
    };
    let Some(ports) = data.at::<[u8; 4]>(l4) else {
        return false;
    };
    let udp4 = flow.proto == PROTO_UDP && flow.l3 == L3::V4;
    // SAFETY: `at` checked every pointer's bytes lie within the packet.
    unsafe {
        let mut sum = *l4_csum;
        match flow.l3 {
            L3::V4 => {
                let Some(h) = data.at::<[u8; 20]>(ETH_HLEN) else {
                    return false;
                };
                let h = &mut *h;
                let old: [u8; 8] = [h[12], h[13], h[14], h[15], h[16], h[17], h[18], h[19]];
                let new: [u8; 8] = [
                    to.saddr[12],
                    to.saddr[13],
                    to.saddr[14],
                    to.saddr[15],
                    to.daddr[12],
                    to.daddr[13],
                    to.daddr[14],
                    to.daddr[15],
                ];
                let ip = csum::replace([h[10], h[11]], &old, &new);
                sum = if udp4 {
                    csum::replace_udp4(sum, &old, &new)
                } else {
                    csum::replace(sum, &old, &new)
                };
                h[10] = ip[0];
                h[11] = ip[1];
                let mut i = 0;
                while i < 8 {
                    h[12 + i] = new[i];
                    i += 1;
                }
            }
            L3::V6 => {
                let Some(h) = data.at::<[u8; 40]>(ETH_HLEN) else {
                    return false;
                };
                let h = &mut *h;
                let mut old = [0u8; 32];
                let mut new = [0u8; 32];
                let mut i = 0;
                while i < 16 {
                    old[i] = h[8 + i];
                    old[16 + i] = h[24 + i];
                    new[i] = to.saddr[i];
                    new[16 + i] = to.daddr[i];
                    i += 1;
                }
                sum = csum::replace(sum, &old, &new);
                let mut i = 0;
                while i < 32 {
                    h[8 + i] = new[i];
                    i += 1;
                }
            }
        }
        let p = &mut *ports;
        let old = *p;
        let sport = to.sport.to_ne_bytes();
        let dport = to.dport.to_ne_bytes();
        let new = [sport[0], sport[1], dport[0], dport[1]];
        sum = if udp4 {
            csum::replace_udp4(sum, &old, &new)
        } else {
            csum::replace(sum, &old, &new)
        };
        *p = new;
        *l4_csum = sum;
    }
    true
}
