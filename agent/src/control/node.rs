//! This node in the control plane: registration, the pod-CIDR lease and heartbeats. The lease
//! goes to the main loop, which writes the subnet file gannet-cni allocates pod addresses from
//! and hands the pod CIDRs to the overlay and the masquerade rules.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use gannet_api::{Client, ClientError, NodeRegistration, NodeResources};
use ipnet::IpNet;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::{Backoff, ControlConfig, Update};
use crate::subnet::Lease;

/// Registers the node, reports its lease and keeps the lease alive, for as long as the agent
/// runs. Registers again when the control plane forgot the node; keeps the lease as it is while
/// the control plane cannot be reached (the lease outlives short outages: pods keep getting
/// addresses from it).
pub(super) async fn run(
    mut client: Client,
    node_name: String,
    config: ControlConfig,
    updates: mpsc::Sender<Update>,
) {
    let mut backoff = Backoff::new();
    let mut reported: Option<Lease> = None;
    loop {
        let (interval, mut lease) = register(&mut client, &node_name, &config, &mut backoff).await;
        report(&updates, &mut reported, &lease).await;
        let mut outage = false;
        loop {
            tokio::time::sleep(interval).await;
            match client.heartbeat(&node_name).await {
                Ok(cidrs) => {
                    if outage {
                        info!("heartbeats reach the control plane again");
                        outage = false;
                    }
                    lease.pod_cidrs = parse_cidrs("pod CIDR", &cidrs);
                    report(&updates, &mut reported, &lease).await;
                }
                Err(ClientError::NotFound(reason)) => {
                    warn!(
                        reason,
                        "the control plane does not know this node: registering again"
                    );
                    break;
                }
                Err(error) => {
                    if outage {
                        debug!(%error, "heartbeat failed");
                    } else {
                        warn!(%error, "heartbeat failed; the node keeps its lease and subnet file");
                        outage = true;
                    }
                }
            }
        }
    }
}

/// Hands the lease to the main loop when it changed.
async fn report(updates: &mpsc::Sender<Update>, reported: &mut Option<Lease>, lease: &Lease) {
    if reported.as_ref() != Some(lease) && !lease.pod_cidrs.is_empty() {
        *reported = Some(lease.clone());
        let _ = updates.send(Update::Lease(lease.clone())).await;
    }
}

fn parse_cidrs(what: &str, texts: &[String]) -> Vec<IpNet> {
    texts
        .iter()
        .filter_map(|text| {
            text.parse::<IpNet>()
                .inspect_err(|_| error!(cidr = text, "the control plane sent an invalid {what}"))
                .ok()
        })
        .collect()
}

/// Registers until it works; returns the heartbeat interval and the lease.
async fn register(
    client: &mut Client,
    node_name: &str,
    config: &ControlConfig,
    backoff: &mut Backoff,
) -> (Duration, Lease) {
    let mut attempts = 0u32;
    loop {
        let internal_ips = if config.node_ips.is_empty() {
            node_addresses().unwrap_or_else(|error| {
                warn!(%error, "cannot list this node's addresses; registering without");
                Vec::new()
            })
        } else {
            config.node_ips.clone()
        };
        let capacity = node_resources()
            .inspect_err(|error| {
                if attempts == 0 {
                    warn!(%error, "cannot tell this node's CPUs and memory; registering without");
                }
            })
            .ok();
        let registration = NodeRegistration {
            name: node_name.to_owned(),
            internal_ips: internal_ips.clone(),
            vtep_mac: config.vtep_mac.clone(),
            labels: standard_labels(node_name),
            capacity,
            // Only a node that runs pods offers them its resources: the scheduler places pods
            // on nodes with allocatable resources, and a network-only node's pods are bound to
            // it by gannet-cni's reports instead.
            allocatable: capacity.filter(|_| config.kubelet),
        };
        match client.register_node(&registration).await {
            Ok(registered) => {
                info!(
                    node = node_name,
                    pod_cidrs = %crate::logging::list(&registered.pod_cidrs),
                    internal_ips = %crate::logging::list(&internal_ips),
                    heartbeat = ?registered.heartbeat_interval,
                    "node registered"
                );
                backoff.reset();
                let lease = Lease {
                    pod_cidrs: parse_cidrs("pod CIDR", &registered.pod_cidrs),
                    cluster_cidrs: parse_cidrs("cluster CIDR", &registered.cluster_cidrs),
                };
                return (registered.heartbeat_interval, lease);
            }
            Err(error) => {
                attempts += 1;
                let delay = backoff.next_delay();
                if error.is_transient() {
                    if attempts == 1 {
                        warn!(server = %config.server, %error, "cannot register the node yet; retrying");
                    } else {
                        debug!(%error, ?delay, "registration failed");
                    }
                } else {
                    error!(server = %config.server, %error, "the control plane refused the node's registration; retrying");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The well-known labels a kubelet sets on its Node: `kubernetes.io/hostname`,
/// `kubernetes.io/os` and `kubernetes.io/arch` (Go's names, as in Kubernetes).
fn standard_labels(node_name: &str) -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "loongarch64" => "loong64",
        other => other,
    };
    BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), node_name.to_owned()),
        (
            "kubernetes.io/os".to_owned(),
            std::env::consts::OS.to_owned(),
        ),
        ("kubernetes.io/arch".to_owned(), arch.to_owned()),
    ])
}

/// This node's CPUs (those gannetd may run on, within its cgroup's quota) and memory
/// (`MemTotal` of `/proc/meminfo`).
pub(crate) fn node_resources() -> io::Result<NodeResources> {
    let cpus = std::thread::available_parallelism()?.get();
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let memory_bytes = mem_total(&meminfo).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/meminfo has no MemTotal line in kB",
        )
    })?;
    Ok(NodeResources {
        cpu_millicores: u64::try_from(cpus).unwrap_or(u64::MAX).saturating_mul(1000),
        memory_bytes,
    })
}

/// `MemTotal:       16318412 kB` in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let mut fields = line["MemTotal:".len()..].split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    (fields.next()? == "kB").then(|| kib.saturating_mul(1024))
}

/// The addresses of this network namespace that other nodes could reach: global unicast
/// addresses of interfaces that are up, not loopback, not link-local.
pub(crate) fn node_addresses() -> io::Result<Vec<IpAddr>> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor points into the list getifaddrs returned, which stays valid until
        // freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        let flags = entry.ifa_flags;
        if entry.ifa_addr.is_null()
            || flags & libc::IFF_UP as u32 == 0
            || flags & libc::IFF_LOOPBACK as u32 != 0
        {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        let ip = unsafe {
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*entry.ifa_addr.cast::<libc::sockaddr_in>();
                    IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let sin6 = &*entry.ifa_addr.cast::<libc::sockaddr_in6>();
                    IpAddr::from(sin6.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        if !link_local && !ip.is_loopback() && !found.contains(&ip) {
            found.push(ip);
        }
    }
    // SAFETY: list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::{mem_total, node_resources, standard_labels};

    #[test]
    fn mem_total_is_read_in_bytes() {
        let meminfo = "MemTotal:       16318412 kB\nMemFree:         1234567 kB\n";
        assert_eq!(mem_total(meminfo), Some(16_318_412 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn this_node_has_cpus_and_memory_and_the_standard_labels() {
        let resources = node_resources().expect("this machine's CPUs and memory");
        assert!(
            resources.cpu_millicores >= 1000 && resources.cpu_millicores.is_multiple_of(1000),
            "whole CPUs, at least one: {resources:?}"
        );
        assert!(
            resources.memory_bytes >= 64 << 20,
            "at least 64 MiB: {resources:?}"
        );
        let labels = standard_labels("node-a");
        assert_eq!(labels["kubernetes.io/hostname"], "node-a");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert!(
            ["amd64", "arm64"].contains(&labels["kubernetes.io/arch"].as_str()),
            "{labels:?}"
        );
    }
}
