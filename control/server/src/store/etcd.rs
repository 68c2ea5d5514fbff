//! The etcd v3 store: several gannet-control replicas share one etcd cluster, and every replica's
//! watches come from etcd's own watch, so a write through one replica reaches watchers of all.
//!
//! The client is etcd's gRPC API (the subset in `proto/etcd`), over plain HTTP/2 or TLS with a
//! client certificate ([`EtcdTls`], etcd's `--client-cert-auth`). Calls go to one member at a time;
//! when it fails (killed, partitioned, no leader) the call moves on to the next member, and a
//! broken watch is re-established on another member from the last revision it delivered.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use super::{Compare, Event, EventKind, EventStream, KeyValue, Op, Revision, Store, StoreError};
use crate::etcdpb;
use crate::etcdpb::kv_client::KvClient;
use crate::etcdpb::watch_client::WatchClient;

/// How long one unary call to one member may take before the next member is tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds over all members before a call gives up.
const ROUNDS: usize = 4;

/// TLS to etcd's `https://` endpoints: the CA that signed the members' certificates and, when
/// etcd runs with `--client-cert-auth`, a client certificate and its key (all PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    /// Certificate and key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl EtcdTls {
    fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.client {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// The store in an etcd v3 cluster, under a key prefix.
#[derive(Clone, Debug)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    /// Index (modulo the number of members) of the member calls go to.
    current: AtomicUsize,
    prefix: String,
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Internal
    )
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space.
    vec![0]
}

fn to_revision(revision: i64) -> Revision {
    u64::try_from(revision).unwrap_or(0)
}

fn from_revision(revision: Revision) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

impl EtcdStore {
    /// A store on the etcd members `endpoints` (`http://HOST:PORT` or `HOST:PORT`), keeping its
    /// keys under `prefix` (e.g. `/gannet/`). Nothing is connected until the first call; use
    /// [`EtcdStore::check`] to fail early.
    ///
    /// # Errors
    /// If an endpoint is not a valid URL.
    pub fn new(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        Self::with_tls(endpoints, prefix, None)
    }

    /// As [`EtcdStore::new`], with TLS for `https://` endpoints.
    ///
    /// # Errors
    /// If an endpoint is not a valid URL, an `https://` one has no `tls`, an `http://` one has
    /// `tls` (it would not be used), or the TLS material is unusable.
    pub fn with_tls(
        endpoints: &[String],
        prefix: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints".to_owned()));
        }
        let mut urls = Vec::new();
        let mut channels = Vec::new();
        for endpoint in endpoints {
            let url = if endpoint.contains("://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            };
            let unusable = |error: &dyn std::fmt::Display| {
                StoreError::Unavailable(format!("etcd endpoint {url:?}: {error}"))
            };
            let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| unusable(&e))?;
            match (url.starts_with("https://"), tls) {
                (true, Some(tls)) => {
                    endpoint = endpoint
                        .tls_config(tls.client_config())
                        .map_err(|e| unusable(&e))?;
                }
                (true, None) => return Err(unusable(&"https:// needs a CA certificate")),
                (false, Some(_)) => {
                    return Err(unusable(&"TLS material given for a plain http:// endpoint"));
                }
                (false, None) => {}
            }
            let channel = endpoint
                .connect_timeout(Duration::from_secs(2))
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true)
                .connect_lazy();
            urls.push(url);
            channels.push(channel);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints: urls,
                channels,
                current: AtomicUsize::new(0),
                prefix: prefix.to_owned(),
            }),
        })
    }

    /// Reads the current revision: fails when no member answers.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] naming the members tried.
    pub async fn check(&self) -> Result<Revision, StoreError> {
        self.current_revision().await
    }

    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.inner.prefix).into_bytes()
    }

    fn unprefix(&self, key: &[u8]) -> Result<String, StoreError> {
        let key = std::str::from_utf8(key)
            .map_err(|_| StoreError::Corrupt("a key is not UTF-8".to_owned()))?;
        Ok(key
            .strip_prefix(self.inner.prefix.as_str())
            .unwrap_or(key)
            .to_owned())
    }

    fn key_value(&self, kv: etcdpb::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: self.unprefix(&kv.key)?,
            value: kv.value,
            create_revision: to_revision(kv.create_revision),
            mod_revision: to_revision(kv.mod_revision),
        })
    }

    /// Calls `call` on one member after the other until one answers.
    async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let members = self.inner.channels.len();
        let mut last = String::new();
        for attempt in 0..members * ROUNDS {
            let index = self.inner.current.load(Ordering::Relaxed) % members;
            let channel = self.inner.channels[index].clone();
            let outcome = tokio::time::timeout(CALL_TIMEOUT, call(channel)).await;
            let status = match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(status)) if !retryable(&status) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd {what}: {}",
                        status.message()
                    )));
                }
                Ok(Err(status)) => status.to_string(),
                Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
            };
            let endpoint = &self.inner.endpoints[index];
            tracing::debug!(
                endpoint,
                what,
                error = status,
                attempt,
                "etcd call failed, trying the next member"
            );
            last = format!("{endpoint}: {status}");
            // Move on, unless another call already did.
            let _ = self.inner.current.compare_exchange(
                index,
                index + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if (attempt + 1) % members == 0 {
                let round = u32::try_from((attempt + 1) / members).unwrap_or(u32::MAX);
                tokio::time::sleep(Duration::from_millis(200) * round).await;
            }
        }
        Err(StoreError::Unavailable(format!(
            "etcd {what}: no member answered (last: {last})"
        )))
    }

    async fn range(
        &self,
        request: etcdpb::RangeRequest,
    ) -> Result<etcdpb::RangeResponse, StoreError> {
        self.call("range", |channel| {
            let request = request.clone();
            async move {
                Ok(KvClient::new(channel)
                    .max_decoding_message_size(gannet_api::MAX_MESSAGE_SIZE)
                    .range(request)
                    .await?
                    .into_inner())
            }
        })
        .await
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self
            .range(etcdpb::RangeRequest {
                key: self.key(key),
                ..Default::default()
            })
            .await?;
        response
            .kvs
            .into_iter()
            .next()
            .map(|kv| self.key_value(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let key = self.key(prefix);
        let response = self
            .range(etcdpb::RangeRequest {
                range_end: prefix_end(&key),
                key,
                ..Default::default()
            })
            .await?;
        let revision = to_revision(response.header.map_or(0, |header| header.revision));
        let items = response
            .kvs
            .into_iter()
            .map(|kv| self.key_value(kv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((items, revision))
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<Option<Revision>, StoreError> {
        let request = etcdpb::TxnRequest {
            compare: compares
                .iter()
                .map(|compare| etcdpb::Compare {
                    result: etcdpb::compare::CompareResult::Equal.into(),
                    target: etcdpb::compare::CompareTarget::Mod.into(),
                    key: self.key(&compare.key),
                    target_union: Some(etcdpb::compare::TargetUnion::ModRevision(from_revision(
                        compare.mod_revision,
                    ))),
                    range_end: Vec::new(),
                })
                .collect(),
            success: ops
                .iter()
                .map(|op| etcdpb::RequestOp {
                    request: Some(match op {
                        Op::Put { key, value } => {
                            etcdpb::request_op::Request::RequestPut(etcdpb::PutRequest {
                                key: self.key(key),
                                value: value.clone(),
                                ..Default::default()
                            })
                        }
                        Op::Delete { key } => etcdpb::request_op::Request::RequestDeleteRange(
                            etcdpb::DeleteRangeRequest {
                                key: self.key(key),
                                ..Default::default()
                            },
                        ),
                    }),
                })
                .collect(),
            failure: Vec::new(),
        };
        let response = self
            .call("txn", |channel| {
                let request = request.clone();
                async move {
                    Ok(KvClient::new(channel)
                        .max_encoding_message_size(gannet_api::MAX_MESSAGE_SIZE)
                        .txn(request)
                        .await?
                        .into_inner())
                }
            })
            .await?;
        let revision = to_revision(response.header.map_or(0, |header| header.revision));
        Ok(response.succeeded.then_some(revision))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream, StoreError> {
        let mut next = if after == 0 {
            self.current_revision().await?
        } else {
            after
        };
        let key = self.key(prefix);
        let (tx, stream) = EventStream::channel();
        let store = self.clone();
        tokio::spawn(async move {
            let members = store.inner.channels.len();
            let mut failures = 0_u32;
            loop {
                let index = store.inner.current.load(Ordering::Relaxed) % members;
                let channel = store.inner.channels[index].clone();
                let create = etcdpb::WatchRequest {
                    request_union: Some(etcdpb::watch_request::RequestUnion::CreateRequest(
                        etcdpb::WatchCreateRequest {
                            key: key.clone(),
                            range_end: prefix_end(&key),
                            start_revision: from_revision(next + 1),
                            prev_kv: true,
                            ..Default::default()
                        },
                    )),
                };
                // The request stream stays open: etcd ends a watch whose client stopped sending.
                let requests = tokio_stream::StreamExt::chain(
                    tokio_stream::iter([create]),
                    tokio_stream::pending(),
                );
                let mut client = WatchClient::new(channel)
                    .max_decoding_message_size(gannet_api::MAX_MESSAGE_SIZE);
                let opened = tokio::select! {
                    opened = client.watch(requests) => opened,
                    () = tx.closed() => return,
                };
                let error = match opened {
                    Ok(response) => {
                        let mut responses = response.into_inner();
                        loop {
                            let message = tokio::select! {
                                message = responses.message() => message,
                                () = tx.closed() => return,
                            };
                            match message {
                                Ok(Some(response)) => {
                                    if response.compact_revision > 0 {
                                        let _ = tx
                                            .send(Err(StoreError::Compacted {
                                                requested: next,
                                                compacted: to_revision(response.compact_revision),
                                            }))
                                            .await;
                                        return;
                                    }
                                    if response.canceled {
                                        break format!(
                                            "watch canceled: {}",
                                            response.cancel_reason
                                        );
                                    }
                                    failures = 0;
                                    match store.batches(response.events) {
                                        Ok(batches) => {
                                            for batch in batches {
                                                let revision = batch[0].revision;
                                                if tx.send(Ok(batch)).await.is_err() {
                                                    return;
                                                }
                                                next = revision;
                                            }
                                        }
                                        Err(error) => {
                                            let _ = tx.send(Err(error)).await;
                                            return;
                                        }
                                    }
                                }
                                Ok(None) => break "the member ended the watch".to_owned(),
                                Err(status) => break status.to_string(),
                            }
                        }
                    }
                    Err(status) => status.to_string(),
                };
                failures += 1;
                tracing::debug!(
                    endpoint = store.inner.endpoints[index],
                    error,
                    next,
                    "etcd watch broke, resuming on the next member"
                );
                let _ = store.inner.current.compare_exchange(
                    index,
                    index + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                let delay = Duration::from_millis(100) * failures.min(20);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(stream)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.current_revision().await?;
        let target = from_revision(revision.min(current));
        self.call("compact", |channel| async move {
            match KvClient::new(channel)
                .compact(etcdpb::CompactionRequest {
                    revision: target,
                    physical: false,
                })
                .await
            {
                Ok(_) => Ok(()),
                // Already compacted that far (another replica, or etcd's own compaction).
                Err(status) if status.code() == Code::OutOfRange => Ok(()),
                Err(status) => Err(status),
            }
        })
        .await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let response = self
            .range(etcdpb::RangeRequest {
                key: self.key(""),
                count_only: true,
                ..Default::default()
            })
            .await?;
        Ok(to_revision(
            response.header.map_or(0, |header| header.revision),
        ))
    }
}

impl EtcdStore {
    /// etcd events (of one watch response) to batches of one revision each.
    fn batches(&self, events: Vec<etcdpb::Event>) -> Result<Vec<Vec<Event>>, StoreError> {
        let mut batches: Vec<Vec<Event>> = Vec::new();
        for event in events {
            let delete = event.r#type == i32::from(etcdpb::event::EventType::Delete);
            let kv = event
                .kv
                .ok_or_else(|| StoreError::Corrupt("etcd event without key".to_owned()))?;
            let revision = to_revision(kv.mod_revision);
            let key = self.unprefix(&kv.key)?;
            let (value, created) = if delete {
                (
                    event.prev_kv.map(|prev| prev.value).unwrap_or_default(),
                    false,
                )
            } else {
                (kv.value, kv.create_revision == kv.mod_revision)
            };
            let event = Event {
                kind: if delete {
                    EventKind::Delete
                } else {
                    EventKind::Put
                },
                key,
                value,
                revision,
                created,
            };
            match batches.last_mut() {
                Some(batch) if batch[0].revision == revision => batch.push(event),
                _ => batches.push(vec![event]),
            }
        }
        Ok(batches)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/gannet/"), b"/gannet0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
