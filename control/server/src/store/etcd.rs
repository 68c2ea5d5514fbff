//! The etcd v3 store: several gannet-control replicas share one etcd cluster, and every replica's
//! watches come from etcd's own watch, so a write through one replica reaches watchers of all.
//!
//! The client is the `etcd-client` crate, over plain HTTP/2 or TLS with a client certificate
//! ([`EtcdTls`], etcd's `--client-cert-auth`). It balances calls over all members; a call that
//! fails on one (killed, partitioned, no leader) is tried again, on whichever member the
//! balancer picks, and a broken watch is re-established from the last revision it delivered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, Txn, TxnOp, WatchOptions,
};
use tokio::sync::OnceCell;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::{Compare, Event, EventKind, EventStream, KeyValue, Op, Revision, Store, StoreError};

/// How long one attempt of a unary call may take before it is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A call is tried this many times per member before it gives up.
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
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    options: ConnectOptions,
    /// Made on first use: `etcd_client::Client::connect` needs a runtime (it connects lazily).
    client: OnceCell<Client>,
    prefix: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Whether a failed call may succeed when tried again (on another member).
fn retryable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Internal
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// The message of an error: a gRPC status's own message, without `etcd-client`'s wrapping.
fn message(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().to_owned(),
        error => error.to_string(),
    }
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
        for endpoint in endpoints {
            let url = if endpoint.contains("://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            };
            let unusable = |error: &dyn std::fmt::Display| {
                StoreError::Unavailable(format!("etcd endpoint {url:?}: {error}"))
            };
            // Checked here, so that a bad flag fails at start rather than at the first call.
            let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| unusable(&e))?;
            match (url.starts_with("https://"), tls) {
                (true, Some(tls)) => {
                    endpoint
                        .tls_config(tls.client_config())
                        .map_err(|e| unusable(&e))?;
                }
                (true, None) => return Err(unusable(&"https:// needs a CA certificate")),
                (false, Some(_)) => {
                    return Err(unusable(&"TLS material given for a plain http:// endpoint"));
                }
                (false, None) => {}
            }
            urls.push(url);
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls {
            options = options.with_tls(tls.client_config());
        }
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints: urls,
                options,
                client: OnceCell::new(),
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

    async fn client(&self) -> Result<&Client, StoreError> {
        self.inner
            .client
            .get_or_try_init(|| {
                Client::connect(&self.inner.endpoints, Some(self.inner.options.clone()))
            })
            .await
            .map_err(|error| {
                StoreError::Unavailable(format!("etcd {}: {error}", self.inner.endpoints.join(",")))
            })
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

    fn key_value(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: self.unprefix(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: to_revision(kv.create_revision()),
            mod_revision: to_revision(kv.mod_revision()),
        })
    }

    /// Calls `call` until it succeeds, it fails for good, or every member had [`ROUNDS`]
    /// chances; the client's balancer picks the member of each attempt.
    async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let kv = self
            .client()
            .await?
            .kv_client()
            .max_decoding_message_size(gannet_api::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(gannet_api::MAX_MESSAGE_SIZE);
        let members = self.inner.endpoints.len();
        let mut last = String::new();
        for attempt in 0..members * ROUNDS {
            let error = match tokio::time::timeout(CALL_TIMEOUT, call(kv.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) if !retryable(&error) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd {what}: {}",
                        message(&error)
                    )));
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
            };
            tracing::debug!(what, error, attempt, "etcd call failed, trying again");
            last = error;
            // After each round of every member, a pause that grows fourfold: 25 ms after the
            // first (the balancer may offer a member that was just killed several times in a
            // row, so a long first pause is a long gap after a failover), 400 ms after the third.
            if (attempt + 1) % members == 0 {
                let round = u32::try_from((attempt + 1) / members).unwrap_or(u32::MAX);
                let factor = 4_u32.saturating_pow(round.saturating_sub(1));
                tokio::time::sleep(Duration::from_millis(25) * factor).await;
            }
        }
        Err(StoreError::Unavailable(format!(
            "etcd {what}: no member of {} answered (last: {last})",
            self.inner.endpoints.join(",")
        )))
    }

    async fn range(
        &self,
        key: Vec<u8>,
        options: GetOptions,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        self.call("range", |mut kv| {
            let (key, options) = (key.clone(), options.clone());
            async move { kv.get(key, Some(options)).await }
        })
        .await
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    to_revision(header.map_or(0, etcd_client::ResponseHeader::revision))
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self.range(self.key(key), GetOptions::new()).await?;
        response
            .kvs()
            .first()
            .map(|kv| self.key_value(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let key = self.key(prefix);
        let end = prefix_end(&key);
        let response = self.range(key, GetOptions::new().with_range(end)).await?;
        let revision = header_revision(response.header());
        let items = response
            .kvs()
            .iter()
            .map(|kv| self.key_value(kv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((items, revision))
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<Option<Revision>, StoreError> {
        let txn = Txn::new()
            .when(
                compares
                    .iter()
                    .map(|compare| {
                        etcd_client::Compare::mod_revision(
                            self.key(&compare.key),
                            CompareOp::Equal,
                            from_revision(compare.mod_revision),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .and_then(
                ops.iter()
                    .map(|op| match op {
                        Op::Put { key, value } => TxnOp::put(self.key(key), value.clone(), None),
                        Op::Delete { key } => TxnOp::delete(self.key(key), None),
                    })
                    .collect::<Vec<_>>(),
            );
        let response = self
            .call("txn", |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        let revision = header_revision(response.header());
        Ok(response.succeeded().then_some(revision))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream, StoreError> {
        let mut next = if after == 0 {
            self.current_revision().await?
        } else {
            after
        };
        let key = self.key(prefix);
        let end = prefix_end(&key);
        let client = self.client().await?.clone();
        let (tx, stream) = EventStream::channel();
        let store = self.clone();
        tokio::spawn(async move {
            let mut failures = 0_u32;
            loop {
                let options = WatchOptions::new()
                    .with_range(end.clone())
                    .with_start_revision(from_revision(next + 1))
                    .with_prev_key();
                let mut watch_client = client
                    .watch_client()
                    .max_decoding_message_size(gannet_api::MAX_MESSAGE_SIZE);
                let opened = tokio::select! {
                    opened = watch_client.watch(key.clone(), Some(options)) => opened,
                    () = tx.closed() => return,
                };
                let error = match opened {
                    Ok(mut responses) => loop {
                        let message = tokio::select! {
                            message = responses.message() => message,
                            () = tx.closed() => return,
                        };
                        match message {
                            Ok(Some(response)) => {
                                if response.compact_revision() > 0 {
                                    let _ = tx
                                        .send(Err(StoreError::Compacted {
                                            requested: next,
                                            compacted: to_revision(response.compact_revision()),
                                        }))
                                        .await;
                                    return;
                                }
                                if response.canceled() {
                                    break format!("watch canceled: {}", response.cancel_reason());
                                }
                                failures = 0;
                                match store.batches(response.events()) {
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
                            Err(error) => break error.to_string(),
                        }
                    },
                    Err(error) => error.to_string(),
                };
                failures += 1;
                tracing::debug!(error, next, "etcd watch broke, resuming");
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
        self.call("compact", |mut kv| async move {
            match kv.compact(target, None).await {
                Ok(_) => Ok(()),
                // Already compacted that far (another replica, or etcd's own compaction).
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == Code::OutOfRange =>
                {
                    Ok(())
                }
                Err(error) => Err(error),
            }
        })
        .await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let response = self
            .range(self.key(""), GetOptions::new().with_count_only())
            .await?;
        Ok(header_revision(response.header()))
    }
}

impl EtcdStore {
    /// etcd events (of one watch response) to batches of one revision each.
    fn batches(&self, events: &[etcd_client::Event]) -> Result<Vec<Vec<Event>>, StoreError> {
        let mut batches: Vec<Vec<Event>> = Vec::new();
        for event in events {
            let delete = event.event_type() == EventType::Delete;
            let kv = event
                .kv()
                .ok_or_else(|| StoreError::Corrupt("etcd event without key".to_owned()))?;
            let revision = to_revision(kv.mod_revision());
            let key = self.unprefix(kv.key())?;
            let (value, created) = if delete {
                (
                    event
                        .prev_kv()
                        .map(|prev| prev.value().to_vec())
                        .unwrap_or_default(),
                    false,
                )
            } else {
                (
                    kv.value().to_vec(),
                    kv.create_revision() == kv.mod_revision(),
                )
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
