//! kubectl-like tables.

use std::collections::BTreeMap;

use gannet_api::{Kind, Object};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// `5s`, `3m`, `2h`, `4d`, as kubectl prints ages.
pub(crate) fn age(created: Option<&Time>) -> String {
    let Some(created) = created else {
        return "<unknown>".to_owned();
    };
    let seconds = jiff::Timestamp::now()
        .duration_since(created.0)
        .as_secs()
        .max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".to_owned()
    } else {
        text
    }
}

fn selector(map: Option<&BTreeMap<String, String>>) -> String {
    or_none(
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The header of `kind`'s table.
pub(crate) fn header(kind: Kind, wide: bool, all_namespaces: bool) -> Vec<String> {
    let mut columns: Vec<&str> = match kind {
        Kind::Service => vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ],
        Kind::EndpointSlice => vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        Kind::Pod => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        Kind::Node => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        Kind::Lease => vec!["NAME", "HOLDER", "AGE"],
    };
    if wide {
        columns.extend(match kind {
            Kind::Service => vec!["SELECTOR"],
            Kind::EndpointSlice => vec![],
            Kind::Pod => vec!["IP", "NODE"],
            Kind::Node => vec!["INTERNAL-IP", "POD-CIDR", "VTEP-MAC"],
            Kind::Lease => vec!["RENEWED", "DURATION"],
        });
    }
    let mut header: Vec<String> = columns.into_iter().map(str::to_owned).collect();
    if all_namespaces && kind.namespaced() {
        header.insert(0, "NAMESPACE".to_owned());
    }
    header
}

/// One row for `object`, matching [`header`].
pub(crate) fn row(object: &Object, wide: bool, all_namespaces: bool) -> Vec<String> {
    let meta = object.metadata();
    let created = age(meta.creation_timestamp.as_ref());
    let mut row = match object {
        Object::Service(service) => {
            let spec = service.spec.clone().unwrap_or_default();
            let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".to_owned());
            let ingress: Vec<String> = service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .collect();
            let mut external: Vec<String> = spec.external_ips.clone().unwrap_or_default();
            external.extend(ingress);
            let external = if external.is_empty() && type_ == "LoadBalancer" {
                "<pending>".to_owned()
            } else if type_ == "ExternalName" {
                spec.external_name.clone().unwrap_or_default()
            } else {
                or_none(external.join(","))
            };
            let ports = spec
                .ports
                .iter()
                .flatten()
                .map(|port| {
                    let protocol = port.protocol.as_deref().unwrap_or("TCP");
                    match port.node_port {
                        Some(node_port) => format!("{}:{node_port}/{protocol}", port.port),
                        None => format!("{}/{protocol}", port.port),
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            let mut row = vec![
                object.name().to_owned(),
                type_,
                spec.cluster_ip
                    .clone()
                    .unwrap_or_else(|| "<none>".to_owned()),
                external,
                or_none(ports),
                created,
            ];
            if wide {
                row.push(selector(spec.selector.as_ref()));
            }
            row
        }
        Object::EndpointSlice(slice) => {
            let ports = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|port| port.port.map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(",");
            let addresses: Vec<&str> = slice
                .endpoints
                .iter()
                .filter_map(|e| e.addresses.first().map(String::as_str))
                .collect();
            let endpoints = match addresses.len() {
                0 => "<unset>".to_owned(),
                1..=3 => addresses.join(","),
                n => format!("{} + {} more...", addresses[..3].join(","), n - 3),
            };
            vec![
                object.name().to_owned(),
                slice.address_type.clone(),
                if ports.is_empty() {
                    "<unset>".to_owned()
                } else {
                    ports
                },
                endpoints,
                created,
            ]
        }
        Object::Pod(pod) => {
            let (ready, status, restarts) = pod_columns(pod, meta.deletion_timestamp.is_some());
            let mut row = vec![object.name().to_owned(), ready, status, restarts, created];
            if wide {
                let ip = pod.status.as_ref().and_then(|s| {
                    s.pod_ip
                        .clone()
                        .or_else(|| s.pod_ips.as_ref()?.first().map(|ip| ip.ip.clone()))
                });
                row.push(ip.unwrap_or_else(|| "<none>".to_owned()));
                row.push(
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_else(|| "<none>".to_owned()),
                );
            }
            row
        }
        Object::Node(node) => {
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.as_str());
            let status = match ready {
                Some("True") => "Ready",
                Some(_) => "NotReady",
                None => "Unknown",
            };
            let roles = meta
                .labels
                .iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect::<Vec<_>>()
                .join(",");
            let mut row = vec![
                object.name().to_owned(),
                status.to_owned(),
                or_none(roles),
                created,
                node.status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .map(|i| i.kubelet_version.clone())
                    .unwrap_or_default(),
            ];
            if wide {
                let internal = node
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone())
                    .collect::<Vec<_>>()
                    .join(",");
                let cidrs = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidrs.clone())
                    .unwrap_or_default()
                    .join(",");
                let mac = meta
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("gannet.io/vtep-mac"))
                    .cloned()
                    .unwrap_or_default();
                row.extend([or_none(internal), or_none(cidrs), or_none(mac)]);
            }
            row
        }
        Object::Lease(lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let mut row = vec![
                object.name().to_owned(),
                or_none(spec.holder_identity.unwrap_or_default()),
                created,
            ];
            if wide {
                row.push(age(spec.renew_time.map(|t| Time(t.0)).as_ref()));
                row.push(or_none(
                    spec.lease_duration_seconds
                        .map(|s| format!("{s}s"))
                        .unwrap_or_default(),
                ));
            }
            row
        }
    };
    if all_namespaces && object.kind().namespaced() {
        row.insert(0, object.namespace().to_owned());
    }
    row
}

/// Aligns rows in columns separated by three spaces, as kubectl does.
pub(crate) fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A pod's READY, STATUS and RESTARTS as kubectl shows them: ready containers of all (by their
/// statuses; by the `Ready` condition when there are none, as for a pod only gannet-cni
/// reported); the reason a container waits or ended (`CrashLoopBackOff`, `ErrImageNeverPull`,
/// `Error`, `ExitCode:N`) over the phase, `Terminating` while it is deleted; the restarts of all
/// its containers.
fn pod_columns(pod: &k8s_openapi::api::core::v1::Pod, deleting: bool) -> (String, String, String) {
    let containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let status = pod.status.as_ref();
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let ready = if statuses.is_empty() {
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready { containers } else { 0 }
    } else {
        statuses.iter().filter(|c| c.ready).count()
    };
    let mut reason = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".to_owned());
    // kubectl: the last container with a reason of its own decides.
    for container in statuses.iter().rev() {
        let Some(state) = &container.state else {
            continue;
        };
        if let Some(waiting) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
            reason = waiting;
            break;
        }
        if let Some(terminated) = &state.terminated {
            reason = terminated
                .reason
                .clone()
                .unwrap_or_else(|| format!("ExitCode:{}", terminated.exit_code));
            break;
        }
    }
    if deleting {
        reason = "Terminating".to_owned();
    }
    let restarts: i64 = statuses.iter().map(|c| i64::from(c.restart_count)).sum();
    (
        format!("{ready}/{containers}"),
        reason,
        restarts.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, ContainerStatus, Pod, PodSpec, PodStatus,
    };

    use super::pod_columns;

    fn container(name: &str, restarts: i32, state: ContainerState, ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.to_owned(),
            restart_count: restarts,
            ready,
            state: Some(state),
            ..ContainerStatus::default()
        }
    }

    fn pod(statuses: Vec<ContainerStatus>, phase: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container::default(); statuses.len().max(1)],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                container_statuses: Some(statuses),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn pod_columns_read_like_kubectl() {
        let running = ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        };
        let backing_off = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".to_owned()),
                message: None,
            }),
            ..ContainerState::default()
        };
        let exited = |code| ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        };
        let crash = pod(
            vec![
                container("web", 0, running.clone(), true),
                container("side", 4, backing_off, false),
            ],
            "Running",
        );
        assert_eq!(
            pod_columns(&crash, false),
            (
                "1/2".to_owned(),
                "CrashLoopBackOff".to_owned(),
                "4".to_owned()
            )
        );
        let failed = pod(vec![container("job", 0, exited(3), false)], "Failed");
        assert_eq!(pod_columns(&failed, false).1, "ExitCode:3");
        let fine = pod(vec![container("web", 1, running, true)], "Running");
        assert_eq!(
            pod_columns(&fine, true),
            ("1/1".to_owned(), "Terminating".to_owned(), "1".to_owned())
        );
    }
}
