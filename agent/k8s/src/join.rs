//! Services and `EndpointSlices` to frontends and their backends, as kube-proxy joins them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::error::ManifestError;
use crate::model::{Backend, DesiredState, Frontend, ServicePort};
use crate::validate::{
    Checked, Family, ValidService, ValidServicePort, ValidSlice, check_service, check_slice,
    meta_label,
};

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
    fn place(&self) -> String {
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
/// frontend, the first wins and the later one gets an error. A Service port's backends are the
/// ready endpoints of every `EndpointSlice` of the same namespace whose
/// `kubernetes.io/service-name` label names the Service, whose address family is that of the
/// cluster IP, and which has a port of the same name and protocol; with no such slice the frontend
/// has no backends.
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
    mut services: Vec<Located<'_, Service>>,
    mut slices: Vec<Located<'_, EndpointSlice>>,
) -> (DesiredState, Vec<ManifestError>) {
    // Stable: objects of one file keep their order.
    services.sort_by(|a, b| a.file.cmp(b.file));
    slices.sort_by(|a, b| a.file.cmp(b.file));
    let mut errors = Vec::new();

    let slices = index_slices(&slices, &mut errors);
    let mut state = DesiredState::default();
    // Where each served Service was defined, to point at it from later conflicts.
    let mut defined: HashMap<(String, String), String> = HashMap::new();

    for located in &services {
        let label = meta_label("Service", &located.object.metadata);
        let service =
            match check_service(located.object) {
                Ok(Checked::Serve(service)) => service,
                Ok(Checked::Skip(reason)) => {
                    tracing::debug!(service = label, reason, "not balanced");
                    continue;
                }
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|problem| {
                        located.error(label.clone(), problem.field, problem.message)
                    }));
                    continue;
                }
            };
        let key = (service.namespace.clone(), service.name.clone());
        if let Some(first) = defined.get(&key) {
            errors.push(located.error(
                label.clone(),
                Some("metadata.name".to_owned()),
                format!("{label} is already defined in {first}; the first definition wins"),
            ));
            continue;
        }
        let backends: Vec<&ValidSlice> = slices.get(&key).into_iter().flatten().collect();
        match add_service(&mut state, &service, &backends) {
            Ok(()) => {
                defined.insert(key, located.place());
            }
            Err((port, frontend)) => {
                let owner = &state.services[&frontend];
                let owner_key = (owner.namespace.clone(), owner.name.clone());
                errors.push(located.error(
                    label,
                    Some(format!("spec.ports[{}]", port.index)),
                    format!(
                        "frontend {frontend} is already served by Service {}/{} ({}); \
                         the first definition wins",
                        owner.namespace, owner.name, defined[&owner_key]
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
    (state, errors)
}

/// Valid, IP-addressed slices by (namespace, service name); a slice defined twice keeps its first
/// definition.
fn index_slices(
    slices: &[Located<'_, EndpointSlice>],
    errors: &mut Vec<ManifestError>,
) -> HashMap<(String, String), Vec<ValidSlice>> {
    let mut by_service: HashMap<(String, String), Vec<ValidSlice>> = HashMap::new();
    let mut defined: HashMap<(String, String), String> = HashMap::new();
    for located in slices {
        let label = meta_label("EndpointSlice", &located.object.metadata);
        let slice =
            match check_slice(located.object) {
                Ok(Checked::Serve(slice)) => slice,
                Ok(Checked::Skip(reason)) => {
                    tracing::debug!(slice = label, reason, "not used");
                    continue;
                }
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|problem| {
                        located.error(label.clone(), problem.field, problem.message)
                    }));
                    continue;
                }
            };
        let key = (slice.namespace.clone(), slice.name.clone());
        if let Some(first) = defined.get(&key) {
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

/// Adds every frontend of `service`, or none of them when one is already taken (returned with its
/// port).
pub(crate) fn add_service<'s>(
    state: &mut DesiredState,
    service: &'s ValidService,
    slices: &[&ValidSlice],
) -> Result<(), (&'s ValidServicePort, Frontend)> {
    let mut frontends = Vec::with_capacity(service.ports.len() * service.cluster_ips.len());
    for port in &service.ports {
        for &ip in &service.cluster_ips {
            let frontend = Frontend {
                ip,
                port: port.port,
                protocol: port.protocol,
            };
            if state.services.contains_key(&frontend) {
                return Err((port, frontend));
            }
            frontends.push((frontend, port));
        }
    }
    for (frontend, port) in frontends {
        let service_port = ServicePort {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port_name: port.name.clone(),
            backends: backends(slices, Family::of(frontend.ip), port),
            session_affinity_timeout: service.session_affinity_timeout,
        };
        // Ports are unique by (number, protocol) and cluster IPs by family (`check_service`), so a
        // service never overwrites its own frontend.
        state.services.insert(frontend, service_port);
    }
    Ok(())
}

/// The ready endpoints of the slices of `family` that expose `port` (same name, same protocol),
/// sorted.
fn backends(slices: &[&ValidSlice], family: Family, port: &ValidServicePort) -> Vec<Backend> {
    let mut backends = Vec::new();
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
        backends.extend(slice.ready.iter().map(|&ip| Backend { ip, port: number }));
    }
    backends.sort_unstable();
    backends.dedup();
    backends
}
