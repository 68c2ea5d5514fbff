//! From flags to a [`RunConfig`]: every flag checked, every problem collected into
//! [`ConfigErrors`] with the flag it is about.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::alloc::{Family, PodNetwork};
use crate::certs;
use crate::controller::nodes::Lifecycle;
use crate::registry::Network;
use crate::server::{Listen, Options, TlsMaterial};
use crate::store::EtcdTls;

use super::{RunArgs, STORE_FILE};

/// Where objects are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Embedded {
        path: PathBuf,
    },
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
        /// For `https://` endpoints.
        tls: Option<EtcdTls>,
    },
}

/// Validated configuration of `gannet-control run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub store: StoreConfig,
    pub data_dir: PathBuf,
    pub options: Options,
}

/// All configuration problems found, one per line, each naming its flag.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for error in &self.0 {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

fn parse_cidrs(flag: &str, values: &[String], errors: &mut Vec<String>) -> Vec<IpNet> {
    let mut cidrs: Vec<IpNet> = Vec::new();
    for value in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        match value.parse::<IpNet>() {
            Ok(cidr) if cidr.network() != cidr.addr() => errors.push(format!(
                "{flag} {value}: has host bits set (did you mean {}?)",
                cidr.trunc()
            )),
            Ok(cidr) => {
                if cidrs
                    .iter()
                    .any(|c| Family::of(c.addr()) == Family::of(cidr.addr()))
                {
                    errors.push(format!(
                        "{flag} {value}: at most one {} CIDR",
                        Family::of(cidr.addr()).name()
                    ));
                } else {
                    cidrs.push(cidr);
                }
            }
            Err(_) => errors.push(format!("{flag} {value}: not a CIDR (e.g. 10.96.0.0/12)")),
        }
    }
    if cidrs.is_empty() && !values.is_empty() {
        // Already reported.
    } else if cidrs.is_empty() {
        errors.push(format!("{flag}: at least one CIDR is required"));
    }
    cidrs
}

fn is_loopback_listener(listen: &Listen) -> bool {
    match listen {
        Listen::Unix(_) => true,
        Listen::Tcp(addr) => addr.ip().is_loopback(),
    }
}

/// Reads `names` from `dir`; what cannot be read is reported in one line with one hint.
fn read_files<const N: usize>(
    dir: &Path,
    names: [&str; N],
    errors: &mut Vec<String>,
) -> [Option<Vec<u8>>; N] {
    let mut missing = Vec::new();
    let read = names.map(|name| match std::fs::read(dir.join(name)) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            missing.push(format!("{name} ({error})"));
            None
        }
    });
    if !missing.is_empty() {
        errors.push(format!(
            "--tls-dir {}: cannot read {}; write the files with `gannet-control certs --out {}`",
            dir.display(),
            missing.join(", "),
            dir.display()
        ));
    }
    read
}

impl RunArgs {
    /// The TLS material for etcd, read from `--etcd-cafile`/`--etcd-certfile`/`--etcd-keyfile`:
    /// `https://` endpoints need the CA; the flags without an `https://` endpoint would not be
    /// used, and mixing `http://` and `https://` members is refused.
    fn etcd_tls(&self, endpoints: &[String], errors: &mut Vec<String>) -> Option<EtcdTls> {
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        let given: Vec<&str> = [
            ("--etcd-cafile", self.etcd_cafile.is_some()),
            ("--etcd-certfile", self.etcd_certfile.is_some()),
            ("--etcd-keyfile", self.etcd_keyfile.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        if https == 0 {
            if !given.is_empty() {
                errors.push(format!(
                    "{}: given, but no --etcd-endpoints is https:// (TLS would not be used)",
                    given.join(", ")
                ));
            }
            return None;
        }
        if https < endpoints.len() {
            errors.push(format!(
                "--etcd-endpoints {}: all members must be https:// or all http://",
                endpoints.join(",")
            ));
        }
        let read = |flag: &str, path: &Path, errors: &mut Vec<String>| match std::fs::read(path) {
            Ok(pem) if pem.windows(11).any(|w| w == b"-----BEGIN ") => Some(pem),
            Ok(_) => {
                errors.push(format!("{flag} {}: not a PEM file", path.display()));
                None
            }
            Err(error) => {
                errors.push(format!("{flag} {}: {error}", path.display()));
                None
            }
        };
        let ca = match &self.etcd_cafile {
            Some(path) => read("--etcd-cafile", path, errors),
            None => {
                errors.push(
                    "--etcd-cafile: required for https:// --etcd-endpoints (the CA that signed \
                     the members' certificates)"
                        .to_owned(),
                );
                None
            }
        };
        let client = match (&self.etcd_certfile, &self.etcd_keyfile) {
            (Some(cert), Some(key)) => Some((
                read("--etcd-certfile", cert, errors),
                read("--etcd-keyfile", key, errors),
            )),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                errors.push("--etcd-certfile and --etcd-keyfile: give both or neither".to_owned());
                None
            }
        };
        Some(EtcdTls {
            ca_pem: ca?,
            client: match client {
                Some((cert, key)) => Some((cert?, key?)),
                None => None,
            },
        })
    }

    /// Checks every flag; reads the TLS material when a TCP listener needs it.
    ///
    /// # Errors
    /// Every problem found, each naming its flag.
    pub fn validate(&self) -> Result<RunConfig, ConfigErrors> {
        let mut errors = Vec::new();

        let mut listen = Vec::new();
        for text in &self.listen {
            match text.parse::<Listen>() {
                Ok(parsed) => listen.push(parsed),
                Err(error) => errors.push(format!("--listen {error}")),
            }
        }
        if listen.is_empty() && !self.listen.is_empty() {
            // Reported above.
        } else if listen.is_empty() {
            errors.push("--listen: at least one listener is required".to_owned());
        }
        if self.insecure {
            for bad in listen.iter().filter(|l| !is_loopback_listener(l)) {
                errors.push(format!(
                    "--insecure: {bad} is not a loopback address; plain TCP is only served on \
                     127.0.0.1 or ::1 (drop --insecure to serve TLS)"
                ));
            }
        }
        let needs_tls = !self.insecure && listen.iter().any(|l| matches!(l, Listen::Tcp(_)));
        let tls = if needs_tls {
            let [cert, key, ca] = read_files(
                &self.tls_dir,
                [certs::SERVER_CERT, certs::SERVER_KEY, certs::CA_CERT],
                &mut errors,
            );
            let token = std::fs::read_to_string(self.tls_dir.join(certs::TOKEN))
                .ok()
                .map(|token| token.trim().to_owned())
                .filter(|token| !token.is_empty());
            match (cert, key, ca) {
                (Some(cert_pem), Some(key_pem), Some(client_ca_pem)) => Some(TlsMaterial {
                    cert_pem,
                    key_pem,
                    client_ca_pem,
                    token,
                }),
                _ => None,
            }
        } else {
            None
        };

        let cluster_cidrs = parse_cidrs("--cluster-cidr", &self.cluster_cidr, &mut errors);
        let mut pod_networks = Vec::new();
        for &cidr in &cluster_cidrs {
            let (flag, mask, max) = match cidr {
                IpNet::V4(_) => (
                    "--node-cidr-mask-size-ipv4",
                    self.node_cidr_mask_size_ipv4,
                    30,
                ),
                IpNet::V6(_) => (
                    "--node-cidr-mask-size-ipv6",
                    self.node_cidr_mask_size_ipv6,
                    126,
                ),
            };
            if mask < cidr.prefix_len() || mask > max {
                errors.push(format!(
                    "{flag} {mask}: must be between the cluster CIDR's prefix length ({}, {cidr}) and {max}",
                    cidr.prefix_len()
                ));
            } else {
                pod_networks.push(PodNetwork {
                    cidr,
                    node_prefix: mask,
                });
            }
        }
        let service_cidrs = parse_cidrs("--service-cidr", &self.service_cidr, &mut errors);
        for cidr in &service_cidrs {
            if cidr.max_prefix_len() - cidr.prefix_len() < 2 {
                errors.push(format!(
                    "--service-cidr {cidr}: too small to hold a cluster IP"
                ));
            }
            for pods in &cluster_cidrs {
                if cidr.contains(&pods.network()) || pods.contains(&cidr.network()) {
                    errors.push(format!(
                        "--service-cidr {cidr}: overlaps --cluster-cidr {pods} (cluster IPs and \
                         pod addresses need ranges of their own)"
                    ));
                }
            }
        }

        let node_ports = match self
            .node_port_range
            .split_once('-')
            .map(|(a, b)| (a.trim().parse::<u16>(), b.trim().parse::<u16>()))
        {
            Some((Ok(first), Ok(last))) if first >= 1 && first <= last => first..=last,
            _ => {
                errors.push(format!(
                    "--node-port-range {}: must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535 (e.g. 30000-32767)",
                    self.node_port_range
                ));
                crate::alloc::DEFAULT_NODE_PORTS
            }
        };

        let socket_mode = match u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => mode,
            _ => {
                errors.push(format!(
                    "--socket-mode {}: must be an octal file mode such as 0660 or 0600",
                    self.socket_mode
                ));
                0o660
            }
        };

        let store = if self.etcd_endpoints.iter().any(|e| !e.trim().is_empty()) {
            let mut endpoints = Vec::new();
            for endpoint in self
                .etcd_endpoints
                .iter()
                .map(|e| e.trim())
                .filter(|e| !e.is_empty())
            {
                let hostport = endpoint
                    .strip_prefix("http://")
                    .or_else(|| endpoint.strip_prefix("https://"))
                    .unwrap_or(endpoint);
                if hostport
                    .rsplit_once(':')
                    .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
                {
                    errors.push(format!(
                        "--etcd-endpoints {endpoint}: must be http://HOST:PORT, https://HOST:PORT \
                         or HOST:PORT"
                    ));
                } else {
                    endpoints.push(endpoint.to_owned());
                }
            }
            let tls = self.etcd_tls(&endpoints, &mut errors);
            if !self.etcd_prefix.starts_with('/') {
                errors.push(format!(
                    "--etcd-prefix {}: must start with '/'",
                    self.etcd_prefix
                ));
            }
            StoreConfig::Etcd {
                endpoints,
                prefix: self.etcd_prefix.clone(),
                tls,
            }
        } else {
            if !self.data_dir.is_absolute() {
                errors.push(format!(
                    "--data-dir {}: must be an absolute path",
                    self.data_dir.display()
                ));
            } else if self.data_dir.exists() && !self.data_dir.is_dir() {
                errors.push(format!(
                    "--data-dir {}: not a directory",
                    self.data_dir.display()
                ));
            }
            StoreConfig::Embedded {
                path: self.data_dir.join(STORE_FILE),
            }
        };

        for (flag, value) in [
            (
                "--heartbeat-interval-seconds",
                self.heartbeat_interval_seconds,
            ),
            (
                "--node-monitor-grace-seconds",
                self.node_monitor_grace_seconds,
            ),
        ] {
            if value == 0 {
                errors.push(format!("{flag}: must be at least 1"));
            }
        }
        if self.node_monitor_grace_seconds <= self.heartbeat_interval_seconds {
            errors.push(format!(
                "--node-monitor-grace-seconds {}: must be longer than --heartbeat-interval-seconds ({})",
                self.node_monitor_grace_seconds, self.heartbeat_interval_seconds
            ));
        }

        let metrics_address = gannet_api::metrics::parse_address(&self.metrics_address)
            .map_err(|e| errors.push(format!("--metrics-address {e}")))
            .unwrap_or_default();

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let grace = Duration::from_secs(self.node_monitor_grace_seconds);
        Ok(RunConfig {
            store,
            data_dir: self.data_dir.clone(),
            options: Options {
                listen,
                insecure: self.insecure,
                tls,
                socket_mode,
                network: Network {
                    service_cidrs,
                    pod_networks,
                    node_ports,
                },
                heartbeat_interval: Duration::from_secs(self.heartbeat_interval_seconds),
                lifecycle: Lifecycle {
                    period: (grace / 8).clamp(Duration::from_millis(200), Duration::from_secs(5)),
                    grace,
                    release_grace: Duration::from_secs(self.pod_cidr_release_grace_seconds),
                },
                compaction: (self.history_revisions > 0)
                    .then(|| (Duration::from_secs(60), self.history_revisions)),
                metrics_address,
            },
        })
    }
}
