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
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
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

/// Endpoints by `network/containerId/ifName`.
pub struct Registry {
    path: PathBuf,
    records: BTreeMap<String, Record>,
}

fn registry_key(network: &str, container_id: &str, if_name: &str) -> String {
    format!("{network}/{container_id}/{if_name}")
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("invalid MAC address {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("invalid MAC address {text:?}"))
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
    /// pod's status in a control plane).
    pub fn handle(
        &mut self,
        request: Request,
        fast_path: Option<&mut PodFastPath>,
    ) -> (Response, Option<PodChange>) {
        let mut change = None;
        let response = self.act(request, fast_path, &mut change);
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
        change: &mut Option<PodChange>,
    ) -> Response {
        if request.api_version != agent_api::API_VERSION {
            return Response::error(format!(
                "apiVersion {} is not supported (gannetd speaks {})",
                request.api_version,
                agent_api::API_VERSION
            ));
        }
        match request.body {
            RequestBody::Status => Response::ok(),
            RequestBody::Register { endpoint } => {
                let key =
                    registry_key(&endpoint.network, &endpoint.container_id, &endpoint.if_name);
                let mac = match parse_mac(&endpoint.mac) {
                    Ok(mac) => mac,
                    Err(e) => return Response::error(format!("endpoint {key}: mac: {e}")),
                };
                let ips: Vec<IpAddr> = endpoint
                    .ips
                    .iter()
                    .map(gannet_cni::net::Cidr::addr)
                    .collect();
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
                let pod = match (&endpoint.pod_namespace, &endpoint.pod_name) {
                    (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
                    (None, Some(name)) => Some(name.clone()),
                    _ => None,
                };
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
                let key = registry_key(&network, &container_id, &if_name);
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
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "reading from a CNI client");
                return;
            }
        };
        if line.len() > agent_api::MAX_LINE {
            return;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    return;
                }
                rx.await
                    .unwrap_or_else(|_| Response::error("gannetd is shutting down"))
            }
            Err(e) => Response::error(format!("invalid request: {e}")),
        };
        let Ok(mut out) = serde_json::to_vec(&response) else {
            return;
        };
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
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
