//! Start-up: the registry over a store, the controllers (endpoints, scheduler, node lifecycle),
//! and one gRPC server per listener.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use gannet_api::MAX_MESSAGE_SIZE;
use gannet_api::pb::node_proxy_server::NodeProxyServer;
use gannet_api::pb::nodes_server::NodesServer;
use gannet_api::pb::resources_server::ResourcesServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::controller::{endpoints, nodes, scheduler};
use crate::grpc::{Api, Authenticator};
use crate::metrics::{MeteredStore, Metrics};
use crate::registry::{Network, Registry};
use crate::store::{Store, run_compactor};

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `unix:PATH`
    Unix(PathBuf),
    /// `HOST:PORT`: TLS, or plain with `--insecure` (loopback only).
    Tcp(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
        {
            if path.is_empty() || !path.starts_with('/') {
                return Err(format!(
                    "{text:?}: the socket path must be absolute (unix:/run/gannet/control.sock)"
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>().map(Self::Tcp).map_err(|_| {
            format!("{text:?} is neither unix:PATH nor HOST:PORT with an IP address (e.g. 0.0.0.0:6443, [::1]:6443)")
        })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// What TLS listeners present and check.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Client certificates (agents) must be signed by this CA.
    pub client_ca_pem: Vec<u8>,
    /// gannetctl's bearer token; `None`: only agents can call.
    pub token: Option<String>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

/// Everything [`start`] needs besides the store.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: Vec<Listen>,
    /// TCP listeners serve plain gRPC (only allowed on loopback; checked by the config).
    pub insecure: bool,
    pub tls: Option<TlsMaterial>,
    /// Mode of unix sockets, e.g. 0o660.
    pub socket_mode: u32,
    pub network: Network,
    pub heartbeat_interval: Duration,
    pub lifecycle: nodes::Lifecycle,
    /// Compact every `.0`, keeping the last `.1` revisions; `None`: never.
    pub compaction: Option<(Duration, u64)>,
    /// Where metrics are served (`--metrics-address`); `None`: nowhere.
    pub metrics_address: Option<SocketAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            insecure: false,
            tls: None,
            socket_mode: 0o660,
            network: Network::default(),
            heartbeat_interval: Duration::from_secs(10),
            lifecycle: nodes::Lifecycle::default(),
            compaction: Some((Duration::from_secs(60), 10_000)),
            metrics_address: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listen {listen}: {message}")]
    Listen { listen: String, message: String },
    #[error(
        "listen {listen}: a TCP listener needs TLS material (gannet-control certs), or --insecure on loopback"
    )]
    NoTls { listen: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "--metrics-address {address}: cannot listen: {source}; give another address (port 0: \
         any free port), or an empty value to turn metrics off"
    )]
    Metrics {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A listener as bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    Unix(PathBuf),
    Tls(SocketAddr),
    Insecure(SocketAddr),
}

/// A running control plane; dropping it stops everything (and removes its sockets).
#[derive(Debug)]
pub struct ControlPlane {
    registry: Arc<Registry>,
    bound: Vec<Bound>,
    /// Where metrics are served, as bound.
    metrics_bound: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    #[must_use]
    pub fn bound(&self) -> &[Bound] {
        &self.bound
    }

    #[must_use]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Where metrics are served (as bound: port 0 resolved), when they are.
    #[must_use]
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_bound
    }

    /// Stops accepting, lets calls in flight finish for up to `drain`, then stops the
    /// controllers.
    pub async fn shutdown(mut self, drain: Duration) {
        let _ = self.shutdown.send(true);
        let servers = std::mem::take(&mut self.servers);
        let wait = async {
            for server in servers {
                let _ = server.await;
            }
        };
        if tokio::time::timeout(drain, wait).await.is_err() {
            tracing::warn!(
                ?drain,
                "calls still running after the drain timeout; stopping anyway"
            );
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.iter().chain(&self.servers) {
            task.abort();
        }
        for bound in &self.bound {
            if let Bound::Unix(path) = bound {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, String> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err("another server is listening on this socket".to_owned());
        }
        std::fs::remove_file(path)
            .map_err(|error| format!("cannot remove the stale socket: {error}"))?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|error| error.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|error| format!("cannot set the socket's mode: {error}"))?;
    Ok(listener)
}

/// Binds every listener, starts the controllers and serves.
///
/// # Errors
/// When a listener cannot be bound or the TLS material is unusable; nothing keeps running then.
pub async fn start(store: Arc<dyn Store>, options: Options) -> Result<ControlPlane, StartError> {
    // First: an address in use stops the start before anything runs.
    let metrics_listener = match options.metrics_address {
        Some(address) => Some(
            gannet_api::metrics::bind(address)
                .await
                .map_err(|source| StartError::Metrics { address, source })?,
        ),
        None => None,
    };
    let metrics = Metrics::new();
    let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, Arc::clone(&metrics)));
    let registry = Arc::new(Registry::new(
        Arc::clone(&store),
        options.network.clone(),
        options.heartbeat_interval,
        options.lifecycle.grace,
    ));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let api = Api::new(
        Arc::clone(&registry),
        shutdown_rx.clone(),
        Arc::clone(&metrics),
    );
    let mut plane = ControlPlane {
        registry: Arc::clone(&registry),
        bound: Vec::new(),
        metrics_bound: metrics_listener.as_ref().map(|(_, bound)| *bound),
        shutdown,
        servers: Vec::new(),
        tasks: Vec::new(),
    };

    for listen in &options.listen {
        let error = |message: String| StartError::Listen {
            listen: listen.to_string(),
            message,
        };
        let mut builder = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        let (auth, tls) = match listen {
            Listen::Unix(_) => (Authenticator::trusted(), false),
            Listen::Tcp(_) if options.insecure => (Authenticator::trusted(), false),
            Listen::Tcp(_) => {
                let Some(material) = &options.tls else {
                    return Err(StartError::NoTls {
                        listen: listen.to_string(),
                    });
                };
                let config = ServerTlsConfig::new()
                    .identity(Identity::from_pem(&material.cert_pem, &material.key_pem))
                    .client_ca_root(Certificate::from_pem(&material.client_ca_pem))
                    .client_auth_optional(true);
                builder = builder
                    .tls_config(config)
                    .map_err(|e| StartError::Tls(e.to_string()))?;
                (
                    Authenticator::tls(material.token.as_deref()).counting(Arc::clone(&metrics)),
                    true,
                )
            }
        };
        let resources = InterceptedService::new(
            ResourcesServer::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            auth.clone(),
        );
        let nodes_service = InterceptedService::new(
            NodesServer::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            auth.clone(),
        );
        let node_proxy = InterceptedService::new(
            NodeProxyServer::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            auth,
        );
        let router = builder
            .add_service(resources)
            .add_service(nodes_service)
            .add_service(node_proxy);
        let mut stop = shutdown_rx.clone();
        let signal = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        let server = match listen {
            Listen::Unix(path) => {
                let listener = bind_unix(path, options.socket_mode).map_err(error)?;
                plane.bound.push(Bound::Unix(path.clone()));
                tracing::info!(listen = %listen, mode = format!("{:o}", options.socket_mode), "serving on a unix socket");
                let label = listen.to_string();
                tokio::spawn(async move {
                    let incoming = UnixListenerStream::new(listener);
                    if let Err(error) = router.serve_with_incoming_shutdown(incoming, signal).await
                    {
                        tracing::error!(listen = label, %error, "server failed");
                    }
                })
            }
            Listen::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| error(e.to_string()))?;
                let local = listener.local_addr().map_err(|e| error(e.to_string()))?;
                plane.bound.push(if tls {
                    Bound::Tls(local)
                } else {
                    Bound::Insecure(local)
                });
                tracing::info!(listen = %local, tls, "serving on TCP");
                let label = local.to_string();
                tokio::spawn(async move {
                    let incoming = TcpListenerStream::new(listener);
                    if let Err(error) = router.serve_with_incoming_shutdown(incoming, signal).await
                    {
                        tracing::error!(listen = label, %error, "server failed");
                    }
                })
            }
        };
        plane.servers.push(server);
    }

    plane
        .tasks
        .push(tokio::spawn(endpoints::run(Arc::clone(&registry))));
    plane
        .tasks
        .push(tokio::spawn(scheduler::run(Arc::clone(&registry))));
    plane.tasks.push(tokio::spawn(nodes::run(
        Arc::clone(&registry),
        options.lifecycle,
    )));
    if let Some((listener, bound)) = metrics_listener {
        tracing::info!(address = %bound, "serving metrics on http://{bound}/metrics");
        let registry = Arc::clone(&registry);
        let render = move || {
            let registry = Arc::clone(&registry);
            let metrics = Arc::clone(&metrics);
            async move { metrics.render(&registry).await }
        };
        plane
            .tasks
            .push(tokio::spawn(gannet_api::metrics::serve(listener, render)));
    }
    if let Some((interval, keep)) = options.compaction {
        plane.tasks.push(tokio::spawn(run_compactor(
            Arc::clone(&store),
            interval,
            keep,
        )));
    }
    tracing::info!(store = store.backend(), "gannet-control started");
    Ok(plane)
}
