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

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::{
    batch::Batch,
    expr::{Expression, NamedExpression, Payload, PayloadField, Prefix},
    schema::{Chain, NfListObject, Nftables, Rule, Table},
    stmt::{Match, NAT, NATFlag, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

/// gannet's nftables table (family `inet`).
pub const TABLE: &str = "gannet";
const CHAIN: &str = "postrouting";
/// `srcnat`.
const SRCNAT_PRIORITY: i32 = 100;

#[derive(Debug, thiserror::Error)]
#[error("nftables table inet {TABLE}: {0}")]
pub struct MasqueradeError(String);

/// The rules' inputs: the pod CIDRs of this node and the cluster CIDRs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasqueradeRules {
    pub pod_cidrs: Vec<IpNet>,
    pub cluster_cidrs: Vec<IpNet>,
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
    nftables::helper::apply_ruleset(&rules.batch()).map_err(|e| MasqueradeError(describe(&e)))
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

fn describe(error: &nftables::helper::NftablesError) -> String {
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

    #[test]
    fn rules_masquerade_only_what_leaves_the_cluster() {
        let rules = MasqueradeRules {
            pod_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:244:1::/64".parse().unwrap(),
            ],
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:244::/48".parse().unwrap(),
            ],
        };
        let json = serde_json::to_string(&rules.batch()).unwrap();
        for needle in [
            r#""family":"inet","name":"gannet""#,
            r#""hook":"postrouting""#,
            r#""addr":"10.244.1.0","len":24"#,
            r#""right":{"prefix":{"addr":"10.244.0.0","len":16}},"op":"!=""#,
            r#""addr":"fd00:244::","len":48"#,
            r#""addr":"224.0.0.0","len":4"#,
            r#""masquerade":{"flags":["fully-random"]}"#,
        ] {
            assert!(json.contains(needle), "{needle} in {json}");
        }
        // The IPv4 rule does not exclude the IPv6 cluster CIDR.
        let v4_rule = json.split(r#""rule""#).nth(1).unwrap();
        assert!(!v4_rule.contains("fd00"), "{v4_rule}");
    }
}
