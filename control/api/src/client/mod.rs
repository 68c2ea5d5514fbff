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
use crate::pb::node_proxy_client::NodeProxyClient;
use crate::pb::nodes_client::NodesClient;
use crate::pb::resources_client::ResourcesClient;
use crate::problem::{Problem, problems_of};

mod addr;
mod calls;
mod error;
mod list_watch;
mod node_proxy;
#[cfg(test)]
mod tests;

pub use self::addr::*;
pub use self::calls::*;
pub use self::error::*;
pub use self::list_watch::*;
pub use self::node_proxy::*;

/// A connection to gannet-control. Cheap to clone; calls on clones share the connection, and a
/// broken connection is re-established by the next call.
#[derive(Clone, Debug)]
pub struct Client {
    resources: ResourcesClient<Transport>,
    nodes: NodesClient<Transport>,
    node_proxy: NodeProxyClient<Transport>,
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
        let nodes = NodesClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let node_proxy = NodeProxyClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Ok(Self {
            resources,
            nodes,
            node_proxy,
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
                capacity: registration.capacity.map(NodeResources::to_pb),
                allocatable: registration.allocatable.map(NodeResources::to_pb),
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

pub(super) fn endpoint(
    server: &ServerAddr,
    credentials: &Credentials,
) -> Result<Endpoint, ClientError> {
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
