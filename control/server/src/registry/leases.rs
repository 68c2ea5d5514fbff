//! Nodes' heartbeat Leases (`coordination.k8s.io/v1` in `kube-node-lease`, as kubelets write
//! them since Kubernetes 1.14): renewed by a heartbeat, read by the node lifecycle controller.
//! Other Leases are stored as given.

use gannet_api::{Kind, Object};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};

use super::{ATTEMPTS, ApiError, Registry};

/// The namespace of the nodes' heartbeat Leases, as in Kubernetes.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// When `node` last showed it is alive: its Lease's renew time, or (a node registered before
/// Leases, or whose Lease was deleted) its Ready condition's heartbeat time. `None` for a
/// Node no agent ever registered.
pub(crate) fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> Option<jiff::Timestamp> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let posted = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?
        .last_heartbeat_time
        .as_ref()
        .map(|time| time.0);
    renewed.max(posted)
}

impl Registry {
    /// Creates or renews `node`'s Lease: holder the node, renewed now, for the lease duration.
    pub(super) async fn renew_lease(&self, node: &Node) -> Result<(), ApiError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        for _ in 0..ATTEMPTS {
            let mut lease = match self.get(Kind::Lease, NODE_LEASE_NAMESPACE, &name).await {
                Ok(Object::Lease(lease)) => *lease,
                Ok(_) => return Err(ApiError::Internal("kind mismatch".to_owned())),
                Err(ApiError::NotFound(_)) => Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(NODE_LEASE_NAMESPACE.to_owned()),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "v1".to_owned(),
                            kind: "Node".to_owned(),
                            name: name.clone(),
                            uid: node.metadata.uid.clone().unwrap_or_default(),
                            ..OwnerReference::default()
                        }]),
                        ..ObjectMeta::default()
                    },
                    spec: None,
                },
                Err(error) => return Err(error),
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(name.clone());
            spec.lease_duration_seconds =
                Some(i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX));
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
            match self.apply(vec![Object::from(lease)], false).await {
                Ok(_) => return Ok(()),
                Err(ApiError::Conflict(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Err(ApiError::Conflict(format!(
            "Lease {NODE_LEASE_NAMESPACE}/{name} kept changing under concurrent writers; try again"
        )))
    }
}
