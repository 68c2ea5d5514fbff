//! The status a pod worker reports: what the runtime says of the pod's sandbox and containers,
//! as a kubelet writes it (phase, `Ready`/`ContainersReady` conditions, `podIPs`, container
//! states and restart counts). A container is ready while it runs and, when it has a readiness
//! probe, that probe says so; a container with a startup probe is `started` (and can be ready)
//! only once that probe passed.

use gannet_api::{Client, ClientError, Kind, Object};
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::info;

/// Why a container does not run (yet), as the kubelet's reasons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// One container of the pod spec as the runtime has it.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// The runtime's status of its newest container.
    Runtime(Box<cri::ContainerStatus>),
    /// No container could be created (missing image, a refused config).
    Waiting(Waiting),
    /// Its newest container exited and waits out the restart back-off (`CrashLoopBackOff`).
    BackOff {
        last: Box<cri::ContainerStatus>,
        delay: std::time::Duration,
    },
}

/// What a worker saw of its pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    /// The sandbox's addresses (first: the primary one).
    pub ips: Vec<String>,
    /// When the sandbox was created (nanoseconds since the epoch).
    pub started_ns: Option<i64>,
    /// Per container of the spec, in its order: name and state.
    pub containers: Vec<(String, Observed)>,
    /// The runtime's name, prefixed to container ids (`containerd://…`).
    pub runtime_name: String,
    /// The readiness of the containers with a readiness probe, by name (the others are ready
    /// while they run).
    pub readiness: std::collections::BTreeMap<String, bool>,
    /// Whether the running containers with a startup probe passed it, by name (the others are
    /// started while they run).
    pub started: std::collections::BTreeMap<String, bool>,
    /// The previous attempt of a container that was started again (the exited container the
    /// runtime keeps until the next one exits), by name: its `lastState`.
    pub previous: std::collections::BTreeMap<String, cri::ContainerStatus>,
}

/// The status fields a worker owns, without transition times (those are kept from the Pod's
/// current status while a condition does not change): equal views give equal statuses.
#[must_use]
pub fn build(view: &PodView) -> PodStatus {
    let statuses: Vec<ContainerStatus> = view
        .containers
        .iter()
        .map(|(name, observed)| {
            let mut status = container_status(name, observed, &view.runtime_name);
            if let (Observed::Runtime(_), Some(previous)) = (observed, view.previous.get(name)) {
                let exited = Observed::Runtime(Box::new(previous.clone()));
                status.last_state = container_status(name, &exited, &view.runtime_name).state;
            }
            let started = view.started.get(name).copied().unwrap_or(true);
            status.ready &= started && view.readiness.get(name).copied().unwrap_or(true);
            status.started = status.started.map(|s| s && started);
            status
        })
        .collect();
    let running = |s: &ContainerStatus| s.state.as_ref().is_some_and(|st| st.running.is_some());
    let terminated = |s: &ContainerStatus| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .map(|t| t.exit_code)
    };
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    // A container waiting out its restart back-off is restarting: the pod runs (as a kubelet
    // reports a crash-looping pod).
    let restarting = view
        .containers
        .iter()
        .any(|(_, o)| matches!(o, Observed::BackOff { .. }));
    let exits: Vec<Option<i32>> = statuses.iter().map(terminated).collect();
    let phase = if !statuses.is_empty() && exits.iter().all(Option::is_some) {
        if exits.iter().all(|e| *e == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if restarting || statuses.iter().any(running) {
        "Running"
    } else {
        "Pending"
    };
    let truth = |b: bool| if b { "True" } else { "False" };
    let condition = |type_: &str, status: &str| PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        ..PodCondition::default()
    };
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(vec![
            condition("PodScheduled", "True"),
            condition("Initialized", "True"),
            condition("ContainersReady", truth(all_ready)),
            condition("Ready", truth(all_ready)),
        ]),
        pod_ip: view.ips.first().cloned(),
        pod_ips: (!view.ips.is_empty())
            .then(|| view.ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: view.started_ns.map(time),
        container_statuses: Some(statuses),
        ..PodStatus::default()
    }
}

fn container_status(name: &str, observed: &Observed, runtime: &str) -> ContainerStatus {
    match observed {
        Observed::Waiting(waiting) => ContainerStatus {
            name: name.to_owned(),
            ready: false,
            restart_count: 0,
            started: Some(false),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(waiting.reason.clone()),
                    message: Some(waiting.message.clone()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        },
        Observed::BackOff { last, delay } => {
            let exited = container_status(name, &Observed::Runtime(last.clone()), runtime);
            ContainerStatus {
                ready: false,
                started: Some(false),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".to_owned()),
                        message: Some(format!(
                            "back-off {}s restarting failed container={name}",
                            delay.as_secs()
                        )),
                    }),
                    ..ContainerState::default()
                }),
                last_state: exited.state.clone(),
                ..exited
            }
        }
        Observed::Runtime(status) => {
            let id = format!("{runtime}://{}", status.id);
            let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            let state = match cri::ContainerState::try_from(status.state) {
                Ok(cri::ContainerState::ContainerRunning) => ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(time(status.started_at)),
                    }),
                    ..ContainerState::default()
                },
                Ok(cri::ContainerState::ContainerExited) => ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: status.exit_code,
                        reason: nonempty(&status.reason),
                        message: nonempty(&status.message),
                        started_at: (status.started_at > 0).then(|| time(status.started_at)),
                        finished_at: (status.finished_at > 0).then(|| time(status.finished_at)),
                        container_id: Some(id.clone()),
                        signal: None,
                    }),
                    ..ContainerState::default()
                },
                _ => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ContainerCreating".to_owned()),
                        message: None,
                    }),
                    ..ContainerState::default()
                },
            };
            let running = state.running.is_some();
            ContainerStatus {
                name: name.to_owned(),
                ready: running,
                restart_count: status
                    .metadata
                    .as_ref()
                    .map_or(0, |m| i32::try_from(m.attempt).unwrap_or(i32::MAX)),
                started: Some(running),
                image: status
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
                image_id: status.image_ref.clone(),
                container_id: Some(id),
                state: Some(state),
                ..ContainerStatus::default()
            }
        }
    }
}

/// Nanoseconds since the epoch as an API time, in whole seconds as the API keeps times (so a
/// status read back compares equal to the one written).
fn time(nanos: i64) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(nanos.div_euclid(1_000_000_000))
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

fn now() -> Time {
    Time(now_timestamp())
}

/// The current time in whole seconds, as the API keeps times (jiff's `now` needs a feature the
/// workspace leaves off).
pub(crate) fn now_timestamp() -> k8s_openapi::jiff::Timestamp {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// `fresh` laid over `current`: conditions keep their transition time while their status stays,
/// and conditions of other types (set by others) stay.
#[must_use]
pub fn merge(current: Option<&PodStatus>, fresh: &PodStatus) -> PodStatus {
    let mut merged = current.cloned().unwrap_or_default();
    let old_conditions = merged.conditions.take().unwrap_or_default();
    let mut conditions: Vec<PodCondition> = Vec::new();
    for condition in fresh.conditions.iter().flatten() {
        let old = old_conditions.iter().find(|c| c.type_ == condition.type_);
        let mut condition = condition.clone();
        condition.last_transition_time = match old {
            Some(old) if old.status == condition.status => old.last_transition_time.clone(),
            _ => Some(now()),
        };
        conditions.push(condition);
    }
    let foreign: Vec<PodCondition> = old_conditions
        .into_iter()
        .filter(|c| !conditions.iter().any(|n| n.type_ == c.type_))
        .collect();
    conditions.extend(foreign);
    merged.conditions = Some(conditions);
    merged.phase.clone_from(&fresh.phase);
    merged.pod_ip.clone_from(&fresh.pod_ip);
    merged.pod_ips.clone_from(&fresh.pod_ips);
    if fresh.start_time.is_some() {
        merged.start_time.clone_from(&fresh.start_time);
    }
    merged
        .container_statuses
        .clone_from(&fresh.container_statuses);
    merged
}

/// Writes `fresh` into the Pod's status (read, merge, write with the read `resourceVersion` as
/// precondition, again on a conflict). A Pod that is gone or was replaced (another uid) is left
/// alone.
///
/// # Errors
/// What the control plane answered.
pub async fn report(client: &mut Client, pod: &Pod, fresh: &PodStatus) -> Result<(), ClientError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    for _ in 0..3 {
        let current = match client.get(Kind::Pod, namespace, name).await {
            Ok(Object::Pod(current)) => current,
            Ok(_) | Err(ClientError::NotFound(_)) => return Ok(()),
            Err(error) => return Err(error),
        };
        if current.metadata.uid != pod.metadata.uid {
            return Ok(());
        }
        let status = merge(current.status.as_ref(), fresh);
        if current.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let mut updated = *current;
        updated.status = Some(status);
        match client.update_status(&Object::Pod(Box::new(updated))).await {
            Ok(_) => {
                info!(
                    pod = super::label(pod),
                    phase = fresh.phase.as_deref().unwrap_or_default(),
                    ips = fresh.pod_ip.as_deref().unwrap_or_default(),
                    "pod status reported"
                );
                return Ok(());
            }
            Err(ClientError::Conflict(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Err(ClientError::Conflict(format!(
        "Pod {} kept changing while its status was reported",
        super::label(pod)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(name: &str) -> (String, Observed) {
        (
            name.to_owned(),
            Observed::Runtime(Box::new(cri::ContainerStatus {
                id: "abc".to_owned(),
                state: cri::ContainerState::ContainerRunning.into(),
                started_at: 1_700_000_000_000_000_000,
                ..cri::ContainerStatus::default()
            })),
        )
    }

    fn condition(status: &PodStatus, type_: &str) -> String {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }

    fn exited(exit_code: i32, attempt: u32) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: "old".to_owned(),
            metadata: Some(cri::ContainerMetadata {
                name: "app".to_owned(),
                attempt,
            }),
            state: cri::ContainerState::ContainerExited.into(),
            exit_code,
            started_at: 1_700_000_000_000_000_000,
            finished_at: 1_700_000_001_000_000_000,
            ..cri::ContainerStatus::default()
        }
    }

    #[test]
    fn a_crash_looping_container_waits_with_its_last_exit_and_the_pod_runs() {
        let view = PodView {
            containers: vec![(
                "app".to_owned(),
                Observed::BackOff {
                    last: Box::new(exited(3, 2)),
                    delay: std::time::Duration::from_secs(20),
                },
            )],
            runtime_name: "containerd".to_owned(),
            ..PodView::default()
        };
        let status = build(&view);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&status, "Ready"), "False");
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(app.restart_count, 2);
        let waiting = app.state.as_ref().and_then(|s| s.waiting.as_ref()).unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        assert!(waiting.message.as_deref().unwrap().contains("back-off 20s"));
        let last = app
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .unwrap();
        assert_eq!(last.exit_code, 3);
        // A container the policy leaves exited: the pod's phase follows its exit codes.
        let done = |code| PodView {
            containers: vec![(
                "app".to_owned(),
                Observed::Runtime(Box::new(exited(code, 0))),
            )],
            ..PodView::default()
        };
        assert_eq!(build(&done(0)).phase.as_deref(), Some("Succeeded"));
        assert_eq!(build(&done(3)).phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn a_container_started_again_shows_its_previous_exit_as_last_state() {
        let (name, mut current) = running("app");
        if let Observed::Runtime(status) = &mut current {
            status.metadata = Some(cri::ContainerMetadata {
                name: name.clone(),
                attempt: 1,
            });
        }
        let view = PodView {
            containers: vec![(name.clone(), current)],
            runtime_name: "containerd".to_owned(),
            previous: [(name, exited(137, 0))].into(),
            ..PodView::default()
        };
        let app = &build(&view).container_statuses.unwrap()[0];
        assert_eq!(app.restart_count, 1);
        assert!(app.state.as_ref().unwrap().running.is_some(), "{app:?}");
        let last = app
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!(last.exit_code, 137);
        assert_eq!(last.container_id.as_deref(), Some("containerd://old"));
    }

    #[test]
    fn a_running_container_whose_readiness_probe_has_not_passed_is_not_ready() {
        let view = PodView {
            containers: vec![running("web"), running("side")],
            readiness: std::collections::BTreeMap::from([("side".to_owned(), false)]),
            ..PodView::default()
        };
        let status = build(&view);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&status, "Ready"), "False");
        assert_eq!(condition(&status, "ContainersReady"), "False");
        let ready: Vec<bool> = status
            .container_statuses
            .unwrap()
            .iter()
            .map(|c| c.ready)
            .collect();
        assert_eq!(ready, [true, false]);
    }

    #[test]
    fn a_running_container_whose_startup_probe_has_not_passed_is_not_started_nor_ready() {
        let view = PodView {
            containers: vec![running("slow"), running("quick")],
            // Its readiness probe is not run before it started: nothing says unready.
            started: std::collections::BTreeMap::from([
                ("slow".to_owned(), false),
                ("quick".to_owned(), true),
            ]),
            ..PodView::default()
        };
        let status = build(&view);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&status, "Ready"), "False");
        let seen: Vec<(Option<bool>, bool)> = status
            .container_statuses
            .unwrap()
            .iter()
            .map(|c| (c.started, c.ready))
            .collect();
        assert_eq!(seen, [(Some(false), false), (Some(true), true)]);
    }

    #[test]
    fn a_pod_whose_containers_all_run_is_running_and_ready() {
        let view = PodView {
            ips: vec!["10.244.0.5".to_owned()],
            started_ns: Some(1),
            containers: vec![running("web"), running("side")],
            runtime_name: "containerd".to_owned(),
            ..PodView::default()
        };
        let status = build(&view);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.5"));
        assert_eq!(condition(&status, "Ready"), "True");
        assert_eq!(condition(&status, "ContainersReady"), "True");
        let web = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(web.container_id.as_deref(), Some("containerd://abc"));
        assert!(web.ready);
    }

    #[test]
    fn a_missing_image_leaves_the_pod_pending_and_not_ready() {
        let view = PodView {
            ips: vec!["10.244.0.5".to_owned()],
            containers: vec![
                running("web"),
                (
                    "side".to_owned(),
                    Observed::Waiting(Waiting {
                        reason: "ErrImageNeverPull".to_owned(),
                        message: "image `x` is not present".to_owned(),
                    }),
                ),
            ],
            ..PodView::default()
        };
        let status = build(&view);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&status, "Ready"), "False");
        let side = &status.container_statuses.as_ref().unwrap()[1];
        let waiting = side.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ErrImageNeverPull"));
        let only_missing = PodView {
            containers: vec![view.containers[1].clone()],
            ..view
        };
        assert_eq!(build(&only_missing).phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn merging_keeps_transition_times_and_foreign_conditions() {
        let view = PodView {
            containers: vec![running("web")],
            ..PodView::default()
        };
        let fresh = build(&view);
        let mut current = merge(None, &fresh);
        current.conditions.as_mut().unwrap().push(PodCondition {
            type_: "example.com/Gate".to_owned(),
            status: "True".to_owned(),
            ..PodCondition::default()
        });
        let again = merge(Some(&current), &fresh);
        assert_eq!(again, current, "an unchanged status is written as it was");
    }
}
