//! The tonic services over a [`Registry`], and who may call what.
//!
//! Callers: on a unix socket (protected by its file mode) and on `--insecure` loopback TCP,
//! everyone is an administrator. On TLS, a bearer token (gannetctl) makes an administrator; a
//! client certificate signed by the cluster CA (verified by rustls) makes an agent. Agents may
//! read everything, register and heartbeat, report the status of Pods and Nodes, and create or
//! delete Pods; everything else is an administrator's.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use gannet_api::{Kind, NodeResources, Object, Problem, invalid_status, pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::node_proxy::{CallStream, InputStream, NodeTunnels};
use crate::registry::{ApiError, Outcome, Registry, Resources};
use crate::store::EventKind;

/// Who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Agent,
}

/// Sets the [`Caller`] of each request, or refuses it.
#[derive(Clone)]
pub struct Authenticator {
    /// `None`: every caller is an administrator (unix socket, insecure loopback).
    token: Option<Option<Arc<str>>>,
    /// Where refused calls are counted.
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tls", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// For listeners protected otherwise (unix socket mode, loopback).
    #[must_use]
    pub fn trusted() -> Self {
        Self {
            token: None,
            metrics: None,
        }
    }

    /// For TLS listeners: the administrators' token (none: only agents can call).
    #[must_use]
    pub fn tls(token: Option<&str>) -> Self {
        Self {
            token: Some(token.map(Arc::from)),
            metrics: None,
        }
    }

    /// Counts the calls it refuses in `metrics`.
    #[must_use]
    pub fn counting(self, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    fn refuse(&self, message: &str) -> Status {
        if let Some(metrics) = &self.metrics {
            metrics.unauthenticated();
        }
        Status::unauthenticated(message)
    }
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = match &self.token {
            None => Caller::Admin,
            Some(token) => {
                if let Some(header) = request.metadata().get("authorization") {
                    let given = header
                        .to_str()
                        .ok()
                        .and_then(|value| value.strip_prefix("Bearer "))
                        .unwrap_or_default();
                    match token {
                        Some(token) if same_secret(given.as_bytes(), token.as_bytes()) => {
                            Caller::Admin
                        }
                        _ => return Err(self.refuse("invalid bearer token")),
                    }
                } else if request.peer_certs().is_some_and(|certs| !certs.is_empty()) {
                    Caller::Agent
                } else {
                    return Err(self.refuse(
                        "present a client certificate (agents) or a bearer token (gannetctl)",
                    ));
                }
            }
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

pub(crate) fn caller<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .copied()
        .unwrap_or(Caller::Agent)
}

/// The status of an API error.
#[must_use]
pub fn status(error: &ApiError) -> Status {
    match error {
        ApiError::Invalid(problems) => invalid_status(problems),
        ApiError::Conflict(message) => Status::aborted(message.clone()),
        ApiError::NotFound(message) => Status::not_found(message.clone()),
        ApiError::Expired(message) => Status::out_of_range(message.clone()),
        ApiError::Exhausted(message) => Status::resource_exhausted(message.clone()),
        ApiError::Store(error) => Status::unavailable(error.to_string()),
        ApiError::Internal(message) => Status::internal(message.clone()),
    }
}

fn kind_of(value: i32) -> Result<Kind, Status> {
    Kind::from_pb(value).ok_or_else(|| {
        Status::invalid_argument(format!(
            "kind {value} is not one of Service, EndpointSlice, Pod, Node"
        ))
    })
}

fn to_pb(object: &Object) -> Result<pb::Object, Status> {
    object
        .to_pb()
        .map_err(|error| Status::internal(error.to_string()))
}

fn decode_objects(objects: &[pb::Object]) -> Result<Vec<Object>, Status> {
    let mut decoded = Vec::with_capacity(objects.len());
    let mut problems = Vec::new();
    for (index, object) in objects.iter().enumerate() {
        match Object::from_pb(object) {
            Ok(object) => decoded.push(object),
            Err(error) => {
                let (field, message) = match &error {
                    gannet_api::ConvertError::Json { field, message, .. } => {
                        (field.clone(), message.clone())
                    }
                    other => (None, other.to_string()),
                };
                let object = Kind::from_pb(object.kind)
                    .map_or_else(|| format!("object {}", index + 1), |kind| kind.to_string());
                problems.push(Problem {
                    index,
                    object,
                    field,
                    message,
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(decoded)
    } else {
        Err(invalid_status(&problems))
    }
}

/// The `Resources` and `Nodes` services.
#[derive(Clone, Debug)]
pub struct Api {
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    /// Becomes `true` when the server stops: open watch streams end then (with `UNAVAILABLE`,
    /// so clients watch again from their last revision), else they would hold the shutdown
    /// until its drain timeout.
    pub(crate) stopping: watch::Receiver<bool>,
    /// The nodes' gannetd reachable through `NodeProxy`.
    pub(crate) tunnels: Arc<NodeTunnels>,
}

impl Api {
    #[must_use]
    pub fn new(
        registry: Arc<Registry>,
        stopping: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            registry,
            metrics,
            stopping,
            tunnels: Arc::default(),
        }
    }

    /// Counts a call of `method` that began at `began` and ended with `result`.
    pub(crate) fn observed<T>(
        &self,
        method: &'static str,
        began: Instant,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.request(method, code, began.elapsed());
        result
    }
}

/// Every call is counted by method and code ([`Api::observed`]); the calls themselves follow.
#[tonic::async_trait]
impl pb::resources_server::Resources for Api {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let began = Instant::now();
        self.observed("Apply", began, self.apply_call(request).await)
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let began = Instant::now();
        self.observed("Get", began, self.get_call(request).await)
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let began = Instant::now();
        self.observed("List", began, self.list_call(request).await)
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let began = Instant::now();
        self.observed("Watch", began, self.watch_call(request).await)
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let began = Instant::now();
        self.observed("Delete", began, self.delete_call(request).await)
    }

    async fn update_status(
        &self,
        request: Request<pb::UpdateStatusRequest>,
    ) -> Result<Response<pb::UpdateStatusResponse>, Status> {
        let began = Instant::now();
        self.observed(
            "UpdateStatus",
            began,
            self.update_status_call(request).await,
        )
    }
}

#[tonic::async_trait]
impl pb::nodes_server::Nodes for Api {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let began = Instant::now();
        self.observed("Register", began, self.register_call(request).await)
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let began = Instant::now();
        self.observed("Heartbeat", began, self.heartbeat_call(request).await)
    }

    type AttachStream = CallStream;

    async fn attach(
        &self,
        request: Request<pb::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let began = Instant::now();
        self.observed("Attach", began, self.attach_call(&request))
    }

    type ServeStream = InputStream;

    async fn serve(
        &self,
        request: Request<tonic::Streaming<pb::SessionOutput>>,
    ) -> Result<Response<Self::ServeStream>, Status> {
        let began = Instant::now();
        self.observed("Serve", began, self.serve_call(request).await)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

impl Api {
    async fn apply_call(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let objects = decode_objects(&request.objects)?;
        if caller == Caller::Agent && objects.iter().any(|o| o.kind() != Kind::Pod) {
            return Err(Status::permission_denied(
                "agents may only apply Pods: use gannetctl's token",
            ));
        }
        let applied = self
            .registry
            .apply(objects, request.dry_run)
            .await
            .map_err(|error| status(&error))?;
        let mut response = pb::ApplyResponse {
            objects: Vec::with_capacity(applied.objects.len()),
            outcomes: Vec::with_capacity(applied.objects.len()),
            revision: applied.revision,
        };
        for (object, outcome) in &applied.objects {
            response.objects.push(to_pb(object)?);
            response.outcomes.push(
                match outcome {
                    Outcome::Created => pb::Outcome::Created,
                    Outcome::Configured => pb::Outcome::Configured,
                    Outcome::Unchanged => pb::Outcome::Unchanged,
                }
                .into(),
            );
        }
        Ok(Response::new(response))
    }

    async fn get_call(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        let object = self
            .registry
            .get(kind, &request.namespace, &request.name)
            .await
            .map_err(|error| status(&error))?;
        Ok(Response::new(pb::GetResponse {
            object: Some(to_pb(&object)?),
        }))
    }

    async fn list_call(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        let (objects, revision) = self
            .registry
            .list(kind, Some(&request.namespace))
            .await
            .map_err(|error| status(&error))?;
        let items = objects.iter().map(to_pb).collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(pb::ListResponse { items, revision }))
    }

    async fn watch_call(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        let mut watch = self
            .registry
            .watch(kind, Some(&request.namespace), request.revision)
            .await
            .map_err(|error| status(&error))?;
        let (tx, rx) = mpsc::channel(256);
        let mut stopping = self.stopping.clone();
        let watching = self.metrics.watching(kind);
        tokio::spawn(async move {
            let _watching = watching;
            let stopped = async move {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            };
            tokio::pin!(stopped);
            loop {
                let batch = tokio::select! {
                    batch = watch.next() => batch,
                    () = tx.closed() => return,
                    () = &mut stopped => {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "gannet-control is shutting down; watch again from the last revision",
                            )))
                            .await;
                        return;
                    }
                };
                let events = match batch {
                    None => {
                        let _ = tx
                            .send(Err(Status::unavailable("the store ended the watch")))
                            .await;
                        return;
                    }
                    Some(Err(error)) => {
                        let _ = tx.send(Err(status(&error))).await;
                        return;
                    }
                    Some(Ok(events)) => events,
                };
                let last = events.len().saturating_sub(1);
                for (i, event) in events.into_iter().enumerate() {
                    let type_ = match (event.kind, event.created) {
                        (EventKind::Delete, _) => pb::EventType::Deleted,
                        (EventKind::Put, true) => pb::EventType::Added,
                        (EventKind::Put, false) => pb::EventType::Modified,
                    };
                    let message = to_pb(&event.object).map(|object| pb::WatchEvent {
                        r#type: type_.into(),
                        object: Some(object),
                        revision: event.revision,
                        last_of_revision: i == last,
                    });
                    if tx.send(message).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete_call(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let kind = kind_of(request.kind)?;
        if caller == Caller::Agent && kind != Kind::Pod {
            return Err(Status::permission_denied(
                "agents may only delete Pods: use gannetctl's token",
            ));
        }
        let precondition = match request.resource_version.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| {
                Status::invalid_argument(format!("resource_version {text:?} is not a revision"))
            })?),
        };
        let (object, revision) = self
            .registry
            .delete(
                kind,
                &request.namespace,
                &request.name,
                precondition,
                request.grace_period_seconds,
            )
            .await
            .map_err(|error| status(&error))?;
        Ok(Response::new(pb::DeleteResponse {
            object: Some(to_pb(&object)?),
            revision,
        }))
    }

    async fn update_status_call(
        &self,
        request: Request<pb::UpdateStatusRequest>,
    ) -> Result<Response<pb::UpdateStatusResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let object = request
            .object
            .ok_or_else(|| Status::invalid_argument("object is required"))?;
        let object = decode_objects(std::slice::from_ref(&object))?.remove(0);
        if caller == Caller::Agent && object.kind() == Kind::Service {
            return Err(Status::permission_denied(
                "agents may not change Service status: use gannetctl's token",
            ));
        }
        let updated = self
            .registry
            .update_status(object)
            .await
            .map_err(|error| status(&error))?;
        Ok(Response::new(pb::UpdateStatusResponse {
            object: Some(to_pb(&updated)?),
        }))
    }
}

impl Api {
    async fn register_call(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let request = request.into_inner();
        let labels: BTreeMap<String, String> = request.labels.into_iter().collect();
        let vtep_mac = Some(request.vtep_mac.as_str()).filter(|mac| !mac.is_empty());
        let resources = |pb: Option<pb::NodeResources>| {
            pb.map(|pb| NodeResources {
                cpu_millicores: pb.cpu_millicores,
                memory_bytes: pb.memory_bytes,
            })
        };
        let (node, pod_cidrs) = self
            .registry
            .register_node(
                &request.name,
                &request.internal_ips,
                vtep_mac,
                &labels,
                Resources {
                    capacity: resources(request.capacity),
                    allocatable: resources(request.allocatable),
                },
            )
            .await
            .map_err(|error| status(&error))?;
        tracing::info!(
            node = request.name,
            pod_cidrs = pod_cidrs.join(","),
            "node registered"
        );
        Ok(Response::new(pb::RegisterResponse {
            node: Some(to_pb(&Object::from(node))?),
            pod_cidrs,
            heartbeat_interval_seconds: u32::try_from(self.registry.heartbeat_interval().as_secs())
                .unwrap_or(u32::MAX)
                .max(1),
            cluster_cidrs: self
                .registry
                .network()
                .pod_networks
                .iter()
                .map(|network| network.cidr.to_string())
                .collect(),
        }))
    }

    async fn heartbeat_call(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let pod_cidrs = self
            .registry
            .heartbeat(&request.name)
            .await
            .map_err(|error| status(&error))?;
        Ok(Response::new(pb::HeartbeatResponse { pod_cidrs }))
    }
}
