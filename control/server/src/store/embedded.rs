//! The default store: one redb file, nothing else to run.
//!
//! Three tables: `kv` (key → create revision, mod revision, value), `log` (revision → the events
//! of that revision, the watchable history) and `meta` (the current and the compacted revision).
//! Each transaction is one redb write transaction, committed durably before it is acknowledged.
//! Watchers are woken through a `tokio::sync::watch` of the current revision and read the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use tokio::sync::watch;

use super::{Compare, Event, EventKind, EventStream, KeyValue, Op, Revision, Store, StoreError};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
const COMPACTED: &str = "compacted";
/// The revision of a store nothing was written to yet.
const FIRST_REVISION: u64 = 1;
/// A watcher catching up reads at most this many revisions at a time.
const CATCH_UP_BATCH: u64 = 1000;

/// The store in a single redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    revision: Arc<watch::Sender<Revision>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How long [`EmbeddedStore::open`] waits for another process to close the store file.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn storage(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file `path`; its directory must exist. While another
    /// process has it open (a gannet-control still stopping, as during a restart), waits up to
    /// 10 s (`OPEN_WAIT`) for it, saying so once.
    ///
    /// # Errors
    /// If the file cannot be opened, or is still open elsewhere after that wait.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + OPEN_WAIT;
        let mut said = false;
        let db = loop {
            match Database::create(path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    if !said {
                        tracing::warn!(
                            path = %path.display(),
                            wait_seconds = OPEN_WAIT.as_secs(),
                            "the store file is open in another process (another gannet-control \
                             on the same --data-dir, or one still stopping); waiting for it"
                        );
                        said = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(error) => {
                    let hint = if matches!(error, redb::DatabaseError::DatabaseAlreadyOpen) {
                        format!(
                            " (still open in another process after {} s: is another \
                             gannet-control running on this data directory?)",
                            OPEN_WAIT.as_secs()
                        )
                    } else {
                        String::new()
                    };
                    return Err(StoreError::Unavailable(format!(
                        "{}: {error}{hint}",
                        path.display()
                    )));
                }
            }
        };
        Self::init(db, path.to_owned())
    }

    /// A store in memory only, gone when dropped: for tests and fuzzing.
    ///
    /// # Errors
    /// Only if redb cannot set up its tables.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(storage)?;
        Self::init(db, PathBuf::from("(in memory)"))
    }

    fn init(db: Database, path: PathBuf) -> Result<Self, StoreError> {
        let write = db.begin_write().map_err(storage)?;
        {
            write.open_table(KV).map_err(storage)?;
            write.open_table(LOG).map_err(storage)?;
            let mut meta = write.open_table(META).map_err(storage)?;
            // Revisions start at 1, as etcd's do: a list of a fresh store then names a
            // revision a watch can start after. Revision 0 asks a watch for "from now on",
            // which would lose whatever was written between that list and the watch.
            if meta_value(&meta, REVISION)? == 0 {
                meta.insert(REVISION, FIRST_REVISION).map_err(storage)?;
            }
        }
        write.commit().map_err(storage)?;
        let read = db.begin_read().map_err(storage)?;
        let meta = read.open_table(META).map_err(storage)?;
        let current = meta_value(&meta, REVISION)?;
        drop((meta, read));
        tracing::info!(path = %path.display(), revision = current, "opened the embedded store");
        Ok(Self {
            db: Arc::new(db),
            path,
            revision: Arc::new(watch::Sender::new(current)),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|error| StoreError::Unavailable(format!("store task failed: {error}")))?
    }
}

fn meta_value(
    table: &impl redb::ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, StoreError> {
    Ok(table
        .get(name)
        .map_err(storage)?
        .map_or(0, |value| value.value()))
}

/// `kv` values: create revision, mod revision (little-endian u64 each), then the value.
fn encode_entry(create: Revision, modified: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_entry(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    if bytes.len() < 16 {
        return Err(StoreError::Corrupt(format!("entry {key:?} is truncated")));
    }
    let (create, rest) = bytes.split_at(8);
    let (modified, value) = rest.split_at(8);
    Ok(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: u64::from_le_bytes(create.try_into().unwrap_or_default()),
        mod_revision: u64::from_le_bytes(modified.try_into().unwrap_or_default()),
    })
}

/// `log` values: per event, kind (0 put, 1 delete), created (0/1), key length (u32 LE), key,
/// value length (u32 LE), value.
fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        out.push(u8::from(event.kind == EventKind::Delete));
        out.push(u8::from(event.created));
        for part in [event.key.as_bytes(), &event.value] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn decode_events(revision: Revision, mut bytes: &[u8]) -> Result<Vec<Event>, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("history entry {revision} is truncated"));
    let mut events = Vec::new();
    while !bytes.is_empty() {
        let [kind, created, rest @ ..] = bytes else {
            return Err(corrupt());
        };
        bytes = rest;
        let mut parts = [Vec::new(), Vec::new()];
        for part in &mut parts {
            let (len, rest) = bytes.split_at_checked(4).ok_or_else(corrupt)?;
            let len = usize::try_from(u32::from_le_bytes(len.try_into().map_err(|_| corrupt())?))
                .map_err(|_| corrupt())?;
            let (data, rest) = rest.split_at_checked(len).ok_or_else(corrupt)?;
            *part = data.to_vec();
            bytes = rest;
        }
        let [key, value] = parts;
        events.push(Event {
            kind: if *kind == 1 {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            key: String::from_utf8(key).map_err(|_| corrupt())?,
            value,
            revision,
            created: *created == 1,
        });
    }
    Ok(events)
}

/// The events after `after` up to `upto` of keys under `prefix`, one batch per revision.
fn read_log(
    db: &Database,
    prefix: &str,
    after: Revision,
    upto: Revision,
) -> Result<Vec<Vec<Event>>, StoreError> {
    let read = db.begin_read().map_err(storage)?;
    let meta = read.open_table(META).map_err(storage)?;
    let compacted = meta_value(&meta, COMPACTED)?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let log = read.open_table(LOG).map_err(storage)?;
    let mut batches = Vec::new();
    for entry in log.range(after + 1..=upto).map_err(storage)? {
        let (revision, bytes) = entry.map_err(storage)?;
        let batch: Vec<Event> = decode_events(revision.value(), bytes.value())?
            .into_iter()
            .filter(|event| event.key.starts_with(prefix))
            .collect();
        if !batch.is_empty() {
            batches.push(batch);
        }
    }
    Ok(batches)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let read = db.begin_read().map_err(storage)?;
            let kv = read.open_table(KV).map_err(storage)?;
            let value = kv.get(key.as_str()).map_err(storage)?;
            value
                .map(|value| decode_entry(&key, value.value()))
                .transpose()
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |db| {
            let read = db.begin_read().map_err(storage)?;
            let meta = read.open_table(META).map_err(storage)?;
            let revision = meta_value(&meta, REVISION)?;
            let kv = read.open_table(KV).map_err(storage)?;
            let mut items = Vec::new();
            for entry in kv.range(prefix.as_str()..).map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                items.push(decode_entry(key, value.value())?);
            }
            Ok((items, revision))
        })
        .await
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<Option<Revision>, StoreError> {
        let outcome = self
            .blocking(move |db| {
                let write = db.begin_write().map_err(storage)?;
                let outcome = {
                    let mut kv = write.open_table(KV).map_err(storage)?;
                    let mut meta = write.open_table(META).map_err(storage)?;
                    let current = meta_value(&meta, REVISION)?;
                    for compare in &compares {
                        let found = match kv.get(compare.key.as_str()).map_err(storage)? {
                            Some(value) => decode_entry(&compare.key, value.value())?.mod_revision,
                            None => 0,
                        };
                        if found != compare.mod_revision {
                            return Ok(None);
                        }
                    }
                    let revision = current + 1;
                    let mut events = Vec::with_capacity(ops.len());
                    for op in ops {
                        match op {
                            Op::Put { key, value } => {
                                let create = match kv.get(key.as_str()).map_err(storage)? {
                                    Some(old) => decode_entry(&key, old.value())?.create_revision,
                                    None => revision,
                                };
                                kv.insert(
                                    key.as_str(),
                                    encode_entry(create, revision, &value).as_slice(),
                                )
                                .map_err(storage)?;
                                events.push(Event {
                                    kind: EventKind::Put,
                                    key,
                                    value,
                                    revision,
                                    created: create == revision,
                                });
                            }
                            Op::Delete { key } => {
                                let old = kv
                                    .remove(key.as_str())
                                    .map_err(storage)?
                                    .map(|old| decode_entry(&key, old.value()))
                                    .transpose()?;
                                if let Some(old) = old {
                                    events.push(Event {
                                        kind: EventKind::Delete,
                                        key,
                                        value: old.value,
                                        revision,
                                        created: false,
                                    });
                                }
                            }
                        }
                    }
                    if events.is_empty() {
                        Some(current)
                    } else {
                        let mut log = write.open_table(LOG).map_err(storage)?;
                        log.insert(revision, encode_events(&events).as_slice())
                            .map_err(storage)?;
                        meta.insert(REVISION, revision).map_err(storage)?;
                        Some(revision)
                    }
                };
                write.commit().map_err(storage)?;
                Ok(outcome)
            })
            .await?;
        if let Some(revision) = outcome {
            self.revision.send_if_modified(|current| {
                let newer = revision > *current;
                if newer {
                    *current = revision;
                }
                newer
            });
        }
        Ok(outcome)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream, StoreError> {
        let mut revisions = self.revision.subscribe();
        let current = *revisions.borrow_and_update();
        let mut next = if after == 0 { current } else { after };
        let prefix = prefix.to_owned();
        // Fail at once for a compacted revision.
        self.blocking(move |db| {
            let read = db.begin_read().map_err(storage)?;
            let meta = read.open_table(META).map_err(storage)?;
            let compacted = meta_value(&meta, COMPACTED)?;
            if next < compacted {
                return Err(StoreError::Compacted {
                    requested: next,
                    compacted,
                });
            }
            Ok(())
        })
        .await?;
        let (tx, stream) = EventStream::channel();
        let db = Arc::clone(&self.db);
        tokio::spawn(async move {
            loop {
                let current = *revisions.borrow_and_update();
                if current > next {
                    let upto = current.min(next + CATCH_UP_BATCH);
                    let db = Arc::clone(&db);
                    let prefix = prefix.clone();
                    let read =
                        tokio::task::spawn_blocking(move || read_log(&db, &prefix, next, upto))
                            .await
                            .unwrap_or_else(|error| {
                                Err(StoreError::Unavailable(format!(
                                    "store task failed: {error}"
                                )))
                            });
                    match read {
                        Ok(batches) => {
                            for batch in batches {
                                if tx.send(Ok(batch)).await.is_err() {
                                    return;
                                }
                            }
                            next = upto;
                        }
                        Err(error) => {
                            let _ = tx.send(Err(error)).await;
                            return;
                        }
                    }
                    continue;
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(stream)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let write = db.begin_write().map_err(storage)?;
            {
                let mut meta = write.open_table(META).map_err(storage)?;
                let current = meta_value(&meta, REVISION)?;
                let compacted = meta_value(&meta, COMPACTED)?;
                let target = revision.min(current);
                if target <= compacted {
                    return Ok(());
                }
                let mut log = write.open_table(LOG).map_err(storage)?;
                log.retain_in(..=target, |_, _| false).map_err(storage)?;
                meta.insert(COMPACTED, target).map_err(storage)?;
            }
            write.commit().map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(*self.revision.borrow())
    }
}
