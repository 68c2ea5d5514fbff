//! The container runtime's endpoint (`--container-runtime`) and the CRI v1 client on it: the
//! generated bindings of the `k8s-cri` crate (on the workspace's one tonic, 0.14), over a unix
//! socket.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use super::KubeletError;

/// How long a CRI call may take before it counts as failed (image unpacking in
/// `CreateContainer` and a sandbox's CNI `ADD` are the slow ones).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long connecting (and the first `Version` call) may take at start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `--container-runtime`: a unix socket, written `unix:///path`, `unix:/path` or `/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEndpoint {
    path: PathBuf,
}

impl RuntimeEndpoint {
    /// The socket's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FromStr for RuntimeEndpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let path = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
            .unwrap_or(text);
        if text.contains("://") && !text.starts_with("unix://") {
            return Err(format!(
                "`{text}`: only unix sockets are supported (unix:///run/containerd/containerd.sock)"
            ));
        }
        if !path.starts_with('/') {
            return Err(format!(
                "`{text}`: not an absolute socket path (unix:///run/containerd/containerd.sock)"
            ));
        }
        Ok(Self {
            path: PathBuf::from(path),
        })
    }
}

impl fmt::Display for RuntimeEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix://{}", self.path.display())
    }
}

/// A gRPC channel to a unix socket (the URI is a placeholder: every connection goes to `path`).
///
/// # Errors
/// When the socket cannot be connected to.
pub async fn channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    Endpoint::from_static("http://[::1]:1")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// The CRI's two services on one channel.
#[derive(Clone, Debug)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects and asks the runtime for its version, so that a wrong socket or a runtime
    /// without the CRI plugin stops gannetd at start. Returns the client and what the runtime
    /// says it is.
    ///
    /// # Errors
    /// [`KubeletError::Runtime`] naming the endpoint and what failed.
    pub async fn connect(
        endpoint: &RuntimeEndpoint,
    ) -> Result<(Self, k8s_cri::v1::VersionResponse), KubeletError> {
        let failed = |what: String| KubeletError::Runtime {
            endpoint: endpoint.to_string(),
            what,
        };
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, channel(endpoint.path()))
            .await
            .map_err(|_| failed(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| failed(format!("cannot connect: {}", gannet_api::chain(&e))))?;
        let mut runtime = RuntimeServiceClient::new(channel.clone());
        let version = tokio::time::timeout(
            CONNECT_TIMEOUT,
            runtime.version(k8s_cri::v1::VersionRequest {
                version: "v1".to_owned(),
            }),
        )
        .await
        .map_err(|_| failed(format!("no answer to Version within {CONNECT_TIMEOUT:?}")))?
        .map_err(|status| {
            failed(format!(
                "the CRI v1 Version call failed ({}: {}); is the runtime's CRI plugin enabled?",
                status.code(),
                status.message()
            ))
        })?
        .into_inner();
        let cri = Self {
            runtime,
            images: ImageServiceClient::new(channel),
        };
        Ok((cri, version))
    }
}

/// A CRI call with [`CALL_TIMEOUT`], its error as text naming the call.
pub(super) async fn call<T>(
    name: &str,
    future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!(
            "{name}: {} ({:?})",
            status.message(),
            status.code()
        )),
        Err(_) => Err(format!("{name}: no answer within {CALL_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_sockets() {
        for text in [
            "unix:///run/containerd/containerd.sock",
            "unix:/run/containerd/containerd.sock",
            "/run/containerd/containerd.sock",
        ] {
            let endpoint: RuntimeEndpoint = text.parse().unwrap();
            assert_eq!(
                endpoint.path(),
                Path::new("/run/containerd/containerd.sock")
            );
            assert_eq!(
                endpoint.to_string(),
                "unix:///run/containerd/containerd.sock"
            );
        }
        for bad in ["tcp://1.2.3.4:5", "containerd.sock", "unix://relative"] {
            assert!(bad.parse::<RuntimeEndpoint>().is_err(), "{bad}");
        }
    }
}
