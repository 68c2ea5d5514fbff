//! kube-proxy's iptables mode, as one `iptables-restore --noflush` input.
//!
//! Path of a new connection from a pod to a cluster IP through the node: nat `PREROUTING` →
//! `KUBE-SERVICES`, a linear list with one rule per service port (the benchmark measures the last
//! one, the worst case) → `KUBE-SVC-…` (masquerade check, then `statistic --mode random` rules pick a
//! `KUBE-SEP-…`) → `KUBE-SEP-…` (hairpin check, `DNAT`); filter `FORWARD` → `KUBE-PROXY-FIREWALL`,
//! `KUBE-FORWARD` (drops conntrack `INVALID`, accepts `ESTABLISHED`), `KUBE-SERVICES`,
//! `KUBE-EXTERNAL-SERVICES`; nat `POSTROUTING` → `KUBE-POSTROUTING` (masquerade mark test).
//! Packets of established connections skip the nat table (conntrack translates them) but still go
//! through the filter chains.
//!
//! A new connection to a node port (`externalTrafficPolicy: Cluster`) from outside walks all of
//! `KUBE-SERVICES` (no cluster IP matches), then its last rule (`--dst-type LOCAL`) into
//! `KUBE-NODEPORTS`, one rule per node port in service order, to `KUBE-EXT-…` (masquerade mark,
//! then `KUBE-SVC-…`); `KUBE-FORWARD` accepts it by the mark, `KUBE-POSTROUTING` masquerades it.
//!
//! kube-proxy installs the jumps from the built-in chains itself (`iptables -I`) and restores the
//! rest with `iptables-restore --noflush`; here both are in one input for a fresh namespace.

use std::fmt::Write as _;

use super::{MASQUERADE_MARK, hash_prefix};
use crate::services::{CLUSTER_CIDR, Service};

/// Above this many endpoints in total kube-proxy runs in "large cluster mode" and leaves the
/// comments off the per-endpoint rules (`largeClusterEndpointsThreshold`).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// `KUBE-SVC-` and the first 16 characters of base32(SHA-256(`ns/name:port` + `tcp`/`udp`)).
#[must_use]
pub fn service_chain(svc: &Service) -> String {
    format!(
        "KUBE-SVC-{}",
        hash_prefix(
            &format!("{}{}", svc.port_name_string(), svc.protocol.name()),
            16
        )
    )
}

/// `KUBE-EXT-` and the same hash as [`service_chain`]: where traffic to `svc`'s node port (and
/// external IPs) goes.
#[must_use]
pub fn external_chain(svc: &Service) -> String {
    format!(
        "KUBE-EXT-{}",
        hash_prefix(
            &format!("{}{}", svc.port_name_string(), svc.protocol.name()),
            16
        )
    )
}

/// `KUBE-SEP-` and the first 16 characters of base32(SHA-256(`ns/name:port` + protocol +
/// `ip:port`)).
fn endpoint_chain(svc: &Service, endpoint: std::net::Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        hash_prefix(
            &format!(
                "{}{}{endpoint}:{}",
                svc.port_name_string(),
                svc.protocol.name(),
                svc.target_port
            ),
            16
        )
    )
}

/// kube-proxy's probability for endpoint `i` of `n`: 1/(n-i), with ten decimals.
fn probability(i: usize, n: usize) -> String {
    format!("{:.10}", 1.0 / (n - i) as f64)
}

/// The rules kube-proxy's iptables mode programs for `services`, for `iptables-restore --noflush`.
#[must_use]
pub fn restore_input(services: &[Service]) -> String {
    let mark = format!("{MASQUERADE_MARK:#x}");
    let total_endpoints: usize = services.iter().map(|svc| svc.endpoints.len()).sum();
    let large_cluster = total_endpoints > LARGE_CLUSTER_ENDPOINTS;
    let mut out = String::with_capacity(4096 + services.len() * 1800);

    let _ = write!(
        out,
        r#"*mangle
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:KUBE-PROXY-CANARY - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-PROXY-CANARY - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
"#
    );
    for svc in services {
        let _ = writeln!(out, ":{} - [0:0]", service_chain(svc));
        if svc.node_port.is_some() {
            let _ = writeln!(out, ":{} - [0:0]", external_chain(svc));
        }
        for &ep in &svc.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", endpoint_chain(svc, ep));
        }
    }
    let _ = write!(
        out,
        r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark {mark}
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark {mark}
"#
    );
    // KUBE-SERVICES in service order: the last service is matched last.
    for svc in services {
        let p = svc.protocol.name();
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} -j {}",
            svc.port_name_string(),
            svc.cluster_ip,
            svc.port,
            service_chain(svc)
        );
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    // KUBE-NODEPORTS in service order, one rule per node port: the last service is matched last.
    for svc in services {
        if let Some(node_port) = svc.node_port {
            let p = svc.protocol.name();
            let _ = writeln!(
                out,
                "-A KUBE-NODEPORTS -m comment --comment {} -m {p} -p {p} --dport {node_port} -j {}",
                svc.port_name_string(),
                external_chain(svc)
            );
        }
    }
    for svc in services {
        let name = svc.port_name_string();
        let chain = service_chain(svc);
        let p = svc.protocol.name();
        if svc.node_port.is_some() {
            // externalTrafficPolicy: Cluster: masquerade (the endpoint may be on another node),
            // then the service's endpoints.
            let external = external_chain(svc);
            let _ = write!(
                out,
                "-A {external} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ\n-A {external} -j {chain}\n"
            );
        }
        let _ = writeln!(
            out,
            "-A {chain} -m comment --comment \"{name} cluster IP\" -m {p} -p {p} -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            svc.cluster_ip, svc.port
        );
        let n = svc.endpoints.len();
        for (i, &ep) in svc.endpoints.iter().enumerate() {
            let comment = if large_cluster {
                String::new()
            } else {
                format!(
                    "-m comment --comment \"{name} -> {ep}:{}\" ",
                    svc.target_port
                )
            };
            let statistic = if i + 1 < n {
                format!(
                    "-m statistic --mode random --probability {} ",
                    probability(i, n)
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "-A {chain} {comment}{statistic}-j {}",
                endpoint_chain(svc, ep)
            );
        }
        for &ep in &svc.endpoints {
            let sep = endpoint_chain(svc, ep);
            let comment = if large_cluster {
                String::new()
            } else {
                format!("-m comment --comment \"{name}\" ")
            };
            let _ = write!(
                out,
                "-A {sep} {comment}-s {ep}/32 -j KUBE-MARK-MASQ\n-A {sep} {comment}-m {p} -p {p} -j DNAT --to-destination {ep}:{}\n",
                svc.target_port
            );
        }
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::services::bench_services;

    fn services(count: usize) -> Vec<Service> {
        let backends = [
            Ipv4Addr::new(10, 244, 0, 11),
            Ipv4Addr::new(10, 244, 0, 12),
            Ipv4Addr::new(10, 244, 0, 13),
        ];
        bench_services(count, &backends).expect("services")
    }

    #[test]
    fn two_services_have_kube_proxys_structure() {
        let svcs = services(2);
        let input = restore_input(&svcs);
        for table in ["*mangle", "*filter", "*nat"] {
            assert!(
                input.contains(&format!("{table}\n")),
                "no {table}:\n{input}"
            );
        }
        assert_eq!(input.matches("COMMIT\n").count(), 3);
        assert!(input.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(input.contains("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n"));

        // KUBE-SERVICES: one rule per service, in order, the measured (last) service last before
        // the node-port catch-all.
        let dispatch: Vec<&str> = input
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES") && l.contains("cluster IP"))
            .collect();
        assert_eq!(dispatch.len(), 2, "{dispatch:?}");
        assert_eq!(
            dispatch[1],
            format!(
                "-A KUBE-SERVICES -m comment --comment \"bench/svc-00001:http cluster IP\" -m tcp -p tcp -d 10.96.0.11/32 --dport 80 -j {}",
                service_chain(&svcs[1])
            )
        );
        let nat_services: Vec<&str> = input
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert!(
            nat_services
                .last()
                .expect("rules")
                .contains("KUBE-NODEPORTS")
        );

        // KUBE-SVC: masquerade check, then 1/3, 1/2, and the rest.
        let svc_chain = service_chain(&svcs[1]);
        let svc_rules: Vec<&str> = input
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc_chain} ")))
            .collect();
        assert_eq!(svc_rules.len(), 4, "{svc_rules:?}");
        assert!(svc_rules[0].ends_with("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"));
        assert!(
            svc_rules[1]
                .contains("-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-")
        );
        assert!(
            svc_rules[2]
                .contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-")
        );
        assert!(!svc_rules[3].contains("statistic") && svc_rules[3].contains("-j KUBE-SEP-"));

        // KUBE-SEP: hairpin masquerade and DNAT, one chain per endpoint.
        let dnats: Vec<&str> = input.lines().filter(|l| l.contains("-j DNAT")).collect();
        assert_eq!(dnats.len(), 6, "{dnats:?}");
        assert!(input.contains("-m tcp -p tcp -j DNAT --to-destination 10.244.0.13:8080\n"));
        assert_eq!(
            input
                .lines()
                .filter(|l| l.starts_with(":KUBE-SEP-"))
                .count(),
            6
        );
    }

    #[test]
    fn node_ports_go_through_kube_nodeports_and_an_ext_chain() {
        let mut svcs = services(3);
        crate::services::with_node_ports(&mut svcs).expect("ports");
        svcs[0].node_port = None;
        let input = restore_input(&svcs);
        // One KUBE-NODEPORTS rule per node port, in service order, after the catch-all jump.
        let nodeports: Vec<&str> = input
            .lines()
            .filter(|l| l.starts_with("-A KUBE-NODEPORTS "))
            .collect();
        assert_eq!(
            nodeports,
            [
                format!(
                    "-A KUBE-NODEPORTS -m comment --comment bench/svc-00001:http -m tcp -p tcp --dport 30001 -j {}",
                    external_chain(&svcs[1])
                ),
                format!(
                    "-A KUBE-NODEPORTS -m comment --comment bench/svc-00002:http -m tcp -p tcp --dport 30002 -j {}",
                    external_chain(&svcs[2])
                ),
            ]
        );
        // KUBE-EXT: masquerade mark, then the service chain; declared in the nat table.
        let ext = external_chain(&svcs[2]);
        assert!(input.contains(&format!(":{ext} - [0:0]\n")), "{input}");
        let ext_rules: Vec<&str> = input
            .lines()
            .filter(|l| l.starts_with(&format!("-A {ext} ")))
            .collect();
        assert_eq!(
            ext_rules,
            [
                format!(
                    "-A {ext} -m comment --comment \"masquerade traffic for bench/svc-00002:http external destinations\" -j KUBE-MARK-MASQ"
                ),
                format!("-A {ext} -j {}", service_chain(&svcs[2])),
            ]
        );
        assert!(!input.contains(&format!(":{} - [0:0]", external_chain(&svcs[0]))));
        assert_eq!(input.matches(":KUBE-EXT-").count(), 2);
    }

    #[test]
    fn large_clusters_drop_endpoint_comments() {
        let small = restore_input(&services(2));
        assert!(small.contains("-> 10.244.0.13:8080\""));
        let large = restore_input(&services(LARGE_CLUSTER_ENDPOINTS / 3 + 1));
        assert!(
            !large.contains("->"),
            "endpoint comments in large-cluster mode"
        );
        assert!(large.contains("cluster IP\""), "service comments stay");
    }

    #[test]
    fn chain_names_follow_kube_proxy() {
        let svc = Service {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port_name: "p80".into(),
            cluster_ip: Ipv4Addr::new(172, 30, 0, 41),
            protocol: crate::services::Protocol::Tcp,
            port: 80,
            endpoints: vec![Ipv4Addr::new(10, 180, 0, 1)],
            target_port: 80,
            node_port: None,
        };
        assert_eq!(service_chain(&svc), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(external_chain(&svc), "KUBE-EXT-XPGD46QRK7WJZT7O");
        assert_eq!(
            endpoint_chain(&svc, svc.endpoints[0]),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
    }
}
