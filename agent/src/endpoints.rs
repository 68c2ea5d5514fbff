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
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, info, warn};

use crate::datapath::pods::{Endpoint, PodFastPath};

/// File name of the CNI socket in the state directory.
pub const SOCKET: &str = "cni.sock";
/// File name of the endpoint registry in the state directory.
pub const REGISTRY: &str = "endpoints.json";

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

/// What a request does, for metrics: `register`, `unregister`, or `None` (a status check).
#[must_use]
pub fn operation(request: &Request) -> Option<&'static str> {
    match request.body {
        RequestBody::Register { .. } => Some("register"),
        RequestBody::Unregister { .. } => Some("unregister"),
        RequestBody::Status => None,
    }
}

/// Endpoints by `network/containerId/ifName`.
pub struct Registry {
    path: PathBuf,
    records: BTreeMap<String, Record>,
}

impl Registry {
    /// Reads the registry (an absent file is an empty registry) and drops records whose host
    /// interface the fast path no longer knows (the pod went away while gannetd was down).
    /// Without a fast path (the nftables data plane) every record is kept.
    pub fn load(state_dir: &Path, fast_path: Option<&PodFastPath>) -> io::Result<Registry> {
        let path = state_dir.join(REGISTRY);
        let mut records: BTreeMap<String, Record> = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let before = records.len();
        if let Some(fast_path) = fast_path {
            let live = fast_path.endpoints();
            records.retain(|_, r| live.contains_key(&r.host_if_index));
        }
        let registry = Registry { path, records };
        if registry.records.len() != before {
            registry.save()?;
        }
        if !registry.records.is_empty() {
            info!(endpoints = registry.records.len(), "known endpoints");
        }
        Ok(registry)
    }

    fn save(&self) -> io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.records).map_err(io::Error::other)?;
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, &self.path)
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
                let agent_api::Claim { mac, ips, pod } = claim;
                if let Err(e) = self.validate(&key, &ips, pod_cidrs) {
                    warn!(endpoint = %key, error = %e, "registration refused");
                    return Response::error(format!("endpoint {key}: {e}"));
                }
                // The fast path attaches programs to the host interface and trusts it to
                // carry only this pod: it must be the veth gannet-cni made for this attachment.
                if fast_path.is_some()
                    && let Err(e) = check_host_interface(&endpoint)
                {
                    warn!(endpoint = %key, error = %e, "registration refused");
                    return Response::error(format!("endpoint {key}: {e}"));
                }
                // Without a fast path (the nftables data plane) the pod's traffic takes the
                // kernel's routes: the endpoint is only recorded.
                let added = match fast_path {
                    Some(fast_path) => fast_path.add(&Endpoint {
                        host_ifname: endpoint.host_if_name.clone(),
                        mac,
                        ips: ips.clone(),
                    }),
                    None => Ok(endpoint.host_if_index),
                };
                let ifindex = match added {
                    Ok(ifindex) => ifindex,
                    Err(e) => return Response::error(format!("endpoint {key}: {e}")),
                };
                if ifindex != endpoint.host_if_index {
                    warn!(
                        endpoint = %key,
                        sent = endpoint.host_if_index,
                        found = ifindex,
                        "host interface index differs from what the plugin sent; using the kernel's"
                    );
                }
                info!(endpoint = %key, pod = pod.as_deref(), ips = %crate::logging::list(&ips), host_if = %endpoint.host_if_name, "endpoint registered");
                *change = pod.clone().map(|pod| PodChange {
                    pod,
                    ips: ips.clone(),
                });
                self.records.insert(
                    key,
                    Record {
                        host_if_name: endpoint.host_if_name,
                        host_if_index: ifindex,
                        ips,
                        pod,
                    },
                );
                self.persist()
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

/// Listens on `<state_dir>/cni.sock` (mode 0600) and forwards every request to `calls`.
pub fn serve(state_dir: &Path, calls: mpsc::Sender<Call>) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(state_dir)?;
    let path = state_dir.join(SOCKET);
    match fs::remove_file(&path) {
        Ok(()) => debug!(socket = %path.display(), "removed a stale socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, calls.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "accepting on the CNI socket");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(path)
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    // A line is read up to MAX_LINE bytes and its newline, so a client cannot make gannetd
    // buffer more than that.
    let limit = agent_api::MAX_LINE as u64 + 1;
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "reading from a CNI client");
                return;
            }
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        // The rest of an overlong line is still unread: answer, then close the connection.
        let overlong = !complete && line.len() > agent_api::MAX_LINE;
        let response = match agent_api::parse_request(&line) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    return;
                }
                rx.await
                    .unwrap_or_else(|_| Response::error("gannetd is shutting down"))
            }
            Err(e) => Response::error(e),
        };
        let Ok(mut out) = serde_json::to_vec(&response) else {
            return;
        };
        out.push(b'\n');
        if write.write_all(&out).await.is_err() || overlong {
            return;
        }
    }
}

/// Removes the socket, the registry and the subnet file from the state directory (and the directory, when that
/// leaves it empty). Returns how many files went.
pub fn cleanup(state_dir: &Path) -> Result<usize, crate::datapath::DataPathError> {
    let mut removed = 0;
    for name in [SOCKET, REGISTRY, crate::config::SUBNET_FILE] {
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

/// Whether a gannetd answers on the CNI socket of `state_dir`.
#[must_use]
pub fn agent_running(state_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(state_dir.join(SOCKET)).is_ok()
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
mod tests {
    use super::*;

    fn endpoint(container: &str, ips: &[&str], ns: &str, name: &str) -> agent_api::Endpoint {
        agent_api::Endpoint {
            network: "gannet".into(),
            container_id: container.into(),
            if_name: "eth0".into(),
            netns: "/run/netns/x".into(),
            ips: ips.iter().map(|ip| ip.parse().expect("cidr")).collect(),
            mac: "02:00:00:00:00:01".into(),
            host_if_name: "lo".into(),
            host_if_index: 1,
            host_mac: "02:00:00:00:00:02".into(),
            pod_namespace: Some(ns.into()),
            pod_name: Some(name.into()),
        }
    }

    fn register(
        registry: &mut Registry,
        endpoint: agent_api::Endpoint,
        pod_cidrs: &[ipnet::IpNet],
    ) -> Response {
        registry
            .handle(
                Request::new(RequestBody::Register { endpoint }),
                None,
                pod_cidrs,
            )
            .0
    }

    fn refused(response: &Response, why: &str) {
        assert!(!response.ok, "must be refused ({why}): {response:?}");
        let error = response.error.as_deref().unwrap_or_default();
        assert!(error.contains(why), "the error must say {why:?}: {error}");
    }

    #[test]
    fn registrations_claim_only_valid_names_and_addresses_of_their_own() {
        /// Removed on drop, also when the test fails.
        struct TempDir(PathBuf);
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let dir =
            TempDir(std::env::temp_dir().join(format!("gannet-registry-{}", std::process::id())));
        fs::create_dir_all(&dir.0).expect("temp dir");
        let mut registry = Registry::load(&dir.0, None).expect("empty registry");
        let cidrs: Vec<ipnet::IpNet> = vec!["10.244.0.0/24".parse().unwrap()];

        let ok = register(
            &mut registry,
            endpoint("a", &["10.244.0.2/32"], "default", "web-1.x"),
            &cidrs,
        );
        assert!(ok.ok, "{ok:?}");
        // The same attachment again keeps its address.
        let again = register(
            &mut registry,
            endpoint("a", &["10.244.0.2/32"], "default", "web-1.x"),
            &cidrs,
        );
        assert!(again.ok, "{again:?}");
        refused(
            &register(
                &mut registry,
                endpoint("b", &["10.244.0.2/32"], "default", "web-2"),
                &cidrs,
            ),
            "belongs to endpoint gannet/a/eth0",
        );
        refused(
            &register(
                &mut registry,
                endpoint("b", &["10.96.0.10/32"], "default", "web-2"),
                &cidrs,
            ),
            "outside this node's pod CIDRs (10.244.0.0/24)",
        );
        refused(
            &register(
                &mut registry,
                endpoint("b", &["127.0.0.1/32"], "default", "web-2"),
                &[],
            ),
            "not a pod address",
        );
        refused(
            &register(
                &mut registry,
                endpoint("b", &["10.244.0.3/32"], "Default", "web-2"),
                &cidrs,
            ),
            "podNamespace \"Default\"",
        );
        refused(
            &register(
                &mut registry,
                endpoint("b", &["10.244.0.3/32"], "default", "web_2"),
                &cidrs,
            ),
            "podName \"web_2\"",
        );
        // Without a lease the pod CIDRs are not known: any unicast address of its own.
        let free = register(
            &mut registry,
            endpoint("b", &["10.96.0.10/32"], "default", "web-2"),
            &[],
        );
        assert!(free.ok, "{free:?}");
        assert_eq!(registry.records().len(), 2, "{:?}", registry.records());
    }

    #[test]
    fn the_host_interface_must_be_the_attachments_veth() {
        let mut lo = endpoint("a", &["10.244.0.2/32"], "default", "web-1");
        let err = check_host_interface(&lo).expect_err("lo is no pod's veth");
        assert!(
            err.contains("not the one gannet-cni makes"),
            "the error must say why: {err}"
        );
        // The right name, but no such interface here.
        let attachment = gannet_cni::config::Attachment {
            container_id: "a".into(),
            ifname: "eth0".into(),
        };
        lo.host_if_name = gannet_cni::network::host_if_name("gannet", &attachment);
        let err = check_host_interface(&lo).expect_err("no such interface");
        assert!(err.contains("does not exist"), "{err}");
    }
}
