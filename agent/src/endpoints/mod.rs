//! Pods of this node, as gannet-cni registers them: the CNI socket server and the registry of
//! endpoints, persisted under the state directory so a restarted gannetd knows them again.
//!
//! Requests from the socket are handed to the agent's main loop (which owns the data plane)
//! through a channel and answered when it has acted on them.

use std::{
    collections::BTreeMap,
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use gannet_cni::agent_api::{self, Request, RequestBody, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::datapath::pods::{Endpoint, PodFastPath};

mod socket;
mod store;

pub use socket::{IDLE_TIMEOUT, agent_running, serve};

/// File name of the CNI socket in the state directory.
pub const SOCKET: &str = "cni.sock";
/// File name of the endpoint registry in the state directory.
pub const REGISTRY: &str = "endpoints.json";

/// How often the running agent looks for endpoints whose host veth is gone.
pub const RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// One request from the socket, with the way back.
pub type Call = (Request, oneshot::Sender<Response>);

/// A registered endpoint, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub host_if_name: String,
    pub host_if_index: u32,
    pub ips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// A pod whose network a request changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodChange {
    /// `namespace/name`, or `name` when the runtime gave no namespace.
    pub pod: String,
    /// Its addresses; empty when its endpoint went away.
    pub ips: Vec<IpAddr>,
}

/// What a reconcile removed.
#[derive(Debug, Default)]
pub struct Vanished {
    /// Endpoints removed.
    pub endpoints: usize,
    /// Their pods (those registered with a pod name), with no addresses.
    pub pods: Vec<PodChange>,
}

/// What a request does, for metrics: `register`, `unregister`, or `None` (a status check).
#[must_use]
pub fn operation(request: &Request) -> Option<&'static str> {
    match request.body {
        RequestBody::Register { .. } => Some("register"),
        RequestBody::Unregister { .. } => Some("unregister"),
        RequestBody::Status | RequestBody::Check { .. } => None,
    }
}

/// Endpoints by `network/containerId/ifName`.
pub struct Registry {
    path: PathBuf,
    records: BTreeMap<String, Record>,
    /// Whether a registration's host interface must be the attachment's veth (always, but in
    /// the unit tests of the rest of the checks).
    check_interfaces: bool,
}

impl Registry {
    /// Reads the registry and drops records whose host interface is gone (the pod went away
    /// while gannetd was down), with their fast path. An empty or corrupt file does not stop
    /// gannetd: it is moved aside (`endpoints.json.corrupt`) and the registry is rebuilt from
    /// the pod veths gannet-cni made and the addresses pinned for them (the pod names are lost
    /// until the pods register again), loudly. An absent file is rebuilt the same way, quietly
    /// when there is nothing to rebuild.
    pub fn load(state_dir: &Path, fast_path: Option<&mut PodFastPath>) -> io::Result<Registry> {
        let path = state_dir.join(REGISTRY);
        let (records, rebuilt) = match store::read(&path)? {
            store::Read::Records(records) => (records, None),
            store::Read::Absent => (store::rebuild(fast_path.as_deref())?, Some(None)),
            store::Read::Corrupt(reason) => {
                let aside = store::set_aside(&path);
                (
                    store::rebuild(fast_path.as_deref())?,
                    Some(Some((reason, aside))),
                )
            }
        };
        let mut registry = Registry {
            path,
            records,
            check_interfaces: true,
        };
        let dirty = rebuilt.is_some() && !registry.records.is_empty();
        match rebuilt {
            Some(Some((reason, aside))) => error!(
                file = %registry.path.display(),
                reason,
                kept_as = aside,
                endpoints = registry.records.len(),
                rebuilt = %crate::logging::list(&registry.records.keys().collect::<Vec<_>>()),
                "the endpoint registry was empty or corrupt: rebuilt it from the pod veths and \
                 the pinned fast path; pod names come back when the pods register again"
            ),
            Some(None) if !registry.records.is_empty() => warn!(
                file = %registry.path.display(),
                endpoints = registry.records.len(),
                rebuilt = %crate::logging::list(&registry.records.keys().collect::<Vec<_>>()),
                "the endpoint registry was missing: rebuilt it from the pod veths"
            ),
            _ => {}
        }
        let before = registry.records.len();
        if let Some(fast_path) = fast_path.as_deref() {
            // Not in the fast path (its maps were made anew): the pod registers again.
            let live = fast_path.endpoints();
            registry
                .records
                .retain(|_, r| live.contains_key(&r.host_if_index));
        }
        let gone = registry.reconcile(fast_path);
        if (dirty || registry.records.len() + gone.endpoints != before) && gone.endpoints == 0 {
            registry.save()?;
        }
        if !registry.records.is_empty() {
            info!(endpoints = registry.records.len(), "known endpoints");
        }
        Ok(registry)
    }

    fn save(&self) -> io::Result<()> {
        store::write(&self.path, &self.records)
    }

    /// Removes the endpoints whose host veth is gone (no interface of that index and name any
    /// more: the pod was deleted without a DEL reaching gannetd), with their fast path, and pod
    /// links pinned for interfaces that are gone. Each removal is logged.
    pub fn reconcile(&mut self, mut fast_path: Option<&mut PodFastPath>) -> Vanished {
        let gone: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| {
                crate::sys::ifname(r.host_if_index).ok().as_deref() != Some(&r.host_if_name)
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut vanished = Vanished::default();
        for key in gone {
            let Some(record) = self.records.remove(&key) else {
                continue;
            };
            if let Some(fast_path) = fast_path.as_deref_mut()
                && let Err(e) = fast_path.remove(record.host_if_index)
            {
                warn!(endpoint = %key, error = %e, "removing the fast path of a vanished endpoint");
            }
            warn!(
                endpoint = %key,
                pod = record.pod.as_deref(),
                host_if = %record.host_if_name,
                ifindex = record.host_if_index,
                "endpoint removed: its host veth is gone (no DEL reached gannetd)"
            );
            vanished.endpoints += 1;
            if let Some(pod) = record.pod {
                vanished.pods.push(PodChange {
                    pod,
                    ips: Vec::new(),
                });
            }
        }
        if let Some(fast_path) = fast_path {
            let known: std::collections::BTreeSet<u32> =
                self.records.values().map(|r| r.host_if_index).collect();
            match fast_path.remove_vanished(&known) {
                Ok(swept) if !swept.is_empty() => warn!(
                    ifindexes = ?swept,
                    "removed pod links and counters of interfaces that are gone"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "sweeping the pod links of vanished interfaces"),
            }
        }
        if vanished.endpoints > 0
            && let Err(e) = self.save()
        {
            error!(file = %self.path.display(), error = %e, "saving the endpoint registry");
        }
        vanished
    }

    /// Acts on one request and says how it went, and which pod's network it changed (for the
    /// pod's status in a control plane). `pod_cidrs`: this node's pod CIDRs (empty while it has
    /// no lease, e.g. a single node from manifests): a registration's addresses must lie in them.
    pub fn handle(
        &mut self,
        request: Request,
        fast_path: Option<&mut PodFastPath>,
        pod_cidrs: &[ipnet::IpNet],
    ) -> (Response, Option<PodChange>) {
        let mut change = None;
        let response = self.act(request, fast_path, pod_cidrs, &mut change);
        if !response.ok {
            change = None;
        }
        (response, change)
    }

    /// The pods of the registered endpoints (those registered with a pod name) and their
    /// addresses.
    pub fn pods(&self) -> impl Iterator<Item = PodChange> + '_ {
        self.records.values().filter_map(|r| {
            r.pod.as_ref().map(|pod| PodChange {
                pod: pod.clone(),
                ips: r.ips.clone(),
            })
        })
    }

    fn act(
        &mut self,
        request: Request,
        fast_path: Option<&mut PodFastPath>,
        pod_cidrs: &[ipnet::IpNet],
        change: &mut Option<PodChange>,
    ) -> Response {
        if let Err(e) = request.check_version() {
            return Response::error(e);
        }
        match request.body {
            RequestBody::Status => Response::ok(),
            RequestBody::Register { endpoint } => {
                let key = endpoint.key();
                let claim = match endpoint.check() {
                    Ok(claim) => claim,
                    Err(e) => {
                        warn!(endpoint = %key, error = %e, "registration refused");
                        return Response::error(format!("endpoint {key}: {e}"));
                    }
                };
                if let Err(e) = self.validate(&key, &claim.ips, pod_cidrs) {
                    warn!(endpoint = %key, error = %e, "registration refused");
                    return Response::error(format!("endpoint {key}: {e}"));
                }
                // The fast path attaches programs to the host interface and trusts it to
                // carry only this pod, and the record is reconciled against it: it must be the
                // veth gannet-cni made for this attachment.
                if self.check_interfaces
                    && let Err(e) = check_host_interface(&endpoint)
                {
                    warn!(endpoint = %key, error = %e, "registration refused");
                    return Response::error(format!("endpoint {key}: {e}"));
                }
                self.register(&key, &endpoint, claim, fast_path, change)
            }
            RequestBody::Check {
                network,
                container_id,
                if_name,
                host_if_name,
                host_if_index,
            } => {
                let key = agent_api::attachment_key(&network, &container_id, &if_name);
                match self.records.get(&key) {
                    None => Response::error(format!("endpoint {key} is not registered")),
                    Some(r)
                        if r.host_if_index != host_if_index || r.host_if_name != host_if_name =>
                    {
                        Response::error(format!(
                            "endpoint {key} is registered on host interface {} (index {}), not {host_if_name} (index {host_if_index})",
                            r.host_if_name, r.host_if_index
                        ))
                    }
                    Some(_) => Response::ok(),
                }
            }
            RequestBody::Unregister {
                network,
                container_id,
                if_name,
            } => {
                let key = agent_api::attachment_key(&network, &container_id, &if_name);
                let Some(record) = self.records.remove(&key) else {
                    debug!(endpoint = %key, "unregister of an unknown endpoint: nothing to do");
                    return Response::ok();
                };
                if let Some(fast_path) = fast_path
                    && let Err(e) = fast_path.remove(record.host_if_index)
                {
                    return Response::error(format!("endpoint {key}: {e}"));
                }
                info!(endpoint = %key, pod = record.pod.as_deref(), "endpoint unregistered");
                *change = record.pod.map(|pod| PodChange {
                    pod,
                    ips: Vec::new(),
                });
                self.persist()
            }
        }
    }

    /// Programs and records a registration that passed the checks. A second registration of
    /// the same attachment on another veth (the pod's network was set up again) takes the old
    /// veth's links, counters and addresses away; a registration that fails half-way leaves
    /// nothing behind and the earlier one (if any) as it was.
    fn register(
        &mut self,
        key: &str,
        endpoint: &agent_api::Endpoint,
        claim: agent_api::Claim,
        mut fast_path: Option<&mut PodFastPath>,
        change: &mut Option<PodChange>,
    ) -> Response {
        let agent_api::Claim { mac, ips, pod } = claim;
        // Without a fast path (the nftables data plane) the pod's traffic takes the kernel's
        // routes: the endpoint is only recorded. `add` undoes what it did when it fails.
        let added = match fast_path.as_deref_mut() {
            Some(fast_path) => fast_path.add(&Endpoint {
                host_ifname: endpoint.host_if_name.clone(),
                mac,
                ips: ips.clone(),
            }),
            None => Ok(endpoint.host_if_index),
        };
        let ifindex = match added {
            Ok(ifindex) => ifindex,
            Err(e) => {
                warn!(endpoint = %key, error = %e, "registration failed");
                return Response::error(format!("endpoint {key}: {e}"));
            }
        };
        let record = Record {
            host_if_name: endpoint.host_if_name.clone(),
            host_if_index: ifindex,
            ips: ips.clone(),
            pod: pod.clone(),
        };
        let previous = self.records.insert(key.to_owned(), record);
        if let Err(e) = self.save() {
            // Not recorded: undo, so that nothing of this registration stays.
            match &previous {
                Some(previous) => self.records.insert(key.to_owned(), previous.clone()),
                None => self.records.remove(key),
            };
            if let Some(fast_path) = fast_path.as_deref_mut()
                && previous.as_ref().is_none_or(|p| p.host_if_index != ifindex)
                && let Err(e) = fast_path.remove(ifindex)
            {
                warn!(endpoint = %key, error = %e, "undoing a failed registration");
            }
            warn!(endpoint = %key, error = %e, "registration failed");
            return Response::error(format!("saving {}: {e}", self.path.display()));
        }
        if let Some(previous) = previous
            && previous.host_if_index != ifindex
        {
            if let Some(fast_path) = fast_path
                && let Err(e) = fast_path.remove(previous.host_if_index)
            {
                warn!(endpoint = %key, ifindex = previous.host_if_index, error = %e, "removing the replaced veth's fast path");
            }
            info!(
                endpoint = %key,
                old_host_if = %previous.host_if_name,
                old_ifindex = previous.host_if_index,
                "endpoint registered again on a new veth: the old one's links and counters are removed"
            );
        }
        info!(endpoint = %key, pod = pod.as_deref(), ips = %crate::logging::list(&ips), host_if = %endpoint.host_if_name, ifindex, "endpoint registered");
        *change = pod.map(|pod| PodChange { pod, ips });
        Response::ok()
    }

    /// What a registration that passed [`agent_api::Endpoint::check`] may claim on this node:
    /// addresses in this node's pod CIDRs (when it has a lease) that no other registered
    /// endpoint has. A second registration of the same attachment may keep its own addresses.
    fn validate(
        &self,
        key: &str,
        ips: &[IpAddr],
        pod_cidrs: &[ipnet::IpNet],
    ) -> Result<(), String> {
        for ip in ips {
            if !pod_cidrs.is_empty() && !pod_cidrs.iter().any(|net| net.contains(ip)) {
                let cidrs: Vec<String> = pod_cidrs.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "{ip} is outside this node's pod CIDRs ({})",
                    cidrs.join(", ")
                ));
            }
            if let Some((other, _)) = self
                .records
                .iter()
                .find(|(k, r)| k.as_str() != key && r.ips.contains(ip))
            {
                return Err(format!("{ip} belongs to endpoint {other}"));
            }
        }
        Ok(())
    }

    fn persist(&self) -> Response {
        match self.save() {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(format!("saving {}: {e}", self.path.display())),
        }
    }

    /// Registered endpoints, for status and tests.
    pub fn records(&self) -> &BTreeMap<String, Record> {
        &self.records
    }
}

/// Removes the socket, the registry and the subnet file from the state directory (and the directory, when that
/// leaves it empty). Returns how many files went.
pub fn cleanup(state_dir: &Path) -> Result<usize, crate::datapath::DataPathError> {
    let mut removed = 0;
    for name in [
        SOCKET,
        REGISTRY,
        "endpoints.json.tmp",
        "endpoints.json.corrupt",
        crate::config::SUBNET_FILE,
    ] {
        let path = state_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::datapath::io_err(&path)(e)),
        }
    }
    // Only if empty: the directory may hold other components' files.
    let _ = fs::remove_dir(state_dir);
    Ok(removed)
}

/// The registration's host interface is a veth of this namespace that gannet-cni made for this
/// attachment: the name it derives from the attachment, the index the plugin sent, and the
/// alias naming the attachment.
fn check_host_interface(endpoint: &agent_api::Endpoint) -> Result<(), String> {
    let attachment = gannet_cni::config::Attachment {
        container_id: endpoint.container_id.clone(),
        ifname: endpoint.if_name.clone(),
    };
    let name = gannet_cni::network::host_if_name(&endpoint.network, &attachment);
    if endpoint.host_if_name != name {
        return Err(format!(
            "host interface {:?} is not the one gannet-cni makes for this attachment ({name})",
            endpoint.host_if_name
        ));
    }
    let mut netlink = gannet_cni::netlink::Netlink::open()
        .map_err(|e| format!("looking up host interface {name}: {e}"))?;
    let link = netlink
        .link_by_name(&name)
        .map_err(|e| format!("looking up host interface {name}: {e}"))?
        .ok_or_else(|| format!("host interface {name} does not exist"))?;
    if link.kind.as_deref() != Some("veth") {
        return Err(format!("host interface {name} is not a veth"));
    }
    if link.index != endpoint.host_if_index {
        return Err(format!(
            "host interface {name} has index {}, not {} as sent",
            link.index, endpoint.host_if_index
        ));
    }
    let alias = gannet_cni::network::alias(&endpoint.network, &attachment);
    if link.alias.as_deref() != Some(alias.as_str()) {
        return Err(format!(
            "host interface {name} does not carry the alias naming this attachment ({alias})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
