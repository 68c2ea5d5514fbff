//! Where objects live: one small trait, [`Store`], with two real backends: [`EmbeddedStore`] (a
//! single redb file, the default) and [`EtcdStore`] (etcd v3, for several replicas).
//!
//! The model is etcd's: keys are strings, every successful write transaction gets the next
//! revision of the whole store, each key remembers the revision that last changed it, and history
//! (the changes after the compacted revision) can be watched.

mod embedded;
mod etcd;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdStore, EtcdTls};

/// A store revision; 0 is "before anything".
pub type Revision = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// The revision that last changed it.
    pub mod_revision: Revision,
}

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    /// The key's `mod_revision` must be this; 0: the key must not exist.
    pub mod_revision: Revision,
}

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl Op {
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Created (`create_revision == revision`) or updated.
    Put,
    Delete,
}

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    /// The new value; for a delete, the last value.
    pub value: Vec<u8>,
    /// The revision of the change.
    pub revision: Revision,
    /// Whether this put created the key.
    pub created: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The revision asked for is older than the oldest one kept.
    #[error("revision {requested} has been compacted (history starts after revision {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// The events of one watch: all events of one revision arrive together, in one batch.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Result<Vec<Event>, StoreError>>,
}

impl EventStream {
    /// The next batch (one revision); `None` when the store shut down. After an error nothing
    /// more comes.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, StoreError>> {
        self.rx.recv().await
    }

    pub(crate) fn channel() -> (mpsc::Sender<Result<Vec<Event>, StoreError>>, Self) {
        let (tx, rx) = mpsc::channel(64);
        (tx, Self { rx })
    }
}

/// A transactional, watchable key-value store with revisions.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `embedded` or `etcd`, for logs.
    fn backend(&self) -> &'static str;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, sorted, and the revision this is consistent at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// Applies `ops` atomically if every compare holds. Returns the new revision, or `None` when
    /// a compare failed (nothing was written). A transaction without ops writes nothing and
    /// returns the current revision.
    async fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<Option<Revision>, StoreError>;

    /// The changes of keys starting with `prefix` after revision `after` (0: from now on).
    ///
    /// # Errors
    /// [`StoreError::Compacted`] when `after` is older than the history kept, here or later on
    /// the stream.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream, StoreError>;

    /// Forgets the history up to and including `revision`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    async fn current_revision(&self) -> Result<Revision, StoreError>;
}

/// Compacts `store` every `interval`, keeping the last `keep` revisions of history.
pub async fn run_compactor(store: std::sync::Arc<dyn Store>, interval: Duration, keep: u64) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match store.current_revision().await {
            Ok(current) if current > keep => {
                let target = current - keep;
                match store.compact(target).await {
                    Ok(()) => tracing::debug!(revision = target, "compacted history"),
                    Err(error) => tracing::warn!(%error, "compaction failed"),
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "compaction: cannot read the revision"),
        }
    }
}
