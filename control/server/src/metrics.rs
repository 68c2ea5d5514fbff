//! gannet-control's Prometheus metrics (`--metrics-address`, `GET /metrics`): gRPC requests by
//! method and code and how long they took, open watch streams, store latency by operation, and,
//! read at each scrape, the nodes by readiness and the pod CIDR leases they hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gannet_api::{Kind, Object};
use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::store::{Compare, EventStream, KeyValue, Op, Revision, Store, StoreError};

type Label = (&'static str, &'static str);
type HistogramFamily = Family<[Label; 1], Histogram, fn() -> Histogram>;

/// Request and store latencies: 0.1 ms to about 26 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

/// gannet-control's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<[(&'static str, String); 2], Counter>,
    unauthenticated: Counter,
    request_duration: HistogramFamily,
    watchers: Family<[Label; 1], Gauge>,
    store: HistogramFamily,
    nodes: Family<[Label; 1], Gauge>,
    leases: Gauge,
    node_leases: Gauge,
    attached: Gauge,
}

impl Metrics {
    #[must_use]
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let metrics = Metrics {
            requests: Family::default(),
            unauthenticated: Counter::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            watchers: Family::default(),
            store: Family::new_with_constructor(latency_histogram),
            nodes: Family::default(),
            leases: Gauge::default(),
            node_leases: Gauge::default(),
            attached: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "gannet_control_grpc_requests",
            "gRPC calls handled, by method (Apply, Get, List, Watch, Delete, UpdateStatus, \
             Register, Heartbeat, Attach, Serve, Logs, ImportImage) and status code (OK, \
             NotFound, InvalidArgument, ...; a stream by how it opened)",
            metrics.requests.clone(),
        );
        registry.register(
            "gannet_control_grpc_unauthenticated",
            "gRPC calls refused before any method ran: no client certificate and no bearer token, \
             or a wrong token (not in gannet_control_grpc_requests)",
            metrics.unauthenticated.clone(),
        );
        registry.register(
            "gannet_control_grpc_request_duration_seconds",
            "Time to answer a gRPC call, by method (a Watch: until its stream is open)",
            metrics.request_duration.clone(),
        );
        registry.register(
            "gannet_control_watchers",
            "Watch streams open, by kind",
            metrics.watchers.clone(),
        );
        registry.register(
            "gannet_control_store_duration_seconds",
            "Time a store operation took, by operation (get, list, txn, watch, compact, \
             current_revision)",
            metrics.store.clone(),
        );
        registry.register(
            "gannet_control_nodes",
            "Nodes by their Ready condition (true, false, unknown), read at the scrape",
            metrics.nodes.clone(),
        );
        registry.register(
            "gannet_control_pod_cidr_leases",
            "Nodes holding a pod CIDR lease, read at the scrape",
            metrics.leases.clone(),
        );
        registry.register(
            "gannet_control_node_heartbeat_leases",
            "Node heartbeat Leases (coordination.k8s.io/v1, kube-node-lease), read at the scrape",
            metrics.node_leases.clone(),
        );
        registry.register(
            "gannet_control_attached_nodes",
            "Attach streams open: nodes whose gannetd gannet-control can reach for gannetctl logs \
             and image import",
            metrics.attached.clone(),
        );
        Arc::new(Metrics {
            registry,
            ..metrics
        })
    }

    /// Counts a gRPC call of `method` that ended with `code`.
    pub fn request(&self, method: &'static str, code: tonic::Code, took: Duration) {
        let code = match code {
            tonic::Code::Ok => "OK".to_owned(),
            other => format!("{other:?}"),
        };
        self.requests
            .get_or_create(&[("method", method.to_owned()), ("code", code)])
            .inc();
        self.request_duration
            .get_or_create(&[("method", method)])
            .observe(took.as_secs_f64());
    }

    /// Counts a call refused for its credentials.
    pub fn unauthenticated(&self) {
        self.unauthenticated.inc();
    }

    /// Counts an open watch stream of `kind` until the guard is dropped.
    #[must_use]
    pub fn watching(self: &Arc<Self>, kind: Kind) -> Watching {
        let kind = kind_label(kind);
        self.watchers.get_or_create(&[("kind", kind)]).inc();
        Watching {
            metrics: Arc::clone(self),
            kind,
        }
    }

    /// Counts an open Attach stream until the guard is dropped.
    #[must_use]
    pub fn attached(self: &Arc<Self>) -> AttachedNode {
        self.attached.inc();
        AttachedNode {
            metrics: Arc::clone(self),
        }
    }

    fn store_op(&self, operation: &'static str, began: Instant) {
        self.store
            .get_or_create(&[("operation", operation)])
            .observe(began.elapsed().as_secs_f64());
    }

    /// The metrics as `OpenMetrics` text, with the nodes read from `registry` now.
    pub async fn render(&self, registry: &crate::registry::Registry) -> String {
        match registry.list(Kind::Node, None).await {
            Ok((nodes, _)) => {
                let (mut ready, mut not_ready, mut unknown, mut leases) = (0, 0, 0, 0);
                for object in &nodes {
                    let Object::Node(node) = object else { continue };
                    match crate::registry::ready_status(node) {
                        Some("True") => ready += 1,
                        Some("False") => not_ready += 1,
                        _ => unknown += 1,
                    }
                    if crate::controller::nodes::has_pod_cidrs(node) {
                        leases += 1;
                    }
                }
                for (label, count) in [("true", ready), ("false", not_ready), ("unknown", unknown)]
                {
                    self.nodes.get_or_create(&[("ready", label)]).set(count);
                }
                self.leases.set(leases);
            }
            Err(error) => tracing::warn!(%error, "metrics: cannot list the nodes"),
        }
        match registry
            .list(Kind::Lease, Some(crate::registry::NODE_LEASE_NAMESPACE))
            .await
        {
            Ok((leases, _)) => {
                self.node_leases
                    .set(i64::try_from(leases.len()).unwrap_or(i64::MAX));
            }
            Err(error) => tracing::warn!(%error, "metrics: cannot list the node Leases"),
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "cannot encode the metrics");
            text.push_str("# EOF\n");
        }
        text
    }
}

fn kind_label(kind: Kind) -> &'static str {
    kind.name()
}

/// An open watch stream, counted until dropped.
#[derive(Debug)]
pub struct Watching {
    metrics: Arc<Metrics>,
    kind: &'static str,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.metrics
            .watchers
            .get_or_create(&[("kind", self.kind)])
            .dec();
    }
}

/// An open Attach stream, counted in `gannet_control_attached_nodes` while it lives.
#[derive(Debug)]
pub struct AttachedNode {
    metrics: Arc<Metrics>,
}

impl Drop for AttachedNode {
    fn drop(&mut self) {
        self.metrics.attached.dec();
    }
}

/// A [`Store`] whose operations are timed.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    #[must_use]
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl std::fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore")
            .field("backend", &self.inner.backend())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let began = Instant::now();
        let result = self.inner.get(key).await;
        self.metrics.store_op("get", began);
        result
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let began = Instant::now();
        let result = self.inner.list(prefix).await;
        self.metrics.store_op("list", began);
        result
    }

    async fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<Option<Revision>, StoreError> {
        let began = Instant::now();
        let result = self.inner.txn(compares, ops).await;
        self.metrics.store_op("txn", began);
        result
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<EventStream, StoreError> {
        let began = Instant::now();
        let result = self.inner.watch(prefix, after).await;
        self.metrics.store_op("watch", began);
        result
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let began = Instant::now();
        let result = self.inner.compact(revision).await;
        self.metrics.store_op("compact", began);
        result
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let began = Instant::now();
        let result = self.inner.current_revision().await;
        self.metrics.store_op("current_revision", began);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_watchers_and_store_operations_show() {
        let metrics = Metrics::new();
        metrics.request("Apply", tonic::Code::Ok, Duration::from_millis(2));
        metrics.request("Get", tonic::Code::NotFound, Duration::from_millis(1));
        let watching = metrics.watching(Kind::Service);
        metrics.store_op("txn", Instant::now());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encodes");
        for line in [
            "gannet_control_grpc_requests_total{method=\"Apply\",code=\"OK\"} 1",
            "gannet_control_grpc_requests_total{method=\"Get\",code=\"NotFound\"} 1",
            "gannet_control_grpc_request_duration_seconds_count{method=\"Apply\"} 1",
            "gannet_control_watchers{kind=\"Service\"} 1",
            "gannet_control_store_duration_seconds_count{operation=\"txn\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "expected {line:?} in:\n{text}"
            );
        }
        drop(watching);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encodes");
        assert!(
            text.lines()
                .any(|l| l == "gannet_control_watchers{kind=\"Service\"} 0"),
            "a closed watch is no longer counted:\n{text}"
        );
    }
}
