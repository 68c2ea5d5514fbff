use gannet_api::{Kind, Object};

use super::meta::{is_label_key, is_port_name};
use super::nodes::is_mac;
use super::validate;

fn object(json: &serde_json::Value) -> Object {
    let kind = Kind::from_type(
        json["apiVersion"].as_str().expect("apiVersion"),
        json["kind"].as_str().expect("kind"),
    )
    .expect("a served kind");
    Object::from_json(kind, json.to_string().as_bytes()).expect("test object decodes")
}

fn fields(object: &Object) -> Vec<String> {
    validate(object)
        .into_iter()
        .map(|problem| problem.field.unwrap_or_default())
        .collect()
}

#[test]
fn valid_objects_have_no_problems() {
    let service = object(&serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "externalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]}
    }));
    assert_eq!(validate(&service), vec![]);
    let pod = object(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]}
    }));
    assert_eq!(validate(&pod), vec![]);
}

#[test]
fn pod_resources_are_quantities_and_requests_fit_limits() {
    let pod = object(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"},
        "spec": {
            "containers": [
                {"name": "ok", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                              "limits": {"cpu": "1", "memory": "1G"}}},
                {"name": "bad", "resources": {"requests": {"cpu": "lots", "memory": "-1Gi"},
                                               "limits": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "over", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}}
            ],
            "initContainers": [{"name": "init", "resources": {"limits": {"memory": "1 Gi"}}}]
        }
    }));
    let problems = validate(&pod);
    let found: Vec<(String, String)> = problems
        .into_iter()
        .map(|p| (p.field.unwrap_or_default(), p.message))
        .collect();
    let fields: Vec<&str> = found.iter().map(|(field, _)| field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.containers[1].resources.requests.cpu",
            "spec.containers[1].resources.requests.memory",
            "spec.containers[2].resources.requests.cpu",
            "spec.initContainers[0].resources.limits.memory",
        ],
        "{found:?}"
    );
    assert!(
        found[0].1.contains("\"lots\" is not a quantity"),
        "{found:?}"
    );
    assert!(found[1].1.contains("must not be negative"), "{found:?}");
    assert_eq!(
        found[2].1,
        "must be less than or equal to the cpu limit of 1500m"
    );
}

/// Found by the `control_apply` fuzz target: a headless Service without `spec.ports[0].port`
/// was stored with port and target port 0, which Apply then refused when given it back.
#[test]
fn headless_and_external_name_services_need_valid_ports() {
    for spec in [
        serde_json::json!({"clusterIP": "None", "ports": [{"porlot": 30}]}),
        serde_json::json!({"type": "ExternalName", "externalName": "example.com",
                           "ports": [{"port": 70000}]}),
    ] {
        let service = object(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "headless"},
            "spec": spec,
        }));
        assert_eq!(fields(&service), vec!["spec.ports[0].port"], "{spec}");
    }
    // A served Service's port is reported once, by gannet-k8s.
    let service = object(&serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 0, "targetPort": 80}]},
    }));
    assert_eq!(fields(&service), vec!["spec.ports[0].port"]);
}

#[test]
fn every_service_problem_is_named() {
    // gannet-k8s's problems (node port, external traffic policy, external and ingress IPs)
    // come first, each once.
    let service = object(&serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "Web"},
        "spec": {"externalTrafficPolicy": "Local", "internalTrafficPolicy": "Global",
                 "ports": [{"name": "http", "port": 80, "targetPort": 70000, "nodePort": 30080},
                           {"name": "Bad_Name", "port": 81, "targetPort": "no--good"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3"}, {}]}}
    }));
    assert_eq!(
        fields(&service),
        vec![
            "metadata.name",
            "spec.ports[0].nodePort",
            "spec.externalTrafficPolicy",
            "status.loadBalancer.ingress[0].ip",
            "spec.ports[0].targetPort",
            "spec.ports[1].name",
            "spec.ports[1].targetPort",
            "spec.internalTrafficPolicy",
            "status.loadBalancer.ingress[1]",
        ]
    );
    let external_ips = object(&serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"externalIPs": ["nope"], "ports": [{"port": 80}]}
    }));
    assert_eq!(fields(&external_ips), vec!["spec.externalIPs[0]"]);
}

#[test]
fn pod_and_node_problems_are_named() {
    let pod = object(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"bad key!": "x"}},
        "spec": {"containers": [{"name": "a", "ports": [{"name": "http", "containerPort": 0},
                                                        {"name": "http", "containerPort": 81, "protocol": "ICMP"}]}]},
        "status": {"phase": "Dancing", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}
    }));
    assert_eq!(
        fields(&pod),
        vec![
            "metadata.labels[\"bad key!\"]",
            "spec.containers[0].ports[0].containerPort",
            "spec.containers[0].ports[1].protocol",
            "spec.containers[0].ports[1].name",
            "status.podIPs[1].ip",
            "status.phase",
        ]
    );
    let node = object(&serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "annotations": {"gannet.io/vtep-mac": "zz"}},
        "spec": {"podCIDRs": ["10.244.1.0/33"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "x"}]}
    }));
    assert_eq!(
        fields(&node),
        vec![
            "metadata.annotations[\"gannet.io/vtep-mac\"]",
            "spec.podCIDRs[0]",
            "status.addresses[0].address",
        ]
    );
}

#[test]
fn names() {
    assert!(is_port_name("http") && is_port_name("h2c-8080"));
    assert!(
        !is_port_name("8080") && !is_port_name("a--b") && !is_port_name("way-too-long-port-name")
    );
    assert!(is_label_key("app.kubernetes.io/name") && is_label_key("app"));
    assert!(!is_label_key("/x") && !is_label_key("a b"));
    assert!(is_mac("02:42:ac:11:00:02") && !is_mac("02:42:ac:11:00"));
}
