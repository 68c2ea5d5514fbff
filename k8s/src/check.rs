//! Checks of single objects and reading of documents for callers that are not a manifest
//! directory: the control plane validates objects it receives, and `gannetctl` reads manifests of
//! more kinds than gannetd serves.

use std::fmt;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{FieldError, ManifestError};
use crate::validate::{check_service_with, check_slice};

/// One problem with one field of an object (the object and file are the caller's to name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", Field(.field.as_deref()))]
pub struct FieldProblem {
    /// Path of the offending field, e.g. `spec.ports[0].protocol`; `None` for the whole object.
    pub field: Option<String>,
    pub message: String,
}

struct Field<'a>(Option<&'a str>);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(field) => write!(f, "{field}: "),
            None => Ok(()),
        }
    }
}

impl From<FieldError> for FieldProblem {
    fn from(error: FieldError) -> Self {
        Self {
            field: error.field,
            message: error.message,
        }
    }
}

/// Whether a Service must already have what a control plane allocates: its cluster IP and, for
/// types `NodePort` and `LoadBalancer`, its node ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterIp {
    /// As gannetd requires without a control plane.
    Required,
    /// A control plane allocates them: an unset `spec.clusterIP` or `nodePort` is fine (one that
    /// is set is still checked).
    Allocated,
}

/// Every problem [`parse_documents`](crate::parse_documents) would report for this Service, with
/// the same rules (ports, protocols, cluster IPs, session affinity, node ports, external and
/// load-balancer IPs, external traffic policy, health check node port, source ranges). Headless
/// and `ExternalName` Services are only checked as far as gannetd looks at them.
#[must_use]
pub fn check_service_object(service: &Service, cluster_ip: ClusterIp) -> Vec<FieldProblem> {
    match check_service_with(service, cluster_ip == ClusterIp::Required) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.into_iter().map(FieldProblem::from).collect(),
    }
}

/// Every problem [`parse_documents`](crate::parse_documents) would report for this
/// `EndpointSlice`.
#[must_use]
pub fn check_endpoint_slice_object(slice: &EndpointSlice) -> Vec<FieldProblem> {
    match check_slice(slice) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.into_iter().map(FieldProblem::from).collect(),
    }
}

/// One non-empty document of a manifest file, not yet typed.
#[derive(Clone, Debug, PartialEq)]
pub struct RawDocument {
    /// 1-based position of the document in the file, counting empty documents.
    pub index: usize,
    /// A mapping (anything else is reported as an error).
    pub value: Value,
}

/// Splits a manifest file (YAML or JSON, any number of documents) into its non-empty documents,
/// each a mapping, without looking at kinds. Errors name the file and document; reading stops at
/// the first YAML error.
pub fn read_documents(file: &Path, text: &str) -> Result<Vec<RawDocument>, Vec<ManifestError>> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (position, yaml) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = position + 1;
        let error = |message: String| ManifestError {
            file: file.to_owned(),
            document: index,
            object: None,
            field: None,
            message,
        };
        match Value::deserialize(yaml) {
            Ok(Value::Null) => {}
            Ok(value @ Value::Object(_)) => documents.push(RawDocument { index, value }),
            Ok(_) => errors.push(error(
                "a document must be a mapping with apiVersion and kind".to_owned(),
            )),
            Err(yaml_error) => {
                errors.push(error(format!("invalid YAML: {yaml_error}")));
                break;
            }
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

/// Deserializes a document into a Kubernetes type; a type error names the field, e.g.
/// `spec.ports[0].port`.
pub fn typed_object<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, FieldProblem> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        FieldProblem {
            field: (path != ".").then_some(path),
            message: error.into_inner().to_string(),
        }
    })
}
