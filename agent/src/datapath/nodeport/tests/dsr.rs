//! `--lb-mode dsr` fixtures: the option pushed, pulled, and the reply from the frontend.

use super::*;

/// `frame` (Ethernet + IPv4 without options) with the DSR option naming `frontend:port` after
/// its IPv4 header, as the balancing node sends it.
fn with_dsr_option(frame: &[u8], frontend: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut ip = frame[14..34].to_vec();
    ip[0] = 0x47;
    let total = u16::from_be_bytes([ip[2], ip[3]]) + 8;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x9a, 8]);
    ip.extend_from_slice(&port.to_be_bytes());
    ip.extend_from_slice(&frontend.octets());
    ip[10..12].copy_from_slice(&[0, 0]);
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let mut out = frame[..14].to_vec();
    out.extend_from_slice(&ip);
    out.extend_from_slice(&frame[34..]);
    out
}

/// `--lb-mode dsr`: the balancing node sends the client's packet on with its own source and the
/// frontend in an IPv4 option; the backend's node takes the option off, delivers the packet and
/// sends the pod's reply to the client from the frontend.
#[test]
fn nodeport_dsr_fixtures() {
    let node = FixtureNode::new();
    let failures = node.with_programs(
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
            enable_v4(&mut fp, maglev.size(), NODEPORT_F_DSR);

            let to_remote = tcp_v4(
                EXT_MAC,
                CLIENT_MAC,
                CLIENT,
                CLIENT_PORT,
                NODE,
                NODE_PORT + 1,
                64,
                SYN,
            );
            let plain = tcp_v4(
                OTHER_NODE_MAC,
                EXT_MAC,
                CLIENT,
                CLIENT_PORT,
                REMOTE_POD,
                BACKEND_PORT,
                63,
                SYN,
            );
            let cases: Vec<Case> = vec![(
                "balanced to another node: DNAT only, the frontend in the DSR option",
                to_remote,
                TC_ACT_REDIRECT,
                with_dsr_option(&plain, NODE, NODE_PORT + 1),
            )];
            let mut failures = run_cases(fp.nodeport_program().unwrap(), cases);

            // The backend's node (this one, for a pod of its own): the option comes off.
            let arriving = with_dsr_option(
                &tcp_v4(
                    EXT_MAC,
                    OTHER_NODE_MAC,
                    CLIENT,
                    CLIENT_PORT + 5,
                    POD,
                    BACKEND_PORT,
                    64,
                    SYN,
                ),
                NODE,
                NODE_PORT + 1,
            );
            let unknown = with_dsr_option(
                &tcp_v4(
                    EXT_MAC,
                    OTHER_NODE_MAC,
                    CLIENT,
                    CLIENT_PORT + 6,
                    POD,
                    BACKEND_PORT,
                    64,
                    SYN,
                ),
                Ipv4Addr::new(192, 0, 2, 1),
                80,
            );
            let cases: Vec<Case> = vec![
                (
                    "with the DSR option, for a pod here: option removed, into the pod",
                    arriving,
                    TC_ACT_REDIRECT,
                    tcp_v4(
                        POD_MAC,
                        node.host_mac,
                        CLIENT,
                        CLIENT_PORT + 5,
                        POD,
                        BACKEND_PORT,
                        63,
                        SYN,
                    ),
                ),
                (
                    "a DSR option naming no frontend of the cluster: dropped",
                    unknown.clone(),
                    TC_ACT_SHOT,
                    unknown,
                ),
            ];
            failures.extend(run_cases(fp.nodeport_program().unwrap(), cases));
            let cases: Vec<Case> = vec![(
                "the pod's reply: from the frontend, straight to the client",
                tcp_v4(
                    node.host_mac,
                    POD_MAC,
                    POD,
                    BACKEND_PORT,
                    CLIENT,
                    CLIENT_PORT + 5,
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
                    CLIENT_PORT + 5,
                    63,
                    SYN_ACK,
                ),
            )];
            failures.extend(run_cases_from(
                fp.from_pod_program().unwrap(),
                "hveth",
                cases,
            ));
            let stats = fp.nodeport.stats().expect("counters");
            if stats.dsr_in != 1 || stats.denied != 1 {
                failures.push(format!("counters: {stats:?}"));
            }
            failures
        },
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
