//! The list-then-watch loop the watching controllers share (what client-go calls an informer):
//! list everything under `registry/`, hand the objects of the kinds a controller wants to it,
//! reconcile, then watch from the list's revision, handing on each burst of changes and
//! reconciling after it. A revision compacted away (`Expired`) lists again at once; any other
//! error starts over after a second. A restart begins with a fresh controller state, so nothing
//! seen before the new list survives it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gannet_api::{Kind, Object};

use crate::registry::{ApiError, REGISTRY_PREFIX, Registry, decode, kind_of_key};
use crate::store::{Event, EventKind, KeyValue, Revision};

/// How long a burst of changes is waited for before reconciling.
const BURST: Duration = Duration::from_millis(2);

/// A controller fed by [`run`]: what it keeps of the store and what it does with it.
pub(super) trait Controller: Send {
    /// Its name in logs.
    const NAME: &'static str;

    /// Whether objects of `kind` concern it.
    fn wants(kind: Kind) -> bool;

    /// One stored object (listed, or changed by `event`), with `resourceVersion` set to
    /// `revision`.
    fn apply(&mut self, event: EventKind, object: Object, revision: Revision);

    /// Whether so much is pending that the rest of a burst waits until after a reconcile.
    fn full(&self) -> bool {
        false
    }

    /// Logs what it holds after a list at `revision`.
    fn synced(&self, revision: Revision);

    /// Brings the store in line with what was applied since the last call.
    fn reconcile(
        &mut self,
        registry: &Registry,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// Runs a controller until the task is dropped, each (re)start with a state from `new`.
pub(super) async fn run<C: Controller>(registry: Arc<Registry>, new: impl Fn() -> C) {
    loop {
        match run_once(&registry, new()).await {
            Ok(()) => return,
            Err(ApiError::Expired(reason)) => {
                tracing::info!(reason, "{}: watch expired, listing again", C::NAME);
            }
            Err(error) => {
                tracing::warn!(%error, "{}: starting over in 1s", C::NAME);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run_once<C: Controller>(registry: &Registry, mut controller: C) -> Result<(), ApiError> {
    let store = registry.store();
    let (items, revision) = store.list(REGISTRY_PREFIX).await?;
    for kv in &items {
        let Some(kind) = kind_of_key(&kv.key).filter(|kind| C::wants(*kind)) else {
            continue;
        };
        controller.apply(EventKind::Put, decode(kind, kv)?, kv.mod_revision);
    }
    controller.synced(revision);
    controller.reconcile(registry).await?;
    let mut watch = store.watch(REGISTRY_PREFIX, revision).await?;
    loop {
        let Some(batch) = watch.next().await else {
            return Err(ApiError::Internal("the store ended the watch".to_owned()));
        };
        handle_batch(&mut controller, batch?)?;
        // Take whatever else is already there before writing: one reconcile for a burst.
        while !controller.full()
            && let Ok(Some(batch)) = tokio::time::timeout(BURST, watch.next()).await
        {
            handle_batch(&mut controller, batch?)?;
        }
        controller.reconcile(registry).await?;
    }
}

fn handle_batch<C: Controller>(controller: &mut C, batch: Vec<Event>) -> Result<(), ApiError> {
    for event in batch {
        let Some(kind) = kind_of_key(&event.key).filter(|kind| C::wants(*kind)) else {
            continue;
        };
        let kv = KeyValue {
            key: event.key,
            value: event.value,
            create_revision: 0,
            mod_revision: event.revision,
        };
        controller.apply(event.kind, decode(kind, &kv)?, event.revision);
    }
    Ok(())
}
