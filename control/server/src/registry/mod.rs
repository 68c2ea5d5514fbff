//! The API's semantics over a [`Store`]: objects stored as Kubernetes JSON under
//! `registry/<resource>/<namespace>/<name>`, `resourceVersion` as the store revision, validation
//! before anything is written, allocation of cluster IPs, node ports and pod CIDRs (one store key
//! per allocated value under `alloc/`, claimed in the same transaction as the object), and
//! optimistic concurrency: every write compares the revisions it read, so replicas sharing one
//! etcd never overwrite each other's changes.
//!
//! This file holds what every kind shares (the errors, keys and encoding, get/list/watch). The
//! writes every kind goes through have a file each: `apply.rs` (validate, prepare, one
//! transaction), `delete.rs` and `status.rs`; `allocations.rs` holds the `alloc/` keys a request
//! claims. Each kind's own rules are in its file: `services.rs` (defaults, cluster IPs, node
//! ports, IP families), `nodes.rs` (pod CIDRs, registration, heartbeats, Ready), `leases.rs`
//! (the nodes' heartbeat Leases) and `pods.rs` (binding, graceful deletion). `EndpointSlices` are
//! stored as given (the endpoints controller writes them) and have no status.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use gannet_api::{Kind, Object, Problem, object_label};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::alloc::{self, DEFAULT_NODE_PORTS, PodNetwork};
use crate::store::{EventKind, EventStream, KeyValue, Revision, Store, StoreError};

mod allocations;
mod apply;
mod delete;
mod leases;
mod nodes;
mod pods;
mod services;
mod status;

pub use leases::NODE_LEASE_NAMESPACE;
pub(crate) use leases::last_heartbeat;
pub use nodes::Resources;
pub(crate) use nodes::{ready_status, set_ready};

/// Where a node's pod CIDRs are remembered after its lease was released, so that it gets them
/// back if they are still free when it returns.
pub const RELEASED_CIDRS_ANNOTATION: &str = "gannet.io/released-pod-cidrs";
/// Store keys of objects start with this.
pub const REGISTRY_PREFIX: &str = "registry/";
/// Writes retried after losing a race with another writer before giving up.
const ATTEMPTS: usize = 16;

/// What the registry allocates from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// At most one per family; the first is the primary family of new Services.
    pub service_cidrs: Vec<IpNet>,
    /// At most one per family.
    pub pod_networks: Vec<PodNetwork>,
    pub node_ports: RangeInclusive<u16>,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            service_cidrs: vec!["10.96.0.0/12".parse().expect("valid default")],
            pod_networks: vec![PodNetwork {
                cidr: "10.244.0.0/16".parse().expect("valid default"),
                node_prefix: 24,
            }],
            node_ports: DEFAULT_NODE_PORTS,
        }
    }
}

/// Errors of the API, each one gRPC status code (see the `.proto`).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{} problem(s), nothing applied", .0.len())]
    Invalid(Vec<Problem>),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    Exhausted(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Compacted { .. } => Self::Expired(format!("{error}: list again")),
            other => Self::Store(other),
        }
    }
}

/// One change of a watched kind.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectEvent {
    pub kind: EventKind,
    /// Whether a put created the object.
    pub created: bool,
    /// With `resourceVersion` set to `revision` (for a delete: the last state).
    pub object: Object,
    pub revision: Revision,
}

/// The changes of one kind; all events of one revision come in one batch.
#[derive(Debug)]
pub struct ObjectWatch {
    kind: Kind,
    stream: EventStream,
}

impl ObjectWatch {
    /// The next batch; `None` when the store went away.
    pub async fn next(&mut self) -> Option<Result<Vec<ObjectEvent>, ApiError>> {
        let batch = match self.stream.next().await? {
            Ok(batch) => batch,
            Err(error) => return Some(Err(error.into())),
        };
        let mut events = Vec::with_capacity(batch.len());
        for event in batch {
            let mut object = match Object::from_json(self.kind, &event.value) {
                Ok(object) => object,
                Err(error) => {
                    return Some(Err(ApiError::Internal(format!(
                        "stored {}: {error}",
                        event.key
                    ))));
                }
            };
            object.metadata_mut().resource_version = Some(event.revision.to_string());
            events.push(ObjectEvent {
                kind: event.kind,
                created: event.created,
                object,
                revision: event.revision,
            });
        }
        Some(Ok(events))
    }
}

/// The outcome of one object of an apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub objects: Vec<(Object, Outcome)>,
    pub revision: Revision,
}

/// The store key of an object.
#[must_use]
pub fn object_key(kind: Kind, namespace: &str, name: &str) -> String {
    if kind.namespaced() {
        let namespace = if namespace.is_empty() {
            gannet_api::DEFAULT_NAMESPACE
        } else {
            namespace
        };
        format!("{REGISTRY_PREFIX}{}/{namespace}/{name}", kind.plural())
    } else {
        format!("{REGISTRY_PREFIX}{}/{name}", kind.plural())
    }
}

/// The key prefix of a kind's objects (in one namespace, or all).
#[must_use]
pub fn kind_prefix(kind: Kind, namespace: Option<&str>) -> String {
    match namespace.filter(|ns| !ns.is_empty() && kind.namespaced()) {
        Some(namespace) => format!("{REGISTRY_PREFIX}{}/{namespace}/", kind.plural()),
        None => format!("{REGISTRY_PREFIX}{}/", kind.plural()),
    }
}

/// The kind whose objects are stored under `key`.
#[must_use]
pub fn kind_of_key(key: &str) -> Option<Kind> {
    let rest = key.strip_prefix(REGISTRY_PREFIX)?;
    let plural = rest.split('/').next()?;
    Kind::ALL.into_iter().find(|kind| kind.plural() == plural)
}

fn object_key_of(object: &Object) -> String {
    object_key(object.kind(), object.namespace(), object.name())
}

/// Decodes a stored object and sets its `resourceVersion`.
pub(crate) fn decode(kind: Kind, kv: &KeyValue) -> Result<Object, ApiError> {
    let mut object = Object::from_json(kind, &kv.value)
        .map_err(|error| ApiError::Internal(format!("stored {}: {error}", kv.key)))?;
    object.metadata_mut().resource_version = Some(kv.mod_revision.to_string());
    Ok(object)
}

/// The JSON that is stored: the object without `resourceVersion`.
pub(crate) fn encode(object: &Object) -> Result<Vec<u8>, ApiError> {
    let mut object = object.clone();
    object.metadata_mut().resource_version = None;
    object
        .to_json()
        .map_err(|error| ApiError::Internal(error.to_string()))
}

pub(crate) fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn new_uid() -> String {
    let a = alloc::random();
    let b = alloc::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// The API's semantics over a store.
pub struct Registry {
    store: Arc<dyn Store>,
    network: Network,
    heartbeat_interval: Duration,
    /// How long a node's Lease lasts without renewal (the node monitor's grace).
    lease_duration: Duration,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.store.backend())
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl Registry {
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        network: Network,
        heartbeat_interval: Duration,
        lease_duration: Duration,
    ) -> Self {
        Self {
            store,
            network,
            heartbeat_interval,
            lease_duration,
        }
    }

    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    #[must_use]
    pub fn network(&self) -> &Network {
        &self.network
    }

    #[must_use]
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// One object.
    ///
    /// # Errors
    /// [`ApiError::NotFound`].
    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Object, ApiError> {
        let key = object_key(kind, namespace, name);
        match self.store.get(&key).await? {
            Some(kv) => decode(kind, &kv),
            None => Err(ApiError::NotFound(format!(
                "{} not found",
                object_label(kind, namespace, name)
            ))),
        }
    }

    /// The objects of a kind and the revision they are consistent at.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<Object>, Revision), ApiError> {
        let (items, revision) = self.store.list(&kind_prefix(kind, namespace)).await?;
        let objects = items
            .iter()
            .map(|kv| decode(kind, kv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((objects, revision))
    }

    /// The changes of a kind after `after` (0: from now on).
    ///
    /// # Errors
    /// [`ApiError::Expired`] for a compacted revision.
    pub async fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        after: Revision,
    ) -> Result<ObjectWatch, ApiError> {
        // A revision this store never reached was handed out by another store (the control
        // plane's data was replaced): waiting for it would hide every change until then.
        let current = self.store.current_revision().await?;
        if after > current {
            return Err(ApiError::Expired(format!(
                "revision {after} is ahead of the store (at {current}): its data was replaced; list again"
            )));
        }
        let stream = self
            .store
            .watch(&kind_prefix(kind, namespace), after)
            .await?;
        Ok(ObjectWatch { kind, stream })
    }
}
