//! Manifest files (YAML or JSON, one or more documents) to Kubernetes objects.

use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{FieldError, ManifestError};
use crate::node::{ClusterNode, check_node};
use crate::validate::{check_service, check_slice, meta_label, object_label};

/// One document of a manifest file.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    /// A `v1 Node`: a node of the cluster, for the overlay.
    Node(Box<ClusterNode>),
    /// A kind gannet has no use for (a Deployment, a `ConfigMap`, ...), kept so callers can count
    /// it.
    Ignored {
        kind: String,
        name: String,
    },
}

/// An object and the 1-based position of its document in the file.
#[derive(Clone, Debug)]
pub(crate) struct Document {
    pub(crate) index: usize,
    pub(crate) object: Object,
}

/// Reads every document of a manifest file.
///
/// Empty documents are skipped. `v1` Services, `v1` Nodes and `discovery.k8s.io/v1` `EndpointSlices` are read
/// and checked with the rules [`desired_state`](crate::desired_state) applies to a single object,
/// so that a file holding an object gannet would refuse fails here, as a whole; any other kind is
/// [`Object::Ignored`]. The errors of every document are collected, except that reading stops at
/// the first YAML error: the parser cannot reliably find the next document after one.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<Object>, Vec<ManifestError>> {
    parse_file(file, text).map(|documents| {
        documents
            .into_iter()
            .map(|document| document.object)
            .collect()
    })
}

pub(crate) fn parse_file(file: &Path, text: &str) -> Result<Vec<Document>, Vec<ManifestError>> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (position, yaml) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = position + 1;
        let error =
            |object: Option<String>, field: Option<String>, message: String| ManifestError {
                file: file.to_owned(),
                document: index,
                object,
                field,
                message,
            };
        let value = match Value::deserialize(yaml) {
            Ok(value) => value,
            Err(yaml_error) => {
                errors.push(error(None, None, format!("invalid YAML: {yaml_error}")));
                break;
            }
        };
        let map = match value {
            Value::Null => continue,
            Value::Object(map) => map,
            other => {
                let found = describe(&other);
                errors.push(error(
                    None,
                    None,
                    format!("a document must be a mapping with apiVersion and kind, found {found}"),
                ));
                continue;
            }
        };
        match parse_object(map) {
            Ok(object) => {
                if let Object::Ignored { kind, name } = &object {
                    let file = file.display();
                    tracing::debug!(%file, document = index, kind, name, "ignoring object");
                }
                documents.push(Document { index, object });
            }
            Err((object, problems)) => errors.extend(
                problems
                    .into_iter()
                    .map(|problem| error(object.clone(), problem.field, problem.message)),
            ),
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

type ObjectErrors = (Option<String>, Vec<FieldError>);

/// Reads `apiVersion` and `kind` first, then the object they announce.
fn parse_object(map: Map<String, Value>) -> Result<Object, ObjectErrors> {
    let api_version = required_string(&map, "apiVersion");
    let kind = required_string(&map, "kind");
    let (api_version, kind) = match (api_version, kind) {
        (Ok(api_version), Ok(kind)) => (api_version, kind),
        (api_version, kind) => {
            let problems = [api_version.err(), kind.err()]
                .into_iter()
                .flatten()
                .collect();
            return Err((None, problems));
        }
    };

    let metadata = map.get("metadata");
    let field = |name| {
        metadata
            .and_then(|metadata| metadata.get(name))
            .and_then(Value::as_str)
    };
    let (namespace, name) = (field("namespace"), field("name"));
    let label = object_label(&kind, namespace, name);

    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => {
            let service: Service = typed(map, &label)?;
            if let Err(problems) = check_service(&service) {
                return Err((Some(meta_label("Service", &service.metadata)), problems));
            }
            Ok(Object::Service(Box::new(service)))
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let slice: EndpointSlice = typed(map, &label)?;
            if let Err(problems) = check_slice(&slice) {
                return Err((Some(meta_label("EndpointSlice", &slice.metadata)), problems));
            }
            Ok(Object::EndpointSlice(Box::new(slice)))
        }
        ("v1", "Node") => {
            // Nodes belong to no namespace.
            let label = format!("Node {}", name.unwrap_or_default());
            let node: Node = typed(map, &label)?;
            match check_node(&node) {
                Ok(checked) => Ok(Object::Node(Box::new(checked))),
                Err(problems) => Err((Some(label), problems)),
            }
        }
        // The core group has only v1, and discovery.k8s.io/v1beta1 was removed in Kubernetes 1.25:
        // these are mistakes worth reporting. A Service of another group (Knative's, say) is a
        // different kind.
        (version, "Service") if !version.contains('/') => Err((
            Some(label),
            vec![FieldError::at(
                "apiVersion",
                format!("{version:?} is not supported for Service: use v1"),
            )],
        )),
        (version, "EndpointSlice") if version.starts_with("discovery.k8s.io/") => Err((
            Some(label),
            vec![FieldError::at(
                "apiVersion",
                format!("{version:?} is not supported for EndpointSlice: use discovery.k8s.io/v1"),
            )],
        )),
        _ => Ok(Object::Ignored {
            kind,
            name: name.unwrap_or_default().to_owned(),
        }),
    }
}

fn required_string(map: &Map<String, Value>, key: &str) -> Result<String, FieldError> {
    match map.get(key) {
        Some(Value::String(value)) if !value.is_empty() => Ok(value.clone()),
        None | Some(Value::Null) => Err(FieldError::at(key, "must be set")),
        Some(Value::String(_)) => Err(FieldError::at(key, "must not be empty")),
        Some(other) => Err(FieldError::at(
            key,
            format!("must be a string, found {}", describe(other)),
        )),
    }
}

/// Deserializes through `serde_path_to_error` so that a type error names the field, e.g.
/// `spec.ports[0].port`.
fn typed<T: for<'de> Deserialize<'de>>(
    map: Map<String, Value>,
    label: &str,
) -> Result<T, ObjectErrors> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|error| {
        let path = error.path().to_string();
        let field = (path != ".").then_some(path);
        let problem = FieldError {
            field,
            message: error.into_inner().to_string(),
        };
        (Some(label.to_owned()), vec![problem])
    })
}
