//! The kubelet role (`--container-runtime`): gannetd runs the Pods bound to its node through the
//! container runtime's CRI, as a kubelet does, and reports their status to the control plane.
//! The pods' network comes from gannet-cni, which the runtime invokes through its CNI
//! configuration; this module never touches the data plane.
//!
//! - [`cri`]: the runtime's endpoint and the CRI v1 client (`k8s-cri`'s bindings).
//! - [`worker`]: one task per pod, a reconcile loop comparing the desired Pod with what the
//!   runtime lists for it (sandboxes and containers carrying the labels gannetd sets), so a
//!   restarted gannetd adopts what runs and never starts a second copy.
//! - `sandbox`: a pod's sandbox (its configuration, listing, stopping and removing, orphans);
//!   `container`: creating, starting and removing its containers.
//! - [`probe`]: the containers' probes (`exec`, `tcpSocket`, `httpGet`) and their state.
//! - [`resources`]: a container's CPU shares and quota, memory limit and `oom_score_adj`.
//! - [`restart`]: the pod's `restartPolicy` and the crash-loop back-off for exited containers.
//! - [`status`]: the Pod status a worker reports (phase, conditions, `podIPs`, container states).
//! - [`volumes`]: `emptyDir` and `hostPath` volumes and the containers' mounts of them.
//! - [`image`]: `gannetd image import`, OCI archives into containerd's `k8s.io` namespace.
//! - `proxy`: what gannet-control asks of this node for an administrator elsewhere
//!   (`gannetctl logs`, `gannetctl image import --node`), over a stream gannetd keeps open.

mod container;
pub mod cri;
pub mod env;
pub mod image;
pub mod probe;
mod proxy;
pub mod resources;
pub mod restart;
mod sandbox;
pub mod status;
pub mod volumes;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};

use gannet_api::{Change, Client, ClientError, Kind, ListWatch, Object};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

pub use cri::{Cri, RuntimeEndpoint};

use crate::control::ControlConfig;

/// Label on every sandbox and container gannetd starts: who manages it.
pub const MANAGED_BY_LABEL: &str = "gannet.io/managed-by";
/// [`MANAGED_BY_LABEL`]'s value.
pub const MANAGED_BY: &str = "gannetd";
/// Label naming the node whose gannetd started it (several gannetds may share a runtime in
/// tests; each adopts only its own).
pub const NODE_LABEL: &str = "gannet.io/node";
/// The labels a kubelet sets, which tools such as crictl show.
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

/// The pods' log directories (`<namespace>_<name>_<uid>/<container>/0.log`), below
/// `--state-dir`.
pub const LOG_DIR: &str = gannet_api::pod_logs::DIR;

/// How pods are set up on this node.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The pods' log directories go below it.
    pub log_dir: std::path::PathBuf,
    /// `--state-dir` (archives imported through gannet-control wait there).
    pub state_dir: std::path::PathBuf,
    /// `--pod-cgroup-parent`; empty: the runtime's default.
    pub cgroup_parent: String,
}

/// What the kubelet role can fail with.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("--container-runtime {endpoint}: {what}")]
    Runtime { endpoint: String, what: String },
    #[error("--server: {0}")]
    Control(#[from] ClientError),
    #[error("{file}: {what}")]
    Archive { file: String, what: String },
}

/// The running kubelet role: its pod manager task (aborted, with the workers, when dropped; the
/// pods keep running and the next gannetd adopts them).
pub struct Kubelet {
    manager: JoinHandle<()>,
    /// Keeps the node attached to gannet-control for `gannetctl logs` and image imports.
    proxy: JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.manager.abort();
        self.proxy.abort();
    }
}

impl Kubelet {
    /// Connects to the runtime (a `Version` call: a wrong socket stops gannetd at start) and
    /// starts watching the Pods bound to `node_name`.
    ///
    /// # Errors
    /// [`KubeletError::Runtime`] when the runtime does not answer as a CRI v1 runtime;
    /// [`KubeletError::Control`] when the control plane's credentials are unusable.
    pub async fn start(
        endpoint: &RuntimeEndpoint,
        control: &ControlConfig,
        node_name: &str,
        settings: Settings,
    ) -> Result<Self, KubeletError> {
        let (cri, version) = Cri::connect(endpoint).await?;
        // A limit not set is the node's capacity (`resourceFieldRef` of limits).
        let node = crate::control::node::node_resources().unwrap_or(gannet_api::NodeResources {
            cpu_millicores: 1000,
            memory_bytes: 0,
        });
        info!(
            runtime = %endpoint,
            name = version.runtime_name,
            version = version.runtime_version,
            cri = version.runtime_api_version,
            "container runtime connected: running this node's pods"
        );
        let client = Client::lazy(&control.server, &control.credentials)?;
        let proxy = proxy::start(proxy::Node {
            client: client.clone(),
            name: node_name.to_owned(),
            log_dir: settings.log_dir.clone(),
            state_dir: settings.state_dir.clone(),
            runtime: endpoint.to_string(),
        });
        let context = worker::Context {
            cri,
            client: client.clone(),
            node: node_name.to_owned(),
            log_dir: settings.log_dir,
            pods_dir: settings.state_dir.join(volumes::DIR),
            cgroup_parent: settings.cgroup_parent,
            runtime_name: version.runtime_name,
            env_sources: env::Sources {
                pod_ips: Vec::new(),
                node_millicpu: u128::from(node.cpu_millicores),
                node_memory: u128::from(node.memory_bytes),
            },
        };
        let manager = tokio::spawn(manage(context, client));
        Ok(Self { manager, proxy })
    }
}

/// A running pod worker: its desired Pod (`None`: deleted) and its task.
struct Running {
    desired: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Watches the Pods and keeps one worker per Pod bound to this node.
async fn manage(context: worker::Context, mut client: Client) {
    let mut list_watch = ListWatch::new(Kind::Pod, None);
    let mut workers: BTreeMap<String, Running> = BTreeMap::new();
    let mut backoff = crate::control::Backoff::new();
    let mut orphans_checked = false;
    loop {
        let change = match list_watch.next(&mut client).await {
            Ok(change) => {
                backoff.reset();
                change
            }
            Err(error) => {
                let delay = backoff.next_delay();
                debug!(%error, ?delay, "pod watch failed; the pods keep running");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        workers.retain(|_, running| !running.task.is_finished());
        match change {
            Change::Synced { objects, .. } => {
                let mut listed = BTreeSet::new();
                for object in objects {
                    match object {
                        Ok(Object::Pod(pod)) if bound_here(&pod, &context.node) => {
                            let uid = uid(&pod);
                            listed.insert(uid.clone());
                            put(&context, &mut workers, uid, *pod);
                        }
                        Ok(_) => {}
                        Err(error) => error!(%error, "a Pod of the list does not decode; left out"),
                    }
                }
                for (uid, running) in &workers {
                    if !listed.contains(uid) {
                        running.desired.send_replace(None);
                    }
                }
                if !orphans_checked {
                    orphans_checked = true;
                    tokio::spawn(sandbox::remove_orphans(context.clone(), listed));
                }
            }
            Change::Applied {
                object: Object::Pod(pod),
                ..
            } => {
                let uid = uid(&pod);
                if bound_here(&pod, &context.node) {
                    put(&context, &mut workers, uid, *pod);
                } else if let Some(running) = workers.get(&uid) {
                    warn!(
                        pod = label(&pod),
                        "pod no longer bound to this node: stopping it"
                    );
                    running.desired.send_replace(None);
                }
            }
            Change::Deleted {
                object: Object::Pod(pod),
                ..
            } => {
                if let Some(running) = workers.get(&uid(&pod)) {
                    running.desired.send_replace(None);
                }
            }
            Change::Applied { .. } | Change::Deleted { .. } => {}
        }
    }
}

/// Hands `pod` to its worker, starting one when there is none (or its last one finished).
fn put(context: &worker::Context, workers: &mut BTreeMap<String, Running>, uid: String, pod: Pod) {
    if let Some(running) = workers.get(&uid)
        && !running.task.is_finished()
    {
        running.desired.send_replace(Some(pod));
        return;
    }
    let (desired, receiver) = watch::channel(Some(pod));
    let task = tokio::spawn(worker::run(context.clone(), receiver));
    workers.insert(uid, Running { desired, task });
}

fn bound_here(pod: &Pod, node: &str) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
}

/// The Pod's uid (the control plane always sets one); its namespace/name when it has none.
fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| label(pod))
}

/// `namespace/name`.
pub(crate) fn label(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata
            .namespace
            .as_deref()
            .unwrap_or(gannet_api::DEFAULT_NAMESPACE),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}
