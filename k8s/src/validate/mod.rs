//! Kubernetes' validation rules for the two kinds gannet serves, reduced to what gannet uses.
//!
//! Each check reports every problem of the object, each naming the field path, so a person can fix
//! a manifest in one go.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::FieldError;
use crate::model::Protocol;

/// The label by which an `EndpointSlice` names the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const DEFAULT_NAMESPACE: &str = "default";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// Kubernetes' upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds` (1 day).
const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;
/// Where `loadBalancerSourceRanges` were kept before the field existed; cloud load balancers still
/// read it when the field is empty.
const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// The outcome of checking an object that has no errors.
#[derive(Debug)]
pub(crate) enum Checked<T> {
    /// gannet balances this object.
    Serve(T),
    /// A valid object that gannet has nothing to do for; the reason is logged.
    Skip(&'static str),
}

/// `Service default/web`; just the kind when the object has no name.
pub(crate) fn object_label(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    match name.filter(|name| !name.is_empty()) {
        Some(name) => format!("{kind} {}/{name}", namespace_or_default(namespace)),
        None => kind.to_owned(),
    }
}

pub(crate) fn meta_label(kind: &str, meta: &ObjectMeta) -> String {
    object_label(kind, meta.namespace.as_deref(), meta.name.as_deref())
}

fn namespace_or_default(namespace: Option<&str>) -> &str {
    namespace
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

/// An empty string is how an unset optional string round-trips through Go; Kubernetes treats both
/// alike.
fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|value| !value.is_empty())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

mod external;
mod service;
mod slice;

pub(crate) use self::service::{
    IndexedIps, ValidService, ValidServicePort, check_service, check_service_with,
};
pub(crate) use self::slice::{ValidSlice, check_slice};
