//! IPv6 NodePort fixtures.

use super::*;

/// IPv6: a NodePort to a pod of this node (DNAT only, the 16-byte addresses through the
/// pseudo-header), and the pod's reply back to the client.
#[test]
fn nodeport_ipv6_fixtures() {
    let fixture = FixtureNode::new();
    let failures = fixture
        .ns
        .run(|| {
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
                .expect("enabling IPv6 forwarding");
            let Loaded {
                mut fp,
                mut maglev,
                size,
                mut services,
                mut backends,
            } = load(&fixture.bpf_root);
            let node: std::net::Ipv6Addr = "fd00:99::11".parse().unwrap();
            let client: std::net::Ipv6Addr = "fd00:99::250".parse().unwrap();
            let pod: std::net::Ipv6Addr = "fd00:244::12".parse().unwrap();
            fp.add(&Endpoint {
                host_ifname: "hveth".into(),
                mac: POD_MAC,
                ips: vec![IpAddr::V4(POD), IpAddr::V6(pod)],
            })
            .expect("adding the endpoint's IPv6 address");
            let key = ServiceKey {
                addr: node.octets(),
                port: NODE_PORT.to_be(),
                proto: PROTO_TCP,
                pad: 0,
            };
            services.insert(key, service(1, SVC_F_EXTERNAL), 0).unwrap();
            let value = BackendValue {
                addr: pod.octets(),
                port: BACKEND_PORT.to_be(),
                epoch: 0,
            };
            backends.insert(11, value, 0).unwrap();
            maglev.put(1, &vec![11; size]).unwrap();
            fp.nodeport
                .configure(&NodePortConfig {
                    snat_v4: [0; 16],
                    snat_v6: node.octets(),
                    node_v4: [0; 16],
                    node_v6: node.octets(),
                    maglev_table_size: maglev.size(),
                    flags: NODEPORT_F_ENABLED | gannet_common::NODEPORT_F_SNAT_V6,
                })
                .unwrap();
            let cases: Vec<Case> = vec![(
                "IPv6 NodePort, backend on this node: DNAT only, into the pod",
                tcp_v6(
                    EXT_MAC,
                    CLIENT_MAC,
                    client,
                    CLIENT_PORT,
                    node,
                    NODE_PORT,
                    64,
                    SYN,
                ),
                TC_ACT_REDIRECT,
                tcp_v6(
                    POD_MAC,
                    fixture.host_mac,
                    client,
                    CLIENT_PORT,
                    pod,
                    BACKEND_PORT,
                    63,
                    SYN,
                ),
            )];
            let mut failures = run_cases(fp.nodeport_program().unwrap(), cases);
            let cases: Vec<Case> = vec![(
                "its reply: from the frontend, out to the client",
                tcp_v6(
                    fixture.host_mac,
                    POD_MAC,
                    pod,
                    BACKEND_PORT,
                    client,
                    CLIENT_PORT,
                    64,
                    SYN_ACK,
                ),
                TC_ACT_REDIRECT,
                tcp_v6(
                    CLIENT_MAC,
                    EXT_MAC,
                    node,
                    NODE_PORT,
                    client,
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

            // UDP to an external IPv6 address without backends: ICMPv6 port unreachable.
            let external: std::net::Ipv6Addr = "fd00:99::201".parse().unwrap();
            let key = ServiceKey {
                addr: external.octets(),
                port: 53u16.to_be(),
                proto: PROTO_UDP,
                pad: 0,
            };
            services.insert(key, service(9, SVC_F_EXTERNAL), 0).unwrap();
            let datagram = udp(
                (EXT_MAC, CLIENT_MAC),
                (IpAddr::V6(client), CLIENT_PORT),
                (IpAddr::V6(external), 53),
            );
            let cases: Vec<Case> = vec![(
                "IPv6 UDP to an external IP without a backend: ICMPv6 port unreachable back",
                datagram.clone(),
                TC_ACT_REDIRECT,
                port_unreachable(&datagram, IpAddr::V6(external)),
            )];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
            failures
        })
        .expect("running in the test netns");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
