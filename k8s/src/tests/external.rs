//! How services are reached from outside the cluster: node ports, external and load-balancer IPs,
//! traffic policy, health check port, source ranges, and Services that claim the same ones.

use std::path::Path;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};

use super::{
    error, frontend, in_file, ip, parse_ok, service, service_doc, service_of, simple_service,
    split, yaml,
};
use crate::{External, Protocol, WatchedService, desired_state};

fn net(text: &str) -> IpNet {
    text.parse()
        .unwrap_or_else(|error| panic!("test range {text:?}: {error}"))
}

fn ips(texts: &[&str]) -> Vec<std::net::IpAddr> {
    texts.iter().map(|text| ip(text)).collect()
}

/// Reached on node ports only.
fn node_port(port: u16) -> External {
    External {
        node_port: Some(port),
        external_ips: vec![],
        load_balancer_ips: vec![],
        local_only: false,
        health_check_node_port: None,
        source_ranges: vec![],
    }
}

/// A dual-stack `LoadBalancer` with every external field set, both families mixed in each list.
const DUAL_STACK_LB: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: lb
  namespace: shop
spec:
  type: LoadBalancer
  clusterIPs: [10.96.0.50, "fd00:10:96::50"]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  externalIPs: [192.0.2.10, "2001:db8::10", 192.0.2.10, 192.0.2.9]
  loadBalancerSourceRanges: [" 203.0.113.7/24 ", "2001:db8:1::/48", 198.51.100.0/24, 198.51.100.99/24]
  ports:
    - name: http
      port: 80
      nodePort: 30080
    - name: dns
      port: 53
      protocol: UDP
      nodePort: 30053
status:
  loadBalancer:
    ingress:
      - ip: 198.51.100.20
      - ip: "2001:db8::20"
        ipMode: VIP
      - hostname: lb.example.com
      - ip: 198.51.100.21
        ipMode: Proxy
"#;

#[test]
fn a_dual_stack_load_balancer_is_reached_per_family() {
    let (services, slices) = split("lb.yaml", parse_ok("lb.yaml", DUAL_STACK_LB));
    let (state, errors) = desired_state(&services, &slices);
    assert_eq!(errors, []);

    // Sorted and deduplicated; the hostname-only and Proxy-mode ingress entries are left out;
    // the source ranges are truncated (198.51.100.99/24 is then 198.51.100.0/24 again).
    let v4 = |node_port| External {
        node_port: Some(node_port),
        external_ips: ips(&["192.0.2.9", "192.0.2.10"]),
        load_balancer_ips: ips(&["198.51.100.20"]),
        local_only: true,
        health_check_node_port: Some(32100),
        source_ranges: vec![net("198.51.100.0/24"), net("203.0.113.0/24")],
    };
    let v6 = |node_port| External {
        node_port: Some(node_port),
        external_ips: ips(&["2001:db8::10"]),
        load_balancer_ips: ips(&["2001:db8::20"]),
        local_only: true,
        health_check_node_port: Some(32100),
        source_ranges: vec![net("2001:db8:1::/48")],
    };
    let cases = [
        (frontend("10.96.0.50", 80, Protocol::Tcp), v4(30080)),
        (frontend("10.96.0.50", 53, Protocol::Udp), v4(30053)),
        (frontend("fd00:10:96::50", 80, Protocol::Tcp), v6(30080)),
        (frontend("fd00:10:96::50", 53, Protocol::Udp), v6(30053)),
    ];
    assert_eq!(state.services.len(), cases.len(), "{:#?}", state.services);
    for (frontend, expected) in cases {
        assert_eq!(
            state.services[&frontend].external.as_ref(),
            Some(&expected),
            "for {frontend}"
        );
    }
}

#[test]
fn the_control_plane_path_joins_the_same() {
    let (services, _) = split("lb.yaml", parse_ok("lb.yaml", DUAL_STACK_LB));
    let (state, _) = desired_state(&services, &[]);
    let watched = WatchedService::check(Path::new("unix:/test.sock"), &services[0].1)
        .unwrap_or_else(|errors| panic!("the Service is valid: {errors:#?}"));
    assert_eq!(watched.frontends([]), state.services);
}

/// (spec of `shop/web`, what its frontend 10.96.0.20:80/TCP is reached by).
fn reach_cases() -> Vec<(&'static str, Option<External>)> {
    vec![
        ("clusterIP: 10.96.0.20\nports: [{port: 80}]\n", None),
        (
            "type: NodePort\nclusterIP: 10.96.0.20\nports: [{port: 80, nodePort: 30080}]\n",
            Some(node_port(30080)),
        ),
        (
            "type: NodePort\nexternalTrafficPolicy: Cluster\nclusterIP: 10.96.0.20\n\
             ports: [{port: 80, nodePort: 30080}]\n",
            Some(node_port(30080)),
        ),
        (
            "type: NodePort\nexternalTrafficPolicy: Local\nclusterIP: 10.96.0.20\n\
             ports: [{port: 80, nodePort: 30080}]\n",
            Some(External {
                local_only: true,
                ..node_port(30080)
            }),
        ),
        // The API server accepts a policy on a ClusterIP service with external IPs (it defaults it
        // to Cluster there) but does not honour Local for it, and neither does gannet.
        (
            "clusterIP: 10.96.0.20\nexternalIPs: [192.0.2.10]\nexternalTrafficPolicy: Local\n\
             ports: [{port: 80}]\n",
            Some(External {
                node_port: None,
                external_ips: ips(&["192.0.2.10"]),
                ..node_port(0)
            }),
        ),
        // External IPs of a family the service has no cluster IP of are not served.
        (
            "clusterIP: 10.96.0.20\nexternalIPs: [\"2001:db8::10\"]\nports: [{port: 80}]\n",
            None,
        ),
        // No node ports allocated: still a load balancer, waiting for its IPs.
        (
            "type: LoadBalancer\nallocateLoadBalancerNodePorts: false\nclusterIP: 10.96.0.20\n\
             ports: [{port: 80}]\n",
            Some(External {
                node_port: None,
                ..node_port(0)
            }),
        ),
        // A health check port, without source ranges: every client.
        (
            "type: LoadBalancer\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 32000\n\
             clusterIP: 10.96.0.20\nports: [{port: 80, nodePort: 30080}]\n",
            Some(External {
                local_only: true,
                health_check_node_port: Some(32000),
                ..node_port(30080)
            }),
        ),
    ]
}

#[test]
fn each_type_is_reached_its_way() {
    for (spec, expected) in reach_cases() {
        let (state, errors) = desired_state(&[in_file("web.yaml", service("web", spec))], &[]);
        assert_eq!(errors, [], "for spec:\n{spec}");
        assert_eq!(
            state.services[&frontend("10.96.0.20", 80, Protocol::Tcp)].external,
            expected,
            "for spec:\n{spec}"
        );
    }
}

/// `service` with `status.loadBalancer.ingress` of these IPs.
fn with_ingress(mut service: Service, addresses: &[&str]) -> Service {
    let ingress = addresses
        .iter()
        .map(|address| LoadBalancerIngress {
            ip: Some((*address).to_owned()),
            ..LoadBalancerIngress::default()
        })
        .collect();
    service.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(ingress),
        }),
        ..ServiceStatus::default()
    });
    service
}

#[test]
fn load_balancer_ips_are_served_for_type_load_balancer_only() {
    let stale = with_ingress(simple_service("web", "10.96.0.20", 80), &["198.51.100.20"]);
    let load_balancer = with_ingress(
        service(
            "lb",
            "type: LoadBalancer\nclusterIP: 10.96.0.21\nports: [{port: 80, nodePort: 30080}]\n",
        ),
        &["198.51.100.21"],
    );
    let (state, errors) = desired_state(
        &[in_file("a.yaml", stale), in_file("b.yaml", load_balancer)],
        &[],
    );
    assert_eq!(errors, []);
    // Left from an earlier type LoadBalancer, say: not this service's load balancer.
    assert_eq!(
        state.services[&frontend("10.96.0.20", 80, Protocol::Tcp)].external,
        None
    );
    assert_eq!(
        state.services[&frontend("10.96.0.21", 80, Protocol::Tcp)].external,
        Some(External {
            load_balancer_ips: ips(&["198.51.100.21"]),
            ..node_port(30080)
        })
    );
}

#[test]
fn source_ranges_come_from_the_annotation_when_the_field_is_empty() {
    let document = |extra_spec: &str| {
        yaml(&format!(
            r#"
            apiVersion: v1
            kind: Service
            metadata:
              name: lb
              namespace: shop
              annotations:
                service.beta.kubernetes.io/load-balancer-source-ranges: " 10.0.0.0/8, 192.168.1.1/16,fd00::/8"
            spec:
              type: LoadBalancer
              clusterIP: 10.96.0.20
              ports: [{{port: 80, nodePort: 30080}}]
              {extra_spec}
            "#
        ))
    };
    let cases = [
        ("", vec![net("10.0.0.0/8"), net("192.168.0.0/16")]),
        (
            "loadBalancerSourceRanges: [172.16.0.0/12]",
            vec![net("172.16.0.0/12")],
        ),
    ];
    for (extra_spec, expected) in cases {
        let text = document(extra_spec);
        let (state, errors) = desired_state(&[in_file("lb.yaml", service_of(&text))], &[]);
        assert_eq!(errors, [], "for the document:\n{text}");
        let external = state.services[&frontend("10.96.0.20", 80, Protocol::Tcp)]
            .external
            .clone();
        assert_eq!(
            external.map(|external| external.source_ranges),
            Some(expected),
            "for the document:\n{text}"
        );
    }
}

/// (spec of the first Service `shop/api` in a.yaml, of the second `shop/web` in b.yaml, the
/// field and the message of web's error). The first is served, the second not at all.
const CONFLICT_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "type: NodePort\nclusterIP: 10.96.0.20\nports: [{port: 80, nodePort: 30080}]\n",
        "type: NodePort\nclusterIP: 10.96.0.21\n\
         ports: [{name: a, port: 81, nodePort: 30081}, {name: b, port: 82, nodePort: 30080}]\n",
        "spec.ports[1].nodePort",
        "nodePort 30080/TCP is already used by Service shop/api (a.yaml); \
         the first definition wins",
    ),
    (
        "clusterIP: 10.96.0.20\nexternalIPs: [192.0.2.10]\nports: [{port: 80}]\n",
        "clusterIP: 10.96.0.21\nexternalIPs: [198.51.100.1, 192.0.2.10]\nports: [{port: 80}]\n",
        "spec.externalIPs[1]",
        "192.0.2.10:80/TCP (spec.ports[0]) is already served by Service shop/api (a.yaml); \
         the first definition wins",
    ),
    // An external IP that is another Service's cluster IP, at the same port.
    (
        "clusterIP: 10.96.0.20\nports: [{port: 80}]\n",
        "clusterIP: 10.96.0.21\nexternalIPs: [10.96.0.20]\nports: [{port: 80}]\n",
        "spec.externalIPs[0]",
        "10.96.0.20:80/TCP (spec.ports[0]) is already served by Service shop/api (a.yaml); \
         the first definition wins",
    ),
    // And the other way round.
    (
        "clusterIP: 10.96.0.21\nexternalIPs: [10.96.0.20]\nports: [{port: 80}]\n",
        "clusterIP: 10.96.0.20\nports: [{port: 80}]\n",
        "spec.ports[0]",
        "frontend 10.96.0.20:80/TCP is already served by Service shop/api (a.yaml); \
         the first definition wins",
    ),
    (
        "type: NodePort\nclusterIP: 10.96.0.20\nports: [{port: 80, nodePort: 32000}]\n",
        "type: LoadBalancer\nexternalTrafficPolicy: Local\nhealthCheckNodePort: 32000\n\
         clusterIP: 10.96.0.21\nports: [{port: 80, nodePort: 30080}]\n",
        "spec.healthCheckNodePort",
        "healthCheckNodePort 32000/TCP is already used by Service shop/api (a.yaml); \
         the first definition wins",
    ),
];

#[test]
fn a_node_port_or_external_address_claimed_twice_keeps_the_first_service_whole() {
    for (first, second, field, message) in CONFLICT_CASES {
        let (state, errors) = desired_state(
            // Given out of order: file names decide.
            &[
                in_file("b.yaml", service("web", second)),
                in_file("a.yaml", service("api", first)),
            ],
            &[],
        );
        let context = format!("for api:\n{first}and web:\n{second}");
        assert_eq!(
            errors,
            [error(
                "b.yaml",
                0,
                Some("Service shop/web"),
                Some(field),
                message
            )],
            "{context}"
        );
        assert!(
            state.services.values().all(|port| port.name == "api"),
            "web must not be served at all, {context}got {:#?}",
            state.services
        );
    }
}

#[test]
fn the_same_node_port_or_address_with_another_protocol_or_port_is_no_conflict() {
    let api = service(
        "api",
        "type: NodePort\nclusterIP: 10.96.0.20\nexternalIPs: [192.0.2.10]\n\
         ports: [{port: 53, nodePort: 30053}]\n",
    );
    let web = service(
        "web",
        "type: NodePort\nclusterIP: 10.96.0.21\nexternalIPs: [192.0.2.10]\n\
         ports: [{name: dns, port: 53, protocol: UDP, nodePort: 30053}, {name: http, port: 80, nodePort: 30080}]\n",
    );
    let (state, errors) = desired_state(&[in_file("a.yaml", api), in_file("b.yaml", web)], &[]);
    assert_eq!(errors, []);
    assert_eq!(state.services.len(), 3, "{:#?}", state.services);
}

#[test]
fn a_service_reaching_itself_twice_is_no_conflict() {
    // The same address as external IP and load-balancer IP (some setups do this), and as both
    // protocols of one nodePort.
    let text = service_doc(
        "dns",
        "
        type: LoadBalancer
        clusterIP: 10.96.0.10
        externalIPs: [198.51.100.53]
        ports:
          - {name: dns-udp, port: 53, protocol: UDP, nodePort: 30053}
          - {name: dns-tcp, port: 53, protocol: TCP, nodePort: 30053}
        ",
    );
    let dns = with_ingress(service_of(&text), &["198.51.100.53"]);
    let (state, errors) = desired_state(&[in_file("dns.yaml", dns)], &[]);
    assert_eq!(errors, []);
    assert_eq!(
        state.services[&frontend("10.96.0.10", 53, Protocol::Udp)].external,
        Some(External {
            external_ips: ips(&["198.51.100.53"]),
            load_balancer_ips: ips(&["198.51.100.53"]),
            ..node_port(30053)
        })
    );
}
