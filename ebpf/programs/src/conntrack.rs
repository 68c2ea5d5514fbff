//! Connection tracking for the NodePort programs: an LRU map with one entry per direction of a
//! translated flow, each holding the rewrite its packets get. The programs refresh an entry's
//! timestamp and TCP flags on every packet; the agent removes flows whose newer entry has been
//! idle longer than its protocol's timeout (`CT_TIMEOUT_*`), and the LRU evicts the least
//! recently used flows when the map is full, so new flows are always tracked.

use aya_ebpf::{macros::map, maps::LruHashMap};
use gannet_common::{
    CT_TCP_ESTABLISHED, CT_TCP_FIN, CT_TCP_RST, CT_TCP_SYN, CT_TIMEOUT_TCP_CLOSING,
    CT_TIMEOUT_TCP_ESTABLISHED, CT_TIMEOUT_TCP_SYN, CT_TIMEOUT_UDP, CtEntry, CtKey,
    DEFAULT_MAX_CONNTRACK, PROTO_TCP,
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

/// Whether a flow is over, judged by its reply entry and, when it still has one, its client
/// entry: a RST either way, FINs both ways (a client entry that is gone counts as closed), or
/// idle past the timeout the agent's sweep would remove it at (`CT_TIMEOUT_*`).
#[inline(always)]
pub(crate) fn over(proto: u8, reply: &CtEntry, client: Option<&CtEntry>, now: u64) -> bool {
    let (client_tcp, client_seen) = client.map_or((CT_TCP_FIN, 0), |c| (c.tcp, c.last_seen_ns));
    let last = if client_seen > reply.last_seen_ns {
        client_seen
    } else {
        reply.last_seen_ns
    };
    let idle = now.saturating_sub(last);
    if proto != PROTO_TCP {
        return idle > u64::from(CT_TIMEOUT_UDP) * NSEC_PER_SEC;
    }
    let seen = reply.tcp | client_tcp;
    if seen & CT_TCP_RST != 0 || reply.tcp & client_tcp & CT_TCP_FIN != 0 {
        return true;
    }
    let timeout = if seen & CT_TCP_FIN != 0 {
        CT_TIMEOUT_TCP_CLOSING
    } else if seen & CT_TCP_ESTABLISHED != 0 {
        CT_TIMEOUT_TCP_ESTABLISHED
    } else {
        CT_TIMEOUT_TCP_SYN
    };
    idle > u64::from(timeout) * NSEC_PER_SEC
}

pub(crate) const NSEC_PER_SEC: u64 = 1_000_000_000;
