//! The VXLAN device: created with settings derived from the configuration (and a MAC derived
//! from the node name), adopted as it is when a previous gannetd left it with the same settings,
//! recreated when they changed; and removed by `gannetd cleanup` with every route gannetd owns.

use std::fs;
use std::path::Path;

use gannet_cni::netlink::{Netlink, Vxlan};
use gannet_k8s::format_mac;
use tracing::{info, warn};

use super::{
    DEVICE, Mode, Overlay, OverlayError, ROUTE_PROTOCOL, STATUS_FILE, VXLAN_OVERHEAD_V4,
    VXLAN_OVERHEAD_V6, Vtep,
};

impl Overlay {
    pub(super) fn device_settings(&self) -> Vxlan {
        if self.config.mode == Mode::Ebpf {
            // External mode: the VNI and the endpoints come with each packet's tunnel key.
            Vxlan {
                vni: self.config.vni,
                port: self.config.port,
                local: None,
                underlay: None,
                collect_metadata: true,
            }
        } else {
            Vxlan {
                vni: self.config.vni,
                port: self.config.port,
                local: Some(self.underlay.ip),
                underlay: Some(self.underlay.index),
                collect_metadata: false,
            }
        }
    }

    /// Creates the VXLAN device, or adopts the one a previous gannetd left (keeping its MAC),
    /// recreating it only when its VNI, port, address or underlay changed.
    pub(super) fn ensure_device(&mut self) -> Result<Vtep, OverlayError> {
        let overhead = if self.underlay.ip.is_ipv4() {
            VXLAN_OVERHEAD_V4
        } else {
            VXLAN_OVERHEAD_V6
        };
        let mtu = self.underlay.mtu.saturating_sub(overhead);
        let settings = self.device_settings();
        if let Some(link) = self.netlink.link_by_name(DEVICE)? {
            let same = link.kind.as_deref() == Some("vxlan")
                && link.vxlan.as_ref().is_some_and(|v| {
                    if settings.collect_metadata {
                        // An external device has no VNI, address or underlay of its own.
                        v.collect_metadata && v.port == settings.port
                    } else {
                        v.vni == settings.vni
                            && v.port == settings.port
                            && v.local == settings.local
                            && v.underlay == settings.underlay
                            && !v.collect_metadata
                    }
                });
            if same {
                if link.mtu != mtu {
                    self.netlink.set_mtu(link.index, mtu)?;
                }
                self.netlink.set_up(link.index, None)?;
                let mac: [u8; 6] = link.mac.as_slice().try_into().unwrap_or_default();
                info!(
                    device = DEVICE,
                    mac = format_mac(mac),
                    "adopted the VXLAN device"
                );
                return Ok(Vtep {
                    index: link.index,
                    mac,
                    mtu,
                });
            }
            warn!(
                device = DEVICE,
                was = link
                    .vxlan
                    .as_ref()
                    .map_or_else(|| "not a VXLAN device".to_owned(), ToString::to_string),
                now = %settings,
                "the VXLAN device's settings changed: recreating it (cross-node traffic pauses briefly)"
            );
            self.netlink.delete_link(link.index)?;
        }
        let mac = derived_mac(&self.node_name, self.config.vni);
        self.netlink.create_vxlan(DEVICE, &settings, mtu, &mac)?;
        let link = self
            .netlink
            .link_by_name(DEVICE)?
            .ok_or_else(|| OverlayError::Underlay(format!("{DEVICE} vanished after creation")))?;
        self.netlink.set_up(link.index, None)?;
        info!(
            device = DEVICE,
            mac = format_mac(mac),
            mtu,
            vni = settings.vni,
            port = settings.port,
            "created the VXLAN device"
        );
        Ok(Vtep {
            index: link.index,
            mac,
            mtu,
        })
    }
}

/// A stable, locally administered MAC for the VXLAN device, derived from the node name and the
/// VNI: a device recreated after a crash or a `gannetd cleanup` gets the same address, so the
/// other nodes' entries stay right.
fn derived_mac(node_name: &str, vni: u32) -> [u8; 6] {
    // FNV-1a, 64 bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node_name.bytes().chain(vni.to_be_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let b = hash.to_be_bytes();
    // 0x0e: locally administered (bit 1), unicast (bit 0 clear).
    [0x0e, b[0], b[1], b[2], b[3], b[4]]
}

/// Removes everything the overlay created in this network namespace: the VXLAN device (with its
/// neighbours, forwarding entries and routes), every route of [`ROUTE_PROTOCOL`], and the report.
/// Returns what was removed.
///
/// # Errors
/// When netlink fails.
pub fn cleanup(state_dir: &Path) -> Result<Vec<String>, OverlayError> {
    let mut removed = Vec::new();
    let mut netlink = Netlink::open()?;
    for ipv4 in [true, false] {
        for route in netlink.routes(ipv4)? {
            if route.protocol == ROUTE_PROTOCOL
                && netlink.delete_route(route.dst, ROUTE_PROTOCOL)?
            {
                removed.push(format!("route {}", route.dst));
            }
        }
    }
    if let Some(link) = netlink.link_by_name(DEVICE)?
        && link.kind.as_deref() == Some("vxlan")
        && netlink.delete_link(link.index)?
    {
        removed.push(format!("device {DEVICE}"));
    }
    let status = state_dir.join(STATUS_FILE);
    if fs::remove_file(&status).is_ok() {
        removed.push(status.display().to_string());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_stable_local_unicast_and_differ_per_node() {
        let a = derived_mac("node-a", 1);
        assert_eq!(a, derived_mac("node-a", 1));
        assert_ne!(a, derived_mac("node-b", 1));
        assert_ne!(a, derived_mac("node-a", 2));
        assert_eq!(a[0] & 0b11, 0b10, "locally administered unicast: {a:02x?}");
    }
}
