//! What the hit path costs (an ignored measurement, run by hand).

use super::*;

/// What the hit path costs, two ways (a measurement, not a check: run it by hand on a quiet
/// machine, `cargo test -p gannet-agent --lib hit_path_cost -- --ignored --nocapture`):
///
/// - as `gannet-testrun` measures it: single runs of a tracked packet, minus the clock overhead
///   (a single `miss` run against repeated ones);
/// - warm, with `repeat`: a second, synthetic tracked flow translates the first one's output
///   back into its input (client → frontend → SNAT → backend → client → …), so every
///   repetition is a tracked packet with the full SNAT + DNAT rewrite, FIB lookup, TTL and MACs.
///   The frame starts with TTL 255 and runs 200 times; after an even number of repetitions it
///   must be the input again (TTL − 200, MACs of the frontend's neighbour), checksums verifying.
#[test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
fn hit_path_cost() {
    const FRONTEND: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
    const FRONTEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x64];
    const LOOP_BACKEND: u32 = 99;
    const REPEAT: u32 = 200;
    const CALLS: usize = 20_000;
    let node = FixtureNode::new();
    node.ns
        .ip(&[
            "neigh",
            "replace",
            "10.99.0.100",
            "lladdr",
            "02:00:00:00:00:64",
            "dev",
            "ext0",
            "nud",
            "permanent",
        ])
        .unwrap();
    let ext0 = node.ext0();
    let report = node.with_programs(|Loaded {
            mut fp,
            mut maglev,
            size,
            mut services,
            mut backends,
        }| {
            services
                .insert(frontend(FRONTEND, NODE_PORT), service(2, SVC_F_EXTERNAL), 0)
                .unwrap();
            backends.insert(12, backend(REMOTE_POD, BACKEND_PORT), 0).unwrap();
            backends.insert(LOOP_BACKEND, backend(FRONTEND, NODE_PORT), 0).unwrap();
            maglev.put(2, &vec![12; size]).unwrap();
            enable_v4(&mut fp, maglev.size(), 0);
            let mut conntrack: HashMap<MapData, gannet_common::CtKey, gannet_common::CtEntry> =
                pinned_hash(&node.bpf_root, map_names::CONNTRACK);
            let mut lines = Vec::new();
            for xdp in [false, true] {
                let name = if xdp { "xdp" } else { "tc" };
                // The flow, from its first packet.
                let syn = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, FRONTEND, NODE_PORT, 64, SYN);
                let (verdict, _, _) = timed_run(&mut fp, xdp, ext0, &syn, 1);
                let key = gannet_common::CtKey {
                    saddr: v4_mapped(CLIENT.octets()),
                    daddr: v4_mapped(FRONTEND.octets()),
                    sport: CLIENT_PORT.to_be(),
                    dport: NODE_PORT.to_be(),
                    proto: PROTO_TCP,
                    pad: [0; 3],
                };
                let entry = conntrack
                    .get(&key, 0)
                    .unwrap_or_else(|e| panic!("{name}: no entry after the SYN (verdict {verdict}): {e}"));
                // The synthetic flow: the translated packet, translated back.
                let back_key = gannet_common::CtKey {
                    saddr: entry.saddr,
                    daddr: entry.daddr,
                    sport: entry.sport,
                    dport: entry.dport,
                    proto: PROTO_TCP,
                    pad: [0; 3],
                };
                let back = gannet_common::CtEntry {
                    saddr: key.saddr,
                    daddr: key.daddr,
                    sport: key.sport,
                    dport: key.dport,
                    backend_id: LOOP_BACKEND,
                    ..entry
                };
                conntrack.insert(back_key, back, 0).unwrap();
                let ack = |ttl| {
                    tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, FRONTEND, NODE_PORT, ttl, 0x10)
                };
                let miss = tcp_v4(EXT_MAC, CLIENT_MAC, CLIENT, CLIENT_PORT, NODE, 9, 64, 0x10);
                let mut single = Vec::new();
                let mut single_miss = Vec::new();
                let mut repeated_miss = Vec::new();
                let mut warm = Vec::new();
                let tracked = ack(64);
                let looped = ack(255);
                let mut verdicts = std::collections::BTreeMap::new();
                for call in 0..CALLS {
                    let (v, t, _) = timed_run(&mut fp, xdp, ext0, &tracked, 1);
                    *verdicts.entry(v).or_insert(0) += 1;
                    single.push(t);
                    single_miss.push(timed_run(&mut fp, xdp, ext0, &miss, 1).1);
                    if call % 10 == 0 {
                        repeated_miss.push(timed_run(&mut fp, xdp, ext0, &miss, 10_000).1);
                        let (v, t, out) = timed_run(&mut fp, xdp, ext0, &looped, REPEAT);
                        let mut expected = ack(255 - REPEAT as u8);
                        expected[..6].copy_from_slice(&FRONTEND_MAC);
                        expected[6..12].copy_from_slice(&EXT_MAC);
                        assert_eq!(
                            out, expected,
                            "{name}: the looped frame after {REPEAT} repetitions (verdict {v})"
                        );
                        warm.push(t);
                    }
                }
                let overhead = median(single_miss.clone()) - median(repeated_miss.clone());
                let mut sorted = warm.clone();
                sorted.sort_by(f64::total_cmp);
                lines.push(format!(
                    "{name}: tracked single {:.0} ns − overhead {:.0} = {:.0} ns (verdicts {verdicts:?}); \
                     warm (repeat {REPEAT}, looped) median {:.0} ns, p10 {:.0} ns; miss repeated {:.0} ns, \
                     single {:.0} ns",
                    median(single.clone()),
                    overhead,
                    median(single) - overhead,
                    median(warm),
                    sorted[sorted.len() / 10],
                    median(repeated_miss),
                    median(single_miss),
                ));
                let _ = conntrack.remove(&back_key);
                let _ = conntrack.remove(&key);
                for (k, e) in fp.nodeport.conntrack_entries() {
                    if e.flags & CT_F_REPLY != 0 {
                        let _ = conntrack.remove(&k);
                    }
                }
            }
            lines
        });
    for line in report {
        println!("{line}");
    }
}
