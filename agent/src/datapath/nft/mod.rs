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

/// The chains every table of this layout has, each with rules.
const BASE_CHAINS: [&str; 9] = [
    "services",
    REJECT_CHAIN_NAME,
    "nat-prerouting",
    "nat-output",
    "nat-postrouting",
    "firewall",
    "filter-input",
    "filter-forward",
    "filter-output",
];

/// The sets and maps every table of this layout has, per family (suffix `4`, `6`).
const SETS: [&str; 9] = [
    names::SERVICES,
    names::BLOCKED,
    names::LB,
    names::MASQUERADE,
    names::EXTERNAL,
    names::FIREWALL,
    names::FIREWALL_ALLOW,
    names::HAIRPIN,
    names::POD_CIDRS,
];

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

/// The table as nft lists it, `None` when there is none.
fn list() -> Result<Option<Value>, NftError> {
    list_with(&["-j", "list", "table", "inet", TABLE])
}

/// The chains, sets and maps of every `inet` table, without rules or elements: a few
/// milliseconds at any size (listing a table or any chain with rules makes nft fetch every
/// element of every set first: seconds at 10 000 services). `None` when the table is gone.
fn list_structure() -> Result<Option<Value>, NftError> {
    let mut items = Vec::new();
    for args in [
        &["-j", "list", "chains", "inet"][..],
        &["-t", "-j", "list", "sets", "inet"],
        &["-t", "-j", "list", "maps", "inet"],
    ] {
        let Some(listing) = list_with(args)? else {
            return Ok(None);
        };
        items.extend(
            listing["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|item| {
                    ["chain", "set", "map"]
                        .iter()
                        .any(|kind| item[*kind]["table"] == TABLE)
                })
                .cloned(),
        );
    }
    Ok((!items.is_empty()).then(|| json!({ "nftables": items })))
}

fn list_with(args: &[&str]) -> Result<Option<Value>, NftError> {
    match nftables::helper::get_current_ruleset_raw(None::<&str>, args.iter().copied()) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| NftError::Read(e.to_string())),
        Err(nftables::helper::NftablesError::NftFailed { .. }) => Ok(None),
        // No nft on this machine: no table either.
        Err(nftables::helper::NftablesError::NftExecution { inner, .. })
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(NftError::Nft(crate::masquerade::describe(&e))),
    }
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
    /// Takes over the table a previous gannetd left (its elements are what is programmed: no
    /// flush, no reload; connections keep flowing), or creates it.
    ///
    /// # Errors
    /// When `nft` cannot be run, or the table cannot be created or read.
    pub fn adopt(node_name: &str) -> Result<NftDataPlane, NftError> {
        let mut this = NftDataPlane::adopt_empty(node_name);
        match list()? {
            Some(listing) if this.read_back(&listing) => {
                info!(
                    frontends = this.programmed.len(),
                    slots = this.slots,
                    "adopted the nftables table inet {TABLE}"
                );
                return Ok(this);
            }
            Some(_) => {
                warn!("the nftables table inet {TABLE} is not gannet's layout: replacing it");
                let mut commands = vec![json!({ "delete": { "table": table::table() } })];
                commands.extend(table::skeleton());
                apply(commands)?;
            }
            None => apply(table::skeleton())?,
        }
        info!("created the nftables table inet {TABLE}");
        Ok(NftDataPlane::adopt_empty(node_name))
    }

    /// The table as it is, without changing anything (`gannetd status`); `None` when there is
    /// none or it is not gannet's layout.
    ///
    /// # Errors
    /// When `nft` cannot be run.
    pub fn read() -> Result<Option<NftDataPlane>, NftError> {
        let mut this = NftDataPlane::adopt_empty("");
        Ok(list()?.filter(|l| this.read_back(l)).map(|_| this))
    }

    fn adopt_empty(node_name: &str) -> NftDataPlane {
        NftDataPlane {
            node_name: node_name.to_owned(),
            programmed: BTreeMap::new(),
            slots: 0,
            lb_chains: BTreeSet::new(),
            aff_chains: BTreeSet::new(),
            timeouts: BTreeSet::new(),
            hairpin: BTreeMap::new(),
            pod_cidrs: Vec::new(),
        }
    }

    /// Checks that the table still has the structure this instance programmed (its chains, sets
    /// and maps) and rebuilds it whole when not: someone ran `nft flush ruleset`, deleted the
    /// table, or removed one of its chains or sets. Rules or elements removed from chains and
    /// sets that stay (`nft flush table`) are not detected: reading them back costs seconds at
    /// 10 000 services. Returns the report of the rebuild, `None` when the table was intact (or
    /// could not be read: logged).
    pub fn repair(&mut self) -> Option<ApplyReport> {
        let listing = match list_structure() {
            Ok(listing) => listing,
            Err(error) => {
                warn!(%error, "cannot check the nftables table inet {TABLE}");
                return None;
            }
        };
        if listing.as_ref().is_some_and(|l| self.intact(l)) {
            return None;
        }
        warn!(
            frontends = self.programmed.len(),
            "the nftables table inet {TABLE} was removed or changed outside gannetd: \
             programming it again"
        );
        let mut commands = Vec::new();
        if listing.is_some() {
            commands.push(json!({ "delete": { "table": table::table() } }));
        }
        commands.extend(table::skeleton());
        if let Err(error) = apply(commands) {
            error!(%error, "cannot create the nftables table inet {TABLE} again");
            return None;
        }
        let programmed = std::mem::take(&mut self.programmed);
        let pod_cidrs = std::mem::take(&mut self.pod_cidrs);
        *self = NftDataPlane::adopt_empty(&self.node_name);
        self.set_pod_cidrs(&pod_cidrs);
        let changes = programmed.into_iter().map(|(f, p)| (f, Some(p))).collect();
        let mut report = ApplyReport::default();
        self.program(changes, &BTreeMap::new(), &mut report);
        Some(report)
    }

    /// Whether a structure listing holds every chain, set and map this instance created.
    fn intact(&self, listing: &Value) -> bool {
        let mut present = BTreeSet::new();
        let mut sets = BTreeSet::new();
        for item in listing["nftables"].as_array().into_iter().flatten() {
            if let Some(name) = item["chain"]["name"].as_str() {
                present.insert(name.to_owned());
            }
            for kind in ["set", "map"] {
                if let Some(name) = item[kind]["name"].as_str() {
                    sets.insert(name.to_owned());
                }
            }
        }
        let mut chains: Vec<String> = BASE_CHAINS.iter().map(|c| (*c).to_owned()).collect();
        chains.extend((0..self.slots).map(names::slot_chain));
        chains.extend((0..self.slots).map(names::aff_slot_chain));
        chains.extend(self.lb_chains.iter().map(|n| names::lb_chain(*n)));
        chains.extend(self.aff_chains.iter().map(|n| names::aff_chain(*n)));
        let mut wanted_sets: Vec<String> = Vec::new();
        for family in Family::BOTH {
            let s = family.suffix();
            wanted_sets.extend(SETS.iter().map(|set| format!("{set}{s}")));
            for i in 0..self.slots {
                wanted_sets.push(names::slot_addr(i, s));
                wanted_sets.push(names::slot_port(i, s));
                wanted_sets.push(names::affinity_slot(i, s));
            }
            for seconds in &self.timeouts {
                wanted_sets.push(names::affinity_frontends(*seconds, s));
            }
        }
        chains.iter().all(|c| present.contains(c))
            && wanted_sets.iter().all(|set| sets.contains(set))
    }

    /// Fills the state from a listing of the table; `false` when it is not the layout this
    /// gannetd writes (a base chain or set missing).
    fn read_back(&mut self, listing: &Value) -> bool {
        let Some(items) = listing["nftables"].as_array() else {
            return false;
        };
        let mut chains = BTreeSet::new();
        let mut sets: BTreeMap<String, &Value> = BTreeMap::new();
        for item in items {
            if let Some(chain) = item.get("chain")
                && let Some(name) = chain["name"].as_str()
            {
                chains.insert(name.to_owned());
            }
            for kind in ["set", "map"] {
                if let Some(set) = item.get(kind)
                    && let Some(name) = set["name"].as_str()
                {
                    sets.insert(name.to_owned(), set);
                }
            }
        }
        if !BASE_CHAINS.iter().all(|c| chains.contains(*c))
            || !SETS.iter().all(|s| {
                Family::BOTH
                    .iter()
                    .all(|f| sets.contains_key(&format!("{s}{}", f.suffix())))
            })
        {
            return false;
        }
        while chains.contains(&names::slot_chain(self.slots))
            && Family::BOTH.iter().all(|f| {
                sets.contains_key(&names::slot_addr(self.slots, f.suffix()))
                    && sets.contains_key(&names::slot_port(self.slots, f.suffix()))
            })
        {
            self.slots += 1;
        }
        self.lb_chains = chains
            .iter()
            .filter_map(|c| c.strip_prefix("lb-")?.parse().ok())
            .filter(|n| *n <= self.slots)
            .collect();
        self.aff_chains = chains
            .iter()
            .filter_map(|c| c.strip_prefix("aff-")?.parse().ok())
            .filter(|n| *n <= self.slots && self.lb_chains.contains(n))
            .collect();
        self.timeouts = sets
            .keys()
            .filter_map(|name| names::affinity_timeout_of(name))
            .filter(|t| sets.contains_key(&names::affinity_frontends(*t, "6")))
            .collect();
        let elements = |name: String| -> Vec<(Value, Value)> {
            sets.get(&name)
                .and_then(|s| s["elem"].as_array())
                .map(|elems| elems.iter().map(split_element).collect())
                .unwrap_or_default()
        };
        for family in Family::BOTH {
            let s = family.suffix();
            for (key, verdict) in elements(format!("{}{s}", names::SERVICES)) {
                let Some(frontend) = parse_frontend(&key) else {
                    continue;
                };
                let target = verdict["goto"]["target"].as_str().unwrap_or_default();
                let n = target
                    .strip_prefix("lb-")
                    .or_else(|| target.strip_prefix("aff-"))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
                let entry = self.programmed.entry(frontend).or_default();
                entry.backends = vec![
                    Backend {
                        ip: frontend.ip,
                        port: 0
                    };
                    n
                ];
            }
            for i in 0..self.slots {
                let addrs: BTreeMap<Frontend, IpAddr> = elements(names::slot_addr(i, s))
                    .into_iter()
                    .filter_map(|(k, v)| Some((parse_frontend(&k)?, v.as_str()?.parse().ok()?)))
                    .collect();
                let ports: BTreeMap<Frontend, u16> = elements(names::slot_port(i, s))
                    .into_iter()
                    .filter_map(|(k, v)| {
                        Some((parse_frontend(&k)?, u16::try_from(v.as_u64()?).ok()?))
                    })
                    .collect();
                for (frontend, entry) in &mut self.programmed {
                    if let Some(slot) = entry.backends.get_mut(i)
                        && let (Some(ip), Some(port)) = (addrs.get(frontend), ports.get(frontend))
                    {
                        *slot = Backend {
                            ip: *ip,
                            port: *port,
                        };
                    }
                }
            }
            for (key, verdict) in elements(format!("{}{s}", names::BLOCKED)) {
                if let Some(frontend) = parse_frontend(&key) {
                    self.programmed.entry(frontend).or_default().block =
                        Some(if verdict.get("drop").is_some() {
                            Block::Drop
                        } else {
                            Block::Reject
                        });
                }
            }
            for (key, _) in elements(format!("{}{s}", names::MASQUERADE)) {
                if let Some(frontend) = parse_frontend(&key) {
                    self.programmed.entry(frontend).or_default().masquerade = true;
                }
            }
            for seconds in self.timeouts.clone() {
                for (key, _) in elements(names::affinity_frontends(seconds, s)) {
                    if let Some(frontend) = parse_frontend(&key) {
                        self.programmed.entry(frontend).or_default().affinity = Some(seconds);
                    }
                }
            }
            for (key, _) in elements(format!("{}{s}", names::EXTERNAL)) {
                if let Some(frontend) = parse_frontend(&key) {
                    self.programmed.entry(frontend).or_default().external = true;
                }
            }
            for (key, _) in elements(format!("{}{s}", names::FIREWALL_ALLOW)) {
                if let Some((frontend, net)) = parse_allow(&key) {
                    self.programmed
                        .entry(frontend)
                        .or_default()
                        .ranges
                        .push(net);
                }
            }
            for (key, _) in elements(format!("{}{s}", names::HAIRPIN)) {
                if let Some(ip) = key["concat"][0].as_str().and_then(|a| a.parse().ok()) {
                    self.hairpin.insert(ip, 0);
                }
            }
            for (key, _) in elements(format!("{}{s}", names::POD_CIDRS)) {
                if let Some(net) = parse_prefix(&key) {
                    self.pod_cidrs.push(net);
                }
            }
        }
        // A slot the table does not have keeps port 0 (no service port is 0): the frontend
        // differs from any desired state, and the next apply writes the slot.
        for entry in self.programmed.values_mut() {
            entry.ranges.sort_unstable();
            for b in &entry.backends {
                if let Some(users) = self.hairpin.get_mut(&b.ip) {
                    *users += 1;
                }
            }
        }
        self.hairpin.retain(|_, users| *users > 0);
        true
    }

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

/// What a transaction adds to the table's structure (slots, `lb-N` chains) and to the hairpin
/// set, kept apart until nft accepted it.
struct Next {
    slots: usize,
    lb_chains: BTreeSet<usize>,
    aff_chains: BTreeSet<usize>,
    timeouts: BTreeSet<u32>,
    /// Users each touched address loses and gains (only addresses of changed frontends, so a
    /// change costs its own backends, not all of the table's).
    hairpin: BTreeMap<IpAddr, (usize, usize)>,
}

impl Next {
    fn of(plane: &NftDataPlane) -> Next {
        Next {
            slots: plane.slots,
            lb_chains: plane.lb_chains.clone(),
            aff_chains: plane.aff_chains.clone(),
            timeouts: plane.timeouts.clone(),
            hairpin: BTreeMap::new(),
        }
    }

    /// The element changes from `old` to `new` of one frontend.
    fn diff(
        &mut self,
        frontend: &Frontend,
        old: Option<&Programmed>,
        new: Option<&Programmed>,
        elements: &mut Elements,
    ) {
        let family = Family::of(frontend.ip);
        let s = family.suffix();
        let key = table::frontend_key(frontend);
        let empty = Programmed::default();
        let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
        // The services map: which lb-N (aff-N with affinity); with affinity also lb-N in the
        // lb map, where a client whose slot is gone is balanced anew.
        let (n_old, n_new) = (o.backends.len(), n.backends.len());
        if n_old != n_new || o.affinity.is_some() != n.affinity.is_some() {
            let set = format!("{}{s}", names::SERVICES);
            let lb = format!("{}{s}", names::LB);
            if n_old > 0 {
                elements.delete(set.clone(), key.clone());
                if o.affinity.is_some() {
                    elements.delete(lb.clone(), key.clone());
                }
            }
            if n_new > 0 {
                self.lb_chains.insert(n_new);
                self.slots = self.slots.max(n_new);
                let verdict = if n.affinity.is_some() {
                    self.aff_chains.insert(n_new);
                    elements.add(lb, table::mapping(key.clone(), table::lb_verdict(n_new)));
                    table::aff_verdict(n_new)
                } else {
                    table::lb_verdict(n_new)
                };
                elements.add(set, table::mapping(key.clone(), verdict));
            }
        }
        if o.affinity != n.affinity {
            if let Some(seconds) = o.affinity {
                elements.delete(names::affinity_frontends(seconds, s), key.clone());
            }
            if let Some(seconds) = n.affinity {
                self.timeouts.insert(seconds);
                elements.add(names::affinity_frontends(seconds, s), key.clone());
            }
        }
        // The slots: address and port each changed only where they differ.
        for i in 0..o.backends.len().max(n.backends.len()) {
            let (was, is) = (o.backends.get(i), n.backends.get(i));
            // Port 0: a slot an adopted table did not have (see `read_back`).
            let was = was.filter(|b| b.port != 0);
            let (addr, port) = (names::slot_addr(i, s), names::slot_port(i, s));
            if was.map(|b| b.ip) != is.map(|b| b.ip) {
                if was.is_some() {
                    elements.delete(addr.clone(), key.clone());
                }
                if let Some(b) = is {
                    elements.add(
                        addr,
                        table::mapping(key.clone(), table::backend_values(b).0),
                    );
                }
            }
            if was.map(|b| b.port) != is.map(|b| b.port) {
                if was.is_some() {
                    elements.delete(port.clone(), key.clone());
                }
                if let Some(b) = is {
                    elements.add(
                        port,
                        table::mapping(key.clone(), table::backend_values(b).1),
                    );
                }
            }
        }
        for b in &o.backends {
            self.hairpin.entry(b.ip).or_default().0 += 1;
        }
        for b in &n.backends {
            self.hairpin.entry(b.ip).or_default().1 += 1;
        }
        if o.block != n.block {
            let set = format!("{}{s}", names::BLOCKED);
            if o.block.is_some() {
                elements.delete(set.clone(), key.clone());
            }
            if let Some(block) = n.block {
                elements.add(
                    set,
                    table::mapping(key.clone(), table::block_verdict(block)),
                );
            }
        }
        for (set, was, is) in [
            (names::MASQUERADE, o.masquerade, n.masquerade),
            (names::EXTERNAL, o.external, n.external),
        ] {
            let set = format!("{set}{s}");
            match (was, is) {
                (false, true) => elements.add(set, key.clone()),
                (true, false) => elements.delete(set, key.clone()),
                _ => {}
            }
        }
        if o.ranges != n.ranges {
            let fw = format!("{}{s}", names::FIREWALL);
            let allow = format!("{}{s}", names::FIREWALL_ALLOW);
            match (o.ranges.is_empty(), n.ranges.is_empty()) {
                (true, false) => elements.add(fw, key.clone()),
                (false, true) => elements.delete(fw, key.clone()),
                _ => {}
            }
            for net in o.ranges.iter().filter(|r| !n.ranges.contains(r)) {
                elements.delete(allow.clone(), table::allow_key(frontend, net));
            }
            for net in n.ranges.iter().filter(|r| !o.ranges.contains(r)) {
                elements.add(allow.clone(), table::allow_key(frontend, net));
            }
        }
    }

    /// The chains and maps the transaction needs and the table does not have yet.
    fn structure(&self, plane: &NftDataPlane) -> Vec<Value> {
        let mut out = Vec::new();
        for seconds in self.timeouts.difference(&plane.timeouts) {
            out.extend(table::affinity_timeout(*seconds, plane.slots));
        }
        for i in plane.slots..self.slots {
            out.extend(table::slot(i, &self.timeouts));
        }
        for n in self.lb_chains.difference(&plane.lb_chains) {
            out.extend(table::lb_chain(*n));
        }
        for n in self.aff_chains.difference(&plane.aff_chains) {
            out.extend(table::aff_chain(*n));
        }
        out
    }

    /// Hairpin elements for addresses that gain their first user or lose their last.
    fn hairpin_commands(&self, plane: &NftDataPlane) -> Vec<Value> {
        let mut elements = Elements::default();
        let set = |ip: &IpAddr| format!("{}{}", names::HAIRPIN, Family::of(*ip).suffix());
        for (ip, delta) in &self.hairpin {
            let had = plane.hairpin.get(ip).copied().unwrap_or(0);
            let has = users_after(had, *delta);
            if has > 0 && had == 0 {
                elements.add(set(ip), table::hairpin_key(*ip));
            } else if has == 0 && had > 0 {
                elements.delete(set(ip), table::hairpin_key(*ip));
            }
        }
        elements.commands()
    }

    fn commit(self, plane: &mut NftDataPlane) {
        plane.slots = self.slots;
        plane.lb_chains = self.lb_chains;
        plane.aff_chains = self.aff_chains;
        plane.timeouts = self.timeouts;
        for (ip, delta) in self.hairpin {
            let had = plane.hairpin.get(&ip).copied().unwrap_or(0);
            match users_after(had, delta) {
                0 => plane.hairpin.remove(&ip),
                has => plane.hairpin.insert(ip, has),
            };
        }
    }
}

/// Users of a hairpin address after a transaction that took `lost` and gave `gained`. An
/// adopted table may hold a backend without counting it (its hairpin element was missing), so
/// losses never go below zero.
fn users_after(had: usize, (lost, gained): (usize, usize)) -> usize {
    had.saturating_sub(lost) + gained
}

/// A set element as nft lists it: `key` alone, or `[key, value]` for a map.
fn split_element(elem: &Value) -> (Value, Value) {
    let unwrap = |v: &Value| {
        v.get("elem")
            .map_or_else(|| v.clone(), |e| e["val"].clone())
    };
    match elem.as_array() {
        Some(pair) if pair.len() == 2 => (unwrap(&pair[0]), pair[1].clone()),
        _ => (unwrap(elem), Value::Null),
    }
}

fn parse_protocol(v: &Value) -> Option<Protocol> {
    match v {
        Value::String(s) if s == "tcp" => Some(Protocol::Tcp),
        Value::String(s) if s == "udp" => Some(Protocol::Udp),
        Value::Number(n) if n.as_u64() == Some(6) => Some(Protocol::Tcp),
        Value::Number(n) if n.as_u64() == Some(17) => Some(Protocol::Udp),
        _ => None,
    }
}

/// `{"concat": [addr, proto, port, …]}` → the frontend.
fn parse_frontend(key: &Value) -> Option<Frontend> {
    let parts = key["concat"].as_array()?;
    Some(Frontend {
        ip: parts.first()?.as_str()?.parse().ok()?,
        protocol: parse_protocol(parts.get(1)?)?,
        port: u16::try_from(parts.get(2)?.as_u64()?).ok()?,
    })
}

fn parse_prefix(v: &Value) -> Option<IpNet> {
    if let Some(p) = v.get("prefix") {
        let addr: IpAddr = p["addr"].as_str()?.parse().ok()?;
        return IpNet::new(addr, u8::try_from(p["len"].as_u64()?).ok()?).ok();
    }
    if let Some(range) = v.get("range") {
        // nft lists a prefix that is not on its own boundary as a range.
        let lo: IpAddr = range[0].as_str()?.parse().ok()?;
        return Some(IpNet::from(lo));
    }
    let addr: IpAddr = v.as_str()?.parse().ok()?;
    Some(IpNet::from(addr))
}

/// A firewall-allow key: the frontend and the client prefix.
fn parse_allow(key: &Value) -> Option<(Frontend, IpNet)> {
    let frontend = parse_frontend(key)?;
    let net = parse_prefix(key["concat"].as_array()?.get(3)?)?;
    Some((frontend, net))
}

/// The backend a UDP flow of `frontend` was translated to, as a socket address.
#[must_use]
pub fn socket(backend: &Backend) -> SocketAddr {
    SocketAddr::new(backend.ip, backend.port)
}

#[cfg(test)]
mod tests;
