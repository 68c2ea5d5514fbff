//! Pod status from this node: the addresses gannet-cni gave a pod reach its Pod object, so the
//! endpoints controller makes it a service endpoint, as kubelet reports `status.podIPs`.
//!
//! Reports are kept until the control plane took them: while it is away, and while the Pod does
//! not exist there (yet), each is retried with a backoff of its own. Only the newest report per
//! pod is kept.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use gannet_api::{Client, ClientError, Kind, Object};
use k8s_openapi::api::core::v1::{PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::cache::ObjectKey;

/// What this node knows of a pod's network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    /// The pod's addresses; empty when its network went away (CNI `DEL`).
    pub ips: Vec<IpAddr>,
}

impl PodReport {
    /// A report for a registry record's `namespace/name` (or `name`, in the default namespace).
    #[must_use]
    pub fn for_pod(pod: &str, ips: Vec<IpAddr>) -> Self {
        let (namespace, name) = pod
            .split_once('/')
            .unwrap_or((gannet_api::DEFAULT_NAMESPACE, pod));
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ips,
        }
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(10);

struct Pending {
    ips: Vec<IpAddr>,
    due: Instant,
    delay: Duration,
}

/// Sends reports from `reports` to the control plane until the channel closes.
pub(super) async fn run(
    mut client: Client,
    node_name: String,
    addresses_only: bool,
    mut reports: mpsc::UnboundedReceiver<PodReport>,
) {
    let mut pending: BTreeMap<ObjectKey, Pending> = BTreeMap::new();
    loop {
        let next_due = pending.values().map(|p| p.due).min();
        let report = match next_due {
            Some(due) => {
                tokio::select! {
                    report = reports.recv() => report,
                    () = tokio::time::sleep_until(due.into()) => None,
                }
            }
            None => match reports.recv().await {
                Some(report) => Some(report),
                None => return,
            },
        };
        let now = Instant::now();
        for report in report
            .into_iter()
            .chain(std::iter::from_fn(|| reports.try_recv().ok()))
        {
            pending.insert(
                (report.namespace, report.name),
                Pending {
                    ips: report.ips,
                    due: now,
                    delay: FIRST_RETRY,
                },
            );
        }
        let due: Vec<ObjectKey> = pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            let ips = pending[&key].ips.clone();
            match send(&mut client, &node_name, &key, &ips, addresses_only).await {
                Ok(()) => {
                    pending.remove(&key);
                }
                Err(error) => {
                    let entry = pending.get_mut(&key).expect("due entry");
                    match &error {
                        ClientError::NotFound(_) => {
                            debug!(pod = %format_args!("{}/{}", key.0, key.1), "no such Pod in the control plane (yet); its status will be reported when it exists");
                        }
                        error if error.is_transient() => {
                            debug!(%error, "pod status not reported; retrying");
                        }
                        error => {
                            warn!(pod = %format_args!("{}/{}", key.0, key.1), %error, "pod status not reported; retrying");
                        }
                    }
                    entry.due = Instant::now() + entry.delay;
                    entry.delay = (entry.delay * 2).min(LAST_RETRY);
                }
            }
        }
    }
}

/// Writes `ips` into the Pod's status: `podIPs`, `podIP`, and (unless `addresses_only`: the
/// kubelet role owns them) phase `Running` and `Ready` while it has addresses; `Ready: False`
/// and no addresses once its network is gone.
async fn send(
    client: &mut Client,
    node_name: &str,
    key: &ObjectKey,
    ips: &[IpAddr],
    addresses_only: bool,
) -> Result<(), ClientError> {
    let pod_label = format!("{}/{}", key.0, key.1);
    for _ in 0..3 {
        let Object::Pod(pod) = client.get(Kind::Pod, &key.0, &key.1).await? else {
            return Ok(());
        };
        let assigned = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref());
        if let Some(other) = assigned.filter(|n| *n != node_name) {
            warn!(
                pod = pod_label,
                assigned = other,
                "a pod of another node has its network on this node; its status is not reported"
            );
            return Ok(());
        }
        let status = pod_status(pod.status.clone().unwrap_or_default(), ips, addresses_only);
        // A Pod no scheduler placed is bound to this node, which runs its network (the control
        // plane takes spec.nodeName from a status update only while it is unset).
        let unbound = assigned.is_none() && !ips.is_empty();
        let mut pod = *pod;
        if pod.status.as_ref() == Some(&status) && !unbound {
            return Ok(());
        }
        if unbound {
            pod.spec.get_or_insert_with(Default::default).node_name = Some(node_name.to_owned());
        }
        pod.status = Some(status);
        match client.update_status(&Object::Pod(Box::new(pod))).await {
            Ok(_) => {
                info!(pod = pod_label, ips = %crate::logging::list(ips), "pod status reported");
                return Ok(());
            }
            // Changed meanwhile (resourceVersion is the precondition): read it again.
            Err(ClientError::Conflict(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Err(ClientError::Conflict(format!(
        "Pod {pod_label} kept changing while its status was reported"
    )))
}

fn pod_status(mut status: PodStatus, ips: &[IpAddr], addresses_only: bool) -> PodStatus {
    let up = !ips.is_empty();
    status.pod_ips = up.then(|| ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect());
    status.pod_ip = ips.first().map(ToString::to_string);
    if addresses_only {
        return status;
    }
    if up {
        status.phase = Some("Running".to_owned());
    }
    let ready = if up { "True" } else { "False" };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == "Ready") {
        Some(condition) if condition.status == ready => {}
        Some(condition) => {
            condition.status = ready.to_owned();
            condition.last_transition_time = Some(now());
        }
        None => conditions.push(PodCondition {
            type_: "Ready".to_owned(),
            status: ready.to_owned(),
            last_transition_time: Some(now()),
            ..PodCondition::default()
        }),
    }
    status
}

fn now() -> Time {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Time(
        k8s_openapi::jiff::Timestamp::from_millisecond(millis)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_running_and_ready_while_the_pod_has_addresses() {
        let ip: IpAddr = "10.244.1.5".parse().unwrap();
        let up = pod_status(PodStatus::default(), &[ip], false);
        assert_eq!(up.pod_ip.as_deref(), Some("10.244.1.5"));
        assert_eq!(up.phase.as_deref(), Some("Running"));
        let ready = |s: &PodStatus| {
            s.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status.clone())
        };
        assert_eq!(ready(&up).as_deref(), Some("True"));
        // Reporting the same again changes nothing (no write, no new transition time).
        assert_eq!(pod_status(up.clone(), &[ip], false), up);
        let down = pod_status(up, &[], false);
        assert_eq!(down.pod_ips, None);
        assert_eq!(down.pod_ip, None);
        assert_eq!(ready(&down).as_deref(), Some("False"));
        // Under the kubelet role only the addresses: phase and readiness are the kubelet's.
        let kubelet = pod_status(PodStatus::default(), &[ip], true);
        assert_eq!(kubelet.pod_ip.as_deref(), Some("10.244.1.5"));
        assert_eq!((kubelet.phase.clone(), ready(&kubelet)), (None, None));
    }

    #[test]
    fn reports_name_their_pod() {
        let r = PodReport::for_pod("shop/web-1", vec![]);
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("shop", "web-1"));
        let r = PodReport::for_pod("web-1", vec![]);
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("default", "web-1")
        );
    }
}
