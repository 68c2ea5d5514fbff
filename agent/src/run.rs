//! The agent's main loop: a source of services (a manifest directory or the control plane)
//! feeds the data plane (eBPF or nftables: `--dataplane`), and gannet-cni's registrations feed
//! the pod fast path (eBPF), until a signal arrives.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gannet_k8s::ManifestDir;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
    time::{Interval, MissedTickBehavior},
};
use tracing::{debug, error, info, warn};

use crate::{
    config::{Capacity, DataPlane, RunConfig, Source},
    control::{Control, PodReport, Update},
    datapath::nodeport::monotonic_ns,
    datapath::{
        self, BpfMaps, ServiceDataPlane, SockLb,
        nft::{self, NftDataPlane},
        pods::PodFastPath,
        reconcile::{ApplyReport, DEFAULT_GRACE, Reconciler},
    },
    endpoints::{self, Registry},
    kubelet::{self, Kubelet},
    lock::{AgentLocks, StartGuard, Watched},
    metrics::{self, Metrics, Scrapes},
    names::ServiceNames,
    network::NodeNetwork,
    nodeport::{
        frontends::Expander,
        health::HealthServers,
        setup::{NodePortSetup, node_port_addresses},
    },
};

/// How often released map entries are looked at for freeing.
const GARBAGE_INTERVAL: Duration = Duration::from_millis(100);

/// Where services come from.
enum Services {
    Manifests {
        dir: Box<ManifestDir>,
        tick: Interval,
        /// Until one scan of the directory has been free of errors, a service that is missing
        /// from it may only be missing because its file is invalid: keep what the previous agent
        /// programmed rather than remove it.
        had_clean_scan: bool,
        /// The errors of the last scan, as logged: a file that stays bad is logged once, not
        /// again each time another file changes.
        reported: BTreeSet<String>,
    },
    Control(Control),
}

impl Services {
    fn new(config: &RunConfig, network: &NodeNetwork) -> anyhow::Result<Self> {
        Ok(match &config.source {
            Source::Manifests(dir) => {
                let mut tick = tokio::time::interval(config.sync_interval);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                Self::Manifests {
                    dir: Box::new(ManifestDir::new(dir)),
                    tick,
                    had_clean_scan: false,
                    reported: BTreeSet::new(),
                }
            }
            Source::Control(control) => {
                let mut control = control.clone();
                control.vtep_mac = network.vtep_mac();
                if control.node_ips.is_empty()
                    && let Some(ip) = network.node_ip()
                {
                    control.node_ips.push(ip);
                }
                Self::Control(
                    Control::start(control.clone(), &config.node_name)
                        .with_context(|| format!("connecting to {}", control.server))?,
                )
            }
        })
    }

    /// Waits for the next change and programs it. Cancel-safe: it only waits in a tick or a
    /// channel receive.
    async fn next(
        &mut self,
        plane: &mut dyn ServiceDataPlane,
        network: &mut NodeNetwork,
        external: &mut External,
        metrics: &Metrics,
    ) {
        match self {
            Self::Manifests {
                dir,
                tick,
                had_clean_scan,
                reported,
            } => {
                tick.tick().await;
                match dir.scan_changes() {
                    Ok(None) => {}
                    Ok(Some(scan)) => {
                        let errors: BTreeSet<String> =
                            scan.errors.iter().map(ToString::to_string).collect();
                        for e in errors.difference(reported) {
                            error!(error = %e, "manifest rejected; its last good version stays in effect");
                        }
                        *reported = errors;
                        let began = Instant::now();
                        // A change the directory could join for the Services it touches is
                        // programmed as its frontends alone, once a clean scan has pruned what a
                        // previous agent left.
                        let report = match scan.changes {
                            Some(changes) if *had_clean_scan => {
                                let changes = external.expander.changes(&changes);
                                external.names.changes(&changes);
                                let report = plane.apply_changes(&changes);
                                metrics.applied(false, began.elapsed());
                                report
                            }
                            _ => {
                                *had_clean_scan |= scan.errors.is_empty();
                                let state = external.expander.full(scan.state);
                                external.names.full(&state);
                                let report = plane.apply(&state, *had_clean_scan);
                                metrics.applied(true, began.elapsed());
                                report
                            }
                        };
                        external.health_changed = true;
                        debug!(
                            frontends = scan.state.services.len(),
                            errors = scan.errors.len(),
                            "manifests applied"
                        );
                        log_report(&report);
                        network.nodes(&scan.nodes, *had_clean_scan);
                    }
                    Err(e) => warn!(
                        error = %e,
                        "cannot read the manifest directory; keeping the current state"
                    ),
                }
            }
            Self::Control(control) => {
                let Some(update) = control.updates.recv().await else {
                    // The control tasks never end on their own; only a panic stops them.
                    error!("the control-plane client stopped; the last state stays programmed");
                    std::future::pending::<()>().await;
                    return;
                };
                let report = match update {
                    Update::Full(state) => {
                        let state = external.expander.full(&state);
                        external.names.full(&state);
                        external.health_changed = true;
                        let began = Instant::now();
                        let report = plane.apply(&state, true);
                        metrics.applied(true, began.elapsed());
                        info!(
                            frontends = state.services.len(),
                            "programmed the control plane's services"
                        );
                        drop(state);
                        release_free_memory();
                        report
                    }
                    Update::Changes(changes) => {
                        external.health_changed = true;
                        let changes = external.expander.changes(&changes);
                        external.names.changes(&changes);
                        let began = Instant::now();
                        let report = plane.apply_changes(&changes);
                        metrics.applied(false, began.elapsed());
                        report
                    }
                    Update::Nodes(nodes) => {
                        network.nodes(&nodes, true);
                        return;
                    }
                    Update::Lease(lease) => {
                        network.lease(lease);
                        return;
                    }
                };
                log_report(&report);
            }
        }
    }

    fn report_pod(&self, report: PodReport) {
        if let Self::Control(control) = self {
            control.report_pod(report);
        }
    }

    /// The control-plane watches' state, when services come from a control plane.
    fn watches(&self) -> Option<&crate::control::WatchStats> {
        match self {
            Self::Control(control) => Some(&control.stats),
            Self::Manifests { .. } => None,
        }
    }
}

/// Traffic from outside the node: the frontends services expand to, and the health check
/// servers.
struct External {
    expander: Expander,
    /// The Service port of each programmed frontend, for `gannetd status`.
    names: ServiceNames,
    health: HealthServers,
    /// The expander's health checks may have changed since the servers were updated.
    health_changed: bool,
}

impl External {
    /// Brings the health check servers up to date.
    async fn sync(&mut self) {
        if self.health_changed {
            self.health_changed = false;
            for (port, error) in self.health.update(self.expander.health()).await {
                warn!(port, %error, "healthCheckNodePort not served");
            }
        }
    }
}

/// The data plane services are programmed into, with what only it needs.
enum Plane {
    Ebpf(Box<Ebpf>),
    Nft(NftDataPlane),
}

/// The eBPF data plane: the socket load balancer's reconciler, the pod fast path (whose object
/// also holds the NodePort programs) and where the NodePort program runs.
struct Ebpf {
    reconciler: Reconciler<BpfMaps>,
    fast_path: PodFastPath,
    setup: Option<NodePortSetup>,
}

/// Warns of LRU maps too small for this machine's CPUs to behave as LRU maps (see
/// [`gannet_common::MIN_LRU_CAPACITY`]); the flags' own check only knows the fixed floor.
fn warn_small_lru_maps(capacity: &Capacity) {
    let Ok(cpus) = aya::util::nr_cpus() else {
        return;
    };
    let wanted = u32::try_from(cpus)
        .unwrap_or(u32::MAX)
        .saturating_mul(gannet_common::LRU_ENTRIES_PER_CPU);
    for (flag, value) in [
        ("--max-rev-nat", capacity.rev_nat),
        ("--max-affinity", capacity.affinity),
        ("--max-conntrack", capacity.conntrack),
    ] {
        if value < wanted {
            warn!(
                flag,
                value,
                cpus,
                wanted,
                "an LRU map this small for this many CPUs forgets entries of live flows when it \
                 fills; raise the flag"
            );
        }
    }
}

impl Plane {
    /// Loads (or adopts) the data plane `--dataplane` names, and removes what the other one
    /// left on this node (an earlier gannetd in the other mode): both must never translate the
    /// same traffic.
    fn start(config: &RunConfig) -> anyhow::Result<Plane> {
        Ok(match config.dataplane {
            DataPlane::Ebpf => {
                match nft::remove() {
                    Ok(true) => info!(
                        table = nft::TABLE,
                        "removed the nftables data plane's table of an earlier gannetd"
                    ),
                    Ok(false) => {}
                    Err(error) => warn!(%error, "cannot remove the nftables data plane's table"),
                }
                warn_small_lru_maps(&config.capacity);
                let mut lb = SockLb::load(&config.bpf_root, &config.cgroup_path, config.capacity)?;
                let mut fast_path = PodFastPath::load(&config.bpf_root, &config.capacity.pods())?;
                if let Some(maglev) = fast_path.take_external() {
                    lb.maps.set_external(maglev);
                }
                let reconciler = Reconciler::adopt(lb.maps, DEFAULT_GRACE, &config.node_name)?;
                Plane::Ebpf(Box::new(Ebpf {
                    reconciler,
                    fast_path,
                    setup: None,
                }))
            }
            DataPlane::Nftables => {
                let removed = datapath::cleanup(&config.bpf_root).with_context(|| {
                    format!(
                        "removing the eBPF data plane of an earlier gannetd ({})",
                        config.bpf_root.display()
                    )
                })?;
                if !removed.is_empty() {
                    info!(
                        removed = removed.len(),
                        bpf_root = %config.bpf_root.display(),
                        "removed the eBPF data plane of an earlier gannetd"
                    );
                }
                Plane::Nft(
                    NftDataPlane::adopt(&config.node_name)
                        .context("setting up the nftables data plane")?,
                )
            }
        })
    }

    fn services(&mut self) -> &mut dyn ServiceDataPlane {
        match self {
            Plane::Ebpf(ebpf) => &mut ebpf.reconciler,
            Plane::Nft(nft) => nft,
        }
    }

    fn fast_path(&mut self) -> Option<&mut PodFastPath> {
        match self {
            Plane::Ebpf(ebpf) => Some(&mut ebpf.fast_path),
            Plane::Nft(_) => None,
        }
    }

    /// Where the NodePort program runs (eBPF), or only which node addresses accept node ports
    /// (nftables, which serves them on every interface).
    fn start_external(&mut self, config: &RunConfig) -> anyhow::Result<Vec<std::net::IpAddr>> {
        match self {
            Plane::Ebpf(ebpf) => {
                let setup = NodePortSetup::start(
                    &config.nodeport,
                    &config.overlay.node_ips,
                    config.overlay.mode,
                    config.capacity.maglev_table_size,
                    &mut ebpf.fast_path,
                    &config.bpf_root,
                )
                .context("setting up the NodePort program")?;
                let addresses = setup.addresses.clone();
                ebpf.setup = Some(setup);
                Ok(addresses)
            }
            Plane::Nft(_) => {
                let addresses = node_port_addresses(&config.nodeport, &config.overlay.node_ips)
                    .context("finding the node addresses that accept node ports")?;
                info!(?addresses, "node ports served by the nftables data plane");
                Ok(addresses)
            }
        }
    }

    /// This node's pod CIDRs: the NodePort program's SNAT addresses (eBPF), the local backends
    /// (nftables).
    fn lease(&mut self, network: &NodeNetwork) {
        match self {
            Plane::Ebpf(ebpf) => {
                if let Some(setup) = &mut ebpf.setup
                    && let Err(error) = setup.lease(&network.pod_cidrs(), &mut ebpf.fast_path)
                {
                    warn!(%error, "cannot update the NodePort SNAT addresses");
                }
            }
            Plane::Nft(nft) => nft.set_pod_cidrs(&network.pod_cidrs()),
        }
    }

    /// Whether the NodePort program's conntrack map needs sweeping.
    fn nodeport_enabled(&self) -> bool {
        matches!(self, Plane::Ebpf(ebpf) if ebpf.setup.as_ref().is_some_and(NodePortSetup::enabled))
    }

    /// What a scrape reports.
    fn readings(&mut self, registry: &Registry, services: &Services) -> metrics::Snapshot {
        let counts = self.services().counts();
        let ebpf = match self {
            Plane::Ebpf(ebpf) => Some((ebpf.reconciler.maps(), &ebpf.fast_path)),
            Plane::Nft(_) => None,
        };
        metrics::readings(counts, ebpf, registry, services.watches())
    }

    fn collect_conntrack_garbage(&mut self) {
        if let Plane::Ebpf(ebpf) = self {
            ebpf.fast_path.nodeport.collect_garbage(monotonic_ns());
        }
    }
}

/// How often the NodePort conntrack map is swept for expired flows.
const CONNTRACK_GC_INTERVAL: Duration = Duration::from_secs(10);

/// Hands the heap's free pages back to the kernel. The first full list of a large cluster
/// (its JSON, then the Kubernetes objects it decodes to) needs several times the memory of what
/// the agent keeps; without this the peak stays resident.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn log_report(report: &ApplyReport) {
    if report.changed() {
        info!(
            added = report.added,
            updated = report.updated,
            removed = report.removed,
            unchanged = report.unchanged,
            failed = report.failed.len(),
            "services synced"
        );
    }
}

/// The next scrape's request for readings; never, without a metrics server.
async fn next_scrape(scrapes: &mut Option<Scrapes>) -> Option<oneshot::Sender<()>> {
    match scrapes {
        Some(scrapes) => scrapes.recv().await,
        None => std::future::pending().await,
    }
}

/// How often gannetd checks that its pins, links and socket are still there.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What this gannetd pinned and bound at start, watched while it runs: the state directory and
/// its CNI socket; with the eBPF data plane also the bpf root, every map pinned in it, and the
/// socket load balancer's cgroup links (unpinning one detaches its program). Pod and NodePort
/// links come and go with pods and interfaces and are not watched.
fn watched(config: &RunConfig, socket: &std::path::Path) -> Watched {
    let mut watched = Watched::default();
    watched.add(&config.state_dir);
    watched.add(socket);
    if config.dataplane == DataPlane::Ebpf {
        watched.add(&config.bpf_root);
        watched.add_entries(&config.bpf_root.join("maps"));
        for name in datapath::SOCK_PROGRAMS {
            watched.add(&config.bpf_root.join("links").join(name));
        }
    }
    debug!(paths = watched.len(), "watching pins, links and socket");
    watched
}

/// Locks `--bpf-root` (created first, on bpffs; with the nftables data plane only when an earlier
/// gannetd left one) and `--state-dir`.
fn take_locks(config: &RunConfig) -> anyhow::Result<AgentLocks> {
    let bpf_root = match config.dataplane {
        DataPlane::Ebpf => {
            datapath::ensure_bpffs(&config.bpf_root)?;
            Some(config.bpf_root.as_path())
        }
        DataPlane::Nftables => config
            .bpf_root
            .is_dir()
            .then_some(config.bpf_root.as_path()),
    };
    AgentLocks::take(bpf_root, &config.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}: only one gannetd may run per --bpf-root and per --state-dir; stop the other \
             one first"
        )
    })
}

/// Runs until SIGTERM or SIGINT. The data plane stays in place when this returns: programs stay
/// attached through their pinned links and the maps keep serving (eBPF), the table stays
/// (nftables), so a restarted gannetd adopts them without a gap.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    match &config.source {
        Source::Manifests(dir) => info!(
            node = %config.node_name,
            dataplane = %config.dataplane,
            cgroup = %config.cgroup_path.display(),
            manifest_dir = %dir.display(),
            "gannetd starting"
        ),
        Source::Control(control) => info!(
            node = %config.node_name,
            dataplane = %config.dataplane,
            cgroup = %config.cgroup_path.display(),
            control = %control.server,
            subnet_file = %config.subnet_file.display(),
            overlay = config.overlay.mode.name(),
            "gannetd starting"
        ),
    }
    // One gannetd per bpf root and per state directory, held until this returns.
    let locks = take_locks(&config)?;
    // Until ready, a failure removes what this start created (dropped before the locks).
    let mut start = StartGuard::new(&locks);
    // Bound before anything is loaded: an address in use stops the start with nothing to undo
    // but the directories (the guard's).
    let metrics_listener = match config.metrics_address {
        Some(address) => Some(metrics::bind(address).await?),
        None => None,
    };
    let (metrics, metrics_registry) = Metrics::new(&config.dataplane.to_string());
    let mut plane = Plane::start(&config)?;
    let mut registry = Registry::load(&config.state_dir, plane.fast_path()).with_context(|| {
        format!(
            "reading the endpoint registry in {}",
            config.state_dir.display()
        )
    })?;
    let (calls_tx, mut calls) = mpsc::channel(64);
    let socket = endpoints::serve(&config.state_dir, calls_tx)
        .with_context(|| format!("listening in {}", config.state_dir.display()))?;
    let mut network =
        NodeNetwork::start(&config, plane.fast_path()).context("setting up the overlay")?;
    let addresses = plane.start_external(&config)?;
    let mut expander = Expander::new(addresses.clone(), &config.node_name);
    if matches!(plane, Plane::Ebpf(_)) && !plane.nodeport_enabled() {
        expander = expander.without_packet_path();
    }
    let mut external = External {
        expander,
        names: ServiceNames::new(&config.state_dir),
        health: HealthServers::new(addresses),
        health_changed: false,
    };
    let mut services = Services::new(&config, &network)?;
    // The kubelet role: a runtime that does not answer as a CRI v1 runtime stops the start.
    let _kubelet = match (&config.container_runtime, &config.source) {
        (Some(runtime), Source::Control(control)) => Some(
            Kubelet::start(
                runtime,
                control,
                &config.node_name,
                kubelet::Settings {
                    log_dir: config.state_dir.join(kubelet::LOG_DIR),
                    state_dir: config.state_dir.clone(),
                    cgroup_parent: config.pod_cgroup_parent.clone(),
                },
            )
            .await?,
        ),
        _ => None,
    };
    // Pods registered before a restart: their status may not have reached the control plane.
    for pod in registry.pods() {
        services.report_pod(PodReport::for_pod(&pod.pod, pod.ips));
    }
    start.started();
    let mut scrapes = metrics_listener.map(|(listener, bound)| {
        info!(address = %bound, "serving metrics on http://{bound}/metrics");
        metrics::serve(listener, metrics_registry)
    });
    info!(socket = %socket.display(), "ready for CNI endpoints");
    let watched = watched(&config, &socket);
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    watch.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failure = None;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut garbage = tokio::time::interval(GARBAGE_INTERVAL);
    garbage.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The overlay's repair; without an overlay (or with --overlay-resync-seconds 0) a tick that
    // never comes.
    let resync_every = network.resync_interval();
    let mut resync = tokio::time::interval(resync_every.unwrap_or(Duration::from_secs(86_400)));
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    resync.tick().await;
    let mut repair = tokio::time::interval(datapath::REPAIR_INTERVAL);
    repair.set_missed_tick_behavior(MissedTickBehavior::Delay);
    repair.tick().await;
    let mut conntrack_gc = tokio::time::interval(CONNTRACK_GC_INTERVAL);
    conntrack_gc.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut vanished = tokio::time::interval(endpoints::RECONCILE_INTERVAL);
    vanished.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: exiting, data plane left running"); break; }
            _ = sigint.recv() => { info!("SIGINT: exiting, data plane left running"); break; }
            Some((request, reply)) = calls.recv() => {
                let pod_cidrs = network.pod_cidrs();
                let operation = endpoints::operation(&request);
                let (response, change) = registry.handle(request, plane.fast_path(), &pod_cidrs);
                metrics.cni_request(operation, response.ok);
                let _ = reply.send(response);
                if let Some(change) = change {
                    services.report_pod(PodReport::for_pod(&change.pod, change.ips));
                }
            }
            () = services.next(plane.services(), &mut network, &mut external, &metrics) => {
                plane.lease(&network);
                external.sync().await;
            }
            Some(done) = next_scrape(&mut scrapes) => {
                metrics.set_snapshot(plane.readings(&registry, &services));
                let _ = done.send(());
            }
            _ = conntrack_gc.tick(), if plane.nodeport_enabled() => {
                plane.collect_conntrack_garbage();
            }
            _ = garbage.tick() => {
                plane.services().collect_garbage();
                external.names.flush(Instant::now());
            }
            _ = repair.tick() => {
                if let Some(report) = plane.services().repair() {
                    log_report(&report);
                }
            }
            _ = resync.tick(), if resync_every.is_some() => network.resync(),
            _ = vanished.tick() => {
                let gone = registry.reconcile(plane.fast_path());
                metrics.endpoints_vanished(gone.endpoints);
                for pod in gone.pods {
                    services.report_pod(PodReport::for_pod(&pod.pod, pod.ips));
                }
            }
            _ = watch.tick() => if let Some((path, what)) = watched.check() {
                error!(
                    path = %path.display(),
                    what,
                    "gannetd's data plane was taken away underneath it (pins, links or its \
                     socket removed by hand or by another tool): exiting; start gannetd again \
                     to re-create them"
                );
                failure = Some(anyhow::anyhow!(
                    "{} was {what} while gannetd was running",
                    path.display()
                ));
                break;
            },
        }
    }
    external.health.shutdown().await;
    failure.map_or(Ok(()), Err)
}
