//! What the agent knows of the control plane's Services and `EndpointSlices`, and the frontends
//! they make, kept per Service so a watch event costs what it touches.
//!
//! Objects are checked as they arrive and kept as [`WatchedService`] and [`WatchedSlice`] (what
//! the join reads of them, a small part of their size). Events mark Services dirty;
//! [`ServiceCache::take_changes`] joins only the dirty ones again (the same join as for a manifest
//! directory) and returns the frontends whose programming differs from what it returned before:
//! the diff for [`Reconciler::apply_changes`](crate::datapath::reconcile::Reconciler::apply_changes).

use std::collections::{BTreeMap, BTreeSet, HashMap, hash_map::Entry};
use std::path::{Path, PathBuf};

use gannet_k8s::{
    DesiredState, Frontend, ManifestError, ServicePort, WatchedService, WatchedSlice,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// `(namespace, name)`.
pub type ObjectKey = (String, String);

fn key_of(meta: &ObjectMeta) -> ObjectKey {
    (
        meta.namespace
            .clone()
            .unwrap_or_else(|| gannet_api::DEFAULT_NAMESPACE.to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The frontend diff of one [`ServiceCache::take_changes`]: `Some` to program, `None` to remove.
pub type Changes = BTreeMap<Frontend, Option<ServicePort>>;

/// Services, `EndpointSlices` and the frontends they make.
#[derive(Debug)]
pub struct ServiceCache {
    /// Named in errors where a manifest error names its file.
    source: PathBuf,
    services: HashMap<ObjectKey, WatchedService>,
    /// Slices by their own key, with the Service they belong to.
    slices: HashMap<ObjectKey, (Option<ObjectKey>, WatchedSlice)>,
    /// Slice keys by the Service they belong to.
    slices_of: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// The frontends each Service made at its last join, served or not.
    made: HashMap<ObjectKey, BTreeMap<Frontend, ServicePort>>,
    /// Which Service serves a frontend (the first to claim it).
    owner: HashMap<Frontend, ObjectKey>,
    dirty: BTreeSet<ObjectKey>,
    /// Problems of objects received since the last [`ServiceCache::take_changes`].
    errors: Vec<ManifestError>,
    services_synced: bool,
    slices_synced: bool,
}

impl ServiceCache {
    #[must_use]
    pub fn new(source: &Path) -> Self {
        Self {
            source: source.to_owned(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            made: HashMap::new(),
            owner: HashMap::new(),
            dirty: BTreeSet::new(),
            errors: Vec::new(),
            services_synced: false,
            slices_synced: false,
        }
    }

    /// Whether both kinds have been listed at least once: before that, a Service may look as if
    /// it had no endpoints only because its slices have not been seen yet.
    #[must_use]
    pub fn synced(&self) -> bool {
        self.services_synced && self.slices_synced
    }

    #[must_use]
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    #[must_use]
    pub fn slice_count(&self) -> usize {
        self.slices.len()
    }

    /// Replaces every Service with `services` (a full list). An invalid one keeps its previous
    /// version, if any.
    pub fn sync_services(&mut self, services: impl IntoIterator<Item = Service>) {
        let mut previous = std::mem::take(&mut self.services);
        self.dirty.extend(previous.keys().cloned());
        for service in services {
            let key = key_of(&service.metadata);
            if !self.check_service(&key, &service)
                && let Some(kept) = previous.remove(&key)
            {
                self.services.insert(key, kept);
            }
        }
        self.services_synced = true;
    }

    /// Adds or replaces a Service; an invalid one leaves its previous version in effect.
    pub fn put_service(&mut self, service: &Service) {
        let key = key_of(&service.metadata);
        self.check_service(&key, service);
    }

    fn check_service(&mut self, key: &ObjectKey, service: &Service) -> bool {
        match WatchedService::check(&self.source, service) {
            Ok(watched) => {
                self.dirty.insert(key.clone());
                self.services.insert(key.clone(), watched);
                true
            }
            Err(problems) => {
                self.errors.extend(problems);
                false
            }
        }
    }

    pub fn delete_service(&mut self, service: &Service) {
        let key = key_of(&service.metadata);
        self.services.remove(&key);
        self.dirty.insert(key);
    }

    /// Replaces every `EndpointSlice` with `slices` (a full list). An invalid one keeps its
    /// previous version, if any.
    pub fn sync_slices(&mut self, slices: impl IntoIterator<Item = EndpointSlice>) {
        let mut previous = std::mem::take(&mut self.slices);
        self.slices_of.clear();
        self.dirty
            .extend(previous.values().filter_map(|(owner, _)| owner.clone()));
        for slice in slices {
            let key = key_of(&slice.metadata);
            match WatchedSlice::check(&self.source, &slice) {
                Ok(watched) => self.insert_slice(key, watched),
                Err(problems) => {
                    self.errors.extend(problems);
                    if let Some((_, kept)) = previous.remove(&key) {
                        self.insert_slice(key, kept);
                    }
                }
            }
        }
        self.slices_synced = true;
    }

    /// Adds or replaces an `EndpointSlice`; an invalid one leaves its previous version in effect.
    pub fn put_slice(&mut self, slice: &EndpointSlice) {
        match WatchedSlice::check(&self.source, slice) {
            Ok(watched) => {
                let key = key_of(&slice.metadata);
                // A slice can move to another Service when its label changes.
                self.remove_slice(&key);
                self.insert_slice(key, watched);
            }
            Err(problems) => self.errors.extend(problems),
        }
    }

    fn insert_slice(&mut self, key: ObjectKey, slice: WatchedSlice) {
        let owner = slice
            .service()
            .map(|(namespace, name)| (namespace.to_owned(), name.to_owned()));
        if let Some(service) = &owner {
            self.slices_of
                .entry(service.clone())
                .or_default()
                .insert(key.clone());
            self.dirty.insert(service.clone());
        }
        self.slices.insert(key, (owner, slice));
    }

    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        self.remove_slice(&key_of(&slice.metadata));
    }

    fn remove_slice(&mut self, key: &ObjectKey) {
        let Some((Some(service), _)) = self.slices.remove(key) else {
            return;
        };
        if let Entry::Occupied(mut entry) = self.slices_of.entry(service.clone()) {
            entry.get_mut().remove(key);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
        self.dirty.insert(service);
    }

    /// Joins the Services changed since the last call and returns the frontends to program or
    /// remove, with the problems of Services that cannot be served.
    pub fn take_changes(&mut self) -> (Changes, Vec<ManifestError>) {
        let mut changes = Changes::new();
        let mut errors = std::mem::take(&mut self.errors);
        let mut freed = Vec::new();
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty {
            let new = self.join(key);
            let old = self.made.remove(key).unwrap_or_default();
            for frontend in old.keys() {
                if !new.contains_key(frontend) && self.owner.get(frontend) == Some(key) {
                    self.owner.remove(frontend);
                    changes.insert(*frontend, None);
                    freed.push(*frontend);
                }
            }
            for (frontend, spec) in &new {
                match self.owner.get(frontend) {
                    None => {
                        self.owner.insert(*frontend, key.clone());
                        changes.insert(*frontend, Some(spec.clone()));
                    }
                    Some(owner) if owner == key => {
                        if old.get(frontend) != Some(spec) {
                            changes.insert(*frontend, Some(spec.clone()));
                        }
                    }
                    Some(owner) => errors.push(self.conflict(key, frontend, owner)),
                }
            }
            if !new.is_empty() {
                self.made.insert(key.clone(), new);
            }
        }
        // A frontend given up may be claimed by another Service that wanted it too.
        for frontend in freed {
            let claimant = self
                .made
                .iter()
                .filter(|(_, made)| made.contains_key(&frontend))
                .map(|(key, _)| key)
                .min()
                .cloned();
            if let Some(key) = claimant {
                let spec = self.made[&key][&frontend].clone();
                self.owner.insert(frontend, key);
                changes.insert(frontend, Some(spec));
            }
        }
        (changes, errors)
    }

    /// Everything served, as a full desired state (for the first sync, which also removes what an
    /// earlier agent programmed and the control plane no longer has).
    #[must_use]
    pub fn desired_state(&self) -> DesiredState {
        DesiredState {
            services: self
                .owner
                .iter()
                .map(|(frontend, key)| (*frontend, self.made[key][frontend].clone()))
                .collect(),
        }
    }

    fn join(&self, key: &ObjectKey) -> BTreeMap<Frontend, ServicePort> {
        let Some(service) = self.services.get(key) else {
            return BTreeMap::new();
        };
        let slices = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(slice).map(|(_, slice)| slice));
        service.frontends(slices)
    }

    fn conflict(&self, key: &ObjectKey, frontend: &Frontend, owner: &ObjectKey) -> ManifestError {
        ManifestError {
            file: self.source.clone(),
            document: 0,
            object: Some(format!("Service {}/{}", key.0, key.1)),
            field: None,
            message: format!(
                "frontend {frontend} is already served by Service {}/{}; it keeps it",
                owner.0, owner.1
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "selector": {"app": name},
                     "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
        let endpoints: Vec<_> = ips
            .iter()
            .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .unwrap()
    }

    fn frontend(ip: &str) -> Frontend {
        Frontend {
            ip: ip.parse().unwrap(),
            port: 80,
            protocol: gannet_k8s::Protocol::Tcp,
        }
    }

    fn backends_of(changes: &Changes, ip: &str) -> Option<Vec<String>> {
        changes[&frontend(ip)].as_ref().map(|spec| {
            spec.backends
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        })
    }

    fn cache() -> ServiceCache {
        ServiceCache::new(Path::new("unix:/test/control.sock"))
    }

    #[test]
    fn events_yield_only_what_changed() {
        let mut cache = cache();
        cache.sync_services(vec![
            service("web", "10.96.0.10"),
            service("db", "10.96.0.11"),
        ]);
        assert!(!cache.synced(), "slices not listed yet");
        cache.sync_slices(vec![slice("web-1", "web", &["10.244.0.5"])]);
        assert!(cache.synced());
        let (changes, errors) = cache.take_changes();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(changes.len(), 2);
        assert_eq!(
            backends_of(&changes, "10.96.0.10"),
            Some(vec!["10.244.0.5:8080".to_owned()])
        );
        assert_eq!(backends_of(&changes, "10.96.0.11"), Some(vec![]));
        assert_eq!(cache.desired_state().services.len(), 2);

        // Nothing happened: nothing to do.
        assert!(cache.take_changes().0.is_empty());

        // A second slice for web: only web changes.
        cache.put_slice(&slice("web-2", "web", &["10.244.0.6"]));
        let (changes, _) = cache.take_changes();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            backends_of(&changes, "10.96.0.10"),
            Some(vec![
                "10.244.0.5:8080".to_owned(),
                "10.244.0.6:8080".to_owned()
            ])
        );

        // The same slice again, unchanged: nothing to program.
        cache.put_slice(&slice("web-2", "web", &["10.244.0.6"]));
        assert!(cache.take_changes().0.is_empty());

        // Deleting db removes its frontend.
        cache.delete_service(&service("db", "10.96.0.11"));
        let (changes, _) = cache.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[&frontend("10.96.0.11")], None);

        // A slice moving to another Service changes both.
        cache.put_service(&service("db", "10.96.0.11"));
        cache.take_changes();
        cache.put_slice(&slice("web-2", "db", &["10.244.0.6"]));
        let (changes, _) = cache.take_changes();
        assert_eq!(
            backends_of(&changes, "10.96.0.10"),
            Some(vec!["10.244.0.5:8080".to_owned()])
        );
        assert_eq!(
            backends_of(&changes, "10.96.0.11"),
            Some(vec!["10.244.0.6:8080".to_owned()])
        );
    }

    #[test]
    fn relist_removes_what_is_gone() {
        let mut cache = cache();
        cache.sync_services(vec![
            service("web", "10.96.0.10"),
            service("db", "10.96.0.11"),
        ]);
        cache.sync_slices(vec![slice("web-1", "web", &["10.244.0.5"])]);
        cache.take_changes();
        // The watch expired; the new list lacks db and web's slice.
        cache.sync_services(vec![service("web", "10.96.0.10")]);
        cache.sync_slices(vec![]);
        let (changes, _) = cache.take_changes();
        assert_eq!(changes[&frontend("10.96.0.11")], None);
        assert_eq!(backends_of(&changes, "10.96.0.10"), Some(vec![]));
        assert_eq!(cache.slice_count(), 0);
    }

    #[test]
    fn a_contested_frontend_goes_to_the_next_claimant() {
        let mut cache = cache();
        cache.sync_slices(vec![]);
        cache.sync_services(vec![service("a", "10.96.0.10")]);
        cache.take_changes();
        cache.put_service(&service("b", "10.96.0.10"));
        let (changes, errors) = cache.take_changes();
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(errors.len(), 1);
        let message = errors[0].to_string();
        assert!(
            message.contains("Service default/b") && message.contains("default/a"),
            "{message}"
        );
        cache.delete_service(&service("a", "10.96.0.10"));
        let (changes, _) = cache.take_changes();
        let spec = changes[&frontend("10.96.0.10")]
            .as_ref()
            .expect("b takes it");
        assert_eq!(spec.name, "b");
    }
}
