//! The overlay in the kernel (`--overlay ebpf`): the node map, this node's tunnel settings, and
//! encapsulation through the VXLAN device in external (collect-metadata) mode. The device does
//! the UDP/VXLAN framing; these functions only choose the inner MACs and the tunnel key
//! (remote address, VNI, TTL) the device encapsulates with, or check the key it decapsulated.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_F_TUNINFO_IPV6, TC_ACT_OK, TC_ACT_SHOT, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::map,
    maps::{
        Array,
        lpm_trie::{Key, LpmTrie},
    },
    programs::TcContext,
};
use gannet_common::{
    DEFAULT_MAX_NODES, NodeValue, TUNNEL_F_ENABLED, TUNNEL_F_IPV6_UNDERLAY, TunnelConfig,
};

use crate::{
    endpoint::{self, NEXT},
    packet,
};

/// The other nodes' pod CIDRs. An LPM trie is never preallocated: an update replaces the
/// element under RCU, so a value looked up is never one being rewritten.
#[map(name = "GANNET_NODES")]
static NODES: LpmTrie<[u8; 16], NodeValue> = LpmTrie::pinned(DEFAULT_MAX_NODES, 0);

/// This node's tunnel. Written once when gannetd sets the device up (an array element is
/// rewritten in place, so it is only ever changed before the programs are attached to a new
/// device, or with the same contents).
#[map(name = "GANNET_TUNNEL")]
static TUNNEL: Array<TunnelConfig> = Array::pinned(1, 0);

/// The packet is gannet's, and goes on (to the host stack, or the device).
const OK: i32 = TC_ACT_OK;
const SHOT: i32 = TC_ACT_SHOT;

/// The outer header's TTL (Linux's default for forwarded tunnel traffic).
const TUNNEL_TTL: u8 = 64;
#[expect(
    clippy::cast_possible_truncation,
    reason = "bpf_tunnel_key is 44 bytes"
)]
const KEY_SIZE: u32 = size_of::<bpf_tunnel_key>() as u32;
/// `EPROTO`: the helper found a tunnel key of the other address family.
const EPROTO: i64 = 71;

/// The tunnel's settings, when gannetd has set it up.
#[inline(always)]
fn config() -> Option<TunnelConfig> {
    let tunnel = TUNNEL.get(0)?;
    (tunnel.flags & TUNNEL_F_ENABLED != 0).then_some(*tunnel)
}

/// The node whose pod CIDR holds `dst` (16 bytes, IPv4 as `::ffff:a.b.c.d`).
#[inline(always)]
fn node(dst: [u8; 16]) -> Option<NodeValue> {
    NODES.get(Key::new(128, dst)).copied()
}

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// Makes the device send the packet to `node`: outer destination its underlay address, VNI
/// `vni`, TTL 64 (the outer source is chosen by the kernel's route to it).
#[inline(always)]
fn set_key(ctx: &TcContext, node: &NodeValue, vni: u32) -> bool {
    // SAFETY: plain integers; all-zero is a valid key.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    key.tunnel_ttl = TUNNEL_TTL;
    let ip = &node.ip;
    let flags = if is_v4_mapped(ip) {
        // The helper takes the IPv4 address in host order (and IPv6 in network order).
        key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
        0
    } else {
        key.__bindgen_anon_1.remote_ipv6 = [
            u32::from_ne_bytes([ip[0], ip[1], ip[2], ip[3]]),
            u32::from_ne_bytes([ip[4], ip[5], ip[6], ip[7]]),
            u32::from_ne_bytes([ip[8], ip[9], ip[10], ip[11]]),
            u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        ];
        u64::from(BPF_F_TUNINFO_IPV6)
    };
    // SAFETY: valid skb context, key on the stack of the size we pass.
    unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &raw mut key, KEY_SIZE, flags) == 0 }
}

/// What the skb's tunnel metadata says.
enum Metadata {
    /// A tunnel key (decapsulated by the device, or set by `from_pod`), with its VNI.
    Key { vni: u32 },
    /// None: not from (or for) the tunnel's metadata path.
    None,
}

/// Reads the skb's tunnel key, trying the underlay's family first.
#[inline(always)]
fn metadata(ctx: &TcContext, ipv6_first: bool) -> Metadata {
    let families = if ipv6_first {
        [u64::from(BPF_F_TUNINFO_IPV6), 0]
    } else {
        [0, u64::from(BPF_F_TUNINFO_IPV6)]
    };
    for flags in families {
        // SAFETY: plain integers; all-zero is a valid key.
        let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
        // SAFETY: valid skb context, key on the stack of the size we pass.
        let ret = unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &raw mut key, KEY_SIZE, flags) };
        if ret == 0 {
            return Metadata::Key { vni: key.tunnel_id };
        }
        if ret != -EPROTO {
            // -EINVAL: no key at all.
            return Metadata::None;
        }
    }
    Metadata::None
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "TC_ACT_* verdicts fit in i32"
)]
#[inline(always)]
fn redirect(ifindex: u32) -> i32 {
    // SAFETY: helper valid in tc; returns TC_ACT_REDIRECT, or TC_ACT_SHOT for bad flags.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// A pod's packet for a destination that is no pod of this node: if it lies in another node's
/// pod CIDR, it is routed here (TTL decremented, MACs set for the remote VTEP, tunnel key set)
/// and redirected into the VXLAN device, which encapsulates it; with a TTL that does not allow
/// that, it goes to the host stack (`TC_ACT_OK`; the stack answers with ICMP); a destination
/// in no other node's pod CIDR is not the tunnel's business (`NEXT`).
#[inline(always)]
pub(crate) fn from_pod(ctx: &mut TcContext, l3: packet::L3, dst: [u8; 16]) -> i32 {
    let Some(tunnel) = config() else {
        return NEXT;
    };
    let Some(node) = node(dst) else {
        return NEXT;
    };
    if !packet::decrement_ttl(ctx, l3) {
        // TTL exhausted (the host stack answers with ICMP) or not writable.
        return OK;
    }
    if !packet::set_macs(ctx, node.mac, tunnel.mac) || !set_key(ctx, &node, tunnel.vni) {
        // Already routed (TTL decremented): the stack must not route it again.
        return SHOT;
    }
    redirect(tunnel.ifindex)
}

/// A packet the VXLAN device decapsulated (tc ingress of the device). Another VNI than ours is
/// dropped. A packet for a pod of this node goes straight into the pod's namespace; anything
/// else (this node's own addresses, unknown destinations) continues (`NEXT`: the next tcx
/// program, then the host stack).
///
/// A packet without a tunnel key did not come through the device's decapsulation (only another
/// program redirecting into its ingress, or `BPF_PROG_TEST_RUN`, can produce one); it is judged
/// by its inner header alone.
#[inline(always)]
pub(crate) fn from_tunnel(ctx: &mut TcContext) -> i32 {
    let Some(tunnel) = config() else {
        return NEXT;
    };
    if let Metadata::Key { vni } = metadata(ctx, tunnel.flags & TUNNEL_F_IPV6_UNDERLAY != 0)
        && vni != tunnel.vni
    {
        return SHOT;
    }
    let Some(l3) = packet::l3(ctx) else {
        return NEXT;
    };
    let Some((_, dst)) = packet::addresses(ctx, l3) else {
        return NEXT;
    };
    let Some(pod) = endpoint::local(dst) else {
        return NEXT;
    };
    endpoint::deliver(ctx, l3, &pod)
}

/// A packet the node itself routes into the VXLAN device (tc egress of the device), e.g. from a
/// host process to a remote pod through the cluster-CIDR route. Packets `from_pod` already
/// redirected carry their tunnel key and continue (`NEXT`). Others get the key and MACs of the node whose
/// pod CIDR holds their destination; a destination no node owns cannot be encapsulated (the
/// device would drop it anyway) and is dropped here.
#[inline(always)]
pub(crate) fn to_tunnel(ctx: &mut TcContext) -> i32 {
    let Some(tunnel) = config() else {
        return NEXT;
    };
    if let Metadata::Key { .. } = metadata(ctx, tunnel.flags & TUNNEL_F_IPV6_UNDERLAY != 0) {
        return NEXT;
    }
    let Some(l3) = packet::l3(ctx) else {
        return SHOT;
    };
    let Some((_, dst)) = packet::addresses(ctx, l3) else {
        return SHOT;
    };
    let Some(node) = node(dst) else {
        return SHOT;
    };
    if packet::set_macs(ctx, node.mac, tunnel.mac) && set_key(ctx, &node, tunnel.vni) {
        OK
    } else {
        SHOT
    }
}
