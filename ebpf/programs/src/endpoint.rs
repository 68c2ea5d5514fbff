//! The pods of this node: the endpoint map, their counters, and the same-node fast path.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_UNSPEC},
    helpers::bpf_redirect_peer,
    macros::map,
    maps::{HashMap, PerCpuHashMap},
    programs::TcContext,
};
use gannet_common::{DEFAULT_MAX_ENDPOINTS, EndpointKey, EndpointStats, EndpointValue};

use crate::{fib, nodeport, packet};

#[map(name = "GANNET_EP")]
pub(crate) static ENDPOINTS: HashMap<EndpointKey, EndpointValue> =
    HashMap::pinned(DEFAULT_MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

#[map(name = "GANNET_EP_STATS")]
pub(crate) static ENDPOINT_STATS: PerCpuHashMap<u32, EndpointStats> =
    PerCpuHashMap::pinned(DEFAULT_MAX_ENDPOINTS, 0);

/// Which counters of an endpoint a packet adds to.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    ToPod,
    FromPod,
}

const OK: i32 = TC_ACT_OK;

#[inline(always)]
pub(crate) fn count(ifindex: u32, direction: Direction, bytes: u32) {
    let Some(stats) = ENDPOINT_STATS.get_ptr_mut(ifindex) else {
        // The agent creates the counters with the endpoint; an interface without them is not
        // one of ours.
        return;
    };
    // SAFETY: per-CPU value, so no other CPU writes it concurrently.
    let stats = unsafe { &mut *stats };
    match direction {
        Direction::ToPod => {
            stats.rx_packets += 1;
            stats.rx_bytes += u64::from(bytes);
        }
        Direction::FromPod => {
            stats.tx_packets += 1;
            stats.tx_bytes += u64::from(bytes);
        }
    }
}

/// A packet a pod sent (tc ingress of its host-side veth). To another pod of this node it goes
/// straight into that pod's namespace; to a pod of another node (`--overlay ebpf`) straight
/// into the VXLAN device; everything else continues to the host stack.
#[inline(always)]
pub(crate) fn from_pod(ctx: &mut TcContext) -> i32 {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count(ifindex, Direction::FromPod, len);

    let Some(l3) = packet::l3(ctx) else {
        return OK;
    };
    let Some((_, dst)) = packet::addresses(ctx, l3) else {
        return OK;
    };
    let Some(peer) = local(dst) else {
        // A reply of a NodePort flow this pod serves goes back to its client, and so does an
        // ICMP error the pod sends about one of the client's packets.
        if let Some(verdict) = nodeport::reply_from_pod(ctx) {
            return verdict;
        }
        let verdict = nodeport::icmp_error_from_pod(ctx);
        if verdict != TC_ACT_UNSPEC {
            return verdict;
        }
        return fib::encapsulate(ctx, l3, &dst);
    };
    if peer.ifindex == ifindex {
        // Hairpin to itself: leave it to the stack.
        return OK;
    }
    deliver(ctx, l3, &peer)
}

/// The pod of this node with address `dst`.
#[inline(always)]
pub(crate) fn local(dst: [u8; 16]) -> Option<EndpointValue> {
    // SAFETY: not preallocated: the value is not rewritten while we copy it.
    unsafe { ENDPOINTS.get(EndpointKey { addr: dst }) }.copied()
}

/// Routes a packet into `pod`'s namespace: TTL decremented, MACs set (the pod's gateway is its
/// host-side veth), counted as the pod's rx, and handed to the pod's side of the veth with
/// `bpf_redirect_peer` (tc ingress only). A packet that must not or cannot be forwarded here
/// goes on to the host stack.
#[inline(always)]
pub(crate) fn deliver(ctx: &mut TcContext, l3: packet::L3, pod: &EndpointValue) -> i32 {
    if !packet::decrement_ttl(ctx, l3) || !packet::set_macs(ctx, pod.mac, pod.host_mac) {
        return OK;
    }
    // SAFETY: the context's skb pointer is valid for the program's run.
    let len = unsafe { (*ctx.skb.skb).len };
    count(pod.ifindex, Direction::ToPod, len);
    // SAFETY: helper valid at tc ingress; returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "TC_ACT_* verdicts fit in i32"
    )]
    let verdict = unsafe { bpf_redirect_peer(pod.ifindex, 0) } as i32;
    verdict
}

/// A packet the host stack delivers to a pod (tc egress of its host-side veth).
#[inline(always)]
pub(crate) fn to_pod(ctx: &TcContext) -> i32 {
    // SAFETY: as in `from_pod`.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count(ifindex, Direction::ToPod, len);
    OK
}
