//! Backend selection for packets: Maglev consistent hashing. The agent builds each externally
//! reachable frontend's table (one array per service, in a hash of maps, swapped atomically by
//! replacing the inner map); the programs hash the flow and index it. Every node builds the same
//! table for the same backends and hashes the same way, so any node picks the same backend for
//! the same flow (what ECMP in front of several nodes needs), and a backend change moves only
//! about 1/N of the flows.
//!
//! A table of `m` entries is stored two backend ids to a `u64` value (`ceil(m/2)` values: a BPF
//! array rounds every value up to 8 bytes, so one `u32` a value would waste half of it): entry
//! `i` is the half `i % 2` of value `i / 2` (`gannet_common::maglev_entry`).

use aya_ebpf::{
    bindings::{BPF_F_INNER_MAP, BPF_F_MMAPABLE},
    btf_maps::{Array, HashOfMaps},
    macros::btf_map,
};
use gannet_common::{
    DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MAX_EXTERNAL, MAGLEV_IDS_PER_SLOT, maglev_entry,
    maglev_slots,
};

use crate::flow::Flow;

/// The inner map's template: any size is accepted (`BPF_F_INNER_MAP`), the agent creates the
/// tables with `maglev_slots(--maglev-table-size)` values, and writes them through a memory
/// mapping.
type Table = Array<
    u64,
    { maglev_slots(DEFAULT_MAGLEV_TABLE_SIZE) as usize },
    { (BPF_F_INNER_MAP | BPF_F_MMAPABLE) as usize },
>;

#[btf_map(name = "GANNET_MAGLEV")]
static MAGLEV: HashOfMaps<u32, Table, { DEFAULT_MAX_EXTERNAL as usize }> = HashOfMaps::new();

/// The backend id the table of `service_id` holds for `hash`.
#[inline(always)]
pub(crate) fn backend(service_id: u32, hash: u32, table_size: u32) -> Option<u32> {
    if table_size == 0 {
        return None;
    }
    let index = hash % table_size;
    // SAFETY: the inner map is replaced, never rewritten in place, so the value is stable.
    let slot = unsafe { MAGLEV.get_value(&service_id, &(index / MAGLEV_IDS_PER_SLOT)) }?;
    Some(maglev_entry(*slot, index))
}

/// The flow's hash: the 5-tuple as the client sent it (so every node computes the same), or only
/// the client's address (`sessionAffinity: ClientIP`).
#[inline(always)]
pub(crate) fn hash(flow: &Flow, client_only: bool) -> u32 {
    let mut h = SEED;
    h = mix_address(h, &flow.saddr);
    if client_only {
        return finish(h);
    }
    h = mix_address(h, &flow.daddr);
    h = mix(h, (u32::from(flow.sport) << 16) | u32::from(flow.dport));
    h = mix(h, u32::from(flow.proto));
    finish(h)
}

const SEED: u32 = 0x6761_6e6e; // "gann"

#[inline(always)]
fn mix_address(mut h: u32, a: &[u8; 16]) -> u32 {
    h = mix(h, u32::from_le_bytes([a[0], a[1], a[2], a[3]]));
    h = mix(h, u32::from_le_bytes([a[4], a[5], a[6], a[7]]));
    h = mix(h, u32::from_le_bytes([a[8], a[9], a[10], a[11]]));
    mix(h, u32::from_le_bytes([a[12], a[13], a[14], a[15]]))
}

/// One round of `MurmurHash3` (x86, 32-bit).
#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// `MurmurHash3`'s finaliser.
#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
