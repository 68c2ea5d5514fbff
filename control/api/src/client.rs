//! A client of gannet-control: connection (unix socket, TLS, or plain loopback TCP), one method per
//! RPC, and [`ListWatch`], the list-then-watch loop an agent runs per kind.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::object::{ConvertError, Kind, Object};
use crate::pb;
use crate::pb::nodes_client::NodesClient;
use crate::pb::resources_client::ResourcesClient;
use crate::problem::{Problem, problems_of};

/// The unix socket `gannet-control` listens on and clients use by default.
pub const DEFAULT_SOCKET: &str = "/run/gannet/control.sock";
/// [`DEFAULT_SOCKET`] as an address, the form every binary's `--help` shows.
pub const DEFAULT_SERVER: &str = "unix:/run/gannet/control.sock";
/// The environment variable that names the server when `--server` is not given.
pub const SERVER_ENV: &str = "GANNET_SERVER";
/// Largest message either side accepts (a full list of 10 000 Services is a few MB).
pub const MAX_MESSAGE_SIZE: usize = 256 << 20;

/// Where gannet-control listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    /// `unix:PATH`
    Unix(PathBuf),
    /// `https://HOST:PORT`: TLS, the server's certificate checked against a CA.
    Https { host: String, port: u16 },
    /// `http://HOST:PORT`: plain TCP, only served on loopback with `--insecure`.
    Http { host: String, port: u16 },
}

impl Default for ServerAddr {
    fn default() -> Self {
        Self::Unix(PathBuf::from(DEFAULT_SOCKET))
    }
}

impl FromStr for ServerAddr {
    type Err = ClientError;

    /// `unix:PATH` (also `unix://PATH` and a bare absolute path), `https://HOST:PORT`,
    /// `http://HOST:PORT`; IPv6 hosts in brackets.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ClientError::Address(text.to_owned());
        if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
            .or_else(|| text.starts_with('/').then_some(text))
        {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let host = host.to_owned();
        Ok(if tls {
            Self::Https { host, port }
        } else {
            Self::Http { host, port }
        })
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host_port = |f: &mut fmt::Formatter<'_>, scheme: &str, host: &str, port: u16| {
            if host.contains(':') {
                write!(f, "{scheme}://[{host}]:{port}")
            } else {
                write!(f, "{scheme}://{host}:{port}")
            }
        };
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Https { host, port } => host_port(f, "https", host, *port),
            Self::Http { host, port } => host_port(f, "http", host, *port),
        }
    }
}

/// What a client presents and trusts on TLS connections; ignored on unix sockets.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// PEM of the CA that signed the server's certificate (`ca.pem` of `gannet-control certs`).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and key: how agents authenticate (`agent.pem`, `agent-key.pem`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Bearer token: how gannetctl authenticates (`token`). Sent on TLS connections only.
    pub token: Option<String>,
    /// The name to check the server certificate against; default: the host of the address.
    pub server_name: Option<String>,
}

/// Errors of [`Client`] calls. Status codes of the API map to the variants documented in the
/// `.proto` file.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "invalid server address {0:?}: use unix:PATH, https://HOST:PORT, or http://HOST:PORT \
         (a loopback server started with --insecure)"
    )]
    Address(String),
    /// Its message carries the causes of `source` (each once); [`chain`] and `anyhow`'s `{:#}`
    /// do not repeat them.
    #[error("cannot connect to {server}: {}", causes(source))]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid TLS credentials: {0}")]
    Tls(String),
    /// `INVALID_ARGUMENT`: nothing was applied.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
    /// `ABORTED`: a stale `resourceVersion`.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The server's message says what was not found (`Service default/web not found`).
    #[error("{}", not_found(.0))]
    NotFound(String),
    /// `OUT_OF_RANGE`: the watch revision was compacted; list again.
    #[error("expired, list again: {0}")]
    Expired(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server or its store cannot be reached; retry with backoff.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Box<Status>),
    #[error("bad object from the server: {0}")]
    Convert(#[from] ConvertError),
    #[error("the server ended the watch")]
    WatchEnded,
}

/// `error` and its causes, `: `-separated, each told once: tonic and hyper wrap an error in
/// layers that repeat their source's message (`transport error: transport error: No such file or
/// directory (os error 2): No such file or directory (os error 2)`); a cause whose text an
/// earlier message already holds is left out.
#[must_use]
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        push_cause(&mut parts, error.to_string());
        next = error.source();
    }
    parts.join(": ")
}

/// The causes below a connection error, without tonic's uninformative `transport error`.
fn causes(source: &tonic::transport::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(source);
    while let Some(error) = next {
        push_cause(&mut parts, error.to_string());
        next = error.source();
    }
    if parts.is_empty() {
        source.to_string()
    } else {
        parts.join(": ")
    }
}

fn push_cause(parts: &mut Vec<String>, text: String) {
    let said = |t: &str| parts.iter().any(|p| p.contains(t));
    if text.is_empty() || text == "transport error" && !parts.is_empty() || said(&text) {
        return;
    }
    parts.push(text);
}

fn not_found(message: &str) -> String {
    if message.contains("not found") {
        message.to_owned()
    } else {
        format!("not found: {message}")
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl ClientError {
    /// Whether trying again later (with backoff, maybe after reconnecting) can succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Unavailable(_) | Self::WatchEnded
        ) || matches!(self, Self::Status(status) if matches!(status.code(), Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded | Code::ResourceExhausted))
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => Self::Invalid(problems_of(&status)),
            Code::Aborted => Self::Conflict(message),
            Code::NotFound => Self::NotFound(message),
            Code::OutOfRange => Self::Expired(message),
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::Unavailable => Self::Unavailable(message),
            _ => Self::Status(Box::new(status)),
        }
    }
}

/// Adds the bearer token to every request.
#[derive(Clone, Debug)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

type Transport = InterceptedService<Channel, Auth>;

/// The result of [`Client::apply`].
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The objects as stored, in request order, each with what happened to it.
    pub objects: Vec<(Object, Outcome)>,
    pub revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    /// kubectl's word: `created`, `configured`, `unchanged`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

/// The objects of a kind and the revision to watch from.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectList {
    pub items: Vec<Object>,
    pub revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    /// The object is its last state.
    Deleted,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvent {
    pub kind: EventType,
    pub object: Object,
    pub revision: u64,
    /// The last event of its revision (see the `.proto`).
    pub last_of_revision: bool,
}

/// The events of one [`Client::watch`].
#[derive(Debug)]
pub struct WatchStream {
    inner: tonic::Streaming<pb::WatchEvent>,
}

impl WatchStream {
    /// The next event; `Ok(None)` when the server closed the stream.
    ///
    /// # Errors
    /// [`ClientError::Expired`] when the watch fell behind compaction; transport errors.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        let Some(event) = self.inner.message().await? else {
            return Ok(None);
        };
        let kind = match pb::EventType::try_from(event.r#type) {
            Ok(pb::EventType::Added) => EventType::Added,
            Ok(pb::EventType::Deleted) => EventType::Deleted,
            _ => EventType::Modified,
        };
        let object = event.object.as_ref().ok_or_else(|| {
            ClientError::Status(Box::new(Status::internal("event without object")))
        })?;
        Ok(Some(WatchEvent {
            kind,
            object: Object::from_pb(object)?,
            revision: event.revision,
            last_of_revision: event.last_of_revision,
        }))
    }
}

/// Options of [`Client::delete`].
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// Delete only if this is still the object's revision.
    pub resource_version: Option<u64>,
    /// Pods: mark terminating and remove after this many seconds.
    pub grace_period_seconds: Option<i64>,
}

/// What an agent tells about its node when it registers.
#[derive(Clone, Debug, Default)]
pub struct NodeRegistration {
    pub name: String,
    pub internal_ips: Vec<IpAddr>,
    /// The VXLAN device's MAC address, `aa:bb:cc:dd:ee:ff`.
    pub vtep_mac: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The answer to a registration.
#[derive(Clone, Debug)]
pub struct Registered {
    pub node: Node,
    /// One per family of the cluster CIDR, e.g. `10.244.3.0/24`.
    pub pod_cidrs: Vec<String>,
    pub heartbeat_interval: Duration,
    /// The cluster's pod networks, e.g. `10.244.0.0/16` (empty from an older gannet-control).
    pub cluster_cidrs: Vec<String>,
}

/// A connection to gannet-control. Cheap to clone; calls on clones share the connection, and a
/// broken connection is re-established by the next call.
#[derive(Clone, Debug)]
pub struct Client {
    resources: ResourcesClient<Transport>,
    nodes: NodesClient<Transport>,
    server: ServerAddr,
}

impl Client {
    /// Connects to `server` (and fails at once if it cannot).
    ///
    /// # Errors
    /// If the credentials are unusable or the server cannot be reached.
    pub async fn connect(
        server: &ServerAddr,
        credentials: &Credentials,
    ) -> Result<Self, ClientError> {
        let endpoint = endpoint(server, credentials)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                server: server.to_string(),
                source,
            })?;
        Self::with_channel(server, credentials, channel)
    }

    /// A client that connects on first use (and reconnects after failures): for agents, which
    /// start before the control plane may be up.
    ///
    /// # Errors
    /// If the credentials are unusable.
    pub fn lazy(server: &ServerAddr, credentials: &Credentials) -> Result<Self, ClientError> {
        let channel = endpoint(server, credentials)?.connect_lazy();
        Self::with_channel(server, credentials, channel)
    }

    fn with_channel(
        server: &ServerAddr,
        credentials: &Credentials,
        channel: Channel,
    ) -> Result<Self, ClientError> {
        let header = match (&credentials.token, server) {
            (Some(token), ServerAddr::Https { .. }) => Some(
                format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| ClientError::Tls("the token is not printable ASCII".to_owned()))?,
            ),
            _ => None,
        };
        let auth = Auth { header };
        let resources = ResourcesClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let nodes = NodesClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Ok(Self {
            resources,
            nodes,
            server: server.clone(),
        })
    }

    #[must_use]
    pub fn server(&self) -> &ServerAddr {
        &self.server
    }

    /// Creates or updates `objects`, all or none.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] with every problem of every object; [`ClientError::Conflict`] for
    /// a stale `metadata.resourceVersion`.
    pub async fn apply(
        &mut self,
        objects: &[Object],
        dry_run: bool,
    ) -> Result<Applied, ClientError> {
        let objects = objects
            .iter()
            .map(Object::to_pb)
            .collect::<Result<Vec<_>, _>>()?;
        let response = self
            .resources
            .apply(pb::ApplyRequest { objects, dry_run })
            .await?
            .into_inner();
        let mut applied = Vec::with_capacity(response.objects.len());
        for (i, object) in response.objects.iter().enumerate() {
            let outcome = match response
                .outcomes
                .get(i)
                .and_then(|outcome| pb::Outcome::try_from(*outcome).ok())
            {
                Some(pb::Outcome::Created) => Outcome::Created,
                Some(pb::Outcome::Unchanged) => Outcome::Unchanged,
                _ => Outcome::Configured,
            };
            applied.push((Object::from_pb(object)?, outcome));
        }
        Ok(Applied {
            objects: applied,
            revision: response.revision,
        })
    }

    /// One object; `namespace` is ignored for Nodes and defaults to `default`.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] when it does not exist.
    pub async fn get(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Object, ClientError> {
        let response = self
            .resources
            .get(pb::GetRequest {
                kind: kind.to_pb().into(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        let object = response
            .object
            .ok_or_else(|| ClientError::NotFound(format!("{kind} {name}")))?;
        Ok(Object::from_pb(&object)?)
    }

    /// Every object of `kind` (in `namespace`, or all), and the revision to watch from.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn list(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<ObjectList, ClientError> {
        let (items, revision) = self.list_encoded(kind, namespace).await?;
        let items = items
            .iter()
            .map(Object::from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ObjectList { items, revision })
    }

    async fn list_encoded(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<pb::Object>, u64), ClientError> {
        let response = self
            .resources
            .list(pb::ListRequest {
                kind: kind.to_pb().into(),
                namespace: namespace.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
        Ok((response.items, response.revision))
    }

    /// The changes to objects of `kind` after `revision` (0: from now on).
    ///
    /// # Errors
    /// [`ClientError::Expired`] when `revision` was compacted away: list again.
    pub async fn watch(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        revision: u64,
    ) -> Result<WatchStream, ClientError> {
        let inner = self
            .resources
            .watch(pb::WatchRequest {
                kind: kind.to_pb().into(),
                namespace: namespace.unwrap_or_default().to_owned(),
                revision,
            })
            .await?
            .into_inner();
        Ok(WatchStream { inner })
    }

    /// Deletes an object and returns its last state (a Pod with a grace period: its terminating
    /// state).
    ///
    /// # Errors
    /// [`ClientError::NotFound`], [`ClientError::Conflict`].
    pub async fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Object, ClientError> {
        let response = self
            .resources
            .delete(pb::DeleteRequest {
                kind: kind.to_pb().into(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                resource_version: options
                    .resource_version
                    .map(|revision| revision.to_string())
                    .unwrap_or_default(),
                grace_period_seconds: options.grace_period_seconds,
            })
            .await?
            .into_inner();
        let object = response
            .object
            .ok_or_else(|| ClientError::NotFound(format!("{kind} {name}")))?;
        Ok(Object::from_pb(&object)?)
    }

    /// Replaces the status of a Pod, Service or Node (e.g. the pod IPs an agent's CNI plugin
    /// assigned), leaving its spec alone; `metadata.resourceVersion`, when set, is a precondition.
    ///
    /// # Errors
    /// [`ClientError::NotFound`], [`ClientError::Invalid`], [`ClientError::Conflict`].
    pub async fn update_status(&mut self, object: &Object) -> Result<Object, ClientError> {
        let response = self
            .resources
            .update_status(pb::UpdateStatusRequest {
                object: Some(object.to_pb()?),
            })
            .await?
            .into_inner();
        let object = response
            .object
            .ok_or_else(|| ClientError::Status(Box::new(Status::internal("no object returned"))))?;
        Ok(Object::from_pb(&object)?)
    }

    /// Registers (or re-registers) a node and returns its pod CIDR lease.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad name, address or MAC; [`ClientError::Unavailable`] when
    /// the cluster CIDR is exhausted.
    pub async fn register_node(
        &mut self,
        registration: &NodeRegistration,
    ) -> Result<Registered, ClientError> {
        let response = self
            .nodes
            .register(pb::RegisterRequest {
                name: registration.name.clone(),
                internal_ips: registration
                    .internal_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                vtep_mac: registration.vtep_mac.clone().unwrap_or_default(),
                labels: registration.labels.clone().into_iter().collect(),
            })
            .await?
            .into_inner();
        let object = response
            .node
            .ok_or_else(|| ClientError::Status(Box::new(Status::internal("no node returned"))))?;
        let Object::Node(node) = Object::from_pb(&object)? else {
            return Err(ClientError::Status(Box::new(Status::internal(
                "register returned another kind",
            ))));
        };
        Ok(Registered {
            node: *node,
            pod_cidrs: response.pod_cidrs,
            cluster_cidrs: response.cluster_cidrs,
            heartbeat_interval: Duration::from_secs(u64::from(
                response.heartbeat_interval_seconds.max(1),
            )),
        })
    }

    /// Keeps the node Ready; returns its pod CIDRs.
    ///
    /// # Errors
    /// [`ClientError::NotFound`] when the node must register again.
    pub async fn heartbeat(&mut self, name: &str) -> Result<Vec<String>, ClientError> {
        let response = self
            .nodes
            .heartbeat(pb::HeartbeatRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        Ok(response.pod_cidrs)
    }
}

fn endpoint(server: &ServerAddr, credentials: &Credentials) -> Result<Endpoint, ClientError> {
    let uri = match server {
        ServerAddr::Unix(path) => format!("unix:{}", path.display()),
        other => other.to_string(),
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|_| ClientError::Address(server.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let ServerAddr::Https { host, .. } = server {
        let mut tls = ClientTlsConfig::new().domain_name(
            credentials
                .server_name
                .clone()
                .unwrap_or_else(|| host.clone()),
        );
        match &credentials.ca_pem {
            Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(ca)),
            None => {
                return Err(ClientError::Tls(
                    "an https server needs the CA certificate (gannet-control certs writes ca.pem)"
                        .to_owned(),
                ));
            }
        }
        if let Some((cert, key)) = &credentials.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| ClientError::Tls(error.to_string()))?;
    }
    Ok(endpoint)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_tells_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Layer(&'static str, #[source] Option<Box<Layer>>);
        let io = Layer("No such file or directory (os error 2)", None);
        let error = Layer(
            "transport error",
            Some(Box::new(Layer(
                "transport error",
                Some(Box::new(Layer(
                    "No such file or directory (os error 2)",
                    Some(Box::new(io)),
                ))),
            ))),
        );
        assert_eq!(
            chain(&error),
            "transport error: No such file or directory (os error 2)"
        );
        assert_eq!(
            ClientError::NotFound("Service default/missing not found".to_owned()).to_string(),
            "Service default/missing not found"
        );
    }

    #[test]
    fn the_default_server_is_the_default_socket() {
        assert_eq!(
            DEFAULT_SERVER.parse::<ServerAddr>().expect("parses"),
            ServerAddr::default()
        );
    }

    #[test]
    fn server_addresses_parse_and_print() {
        let cases = [
            (
                "unix:/run/gannet/control.sock",
                "unix:/run/gannet/control.sock",
            ),
            ("unix:///tmp/a.sock", "unix:/tmp/a.sock"),
            ("/tmp/b.sock", "unix:/tmp/b.sock"),
            ("https://cp.example:6443", "https://cp.example:6443"),
            ("https://[::1]:6443/", "https://[::1]:6443"),
            ("http://127.0.0.1:7000", "http://127.0.0.1:7000"),
        ];
        for (text, printed) in cases {
            let addr: ServerAddr = text
                .parse()
                .unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(addr.to_string(), printed, "{text}");
        }
        for bad in [
            "",
            "unix:",
            "tcp://a:1",
            "https://host",
            "https://:1",
            "http://a:99999",
        ] {
            assert!(bad.parse::<ServerAddr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn statuses_map_to_errors() {
        assert!(matches!(
            ClientError::from(Status::out_of_range("compacted")),
            ClientError::Expired(_)
        ));
        assert!(matches!(
            ClientError::from(Status::aborted("stale")),
            ClientError::Conflict(_)
        ));
        assert!(ClientError::from(Status::unavailable("down")).is_transient());
        assert!(!ClientError::from(Status::not_found("x")).is_transient());
    }
}
