//! Reading the table back: adoption at start, `gannetd status`, and the periodic check that
//! the table still has its structure (and its rebuild when not).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use gannet_k8s::{Backend, Frontend, Protocol};
use ipnet::IpNet;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::{
    NftDataPlane, NftError, REJECT_CHAIN_NAME, TABLE, apply,
    table::{self, Block, Family, names},
};
use crate::datapath::reconcile::ApplyReport;

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

/// The table as nft lists it, `None` when there is none.
pub(super) fn list() -> Result<Option<Value>, NftError> {
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
}

/// A set element as nft lists it: `key` alone, or `[key, value]` for a map.
pub(super) fn split_element(elem: &Value) -> (Value, Value) {
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
pub(super) fn parse_frontend(key: &Value) -> Option<Frontend> {
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
