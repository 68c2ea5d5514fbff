//! The overlay's report (`<state-dir>/overlay.json`), written after every change and read by
//! `gannetd status`.

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use gannet_k8s::format_mac;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{DEVICE, Mode, Overlay, STATUS_FILE, plan::Entry};

impl Overlay {
    pub(super) fn write_status(&self) {
        let status = OverlayStatus {
            mode: self.config.mode,
            underlay: UnderlayStatus {
                interface: self.underlay.name.clone(),
                ip: self.underlay.ip,
                mtu: self.underlay.mtu,
            },
            device: self.vtep.map(|_| DEVICE.to_owned()),
            vtep_mac: self.vtep_mac(),
            pod_mtu: self.pod_mtu(),
            pod_cidrs: self.local_cidrs.clone(),
            nodes: self
                .programmed
                .iter()
                .map(|(name, p)| NodeStatus {
                    name: name.clone(),
                    ips: p.node.internal_ips.clone(),
                    pod_cidrs: p.node.pod_cidrs.clone(),
                    vtep_mac: p.node.vtep_mac.map(format_mac),
                    mode: self.config.mode,
                    routes: p
                        .plan
                        .entries
                        .iter()
                        .filter(|e| matches!(e, Entry::Route { .. } | Entry::Node { .. }))
                        .map(Entry::describe)
                        .collect(),
                    problem: p.plan.problem.clone(),
                })
                .collect(),
        };
        let result = serde_json::to_vec_pretty(&status)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let tmp = self.status_file.with_extension("tmp");
                fs::write(&tmp, json)?;
                fs::rename(&tmp, &self.status_file)
            });
        if let Err(error) = result {
            warn!(file = %self.status_file.display(), %error, "cannot write the overlay status");
        }
    }
}

/// The overlay's report (`<state-dir>/overlay.json`, shown by `gannetd status`).
#[derive(Debug, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub mode: Mode,
    pub underlay: UnderlayStatus,
    pub device: Option<String>,
    pub vtep_mac: Option<String>,
    pub pod_mtu: u32,
    /// This node's pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// The other nodes, as programmed.
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UnderlayStatus {
    pub interface: String,
    pub ip: IpAddr,
    pub mtu: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    pub vtep_mac: Option<String>,
    pub mode: Mode,
    /// The routes programmed for it, as `ip route` would say them (`ebpf`: its node-map
    /// entries).
    pub routes: Vec<String>,
    /// Why it is not (fully) reachable.
    pub problem: Option<String>,
}

/// Reads the overlay's report from the state directory, if gannetd runs an overlay there.
pub fn read_status(state_dir: &Path) -> Option<OverlayStatus> {
    let bytes = fs::read(state_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
