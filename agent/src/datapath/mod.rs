//! The socket load balancer in the kernel: loading, attaching, adopting and removing it.
//!
//! Layout under `--bpf-root`:
//! - `maps/<NAME>`: the pinned maps (reused as they are on restart, so state survives);
//! - `links/<program>`: the pinned cgroup links (programs stay attached while gannetd is
//!   down; on restart each is switched to the newly loaded program with one `BPF_LINK_UPDATE`).

pub mod frame;
pub mod nft;
pub mod nodeport;
pub mod pins;
pub mod pods;
pub mod purge;
pub mod reconcile;
pub mod testrun;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, IterableMap as _, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, links::FdLink},
};
use gannet_common::{
    AffinityKey, AffinityValue, BackendValue, RevNatKey, RevNatValue, ServiceKey, ServiceValue,
    SlotKey, SockRevNat, UdpSockState, map_names,
};
use tracing::{debug, info, warn};

use crate::{config::Capacity, sockdiag, sys};
use gannet_k8s::{DesiredState, Frontend, ServicePort};
use reconcile::{ApplyReport, MapOpError, ServiceMaps};

/// Where desired services meet a data plane: the eBPF one ([`reconcile::Reconciler`] over the
/// socket load balancer's and the NodePort program's maps) or the nftables one
/// ([`nft::NftDataPlane`]). Desired state in (every frontend, expanded: see
/// `nodeport::frontends`), changes applied, a report out.
pub trait ServiceDataPlane {
    /// Brings the data plane to `desired`; with `prune`, frontends not in it are removed
    /// (without, they stay: a source that may be incomplete).
    fn apply(&mut self, desired: &DesiredState, prune: bool) -> ApplyReport;
    /// Applies changes of frontends (`None`: removed).
    fn apply_changes(&mut self, changes: &BTreeMap<Frontend, Option<ServicePort>>) -> ApplyReport;
    /// Frees what a change left for later (called every 100 ms).
    fn collect_garbage(&mut self) {}
    /// Checks that what was programmed is still in place and programs it again where not
    /// (called every [`REPAIR_INTERVAL`]); the report of what it did, if anything.
    fn repair(&mut self) -> Option<ApplyReport> {
        None
    }
    /// What is programmed now (for metrics; cheap: from the data plane's own books).
    fn counts(&self) -> reconcile::Counts;
}

/// How often [`ServiceDataPlane::repair`] runs.
pub const REPAIR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl<M: reconcile::ServiceMaps> ServiceDataPlane for reconcile::Reconciler<M> {
    fn apply(&mut self, desired: &DesiredState, prune: bool) -> ApplyReport {
        reconcile::Reconciler::apply(self, desired, prune, Instant::now())
    }

    fn apply_changes(&mut self, changes: &BTreeMap<Frontend, Option<ServicePort>>) -> ApplyReport {
        reconcile::Reconciler::apply_changes(self, changes, Instant::now())
    }

    fn collect_garbage(&mut self) {
        reconcile::Reconciler::collect_garbage(self, Instant::now());
    }

    fn counts(&self) -> reconcile::Counts {
        reconcile::Reconciler::counts(self)
    }
}

impl ServiceDataPlane for nft::NftDataPlane {
    fn apply(&mut self, desired: &DesiredState, prune: bool) -> ApplyReport {
        nft::NftDataPlane::apply(self, desired, prune)
    }

    fn apply_changes(&mut self, changes: &BTreeMap<Frontend, Option<ServicePort>>) -> ApplyReport {
        nft::NftDataPlane::apply_changes(self, changes)
    }

    fn repair(&mut self) -> Option<ApplyReport> {
        nft::NftDataPlane::repair(self)
    }

    fn counts(&self) -> reconcile::Counts {
        let frontends = self.frontends();
        let backends: BTreeSet<_> = frontends.values().flat_map(|p| &p.backends).collect();
        reconcile::Counts {
            frontends: frontends.len(),
            backends: backends.len(),
            ..reconcile::Counts::default()
        }
    }
}

/// The programs of the socket load balancer, by their names in the object.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "gannet_connect4",
    "gannet_connect6",
    "gannet_sendmsg4",
    "gannet_sendmsg6",
    "gannet_recvmsg4",
    "gannet_recvmsg6",
    "gannet_getpeer4",
    "gannet_getpeer6",
];

/// The socket load balancer's object, built by build.rs.
static SOCK_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gannet-sock"));

/// Where bpffs is mounted when it is missing.
pub(crate) const BPFFS: &str = "/sys/fs/bpf";
const BPFFS_LOCK: &str = "/run/gannet-bpffs.lock";

#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the socket load balancer: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program {name}: {what}: {source}")]
    Link {
        name: &'static str,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    /// A map pinned where gannetd pins one of its own has another type or layout: adopting it
    /// would break the data path.
    #[error(
        "map {name}: the map pinned at {} does not match this gannetd's ({differences}); \
         refusing to adopt it. It was left by another gannet version or put there by something \
         else: stop gannetd and run `gannetd cleanup --bpf-root {}` (with gannetd's \
         --state-dir; service traffic through this node stops until gannetd starts again), \
         then start gannetd",
        pin.display(),
        bpf_root.display()
    )]
    IncompatiblePin {
        name: String,
        pin: PathBuf,
        differences: String,
        bpf_root: PathBuf,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataPathError + '_ {
    move |source| DataPathError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes sure `bpf_root` lies on bpffs, mounting bpffs at /sys/fs/bpf when it is missing there.
/// Serialised by a lock file so that agents starting together mount it once.
pub fn ensure_bpffs(bpf_root: &Path) -> Result<(), DataPathError> {
    let bpffs = Path::new(BPFFS);
    if bpf_root.starts_with(bpffs) {
        let _lock =
            sys::FileLock::acquire(Path::new(BPFFS_LOCK)).map_err(io_err(Path::new(BPFFS_LOCK)))?;
        if sys::fs_magic(bpffs).map_err(io_err(bpffs))? != sys::BPF_FS_MAGIC {
            sys::mount_bpffs(bpffs).map_err(io_err(bpffs))?;
            info!(path = BPFFS, "mounted bpffs");
        }
    }
    let mut probe = bpf_root.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if sys::fs_magic(&probe).map_err(io_err(&probe))? != sys::BPF_FS_MAGIC {
        return Err(DataPathError::Bpffs(format!(
            "--bpf-root {}: {} is not on a bpffs mount",
            bpf_root.display(),
            probe.display()
        )));
    }
    Ok(())
}

/// The loaded, attached socket load balancer.
pub struct SockLb {
    pub maps: BpfMaps,
}

impl SockLb {
    /// Loads the programs (reusing pinned maps), and attaches them to `cgroup`: a program that
    /// a previous gannetd left attached there is replaced in place, atomically.
    pub fn load(bpf_root: &Path, cgroup: &Path, capacity: Capacity) -> Result<Self, DataPathError> {
        ensure_bpffs(bpf_root)?;
        // Before anything is created: a pinned map of another layout stops the start here.
        pins::check_pinned_maps(bpf_root)?;
        let maps_dir = bpf_root.join("maps");
        let links_dir = bpf_root.join("links");
        for dir in [&maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let adopting = maps_dir.join(map_names::SERVICES).exists();

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(map_names::SERVICES, capacity.services)
            .map_max_entries(map_names::SLOTS, capacity.slots)
            .map_max_entries(map_names::BACKENDS, capacity.backends)
            .map_max_entries(map_names::REV_NAT, capacity.rev_nat)
            .map_max_entries(map_names::AFFINITY, capacity.affinity)
            // A BTF map, which aya pins only when told where.
            .map_pin_path(
                map_names::SOCK_REV_NAT,
                maps_dir.join(map_names::SOCK_REV_NAT),
            )
            .map_pin_path(map_names::SOCK_UDP, maps_dir.join(map_names::SOCK_UDP))
            .load(SOCK_OBJECT)?;

        // Take (and check) the maps before any program is attached: a pinned map of another
        // layout must stop us before it reaches the data path.
        let maps = BpfMaps::take(&mut ebpf, capacity, cgroup)?;
        check_sk_storage(&ebpf, map_names::SOCK_REV_NAT, size_of::<SockRevNat>())?;
        check_sk_storage(&ebpf, map_names::SOCK_UDP, size_of::<UdpSockState>())?;
        let cgroup_file = fs::File::open(cgroup).map_err(io_err(cgroup))?;
        let cgroup_id = sys::cgroup_id(cgroup).map_err(io_err(cgroup))?;
        for name in SOCK_PROGRAMS {
            attach(&mut ebpf, name, &cgroup_file, cgroup_id, &links_dir)?;
        }
        info!(
            cgroup = %cgroup.display(),
            bpf_root = %bpf_root.display(),
            adopted = adopting,
            "socket load balancer attached"
        );
        Ok(Self { maps })
    }
}

/// Checks that a pinned socket-storage map holds values of this build's layout: its values
/// live in sockets, so it cannot be migrated, and one of another layout must not be adopted (a
/// layout change takes a new pin name, as `GANNET_SK_UDP` is next to `GANNET_SK_RNAT`).
fn check_sk_storage(ebpf: &Ebpf, name: &'static str, expected: usize) -> Result<(), DataPathError> {
    let map = ebpf.map(name).ok_or(DataPathError::MissingMap(name))?;
    // aya wraps a map by the object's declaration: anything else means the object has no
    // socket-storage map of this name.
    let aya::maps::Map::SkStorage(data) = map else {
        return Err(DataPathError::MissingMap(name));
    };
    let info = data
        .info()
        .map_err(|source| DataPathError::Map { name, source })?;
    if info.value_size() as usize != expected {
        return Err(DataPathError::Map {
            name,
            source: MapError::InvalidValueSize {
                size: info.value_size() as usize,
                expected,
            },
        });
    }
    Ok(())
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &fs::File,
    cgroup_id: u64,
    links_dir: &Path,
) -> Result<(), DataPathError> {
    let program_err = |source| DataPathError::Program { name, source };
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(DataPathError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(program_err)?;
    program.load().map_err(program_err)?;
    let pin = links_dir.join(name);

    if pin.exists() {
        let link_err = |what| move |source| DataPathError::Link { name, what, source };
        let link = sys::obj_get(&pin).map_err(link_err("opening pinned link"))?;
        let attached_to =
            sys::cgroup_link_info(link.as_fd()).map_err(link_err("reading pinned link"))?;
        if attached_to.cgroup_id == cgroup_id {
            let prog_fd = program.fd().map_err(program_err)?;
            sys::link_update(link.as_fd(), prog_fd.as_fd())
                .map_err(link_err("replacing the program of the pinned link"))?;
            debug!(
                program = name,
                "switched the pinned link to the new program"
            );
            return Ok(());
        }
        // The agent was pointed at another cgroup: detach from the old one.
        warn!(
            program = name,
            "pinned link is attached to another cgroup; moving it"
        );
        fs::remove_file(&pin).map_err(io_err(&pin))?;
    }

    // A cgroup *link* coexists with other programs of the cgroup by design; the kernel rejects
    // attach flags on link creation, which is what `Single` (no flags) means here.
    let link_id = program
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(program_err)?;
    let link: FdLink = program
        .take_link(link_id)
        .map_err(program_err)?
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| DataPathError::Link {
            name,
            what: "taking the link",
            source: io::Error::other(e),
        })?;
    link.pin(&pin).map_err(|e| DataPathError::Link {
        name,
        what: "pinning the link",
        source: io::Error::other(e),
    })?;
    debug!(program = name, pin = %pin.display(), "attached and pinned");
    Ok(())
}

/// Removes everything gannetd created under `bpf_root`. Unpinning a link detaches its program
/// (from the cgroup, or from a pod's veth) unless a running gannetd still holds it open: stop
/// gannetd first.
pub fn cleanup(bpf_root: &Path) -> Result<Vec<PathBuf>, DataPathError> {
    fn remove_tree(dir: &Path, removed: &mut Vec<PathBuf>) -> Result<(), DataPathError> {
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let path = entry.path();
            if entry.file_type().map_err(io_err(&path))?.is_dir() {
                remove_tree(&path, removed)?;
            } else {
                fs::remove_file(&path).map_err(io_err(&path))?;
                removed.push(path);
            }
        }
        fs::remove_dir(dir).map_err(io_err(dir))?;
        removed.push(dir.to_owned());
        Ok(())
    }

    let mut removed = Vec::new();
    if bpf_root.exists() {
        // Links first: programs stop running before their maps go.
        let links = bpf_root.join("links");
        if links.exists() {
            remove_tree(&links, &mut removed)?;
        }
        remove_tree(bpf_root, &mut removed)?;
    }
    Ok(removed)
}

/// The load balancer's maps, as the reconciler writes them.
pub struct BpfMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, BackendValue>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    rev_nat: HashMap<MapData, RevNatKey, RevNatValue>,
    /// Walks `affinity` for purges off the main loop (`None`: it could not be started, and
    /// purges walk the map on the loop).
    purger: Option<purge::Purger>,
    capacity: Capacity,
    /// The Maglev tables (from the pod object); until set, external frontends get none.
    external: Option<nodeport::ExternalMaps>,
    /// The cgroup the programs are attached to: connected UDP sockets of its sub-tree are
    /// terminated when their backend goes.
    cgroup: PathBuf,
}

/// Takes a map out of the loaded object. The key and value sizes are checked (a pinned map
/// left by a gannetd of another layout is an error); a pinned map whose capacity differs from
/// the configured one keeps its own, with a warning, and `capacity` is set to what is in effect.
fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    flag: &str,
    capacity: &mut u32,
) -> Result<HashMap<MapData, K, V>, DataPathError> {
    let map = ebpf.take_map(name).ok_or(DataPathError::MissingMap(name))?;
    let map = HashMap::try_from(map).map_err(|source| DataPathError::Map { name, source })?;
    let actual = map
        .map()
        .info()
        .map_err(|source| DataPathError::Map { name, source })?
        .max_entries();
    if actual != *capacity {
        warn!(
            map = name,
            pinned = actual,
            configured = *capacity,
            "{flag} differs from the pinned map's capacity; the pinned capacity stays in effect \
             until `gannetd cleanup` (which interrupts service traffic) and a restart"
        );
        *capacity = actual;
    }
    Ok(map)
}

impl BpfMaps {
    fn take(ebpf: &mut Ebpf, mut capacity: Capacity, cgroup: &Path) -> Result<Self, DataPathError> {
        let c = &mut capacity;
        let affinity = take_map(ebpf, map_names::AFFINITY, "--max-affinity", &mut c.affinity)?;
        let purger = match purge::reopen(&affinity)
            .map_err(|e| e.to_string())
            .and_then(|map| purge::Purger::spawn(map).map_err(|e| e.to_string()))
        {
            Ok(purger) => Some(purger),
            Err(e) => {
                warn!(error = %e, "could not start the affinity purge thread; purges run on the main loop");
                None
            }
        };
        Ok(Self {
            services: take_map(ebpf, map_names::SERVICES, "--max-services", &mut c.services)?,
            slots: take_map(ebpf, map_names::SLOTS, "--max-slots", &mut c.slots)?,
            backends: take_map(ebpf, map_names::BACKENDS, "--max-backends", &mut c.backends)?,
            affinity,
            purger,
            rev_nat: take_map(ebpf, map_names::REV_NAT, "--max-rev-nat", &mut c.rev_nat)?,
            capacity,
            external: None,
            cgroup: cgroup.to_owned(),
        })
    }

    /// Hands the Maglev tables to the reconciler's maps (they live in the pod object, which is
    /// loaded after this one).
    pub fn set_external(&mut self, maglev: nodeport::ExternalMaps) {
        self.external = Some(maglev);
    }

    /// Entries in the reverse-NAT map (for status, metrics and tests; walks the map).
    pub fn rev_nat_len(&self) -> usize {
        self.rev_nat.keys().filter(Result::is_ok).count()
    }

    /// Entries in the affinity map (for metrics; walks the map).
    pub fn affinity_len(&self) -> usize {
        self.affinity.keys().filter(Result::is_ok).count()
    }

    /// The capacities in effect (a pinned map keeps its own).
    #[must_use]
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }
}

fn os_error(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

fn write_err(map: &'static str, op: &'static str, capacity: u32, e: MapError) -> MapOpError {
    match os_error(&e) {
        Some(libc::E2BIG | libc::ENOMEM | libc::ENOSPC) => MapOpError::Full { map, capacity },
        _ => MapOpError::Other {
            map,
            op,
            source: io::Error::other(e),
        },
    }
}

fn delete_result(map: &'static str, r: Result<(), MapError>) -> Result<(), MapOpError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(e) if os_error(&e) == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(write_err(map, "delete", 0, e)),
    }
}

fn maglev_err(op: &'static str, e: DataPathError) -> MapOpError {
    MapOpError::Other {
        map: map_names::MAGLEV,
        op,
        source: io::Error::other(e),
    }
}

fn list<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, MapOpError> {
    map.iter()
        .map(|r| r.map_err(|e| write_err(name, "iterate", 0, e)))
        .collect()
}

impl ServiceMaps for BpfMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapOpError> {
        let cap = self.capacity.services;
        self.services
            .insert(key, value, 0)
            .map_err(|e| write_err(map_names::SERVICES, "update", cap, e))
    }

    fn del_service(&mut self, key: &ServiceKey) -> Result<(), MapOpError> {
        delete_result(map_names::SERVICES, self.services.remove(key))
    }

    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), MapOpError> {
        let cap = self.capacity.slots;
        self.slots
            .insert(key, backend_id, 0)
            .map_err(|e| write_err(map_names::SLOTS, "update", cap, e))
    }

    fn del_slot(&mut self, key: &SlotKey) -> Result<(), MapOpError> {
        delete_result(map_names::SLOTS, self.slots.remove(key))
    }

    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapOpError> {
        let cap = self.capacity.backends;
        self.backends
            .insert(id, value, 0)
            .map_err(|e| write_err(map_names::BACKENDS, "update", cap, e))
    }

    fn del_backend(&mut self, id: u32) -> Result<(), MapOpError> {
        delete_result(map_names::BACKENDS, self.backends.remove(&id))
    }

    fn purge_affinity(
        &mut self,
        purge: &std::sync::Arc<reconcile::AffinityPurge>,
    ) -> Result<usize, MapOpError> {
        let mut purged = match &self.purger {
            Some(purger) => match purger.purge(std::sync::Arc::clone(purge), purge::PURGE_WAIT) {
                Some(result) => result?,
                None => 0,
            },
            None => purge::purge_map(&mut self.affinity, purge)?,
        };
        if let Some(external) = &mut self.external {
            let flows = external.purge_udp_flows(&mut |service_id, backend_id| {
                reconcile::purge_dooms(purge, service_id, backend_id)
            });
            if flows > 0 {
                debug!(entries = flows, "UDP flows to removed backends forgotten");
            }
            purged += external.purge_affinity(&mut |service_id, backend_id| {
                reconcile::purge_dooms(purge, service_id, backend_id)
            });
        }
        Ok(purged)
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapOpError> {
        list(&self.services, map_names::SERVICES)
    }

    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, MapOpError> {
        list(&self.slots, map_names::SLOTS)
    }

    fn backends(&self) -> Result<Vec<(u32, BackendValue)>, MapOpError> {
        list(&self.backends, map_names::BACKENDS)
    }

    fn put_maglev(&mut self, service_id: u32, table: &[u32]) -> Result<(), MapOpError> {
        let Some(maglev) = &mut self.external else {
            return Ok(());
        };
        maglev
            .stage(service_id, table)
            .map_err(|e| maglev_err("create", e))
    }

    fn del_maglev(&mut self, service_id: u32) {
        if let Some(maglev) = &mut self.external {
            maglev.stage_remove(service_id);
        }
    }

    fn maglev_staged(&self) -> usize {
        self.external
            .as_ref()
            .map_or(0, nodeport::ExternalMaps::staged)
    }

    fn flush_maglev(&mut self) -> Vec<(u32, MapOpError)> {
        let Some(maglev) = &mut self.external else {
            return Vec::new();
        };
        maglev
            .flush()
            .into_iter()
            .map(|(id, e)| (id, maglev_err("update", e)))
            .collect()
    }

    fn maglev_ids(&self) -> Result<std::collections::BTreeSet<u32>, MapOpError> {
        Ok(self
            .external
            .as_ref()
            .map(nodeport::ExternalMaps::service_ids)
            .unwrap_or_default())
    }

    fn maglev_table(&self, service_id: u32) -> Option<Vec<u32>> {
        self.external.as_ref()?.get(service_id)
    }

    fn put_ranges(&mut self, service_id: u32, nets: &[ipnet::IpNet]) -> Result<(), MapOpError> {
        let Some(maps) = &mut self.external else {
            return Ok(());
        };
        maps.put_ranges(service_id, nets)
            .map_err(|e| MapOpError::Other {
                map: map_names::SOURCE_RANGES,
                op: "update",
                source: io::Error::other(e),
            })
    }

    fn del_ranges(&mut self, service_id: u32, nets: &[ipnet::IpNet]) -> Result<(), MapOpError> {
        let Some(maps) = &mut self.external else {
            return Ok(());
        };
        maps.del_ranges(service_id, nets)
            .map_err(|e| MapOpError::Other {
                map: map_names::SOURCE_RANGES,
                op: "delete",
                source: io::Error::other(e),
            })
    }

    fn ranges(&self) -> Result<std::collections::BTreeMap<u32, Vec<ipnet::IpNet>>, MapOpError> {
        Ok(self
            .external
            .as_ref()
            .map(nodeport::ExternalMaps::ranges)
            .unwrap_or_default())
    }

    fn maglev_size(&self) -> u32 {
        self.external.as_ref().map_or(
            self.capacity.maglev_table_size,
            nodeport::ExternalMaps::size,
        )
    }

    /// Terminates the connected UDP sockets of the attached cgroup's sub-tree whose peer is a
    /// backend in `gone`, unless the reverse-NAT entry the connect hook left says the socket
    /// reached it through a frontend that still has it (two services sharing a backend). A
    /// socket without such an entry (connected to the backend's address directly, or whose entry
    /// the LRU map evicted) is terminated too: it is talking to an endpoint that left its
    /// service, or (evicted) reconnects through its service. The entry is only this hint: the
    /// socket's translations live in its own storage, which `sock_diag` does not report for UDP
    /// sockets (asked with `INET_DIAG_REQ_SK_BPF_STORAGES`, kernel 6.18 answered UDP sockets
    /// without the attribute).
    ///
    /// Looked at are gannetd's own network namespace and those of the sub-tree's processes
    /// (pods in namespaces of their own), each once, through a netlink socket created there by a
    /// helper thread (`crate::netns`). A namespace that cannot be reached is logged (once per
    /// call, with how many) and the others are still done; only a failure in gannetd's own
    /// namespace is returned as an error.
    fn terminate_udp(
        &mut self,
        gone: &BTreeMap<gannet_k8s::Backend, BTreeSet<u32>>,
    ) -> Result<usize, sockdiag::SockDiagError> {
        let subtree = cgroup_subtree(&self.cgroup);
        let own_ns = crate::netns::current().ok();
        let mut own = sockdiag::DiagSocket::open()?;
        let own_result = self.terminate_in(&mut own, gone, &subtree.ids);
        drop(own);

        let pods = crate::netns::of_processes(subtree.pids, own_ns.as_slice());
        let mut terminated = 0;
        let mut failures = 0;
        let mut first_failure = pods.failed.as_ref().map(|(pid, e, n)| {
            failures += n;
            format!("reading /proc/{pid}/ns/net: {e}")
        });
        let sockets = crate::netns::in_each(&pods.found, sockdiag::DiagSocket::open);
        for (found, socket) in pods.found.iter().zip(sockets) {
            let result = socket.map_err(|e| e.to_string()).and_then(|mut s| {
                self.terminate_in(&mut s, gone, &subtree.ids)
                    .map_err(|e| e.to_string())
            });
            match result {
                Ok(n) => terminated += n,
                Err(e) => {
                    failures += 1;
                    first_failure.get_or_insert_with(|| {
                        format!(
                            "network namespace of pid {} (inode {}): {e}",
                            found.pid, found.id.ino
                        )
                    });
                }
            }
        }
        if let Some(first) = first_failure {
            warn!(
                namespaces = pods.found.len(),
                failures,
                first = %first,
                "connected UDP sockets of removed backends could not be looked at in every pod \
                 network namespace; those left keep sending to them until they reconnect"
            );
        }
        debug!(
            namespaces = pods.found.len(),
            terminated, "pod network namespaces looked at"
        );
        Ok(own_result? + terminated)
    }
}

impl BpfMaps {
    /// [`ServiceMaps::terminate_udp`] in the namespace of `socket`.
    fn terminate_in(
        &self,
        socket: &mut sockdiag::DiagSocket,
        gone: &BTreeMap<gannet_k8s::Backend, BTreeSet<u32>>,
        cgroups: &BTreeSet<u64>,
    ) -> Result<usize, sockdiag::SockDiagError> {
        let v4 = gone.keys().any(|b| b.ip.is_ipv4());
        let mut candidates = Vec::new();
        // An IPv6 socket reaches IPv4 backends through IPv4-mapped addresses (reported as IPv4).
        for family in [sockdiag::AF_INET, sockdiag::AF_INET6] {
            if family == sockdiag::AF_INET && !v4 {
                continue;
            }
            candidates.extend(
                sockdiag::connected_udp(socket, family)?
                    .into_iter()
                    .filter_map(|s| {
                        let backend = gannet_k8s::Backend {
                            ip: s.peer.ip(),
                            port: s.peer.port(),
                        };
                        Some((gone.get_key_value(&backend)?, s))
                    }),
            );
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        let doomed: Vec<sockdiag::UdpSock> = candidates
            .into_iter()
            .filter(|(_, s)| s.cgroup_id.is_some_and(|id| cgroups.contains(&id)))
            .filter(|((backend, frontends), s)| {
                let value = reconcile::backend_value(backend);
                let key = RevNatKey {
                    cookie: s.cookie,
                    addr: value.addr,
                    port: value.port,
                    pad: [0; 6],
                };
                self.rev_nat
                    .get(&key, 0)
                    .map_or(true, |rev| frontends.contains(&rev.service_id))
            })
            .map(|(_, s)| s)
            .collect();
        for s in &doomed {
            debug!(
                local = %s.local,
                peer = %s.peer,
                cookie = s.cookie,
                "terminating a connected UDP socket"
            );
        }
        sockdiag::destroy(socket, &doomed)
    }
}

/// A cgroup sub-tree: the ids of its cgroups and the processes in them.
struct Subtree {
    ids: BTreeSet<u64>,
    pids: Vec<i32>,
}

/// The ids of `root` and every cgroup below it, and the processes in them (`cgroup.procs`).
/// Unreadable directories are skipped (a cgroup removed while we walk).
fn cgroup_subtree(root: &Path) -> Subtree {
    let mut ids = BTreeSet::new();
    let mut pids = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(id) = sys::cgroup_id(&dir) else {
            continue;
        };
        ids.insert(id);
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(
                procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        dirs.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    Subtree { ids, pids }
}
