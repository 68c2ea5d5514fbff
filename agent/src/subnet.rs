//! The node's subnet file: its pod-CIDR lease in Flannel's `subnet.env` format, which gannet-cni
//! (and flannel-style plugins) allocate pod addresses from. Written by gannetd whichever source
//! the lease comes from: the control plane's registration, or this node's `v1 Node` manifest.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gannet_cni::net::Cidr;
use gannet_cni::subnet_env::SubnetEnv;
use ipnet::IpNet;
use tracing::{error, info, warn};

/// This node's share of the cluster network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// This node's pod CIDRs, one per family.
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster's pod networks (what counts as inside the cluster); may be empty.
    pub cluster_cidrs: Vec<IpNet>,
}

/// Where and how the subnet file is written.
#[derive(Clone, Debug)]
pub struct SubnetFile {
    pub path: PathBuf,
    /// `FLANNEL_MTU`: the pods' MTU.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether gannetd masquerades traffic leaving the cluster (so a CNI
    /// plugin must not).
    pub masquerade: bool,
}

impl SubnetFile {
    /// Writes the file for `lease` when its contents change (atomically: a reader sees the old
    /// file or the new one).
    pub fn write(&self, lease: &Lease) {
        let env = match subnet_env(lease, self.mtu, self.masquerade) {
            Ok(env) => env,
            Err(error) => {
                error!(
                    pod_cidrs = %crate::logging::list(&lease.pod_cidrs),
                    error, "the node's lease is unusable; the subnet file is left as it is"
                );
                return;
            }
        };
        let text = env.render();
        let path = &self.path;
        match fs::read_to_string(path) {
            Ok(current) if current == text => return,
            Ok(current) => warn!(
                file = %path.display(),
                before = current.trim().replace('\n', " "),
                now = text.trim().replace('\n', " "),
                "the node's subnet file changes; new pods get addresses from the new lease"
            ),
            Err(_) => {}
        }
        match write_atomically(path, text.as_bytes()) {
            Ok(()) => {
                info!(file = %path.display(), pod_cidrs = %crate::logging::list(&lease.pod_cidrs), mtu = self.mtu, "subnet file written");
            }
            Err(error) => error!(file = %path.display(), %error, "cannot write the subnet file"),
        }
    }
}

fn cidr(net: IpNet) -> Cidr {
    Cidr::new(net.addr(), net.prefix_len()).expect("an IpNet's prefix fits its family")
}

/// The subnet file of a lease (see [`SubnetEnv::for_lease`]).
///
/// # Errors
/// When a pod CIDR is too small or a family is leased twice.
pub fn subnet_env(lease: &Lease, mtu: u32, masquerade: bool) -> Result<SubnetEnv, String> {
    let pod_cidrs: Vec<Cidr> = lease.pod_cidrs.iter().map(|net| cidr(*net)).collect();
    let cluster_cidrs: Vec<Cidr> = lease.cluster_cidrs.iter().map(|net| cidr(*net)).collect();
    SubnetEnv::for_lease(&pod_cidrs, &cluster_cidrs, mtu, masquerade)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn leases_become_flannel_subnet_files() {
        let lease = Lease {
            pod_cidrs: nets(&["10.244.3.0/24", "fd00:244:0:3::/64"]),
            cluster_cidrs: nets(&["10.244.0.0/16"]),
        };
        let text = subnet_env(&lease, 1450, true)
            .expect("valid lease")
            .render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_SUBNET=fd00:244:0:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        // gannet-cni reads it back and allocates from the whole /24 but the written address.
        let read = SubnetEnv::parse(Path::new("subnet.env"), &text).expect("gannet-cni reads it");
        assert_eq!(read.ranges()[0][0].subnet.to_string(), "10.244.3.0/24");

        for bad in [
            nets(&["10.0.0.0/31"]),
            nets(&[]),
            nets(&["10.0.0.0/24", "10.0.1.0/24"]),
        ] {
            let lease = Lease {
                pod_cidrs: bad.clone(),
                cluster_cidrs: Vec::new(),
            };
            assert!(subnet_env(&lease, 1500, false).is_err(), "{bad:?}");
        }
    }
}
