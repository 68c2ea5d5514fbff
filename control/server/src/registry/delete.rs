//! Delete: an object and the `alloc/` keys it holds go in one transaction; a Pod with a grace
//! period is only marked deleting (its node stops it and deletes it).

use gannet_api::{Kind, Object, object_label};

use super::nodes::node_allocations;
use super::pods::mark_deleting;
use super::services::service_allocations;
use super::{ATTEMPTS, ApiError, Registry, decode, encode, object_key};
use crate::store::{Compare, Op, Revision};

impl Registry {
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
                if !mark_deleting(pod, grace) {
                    return Ok((object, kv.mod_revision));
                }
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
                Object::Service(service) => service_allocations(namespace, name, service),
                Object::Node(node) => node_allocations(name, node),
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
}
