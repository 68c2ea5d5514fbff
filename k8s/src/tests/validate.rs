//! Kubernetes validation rules: each mistake is reported at its field.

use super::{error, parse_ok, parse_one_err, service_doc, slice_doc, yaml};
use crate::Object;

/// (spec, field, message): every case has exactly one mistake.
const SERVICE_CASES: &[(&str, &str, &str)] = &[
    (
        "
        ports:
          - port: 80
        ",
        "spec.clusterIP",
        "must be set: gannetd does not allocate ClusterIPs without a control plane",
    ),
    (
        "
        clusterIP: \"\"
        ports:
          - port: 80
        ",
        "spec.clusterIP",
        "must be set: gannetd does not allocate ClusterIPs without a control plane",
    ),
    (
        "
        clusterIP: 10.96.0.300
        ports:
          - port: 80
        ",
        "spec.clusterIP",
        "\"10.96.0.300\" is not an IP address",
    ),
    (
        "
        clusterIPs: [10.96.0.20, not-an-ip]
        ports:
          - port: 80
        ",
        "spec.clusterIPs[1]",
        "\"not-an-ip\" is not an IP address",
    ),
    (
        "
        clusterIP: 10.96.0.20
        clusterIPs: [10.96.0.21, \"fd00::21\"]
        ports:
          - port: 80
        ",
        "spec.clusterIPs[0]",
        "\"10.96.0.21\" must equal spec.clusterIP (\"10.96.0.20\")",
    ),
    (
        "
        clusterIPs: [10.96.0.20, 10.96.0.21]
        ports:
          - port: 80
        ",
        "spec.clusterIPs",
        "10.96.0.20 and 10.96.0.21 are both IPv4: \
         a dual-stack service has one IPv4 and one IPv6 address",
    ),
    (
        "
        clusterIPs: [10.96.0.20, \"fd00::20\", \"fd00::21\"]
        ports:
          - port: 80
        ",
        "spec.clusterIPs",
        "has 3 entries: at most two (one IPv4 and one IPv6) are allowed",
    ),
    (
        "
        clusterIPs: [None, \"fd00::20\"]
        ports:
          - port: 80
        ",
        "spec.clusterIPs",
        "\"None\" (headless) must be the only entry",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ",
        "spec.ports",
        "at least one port is required",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ports: []
        ",
        "spec.ports",
        "at least one port is required",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ports:
          - port: 0
        ",
        "spec.ports[0].port",
        "port 0 is out of range 1..=65535",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ports:
          - port: 65536
        ",
        "spec.ports[0].port",
        "port 65536 is out of range 1..=65535",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            protocol: SCTP
        ",
        "spec.ports[0].protocol",
        "protocol SCTP is not supported (gannet balances TCP and UDP)",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            protocol: tcp
        ",
        "spec.ports[0].protocol",
        "protocol tcp is not supported (gannet balances TCP and UDP)",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ports:
          - name: http
            port: 80
          - port: 443
        ",
        "spec.ports[1].name",
        "must be set when the service has more than one port",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ports:
          - name: http
            port: 80
          - name: http
            port: 8080
        ",
        "spec.ports[1].name",
        "duplicate port name \"http\" (also spec.ports[0])",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ports:
          - name: a
            port: 80
          - name: b
            port: 80
            protocol: TCP
        ",
        "spec.ports[1]",
        "duplicate port 80/TCP (also spec.ports[0])",
    ),
    (
        "
        clusterIP: 10.96.0.20
        sessionAffinity: Sticky
        ports:
          - port: 80
        ",
        "spec.sessionAffinity",
        "\"Sticky\" is not None or ClientIP",
    ),
    (
        "
        clusterIP: 10.96.0.20
        sessionAffinity: ClientIP
        sessionAffinityConfig:
          clientIP:
            timeoutSeconds: 0
        ports:
          - port: 80
        ",
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        "0 is out of range 1..=86400 seconds",
    ),
    (
        "
        clusterIP: 10.96.0.20
        sessionAffinity: ClientIP
        sessionAffinityConfig:
          clientIP:
            timeoutSeconds: 86401
        ports:
          - port: 80
        ",
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        "86401 is out of range 1..=86400 seconds",
    ),
    (
        "
        clusterIP: 10.96.0.20
        sessionAffinityConfig:
          clientIP:
            timeoutSeconds: 60
        ports:
          - port: 80
        ",
        "spec.sessionAffinityConfig",
        "must not be set when sessionAffinity is None (set sessionAffinity: ClientIP)",
    ),
    (
        "
        type: Ingress
        clusterIP: 10.96.0.20
        ports:
          - port: 80
        ",
        "spec.type",
        "type \"Ingress\" is not ClusterIP, NodePort, LoadBalancer or ExternalName",
    ),
    (
        "
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 30080
        ",
        "spec.ports[0].nodePort",
        "may not be set when type is ClusterIP: only NodePort and LoadBalancer services have \
         node ports",
    ),
    (
        "
        type: NodePort
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 70000
        ",
        "spec.ports[0].nodePort",
        "port 70000 is out of range 1..=65535",
    ),
    (
        "
        type: LoadBalancer
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: -1
        ",
        "spec.ports[0].nodePort",
        "port -1 is out of range 1..=65535",
    ),
    (
        "
        type: NodePort
        clusterIP: 10.96.0.20
        ports:
          - port: 80
        ",
        "spec.ports[0].nodePort",
        "must be set for type NodePort: gannetd does not allocate node ports without a control \
         plane",
    ),
    (
        "
        type: LoadBalancer
        allocateLoadBalancerNodePorts: true
        clusterIP: 10.96.0.20
        ports:
          - name: http
            port: 80
            nodePort: 30080
          - name: https
            port: 443
            nodePort: 0
        ",
        "spec.ports[1].nodePort",
        "must be set for type LoadBalancer: gannetd does not allocate node ports without a \
         control plane",
    ),
    (
        "
        type: NodePort
        clusterIP: 10.96.0.20
        ports:
          - name: http
            port: 80
            nodePort: 30080
          - name: alt
            port: 8080
            nodePort: 30080
        ",
        "spec.ports[1].nodePort",
        "duplicate nodePort 30080/TCP (also spec.ports[0])",
    ),
    (
        "
        clusterIP: 10.96.0.20
        externalIPs: [192.0.2.10, 192.0.2.300]
        ports:
          - port: 80
        ",
        "spec.externalIPs[1]",
        "\"192.0.2.300\" is not an IP address",
    ),
    (
        "
        clusterIP: 10.96.0.20
        externalIPs: [127.0.0.1]
        ports:
          - port: 80
        ",
        "spec.externalIPs[0]",
        "\"127.0.0.1\" may not be in the loopback range (127.0.0.0/8, ::1/128)",
    ),
    (
        "
        clusterIP: 10.96.0.20
        externalIPs: [\"2001:db8::1\", \"fe80::1\"]
        ports:
          - port: 80
        ",
        "spec.externalIPs[1]",
        "\"fe80::1\" may not be in the link-local range (169.254.0.0/16, fe80::/10)",
    ),
    (
        "
        clusterIP: 10.96.0.20
        externalIPs: [0.0.0.0]
        ports:
          - port: 80
        ",
        "spec.externalIPs[0]",
        "\"0.0.0.0\" may not be unspecified (0.0.0.0, ::)",
    ),
    (
        "
        clusterIP: 10.96.0.20
        externalIPs: [224.0.0.251]
        ports:
          - port: 80
        ",
        "spec.externalIPs[0]",
        "\"224.0.0.251\" may not be in the link-local multicast range (224.0.0.0/24, ff02::/16)",
    ),
    (
        "
        type: NodePort
        externalTrafficPolicy: Global
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 30080
        ",
        "spec.externalTrafficPolicy",
        "\"Global\" is not Cluster or Local",
    ),
    (
        "
        externalTrafficPolicy: Local
        clusterIP: 10.96.0.20
        ports:
          - port: 80
        ",
        "spec.externalTrafficPolicy",
        "may only be set for a service reachable from outside the cluster (type NodePort or \
         LoadBalancer, or with spec.externalIPs), not type ClusterIP without external IPs",
    ),
    (
        "
        type: NodePort
        externalTrafficPolicy: Local
        healthCheckNodePort: 32000
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 30080
        ",
        "spec.healthCheckNodePort",
        "may only be set when type is LoadBalancer and externalTrafficPolicy is Local",
    ),
    (
        "
        type: LoadBalancer
        healthCheckNodePort: 32000
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 30080
        ",
        "spec.healthCheckNodePort",
        "may only be set when type is LoadBalancer and externalTrafficPolicy is Local",
    ),
    (
        "
        type: LoadBalancer
        externalTrafficPolicy: Local
        healthCheckNodePort: 65536
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 30080
        ",
        "spec.healthCheckNodePort",
        "port 65536 is out of range 1..=65535",
    ),
    (
        "
        type: LoadBalancer
        externalTrafficPolicy: Local
        healthCheckNodePort: 30080
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 30080
        ",
        "spec.healthCheckNodePort",
        "port 30080 is already the nodePort of spec.ports[0]",
    ),
    (
        "
        type: NodePort
        loadBalancerSourceRanges: [10.0.0.0/8]
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 30080
        ",
        "spec.loadBalancerSourceRanges",
        "may only be set when type is LoadBalancer, not NodePort",
    ),
    (
        "
        type: LoadBalancer
        loadBalancerSourceRanges: [10.0.0.0/8, 10.1.0.0]
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 30080
        ",
        "spec.loadBalancerSourceRanges[1]",
        "\"10.1.0.0\" is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32",
    ),
    (
        "
        type: LoadBalancer
        loadBalancerSourceRanges: [\"2001:db8::/129\"]
        clusterIP: 10.96.0.20
        ports:
          - port: 80
            nodePort: 30080
        ",
        "spec.loadBalancerSourceRanges[0]",
        "\"2001:db8::/129\" is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32",
    ),
];

#[test]
fn each_service_mistake_is_reported_at_its_field() {
    for (spec, field, message) in SERVICE_CASES {
        let text = service_doc("web", spec);
        assert_eq!(
            parse_one_err("svc.yaml", &text),
            error(
                "svc.yaml",
                1,
                Some("Service shop/web"),
                Some(field),
                message
            ),
            "for the document:\n{text}"
        );
    }
}

/// (metadata annotations, spec, status, field, message) of whole Service documents: every case
/// has exactly one mistake.
const SERVICE_DOCUMENT_CASES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "service.beta.kubernetes.io/load-balancer-source-ranges: \"10.0.0.0/8,nope\"",
        "{type: LoadBalancer, clusterIP: 10.96.0.20, ports: [{port: 80, nodePort: 30080}]}",
        "{}",
        "metadata.annotations[\"service.beta.kubernetes.io/load-balancer-source-ranges\"]",
        "\"nope\" is not a CIDR such as 203.0.113.0/24 or 2001:db8::/32",
    ),
    (
        "service.beta.kubernetes.io/load-balancer-source-ranges: 10.0.0.0/8",
        "{clusterIP: 10.96.0.20, ports: [{port: 80}]}",
        "{}",
        "metadata.annotations[\"service.beta.kubernetes.io/load-balancer-source-ranges\"]",
        "may only be set when type is LoadBalancer, not ClusterIP",
    ),
    (
        "{}",
        "{type: LoadBalancer, clusterIP: 10.96.0.20, ports: [{port: 80, nodePort: 30080}]}",
        "{loadBalancer: {ingress: [{ip: 198.51.100.300}]}}",
        "status.loadBalancer.ingress[0].ip",
        "\"198.51.100.300\" is not an IP address",
    ),
    (
        "{}",
        "{type: LoadBalancer, clusterIP: 10.96.0.20, ports: [{port: 80, nodePort: 30080}]}",
        "{loadBalancer: {ingress: [{ip: 198.51.100.1}, {ip: 198.51.100.2, ipMode: Magic}]}}",
        "status.loadBalancer.ingress[1].ipMode",
        "\"Magic\" is not VIP or Proxy",
    ),
];

#[test]
fn each_mistake_in_annotations_and_status_is_reported_at_its_field() {
    for (annotations, spec, status, field, message) in SERVICE_DOCUMENT_CASES {
        let text = format!(
            "apiVersion: v1\nkind: Service\n\
             metadata:\n  name: web\n  namespace: shop\n  annotations:\n    {annotations}\n\
             spec: {spec}\nstatus: {status}\n"
        );
        assert_eq!(
            parse_one_err("svc.yaml", &text),
            error(
                "svc.yaml",
                1,
                Some("Service shop/web"),
                Some(field),
                message
            ),
            "for the document:\n{text}"
        );
    }
}

#[test]
fn service_without_name_is_reported_by_kind() {
    let text = yaml(
        "
        apiVersion: v1
        kind: Service
        metadata:
          namespace: shop
        spec:
          clusterIP: 10.96.0.20
          ports:
            - port: 80
        ",
    );
    assert_eq!(
        parse_one_err("anon.yaml", &text),
        error(
            "anon.yaml",
            1,
            Some("Service"),
            Some("metadata.name"),
            "must be set"
        )
    );
}

#[test]
fn namespace_defaults_to_default() {
    let text = yaml(
        "
        apiVersion: v1
        kind: Service
        metadata:
          name: web
        spec:
          ports:
            - port: 80
        ",
    );
    assert_eq!(
        parse_one_err("svc.yaml", &text),
        error(
            "svc.yaml",
            1,
            Some("Service default/web"),
            Some("spec.clusterIP"),
            "must be set: gannetd does not allocate ClusterIPs without a control plane"
        )
    );
}

#[test]
fn headless_and_external_name_services_are_not_checked_further() {
    let specs = [
        "clusterIP: None\n",
        // Headless services may have any ports: gannet does not balance them.
        "
        clusterIP: None
        clusterIPs: [None]
        ports:
          - port: 80
            protocol: SCTP
        ",
        "
        type: ExternalName
        externalName: db.example.com
        ",
    ];
    for spec in specs {
        let objects = parse_ok("svc.yaml", &service_doc("web", spec));
        assert!(
            matches!(&objects[..], [Object::Service(_)]),
            "expected one accepted Service for spec:\n{spec}\ngot {objects:#?}"
        );
    }
}

/// (body after the metadata, field, message): every case has exactly one mistake.
const SLICE_CASES: &[(&str, &str, &str)] = &[
    (
        "
        addressType: IPv5
        endpoints:
          - addresses: [\"10.244.1.5\"]
        ",
        "addressType",
        "\"IPv5\" is not IPv4, IPv6 or FQDN",
    ),
    (
        "
        endpoints:
          - addresses: [\"10.244.1.5\"]
        ",
        "addressType",
        "\"\" is not IPv4, IPv6 or FQDN",
    ),
    (
        "
        addressType: IPv4
        endpoints:
          - addresses: [\"fd00:10:244::5\"]
        ",
        "endpoints[0].addresses[0]",
        "\"fd00:10:244::5\" is not an IPv4 address (addressType IPv4)",
    ),
    (
        "
        addressType: IPv6
        endpoints:
          - addresses: [\"fd00:10:244::5\"]
          - addresses: [\"fd00:10:244::6\", \"10.244.1.6\"]
        ",
        "endpoints[1].addresses[1]",
        "\"10.244.1.6\" is not an IPv6 address (addressType IPv6)",
    ),
    (
        "
        addressType: IPv4
        endpoints:
          - addresses: [\"web-0.shop\"]
        ",
        "endpoints[0].addresses[0]",
        "\"web-0.shop\" is not an IPv4 address (addressType IPv4)",
    ),
    (
        "
        addressType: IPv4
        endpoints:
          - addresses: []
        ",
        "endpoints[0].addresses",
        "at least one address is required",
    ),
    (
        "
        addressType: IPv4
        ports:
          - name: http
            port: 0
        endpoints: []
        ",
        "ports[0].port",
        "port 0 is out of range 1..=65535",
    ),
    (
        "
        addressType: IPv4
        ports:
          - name: http
            port: 70000
        endpoints: []
        ",
        "ports[0].port",
        "port 70000 is out of range 1..=65535",
    ),
    (
        "
        addressType: IPv4
        ports:
          - name: assoc
            port: 9000
            protocol: SCTP
        endpoints: []
        ",
        "ports[0].protocol",
        "protocol SCTP is not supported (gannet balances TCP and UDP)",
    ),
    (
        "
        addressType: IPv4
        ports:
          - name: http
            port: 8080
          - name: http
            port: 8081
        endpoints: []
        ",
        "ports[1].name",
        "duplicate port name \"http\" (also ports[0])",
    ),
];

#[test]
fn each_endpoint_slice_mistake_is_reported_at_its_field() {
    for (body, field, message) in SLICE_CASES {
        let text = slice_doc("web-abc", "web", body);
        assert_eq!(
            parse_one_err("slice.yaml", &text),
            error(
                "slice.yaml",
                1,
                Some("EndpointSlice shop/web-abc"),
                Some(field),
                message
            ),
            "for the document:\n{text}"
        );
    }
}

#[test]
fn endpoint_slice_without_service_name_label_is_an_error() {
    let text = yaml(
        "
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-abc
          labels:
            app: web
        addressType: IPv4
        endpoints:
          - addresses: [\"10.244.1.5\"]
        ",
    );
    assert_eq!(
        parse_one_err("slice.yaml", &text),
        error(
            "slice.yaml",
            1,
            Some("EndpointSlice default/web-abc"),
            Some("metadata.labels[\"kubernetes.io/service-name\"]"),
            "must be set to the name of the Service this slice belongs to"
        )
    );
}

#[test]
fn fqdn_slices_are_accepted_and_not_checked_further() {
    let body = "
        addressType: FQDN
        ports:
          - name: http
            port: 80
        endpoints:
          - addresses: [\"web.example.com\"]
        ";
    let objects = parse_ok("fqdn.yaml", &slice_doc("web-fqdn", "web", body));
    assert!(
        matches!(&objects[..], [Object::EndpointSlice(_)]),
        "got {objects:#?}"
    );
}
