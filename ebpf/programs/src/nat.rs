//! Rewriting a flow's addresses and ports, with the checksums they are part of: the IPv4 header
//! checksum, and the TCP/UDP checksum, whose pseudo-header covers the addresses.
//!
//! Few helper calls, each with its checks and `skb_ensure_writable`: the TCP/UDP checksum is
//! updated once for the addresses (by their difference) and once for the ports; the bytes are
//! written with one store where they lie together (IPv4 without options: the header checksum,
//! computed here (`csum.rs`), the addresses and the ports), else one for the addresses and one
//! for the ports. The TCP/UDP checksum is left to the kernel's helper, which keeps
//! `CHECKSUM_COMPLETE` and `CHECKSUM_PARTIAL` packets right: an address change (pseudo-header)
//! and a port change (the segment) touch those differently, hence the two updates.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use gannet_common::PROTO_UDP;

use crate::{
    csum,
    flow::Flow,
    packet::{self, ETH_HLEN, IPV4_CSUM, IPV6_SADDR, L3},
};

/// Where a flow is rewritten to.
#[derive(Clone, Copy)]
pub(crate) struct Tuple {
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
}

/// `bpf_l4_csum_replace`'s size field for an update by a difference (`from` 0, `to` the
/// difference).
const BY_DIFF: u64 = 0;
/// Its size field for a 4-byte word.
const WORD: u64 = 4;
/// Where the TCP/UDP header of IPv4 without options starts: right after the addresses.
const IPV4_L4: usize = ETH_HLEN + 20;

/// Rewrites the packet of `flow` to `to` (only what differs). Returns `false` when the packet
/// could not be written; it may then be half-rewritten and must be dropped.
#[inline(never)]
pub(crate) fn rewrite(ctx: &mut TcContext, flow: &Flow, to: &Tuple) -> bool {
    // UDP over IPv4 may carry no checksum (0), which must stay 0; a computed 0 becomes 0xffff.
    let mangled = if flow.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let csum = flow.csum_offset();
    let new_addresses = flow.saddr != to.saddr || flow.daddr != to.daddr;
    let new_ports = flow.sport != to.sport || flow.dport != to.dport;
    if new_addresses && new_ports && flow.l3 == L3::V4 && flow.l4 == IPV4_L4 {
        return ipv4_together(ctx, flow, to, csum, mangled);
    }
    (!new_addresses || addresses(ctx, flow, to, csum, mangled))
        && (!new_ports || ports(ctx, flow, to, csum, mangled))
}

/// IPv4 without options, addresses and ports: two checksum updates and one store of the header
/// checksum, the addresses and the ports.
#[inline(always)]
fn ipv4_together(ctx: &mut TcContext, flow: &Flow, to: &Tuple, csum: usize, mangled: u64) -> bool {
    let (old, new) = ipv4_addresses(flow, to);
    let Some(ip) = ipv4_header_csum(ctx, &old, &new) else {
        return false;
    };
    let (old_ports, p) = port_words(flow, to);
    let bytes = [
        ip[0], ip[1], new[0], new[1], new[2], new[3], new[4], new[5], new[6], new[7], p[0], p[1],
        p[2], p[3],
    ];
    pseudo_header(ctx, csum, csum::diff(&old, &new), mangled)
        && port_csum(ctx, csum, old_ports, p, mangled)
        && ctx.store(IPV4_CSUM, &bytes, 0).is_ok()
}

/// Both addresses: one checksum update, one store.
#[inline(always)]
fn addresses(ctx: &mut TcContext, flow: &Flow, to: &Tuple, csum: usize, mangled: u64) -> bool {
    match flow.l3 {
        L3::V4 => {
            let (old, new) = ipv4_addresses(flow, to);
            let Some(ip) = ipv4_header_csum(ctx, &old, &new) else {
                return false;
            };
            // The header checksum and the addresses after it.
            let bytes = [
                ip[0], ip[1], new[0], new[1], new[2], new[3], new[4], new[5], new[6], new[7],
            ];
            pseudo_header(ctx, csum, csum::diff(&old, &new), mangled)
                && ctx.store(IPV4_CSUM, &bytes, 0).is_ok()
        }
        L3::V6 => {
            let mut old = [0u8; 32];
            let mut new = [0u8; 32];
            old[..16].copy_from_slice(&flow.saddr);
            old[16..].copy_from_slice(&flow.daddr);
            new[..16].copy_from_slice(&to.saddr);
            new[16..].copy_from_slice(&to.daddr);
            pseudo_header(ctx, csum, csum::diff(&old, &new), mangled)
                && ctx.store(IPV6_SADDR, &new, 0).is_ok()
        }
    }
}

/// Both ports: one checksum update, one store.
#[inline(always)]
fn ports(ctx: &mut TcContext, flow: &Flow, to: &Tuple, csum: usize, mangled: u64) -> bool {
    let (old, new) = port_words(flow, to);
    port_csum(ctx, csum, old, new, mangled) && ctx.store(flow.l4, &new, 0).is_ok()
}

/// The IPv4 addresses, source then destination, as they lie in the header: before and after.
#[inline(always)]
fn ipv4_addresses(flow: &Flow, to: &Tuple) -> ([u8; 8], [u8; 8]) {
    let (s, d, ns, nd) = (&flow.saddr, &flow.daddr, &to.saddr, &to.daddr);
    (
        [s[12], s[13], s[14], s[15], d[12], d[13], d[14], d[15]],
        [
            ns[12], ns[13], ns[14], ns[15], nd[12], nd[13], nd[14], nd[15],
        ],
    )
}

/// The IPv4 header checksum after its addresses `old` became `new`.
#[inline(always)]
fn ipv4_header_csum(ctx: &TcContext, old: &[u8; 8], new: &[u8; 8]) -> Option<[u8; 2]> {
    let field = packet::read::<[u8; 2]>(ctx, IPV4_CSUM)?;
    Some(csum::replace(field, old, new))
}

/// The ports, source then destination (one 32-bit word at the start of the TCP/UDP header), as
/// they lie in the packet: before and after.
#[inline(always)]
fn port_words(flow: &Flow, to: &Tuple) -> ([u8; 4], [u8; 4]) {
    let (s, d) = (flow.sport.to_ne_bytes(), flow.dport.to_ne_bytes());
    let (ns, nd) = (to.sport.to_ne_bytes(), to.dport.to_ne_bytes());
    ([s[0], s[1], d[0], d[1]], [ns[0], ns[1], nd[0], nd[1]])
}

/// The TCP/UDP checksum after the addresses of its pseudo-header changed by `diff`.
#[inline(always)]
fn pseudo_header(ctx: &mut TcContext, csum: usize, diff: u32, mangled: u64) -> bool {
    ctx.l4_csum_replace(
        csum,
        0,
        u64::from(diff),
        u64::from(BPF_F_PSEUDO_HDR) | mangled | BY_DIFF,
    )
    .is_ok()
}

/// The TCP/UDP checksum after its ports `old` became `new`.
#[inline(always)]
fn port_csum(ctx: &mut TcContext, csum: usize, old: [u8; 4], new: [u8; 4], mangled: u64) -> bool {
    ctx.l4_csum_replace(
        csum,
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
        mangled | WORD,
    )
    .is_ok()
}
