//! `gannetctl describe`: one object as kubectl describes it, key by key, with what belongs to
//! it (a Service's EndpointSlices, a Node's heartbeat Lease), and, in place of kubectl's Events,
//! the recent changes the objects record: creation, condition transitions, endpoint changes
//! (`endpoints.kubernetes.io/last-change-trigger-time`), heartbeats.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use gannet_api::Object;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The annotation the endpoints controller stamps on a slice it changes (Kubernetes' name).
pub(crate) const LAST_CHANGE: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Rows of `Key:  value`, the keys aligned, and the changes recorded, by time.
#[derive(Default)]
struct Doc(Vec<(String, String)>, Vec<(Time, String)>);

impl Doc {
    fn add(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        self.0.push((
            key.to_owned(),
            if value.is_empty() {
                "<none>".to_owned()
            } else {
                value
            },
        ));
    }

    /// Records that `what` happened at `when` (nothing when the time is unknown).
    fn event(&mut self, when: Option<&Time>, what: impl Into<String>) {
        if let Some(when) = when {
            self.1.push((when.clone(), what.into()));
        }
    }

    fn render(&self) -> String {
        let width = self.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
        let mut out = String::new();
        for (key, value) in &self.0 {
            let mut lines = value.lines();
            let first = lines.next().unwrap_or_default();
            let _ = writeln!(out, "{:<width$}{first}", format!("{key}:"));
            for line in lines {
                let _ = writeln!(out, "{:width$}{line}", "");
            }
        }
        let mut events = self.1.clone();
        events.sort_by_key(|(when, _)| when.0);
        if events.is_empty() {
            out.push_str("Events:  <none>\n");
        } else {
            out.push_str("Events:\n");
            let ages: Vec<String> = events
                .iter()
                .map(|(when, _)| crate::table::age(Some(when)))
                .collect();
            let age_width = ages.iter().map(String::len).max().unwrap_or(0).max(3);
            let _ = writeln!(out, "  {:<age_width$}  WHAT", "AGE");
            for (age, (_, what)) in ages.iter().zip(&events) {
                let _ = writeln!(out, "  {age:<age_width$}  {what}");
            }
        }
        out
    }
}

fn map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn meta(doc: &mut Doc, meta: &ObjectMeta, namespaced: bool) {
    doc.add("Name", meta.name.clone().unwrap_or_default());
    if namespaced {
        doc.add("Namespace", meta.namespace.clone().unwrap_or_default());
    }
    doc.add("Labels", map(meta.labels.as_ref()));
    doc.add("Annotations", map(meta.annotations.as_ref()));
    doc.add(
        "Created",
        meta.creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    );
    if let Some(deleting) = &meta.deletion_timestamp {
        doc.add("Terminating", format!("since {}", deleting.0));
    }
    doc.event(meta.creation_timestamp.as_ref(), "created");
    doc.event(meta.deletion_timestamp.as_ref(), "deletion requested");
}

/// When the endpoints controller last changed `slice`, from its annotation.
fn last_change(slice: &EndpointSlice) -> Option<Time> {
    let text = slice.metadata.annotations.as_ref()?.get(LAST_CHANGE)?;
    text.parse().ok().map(Time)
}

/// `2 ready, 1 not ready` of a slice's endpoints.
fn readiness(slice: &EndpointSlice) -> String {
    let ready = slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .count();
    let not_ready = slice.endpoints.len() - ready;
    if not_ready == 0 {
        format!("{ready} ready")
    } else {
        format!("{ready} ready, {not_ready} not ready")
    }
}

/// The creation and last change of each slice, as events of the object described.
fn slice_events(doc: &mut Doc, slices: &[EndpointSlice]) {
    for slice in slices {
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        doc.event(
            slice.metadata.creation_timestamp.as_ref(),
            format!("EndpointSlice {name} created"),
        );
        doc.event(
            last_change(slice).as_ref(),
            format!(
                "EndpointSlice {name} last changed; now {}",
                readiness(slice)
            ),
        );
    }
}

fn target_port(port: Option<&IntOrString>) -> String {
    match port {
        Some(IntOrString::Int(port)) => port.to_string(),
        Some(IntOrString::String(name)) => name.clone(),
        None => String::new(),
    }
}

fn service(doc: &mut Doc, service: &Service, slices: &[EndpointSlice]) {
    meta(doc, &service.metadata, true);
    slice_events(doc, slices);
    let spec = service.spec.clone().unwrap_or_default();
    doc.add("Selector", map(spec.selector.as_ref()));
    doc.add("Type", spec.type_.unwrap_or_else(|| "ClusterIP".to_owned()));
    doc.add(
        "IP Families",
        spec.ip_families.unwrap_or_default().join(","),
    );
    doc.add("IPs", spec.cluster_ips.unwrap_or_default().join(","));
    if let Some(ips) = spec.external_ips.filter(|ips| !ips.is_empty()) {
        doc.add("External IPs", ips.join(","));
    }
    for port in spec.ports.iter().flatten() {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let name = port.name.clone().filter(|n| !n.is_empty());
        doc.add(
            "Port",
            format!(
                "{}  {}/{protocol}",
                name.as_deref().unwrap_or("<unset>"),
                port.port
            ),
        );
        doc.add(
            "TargetPort",
            format!("{}/{protocol}", target_port(port.target_port.as_ref())),
        );
        if let Some(node_port) = port.node_port {
            doc.add(
                "NodePort",
                format!(
                    "{}  {node_port}/{protocol}",
                    name.as_deref().unwrap_or("<unset>")
                ),
            );
        }
    }
    let endpoints: Vec<String> = slices
        .iter()
        .flat_map(|slice| {
            let ports: Vec<String> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| p.port.map(|p| p.to_string()))
                .collect();
            slice.endpoints.iter().flat_map(move |e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                let ports = ports.clone();
                e.addresses.iter().map(move |a| {
                    format!(
                        "{a}:{}{}",
                        ports.join(","),
                        if ready { "" } else { " (not ready)" }
                    )
                })
            })
        })
        .collect();
    doc.add("Endpoints", endpoints.join("\n"));
    doc.add(
        "Session Affinity",
        spec.session_affinity.unwrap_or_else(|| "None".to_owned()),
    );
    if let Some(policy) = spec.external_traffic_policy {
        doc.add("External Traffic Policy", policy);
    }
    if let Some(port) = spec.health_check_node_port {
        doc.add("HealthCheck NodePort", port.to_string());
    }
}

fn pod(doc: &mut Doc, pod: &Pod) {
    meta(doc, &pod.metadata, true);
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    doc.add("Node", spec.node_name.unwrap_or_default());
    doc.add(
        "Status",
        status.phase.unwrap_or_else(|| "Pending".to_owned()),
    );
    let ips: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|ip| ip.ip)
        .collect();
    doc.add("IPs", ips.join(","));
    for container in &spec.containers {
        let ports: Vec<String> = container
            .ports
            .iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.container_port,
                    p.protocol.as_deref().unwrap_or("TCP")
                )
            })
            .collect();
        doc.add(
            "Container",
            format!(
                "{}  {}  ports {}",
                container.name,
                container.image.clone().unwrap_or_default(),
                if ports.is_empty() {
                    "<none>".to_owned()
                } else {
                    ports.join(",")
                }
            ),
        );
    }
    let conditions = status.conditions.unwrap_or_default();
    for c in &conditions {
        // As kubectl shows a scheduler's FailedScheduling: the reason and its message.
        let why = match (c.reason.as_deref(), c.message.as_deref()) {
            (Some(reason), Some(message)) => format!(" ({reason}: {message})"),
            (Some(reason), None) => format!(" ({reason})"),
            _ => String::new(),
        };
        doc.event(
            c.last_transition_time.as_ref(),
            format!("{} became {}{why}", c.type_, c.status),
        );
    }
    let conditions: Vec<String> = conditions
        .into_iter()
        .map(|c| {
            [Some(c.type_), Some(c.status), c.reason, c.message]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("  ")
        })
        .collect();
    doc.add("Conditions", conditions.join("\n"));
}

fn node(doc: &mut Doc, node: &Node, lease: Option<&Lease>) {
    meta(doc, &node.metadata, false);
    let spec = node.spec.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let addresses: Vec<String> = status
        .addresses
        .unwrap_or_default()
        .into_iter()
        .map(|a| format!("{}: {}", a.type_, a.address))
        .collect();
    doc.add("Addresses", addresses.join("\n"));
    doc.add("PodCIDRs", spec.pod_cidrs.unwrap_or_default().join(","));
    for (label, resources) in [
        ("Capacity", status.capacity.as_ref()),
        ("Allocatable", status.allocatable.as_ref()),
    ] {
        if let Some(resources) = resources {
            let shown: Vec<String> = resources
                .iter()
                .map(|(name, quantity)| format!("{name}: {}", quantity.0))
                .collect();
            doc.add(label, shown.join("\n"));
        }
    }
    let conditions = status.conditions.unwrap_or_default();
    for c in &conditions {
        let reason = c
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        doc.event(
            c.last_transition_time.as_ref(),
            format!("{} became {}{reason}", c.type_, c.status),
        );
    }
    let conditions: Vec<String> = conditions
        .into_iter()
        .map(|c| {
            format!(
                "{}  {}  {}  (since {})",
                c.type_,
                c.status,
                c.reason.unwrap_or_default(),
                c.last_transition_time
                    .map(|t| t.0.to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    doc.add("Conditions", conditions.join("\n"));
    let lease_spec = lease.and_then(|l| l.spec.as_ref());
    let lease = lease_spec.map(|spec| {
        format!(
            "holder {}, renewed {}, for {}s",
            spec.holder_identity.as_deref().unwrap_or("<none>"),
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| "never".to_owned()),
            spec.lease_duration_seconds.unwrap_or_default()
        )
    });
    doc.add("Lease", lease.unwrap_or_default());
    if let Some(spec) = lease_spec {
        doc.event(
            spec.renew_time.as_ref().map(|t| Time(t.0)).as_ref(),
            "heartbeat (Lease renewed)",
        );
    }
}

fn slice(doc: &mut Doc, slice: &EndpointSlice) {
    meta(doc, &slice.metadata, true);
    doc.event(
        last_change(slice).as_ref(),
        format!("last changed; now {}", readiness(slice)),
    );
    doc.add("AddressType", slice.address_type.clone());
    let ports: Vec<String> = slice
        .ports
        .iter()
        .flatten()
        .map(|p| {
            format!(
                "{}  {}/{}",
                p.name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("<unset>"),
                p.port.map(|p| p.to_string()).unwrap_or_default(),
                p.protocol.as_deref().unwrap_or("TCP")
            )
        })
        .collect();
    doc.add("Ports", ports.join("\n"));
    let endpoints: Vec<String> = slice
        .endpoints
        .iter()
        .map(|e| {
            let conditions = e.conditions.clone().unwrap_or_default();
            format!(
                "{}  ready={} serving={} terminating={}  node {}",
                e.addresses.join(","),
                conditions.ready.unwrap_or(true),
                conditions.serving.unwrap_or(true),
                conditions.terminating.unwrap_or(false),
                e.node_name.as_deref().unwrap_or("<none>")
            )
        })
        .collect();
    doc.add("Endpoints", endpoints.join("\n"));
}

/// `object` described; `related`: a Service's EndpointSlices, a Node's Lease.
pub(crate) fn describe(object: &Object, related: &[Object]) -> String {
    let mut doc = Doc::default();
    match object {
        Object::Service(s) => {
            let slices: Vec<EndpointSlice> = related
                .iter()
                .filter_map(|o| match o {
                    Object::EndpointSlice(slice) => Some((**slice).clone()),
                    _ => None,
                })
                .collect();
            service(&mut doc, s, &slices);
        }
        Object::Pod(p) => pod(&mut doc, p),
        Object::Node(n) => {
            let lease = related.iter().find_map(|o| match o {
                Object::Lease(lease) => Some(lease.as_ref()),
                _ => None,
            });
            node(&mut doc, n, lease);
        }
        Object::EndpointSlice(s) => slice(&mut doc, s),
        Object::Lease(l) => {
            meta(&mut doc, &l.metadata, true);
            let spec = l.spec.clone().unwrap_or_default();
            doc.add("Holder", spec.holder_identity.unwrap_or_default());
            doc.add(
                "Renewed",
                spec.renew_time.map(|t| t.0.to_string()).unwrap_or_default(),
            );
            doc.add(
                "Duration",
                spec.lease_duration_seconds
                    .map(|s| format!("{s}s"))
                    .unwrap_or_default(),
            );
        }
    }
    doc.render()
}
