//! What gannet-control asks of this node for an administrator elsewhere (`gannetctl logs` of a pod
//! here, `gannetctl image import --node` this node): gannetd keeps an `Attach` stream open to
//! gannet-control and serves each call on a session of its own (`Serve`). The node needs no
//! listening port; see gannet-control's `node_proxy` for the other end.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use gannet_api::pod_logs::{self, Attempt, LogFile};
use gannet_api::{Client, ClientError, Session, pb};
use tokio::task::JoinHandle;
use tonic::Code;
use tracing::{debug, info, warn};

use crate::control::Backoff;

/// How long a finished session waits for gannet-control to take the rest of its output.
const SESSION_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the calls need.
#[derive(Debug)]
pub(crate) struct Node {
    pub client: Client,
    pub name: String,
    /// The pods' log directories.
    pub log_dir: PathBuf,
    /// Where an archive being imported is kept until the runtime has it.
    pub state_dir: PathBuf,
    /// The runtime's CRI endpoint (containerd's socket).
    pub runtime: String,
}

/// Keeps this node attached until aborted; each call runs on its own task.
pub(crate) fn start(node: Node) -> JoinHandle<()> {
    tokio::spawn(attach(Arc::new(node)))
}

async fn attach(node: Arc<Node>) {
    let mut backoff = Backoff::new();
    let mut client = node.client.clone();
    loop {
        let mut calls = match client.connect_node(&node.name).await {
            Ok(calls) => {
                backoff.reset();
                calls
            }
            Err(error) => {
                let delay = backoff.next_delay();
                debug!(%error, ?delay, "attaching to gannet-control failed; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        debug!("attached to gannet-control: reachable for logs and image imports");
        loop {
            match calls.message().await {
                Ok(Some(call)) => {
                    tokio::spawn(serve(Arc::clone(&node), call));
                }
                Ok(None) => break,
                Err(status) => {
                    debug!(%status, "gannet-control ended the attachment; attaching again");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Why a call failed, for the administrator.
struct Failed {
    code: Code,
    message: String,
}

impl Failed {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<std::io::Error> for Failed {
    fn from(error: std::io::Error) -> Self {
        Self::new(Code::Internal, error.to_string())
    }
}

impl From<ClientError> for Failed {
    fn from(error: ClientError) -> Self {
        Self::new(Code::Unavailable, error.to_string())
    }
}

/// The administrator went away: nothing more to send.
struct Gone;

async fn serve(node: Arc<Node>, call: pb::NodeCall) {
    let mut client = node.client.clone();
    let mut session = match client.serve_session(call.session).await {
        Ok(session) => session,
        Err(error) => {
            warn!(%error, session = call.session, "cannot open the session of a call");
            return;
        }
    };
    let result = match call.call {
        Some(pb::node_call::Call::Logs(request)) => logs(&node, &mut session, request).await,
        Some(pb::node_call::Call::ImportImage(request)) => {
            import_image(&node, &mut session, &request).await
        }
        None => Err(Failed::new(
            Code::Unimplemented,
            "a call this gannetd does not know",
        )),
    };
    if let Err(failed) = result {
        let _ = session
            .output
            .send(pb::SessionOutput {
                session: 0,
                output: Some(pb::session_output::Output::Failure(pb::Failure {
                    code: failed.code.into(),
                    message: failed.message,
                })),
            })
            .await;
    }
    // Dropping the response would cancel the stream with what is still queued to send: end the
    // output and wait for gannet-control to end its side once it has it all.
    let Session { output, mut input } = session;
    drop(output);
    let _ = tokio::time::timeout(SESSION_END_TIMEOUT, async {
        while let Ok(Some(_)) = input.message().await {}
    })
    .await;
}

/// A path component from a request: a name, not a way out of the log directory.
fn component<'a>(what: &str, value: &'a str) -> Result<&'a str, Failed> {
    if value.is_empty() || value.contains('/') || value.starts_with('.') {
        return Err(Failed::new(
            Code::InvalidArgument,
            format!("{what} {value:?} is not a name"),
        ));
    }
    Ok(value)
}

async fn logs(node: &Node, session: &mut Session, request: pb::LogsRequest) -> Result<(), Failed> {
    let dir = node.log_dir.join(pod_logs::pod_dir_name(
        component("namespace", &request.namespace)?,
        component("pod", &request.pod)?,
        component("uid", &request.uid)?,
    ));
    let path = dir.join(pod_logs::container_file(
        component("container", &request.container)?,
        request.attempt,
    ));
    let mut file = match LogFile::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failed::new(
                Code::NotFound,
                format!(
                    "no log at {} (container {:?}, attempt {}): the runtime has not written it, \
                     or it was removed with the pod",
                    path.display(),
                    request.container,
                    request.attempt
                ),
            ));
        }
        Err(error) => return Err(error.into()),
    };
    let tail = request
        .tail
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let attempt = Attempt {
        namespace: request.namespace.clone(),
        pod: request.pod.clone(),
        container: request.container.clone(),
        attempt: request.attempt,
    };
    let mut client = node.client.clone();
    let follow = request.follow.then_some((&mut client, &attempt));
    let send = |lines: Vec<String>| {
        let output = session.output.clone();
        async move {
            let data: Vec<u8> = lines.concat().into_bytes();
            output
                .send(pb::SessionOutput {
                    session: 0,
                    output: Some(pb::session_output::Output::Data(data)),
                })
                .await
                .map_err(|_| Sent::Gone(Gone))
        }
    };
    // The administrator going away ends the session's input: stop reading then.
    let caller_gone = async { while let Ok(Some(_)) = session.input.message().await {} };
    tokio::select! {
        result = file.stream(tail, follow, send) => match result {
            Ok(()) | Err(Sent::Gone(_)) => Ok(()),
            Err(Sent::Failed(failed)) => Err(failed),
        },
        () = caller_gone => Ok(()),
    }
}

/// How sending a log failed.
enum Sent {
    Gone(Gone),
    Failed(Failed),
}

impl From<std::io::Error> for Sent {
    fn from(error: std::io::Error) -> Self {
        Self::Failed(error.into())
    }
}

impl From<ClientError> for Sent {
    fn from(error: ClientError) -> Self {
        Self::Failed(error.into())
    }
}

/// Removes the archive once imported (or not).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn import_image(
    node: &Node,
    session: &mut Session,
    request: &pb::ImportImageCall,
) -> Result<(), Failed> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::fs::create_dir_all(&node.state_dir)?;
    let temp = TempFile(
        node.state_dir
            .join(format!(".import-{}-{number}.tar", std::process::id())),
    );
    let mut file = std::fs::File::create(&temp.0)?;
    let mut size = 0u64;
    loop {
        match session.input.message().await {
            Ok(Some(chunk)) => {
                size += chunk.data.len() as u64;
                file.write_all(&chunk.data)?;
            }
            Ok(None) => break,
            Err(status) => {
                return Err(Failed::new(
                    Code::Aborted,
                    format!("{}: {}", request.file_name, status.message()),
                ));
            }
        }
    }
    if size != request.size {
        return Err(Failed::new(
            Code::Aborted,
            format!(
                "{}: {size} of its {} bytes arrived",
                request.file_name, request.size
            ),
        ));
    }
    file.sync_all()?;
    drop(file);
    let images = super::image::import(&node.runtime, &temp.0)
        .await
        .map_err(|error| {
            let message = error
                .to_string()
                .replace(&temp.0.display().to_string(), &request.file_name);
            let code = match error {
                super::KubeletError::Archive { .. } => Code::InvalidArgument,
                _ => Code::Unavailable,
            };
            Failed::new(code, message)
        })?;
    info!(
        file = request.file_name,
        bytes = size,
        images = images.join(","),
        "image imported for gannet-control"
    );
    session
        .output
        .send(pb::SessionOutput {
            session: 0,
            output: Some(pb::session_output::Output::Imported(
                pb::ImportImageResponse { images },
            )),
        })
        .await
        .map_err(|_| Failed::new(Code::Unavailable, "the session closed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_cannot_leave_the_log_directory() {
        for bad in ["", "..", "../x", "a/b", ".hidden"] {
            assert!(component("pod", bad).is_err(), "{bad:?}");
        }
        assert_eq!(component("pod", "web-1").ok(), Some("web-1"));
    }
}
