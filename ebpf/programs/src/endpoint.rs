//! The pods of this node: the endpoint map, their counters, the check that a pod sends only
//! from its own addresses, and the same-node fast path.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_redirect_peer,
    macros::map,
    maps::{HashMap, PerCpuHashMap},
    programs::TcContext,
};
use gannet_common::{
    DEFAULT_MAX_ENDPOINTS, EndpointDrops, EndpointKey, EndpointStats, EndpointValue, v4_mapped,
};

use crate::{fib, nodeport, packet};

#[map(name = "GANNET_EP")]
pub(crate) static ENDPOINTS: HashMap<EndpointKey, EndpointValue> =
    HashMap::pinned(DEFAULT_MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

#[map(name = "GANNET_EP_STATS")]
pub(crate) static ENDPOINT_STATS: PerCpuHashMap<u32, EndpointStats> =
    PerCpuHashMap::pinned(DEFAULT_MAX_ENDPOINTS, 0);

#[map(name = "GANNET_EP_DROPS")]
static ENDPOINT_DROPS: PerCpuHashMap<u32, EndpointDrops> =
    PerCpuHashMap::pinned(DEFAULT_MAX_ENDPOINTS, 0);

/// Why a pod's packet was dropped.
#[derive(Clone, Copy)]
enum DropReason {
    /// An IP packet from an address that is not the pod's.
    Source,
    /// ARP or neighbour advertisement for an address that is not the pod's.
    Neighbour,
}

// Offsets in the frame (Ethernet header included).
/// ARP: protocol type, hardware and protocol address lengths.
const ARP_PTYPE: usize = 16;
/// ARP: sender protocol address (after operation and sender hardware address).
const ARP_SPA: usize = 28;
const IPV6_NEXTHDR: usize = 20;
/// The `ICMPv6` header, when it follows the IPv6 header directly.
const ICMP6: usize = 54;
/// A neighbour advertisement's target address.
const ND_TARGET: usize = ICMP6 + 8;
const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOUR_ADVERT: u8 = 136;

/// Which counters of an endpoint a packet adds to.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    ToPod,
    FromPod,
}

/// The packet is gannet's, and goes on to the host stack (the rest of the tcx chain is skipped).
const OK: i32 = TC_ACT_OK;
/// Not gannet's business: the next tcx program runs (`TCX_NEXT`); at the end of the chain the
/// packet goes on to the host stack, as with `TC_ACT_OK`.
pub(crate) const NEXT: i32 = TC_ACT_UNSPEC;
const SHOT: i32 = TC_ACT_SHOT;

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

/// A packet a pod sent (tc ingress of its host-side veth). One the pod may not send is dropped.
/// To another pod of this node it goes straight into that pod's namespace; to a pod of another
/// node (`--overlay ebpf`) straight into the VXLAN device; everything else continues (`NEXT`).
#[inline(always)]
pub(crate) fn from_pod(ctx: &mut TcContext) -> i32 {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count(ifindex, Direction::FromPod, len);

    let Some(l3) = packet::l3(ctx) else {
        if packet::is_arp(ctx) && !arp_allowed(ctx, ifindex) {
            return dropped(ifindex, DropReason::Neighbour);
        }
        return NEXT;
    };
    let Some((src, dst)) = packet::addresses(ctx, l3) else {
        return NEXT;
    };
    if !owns(ifindex, src) {
        if l3 == packet::L3::V4 || !link_local_or_unspecified(&src) {
            return dropped(ifindex, DropReason::Source);
        }
        // IPv6 link-local (neighbour discovery, router solicitations, MLD): for the host stack
        // alone, which never forwards it off the link; neither the fast path nor the tunnel.
        if !advert_allowed(ctx, ifindex) {
            return dropped(ifindex, DropReason::Neighbour);
        }
        return NEXT;
    }
    if l3 == packet::L3::V6 && !advert_allowed(ctx, ifindex) {
        return dropped(ifindex, DropReason::Neighbour);
    }
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
        // Into the tunnel, or `NEXT`.
        return fib::encapsulate(ctx, l3, &dst);
    };
    if peer.ifindex == ifindex {
        // Hairpin to itself: leave it to the stack.
        return NEXT;
    }
    deliver(ctx, l3, &peer)
}

/// Whether `addr` is an address of the pod on host veth `ifindex`.
#[inline(always)]
fn owns(ifindex: u32, addr: [u8; 16]) -> bool {
    local(addr).is_some_and(|pod| pod.ifindex == ifindex)
}

/// `fe80::/10` or `::`.
#[inline(always)]
fn link_local_or_unspecified(addr: &[u8; 16]) -> bool {
    (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80) || *addr == [0; 16]
}

/// An ARP packet is the pod's to send when its sender address is the pod's, or 0.0.0.0 (an
/// address probe, RFC 5227); ARP for other protocols is left alone.
#[inline(always)]
fn arp_allowed(ctx: &TcContext, ifindex: u32) -> bool {
    // Protocol type IPv4 (0x0800), hardware address length 6, protocol address length 4.
    if packet::read::<[u8; 4]>(ctx, ARP_PTYPE) != Some([0x08, 0x00, 6, 4]) {
        return true;
    }
    let Some(spa) = packet::read::<[u8; 4]>(ctx, ARP_SPA) else {
        // Truncated: the host stack drops it.
        return true;
    };
    spa == [0; 4] || owns(ifindex, v4_mapped(spa))
}

/// An IPv6 packet is the pod's to send unless it is a neighbour advertisement (`ICMPv6` right
/// after the IPv6 header) whose target is neither the pod's nor link-local.
#[inline(always)]
fn advert_allowed(ctx: &TcContext, ifindex: u32) -> bool {
    if packet::read::<u8>(ctx, IPV6_NEXTHDR) != Some(IPPROTO_ICMPV6)
        || packet::read::<u8>(ctx, ICMP6) != Some(ND_NEIGHBOUR_ADVERT)
    {
        return true;
    }
    let Some(target) = packet::read::<[u8; 16]>(ctx, ND_TARGET) else {
        // Truncated: the host stack drops it.
        return true;
    };
    link_local_or_unspecified(&target) || owns(ifindex, target)
}

/// Counts a dropped packet of the pod on `ifindex`; returns the verdict that drops it.
#[inline(always)]
fn dropped(ifindex: u32, why: DropReason) -> i32 {
    let mut drops = ENDPOINT_DROPS.get_ptr_mut(ifindex);
    if drops.is_none() {
        // The pod's first drop: its counters start at zero (a racing CPU may have made them).
        let _ = ENDPOINT_DROPS.insert(ifindex, EndpointDrops::default(), u64::from(BPF_NOEXIST));
        drops = ENDPOINT_DROPS.get_ptr_mut(ifindex);
    }
    if let Some(drops) = drops {
        // SAFETY: per-CPU value, so no other CPU writes it concurrently.
        let drops = unsafe { &mut *drops };
        match why {
            DropReason::Source => drops.source += 1,
            DropReason::Neighbour => drops.neighbour += 1,
        }
    }
    SHOT
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

/// A packet the host stack delivers to a pod (tc egress of its host-side veth): counted, and
/// left to the programs after this one.
#[inline(always)]
pub(crate) fn to_pod(ctx: &TcContext) -> i32 {
    // SAFETY: as in `from_pod`.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count(ifindex, Direction::ToPod, len);
    NEXT
}
