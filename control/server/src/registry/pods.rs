//! Pods as the API server keeps them on apply: the status an agent or kubelet wrote stays.

use k8s_openapi::api::core::v1::Pod;

pub(super) fn prepare_pod(pod: &mut Pod, old: Option<&Pod>) {
    if pod.status.is_none() {
        pod.status = old.and_then(|old| old.status.clone());
    }
    if let Some(old) = old
        && old.metadata.deletion_timestamp.is_some()
    {
        pod.metadata
            .deletion_timestamp
            .clone_from(&old.metadata.deletion_timestamp);
        pod.metadata.deletion_grace_period_seconds = old.metadata.deletion_grace_period_seconds;
    }
    if let Some(spec) = &mut pod.spec {
        for container in &mut spec.containers {
            for port in container.ports.iter_mut().flatten() {
                if port.protocol.as_deref().is_none_or(str::is_empty) {
                    port.protocol = Some("TCP".to_owned());
                }
            }
        }
    }
}
