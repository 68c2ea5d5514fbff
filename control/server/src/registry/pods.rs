//! Pods as the API server keeps them: on apply the status an agent or kubelet wrote stays, and so
//! does the node a Pod was bound to; a delete with a grace period marks them deleting; a status
//! write binds a Pod nobody placed to the node that reports it.

use gannet_k8s::FieldProblem;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::validate::problem;

pub(super) fn prepare_pod(pod: &mut Pod, old: Option<&Pod>, problems: &mut Vec<FieldProblem>) {
    if pod.status.is_none() {
        pod.status = old.and_then(|old| old.status.clone());
    }
    // A bound Pod stays where it is: applying its manifest again (without `spec.nodeName`) keeps
    // the node the scheduler or its node gave it; naming another node is refused.
    if let Some(bound) = old
        .and_then(|old| old.spec.as_ref())
        .and_then(|spec| spec.node_name.as_deref())
        .filter(|node| !node.is_empty())
        && let Some(spec) = &mut pod.spec
    {
        match spec.node_name.as_deref().filter(|node| !node.is_empty()) {
            None => spec.node_name = Some(bound.to_owned()),
            Some(given) if given != bound => problems.push(problem(
                "spec.nodeName",
                format!("field is immutable once set: the Pod is bound to {bound}"),
            )),
            Some(_) => {}
        }
    }
    if let Some(old) = old
        && old.metadata.deletion_timestamp.is_some()
    {
        pod.metadata
            .deletion_timestamp
            .clone_from(&old.metadata.deletion_timestamp);
        pod.metadata.deletion_grace_period_seconds = old.metadata.deletion_grace_period_seconds;
    }
    if let Some(spec) = &mut pod.spec {
        for container in &mut spec.containers {
            for port in container.ports.iter_mut().flatten() {
                if port.protocol.as_deref().is_none_or(str::is_empty) {
                    port.protocol = Some("TCP".to_owned());
                }
            }
        }
    }
}

/// Graceful deletion: marks `pod` deleting `grace` seconds from now, as Kubernetes does; its
/// node stops it and then deletes it. `false` when it already was marked (the first deadline
/// stays).
pub(super) fn mark_deleting(pod: &mut Pod, grace: i64) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let deadline = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(grace))
        .unwrap_or(jiff::Timestamp::MAX);
    pod.metadata.deletion_timestamp = Some(Time(deadline));
    pod.metadata.deletion_grace_period_seconds = Some(grace);
    true
}

/// A status write: `given`'s status replaces `next`'s.
pub(super) fn set_pod_status(next: &mut Pod, given: &Pod) {
    next.status.clone_from(&given.status);
    // The node that runs a Pod's network reports its status; a Pod nobody placed is bound to it
    // (as Kubernetes' binding subresource does). A bound Pod never moves.
    let node = given.spec.as_ref().and_then(|spec| spec.node_name.clone());
    if let (Some(spec), Some(node)) = (next.spec.as_mut(), node)
        && spec.node_name.is_none()
    {
        spec.node_name = Some(node);
    }
}
