//! Status writes: the status of a Pod, Service or Node replaced (and checked as apply checks it)
//! while its spec stays as it is; EndpointSlices have none.

use gannet_api::{Kind, Object, Problem};

use super::pods::set_pod_status;
use super::{ATTEMPTS, ApiError, Registry, decode, encode, object_key};
use crate::store::{Compare, Op};
use crate::validate::validate;

impl Registry {
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
                (Object::Pod(next), Object::Pod(given)) => set_pod_status(next, given),
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
