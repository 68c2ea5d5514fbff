//! Services as the API server keeps them: defaults, cluster IPs and node ports allocated (or
//! kept, or given back), IP families from the policy and the cluster's networks.

use std::collections::HashMap;
use std::net::IpAddr;

use gannet_k8s::FieldProblem;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Registry;
use super::allocations::{Allocations, cluster_ip_key, node_port_key, owner_label, service_owner};
use crate::alloc::{Family, PodNetwork, is_usable_cluster_ip, pick_cluster_ip, pick_node_port};
use crate::validate::problem;

pub(super) fn service_type(spec: &ServiceSpec) -> String {
    spec.type_
        .clone()
        .filter(|type_| !type_.is_empty())
        .unwrap_or_else(|| "ClusterIP".to_owned())
}

/// The cluster IPs a spec holds (not `None`), parsed; unparsable entries are left out.
pub(super) fn cluster_ips_of(spec: Option<&ServiceSpec>) -> Vec<IpAddr> {
    let Some(spec) = spec else {
        return Vec::new();
    };
    let entries: Vec<&String> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().filter(|ip| !ip.is_empty()).collect(),
    };
    entries.iter().filter_map(|ip| ip.parse().ok()).collect()
}

/// The node ports a Service holds: its ports' and its `healthCheckNodePort` (one range, as in
/// Kubernetes: a port is one or the other).
pub(super) fn node_ports_of(spec: Option<&ServiceSpec>) -> Vec<u16> {
    spec.and_then(|spec| spec.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|port| port.node_port)
        .chain(spec.and_then(|spec| spec.health_check_node_port))
        .filter_map(|np| u16::try_from(np).ok())
        .filter(|&np| np != 0)
        .collect()
}

/// The owner of a Service's `alloc/` keys and the keys it holds (given back when it is deleted).
pub(super) fn service_allocations(
    namespace: &str,
    name: &str,
    service: &Service,
) -> (String, Vec<String>) {
    (
        service_owner(namespace_or_default(namespace), name),
        cluster_ips_of(service.spec.as_ref())
            .into_iter()
            .map(cluster_ip_key)
            .chain(
                node_ports_of(service.spec.as_ref())
                    .into_iter()
                    .map(node_port_key),
            )
            .collect(),
    )
}

fn namespace_or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        gannet_api::DEFAULT_NAMESPACE
    } else {
        namespace
    }
}

impl Registry {
    pub(super) fn prepare_service(
        &self,
        service: &mut Service,
        old: Option<&Service>,
        allocations: &mut Allocations,
        problems: &mut Vec<FieldProblem>,
    ) {
        let owner = service_owner(
            service.metadata.namespace.as_deref().unwrap_or_default(),
            service.metadata.name.as_deref().unwrap_or_default(),
        );
        let old_spec = old.and_then(|old| old.spec.as_ref());
        if service.status.is_none() {
            service.status = old.and_then(|old| old.status.clone());
        }
        let spec = service.spec.get_or_insert_with(ServiceSpec::default);
        let type_ = service_type(spec);
        spec.type_ = Some(type_.clone());

        // Cluster IPs.
        let old_ips = cluster_ips_of(old_spec);
        let from_list = spec.cluster_ips.as_ref().is_some_and(|ips| !ips.is_empty());
        let given: Vec<String> = if from_list {
            spec.cluster_ips.clone().unwrap_or_default()
        } else {
            spec.cluster_ip
                .iter()
                .filter(|ip| !ip.is_empty())
                .cloned()
                .collect()
        };
        let mut new_ips: Vec<IpAddr> = Vec::new();
        if type_ == "ExternalName" {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
            spec.ip_families = None;
            spec.ip_family_policy = None;
        } else if given.first().is_some_and(|ip| ip == "None") {
            if !old_ips.is_empty() {
                problems.push(problem(
                    "spec.clusterIP",
                    format!(
                        "field is immutable: it is {}, it cannot become None",
                        old_ips[0]
                    ),
                ));
            }
            spec.cluster_ip = Some("None".to_owned());
            spec.cluster_ips = Some(vec!["None".to_owned()]);
        } else if !given.is_empty() {
            let parsed: Vec<IpAddr> = given.iter().filter_map(|ip| ip.parse().ok()).collect();
            if !old_ips.is_empty() && old_ips != parsed {
                problems.push(problem(
                    "spec.clusterIP",
                    format!(
                        "field is immutable: it is {}",
                        old_ips
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ));
            }
            for (i, ip) in parsed.iter().enumerate() {
                let field = if from_list {
                    format!("spec.clusterIPs[{i}]")
                } else {
                    "spec.clusterIP".to_owned()
                };
                let family = Family::of(*ip);
                match self.service_cidr(family) {
                    None => problems.push(problem(
                        field,
                        format!(
                            "no {} service CIDR is configured (--service-cidr)",
                            family.name()
                        ),
                    )),
                    Some(cidr) if !is_usable_cluster_ip(&cidr, *ip) => problems.push(problem(
                        field,
                        format!("{ip} is not a usable address of the service CIDR {cidr}"),
                    )),
                    Some(_) => {
                        if let Some(holder) = allocations.ip_holder(*ip, &owner) {
                            problems.push(problem(
                                field,
                                format!("{ip} is already allocated to {}", owner_label(&holder)),
                            ));
                        }
                    }
                }
            }
            new_ips = parsed;
        } else if !old_ips.is_empty() {
            new_ips.clone_from(&old_ips);
        } else {
            for family in self.service_families(spec, problems) {
                let Some(cidr) = self.service_cidr(family) else {
                    continue;
                };
                match pick_cluster_ip(&cidr, &allocations.used_ips()) {
                    Some(ip) => {
                        allocations.claimed_ips.insert(ip, owner.clone());
                        allocations
                            .new_keys
                            .push((cluster_ip_key(ip), owner.clone()));
                        new_ips.push(ip);
                    }
                    None => problems.push(problem(
                        "spec.clusterIP",
                        format!("the service CIDR {cidr} has no free address left"),
                    )),
                }
            }
        }
        if !new_ips.is_empty() {
            for ip in &new_ips {
                allocations.claim_ip(*ip, &owner);
            }
            spec.cluster_ip = Some(new_ips[0].to_string());
            spec.cluster_ips = Some(new_ips.iter().map(ToString::to_string).collect());
            spec.ip_families = Some(
                new_ips
                    .iter()
                    .map(|ip| Family::of(*ip).name().to_owned())
                    .collect(),
            );
            if spec.ip_family_policy.as_deref().is_none_or(str::is_empty) {
                spec.ip_family_policy = Some(
                    if new_ips.len() > 1 {
                        "PreferDualStack"
                    } else {
                        "SingleStack"
                    }
                    .to_owned(),
                );
            }
        }
        for ip in &old_ips {
            if !new_ips.contains(ip) {
                allocations.release_ip(*ip, &owner);
            }
        }

        // Ports: defaults and node ports.
        let allocate_node_ports = type_ == "NodePort"
            || (type_ == "LoadBalancer" && spec.allocate_load_balancer_node_ports != Some(false));
        let old_ports: Vec<&k8s_openapi::api::core::v1::ServicePort> = old_spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .collect();
        let mut new_node_ports: Vec<u16> = Vec::new();
        let mut seen: HashMap<(u16, String), usize> = HashMap::new();
        // A node port picked for this Service must not be its own health check port.
        let health_check_port = spec
            .health_check_node_port
            .and_then(|port| u16::try_from(port).ok());
        for (i, port) in spec.ports.iter_mut().flatten().enumerate() {
            let protocol = port
                .protocol
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "TCP".to_owned());
            port.protocol = Some(protocol.clone());
            if port.target_port.is_none() {
                port.target_port = Some(IntOrString::Int(port.port));
            }
            if !allocate_node_ports {
                if type_ != "LoadBalancer" {
                    port.node_port = None;
                }
                continue;
            }
            let field = format!("spec.ports[{i}].nodePort");
            let node_port = if let Some(given) = port.node_port {
                let Ok(given) = u16::try_from(given) else {
                    continue;
                };
                if !self.network.node_ports.contains(&given) {
                    problems.push(problem(
                        field.clone(),
                        format!(
                            "{given} is outside the node port range {}-{}",
                            self.network.node_ports.start(),
                            self.network.node_ports.end()
                        ),
                    ));
                } else if let Some(holder) = allocations.port_holder(given, &owner) {
                    problems.push(problem(
                        field.clone(),
                        format!("{given} is already allocated to {}", owner_label(&holder)),
                    ));
                }
                given
            } else if let Some(kept) = old_ports
                .iter()
                .find(|old| {
                    old.protocol.as_deref().unwrap_or("TCP") == protocol
                        && (old.port == port.port || (old.name.is_some() && old.name == port.name))
                })
                .and_then(|old| old.node_port.and_then(|np| u16::try_from(np).ok()))
                .filter(|kept| !new_node_ports.contains(kept))
            {
                kept
            } else {
                let mut used = allocations.used_ports();
                used.extend(&new_node_ports);
                used.extend(health_check_port);
                let Some(picked) = pick_node_port(&self.network.node_ports, &used) else {
                    problems.push(problem(field, "no free node port left"));
                    continue;
                };
                picked
            };
            if let Some(first) = seen.insert((node_port, protocol.clone()), i) {
                problems.push(problem(
                    field,
                    format!("duplicate nodePort {node_port}/{protocol} (also spec.ports[{first}])"),
                ));
            }
            port.node_port = Some(i32::from(node_port));
            new_node_ports.push(node_port);
        }
        // `type: LoadBalancer` with `externalTrafficPolicy: Local` gets a health check node port
        // (as the API server allocates it): the one given, or the one it had, or a free one; it
        // is held like the node ports, so no other Service is given it.
        if type_ == "LoadBalancer" && spec.external_traffic_policy.as_deref() == Some("Local") {
            let field = "spec.healthCheckNodePort";
            let had = old_spec
                .and_then(|s| s.health_check_node_port)
                .and_then(|port| u16::try_from(port).ok())
                .filter(|&port| port != 0 && !new_node_ports.contains(&port));
            let port = match health_check_port.filter(|&port| port != 0) {
                Some(given) => {
                    if !self.network.node_ports.contains(&given) {
                        problems.push(problem(
                            field,
                            format!(
                                "{given} is outside the node port range {}-{}",
                                self.network.node_ports.start(),
                                self.network.node_ports.end()
                            ),
                        ));
                    } else if let Some(holder) = allocations.port_holder(given, &owner) {
                        problems.push(problem(
                            field,
                            format!("{given} is already allocated to {}", owner_label(&holder)),
                        ));
                    }
                    Some(given)
                }
                None => had.or_else(|| {
                    let mut used = allocations.used_ports();
                    used.extend(&new_node_ports);
                    let picked = pick_node_port(&self.network.node_ports, &used);
                    if picked.is_none() {
                        problems.push(problem(field, "no free node port left"));
                    }
                    picked
                }),
            };
            if let Some(port) = port {
                spec.health_check_node_port = Some(i32::from(port));
                new_node_ports.push(port);
            }
        }
        for port in &new_node_ports {
            allocations.claim_port(*port, &owner);
        }
        for port in node_ports_of(old_spec) {
            if !new_node_ports.contains(&port) {
                allocations.release_port(port, &owner);
            }
        }

        // Defaults, as the API server sets them.
        if type_ != "ExternalName" {
            if spec.session_affinity.as_deref().is_none_or(str::is_empty) {
                spec.session_affinity = Some("None".to_owned());
            }
            if spec.session_affinity.as_deref() == Some("ClientIP") {
                let config = spec
                    .session_affinity_config
                    .get_or_insert_with(Default::default);
                let client_ip = config.client_ip.get_or_insert_with(Default::default);
                client_ip.timeout_seconds.get_or_insert(10_800);
            }
            if spec
                .internal_traffic_policy
                .as_deref()
                .is_none_or(str::is_empty)
            {
                spec.internal_traffic_policy = Some("Cluster".to_owned());
            }
            if matches!(type_.as_str(), "NodePort" | "LoadBalancer")
                && spec
                    .external_traffic_policy
                    .as_deref()
                    .is_none_or(str::is_empty)
            {
                spec.external_traffic_policy = Some("Cluster".to_owned());
            }
        }
    }

    pub(super) fn service_cidr(&self, family: Family) -> Option<IpNet> {
        self.network
            .service_cidrs
            .iter()
            .find(|cidr| Family::of(cidr.addr()) == family)
            .copied()
    }

    pub(super) fn pod_network(&self, family: Family) -> Option<PodNetwork> {
        self.network
            .pod_networks
            .iter()
            .find(|network| Family::of(network.cidr.addr()) == family)
            .copied()
    }

    /// The families a new Service gets cluster IPs of.
    pub(super) fn service_families(
        &self,
        spec: &ServiceSpec,
        problems: &mut Vec<FieldProblem>,
    ) -> Vec<Family> {
        let configured: Vec<Family> = self
            .network
            .service_cidrs
            .iter()
            .map(|cidr| Family::of(cidr.addr()))
            .collect();
        let requested: Vec<Family> = spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|family| Family::parse(family))
            .collect();
        for (i, family) in requested.iter().enumerate() {
            if !configured.contains(family)
                && (i == 0 || spec.ip_family_policy.as_deref() == Some("RequireDualStack"))
            {
                problems.push(problem(
                    format!("spec.ipFamilies[{i}]"),
                    format!(
                        "no {} service CIDR is configured (--service-cidr)",
                        family.name()
                    ),
                ));
            }
        }
        let policy = spec.ip_family_policy.as_deref().unwrap_or("SingleStack");
        match policy {
            "RequireDualStack" | "PreferDualStack" => {
                if policy == "RequireDualStack" && configured.len() < 2 {
                    problems.push(problem(
                        "spec.ipFamilyPolicy",
                        "RequireDualStack needs an IPv4 and an IPv6 service CIDR (--service-cidr)",
                    ));
                }
                let mut families: Vec<Family> = requested
                    .iter()
                    .copied()
                    .filter(|family| configured.contains(family))
                    .collect();
                for family in &configured {
                    if !families.contains(family) {
                        families.push(*family);
                    }
                }
                families
            }
            _ => {
                if requested.len() > 1 {
                    problems.push(problem(
                        "spec.ipFamilies",
                        "SingleStack allows one family (set ipFamilyPolicy for dual-stack)",
                    ));
                }
                requested
                    .first()
                    .or(configured.first())
                    .filter(|family| configured.contains(family))
                    .into_iter()
                    .copied()
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use gannet_api::{Kind, Object};

    use crate::registry::{Network, Registry};
    use crate::store::EmbeddedStore;

    /// Found by the `control_apply` fuzz target (now and then, as node ports are picked at
    /// random): a port without `nodePort` could be given the Service's own
    /// `healthCheckNodePort`, and the stored Service was then refused when applied again.
    #[tokio::test]
    async fn node_ports_picked_avoid_the_health_check_port() {
        let network = Network {
            node_ports: 32000..=32001,
            ..Network::default()
        };
        let store = EmbeddedStore::in_memory().expect("in-memory store");
        let registry = Registry::new(
            Arc::new(store),
            network,
            Duration::from_secs(10),
            Duration::from_secs(40),
        );
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": 32000, "ports": [{"port": 80}]}
        });
        let service =
            Object::from_json(Kind::Service, json.to_string().as_bytes()).expect("a Service");
        let applied = registry.apply(vec![service], false).await.expect("applied");
        let Object::Service(stored) = &applied.objects[0].0 else {
            panic!("expected the Service back, got {:?}", applied.objects[0].0);
        };
        let ports = stored
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .expect("ports");
        assert_eq!(ports[0].node_port, Some(32001), "{ports:?}");
        // What was stored is taken back.
        registry
            .apply(vec![applied.objects[0].0.clone()], false)
            .await
            .expect("the stored Service applies again");
    }

    fn service(json: &serde_json::Value) -> Object {
        Object::from_json(Kind::Service, json.to_string().as_bytes()).expect("a Service")
    }

    /// A `LoadBalancer` Service with `externalTrafficPolicy: Local` is given a health check
    /// node port when it names none, and holds it: no other Service gets it (picked or asked
    /// for), it stays across applies, and deleting the Service gives it back.
    #[tokio::test]
    async fn the_health_check_node_port_is_allocated_and_held() {
        let network = Network {
            node_ports: 32000..=32002,
            ..Network::default()
        };
        let store = EmbeddedStore::in_memory().expect("in-memory store");
        let registry = Registry::new(
            Arc::new(store),
            network,
            Duration::from_secs(10),
            Duration::from_secs(40),
        );
        let local = serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "ports": [{"port": 80}]}
        });
        let applied = registry
            .apply(vec![service(&local)], false)
            .await
            .expect("applied");
        let Object::Service(stored) = &applied.objects[0].0 else {
            panic!("a Service");
        };
        let spec = stored.spec.clone().expect("spec");
        let health = spec.health_check_node_port.expect("a health check port");
        let node_port = spec.ports.as_ref().expect("ports")[0]
            .node_port
            .expect("a node port");
        assert!((32000..=32002).contains(&health) && health != node_port);
        // Applied again without it: the same port.
        let again = registry
            .apply(vec![service(&local)], false)
            .await
            .expect("applied again");
        let Object::Service(again) = &again.objects[0].0 else {
            panic!("a Service");
        };
        assert_eq!(
            again.spec.as_ref().and_then(|s| s.health_check_node_port),
            Some(health)
        );
        // Another Service asking for it is refused, naming the holder.
        let taken = serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": health}]}
        });
        let refused = registry.apply(vec![service(&taken)], false).await;
        assert!(
            format!("{refused:?}").contains("already allocated to Service default/lb"),
            "{refused:?}"
        );
        // The one port left is picked for a third; then none is left.
        let third = serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "third"},
            "spec": {"type": "NodePort", "ports": [{"port": 80}]}
        });
        let picked = registry
            .apply(vec![service(&third)], false)
            .await
            .expect("the last free port");
        let Object::Service(picked) = &picked.objects[0].0 else {
            panic!("a Service");
        };
        let last = picked
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .expect("ports")[0]
            .node_port;
        assert!(last != Some(health) && last != Some(node_port), "{last:?}");
        // Deleting lb gives its ports back: np can now have the health check port.
        registry
            .delete(Kind::Service, "default", "lb", None, None)
            .await
            .expect("deleted");
        registry
            .apply(vec![service(&taken)], false)
            .await
            .expect("the port is free again");
    }
}
