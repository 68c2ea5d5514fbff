//! Nodes as agents keep them: registration, heartbeats (renewing the node's Lease, see
//! `leases.rs`), the Ready condition, and giving back a silent node's pod CIDRs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use gannet_api::{Kind, NodeResources, Object, Problem, object_label};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use gannet_k8s::FieldProblem;
use ipnet::IpNet;

use super::allocations::{Allocations, cidr_key, owner_label};
use super::{ATTEMPTS, ApiError, RELEASED_CIDRS_ANNOTATION, Registry, encode, now, object_key};
use crate::alloc::Family;
use crate::store::{Compare, Op, Revision};
use crate::validate::problem;
use crate::validate::{VTEP_MAC_ANNOTATION, is_mac};

fn not_registered(name: &str) -> ApiError {
    ApiError::NotFound(format!("Node {name} is not registered: register it first"))
}

/// What an agent registers of its node's CPU and memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// `status.capacity`; `None`: left as it is.
    pub capacity: Option<NodeResources>,
    /// `status.allocatable`; `None`: left as it is (a node that never had it takes no
    /// scheduled pods).
    pub allocatable: Option<NodeResources>,
}

/// `cpu` and `memory` as the kubelet writes them (`4`, `16318412Ki`), other resources kept.
fn set_resources(target: &mut Option<BTreeMap<String, Quantity>>, resources: NodeResources) {
    let map = target.get_or_insert_with(BTreeMap::new);
    map.insert(
        "cpu".to_owned(),
        Quantity(gannet_k8s::Quantity::from_millis(resources.cpu_millicores).to_string()),
    );
    let memory = if resources.memory_bytes.is_multiple_of(1024) {
        format!("{}Ki", resources.memory_bytes / 1024)
    } else {
        resources.memory_bytes.to_string()
    };
    map.insert("memory".to_owned(), Quantity(memory));
}

/// The status of the node's Ready condition.
pub(crate) fn ready_status(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn pod_cidr_strings(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|spec| spec.pod_cidrs.clone())
        .unwrap_or_default()
}

/// Sets the node's Ready condition; the transition time changes only with the status.
pub(crate) fn set_ready(
    node: &mut Node,
    status: &str,
    reason: &str,
    message: &str,
    heartbeat: bool,
) {
    let now = now();
    let node_status = node.status.get_or_insert_with(NodeStatus::default);
    let conditions = node_status.conditions.get_or_insert_with(Vec::new);
    let index = match conditions.iter().position(|c| c.type_ == "Ready") {
        Some(index) => index,
        None => {
            conditions.push(NodeCondition {
                type_: "Ready".to_owned(),
                status: String::new(),
                ..NodeCondition::default()
            });
            conditions.len() - 1
        }
    };
    let condition = &mut conditions[index];
    if condition.status != status {
        condition.last_transition_time = Some(now.clone());
    }
    condition.status = status.to_owned();
    condition.reason = Some(reason.to_owned());
    condition.message = Some(message.to_owned());
    if heartbeat {
        condition.last_heartbeat_time = Some(now);
    }
}

impl Registry {
    /// Registers (or re-registers) a node: addresses, VTEP MAC, labels, capacity and allocatable
    /// CPU and memory (when told), Ready; the pod CIDR lease is kept, or given back, or
    /// allocated.
    ///
    /// # Errors
    /// [`ApiError::Invalid`] for bad input, [`ApiError::Exhausted`] when no pod CIDR is free.
    pub async fn register_node(
        &self,
        name: &str,
        internal_ips: &[String],
        vtep_mac: Option<&str>,
        labels: &BTreeMap<String, String>,
        resources: Resources,
    ) -> Result<(Node, Vec<String>), ApiError> {
        let label = object_label(Kind::Node, "", name);
        let mut problems = Vec::new();
        for (i, ip) in internal_ips.iter().enumerate() {
            if ip.parse::<IpAddr>().is_err() {
                problems.push(Problem {
                    index: 0,
                    object: label.clone(),
                    field: Some(format!("internal_ips[{i}]")),
                    message: format!("{ip:?} is not an IP address"),
                });
            }
        }
        if let Some(mac) = vtep_mac
            && !is_mac(mac)
        {
            problems.push(Problem {
                index: 0,
                object: label.clone(),
                field: Some("vtep_mac".to_owned()),
                message: format!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
            });
        }
        if !problems.is_empty() {
            return Err(ApiError::Invalid(problems));
        }
        let registered = self
            .update_node(name, true, |node| {
                let meta = &mut node.metadata;
                let node_labels = meta.labels.get_or_insert_with(BTreeMap::new);
                node_labels.extend(labels.clone());
                node_labels.insert("kubernetes.io/hostname".to_owned(), name.to_owned());
                if let Some(mac) = vtep_mac {
                    meta.annotations
                        .get_or_insert_with(BTreeMap::new)
                        .insert(VTEP_MAC_ANNOTATION.to_owned(), mac.to_owned());
                }
                let status = node.status.get_or_insert_with(NodeStatus::default);
                let mut addresses: Vec<NodeAddress> = internal_ips
                    .iter()
                    .map(|ip| NodeAddress {
                        address: ip.clone(),
                        type_: "InternalIP".to_owned(),
                    })
                    .collect();
                addresses.push(NodeAddress {
                    address: name.to_owned(),
                    type_: "Hostname".to_owned(),
                });
                status.addresses = Some(addresses);
                if let Some(capacity) = resources.capacity {
                    set_resources(&mut status.capacity, capacity);
                }
                if let Some(allocatable) = resources.allocatable {
                    set_resources(&mut status.allocatable, allocatable);
                }
                set_ready(
                    node,
                    "True",
                    "GannetAgentReady",
                    "gannet agent is posting ready status",
                    true,
                );
            })
            .await?;
        self.renew_lease(&registered.0).await?;
        Ok(registered)
    }

    /// Records a heartbeat: renews the node's Lease (`kube-node-lease/<node>`), as a kubelet
    /// does; the Node itself is written only when it was not Ready, so Node watchers see an
    /// event only when a node really changes. Returns the node's pod CIDRs.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when the node is not registered.
    pub async fn heartbeat(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let node = match self.get(Kind::Node, "", name).await {
            Ok(Object::Node(node)) => *node,
            Ok(_) => return Err(ApiError::Internal("kind mismatch".to_owned())),
            Err(ApiError::NotFound(_)) => return Err(not_registered(name)),
            Err(error) => return Err(error),
        };
        // The Lease first: the lifecycle controller then never sees a Ready node whose Lease is
        // older than this heartbeat.
        self.renew_lease(&node).await?;
        if ready_status(&node) == Some("True") {
            return Ok(pod_cidr_strings(&node));
        }
        let (_, cidrs) = self
            .update_node(name, false, |node| {
                set_ready(
                    node,
                    "True",
                    "GannetAgentReady",
                    "gannet agent is posting ready status",
                    true,
                );
            })
            .await?;
        Ok(cidrs)
    }

    async fn update_node(
        &self,
        name: &str,
        create: bool,
        change: impl Fn(&mut Node),
    ) -> Result<(Node, Vec<String>), ApiError> {
        for _ in 0..ATTEMPTS {
            let mut node = match self.get(Kind::Node, "", name).await {
                Ok(Object::Node(node)) => *node,
                Ok(_) => return Err(ApiError::Internal("kind mismatch".to_owned())),
                Err(ApiError::NotFound(_)) if create => Node {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        ..ObjectMeta::default()
                    },
                    ..Node::default()
                },
                Err(ApiError::NotFound(_)) => return Err(not_registered(name)),
                Err(error) => return Err(error),
            };
            change(&mut node);
            match self.apply(vec![Object::from(node)], false).await {
                Ok(mut applied) => {
                    let Some((Object::Node(node), _)) = applied.objects.pop() else {
                        return Err(ApiError::Internal("apply returned no node".to_owned()));
                    };
                    let cidrs = node
                        .spec
                        .as_ref()
                        .and_then(|spec| spec.pod_cidrs.clone())
                        .unwrap_or_default();
                    return Ok((*node, cidrs));
                }
                Err(ApiError::Conflict(_)) => {}
                Err(ApiError::Invalid(problems))
                    if problems.iter().any(|p| p.message.contains("has no free")) =>
                {
                    return Err(ApiError::Exhausted(
                        problems
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ));
                }
                Err(error) => return Err(error),
            }
        }
        Err(ApiError::Conflict(format!(
            "Node {name} kept changing under concurrent writers; try again"
        )))
    }

    /// Releases a node's pod CIDR lease: the alloc keys go, and the CIDRs are remembered in an
    /// annotation so the node gets them back if they are still free when it returns. Used by the
    /// node lifecycle controller after the grace period.
    ///
    /// # Errors
    /// Store errors; `Ok(false)` when the node changed meanwhile (try again next round).
    pub(crate) async fn release_pod_cidrs(
        &self,
        node: &Node,
        revision: Revision,
    ) -> Result<bool, ApiError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let cidrs = pod_cidrs_of(node);
        let key = object_key(Kind::Node, "", &name);
        let mut next = node.clone();
        if let Some(spec) = &mut next.spec {
            spec.pod_cidr = None;
            spec.pod_cidrs = None;
        }
        next.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(
                RELEASED_CIDRS_ANNOTATION.to_owned(),
                cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        let mut compares = vec![Compare {
            key: key.clone(),
            mod_revision: revision,
        }];
        let mut ops = vec![Op::Put {
            key,
            value: encode(&Object::from(next))?,
        }];
        for cidr in &cidrs {
            let alloc_key = cidr_key(cidr);
            if let Some(held) = self.store.get(&alloc_key).await?
                && held.value == name.as_bytes()
            {
                compares.push(Compare {
                    key: alloc_key.clone(),
                    mod_revision: held.mod_revision,
                });
                ops.push(Op::Delete { key: alloc_key });
            }
        }
        Ok(self.store.txn(compares, ops).await?.is_some())
    }
}

pub(super) fn pod_cidrs_of(node: &Node) -> Vec<IpNet> {
    let Some(spec) = &node.spec else {
        return Vec::new();
    };
    match spec.pod_cidrs.as_deref() {
        Some(cidrs) if !cidrs.is_empty() => cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
        _ => spec
            .pod_cidr
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect(),
    }
}

/// The owner of a Node's `alloc/` keys and the keys it holds (given back when it is deleted).
pub(super) fn node_allocations(name: &str, node: &Node) -> (String, Vec<String>) {
    (
        name.to_owned(),
        pod_cidrs_of(node).iter().map(cidr_key).collect(),
    )
}

impl Registry {
    pub(super) fn prepare_node(
        &self,
        node: &mut Node,
        old: Option<&Node>,
        allocations: &mut Allocations,
        problems: &mut Vec<FieldProblem>,
    ) {
        let owner = node.metadata.name.clone().unwrap_or_default();
        if node.status.is_none() {
            node.status = old.and_then(|old| old.status.clone());
        }
        let given = pod_cidrs_of(node);
        let old_cidrs = old.map(pod_cidrs_of).unwrap_or_default();
        let mut cidrs = Vec::new();
        if !given.is_empty() {
            if !old_cidrs.is_empty() && old_cidrs != given {
                problems.push(problem(
                    "spec.podCIDRs",
                    format!(
                        "field is immutable once set: it is {}",
                        old_cidrs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ));
            }
            for (i, cidr) in given.iter().enumerate() {
                let field = format!("spec.podCIDRs[{i}]");
                match self.pod_network(Family::of(cidr.addr())) {
                    None => problems.push(problem(
                        field,
                        format!(
                            "no {} cluster CIDR is configured (--cluster-cidr)",
                            Family::of(cidr.addr()).name()
                        ),
                    )),
                    Some(network) if !network.holds(cidr) => problems.push(problem(
                        field,
                        format!(
                            "{cidr} is not a /{} subnet of the cluster CIDR {}",
                            network.node_prefix, network.cidr
                        ),
                    )),
                    Some(_) => {
                        if let Some(holder) = allocations.cidr_holder(cidr, &owner) {
                            problems.push(problem(
                                field,
                                format!("{cidr} is leased to {}", owner_label(&holder)),
                            ));
                        }
                    }
                }
            }
            cidrs = given;
        } else if !old_cidrs.is_empty() {
            cidrs = old_cidrs;
        } else {
            let released: Vec<IpNet> = node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RELEASED_CIDRS_ANNOTATION))
                .or_else(|| {
                    old.and_then(|old| old.metadata.annotations.as_ref())
                        .and_then(|a| a.get(RELEASED_CIDRS_ANNOTATION))
                })
                .map(|text| text.split(',').filter_map(|c| c.parse().ok()).collect())
                .unwrap_or_default();
            for network in &self.network.pod_networks {
                let previous = released.iter().find(|cidr| {
                    network.holds(cidr) && allocations.cidr_holder(cidr, &owner).is_none()
                });
                let chosen = previous
                    .copied()
                    .or_else(|| network.first_free(&allocations.used_cidrs()));
                match chosen {
                    Some(cidr) => {
                        allocations.claim_cidr(cidr, &owner);
                        cidrs.push(cidr);
                    }
                    None => problems.push(problem(
                        "spec.podCIDRs",
                        format!(
                            "the cluster CIDR {} has no free /{} left",
                            network.cidr, network.node_prefix
                        ),
                    )),
                }
            }
        }
        for cidr in &cidrs {
            allocations.claim_cidr(*cidr, &owner);
        }
        if !cidrs.is_empty() {
            let spec = node.spec.get_or_insert_with(NodeSpec::default);
            spec.pod_cidr = Some(cidrs[0].to_string());
            spec.pod_cidrs = Some(cidrs.iter().map(ToString::to_string).collect());
            if let Some(annotations) = &mut node.metadata.annotations {
                annotations.remove(RELEASED_CIDRS_ANNOTATION);
            }
        }
    }
}
