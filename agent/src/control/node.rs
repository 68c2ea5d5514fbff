//! This node in the control plane: registration, the pod-CIDR lease, heartbeats, and the subnet
//! file gannet-cni allocates pod addresses from.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use gannet_api::{Client, ClientError, NodeRegistration};
use gannet_cni::net::Cidr;
use gannet_cni::subnet_env::SubnetEnv;
use tracing::{debug, error, info, warn};

use super::{Backoff, ControlConfig};

/// Registers the node, writes its subnet file and keeps the lease alive, for as long as the agent
/// runs. Registers again when the control plane forgot the node; keeps the subnet file as it is
/// while the control plane cannot be reached (the lease outlives short outages: pods keep
/// getting addresses from it).
pub(super) async fn run(mut client: Client, node_name: String, config: ControlConfig) {
    let mut backoff = Backoff::new();
    loop {
        let interval = register(&mut client, &node_name, &config, &mut backoff).await;
        let mut outage = false;
        loop {
            tokio::time::sleep(interval).await;
            match client.heartbeat(&node_name).await {
                Ok(cidrs) => {
                    if outage {
                        info!("heartbeats reach the control plane again");
                        outage = false;
                    }
                    write_lease(&config, &cidrs);
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

/// Registers until it works; returns the heartbeat interval.
async fn register(
    client: &mut Client,
    node_name: &str,
    config: &ControlConfig,
    backoff: &mut Backoff,
) -> Duration {
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
        let registration = NodeRegistration {
            name: node_name.to_owned(),
            internal_ips: internal_ips.clone(),
            vtep_mac: None,
            labels: std::collections::BTreeMap::new(),
        };
        match client.register_node(&registration).await {
            Ok(registered) => {
                info!(
                    node = node_name,
                    pod_cidrs = ?registered.pod_cidrs,
                    internal_ips = ?internal_ips,
                    heartbeat = ?registered.heartbeat_interval,
                    "node registered"
                );
                write_lease(config, &registered.pod_cidrs);
                backoff.reset();
                return registered.heartbeat_interval;
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

/// Writes the subnet file for `pod_cidrs` when its contents change.
fn write_lease(config: &ControlConfig, pod_cidrs: &[String]) {
    let env = match subnet_env(pod_cidrs, config.pod_mtu) {
        Ok(env) => env,
        Err(error) => {
            error!(
                ?pod_cidrs,
                error, "the node's lease is unusable; the subnet file is left as it is"
            );
            return;
        }
    };
    let text = env.render();
    let path = &config.subnet_file;
    match fs::read_to_string(path) {
        Ok(current) if current == text => return,
        Ok(current) => warn!(
            file = %path.display(),
            before = current.trim().replace('\n', " "),
            now = text.trim().replace('\n', " "),
            "the node's pod CIDRs changed; new pods get addresses from the new lease"
        ),
        Err(_) => {}
    }
    match write_atomically(path, text.as_bytes()) {
        Ok(()) => info!(file = %path.display(), ?pod_cidrs, "subnet file written"),
        Err(error) => error!(file = %path.display(), %error, "cannot write the subnet file"),
    }
}

/// The subnet file of a lease: Flannel's keys, each subnet written as its first address (as
/// Flannel writes its gateway), so flannel-style consumers read it unchanged.
///
/// # Errors
/// When a CIDR does not parse or a family is leased twice.
pub fn subnet_env(pod_cidrs: &[String], mtu: u32) -> Result<SubnetEnv, String> {
    let mut env = SubnetEnv {
        network: None,
        subnet: None,
        ipv6_network: None,
        ipv6_subnet: None,
        mtu: Some(mtu),
        // gannetd does not masquerade (yet): say so, so nobody relies on it.
        ipmasq: Some(false),
    };
    for text in pod_cidrs {
        let cidr: Cidr = text
            .parse()
            .map_err(|error| format!("pod CIDR {text:?}: {error}"))?;
        let first = first_address(&cidr).ok_or_else(|| format!("pod CIDR {cidr} is too small"))?;
        let slot = if cidr.is_ipv4() {
            &mut env.subnet
        } else {
            &mut env.ipv6_subnet
        };
        if slot.replace(first).is_some() {
            return Err(format!("two pod CIDRs of the family of {cidr}"));
        }
    }
    if env.subnet.is_none() && env.ipv6_subnet.is_none() {
        return Err("no pod CIDR".to_owned());
    }
    Ok(env)
}

fn first_address(cidr: &Cidr) -> Option<Cidr> {
    let network = gannet_cni::net::to_bits(cidr.network());
    let last = gannet_cni::net::to_bits(cidr.last());
    (last > network + 1)
        .then(|| {
            Cidr::new(
                gannet_cni::net::from_bits(cidr.network(), network + 1),
                cidr.prefix(),
            )
        })
        .flatten()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// The addresses of this network namespace that other nodes could reach: global unicast
/// addresses of interfaces that are up, not loopback, not link-local.
fn node_addresses() -> io::Result<Vec<IpAddr>> {
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
    use super::*;

    #[test]
    fn leases_become_flannel_subnet_files() {
        let env = subnet_env(
            &["10.244.3.0/24".to_owned(), "fd00:244:0:3::/64".to_owned()],
            1450,
        )
        .expect("valid lease");
        let text = env.render();
        assert_eq!(
            text,
            "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_SUBNET=fd00:244:0:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        // gannet-cni reads it back and allocates from the whole /24 but the written address.
        let read = SubnetEnv::parse(Path::new("subnet.env"), &text).expect("gannet-cni reads it");
        assert_eq!(read.ranges()[0][0].subnet.to_string(), "10.244.3.0/24");

        for bad in [
            &["nonsense".to_owned()][..],
            &[],
            &["10.0.0.0/24".to_owned(), "10.0.1.0/24".to_owned()],
        ] {
            assert!(subnet_env(bad, 1500).is_err(), "{bad:?}");
        }
    }
}
