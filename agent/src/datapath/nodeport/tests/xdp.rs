//! The XDP front's fixtures.

use super::*;

/// The XDP front: a flow whose translated packet leaves by the interface it came in on (a
/// backend across the segment, its reply to the client) is rewritten and sent back out right
/// there; one for a pod of this node passes untouched to tc, tracked; misses pass.
#[test]
fn nodeport_xdp_fixtures() {
    let node = FixtureNode::new();
    let ext0 = node.ext0();
    let failures = node.with_programs(|Loaded {
            mut fp,
            mut maglev,
            size,
            mut services,
            mut backends,
        }| {
            services
                .insert(frontend(NODE, NODE_PORT), service(1, SVC_F_EXTERNAL), 0)
                .unwrap();
            services
                .insert(frontend(NODE, NODE_PORT + 1), service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            backends.insert(11, backend(POD, BACKEND_PORT), 0).unwrap();
            backends.insert(12, backend(REMOTE_POD, BACKEND_PORT), 0).unwrap();
            maglev.put(1, &vec![11; size]).unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            enable_v4(&mut fp, maglev.size(), 0);

            let mut failures = Vec::new();
            let mut check = |name: &str, got: (u32, Vec<u8>), action: u32, expected: &[u8]| {
                if got.0 != action || got.1 != expected {
                    failures.push(format!(
                        "{name}: expected action {action} and\n  {expected:02x?}\n got {} and\n  {:02x?}",
                        got.0, got.1
                    ));
                }
            };

            let to_local = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, NODE, NODE_PORT, 64, SYN);
            let got = xdp_run(&mut fp, ext0, &to_local);
            check("a pod of this node: passed untouched to tc", got, XDP_PASS, &to_local);
            let to_remote =
                tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, NODE, NODE_PORT + 1, 64, SYN);
            let sent = xdp_run(&mut fp, ext0, &to_remote);
            let entries = fp.nodeport.conntrack_entries();
            let tracked = entries.iter().filter(|(_, e)| e.flags & CT_F_REPLY == 0).count();
            if tracked != 2 {
                check("both new flows are tracked", (0, Vec::new()), 1, &[]);
            }
            let port = entries
                .iter()
                .find(|(k, e)| {
                    e.flags == CT_F_REPLY | CT_F_SNAT && k.saddr == v4_mapped(REMOTE_POD.octets())
                })
                .map(|(k, _)| u16::from_be(k.dport));
            let Some(port) = port else {
                return vec![format!("no SNAT reply entry in {entries:?}")];
            };
            check(
                "a backend across the segment: SNAT + DNAT, sent back out from XDP",
                sent,
                XDP_TX,
                &tcp_v4(OTHER_NODE_MAC, EXT_MAC, SNAT, port, REMOTE_POD, BACKEND_PORT, 63, SYN),
            );
            let reply =
                tcp_v4(EXT_MAC, OTHER_NODE_MAC, REMOTE_POD, BACKEND_PORT, SNAT, port, 64, SYN_ACK);
            let got = xdp_run(&mut fp, ext0, &reply);
            check(
                "its reply: back to the client from XDP",
                got,
                XDP_TX,
                &tcp_v4(CLIENT_MAC, EXT_MAC, NODE, NODE_PORT + 1, CLIENT, CLIENT_PORT, 63, SYN_ACK),
            );
            let miss = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, NODE, 9, 64, SYN);
            let got = xdp_run(&mut fp, ext0, &miss);
            check("no frontend: passed", got, XDP_PASS, &miss);
            failures
        });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
