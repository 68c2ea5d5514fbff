//! Map-full events: every write gannetd makes to a BPF map that the kernel refuses because the
//! map is full is counted here, by map, wherever the write is (the service maps, Maglev tables,
//! source ranges, the pods' endpoint and counter maps, the overlay's node map). The counts are
//! process-wide, like the kernel's own counters, so that no data plane object has to carry a
//! handle for them; gannetd's metrics read them at each scrape (`gannet_map_full_total`).
//!
//! Arrays (the tunnel and NodePort settings, each Maglev table's slots) are written at indexes
//! below their size and cannot fill; the maps the kernel programs fill (conntrack, affinity,
//! reverse NAT) are not written by user space and report their use as `gannet_map_entries`.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use aya::maps::MapError;
use gannet_common::map_names;

/// The maps user space writes that can fill, by pinned name, and a per-service limit the
/// reconciler enforces as if it were one ("service slots": more backends than one service may
/// have). Their series exist from the start, at 0.
pub const WRITTEN: [&str; 9] = [
    map_names::SERVICES,
    map_names::SLOTS,
    map_names::BACKENDS,
    map_names::MAGLEV,
    map_names::SOURCE_RANGES,
    map_names::ENDPOINTS,
    map_names::ENDPOINT_STATS,
    map_names::NODES,
    SERVICE_SLOTS,
];

/// The per-service backend limit, counted as a map.
pub const SERVICE_SLOTS: &str = "service slots";

static FULL: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Whether `errno` is the kernel saying a map is full: `E2BIG` (hash maps at `max_entries`),
/// `ENOSPC` (LPM tries, hash of maps), `ENOMEM` (an element that cannot be allocated).
#[must_use]
pub fn is_full_errno(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::E2BIG | libc::ENOMEM | libc::ENOSPC))
}

/// Whether `error` (of a write) says the map is full.
#[must_use]
pub fn is_full(error: &MapError) -> bool {
    match error {
        MapError::SyscallError(e) => is_full_errno(e.io_error.raw_os_error()),
        _ => false,
    }
}

/// Counts one refused write to `map`.
pub fn record(map: &'static str) {
    *FULL
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(map)
        .or_default() += 1;
}

/// For a write's `map_err`: counts `error` against `map` when it says the map is full, and
/// hands it on.
pub fn check(map: &'static str, error: MapError) -> MapError {
    if is_full(&error) {
        record(map);
    }
    error
}

/// The events so far: every map of [`WRITTEN`] (0 when it never filled) and any other counted.
#[must_use]
pub fn counts() -> Vec<(&'static str, u64)> {
    let full = FULL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut counts: BTreeMap<&'static str, u64> = WRITTEN.iter().map(|map| (*map, 0)).collect();
    counts.extend(full.iter().map(|(map, n)| (*map, *n)));
    counts.into_iter().collect()
}
