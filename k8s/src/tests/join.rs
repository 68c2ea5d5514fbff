//! Joining Services and `EndpointSlices` into frontends and backends.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    SHOP_YAML, backend, error, frontend, in_file, ip, parse_ok, service, simple_service, slice,
    split,
};
use crate::{Backend, DesiredState, Protocol, ServicePort, desired_state};

pub(super) fn service_port(
    service: &str,
    port_name: &str,
    affinity: Option<u32>,
    backends: Vec<Backend>,
) -> ServicePort {
    let (namespace, name) = service
        .split_once('/')
        .unwrap_or_else(|| panic!("test service {service:?} is not namespace/name"));
    ServicePort {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port_name: port_name.to_owned(),
        backends,
        terminating: vec![],
        backend_nodes: BTreeMap::new(),
        session_affinity_timeout: affinity,
        external: None,
    }
}

/// `backend_nodes` from (address, node) pairs.
fn nodes(pairs: &[(&str, &str)]) -> BTreeMap<IpAddr, String> {
    pairs
        .iter()
        .map(|(address, node)| (ip(address), (*node).to_owned()))
        .collect()
}

#[test]
fn shop_manifest_gives_dual_stack_frontends_with_ready_backends() {
    let (services, slices) = split("shop.yaml", parse_ok("shop.yaml", SHOP_YAML));
    let (state, errors) = desired_state(&services, &slices);
    assert_eq!(errors, []);

    let web = |port_name: &str, backends| service_port("shop/web", port_name, Some(600), backends);
    // The first IPv4 slice names the nodes; 10.244.3.9 is terminating (still serving) on node-3.
    let web_v4 = |port_name: &str, port: u16, backends| ServicePort {
        terminating: vec![backend("10.244.3.9", port)],
        backend_nodes: nodes(&[
            ("10.244.1.5", "node-1"),
            ("10.244.2.7", "node-2"),
            ("10.244.3.9", "node-3"),
        ]),
        ..web(port_name, backends)
    };
    let expected = BTreeMap::from([
        (
            frontend("10.96.100.10", 80, Protocol::Tcp),
            // 10.244.3.9 is not ready, 10.244.2.7 has no conditions (so ready), 10.244.1.5 is in
            // two slices and 10.244.4.2 comes from the second one.
            web_v4(
                "http",
                8080,
                vec![
                    backend("10.244.1.5", 8080),
                    backend("10.244.2.7", 8080),
                    backend("10.244.4.2", 8080),
                ],
            ),
        ),
        (
            frontend("10.96.100.10", 443, Protocol::Tcp),
            web_v4(
                "https",
                8443,
                vec![backend("10.244.1.5", 8443), backend("10.244.2.7", 8443)],
            ),
        ),
        (
            frontend("10.96.100.10", 514, Protocol::Udp),
            web_v4(
                "syslog",
                5514,
                vec![backend("10.244.1.5", 5514), backend("10.244.2.7", 5514)],
            ),
        ),
        (
            frontend("fd00:10:96::100a", 80, Protocol::Tcp),
            web(
                "http",
                vec![
                    backend("fd00:10:244:1::5", 8080),
                    backend("fd00:10:244:2::7", 8080),
                ],
            ),
        ),
        (
            frontend("fd00:10:96::100a", 443, Protocol::Tcp),
            web(
                "https",
                vec![
                    backend("fd00:10:244:1::5", 8443),
                    backend("fd00:10:244:2::7", 8443),
                ],
            ),
        ),
        // The IPv6 slice has no syslog port: the frontend exists and refuses connections.
        (
            frontend("fd00:10:96::100a", 514, Protocol::Udp),
            web("syslog", vec![]),
        ),
        (
            frontend("10.96.0.10", 53, Protocol::Udp),
            service_port(
                "kube-system/kube-dns",
                "",
                None,
                vec![backend("10.244.0.3", 53)],
            ),
        ),
    ]);
    assert_eq!(state.services, expected);

    let shown: Vec<String> = state.services.keys().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "10.96.0.10:53/UDP",
            "10.96.100.10:80/TCP",
            "10.96.100.10:443/TCP",
            "10.96.100.10:514/UDP",
            "[fd00:10:96::100a]:80/TCP",
            "[fd00:10:96::100a]:443/TCP",
            "[fd00:10:96::100a]:514/UDP",
        ]
    );
    assert_eq!(
        backend("fd00:10:244:1::5", 8080).to_string(),
        "[fd00:10:244:1::5]:8080"
    );
    assert_eq!(backend("10.244.1.5", 8080).to_string(), "10.244.1.5:8080");
}

#[test]
fn readiness_absent_means_ready_false_means_not() {
    let svc = simple_service("web", "10.96.0.20", 80);
    let endpoints = slice(
        "web-abc",
        "web",
        r#"
        addressType: IPv4
        ports:
          - port: 8080
        endpoints:
          - addresses: ["10.244.1.1"]
          - addresses: ["10.244.1.2"]
            conditions: {}
          - addresses: ["10.244.1.3"]
            conditions: {ready: false, serving: true}
          - addresses: ["10.244.1.4"]
            conditions: {ready: true}
          - addresses: ["10.244.1.5", "10.244.1.6"]
        "#,
    );
    let (state, errors) = desired_state(
        &[in_file("web.yaml", svc)],
        &[in_file("web.yaml", endpoints)],
    );
    assert_eq!(errors, []);
    let port = &state.services[&frontend("10.96.0.20", 80, Protocol::Tcp)];
    // 10.244.1.6 is a second address of the last endpoint: like kube-proxy, only the first is used.
    assert_eq!(
        port.backends,
        [
            backend("10.244.1.1", 8080),
            backend("10.244.1.2", 8080),
            backend("10.244.1.4", 8080),
            backend("10.244.1.5", 8080),
        ]
    );
    assert_eq!(port.session_affinity_timeout, None);
}

#[test]
fn slices_match_by_namespace_service_family_port_name_and_protocol() {
    let dns = service(
        "dns",
        "
        clusterIP: 10.96.0.10
        sessionAffinity: ClientIP
        ports:
          - port: 53
            protocol: UDP
        ",
    );
    // (slice, service label, address type, ports, endpoint address)
    let cases = [
        // Match: unnamed port (no name) and UDP.
        (
            "dns-1",
            "dns",
            "IPv4",
            "[{port: 5353, protocol: UDP}]",
            "10.244.0.1",
        ),
        // Match: `name: ""` is the same as no name.
        (
            "dns-2",
            "dns",
            "IPv4",
            "[{name: \"\", port: 53, protocol: UDP}]",
            "10.244.0.2",
        ),
        // Wrong protocol (TCP by default).
        ("dns-3", "dns", "IPv4", "[{port: 53}]", "10.244.0.3"),
        // Wrong port name.
        (
            "dns-4",
            "dns",
            "IPv4",
            "[{name: dns, port: 53, protocol: UDP}]",
            "10.244.0.4",
        ),
        // Another service.
        (
            "dns-5",
            "dns-internal",
            "IPv4",
            "[{port: 53, protocol: UDP}]",
            "10.244.0.5",
        ),
        // Another family.
        (
            "dns-6",
            "dns",
            "IPv6",
            "[{port: 53, protocol: UDP}]",
            "fd00::6",
        ),
        // A port without a number carries nothing.
        ("dns-7", "dns", "IPv4", "[{protocol: UDP}]", "10.244.0.7"),
        // No ports at all.
        ("dns-8", "dns", "IPv4", "[]", "10.244.0.8"),
    ];
    let mut slices: Vec<(PathBuf, EndpointSlice)> = cases
        .iter()
        .map(|(name, service, address_type, ports, address)| {
            let body = format!(
                "addressType: {address_type}\n\
                 ports: {ports}\n\
                 endpoints: [{{addresses: [\"{address}\"]}}]\n"
            );
            in_file("dns.yaml", slice(name, service, &body))
        })
        .collect();
    // Right service name and port, wrong namespace.
    let mut elsewhere = slice(
        "dns-9",
        "dns",
        "addressType: IPv4\n\
         ports: [{port: 53, protocol: UDP}]\n\
         endpoints: [{addresses: [10.244.0.9]}]\n",
    );
    elsewhere.metadata.namespace = Some("kube-system".to_owned());
    slices.push(in_file("dns.yaml", elsewhere));

    let (state, errors) = desired_state(&[in_file("dns.yaml", dns)], &slices);
    assert_eq!(errors, []);
    assert_eq!(
        state.services,
        BTreeMap::from([(
            frontend("10.96.0.10", 53, Protocol::Udp),
            service_port(
                "shop/dns",
                "",
                Some(10_800),
                vec![backend("10.244.0.1", 5353), backend("10.244.0.2", 53)]
            ),
        )])
    );
}

#[test]
fn service_without_slices_has_frontends_without_backends() {
    let svc = service(
        "web",
        "
        clusterIPs: [\"fd00:10:96::20\"]
        ports:
          - name: http
            port: 80
          - name: dns
            port: 53
            protocol: UDP
        ",
    );
    let (state, errors) = desired_state(&[in_file("web.yaml", svc)], &[]);
    assert_eq!(errors, []);
    assert_eq!(
        state.services,
        BTreeMap::from([
            (
                frontend("fd00:10:96::20", 53, Protocol::Udp),
                service_port("shop/web", "dns", None, vec![])
            ),
            (
                frontend("fd00:10:96::20", 80, Protocol::Tcp),
                service_port("shop/web", "http", None, vec![])
            ),
        ])
    );
    assert_eq!(
        frontend("fd00:10:96::20", 53, Protocol::Udp).to_string(),
        "[fd00:10:96::20]:53/UDP"
    );
}

#[test]
fn a_service_defined_twice_keeps_the_definition_of_the_first_file() {
    // Given out of order: file names decide.
    let (state, errors) = desired_state(
        &[
            in_file("b.yaml", simple_service("web", "10.96.0.21", 80)),
            in_file("a.yaml", simple_service("web", "10.96.0.20", 80)),
        ],
        &[],
    );
    assert_eq!(
        state.services.keys().copied().collect::<Vec<_>>(),
        [frontend("10.96.0.20", 80, Protocol::Tcp)]
    );
    assert_eq!(
        errors,
        [error(
            "b.yaml",
            0,
            Some("Service shop/web"),
            Some("metadata.name"),
            "Service shop/web is already defined in a.yaml; the first definition wins"
        )]
    );
}

#[test]
fn a_frontend_claimed_twice_keeps_the_first_service_whole() {
    let api = service(
        "api",
        "
        clusterIP: 10.96.0.20
        ports:
          - name: http
            port: 80
        ",
    );
    let web = service(
        "web",
        "
        clusterIP: 10.96.0.20
        ports:
          - name: https
            port: 443
          - name: http
            port: 80
        ",
    );
    let (state, errors) = desired_state(&[in_file("web.yaml", web), in_file("api.yaml", api)], &[]);
    // web's port 443 does not collide, but a service is taken whole or not at all.
    assert_eq!(
        state.services,
        BTreeMap::from([(
            frontend("10.96.0.20", 80, Protocol::Tcp),
            service_port("shop/api", "http", None, vec![])
        )])
    );
    assert_eq!(
        errors,
        [error(
            "web.yaml",
            0,
            Some("Service shop/web"),
            Some("spec.ports[1]"),
            "frontend 10.96.0.20:80/TCP is already served by Service shop/api (api.yaml); \
             the first definition wins"
        )]
    );
}

#[test]
fn an_endpoint_slice_defined_twice_keeps_the_first() {
    let body = |address: &str| {
        format!(
            "addressType: IPv4\n\
             ports: [{{port: 8080}}]\n\
             endpoints: [{{addresses: [{address}]}}]\n"
        )
    };
    let (state, errors) = desired_state(
        &[in_file("web.yaml", simple_service("web", "10.96.0.20", 80))],
        &[
            in_file("z.yaml", slice("web-abc", "web", &body("10.244.1.2"))),
            in_file("m.yaml", slice("web-abc", "web", &body("10.244.1.1"))),
        ],
    );
    assert_eq!(
        state.services[&frontend("10.96.0.20", 80, Protocol::Tcp)].backends,
        [backend("10.244.1.1", 8080)]
    );
    assert_eq!(
        errors,
        [error(
            "z.yaml",
            0,
            Some("EndpointSlice shop/web-abc"),
            Some("metadata.name"),
            "EndpointSlice shop/web-abc is already defined in m.yaml; the first definition wins"
        )]
    );
}

#[test]
fn invalid_objects_given_directly_are_reported_and_left_out() {
    let good = simple_service("web", "10.96.0.20", 80);
    let mut sctp = simple_service("sctp", "10.96.0.20", 81);
    let ports = sctp.spec.as_mut().and_then(|spec| spec.ports.as_mut());
    ports.expect("the Service has ports")[0].protocol = Some("SCTP".to_owned());

    let (state, errors) =
        desired_state(&[in_file("api.yaml", sctp), in_file("web.yaml", good)], &[]);
    assert_eq!(
        state.services.keys().copied().collect::<Vec<_>>(),
        [frontend("10.96.0.20", 80, Protocol::Tcp)]
    );
    assert_eq!(
        errors,
        [error(
            "api.yaml",
            0,
            Some("Service shop/sctp"),
            Some("spec.ports[0].protocol"),
            "protocol SCTP is not supported (gannet balances TCP and UDP)"
        )]
    );
    assert_eq!(
        errors[0].to_string(),
        "api.yaml: Service shop/sctp: spec.ports[0].protocol: \
         protocol SCTP is not supported (gannet balances TCP and UDP)"
    );
}

#[test]
fn headless_and_external_name_services_have_no_frontends() {
    let headless = service("pods", "clusterIP: None\nports:\n  - port: 80\n");
    let external = service("db", "type: ExternalName\nexternalName: db.example.com\n");
    let pods = slice(
        "pods-abc",
        "pods",
        "addressType: IPv4\nports: [{port: 80}]\nendpoints: [{addresses: [10.244.1.1]}]\n",
    );
    let (state, errors) = desired_state(
        &[in_file("pods.yaml", headless), in_file("db.yaml", external)],
        &[in_file("pods.yaml", pods)],
    );
    assert_eq!((state, errors), (DesiredState::default(), vec![]));
}

#[test]
fn serving_terminating_endpoints_are_the_fallback_when_none_is_ready() {
    let svc = simple_service("web", "10.96.0.20", 80);
    // A rolling update: every old pod terminating, the new ones not ready yet.
    let old = slice(
        "web-old",
        "web",
        r#"
        addressType: IPv4
        ports:
          - port: 8080
        endpoints:
          - addresses: ["10.244.1.1"]
            conditions: {ready: false, serving: true, terminating: true}
            nodeName: node-1
          - addresses: ["10.244.1.2"]
            conditions: {ready: false, serving: false, terminating: true}
            nodeName: node-2
          - addresses: ["10.244.1.3"]
            conditions: {ready: false, terminating: true}
            nodeName: node-3
          - addresses: ["10.244.1.4"]
            conditions: {ready: false, serving: true}
            nodeName: node-4
          - addresses: ["10.244.1.5"]
            conditions: {ready: false, serving: true, terminating: true}
        "#,
    );
    let web = frontend("10.96.0.20", 80, Protocol::Tcp);
    // 10.244.1.2 no longer serves; 10.244.1.3 does not say, so serves as it is ready (not);
    // 10.244.1.4 is not ready and not terminating: a pod that is starting or failing its probe.
    let fallback = vec![backend("10.244.1.1", 8080), backend("10.244.1.5", 8080)];
    let (state, errors) = desired_state(
        &[in_file("web.yaml", svc.clone())],
        &[in_file("web.yaml", old.clone())],
    );
    assert_eq!(errors, []);
    assert_eq!(
        state.services[&web],
        ServicePort {
            terminating: fallback.clone(),
            backend_nodes: nodes(&[("10.244.1.1", "node-1")]),
            ..service_port("shop/web", "", None, fallback.clone())
        }
    );

    // One new pod is ready: it alone takes new connections. 10.244.1.5 is ready in the new slice
    // and terminating in the old one (not rewritten yet): ready wins.
    let new = slice(
        "web-new",
        "web",
        r#"
        addressType: IPv4
        ports:
          - port: 8080
        endpoints:
          - addresses: ["10.244.2.1"]
            nodeName: node-5
          - addresses: ["10.244.1.5"]
            conditions: {ready: true}
            nodeName: node-1
        "#,
    );
    let (state, errors) = desired_state(
        &[in_file("web.yaml", svc)],
        &[in_file("web.yaml", old), in_file("web.yaml", new)],
    );
    assert_eq!(errors, []);
    assert_eq!(
        state.services[&web],
        ServicePort {
            terminating: vec![backend("10.244.1.1", 8080)],
            backend_nodes: nodes(&[
                ("10.244.1.1", "node-1"),
                ("10.244.1.5", "node-1"),
                ("10.244.2.1", "node-5"),
            ]),
            ..service_port(
                "shop/web",
                "",
                None,
                vec![backend("10.244.1.5", 8080), backend("10.244.2.1", 8080)]
            )
        }
    );
}
