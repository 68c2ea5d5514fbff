//! Reading documents: kinds, empty documents, YAML and type errors.

use super::{SHOP_YAML, error, parse_err, parse_ok, parse_one_err, service_doc, slice_doc, yaml};
use crate::Object;

/// A valid single-port Service `shop/{name}`.
fn valid_service(name: &str) -> String {
    service_doc(
        name,
        "
        clusterIP: 10.96.0.20
        ports:
          - port: 80
        ",
    )
}

#[test]
fn shop_manifest_reads_every_document_in_order() {
    let objects = parse_ok("shop.yaml", SHOP_YAML);
    let seen: Vec<String> = objects
        .iter()
        .map(|object| match object {
            Object::Service(service) => {
                format!(
                    "Service {}",
                    service.metadata.name.as_deref().unwrap_or("?")
                )
            }
            Object::EndpointSlice(slice) => {
                format!(
                    "EndpointSlice {}",
                    slice.metadata.name.as_deref().unwrap_or("?")
                )
            }
            Object::Node(node) => format!("Node {}", node.name),
            Object::Ignored { kind, name } => format!("ignored {kind} {name}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            "ignored Deployment web",
            "Service web",
            "EndpointSlice web-v4-abc12",
            "EndpointSlice web-v4-xyz89",
            "EndpointSlice web-v6-def34",
            "Service kube-dns",
            "EndpointSlice kube-dns-7x2lp",
            "Service web-pods",
        ]
    );
    let Object::Service(web) = &objects[1] else {
        panic!("expected the web Service second, got {:?}", objects[1]);
    };
    let spec = web.spec.as_ref().expect("web has a spec");
    assert_eq!(
        spec.cluster_ips.as_deref(),
        Some(&["10.96.100.10".to_owned(), "fd00:10:96::100a".to_owned()][..])
    );
}

#[test]
fn empty_documents_and_files_are_skipped() {
    assert_eq!(parse_ok("empty.yaml", ""), []);
    assert_eq!(parse_ok("comments.yaml", "# nothing here yet\n"), []);
    let text = format!(
        "---\n---\n# only a comment\n---\n{}---\n...\n",
        valid_service("web")
    );
    let objects = parse_ok("sparse.yaml", &text);
    assert!(
        matches!(&objects[..], [Object::Service(_)]),
        "expected only the Service, got {objects:#?}"
    );
}

#[test]
fn other_kinds_are_ignored_with_their_name() {
    let text = yaml(
        "
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: settings
        data:
          a: b
        ---
        apiVersion: serving.knative.dev/v1
        kind: Service
        metadata:
          name: hello
        spec: {}
        ---
        apiVersion: v1
        kind: Namespace
        ",
    );
    let ignored = |kind: &str, name: &str| Object::Ignored {
        kind: kind.to_owned(),
        name: name.to_owned(),
    };
    assert_eq!(
        parse_ok("misc.yaml", &text),
        [
            ignored("ConfigMap", "settings"),
            ignored("Service", "hello"),
            ignored("Namespace", ""),
        ]
    );
}

#[test]
fn json_manifests_are_read() {
    let text = r#"{
	"apiVersion": "v1",
	"kind": "Service",
	"metadata": {"name": "web", "namespace": "shop"},
	"spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "protocol": "UDP"}]}
}"#;
    let objects = parse_ok("web.json", text);
    let [Object::Service(service)] = &objects[..] else {
        panic!("expected one Service, got {objects:#?}");
    };
    let ports = service.spec.as_ref().and_then(|spec| spec.ports.as_ref());
    let port = &ports.expect("the Service has ports")[0];
    assert_eq!((port.port, port.protocol.as_deref()), (80, Some("UDP")));
}

#[test]
fn document_that_is_not_a_mapping_is_named_by_index() {
    let text = format!("{}---\n- just\n- a list\n", valid_service("web"));
    assert_eq!(
        parse_one_err("list.yaml", &text),
        error(
            "list.yaml",
            2,
            None,
            None,
            "a document must be a mapping with apiVersion and kind, found a list"
        )
    );
    assert_eq!(
        parse_one_err("scalar.yaml", "just words\n").message,
        "a document must be a mapping with apiVersion and kind, found a string"
    );
}

#[test]
fn missing_kind_and_api_version_are_both_reported() {
    assert_eq!(
        parse_err("bare.yaml", "metadata:\n  name: web\n"),
        [
            error("bare.yaml", 1, None, Some("apiVersion"), "must be set"),
            error("bare.yaml", 1, None, Some("kind"), "must be set"),
        ]
    );
    assert_eq!(
        parse_one_err("kind.yaml", "apiVersion: v1\nkind: [Service]\n"),
        error(
            "kind.yaml",
            1,
            None,
            Some("kind"),
            "must be a string, found a list"
        )
    );
}

#[test]
fn retired_api_versions_of_known_kinds_are_errors() {
    let text = yaml(
        "
        apiVersion: discovery.k8s.io/v1beta1
        kind: EndpointSlice
        metadata:
          name: web-abc
        addressType: IPv4
        endpoints: []
        ",
    );
    assert_eq!(
        parse_one_err("old.yaml", &text),
        error(
            "old.yaml",
            1,
            Some("EndpointSlice default/web-abc"),
            Some("apiVersion"),
            "\"discovery.k8s.io/v1beta1\" is not supported for EndpointSlice: \
             use discovery.k8s.io/v1"
        )
    );
    let text = "apiVersion: v2\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n";
    assert_eq!(
        parse_one_err("v2.yaml", text),
        error(
            "v2.yaml",
            1,
            Some("Service shop/web"),
            Some("apiVersion"),
            "\"v2\" is not supported for Service: use v1"
        )
    );
}

#[test]
fn yaml_syntax_error_gives_document_line_and_column() {
    // Lines 11 to 15 of the file; `namespace` is indented by one space only.
    let broken = yaml(
        "
        apiVersion: v1
        kind: Service
        metadata:
          name: broken
         namespace: shop
        ",
    );
    let text = format!("{}---\n{broken}", valid_service("web"));
    assert_eq!(
        parse_one_err("syntax.yaml", &text),
        error(
            "syntax.yaml",
            2,
            None,
            None,
            "invalid YAML: did not find expected key at line 15 column 2, \
             while parsing a block mapping at line 11 column 1"
        )
    );
}

#[test]
fn type_error_names_the_field_path() {
    let text = service_doc(
        "web",
        "
        clusterIP: 10.96.0.20
        ports:
          - name: http
            port: 80
          - name: https
            port: https
        ",
    );
    assert_eq!(
        parse_one_err("types.yaml", &text),
        error(
            "types.yaml",
            1,
            Some("Service shop/web"),
            Some("spec.ports[1].port"),
            "invalid type: string \"https\", expected i32"
        )
    );
    let text = slice_doc(
        "web-abc",
        "web",
        "
        addressType: IPv4
        endpoints:
          - addresses: [\"10.244.1.5\"]
            conditions:
              ready: maybe
        ",
    );
    assert_eq!(
        parse_one_err("slice-types.yaml", &text),
        error(
            "slice-types.yaml",
            1,
            Some("EndpointSlice shop/web-abc"),
            Some("endpoints[0].conditions.ready"),
            "invalid type: string \"maybe\", expected a boolean"
        )
    );
}

#[test]
fn errors_of_every_document_are_collected() {
    let no_ip = service_doc("no-ip", "ports:\n  - port: 80\n");
    let sctp = service_doc(
        "sctp",
        "
        clusterIP: 10.96.0.21
        ports:
          - port: 0
            protocol: SCTP
        ",
    );
    let text = format!("{no_ip}---\n{}---\n{sctp}", valid_service("good"));
    assert_eq!(
        parse_err("many.yaml", &text),
        [
            error(
                "many.yaml",
                1,
                Some("Service shop/no-ip"),
                Some("spec.clusterIP"),
                "must be set: gannetd does not allocate ClusterIPs without a control plane"
            ),
            error(
                "many.yaml",
                3,
                Some("Service shop/sctp"),
                Some("spec.ports[0].port"),
                "port 0 is out of range 1..=65535"
            ),
            error(
                "many.yaml",
                3,
                Some("Service shop/sctp"),
                Some("spec.ports[0].protocol"),
                "protocol SCTP is not supported (gannet balances TCP and UDP)"
            ),
        ]
    );
}

#[test]
fn error_display_names_file_document_object_and_field() {
    let full = error(
        "svc.yaml",
        2,
        Some("Service default/web"),
        Some("spec.ports[0].protocol"),
        "protocol SCTP is not supported (gannet balances TCP and UDP)",
    );
    assert_eq!(
        full.to_string(),
        "svc.yaml: document 2: Service default/web: spec.ports[0].protocol: \
         protocol SCTP is not supported (gannet balances TCP and UDP)"
    );
    assert_eq!(
        error(
            "/etc/gannet/svc.yaml",
            0,
            None,
            None,
            "cannot read: permission denied"
        )
        .to_string(),
        "/etc/gannet/svc.yaml: cannot read: permission denied"
    );
    assert_eq!(
        error("svc.yaml", 3, None, Some("kind"), "must be set").to_string(),
        "svc.yaml: document 3: kind: must be set"
    );
    assert_eq!(
        error(
            "svc.yaml",
            0,
            Some("Service shop/web"),
            None,
            "is already defined"
        )
        .to_string(),
        "svc.yaml: Service shop/web: is already defined"
    );
}
