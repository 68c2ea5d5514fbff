//! The scheduler: Pods without `spec.nodeName` are bound to a node, as kube-scheduler binds them.
//!
//! Like the endpoints controller (and through the same loop, `informer.rs`) it lists Nodes and
//! Pods, then watches from that revision; every change of either kind starts a round over the
//! Pods still waiting (oldest first), so a Pod that fits nowhere is tried again when a node
//! registers, turns Ready or a Pod goes away.
//!
//! A node is a candidate when its Ready condition is `True` (the node lifecycle controller's),
//! it is not cordoned (`spec.unschedulable`), it carries every label of the Pod's
//! `nodeSelector`, it has registered allocatable CPU and memory (`status.allocatable`, which
//! gannetd reports under the kubelet role), and the Pod's requests fit beside those of the Pods
//! already bound to it (not `Succeeded` or `Failed`). A Pod's request of a resource is the sum
//! over its containers (a container's limit when it gives no request), or the largest of an
//! init container when that is more. Among the candidates the least allocated wins (the mean of
//! the free CPU and memory shares after placing the Pod, Pods without requests counted as 100m
//! and 200Mi as kube-scheduler does; ties: the first name).
//!
//! Binding sets `spec.nodeName` (once: a bound Pod never moves) and the `PodScheduled=True`
//! condition in one status write conditioned on the Pod's revision; a Pod that fits nowhere gets
//! `PodScheduled=False`, reason `Unschedulable`, with kube-scheduler's message (`0/2 nodes are
//! available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector.`). Pods
//! naming another `schedulerName` are left alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gannet_api::{Kind, Object};
use gannet_k8s::Quantity;
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodCondition, PodStatus};

use super::informer::{self, Controller};
use crate::registry::{ApiError, Registry, now, ready_status};
use crate::store::{EventKind, Revision};

/// The condition a scheduler sets.
pub const POD_SCHEDULED: &str = "PodScheduled";
/// Its reason when no node fits.
pub const UNSCHEDULABLE: &str = "Unschedulable";
/// The `schedulerName` this scheduler answers to (also when none is given).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// What a Pod without a CPU request counts as when nodes are scored (as kube-scheduler).
const DEFAULT_SCORE_MILLICPU: u128 = 100;
/// What a Pod without a memory request counts as when nodes are scored (as kube-scheduler).
const DEFAULT_SCORE_MEMORY: u128 = 200 << 20;

type PodKey = (String, String);

/// CPU in millicores and memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    pub cpu: u128,
    pub memory: u128,
}

impl Amount {
    fn add(&mut self, other: Self) {
        self.cpu = self.cpu.saturating_add(other.cpu);
        self.memory = self.memory.saturating_add(other.memory);
    }

    fn max(self, other: Self) -> Self {
        Self {
            cpu: self.cpu.max(other.cpu),
            memory: self.memory.max(other.memory),
        }
    }

    /// As counted for scoring: nothing requested counts as kube-scheduler's defaults.
    fn for_score(self) -> Self {
        Self {
            cpu: if self.cpu == 0 {
                DEFAULT_SCORE_MILLICPU
            } else {
                self.cpu
            },
            memory: if self.memory == 0 {
                DEFAULT_SCORE_MEMORY
            } else {
                self.memory
            },
        }
    }
}

/// What the Pod asks of `resource` through one container (its request, else its limit).
fn container_request(container: &Container, field: &str, resource: &str) -> Result<u128, String> {
    let Some(resources) = &container.resources else {
        return Ok(0);
    };
    let (which, quantity) = match (
        resources.requests.as_ref().and_then(|r| r.get(resource)),
        resources.limits.as_ref().and_then(|l| l.get(resource)),
    ) {
        (Some(request), _) => ("requests", request),
        (None, Some(limit)) => ("limits", limit),
        (None, None) => return Ok(0),
    };
    let parsed = Quantity::parse(&quantity.0)
        .map_err(|error| format!("{field}.resources.{which}.{resource}: {error}"))?;
    Ok(if resource == "cpu" {
        parsed.millis()
    } else {
        parsed.units()
    })
}

fn container_amount(container: &Container, field: &str) -> Result<Amount, String> {
    Ok(Amount {
        cpu: container_request(container, field, "cpu")?,
        memory: container_request(container, field, "memory")?,
    })
}

/// What a Pod requests: the sum over its containers, or an init container's when larger.
///
/// # Errors
/// A message naming the field of a quantity that cannot be read.
pub fn pod_requests(pod: &Pod) -> Result<Amount, String> {
    let Some(spec) = &pod.spec else {
        return Ok(Amount::default());
    };
    let mut sum = Amount::default();
    for (i, container) in spec.containers.iter().enumerate() {
        sum.add(container_amount(
            container,
            &format!("spec.containers[{i}]"),
        )?);
    }
    for (i, container) in spec.init_containers.iter().flatten().enumerate() {
        sum = sum.max(container_amount(
            container,
            &format!("spec.initContainers[{i}]"),
        )?);
    }
    Ok(sum)
}

/// A node's allocatable CPU and memory; `None` when it registered none (or unreadable ones).
fn allocatable(node: &Node) -> Option<Amount> {
    let allocatable = node.status.as_ref()?.allocatable.as_ref()?;
    let cpu = Quantity::parse(&allocatable.get("cpu")?.0).ok()?;
    let memory = Quantity::parse(&allocatable.get("memory")?.0).ok()?;
    Some(Amount {
        cpu: cpu.millis(),
        memory: memory.units(),
    })
}

fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|node| !node.is_empty())
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether this scheduler is to place `pod`: unbound, not terminating or finished, and for us.
fn waiting(pod: &Pod) -> bool {
    pod_node(pod).is_none()
        && pod.metadata.deletion_timestamp.is_none()
        && !terminal(pod)
        && pod
            .spec
            .as_ref()
            .and_then(|spec| spec.scheduler_name.as_deref())
            .is_none_or(|name| name.is_empty() || name == SCHEDULER_NAME)
}

/// Why a node does not fit a Pod, in kube-scheduler's words.
const NOT_READY: &str = "node(s) were not ready";
const CORDONED: &str = "node(s) were unschedulable";
const SELECTOR: &str = "node(s) didn't match Pod's node affinity/selector";
const NO_ALLOCATABLE: &str = "node(s) had no allocatable resources registered";
const INSUFFICIENT_CPU: &str = "Insufficient cpu";
const INSUFFICIENT_MEMORY: &str = "Insufficient memory";

/// Where requests stand on one node.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    requested: Amount,
    /// Requests as scoring counts them.
    scored: Amount,
}

/// The node for a Pod, or the message saying why there is none.
fn choose(
    pod: &Pod,
    requests: Amount,
    nodes: &BTreeMap<String, Node>,
    usage: &HashMap<String, Usage>,
) -> Result<String, String> {
    let selector = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_selector.clone())
        .unwrap_or_default();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut best: Option<(u128, &str)> = None;
    for (name, node) in nodes {
        if ready_status(node) != Some("True") {
            *reasons.entry(NOT_READY).or_default() += 1;
            continue;
        }
        if node
            .spec
            .as_ref()
            .and_then(|spec| spec.unschedulable)
            .unwrap_or(false)
        {
            *reasons.entry(CORDONED).or_default() += 1;
            continue;
        }
        let labels = node.metadata.labels.as_ref();
        if !selector
            .iter()
            .all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
        {
            *reasons.entry(SELECTOR).or_default() += 1;
            continue;
        }
        let Some(allocatable) = allocatable(node) else {
            *reasons.entry(NO_ALLOCATABLE).or_default() += 1;
            continue;
        };
        let used = usage.get(name).copied().unwrap_or_default();
        let mut fits = true;
        if requests.cpu > 0 && used.requested.cpu.saturating_add(requests.cpu) > allocatable.cpu {
            *reasons.entry(INSUFFICIENT_CPU).or_default() += 1;
            fits = false;
        }
        if requests.memory > 0
            && used.requested.memory.saturating_add(requests.memory) > allocatable.memory
        {
            *reasons.entry(INSUFFICIENT_MEMORY).or_default() += 1;
            fits = false;
        }
        if !fits {
            continue;
        }
        let mut after = used.scored;
        after.add(requests.for_score());
        let free_share = |total: u128, taken: u128| {
            (total.saturating_sub(taken).saturating_mul(100))
                .checked_div(total)
                .unwrap_or(0)
        };
        let score = (free_share(allocatable.cpu, after.cpu)
            + free_share(allocatable.memory, after.memory))
            / 2;
        // Nodes come in name order: a later node wins only with a better score.
        if best.is_none_or(|(top, _)| score > top) {
            best = Some((score, name));
        }
    }
    if let Some((_, name)) = best {
        return Ok(name.to_owned());
    }
    if nodes.is_empty() {
        return Err("0/0 nodes are available: no nodes available to schedule pods.".to_owned());
    }
    let reasons: Vec<String> = reasons
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    Err(format!(
        "0/{} nodes are available: {}.",
        nodes.len(),
        reasons.join(", ")
    ))
}

/// The Pod's status with its `PodScheduled` condition as given (the transition time changes
/// with the status); `None` when it already is so.
fn with_scheduled(
    status: Option<&PodStatus>,
    value: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> Option<PodStatus> {
    let mut status = status.cloned().unwrap_or_default();
    if status.phase.is_none() {
        status.phase = Some("Pending".to_owned());
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let wanted = |c: &PodCondition| {
        c.status == value && c.reason.as_deref() == reason && c.message.as_deref() == message
    };
    match conditions.iter_mut().find(|c| c.type_ == POD_SCHEDULED) {
        Some(condition) if wanted(condition) => return None,
        Some(condition) => {
            if condition.status != value {
                condition.last_transition_time = Some(now());
            }
            condition.status = value.to_owned();
            condition.reason = reason.map(str::to_owned);
            condition.message = message.map(str::to_owned);
        }
        None => conditions.push(PodCondition {
            type_: POD_SCHEDULED.to_owned(),
            status: value.to_owned(),
            reason: reason.map(str::to_owned),
            message: message.map(str::to_owned),
            last_transition_time: Some(now()),
            ..PodCondition::default()
        }),
    }
    Some(status)
}

/// What the scheduler knows: Nodes by name, Pods with the revision they were read at.
#[derive(Debug, Default)]
struct Cache {
    nodes: BTreeMap<String, Node>,
    pods: HashMap<PodKey, (Pod, Revision)>,
}

impl Cache {
    /// Applies one stored change of a Node or Pod; returns whether it was one.
    fn apply(&mut self, kind: EventKind, object: Object, revision: Revision) -> bool {
        match object {
            Object::Node(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                if kind == EventKind::Delete {
                    self.nodes.remove(&name);
                } else {
                    self.nodes.insert(name, *node);
                }
                true
            }
            Object::Pod(pod) => {
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                // This scheduler's own binding may be cached already, ahead of the watch.
                if self
                    .pods
                    .get(&key)
                    .is_some_and(|(_, cached)| *cached > revision)
                {
                    return false;
                }
                if kind == EventKind::Delete {
                    self.pods.remove(&key);
                } else {
                    self.pods.insert(key, (*pod, revision));
                }
                true
            }
            _ => false,
        }
    }

    /// Requests on each node: its bound Pods that have not finished.
    fn usage(&self) -> HashMap<String, Usage> {
        let mut usage: HashMap<String, Usage> = HashMap::new();
        for (pod, _) in self.pods.values() {
            let Some(node) = pod_node(pod) else { continue };
            if terminal(pod) {
                continue;
            }
            // A bound Pod whose requests cannot be read (stored before validation knew them)
            // counts as requesting nothing.
            let requests = pod_requests(pod).unwrap_or_default();
            let entry = usage.entry(node.to_owned()).or_default();
            entry.requested.add(requests);
            entry.scored.add(requests.for_score());
        }
        usage
    }
}

/// The scheduler's state between rounds: the cache and whether it changed since the last round.
#[derive(Debug)]
struct Scheduler {
    cache: Cache,
    changed: bool,
}

impl Controller for Scheduler {
    const NAME: &'static str = "scheduler";

    fn wants(kind: Kind) -> bool {
        matches!(kind, Kind::Node | Kind::Pod)
    }

    fn apply(&mut self, event: EventKind, object: Object, revision: Revision) {
        self.changed |= self.cache.apply(event, object, revision);
    }

    fn synced(&self, revision: Revision) {
        tracing::info!(
            nodes = self.cache.nodes.len(),
            pods = self.cache.pods.len(),
            revision,
            "scheduler synced"
        );
    }

    async fn reconcile(&mut self, registry: &Registry) -> Result<(), ApiError> {
        if !std::mem::take(&mut self.changed) {
            return Ok(());
        }
        schedule(registry, &mut self.cache).await
    }
}

/// Runs the scheduler until the task is dropped, starting over (list, then watch) after errors.
pub async fn run(registry: Arc<Registry>) {
    // A round follows every list, whatever it found.
    informer::run(registry, || Scheduler {
        cache: Cache::default(),
        changed: true,
    })
    .await;
}

/// One round: every waiting Pod, oldest first, is bound or told why not.
async fn schedule(registry: &Registry, cache: &mut Cache) -> Result<(), ApiError> {
    let mut usage = cache.usage();
    let mut queue: Vec<(Option<jiff::Timestamp>, PodKey)> = cache
        .pods
        .iter()
        .filter(|(_, (pod, _))| waiting(pod))
        .map(|(key, (pod, _))| {
            (
                pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
                key.clone(),
            )
        })
        .collect();
    queue.sort();
    for (_, key) in queue {
        let Some((pod, _)) = cache.pods.get(&key) else {
            continue;
        };
        let label = format!("{}/{}", key.0, key.1);
        let decision = pod_requests(pod).and_then(|requests| {
            choose(pod, requests, &cache.nodes, &usage).map(|node| (node, requests))
        });
        let mut next = pod.clone();
        match &decision {
            Ok((node, _)) => {
                next.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
                next.status = with_scheduled(pod.status.as_ref(), "True", None, None)
                    .or_else(|| pod.status.clone());
            }
            Err(message) => {
                let Some(status) = with_scheduled(
                    pod.status.as_ref(),
                    "False",
                    Some(UNSCHEDULABLE),
                    Some(message),
                ) else {
                    continue;
                };
                next.status = Some(status);
            }
        }
        match write(registry, next).await? {
            Some((written, revision)) => {
                match &decision {
                    Ok((node, requests)) => {
                        tracing::info!(pod = label, node, "pod scheduled");
                        let entry = usage.entry(node.clone()).or_default();
                        entry.requested.add(*requests);
                        entry.scored.add(requests.for_score());
                    }
                    Err(message) => {
                        tracing::info!(pod = label, message, "pod unschedulable");
                    }
                }
                cache.pods.insert(key, (written, revision));
            }
            None => tracing::debug!(pod = label, "pod changed meanwhile; waiting for the watch"),
        }
    }
    // A Pod bound by its node (gannet-cni's report) after this scheduler found no room for it
    // is scheduled after all.
    let settled: Vec<PodKey> = cache
        .pods
        .iter()
        .filter(|(_, (pod, _))| pod_node(pod).is_some())
        .filter(|(_, (pod, _))| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions.iter().any(|c| {
                        c.type_ == POD_SCHEDULED
                            && c.status == "False"
                            && c.reason.as_deref() == Some(UNSCHEDULABLE)
                    })
                })
        })
        .map(|(key, _)| key.clone())
        .collect();
    for key in settled {
        let Some((pod, _)) = cache.pods.get(&key) else {
            continue;
        };
        let mut next = pod.clone();
        next.status = with_scheduled(pod.status.as_ref(), "True", None, None);
        if next.status.is_some()
            && let Some(written) = write(registry, next).await?
        {
            cache.pods.insert(key, written);
        }
    }
    Ok(())
}

/// Writes a Pod's status (and with it an unset `spec.nodeName`), conditioned on the revision it
/// was read at. `None` when it changed or went meanwhile (the watch brings the news).
async fn write(registry: &Registry, pod: Pod) -> Result<Option<(Pod, Revision)>, ApiError> {
    match registry.update_status(Object::from(pod)).await {
        Ok(Object::Pod(written)) => {
            let revision = written
                .metadata
                .resource_version
                .as_deref()
                .and_then(|rv| rv.parse().ok())
                .unwrap_or(0);
            Ok(Some((*written, revision)))
        }
        Ok(_) => Err(ApiError::Internal("kind mismatch".to_owned())),
        Err(ApiError::Conflict(_) | ApiError::NotFound(_)) => Ok(None),
        Err(ApiError::Invalid(problems)) => {
            tracing::warn!(
                problems = problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                "scheduler: a pod's status was refused"
            );
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::{Amount, choose, pod_requests};
    use std::collections::{BTreeMap, HashMap};

    use k8s_openapi::api::core::v1::{Node, Pod};

    fn pod(spec: &serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": spec}))
            .expect("a Pod")
    }

    #[test]
    fn requests_sum_containers_limits_stand_in_and_init_containers_take_the_max() {
        let requests = pod_requests(&pod(&serde_json::json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                                            "requests": {"memory": "128Mi"}}},
                {"name": "c"}
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]
        })))
        .expect("readable requests");
        assert_eq!(
            requests,
            Amount {
                cpu: 2000,
                memory: 192 << 20
            }
        );
        let error = pod_requests(&pod(&serde_json::json!({
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "x"}}}]
        })))
        .unwrap_err();
        assert!(
            error.starts_with("spec.containers[0].resources.requests.cpu: "),
            "{error}"
        );
    }

    #[test]
    fn reasons_are_counted_and_sorted_as_kube_scheduler_does() {
        let node = |ready: &str, labels: serde_json::Value, cpu: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"labels": labels},
                "status": {"allocatable": {"cpu": cpu, "memory": "1Gi"},
                           "conditions": [{"type": "Ready", "status": ready}]}
            }))
            .expect("a Node")
        };
        let nodes = BTreeMap::from([
            (
                "a".to_owned(),
                node("True", serde_json::json!({"disk": "ssd"}), "1"),
            ),
            (
                "b".to_owned(),
                node("Unknown", serde_json::json!({"disk": "ssd"}), "8"),
            ),
            ("c".to_owned(), node("True", serde_json::json!({}), "8")),
            (
                "d".to_owned(),
                node("True", serde_json::json!({"disk": "ssd"}), "2"),
            ),
        ]);
        let wanting = |cpu: u128| {
            let pod = pod(&serde_json::json!({"containers": [], "nodeSelector": {"disk": "ssd"}}));
            choose(&pod, Amount { cpu, memory: 0 }, &nodes, &HashMap::new())
        };
        assert_eq!(
            wanting(4000),
            Err(
                "0/4 nodes are available: 2 Insufficient cpu, 1 node(s) didn't match Pod's \
                 node affinity/selector, 1 node(s) were not ready."
                    .to_owned()
            )
        );
        assert_eq!(wanting(1000), Ok("d".to_owned()), "the least allocated");
    }
}
