//! The NodePort programs' user-space side: their settings and counters, the conntrack map and
//! its garbage collection, the Maglev tables, and `gannet_nodeport` on the external interfaces.
//!
//! The program lives in the pod object (it shares the endpoint and node maps with the pod
//! programs); its links are pinned under `<bpf-root>/links/nodeport/<ifname>` and, like the
//! others, switched to the newly loaded program on restart, so tracked flows keep flowing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, HashOfMaps, IterableMap as _, MapData, MapError, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
};
use gannet_common::{
    AffinityValue, CT_F_REPLY, CT_TCP_ESTABLISHED, CT_TCP_FIN, CT_TCP_RST, CT_TIMEOUT_TCP_CLOSING,
    CT_TIMEOUT_TCP_ESTABLISHED, CT_TIMEOUT_TCP_SYN, CT_TIMEOUT_UDP, CtEntry, CtKey, NP_STATS,
    NodePortConfig, NpAffinityKey, PROTO_TCP, PROTO_UDP, SOURCE_RANGE_ID_BITS,
    V4_MAPPED_PREFIX_BITS, maglev_entry, maglev_pack, maglev_slots, map_names, v4_mapped,
};
use ipnet::IpNet;
use tracing::{debug, warn};

use super::{DataPathError, io_err};
use crate::sys;

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

/// What the reconciler writes for externally reachable frontends, by service id: the Maglev
/// tables, the `loadBalancerSourceRanges`, and the ClientIP affinity of clients outside (which it
/// purges of backends a service loses).
///
/// A Maglev table is an inner map of the hash of maps [`map_names::MAGLEV`], replaced whole: a
/// new inner map is created and filled through a memory mapping, then swapped in with one update
/// of the outer map, so the programs read either the old or the new table, never a mix. The
/// kernel waits for an RCU grace period after every update or delete of a map of maps (about 10
/// ms: two minutes for 10 000 tables one by one), so tables are [staged](Self::stage) and
/// installed and removed many at a time by [`flush`](Self::flush), one `BPF_MAP_UPDATE_BATCH`
/// and one `BPF_MAP_DELETE_BATCH` (one grace period each since Linux 6.8).
pub struct ExternalMaps {
    outer: HashOfMaps<MapData, u32, TableMap>,
    /// The outer map's descriptor (a duplicate: aya's `HashOfMaps` does not lend its own), for
    /// the batch calls.
    outer_fd: OwnedFd,
    size: u32,
    /// What [`flush`](Self::flush) does, by service id: install a filled table (`Some`) or
    /// remove the service's table (`None`).
    staged: BTreeMap<u32, Option<TableMap>>,
    source_ranges: LpmTrie<MapData, [u8; 20], u8>,
    affinity: HashMap<MapData, NpAffinityKey, AffinityValue>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
}

/// The trie key of a source range of service `id`.
fn range_key(id: u32, net: &IpNet) -> Key<[u8; 20]> {
    let (addr, bits) = match net {
        IpNet::V4(n) => (
            v4_mapped(n.network().octets()),
            V4_MAPPED_PREFIX_BITS + u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    };
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&id.to_be_bytes());
    data[4..].copy_from_slice(&addr);
    Key::new(SOURCE_RANGE_ID_BITS + bits, data)
}

impl ExternalMaps {
    /// Takes the maps out of the loaded pod object; `maps_dir` holds the pins (the conntrack
    /// map, which [`NodePortMaps`] takes, is opened a second time from its pin).
    pub(crate) fn take(ebpf: &mut Ebpf, size: u32, maps_dir: &Path) -> Result<Self, DataPathError> {
        let pin = maps_dir.join(map_names::CONNTRACK);
        let conntrack = HashMap::try_from(aya::maps::Map::LruHashMap(
            MapData::from_pin(&pin).map_err(map_err(map_names::CONNTRACK))?,
        ))
        .map_err(map_err(map_names::CONNTRACK))?;
        let map = ebpf
            .take_map(map_names::MAGLEV)
            .ok_or(DataPathError::MissingMap(map_names::MAGLEV))?;
        let aya::maps::Map::HashOfMaps(data) = &map else {
            return Err(DataPathError::MissingMap(map_names::MAGLEV));
        };
        let outer_fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(io_err(&maps_dir.join(map_names::MAGLEV)))?;
        let ranges = ebpf
            .take_map(map_names::SOURCE_RANGES)
            .ok_or(DataPathError::MissingMap(map_names::SOURCE_RANGES))?;
        let affinity = ebpf
            .take_map(map_names::NODEPORT_AFFINITY)
            .ok_or(DataPathError::MissingMap(map_names::NODEPORT_AFFINITY))?;
        Ok(Self {
            outer: HashOfMaps::try_from(map).map_err(map_err(map_names::MAGLEV))?,
            outer_fd,
            size,
            staged: BTreeMap::new(),
            source_ranges: LpmTrie::try_from(ranges).map_err(map_err(map_names::SOURCE_RANGES))?,
            affinity: HashMap::try_from(affinity).map_err(map_err(map_names::NODEPORT_AFFINITY))?,
            conntrack,
        })
    }

    /// Forgets the UDP flows `doomed` selects (service id, backend id), as kube-proxy clears
    /// conntrack when a UDP endpoint goes: without it a client that keeps sending (DNS) would
    /// stay on a backend that is gone or left the service. TCP flows are left to end on their
    /// own. Returns how many entries went.
    pub fn purge_udp_flows(&mut self, doomed: &mut dyn FnMut(u32, u32) -> bool) -> usize {
        let victims: Vec<CtKey> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| k.proto == PROTO_UDP && doomed(v.service_id, v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for key in &victims {
            let _ = self.conntrack.remove(key);
        }
        victims.len()
    }

    /// Adds the source ranges of service `id`.
    pub fn put_ranges(&mut self, id: u32, nets: &[IpNet]) -> Result<(), DataPathError> {
        for net in nets {
            self.source_ranges
                .insert(&range_key(id, net), 1, 0)
                .map_err(map_err(map_names::SOURCE_RANGES))?;
        }
        Ok(())
    }

    /// Removes source ranges of service `id`; missing ones are fine.
    pub fn del_ranges(&mut self, id: u32, nets: &[IpNet]) -> Result<(), DataPathError> {
        for net in nets {
            match self.source_ranges.remove(&range_key(id, net)) {
                Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(map_names::SOURCE_RANGES)(e)),
            }
        }
        Ok(())
    }

    /// Every service's source ranges, read back (when adopting a running data plane).
    pub fn ranges(&self) -> BTreeMap<u32, Vec<IpNet>> {
        let mut out: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
        for key in self.source_ranges.keys().filter_map(Result::ok) {
            let d = key.data();
            let id = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
            let bits = key.prefix_len().saturating_sub(SOURCE_RANGE_ID_BITS);
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&d[4..]);
            let v6 = std::net::Ipv6Addr::from(addr);
            let net = match v6.to_ipv4_mapped() {
                Some(v4) if bits >= V4_MAPPED_PREFIX_BITS => {
                    #[expect(clippy::cast_possible_truncation, reason = "at most 32")]
                    let len = (bits - V4_MAPPED_PREFIX_BITS) as u8;
                    ipnet::Ipv4Net::new(v4, len).ok().map(IpNet::V4)
                }
                _ => {
                    #[expect(clippy::cast_possible_truncation, reason = "at most 128")]
                    let len = bits as u8;
                    ipnet::Ipv6Net::new(v6, len).ok().map(IpNet::V6)
                }
            };
            if let Some(net) = net {
                out.entry(id).or_default().push(net);
            }
        }
        out
    }

    /// Removes the ClientIP affinity entries `doomed` selects (service id, backend id).
    pub fn purge_affinity(&mut self, doomed: &mut dyn FnMut(u32, u32) -> bool) -> usize {
        let victims: Vec<NpAffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| doomed(k.service_id, v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for key in &victims {
            let _ = self.affinity.remove(key);
        }
        victims.len()
    }

    /// The table size (`--maglev-table-size`).
    #[must_use]
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Writes `table` (exactly [`size`](Self::size) backend ids) into a new inner map, to be
    /// installed for `service_id` by the next [`flush`](Self::flush) (the service's current
    /// table, if any, serves until then). Replaces whatever was staged for it.
    pub fn stage(&mut self, service_id: u32, table: &[u32]) -> Result<(), DataPathError> {
        assert_eq!(
            table.len(),
            self.size as usize,
            "a Maglev table of the wrong size"
        );
        let inner = TableMap::create(maglev_slots(self.size), TABLE_FLAGS)
            .map_err(map_err(map_names::MAGLEV))?;
        write_table(&inner, table).map_err(io_err(Path::new("maglev table mmap")))?;
        self.staged.insert(service_id, Some(inner));
        Ok(())
    }

    /// Stages the removal of the table of `service_id` (a missing one is fine) for the next
    /// [`flush`](Self::flush). Replaces whatever was staged for it.
    pub fn stage_remove(&mut self, service_id: u32) {
        self.staged.insert(service_id, None);
    }

    /// Tables and removals staged, waiting for [`flush`](Self::flush).
    #[must_use]
    pub fn staged(&self) -> usize {
        self.staged.len()
    }

    /// Installs the staged tables (one `BPF_MAP_UPDATE_BATCH`) and removes the staged removals
    /// (one `BPF_MAP_DELETE_BATCH`). Each table is swapped in atomically; the batch as a whole
    /// is not (programs may see some tables of a batch new and others old for the microseconds
    /// it takes). Returns the service ids whose table could not be installed or removed, with
    /// why; everything else took effect. A removal of a table that is not there is no failure.
    pub fn flush(&mut self) -> Vec<(u32, DataPathError)> {
        let staged = std::mem::take(&mut self.staged);
        let mut failures = Vec::new();
        let (mut ids, mut fds, mut removals) = (Vec::new(), Vec::new(), Vec::new());
        for (id, table) in &staged {
            match table {
                Some(inner) => {
                    ids.push(*id);
                    fds.push(fd_u32(inner));
                }
                None => removals.push(*id),
            }
        }
        let outer = self.outer_fd.as_fd();
        let mut from = 0;
        while from < ids.len() {
            match sys::map_update_batch(outer, &ids[from..], &fds[from..]) {
                Ok(()) => break,
                // Everything took effect (the error came after: writing back the count).
                Err(e) if from + e.done >= ids.len() => {
                    warn!(error = %e.source, "installing Maglev tables");
                    break;
                }
                // The element at `done` failed: report it and go on with the rest.
                Err(e) => {
                    failures.push((ids[from + e.done], batch_err("update", e.source)));
                    from += e.done + 1;
                }
            }
        }
        let mut from = 0;
        while from < removals.len() {
            match sys::map_delete_batch(outer, &removals[from..]) {
                Ok(()) => break,
                Err(e) if from + e.done >= removals.len() => {
                    warn!(error = %e.source, "removing Maglev tables");
                    break;
                }
                Err(e) => {
                    if e.source.raw_os_error() != Some(libc::ENOENT) {
                        failures.push((removals[from + e.done], batch_err("delete", e.source)));
                    }
                    from += e.done + 1;
                }
            }
        }
        // The inner maps' descriptors close here; the outer map holds the installed ones.
        drop(staged);
        failures
    }

    /// Installs `table` for `service_id` now (with anything else staged).
    pub fn put(&mut self, service_id: u32, table: &[u32]) -> Result<(), DataPathError> {
        self.stage(service_id, table)?;
        self.flush_one(service_id)
    }

    /// Removes the table of `service_id` now (with anything else staged); a missing one is
    /// fine.
    pub fn remove(&mut self, service_id: u32) -> Result<(), DataPathError> {
        self.stage_remove(service_id);
        self.flush_one(service_id)
    }

    fn flush_one(&mut self, service_id: u32) -> Result<(), DataPathError> {
        let mut failures = self.flush();
        for (id, e) in &failures {
            if *id != service_id {
                warn!(service_id = id, error = %e, "a staged Maglev table change failed");
            }
        }
        match failures.iter().position(|(id, _)| *id == service_id) {
            Some(i) => Err(failures.swap_remove(i).1),
            None => Ok(()),
        }
    }

    /// The table of `service_id`, read back through one read-only memory mapping of its inner
    /// map (for adoption, status and tests): [`size`](Self::size) entries; for a table of
    /// another size (`--maglev-table-size` changed across a restart), both halves of each of its
    /// values, a number of entries that differs from `size`.
    pub fn get(&self, service_id: u32) -> Option<Vec<u32>> {
        let inner = self.outer.get(&service_id, 0).ok()?;
        let entries = if inner.len() == maglev_slots(self.size) {
            self.size
        } else {
            inner.len().saturating_mul(2)
        };
        read_table(&inner, entries).ok()
    }

    /// Service ids that have a table.
    pub fn service_ids(&self) -> BTreeSet<u32> {
        self.outer.keys().filter_map(Result::ok).collect()
    }
}

/// Unpins a pinned Maglev map whose tables have another layout than this build's (an older
/// gannetd's one backend id per 8-byte value): the programs cannot be loaded against it (the
/// verifier checks their reads against the pinned map's inner template). The programs still
/// running keep using it until their links are switched to the new ones, which get a new, empty
/// map that the first sync fills; until then new flows from outside find no table and are
/// refused (tracked flows keep flowing). Nothing happens when there is no pin or it fits.
///
/// The test: an update of key 0 (no service has id 0) with `BPF_EXIST` and an inner map of this
/// build's layout. The kernel checks the inner map against the template first (`EINVAL` when
/// they differ), then finds no key 0 (`ENOENT`): nothing is written, and no RCU grace period is
/// waited for (Linux 6.8 and later wait only after an update that succeeded).
pub(crate) fn retire_incompatible_maglev(maps_dir: &Path) -> Result<(), DataPathError> {
    const BPF_EXIST: u64 = 2;
    let pin = maps_dir.join(map_names::MAGLEV);
    if !pin.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(&pin).map_err(map_err(map_names::MAGLEV))?;
    let mut outer: HashOfMaps<MapData, u32, TableMap> =
        HashOfMaps::try_from(aya::maps::Map::HashOfMaps(data))
            .map_err(map_err(map_names::MAGLEV))?;
    let probe = TableMap::create(1, TABLE_FLAGS).map_err(map_err(map_names::MAGLEV))?;
    match outer.insert(0, &probe, BPF_EXIST) {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            warn!(
                pin = %pin.display(),
                "the pinned Maglev tables have an older layout: the map is replaced, and new \
                 flows from outside are refused until the first sync writes the tables again"
            );
            fs::remove_file(&pin).map_err(io_err(&pin))
        }
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        // A key 0 that should not be there, now holding the probe: take it out.
        Ok(()) => outer.remove(&0).map_err(map_err(map_names::MAGLEV)),
        Err(e) => Err(map_err(map_names::MAGLEV)(e)),
    }
}

fn batch_err(op: &'static str, io_error: io::Error) -> DataPathError {
    map_err(map_names::MAGLEV)(MapError::SyscallError(aya::sys::SyscallError {
        call: if op == "update" {
            "bpf_map_update_batch"
        } else {
            "bpf_map_delete_batch"
        },
        io_error,
    }))
}

fn fd_u32(map: &TableMap) -> u32 {
    u32::try_from(map.map().fd().as_fd().as_raw_fd()).expect("file descriptors are non-negative")
}

/// Writes `table` into the new inner map `map` through a memory mapping (one copy instead of a
/// system call per entry), two ids to a value (`maglev_pack`).
fn write_table(map: &TableMap, table: &[u32]) -> io::Result<()> {
    let mut memory = sys::MapMemory::new(map.map().fd().as_fd(), map.len() as usize, true)?;
    for (slot, pair) in memory.values_mut().iter_mut().zip(table.chunks(2)) {
        *slot = maglev_pack(pair[0], pair.get(1).copied().unwrap_or(0));
    }
    Ok(())
}

/// Reads the first `size` entries of the Maglev table `map` (fewer if it is smaller) through one
/// read-only memory mapping: a handful of system calls a table, however large.
pub fn read_table(map: &TableMap, size: u32) -> io::Result<Vec<u32>> {
    let size = size.min(map.len().saturating_mul(2));
    let memory = sys::MapMemory::new(map.map().fd().as_fd(), map.len() as usize, false)?;
    let values = memory.values();
    Ok((0..size)
        .map(|i| maglev_entry(values[(i / 2) as usize], i))
        .collect())
}

/// Where the program's links to the external interfaces are pinned.
pub(crate) fn links_dir(bpf_root: &Path) -> PathBuf {
    bpf_root.join("links").join("nodeport")
}

/// Where the XDP program's links are pinned.
pub(crate) fn xdp_links_dir(bpf_root: &Path) -> PathBuf {
    bpf_root.join("links").join("nodeport-xdp")
}

/// Where the XDP link to `ifname` is pinned.
pub(crate) fn xdp_pin_path(bpf_root: &Path, ifname: &str) -> PathBuf {
    xdp_links_dir(bpf_root).join(pin_name(ifname))
}

/// The interfaces `gannet_nodeport_xdp` is attached to (ifname → pin path).
pub(crate) fn attached_xdp(bpf_root: &Path) -> BTreeMap<String, PathBuf> {
    pins(&xdp_links_dir(bpf_root))
}

/// Detaches the XDP program from `ifname`; a missing link is fine.
pub(crate) fn detach_xdp(bpf_root: &Path, ifname: &str) -> Result<bool, DataPathError> {
    let pin = xdp_pin_path(bpf_root, ifname);
    match fs::remove_file(&pin) {
        Ok(()) => {
            tracing::info!(interface = ifname, "NodePort XDP program detached");
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&pin)(e)),
    }
}

/// Whether the pinned XDP link at `pin` is attached to `ifindex`.
pub(crate) fn pinned_xdp_on(pin: &Path, ifindex: u32) -> Result<bool, DataPathError> {
    let link = sys::obj_get(pin).map_err(|source| DataPathError::Link {
        name: XDP_PROGRAM,
        what: "opening the pinned XDP link",
        source,
    })?;
    let on = sys::xdp_link_ifindex(link.as_fd()).map_err(|source| DataPathError::Link {
        name: XDP_PROGRAM,
        what: "reading the pinned XDP link",
        source,
    })?;
    Ok(on == ifindex)
}

fn pin_name(ifname: &str) -> String {
    ifname.replace('%', "%25").replace('.', "%2E")
}

fn pins(dir: &Path) -> BTreeMap<String, PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((ifname_of(e.file_name().to_str()?), e.path())))
        .collect()
}

/// Where the link to `ifname` is pinned. bpffs refuses names with a dot (`gannet.vxlan`), so a
/// dot is written `%2E` (and a `%` as `%25`).
pub(crate) fn pin_path(bpf_root: &Path, ifname: &str) -> PathBuf {
    links_dir(bpf_root).join(pin_name(ifname))
}

fn ifname_of(pin_name: &str) -> String {
    pin_name.replace("%2E", ".").replace("%25", "%")
}

/// The interfaces `gannet_nodeport` is attached to, from their pins (ifname → pin path).
pub(crate) fn attached(bpf_root: &Path) -> BTreeMap<String, PathBuf> {
    pins(&links_dir(bpf_root))
}

/// Detaches the program from `ifname` (unpins its link); a missing link is fine.
pub(crate) fn detach(bpf_root: &Path, ifname: &str) -> Result<bool, DataPathError> {
    let pin = pin_path(bpf_root, ifname);
    match fs::remove_file(&pin) {
        Ok(()) => {
            tracing::info!(interface = ifname, "NodePort program detached");
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&pin)(e)),
    }
}

/// Whether the pinned link at `pin` is attached to `ifindex`.
pub(crate) fn pinned_on(pin: &Path, ifindex: u32) -> Result<bool, DataPathError> {
    let link = sys::obj_get(pin).map_err(|source| DataPathError::Link {
        name: PROGRAM,
        what: "opening the pinned NodePort link",
        source,
    })?;
    let on = sys::tcx_link_ifindex(link.as_fd()).map_err(|source| DataPathError::Link {
        name: PROGRAM,
        what: "reading the pinned NodePort link",
        source,
    })?;
    Ok(on == ifindex)
}

#[cfg(test)]
#[path = "nodeport_tests/mod.rs"]
mod tests;
