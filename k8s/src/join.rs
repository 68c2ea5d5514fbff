//! Services and `EndpointSlices` to frontends and their backends, as kube-proxy joins them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::error::ManifestError;
use crate::model::{Backend, DesiredState, External, Frontend, Protocol, ServicePort};
use crate::validate::{
    Checked, Family, IndexedIps, ValidService, ValidServicePort, ValidSlice, check_service,
    check_slice, meta_label, object_label,
};

/// `(namespace, name)` of a Service.
pub(crate) type ServiceKey = (String, String);

/// An object and where it was read; `document` is 0 when unknown.
pub(crate) struct Located<'a, T> {
    pub(crate) file: &'a Path,
    pub(crate) document: usize,
    pub(crate) object: &'a T,
}

impl<T> Located<'_, T> {
    pub(crate) fn error(
        &self,
        object: String,
        field: Option<String>,
        message: String,
    ) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            document: self.document,
            object: Some(object),
            field,
            message,
        }
    }

    /// `a.yaml` or `a.yaml document 2`, for messages that point at another definition.
    pub(crate) fn place(&self) -> String {
        match self.document {
            0 => self.file.display().to_string(),
            document => format!("{} document {document}", self.file.display()),
        }
    }
}

/// Joins Services with their `EndpointSlices` into the frontends gannet serves.
///
/// Every Service is checked (see [`parse_documents`](crate::parse_documents)); one with errors is
/// left out and its errors returned. Objects are taken in file-name order (then in the order
/// given), and when a Service or `EndpointSlice` is defined twice, or two Services claim the same
/// frontend, node port (with its protocol) or external or load-balancer address (with the port
/// and protocol), the first wins whole and the later one gets an error. A Service port's backends
/// are the ready endpoints (or, when none is ready, the serving and terminating ones) of every
/// `EndpointSlice` of the same namespace whose `kubernetes.io/service-name` label names the
/// Service, whose address family is that of the cluster IP, and which has a port of the same name
/// and protocol; with no such slice the frontend has no backends.
pub fn desired_state(
    services: &[(PathBuf, Service)],
    slices: &[(PathBuf, EndpointSlice)],
) -> (DesiredState, Vec<ManifestError>) {
    let services = services
        .iter()
        .map(|(file, object)| Located {
            file,
            document: 0,
            object,
        })
        .collect();
    let slices = slices
        .iter()
        .map(|(file, object)| Located {
            file,
            document: 0,
            object,
        })
        .collect();
    join(services, slices)
}

pub(crate) fn join(
    services: Vec<Located<'_, Service>>,
    slices: Vec<Located<'_, EndpointSlice>>,
) -> (DesiredState, Vec<ManifestError>) {
    let mut errors = Vec::new();
    let slices = checked(slices, "EndpointSlice", check_slice, &mut errors);
    let services = checked(services, "Service", check_service, &mut errors);
    let (state, _claims, conflicts) = join_checked(services, slices);
    errors.extend(conflicts);
    // Stable: each file's errors keep their order.
    errors.sort_by(|a, b| a.file.cmp(&b.file));
    (state, errors)
}

/// The objects that pass `check`, where they were read; the errors of the others go to `errors`.
fn checked<'a, T, V>(
    objects: Vec<Located<'a, T>>,
    kind: &str,
    check: impl Fn(&T) -> Result<Checked<V>, Vec<crate::error::FieldError>>,
    errors: &mut Vec<ManifestError>,
) -> Vec<(Located<'a, ()>, V)>
where
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    let mut valid = Vec::with_capacity(objects.len());
    for located in objects {
        let label = meta_label(kind, located.object.metadata());
        match check(located.object) {
            Ok(Checked::Serve(object)) => valid.push((
                Located {
                    file: located.file,
                    document: located.document,
                    object: &(),
                },
                object,
            )),
            Ok(Checked::Skip(reason)) => tracing::debug!(object = label, reason, "not used"),
            Err(problems) => errors.extend(
                problems
                    .into_iter()
                    .map(|problem| located.error(label.clone(), problem.field, problem.message)),
            ),
        }
    }
    valid
}

/// Joins checked Services with checked `EndpointSlices` (see [`join`]); the claims of the
/// Services served, and the errors of those left out because another object came first.
pub(crate) fn join_checked<S, L>(
    mut services: Vec<(Located<'_, ()>, S)>,
    mut slices: Vec<(Located<'_, ()>, L)>,
) -> (DesiredState, Claims, Vec<ManifestError>)
where
    S: std::borrow::Borrow<ValidService>,
    L: std::borrow::Borrow<ValidSlice>,
{
    // Stable: objects of one file keep their order.
    services.sort_by(|a, b| a.0.file.cmp(b.0.file));
    slices.sort_by(|a, b| a.0.file.cmp(b.0.file));
    let mut errors = Vec::new();

    let slices = index_slices(&slices, &mut errors);
    let mut state = DesiredState::default();
    let mut claims = Claims::default();
    // Where each served Service was defined, to point at it from later conflicts.
    let mut defined: HashMap<ServiceKey, String> = HashMap::new();

    for (located, service) in &services {
        let service = service.borrow();
        let label = object_label("Service", Some(&service.namespace), Some(&service.name));
        let key = (service.namespace.clone(), service.name.clone());
        if let Some(first) = defined.get(&key) {
            errors.push(located.error(
                label.clone(),
                Some("metadata.name".to_owned()),
                format!("{label} is already defined in {first}; the first definition wins"),
            ));
            continue;
        }
        let backends: Vec<&ValidSlice> = slices.get(&key).into_iter().flatten().copied().collect();
        match add_service(&mut state, &mut claims, service, &backends) {
            Ok(_) => {
                defined.insert(key, located.place());
            }
            Err(Conflict { field, what, owner }) => {
                errors.push(located.error(
                    label,
                    Some(field),
                    format!(
                        "{what} Service {}/{} ({}); the first definition wins",
                        owner.0, owner.1, defined[&owner]
                    ),
                ));
            }
        }
    }
    tracing::debug!(
        frontends = state.services.len(),
        errors = errors.len(),
        "desired state computed"
    );
    (state, claims, errors)
}

/// Valid slices by (namespace, service name); a slice defined twice keeps its first definition.
fn index_slices<'s, L: std::borrow::Borrow<ValidSlice>>(
    slices: &'s [(Located<'_, ()>, L)],
    errors: &mut Vec<ManifestError>,
) -> HashMap<(String, String), Vec<&'s ValidSlice>> {
    let mut by_service: HashMap<(String, String), Vec<&ValidSlice>> = HashMap::new();
    let mut defined: HashMap<(&str, &str), String> = HashMap::new();
    for (located, slice) in slices {
        let slice = slice.borrow();
        let key = (slice.namespace.as_str(), slice.name.as_str());
        if let Some(first) = defined.get(&key) {
            let label = object_label("EndpointSlice", Some(&slice.namespace), Some(&slice.name));
            errors.push(located.error(
                label.clone(),
                Some("metadata.name".to_owned()),
                format!("{label} is already defined in {first}; the first definition wins"),
            ));
            continue;
        }
        defined.insert(key, located.place());
        by_service
            .entry((slice.namespace.clone(), slice.service_name.clone()))
            .or_default()
            .push(slice);
    }
    by_service
}

/// What the served Services hold besides their cluster frontends (the keys of
/// [`DesiredState::services`]), each of which one Service only may hold.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    /// Node ports with their protocol (`nodePort`s, and `healthCheckNodePort`s as TCP).
    node_ports: HashMap<(u16, Protocol), ServiceKey>,
    /// External and load-balancer IPs, each with every service port.
    addresses: HashMap<Frontend, ServiceKey>,
    /// What each Service holds of the above.
    held: HashMap<ServiceKey, Held>,
}

/// A Service's node ports and external addresses.
type Held = (Vec<(u16, Protocol)>, Vec<Frontend>);

impl Claims {
    /// Lets go of everything Service `owner` holds.
    pub(crate) fn release(&mut self, owner: &ServiceKey) {
        if let Some((node_ports, addresses)) = self.held.remove(owner) {
            for claim in node_ports {
                self.node_ports.remove(&claim);
            }
            for address in addresses {
                self.addresses.remove(&address);
            }
        }
    }
}

/// Something a Service asks for that another Service already holds.
#[derive(Debug)]
pub(crate) struct Conflict {
    /// The field of the Service that asks.
    pub(crate) field: String,
    /// What is held, ending in the verb, e.g. `nodePort 30080/TCP is already used by`.
    pub(crate) what: String,
    pub(crate) owner: ServiceKey,
}

/// Adds every frontend of `service` and claims its node ports and external addresses, or does
/// nothing when one of them is already held (the first one found is returned). Returns the
/// frontends added.
pub(crate) fn add_service(
    state: &mut DesiredState,
    claims: &mut Claims,
    service: &ValidService,
    slices: &[&ValidSlice],
) -> Result<Vec<Frontend>, Conflict> {
    let holder = |claims: &Claims, frontend: &Frontend| {
        state
            .services
            .get(frontend)
            .map(|owner| (owner.namespace.clone(), owner.name.clone()))
            .or_else(|| claims.addresses.get(frontend).cloned())
    };
    let served = |ip: &IpAddr| {
        service
            .cluster_ips
            .iter()
            .any(|cluster_ip| Family::of(*cluster_ip) == Family::of(*ip))
    };
    let mut frontends = Vec::with_capacity(service.ports.len() * service.cluster_ips.len());
    let mut node_ports = Vec::new();
    let mut addresses = Vec::new();
    for port in &service.ports {
        for &ip in &service.cluster_ips {
            let frontend = Frontend {
                ip,
                port: port.port,
                protocol: port.protocol,
            };
            if let Some(owner) = holder(claims, &frontend) {
                return Err(Conflict {
                    field: format!("spec.ports[{}]", port.index),
                    what: format!("frontend {frontend} is already served by"),
                    owner,
                });
            }
            frontends.push((frontend, port));
        }
        if let Some(node_port) = port.node_port {
            let claim = (node_port, port.protocol);
            if let Some(owner) = claims.node_ports.get(&claim) {
                return Err(Conflict {
                    field: format!("spec.ports[{}].nodePort", port.index),
                    what: format!("nodePort {node_port}/{} is already used by", port.protocol),
                    owner: owner.clone(),
                });
            }
            node_ports.push(claim);
        }
        let Some(external) = &service.external else {
            continue;
        };
        let lists = [
            (&external.external_ips, "spec.externalIPs", ""),
            (
                &external.load_balancer_ips,
                "status.loadBalancer.ingress",
                ".ip",
            ),
        ];
        for (ips, list, suffix) in lists {
            // An address of a family without a cluster IP is not served (kube-proxy ignores it
            // too), so it holds nothing.
            for (&ip, index) in ips.iter().filter(|(ip, _)| served(ip)) {
                let address = Frontend {
                    ip,
                    port: port.port,
                    protocol: port.protocol,
                };
                if let Some(owner) = holder(claims, &address) {
                    return Err(Conflict {
                        field: format!("{list}[{index}]{suffix}"),
                        what: format!(
                            "{address} (spec.ports[{}]) is already served by",
                            port.index
                        ),
                        owner,
                    });
                }
                addresses.push(address);
            }
        }
    }
    if let Some(health_check) = service
        .external
        .as_ref()
        .and_then(|external| external.health_check_node_port)
    {
        let claim = (health_check, Protocol::Tcp);
        if let Some(owner) = claims.node_ports.get(&claim) {
            return Err(Conflict {
                field: "spec.healthCheckNodePort".to_owned(),
                what: format!("healthCheckNodePort {health_check}/TCP is already used by"),
                owner: owner.clone(),
            });
        }
        node_ports.push(claim);
    }

    let key: ServiceKey = (service.namespace.clone(), service.name.clone());
    let mut added = Vec::with_capacity(frontends.len());
    for (frontend, port) in frontends {
        let family = Family::of(frontend.ip);
        let Endpoints {
            backends,
            terminating,
            backend_nodes,
        } = endpoints(slices, family, port);
        let service_port = ServicePort {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port_name: port.name.clone(),
            backends,
            terminating,
            backend_nodes,
            session_affinity_timeout: service.session_affinity_timeout,
            external: external(service, port, family),
        };
        // Ports are unique by (number, protocol) and cluster IPs by family (`check_service`), so a
        // service never overwrites its own frontend.
        state.services.insert(frontend, service_port);
        added.push(frontend);
    }
    for claim in &node_ports {
        claims.node_ports.insert(*claim, key.clone());
    }
    for address in &addresses {
        claims.addresses.insert(*address, key.clone());
    }
    if !node_ports.is_empty() || !addresses.is_empty() {
        claims.held.insert(key, (node_ports, addresses));
    }
    Ok(added)
}

/// The part of the Service's external reach that belongs to `port` and `family`; `None` when it
/// has none there.
fn external(service: &ValidService, port: &ValidServicePort, family: Family) -> Option<External> {
    let external = service.external.as_ref()?;
    let of_family = |ips: &IndexedIps| -> Vec<IpAddr> {
        ips.keys()
            .copied()
            .filter(|&ip| Family::of(ip) == family)
            .collect()
    };
    let external_ips = of_family(&external.external_ips);
    let load_balancer_ips = of_family(&external.load_balancer_ips);
    if !external.on_node_ports && external_ips.is_empty() && load_balancer_ips.is_empty() {
        return None;
    }
    Some(External {
        node_port: port.node_port,
        external_ips,
        load_balancer_ips,
        local_only: external.local_only,
        health_check_node_port: external.health_check_node_port,
        source_ranges: external
            .source_ranges
            .iter()
            .copied()
            .filter(|range| Family::of(range.addr()) == family)
            .collect(),
    })
}

/// A frontend's endpoints, as [`ServicePort`] holds them.
struct Endpoints {
    backends: Vec<Backend>,
    terminating: Vec<Backend>,
    backend_nodes: BTreeMap<IpAddr, String>,
}

/// The usable endpoints of the slices of `family` that expose `port` (same name, same protocol),
/// sorted: the ready ones, else the serving and terminating ones (kube-proxy's fallback).
fn endpoints(slices: &[&ValidSlice], family: Family, port: &ValidServicePort) -> Endpoints {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    let mut backend_nodes = BTreeMap::new();
    for slice in slices.iter().filter(|slice| slice.family == family) {
        let matching = slice
            .ports
            .iter()
            .find(|candidate| candidate.name == port.name && candidate.protocol == port.protocol);
        let Some(matching) = matching else { continue };
        let Some(number) = matching.port else {
            tracing::debug!(
                slice = %format_args!("{}/{}", slice.namespace, slice.name),
                port = port.name,
                "slice port has no number; its endpoints are not used"
            );
            continue;
        };
        for endpoint in &slice.endpoints {
            let backend = Backend {
                ip: endpoint.ip,
                port: number,
            };
            if endpoint.ready {
                ready.push(backend);
            } else {
                terminating.push(backend);
            }
            if let Some(node) = &endpoint.node_name {
                backend_nodes
                    .entry(endpoint.ip)
                    .or_insert_with(|| node.clone());
            }
        }
    }
    ready.sort_unstable();
    ready.dedup();
    terminating.sort_unstable();
    terminating.dedup();
    // Ready in one slice, terminating in another (a slice not yet rewritten): ready wins.
    terminating.retain(|backend| ready.binary_search(backend).is_err());
    let backends = if ready.is_empty() {
        terminating.clone()
    } else {
        ready
    };
    Endpoints {
        backends,
        terminating,
        backend_nodes,
    }
}
