//! A container's environment as the kubelet makes it: each variable's `value` with `$(NAME)`
//! references to the variables before it expanded (`$$` for a literal `$`), or its `valueFrom`:
//! `fieldRef` (the pod's name, namespace, uid, labels, annotations, node, service account and
//! addresses) and `resourceFieldRef` (the container's CPU and memory requests and limits, a limit
//! not set being the node's capacity). gannet-control serves no `ConfigMap` or `Secret`: a
//! `configMapKeyRef` or `secretKeyRef` leaves the container waiting with
//! `CreateContainerConfigError`, as a kubelet does when the object is missing, unless the
//! reference is `optional`.

use std::collections::HashMap;

use gannet_k8s::Quantity;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// What the variables may refer to beyond the Pod object.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The sandbox's addresses (first: the primary one).
    pub pod_ips: Vec<String>,
    /// The node's CPUs in thousandths and memory in bytes: what a limit not set amounts to.
    pub node_millicpu: u128,
    pub node_memory: u128,
}

/// The variables of `container`, in order; `Err`: why the container cannot be created (the
/// message of `CreateContainerConfigError`).
///
/// # Errors
/// A reference gannet cannot resolve, named by variable and field.
pub fn environment(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
) -> Result<Vec<(String, String)>, String> {
    let mut done: Vec<(String, String)> = Vec::new();
    let mut defined: HashMap<String, String> = HashMap::new();
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => Some(expand(var.value.as_deref().unwrap_or_default(), &defined)),
            Some(_) => value_from(pod, container, var, sources)?,
        };
        if let Some(value) = value {
            defined.insert(var.name.clone(), value.clone());
            done.push((var.name.clone(), value));
        }
    }
    Ok(done)
}

/// `valueFrom` of `var`; `None`: an optional reference to what is not there (the variable is
/// left out).
fn value_from(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    sources: &Sources,
) -> Result<Option<String>, String> {
    let Some(from) = &var.value_from else {
        return Ok(None);
    };
    let name = &var.name;
    if let Some(field) = &from.field_ref {
        return field_value(pod, &field.field_path, sources)
            .map(Some)
            .map_err(|why| format!("env {name}: fieldRef {}: {why}", field.field_path));
    }
    if let Some(resource) = &from.resource_field_ref {
        if resource
            .container_name
            .as_ref()
            .is_some_and(|c| !c.is_empty() && *c != container.name)
        {
            return Err(format!(
                "env {name}: resourceFieldRef of another container ({}) is not supported",
                resource.container_name.as_deref().unwrap_or_default()
            ));
        }
        let divisor = resource.divisor.as_ref().map(|d| d.0.as_str());
        return resource_value(container, &resource.resource, divisor, sources)
            .map(Some)
            .map_err(|why| format!("env {name}: resourceFieldRef {}: {why}", resource.resource));
    }
    let (kind, object, optional) = if let Some(key) = &from.config_map_key_ref {
        ("configmap", key.name.clone(), key.optional)
    } else if let Some(key) = &from.secret_key_ref {
        ("secret", key.name.clone(), key.optional)
    } else {
        return Err(format!("env {name}: valueFrom names no source"));
    };
    if optional == Some(true) {
        return Ok(None);
    }
    Err(format!(
        "{kind} \"{object}\" not found (env {name}: gannet-control serves no ConfigMaps or \
         Secrets)"
    ))
}

/// A `fieldRef`'s value.
pub(super) fn field_value(pod: &Pod, path: &str, sources: &Sources) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['"))
            .and_then(|rest| rest.strip_suffix("']"))
    };
    let text = |value: Option<&String>| value.cloned().unwrap_or_default();
    Ok(match path {
        "metadata.name" => text(meta.name.as_ref()),
        "metadata.namespace" => meta
            .namespace
            .clone()
            .unwrap_or_else(|| gannet_api::DEFAULT_NAMESPACE.to_owned()),
        "metadata.uid" => text(meta.uid.as_ref()),
        "spec.nodeName" => text(spec.and_then(|s| s.node_name.as_ref())),
        "spec.serviceAccountName" => text(spec.and_then(|s| s.service_account_name.as_ref())),
        "status.podIP" => sources.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => sources.pod_ips.join(","),
        _ => {
            if let Some(key) = keyed("metadata.labels") {
                text(meta.labels.as_ref().and_then(|l| l.get(key)))
            } else if let Some(key) = keyed("metadata.annotations") {
                text(meta.annotations.as_ref().and_then(|a| a.get(key)))
            } else {
                return Err(
                    "not a field gannetd provides (metadata.name, metadata.namespace, \
                            metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], \
                            spec.nodeName, spec.serviceAccountName, status.podIP, status.podIPs)"
                        .to_owned(),
                );
            }
        }
    })
}

/// A `resourceFieldRef`'s value: the amount divided by `divisor` (default 1), rounded up.
pub(super) fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    sources: &Sources,
) -> Result<String, String> {
    let (which, what) = resource.split_once('.').ok_or_else(|| {
        "not limits.cpu, limits.memory, requests.cpu or requests.memory".to_owned()
    })?;
    let cpu = match what {
        "cpu" => true,
        "memory" => false,
        _ => return Err("only cpu and memory are supported".to_owned()),
    };
    let resources = container.resources.as_ref();
    let quantity = match which {
        "limits" => resources.and_then(|r| r.limits.as_ref()?.get(what)),
        "requests" => resources.and_then(|r| r.requests.as_ref()?.get(what)),
        _ => return Err("not limits.* or requests.*".to_owned()),
    };
    let amount = match quantity {
        Some(q) => {
            let q = Quantity::parse(&q.0).map_err(|e| e.to_string())?;
            if cpu { q.millis() } else { q.units() }
        }
        // A limit not set is the node's capacity; a request not set is nothing (as the kubelet).
        None if which == "limits" => {
            if cpu {
                sources.node_millicpu
            } else {
                sources.node_memory
            }
        }
        None => 0,
    };
    let divisor = match divisor {
        None => {
            if cpu {
                1000
            } else {
                1
            }
        }
        Some(text) => {
            let q = Quantity::parse(text).map_err(|e| format!("divisor {text}: {e}"))?;
            if cpu { q.millis() } else { q.units() }
        }
    };
    if divisor == 0 {
        return Err("divisor 0".to_owned());
    }
    Ok(amount.div_ceil(divisor).to_string())
}

/// `text` with `$(NAME)` replaced by the value of an earlier variable; `$$` is a `$`; a reference
/// to an unknown name stays as written (Kubernetes' expansion).
#[must_use]
pub fn expand(text: &str, defined: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_and_container(env: &str, resources: &str) -> (Pod, Container) {
        let pod: Pod = serde_json::from_str(&format!(
            r#"{{"metadata": {{"name": "web-1", "uid": "u-1", "labels": {{"app": "web"}},
                "annotations": {{"a/b": "x"}}}},
               "spec": {{"nodeName": "n1", "containers": [{{"name": "app", "env": {env},
                 "resources": {resources}}}]}}}}"#
        ))
        .unwrap();
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, container)
    }

    fn sources() -> Sources {
        Sources {
            pod_ips: vec!["10.244.0.5".to_owned(), "fd00::5".to_owned()],
            node_millicpu: 2000,
            node_memory: 8 << 30,
        }
    }

    #[test]
    fn references_expand_to_earlier_variables_only() {
        let defined: HashMap<String, String> = [
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two".to_owned()),
        ]
        .into();
        assert_eq!(expand("$(A)-$(B)", &defined), "1-two");
        assert_eq!(expand("$(C) $$(A) $$ $", &defined), "$(C) $(A) $ $");
        assert_eq!(expand("$(A", &defined), "$(A");
        assert_eq!(expand("plain", &defined), "plain");
    }

    #[test]
    fn fields_and_resources_are_the_pods_and_the_containers() {
        let (pod, container) = pod_and_container(
            r#"[{"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "ANN", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['a/b']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
                {"name": "URL", "value": "http://$(IP):80/$(NAME)"},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k", "optional": true}}}]"#,
            r#"{"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}"#,
        );
        let env = environment(&pod, &container, &sources()).unwrap();
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("NAME", "web-1"),
                ("NS", "default"),
                ("APP", "web"),
                ("ANN", "x"),
                ("NODE", "n1"),
                ("IP", "10.244.0.5"),
                ("IPS", "10.244.0.5,fd00::5"),
                ("URL", "http://10.244.0.5:80/web-1"),
                ("MEM", "64"),
                ("CPU", "250"),
                // No CPU limit: the node's 2 CPUs.
                ("CPUS", "2"),
            ]
        );
    }

    #[test]
    fn what_gannet_cannot_resolve_is_a_config_error_naming_it() {
        let (pod, container) = pod_and_container(
            r#"[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]"#,
            "{}",
        );
        let error = environment(&pod, &container, &sources()).unwrap_err();
        assert!(error.starts_with("secret \"db\" not found"), "{error}");
        let (pod, container) = pod_and_container(
            r#"[{"name": "H", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}]"#,
            "{}",
        );
        let error = environment(&pod, &container, &sources()).unwrap_err();
        assert!(
            error.starts_with("env H: fieldRef status.hostIP: not a field"),
            "{error}"
        );
    }
}
