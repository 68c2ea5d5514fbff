//! Services and `EndpointSlices` checked once, for a source that keeps them between changes (a
//! control plane's watch) and joins a few at a time: only what the join reads is kept, a small
//! fraction of the objects' size.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::error::{FieldError, ManifestError};
use crate::join::{Claims, Located, add_service};
use crate::model::{DesiredState, Frontend, ServicePort};
use crate::validate::{Checked, ValidService, ValidSlice, check_service, check_slice, meta_label};

fn located_errors(source: &Path, label: &str, problems: Vec<FieldError>) -> Vec<ManifestError> {
    let located = Located {
        file: source,
        document: 0,
        object: &(),
    };
    problems
        .into_iter()
        .map(|problem| located.error(label.to_owned(), problem.field, problem.message))
        .collect()
}

/// A checked Service: what gannet balances of it, or nothing (headless, `ExternalName`).
#[derive(Debug)]
pub struct WatchedService {
    service: Option<ValidService>,
}

impl WatchedService {
    /// Checks `service` as [`desired_state`](crate::desired_state) does; errors name `source`
    /// where they would name a file.
    ///
    /// # Errors
    /// Every problem of the object.
    pub fn check(source: &Path, service: &Service) -> Result<Self, Vec<ManifestError>> {
        let label = meta_label("Service", &service.metadata);
        match check_service(service) {
            Ok(Checked::Serve(service)) => Ok(Self {
                service: Some(service),
            }),
            Ok(Checked::Skip(reason)) => {
                tracing::debug!(service = label, reason, "not balanced");
                Ok(Self { service: None })
            }
            Err(problems) => Err(located_errors(source, &label, problems)),
        }
    }

    /// The frontends of this Service with the endpoints of those of `slices` that belong to it
    /// (the others are passed over), as [`desired_state`](crate::desired_state) joins them.
    #[must_use]
    pub fn frontends<'a>(
        &self,
        slices: impl IntoIterator<Item = &'a WatchedSlice>,
    ) -> BTreeMap<Frontend, ServicePort> {
        let Some(service) = &self.service else {
            return BTreeMap::new();
        };
        let slices: Vec<&ValidSlice> = slices
            .into_iter()
            .filter_map(|slice| slice.slice.as_ref())
            .filter(|slice| {
                slice.namespace == service.namespace && slice.service_name == service.name
            })
            .collect();
        let mut state = DesiredState::default();
        // Into an empty state: a Service's own frontends, node ports and addresses never collide
        // (`check_service`). Collisions between Services are the caller's to find.
        let _ = add_service(&mut state, &mut Claims::default(), service, &slices);
        state.services
    }
}

/// A checked `EndpointSlice`: its usable endpoints (ready, or serving and terminating, with their
/// node) and ports, or nothing (an address type gannet does not balance).
#[derive(Debug)]
pub struct WatchedSlice {
    slice: Option<ValidSlice>,
}

impl WatchedSlice {
    /// Checks `slice` as [`desired_state`](crate::desired_state) does.
    ///
    /// # Errors
    /// Every problem of the object.
    pub fn check(source: &Path, slice: &EndpointSlice) -> Result<Self, Vec<ManifestError>> {
        let label = meta_label("EndpointSlice", &slice.metadata);
        match check_slice(slice) {
            Ok(Checked::Serve(slice)) => Ok(Self { slice: Some(slice) }),
            Ok(Checked::Skip(reason)) => {
                tracing::debug!(slice = label, reason, "not used");
                Ok(Self { slice: None })
            }
            Err(problems) => Err(located_errors(source, &label, problems)),
        }
    }

    /// `(namespace, name)` of the Service it belongs to.
    #[must_use]
    pub fn service(&self) -> Option<(&str, &str)> {
        self.slice
            .as_ref()
            .map(|slice| (slice.namespace.as_str(), slice.service_name.as_str()))
    }
}
