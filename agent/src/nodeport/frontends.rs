//! The frontends a service has beyond its cluster IPs: `NodeIP:nodePort` for every node
//! address that accepts node ports, `externalIP:port` and `loadBalancerIP:port`. The sources
//! produce cluster-IP frontends with the service's [`External`](gannet_k8s::External) settings;
//! this expands them into what the data planes program. On the result, a frontend is reachable
//! from outside exactly when its `ServicePort::external` is set: cluster-IP frontends lose it.
//!
//! It also keeps, per `healthCheckNodePort`, how many endpoints of the service are on this node
//! (what the health check answers).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use gannet_k8s::{DesiredState, Frontend, ServicePort};

use crate::{datapath::reconcile::packet_backends, nodeport::health::ServiceHealth};

/// Expands cluster frontends, remembering what each one expanded to, so that an incremental
/// change (a frontend updated or removed) also updates or removes what it expanded to.
pub struct Expander {
    /// Node addresses that accept node ports.
    addresses: Vec<IpAddr>,
    node_name: String,
    /// Cluster frontend → the external frontends it expanded to.
    derived: BTreeMap<Frontend, BTreeSet<Frontend>>,
    /// Cluster frontend → its health check (port, what it answers).
    health: BTreeMap<Frontend, (u16, ServiceHealth)>,
    /// With the packet path off (`--nodeport-interfaces=`): the services already warned of
    /// (`namespace/name`), whose node ports and external addresses no packet from outside reaches.
    unserved: Option<BTreeSet<String>>,
}

impl Expander {
    #[must_use]
    pub fn new(addresses: Vec<IpAddr>, node_name: &str) -> Self {
        Self {
            addresses,
            node_name: node_name.to_owned(),
            derived: BTreeMap::new(),
            health: BTreeMap::new(),
            unserved: None,
        }
    }

    /// For a node whose packet path is off (`--nodeport-interfaces=`): each service with node
    /// ports, external or load-balancer IPs is named once in a warning, since only this node's
    /// own connections reach those frontends (through the socket load balancer).
    #[must_use]
    pub fn without_packet_path(mut self) -> Self {
        self.unserved = Some(BTreeSet::new());
        self
    }

    fn warn_unserved(&mut self, spec: &ServicePort) {
        let (Some(warned), Some(external)) = (&mut self.unserved, &spec.external) else {
            return;
        };
        if external.node_port.is_none()
            && external.external_ips.is_empty()
            && external.load_balancer_ips.is_empty()
        {
            return;
        }
        let service = format!("{}/{}", spec.namespace, spec.name);
        if warned.insert(service.clone()) {
            tracing::warn!(
                service,
                "the service has node ports or external addresses, but --nodeport-interfaces= \
                 turns the packet path off: nothing from outside this node reaches them (this \
                 node's own connections are still balanced)"
            );
        }
    }

    /// The external frontends of one cluster frontend, with the `ServicePort` they serve.
    /// `loadBalancerSourceRanges` stay on the LoadBalancer IP frontends only (as kube-proxy
    /// applies them).
    fn expand(&self, frontend: &Frontend, spec: &ServicePort) -> Vec<(Frontend, ServicePort)> {
        let Some(external) = &spec.external else {
            return Vec::new();
        };
        let same_family = |ip: &&IpAddr| ip.is_ipv4() == frontend.ip.is_ipv4();
        let open = {
            let mut open = spec.clone();
            if let Some(e) = &mut open.external {
                e.source_ranges.clear();
            }
            open
        };
        let at = |ip: IpAddr, port: u16| Frontend {
            ip,
            port,
            protocol: frontend.protocol,
        };
        let mut out = Vec::new();
        if let Some(node_port) = external.node_port {
            for ip in self.addresses.iter().filter(same_family) {
                out.push((at(*ip, node_port), open.clone()));
            }
        }
        for ip in external.external_ips.iter().filter(same_family) {
            out.push((at(*ip, frontend.port), open.clone()));
        }
        for ip in external.load_balancer_ips.iter().filter(same_family) {
            out.push((at(*ip, frontend.port), spec.clone()));
        }
        out
    }

    fn cluster_only(spec: &ServicePort) -> ServicePort {
        ServicePort {
            external: None,
            ..spec.clone()
        }
    }

    fn health_of(&self, spec: &ServicePort) -> Option<(u16, ServiceHealth)> {
        let external = spec.external.as_ref()?;
        let port = external.health_check_node_port?;
        Some((
            port,
            ServiceHealth {
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                local_endpoints: packet_backends(spec, &self.node_name).len(),
            },
        ))
    }

    /// Expands a whole desired state. An external frontend that another service's cluster IP
    /// already is, or that an earlier service claimed, is left out (the first wins, as for
    /// cluster IPs).
    pub fn full(&mut self, state: &DesiredState) -> DesiredState {
        self.derived.clear();
        self.health.clear();
        let mut out = DesiredState::default();
        for (frontend, spec) in &state.services {
            out.services.insert(*frontend, Self::cluster_only(spec));
        }
        for (frontend, spec) in &state.services {
            self.warn_unserved(spec);
            let mut derived = BTreeSet::new();
            for (external, spec) in self.expand(frontend, spec) {
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    out.services.entry(external)
                {
                    slot.insert(spec);
                    derived.insert(external);
                }
            }
            if !derived.is_empty() {
                self.derived.insert(*frontend, derived);
            }
            if let Some(health) = self.health_of(spec) {
                self.health.insert(*frontend, health);
            }
        }
        out
    }

    /// Expands a change of cluster frontends (`None`: removed).
    pub fn changes(
        &mut self,
        changes: &BTreeMap<Frontend, Option<ServicePort>>,
    ) -> BTreeMap<Frontend, Option<ServicePort>> {
        let mut out = BTreeMap::new();
        for (frontend, change) in changes {
            let old = self.derived.remove(frontend).unwrap_or_default();
            self.health.remove(frontend);
            let mut new = BTreeSet::new();
            match change {
                Some(spec) => {
                    self.warn_unserved(spec);
                    out.insert(*frontend, Some(Self::cluster_only(spec)));
                    for (external, spec) in self.expand(frontend, spec) {
                        let taken = self
                            .derived
                            .iter()
                            .any(|(owner, set)| owner != frontend && set.contains(&external));
                        if !taken {
                            out.insert(external, Some(spec));
                            new.insert(external);
                        }
                    }
                    if let Some(health) = self.health_of(spec) {
                        self.health.insert(*frontend, health);
                    }
                }
                None => {
                    out.insert(*frontend, None);
                }
            }
            for gone in old.difference(&new) {
                out.entry(*gone).or_insert(None);
            }
            if !new.is_empty() {
                self.derived.insert(*frontend, new);
            }
        }
        out
    }

    /// What every `healthCheckNodePort` should answer (one per port; the first service wins).
    #[must_use]
    pub fn health(&self) -> BTreeMap<u16, ServiceHealth> {
        let mut out = BTreeMap::new();
        for (port, health) in self.health.values() {
            out.entry(*port).or_insert_with(|| health.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests;
