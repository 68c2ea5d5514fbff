//! Where the NodePort program runs and what it is told: the external interfaces, the node
//! addresses that accept node ports, and the SNAT addresses (from the lease with an overlay).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use gannet_cni::netlink::Netlink;
use gannet_common::{
    NODEPORT_F_DSR, NODEPORT_F_ENABLED, NODEPORT_F_SNAT_V4, NODEPORT_F_SNAT_V6, NodePortConfig,
    v4_mapped,
};
use ipnet::IpNet;
use tracing::{info, warn};

use crate::{
    config::NodePortSettings,
    datapath::{DataPathError, nodeport, pods::PodFastPath},
    overlay::{DEVICE, Mode},
};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("listing the node's interfaces and addresses: {0}")]
    Netlink(#[from] gannet_cni::netlink::NetlinkError),
    #[error(transparent)]
    DataPath(#[from] DataPathError),
}

/// The NodePort program's place on this node.
pub struct NodePortSetup {
    /// Interfaces the program is attached to (the overlay device included).
    pub interfaces: Vec<String>,
    /// Node addresses that accept node ports.
    pub addresses: Vec<IpAddr>,
    overlay: Mode,
    table_size: u32,
    dsr: bool,
    config: NodePortConfig,
}

/// A global (not loopback, not link-local) address.
fn global(ip: IpAddr) -> bool {
    !ip.is_loopback()
        && match ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        }
}

/// Every interface of the namespace with its global addresses.
fn holders() -> Result<Vec<(String, Vec<IpAddr>)>, SetupError> {
    let mut netlink = Netlink::open()?;
    let mut holders = Vec::new();
    for link in netlink.links()? {
        let addresses: Vec<IpAddr> = netlink
            .addresses(link.index)?
            .into_iter()
            .map(|cidr| cidr.addr())
            .filter(|ip| global(*ip))
            .collect();
        holders.push((link.name, addresses));
    }
    Ok(holders)
}

/// `--node-ip`, else every global address but the overlay device's.
fn node_ips_from(holders: &[(String, Vec<IpAddr>)], node_ips: &[IpAddr]) -> Vec<IpAddr> {
    if node_ips.is_empty() {
        holders
            .iter()
            .filter(|(name, _)| name != DEVICE)
            .flat_map(|(_, ips)| ips.iter().copied())
            .collect()
    } else {
        node_ips.to_vec()
    }
}

/// The node addresses within `--nodeport-addresses`.
fn accepting(settings: &NodePortSettings, node_ips: &[IpAddr]) -> Vec<IpAddr> {
    node_ips
        .iter()
        .copied()
        .filter(|ip| {
            settings.addresses.is_empty() || settings.addresses.iter().any(|n| n.contains(ip))
        })
        .collect()
}

/// The node addresses that accept node ports (`node_ips`: `--node-ip`, else every global
/// address of the namespace, within `--nodeport-addresses`), for a data plane that needs no
/// program attached (nftables).
///
/// # Errors
/// When the interfaces and their addresses cannot be listed.
pub fn node_port_addresses(
    settings: &NodePortSettings,
    node_ips: &[IpAddr],
) -> Result<Vec<IpAddr>, SetupError> {
    Ok(accepting(settings, &node_ips_from(&holders()?, node_ips)))
}

impl NodePortSetup {
    /// Attaches the program where `settings` say (and detaches it from interfaces it was on
    /// before but no longer should be), and writes its settings. `node_ips`: `--node-ip`, else
    /// every global address of the namespace. With the packet path off (`--nodeport-interfaces=`)
    /// the program is detached everywhere and disabled; the node addresses are still found (the
    /// socket load balancer serves node ports to the node's own clients).
    ///
    /// # Errors
    /// When the interfaces cannot be listed or the program cannot be attached.
    pub fn start(
        settings: &NodePortSettings,
        node_ips: &[IpAddr],
        overlay: Mode,
        table_size: u32,
        fast_path: &mut PodFastPath,
        bpf_root: &std::path::Path,
    ) -> Result<Self, SetupError> {
        let holders = holders()?;
        let node_ips = node_ips_from(&holders, node_ips);
        let addresses = accepting(settings, &node_ips);
        let mut interfaces: Vec<String> = match &settings.interfaces {
            Some(names) => names.clone(),
            None => holders
                .iter()
                .filter(|(name, ips)| name != DEVICE && ips.iter().any(|ip| node_ips.contains(ip)))
                .map(|(name, _)| name.clone())
                .collect(),
        };
        // Replies of flows sent into the overlay come back through its device.
        if !interfaces.is_empty()
            && matches!(overlay, Mode::Vxlan | Mode::Ebpf)
            && holders.iter().any(|(n, _)| n == DEVICE)
        {
            interfaces.push(DEVICE.to_owned());
        }
        let wanted: BTreeSet<&String> = interfaces.iter().collect();
        for (ifname, _) in nodeport::attached(bpf_root) {
            if !wanted.contains(&ifname) {
                nodeport::detach(bpf_root, &ifname)?;
            }
        }
        for (ifname, _) in nodeport::attached_xdp(bpf_root) {
            if !settings.xdp || !wanted.contains(&ifname) {
                nodeport::detach_xdp(bpf_root, &ifname)?;
            }
        }
        let mut this = Self {
            interfaces,
            addresses,
            overlay,
            table_size,
            dsr: settings.dsr,
            config: NodePortConfig::default(),
        };
        if this.interfaces.is_empty() {
            fast_path.nodeport.configure(&NodePortConfig::default())?;
            info!("no NodePort interfaces: the packet path is off");
            return Ok(this);
        }
        let (interfaces, addresses) = (&this.interfaces, &this.addresses);
        for name in interfaces {
            fast_path.attach_nodeport(name)?;
        }
        if settings.xdp {
            for name in interfaces.iter().filter(|n| *n != DEVICE) {
                if !fast_path.attach_nodeport_xdp(name)? {
                    warn!(
                        interface = %name,
                        "--nodeport-acceleration xdp: the interface's driver has no native XDP; \
                         its NodePort traffic is handled in tc"
                    );
                }
            }
        }
        if addresses.is_empty() {
            warn!(
                "no node address accepts node ports (--node-ip, --nodeport-addresses): only \
                 external and LoadBalancer IPs are served from outside"
            );
        }
        let snat = this.snat_from(&[], &node_ips);
        this.configure(snat, fast_path)?;
        info!(
            interfaces = %crate::logging::list(&this.interfaces),
            addresses = %crate::logging::list(&this.addresses),
            "NodePort program attached"
        );
        Ok(this)
    }

    /// Whether the packet path is on.
    #[must_use]
    pub fn enabled(&self) -> bool {
        !self.interfaces.is_empty()
    }

    /// The SNAT addresses: with an overlay, the network address of this node's pod CIDR of each
    /// family (the overlay device's address, so replies come back through the overlay and are
    /// never masqueraded on the backend's node); otherwise the node's own address.
    fn snat_from(
        &self,
        pod_cidrs: &[IpNet],
        node_ips: &[IpAddr],
    ) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let overlay = matches!(self.overlay, Mode::Vxlan | Mode::Ebpf);
        let mut v4 = None;
        let mut v6 = None;
        if overlay {
            for net in pod_cidrs {
                match net.network() {
                    IpAddr::V4(a) => v4 = v4.or(Some(a)),
                    IpAddr::V6(a) => v6 = v6.or(Some(a)),
                }
            }
        }
        for ip in node_ips {
            match ip {
                IpAddr::V4(a) if !overlay || pod_cidrs.is_empty() => v4 = v4.or(Some(*a)),
                IpAddr::V6(a) if !overlay || pod_cidrs.is_empty() => v6 = v6.or(Some(*a)),
                _ => {}
            }
        }
        (v4, v6)
    }

    /// This node's lease changed: the SNAT addresses follow its pod CIDRs (with an overlay).
    ///
    /// # Errors
    /// When the settings cannot be written.
    pub fn lease(
        &mut self,
        pod_cidrs: &[IpNet],
        fast_path: &mut PodFastPath,
    ) -> Result<(), DataPathError> {
        if !self.enabled() {
            return Ok(());
        }
        let snat = self.snat_from(pod_cidrs, &self.addresses.clone());
        self.configure(snat, fast_path)
    }

    fn configure(
        &mut self,
        (v4, v6): (Option<Ipv4Addr>, Option<Ipv6Addr>),
        fast_path: &mut PodFastPath,
    ) -> Result<(), DataPathError> {
        let mut config = NodePortConfig {
            snat_v4: [0; 16],
            snat_v6: [0; 16],
            node_v4: self
                .addresses
                .iter()
                .find_map(|ip| match ip {
                    IpAddr::V4(a) => Some(v4_mapped(a.octets())),
                    IpAddr::V6(_) => None,
                })
                .unwrap_or([0; 16]),
            node_v6: self
                .addresses
                .iter()
                .find_map(|ip| match ip {
                    IpAddr::V6(a) => Some(a.octets()),
                    IpAddr::V4(_) => None,
                })
                .unwrap_or([0; 16]),
            maglev_table_size: self.table_size,
            flags: NODEPORT_F_ENABLED,
        };
        if self.dsr {
            config.flags |= NODEPORT_F_DSR;
        }
        if let Some(a) = v4 {
            config.snat_v4 = v4_mapped(a.octets());
            config.flags |= NODEPORT_F_SNAT_V4;
        }
        if let Some(a) = v6 {
            config.snat_v6 = a.octets();
            config.flags |= NODEPORT_F_SNAT_V6;
        }
        if config != self.config {
            fast_path.nodeport.configure(&config)?;
            info!(
                snat_v4 = v4.map(tracing::field::display),
                snat_v6 = v6.map(tracing::field::display),
                "NodePort SNAT addresses"
            );
            self.config = config;
        }
        Ok(())
    }
}
