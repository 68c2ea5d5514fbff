//! What the multi-node scenarios (`overlay`, `nodeport`) do inside the namespaces of their nodes:
//! run tools there, load nftables rules, and wire pods with a CNI plugin invoked from inside a
//! node, as a runtime does (gannet-cni's configuration included).

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use gannet_testkit::{Netns, run_in};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::cni::exec;

/// The pods' interface.
pub const POD_IF: &str = "eth0";
/// How long one CNI invocation or one tool may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// gannet-cni's configuration of network `network` for a node whose gannetd keeps its state in
/// `state_dir`.
#[must_use]
pub fn gannet_cni_config(network: &str, state_dir: &Path, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": crate::cni::CNI_VERSION,
        "name": network,
        "type": "gannet-cni",
        "subnetFile": state_dir.join("subnet.env"),
        "agentSocket": state_dir.join("cni.sock"),
        "ipam": { "type": "gannet", "dataDir": ipam_dir },
    })
}

/// A 64-hex-digit container id, unique per run and pod.
pub fn container_id(pod: &str) -> String {
    let digest = Sha256::digest(format!("gannet-bench/{}/{pod}", std::process::id()).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `program args…` inside `netns`, failing with its stderr.
pub fn run_tool(netns: &Netns, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let output = run_in(cmd, Some(netns), None, EXEC_TIMEOUT)?;
    ensure!(
        output.status.success(),
        "`{program} {}` in {} failed ({}): {}",
        args.join(" "),
        netns.name(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `nft -f` of `rules` inside `netns` (through a file in `scratch`).
pub fn nft_load(netns: &Netns, rules: &str, scratch: &Path, name: &str) -> anyhow::Result<()> {
    let file = scratch.join(name);
    fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
    run_tool(netns, "nft", &["-f", &file.display().to_string()]).map(drop)
}

/// The MTU of `dev` in `netns`.
pub fn mtu(netns: &Netns, dev: &str) -> anyhow::Result<u32> {
    let line = netns.ip(&["-o", "link", "show", "dev", dev])?;
    line.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no MTU in {line:?}"))
}

/// Runs one CNI `ADD` for the pod in `pod` from a thread inside `node` (the plugin runs in the
/// node's namespace, as under a runtime) and returns the pod's IPv4 address.
pub fn cni_add(
    node: &Netns,
    pod: &Netns,
    plugin: &Path,
    cni_path: &Path,
    config: &Value,
    name: &str,
) -> anyhow::Result<Ipv4Addr> {
    let id = container_id(name);
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={id}"
    );
    let config = serde_json::to_vec(config)?;
    let cni_path = cni_path.display().to_string();
    let outcome = node.run(|| {
        exec::invoke(
            &exec::Invocation {
                plugin,
                command: "ADD",
                container_id: &id,
                netns: pod.path(),
                ifname: POD_IF,
                args: &args,
                cni_path: &cni_path,
                config: &config,
            },
            EXEC_TIMEOUT,
        )
    })??;
    ensure!(
        outcome.status.success(),
        "{} ADD of {name} failed: {}",
        plugin.display(),
        outcome.describe()
    );
    let result: Value = serde_json::from_slice(&outcome.stdout)
        .with_context(|| format!("the ADD result of {name} is not JSON"))?;
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find_map(|cidr| cidr.split('/').next()?.parse::<Ipv4Addr>().ok())
        .with_context(|| format!("the ADD result of {name} has no IPv4 address: {result}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_64_hex_digits() {
        let id = container_id("client");
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, container_id("server"));
    }
}
