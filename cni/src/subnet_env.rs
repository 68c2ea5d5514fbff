//! The node's subnet file, in Flannel's `subnet.env` format (`KEY=VALUE` lines), so flannel-style
//! deployments work unchanged:
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_IPV6_NETWORK=fd00:244::/56
//! FLANNEL_IPV6_SUBNET=fd00:244:0:1::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//!
//! `FLANNEL_SUBNET` is the node's pod subnet written as its gateway address (Flannel's bridge
//! address); that address is never handed to a pod.

use std::path::{Path, PathBuf};

use crate::config::RangeConf;
use crate::net::Cidr;

/// A parsed subnet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The cluster network (`FLANNEL_NETWORK`).
    pub network: Option<Cidr>,
    /// The node's IPv4 pod subnet, with the reserved gateway address (`FLANNEL_SUBNET`).
    pub subnet: Option<Cidr>,
    /// The cluster's IPv6 network (`FLANNEL_IPV6_NETWORK`).
    pub ipv6_network: Option<Cidr>,
    /// The node's IPv6 pod subnet (`FLANNEL_IPV6_SUBNET`).
    pub ipv6_subnet: Option<Cidr>,
    /// MTU (`FLANNEL_MTU`).
    pub mtu: Option<u32>,
    /// Whether the node agent masquerades traffic leaving the cluster network (`FLANNEL_IPMASQ`).
    pub ipmasq: Option<bool>,
}

/// Why a subnet file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    /// The file does not exist (yet: the agent writes it).
    #[error("subnet file {} does not exist (yet)", .0.display())]
    Missing(PathBuf),
    /// The file cannot be read.
    #[error("reading subnet file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not valid.
    #[error("subnet file {}: line {line}: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// The file holds no subnet.
    #[error("subnet file {}: neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set", .0.display())]
    NoSubnet(PathBuf),
}

impl SubnetEnv {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// See [`SubnetEnvError`].
    pub fn load(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SubnetEnvError::Missing(path.to_path_buf()));
            }
            Err(source) => {
                return Err(SubnetEnvError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        SubnetEnv::parse(path, &text)
    }

    /// Parses the text of `path`.
    ///
    /// # Errors
    /// See [`SubnetEnvError`].
    pub fn parse(path: &Path, text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let mut env = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: None,
            ipmasq: None,
        };
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |what: String| SubnetEnvError::Invalid {
                path: path.to_path_buf(),
                line: index + 1,
                what,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| invalid(format!("{line:?} is not KEY=VALUE")))?;
            let value = value.trim().trim_matches('"');
            let cidr = |family_v4: bool| -> Result<Cidr, SubnetEnvError> {
                let cidr: Cidr = value.parse().map_err(|e| invalid(format!("{key}: {e}")))?;
                if cidr.is_ipv4() != family_v4 {
                    return Err(invalid(format!(
                        "{key}: {cidr} is of the wrong address family"
                    )));
                }
                Ok(cidr)
            };
            // A pod subnet needs an address besides its network address (and, for IPv4, its
            // broadcast address): the IPAM allocates from it.
            let subnet = |family_v4: bool| -> Result<Cidr, SubnetEnvError> {
                let subnet = cidr(family_v4)?;
                let host_bits = if family_v4 { 32 } else { 128 } - u32::from(subnet.prefix());
                if host_bits < 2 {
                    return Err(invalid(format!(
                        "{key}: {subnet} is too small to hold pods (at most a /{})",
                        if family_v4 { 30 } else { 126 }
                    )));
                }
                Ok(subnet)
            };
            match key.trim() {
                "FLANNEL_NETWORK" => env.network = Some(cidr(true)?),
                "FLANNEL_SUBNET" => env.subnet = Some(subnet(true)?),
                "FLANNEL_IPV6_NETWORK" => env.ipv6_network = Some(cidr(false)?),
                "FLANNEL_IPV6_SUBNET" => env.ipv6_subnet = Some(subnet(false)?),
                "FLANNEL_MTU" => {
                    let mtu: u32 = value
                        .parse()
                        .map_err(|_| invalid(format!("FLANNEL_MTU: {value:?} is not a number")))?;
                    if !(68..=65535).contains(&mtu) {
                        return Err(invalid(format!("FLANNEL_MTU: {mtu} is outside 68..=65535")));
                    }
                    env.mtu = Some(mtu);
                }
                "FLANNEL_IPMASQ" => {
                    env.ipmasq = Some(match value {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(invalid(format!(
                                "FLANNEL_IPMASQ: {value:?} is neither true nor false"
                            )));
                        }
                    });
                }
                // Other keys (FLANNEL_IPV6_*, future ones) are not ours to judge.
                _ => {}
            }
        }
        for (network, subnet, key) in [
            (env.network, env.subnet, "FLANNEL_SUBNET"),
            (env.ipv6_network, env.ipv6_subnet, "FLANNEL_IPV6_SUBNET"),
        ] {
            if let (Some(network), Some(subnet)) = (network, subnet)
                && !network.contains_cidr(&subnet)
            {
                return Err(SubnetEnvError::Invalid {
                    path: path.to_path_buf(),
                    line: 0,
                    what: format!("{key} {subnet} is outside the cluster network {network}"),
                });
            }
        }
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            return Err(SubnetEnvError::NoSubnet(path.to_path_buf()));
        }
        Ok(env)
    }

    /// The subnet file of a node's lease: Flannel's keys, each pod CIDR written as its first
    /// address (as Flannel writes its gateway), so flannel-style consumers read it unchanged.
    /// `cluster_cidrs` (may be empty) are the cluster's pod networks; the first of each family is
    /// written.
    ///
    /// # Errors
    /// When a pod CIDR is too small or a family is leased twice.
    pub fn for_lease(
        pod_cidrs: &[Cidr],
        cluster_cidrs: &[Cidr],
        mtu: u32,
        masquerade: bool,
    ) -> Result<SubnetEnv, String> {
        let mut env = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: Some(mtu),
            ipmasq: Some(masquerade),
        };
        for net in pod_cidrs {
            let net = net.truncated();
            // The first address after the network address, which must not be the last one.
            let last = crate::net::to_bits(net.last());
            let first = crate::net::to_bits(net.network())
                .checked_add(1)
                .filter(|&first| first < last)
                .ok_or_else(|| format!("pod CIDR {net} is too small"))?;
            let first = crate::net::from_bits(net.network(), first);
            let first = Cidr::new(first, net.prefix()).expect("same family and prefix");
            let slot = if first.is_ipv4() {
                &mut env.subnet
            } else {
                &mut env.ipv6_subnet
            };
            if slot.replace(first).is_some() {
                return Err(format!("two pod CIDRs of the family of {net}"));
            }
        }
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            return Err("no pod CIDR".to_owned());
        }
        for net in cluster_cidrs {
            let slot = if net.is_ipv4() {
                &mut env.network
            } else {
                &mut env.ipv6_network
            };
            slot.get_or_insert(net.truncated());
        }
        Ok(env)
    }

    /// The file's text, as [`SubnetEnv::parse`] reads it back: one `KEY=VALUE` line per set field.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        let mut line = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = writeln!(text, "{key}={value}");
            }
        };
        line("FLANNEL_NETWORK", self.network.map(|c| c.to_string()));
        line("FLANNEL_SUBNET", self.subnet.map(|c| c.to_string()));
        line(
            "FLANNEL_IPV6_NETWORK",
            self.ipv6_network.map(|c| c.to_string()),
        );
        line(
            "FLANNEL_IPV6_SUBNET",
            self.ipv6_subnet.map(|c| c.to_string()),
        );
        line("FLANNEL_MTU", self.mtu.map(|m| m.to_string()));
        line("FLANNEL_IPMASQ", self.ipmasq.map(|b| b.to_string()));
        text
    }

    /// The range sets to allocate from: one per family, the written address reserved as gateway
    /// when it is not the network address.
    #[must_use]
    pub fn ranges(&self) -> Vec<Vec<RangeConf>> {
        [self.subnet, self.ipv6_subnet]
            .into_iter()
            .flatten()
            .map(|subnet| {
                let gateway = (subnet.addr() != subnet.network()).then(|| subnet.addr());
                vec![RangeConf {
                    subnet: subnet.truncated(),
                    range_start: None,
                    range_end: None,
                    gateway,
                }]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannel_files() {
        let env = SubnetEnv::parse(
            Path::new("x"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .expect("valid");
        assert_eq!(env.mtu, Some(1450));
        assert_eq!(env.ipmasq, Some(true));
        let ranges = env.ranges();
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0][0].subnet.to_string(), "10.244.1.0/24");
        assert_eq!(
            ranges[0][0].gateway,
            Some("10.244.1.1".parse().expect("ip"))
        );
    }

    #[test]
    fn render_reads_back() {
        let env = SubnetEnv::parse(
            Path::new("x"),
            "FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_SUBNET=fd00:244:0:1::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n",
        )
        .expect("valid");
        let text = env.render();
        assert_eq!(
            SubnetEnv::parse(Path::new("x"), &text).expect("rendered"),
            env
        );
        assert!(
            !text.contains("FLANNEL_NETWORK"),
            "unset keys are left out: {text}"
        );
    }

    #[test]
    fn rejects_bad_lines_with_line_numbers() {
        let err = SubnetEnv::parse(
            Path::new("f"),
            "FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=big\n",
        )
        .expect_err("bad mtu");
        assert!(
            err.to_string().contains("line 2") && err.to_string().contains("FLANNEL_MTU"),
            "{err}"
        );
        let err = SubnetEnv::parse(
            Path::new("f"),
            "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.9.0.1/24\n",
        )
        .expect_err("outside");
        assert!(err.to_string().contains("outside"), "{err}");
        let err = SubnetEnv::parse(Path::new("f"), "FLANNEL_MTU=1400\n").expect_err("no subnet");
        assert!(matches!(err, SubnetEnvError::NoSubnet(_)), "{err}");
    }

    /// Found while moving this from gannetd: the lease of a Node whose pod CIDR is the last
    /// IPv6 address (`ffff:…:ffff/128`, which a `v1 Node` manifest may hold) overflowed.
    #[test]
    fn leases_too_small_for_pods_are_refused() {
        let cidr = |text: &str| -> Cidr { text.parse().expect("cidr") };
        for small in [
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
            "255.255.255.255/32",
            "10.0.0.0/31",
            "fd00::/127",
        ] {
            let err = SubnetEnv::for_lease(&[cidr(small)], &[], 1500, false).expect_err(small);
            assert!(err.contains("too small"), "{small}: {err}");
        }
        let env = SubnetEnv::for_lease(&[cidr("10.0.0.0/30")], &[], 1500, false).expect("a /30");
        assert_eq!(env.subnet, Some(cidr("10.0.0.1/30")));
    }

    /// Found by the `subnet_file` fuzz target: a /32 (or /31, /127, /128) pod subnet was read,
    /// and its ranges were ones the IPAM cannot allocate from (0.0.0.0/32 made its address
    /// arithmetic overflow).
    #[test]
    fn rejects_subnets_too_small_for_pods() {
        for (text, key) in [
            ("FLANNEL_SUBNET=10.244.1.4/32\n", "FLANNEL_SUBNET"),
            ("FLANNEL_SUBNET=0.0.0.0/31\n", "FLANNEL_SUBNET"),
            ("FLANNEL_IPV6_SUBNET=fd00::1/127\n", "FLANNEL_IPV6_SUBNET"),
        ] {
            let err = SubnetEnv::parse(Path::new("f"), text).expect_err(text);
            assert!(
                err.to_string().contains(key) && err.to_string().contains("too small"),
                "{text}: {err}"
            );
        }
        let env = SubnetEnv::parse(Path::new("f"), "FLANNEL_SUBNET=10.0.0.1/30\n").expect("a /30");
        crate::config::validate_ranges(&env.ranges()).expect("IPAM takes a /30");
    }
}
