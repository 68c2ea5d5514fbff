//! The socket load balancer in the kernel: loading, attaching, adopting and removing it.
//!
//! Layout under `--bpf-root`:
//! - `maps/<NAME>`: the pinned maps (reused as they are on restart, so state survives);
//! - `links/<program>`: the pinned cgroup links (programs stay attached while gannetd is
//!   down; on restart each is switched to the newly loaded program with one `BPF_LINK_UPDATE`).
//!
//! `sock.rs` loads and attaches the programs, `maps.rs` holds the maps the reconciler writes.

pub mod frame;
pub mod full;
mod maps;
pub mod nft;
pub mod nodeport;
pub mod pins;
pub mod pods;
pub mod purge;
pub mod reconcile;
mod sock;
pub mod testrun;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{maps::MapError, programs::ProgramError};
use tracing::info;

use crate::sys;
use gannet_k8s::{DesiredState, Frontend, ServicePort};
use reconcile::ApplyReport;

pub use self::maps::BpfMaps;
pub use self::sock::{SOCK_PROGRAMS, SockLb};

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
