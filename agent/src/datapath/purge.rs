//! The affinity purge, off gannetd's main loop.
//!
//! When a service loses backends, the affinity entries that pin clients to them are deleted
//! (`GANNET_AFFINITY`, an LRU hash of up to `--max-affinity` entries), and with NodePort on, the
//! UDP flows to them and the outside clients' affinity to them (the NodePort conntrack and
//! affinity maps, [`FlowMaps`]). A BPF hash map cannot be searched by value: the purge reads every
//! entry (one `BPF_MAP_GET_NEXT_KEY` and one lookup per entry), which at the default 65 536
//! affinity entries (and the NodePort conntrack's own capacity) takes long enough that a CNI
//! registration arriving meanwhile would wait for it on the main loop. So the walk runs on a
//! thread of its own, which holds its own handles to the maps; the loop hands it the purge and
//! waits at most [`PURGE_WAIT`] for it (a small map is done by then, so what a change returns
//! reflects it), then goes on. Purges run one after the other, in the order they were handed
//! over.
//!
//! A purge that finishes later leaves a window in which a client may still be sent to a backend
//! its service no longer has, as before (the purge always ran after the switch). Backend ids
//! cannot be followed to another backend meanwhile: an entry remembers the backend's epoch.

use std::{
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, IterableMap as _, MapData};
use gannet_common::{AffinityKey, AffinityValue, map_names};
use tracing::{debug, warn};

use super::{
    maps::{delete_result, write_err},
    nodeport::FlowMaps,
    reconcile::{AffinityPurge, MapOpError, purge_dooms},
};

/// How long the main loop waits for a purge before it goes on.
pub const PURGE_WAIT: Duration = Duration::from_millis(20);

enum Job {
    /// NodePort is on: its maps are purged too from now on.
    Flows(Box<FlowMaps>),
    Purge(
        Arc<AffinityPurge>,
        mpsc::SyncSender<Result<usize, MapOpError>>,
    ),
}

/// The thread that purges the affinity map.
pub struct Purger {
    jobs: mpsc::Sender<Job>,
}

impl Purger {
    /// Starts the thread with its own handle to the map.
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub fn spawn(mut map: HashMap<MapData, AffinityKey, AffinityValue>) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("gannet-purge".to_owned())
            .spawn(move || {
                let mut flows: Option<Box<FlowMaps>> = None;
                for job in queue {
                    let (purge, done) = match job {
                        Job::Flows(maps) => {
                            flows = Some(maps);
                            continue;
                        }
                        Job::Purge(purge, done) => (purge, done),
                    };
                    let started = Instant::now();
                    let result = purge_map(&mut map, &purge)
                        .map(|n| n + flows.as_mut().map_or(0, |flows| purge_flows(flows, &purge)));
                    match &result {
                        Ok(n) => debug!(
                            entries = n,
                            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                            "affinity purge walked the maps"
                        ),
                        Err(e) => warn!(error = %e, "could not purge affinity entries"),
                    }
                    // The loop may have stopped waiting: nobody to tell then.
                    let _ = done.send(result);
                }
            })?;
        Ok(Self { jobs })
    }

    /// Hands `purge` to the thread and waits up to `wait` for it: `Some` with its outcome if it
    /// finished by then, `None` if it goes on in the background (or the thread is gone, which
    /// is logged).
    pub fn purge(
        &self,
        purge: Arc<AffinityPurge>,
        wait: Duration,
    ) -> Option<Result<usize, MapOpError>> {
        let (done, outcome) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Purge(purge, done)).is_err() {
            warn!("the affinity purge thread is gone; affinity entries are not purged");
            return None;
        }
        outcome.recv_timeout(wait).ok()
    }

    /// Hands the NodePort maps to the thread: later purges walk them too.
    ///
    /// # Errors
    /// The maps back when the thread is gone (the caller purges them itself then).
    pub fn add_flows(&self, flows: Box<FlowMaps>) -> Result<(), Box<FlowMaps>> {
        self.jobs
            .send(Job::Flows(flows))
            .map_err(|error| match error.0 {
                Job::Flows(flows) => flows,
                Job::Purge(..) => unreachable!("a Flows job was sent"),
            })
    }
}

/// Forgets the UDP flows and the outside clients' affinity `purge` dooms; returns the affinity
/// entries (the flows are logged).
pub fn purge_flows(flows: &mut FlowMaps, purge: &AffinityPurge) -> usize {
    let (flows, affinity) =
        flows.purge(&mut |service_id, backend_id| purge_dooms(purge, service_id, backend_id));
    if flows > 0 {
        debug!(entries = flows, "UDP flows to removed backends forgotten");
    }
    affinity
}

/// Walks `map` and deletes the entries `purge` dooms; returns how many.
///
/// # Errors
/// The first deletion that failed for another reason than the entry being gone.
pub fn purge_map(
    map: &mut HashMap<MapData, AffinityKey, AffinityValue>,
    purge: &AffinityPurge,
) -> Result<usize, MapOpError> {
    let victims: Vec<AffinityKey> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| purge_dooms(purge, k.service_id, v.backend_id))
        .map(|(k, _)| k)
        .collect();
    for key in &victims {
        delete_result(map_names::AFFINITY, map.remove(key))?;
    }
    Ok(victims.len())
}

/// A second handle to the map `map` is a handle of (for the purge thread).
///
/// # Errors
/// If the map's id cannot be read or the map opened by it.
pub fn reopen(
    map: &HashMap<MapData, AffinityKey, AffinityValue>,
) -> Result<HashMap<MapData, AffinityKey, AffinityValue>, MapOpError> {
    let err = |e| write_err(map_names::AFFINITY, "open", 0, e);
    let id = map.map().info().map_err(err)?.id();
    let data = MapData::from_id(id).map_err(err)?;
    HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(err)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use gannet_common::AFFINITY_NETNS;

    use super::*;

    /// `BPF_MAP_TYPE_LRU_HASH`, as `GANNET_AFFINITY` is.
    const LRU_HASH: u32 = 9;

    fn lru(capacity: u32) -> HashMap<MapData, AffinityKey, AffinityValue> {
        let size = |n: usize| u32::try_from(n).expect("small");
        let obj = aya_obj::Map::new_from_params(
            LRU_HASH,
            size(size_of::<AffinityKey>()),
            size(size_of::<AffinityValue>()),
            capacity,
            0,
        );
        let data = MapData::create(obj, "test_affinity", None).expect("creating an LRU map");
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("an LRU hash")
    }

    /// `n` clients of services 0..100, each pinned to backend `client % 7`.
    fn fill(map: &mut HashMap<MapData, AffinityKey, AffinityValue>, n: u32) {
        for client in 0..n {
            let key = AffinityKey {
                service_id: client % 100,
                kind: AFFINITY_NETNS,
                client: u64::from(client),
            };
            let value = AffinityValue {
                backend_id: client % 7,
                backend_epoch: 1,
                pad: 0,
                last_used_ns: 1,
            };
            map.insert(key, value, 0).expect("inserting");
        }
    }

    /// Service 1 is deleted (all its entries go), service 2 lost backend 3.
    fn sample_purge() -> Arc<AffinityPurge> {
        Arc::new(AffinityPurge::from([
            (1, None),
            (2, Some(BTreeSet::from([3]))),
        ]))
    }

    fn left(
        map: &HashMap<MapData, AffinityKey, AffinityValue>,
    ) -> Vec<(AffinityKey, AffinityValue)> {
        map.iter().filter_map(Result::ok).collect()
    }

    #[test]
    fn the_purge_thread_deletes_exactly_what_the_purge_dooms() {
        let mut map = lru(16_384);
        fill(&mut map, 4_000);
        let before = left(&map);
        let purger = Purger::spawn(reopen(&map).expect("a second handle")).expect("spawning");
        let purged = purger
            .purge(sample_purge(), Duration::from_secs(60))
            .expect("the purge finishes within a minute")
            .expect("the purge succeeds");
        let after = left(&map);
        let doomed = |k: &AffinityKey, v: &AffinityValue| {
            k.service_id == 1 || (k.service_id == 2 && v.backend_id == 3)
        };
        let expected: Vec<_> = before.iter().filter(|(k, v)| !doomed(k, v)).collect();
        assert_eq!(
            purged,
            before.len() - expected.len(),
            "entries the purge reports deleted"
        );
        assert_eq!(after.len(), expected.len(), "entries left after the purge");
        assert!(
            after.iter().all(|(k, v)| !doomed(k, v)),
            "a doomed entry is left"
        );
    }

    fn lru_of<K: aya::Pod, V: aya::Pod>(name: &str, capacity: u32) -> HashMap<MapData, K, V> {
        let size = |n: usize| u32::try_from(n).expect("small");
        let obj = aya_obj::Map::new_from_params(
            LRU_HASH,
            size(size_of::<K>()),
            size(size_of::<V>()),
            capacity,
            0,
        );
        let data = MapData::create(obj, name, None).expect("creating an LRU map");
        HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("an LRU hash")
    }

    /// With NodePort on, the thread also forgets the UDP flows (never the TCP ones) and the
    /// outside clients' affinity to what the purge dooms.
    #[test]
    fn the_purge_thread_also_forgets_nodeport_udp_flows_and_affinity() {
        use gannet_common::{CtEntry, CtKey, NpAffinityKey, PROTO_TCP, PROTO_UDP};
        let mut conntrack: HashMap<MapData, CtKey, CtEntry> = lru_of("test_np_ct", 4_096);
        let mut np_affinity: HashMap<MapData, NpAffinityKey, AffinityValue> =
            lru_of("test_np_aff", 4_096);
        // Flows of services 0..4 to backends 0..7, half UDP and half TCP.
        for flow in 0..1_000u16 {
            let proto = if flow % 2 == 0 { PROTO_UDP } else { PROTO_TCP };
            let key = CtKey {
                saddr: [1; 16],
                daddr: [2; 16],
                sport: flow,
                dport: 53,
                proto,
                pad: [0; 3],
            };
            let entry = CtEntry {
                saddr: [3; 16],
                daddr: [4; 16],
                sport: 53,
                dport: flow,
                flags: 0,
                tcp: 0,
                pad: 0,
                service_id: u32::from(flow % 4),
                backend_id: u32::from(flow % 7),
                last_seen_ns: 1,
            };
            conntrack.insert(key, entry, 0).expect("inserting a flow");
            let mut client = [0u8; 16];
            client[..2].copy_from_slice(&flow.to_be_bytes());
            let key = NpAffinityKey {
                service_id: u32::from(flow % 4),
                pad: 0,
                client,
            };
            let value = AffinityValue {
                backend_id: u32::from(flow % 7),
                backend_epoch: 1,
                pad: 0,
                last_used_ns: 1,
            };
            np_affinity
                .insert(key, value, 0)
                .expect("inserting affinity");
        }
        fn reopen_as<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> MapData {
            let id = map.map().info().expect("info").id();
            MapData::from_id(id).expect("reopening")
        }
        let flows = FlowMaps::new(
            HashMap::try_from(aya::maps::Map::LruHashMap(reopen_as(&np_affinity))).expect("map"),
            HashMap::try_from(aya::maps::Map::LruHashMap(reopen_as(&conntrack))).expect("map"),
        );
        let map = lru(1_024);
        let purger = Purger::spawn(reopen(&map).expect("a second handle")).expect("spawning");
        assert!(
            purger.add_flows(Box::new(flows)).is_ok(),
            "the thread takes the maps"
        );
        let purged = purger
            .purge(sample_purge(), Duration::from_secs(60))
            .expect("the purge finishes within a minute")
            .expect("the purge succeeds");
        let doomed = |service: u32, backend: u32| service == 1 || (service == 2 && backend == 3);
        let flows_left: Vec<(CtKey, CtEntry)> = conntrack.iter().filter_map(Result::ok).collect();
        let expected_flows = (0..1_000u16)
            .filter(|f| f % 2 == 1 || !doomed(u32::from(f % 4), u32::from(f % 7)))
            .count();
        assert_eq!(flows_left.len(), expected_flows, "flows left");
        assert!(
            flows_left
                .iter()
                .all(|(k, v)| k.proto == PROTO_TCP || !doomed(v.service_id, v.backend_id)),
            "a doomed UDP flow is left"
        );
        let affinity_left = np_affinity.iter().filter_map(Result::ok).count();
        let expected_affinity = (0..1_000u16)
            .filter(|f| !doomed(u32::from(f % 4), u32::from(f % 7)))
            .count();
        assert_eq!(
            affinity_left, expected_affinity,
            "outside clients' affinity left"
        );
        assert_eq!(
            purged,
            1_000 - expected_affinity,
            "the outside clients' affinity entries are counted"
        );
    }

    /// What the purge of a full affinity map costs on the loop, inline (as before) and handed to
    /// the thread. Run by hand: `cargo test -p gannet-agent --lib affinity_purge_cost --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: run by hand with --ignored --nocapture"]
    fn affinity_purge_cost() {
        const ENTRIES: u32 = 65_536;
        for round in 0..3 {
            let mut map = lru(ENTRIES);
            fill(&mut map, ENTRIES);
            let held = left(&map).len();
            let started = Instant::now();
            let purged = purge_map(&mut map, &sample_purge()).expect("purging");
            let inline = started.elapsed();

            let mut map = lru(ENTRIES);
            fill(&mut map, ENTRIES);
            let purger = Purger::spawn(reopen(&map).expect("a second handle")).expect("spawning");
            let started = Instant::now();
            let outcome = purger.purge(sample_purge(), PURGE_WAIT);
            let on_loop = started.elapsed();
            println!(
                "round {round}: {held} entries held, {purged} purged; inline walk {:.1} ms; \
                 handed to the thread: the loop waited {:.1} ms ({})",
                inline.as_secs_f64() * 1e3,
                on_loop.as_secs_f64() * 1e3,
                if outcome.is_some() {
                    "finished within the wait"
                } else {
                    "still running"
                }
            );
        }
    }
}
