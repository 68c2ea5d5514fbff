//! Apply: every object of a request validated, read, prepared by its kind's rules (defaults,
//! allocations, state apply keeps) and written in one transaction that compares every revision
//! read and claims every allocation, retried when a concurrent writer won.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gannet_api::{Kind, Object, Problem};
use gannet_k8s::FieldProblem;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::allocations::Allocations;
use super::pods::prepare_pod;
use super::{
    ATTEMPTS, ApiError, Applied, Outcome, Registry, decode, encode, kind_prefix, new_uid, now,
    object_key_of,
};
use crate::store::{Compare, KeyValue, Op};
use crate::validate::validate;

/// From this many objects of one kind in a request on, the kind is listed rather than read one
/// by one.
const LIST_THRESHOLD: usize = 8;

impl Registry {
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
}
