//! One endpoint change, made and timed until the kernel reports the new element.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::control::objects;
use crate::results::ChangeSample;
use crate::services::{self, Service};
use crate::util::Rng;

use super::node::{NftNode, added_backends};
use super::{CHANGE_TIMEOUT, READING, SYNC_INTERVAL_MS, SYNCED, millis, slice_file};

/// One endpoint change about to be made: endpoint `j` of a service replaced by a fresh address.
pub(super) struct Change {
    service: String,
    frontend: String,
    old: Ipv4Addr,
    new: Ipv4Addr,
}

impl Change {
    /// Replaces a random endpoint of `svc` by the address of change `k`.
    pub(super) fn new(svc: &mut Service, rng: &mut Rng, k: usize) -> Change {
        let j = usize::try_from(rng.next_u64() % svc.endpoints.len() as u64).unwrap_or(0);
        let old = svc.endpoints[j];
        let new = objects::replacement(k);
        svc.endpoints[j] = new;
        Change {
            service: format!("{}/{}", svc.namespace, svc.name),
            frontend: format!("{} . tcp . {}", svc.cluster_ip, svc.port),
            old,
            new,
        }
    }

    /// Makes the change by renaming the service's rewritten slice file into `manifest_dir`, at a
    /// random moment within two of gannetd's scan intervals, so that the changes do not all land
    /// at the same point of its scan cycle.
    pub(super) fn through_file(
        self,
        node: &mut NftNode,
        manifest_dir: &Path,
        svc: &Service,
        rng: &mut Rng,
    ) -> anyhow::Result<ChangeSample> {
        let file = slice_file(svc);
        let path = manifest_dir.join(&file);
        let tmp = manifest_dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, services::slice_yaml(svc))
            .with_context(|| format!("writing {}", tmp.display()))?;
        thread::sleep(Duration::from_micros(
            rng.next_u64() % (2 * SYNC_INTERVAL_MS * 1000),
        ));
        let from = node.gannetd()?.line_count();
        let (mut sample, start) = self.observe(node, |_| {
            services::rename_into_place(&tmp, &path)?;
            Ok(None)
        })?;
        // When gannetd's scan read the file: its debug line, before its sync line.
        sample.noticed_ms = node
            .gannetd()?
            .wait_line(from, Duration::ZERO, READING, |l| {
                l.message().as_deref() == Some(READING)
                    && l.json()
                        .and_then(|v| v.get("file").and_then(Value::as_str).map(str::to_owned))
                        .is_some_and(|f| f.ends_with(&file))
            })
            .ok()
            .map(|(_, line)| millis(start, line.at));
        Ok(sample)
    }

    /// Makes the change with `make` (given the start, returning how long its own call took, if
    /// it is a call) and waits for the new element in `node`'s table (`nft monitor`) and for
    /// gannetd's `services synced` line, which must report exactly one updated frontend.
    /// Returns the sample and when the change was made.
    pub(super) fn observe(
        self,
        node: &mut NftNode,
        make: impl FnOnce(Instant) -> anyhow::Result<Option<f64>>,
    ) -> anyhow::Result<(ChangeSample, Instant)> {
        let log_from = node.gannetd()?.line_count();
        let monitor_from = node.monitor()?.line_count();
        let start = Instant::now();
        let call_ms = make(start)?;
        let Change {
            service,
            frontend,
            old,
            new,
        } = self;
        let (_, added) = node.monitor()?.wait_line(
            monitor_from,
            CHANGE_TIMEOUT,
            &format!("{frontend} : {new} added"),
            |l| {
                added_backends(&l.text)
                    .iter()
                    .any(|a| a.backend == new && a.frontend == frontend)
            },
        )?;
        let slot = added_backends(&added.text)
            .into_iter()
            .find(|a| a.backend == new)
            .map_or(0, |a| a.slot);
        let (_, synced) = node
            .gannetd()?
            .wait_message(log_from, SYNCED, CHANGE_TIMEOUT)?;
        ensure!(
            synced.field("updated") == Some(1) && synced.field("failed") == Some(0),
            "the change of {service} ({old} → {new}): gannetd reported {}",
            synced.text
        );
        let sample = ChangeSample {
            service,
            old,
            new,
            slot,
            table_ms: millis(start, added.at),
            noticed_ms: None,
            call_ms,
            logged_ms: millis(start, synced.at),
        };
        Ok((sample, start))
    }
}
