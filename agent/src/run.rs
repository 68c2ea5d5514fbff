//! The agent's main loop: the manifest directory feeds the reconciler until a signal arrives.

use std::time::Instant;

use anyhow::Context as _;
use gannet_k8s::ManifestDir;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{debug, error, info, warn};

use crate::{
    config::RunConfig,
    datapath::{
        SockLb,
        pods::PodFastPath,
        reconcile::{DEFAULT_GRACE, Reconciler},
    },
    endpoints::{self, Registry},
};

/// Runs until SIGTERM or SIGINT. The data plane stays in place when this returns: programs stay
/// attached through their pinned links and the maps keep serving, so a restarted gannetd adopts
/// them without a gap.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    info!(
        node = %config.node_name,
        cgroup = %config.cgroup_path.display(),
        manifest_dir = %config.manifest_dir.display(),
        "gannetd starting"
    );
    let lb = SockLb::load(&config.bpf_root, &config.cgroup_path, config.capacity)?;
    let mut reconciler = Reconciler::adopt(lb.maps, DEFAULT_GRACE)?;
    let mut fast_path = PodFastPath::load(&config.bpf_root, config.capacity.endpoints)?;
    let mut registry = Registry::load(&config.state_dir, &fast_path).with_context(|| {
        format!(
            "reading the endpoint registry in {}",
            config.state_dir.display()
        )
    })?;
    let (calls_tx, mut calls) = mpsc::channel(64);
    let socket = endpoints::serve(&config.state_dir, calls_tx)
        .with_context(|| format!("listening in {}", config.state_dir.display()))?;
    info!(socket = %socket.display(), "ready for CNI endpoints");
    let mut source = ManifestDir::new(&config.manifest_dir);

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(config.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until one scan of the directory has been free of errors, a service that is missing from
    // it may only be missing because its file is invalid: keep what the previous agent
    // programmed rather than remove it.
    let mut had_clean_scan = false;

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: exiting, data plane left running"); break; }
            _ = sigint.recv() => { info!("SIGINT: exiting, data plane left running"); break; }
            Some((request, reply)) = calls.recv() => {
                let _ = reply.send(registry.handle(request, &mut fast_path));
                continue;
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        match source.scan() {
            Ok(None) => {}
            Ok(Some(outcome)) => {
                for e in &outcome.errors {
                    error!(error = %e, "manifest rejected; its last good version stays in effect");
                }
                had_clean_scan |= outcome.errors.is_empty();
                let report = reconciler.apply(&outcome.state, had_clean_scan, now);
                debug!(
                    frontends = outcome.state.services.len(),
                    errors = outcome.errors.len(),
                    "manifests applied"
                );
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
            Err(e) => warn!(
                dir = %config.manifest_dir.display(),
                error = %e,
                "cannot read the manifest directory; keeping the current state"
            ),
        }
        reconciler.collect_garbage(now);
    }
    Ok(())
}
