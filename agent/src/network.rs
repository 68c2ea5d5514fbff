//! This node's place in the pod network: its lease (written to the subnet file), the overlay to
//! the other nodes, and the masquerade rules for traffic leaving the cluster. Fed by the same
//! sources as the services (the control plane's Nodes and lease, or `v1 Node` manifests);
//! drives the kernel through [`Overlay`] and [`masquerade`].

use std::collections::BTreeMap;

use gannet_k8s::ClusterNode;
use ipnet::IpNet;
use tracing::{info, warn};

use crate::config::{DataPlane, RunConfig, Source};
use crate::datapath::pods::PodFastPath;
use crate::masquerade::{self, MasqueradeRules};
use crate::overlay::{Mode, Overlay, OverlayError, Programs};
use crate::subnet::{Lease, SubnetFile};

/// The pods' MTU without an overlay (and without `--pod-mtu`).
const DEFAULT_POD_MTU: u32 = 1500;

pub struct NodeNetwork {
    node_name: String,
    overlay: Option<Overlay>,
    subnet: SubnetFile,
    /// With `--manifest-dir`, this node's lease is its own Node manifest's pod CIDRs.
    lease_from_nodes: bool,
    masquerade: bool,
    /// `--cluster-cidr`; else the control plane's.
    cluster_cidrs: Vec<IpNet>,
    lease: Option<Lease>,
    /// The VXLAN port with `--overlay vxlan|ebpf`.
    tunnel_port: Option<u16>,
    masquerading: Option<MasqueradeRules>,
    /// See [`MasqueradeRules::untrack_pod_to_pod`].
    untrack_pod_to_pod: bool,
    warned_no_cluster_cidr: bool,
    /// `--overlay-resync-seconds`.
    resync: Option<std::time::Duration>,
}

impl NodeNetwork {
    /// Sets up the overlay's device (so its MTU and MAC are known before the node registers).
    /// `fast_path` is the loaded pod data path: `--overlay ebpf` attaches the device's programs
    /// from it, every other mode makes sure they are off.
    ///
    /// # Errors
    /// When the overlay cannot start (no underlay, the device cannot be created, the programs
    /// cannot be attached).
    pub fn start(
        config: &RunConfig,
        fast_path: Option<&mut PodFastPath>,
    ) -> Result<Self, OverlayError> {
        let mut programs = Programs {
            fast_path,
            bpf_root: &config.bpf_root,
        };
        let overlay = match config.overlay.mode {
            Mode::None => {
                programs.disable_tunnel()?;
                // What an earlier gannetd of this state directory left with an overlay (its
                // report says there was one): not needed on a single node.
                if crate::overlay::read_status(&config.state_dir).is_some() {
                    for removed in crate::overlay::cleanup(&config.state_dir)? {
                        info!(removed, "removed the overlay of an earlier gannetd");
                    }
                }
                None
            }
            Mode::Vxlan | Mode::HostGw | Mode::Ebpf => Some(Overlay::start(
                config.overlay.clone(),
                &config.node_name,
                &config.state_dir,
                programs,
            )?),
        };
        if !config.masquerade {
            match masquerade::remove() {
                Ok(true) => info!(
                    table = masquerade::TABLE,
                    "--masquerade=false: removed the masquerade table of an earlier gannetd"
                ),
                Ok(false) => {}
                Err(error) => warn!(%error, "cannot remove an earlier masquerade table"),
            }
        }
        let mtu = config
            .pod_mtu
            .or_else(|| overlay.as_ref().map(Overlay::pod_mtu))
            .unwrap_or(DEFAULT_POD_MTU);
        Ok(Self {
            node_name: config.node_name.clone(),
            overlay,
            subnet: SubnetFile {
                path: config.subnet_file.clone(),
                mtu,
                masquerade: config.masquerade,
            },
            lease_from_nodes: matches!(config.source, Source::Manifests(_)),
            masquerade: config.masquerade,
            cluster_cidrs: config.cluster_cidrs.clone(),
            lease: None,
            tunnel_port: matches!(config.overlay.mode, Mode::Vxlan | Mode::Ebpf)
                .then_some(config.overlay.port),
            masquerading: None,
            untrack_pod_to_pod: config.dataplane == DataPlane::Ebpf,
            warned_no_cluster_cidr: false,
            resync: config.overlay.resync,
        })
    }

    /// The VXLAN device's MAC, to publish on this node's Node.
    pub fn vtep_mac(&self) -> Option<String> {
        self.overlay.as_ref().and_then(Overlay::vtep_mac)
    }

    /// This node's address on the underlay, when there is an overlay.
    pub fn node_ip(&self) -> Option<std::net::IpAddr> {
        self.overlay.as_ref().map(Overlay::node_ip)
    }

    /// This node's pod CIDRs, once its lease is known.
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        self.lease
            .as_ref()
            .map(|lease| lease.pod_cidrs.clone())
            .unwrap_or_default()
    }

    /// The cluster's nodes changed (`complete`: this is all of them).
    pub fn nodes(&mut self, nodes: &BTreeMap<String, ClusterNode>, complete: bool) {
        if self.lease_from_nodes {
            match nodes.get(&self.node_name) {
                Some(own) if !own.pod_cidrs.is_empty() => self.lease(Lease {
                    pod_cidrs: own.pod_cidrs.clone(),
                    cluster_cidrs: Vec::new(),
                }),
                _ if self.lease.is_none() && !nodes.is_empty() => warn!(
                    node = self.node_name,
                    "no Node manifest of this node with spec.podCIDRs: no subnet file yet"
                ),
                _ => {}
            }
        }
        if let Some(overlay) = &mut self.overlay {
            overlay.apply(nodes, complete);
        }
    }

    /// How often [`resync`](Self::resync) should run.
    pub fn resync_interval(&self) -> Option<std::time::Duration> {
        self.overlay.as_ref().and(self.resync)
    }

    /// Repairs the overlay's kernel state and the nftables table if something removed them.
    pub fn resync(&mut self) {
        if let Some(overlay) = &mut self.overlay {
            overlay.resync();
        }
        if self.masquerading.is_some() {
            match masquerade::exists() {
                Ok(true) => {}
                Ok(false) => {
                    warn!(
                        table = masquerade::TABLE,
                        "the nftables table was removed behind gannetd's back; installing it again"
                    );
                    self.masquerading = None;
                    if let Some(lease) = self.lease.clone() {
                        self.update_masquerade(&lease);
                    }
                }
                Err(error) => warn!(%error, "cannot check the nftables table"),
            }
        }
    }

    /// This node's lease (from the control plane, or its own Node manifest).
    pub fn lease(&mut self, mut lease: Lease) {
        if !self.cluster_cidrs.is_empty() {
            lease.cluster_cidrs.clone_from(&self.cluster_cidrs);
        }
        if self.lease.as_ref() == Some(&lease) {
            return;
        }
        self.subnet.write(&lease);
        if let Some(overlay) = &mut self.overlay {
            overlay.set_local(&lease.pod_cidrs);
            overlay.set_cluster(&lease.cluster_cidrs);
        }
        self.update_masquerade(&lease);
        self.lease = Some(lease);
    }

    fn update_masquerade(&mut self, lease: &Lease) {
        if !self.masquerade {
            return;
        }
        if lease.cluster_cidrs.is_empty() {
            if !self.warned_no_cluster_cidr {
                warn!(
                    "no cluster CIDR is known (--cluster-cidr): pods' traffic is not masqueraded"
                );
                self.warned_no_cluster_cidr = true;
            }
            return;
        }
        let rules = MasqueradeRules {
            pod_cidrs: lease.pod_cidrs.clone(),
            cluster_cidrs: lease.cluster_cidrs.clone(),
            tunnel_port: self.tunnel_port,
            untrack_pod_to_pod: self.untrack_pod_to_pod,
        };
        if self.masquerading.as_ref() == Some(&rules) {
            return;
        }
        match masquerade::apply(&rules) {
            Ok(()) => {
                info!(
                    pod_cidrs = %crate::logging::list(&rules.pod_cidrs),
                    cluster_cidrs = %crate::logging::list(&rules.cluster_cidrs),
                    table = masquerade::TABLE,
                    "masquerading pods' traffic that leaves the cluster"
                );
                self.masquerading = Some(rules);
            }
            Err(error) => {
                tracing::error!(%error, "cannot install the masquerade rules; pods cannot reach outside the cluster");
            }
        }
    }
}
