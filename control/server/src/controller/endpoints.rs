//! The endpoints controller: for every Service with a selector, the `EndpointSlices` of the Pods it
//! selects, as Kubernetes' endpointslice controller writes them.
//!
//! It lists everything under `registry/`, then watches from that revision (the loop in
//! `informer.rs`, shared with the scheduler), keeping Services, Pods and its own slices in
//! memory. A change marks the Services it can affect; each marked Service's slices are recomputed
//! and written in one conditional transaction (only when they differ), so several replicas
//! running the controller at once converge on the same slices without fighting.
//!
//! Slices: one per address family of the Service and per distinct set of resolved ports (named
//! target ports resolve per Pod), at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints each, named
//! `<service>-ipv4`, `<service>-ipv6`, then `-<n>` for further ones. Endpoint conditions: `ready`
//! (Ready condition true and not terminating), `serving` (Ready condition true), `terminating`
//! (`deletionTimestamp` set). Pods without an IP of the family, or Succeeded/Failed, are left out.
//! A Service without a selector gets no managed slices: its slices are the user's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use gannet_api::{Kind, Object};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::informer::{self, Controller};
use crate::alloc::Family;
use crate::registry::{ApiError, Registry, encode, now, object_key};
use crate::store::{Compare, EventKind, Op, Revision};

/// When the controller last changed a slice: Kubernetes' annotation (the time of the change that
/// triggered it, here the time it was written).
const LAST_CHANGE_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The label naming the Service of an `EndpointSlice`.
pub use gannet_k8s::SERVICE_NAME_LABEL;
/// The label naming who manages an `EndpointSlice`.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.gannet.io";
/// As Kubernetes' default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

type Key = (String, String);

fn meta_key(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What the controller knows.
#[derive(Debug, Default)]
struct Cache {
    services: HashMap<Key, Service>,
    pods: HashMap<Key, Pod>,
    /// Managed slices only, with the revision they were read at.
    slices: HashMap<Key, (EndpointSlice, Revision)>,
}

impl Cache {
    fn services_selecting(&self, pod: &Pod) -> Vec<Key> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        self.services
            .iter()
            .filter(|((ns, _), service)| *ns == namespace && selects(service, &labels))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Applies one stored change; returns the Services it may affect.
    fn apply(
        &mut self,
        kind: Kind,
        event_kind: EventKind,
        object: Object,
        dirty: &mut HashSet<Key>,
    ) {
        let key = meta_key(object.metadata());
        match object {
            Object::Service(service) => {
                dirty.insert(key.clone());
                if event_kind == EventKind::Delete {
                    self.services.remove(&key);
                } else {
                    self.services.insert(key, *service);
                }
            }
            Object::Pod(pod) => {
                if let Some(old) = self.pods.get(&key) {
                    dirty.extend(self.services_selecting(old));
                }
                dirty.extend(self.services_selecting(&pod));
                if event_kind == EventKind::Delete {
                    self.pods.remove(&key);
                } else {
                    self.pods.insert(key, *pod);
                }
            }
            Object::EndpointSlice(slice) => {
                let Some(service) = managed_service(&slice) else {
                    self.slices.remove(&key);
                    return;
                };
                dirty.insert((key.0.clone(), service));
                let revision = slice
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|rv| rv.parse().ok())
                    .unwrap_or(0);
                if event_kind == EventKind::Delete {
                    self.slices.remove(&key);
                } else {
                    self.slices.insert(key, (*slice, revision));
                }
            }
            Object::Node(_) | Object::Lease(_) => {
                let _ = kind;
            }
        }
    }
}

/// The Service of a slice this controller manages.
fn managed_service(slice: &EndpointSlice) -> Option<String> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    labels.get(SERVICE_NAME_LABEL).cloned()
}

fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector
        .as_ref()
        .filter(|selector| !selector.is_empty())
}

fn selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
    selector(service).is_some_and(|selector| {
        selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    })
}

/// The pod's address of `family`, from `status.podIPs` (or `podIP`).
fn pod_ip(pod: &Pod, family: Family) -> Option<IpAddr> {
    let status = pod.status.as_ref()?;
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .find(|ip| Family::of(*ip) == family)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// A service port resolved for one pod: (name, number, protocol).
type ResolvedPort = (Option<String>, i32, String);

/// The pod's port for a service's `targetPort`: a number, or the container port of that name and
/// protocol.
fn resolve_port(pod: &Pod, target: &IntOrString, protocol: &str) -> Option<i32> {
    match target {
        IntOrString::Int(number) => Some(*number),
        IntOrString::String(name) => {
            if let Ok(number) = name.parse::<i32>() {
                return Some(number);
            }
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|port| {
                    port.name.as_deref() == Some(name.as_str())
                        && port.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|port| port.container_port)
        }
    }
}

/// The slices a Service should have; empty when it has no selector.
#[must_use]
pub fn desired_slices<'a>(
    service: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<EndpointSlice> {
    if selector(service).is_none() {
        return Vec::new();
    }
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    let mut families: Vec<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|family| Family::parse(family))
        .collect();
    if families.is_empty() {
        families = vec![Family::V4, Family::V6];
    }
    let mut pods: Vec<&Pod> = pods
        .into_iter()
        .filter(|pod| pod.metadata.namespace.as_deref().unwrap_or_default() == namespace)
        .filter(|pod| {
            selects(
                service,
                pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
            )
        })
        .filter(|pod| {
            !matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    // (family, resolved ports) → endpoints, in a stable order.
    let mut groups: BTreeMap<(u8, Vec<ResolvedPort>), Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let ready = pod_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ports: Vec<ResolvedPort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
                let target = port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port));
                resolve_port(pod, &target, &protocol)
                    .map(|number| (port.name.clone(), number, protocol))
            })
            .collect();
        for family in &families {
            let Some(ip) = pod_ip(pod, *family) else {
                continue;
            };
            let endpoint = Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready && !terminating),
                    serving: Some(ready),
                    terminating: Some(terminating),
                }),
                node_name: pod.spec.as_ref().and_then(|spec| spec.node_name.clone()),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".to_owned()),
                    namespace: Some(namespace.clone()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            };
            let family_index = u8::from(*family == Family::V6);
            groups
                .entry((family_index, ports.clone()))
                .or_default()
                .push(endpoint);
        }
    }

    let primary = families[0];
    if !groups
        .keys()
        .any(|(family, _)| *family == u8::from(primary == Family::V6))
    {
        groups.insert((u8::from(primary == Family::V6), Vec::new()), Vec::new());
    }
    let mut slices = Vec::new();
    let mut per_family: HashMap<u8, usize> = HashMap::new();
    for ((family, ports), endpoints) in groups {
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        for chunk in chunks {
            let count = per_family.entry(family).or_default();
            let family_name = if family == 0 { "ipv4" } else { "ipv6" };
            let slice_name = if *count == 0 {
                format!("{name}-{family_name}")
            } else {
                format!("{name}-{family_name}-{count}")
            };
            *count += 1;
            slices.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name),
                    namespace: Some(namespace.clone()),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME_LABEL.to_owned(), name.clone()),
                        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    ])),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".to_owned(),
                        kind: "Service".to_owned(),
                        name: name.clone(),
                        uid: service.metadata.uid.clone().unwrap_or_default(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]),
                    ..ObjectMeta::default()
                },
                address_type: if family == 0 { "IPv4" } else { "IPv6" }.to_owned(),
                endpoints: chunk,
                ports: Some(
                    ports
                        .iter()
                        .map(|(port_name, number, protocol)| EndpointPort {
                            name: port_name.clone(),
                            port: Some(*number),
                            protocol: Some(protocol.clone()),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            });
        }
    }
    slices
}

/// Whether two slices hold the same thing (ignoring uid, timestamps and revision).
fn same_slice(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    a.address_type == b.address_type
        && a.endpoints == b.endpoints
        && a.ports == b.ports
        && a.metadata.labels == b.metadata.labels
        && a.metadata.owner_references == b.metadata.owner_references
}

/// The controller's state between reconciles: the cache and the Services to look at again.
#[derive(Debug, Default)]
struct Endpoints {
    cache: Cache,
    dirty: HashSet<Key>,
}

impl Controller for Endpoints {
    const NAME: &'static str = "endpoints controller";

    fn wants(kind: Kind) -> bool {
        kind != Kind::Node
    }

    fn apply(&mut self, event: EventKind, object: Object, _revision: Revision) {
        self.cache
            .apply(object.kind(), event, object, &mut self.dirty);
    }

    fn full(&self) -> bool {
        self.dirty.len() > 1000
    }

    fn synced(&self, revision: Revision) {
        tracing::info!(
            services = self.cache.services.len(),
            pods = self.cache.pods.len(),
            revision,
            "endpoints controller synced"
        );
    }

    async fn reconcile(&mut self, registry: &Registry) -> Result<(), ApiError> {
        reconcile_all(registry, &self.cache, &mut self.dirty).await
    }
}

/// Runs the controller until the task is dropped, starting over (list, then watch) after errors.
pub async fn run(registry: Arc<Registry>) {
    informer::run(registry, Endpoints::default).await;
}

async fn reconcile_all(
    registry: &Registry,
    cache: &Cache,
    dirty: &mut HashSet<Key>,
) -> Result<(), ApiError> {
    let mut keys: Vec<Key> = dirty.drain().collect();
    keys.sort();
    for key in keys {
        if let Err(error) = reconcile(registry, cache, &key).await {
            match error {
                ApiError::Store(_) => return Err(error),
                other => {
                    tracing::warn!(service = format!("{}/{}", key.0, key.1), error = %other, "cannot write endpoint slices");
                }
            }
        }
    }
    Ok(())
}

/// Writes the slices of one Service if they differ from what is stored. A lost race is left to
/// the watch: the winning write comes back as an event and marks the Service again.
async fn reconcile(registry: &Registry, cache: &Cache, key: &Key) -> Result<(), ApiError> {
    let (namespace, name) = key;
    let desired = cache
        .services
        .get(key)
        .map(|service| desired_slices(service, cache.pods.values()))
        .unwrap_or_default();
    let current: HashMap<&str, &(EndpointSlice, Revision)> = cache
        .slices
        .iter()
        .filter(|((ns, _), (slice, _))| {
            ns == namespace && managed_service(slice).as_deref() == Some(name.as_str())
        })
        .map(|((_, slice_name), entry)| (slice_name.as_str(), entry))
        .collect();
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    let mut wanted = HashSet::new();
    for mut slice in desired {
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        let slice_key = object_key(Kind::EndpointSlice, namespace, &slice_name);
        wanted.insert(slice_name.clone());
        match current.get(slice_name.as_str()) {
            Some((existing, revision)) => {
                if same_slice(existing, &slice) {
                    continue;
                }
                slice.metadata.uid.clone_from(&existing.metadata.uid);
                slice
                    .metadata
                    .creation_timestamp
                    .clone_from(&existing.metadata.creation_timestamp);
                compares.push(Compare {
                    key: slice_key.clone(),
                    mod_revision: *revision,
                });
            }
            None => {
                slice.metadata.uid = Some(format!(
                    "{:016x}{:016x}",
                    crate::alloc::random(),
                    crate::alloc::random()
                ));
                slice.metadata.creation_timestamp = Some(now());
                compares.push(Compare {
                    key: slice_key.clone(),
                    mod_revision: 0,
                });
            }
        }
        // When this controller last changed the slice, under Kubernetes' name for it
        // (`gannetctl describe` shows it); not compared by `same_slice`.
        slice
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(LAST_CHANGE_ANNOTATION.to_owned(), now().0.to_string());
        ops.push(Op::Put {
            key: slice_key,
            value: encode(&Object::from(slice))?,
        });
    }
    for (slice_name, (_, revision)) in &current {
        if !wanted.contains(*slice_name) {
            let slice_key = object_key(Kind::EndpointSlice, namespace, slice_name);
            compares.push(Compare {
                key: slice_key.clone(),
                mod_revision: *revision,
            });
            ops.push(Op::Delete { key: slice_key });
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    let changes = ops.len();
    match registry.store().txn(compares, ops).await? {
        Some(revision) => tracing::debug!(
            service = format!("{namespace}/{name}"),
            changes,
            revision,
            "endpoint slices written"
        ),
        None => tracing::debug!(
            service = format!("{namespace}/{name}"),
            "endpoint slices changed meanwhile; waiting for the watch"
        ),
    }
    Ok(())
}
