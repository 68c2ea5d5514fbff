//! A container's CPU and memory as the kubelet gives them to the runtime
//! (`LinuxContainerResources`, which runc writes to the container's cgroup):
//!
//! - CPU shares from the CPU request (`request × 1024`, at least 2; a container without one gets
//!   2), the CFS quota from the CPU limit (`limit × 100 ms` per 100 ms period, at least 1 ms);
//! - the memory limit from `limits.memory`;
//! - `oom_score_adj` from the pod's quality of service class: Guaranteed −997, `BestEffort` 1000, Burstable
//!   `1000 − 1000 × memory request ÷ the node's memory`, kept within 3..=999 (above a
//!   Guaranteed container using all the node's memory, below `BestEffort`).
//!
//! A request not given is the limit when there is one (as the API server defaults it). Quantities
//! were checked when the Pod was applied; one that does not parse counts as not given.

use gannet_k8s::Quantity;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};

/// The CFS period the kubelet uses, in microseconds.
const CPU_PERIOD_US: i64 = 100_000;
/// The smallest quota the kernel takes, in microseconds.
const MIN_QUOTA_US: i64 = 1_000;
const MIN_SHARES: i64 = 2;
const SHARES_PER_CPU: i64 = 1024;

/// The kubelet's `oom_score_adj` of a Guaranteed pod's containers.
const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
const BEST_EFFORT_OOM_SCORE_ADJ: i64 = 1000;

/// A pod's quality of service class, as Kubernetes derives it from its containers' resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// `requests` or `limits` of `resource` (`cpu`, `memory`) of a container, parsed.
fn quantity(container: &Container, which: &str, resource: &str) -> Option<Quantity> {
    let resources = container.resources.as_ref()?;
    let map = match which {
        "limits" => resources.limits.as_ref()?,
        _ => resources.requests.as_ref()?,
    };
    Quantity::parse(&map.get(resource)?.0).ok()
}

/// The request of `resource`, defaulted to the limit.
fn request(container: &Container, resource: &str) -> Option<Quantity> {
    quantity(container, "requests", resource).or_else(|| quantity(container, "limits", resource))
}

/// The pod's quality of service class (its init containers count too).
#[must_use]
pub fn qos_class(pod: &Pod) -> QosClass {
    let Some(spec) = pod.spec.as_ref() else {
        return QosClass::BestEffort;
    };
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut any = false;
    let mut guaranteed = true;
    for container in all {
        for resource in ["cpu", "memory"] {
            let limit = quantity(container, "limits", resource);
            let request = request(container, resource);
            if limit.is_some_and(|q| q > Quantity::default())
                || request.is_some_and(|q| q > Quantity::default())
            {
                any = true;
            }
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => QosClass::BestEffort,
        (true, true) => QosClass::Guaranteed,
        (true, false) => QosClass::Burstable,
    }
}

/// What the runtime is asked to set for `container` of `pod`; `node_memory` is the node's
/// memory in bytes (0: unknown).
#[must_use]
pub fn linux_resources(
    pod: &Pod,
    container: &Container,
    node_memory: u128,
) -> cri::LinuxContainerResources {
    let to_i64 = |value: u128| i64::try_from(value).unwrap_or(i64::MAX);
    let cpu_request = request(container, "cpu").map_or(0, |q| to_i64(q.millis()));
    let cpu_shares = (cpu_request.saturating_mul(SHARES_PER_CPU) / 1000).max(MIN_SHARES);
    let cpu_quota = quantity(container, "limits", "cpu")
        .map(|q| to_i64(q.millis()))
        .filter(|&millis| millis > 0)
        .map_or(0, |millis| {
            (millis.saturating_mul(CPU_PERIOD_US) / 1000).max(MIN_QUOTA_US)
        });
    let memory_limit = quantity(container, "limits", "memory").map_or(0, |q| to_i64(q.units()));
    let oom_score_adj = match qos_class(pod) {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let memory_request = request(container, "memory").map_or(0, Quantity::units);
            // An unknown node memory (0) counts as a request of nothing.
            let share = memory_request
                .saturating_mul(1000)
                .checked_div(node_memory)
                .unwrap_or(0);
            let adj = 1000 - to_i64(share).min(1000);
            adj.clamp(
                1000 + GUARANTEED_OOM_SCORE_ADJ,
                BEST_EFFORT_OOM_SCORE_ADJ - 1,
            )
        }
    };
    cri::LinuxContainerResources {
        cpu_period: CPU_PERIOD_US,
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes: memory_limit,
        oom_score_adj,
        ..cri::LinuxContainerResources::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: &str) -> Pod {
        serde_json::from_str(&format!(
            r#"{{"metadata": {{"name": "p"}}, "spec": {{"containers": {containers}}}}}"#
        ))
        .expect("a pod")
    }

    const GIB: u128 = 1 << 30;

    #[test]
    fn requests_and_limits_become_shares_quota_and_a_memory_limit() {
        let p = pod(
            r#"[{"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                 "limits": {"cpu": "1500m", "memory": "128Mi"}}}]"#,
        );
        let r = linux_resources(&p, &p.spec.as_ref().unwrap().containers[0], 8 * GIB);
        assert_eq!(r.cpu_shares, 256);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.cpu_quota, 150_000);
        assert_eq!(r.memory_limit_in_bytes, 128 << 20);
        // Burstable: 1000 − 1000 × 64 MiB ÷ 8 GiB = 1000 − 7.8.
        assert_eq!(r.oom_score_adj, 993);
    }

    #[test]
    fn a_limit_alone_is_also_the_request_and_makes_a_guaranteed_pod() {
        let p = pod(r#"[{"name": "a", "resources": {"limits": {"cpu": "1m", "memory": "1Gi"}}}]"#);
        assert_eq!(qos_class(&p), QosClass::Guaranteed);
        let r = linux_resources(&p, &p.spec.as_ref().unwrap().containers[0], 8 * GIB);
        assert_eq!(r.cpu_shares, 2, "1m of a CPU is the smallest share");
        assert_eq!(r.cpu_quota, 1_000, "the smallest quota the kernel takes");
        assert_eq!(r.oom_score_adj, -997);
    }

    #[test]
    fn nothing_asked_is_best_effort_with_no_limits() {
        let p = pod(r#"[{"name": "a"}, {"name": "b"}]"#);
        assert_eq!(qos_class(&p), QosClass::BestEffort);
        let r = linux_resources(&p, &p.spec.as_ref().unwrap().containers[0], 8 * GIB);
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.memory_limit_in_bytes),
            (2, 0, 0)
        );
        assert_eq!(r.oom_score_adj, 1000);
    }

    #[test]
    fn one_container_without_limits_makes_the_pod_burstable() {
        let p = pod(
            r#"[{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "b"}]"#,
        );
        assert_eq!(qos_class(&p), QosClass::Burstable);
        let containers = &p.spec.as_ref().unwrap().containers;
        // A huge request against a small node stays above a Guaranteed pod's score.
        assert_eq!(
            linux_resources(&p, &containers[0], GIB / 2).oom_score_adj,
            3
        );
        assert_eq!(linux_resources(&p, &containers[1], GIB).oom_score_adj, 999);
    }
}
