//! The node lifecycle controller: Ready → Unknown (`NotReady`) when an agent stops renewing its
//! node's Lease (`kube-node-lease/<node>`, see `registry/leases.rs`), the pod CIDR lease released
//! only after a further grace period, Leases of deleted nodes removed, and terminating Pods
//! removed once their grace period is over.
//!
//! Only nodes that have sent a heartbeat are watched over: a Node applied by hand, without an
//! agent, keeps what it was given.

use std::sync::Arc;
use std::time::Duration;

use gannet_api::{Kind, Object};
use std::collections::HashMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;

use crate::registry::{
    ApiError, NODE_LEASE_NAMESPACE, Registry, last_heartbeat, ready_status, set_ready,
};

/// When the lifecycle controller acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// How often nodes are checked.
    pub period: Duration,
    /// A node without a heartbeat for this long is `NotReady` (its lease has expired).
    pub grace: Duration,
    /// An expired lease's pod CIDRs are released after this much more.
    pub release_grace: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(5),
            grace: Duration::from_secs(40),
            release_grace: Duration::from_secs(3600),
        }
    }
}

fn owned_by_a_node(lease: &Lease) -> bool {
    lease
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.kind == "Node" && owner.api_version == "v1")
}

pub(crate) fn has_pod_cidrs(node: &Node) -> bool {
    node.spec.as_ref().is_some_and(|spec| {
        spec.pod_cidrs.as_ref().is_some_and(|c| !c.is_empty()) || spec.pod_cidr.is_some()
    })
}

/// Runs until the task is dropped.
pub async fn run(registry: Arc<Registry>, lifecycle: Lifecycle) {
    let mut ticker = tokio::time::interval(lifecycle.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(error) = check(&registry, lifecycle).await {
            tracing::warn!(%error, "node lifecycle check failed");
        }
    }
}

/// One round over all nodes and terminating pods.
///
/// # Errors
/// Store errors.
pub async fn check(registry: &Registry, lifecycle: Lifecycle) -> Result<(), ApiError> {
    let now = jiff::Timestamp::now();
    let (nodes, _) = registry.list(Kind::Node, None).await?;
    let (leases, _) = registry
        .list(Kind::Lease, Some(NODE_LEASE_NAMESPACE))
        .await?;
    let mut leases: HashMap<String, Box<Lease>> = leases
        .into_iter()
        .filter_map(|object| match object {
            Object::Lease(lease) => Some((lease.metadata.name.clone().unwrap_or_default(), lease)),
            _ => None,
        })
        .collect();
    for object in nodes {
        let Object::Node(node) = object else { continue };
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = leases.remove(&name);
        let Some(heartbeat) = last_heartbeat(&node, lease.as_deref()) else {
            continue;
        };
        let silent = now.duration_since(heartbeat);
        let silent = Duration::try_from(silent).unwrap_or_default();
        if silent < lifecycle.grace {
            continue;
        }
        let revision: u64 = node
            .metadata
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        if silent >= lifecycle.grace + lifecycle.release_grace && has_pod_cidrs(&node) {
            if registry.release_pod_cidrs(&node, revision).await? {
                tracing::info!(
                    node = name,
                    silent_s = silent.as_secs(),
                    "released the pod CIDR lease of a node gone silent"
                );
            }
            continue;
        }
        if ready_status(&node) == Some("True") {
            let mut next = (*node).clone();
            set_ready(
                &mut next,
                "Unknown",
                "NodeStatusUnknown",
                "gannet agent stopped posting node status",
                false,
            );
            match registry.update_status(Object::from(next)).await {
                Ok(_) => tracing::info!(
                    node = name,
                    silent_s = silent.as_secs(),
                    "node is NotReady: no heartbeat"
                ),
                Err(ApiError::Conflict(_) | ApiError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
    }
    // What is left are Leases of nodes that are gone: they go too (in Kubernetes, the garbage
    // collector follows their owner reference to the Node).
    for lease in leases.into_values() {
        if !owned_by_a_node(&lease) {
            continue;
        }
        let name = lease.metadata.name.clone().unwrap_or_default();
        let revision = lease
            .metadata
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok());
        match registry
            .delete(Kind::Lease, NODE_LEASE_NAMESPACE, &name, revision, None)
            .await
        {
            Ok(_) => tracing::info!(node = name, "removed the Lease of a deleted node"),
            Err(ApiError::Conflict(_) | ApiError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
    }
    let (pods, _) = registry.list(Kind::Pod, None).await?;
    for object in pods {
        let Object::Pod(pod) = object else { continue };
        let Some(deadline) = &pod.metadata.deletion_timestamp else {
            continue;
        };
        if deadline.0 > now {
            continue;
        }
        let revision = pod
            .metadata
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok());
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        match registry
            .delete(Kind::Pod, &namespace, &name, revision, None)
            .await
        {
            Ok(_) => tracing::debug!(
                pod = format!("{namespace}/{name}"),
                "terminating pod removed"
            ),
            Err(ApiError::Conflict(_) | ApiError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
