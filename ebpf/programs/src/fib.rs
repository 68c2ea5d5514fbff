//! Sending a translated packet on: into a pod of this node, into the overlay (`--overlay
//! ebpf`), or out of the interface the kernel's routing table (FIB) names, with the neighbour's
//! MAC, without passing the host stack (which would take a packet with a source address of this
//! node, arriving from outside, for a martian).

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC,
        bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::{
    endpoint,
    flow::Flow,
    nodeport::count,
    packet::{self, L3, words},
    tunnel,
};
use gannet_common::NP_STAT_FIB_FAILED;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[expect(
    clippy::cast_possible_truncation,
    reason = "the structs are a few dozen bytes"
)]
const FIB_SIZE: i32 = size_of::<bpf_fib_lookup>() as i32;
#[expect(
    clippy::cast_possible_truncation,
    reason = "the structs are a few dozen bytes"
)]
const NEIGH_SIZE: i32 = size_of::<bpf_redir_neigh>() as i32;

/// Forwards a packet already rewritten to `daddr` (and `saddr`): a pod of this node gets it
/// through its veth peer, a pod behind `--overlay ebpf` through the tunnel, anything else as the
/// FIB says. A packet that cannot be routed is dropped (it was already rewritten) and counted.
#[inline(never)]
pub(crate) fn forward(ctx: &mut TcContext, flow: &Flow, saddr: &[u8; 16], daddr: &[u8; 16]) -> i32 {
    if let Some(pod) = endpoint::local(*daddr) {
        return endpoint::deliver(ctx, flow.l3, &pod);
    }
    let verdict = encapsulate(ctx, flow.l3, daddr);
    // Not a remote pod (`TC_ACT_UNSPEC`), or one whose TTL is exhausted (`TC_ACT_OK`, which
    // `route` drops): routed here.
    if verdict != TC_ACT_UNSPEC && verdict != TC_ACT_OK {
        return verdict;
    }
    route(ctx, flow, saddr, daddr)
}

/// `--overlay ebpf`: into the tunnel when `daddr` is another node's pod; `TC_ACT_UNSPEC` when
/// it is not, `TC_ACT_OK` (to the host stack) when its TTL is exhausted.
/// Not inlined, to keep its tunnel key off `forward`'s frame.
#[inline(never)]
pub(crate) fn encapsulate(ctx: &mut TcContext, l3: L3, daddr: &[u8; 16]) -> i32 {
    tunnel::from_pod(ctx, l3, *daddr)
}

/// Sends the packet out as the FIB says (a reply, whose client is never a pod of this node or
/// behind the tunnel, goes here directly). Not routable: dropped and counted.
#[inline(never)]
pub(crate) fn route(ctx: &mut TcContext, flow: &Flow, saddr: &[u8; 16], daddr: &[u8; 16]) -> i32 {
    let verdict = lookup_and_redirect(ctx, flow, saddr, daddr);
    if verdict == TC_ACT_SHOT {
        count(NP_STAT_FIB_FAILED);
    }
    verdict
}

#[inline(always)]
fn lookup_and_redirect(
    ctx: &mut TcContext,
    flow: &Flow,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
) -> i32 {
    let mut params = MaybeUninit::<bpf_fib_lookup>::uninit();
    // SAFETY: plain integers and unions of integers; all-zero is valid.
    let params = unsafe { packet::zero(&mut params) };
    params.l4_protocol = flow.proto;
    // SAFETY: the skb pointer is valid for the program's run.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // tot_len 0: the kernel checks the skb against the egress MTU itself, GSO-aware (a
    // segmentation-offloaded skb is far longer than the MTU and still forwardable).
    params.__bindgen_anon_1.tot_len = 0;
    match flow.l3 {
        L3::V4 => {
            params.family = AF_INET;
            params.__bindgen_anon_3.ipv4_src =
                u32::from_ne_bytes([saddr[12], saddr[13], saddr[14], saddr[15]]);
            params.__bindgen_anon_4.ipv4_dst =
                u32::from_ne_bytes([daddr[12], daddr[13], daddr[14], daddr[15]]);
        }
        L3::V6 => {
            params.family = AF_INET6;
            params.__bindgen_anon_3.ipv6_src = words(saddr);
            params.__bindgen_anon_4.ipv6_dst = words(daddr);
        }
    }
    // SAFETY: valid skb context; params on the stack, of the size passed.
    let ret = unsafe { fib_lookup(ctx.skb.skb.cast(), &raw mut *params, FIB_SIZE, 0) };
    #[expect(
        clippy::cast_sign_loss,
        reason = "compared against small non-negative codes"
    )]
    let ret = ret as u32;
    if ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH {
        return TC_ACT_SHOT;
    }
    if !packet::decrement_ttl(ctx, flow.l3) {
        return TC_ACT_SHOT;
    }
    if ret == BPF_FIB_LKUP_RET_SUCCESS {
        if !packet::set_macs(ctx, params.dmac, params.smac) {
            return TC_ACT_SHOT;
        }
        // SAFETY: helper valid in tc; returns TC_ACT_REDIRECT.
        #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* fit in i32")]
        return unsafe { bpf_redirect(params.ifindex, 0) } as i32;
    }
    // No neighbour entry yet: the kernel resolves it and queues the packet.
    let mut neigh = MaybeUninit::<bpf_redir_neigh>::uninit();
    // SAFETY: plain integers; all-zero is valid.
    let neigh = unsafe { packet::zero(&mut neigh) };
    // SAFETY: reading the union member the lookup wrote for this family.
    unsafe {
        match flow.l3 {
            L3::V4 => {
                neigh.nh_family = u32::from(AF_INET);
                neigh.__bindgen_anon_1.ipv4_nh = params.__bindgen_anon_4.ipv4_dst;
            }
            L3::V6 => {
                neigh.nh_family = u32::from(AF_INET6);
                neigh.__bindgen_anon_1.ipv6_nh = params.__bindgen_anon_4.ipv6_dst;
            }
        }
    }
    // SAFETY: helper valid in tc; params on the stack, of the size passed.
    #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* fit in i32")]
    let verdict =
        unsafe { bpf_redirect_neigh(params.ifindex, &raw mut *neigh, NEIGH_SIZE, 0) } as i32;
    verdict
}
