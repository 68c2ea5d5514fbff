//! The programs on external interfaces: the NodePort program (tcx) and its XDP front, attached
//! and adopted, and the Maglev tables handed to the reconciler.

use std::{
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink};
use tracing::{debug, info};

use crate::datapath::{
    DataPathError, io_err,
    nodeport::{self, ExternalMaps},
};
use crate::sys;

use super::PodFastPath;
use super::links::{attach_pinned_at, program, xdp_program};

impl PodFastPath {
    /// The Maglev tables, for the reconciler; `None` once taken.
    pub fn take_external(&mut self) -> Option<ExternalMaps> {
        self.maglev.take()
    }

    /// Switches the pinned NodePort links to the freshly loaded program; links of interfaces
    /// that are gone are removed.
    pub(super) fn adopt_nodeport(&mut self) -> Result<(), DataPathError> {
        let dir = nodeport::links_dir(&self.bpf_root);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for (ifname, pin) in nodeport::attached(&self.bpf_root) {
            let Ok((ifindex, _)) = sys::link_info(&ifname) else {
                fs::remove_file(&pin).map_err(io_err(&pin))?;
                continue;
            };
            if !nodeport::pinned_on(&pin, ifindex)? {
                // The interface was recreated: `attach_nodeport` attaches to the new one.
                fs::remove_file(&pin).map_err(io_err(&pin))?;
                continue;
            }
            self.relink(&pin, nodeport::PROGRAM)?;
        }
        let dir = nodeport::xdp_links_dir(&self.bpf_root);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for (ifname, pin) in nodeport::attached_xdp(&self.bpf_root) {
            let Ok((ifindex, _)) = sys::link_info(&ifname) else {
                fs::remove_file(&pin).map_err(io_err(&pin))?;
                continue;
            };
            if !nodeport::pinned_xdp_on(&pin, ifindex)? {
                fs::remove_file(&pin).map_err(io_err(&pin))?;
                continue;
            }
            let name = nodeport::XDP_PROGRAM;
            let link_err = |what| move |source| DataPathError::Link { name, what, source };
            let link = sys::obj_get(&pin).map_err(link_err("opening a pinned link"))?;
            let prog_fd = xdp_program(&mut self.ebpf)?
                .fd()
                .map_err(|source| DataPathError::Program { name, source })?;
            sys::link_update(link.as_fd(), prog_fd.as_fd())
                .map_err(link_err("replacing the program of a pinned link"))?;
        }
        Ok(())
    }

    /// Attaches `gannet_nodeport_xdp` to `ifname` in native (driver) mode, in front of the tc
    /// program. Returns `false`, attaching nothing, when the driver has no native XDP.
    pub fn attach_nodeport_xdp(&mut self, ifname: &str) -> Result<bool, DataPathError> {
        let (ifindex, _) = sys::link_info(ifname).map_err(|source| DataPathError::Io {
            path: PathBuf::from(format!("interface {ifname}")),
            source,
        })?;
        let pin = nodeport::xdp_pin_path(&self.bpf_root, ifname);
        if pin.exists() {
            if nodeport::pinned_xdp_on(&pin, ifindex)? {
                return Ok(true);
            }
            fs::remove_file(&pin).map_err(io_err(&pin))?;
        }
        let name = nodeport::XDP_PROGRAM;
        let prog = xdp_program(&mut self.ebpf)?;
        let id = match prog.attach(ifname, XdpMode::Driver) {
            Ok(id) => id,
            Err(error) => {
                debug!(interface = ifname, %error, "native XDP refused");
                return Ok(false);
            }
        };
        let err = |source| DataPathError::Program { name, source };
        let link: FdLink = prog.take_link(id).map_err(err)?.try_into().map_err(
            |e: aya::programs::links::LinkError| DataPathError::Link {
                name,
                what: "taking the XDP link",
                source: io::Error::other(e),
            },
        )?;
        link.pin(&pin).map_err(|e| DataPathError::Link {
            name,
            what: "pinning the XDP link",
            source: io::Error::other(e),
        })?;
        info!(
            interface = ifname,
            ifindex, "NodePort XDP program attached (native)"
        );
        Ok(true)
    }

    /// The `gannet_nodeport_xdp` program, for packet tests (`BPF_PROG_TEST_RUN`).
    pub fn nodeport_xdp_program(&mut self) -> Result<&mut Xdp, DataPathError> {
        xdp_program(&mut self.ebpf)
    }

    pub(super) fn relink(&mut self, pin: &Path, name: &'static str) -> Result<(), DataPathError> {
        let link_err = |what| move |source| DataPathError::Link { name, what, source };
        let link = sys::obj_get(pin).map_err(link_err("opening a pinned link"))?;
        let prog = program(&mut self.ebpf, name)?;
        let prog_fd = prog
            .fd()
            .map_err(|source| DataPathError::Program { name, source })?;
        sys::link_update(link.as_fd(), prog_fd.as_fd())
            .map_err(link_err("replacing the program of a pinned link"))
    }

    /// Attaches `gannet_nodeport` to `ifname` (tcx ingress, before the programs already there,
    /// so it sees replies on the overlay device before `gannet_from_tunnel`). Attaching again
    /// to the same interface changes nothing.
    pub fn attach_nodeport(&mut self, ifname: &str) -> Result<(), DataPathError> {
        let (ifindex, _) = sys::link_info(ifname).map_err(|source| DataPathError::Io {
            path: PathBuf::from(format!("interface {ifname}")),
            source,
        })?;
        let pin = nodeport::pin_path(&self.bpf_root, ifname);
        if pin.exists() {
            if nodeport::pinned_on(&pin, ifindex)? {
                return Ok(());
            }
            fs::remove_file(&pin).map_err(io_err(&pin))?;
        }
        attach_pinned_at(
            &mut self.ebpf,
            nodeport::PROGRAM,
            ifname,
            TcAttachType::Ingress,
            &pin,
            LinkOrder::first(),
        )?;
        info!(interface = ifname, ifindex, "NodePort program attached");
        Ok(())
    }

    /// The `gannet_nodeport` program, for packet tests (`BPF_PROG_TEST_RUN`).
    pub fn nodeport_program(&mut self) -> Result<&mut SchedClassifier, DataPathError> {
        program(&mut self.ebpf, nodeport::PROGRAM)
    }
}
