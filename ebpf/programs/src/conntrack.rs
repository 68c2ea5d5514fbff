//! Connection tracking for the NodePort programs: an LRU map with one entry per direction of a
//! translated flow, each holding the rewrite its packets get. The programs refresh an entry's
//! timestamp and TCP flags on every packet; the agent removes flows whose newer entry has been
//! idle longer than its protocol's timeout (`CT_TIMEOUT_*`), and the LRU evicts the least
//! recently used flows when the map is full, so new flows are always tracked.

use aya_ebpf::{macros::map, maps::LruHashMap};
use gannet_common::{
    CT_TCP_ESTABLISHED, CT_TCP_FIN, CT_TCP_RST, CT_TCP_SYN, CtEntry, CtKey, DEFAULT_MAX_CONNTRACK,
    PROTO_TCP,
};

use crate::flow::{Flow, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

#[map(name = "GANNET_CT")]
pub(crate) static CONNTRACK: LruHashMap<CtKey, CtEntry> =
    LruHashMap::pinned(DEFAULT_MAX_CONNTRACK, 0);

/// Writes the key of the packet's own direction.
#[inline(always)]
pub(crate) fn key_into(flow: &Flow, key: &mut CtKey) {
    key.saddr = flow.saddr;
    key.daddr = flow.daddr;
    key.sport = flow.sport;
    key.dport = flow.dport;
    key.proto = flow.proto;
    key.pad = [0; 3];
}

/// The `CT_TCP_*` bits a segment with these flags adds.
#[inline(always)]
pub(crate) fn tcp_bits(flow: &Flow) -> u8 {
    if flow.proto != PROTO_TCP {
        return 0;
    }
    let f = flow.tcp_flags;
    let mut bits = 0;
    if f & TCP_SYN != 0 {
        bits |= CT_TCP_SYN;
    } else if f & TCP_ACK != 0 {
        bits |= CT_TCP_ESTABLISHED;
    }
    if f & TCP_FIN != 0 {
        bits |= CT_TCP_FIN;
    }
    if f & TCP_RST != 0 {
        bits |= CT_TCP_RST;
    }
    bits
}

/// Records a packet on `entry`: its time, and its TCP flags.
#[inline(always)]
pub(crate) fn touch(entry: *mut CtEntry, flow: &Flow, now: u64) {
    let bits = tcp_bits(flow);
    // SAFETY: `entry` points into an LRU map value that stays valid for the program's run; a
    // concurrent packet of the same flow stores the same kind of values.
    unsafe {
        if (*entry).last_seen_ns != now {
            (*entry).last_seen_ns = now;
        }
        if (*entry).tcp & bits != bits {
            (*entry).tcp |= bits;
        }
    }
}

/// Whether a TCP flow is over in the direction of `entry` (RST, or FIN seen), so a new SYN on
/// the same addresses and ports starts a new flow.
#[inline(always)]
pub(crate) fn closing(entry: &CtEntry) -> bool {
    entry.tcp & (CT_TCP_RST | CT_TCP_FIN) != 0
}
