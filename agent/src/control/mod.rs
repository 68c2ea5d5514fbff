//! gannetd as a client of gannet-control (`--control`): the node's registration and lease, the
//! watch of Services, `EndpointSlices` and Nodes, and pod status reports.
//!
//! The watch feeds the same boundary as a manifest directory: the main loop gets
//! [`Update::Full`] once both kinds are listed (programmed with pruning, so whatever an earlier
//! agent programmed and the control plane no longer has goes), then [`Update::Changes`], diffs of
//! just the frontends that changed. Every kind is list-watched by a task of its own that resumes
//! from its last complete revision after a broken stream, lists again when that revision was
//! compacted, and backs off while the control plane is away; the last known state stays
//! programmed all that time.

pub mod cache;
pub mod node;
pub mod pods;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gannet_api::{Change, Client, ClientError, Credentials, Kind, ListWatch, Object, ServerAddr};
use gannet_k8s::{ClusterNode, DesiredState};
use k8s_openapi::api::core::v1::Node;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use cache::{Changes, ServiceCache};
pub use pods::PodReport;

use crate::subnet::Lease;

/// How gannetd reaches the control plane and what it says about its node.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub server: ServerAddr,
    pub credentials: Credentials,
    /// Reported as the node's `InternalIP`s; empty: the namespace's global addresses.
    pub node_ips: Vec<IpAddr>,
    /// The VXLAN device's MAC, published as the node's `gannet.io/vtep-mac` (set once the
    /// overlay has its device).
    pub vtep_mac: Option<String>,
    /// The kubelet role is on (`--container-runtime`): it owns the Pods' phase and conditions,
    /// and gannet-cni's registrations report a pod's addresses only (a pod is Ready when its
    /// containers are, not when its sandbox has a network).
    pub kubelet: bool,
}

/// What the main loop is to program.
#[derive(Debug)]
pub enum Update {
    /// Everything, the first time both kinds are known: program it and remove the rest.
    Full(DesiredState),
    /// Frontends to program (`Some`) or remove (`None`).
    Changes(Changes),
    /// The cluster's nodes (this one included), whenever one of them changed in a way the
    /// overlay cares about; always the whole list.
    Nodes(BTreeMap<String, ClusterNode>),
    /// This node's lease, at registration and whenever it changes.
    Lease(Lease),
}

/// The running control-plane client.
pub struct Control {
    pub updates: mpsc::Receiver<Update>,
    reports: mpsc::UnboundedSender<PodReport>,
    /// How the watches fare (for metrics).
    pub stats: Arc<WatchStats>,
}

/// The kinds gannetd watches, in the order of [`WatchStats::reconnects`].
pub const WATCHED: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

/// How the watches fare, shared by their tasks.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Per kind of [`WATCHED`]: how often its watch was opened again after it failed.
    reconnects: [AtomicU64; 3],
    /// When the last change of any kind arrived (a list counts): milliseconds since the Unix
    /// epoch; 0: none yet.
    last_event_ms: AtomicU64,
}

impl WatchStats {
    /// Reconnects per kind of [`WATCHED`].
    #[must_use]
    pub fn reconnects(&self) -> [(Kind, u64); 3] {
        let mut out = [(Kind::Service, 0); 3];
        for ((slot, kind), count) in out.iter_mut().zip(WATCHED).zip(&self.reconnects) {
            *slot = (kind, count.load(Ordering::Relaxed));
        }
        out
    }

    /// When the last change arrived, in seconds since the Unix epoch.
    #[must_use]
    pub fn last_event(&self) -> Option<f64> {
        let ms = self.last_event_ms.load(Ordering::Relaxed);
        // Milliseconds since 1970 stay far below 2^52: exact in an f64.
        #[expect(clippy::cast_precision_loss, reason = "exact below 2^52")]
        (ms > 0).then(|| ms as f64 / 1000.0)
    }

    fn reconnected(&self, kind: Kind) {
        if let Some(i) = WATCHED.iter().position(|k| *k == kind) {
            self.reconnects[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn event(&self) {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_event_ms.store(ms, Ordering::Relaxed);
    }
}

impl Control {
    /// Starts the tasks (on the current runtime). Nothing is sent before the control plane
    /// answers; until then the data plane keeps what it has.
    ///
    /// # Errors
    /// When the credentials are unusable.
    pub fn start(config: ControlConfig, node_name: &str) -> Result<Self, ClientError> {
        let client = Client::lazy(&config.server, &config.credentials)?;
        let (events_tx, events) = mpsc::channel(256);
        let stats = Arc::new(WatchStats::default());
        for kind in WATCHED {
            tokio::spawn(watch(
                kind,
                client.clone(),
                events_tx.clone(),
                Arc::clone(&stats),
            ));
        }
        let (updates_tx, updates) = mpsc::channel(16);
        let source = PathBuf::from(config.server.to_string());
        tokio::spawn(aggregate(events, updates_tx.clone(), source));
        let (reports, reports_rx) = mpsc::unbounded_channel();
        tokio::spawn(pods::run(
            client.clone(),
            node_name.to_owned(),
            config.kubelet,
            reports_rx,
        ));
        tokio::spawn(node::run(client, node_name.to_owned(), config, updates_tx));
        Ok(Self {
            updates,
            reports,
            stats,
        })
    }

    /// Queues a pod status report (sent when the control plane takes it).
    pub fn report_pod(&self, report: PodReport) {
        let _ = self.reports.send(report);
    }
}

/// Exponential backoff with jitter, from 100 ms to 5 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const LAST: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The delay before the next attempt: the current step ± 25 %.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(Self::LAST);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // 0.75 .. 1.25 of the step.
        step.mul_f64(0.75 + f64::from(nanos % 1000) / 2000.0)
    }
}

/// Logs (and counts) the end of an outage that began at `since`.
fn back(kind: Kind, since: Instant, list_watch: &ListWatch, stats: &WatchStats) {
    stats.reconnected(kind);
    info!(
        %kind,
        away = %format_args!("{:.1}s", since.elapsed().as_secs_f64()),
        revision = list_watch.revision(),
        "watching the control plane again"
    );
}

/// List-watches one kind forever, sending every change to `events`.
async fn watch(
    kind: Kind,
    mut client: Client,
    events: mpsc::Sender<(Kind, Change)>,
    stats: Arc<WatchStats>,
) {
    let mut list_watch = ListWatch::new(kind, None);
    let mut backoff = Backoff::new();
    let mut away_since: Option<Instant> = None;
    loop {
        // Connected again is logged when the watch is open again, not when the next change
        // arrives (minutes later on a quiet cluster): `away` is the outage.
        let next = match list_watch.connect(&mut client).await {
            Ok(open) => {
                if open && let Some(since) = away_since.take() {
                    back(kind, since, &list_watch, &stats);
                    backoff.reset();
                }
                list_watch.next(&mut client).await
            }
            Err(error) => Err(error),
        };
        match next {
            Ok(change) => {
                // Back with a list (after an expired revision).
                if let Some(since) = away_since.take() {
                    back(kind, since, &list_watch, &stats);
                }
                backoff.reset();
                stats.event();
                if events.send((kind, change)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                let delay = backoff.next_delay();
                if away_since.is_none() {
                    away_since = Some(Instant::now());
                    if error.is_transient() {
                        warn!(%kind, %error, "control plane unreachable; the last known state stays programmed");
                    } else {
                        error!(%kind, %error, "the control plane refuses the watch; the last known state stays programmed");
                    }
                } else {
                    debug!(%kind, %error, ?delay, "watch failed again");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Folds the watch events into the cache and sends what changed to the main loop: events that
/// arrive together are applied together.
async fn aggregate(
    mut events: mpsc::Receiver<(Kind, Change)>,
    updates: mpsc::Sender<Update>,
    source: PathBuf,
) {
    let mut cache = ServiceCache::new(&source);
    let mut nodes = Nodes::default();
    let mut sent_full = false;
    while let Some(event) = events.recv().await {
        absorb(&mut cache, &mut nodes, event);
        while let Ok(event) = events.try_recv() {
            absorb(&mut cache, &mut nodes, event);
        }
        if let Some(cluster) = nodes.take_changed()
            && updates.send(Update::Nodes(cluster)).await.is_err()
        {
            return;
        }
        if !cache.synced() {
            continue;
        }
        let (changes, errors) = cache.take_changes();
        for error in &errors {
            error!(%error, "service not served as given; what it had before stays in effect");
        }
        let update = if sent_full {
            if changes.is_empty() {
                continue;
            }
            Update::Changes(changes)
        } else {
            sent_full = true;
            info!(
                services = cache.service_count(),
                endpoint_slices = cache.slice_count(),
                "control plane state received"
            );
            Update::Full(cache.desired_state())
        };
        if updates.send(update).await.is_err() {
            return;
        }
    }
}

fn absorb(cache: &mut ServiceCache, nodes: &mut Nodes, (kind, change): (Kind, Change)) {
    match change {
        Change::Synced { objects, revision } => {
            debug!(%kind, objects = objects.len(), revision, "listed");
            // Decoded one at a time and kept only in the cache's small form.
            let objects = objects.filter_map(|object| {
                object
                    .inspect_err(|error| error!(%kind, %error, "an object of the list does not decode; it is left out"))
                    .ok()
            });
            match kind {
                Kind::Service => cache.sync_services(objects.filter_map(|o| match o {
                    Object::Service(s) => Some(*s),
                    _ => None,
                })),
                Kind::EndpointSlice => cache.sync_slices(objects.filter_map(|o| match o {
                    Object::EndpointSlice(s) => Some(*s),
                    _ => None,
                })),
                Kind::Node => nodes.sync(objects.filter_map(|o| match o {
                    Object::Node(n) => Some(*n),
                    _ => None,
                })),
                Kind::Pod | Kind::Lease => {}
            }
        }
        Change::Applied { object, .. } => match object {
            Object::Service(s) => cache.put_service(&s),
            Object::EndpointSlice(s) => cache.put_slice(&s),
            Object::Node(n) => nodes.put(&n),
            Object::Pod(_) | Object::Lease(_) => {}
        },
        Change::Deleted { object, .. } => match object {
            Object::Service(s) => cache.delete_service(&s),
            Object::EndpointSlice(s) => cache.delete_slice(&s),
            Object::Node(n) => nodes.delete(&n),
            Object::Pod(_) | Object::Lease(_) => {}
        },
    }
}

/// The cluster's nodes as the overlay sees them; changes are logged, and handed on once the
/// first complete list arrived.
#[derive(Debug, Default)]
struct Nodes {
    nodes: BTreeMap<String, ClusterNode>,
    synced: bool,
    changed: bool,
}

impl Nodes {
    fn sync(&mut self, listed: impl Iterator<Item = Node>) {
        let mut fresh = BTreeMap::new();
        for node in listed {
            if let Some(node) = checked(&node) {
                fresh.insert(node.name.clone(), node);
            }
        }
        for name in self.nodes.keys() {
            if !fresh.contains_key(name) {
                info!(node = name, "node left the cluster");
            }
        }
        for node in fresh.values() {
            self.log_change(node);
        }
        self.changed |= !self.synced || fresh != self.nodes;
        self.synced = true;
        self.nodes = fresh;
    }

    fn put(&mut self, node: &Node) {
        let Some(node) = checked(node) else {
            return;
        };
        self.log_change(&node);
        if self.nodes.get(&node.name) != Some(&node) {
            self.changed = true;
            self.nodes.insert(node.name.clone(), node);
        }
    }

    fn delete(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        if self.nodes.remove(&name).is_some() {
            info!(node = name, "node left the cluster");
            self.changed = true;
        }
    }

    /// The whole list, when it changed since the last call and is complete.
    fn take_changed(&mut self) -> Option<BTreeMap<String, ClusterNode>> {
        (self.synced && std::mem::take(&mut self.changed)).then(|| self.nodes.clone())
    }

    fn log_change(&self, node: &ClusterNode) {
        let what = match self.nodes.get(&node.name) {
            None => "node in the cluster",
            Some(old) if old != node => "node changed",
            Some(_) => return,
        };
        info!(
            node = node.name,
            pod_cidrs = %crate::logging::list(&node.pod_cidrs),
            internal_ips = %crate::logging::list(&node.internal_ips),
            vtep_mac = node.vtep_mac.map(gannet_k8s::format_mac).unwrap_or_default(),
            "{what}"
        );
    }
}

/// The node, or `None` (logged) when it cannot be used.
fn checked(node: &Node) -> Option<ClusterNode> {
    gannet_k8s::cluster_node(node)
        .inspect_err(|problems| {
            error!(
                node = node.metadata.name.as_deref().unwrap_or("?"),
                problems = problems.join("; "),
                "a Node the overlay cannot use; its previous version stays in effect"
            );
        })
        .ok()
}
