//! The Kubernetes objects gannet-control serves, and their protobuf framing.

use std::fmt;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::pb;

/// The namespace of a namespaced object that does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A kind gannet-control serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Node,
    Lease,
}

impl Kind {
    pub const ALL: [Self; 5] = [
        Self::Service,
        Self::EndpointSlice,
        Self::Pod,
        Self::Node,
        Self::Lease,
    ];

    /// `Service`, `EndpointSlice`, ...
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Pod => "Pod",
            Self::Node => "Node",
            Self::Lease => "Lease",
        }
    }

    /// `v1`, `discovery.k8s.io/v1` or `coordination.k8s.io/v1`.
    #[must_use]
    pub fn api_version(self) -> &'static str {
        match self {
            Self::EndpointSlice => "discovery.k8s.io/v1",
            Self::Lease => "coordination.k8s.io/v1",
            Self::Service | Self::Pod | Self::Node => "v1",
        }
    }

    /// `services`, `endpointslices`, ...: the resource name, also used in store keys.
    #[must_use]
    pub fn plural(self) -> &'static str {
        match self {
            Self::Service => "services",
            Self::EndpointSlice => "endpointslices",
            Self::Pod => "pods",
            Self::Node => "nodes",
            Self::Lease => "leases",
        }
    }

    /// Whether objects of this kind live in a namespace (all but Nodes).
    #[must_use]
    pub fn namespaced(self) -> bool {
        self != Self::Node
    }

    /// The kind a command line names, as kubectl accepts it: `service`, `services`, `svc`,
    /// `endpointslice(s)`, `eps`, `pod(s)`, `po`, `node(s)`, `no`, `lease(s)`, in any case.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let lower = text.to_ascii_lowercase();
        let kind = match lower.as_str() {
            "service" | "services" | "svc" => Self::Service,
            "endpointslice" | "endpointslices" | "eps" => Self::EndpointSlice,
            "pod" | "pods" | "po" => Self::Pod,
            "node" | "nodes" | "no" => Self::Node,
            "lease" | "leases" => Self::Lease,
            _ => return None,
        };
        Some(kind)
    }

    /// The kind of a manifest's `apiVersion` and `kind`.
    #[must_use]
    pub fn from_type(api_version: &str, kind: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|candidate| candidate.api_version() == api_version && candidate.name() == kind)
    }

    #[must_use]
    pub fn to_pb(self) -> pb::Kind {
        match self {
            Self::Service => pb::Kind::Service,
            Self::EndpointSlice => pb::Kind::EndpointSlice,
            Self::Pod => pb::Kind::Pod,
            Self::Node => pb::Kind::Node,
            Self::Lease => pb::Kind::Lease,
        }
    }

    /// The kind of a protobuf enum value; `None` for unspecified or unknown values.
    #[must_use]
    pub fn from_pb(value: i32) -> Option<Self> {
        match pb::Kind::try_from(value).ok()? {
            pb::Kind::Unspecified => None,
            pb::Kind::Service => Some(Self::Service),
            pb::Kind::EndpointSlice => Some(Self::EndpointSlice),
            pb::Kind::Pod => Some(Self::Pod),
            pb::Kind::Node => Some(Self::Node),
            pb::Kind::Lease => Some(Self::Lease),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An object that cannot be turned into (or out of) its protobuf framing.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("unknown or unspecified kind {0}")]
    UnknownKind(i32),
    #[error("{kind}: {}{message}", field.as_ref().map(|field| format!("{field}: ")).unwrap_or_default())]
    Json {
        kind: Kind,
        field: Option<String>,
        message: String,
    },
    #[error("{kind} cannot be encoded as JSON: {source}")]
    Encode {
        kind: Kind,
        source: serde_json::Error,
    },
}

/// One object of a kind gannet-control serves.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Pod(Box<Pod>),
    Node(Box<Node>),
    Lease(Box<Lease>),
}

impl Object {
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::Pod(_) => Kind::Pod,
            Self::Node(_) => Kind::Node,
            Self::Lease(_) => Kind::Lease,
        }
    }

    #[must_use]
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Service(object) => &object.metadata,
            Self::EndpointSlice(object) => &object.metadata,
            Self::Pod(object) => &object.metadata,
            Self::Node(object) => &object.metadata,
            Self::Lease(object) => &object.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Service(object) => &mut object.metadata,
            Self::EndpointSlice(object) => &mut object.metadata,
            Self::Pod(object) => &mut object.metadata,
            Self::Node(object) => &mut object.metadata,
            Self::Lease(object) => &mut object.metadata,
        }
    }

    /// The object's name; `""` when unset.
    #[must_use]
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// The object's namespace, [`DEFAULT_NAMESPACE`] when unset; `""` for Nodes.
    #[must_use]
    pub fn namespace(&self) -> &str {
        if !self.kind().namespaced() {
            return "";
        }
        self.metadata()
            .namespace
            .as_deref()
            .filter(|namespace| !namespace.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// `metadata.resourceVersion` as a revision; `None` when unset or not a number.
    #[must_use]
    pub fn resource_version(&self) -> Option<u64> {
        self.metadata().resource_version.as_deref()?.parse().ok()
    }

    /// `Service default/web`, `Node node-1`.
    #[must_use]
    pub fn label(&self) -> String {
        object_label(self.kind(), self.namespace(), self.name())
    }

    /// The JSON encoding, `apiVersion` and `kind` included.
    ///
    /// # Errors
    /// Only if an object holds something JSON cannot encode (k8s-openapi types always can).
    pub fn to_json(&self) -> Result<Vec<u8>, ConvertError> {
        let kind = self.kind();
        let encoded = match self {
            Self::Service(object) => serde_json::to_vec(object),
            Self::EndpointSlice(object) => serde_json::to_vec(object),
            Self::Pod(object) => serde_json::to_vec(object),
            Self::Node(object) => serde_json::to_vec(object),
            Self::Lease(object) => serde_json::to_vec(object),
        };
        encoded.map_err(|source| ConvertError::Encode { kind, source })
    }

    /// Decodes the JSON encoding of an object of `kind`; errors name the field.
    ///
    /// # Errors
    /// If the JSON is not an object of that kind.
    pub fn from_json(kind: Kind, json: &[u8]) -> Result<Self, ConvertError> {
        fn decode<T: for<'de> serde::Deserialize<'de>>(
            kind: Kind,
            json: &[u8],
        ) -> Result<Box<T>, ConvertError> {
            let mut deserializer = serde_json::Deserializer::from_slice(json);
            serde_path_to_error::deserialize(&mut deserializer)
                .map(Box::new)
                .map_err(|error| {
                    let path = error.path().to_string();
                    ConvertError::Json {
                        kind,
                        field: (path != ".").then_some(path),
                        message: error.into_inner().to_string(),
                    }
                })
        }
        Ok(match kind {
            Kind::Service => Self::Service(decode(kind, json)?),
            Kind::EndpointSlice => Self::EndpointSlice(decode(kind, json)?),
            Kind::Pod => Self::Pod(decode(kind, json)?),
            Kind::Node => Self::Node(decode(kind, json)?),
            Kind::Lease => Self::Lease(decode(kind, json)?),
        })
    }

    /// The protobuf framing: kind and JSON.
    ///
    /// # Errors
    /// See [`Object::to_json`].
    pub fn to_pb(&self) -> Result<pb::Object, ConvertError> {
        Ok(pb::Object {
            kind: self.kind().to_pb().into(),
            json: self.to_json()?,
        })
    }

    /// # Errors
    /// If the kind is unknown or the JSON is not an object of that kind.
    pub fn from_pb(object: &pb::Object) -> Result<Self, ConvertError> {
        let kind = Kind::from_pb(object.kind).ok_or(ConvertError::UnknownKind(object.kind))?;
        Self::from_json(kind, &object.json)
    }
}

/// `Service default/web`; `Node node-1` (no namespace for cluster-scoped kinds).
#[must_use]
pub fn object_label(kind: Kind, namespace: &str, name: &str) -> String {
    if kind.namespaced() {
        let namespace = if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        format!("{kind} {namespace}/{name}")
    } else {
        format!("{kind} {name}")
    }
}

/// A Kubernetes type that is one of the kinds gannet-control serves.
pub trait Typed: Sized {
    const KIND: Kind;
    fn into_object(self) -> Object;
    /// `None` when the object is of another kind.
    fn from_object(object: Object) -> Option<Self>;
}

macro_rules! typed {
    ($type:ty, $variant:ident) => {
        impl Typed for $type {
            const KIND: Kind = Kind::$variant;
            fn into_object(self) -> Object {
                Object::$variant(Box::new(self))
            }
            fn from_object(object: Object) -> Option<Self> {
                match object {
                    Object::$variant(inner) => Some(*inner),
                    _ => None,
                }
            }
        }

        impl From<$type> for Object {
            fn from(object: $type) -> Self {
                Object::$variant(Box::new(object))
            }
        }
    };
}

typed!(Service, Service);
typed!(EndpointSlice, EndpointSlice);
typed!(Pod, Pod);
typed!(Node, Node);
typed!(Lease, Lease);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_through_protobuf() {
        let service: Service = serde_json::from_str(
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"shop","resourceVersion":"42"},
                "spec":{"ports":[{"name":"http","port":80,"targetPort":"http"}],"selector":{"app":"web"}}}"#,
        )
        .expect("test Service");
        let object = Object::from(service);
        let framed = object.to_pb().expect("encodes");
        assert_eq!(framed.kind, i32::from(pb::Kind::Service));
        let back = Object::from_pb(&framed).expect("decodes");
        assert_eq!(back, object);
        assert_eq!(back.label(), "Service shop/web");
        assert_eq!(back.resource_version(), Some(42));
        let json: serde_json::Value = serde_json::from_slice(&framed.json).expect("JSON");
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "Service");
    }

    #[test]
    fn decode_errors_name_kind_and_field() {
        let framed = pb::Object {
            kind: pb::Kind::Pod.into(),
            json: br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","ports":[{"containerPort":"x"}]}]}}"#.to_vec(),
        };
        let error = Object::from_pb(&framed).expect_err("containerPort is a string");
        let text = error.to_string();
        assert!(
            text.starts_with("Pod: spec.containers[0].ports[0].containerPort: "),
            "{text}"
        );
        let unknown = pb::Object {
            kind: 0,
            json: Vec::new(),
        };
        assert!(matches!(
            Object::from_pb(&unknown),
            Err(ConvertError::UnknownKind(0))
        ));
    }

    #[test]
    fn kinds_parse_like_kubectl() {
        assert_eq!(Kind::parse("svc"), Some(Kind::Service));
        assert_eq!(Kind::parse("EndpointSlices"), Some(Kind::EndpointSlice));
        assert_eq!(Kind::parse("po"), Some(Kind::Pod));
        assert_eq!(Kind::parse("nodes"), Some(Kind::Node));
        assert_eq!(Kind::parse("leases"), Some(Kind::Lease));
        assert_eq!(
            Kind::from_type("coordination.k8s.io/v1", "Lease"),
            Some(Kind::Lease)
        );
        assert_eq!(Kind::parse("deployment"), None);
        assert_eq!(
            Kind::from_type("discovery.k8s.io/v1", "EndpointSlice"),
            Some(Kind::EndpointSlice)
        );
        assert_eq!(Kind::from_type("v1beta1", "Service"), None);
        for kind in Kind::ALL {
            assert_eq!(Kind::from_pb(kind.to_pb().into()), Some(kind));
        }
    }
}
