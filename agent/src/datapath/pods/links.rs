//! Loading the pod object with pinned maps, attaching programs through pinned tcx links, and
//! finding programs and maps in the loaded object.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, links::FdLink,
        tc::TcAttachOptions,
    },
};
use gannet_common::{EndpointKey, EndpointValue, map_names};
use tracing::warn;

use crate::datapath::{DataPathError, nodeport};
use crate::sys;

use super::HostVeth;

/// A loader of the pod object whose maps are pinned under `maps_dir`: a map pinned there is
/// used as it is, one that is not is created and pinned there.
pub(in crate::datapath) fn pinned_loader(maps_dir: &Path) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(maps_dir)
        // A BTF map (map-in-map) says nothing about pinning; pin it with the others.
        .map_pin_path(map_names::MAGLEV, maps_dir.join(map_names::MAGLEV));
    loader
}

/// Attaches program `name` to `ifname` with tcx (after the programs already there) and pins the
/// link at `pin`.
pub(super) fn attach_pinned(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifname: &str,
    attach_type: TcAttachType,
    pin: &Path,
) -> Result<(), DataPathError> {
    attach_pinned_at(ebpf, name, ifname, attach_type, pin, LinkOrder::default())
}

/// [`attach_pinned`] at a given place among the interface's tcx programs.
pub(super) fn attach_pinned_at(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifname: &str,
    attach_type: TcAttachType,
    pin: &Path,
    order: LinkOrder,
) -> Result<(), DataPathError> {
    let prog = program(ebpf, name)?;
    let err = |source| DataPathError::Program { name, source };
    let id = prog
        .attach_with_options(ifname, attach_type, TcAttachOptions::TcxOrder(order))
        .map_err(err)?;
    let link: FdLink = prog.take_link(id).map_err(err)?.try_into().map_err(
        |e: aya::programs::links::LinkError| DataPathError::Link {
            name,
            what: "taking the tcx link",
            source: io::Error::other(e),
        },
    )?;
    link.pin(pin).map_err(|e| DataPathError::Link {
        name,
        what: "pinning the tcx link",
        source: io::Error::other(e),
    })?;
    Ok(())
}

pub(super) fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataPathError> {
    ebpf.program_mut(name)
        .ok_or(DataPathError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DataPathError::Program { name, source })
}

pub(super) fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataPathError> {
    let name = nodeport::XDP_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DataPathError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DataPathError::Program { name, source })
}

pub(super) fn take(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, EndpointKey, EndpointValue>, DataPathError> {
    let map = ebpf.take_map(name).ok_or(DataPathError::MissingMap(name))?;
    HashMap::try_from(map).map_err(|source| DataPathError::Map { name, source })
}

pub(super) fn host_veth(ifname: &str) -> Result<HostVeth, DataPathError> {
    let (ifindex, mac) = sys::link_info(ifname).map_err(|source| DataPathError::Io {
        path: PathBuf::from(format!("interface {ifname}")),
        source,
    })?;
    if mac == [0; 6] {
        warn!(ifname, "host-side interface has no MAC address");
    }
    Ok(HostVeth { ifindex, mac })
}
