//! kube-proxy's nftables mode: one `ip kube-proxy` table, written as the `add ...` commands that
//! kube-proxy sends to `nft -f -` through knftables.
//!
//! Path of a new connection from a pod to a cluster IP through the node: `filter-prerouting-pre-dnat`
//! (firewall check, a map lookup), `nat-prerouting` → `services` (one verdict-map lookup on
//! address . protocol . port) → the service's chain (masquerade check, then `numgen random` picks an
//! endpoint chain) → the endpoint chain (hairpin check, `dnat`), then `filter-forward` (no-endpoint
//! and cluster-IP checks, map and set lookups) and `nat-postrouting` (the masquerade mark test).
//! Packets of established connections are translated by conntrack; the filter chains' rules only
//! look at `ct state new` packets, but the chains themselves are still traversed.
//!
//! A `NodePort` service (`externalTrafficPolicy: Cluster`) adds an element to the
//! `service-nodeports` verdict map (protocol . port → its `external-…` chain), looked up from
//! `services` for packets to an address in `nodeport-ips`; the external chain marks the packet
//! for masquerade and continues in the service's chain.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::{MASQUERADE_MARK, hash_prefix};
use crate::services::{CLUSTER_CIDR, SERVICE_CIDR, Service};
use crate::topology::NODE_IP;

/// The table kube-proxy owns.
pub const TABLE: &str = "kube-proxy";

/// `HASH-namespace/name/tcp/port`, the suffix of a service's chain.
fn service_chain_base(svc: &Service) -> String {
    let name = format!(
        "{}/{}/{}/{}",
        svc.namespace,
        svc.name,
        svc.protocol.name(),
        svc.port_name
    );
    format!("{}-{name}", hash_prefix(&name, 8))
}

/// `HASH-namespace/name/tcp/port__ip/port`, the suffix of an endpoint's chain.
fn endpoint_chain_base(svc: &Service, endpoint: std::net::Ipv4Addr) -> String {
    let name = format!(
        "{}/{}/{}/{}__{endpoint}/{}",
        svc.namespace,
        svc.name,
        svc.protocol.name(),
        svc.port_name,
        svc.target_port
    );
    format!("{}-{name}", hash_prefix(&name, 8))
}

/// The name of the chain of `svc`.
#[must_use]
pub fn service_chain(svc: &Service) -> String {
    format!("service-{}", service_chain_base(svc))
}

/// The name of the chain that traffic to `svc`'s node port (and external IPs) enters.
#[must_use]
pub fn external_chain(svc: &Service) -> String {
    format!("external-{}", service_chain_base(svc))
}

/// The rules kube-proxy's nftables mode programs for `services` (IPv4), for `nft -f`, with the
/// service network [`SERVICE_CIDR`] on a node whose address is [`NODE_IP`].
#[must_use]
pub fn ruleset(services: &[Service]) -> String {
    ruleset_in(services, SERVICE_CIDR, NODE_IP)
}

/// [`ruleset`] for a cluster whose service network is `service_cidr` (kube-proxy drops traffic
/// to addresses of it that no service holds), on a node whose address (the one that accepts node
/// ports, kube-proxy's `nodeport-ips`) is `node_ip`.
#[must_use]
pub fn ruleset_in(services: &[Service], service_cidr: &str, node_ip: Ipv4Addr) -> String {
    let t = format!("ip {TABLE}");
    let mut out = String::with_capacity(4096 + services.len() * 1500);
    let _ = write!(
        out,
        r#"add table {t} {{ comment "rules for kube-proxy" ; }}

add set {t} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}
add set {t} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}

add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}

add chain {t} cluster-ips-check
add chain {t} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}
add chain {t} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}
add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}
add chain {t} filter-input {{ type filter hook input priority 0 ; }}
add chain {t} filter-output {{ type filter hook output priority 0 ; }}
add chain {t} firewall-check
add chain {t} mark-for-masquerade
add chain {t} masquerading
add chain {t} nat-output {{ type nat hook output priority -100 ; }}
add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain {t} nodeport-endpoints-check
add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
add chain {t} services
add chain {t} service-endpoints-check

add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule {t} cluster-ips-check ip daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"
add rule {t} filter-prerouting-pre-dnat ct state new jump firewall-check
add rule {t} filter-forward ct state new jump service-endpoints-check
add rule {t} filter-forward ct state new jump cluster-ips-check
add rule {t} filter-input ct state new jump nodeport-endpoints-check
add rule {t} filter-input ct state new jump service-endpoints-check
add rule {t} filter-output ct state new jump service-endpoints-check
add rule {t} filter-output-pre-dnat ct state new jump firewall-check
add rule {t} filter-output ct state new jump cluster-ips-check
add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule {t} mark-for-masquerade mark set mark or {MASQUERADE_MARK:#x}
add rule {t} masquerading mark and {MASQUERADE_MARK:#x} == 0 return
add rule {t} masquerading mark set mark xor {MASQUERADE_MARK:#x}
add rule {t} masquerading masquerade fully-random
add rule {t} nat-output jump services
add rule {t} nat-postrouting jump masquerading
add rule {t} nat-prerouting jump services
add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule {t} reject-chain reject
add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services

add element {t} nodeport-ips {{ {node_ip} }}
"#
    );
    for svc in services {
        let chain = service_chain(svc);
        let vip = svc.cluster_ip;
        let proto = svc.protocol.name();
        let endpoints: Vec<String> = svc
            .endpoints
            .iter()
            .map(|&ep| format!("endpoint-{}", endpoint_chain_base(svc, ep)))
            .collect();
        // Chains first: a rule may only jump to a chain that exists.
        let _ = writeln!(out, "\n# {}\nadd chain {t} {chain}", svc.port_name_string());
        let external = svc.node_port.map(|_| external_chain(svc));
        if let Some(external) = &external {
            let _ = writeln!(out, "add chain {t} {external}");
        }
        for ep_chain in &endpoints {
            let _ = writeln!(out, "add chain {t} {ep_chain}");
        }
        let _ = writeln!(
            out,
            "add rule {t} {chain} ip daddr {vip} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
        );
        let choices: Vec<String> = endpoints
            .iter()
            .enumerate()
            .map(|(i, ep_chain)| format!("{i} : goto {ep_chain}"))
            .collect();
        let _ = writeln!(
            out,
            "add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
            endpoints.len(),
            choices.join(" , ")
        );
        // Traffic from outside (externalTrafficPolicy: Cluster): masqueraded, as it may cross
        // nodes, then balanced like the cluster IP's.
        if let Some(external) = &external {
            let _ = write!(
                out,
                "add rule {t} {external} jump mark-for-masquerade\nadd rule {t} {external} goto {chain}\n"
            );
        }
        for (ep_chain, ep) in endpoints.iter().zip(&svc.endpoints) {
            let _ = write!(
                out,
                "add rule {t} {ep_chain} ip saddr {ep} jump mark-for-masquerade\nadd rule {t} {ep_chain} meta l4proto {proto} dnat to {ep}:{}\n",
                svc.target_port
            );
        }
        let _ = write!(
            out,
            "add element {t} cluster-ips {{ {vip} }}\nadd element {t} service-ips {{ {vip} . {proto} . {} : goto {chain} }}\n",
            svc.port
        );
        if let (Some(external), Some(node_port)) = (&external, svc.node_port) {
            let _ = writeln!(
                out,
                "add element {t} service-nodeports {{ {proto} . {node_port} : goto {external} }}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::services::bench_services;

    fn two_services() -> Vec<Service> {
        let backends = [
            Ipv4Addr::new(10, 244, 0, 11),
            Ipv4Addr::new(10, 244, 0, 12),
            Ipv4Addr::new(10, 244, 0, 13),
        ];
        bench_services(2, &backends).expect("services")
    }

    fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn two_services_have_kube_proxys_structure() {
        let rules = ruleset(&two_services());
        let t = "ip kube-proxy";
        // The dispatch: one verdict map keyed on address . protocol . port, from nat hooks.
        assert!(rules.contains(&format!(
            "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n"
        )));
        for hook in [
            "nat-prerouting { type nat hook prerouting priority -100 ; }",
            "nat-output { type nat hook output priority -100 ; }",
            "nat-postrouting { type nat hook postrouting priority 100 ; }",
            "filter-forward { type filter hook forward priority 0 ; }",
        ] {
            assert!(rules.contains(hook), "missing base chain {hook}:\n{rules}");
        }
        assert!(rules.contains(&format!("add rule {t} nat-prerouting jump services\n")));
        assert!(rules.contains(&format!("add rule {t} nat-output jump services\n")));
        // The conntrack-state filter checks that sit on the forwarding path.
        assert!(rules.contains(&format!(
            "add rule {t} filter-forward ct state new jump service-endpoints-check\n"
        )));
        assert!(rules.contains("masquerade fully-random"));

        // One chain per service, picking one of three endpoint chains at random.
        let service_chains: Vec<&str> = lines_starting(&rules, &format!("add chain {t} service-"))
            .into_iter()
            .filter(|l| l.contains("/tcp/"))
            .collect();
        assert_eq!(service_chains.len(), 2, "{service_chains:?}");
        let picks = lines_starting(&rules, &format!("add rule {t} service-"))
            .into_iter()
            .filter(|l| l.contains("numgen random mod 3 vmap { 0 : goto endpoint-"))
            .count();
        assert_eq!(picks, 2, "{rules}");
        // One chain per endpoint, doing the DNAT.
        let endpoint_chains = lines_starting(&rules, &format!("add chain {t} endpoint-"));
        assert_eq!(endpoint_chains.len(), 6, "{endpoint_chains:?}");
        let dnats: Vec<&str> = rules.lines().filter(|l| l.contains(" dnat to ")).collect();
        assert_eq!(dnats.len(), 6, "{dnats:?}");
        assert!(
            rules.contains("meta l4proto tcp dnat to 10.244.0.13:8080\n"),
            "{rules}"
        );
        // The map elements: address . protocol . port → goto the service chain.
        let elements = lines_starting(&rules, &format!("add element {t} service-ips"));
        assert_eq!(elements.len(), 2, "{elements:?}");
        assert!(
            elements[1].starts_with(&format!(
                "add element {t} service-ips {{ 10.96.0.11 . tcp . 80 : goto service-"
            )),
            "{elements:?}"
        );
        assert!(
            elements[1].ends_with("-bench/svc-00001/tcp/http }"),
            "{elements:?}"
        );
    }

    #[test]
    fn node_ports_are_elements_of_service_nodeports() {
        let mut svcs = two_services();
        svcs[1].node_port = Some(30_001);
        let node = Ipv4Addr::new(10, 99, 0, 11);
        let rules = ruleset_in(&svcs, "10.96.0.0/16", node);
        let t = "ip kube-proxy";
        assert!(
            rules.contains(&format!("add element {t} nodeport-ips {{ 10.99.0.11 }}\n")),
            "{rules}"
        );
        assert!(rules.contains(&format!(
            "add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n"
        )));
        let external = external_chain(&svcs[1]);
        let service = service_chain(&svcs[1]);
        // The external chain exists before its rules and the map element that jump to it.
        let declared = rules
            .find(&format!("add chain {t} {external}\n"))
            .expect("the external chain");
        let element = rules
            .find(&format!(
                "add element {t} service-nodeports {{ tcp . 30001 : goto {external} }}\n"
            ))
            .expect("the node port element");
        assert!(declared < element);
        assert!(rules.contains(&format!(
            "add rule {t} {external} jump mark-for-masquerade\nadd rule {t} {external} goto {service}\n"
        )));
        assert_eq!(
            lines_starting(&rules, &format!("add element {t} service-nodeports")).len(),
            1,
            "only the NodePort service has one"
        );
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
        assert_eq!(service_chain(&svc), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        // From kube-proxy's own tests: ns3/svc3 port p80, node port 3003.
        let svc3 = Service {
            namespace: "ns3".into(),
            name: "svc3".into(),
            node_port: Some(3003),
            ..svc.clone()
        };
        assert_eq!(external_chain(&svc3), "external-4AT6LBPK-ns3/svc3/tcp/p80");
        let rules = ruleset(std::slice::from_ref(&svc));
        assert!(
            rules.contains(
                "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80\n"
            ),
            "{rules}"
        );
    }
}
