//! Reaching a node's gannetd through gannet-control (`NodeProxy`): `gannetctl logs` of a pod on
//! another node, and `gannetctl image import --node`.
//!
//! No node listens for these calls. A gannetd that runs pods keeps one `Attach` stream open; an
//! administrator's call becomes a numbered [`pb::NodeCall`] on it, gannetd answers by opening a
//! `Serve` stream for that session, and gannet-control joins the two: the node's output goes to
//! the administrator, the administrator's input (an image archive) to the node. Each session is
//! its own HTTP/2 stream, so a slow reader holds back only its own session. The calls carry
//! gannet-control's credentials: only administrators may make them, and only agents attach.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gannet_api::{Kind, Object, pb};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::grpc::{Api, Caller, caller, status};

/// How long a node's gannetd has to open the session of a call.
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

pub type CallStream = Pin<Box<dyn Stream<Item = Result<pb::NodeCall, Status>> + Send>>;
pub type InputStream = Pin<Box<dyn Stream<Item = Result<pb::SessionInput, Status>> + Send>>;
pub type LogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogsChunk, Status>> + Send>>;

/// The attached nodes and the sessions waiting for their gannetd.
#[derive(Debug, Default)]
pub struct NodeTunnels {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    attached: HashMap<String, Attached>,
    pending: HashMap<u64, oneshot::Sender<Session>>,
    next_id: u64,
}

#[derive(Debug)]
struct Attached {
    /// Tells this attachment from a later one of the same node.
    id: u64,
    calls: mpsc::Sender<pb::NodeCall>,
}

/// gannet-control's end of an open session.
#[derive(Debug)]
struct Session {
    output: Streaming<pb::SessionOutput>,
    input: mpsc::Sender<Result<pb::SessionInput, Status>>,
}

impl NodeTunnels {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `node`'s gannetd, replacing an earlier attachment of the node.
    fn attach(&self, node: &str) -> (u64, mpsc::Receiver<pb::NodeCall>) {
        let (calls, receiver) = mpsc::channel(16);
        let mut state = self.state();
        state.next_id += 1;
        let id = state.next_id;
        if state
            .attached
            .insert(node.to_owned(), Attached { id, calls })
            .is_some()
        {
            tracing::warn!(
                node,
                "a gannetd attached for a node already attached: the newer one is used"
            );
        }
        (id, receiver)
    }

    fn detach(&self, node: &str, id: u64) {
        let mut state = self.state();
        if state.attached.get(node).is_some_and(|a| a.id == id) {
            state.attached.remove(node);
        }
    }

    /// Asks `node`'s gannetd to serve `call` and waits for it to open the session.
    async fn open(&self, node: &str, call: pb::node_call::Call) -> Result<Session, Status> {
        let not_attached = || {
            Status::unavailable(format!(
                "node {node:?}: its gannetd is not connected to gannet-control (it connects when \
                 it runs pods: gannetd --container-runtime)"
            ))
        };
        let (sender, opened) = oneshot::channel();
        let (session, calls) = {
            let mut state = self.state();
            let calls = state
                .attached
                .get(node)
                .map(|a| a.calls.clone())
                .ok_or_else(not_attached)?;
            state.next_id += 1;
            let session = state.next_id;
            state.pending.insert(session, sender);
            (session, calls)
        };
        let sent = calls
            .send(pb::NodeCall {
                session,
                call: Some(call),
            })
            .await;
        let result = match sent {
            Err(_) => Err(not_attached()),
            Ok(()) => match tokio::time::timeout(SESSION_OPEN_TIMEOUT, opened).await {
                Ok(Ok(session)) => Ok(session),
                Ok(Err(_)) | Err(_) => Err(Status::unavailable(format!(
                    "node {node:?}: its gannetd did not take the call within {} s",
                    SESSION_OPEN_TIMEOUT.as_secs()
                ))),
            },
        };
        self.state().pending.remove(&session);
        result
    }

    /// Hands the session gannetd opened to the call waiting for it.
    fn deliver(&self, id: u64, session: Session) -> Result<(), Status> {
        let waiting = self.state().pending.remove(&id);
        match waiting {
            Some(sender) => sender
                .send(session)
                .map_err(|_| Status::not_found(format!("session {id} was given up"))),
            None => Err(Status::not_found(format!("no call waits for session {id}"))),
        }
    }
}

/// The status a node's [`pb::Failure`] stands for, naming the node.
fn failure_status(node: &str, failure: &pb::Failure) -> Status {
    Status::new(
        tonic::Code::from_i32(failure.code),
        format!("node {node:?}: {}", failure.message),
    )
}

/// A future that ends when the server stops.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

fn admin_only<T>(request: &Request<T>) -> Result<(), Status> {
    if caller(request) == Caller::Agent {
        return Err(Status::permission_denied(
            "reaching nodes is an administrator's call: use gannetctl's token",
        ));
    }
    Ok(())
}

impl Api {
    /// `Nodes.Attach`: the calls for `node`'s gannetd, until it goes away or the server stops.
    pub(crate) fn attach_call(
        &self,
        request: &Request<pb::AttachRequest>,
    ) -> Result<Response<CallStream>, Status> {
        let node = request.get_ref().node.clone();
        if node.is_empty() {
            return Err(Status::invalid_argument("node is required"));
        }
        let tunnels = Arc::clone(&self.tunnels);
        let (id, mut calls) = tunnels.attach(&node);
        tracing::info!(node, "node attached: reachable for logs and image imports");
        let (tx, rx) = mpsc::channel(16);
        let stopping = self.stopping.clone();
        let attached = self.metrics.attached();
        tokio::spawn(async move {
            let _attached = attached;
            let stopped = stopped(stopping);
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    call = calls.recv() => match call {
                        Some(call) => if tx.send(Ok(call)).await.is_err() { break },
                        None => break,
                    },
                    () = tx.closed() => break,
                    () = &mut stopped => {
                        let _ = tx.send(Err(Status::unavailable("gannet-control is shutting down"))).await;
                        break;
                    }
                }
            }
            tunnels.detach(&node, id);
            tracing::info!(node, "node detached");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// `Nodes.Serve`: gannetd opens the session of a call.
    pub(crate) async fn serve_call(
        &self,
        request: Request<Streaming<pb::SessionOutput>>,
    ) -> Result<Response<InputStream>, Status> {
        let mut output = request.into_inner();
        let first = output
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the first message names the session"))?;
        let (input, rx) = mpsc::channel(4);
        self.tunnels
            .deliver(first.session, Session { output, input })?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn logs_call(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<LogsStream>, Status> {
        admin_only(&request)?;
        let mut request = request.into_inner();
        if request.namespace.is_empty() {
            gannet_api::DEFAULT_NAMESPACE.clone_into(&mut request.namespace);
        }
        let Object::Pod(pod) = self
            .registry
            .get(Kind::Pod, &request.namespace, &request.pod)
            .await
            .map_err(|error| status(&error))?
        else {
            return Err(Status::internal(
                "the store answered another kind for a Pod",
            ));
        };
        let label = format!("{}/{}", request.namespace, request.pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if request.uid.is_empty() {
            request.uid.clone_from(&uid);
        } else if request.uid != uid {
            return Err(Status::not_found(format!(
                "pod {label} with uid {} not found (it is now {uid})",
                request.uid
            )));
        }
        let spec = pod.spec.as_ref();
        if !spec.is_some_and(|s| s.containers.iter().any(|c| c.name == request.container)) {
            return Err(Status::not_found(format!(
                "container {:?} is not in pod {label}",
                request.container
            )));
        }
        let node = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Status::failed_precondition(format!("pod {label} is not bound to a node yet"))
            })?;
        let mut session = self
            .tunnels
            .open(&node, pb::node_call::Call::Logs(request))
            .await?;
        let (tx, rx) = mpsc::channel(4);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let stopped = stopped(stopping);
            tokio::pin!(stopped);
            loop {
                let message = tokio::select! {
                    message = session.output.message() => message,
                    () = tx.closed() => break,
                    () = &mut stopped => {
                        let _ = tx.send(Err(Status::unavailable("gannet-control is shutting down"))).await;
                        break;
                    }
                };
                let sent = match message {
                    Ok(None) => break,
                    Ok(Some(pb::SessionOutput {
                        output: Some(pb::session_output::Output::Data(data)),
                        ..
                    })) => tx.send(Ok(pb::LogsChunk { data })).await,
                    Ok(Some(pb::SessionOutput {
                        output: Some(pb::session_output::Output::Failure(failure)),
                        ..
                    })) => {
                        let _ = tx.send(Err(failure_status(&node, &failure))).await;
                        break;
                    }
                    Ok(Some(_)) => Ok(()),
                    Err(error) => {
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "node {node:?}: {}",
                                error.message()
                            ))))
                            .await;
                        break;
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
            // Dropping the session's input ends gannetd's side: it stops reading the log.
            drop(session.input);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn import_image_call(
        &self,
        request: Request<Streaming<pb::ImportImageRequest>>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        admin_only(&request)?;
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the first message names the node"))?;
        let node = first.node;
        if node.is_empty() {
            return Err(Status::invalid_argument("node is required"));
        }
        let Session { mut output, input } = self
            .tunnels
            .open(
                &node,
                pb::node_call::Call::ImportImage(pb::ImportImageCall {
                    file_name: first.file_name,
                    size: first.size,
                }),
            )
            .await?;
        // The archive goes to the node as it arrives; the node's answer may come early (a
        // failure), which ends the upload.
        let upload = async move {
            'send: {
                if !first.data.is_empty()
                    && input
                        .send(Ok(pb::SessionInput { data: first.data }))
                        .await
                        .is_err()
                {
                    break 'send;
                }
                loop {
                    let sent = match chunks.message().await {
                        Ok(Some(chunk)) => {
                            input.send(Ok(pb::SessionInput { data: chunk.data })).await
                        }
                        // All of it was sent: the input ends cleanly.
                        Ok(None) => break 'send,
                        Err(error) => {
                            let _ = input
                                .send(Err(Status::aborted(format!(
                                    "the upload was cut off: {}",
                                    error.message()
                                ))))
                                .await;
                            break 'send;
                        }
                    };
                    if sent.is_err() {
                        break 'send;
                    }
                }
            }
            drop(input);
            std::future::pending::<std::convert::Infallible>().await
        };
        let answer = async {
            loop {
                match output.message().await {
                    Ok(Some(pb::SessionOutput {
                        output: Some(pb::session_output::Output::Imported(imported)),
                        ..
                    })) => return Ok(imported),
                    Ok(Some(pb::SessionOutput {
                        output: Some(pb::session_output::Output::Failure(failure)),
                        ..
                    })) => return Err(failure_status(&node, &failure)),
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(Status::unavailable(format!(
                            "node {node:?}: its gannetd ended the import without an answer"
                        )));
                    }
                    Err(error) => {
                        return Err(Status::unavailable(format!(
                            "node {node:?}: {}",
                            error.message()
                        )));
                    }
                }
            }
        };
        let imported = tokio::select! {
            answer = answer => answer,
            never = upload => match never {},
        }?;
        tracing::info!(node, images = imported.images.join(","), "image imported");
        Ok(Response::new(imported))
    }
}

#[tonic::async_trait]
impl pb::node_proxy_server::NodeProxy for Api {
    type LogsStream = LogsStream;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let began = std::time::Instant::now();
        self.observed("Logs", began, self.logs_call(request).await)
    }

    async fn import_image(
        &self,
        request: Request<Streaming<pb::ImportImageRequest>>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        let began = std::time::Instant::now();
        self.observed("ImportImage", began, self.import_image_call(request).await)
    }
}
