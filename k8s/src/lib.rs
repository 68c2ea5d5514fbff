//! Kubernetes manifests to gannet's desired service state.
//!
//! gannetd can run without a control plane: it reads `v1` Services and `discovery.k8s.io/v1`
//! `EndpointSlices` from a directory of manifests, written exactly as for Kubernetes, and joins
//! them the way kube-proxy does into a [`DesiredState`]: one [`ServicePort`] with its ready
//! [`Backend`]s per [`Frontend`] (cluster IP, port, protocol), the serving-and-terminating ones to
//! fall back on, and the [`External`] ways to reach it (node port, external and load-balancer
//! IPs). Mistakes are reported as [`ManifestError`]s naming the file, document, object and field.
//!
//! - [`parse_documents`] reads one file (YAML or JSON, any number of documents);
//! - [`desired_state`] joins Services and `EndpointSlices`;
//! - [`cluster_node`] reduces a Node to the [`ClusterNode`] the overlay needs;
//! - [`ManifestDir`] does both for a directory, re-reading only when it changed and keeping the
//!   last good contents of a file while its current contents are broken;
//! - [`check_service_object`], [`check_endpoint_slice_object`], [`read_documents`] and
//!   [`typed_object`] serve the control plane and `gannetctl`, which handle more kinds;
//! - [`Quantity`] reads resource quantities (`100m`, `128Mi`) for the scheduler and validation.

mod check;
mod dir;
mod error;
mod join;
mod model;
mod node;
mod parse;
mod quantity;
mod validate;
mod watched;

pub use check::{
    ClusterIp, FieldProblem, RawDocument, check_endpoint_slice_object, check_service_object,
    read_documents, typed_object,
};
pub use dir::{ManifestDir, ScanOutcome};
pub use error::ManifestError;
pub use join::desired_state;
pub use model::{Backend, DesiredState, External, Frontend, Protocol, ServicePort};
pub use node::{ClusterNode, VTEP_MAC_ANNOTATION, cluster_node, format_mac, parse_mac};
pub use parse::{Object, parse_documents};
pub use quantity::{Quantity, QuantityError};
pub use validate::SERVICE_NAME_LABEL;
pub use watched::{WatchedService, WatchedSlice};

#[cfg(test)]
mod tests;
