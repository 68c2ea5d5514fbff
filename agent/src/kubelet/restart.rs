//! What happens to a container that exited: the pod's `restartPolicy` (`Always`, `OnFailure`,
//! `Never`) and the kubelet's crash-loop back-off.

use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;

/// A pod's `restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// The pod's restart policy (`Always` when not given, as the API defaults it).
#[must_use]
pub fn restart_policy(pod: &Pod) -> RestartPolicy {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => RestartPolicy::Never,
        Some("OnFailure") => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    }
}

/// What to do with a container that exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// The policy keeps it exited.
    No,
    /// Start it again now.
    Now,
    /// Start it again once this back-off has passed since it exited.
    After(Duration),
}

/// The kubelet's crash-loop back-off: the first restart at once, then 10 s, doubled per restart
/// up to 5 minutes; a container that ran for 10 minutes before it exited starts over at once.
const BACK_OFF_FIRST: Duration = Duration::from_secs(10);
const BACK_OFF_MAX: Duration = Duration::from_secs(300);
const BACK_OFF_RESET: Duration = Duration::from_secs(600);

/// Whether and when an exited container (`status`, its restarts so far in its attempt) starts
/// again under `policy`, at `now_ns` (nanoseconds since the epoch, as the runtime's times).
#[must_use]
pub fn restart(policy: RestartPolicy, status: &cri::ContainerStatus, now_ns: i64) -> Restart {
    let wanted = match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => status.exit_code != 0,
        RestartPolicy::Never => false,
    };
    if !wanted {
        return Restart::No;
    }
    let restarts = status.metadata.as_ref().map_or(0, |m| m.attempt);
    let ran = Duration::from_nanos(
        u64::try_from(status.finished_at.saturating_sub(status.started_at)).unwrap_or(0),
    );
    if restarts == 0 || (status.started_at > 0 && ran >= BACK_OFF_RESET) {
        return Restart::Now;
    }
    let delay = BACK_OFF_FIRST
        .saturating_mul(1 << (restarts - 1).min(5))
        .min(BACK_OFF_MAX);
    let since =
        Duration::from_nanos(u64::try_from(now_ns.saturating_sub(status.finished_at)).unwrap_or(0));
    if since >= delay {
        Restart::Now
    } else {
        Restart::After(delay)
    }
}

/// Now, in nanoseconds since the epoch (as the runtime's times).
#[must_use]
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn exited(exit_code: i32, restarts: u32, started: i64, finished: i64) -> cri::ContainerStatus {
        cri::ContainerStatus {
            metadata: Some(cri::ContainerMetadata {
                name: "app".to_owned(),
                attempt: restarts,
            }),
            exit_code,
            started_at: started * S,
            finished_at: finished * S,
            ..cri::ContainerStatus::default()
        }
    }

    #[test]
    fn the_policy_says_whether_an_exited_container_starts_again() {
        let failed = exited(3, 0, 100, 101);
        let done = exited(0, 0, 100, 101);
        let now = 102 * S;
        assert_eq!(restart(RestartPolicy::Always, &failed, now), Restart::Now);
        assert_eq!(restart(RestartPolicy::Always, &done, now), Restart::Now);
        assert_eq!(
            restart(RestartPolicy::OnFailure, &failed, now),
            Restart::Now
        );
        assert_eq!(restart(RestartPolicy::OnFailure, &done, now), Restart::No);
        assert_eq!(restart(RestartPolicy::Never, &failed, now), Restart::No);
        assert_eq!(restart(RestartPolicy::Never, &done, now), Restart::No);
    }

    #[test]
    fn restarts_back_off_from_10_s_doubling_to_5_minutes() {
        let wait = |restarts: u32, since_exit: i64| {
            restart(
                RestartPolicy::Always,
                &exited(1, restarts, 100, 101),
                (101 + since_exit) * S,
            )
        };
        assert_eq!(wait(1, 5), Restart::After(Duration::from_secs(10)));
        assert_eq!(wait(1, 10), Restart::Now);
        assert_eq!(wait(2, 15), Restart::After(Duration::from_secs(20)));
        assert_eq!(wait(3, 39), Restart::After(Duration::from_secs(40)));
        assert_eq!(wait(9, 299), Restart::After(Duration::from_secs(300)));
        assert_eq!(wait(9, 300), Restart::Now);
        // A container that ran for 10 minutes starts over at once.
        let long = exited(1, 7, 100, 100 + 600);
        assert_eq!(restart(RestartPolicy::Always, &long, 701 * S), Restart::Now);
    }
}
