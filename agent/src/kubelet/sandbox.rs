//! A pod's sandbox in the runtime: its configuration (identity, the labels that find it again,
//! its log directory), listing what gannetd runs on this node, and stopping and removing it
//! (with its containers) when the pod goes, or when it was left by a pod deleted while gannetd
//! was down.

use std::collections::{BTreeSet, HashMap};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::cri::{Cri, call};
use super::worker::{Context, DEFAULT_GRACE_SECONDS};
use super::{
    MANAGED_BY, MANAGED_BY_LABEL, NODE_LABEL, POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL,
    label, uid,
};

/// The labels that find what gannetd runs for this node (and, given a uid, for one pod).
pub(super) fn selector(node: &str, uid: Option<&str>) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (NODE_LABEL.to_owned(), node.to_owned()),
    ]);
    if let Some(uid) = uid {
        labels.insert(POD_UID_LABEL.to_owned(), uid.to_owned());
    }
    labels
}

pub(super) async fn list_sandboxes(
    cri: &mut Cri,
    node: &str,
    uid: Option<&str>,
) -> Result<Vec<cri::PodSandbox>, String> {
    let request = cri::ListPodSandboxRequest {
        filter: Some(cri::PodSandboxFilter {
            label_selector: selector(node, uid),
            ..cri::PodSandboxFilter::default()
        }),
    };
    Ok(
        call("ListPodSandbox", cri.runtime.list_pod_sandbox(request))
            .await?
            .items,
    )
}

pub(super) async fn list_containers(
    cri: &mut Cri,
    sandbox: &str,
) -> Result<Vec<cri::Container>, String> {
    let request = cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            pod_sandbox_id: sandbox.to_owned(),
            ..cri::ContainerFilter::default()
        }),
    };
    Ok(call("ListContainers", cri.runtime.list_containers(request))
        .await?
        .containers)
}

/// The sandbox of `pod`: its identity, the labels that find it again, its log directory; no
/// DNS configuration (the node's resolv.conf), the pod's own network namespace.
pub(super) fn sandbox_config(pod: &Pod, context: &Context) -> cri::PodSandboxConfig {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| gannet_api::DEFAULT_NAMESPACE.to_owned());
    let uid = uid(pod);
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.extend(selector(&context.node, Some(&uid)));
    labels.insert(POD_NAME_LABEL.to_owned(), name.clone());
    labels.insert(POD_NAMESPACE_LABEL.to_owned(), namespace.clone());
    let hostname: String = name.chars().take(63).collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: namespace.clone(),
            attempt: 0,
        }),
        hostname,
        log_directory: context
            .log_dir
            .join(gannet_api::pod_logs::pod_dir_name(&namespace, &name, &uid))
            .display()
            .to_string(),
        dns_config: None,
        labels,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: context.cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod.into(),
                    pid: cri::NamespaceMode::Container.into(),
                    ipc: cri::NamespaceMode::Pod.into(),
                    ..cri::NamespaceOption::default()
                }),
                ..cri::LinuxSandboxSecurityContext::default()
            }),
            ..cri::LinuxPodSandboxConfig::default()
        }),
        ..cri::PodSandboxConfig::default()
    }
}

/// Stops `pod`'s containers with `grace` seconds each (at once), then stops and removes its
/// sandboxes. Errors are logged; what is left is found again by [`remove_orphans`] at the next
/// start.
pub(super) async fn teardown(context: &mut Context, pod: &Pod, grace: i64) {
    let uid = uid(pod);
    let sandboxes = match list_sandboxes(&mut context.cri, &context.node, Some(&uid)).await {
        Ok(sandboxes) => sandboxes,
        Err(error) => {
            warn!(pod = label(pod), %error, "cannot list the pod's sandboxes to stop them");
            return;
        }
    };
    info!(pod = label(pod), grace_seconds = grace, "stopping the pod");
    for sandbox in sandboxes {
        stop_containers(&mut context.cri, &sandbox.id, grace).await;
        remove_sandbox(&mut context.cri, &sandbox.id).await;
        info!(pod = label(pod), sandbox = sandbox.id, "sandbox removed");
    }
    super::volumes::remove(&context.pods_dir, &uid);
}

/// `StopContainer` for every running container of a sandbox, all at once.
pub(super) async fn stop_containers(cri: &mut Cri, sandbox: &str, grace: i64) {
    let containers = match list_containers(cri, sandbox).await {
        Ok(containers) => containers,
        Err(error) => {
            warn!(sandbox, %error, "cannot list the sandbox's containers to stop them");
            return;
        }
    };
    let mut stops = JoinSet::new();
    for container in containers {
        if container.state != i32::from(cri::ContainerState::ContainerRunning) {
            continue;
        }
        let mut cri = cri.clone();
        stops.spawn(async move {
            let request = cri::StopContainerRequest {
                container_id: container.id.clone(),
                timeout: grace,
            };
            if let Err(error) = call("StopContainer", cri.runtime.stop_container(request)).await {
                warn!(container = container.id, %error, "stopping a container");
            }
        });
    }
    while stops.join_next().await.is_some() {}
}

/// `StopPodSandbox` (stops what still runs in it and releases its network) and
/// `RemovePodSandbox` (removes it and its containers).
pub(super) async fn remove_sandbox(cri: &mut Cri, id: &str) {
    let stop = cri::StopPodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    };
    if let Err(error) = call("StopPodSandbox", cri.runtime.stop_pod_sandbox(stop)).await {
        warn!(sandbox = id, %error, "stopping a sandbox");
        return;
    }
    let remove = cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    };
    if let Err(error) = call("RemovePodSandbox", cri.runtime.remove_pod_sandbox(remove)).await {
        warn!(sandbox = id, %error, "removing a sandbox");
    }
}

/// After the first list of Pods: the sandboxes gannetd started on this node for pods that no
/// longer exist (deleted while gannetd was down) are stopped and removed.
pub(super) async fn remove_orphans(mut context: Context, pods: BTreeSet<String>) {
    let sandboxes = match list_sandboxes(&mut context.cri, &context.node, None).await {
        Ok(sandboxes) => sandboxes,
        Err(error) => {
            warn!(%error, "cannot list this node's sandboxes to find orphans");
            return;
        }
    };
    for sandbox in sandboxes {
        let uid = sandbox
            .labels
            .get(POD_UID_LABEL)
            .cloned()
            .unwrap_or_default();
        if pods.contains(&uid) {
            continue;
        }
        let pod = sandbox
            .metadata
            .as_ref()
            .map(|m| format!("{}/{}", m.namespace, m.name))
            .unwrap_or_default();
        info!(
            pod,
            sandbox = sandbox.id,
            "the pod of this sandbox is gone: removing it"
        );
        stop_containers(&mut context.cri, &sandbox.id, DEFAULT_GRACE_SECONDS).await;
        remove_sandbox(&mut context.cri, &sandbox.id).await;
    }
    // The volumes of pods that are gone, their containers with them.
    for uid in super::volumes::on_disk(&context.pods_dir) {
        if !pods.contains(&uid) {
            info!(uid, "the pod of these volumes is gone: removing them");
            super::volumes::remove(&context.pods_dir, &uid);
        }
    }
}
