//! The NodePort programs' user-space side: their settings and counters, the conntrack map and
//! its garbage collection, the Maglev tables, and `gannet_nodeport` on the external interfaces.
//!
//! The program lives in the pod object (it shares the endpoint and node maps with the pod
//! programs); its links are pinned under `<bpf-root>/links/nodeport/<ifname>` and, like the
//! others, switched to the newly loaded program on restart, so tracked flows keep flowing.

use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray},
};
use gannet_common::{
    CT_F_REPLY, CT_TCP_ESTABLISHED, CT_TCP_FIN, CT_TCP_RST, CT_TIMEOUT_TCP_CLOSING,
    CT_TIMEOUT_TCP_ESTABLISHED, CT_TIMEOUT_TCP_SYN, CT_TIMEOUT_UDP, CtEntry, CtKey, NP_STATS,
    NodePortConfig, PROTO_TCP, map_names,
};
use tracing::{debug, warn};

use super::DataPathError;

mod external;
mod links;

pub(crate) use self::external::retire_incompatible_maglev;
pub use self::external::{ExternalMaps, FlowMaps, read_table};
pub(crate) use self::links::{
    attached, attached_xdp, detach, detach_xdp, links_dir, pin_path, pinned_on, pinned_xdp_on,
    xdp_links_dir, xdp_pin_path,
};

/// `BPF_F_INNER_MAP | BPF_F_MMAPABLE`: the flags of every Maglev table (the kernel's template
/// has the same, so any size fits).
const TABLE_FLAGS: u32 = (1 << 12) | (1 << 10);

/// A Maglev table's inner map: `u64` values, two backend ids each (see
/// [`gannet_common::MAGLEV_IDS_PER_SLOT`]).
pub type TableMap = Array<MapData, u64>;

/// Most tables staged before [`ExternalMaps::flush`] must install them: a staged table holds a
/// file descriptor (and its kernel memory, next to the table it replaces), and one batch costs
/// one RCU grace period whatever its length, so 512 a batch keeps both small (10 000 tables:
/// 20 grace periods instead of 10 000).
pub const MAX_STAGED_TABLES: usize = 512;

/// The program's name in the pod object.
pub const PROGRAM: &str = "gannet_nodeport";
/// Its XDP front (`--nodeport-acceleration xdp`).
pub const XDP_PROGRAM: &str = "gannet_nodeport_xdp";

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataPathError {
    move |source| DataPathError::Map { name, source }
}

/// Counters of the NodePort programs, summed over CPUs (see `NP_STAT_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodePortStats {
    pub new_flows: u64,
    pub forwarded: u64,
    pub replies: u64,
    pub no_backend: u64,
    pub conntrack_failed: u64,
    pub route_failed: u64,
    pub denied: u64,
    pub icmp_errors: u64,
    pub xdp_tx: u64,
    pub dsr_in: u64,
}

/// The NodePort programs' maps (not the Maglev tables: the reconciler owns those).
pub struct NodePortMaps {
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    config: Array<MapData, NodePortConfig>,
    stats: PerCpuArray<MapData, u64>,
    conntrack_capacity: u32,
    warned_full: bool,
    /// The new-flow counter at the last sweep.
    last_new_flows: u64,
    /// Entries the last sweep left.
    swept_entries: usize,
}

impl NodePortMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, DataPathError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DataPathError::MissingMap(name))
        };
        let conntrack: HashMap<MapData, CtKey, CtEntry> =
            HashMap::try_from(take(ebpf, map_names::CONNTRACK)?)
                .map_err(map_err(map_names::CONNTRACK))?;
        let conntrack_capacity = conntrack
            .map()
            .info()
            .map_err(map_err(map_names::CONNTRACK))?
            .max_entries();
        Ok(Self {
            conntrack,
            config: Array::try_from(take(ebpf, map_names::NODEPORT_CONFIG)?)
                .map_err(map_err(map_names::NODEPORT_CONFIG))?,
            stats: PerCpuArray::try_from(take(ebpf, map_names::NODEPORT_STATS)?)
                .map_err(map_err(map_names::NODEPORT_STATS))?,
            conntrack_capacity,
            warned_full: false,
            last_new_flows: 0,
            swept_entries: 0,
        })
    }

    /// Writes the programs' settings (an array element is rewritten in place: the programs read
    /// it whole, once per packet, and every field is independent).
    pub fn configure(&mut self, config: &NodePortConfig) -> Result<(), DataPathError> {
        self.config
            .set(0, config, 0)
            .map_err(map_err(map_names::NODEPORT_CONFIG))
    }

    /// The settings in effect.
    pub fn config(&self) -> Result<NodePortConfig, DataPathError> {
        self.config
            .get(&0, 0)
            .map_err(map_err(map_names::NODEPORT_CONFIG))
    }

    pub fn stats(&self) -> Result<NodePortStats, DataPathError> {
        let mut sums = [0u64; NP_STATS as usize];
        for (index, sum) in (0..NP_STATS).zip(sums.iter_mut()) {
            let per_cpu = self
                .stats
                .get(&index, 0)
                .map_err(map_err(map_names::NODEPORT_STATS))?;
            *sum = per_cpu.iter().sum();
        }
        Ok(NodePortStats {
            new_flows: sums[0],
            forwarded: sums[1],
            replies: sums[2],
            no_backend: sums[3],
            conntrack_failed: sums[4],
            route_failed: sums[5],
            denied: sums[6],
            icmp_errors: sums[7],
            xdp_tx: sums[8],
            dsr_in: sums[9],
        })
    }

    /// Tracked entries (two per flow) and the map's capacity.
    pub fn conntrack_usage(&self) -> (usize, u32) {
        (
            self.conntrack.keys().filter(Result::is_ok).count(),
            self.conntrack_capacity,
        )
    }

    /// Entries the last [`collect_garbage`](Self::collect_garbage) left (for metrics: the map is
    /// walked by the sweep, not again per scrape), and the map's capacity.
    #[must_use]
    pub fn swept_usage(&self) -> (usize, u32) {
        (self.swept_entries, self.conntrack_capacity)
    }

    /// All tracked entries (for status and tests).
    pub fn conntrack_entries(&self) -> Vec<(CtKey, CtEntry)> {
        self.conntrack.iter().filter_map(Result::ok).collect()
    }

    /// Removes flows whose newer entry has been idle longer than its timeout; `now_ns` is
    /// `CLOCK_MONOTONIC` (what `bpf_ktime_get_ns` reads). Returns how many entries went.
    pub fn collect_garbage(&mut self, now_ns: u64) -> usize {
        let entries = self.conntrack_entries();
        // A flow's two entries: the client's (key = client → frontend) and the reply's (key =
        // backend → client or SNAT address). Pair them through the rewrite they hold.
        let mut newest: StdHashMap<CtKey, (u64, u8)> = StdHashMap::new();
        for (key, entry) in &entries {
            let flow = flow_id(key, entry);
            let slot = newest.entry(flow).or_insert((0, 0));
            slot.0 = slot.0.max(entry.last_seen_ns);
            slot.1 |= entry.tcp;
        }
        let mut removed = 0;
        for (key, entry) in &entries {
            let (last, tcp) = newest[&flow_id(key, entry)];
            let timeout = timeout(key.proto, tcp);
            if now_ns.saturating_sub(last) > timeout.as_nanos() as u64 {
                match self.conntrack.remove(key) {
                    Ok(()) => removed += 1,
                    Err(e) => debug!(error = %e, "conntrack entry already gone"),
                }
            }
        }
        // Judged before this sweep's removals. The LRU map evicts before it is quite full (its
        // free lists are per CPU), so also: more new flows since the last sweep than it holds.
        let (len, capacity) = (entries.len(), self.conntrack_capacity);
        let new_flows = self.stats().map(|s| s.new_flows).unwrap_or(0);
        let since = new_flows.saturating_sub(self.last_new_flows);
        self.last_new_flows = new_flows;
        let full = len as u64 * 4 >= u64::from(capacity) * 3 || since * 2 > u64::from(capacity);
        if full && !self.warned_full {
            warn!(
                entries = len,
                capacity,
                "the NodePort conntrack map is full or nearly: the least recently used flows are \
                 being evicted (new flows are still balanced); raise --max-conntrack"
            );
        }
        self.warned_full = full;
        self.swept_entries = len - removed;
        if removed > 0 {
            debug!(removed, "expired conntrack entries removed");
        }
        removed
    }
}

/// A key naming the flow an entry belongs to: the client → frontend key, recovered from the
/// reply entry's rewrite (which restores the client and the frontend).
fn flow_id(key: &CtKey, entry: &CtEntry) -> CtKey {
    if entry.flags & CT_F_REPLY == 0 {
        return *key;
    }
    CtKey {
        saddr: entry.daddr,
        daddr: entry.saddr,
        sport: entry.dport,
        dport: entry.sport,
        proto: key.proto,
        pad: [0; 3],
    }
}

/// How long a flow lives without packets, by its protocol and the TCP flags seen.
fn timeout(proto: u8, tcp: u8) -> Duration {
    let seconds = if proto != PROTO_TCP {
        CT_TIMEOUT_UDP
    } else if tcp & (CT_TCP_RST | CT_TCP_FIN) != 0 {
        CT_TIMEOUT_TCP_CLOSING
    } else if tcp & CT_TCP_ESTABLISHED != 0 {
        CT_TIMEOUT_TCP_ESTABLISHED
    } else {
        CT_TIMEOUT_TCP_SYN
    };
    Duration::from_secs(u64::from(seconds))
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests;
