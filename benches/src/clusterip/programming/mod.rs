//! The `clusterip` scenario's programming measurement: N services × E endpoints (10 000 × 10 by
//! default) programmed by gannetd's nftables data plane and by `nft -f` of kube-proxy's nftables
//! rules, each into an empty node namespace of its own; then K endpoint changes through gannetd,
//! each timed until the kernel reports the new element of gannet's table, fed two ways.
//!
//! 1. **Manifest directory** (as the scenario's other gannetds are fed): `services.yaml` with
//!    every Service and the `EndpointSlice`s of the services that never change, and one file per
//!    changed service with its slice, so that a change rewrites (renames into place) one small
//!    file. The full programming is timed here.
//! 2. **gannet-control** (the control scenario's way: the N services stored through the gRPC
//!    Apply, gannetd watching with `--control`): a change is one changed slice applied through
//!    the gRPC Apply, which reaches gannetd as a change of one service.
//!
//! gannetd runs `--dataplane nftables` in a node namespace of its own (never the root
//! namespace). Its stderr and `nft monitor new`'s output in the node namespace are read on
//! threads that stamp every line with its arrival, so a change's latency is measured to the
//! kernel's notification of the new element, not to a poll.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use indicatif::ProgressBar;

use crate::control::objects;
use crate::control::procs::{Line, Logged};
use crate::control::{PeerRun, load_peer, output_in};
use crate::kubeproxy::nft;
use crate::results::{ChangeLatency, Programming, ProgrammingSettings};
use crate::services::{self, MANIFEST_FILE, Service};
use crate::util::{Rng, check_interrupted};

mod change;
mod node;
mod via_control;

pub use self::node::{AddedBackend, added_backends, map_elements};

use self::change::Change;
use self::node::NftNode;
use self::via_control::through_control;

/// gannet's nftables table (family `inet`), as gannetd names it (`datapath::nft::TABLE`).
pub const TABLE: &str = "gannet-services";
/// How often this measurement's gannetd scans its manifest directory: gannetd's smallest
/// `--sync-interval-ms`, so that the scan adds as little as it can to a change's latency.
pub const SYNC_INTERVAL_MS: u64 = 10;
/// How long gannetd may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long gannetd may take to program every service.
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one endpoint change may take to reach the table.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for `nft monitor` to report the sentinel table the first time; each attempt
/// waits twice as long as the one before, the last one this long.
const MONITOR_FIRST_WAIT: Duration = Duration::from_secs(2);
const MONITOR_LAST_WAIT: Duration = Duration::from_secs(64);
/// A table of the harness's own whose creation tells that `nft monitor` listens.
const SENTINEL_TABLE: &str = "gannet-bench-monitor-ready";
/// gannetd's log line after it applied a change.
const SYNCED: &str = "services synced";
/// gannet-k8s's debug line when the manifest scan reads a changed file.
const READING: &str = "reading manifest file";
/// gannetd's log line after its first full sync from gannet-control.
const PROGRAMMED: &str = "programmed the control plane's services";
/// Objects per Apply call while storing the services in gannet-control.
const CONTROL_BATCH: usize = 1000;

/// What the measurement does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Services to program.
    pub services: usize,
    /// Endpoints of every service.
    pub endpoints: usize,
    /// Endpoint changes to time.
    pub changes: usize,
    /// How long `nft -f` may take before it is killed.
    pub timeout: Duration,
}

impl Config {
    /// The settings as recorded in the results.
    #[must_use]
    pub fn settings(&self) -> ProgrammingSettings {
        ProgrammingSettings {
            services: self.services,
            endpoints_per_service: self.endpoints,
            changes: self.changes,
            timeout_seconds: self.timeout.as_secs_f64(),
            gannetd_sync_interval_ms: SYNC_INTERVAL_MS,
        }
    }
}

/// The file that holds the slice of `svc` (a changed service).
fn slice_file(svc: &Service) -> String {
    format!("slice-{}.yaml", svc.name)
}

/// `count` distinct indices below `n` (all of them if `count ≥ n`), in a random order.
fn pick(rng: &mut Rng, n: usize, count: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut all);
    all.truncate(count.min(n));
    all
}

/// `services.yaml`: every Service, and the slices of the services not in `own_files`.
fn main_manifest(services: &[Service], own_files: &BTreeSet<usize>) -> String {
    let mut out = String::with_capacity(services.len() * 1000);
    out.push_str(
        "# Generated by gannet-bench: every Service; the EndpointSlices of the services that \
         change are in files of their own.\n",
    );
    for (i, svc) in services.iter().enumerate() {
        out.push_str(&services::service_yaml(svc));
        if !own_files.contains(&i) {
            out.push_str(&services::slice_yaml(svc));
        }
    }
    out
}

/// Waits for gannetd's `services synced` line from line `from` on that reports `expected`
/// frontends programmed; fails on one that reports failures.
fn wait_programmed(
    gannetd: &mut Logged,
    from: usize,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<(usize, Line)> {
    let deadline = Instant::now() + timeout;
    let mut next = from;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (index, line) = gannetd.wait_message(next, SYNCED, left)?;
        ensure!(
            line.field("failed") == Some(0),
            "gannetd failed to program services: {}",
            line.text
        );
        let programmed = ["added", "updated", "unchanged"]
            .iter()
            .map(|f| line.field(f).unwrap_or(0))
            .sum::<u64>();
        if programmed == expected {
            return Ok((index, line));
        }
        next = index + 1;
    }
}

fn millis(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

/// The binaries the measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Tools<'a> {
    /// The agent.
    pub gannetd: &'a Path,
    /// The control plane.
    pub gannet_control: &'a Path,
}

/// Runs the measurement: gannet-nft's full programming and endpoint changes from a manifest
/// directory, endpoint changes through gannet-control, then `nft -f` of kube-proxy's rules.
/// Everything it creates is removed before it returns.
///
/// # Errors
/// If a step fails, gannetd's table does not hold what it should, or the run is interrupted.
pub fn run(
    config: &Config,
    tools: Tools<'_>,
    progress: &ProgressBar,
    scratch: &Path,
    rng: &mut Rng,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Programming> {
    let (n, e) = (config.services, config.endpoints);
    let mut services = objects::services(n, e)?;
    let changed = pick(rng, n, config.changes);
    let own_files: BTreeSet<usize> = changed.iter().copied().collect();

    progress.set_message(format!(
        "gannet-nft: programming {n} services × {e} endpoints"
    ));
    let manifest_dir = scratch.join("manifests-nft-programming");
    fs::create_dir(&manifest_dir)
        .with_context(|| format!("creating {}", manifest_dir.display()))?;
    let source = [
        "--manifest-dir".to_owned(),
        manifest_dir.display().to_string(),
    ];
    let mut node = NftNode::start(tools.gannetd, scratch, "nft-manifests", &source)?;
    let main = main_manifest(&services, &own_files);
    let slices: Vec<(String, String)> = changed
        .iter()
        .map(|&i| (slice_file(&services[i]), services::slice_yaml(&services[i])))
        .collect();
    let manifest_bytes = main.len() + slices.iter().map(|(_, y)| y.len()).sum::<usize>();
    let from = node.gannetd()?.line_count();
    let start = Instant::now();
    for (file, yaml) in &slices {
        services::write_manifest_file(&manifest_dir, file, yaml)?;
    }
    services::write_manifest_file(&manifest_dir, MANIFEST_FILE, &main)?;
    drop(main);
    let (_, synced) = wait_programmed(node.gannetd()?, from, n as u64, SYNC_TIMEOUT)?;
    let gannet_nft_seconds = synced.at.saturating_duration_since(start).as_secs_f64();
    check_interrupted()?;
    progress.set_message("gannet-nft: reading its table back");
    let table = node.counts(&services)?;

    let mut changes = Vec::with_capacity(config.changes);
    if !changed.is_empty() {
        progress.set_message("gannet-nft: starting nft monitor");
        node.start_monitor()?;
        for k in 0..config.changes {
            check_interrupted()?;
            progress.set_message(format!(
                "gannet-nft (manifest directory): endpoint change {}/{}",
                k + 1,
                config.changes
            ));
            let i = changed[k % changed.len()];
            let change = Change::new(&mut services[i], rng, k);
            changes.push(change.through_file(&mut node, &manifest_dir, &services[i], rng)?);
            progress.inc(1);
        }
        node.check_last(changes.last(), &services)?;
    }
    drop(node);
    check_interrupted()?;

    let control = if config.changes > 0 {
        Some(through_control(
            config,
            tools,
            scratch,
            &mut services,
            rng,
            progress,
        )?)
    } else {
        None
    };
    check_interrupted()?;

    progress.set_message(format!(
        "nft -f of kube-proxy's rules for {n} services × {e} endpoints (up to {} s)",
        config.timeout.as_secs()
    ));
    let kube_proxy_nft = load_peer(
        PeerRun {
            role: "gkp",
            file: scratch.join("kube-proxy-programming.nft"),
            rules: nft::ruleset(&services),
            program: "nft",
            args: &["-f"],
            what: "nft -f",
            timeout: config.timeout,
        },
        |netns| {
            let listed = output_in(
                netns,
                "nft",
                &["list", "map", "ip", nft::TABLE, "service-ips"],
            )?;
            let found = listed.matches(": goto service-").count();
            ensure!(
                found == n,
                "after nft -f the service-ips map holds {found} services, not {n}"
            );
            Ok(found)
        },
    )?;
    if let Some((seconds, true)) = kube_proxy_nft.seconds() {
        warnings.push(format!(
            "programming: nft -f of kube-proxy's rules for {n} services × {e} endpoints did not \
             finish within {seconds:.0} s and was killed"
        ));
    }
    let (control_sync_seconds, control_changes) = control.unzip();
    let control_changes = control_changes.unwrap_or_default();
    Ok(Programming {
        services: n,
        endpoints_per_service: e,
        manifest_bytes,
        gannet_nft_seconds,
        control_sync_seconds,
        table,
        kube_proxy_nft,
        change_latency: ChangeLatency::of(&changes),
        changes,
        control_change_latency: ChangeLatency::of(&control_changes),
        control_changes,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn monitor_lines_of_slot_addresses_are_parsed() {
        assert_eq!(
            added_backends(
                "add element inet gannet-services slot3-addr4 { 10.96.0.10 . tcp . 80 : 10.192.0.0 }"
            ),
            vec![AddedBackend {
                slot: 3,
                frontend: "10.96.0.10 . tcp . 80".into(),
                backend: Ipv4Addr::new(10, 192, 0, 0),
            }]
        );
        let two = added_backends(
            "add element inet gannet-services slot10-addr4 { 10.96.0.10 . tcp . 80 : 10.192.0.1, 10.96.0.11 . tcp . 80 : 10.192.0.2 }",
        );
        assert_eq!(two.len(), 2, "{two:?}");
        assert_eq!(two[1].slot, 10);
        assert_eq!(two[1].backend, Ipv4Addr::new(10, 192, 0, 2));
        for other in [
            "add element inet gannet-services hairpin4 { 10.192.0.0 . 10.192.0.0 }",
            "add element inet gannet-services slot3-port4 { 10.96.0.10 . tcp . 80 : 8080 }",
            "delete element inet gannet-services slot3-addr4 { 10.96.0.10 . tcp . 80 : 10.128.0.3 }",
            "add element inet other slot3-addr4 { 10.96.0.10 . tcp . 80 : 10.192.0.0 }",
            "add table inet gannet-bench-monitor-ready",
            "",
        ] {
            assert!(added_backends(other).is_empty(), "{other}");
        }
    }

    #[test]
    fn map_listings_are_counted() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"map": {"family": "inet", "name": "slot0-addr4", "table": "gannet-services", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 20, "map": "ipv4_addr", "elem": [[{"concat": ["10.96.0.10", "tcp", 80]}, "10.128.0.0"], [{"concat": ["10.96.0.11", "tcp", 80]}, "10.128.0.10"]]}}]}"#;
        let elements = map_elements(json, "slot0-addr4").expect("elements");
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[1].1, "10.128.0.10");
        assert_eq!(elements[0].0["concat"][0], "10.96.0.10");
        let empty = r#"{"nftables": [{"metainfo": {}}, {"map": {"name": "services4", "table": "gannet-services"}}]}"#;
        assert!(map_elements(empty, "services4").expect("empty").is_empty());
        assert!(map_elements(empty, "slot0-addr4").is_err());
    }

    #[test]
    fn changed_services_get_files_of_their_own() {
        let services = objects::services(4, 2).expect("services");
        let own = BTreeSet::from([1, 3]);
        let main = main_manifest(&services, &own);
        assert_eq!(main.matches("kind: Service\n").count(), 4, "{main}");
        assert_eq!(main.matches("kind: EndpointSlice\n").count(), 2, "{main}");
        assert!(main.contains("name: svc-00000-bench\n"), "{main}");
        assert!(!main.contains("name: svc-00001-bench\n"), "{main}");
        assert_eq!(slice_file(&services[1]), "slice-svc-00001.yaml");
        let mut rng = Rng::new(7);
        let picked = pick(&mut rng, 10, 4);
        assert_eq!(picked.len(), 4);
        assert_eq!(
            picked.iter().collect::<BTreeSet<_>>().len(),
            4,
            "{picked:?}"
        );
        assert_eq!(pick(&mut rng, 3, 20).len(), 3);
    }
}
