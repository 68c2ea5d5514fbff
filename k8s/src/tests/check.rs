//! The single-object checks and document reader used by the control plane and `gannetctl`.

use std::path::Path;

use k8s_openapi::api::core::v1::Service;

use crate::{
    ClusterIp, FieldProblem, check_endpoint_slice_object, check_service_object, read_documents,
    typed_object,
};

const NO_CLUSTER_IP: &str = "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
";

fn service(yaml: &str) -> Service {
    let documents = read_documents(Path::new("svc.yaml"), yaml).expect("test YAML parses");
    typed_object(documents[0].value.clone()).expect("test Service is well-typed")
}

#[test]
fn allocated_cluster_ip_may_be_unset_but_is_checked_when_set() {
    let unset = service(NO_CLUSTER_IP);
    assert_eq!(check_service_object(&unset, ClusterIp::Allocated), vec![]);
    let required = check_service_object(&unset, ClusterIp::Required);
    assert_eq!(required.len(), 1, "{required:?}");
    assert_eq!(required[0].field.as_deref(), Some("spec.clusterIP"));

    let mut bad = unset.clone();
    bad.spec.as_mut().expect("spec").cluster_ip = Some("10.96.0.300".to_owned());
    assert_eq!(
        check_service_object(&bad, ClusterIp::Allocated),
        vec![FieldProblem {
            field: Some("spec.clusterIP".to_owned()),
            message: "\"10.96.0.300\" is not an IP address".to_owned(),
        }]
    );
}

#[test]
fn allocated_node_ports_may_be_unset_but_the_rest_is_checked() {
    let node_port = service(
        "
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  externalTrafficPolicy: Sideways
  ports: [{port: 80}]
",
    );
    let fields = |cluster_ip| -> Vec<Option<String>> {
        check_service_object(&node_port, cluster_ip)
            .into_iter()
            .map(|problem| problem.field)
            .collect()
    };
    assert_eq!(
        fields(ClusterIp::Allocated),
        vec![Some("spec.externalTrafficPolicy".to_owned())]
    );
    assert_eq!(
        fields(ClusterIp::Required),
        vec![
            Some("spec.clusterIP".to_owned()),
            Some("spec.ports[0].nodePort".to_owned()),
            Some("spec.externalTrafficPolicy".to_owned()),
        ]
    );
}

#[test]
fn read_documents_skips_empty_documents_and_counts_them() {
    let text = format!("---\n{NO_CLUSTER_IP}---\n---\n{NO_CLUSTER_IP}");
    let documents = read_documents(Path::new("a.yaml"), &text).expect("parses");
    let indexes: Vec<usize> = documents.iter().map(|document| document.index).collect();
    // A leading `---` starts the first document; the empty one between is counted.
    assert_eq!(indexes, vec![1, 3]);

    let errors = read_documents(Path::new("b.yaml"), "- a list\n").expect_err("not a mapping");
    assert_eq!(
        errors[0].to_string(),
        "b.yaml: document 1: a document must be a mapping with apiVersion and kind"
    );
}

#[test]
fn typed_object_names_the_field() {
    let documents = read_documents(
        Path::new("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: eighty}]}\n",
    )
    .expect("parses");
    let error = typed_object::<Service>(documents[0].value.clone()).expect_err("port is a string");
    assert_eq!(
        error.field.as_deref(),
        Some("spec.ports[0].port"),
        "{error}"
    );
}

#[test]
fn endpoint_slice_problems_name_fields() {
    let documents = read_documents(
        Path::new("eps.yaml"),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1}\naddressType: IPv4\nendpoints: [{addresses: [\"fd00::1\"]}]\n",
    )
    .expect("parses");
    let slice = typed_object(documents[0].value.clone()).expect("typed");
    let fields: Vec<Option<String>> = check_endpoint_slice_object(&slice)
        .into_iter()
        .map(|problem| problem.field)
        .collect();
    assert_eq!(
        fields,
        vec![
            Some("metadata.labels[\"kubernetes.io/service-name\"]".to_owned()),
            Some("endpoints[0].addresses[0]".to_owned()),
        ]
    );
}
