//! Unit tests, by concern. Helpers shared by them live here.

mod check;
mod dir;
mod external;
mod incremental;
mod join;
mod parse;
mod validate;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{Backend, Frontend, ManifestError, Object, Protocol, parse_documents};

/// The manifest written as in the Kubernetes documentation: Deployment, dual-stack Service with
/// named ports, `EndpointSlices` of both families, a single-port UDP service, an empty document and
/// a headless service.
pub(super) const SHOP_YAML: &str = include_str!("../../testdata/shop.yaml");

pub(super) fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|error| panic!("test address {text:?}: {error}"))
}

pub(super) fn backend(ip_text: &str, port: u16) -> Backend {
    Backend {
        ip: ip(ip_text),
        port,
    }
}

pub(super) fn frontend(ip_text: &str, port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        ip: ip(ip_text),
        port,
        protocol,
    }
}

/// Parses a file that must parse.
pub(super) fn parse_ok(file: &str, text: &str) -> Vec<Object> {
    parse_documents(Path::new(file), text)
        .unwrap_or_else(|errors| panic!("expected {file} to parse, got errors: {errors:#?}"))
}

/// Parses a file that must fail.
pub(super) fn parse_err(file: &str, text: &str) -> Vec<ManifestError> {
    match parse_documents(Path::new(file), text) {
        Ok(objects) => panic!("expected {file} to fail, it parsed into {objects:#?}"),
        Err(errors) => errors,
    }
}

/// Parses a file that must fail with exactly one error.
pub(super) fn parse_one_err(file: &str, text: &str) -> ManifestError {
    let mut errors = parse_err(file, text);
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got {errors:#?}"
    );
    errors.remove(0)
}

pub(super) fn error(
    file: &str,
    document: usize,
    object: Option<&str>,
    field: Option<&str>,
    message: &str,
) -> ManifestError {
    ManifestError {
        file: PathBuf::from(file),
        document,
        object: object.map(str::to_owned),
        field: field.map(str::to_owned),
        message: message.to_owned(),
    }
}

/// Objects paired with the file they came from, as [`desired_state`](crate::desired_state) takes
/// them.
pub(super) type InFile<T> = Vec<(PathBuf, T)>;

/// The Services and `EndpointSlices` of parsed objects, each paired with `file`.
pub(super) fn split(file: &str, objects: Vec<Object>) -> (InFile<Service>, InFile<EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for object in objects {
        match object {
            Object::Service(service) => services.push((PathBuf::from(file), *service)),
            Object::EndpointSlice(slice) => slices.push((PathBuf::from(file), *slice)),
            Object::Node(_) | Object::Ignored { .. } => {}
        }
    }
    (services, slices)
}

/// `text` without its first line break and the indentation its lines share, so that tests can write
/// YAML indented with the code around it.
pub(super) fn yaml(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    let lines: Vec<&str> = text
        .lines()
        .map(|line| line.get(indent..).unwrap_or_default().trim_end())
        .collect();
    format!("{}\n", lines.join("\n").trim_end())
}

/// A Service `shop/{name}` with the given `spec` (indented as the test likes).
pub(super) fn service_doc(name: &str, spec: &str) -> String {
    let spec: String = yaml(spec)
        .lines()
        .map(|line| format!("  {line}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n{spec}"
    )
}

/// An `EndpointSlice` `shop/{name}` of Service `shop/{service}`, `body` following the metadata.
pub(super) fn slice_doc(name: &str, service: &str, body: &str) -> String {
    let metadata = yaml(&format!(
        "
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: {name}
          namespace: shop
          labels:
            kubernetes.io/service-name: {service}
        "
    ));
    metadata + &yaml(body)
}

/// The one Service of a document that must parse.
pub(super) fn service_of(text: &str) -> Service {
    match parse_ok("inline.yaml", text).remove(0) {
        Object::Service(service) => *service,
        other => panic!("expected a Service, got {other:?}"),
    }
}

/// A Service `shop/{name}` with the given `spec`.
pub(super) fn service(name: &str, spec: &str) -> Service {
    service_of(&service_doc(name, spec))
}

/// A single-port TCP service `shop/{name}` on `cluster_ip`.
pub(super) fn simple_service(name: &str, cluster_ip: &str, port: u16) -> Service {
    service(
        name,
        &format!("clusterIP: {cluster_ip}\nports:\n  - port: {port}\n"),
    )
}

/// An `EndpointSlice` `shop/{name}` of Service `shop/{service}`.
pub(super) fn slice(name: &str, service: &str, body: &str) -> EndpointSlice {
    match parse_ok("inline.yaml", &slice_doc(name, service, body)).remove(0) {
        Object::EndpointSlice(slice) => *slice,
        other => panic!("expected an EndpointSlice, got {other:?}"),
    }
}

pub(super) fn in_file<T>(file: &str, object: T) -> (PathBuf, T) {
    (PathBuf::from(file), object)
}
