//! One worker per Pod bound to this node: a reconcile loop that compares the desired Pod with
//! what the runtime lists for it (`ListPodSandbox`/`ListContainers`, by the labels gannetd sets)
//! and does what is missing: `RunPodSandbox`, then `CreateContainer` + `StartContainer` per
//! container. Because the runtime's lists are the only record, a restarted gannetd adopts the
//! sandboxes and containers that run and never starts a second copy. Deleting the Pod stops its
//! containers with the grace period (`StopContainer`: SIGTERM, wait, SIGKILL), then stops and
//! removes the sandbox (the runtime's CNI `DEL` releases its network).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use gannet_api::{Client, DeleteOptions, Kind};
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::container::{container_status, create, remove_container, start};
use super::cri::{Cri, call};
use super::probe::{self, Failed, Probes};
use super::restart::{Restart, RestartPolicy, restart, restart_policy};
use super::sandbox::{list_containers, list_sandboxes, remove_sandbox, sandbox_config, teardown};
use super::status::{self, Observed, PodView};
use super::{CONTAINER_NAME_LABEL, label, uid};

/// How often a worker compares its pod with the runtime when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(1);
/// The grace period of a pod whose spec says none (Kubernetes' default).
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What every worker shares.
#[derive(Clone, Debug)]
pub struct Context {
    pub cri: Cri,
    pub client: Client,
    /// This node's name (the label [`NODE_LABEL`]).
    pub node: String,
    /// The pods' log directories go below it.
    pub log_dir: PathBuf,
    /// The pods' volume directories go below it (`--state-dir`/`pods`).
    pub pods_dir: PathBuf,
    /// `--pod-cgroup-parent`; empty: the runtime's default.
    pub cgroup_parent: String,
    /// The runtime's name, for container ids (`containerd://…`).
    pub runtime_name: String,
    /// What the containers' variables refer to beyond the Pod (the node's capacity).
    pub env_sources: super::env::Sources,
}

/// Runs one pod until its desired state is `None` (deleted, or no longer bound here) or the Pod
/// is terminating: then its containers and sandbox are stopped and removed.
pub async fn run(mut context: Context, mut desired: watch::Receiver<Option<Pod>>) {
    let mut last: Option<Pod> = None;
    let mut failed: Option<String> = None;
    let mut probes: HashMap<String, Probes> = HashMap::new();
    // The containers a probe failed and the worker stopped: restarted unless the policy is
    // Never, whatever their exit code (as the kubelet does).
    let mut killed: HashSet<String> = HashSet::new();
    loop {
        let pod = desired.borrow_and_update().clone();
        let Some(pod) = pod else {
            if let Some(pod) = last {
                let grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(DEFAULT_GRACE_SECONDS);
                teardown(&mut context, &pod, grace).await;
            }
            return;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            teardown(&mut context, &pod, remaining_grace(&pod)).await;
            finalize(&mut context.client, &pod).await;
            return;
        }
        match sync(&mut context, &pod, &mut killed).await {
            Ok(mut view) => {
                failed = None;
                for failure in probe::run_due(&mut context.cri, &pod, &mut view, &mut probes).await
                {
                    kill(&mut context.cri, &pod, &failure).await;
                    killed.insert(failure.id);
                }
                // Compared with the Pod as the watch has it, so that a status someone else
                // wrote over this one (gannet-cni's registration reports addresses too) is
                // corrected.
                let fresh = status::build(&view);
                let wanted = status::merge(pod.status.as_ref(), &fresh);
                if pod.status.as_ref() != Some(&wanted)
                    && let Err(error) = status::report(&mut context.client, &pod, &fresh).await
                {
                    debug!(pod = label(&pod), %error, "status not reported; retrying");
                }
            }
            Err(error) => {
                if failed.as_ref() != Some(&error) {
                    warn!(pod = label(&pod), %error, "pod not in its desired state; retrying");
                    failed = Some(error);
                }
            }
        }
        last = Some(pod);
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// Stops a container one of its probes failed, with the probe's grace period or the pod's (the
/// kubelet's `Killing` event, as a log line); the next sync restarts it as the pod's
/// `restartPolicy` says.
async fn kill(cri: &mut Cri, pod: &Pod, failed: &Failed) {
    let grace = failed
        .grace_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let then = if restart_policy(pod) == RestartPolicy::Never {
        "it will not be restarted (restartPolicy Never)"
    } else {
        "it will be restarted"
    };
    warn!(
        pod = label(pod),
        container = failed.container,
        probe = %failed.kind,
        failure = failed.failure,
        grace_seconds = grace,
        "Killing: container {} failed its {} probe, {then}",
        failed.container,
        failed.kind
    );
    let request = cri::StopContainerRequest {
        container_id: failed.id.clone(),
        timeout: grace,
    };
    if let Err(error) = call("StopContainer", cri.runtime.stop_container(request)).await {
        warn!(pod = label(pod), container = failed.container, %error, "stopping a container its probe failed");
    }
}

/// The seconds left of a terminating pod's grace period (at least 1).
fn remaining_grace(pod: &Pod) -> i64 {
    let Some(deadline) = &pod.metadata.deletion_timestamp else {
        return DEFAULT_GRACE_SECONDS;
    };
    let left = deadline.0.duration_since(status::now_timestamp()).as_secs();
    left.max(1)
}

/// Removes a terminating Pod from the control plane once its containers are gone (as a kubelet
/// does); the control plane removes it at the end of the grace period otherwise.
async fn finalize(client: &mut Client, pod: &Pod) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let options = DeleteOptions {
        resource_version: None,
        grace_period_seconds: None,
    };
    match client.delete(Kind::Pod, namespace, name, &options).await {
        Ok(_) => info!(pod = label(pod), "terminated pod removed"),
        Err(error) => {
            debug!(
                pod = label(pod),
                %error,
                "terminated pod not removed; the control plane will at its deadline"
            );
        }
    }
}

/// Brings the runtime in line with `pod` and returns what it has then.
async fn sync(
    context: &mut Context,
    pod: &Pod,
    killed: &mut HashSet<String>,
) -> Result<PodView, String> {
    let uid = uid(pod);
    let mut sandboxes = list_sandboxes(&mut context.cri, &context.node, Some(&uid)).await?;
    sandboxes.sort_by_key(|s| s.created_at);
    let (ready, stale): (Vec<_>, Vec<_>) = sandboxes
        .into_iter()
        .partition(|s| s.state == i32::from(cri::PodSandboxState::SandboxReady));
    // A sandbox that is no longer ready (its pause process died, the node restarted) is not
    // used again: it goes, and a new one is made.
    for sandbox in &stale {
        info!(
            pod = label(pod),
            sandbox = sandbox.id,
            "removing a sandbox that is not ready"
        );
        remove_sandbox(&mut context.cri, &sandbox.id).await;
    }
    for extra in ready.iter().skip(1) {
        warn!(
            pod = label(pod),
            sandbox = extra.id,
            "a second sandbox of the pod: removing it"
        );
        remove_sandbox(&mut context.cri, &extra.id).await;
    }
    let config = sandbox_config(pod, context);
    let (sandbox, created) = match ready.first() {
        Some(sandbox) => (sandbox.id.clone(), false),
        None => {
            let request = cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            };
            let id = call(
                "RunPodSandbox",
                context.cri.runtime.run_pod_sandbox(request),
            )
            .await?
            .pod_sandbox_id;
            info!(pod = label(pod), sandbox = id, "sandbox running");
            (id, true)
        }
    };
    // A sandbox just made has no containers yet: one call less on the way to a pod's start.
    let existing = if created {
        Vec::new()
    } else {
        list_containers(&mut context.cri, &sandbox).await?
    };
    let mut view = PodView {
        runtime_name: context.runtime_name.clone(),
        ..PodView::default()
    };
    let specs = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    // The sandbox's addresses: the pod's status, and its containers' `status.podIP`.
    let request = cri::PodSandboxStatusRequest {
        pod_sandbox_id: sandbox.clone(),
        verbose: false,
    };
    let status = call(
        "PodSandboxStatus",
        context.cri.runtime.pod_sandbox_status(request),
    )
    .await?
    .status
    .ok_or_else(|| format!("PodSandboxStatus of {sandbox}: no status"))?;
    if let Some(network) = &status.network {
        view.ips = std::iter::once(network.ip.clone())
            .chain(network.additional_ips.iter().map(|ip| ip.ip.clone()))
            .filter(|ip| !ip.is_empty())
            .collect();
    }
    view.started_ns = Some(status.created_at);
    let sources = super::env::Sources {
        pod_ips: view.ips.clone(),
        ..context.env_sources.clone()
    };
    let policy = restart_policy(pod);
    for spec in &specs {
        let mine: Vec<&cri::Container> = existing
            .iter()
            .filter(|c| c.labels.get(CONTAINER_NAME_LABEL) == Some(&spec.name))
            .collect();
        let newest = mine.iter().max_by_key(|c| c.created_at).copied();
        let id = match newest {
            Some(container)
                if container.state == i32::from(cri::ContainerState::ContainerExited) =>
            {
                let status = container_status(&mut context.cri, &spec.name, &container.id).await?;
                let policy = if killed.contains(&container.id) && policy == RestartPolicy::OnFailure
                {
                    RestartPolicy::Always
                } else {
                    policy
                };
                match restart(policy, &status, super::restart::now_ns()) {
                    Restart::No => {
                        view.containers
                            .push((spec.name.clone(), Observed::Runtime(Box::new(status))));
                        continue;
                    }
                    Restart::After(delay) => {
                        view.containers.push((
                            spec.name.clone(),
                            Observed::BackOff {
                                last: Box::new(status),
                                delay,
                            },
                        ));
                        continue;
                    }
                    Restart::Now => {
                        let attempt = container.metadata.as_ref().map_or(0, |m| m.attempt) + 1;
                        // The exited container stays (its log) until the next one exits; the
                        // ones before it go.
                        for old in mine.iter().filter(|c| c.id != container.id) {
                            remove_container(&mut context.cri, &old.id).await;
                            killed.remove(&old.id);
                        }
                        match create(context, pod, &sandbox, &config, spec, attempt, &sources)
                            .await?
                        {
                            Ok(id) => {
                                info!(
                                    pod = label(pod),
                                    container = spec.name,
                                    restarts = attempt,
                                    exit_code = status.exit_code,
                                    "restarting the container (restartPolicy {policy:?})"
                                );
                                start(&mut context.cri, pod, &spec.name, &id).await?;
                                id
                            }
                            Err(waiting) => {
                                view.containers
                                    .push((spec.name.clone(), Observed::Waiting(waiting)));
                                continue;
                            }
                        }
                    }
                }
            }
            Some(container) => {
                if container.state == i32::from(cri::ContainerState::ContainerCreated) {
                    start(&mut context.cri, pod, &spec.name, &container.id).await?;
                }
                container.id.clone()
            }
            None => match create(context, pod, &sandbox, &config, spec, 0, &sources).await? {
                Ok(id) => {
                    start(&mut context.cri, pod, &spec.name, &id).await?;
                    id
                }
                Err(waiting) => {
                    view.containers
                        .push((spec.name.clone(), Observed::Waiting(waiting)));
                    continue;
                }
            },
        };
        let status = container_status(&mut context.cri, &spec.name, &id).await?;
        view.containers
            .push((spec.name.clone(), Observed::Runtime(Box::new(status))));
        // The attempt before, kept until this one exits: the container's `lastState`.
        let previous = mine
            .iter()
            .filter(|c| c.id != id && c.state == i32::from(cri::ContainerState::ContainerExited))
            .max_by_key(|c| c.created_at);
        if let Some(previous) = previous
            && let Ok(status) = container_status(&mut context.cri, &spec.name, &previous.id).await
        {
            view.previous.insert(spec.name.clone(), status);
        }
    }
    Ok(view)
}
