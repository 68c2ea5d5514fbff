//! What the calls take and return besides objects.

use super::*;

/// Adds the bearer token to every request.
#[derive(Clone, Debug)]
pub struct Auth {
    pub(super) header: Option<MetadataValue<Ascii>>,
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

pub(super) type Transport = InterceptedService<Channel, Auth>;

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
    pub(super) inner: tonic::Streaming<pb::WatchEvent>,
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
    /// What the node has (`status.capacity`); `None`: not told.
    pub capacity: Option<NodeResources>,
    /// What it offers to pods (`status.allocatable`); `None`: the scheduler places no pods on
    /// it.
    pub allocatable: Option<NodeResources>,
}

/// A node's CPU and memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeResources {
    /// Thousandths of a CPU.
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

impl NodeResources {
    pub(crate) fn to_pb(self) -> crate::pb::NodeResources {
        crate::pb::NodeResources {
            cpu_millicores: self.cpu_millicores,
            memory_bytes: self.memory_bytes,
        }
    }
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
