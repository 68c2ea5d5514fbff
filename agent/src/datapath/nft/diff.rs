//! The element changes that take one frontend from what the table holds to what is wanted, and
//! the structure (slot chains and maps, `lb-N`/`aff-N` chains, affinity timeouts, hairpin
//! elements) a transaction needs besides.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use gannet_k8s::Frontend;
use serde_json::Value;

use super::{
    NftDataPlane, Programmed,
    table::{self, Elements, Family, names},
};

/// What a transaction adds to the table's structure (slots, `lb-N` chains) and to the hairpin
/// set, kept apart until nft accepted it.
pub(super) struct Next {
    slots: usize,
    lb_chains: BTreeSet<usize>,
    aff_chains: BTreeSet<usize>,
    timeouts: BTreeSet<u32>,
    /// Users each touched address loses and gains (only addresses of changed frontends, so a
    /// change costs its own backends, not all of the table's).
    hairpin: BTreeMap<IpAddr, (usize, usize)>,
}

impl Next {
    pub(super) fn of(plane: &NftDataPlane) -> Next {
        Next {
            slots: plane.slots,
            lb_chains: plane.lb_chains.clone(),
            aff_chains: plane.aff_chains.clone(),
            timeouts: plane.timeouts.clone(),
            hairpin: BTreeMap::new(),
        }
    }

    /// The element changes from `old` to `new` of one frontend.
    pub(super) fn diff(
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
    pub(super) fn structure(&self, plane: &NftDataPlane) -> Vec<Value> {
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
    pub(super) fn hairpin_commands(&self, plane: &NftDataPlane) -> Vec<Value> {
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

    pub(super) fn commit(self, plane: &mut NftDataPlane) {
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
