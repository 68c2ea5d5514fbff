//! gannetd with its nftables data plane in a node namespace of its own, `nft monitor` there, and
//! reading what the kernel says about gannet's table (its maps, the elements it adds).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, ensure};
use gannet_testkit::{Cgroup, Netns};
use serde_json::Value;

use crate::agent;
use crate::control::output_in;
use crate::control::procs::Logged;
use crate::results::{ChangeSample, TableCounts};
use crate::services::Service;

use super::{
    MONITOR_FIRST_WAIT, MONITOR_LAST_WAIT, SENTINEL_TABLE, START_TIMEOUT, SYNC_INTERVAL_MS, TABLE,
};

/// gannetd with its nftables data plane in a node namespace of its own, and (once started)
/// `nft monitor` there. Drop order: the monitor, gannetd (stopped, then `gannetd cleanup` in the
/// namespace, which removes the table), its cgroup (named to cleanup only), the namespace.
pub(super) struct NftNode {
    monitor: Option<Logged>,
    gannetd: Option<Logged>,
    binary: PathBuf,
    bpf_root: PathBuf,
    state_dir: PathBuf,
    cgroup: Cgroup,
    netns: Netns,
}

impl NftNode {
    /// Starts gannetd fed by `source` (its flags: `--manifest-dir DIR`, or `--control ADDR` and
    /// the node's address) in a node namespace of its own, `tag` naming its bpffs and state
    /// directories, and waits until its (empty) table exists.
    pub(super) fn start(
        gannetd: &Path,
        scratch: &Path,
        tag: &str,
        source: &[String],
    ) -> anyhow::Result<NftNode> {
        let netns = Netns::new("gnp")?;
        agent::check_not_root_netns(&netns)?;
        let cgroup = Cgroup::new()?;
        agent::check_cgroup(&cgroup)?;
        let mut node = NftNode {
            monitor: None,
            gannetd: None,
            binary: gannetd.to_path_buf(),
            bpf_root: agent::fresh_bpf_root(Some(tag))?,
            state_dir: scratch.join(format!("state-{tag}")),
            cgroup,
            netns,
        };
        let mut cmd = Command::new(gannetd);
        cmd.env("GANNET_LOG", "info,gannet_k8s::dir=debug")
            // Several agents per machine; nothing scrapes them.
            .arg("--metrics-address=")
            .arg("--cgroup-path")
            .arg(node.cgroup.path())
            .arg("--bpf-root")
            .arg(&node.bpf_root)
            .arg("--state-dir")
            .arg(&node.state_dir)
            .args(source)
            .args(["--log-format", "json"])
            .args(agent::nft_args("bench-nft", SYNC_INTERVAL_MS));
        let process = node.gannetd.insert(Logged::spawn(
            cmd,
            Some(&node.netns),
            "gannetd --dataplane nftables",
        )?);
        process.wait_message(0, "ready for CNI endpoints", START_TIMEOUT)?;
        Ok(node)
    }

    pub(super) fn gannetd(&mut self) -> anyhow::Result<&mut Logged> {
        self.gannetd.as_mut().context("gannetd was stopped")
    }

    pub(super) fn monitor(&mut self) -> anyhow::Result<&mut Logged> {
        self.monitor.as_mut().context("nft monitor is not running")
    }

    /// Starts `nft monitor new` in the namespace and waits until it reports: a table of the
    /// harness's own is created (and removed again) until its line arrives. Before it reports
    /// anything nft reads the whole ruleset, every element included (about 4 s for 10 000
    /// services × 10 endpoints), and starts that over whenever the ruleset changes meanwhile,
    /// so the sentinel is created at growing intervals.
    pub(super) fn start_monitor(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("nft");
        cmd.args(["monitor", "new"]);
        self.monitor = Some(Logged::spawn_merged(cmd, Some(&self.netns), "nft monitor")?);
        let expected = format!("add table inet {SENTINEL_TABLE}");
        let mut wait = MONITOR_FIRST_WAIT;
        loop {
            output_in(
                &self.netns,
                "nft",
                &["add", "table", "inet", SENTINEL_TABLE],
            )?;
            let seen = self
                .monitor()?
                .wait_line(0, wait, "the sentinel table", |l| l.text.trim() == expected);
            output_in(
                &self.netns,
                "nft",
                &["delete", "table", "inet", SENTINEL_TABLE],
            )?;
            match seen {
                Ok(_) => return Ok(()),
                Err(_) if wait < MONITOR_LAST_WAIT => wait *= 2,
                Err(err) => return Err(err.context("nft monitor reports nothing")),
            }
        }
    }

    /// `nft -j list map inet gannet-services MAP`: its elements as (key, value) pairs.
    fn map(&self, map: &str) -> anyhow::Result<Vec<(Value, Value)>> {
        let json = output_in(
            &self.netns,
            "nft",
            &["-j", "list", "map", "inet", TABLE, map],
        )?;
        map_elements(&json, map)
    }

    /// What the table holds after programming `services`, checked: every frontend, and every
    /// one of them with a backend in the last slot.
    pub(super) fn counts(&self, services: &[Service]) -> anyhow::Result<TableCounts> {
        let n = services.len();
        let last = services.first().map_or(0, |s| s.endpoints.len()).max(1) - 1;
        let table = TableCounts {
            services: self.map("services4")?.len(),
            last_slot_addresses: self.map(&format!("slot{last}-addr4"))?.len(),
        };
        ensure!(
            table.services == n && table.last_slot_addresses == n,
            "gannetd logged {n} services programmed, but its table holds {} frontends and {} \
             backends in slot {last}",
            table.services,
            table.last_slot_addresses,
        );
        Ok(table)
    }

    /// Checks that the table holds the change `last` made (its new address in its slot).
    pub(super) fn check_last(
        &self,
        last: Option<&ChangeSample>,
        services: &[Service],
    ) -> anyhow::Result<()> {
        let Some(last) = last else {
            return Ok(());
        };
        let svc = services
            .iter()
            .find(|s| format!("{}/{}", s.namespace, s.name) == last.service)
            .context("the last changed service")?;
        let vip = svc.cluster_ip.to_string();
        let new = last.new.to_string();
        let holds = self
            .map(&format!("slot{}-addr4", last.slot))?
            .iter()
            .any(|(k, v)| k["concat"][0].as_str() == Some(&vip) && v.as_str() == Some(&new));
        ensure!(
            holds,
            "after the changes, slot {} of {vip} does not hold {new} in gannetd's table",
            last.slot
        );
        Ok(())
    }
}

impl Drop for NftNode {
    fn drop(&mut self) {
        if let Some(mut monitor) = self.monitor.take() {
            monitor.stop();
        }
        if let Some(mut gannetd) = self.gannetd.take() {
            gannetd.stop();
        }
        if let Err(err) = agent::cleanup(
            &self.binary,
            &self.bpf_root,
            self.cgroup.path(),
            Some(&self.state_dir),
            Some(&self.netns),
        ) {
            eprintln!("gannet-bench: cleaning up the gannet-nft programming node: {err:#}");
        }
    }
}

/// The elements of map `name` in `nft -j list map …` output, as (key, value) pairs.
///
/// # Errors
/// If the output is not nft's JSON or holds no map `name`.
pub fn map_elements(json: &str, name: &str) -> anyhow::Result<Vec<(Value, Value)>> {
    let value: Value = serde_json::from_str(json).context("parsing nft's JSON")?;
    let map = value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|item| item.get("map").filter(|m| m["name"] == name))
        .with_context(|| format!("nft listed no map {name}"))?;
    Ok(map["elem"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let pair = e.as_array()?;
            Some((pair.first()?.clone(), pair.get(1)?.clone()))
        })
        .collect())
}

/// One element that `nft monitor` reported added to a slot's address map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedBackend {
    /// The slot.
    pub slot: usize,
    /// The frontend as nft prints it: `10.96.0.10 . tcp . 80`.
    pub frontend: String,
    /// The backend address.
    pub backend: Ipv4Addr,
}

/// The backends an `nft monitor` line reports added to gannet's slot address maps, e.g.
/// `add element inet gannet-services slot3-addr4 { 10.96.0.10 . tcp . 80 : 10.192.0.0 }`;
/// empty for every other line.
#[must_use]
pub fn added_backends(line: &str) -> Vec<AddedBackend> {
    let parse = || -> Option<Vec<AddedBackend>> {
        let rest = line
            .trim()
            .strip_prefix("add element inet ")?
            .strip_prefix(TABLE)?
            .strip_prefix(" slot")?;
        let (slot, rest) = rest.split_once("-addr4 { ")?;
        let slot = slot.parse().ok()?;
        let body = rest.strip_suffix(" }")?;
        body.split(", ")
            .map(|element| {
                let (frontend, backend) = element.rsplit_once(" : ")?;
                Some(AddedBackend {
                    slot,
                    frontend: frontend.to_owned(),
                    backend: backend.parse().ok()?,
                })
            })
            .collect()
    };
    parse().unwrap_or_default()
}
