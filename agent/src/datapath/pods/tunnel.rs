//! The overlay's programs on the VXLAN device (`--overlay ebpf`).

use std::{fs, io, os::fd::AsFd as _, path::PathBuf};

use aya::programs::{SchedClassifier, TcAttachType};
use tracing::{debug, info};

use crate::datapath::{DataPathError, io_err};
use crate::sys;

use super::links::{attach_pinned, program};
use super::{FROM_TUNNEL, PodFastPath, TO_TUNNEL, TUNNEL_FROM, TUNNEL_TO};

impl PodFastPath {
    /// Attaches the overlay's programs to the VXLAN device `ifname` (tcx ingress and egress).
    /// A link pinned by a previous gannetd on the same device is switched to the newly loaded
    /// program without a gap; one on another device (the device was recreated) is replaced.
    pub fn attach_tunnel(&mut self, ifname: &str) -> Result<(), DataPathError> {
        let (ifindex, _) = sys::link_info(ifname).map_err(|source| DataPathError::Io {
            path: PathBuf::from(format!("interface {ifname}")),
            source,
        })?;
        let mut adopted = 0;
        for (name, attach_type, pin) in [
            (FROM_TUNNEL, TcAttachType::Ingress, TUNNEL_FROM),
            (TO_TUNNEL, TcAttachType::Egress, TUNNEL_TO),
        ] {
            let pin = self.tunnel_links_dir.join(pin);
            if pin.exists() {
                let link_err = |what| move |source| DataPathError::Link { name, what, source };
                let link =
                    sys::obj_get(&pin).map_err(link_err("opening the pinned tunnel link"))?;
                let attached_to = sys::tcx_link_ifindex(link.as_fd())
                    .map_err(link_err("reading the pinned tunnel link"))?;
                if attached_to == ifindex {
                    let prog = program(&mut self.ebpf, name)?;
                    let prog_fd = prog
                        .fd()
                        .map_err(|source| DataPathError::Program { name, source })?;
                    sys::link_update(link.as_fd(), prog_fd.as_fd())
                        .map_err(link_err("replacing the program of the pinned tunnel link"))?;
                    adopted += 1;
                    continue;
                }
                debug!(
                    program = name,
                    attached_to, ifindex, "pinned tunnel link is on another device: replacing it"
                );
                fs::remove_file(&pin).map_err(io_err(&pin))?;
            }
            attach_pinned(&mut self.ebpf, name, ifname, attach_type, &pin)?;
        }
        info!(
            device = ifname,
            ifindex, adopted, "overlay programs attached"
        );
        Ok(())
    }

    /// Detaches the overlay's programs (unpins their links); missing links are fine.
    pub fn detach_tunnel(&mut self) -> Result<bool, DataPathError> {
        let mut removed = false;
        for pin in [TUNNEL_FROM, TUNNEL_TO] {
            let pin = self.tunnel_links_dir.join(pin);
            match fs::remove_file(&pin) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&pin)(e)),
            }
        }
        if removed {
            info!("overlay programs detached");
        }
        Ok(removed)
    }

    /// The `gannet_from_tunnel` program, for packet tests (`BPF_PROG_TEST_RUN`).
    pub fn from_tunnel_program(&mut self) -> Result<&mut SchedClassifier, DataPathError> {
        program(&mut self.ebpf, FROM_TUNNEL)
    }
}
