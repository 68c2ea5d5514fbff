//! Reaching a node's gannetd through gannet-control (`NodeProxy`), from both ends: an
//! administrator's calls ([`Client::logs`], [`Client::import_image`]) and gannetd's side
//! ([`Client::connect_node`], [`Client::serve_session`]).

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

/// The size of the pieces an image archive is sent in.
pub const IMAGE_CHUNK: usize = 1 << 20;

/// gannetd's end of one session: what it sends ([`pb::SessionOutput`]s after the first) and the
/// call's input.
#[derive(Debug)]
pub struct Session {
    pub output: mpsc::Sender<pb::SessionOutput>,
    pub input: tonic::Streaming<pb::SessionInput>,
}

impl Client {
    /// The log lines of a container attempt on its node, as the runtime wrote them (CRI log
    /// format), in pieces of whole lines.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the pod's node's gannetd is not connected;
    /// [`ClientError::NotFound`] when the pod, or its log, is not there.
    pub async fn logs(
        &mut self,
        request: pb::LogsRequest,
    ) -> Result<tonic::Streaming<pb::LogsChunk>, ClientError> {
        Ok(self.node_proxy.logs(request).await?.into_inner())
    }

    /// Sends an OCI archive, `chunks` of it, to `node`'s runtime and returns the images imported.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when the node's gannetd is not connected; what the node
    /// reports about the archive.
    /// The node refuses an archive whose chunks add up to less than `size`.
    pub async fn import_image(
        &mut self,
        node: &str,
        file_name: &str,
        size: u64,
        chunks: impl Stream<Item = Vec<u8>> + Send + 'static,
    ) -> Result<Vec<String>, ClientError> {
        use tokio_stream::StreamExt as _;
        let first = pb::ImportImageRequest {
            node: node.to_owned(),
            file_name: file_name.to_owned(),
            data: Vec::new(),
            size,
        };
        let rest = chunks.map(|data| pb::ImportImageRequest {
            data,
            ..Default::default()
        });
        let requests = tokio_stream::once(first).chain(rest);
        Ok(self
            .node_proxy
            .import_image(requests)
            .await?
            .into_inner()
            .images)
    }

    /// gannetd's standing connection for `node`: the calls gannet-control makes of it, until the
    /// stream ends (reconnect then).
    ///
    /// # Errors
    /// Transport errors.
    pub async fn connect_node(
        &mut self,
        node: &str,
    ) -> Result<tonic::Streaming<pb::NodeCall>, ClientError> {
        Ok(self
            .nodes
            .attach(pb::AttachRequest {
                node: node.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Opens the session a [`pb::NodeCall`] named.
    ///
    /// # Errors
    /// Transport errors; [`ClientError::NotFound`] when gannet-control no longer waits for it.
    pub async fn serve_session(&mut self, session: u64) -> Result<Session, ClientError> {
        let (output, receiver) = mpsc::channel(4);
        output
            .send(pb::SessionOutput {
                session,
                output: None,
            })
            .await
            .map_err(|_| ClientError::Unavailable("the session's sender closed".to_owned()))?;
        let input = self
            .nodes
            .serve(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        Ok(Session { output, input })
    }
}
