//! Listing every object of a kind, and [`ListWatch`], the list-then-watch loop an agent runs
//! per kind.

use super::*;

/// The objects of a full list, decoded from their JSON one at a time as they are taken: a
/// consumer that keeps less than the whole objects (an agent) never holds a large list twice,
/// as JSON and as objects.
#[derive(Clone, Debug)]
pub struct ListedObjects {
    items: std::vec::IntoIter<pb::Object>,
}

impl ListedObjects {
    /// Decodes all of them; the first object that does not decode fails the whole list.
    ///
    /// # Errors
    /// [`ClientError::Convert`] naming the object.
    pub fn decode_all(self) -> Result<Vec<Object>, ClientError> {
        self.map(|object| object.map_err(ClientError::from))
            .collect()
    }
}

impl Iterator for ListedObjects {
    type Item = Result<Object, ConvertError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.items.next().map(|object| Object::from_pb(&object))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.items.size_hint()
    }
}

impl ExactSizeIterator for ListedObjects {}

/// One change seen by [`ListWatch::next`].
#[derive(Clone, Debug)]
pub enum Change {
    /// A full list: replace everything known of this kind with `objects`. The first change, and
    /// again whenever the watch expired.
    Synced {
        objects: ListedObjects,
        revision: u64,
    },
    /// Created or updated.
    Applied { object: Object, revision: u64 },
    /// Deleted; `object` is its last state.
    Deleted { object: Object, revision: u64 },
}

/// List, then watch from the list's revision, resuming after the last complete revision when the
/// stream breaks and listing again when that revision has expired: what kube-proxy's informers do.
///
/// ```no_run
/// # async fn run(mut client: gannet_api::Client) -> Result<(), gannet_api::ClientError> {
/// use gannet_api::{Change, Kind, ListWatch};
/// let mut services = ListWatch::new(Kind::Service, None);
/// loop {
///     match services.next(&mut client).await {
///         Ok(Change::Synced { objects, .. }) => { /* replace all */ }
///         Ok(Change::Applied { object, .. }) => { /* upsert */ }
///         Ok(Change::Deleted { object, .. }) => { /* remove */ }
///         Err(error) if error.is_transient() => { /* back off, then call next() again */ }
///         Err(error) => return Err(error),
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct ListWatch {
    kind: Kind,
    namespace: Option<String>,
    /// Every event up to this revision has been delivered; `None`: list first.
    revision: Option<u64>,
    stream: Option<WatchStream>,
}

impl ListWatch {
    /// Starts with a list.
    #[must_use]
    pub fn new(kind: Kind, namespace: Option<&str>) -> Self {
        Self {
            kind,
            namespace: namespace.map(str::to_owned),
            revision: None,
            stream: None,
        }
    }

    /// Starts watching after `revision` (e.g. saved from an earlier run), without a list; an
    /// expired revision turns into a list.
    #[must_use]
    pub fn resume(kind: Kind, namespace: Option<&str>, revision: u64) -> Self {
        Self {
            revision: Some(revision),
            ..Self::new(kind, namespace)
        }
    }

    #[must_use]
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Every change up to this revision has been returned.
    #[must_use]
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }

    /// Opens the watch when it is not open (after an error, or before the first watch). Lets a
    /// caller tell "connected again" apart from "a change arrived", which can be much later.
    /// `true`: the watch is open; `false`: a list comes first (the first one, or after an expired
    /// revision), which [`ListWatch::next`] makes.
    ///
    /// # Errors
    /// As [`ListWatch::next`].
    pub async fn connect(&mut self, client: &mut Client) -> Result<bool, ClientError> {
        let Some(revision) = self.revision else {
            return Ok(false);
        };
        if self.stream.is_some() {
            return Ok(true);
        }
        match client
            .watch(self.kind, self.namespace.as_deref(), revision)
            .await
        {
            Ok(stream) => {
                self.stream = Some(stream);
                Ok(true)
            }
            Err(ClientError::Expired(reason)) => {
                tracing::info!(kind = %self.kind, revision, reason, "watch expired, listing again");
                self.revision = None;
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// The next change. After an error the state is kept: call again (after a backoff, maybe with
    /// a new client) and it resumes where it stopped.
    ///
    /// # Errors
    /// Transport errors ([`ClientError::is_transient`]) and errors of the server.
    pub async fn next(&mut self, client: &mut Client) -> Result<Change, ClientError> {
        loop {
            let Some(revision) = self.revision else {
                let (items, revision) = client
                    .list_encoded(self.kind, self.namespace.as_deref())
                    .await?;
                self.revision = Some(revision);
                return Ok(Change::Synced {
                    objects: ListedObjects {
                        items: items.into_iter(),
                    },
                    revision,
                });
            };
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => match client
                    .watch(self.kind, self.namespace.as_deref(), revision)
                    .await
                {
                    Ok(stream) => self.stream.insert(stream),
                    Err(ClientError::Expired(reason)) => {
                        tracing::info!(kind = %self.kind, revision, reason, "watch expired, listing again");
                        self.revision = None;
                        continue;
                    }
                    Err(error) => return Err(error),
                },
            };
            match stream.next().await {
                Ok(Some(event)) => {
                    if event.revision <= revision {
                        // Already delivered before a resume (an incomplete revision is resumed
                        // from the one before it).
                        continue;
                    }
                    // Until the last event of a revision, only the one before is complete.
                    self.revision = Some(if event.last_of_revision {
                        event.revision
                    } else {
                        event.revision - 1
                    });
                    return Ok(match event.kind {
                        EventType::Deleted => Change::Deleted {
                            object: event.object,
                            revision: event.revision,
                        },
                        EventType::Added | EventType::Modified => Change::Applied {
                            object: event.object,
                            revision: event.revision,
                        },
                    });
                }
                Ok(None) => {
                    self.stream = None;
                    return Err(ClientError::WatchEnded);
                }
                Err(ClientError::Expired(reason)) => {
                    tracing::info!(kind = %self.kind, revision, reason, "watch expired, listing again");
                    self.stream = None;
                    self.revision = None;
                }
                Err(error) => {
                    self.stream = None;
                    return Err(error);
                }
            }
        }
    }
}
