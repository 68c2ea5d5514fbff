//! A pod's containers in the runtime: `CreateContainer` as the pod's spec says (image, command,
//! args, environment, working directory, log file per attempt), `StartContainer`, their status,
//! and removing an exited attempt.

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use tracing::{info, warn};

use super::cri::{Cri, call};
use super::sandbox::selector;
use super::status::Waiting;
use super::worker::Context;
use super::{CONTAINER_NAME_LABEL, POD_NAME_LABEL, POD_NAMESPACE_LABEL, label, uid};

pub(super) async fn container_status(
    cri: &mut Cri,
    name: &str,
    id: &str,
) -> Result<cri::ContainerStatus, String> {
    let request = cri::ContainerStatusRequest {
        container_id: id.to_owned(),
        verbose: false,
    };
    call("ContainerStatus", cri.runtime.container_status(request))
        .await?
        .status
        .ok_or_else(|| format!("ContainerStatus of {name}: no status"))
}

/// `CreateContainer` of restart `attempt`; `Ok(Err(waiting))` when the container cannot be
/// created as specified (its image is not on the node: there is no registry to pull from, so
/// `ErrImageNeverPull`).
pub(super) async fn create(
    context: &mut Context,
    pod: &Pod,
    sandbox: &str,
    sandbox_config: &cri::PodSandboxConfig,
    spec: &Container,
    attempt: u32,
    sources: &crate::kubelet::env::Sources,
) -> Result<Result<String, Waiting>, String> {
    let image = spec.image.clone().unwrap_or_default();
    if image.is_empty() {
        return Ok(Err(Waiting {
            reason: "InvalidImageName".to_owned(),
            message: format!("container {}: no image given", spec.name),
        }));
    }
    let request = cri::ImageStatusRequest {
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..cri::ImageSpec::default()
        }),
        verbose: false,
    };
    if call("ImageStatus", context.cri.images.image_status(request))
        .await?
        .image
        .is_none()
    {
        return Ok(Err(Waiting {
            reason: "ErrImageNeverPull".to_owned(),
            message: format!(
                "container image \"{image}\" is not present on the node and gannetd pulls no \
                 images: import it with `gannetctl image import FILE --node {}` (or `gannetd \
                 image import FILE` on the node)",
                context.node
            ),
        }));
    }
    let mut labels = selector(&context.node, Some(&uid(pod)));
    labels.insert(CONTAINER_NAME_LABEL.to_owned(), spec.name.clone());
    labels.insert(
        POD_NAME_LABEL.to_owned(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(
        POD_NAMESPACE_LABEL.to_owned(),
        pod.metadata.namespace.clone().unwrap_or_default(),
    );
    let envs = match crate::kubelet::env::environment(pod, spec, sources) {
        Ok(envs) => envs
            .into_iter()
            .map(|(key, value)| cri::KeyValue { key, value })
            .collect(),
        Err(message) => {
            return Ok(Err(Waiting {
                reason: "CreateContainerConfigError".to_owned(),
                message,
            }));
        }
    };
    let mounts = match super::volumes::mounts(&context.pods_dir, &uid(pod), pod, spec, sources) {
        Ok(mounts) => mounts,
        Err(message) => {
            return Ok(Err(Waiting {
                reason: "CreateContainerConfigError".to_owned(),
                message,
            }));
        }
    };
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: spec.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image,
            ..cri::ImageSpec::default()
        }),
        command: spec.command.clone().unwrap_or_default(),
        args: spec.args.clone().unwrap_or_default(),
        working_dir: spec.working_dir.clone().unwrap_or_default(),
        envs,
        mounts,
        labels,
        log_path: format!("{}/{attempt}.log", spec.name),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(super::resources::linux_resources(
                pod,
                spec,
                context.env_sources.node_memory,
            )),
            ..cri::LinuxContainerConfig::default()
        }),
        ..cri::ContainerConfig::default()
    };
    let request = cri::CreateContainerRequest {
        pod_sandbox_id: sandbox.to_owned(),
        config: Some(config),
        sandbox_config: Some(sandbox_config.clone()),
    };
    match call(
        "CreateContainer",
        context.cri.runtime.create_container(request),
    )
    .await
    {
        Ok(created) => {
            info!(
                pod = label(pod),
                container = spec.name,
                id = created.container_id,
                "container created"
            );
            Ok(Ok(created.container_id))
        }
        Err(error) => Ok(Err(Waiting {
            reason: "CreateContainerError".to_owned(),
            message: error,
        })),
    }
}

pub(super) async fn start(cri: &mut Cri, pod: &Pod, name: &str, id: &str) -> Result<(), String> {
    let request = cri::StartContainerRequest {
        container_id: id.to_owned(),
    };
    match call("StartContainer", cri.runtime.start_container(request)).await {
        Ok(_) => {
            info!(pod = label(pod), container = name, id, "container started");
            Ok(())
        }
        // The runtime records the failure in the container's status (exited, StartError),
        // which is reported; the restart policy decides whether it is started again.
        Err(error) => {
            warn!(pod = label(pod), container = name, %error, "container did not start");
            Ok(())
        }
    }
}

/// `RemoveContainer` of an exited container (a failure is logged: the next restart tries again).
pub(super) async fn remove_container(cri: &mut Cri, id: &str) {
    let remove = cri::RemoveContainerRequest {
        container_id: id.to_owned(),
    };
    if let Err(error) = call("RemoveContainer", cri.runtime.remove_container(remove)).await {
        warn!(container = id, %error, "removing an exited container");
    }
}
