//! What a request allocates: cluster IPs, node ports and pod CIDRs, one store key per allocated
//! value under `alloc/`, claimed in the same transaction as the object that holds it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::ApiError;
use crate::store::{KeyValue, Revision, Store};

const CLUSTER_IPS: &str = "alloc/clusterips/";
const NODE_PORTS: &str = "alloc/nodeports/";
const POD_CIDRS: &str = "alloc/podcidrs/";

pub(super) fn cidr_key(cidr: &IpNet) -> String {
    format!("{POD_CIDRS}{}", cidr.to_string().replace('/', "_"))
}

pub(super) fn cluster_ip_key(ip: IpAddr) -> String {
    format!("{CLUSTER_IPS}{ip}")
}

pub(super) fn node_port_key(port: u16) -> String {
    format!("{NODE_PORTS}{port}")
}

pub(super) fn service_owner(namespace: &str, name: &str) -> String {
    format!("services/{namespace}/{name}")
}

/// `Service default/web` from an owner value.
pub(super) fn owner_label(owner: &str) -> String {
    match owner.strip_prefix("services/") {
        Some(rest) => format!("Service {rest}"),
        None => format!("Node {owner}"),
    }
}

/// The allocations known to a request: what the store holds, and what the request claims.
#[derive(Debug, Default)]
pub(super) struct Allocations {
    /// Value → (owner, revision of its key).
    pub(super) cluster_ips: HashMap<IpAddr, (String, Revision)>,
    pub(super) node_ports: HashMap<u16, (String, Revision)>,
    pub(super) pod_cidrs: HashMap<IpNet, (String, Revision)>,
    /// Claimed by objects of this request: value → owner.
    pub(super) claimed_ips: HashMap<IpAddr, String>,
    pub(super) claimed_ports: HashMap<u16, String>,
    pub(super) claimed_cidrs: HashMap<IpNet, String>,
    /// Keys to create (compare: absent) and to delete (compare: as read).
    pub(super) new_keys: Vec<(String, String)>,
    pub(super) released: Vec<(String, Revision)>,
}

impl Allocations {
    pub(super) async fn load(
        store: &dyn Store,
        services: bool,
        nodes: bool,
    ) -> Result<Self, ApiError> {
        let mut allocations = Self::default();
        if services {
            for kv in store.list(CLUSTER_IPS).await?.0 {
                if let Ok(ip) = kv.key[CLUSTER_IPS.len()..].parse() {
                    allocations.cluster_ips.insert(ip, owner_of(&kv));
                }
            }
            for kv in store.list(NODE_PORTS).await?.0 {
                if let Ok(port) = kv.key[NODE_PORTS.len()..].parse() {
                    allocations.node_ports.insert(port, owner_of(&kv));
                }
            }
        }
        if nodes {
            for kv in store.list(POD_CIDRS).await?.0 {
                if let Ok(cidr) = kv.key[POD_CIDRS.len()..].replace('_', "/").parse() {
                    allocations.pod_cidrs.insert(cidr, owner_of(&kv));
                }
            }
        }
        Ok(allocations)
    }

    /// Who holds `ip` other than `owner`, if anyone.
    pub(super) fn ip_holder(&self, ip: IpAddr, owner: &str) -> Option<String> {
        let stored = self.cluster_ips.get(&ip).map(|(holder, _)| holder);
        let claimed = self.claimed_ips.get(&ip);
        stored
            .into_iter()
            .chain(claimed)
            .find(|holder| *holder != owner)
            .cloned()
    }

    pub(super) fn port_holder(&self, port: u16, owner: &str) -> Option<String> {
        let stored = self.node_ports.get(&port).map(|(holder, _)| holder);
        stored
            .into_iter()
            .chain(self.claimed_ports.get(&port))
            .find(|holder| *holder != owner)
            .cloned()
    }

    pub(super) fn cidr_holder(&self, cidr: &IpNet, owner: &str) -> Option<String> {
        let stored = self.pod_cidrs.get(cidr).map(|(holder, _)| holder);
        stored
            .into_iter()
            .chain(self.claimed_cidrs.get(cidr))
            .find(|holder| *holder != owner)
            .cloned()
    }

    pub(super) fn claim_ip(&mut self, ip: IpAddr, owner: &str) {
        if self
            .cluster_ips
            .get(&ip)
            .is_none_or(|(holder, _)| holder != owner)
            && self.claimed_ips.insert(ip, owner.to_owned()).is_none()
        {
            self.new_keys.push((cluster_ip_key(ip), owner.to_owned()));
        }
    }

    pub(super) fn claim_port(&mut self, port: u16, owner: &str) {
        if self
            .node_ports
            .get(&port)
            .is_none_or(|(holder, _)| holder != owner)
            && self.claimed_ports.insert(port, owner.to_owned()).is_none()
        {
            self.new_keys.push((node_port_key(port), owner.to_owned()));
        }
    }

    pub(super) fn claim_cidr(&mut self, cidr: IpNet, owner: &str) {
        if self
            .pod_cidrs
            .get(&cidr)
            .is_none_or(|(holder, _)| holder != owner)
            && self.claimed_cidrs.insert(cidr, owner.to_owned()).is_none()
        {
            self.new_keys.push((cidr_key(&cidr), owner.to_owned()));
        }
    }

    pub(super) fn release_ip(&mut self, ip: IpAddr, owner: &str) {
        if let Some((holder, revision)) = self.cluster_ips.get(&ip)
            && holder == owner
        {
            self.released.push((cluster_ip_key(ip), *revision));
        }
    }

    pub(super) fn release_port(&mut self, port: u16, owner: &str) {
        if let Some((holder, revision)) = self.node_ports.get(&port)
            && holder == owner
        {
            self.released.push((node_port_key(port), *revision));
        }
    }

    pub(super) fn used_ips(&self) -> HashSet<IpAddr> {
        self.cluster_ips
            .keys()
            .chain(self.claimed_ips.keys())
            .copied()
            .collect()
    }

    pub(super) fn used_ports(&self) -> HashSet<u16> {
        self.node_ports
            .keys()
            .chain(self.claimed_ports.keys())
            .copied()
            .collect()
    }

    pub(super) fn used_cidrs(&self) -> HashSet<IpNet> {
        self.pod_cidrs
            .keys()
            .chain(self.claimed_cidrs.keys())
            .copied()
            .collect()
    }
}

pub(super) fn owner_of(kv: &KeyValue) -> (String, Revision) {
    (
        String::from_utf8_lossy(&kv.value).into_owned(),
        kv.mod_revision,
    )
}
