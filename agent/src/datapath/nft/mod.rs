//! The nftables data plane: the same services as the eBPF one, for nodes that cannot run
//! gannet's programs, in one table of gannet's own (`inet gannet-services`), changed element by
//! element.
//!
//! What happens to a packet (the first of a connection: NAT chains see nothing else):
//!
//! ```text
//! prerouting/output, nat, dstnat: jump services
//! services:   frontend in @masquerade4: meta mark |= 0x4000 (external, externalTrafficPolicy Cluster)
//!             ip daddr . meta l4proto . th dport vmap @services4        (and ip6 … @services6)
//!             frontend → goto lb-N, N = its number of backends (with sessionAffinity: goto aff-N,
//!             where a client a slot remembers goes back to that slot, others on to lb-N)
//! lb-N:       numgen random mod N vmap { 0 : goto slot-0, …, N-1 : goto slot-(N-1) }
//! slot-i:     dnat to frontend map @slot<i>-addr4 : frontend map @slot<i>-port4
//! postrouting, nat, srcnat:
//!             mark 0x4000 (cleared), ip daddr != @pod-cidrs4: masquerade
//!             ct status dnat, ip saddr . ip daddr in @hairpin4: masquerade (a pod that reached itself)
//! prerouting, filter, -110 (before DNAT):
//!             ct state established,related: accept
//!             frontend in @firewall4, frontend . ip saddr not in @firewall-allow4: drop
//! input/forward/output, filter:
//!             ct state established,related: accept
//!             frontend vmap @blocked4: goto reject (no endpoint) or drop (Local, none on this node)
//! ```
//!
//! Every lookup is a hash lookup: the work per packet does not grow with the number of
//! services. A frontend is only elements: a key in `services`, its backend in slot maps `0..N`,
//! and its flags (`masquerade`, `firewall`, `blocked`); the chains `lb-N` and `slot-i` are
//! shared by every frontend and created when the first frontend needs them. So a change of one
//! service is one transaction of that service's elements, the table never holds a chain or a
//! rule per service, and 10 000 services load as a few large element lists.
//!
//! The slot maps hold address and port separately (a `dnat` to a concatenated address . port
//! map would need nft's `typeof` maps, which nft 1.0's JSON cannot create); both lookups use the
//! same key in the same packet, so they always agree.
//!
//! A change is atomic for packets (an nftables transaction): a connection starting during it
//! sees the old backends or the new ones, never none. Established connections keep their
//! conntrack entry and never pass these chains again; a UDP flow to a removed backend has its
//! conntrack entries deleted after the transaction (see [`crate::conntrack`]), so that its
//! client's next packet is balanced anew.
//!
//! Here: what a frontend is programmed as, and the transactions. [`table`]: the layout, every
//! chain, rule and element as nft's JSON. `diff`: the element changes of one frontend and the
//! structure a transaction needs. `readback`: adoption at start, `gannetd status`, and the
//! periodic check and rebuild of the table's structure.

mod diff;
mod readback;
pub mod table;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use gannet_common::PROTO_UDP;
use gannet_k8s::{Backend, DesiredState, Frontend, Protocol, ServicePort};
use ipnet::IpNet;
use serde_json::{Value, json};
use tracing::{debug, error, info, warn};

use super::reconcile::{ApplyReport, packet_backends};
use diff::Next;
use readback::{list, parse_frontend, split_element};
pub use table::TABLE;
use table::{Block, Elements, Family, names};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables table inet {TABLE}: {0}")]
    Nft(String),
    #[error("nftables table inet {TABLE}: cannot read it back: {0}")]
    Read(String),
}

/// What the table holds for one frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// Its backends, in slot order; empty when it has none to send to.
    pub backends: Vec<Backend>,
    /// What happens to its packets when it has no backend.
    pub block: Option<Block>,
    /// Reachable from outside the node.
    pub external: bool,
    /// External clients are masqueraded when the backend is not on this node.
    pub masquerade: bool,
    /// `loadBalancerSourceRanges`: the clients it accepts (empty: every client).
    pub ranges: Vec<IpNet>,
    /// `sessionAffinity: ClientIP`: its timeout (seconds).
    pub affinity: Option<u32>,
}

impl Programmed {
    /// What a frontend of the desired state is programmed as on `node`: external frontends
    /// balance to [`packet_backends`] (with `externalTrafficPolicy: Local` this node's only;
    /// dropping when there are none here but elsewhere), cluster frontends to every backend.
    #[must_use]
    pub fn desired(frontend: &Frontend, spec: &ServicePort, node: &str) -> Programmed {
        let family = Family::of(frontend.ip);
        let same_family = |b: &Backend| Family::of(b.ip) == family;
        let (backends, local_only) = match &spec.external {
            None => (spec.backends.clone(), false),
            Some(external) => (packet_backends(spec, node), external.local_only),
        };
        let mut backends: Vec<Backend> = backends.into_iter().filter(same_family).collect();
        backends.sort_unstable();
        backends.dedup();
        let block = backends.is_empty().then(|| {
            if local_only && spec.backends.iter().any(same_family) {
                Block::Drop
            } else {
                Block::Reject
            }
        });
        Programmed {
            backends,
            block,
            external: spec.external.is_some(),
            masquerade: spec.external.as_ref().is_some_and(|e| !e.local_only),
            ranges: spec
                .external
                .as_ref()
                .map(|e| e.source_ranges.clone())
                .unwrap_or_default(),
            affinity: spec.session_affinity_timeout,
        }
    }

    /// `self` with its backends in the slots `old` had them in where it can: a backend that
    /// stays keeps its slot (when the slot still exists), new ones fill the gaps. Only the slots
    /// that change get new elements.
    #[must_use]
    fn arranged_after(mut self, old: Option<&Programmed>) -> Programmed {
        let Some(old) = old else {
            return self;
        };
        let n = self.backends.len();
        let mut slots: Vec<Option<Backend>> = vec![None; n];
        let mut placed = BTreeSet::new();
        for (i, b) in old.backends.iter().enumerate().take(n) {
            if self.backends.binary_search(b).is_ok() {
                slots[i] = Some(*b);
                placed.insert(*b);
            }
        }
        let mut rest = self.backends.iter().filter(|b| !placed.contains(*b));
        for slot in &mut slots {
            if slot.is_none() {
                *slot = rest.next().copied();
            }
        }
        self.backends = slots.into_iter().flatten().collect();
        self
    }
}

/// The nftables data plane: what the table holds, and the element changes that bring it to a
/// desired state.
pub struct NftDataPlane {
    node_name: String,
    programmed: BTreeMap<Frontend, Programmed>,
    /// Slots whose maps and chain exist (`slot-0..slots`).
    slots: usize,
    /// `lb-N` chains that exist.
    lb_chains: BTreeSet<usize>,
    /// `aff-N` chains that exist.
    aff_chains: BTreeSet<usize>,
    /// Affinity timeouts that have their sets and rules.
    timeouts: BTreeSet<u32>,
    /// Backend addresses in the hairpin set, with how many frontend slots use them.
    hairpin: BTreeMap<IpAddr, usize>,
    pod_cidrs: Vec<IpNet>,
}

/// Runs one transaction.
fn apply(commands: Vec<Value>) -> Result<(), NftError> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut payload = json!({});
    payload["nftables"] = Value::Array(commands);
    let payload = payload.to_string();
    nftables::helper::apply_ruleset_raw(&payload, None::<&str>, std::iter::empty::<&str>())
        .map(drop)
        .map_err(|e| NftError::Nft(crate::masquerade::describe(&e)))
}

/// Removes the table; returns whether it existed.
///
/// # Errors
/// When `nft` cannot be run or fails for another reason than the table's absence.
pub fn remove() -> Result<bool, NftError> {
    if list()?.is_none() {
        return Ok(false);
    }
    apply(vec![json!({ "delete": { "table": table::table() } })])?;
    Ok(true)
}

impl NftDataPlane {
    /// What the table holds, by frontend.
    #[must_use]
    pub fn frontends(&self) -> &BTreeMap<Frontend, Programmed> {
        &self.programmed
    }

    /// This node's pod CIDRs: backends in them are local. One transaction.
    pub fn set_pod_cidrs(&mut self, cidrs: &[IpNet]) {
        let mut wanted: Vec<IpNet> = cidrs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted == self.pod_cidrs {
            return;
        }
        let mut elements = Elements::default();
        for net in &self.pod_cidrs {
            if !wanted.contains(net) {
                elements.delete(pod_cidr_set(net), table::cidr(net));
            }
        }
        for net in &wanted {
            if !self.pod_cidrs.contains(net) {
                elements.add(pod_cidr_set(net), table::cidr(net));
            }
        }
        match apply(elements.commands()) {
            Ok(()) => {
                info!(pod_cidrs = ?wanted, "nftables data plane: this node's pod CIDRs");
                self.pod_cidrs = wanted;
            }
            Err(e) => error!(error = %e, "cannot update the pod CIDRs of the nftables data plane"),
        }
    }

    /// Brings the table to `desired` (every frontend, expanded). With `prune`, frontends not in
    /// it are removed; without, they stay (a source that may be incomplete).
    pub fn apply(&mut self, desired: &DesiredState, prune: bool) -> ApplyReport {
        let mut changes: BTreeMap<Frontend, Option<Programmed>> = BTreeMap::new();
        let mut report = ApplyReport::default();
        for (frontend, spec) in &desired.services {
            let want = Programmed::desired(frontend, spec, &self.node_name);
            if self.programmed.get(frontend) == Some(&want)
                || self
                    .programmed
                    .get(frontend)
                    .is_some_and(|p| same_but_order(p, &want))
            {
                report.unchanged += 1;
            } else {
                changes.insert(*frontend, Some(want));
            }
        }
        if prune {
            for frontend in self.programmed.keys() {
                if !desired.services.contains_key(frontend) {
                    changes.insert(*frontend, None);
                }
            }
        }
        let names = desired
            .services
            .iter()
            .map(|(f, s)| (*f, format!("{}/{}", s.namespace, s.name)))
            .collect();
        self.program(changes, &names, &mut report);
        report
    }

    /// Applies changes of frontends (`None`: removed), as one transaction.
    pub fn apply_changes(
        &mut self,
        changes: &BTreeMap<Frontend, Option<ServicePort>>,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut wanted = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (frontend, change) in changes {
            match change {
                Some(spec) => {
                    names.insert(*frontend, format!("{}/{}", spec.namespace, spec.name));
                    let want = Programmed::desired(frontend, spec, &self.node_name);
                    if self
                        .programmed
                        .get(frontend)
                        .is_some_and(|p| *p == want || same_but_order(p, &want))
                    {
                        report.unchanged += 1;
                    } else {
                        wanted.insert(*frontend, Some(want));
                    }
                }
                None => {
                    if self.programmed.contains_key(frontend) {
                        wanted.insert(*frontend, None);
                    }
                }
            }
        }
        self.program(wanted, &names, &mut report);
        report
    }

    /// Programs `changes` in one transaction; if the kernel refuses it, frontend by frontend,
    /// so that one bad frontend is logged (with its service) and the others take effect.
    fn program(
        &mut self,
        changes: BTreeMap<Frontend, Option<Programmed>>,
        services: &BTreeMap<Frontend, String>,
        report: &mut ApplyReport,
    ) {
        if changes.is_empty() {
            return;
        }
        let mut next = Next::of(self);
        let mut elements = Elements::default();
        let mut arranged = BTreeMap::new();
        for (frontend, want) in &changes {
            let want = want
                .clone()
                .map(|w| w.arranged_after(self.programmed.get(frontend)));
            next.diff(
                frontend,
                self.programmed.get(frontend),
                want.as_ref(),
                &mut elements,
            );
            arranged.insert(*frontend, want);
        }
        let count = elements.len();
        let stale = self.stale_udp_flows(&arranged);
        let forgotten = self.moved_affinity_slots(&arranged);
        let mut commands = next.structure(self);
        commands.extend(next.hairpin_commands(self));
        commands.extend(elements.commands());
        match apply(commands) {
            Ok(()) => {
                debug!(
                    frontends = changes.len(),
                    elements = count,
                    "nftables transaction"
                );
                next.commit(self);
                for (frontend, want) in arranged {
                    self.record(frontend, want, report);
                }
                forget_udp_flows(&stale);
                forget_affinity(&forgotten);
            }
            Err(e) if changes.len() > 1 => {
                warn!(error = %e, frontends = changes.len(),
                    "nftables refused a transaction; programming its frontends one by one");
                for (frontend, want) in arranged {
                    let one = BTreeMap::from([(frontend, want)]);
                    self.program(one, services, report);
                }
            }
            Err(e) => {
                let (frontend, _) = changes.into_iter().next().expect("one change");
                let service = services.get(&frontend).map_or("?", String::as_str);
                error!(%frontend, service, error = %e,
                    "nftables refused the frontend; it keeps what it had");
                report.failed.push((frontend, e.to_string()));
            }
        }
    }

    /// UDP frontends' backends that `changes` take away (or whose frontend goes): their clients'
    /// conntrack entries would keep sending to them.
    fn stale_udp_flows(
        &self,
        changes: &BTreeMap<Frontend, Option<Programmed>>,
    ) -> Vec<(Frontend, Backend)> {
        let mut out = Vec::new();
        for (frontend, want) in changes {
            if frontend.protocol != Protocol::Udp {
                continue;
            }
            let Some(old) = self.programmed.get(frontend) else {
                continue;
            };
            for b in old.backends.iter().filter(|b| b.port != 0) {
                if !want.as_ref().is_some_and(|w| w.backends.contains(b)) {
                    out.push((*frontend, *b));
                }
            }
        }
        out
    }

    /// Frontends with affinity whose slots change: the clients those slots remember are to be
    /// balanced anew (by slot set name, the frontends).
    fn moved_affinity_slots(
        &self,
        changes: &BTreeMap<Frontend, Option<Programmed>>,
    ) -> BTreeMap<String, Vec<Frontend>> {
        let mut out: BTreeMap<String, Vec<Frontend>> = BTreeMap::new();
        for (frontend, want) in changes {
            let Some(old) = self
                .programmed
                .get(frontend)
                .filter(|o| o.affinity.is_some())
            else {
                continue;
            };
            let new = want.as_ref().map_or(&[][..], |w| &w.backends[..]);
            let s = Family::of(frontend.ip).suffix();
            for (i, b) in old.backends.iter().enumerate() {
                if new.get(i) != Some(b) || want.as_ref().is_none_or(|w| w.affinity.is_none()) {
                    out.entry(names::affinity_slot(i, s))
                        .or_default()
                        .push(*frontend);
                }
            }
        }
        out
    }

    fn record(&mut self, frontend: Frontend, want: Option<Programmed>, report: &mut ApplyReport) {
        match (self.programmed.contains_key(&frontend), want) {
            (true, Some(w)) => {
                report.updated += 1;
                self.programmed.insert(frontend, w);
            }
            (false, Some(w)) => {
                report.added += 1;
                self.programmed.insert(frontend, w);
            }
            (true, None) => {
                report.removed += 1;
                self.programmed.remove(&frontend);
            }
            (false, None) => {}
        }
    }
}

/// Deletes the conntrack entries of UDP flows to backends a frontend no longer has (after the
/// transaction: their next packet is balanced anew), as kube-proxy does.
fn forget_udp_flows(stale: &[(Frontend, Backend)]) {
    for (frontend, backend) in stale {
        let to = SocketAddr::new(frontend.ip, frontend.port);
        match crate::conntrack::delete_flows(PROTO_UDP, to, socket(backend)) {
            Ok(0) => {}
            Ok(deleted) => {
                info!(%frontend, %backend, deleted, "forgot the UDP flows of a removed backend");
            }
            Err(error) => {
                warn!(%frontend, %backend, %error, "cannot delete the UDP flows of a removed backend");
            }
        }
    }
}

/// Deletes the clients that affinity slot sets remember for frontends whose slot changed (after
/// the transaction; until then such a client goes to whatever its slot holds, or, when it holds
/// nothing, is balanced anew). Best effort: an element may expire meanwhile.
fn forget_affinity(slots: &BTreeMap<String, Vec<Frontend>>) {
    for (set, frontends) in slots {
        let listing = match nftables::helper::get_current_ruleset_raw(
            None::<&str>,
            ["-j", "list", "set", "inet", TABLE, set.as_str()],
        ) {
            Ok(text) => serde_json::from_str::<Value>(&text).unwrap_or_default(),
            Err(e) => {
                warn!(set, error = %crate::masquerade::describe(&e), "cannot read an affinity set");
                continue;
            }
        };
        let mut elements = Elements::default();
        let items = listing["nftables"].as_array().cloned().unwrap_or_default();
        for item in &items {
            for elem in item["set"]["elem"].as_array().into_iter().flatten() {
                let (key, _) = split_element(elem);
                if parse_frontend(&key).is_some_and(|f| frontends.contains(&f)) {
                    elements.delete(set.clone(), key);
                }
            }
        }
        let count = elements.len();
        if count == 0 {
            continue;
        }
        match apply(elements.commands()) {
            Ok(()) => debug!(set, clients = count, "affinity of moved slots forgotten"),
            Err(e) => debug!(set, error = %e, "affinity of moved slots not forgotten (expired?)"),
        }
    }
}

/// The same backends (in another slot order) and the same flags: nothing to change.
fn same_but_order(a: &Programmed, b: &Programmed) -> bool {
    let mut x = a.backends.clone();
    x.sort_unstable();
    x == b.backends
        && a.block == b.block
        && a.external == b.external
        && a.masquerade == b.masquerade
        && a.ranges == b.ranges
        && a.affinity == b.affinity
}

const REJECT_CHAIN_NAME: &str = table::REJECT_CHAIN;

fn pod_cidr_set(net: &IpNet) -> String {
    let family = match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    };
    format!("{}{}", names::POD_CIDRS, family.suffix())
}

/// The backend a UDP flow of `frontend` was translated to, as a socket address.
#[must_use]
pub fn socket(backend: &Backend) -> SocketAddr {
    SocketAddr::new(backend.ip, backend.port)
}

#[cfg(test)]
mod tests;
