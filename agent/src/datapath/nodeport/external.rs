//! What the reconciler writes for externally reachable frontends: the Maglev tables (inner
//! maps swapped in whole, in batches), the source ranges and the outside clients' affinity.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{
        HashMap, HashOfMaps, IterableMap as _, MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
};
use gannet_common::{
    AffinityValue, CtEntry, CtKey, NpAffinityKey, PROTO_UDP, SOURCE_RANGE_ID_BITS,
    V4_MAPPED_PREFIX_BITS, maglev_entry, maglev_pack, maglev_slots, map_names, v4_mapped,
};
use ipnet::IpNet;
use tracing::warn;

use crate::datapath::{DataPathError, full, io_err};
use crate::sys;

use super::{TABLE_FLAGS, TableMap, map_err};

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
    /// Until [`take_flows`](Self::take_flows) hands them to the purge thread.
    flows: Option<FlowMaps>,
}

/// The NodePort maps whose entries must be forgotten when backends go: the UDP flows
/// (conntrack) and the outside clients' ClientIP affinity. A hash map cannot be searched by value,
/// so a purge walks both whole; gannetd's purge thread (`datapath::purge`) owns them.
pub struct FlowMaps {
    affinity: HashMap<MapData, NpAffinityKey, AffinityValue>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
}

impl FlowMaps {
    /// The two maps (tests make their own).
    #[cfg(test)]
    pub(crate) fn new(
        affinity: HashMap<MapData, NpAffinityKey, AffinityValue>,
        conntrack: HashMap<MapData, CtKey, CtEntry>,
    ) -> Self {
        Self {
            affinity,
            conntrack,
        }
    }

    /// Forgets the UDP flows and the affinity entries `doomed` selects (service id, backend
    /// id), as kube-proxy clears conntrack when a UDP endpoint goes: without it a client that
    /// keeps sending (DNS) would stay on a backend that is gone or left the service. TCP flows are
    /// left to end on their own. Returns how many flows and affinity entries went.
    pub fn purge(&mut self, doomed: &mut dyn FnMut(u32, u32) -> bool) -> (usize, usize) {
        let flows: Vec<CtKey> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| k.proto == PROTO_UDP && doomed(v.service_id, v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for key in &flows {
            let _ = self.conntrack.remove(key);
        }
        let affinity: Vec<NpAffinityKey> = self
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| doomed(k.service_id, v.backend_id))
            .map(|(k, _)| k)
            .collect();
        for key in &affinity {
            let _ = self.affinity.remove(key);
        }
        (flows.len(), affinity.len())
    }
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
            flows: Some(FlowMaps {
                affinity: HashMap::try_from(affinity)
                    .map_err(map_err(map_names::NODEPORT_AFFINITY))?,
                conntrack,
            }),
        })
    }

    /// The maps purges walk, once: whoever takes them purges them.
    pub fn take_flows(&mut self) -> Option<FlowMaps> {
        self.flows.take()
    }

    /// Adds the source ranges of service `id`.
    pub fn put_ranges(&mut self, id: u32, nets: &[IpNet]) -> Result<(), DataPathError> {
        for net in nets {
            self.source_ranges
                .insert(&range_key(id, net), 1, 0)
                .map_err(|e| full::check(map_names::SOURCE_RANGES, e))
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
                    if full::is_full_errno(e.source.raw_os_error()) {
                        full::record(map_names::MAGLEV);
                    }
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
