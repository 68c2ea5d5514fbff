//! Where the NodePort programs' links are pinned (tcx and XDP, per external interface), and
//! detaching them.

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use crate::datapath::{DataPathError, io_err};
use crate::sys;

use super::{PROGRAM, XDP_PROGRAM};

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
