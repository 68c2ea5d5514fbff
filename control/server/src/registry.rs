//! The API's semantics over a [`Store`]: objects stored as Kubernetes JSON under
//! `registry/<resource>/<namespace>/<name>`, `resourceVersion` as the store revision, validation
//! before anything is written, allocation of cluster IPs, node ports and pod CIDRs (one store key
//! per allocated value under `alloc/`, claimed in the same transaction as the object), and
//! optimistic concurrency: every write compares the revisions it read, so replicas sharing one
//! etcd never overwrite each other's changes.
//!
//! This file holds what every kind shares (keys, get/list/watch, apply, delete, status); each kind's
//! own rules are in a file of their own: `registry/services.rs` (defaults, cluster IPs, node ports,
//! IP families), `registry/nodes.rs` (pod CIDRs, registration, heartbeats and Leases, Ready),
//! `registry/pods.rs`, and `registry/allocations.rs` (the `alloc/` keys a request claims).
//! `EndpointSlices` are stored as given (the endpoints controller writes them).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use gannet_api::{Kind, Object, Problem, object_label};
use gannet_k8s::FieldProblem;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::alloc::{self, DEFAULT_NODE_PORTS, PodNetwork};
use crate::store::{Compare, EventKind, EventStream, KeyValue, Op, Revision, Store, StoreError};
use crate::validate::validate;

mod allocations;
mod nodes;
mod pods;
mod services;

use allocations::Allocations;
use nodes::pod_cidrs_of;
pub use nodes::{NODE_LEASE_NAMESPACE, Resources};
pub(crate) use nodes::{last_heartbeat, ready_status, set_ready};
use pods::prepare_pod;
use services::{cluster_ips_of, node_ports_of};

/// Where a node's pod CIDRs are remembered after its lease was released, so that it gets them
/// back if they are still free when it returns.
pub const RELEASED_CIDRS_ANNOTATION: &str = "gannet.io/released-pod-cidrs";
/// Store keys of objects start with this.
pub const REGISTRY_PREFIX: &str = "registry/";
const CLUSTER_IPS: &str = "alloc/clusterips/";
const NODE_PORTS: &str = "alloc/nodeports/";
const POD_CIDRS: &str = "alloc/podcidrs/";
/// Writes retried after losing a race with another writer before giving up.
const ATTEMPTS: usize = 16;
/// From this many objects of one kind in a request on, the kind is listed rather than read one
/// by one.
const LIST_THRESHOLD: usize = 8;

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

fn cidr_key(cidr: &IpNet) -> String {
    format!("{POD_CIDRS}{}", cidr.to_string().replace('/', "_"))
}

fn cluster_ip_key(ip: IpAddr) -> String {
    format!("{CLUSTER_IPS}{ip}")
}

fn node_port_key(port: u16) -> String {
    format!("{NODE_PORTS}{port}")
}

fn service_owner(namespace: &str, name: &str) -> String {
    format!("services/{namespace}/{name}")
}

/// `Service default/web` from an owner value.
fn owner_label(owner: &str) -> String {
    match owner.strip_prefix("services/") {
        Some(rest) => format!("Service {rest}"),
        None => format!("Node {owner}"),
    }
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

    /// Creates or updates `objects`, all or none (see the `.proto`).
    ///
    /// # Errors
    /// [`ApiError::Invalid`] with every problem; [`ApiError::Conflict`] for a stale
    /// `resourceVersion`.
    pub async fn apply(&self, objects: Vec<Object>, dry_run: bool) -> Result<Applied, ApiError> {
        let mut problems = Vec::new();
        let mut keys: HashMap<String, usize> = HashMap::new();
        for (index, object) in objects.iter().enumerate() {
            let label = object.label();
            for found in validate(object) {
                problems.push(Problem {
                    index,
                    object: label.clone(),
                    field: found.field,
                    message: found.message,
                });
            }
            if let Some(first) = keys.insert(object_key_of(object), index) {
                problems.push(Problem {
                    index,
                    object: label,
                    field: None,
                    message: format!("given twice in one request (also object {})", first + 1),
                });
            }
        }
        if !problems.is_empty() {
            return Err(ApiError::Invalid(problems));
        }
        for attempt in 0..ATTEMPTS {
            if let Some(applied) = self.try_apply(&objects, dry_run).await? {
                return Ok(applied);
            }
            tracing::debug!(attempt, "apply raced with another writer, retrying");
            tokio::time::sleep(Duration::from_millis(5 * (attempt as u64 + 1))).await;
        }
        Err(ApiError::Conflict(
            "the objects kept changing under concurrent writers; try again".to_owned(),
        ))
    }

    /// Reads the current state of every object of the request.
    async fn read_existing(&self, objects: &[Object]) -> Result<Vec<Option<KeyValue>>, ApiError> {
        let mut per_kind: BTreeMap<Kind, usize> = BTreeMap::new();
        for object in objects {
            *per_kind.entry(object.kind()).or_default() += 1;
        }
        let mut listed: HashMap<String, KeyValue> = HashMap::new();
        for (kind, count) in &per_kind {
            if *count >= LIST_THRESHOLD {
                for kv in self.store.list(&kind_prefix(*kind, None)).await?.0 {
                    listed.insert(kv.key.clone(), kv);
                }
            }
        }
        let mut existing = Vec::with_capacity(objects.len());
        for object in objects {
            let key = object_key_of(object);
            if per_kind[&object.kind()] >= LIST_THRESHOLD {
                existing.push(listed.remove(&key));
            } else {
                existing.push(self.store.get(&key).await?);
            }
        }
        Ok(existing)
    }

    /// One attempt; `None` when a compare failed (a concurrent writer won).
    async fn try_apply(
        &self,
        objects: &[Object],
        dry_run: bool,
    ) -> Result<Option<Applied>, ApiError> {
        let existing = self.read_existing(objects).await?;
        let services = objects.iter().any(|o| o.kind() == Kind::Service);
        let nodes = objects.iter().any(|o| o.kind() == Kind::Node);
        let mut allocations = Allocations::load(self.store.as_ref(), services, nodes).await?;

        let mut problems = Vec::new();
        let mut prepared = Vec::with_capacity(objects.len());
        for (index, (object, stored)) in objects.iter().zip(&existing).enumerate() {
            let old = stored
                .as_ref()
                .map(|kv| decode(object.kind(), kv))
                .transpose()?;
            if let Some(given) = object
                .metadata()
                .resource_version
                .as_deref()
                .filter(|rv| !rv.is_empty())
            {
                let current = stored.as_ref().map(|kv| kv.mod_revision);
                if current.map(|revision| revision.to_string()).as_deref() != Some(given) {
                    let now = current.map_or_else(
                        || "it does not exist".to_owned(),
                        |r| format!("it is at {r}"),
                    );
                    return Err(ApiError::Conflict(format!(
                        "{}: resourceVersion {given} is stale ({now}): get the object again and retry",
                        object.label()
                    )));
                }
            }
            let mut found = Vec::new();
            let next = self.prepare(object.clone(), old.as_ref(), &mut allocations, &mut found);
            problems.extend(found.into_iter().map(|found| Problem {
                index,
                object: object.label(),
                field: found.field,
                message: found.message,
            }));
            prepared.push((next, old));
        }
        if !problems.is_empty() {
            return Err(ApiError::Invalid(problems));
        }

        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut outcomes = Vec::with_capacity(prepared.len());
        for ((next, old), stored) in prepared.iter().zip(&existing) {
            let key = object_key_of(next);
            let unchanged = old.as_ref().is_some_and(|old| {
                let mut old = old.clone();
                old.metadata_mut().resource_version = None;
                old == *next
            });
            outcomes.push(if unchanged {
                Outcome::Unchanged
            } else if old.is_some() {
                Outcome::Configured
            } else {
                Outcome::Created
            });
            compares.push(Compare {
                key: key.clone(),
                mod_revision: stored.as_ref().map_or(0, |kv| kv.mod_revision),
            });
            if !unchanged {
                ops.push(Op::Put {
                    key,
                    value: encode(next)?,
                });
            }
        }
        for (key, owner) in allocations.new_keys {
            compares.push(Compare {
                key: key.clone(),
                mod_revision: 0,
            });
            ops.push(Op::Put {
                key,
                value: owner.into_bytes(),
            });
        }
        for (key, revision) in allocations.released {
            compares.push(Compare {
                key: key.clone(),
                mod_revision: revision,
            });
            ops.push(Op::Delete { key });
        }

        let revision = if dry_run || ops.is_empty() {
            self.store.current_revision().await?
        } else {
            match self.store.txn(compares, ops).await? {
                Some(revision) => revision,
                None => return Ok(None),
            }
        };
        let objects = prepared
            .into_iter()
            .zip(outcomes)
            .map(|((mut next, old), outcome)| {
                let version = match (outcome, dry_run) {
                    (Outcome::Unchanged, _) | (_, true) => {
                        old.and_then(|old| old.metadata().resource_version.clone())
                    }
                    _ => Some(revision.to_string()),
                };
                next.metadata_mut().resource_version = version;
                (next, outcome)
            })
            .collect();
        Ok(Some(Applied { objects, revision }))
    }

    /// The object to store for `object`, given what is stored: defaults, allocations, state that
    /// apply keeps (status, uid, creation time).
    fn prepare(
        &self,
        mut object: Object,
        old: Option<&Object>,
        allocations: &mut Allocations,
        problems: &mut Vec<FieldProblem>,
    ) -> Object {
        let namespace = object.namespace().to_owned();
        {
            let meta: &mut ObjectMeta = object.metadata_mut();
            meta.namespace = (!namespace.is_empty()).then_some(namespace);
            meta.resource_version = None;
            meta.managed_fields = None;
            let old_meta = old.map(Object::metadata);
            meta.uid = old_meta
                .and_then(|m| m.uid.clone())
                .or_else(|| Some(new_uid()));
            meta.creation_timestamp = old_meta
                .and_then(|m| m.creation_timestamp.clone())
                .or_else(|| Some(now()));
        }
        match (&mut object, old) {
            (Object::Service(service), old) => {
                let old = match old {
                    Some(Object::Service(old)) => Some(old.as_ref()),
                    _ => None,
                };
                self.prepare_service(service, old, allocations, problems);
            }
            (Object::Node(node), old) => {
                let old = match old {
                    Some(Object::Node(old)) => Some(old.as_ref()),
                    _ => None,
                };
                self.prepare_node(node, old, allocations, problems);
            }
            (Object::Pod(pod), old) => {
                let old = match old {
                    Some(Object::Pod(old)) => Some(old.as_ref()),
                    _ => None,
                };
                prepare_pod(pod, old, problems);
            }
            (Object::EndpointSlice(_) | Object::Lease(_), _) => {}
        }
        object
    }

    /// Deletes an object (see the `.proto`) and returns its last state and the revision.
    ///
    /// # Errors
    /// [`ApiError::NotFound`], [`ApiError::Conflict`].
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: Option<Revision>,
        grace_period_seconds: Option<i64>,
    ) -> Result<(Object, Revision), ApiError> {
        let key = object_key(kind, namespace, name);
        let label = object_label(kind, namespace, name);
        for _ in 0..ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(ApiError::NotFound(format!("{label} not found")));
            };
            if let Some(given) = precondition
                && given != kv.mod_revision
            {
                return Err(ApiError::Conflict(format!(
                    "{label}: resourceVersion {given} is stale (it is at {})",
                    kv.mod_revision
                )));
            }
            let mut object = decode(kind, &kv)?;
            let mut compares = vec![Compare {
                key: key.clone(),
                mod_revision: kv.mod_revision,
            }];
            if let (Object::Pod(pod), Some(grace @ 1..)) = (&mut object, grace_period_seconds) {
                if pod.metadata.deletion_timestamp.is_some() {
                    return Ok((object, kv.mod_revision));
                }
                let deadline = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or(jiff::Timestamp::MAX);
                pod.metadata.deletion_timestamp = Some(Time(deadline));
                pod.metadata.deletion_grace_period_seconds = Some(grace);
                let value = encode(&object)?;
                if let Some(revision) = self
                    .store
                    .txn(
                        compares,
                        vec![Op::Put {
                            key: key.clone(),
                            value,
                        }],
                    )
                    .await?
                {
                    object.metadata_mut().resource_version = Some(revision.to_string());
                    return Ok((object, revision));
                }
                continue;
            }
            let mut ops = vec![Op::Delete { key: key.clone() }];
            let (owner, alloc_keys): (String, Vec<String>) = match &object {
                Object::Service(service) => (
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
                ),
                Object::Node(node) => (
                    name.to_owned(),
                    pod_cidrs_of(node).iter().map(cidr_key).collect(),
                ),
                _ => (String::new(), Vec::new()),
            };
            for alloc_key in alloc_keys {
                if let Some(held) = self.store.get(&alloc_key).await?
                    && held.value == owner.as_bytes()
                {
                    compares.push(Compare {
                        key: alloc_key.clone(),
                        mod_revision: held.mod_revision,
                    });
                    ops.push(Op::Delete { key: alloc_key });
                }
            }
            if let Some(revision) = self.store.txn(compares, ops).await? {
                object.metadata_mut().resource_version = Some(revision.to_string());
                return Ok((object, revision));
            }
        }
        Err(ApiError::Conflict(format!(
            "{label} kept changing under concurrent writers; try again"
        )))
    }

    /// Replaces the status of a Pod, Service or Node.
    ///
    /// # Errors
    /// [`ApiError::NotFound`], [`ApiError::Invalid`], [`ApiError::Conflict`].
    pub async fn update_status(&self, object: Object) -> Result<Object, ApiError> {
        let kind = object.kind();
        let label = object.label();
        if kind == Kind::EndpointSlice {
            return Err(ApiError::Invalid(vec![Problem {
                index: 0,
                object: label,
                field: Some("status".to_owned()),
                message: "EndpointSlices have no status".to_owned(),
            }]));
        }
        let key = object_key(kind, object.namespace(), object.name());
        let precondition = object
            .metadata()
            .resource_version
            .clone()
            .filter(|rv| !rv.is_empty());
        for _ in 0..ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(ApiError::NotFound(format!("{label} not found")));
            };
            if let Some(given) = &precondition
                && *given != kv.mod_revision.to_string()
            {
                return Err(ApiError::Conflict(format!(
                    "{label}: resourceVersion {given} is stale (it is at {})",
                    kv.mod_revision
                )));
            }
            let current = decode(kind, &kv)?;
            let mut next = current.clone();
            match (&mut next, &object) {
                (Object::Pod(next), Object::Pod(given)) => {
                    next.status.clone_from(&given.status);
                    // The node that runs a Pod's network reports its status; a Pod nobody
                    // placed is bound to it (as Kubernetes' binding subresource does). A bound
                    // Pod never moves.
                    let node = given.spec.as_ref().and_then(|spec| spec.node_name.clone());
                    if let (Some(spec), Some(node)) = (next.spec.as_mut(), node)
                        && spec.node_name.is_none()
                    {
                        spec.node_name = Some(node);
                    }
                }
                (Object::Service(next), Object::Service(given)) => {
                    next.status.clone_from(&given.status);
                }
                (Object::Node(next), Object::Node(given)) => next.status.clone_from(&given.status),
                _ => return Err(ApiError::Internal("kind mismatch".to_owned())),
            }
            let problems: Vec<Problem> = validate(&next)
                .into_iter()
                .map(|found| Problem {
                    index: 0,
                    object: label.clone(),
                    field: found.field,
                    message: found.message,
                })
                .collect();
            if !problems.is_empty() {
                return Err(ApiError::Invalid(problems));
            }
            if next == current {
                return Ok(current);
            }
            let value = encode(&next)?;
            if let Some(revision) = self
                .store
                .txn(
                    vec![Compare {
                        key: key.clone(),
                        mod_revision: kv.mod_revision,
                    }],
                    vec![Op::Put {
                        key: key.clone(),
                        value,
                    }],
                )
                .await?
            {
                next.metadata_mut().resource_version = Some(revision.to_string());
                return Ok(next);
            }
        }
        Err(ApiError::Conflict(format!(
            "{label} kept changing under concurrent writers; try again"
        )))
    }
}

fn namespace_or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        gannet_api::DEFAULT_NAMESPACE
    } else {
        namespace
    }
}
