//! gannet on the guests, as on real nodes: gannet-control on node1 (TLS on the lab network,
//! the certificates from `gannet-control certs`), gannetd on every node started as a service
//! would be (`gannet-service`: detached, root cgroup, the guest's root network namespace,
//! restarted on failure), each node registered with its pod-CIDR lease.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::lab::{self, LabState};

/// gannet-control's TLS port on node1.
pub(crate) const CONTROL_PORT: u16 = 6443;
/// Where the guests keep the certificates (gannet's default `--tls-dir`).
const PKI: &str = "/etc/gannet/pki";
/// How long a step inside a guest may take (TCG is slow).
const STEP: Duration = Duration::from_secs(120);
/// How long the nodes get to register and write their subnet files.
const READY: Duration = Duration::from_secs(180);

/// Starts gannet on the lab's guests and waits until every node has its lease.
pub(crate) fn start(dir: &Path, mut state: LabState, overlay: &str) -> anyhow::Result<()> {
    let control = state
        .nodes
        .first()
        .ok_or_else(|| anyhow::anyhow!("the lab has no nodes"))?
        .clone();
    control.sh(
        &format!(
            "gannet-control certs --out {PKI} --host {ip},{name} --force",
            ip = control.ip,
            name = control.name
        ),
        STEP,
    )?;
    let mut pki = Vec::new();
    for file in ["ca.pem", "agent.pem", "agent-key.pem", "token"] {
        pki.push((file, control.sh(&format!("cat {PKI}/{file}"), STEP)?));
    }
    for node in &state.nodes[1..] {
        for (file, text) in &pki {
            node.sh_with_input(
                &format!("mkdir -p {PKI} && umask 077 && cat >{PKI}/{file}"),
                text,
                STEP,
            )?;
        }
    }
    control.sh(
        &format!(
            "gannet-service start gannet-control -- gannet-control run \
             --listen unix:/run/gannet/control.sock,{ip}:{CONTROL_PORT} --tls-dir {PKI}",
            ip = control.ip
        ),
        STEP,
    )?;
    wait_for(
        &control,
        "gannet-control to serve",
        "gannetctl get nodes",
        READY,
    )?;
    for node in &state.nodes {
        node.sh(
            &format!(
                "gannet-service start gannetd -- gannetd run --server https://{cip}:{CONTROL_PORT} \
                 --tls-dir {PKI} --overlay {overlay} --node-ip {ip} --node-name {name}",
                cip = control.ip,
                ip = node.ip,
                name = node.name
            ),
            STEP,
        )?;
    }
    for node in &state.nodes {
        wait_for(
            node,
            "its pod-CIDR lease (/run/gannet/subnet.env)",
            "test -s /run/gannet/subnet.env && grep -q FLANNEL_SUBNET /run/gannet/subnet.env",
            READY,
        )?;
    }
    let want = state.nodes.len();
    wait_for(
        &control,
        &format!("{want} Ready nodes"),
        &format!("test \"$(gannetctl get nodes | grep -cw Ready)\" -eq {want}"),
        READY,
    )?;
    state.overlay = Some(overlay.to_owned());
    lab::write_json(&dir.join("lab.json"), &state)
}

fn wait_for(
    node: &lab::NodeState,
    what: &str,
    check: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let argv = ["sh", "-c", check].map(str::to_owned);
    loop {
        let r = node.call(&argv, "", STEP)?;
        if r.success() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            anyhow::bail!(
                "{}: no {what} within {timeout:?} (`{check}`: {}):\n{}{}\nsee the logs in {}",
                node.name,
                lab::describe(&r),
                r.stdout,
                r.stderr,
                node.dir.display()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}
