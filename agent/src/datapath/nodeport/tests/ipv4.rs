//! IPv4 NodePort fixtures: local and remote backends, replies, misses, refusals, ICMP errors.

use super::*;

/// NodePort to a pod of this node (client address kept), its reply back through the pod's veth,
/// NodePort to a pod of another node (SNAT to the overlay address), misses and a frontend without
/// backends.
#[test]
fn nodeport_fixtures() {
    let node = FixtureNode::new();

    let failures = node.with_programs(
        |Loaded {
             mut fp,
             mut maglev,
             size,
             mut services,
             mut backends,
         }| {
            // Service 1: NodePort to the local pod; 2: to a pod of another node; 3: external
            // but without a table (no backend); 4: a ClusterIP, not reachable from outside.
            services
                .insert(frontend(NODE, NODE_PORT), service(1, SVC_F_EXTERNAL), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 1), service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 2), service(3, SVC_F_EXTERNAL), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 3), service(4, 0), 0)
                .unwrap();
            backends.insert(11, backend(POD, BACKEND_PORT), 0).unwrap();
            backends
                .insert(12, backend(REMOTE_POD, BACKEND_PORT), 0)
                .unwrap();
            maglev.put(1, &vec![11; size]).unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            maglev.put(4, &vec![11; size]).unwrap();
            assert_eq!(
                maglev.get(2),
                Some(vec![12; size]),
                "the table read back is not the one written"
            );
            enable_v4(&mut fp, maglev.size(), 0);

            let from_client = |dport| {
                tcp_v4(
                    EXT_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    CLIENT_PORT,
                    NODE,
                    dport,
                    64,
                    SYN,
                )
            };
            let cases: Vec<Case> = vec![
                (
                    "NodePort, backend on this node: DNAT only (client kept), into the pod",
                    from_client(NODE_PORT),
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        node.host_mac,
                        CLIENT,
                        CLIENT_PORT,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
                (
                    "NodePort, tracked flow: the same translation again",
                    from_client(NODE_PORT),
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        node.host_mac,
                        CLIENT,
                        CLIENT_PORT,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
                (
                    "external frontend without a backend: to the host stack, which refuses it",
                    from_client(NODE_PORT + 2),
                    TC_ACT_OK,
                    from_client(NODE_PORT + 2),
                ),
                (
                    "a ClusterIP frontend: not for this program",
                    from_client(NODE_PORT + 3),
                    TC_ACT_UNSPEC,
                    from_client(NODE_PORT + 3),
                ),
                (
                    "no frontend: not for this program",
                    from_client(NODE_PORT + 9),
                    TC_ACT_UNSPEC,
                    from_client(NODE_PORT + 9),
                ),
            ];
            let mut failures = run_cases(fp.nodeport_program().unwrap(), cases);

            // externalTrafficPolicy: Local: a table of this node's endpoints means DNAT only; no
            // table (no local endpoint) means drop, not a refusal and not another node.
            let local_only = SVC_F_EXTERNAL | gannet_common::SVC_F_LOCAL;
            services
                .insert(frontend(NODE, NODE_PORT + 5), service(9, local_only), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 6), service(10, local_only), 0)
                .unwrap();
            maglev.put(9, &vec![11; size]).unwrap();
            let cases: Vec<Case> = vec![
                (
                    "externalTrafficPolicy: Local with a local endpoint: DNAT only, into the pod",
                    tcp_v4(
                        EXT_MAC,
                        CLIENT_MAC,
                        CLIENT,
                        CLIENT_PORT + 20,
                        NODE,
                        NODE_PORT + 5,
                        64,
                        SYN,
                    ),
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        node.host_mac,
                        CLIENT,
                        CLIENT_PORT + 20,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
                (
                    "externalTrafficPolicy: Local without a local endpoint: dropped",
                    tcp_v4(
                        EXT_MAC,
                        CLIENT_MAC,
                        CLIENT,
                        CLIENT_PORT + 20,
                        NODE,
                        NODE_PORT + 6,
                        64,
                        SYN,
                    ),
                    TC_ACT_SHOT,
                    tcp_v4(
                        EXT_MAC,
                        CLIENT_MAC,
                        CLIENT,
                        CLIENT_PORT + 20,
                        NODE,
                        NODE_PORT + 6,
                        64,
                        SYN,
                    ),
                ),
            ];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));

            // A LoadBalancer IP without backends is not the node's: refused with a RST here.
            let lb = Ipv4Addr::new(10, 99, 0, 201);
            services
                .insert(frontend(lb, 80), service(8, SVC_F_EXTERNAL), 0)
                .unwrap();
            let cases: Vec<Case> = vec![(
                "a LoadBalancer IP without a backend: a RST back to the client",
                tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, lb, 80, 64, SYN),
                TC_ACT_REDIRECT,
                rst_v4((CLIENT_MAC, EXT_MAC), (lb, 80), (CLIENT, CLIENT_PORT)),
            )];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
            let key = ServiceKey {
                proto: PROTO_UDP,
                ..frontend(lb, 53)
            };
            services
                .insert(key, service(20, SVC_F_EXTERNAL), 0)
                .unwrap();
            let datagram = udp(
                (EXT_MAC, CLIENT_MAC),
                (IpAddr::V4(CLIENT), CLIENT_PORT),
                (IpAddr::V4(lb), 53),
            );
            let cases: Vec<Case> = vec![(
                "UDP to a LoadBalancer IP without a backend: ICMP port unreachable back",
                datagram.clone(),
                TC_ACT_REDIRECT,
                port_unreachable(&datagram, IpAddr::V4(lb)),
            )];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));

            let cases: Vec<Case> = vec![(
                "the local backend's reply: source back to NodeIP:NodePort, out to the client",
                tcp_v4(
                    node.host_mac,
                    POD_MAC,
                    POD,
                    BACKEND_PORT,
                    CLIENT,
                    CLIENT_PORT,
                    64,
                    SYN_ACK,
                ),
                TC_ACT_REDIRECT,
                tcp_v4(
                    CLIENT_MAC,
                    EXT_MAC,
                    NODE,
                    NODE_PORT,
                    CLIENT,
                    CLIENT_PORT,
                    63,
                    SYN_ACK,
                ),
            )];
            failures.extend(run_cases_from(
                fp.from_pod_program().unwrap(),
                "hveth",
                cases,
            ));

            let cases: Vec<Case> = vec![(
                "an ICMP error the backend sends about the client's packet: from the frontend, \
                 quoting client → frontend, out to the client",
                icmp_v4(
                    (node.host_mac, POD_MAC),
                    POD,
                    CLIENT,
                    64,
                    (3, 3),
                    &quote(CLIENT, CLIENT_PORT, POD, BACKEND_PORT),
                ),
                TC_ACT_REDIRECT,
                icmp_v4(
                    (CLIENT_MAC, EXT_MAC),
                    NODE,
                    CLIENT,
                    63,
                    (3, 3),
                    &quote(CLIENT, CLIENT_PORT, NODE, NODE_PORT),
                ),
            )];
            failures.extend(run_cases_from(
                fp.from_pod_program().unwrap(),
                "hveth",
                cases,
            ));

            // Fragmentation needed, from a router on the client's side, about a reply: to the
            // backend, quoting backend → client.
            let router = Ipv4Addr::new(10, 99, 0, 1);
            let cases: Vec<Case> = vec![(
                "an ICMP error about a reply, from the client's side: to the backend",
                icmp_v4(
                    (EXT_MAC, CLIENT_MAC),
                    router,
                    NODE,
                    64,
                    (3, 4),
                    &quote(NODE, NODE_PORT, CLIENT, CLIENT_PORT),
                ),
                TC_ACT_REDIRECT,
                icmp_v4(
                    (POD_MAC, node.host_mac),
                    router,
                    POD,
                    63,
                    (3, 4),
                    &quote(POD, BACKEND_PORT, CLIENT, CLIENT_PORT),
                ),
            )];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));

            // A backend on another node: SNAT to this node's overlay address and a port of the
            // SNAT range, which only the program knows: read it from the conntrack map.
            let input = from_client(NODE_PORT + 1);
            let cases: Vec<Case> = vec![("probe", input.clone(), TC_ACT_REDIRECT, Vec::new())];
            let _ = run_cases(fp.nodeport_program().unwrap(), cases);
            let entries = fp.nodeport.conntrack_entries();
            let snat_reply = entries.iter().find(|(k, e)| {
                e.flags == CT_F_REPLY | CT_F_SNAT && k.saddr == v4_mapped(REMOTE_POD.octets())
            });
            match snat_reply {
                None => failures.push(format!("no SNAT reply entry in {entries:?}")),
                Some((key, _)) => {
                    let port = u16::from_be(key.dport);
                    if !(SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port) {
                        failures.push(format!("SNAT port {port} outside the range"));
                    }
                    if key.daddr != v4_mapped(SNAT.octets()) {
                        failures.push(format!("SNAT reply key to {:?}", key.daddr));
                    }
                    let cases: Vec<Case> = vec![
                        (
                            "NodePort, backend on another node: SNAT + DNAT, to the next hop",
                            from_client(NODE_PORT + 1),
                            TC_ACT_REDIRECT,
                            tcp_v4(
                                OTHER_NODE_MAC,
                                EXT_MAC,
                                SNAT,
                                port,
                                REMOTE_POD,
                                BACKEND_PORT,
                                63,
                                SYN,
                            ),
                        ),
                        (
                            "its reply (host-gw: on the external interface): back to the client",
                            tcp_v4(
                                EXT_MAC,
                                OTHER_NODE_MAC,
                                REMOTE_POD,
                                BACKEND_PORT,
                                SNAT,
                                port,
                                64,
                                SYN_ACK,
                            ),
                            TC_ACT_REDIRECT,
                            tcp_v4(
                                CLIENT_MAC,
                                EXT_MAC,
                                NODE,
                                NODE_PORT + 1,
                                CLIENT,
                                CLIENT_PORT,
                                63,
                                SYN_ACK,
                            ),
                        ),
                    ];
                    failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
                }
            }
            let stats = fp.nodeport.stats().expect("counters");
            if stats.new_flows != 3
                || stats.no_backend != 4
                || stats.replies != 2
                || stats.icmp_errors != 2
            {
                failures.push(format!("counters: {stats:?}"));
            }

            // loadBalancerSourceRanges: a LoadBalancer IP whose ranges leave the client out
            // drops it; one whose ranges hold it lets it in.
            let lb = Ipv4Addr::new(10, 99, 0, 200);
            let ranged = SVC_F_EXTERNAL | SVC_F_SOURCE_RANGES;
            services
                .insert(frontend(lb, 80), service(5, ranged), 0)
                .unwrap();
            services
                .insert(frontend(lb, 81), service(6, ranged), 0)
                .unwrap();
            maglev.put(5, &vec![11; size]).unwrap();
            maglev.put(6, &vec![11; size]).unwrap();
            maglev
                .put_ranges(5, &["10.99.0.0/28".parse().unwrap()])
                .unwrap();
            maglev
                .put_ranges(
                    6,
                    &[
                        "10.99.0.0/28".parse().unwrap(),
                        "10.99.0.248/29".parse().unwrap(),
                    ],
                )
                .unwrap();
            let to_lb = |dport| {
                tcp_v4(
                    EXT_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    CLIENT_PORT + 1,
                    lb,
                    dport,
                    64,
                    SYN,
                )
            };
            let cases: Vec<Case> = vec![
                (
                    "LoadBalancer IP, client outside its source ranges: dropped",
                    to_lb(80),
                    TC_ACT_SHOT,
                    to_lb(80),
                ),
                (
                    "LoadBalancer IP, client inside one of its source ranges: balanced",
                    to_lb(81),
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        node.host_mac,
                        CLIENT,
                        CLIENT_PORT + 1,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
            ];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
            if fp.nodeport.stats().expect("counters").denied != 1 {
                failures.push("the dropped client is counted as denied".to_owned());
            }

            // sessionAffinity: ClientIP: every new flow of one client gets the backend its first
            // flow got, whatever its ports hash to.
            backends
                .insert(13, backend(Ipv4Addr::new(10, 244, 2, 8), BACKEND_PORT), 0)
                .unwrap();
            let sticky = ServiceValue {
                affinity_timeout: 60,
                ..service(7, SVC_F_EXTERNAL | gannet_common::SVC_F_AFFINITY)
            };
            services
                .insert(frontend(NODE, NODE_PORT + 4), sticky, 0)
                .unwrap();
            let alternating: Vec<u32> = (0..size)
                .map(|i| if i % 2 == 0 { 12 } else { 13 })
                .collect();
            maglev.put(7, &alternating).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for port in 41000..41016u16 {
                let frame = tcp_v4(
                    EXT_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    port,
                    NODE,
                    NODE_PORT + 4,
                    64,
                    SYN,
                );
                let _ = run_cases(
                    fp.nodeport_program().unwrap(),
                    vec![("affinity", frame, TC_ACT_REDIRECT, Vec::new())],
                );
            }
            for (key, entry) in fp.nodeport.conntrack_entries() {
                if entry.flags & CT_F_REPLY == 0 && entry.service_id == 7 {
                    seen.insert(entry.backend_id);
                    let _ = key;
                }
            }
            if seen.len() != 1 {
                failures.push(format!(
                    "ClientIP affinity: 16 flows of one client went to backends {seen:?}"
                ));
            }
            failures
        },
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
