//! The socket load balancer's programs: loaded (reusing the pinned maps), checked, and attached
//! to the cgroup through pinned links that a restart updates in place.

use std::{fs, io, os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapError,
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, links::FdLink},
};
use gannet_common::{SockRevNat, UdpSockState, map_names};
use tracing::{debug, info, warn};

use crate::{config::Capacity, sys};

use super::maps::BpfMaps;
use super::{DataPathError, ensure_bpffs, io_err, pins};

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
pub(super) static SOCK_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gannet-sock"));

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
