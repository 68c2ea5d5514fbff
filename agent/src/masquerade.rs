//! Masquerade: traffic that pods of this node send out of the cluster leaves with the node's
//! address. One nftables table of gannet's own, `inet gannet`, replaced as a whole in one
//! transaction whenever the node's pod CIDRs or the cluster CIDRs change; no other table is ever
//! read or written.
//!
//! ```text
//! table inet gannet {
//!   chain postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
//!     ip6 saddr fd00:244:1::/64 ip6 daddr != fd00:244::/48 ip6 daddr != ff00::/8 masquerade fully-random
//!   }
//! }
//! ```
//!
//! Pod-to-pod and pod-to-service traffic is never masqueraded: the socket load balancer has
//! already put a pod address in the destination, and every pod address is in the cluster CIDR.
//!
//! A NAT chain turns connection tracking on for every packet of the namespace. Traffic a node
//! forwards from a pod address to a pod address needs no tracking (no NAT, no state gannet
//! uses), so a chain at the `raw` priority exempts it (`notrack`), as it would otherwise cost
//! every pod-to-pod connection a conntrack entry on both nodes:
//!
//! ```text
//!   chain prerouting { type filter hook prerouting priority raw;
//!     ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 fib daddr type != local notrack }
//! ```
//!
//! Packets to the node's own addresses in the cluster CIDR (the overlay device's, the bridge's)
//! stay tracked: they are the replies of connections the node made, or that something else on
//! the node (kube-proxy, with gannet as the pod network only) translated to that address, whose
//! replies must find their conntrack entry to be translated back. The node's own connections
//! are therefore tracked both ways (a `raw` output rule would leave them half tracked).
//!
//! With a VXLAN overlay, the tunnel's own UDP packets (`udp dport 8472`, whose source port is a
//! hash of the inner flow, so one conntrack entry per pod connection on each node) are exempted
//! in the `raw` prerouting chain and an output chain like it. A host firewall that accepts them
//! must then not ask for `ct state new`: they are `untracked`.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::{
    batch::Batch,
    expr::{Expression, Fib, FibFlag, FibResult, NamedExpression, Payload, PayloadField, Prefix},
    schema::{Chain, NfListObject, Nftables, Rule, Table},
    stmt::{Match, NAT, NATFlag, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

/// gannet's nftables table (family `inet`).
pub const TABLE: &str = "gannet";
const CHAIN: &str = "postrouting";
/// `srcnat`.
const SRCNAT_PRIORITY: i32 = 100;
/// `raw`: before connection tracking.
const RAW_PRIORITY: i32 = -300;

#[derive(Debug, thiserror::Error)]
#[error("nftables table inet {TABLE}: {0}")]
pub struct MasqueradeError(String);

/// The rules' inputs: the pod CIDRs of this node and the cluster CIDRs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasqueradeRules {
    pub pod_cidrs: Vec<IpNet>,
    pub cluster_cidrs: Vec<IpNet>,
    /// The overlay's VXLAN port: its UDP packets (node to node, one flow per inner connection)
    /// are not tracked either.
    pub tunnel_port: Option<u16>,
    /// Pod-to-pod traffic is not tracked (the eBPF data plane). The nftables data plane needs
    /// it tracked: a backend's reply to a pod is translated back by its connection's entry.
    pub untrack_pod_to_pod: bool,
}

impl MasqueradeRules {
    /// The table as one nftables transaction: create (so the delete cannot fail), delete, and
    /// create again with its chain and rules, so the rules change atomically.
    fn batch(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(table()));
        batch.delete(NfListObject::Table(table()));
        batch.add(NfListObject::Table(table()));
        batch.add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: CHAIN.into(),
            _type: Some(NfChainType::NAT),
            hook: Some(NfHook::Postrouting),
            prio: Some(SRCNAT_PRIORITY),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
        for (name, hook) in [
            ("prerouting", NfHook::Prerouting),
            ("output", NfHook::Output),
        ] {
            batch.add(NfListObject::Chain(Chain {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: name.into(),
                _type: Some(NfChainType::Filter),
                hook: Some(hook),
                prio: Some(RAW_PRIORITY),
                policy: Some(NfChainPolicy::Accept),
                ..Chain::default()
            }));
            if let Some(port) = self.tunnel_port {
                batch.add(NfListObject::Rule(Rule {
                    family: NfFamily::INet,
                    table: TABLE.into(),
                    chain: name.into(),
                    expr: Cow::Owned(vec![
                        Statement::Match(Match {
                            left: Expression::Named(NamedExpression::Payload(
                                Payload::PayloadField(PayloadField {
                                    protocol: "udp".into(),
                                    field: "dport".into(),
                                }),
                            )),
                            right: Expression::Number(u32::from(port)),
                            op: Operator::EQ,
                        }),
                        Statement::Notrack,
                    ]),
                    handle: None,
                    index: None,
                    comment: Some(Cow::Borrowed("gannet: the overlay's tunnel, untracked")),
                }));
            }
        }
        for cluster in self
            .cluster_cidrs
            .iter()
            .filter(|_| self.untrack_pod_to_pod)
        {
            let proto = if matches!(cluster, IpNet::V4(_)) {
                "ip"
            } else {
                "ip6"
            };
            batch.add(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: TABLE.into(),
                chain: "prerouting".into(),
                expr: Cow::Owned(vec![
                    matches(proto, "saddr", Operator::EQ, *cluster),
                    matches(proto, "daddr", Operator::EQ, *cluster),
                    not_local_destination(),
                    Statement::Notrack,
                ]),
                handle: None,
                index: None,
                comment: Some(Cow::Borrowed("gannet: pod to pod, untracked")),
            }));
        }
        for pod_cidr in &self.pod_cidrs {
            let v4 = matches!(pod_cidr, IpNet::V4(_));
            let (proto, multicast) = if v4 {
                ("ip", "224.0.0.0/4")
            } else {
                ("ip6", "ff00::/8")
            };
            let mut expr = vec![matches(proto, "saddr", Operator::EQ, *pod_cidr)];
            for cluster in self
                .cluster_cidrs
                .iter()
                .filter(|c| matches!(c, IpNet::V4(_)) == v4)
            {
                expr.push(matches(proto, "daddr", Operator::NEQ, *cluster));
            }
            expr.push(matches(
                proto,
                "daddr",
                Operator::NEQ,
                multicast.parse().expect("a valid CIDR"),
            ));
            expr.push(Statement::Masquerade(Some(NAT {
                addr: None,
                family: None,
                port: None,
                flags: Some([NATFlag::FullyRandom].into_iter().collect()),
            })));
            batch.add(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: TABLE.into(),
                chain: CHAIN.into(),
                expr: Cow::Owned(expr),
                handle: None,
                index: None,
                comment: Some(Cow::Borrowed("gannet: pods leaving the cluster")),
            }));
        }
        batch.to_nftables()
    }
}

/// `fib daddr type != local`: the destination is not an address of this node.
fn not_local_destination() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr].into_iter().collect(),
        })),
        right: Expression::String("local".into()),
        op: Operator::NEQ,
    })
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn matches(
    proto: &'static str,
    field: &'static str,
    op: Operator,
    cidr: IpNet,
) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: proto.into(),
                field: field.into(),
            },
        ))),
        right: Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(cidr.network().to_string().into())),
            len: u32::from(cidr.prefix_len()),
        })),
        op,
    })
}

/// Replaces the table with `rules` (in the network namespace gannetd runs in).
///
/// # Errors
/// When `nft` cannot be run or refuses the rules; the table is then as it was.
pub fn apply(rules: &MasqueradeRules) -> Result<(), MasqueradeError> {
    let payload = payload(&rules.batch())?;
    nftables::helper::apply_ruleset_raw(&payload, None::<&str>, std::iter::empty::<&str>())
        .map(drop)
        .map_err(|e| MasqueradeError(describe(&e)))
}

/// The batch as nft's JSON. The crate writes the `notrack` statement as a bare string, which
/// nft (1.0) refuses ("expected object"); nft's own spelling is `{"notrack": null}`.
fn payload(batch: &Nftables<'_>) -> Result<String, MasqueradeError> {
    fn fix(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Array(items) => {
                for item in items {
                    if item.as_str() == Some("notrack") {
                        *item = serde_json::json!({ "notrack": null });
                    } else {
                        fix(item);
                    }
                }
            }
            serde_json::Value::Object(map) => map.values_mut().for_each(fix),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(batch).map_err(|e| MasqueradeError(e.to_string()))?;
    fix(&mut value);
    Ok(value.to_string())
}

/// Removes the table; returns whether it existed.
///
/// # Errors
/// When `nft` cannot be run or fails for another reason than the table's absence.
pub fn remove() -> Result<bool, MasqueradeError> {
    if !exists()? {
        return Ok(false);
    }
    let mut batch = Batch::new();
    batch.delete(NfListObject::Table(table()));
    nftables::helper::apply_ruleset(&batch.to_nftables())
        .map_err(|e| MasqueradeError(describe(&e)))?;
    Ok(true)
}

/// Whether the table exists.
///
/// # Errors
/// When `nft` cannot be run.
pub fn exists() -> Result<bool, MasqueradeError> {
    match nftables::helper::get_current_ruleset_raw(
        None::<&str>,
        ["-j", "list", "table", "inet", TABLE],
    ) {
        Ok(_) => Ok(true),
        Err(nftables::helper::NftablesError::NftFailed { .. }) => Ok(false),
        // No nft on this machine: no table either.
        Err(nftables::helper::NftablesError::NftExecution { inner, .. })
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(false)
        }
        Err(e) => Err(MasqueradeError(describe(&e))),
    }
}

pub(crate) fn describe(error: &nftables::helper::NftablesError) -> String {
    match error {
        nftables::helper::NftablesError::NftFailed { stderr, hint, .. } => {
            format!("nft failed while {hint}: {}", stderr.trim())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rule's statements as `nft list` would roughly say them.
    fn text(expr: &serde_json::Value) -> String {
        expr.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                if let Some(m) = e.get("match")
                    && m["left"].get("fib").is_some()
                {
                    let flags = &m["left"]["fib"]["flags"];
                    let flags = match flags.as_array() {
                        Some(list) => list
                            .iter()
                            .map(|f| f.as_str().unwrap())
                            .collect::<Vec<_>>()
                            .join(" . "),
                        None => flags.as_str().unwrap().to_owned(),
                    };
                    format!(
                        "fib {flags} type {} {}",
                        m["op"].as_str().unwrap(),
                        m["right"].as_str().unwrap()
                    )
                } else if let Some(m) = e.get("match")
                    && m["right"].is_number()
                {
                    format!(
                        "{} {} {} {}",
                        m["left"]["payload"]["protocol"].as_str().unwrap(),
                        m["left"]["payload"]["field"].as_str().unwrap(),
                        m["op"].as_str().unwrap(),
                        m["right"]
                    )
                } else if let Some(m) = e.get("match") {
                    let prefix = &m["right"]["prefix"];
                    format!(
                        "{} {} {} {}/{}",
                        m["left"]["payload"]["protocol"].as_str().unwrap(),
                        m["left"]["payload"]["field"].as_str().unwrap(),
                        m["op"].as_str().unwrap(),
                        prefix["addr"].as_str().unwrap(),
                        prefix["len"]
                    )
                } else if e.get("notrack").is_some() {
                    "notrack".to_owned()
                } else {
                    format!(
                        "masquerade {}",
                        e["masquerade"]["flags"][0].as_str().unwrap()
                    )
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn rules_masquerade_only_what_leaves_the_cluster() {
        let masq = MasqueradeRules {
            pod_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:244:1::/64".parse().unwrap(),
            ],
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:244::/48".parse().unwrap(),
            ],
            tunnel_port: Some(8472),
            untrack_pod_to_pod: true,
        };
        let json: serde_json::Value =
            serde_json::from_str(&payload(&masq.batch()).unwrap()).unwrap();
        let commands = json["nftables"].as_array().unwrap();
        let chains: Vec<String> = commands
            .iter()
            .filter_map(|c| c["add"].get("chain"))
            .map(|c| format!("{} {} {} {}", c["name"], c["type"], c["hook"], c["prio"]))
            .collect();
        assert_eq!(
            chains,
            [
                r#""postrouting" "nat" "postrouting" 100"#,
                r#""prerouting" "filter" "prerouting" -300"#,
                r#""output" "filter" "output" -300"#,
            ]
        );
        let rules: Vec<String> = commands
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| format!("{}: {}", r["chain"].as_str().unwrap(), text(&r["expr"])))
            .collect();
        assert_eq!(
            rules,
            [
                "prerouting: udp dport == 8472 notrack",
                "output: udp dport == 8472 notrack",
                r#"prerouting: ip saddr == 10.244.0.0/16 ip daddr == 10.244.0.0/16 fib daddr type != local notrack"#,
                r#"prerouting: ip6 saddr == fd00:244::/48 ip6 daddr == fd00:244::/48 fib daddr type != local notrack"#,
                "postrouting: ip saddr == 10.244.1.0/24 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
                "postrouting: ip6 saddr == fd00:244:1::/64 ip6 daddr != fd00:244::/48 ip6 daddr != ff00::/8 masquerade fully-random",
            ]
        );
        // The whole table is replaced in one transaction.
        let first: Vec<String> = commands.iter().take(3).map(ToString::to_string).collect();
        assert_eq!(
            first,
            [
                r#"{"add":{"table":{"family":"inet","name":"gannet"}}}"#,
                r#"{"delete":{"table":{"family":"inet","name":"gannet"}}}"#,
                r#"{"add":{"table":{"family":"inet","name":"gannet"}}}"#,
            ]
        );
        // The nftables data plane keeps pod-to-pod traffic tracked.
        let tracked = MasqueradeRules {
            untrack_pod_to_pod: false,
            ..masq
        };
        let json: serde_json::Value =
            serde_json::from_str(&payload(&tracked.batch()).unwrap()).unwrap();
        let untracked: Vec<String> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| text(&r["expr"]))
            .filter(|t| t.contains("notrack"))
            .collect();
        assert_eq!(
            untracked,
            ["udp dport == 8472 notrack", "udp dport == 8472 notrack"]
        );
    }
}
