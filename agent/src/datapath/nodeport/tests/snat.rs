//! SNAT ports: every port to a backend held, then taken over once their flows are over.

use super::*;

/// A flow of another client holding SNAT port `port` to the remote backend of service 2: its
/// client entry (client port `10000 + i`) and its reply entry, both with TCP flags `client_tcp`
/// and `backend_tcp` seen, last seen now.
fn held_port(port: u16, client_tcp: u8, backend_tcp: u8) -> [(CtKey, CtEntry); 2] {
    let client = Ipv4Addr::new(10, 99, 0, 251);
    let client_port = 10_000 + (port - SNAT_PORT_MIN);
    let now = monotonic_ns();
    let key = CtKey {
        saddr: v4_mapped(client.octets()),
        daddr: v4_mapped(NODE.octets()),
        sport: client_port.to_be(),
        dport: (NODE_PORT + 1).to_be(),
        proto: PROTO_TCP,
        pad: [0; 3],
    };
    let entry = CtEntry {
        saddr: v4_mapped(SNAT.octets()),
        daddr: v4_mapped(REMOTE_POD.octets()),
        sport: port.to_be(),
        dport: BACKEND_PORT.to_be(),
        flags: CT_F_SNAT,
        tcp: client_tcp,
        pad: 0,
        service_id: 2,
        backend_id: 12,
        last_seen_ns: now,
    };
    let reply_key = CtKey {
        saddr: v4_mapped(REMOTE_POD.octets()),
        daddr: v4_mapped(SNAT.octets()),
        sport: BACKEND_PORT.to_be(),
        dport: port.to_be(),
        proto: PROTO_TCP,
        pad: [0; 3],
    };
    let reply = CtEntry {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        flags: CT_F_REPLY | CT_F_SNAT,
        tcp: backend_tcp,
        ..entry
    };
    [(key, entry), (reply_key, reply)]
}

/// Every SNAT port to one backend is held: while their flows are open, a new flow is dropped
/// and counted; once they are over (FINs both ways), the new flow takes one over, and the old
/// flow's client entry goes with it.
#[test]
fn snat_ports_of_finished_flows_are_taken_over() {
    let node = FixtureNode::new();
    let capacity = PodCapacity {
        conntrack: 65_536,
        ..small_capacity()
    };
    let failures = node.with_capacity(
        &capacity,
        |Loaded {
             mut fp,
             mut maglev,
             size,
             mut services,
             mut backends,
         }| {
            services
                .insert(frontend(NODE, NODE_PORT + 1), service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            backends
                .insert(12, backend(REMOTE_POD, BACKEND_PORT), 0)
                .unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            enable_v4(&mut fp, maglev.size(), 0);
            let data =
                MapData::from_pin(node.bpf_root.path().join("maps").join(map_names::CONNTRACK))
                    .expect("the pinned conntrack map");
            let mut conntrack: HashMap<MapData, CtKey, CtEntry> =
                HashMap::try_from(Map::LruHashMap(data)).expect("an LRU hash map");
            let hold = |conntrack: &mut HashMap<MapData, CtKey, CtEntry>, client_tcp| {
                for port in SNAT_PORT_MIN..=SNAT_PORT_MAX {
                    // The backend has closed its side; the client has not (or has).
                    for (k, v) in held_port(port, client_tcp, CT_TCP_ESTABLISHED | CT_TCP_FIN) {
                        conntrack.insert(k, v, 0).expect("holding a port");
                    }
                }
            };
            hold(&mut conntrack, CT_TCP_ESTABLISHED);
            let ports = usize::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
            let mut failures = Vec::new();
            let held = fp.nodeport.conntrack_entries().len();
            if held != 2 * ports {
                failures.push(format!("{held} entries held, not {}", 2 * ports));
            }
            let syn = |client_port| {
                tcp_v4(
                    EXT_MAC,
                    CLIENT_MAC,
                    CLIENT,
                    client_port,
                    NODE,
                    NODE_PORT + 1,
                    64,
                    SYN,
                )
            };
            failures.extend(run_cases(
                fp.nodeport_program().unwrap(),
                vec![(
                    "every SNAT port held by an open flow: dropped",
                    syn(CLIENT_PORT),
                    TC_ACT_SHOT,
                    syn(CLIENT_PORT),
                )],
            ));
            if fp.nodeport.stats().expect("counters").conntrack_failed != 1 {
                failures.push("the dropped flow is not counted as conntrack_failed".to_owned());
            }

            hold(&mut conntrack, CT_TCP_ESTABLISHED | CT_TCP_FIN);
            let _ = run_cases(
                fp.nodeport_program().unwrap(),
                vec![("probe", syn(CLIENT_PORT + 1), TC_ACT_REDIRECT, Vec::new())],
            );
            let entries = fp.nodeport.conntrack_entries();
            let new_client = entries
                .iter()
                .find(|(k, _)| k.saddr == v4_mapped(CLIENT.octets()));
            match new_client {
                None => failures.push("the new flow was not tracked".to_owned()),
                Some((_, entry)) => {
                    let port = u16::from_be(entry.sport);
                    let [(old_key, _), (reply_key, _)] = held_port(port, 0, 0);
                    if entries.iter().any(|(k, _)| *k == old_key) {
                        failures.push(format!(
                            "the client entry of the flow that held port {port} is still there"
                        ));
                    }
                    match entries.iter().find(|(k, _)| *k == reply_key) {
                        Some((_, reply))
                            if reply.daddr == v4_mapped(CLIENT.octets())
                                && u16::from_be(reply.dport) == CLIENT_PORT + 1 => {}
                        other => failures.push(format!(
                            "port {port}'s reply entry is not the new flow's: {other:?}"
                        )),
                    }
                    failures.extend(run_cases(
                        fp.nodeport_program().unwrap(),
                        vec![(
                            "a flow that took a port over: SNAT with that port",
                            syn(CLIENT_PORT + 1),
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
                        )],
                    ));
                }
            }
            failures
        },
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
