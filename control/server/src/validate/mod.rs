//! Validation of objects as they arrive, before anything is allocated or written: every problem of
//! an object is reported, each naming its field. Service and `EndpointSlice` rules that gannetd
//! applies to manifests come from `gannet-k8s` (ports, node ports, cluster, external and
//! load-balancer IPs, external traffic policy, health check port, source ranges), so both paths
//! agree; the rest (names, target ports, internal traffic policy, Pods, Nodes) follows the
//! Kubernetes API server. A file a kind (`services.rs`, `pods.rs`, `nodes.rs`, `leases.rs`;
//! the `EndpointSlice` rules are all in gannet-k8s) and `meta.rs` for names and labels.

use gannet_api::Object;
use gannet_k8s::{FieldProblem, check_endpoint_slice_object};

mod leases;
mod meta;
mod nodes;
mod pods;
mod services;
#[cfg(test)]
mod tests;

use leases::validate_lease;
use meta::validate_meta;
pub(crate) use nodes::is_mac;
use nodes::validate_node;
use pods::validate_pod;
use services::validate_service;

/// The annotation holding a node's VXLAN device MAC address (defined once, with the agent's
/// reading of Nodes).
pub use gannet_k8s::VTEP_MAC_ANNOTATION;

pub(crate) fn problem(field: impl Into<String>, message: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: Some(field.into()),
        message: message.into(),
    }
}

/// Every problem of `object`.
pub(crate) fn validate(object: &Object) -> Vec<FieldProblem> {
    let mut problems = validate_meta(object.kind(), object.metadata());
    match object {
        Object::Service(service) => validate_service(service, &mut problems),
        Object::EndpointSlice(slice) => problems.extend(check_endpoint_slice_object(slice)),
        Object::Pod(pod) => validate_pod(pod, &mut problems),
        Object::Node(node) => validate_node(node, &mut problems),
        Object::Lease(lease) => validate_lease(lease, &mut problems),
    }
    problems
}
