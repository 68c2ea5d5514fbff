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
            match key.trim() {
                "FLANNEL_NETWORK" => env.network = Some(cidr(true)?),
                "FLANNEL_SUBNET" => env.subnet = Some(cidr(true)?),
                "FLANNEL_IPV6_NETWORK" => env.ipv6_network = Some(cidr(false)?),
                "FLANNEL_IPV6_SUBNET" => env.ipv6_subnet = Some(cidr(false)?),
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
}
