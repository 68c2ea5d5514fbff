//! Rewriting a flow's addresses and ports, with the checksums they are part of: the IPv4 header
//! checksum, and the TCP/UDP checksum, whose pseudo-header covers the addresses. The kernel's
//! checksum helpers keep `CHECKSUM_PARTIAL` and `CHECKSUM_COMPLETE` packets right as well.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use gannet_common::PROTO_UDP;

use crate::{
    flow::Flow,
    packet::{IPV4_CSUM, IPV4_DADDR, IPV4_SADDR, IPV6_DADDR, IPV6_SADDR, L3, words},
};

/// Where a flow is rewritten to.
#[derive(Clone, Copy)]
pub(crate) struct Tuple {
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
}

/// Rewrites the packet of `flow` to `to` (only the fields that differ). Returns `false` when
/// the packet could not be written; it may then be half-rewritten and must be dropped.
#[inline(never)]
pub(crate) fn rewrite(ctx: &mut TcContext, flow: &Flow, to: &Tuple) -> bool {
    // UDP over IPv4 may carry no checksum (0), which must stay 0; a computed 0 becomes 0xffff.
    let mangled = if flow.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let csum = flow.csum_offset();
    if flow.saddr != to.saddr {
        let offset = match flow.l3 {
            L3::V4 => IPV4_SADDR,
            L3::V6 => IPV6_SADDR,
        };
        if !address(ctx, flow.l3, offset, &flow.saddr, &to.saddr, csum, mangled) {
            return false;
        }
    }
    if flow.daddr != to.daddr {
        let offset = match flow.l3 {
            L3::V4 => IPV4_DADDR,
            L3::V6 => IPV6_DADDR,
        };
        if !address(ctx, flow.l3, offset, &flow.daddr, &to.daddr, csum, mangled) {
            return false;
        }
    }
    if flow.sport != to.sport && !port(ctx, flow.l4, flow.sport, to.sport, csum, mangled) {
        return false;
    }
    if flow.dport != to.dport && !port(ctx, flow.l4 + 2, flow.dport, to.dport, csum, mangled) {
        return false;
    }
    true
}

#[inline(always)]
fn address(
    ctx: &mut TcContext,
    l3: L3,
    offset: usize,
    old: &[u8; 16],
    new: &[u8; 16],
    csum: usize,
    mangled: u64,
) -> bool {
    match l3 {
        L3::V4 => {
            let old = u32::from_ne_bytes([old[12], old[13], old[14], old[15]]);
            let new_bytes = [new[12], new[13], new[14], new[15]];
            let new = u32::from_ne_bytes(new_bytes);
            ctx.l4_csum_replace(
                csum,
                u64::from(old),
                u64::from(new),
                u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
            )
            .is_ok()
                && ctx
                    .l3_csum_replace(IPV4_CSUM, u64::from(old), u64::from(new), 4)
                    .is_ok()
                && ctx.store(offset, &new_bytes, 0).is_ok()
        }
        L3::V6 => {
            let mut from = words(old);
            let mut to = words(new);
            // SAFETY: two 16-byte buffers on the stack, sizes as passed.
            let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
            if diff < 0 {
                return false;
            }
            #[expect(
                clippy::cast_sign_loss,
                reason = "checked non-negative: a 32-bit checksum"
            )]
            let diff = diff as u64;
            ctx.l4_csum_replace(csum, 0, diff, u64::from(BPF_F_PSEUDO_HDR) | mangled)
                .is_ok()
                && ctx.store(offset, new, 0).is_ok()
        }
    }
}

#[inline(always)]
fn port(ctx: &mut TcContext, offset: usize, old: u16, new: u16, csum: usize, mangled: u64) -> bool {
    ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), mangled | 2)
        .is_ok()
        && ctx.store(offset, &new, 0).is_ok()
}
