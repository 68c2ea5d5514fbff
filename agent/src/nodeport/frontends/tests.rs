//! The expansion of cluster frontends into NodePort, external IP and LoadBalancer IP frontends,
//! for whole states and for changes.

use std::{collections::BTreeMap, net::IpAddr};

use gannet_k8s::{Backend, DesiredState, External, Frontend, Protocol, ServicePort};

use super::Expander;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn frontend(ip_text: &str, port: u16) -> Frontend {
    Frontend {
        ip: ip(ip_text),
        port,
        protocol: Protocol::Tcp,
    }
}

fn spec(name: &str, external: Option<External>) -> ServicePort {
    let backends = vec![
        Backend {
            ip: ip("10.244.0.5"),
            port: 8080,
        },
        Backend {
            ip: ip("10.244.1.5"),
            port: 8080,
        },
    ];
    ServicePort {
        namespace: "default".into(),
        name: name.into(),
        port_name: String::new(),
        backend_nodes: BTreeMap::from([
            (ip("10.244.0.5"), "node-0".to_owned()),
            (ip("10.244.1.5"), "node-1".to_owned()),
        ]),
        backends,
        terminating: Vec::new(),
        session_affinity_timeout: None,
        external,
    }
}

fn node_port(port: u16) -> External {
    External {
        node_port: Some(port),
        external_ips: vec![ip("192.0.2.7")],
        load_balancer_ips: vec![ip("198.51.100.9")],
        local_only: false,
        health_check_node_port: None,
        source_ranges: Vec::new(),
    }
}

fn expander() -> Expander {
    Expander::new(vec![ip("10.99.0.11"), ip("fd00:99::11")], "node-0")
}

#[test]
fn a_node_port_service_gets_one_frontend_per_node_address_and_external_address() {
    let mut state = DesiredState::default();
    state.services.insert(
        frontend("10.96.0.10", 80),
        spec("web", Some(node_port(30080))),
    );
    state
        .services
        .insert(frontend("10.96.0.11", 80), spec("plain", None));
    let out = expander().full(&state);
    let keys: Vec<Frontend> = out.services.keys().copied().collect();
    assert_eq!(
        keys,
        vec![
            frontend("10.96.0.10", 80),
            frontend("10.96.0.11", 80),
            frontend("10.99.0.11", 30080),
            frontend("192.0.2.7", 80),
            frontend("198.51.100.9", 80),
        ],
        "the IPv6 node address is not used for an IPv4 frontend"
    );
    assert!(
        out.services[&frontend("10.96.0.10", 80)].external.is_none(),
        "the cluster IP is not reachable from outside"
    );
    for f in &keys[2..] {
        assert!(out.services[f].external.is_some(), "{f} is external");
    }
}

#[test]
fn changes_update_and_remove_what_a_frontend_expanded_to() {
    let mut e = expander();
    let cluster = frontend("10.96.0.10", 80);
    let mut state = DesiredState::default();
    state
        .services
        .insert(cluster, spec("web", Some(node_port(30080))));
    e.full(&state);

    // The node port moves: the old NodeIP frontend goes, the new one comes.
    let changes = BTreeMap::from([(cluster, Some(spec("web", Some(node_port(30081)))))]);
    let out = e.changes(&changes);
    assert_eq!(out.get(&frontend("10.99.0.11", 30080)), Some(&None));
    assert!(matches!(
        out.get(&frontend("10.99.0.11", 30081)),
        Some(Some(_))
    ));
    assert!(matches!(out.get(&frontend("192.0.2.7", 80)), Some(Some(_))));

    // The service goes: everything it expanded to goes with it.
    let out = e.changes(&BTreeMap::from([(cluster, None)]));
    let removed: Vec<Frontend> = out
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(
        removed,
        vec![
            cluster,
            frontend("10.99.0.11", 30081),
            frontend("192.0.2.7", 80),
            frontend("198.51.100.9", 80),
        ]
    );
}

#[test]
fn an_external_address_claimed_twice_goes_to_the_first_service() {
    let mut state = DesiredState::default();
    state.services.insert(
        frontend("10.96.0.10", 80),
        spec("first", Some(node_port(30080))),
    );
    state.services.insert(
        frontend("10.96.0.11", 80),
        spec("second", Some(node_port(30090))),
    );
    let out = expander().full(&state);
    assert_eq!(out.services[&frontend("192.0.2.7", 80)].name, "first");
    assert_eq!(out.services[&frontend("10.99.0.11", 30090)].name, "second");
}

#[test]
fn health_checks_count_this_nodes_endpoints() {
    let mut e = expander();
    let mut external = node_port(30080);
    external.local_only = true;
    external.health_check_node_port = Some(32000);
    let mut state = DesiredState::default();
    state.services.insert(
        frontend("10.96.0.10", 80),
        spec("local", Some(external.clone())),
    );
    e.full(&state);
    let health = e.health();
    assert_eq!(
        health[&32000].local_endpoints, 1,
        "one endpoint is on node-0"
    );
    assert_eq!(health[&32000].name, "local");

    let mut on_other_node = spec("local", Some(external));
    on_other_node.backend_nodes.clear();
    e.changes(&BTreeMap::from([(
        frontend("10.96.0.10", 80),
        Some(on_other_node),
    )]));
    assert_eq!(e.health()[&32000].local_endpoints, 0);
    e.changes(&BTreeMap::from([(frontend("10.96.0.10", 80), None)]));
    assert!(
        e.health().is_empty(),
        "the service's health check goes with it"
    );
}
