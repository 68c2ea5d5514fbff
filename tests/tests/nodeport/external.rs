//! Traffic from the external client: node ports on every node (TCP, UDP, IPv6),
//! `externalTrafficPolicy: Local` and its health check port, external IPs, source ranges and
//! refusals, ICMP errors.

use std::time::Duration;

use gannet_testkit::{cluster::EXTERNAL_V4, eventually, eventually_ok};
use serde_json::Value;

use crate::fixture::{
    CLOSED_NODE_PORT, Cluster, EMPTY_IP, EMPTY_NODE_PORT, EXTERNAL_IP, HEALTH_PORT, LB_CLOSED,
    LB_OPEN, LOCAL_NODE_PORT, NODE_PORT, NODE_PORT_UDP, NODES, http_get, serve, sock, stop_server,
};

pub(crate) fn nodeport_every_node(c: &Cluster) {
    for n in 0..NODES {
        let to = sock(&c.nodes[n].ipv4, NODE_PORT);
        let report = eventually_ok("NodePort answers", Duration::from_secs(15), || {
            let r = c.tcp(&to, 60);
            if r.ok == 60 { Ok(r) } else { Err(Box::new(r)) }
        });
        for pod in 0..NODES {
            let name = &c.nodes[pod].pods[0].name;
            assert!(
                report.backend_count(name) > 0,
                "through {to}, every backend (same node and others) gets connections; {name} got none: {report:?}"
            );
        }
        let udp = c.udp(
            &sock(&c.nodes[n].ipv4, NODE_PORT_UDP),
            20,
            &["--per-request-socket"],
        );
        assert_eq!(
            udp.ok, 20,
            "UDP NodePort through {}: {udp:?}",
            c.nodes[n].name
        );
        let v6 = sock(&c.nodes[n].ipv6, NODE_PORT);
        // The IPv6 slice may be programmed a moment after the IPv4 one.
        let tcp6 = eventually_ok("IPv6 NodePort answers", Duration::from_secs(15), || {
            let r = c.tcp(&v6, 20);
            if r.ok == 20 { Ok(r) } else { Err(Box::new(r)) }
        });
        assert!(
            tcp6.backends.len() > 1,
            "IPv6 NodePort through {v6}: {tcp6:?}"
        );
    }
}

pub(crate) fn local_policy(c: &mut Cluster) {
    // Node 1 has the endpoint: the connection reaches it, with the client's own address.
    let to = sock(&c.nodes[1].ipv4, LOCAL_NODE_PORT);
    let report = eventually(
        "the local NodePort answers",
        Duration::from_secs(15),
        || Some(c.tcp(&to, 10)).filter(|r| r.ok == 10),
    );
    assert_eq!(
        report.backend_count(&c.nodes[1].pods[0].name),
        10,
        "only the local endpoint: {report:?}"
    );
    // Node 0 has none: dropped, not sent to node 1.
    let none = c.tcp(&sock(&c.nodes[0].ipv4, LOCAL_NODE_PORT), 2);
    assert_eq!(
        none.ok, 0,
        "a node without a local endpoint drops: {none:?}"
    );

    let server = c.nodes[1].pods[0].server.take().expect("the server");
    let seen = stop_server(server);
    c.nodes[1].pods[0].server = Some(serve(
        &c.nodes[1].pods[0].netns,
        &c.nodes[1].pods[0].name,
        8080,
    ));
    assert!(
        seen.tcp_clients.contains_key(&EXTERNAL_V4.to_string()),
        "externalTrafficPolicy: Local keeps the client's address: {seen:?}"
    );

    let ok = http_get(c.external(), &sock(&c.nodes[1].ipv4, HEALTH_PORT))
        .expect("health check on node 1");
    assert_eq!(ok.0, 200, "node 1 has a local endpoint: {ok:?}");
    let body: Value = serde_json::from_str(&ok.1).expect("JSON body");
    assert_eq!(body["localEndpoints"], 1, "{body}");
    assert_eq!(body["service"]["name"], "local", "{body}");
    let none = http_get(c.external(), &sock(&c.nodes[0].ipv4, HEALTH_PORT))
        .expect("health check on node 0");
    assert_eq!(none.0, 503, "node 0 has none: {none:?}");
}

pub(crate) fn external_ip_and_consistent_hashing(c: &Cluster) {
    let external = c.external();
    let route_via = |node: usize| {
        external
            .ip(&[
                "route",
                "replace",
                &format!("{EXTERNAL_IP}/32"),
                "via",
                &c.nodes[node].ipv4,
            ])
            .expect("routing the external IP");
    };
    route_via(0);
    let to = sock(EXTERNAL_IP, 80);
    let report = eventually("the external IP answers", Duration::from_secs(15), || {
        Some(c.tcp(&to, 20)).filter(|r| r.ok == 20)
    });
    assert!(
        report.backends.len() > 1,
        "balanced over the backends: {report:?}"
    );
    if c.nft {
        // nftables picks a backend at random per connection, on each node for itself.
        return;
    }

    // One UDP flow (fixed source port) through node 0, then through node 2: the same backend,
    // whichever node the network hands it to.
    let udp_to = sock(EXTERNAL_IP, 53);
    for port in [45001, 45002, 45003] {
        let bind = format!("{EXTERNAL_V4}:{port}");
        let mut picked = Vec::new();
        for node in [0, 2] {
            route_via(node);
            let r = c.udp(&udp_to, 1, &["--bind", &bind]);
            assert_eq!(r.ok, 1, "UDP to the external IP via node {node}: {r:?}");
            picked.push(r.backends.keys().next().cloned().unwrap_or_default());
        }
        assert_eq!(
            picked[0], picked[1],
            "the same flow gets the same backend on every node"
        );
    }
}

pub(crate) fn source_ranges_and_rejects(c: &Cluster) {
    let external = c.external();
    for ip in [LB_OPEN, LB_CLOSED] {
        external
            .ip(&[
                "route",
                "replace",
                &format!("{ip}/32"),
                "via",
                &c.nodes[0].ipv4,
            ])
            .expect("routing the LoadBalancer IP");
    }
    let open = sock(LB_OPEN, 80);
    let report = eventually(
        "the LoadBalancer IP answers",
        Duration::from_secs(15),
        || Some(c.tcp(&open, 10)).filter(|r| r.ok == 10),
    );
    assert!(!report.backends.is_empty(), "{report:?}");
    let closed = c.tcp(&sock(LB_CLOSED, 80), 2);
    assert_eq!(
        closed.ok, 0,
        "a client outside loadBalancerSourceRanges gets nothing: {closed:?}"
    );
    let status = c.nodes[0].agent.status().unwrap();
    assert!(
        c.nft
            || status["nodeport"]["counters"]["denied"]
                .as_u64()
                .unwrap_or(0)
                >= 2,
        "{:#}",
        status["nodeport"]
    );

    // A NodePort without endpoints is refused at once, not left to time out; so is its
    // external IP, which is no node's address (the program answers with a RST).
    external
        .ip(&[
            "route",
            "replace",
            &format!("{EMPTY_IP}/32"),
            "via",
            &c.nodes[0].ipv4,
        ])
        .expect("routing the external IP");
    for to in [sock(&c.nodes[0].ipv4, EMPTY_NODE_PORT), sock(EMPTY_IP, 80)] {
        let refused = c.tcp(&to, 3);
        assert_eq!(
            (refused.ok, refused.errors.get("ECONNREFUSED").copied()),
            (0, Some(3)),
            "{to}: {refused:?}"
        );
        assert!(
            refused.first_error_after_us.is_some_and(|us| us < 500_000),
            "{to} refused within half a second: {refused:?}"
        );
    }
}

pub(crate) fn icmp_errors_come_back(c: &Cluster) {
    // Every backend (local, or on another node behind SNAT) refuses with ICMP port unreachable;
    // the client's connected UDP socket sees ECONNREFUSED only if the error was translated back.
    // (The pods do not rate-limit these errors: see `add_pod`.)
    let to = sock(&c.nodes[0].ipv4, CLOSED_NODE_PORT);
    let frontend = format!("{to}/UDP");
    eventually("closed is programmed", Duration::from_secs(15), || {
        let status = c.nodes[0].agent.status().ok()?;
        status["services"]
            .as_array()?
            .iter()
            .any(|s| {
                s["frontend"] == frontend.as_str()
                    && s["packet_backends"].as_array().map(Vec::len) == Some(NODES)
            })
            .then_some(())
    });
    let report = c.udp(&to, 9, &["--per-request-socket", "--connected"]);
    assert_eq!(
        (report.ok, report.errors.get("ECONNREFUSED").copied()),
        (0, Some(9)),
        "{report:?}"
    );
    let status = c.nodes[0].agent.status().unwrap();
    assert!(
        c.nft
            || status["nodeport"]["counters"]["icmp_errors"]
                .as_u64()
                .unwrap_or(0)
                >= 9,
        "{:#}",
        status["nodeport"]
    );
}
