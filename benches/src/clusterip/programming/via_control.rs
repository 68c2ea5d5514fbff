//! The second way to feed the changes: the services stored in a gannet-control, gannetd watching
//! it, each change one slice applied through the gRPC Apply.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use gannet_api::{Client, Credentials, Outcome, ServerAddr};
use indicatif::ProgressBar;

use crate::control::objects;
use crate::control::procs::ControlPlane;
use crate::results::ChangeSample;
use crate::services::Service;
use crate::util::{Rng, check_interrupted};

use super::change::Change;
use super::node::NftNode;
use super::{
    CHANGE_TIMEOUT, CONTROL_BATCH, Config, PROGRAMMED, SYNC_TIMEOUT, Tools, millis, wait_programmed,
};

/// The services stored in a fresh gannet-control, a fresh gannetd watching it (its full sync
/// timed from its start), then `config.changes` endpoint changes of random services, each one
/// changed slice applied through the gRPC Apply.
pub(super) fn through_control(
    config: &Config,
    tools: Tools<'_>,
    scratch: &Path,
    services: &mut [Service],
    rng: &mut Rng,
    progress: &ProgressBar,
) -> anyhow::Result<(f64, Vec<ChangeSample>)> {
    let n = services.len();
    progress.set_message(format!("gannet-control: storing {n} services"));
    let rt = crate::control::runtime()?;
    let plane = ControlPlane::start(
        tools.gannet_control,
        &scratch.join("control-nft"),
        objects::SERVICE_CIDR,
        &[],
    )?;
    let server: ServerAddr = plane
        .addr()
        .parse()
        .context("the control plane's address")?;
    let mut client = rt
        .block_on(Client::connect(&server, &Credentials::default()))
        .context("connecting to gannet-control")?;
    crate::control::load_store(&rt, &mut client, services, CONTROL_BATCH, progress)?;

    progress.set_message(format!(
        "gannet-nft (gannet-control): full sync of {n} services"
    ));
    let source = [
        "--control".to_owned(),
        plane.addr(),
        format!("--node-ip={}", crate::topology::NODE_IP),
    ];
    let mut node = NftNode::start(tools.gannetd, scratch, "nft-control", &source)?;
    let process = node.gannetd()?;
    let started = process.started;
    let (at, programmed) = process.wait_message(0, PROGRAMMED, SYNC_TIMEOUT)?;
    ensure!(
        programmed.field("frontends") == Some(n as u64),
        "gannetd programmed another number of frontends than the {n} stored: {}",
        programmed.text
    );
    let (_, synced) = wait_programmed(process, at + 1, n as u64, SYNC_TIMEOUT)?;
    let sync_seconds = synced.at.saturating_duration_since(started).as_secs_f64();
    node.counts(services)?;

    progress.set_message("gannet-nft (gannet-control): starting nft monitor");
    node.start_monitor()?;
    let mut samples = Vec::with_capacity(config.changes);
    for k in 0..config.changes {
        check_interrupted()?;
        progress.set_message(format!(
            "gannet-nft (gannet-control): endpoint change {}/{}",
            k + 1,
            config.changes
        ));
        let i = usize::try_from(rng.next_u64() % n as u64).unwrap_or(0);
        // Fresh addresses: after those of the manifest directory's changes.
        let change = Change::new(&mut services[i], rng, config.changes + k);
        let object = objects::slice_object(&services[i])?;
        let (sample, _) = change.observe(&mut node, |start| {
            let applied = rt
                .block_on(async {
                    tokio::time::timeout(
                        CHANGE_TIMEOUT,
                        client.apply(std::slice::from_ref(&object), false),
                    )
                    .await
                })
                .context("an Apply of one slice timed out")?
                .context("applying one changed slice")?;
            ensure!(
                applied.objects.first().map(|(_, o)| *o) == Some(Outcome::Configured),
                "the changed slice was not configured: {:?}",
                applied.objects.first().map(|(_, o)| o)
            );
            Ok(Some(millis(start, Instant::now())))
        })?;
        samples.push(sample);
        progress.inc(1);
    }
    node.check_last(samples.last(), services)?;
    // The agent before the control plane it watches.
    drop(node);
    drop(client);
    drop(plane);
    Ok((sync_seconds, samples))
}
