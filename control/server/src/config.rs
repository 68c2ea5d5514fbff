//! Command line of gannet-control, parsed and validated in one place. Every problem is collected
//! and reported together; bad configuration exits with status 64 (`EX_USAGE`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::alloc::{Family, PodNetwork};
use crate::certs;
use crate::controller::nodes::Lifecycle;
use crate::registry::Network;
use crate::server::{Listen, Options, TlsMaterial};
use crate::store::EtcdTls;

/// `EX_USAGE` from sysexits.h.
pub const EXIT_USAGE: u8 = 64;
/// The embedded store's file in `--data-dir`.
pub const STORE_FILE: &str = "control.redb";

#[derive(Debug, Parser)]
#[command(
    name = "gannet-control",
    version,
    about = "gannet's compact control plane: Services, EndpointSlices, Pods and Nodes over gRPC",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (the default when no subcommand is given).
    Run(Box<RunArgs>),
    /// Write a CA, a server certificate, an agent client certificate and gannetctl's token.
    Certs(CertsArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Directory of the embedded store (`control.redb`); unused with --etcd-endpoints. One
    /// gannet-control per directory: a second one waits up to 10 s for the first to close the
    /// store (as in a restart), then exits. On SIGTERM gannet-control ends its watch streams at
    /// once (agents watch again from their last revision) and exits.
    #[arg(
        long,
        default_value = "/var/lib/gannet/control",
        env = "GANNET_CONTROL_DATA_DIR"
    )]
    pub data_dir: PathBuf,
    /// Where to serve: `unix:PATH` (mode --socket-mode), or `HOST:PORT` (TLS; plain only with
    /// --insecure on loopback). Repeatable, or comma-separated.
    #[arg(long, default_value = gannet_api::DEFAULT_SERVER, value_delimiter = ',', env = "GANNET_CONTROL_LISTEN")]
    pub listen: Vec<String>,
    /// Pod network(s), at most one IPv4 and one IPv6, comma-separated; each node leases one subnet.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10.244.0.0/16",
        env = "GANNET_CONTROL_CLUSTER_CIDR"
    )]
    pub cluster_cidr: Vec<String>,
    /// Prefix length of each node's IPv4 pod subnet.
    #[arg(
        long,
        default_value_t = 24,
        env = "GANNET_CONTROL_NODE_CIDR_MASK_SIZE_IPV4"
    )]
    pub node_cidr_mask_size_ipv4: u8,
    /// Prefix length of each node's IPv6 pod subnet.
    #[arg(
        long,
        default_value_t = 64,
        env = "GANNET_CONTROL_NODE_CIDR_MASK_SIZE_IPV6"
    )]
    pub node_cidr_mask_size_ipv6: u8,
    /// Service network(s) for cluster IPs, at most one IPv4 and one IPv6, comma-separated; the
    /// first is the default family. Must not overlap `--cluster-cidr`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10.96.0.0/12",
        env = "GANNET_CONTROL_SERVICE_CIDR"
    )]
    pub service_cidr: Vec<String>,
    /// Node ports are allocated from this range.
    #[arg(
        long,
        default_value = "30000-32767",
        env = "GANNET_CONTROL_NODE_PORT_RANGE"
    )]
    pub node_port_range: String,
    /// Store everything in etcd v3 (comma-separated `http://HOST:PORT`) instead of --data-dir:
    /// several gannet-control replicas can then serve one cluster.
    #[arg(long, value_delimiter = ',', env = "GANNET_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/gannet/", env = "GANNET_CONTROL_ETCD_PREFIX")]
    pub etcd_prefix: String,
    /// CA certificate (PEM) that signed the etcd members' certificates: https:// endpoints
    /// need it (kube-apiserver's flag name).
    #[arg(long, env = "GANNET_CONTROL_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; with --etcd-keyfile.
    #[arg(long, env = "GANNET_CONTROL_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// The client certificate's key (PEM); with --etcd-certfile.
    #[arg(long, env = "GANNET_CONTROL_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// TLS material for TCP listeners, as `gannet-control certs` writes it (server.pem,
    /// server-key.pem, ca.pem for agents' client certificates, token for gannetctl).
    #[arg(long, default_value = "/etc/gannet/pki", env = "GANNET_TLS_DIR")]
    pub tls_dir: PathBuf,
    /// Serve TCP listeners without TLS or authentication (loopback addresses only).
    #[arg(long, env = "GANNET_CONTROL_INSECURE")]
    pub insecure: bool,
    /// Mode of unix sockets (octal): who may connect is who may write the socket.
    #[arg(long, default_value = "0660", env = "GANNET_CONTROL_SOCKET_MODE")]
    pub socket_mode: String,
    /// How often agents send heartbeats.
    #[arg(
        long,
        default_value_t = 10,
        env = "GANNET_CONTROL_HEARTBEAT_INTERVAL_SECONDS"
    )]
    pub heartbeat_interval_seconds: u64,
    /// A node without a heartbeat for this long is `NotReady` (its pod CIDR lease has expired).
    #[arg(
        long,
        default_value_t = 40,
        env = "GANNET_CONTROL_NODE_MONITOR_GRACE_SECONDS"
    )]
    pub node_monitor_grace_seconds: u64,
    /// An expired pod CIDR lease is released after this many more seconds.
    #[arg(
        long,
        default_value_t = 3600,
        env = "GANNET_CONTROL_POD_CIDR_RELEASE_GRACE_SECONDS"
    )]
    pub pod_cidr_release_grace_seconds: u64,
    /// Revisions of history kept for watches to resume from (0: never compact).
    #[arg(
        long,
        default_value_t = 10_000,
        env = "GANNET_CONTROL_HISTORY_REVISIONS"
    )]
    pub history_revisions: u64,
    /// Log format (level from `GANNET_LOG`, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "GANNET_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Where Prometheus metrics are served (`GET /metrics`, `OpenMetrics` text): `IP:PORT`; port 0
    /// takes a free port (logged); an empty value turns metrics off. An address that cannot be
    /// bound stops gannet-control at start.
    #[arg(
        long,
        default_value = gannet_api::metrics::CONTROL_METRICS_ADDRESS,
        env = "GANNET_CONTROL_METRICS_ADDRESS",
        value_name = "ADDRESS"
    )]
    pub metrics_address: String,
}

#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// Directory to write into (created if missing).
    #[arg(long, default_value = "/etc/gannet/pki")]
    pub out: PathBuf,
    /// Names and addresses of the server certificate, comma-separated (default: localhost,
    /// 127.0.0.1, `::1` and this host's name).
    #[arg(long, value_delimiter = ',')]
    pub host: Vec<String>,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

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

impl CertsArgs {
    /// The server certificate's names: the given ones, or localhost, loopback and the host name.
    #[must_use]
    pub fn hosts(&self) -> Vec<String> {
        let given: Vec<String> = self
            .host
            .iter()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect();
        if !given.is_empty() {
            return given;
        }
        let mut hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let name = name.trim();
            if !name.is_empty() && name != "localhost" {
                hosts.push(name.to_owned());
            }
        }
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["gannet-control"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("test flags parse").run
    }

    /// Every flag of `gannet-control run` can come from the environment (the systemd unit's
    /// environment file sets them): `GANNET_CONTROL_` and the flag's name, except the variables
    /// shared with the other binaries (`GANNET_TLS_DIR`, `GANNET_LOG_FORMAT`) and
    /// `GANNET_ETCD_ENDPOINTS`, which predates the rule.
    #[test]
    fn every_flag_of_run_has_a_variable() {
        let run = RunArgs::augment_args(clap::Command::new("run"));
        for arg in run.get_arguments() {
            let long = arg.get_long().expect("every flag is a long flag");
            let expected = match long {
                "tls-dir" | "log-format" | "etcd-endpoints" => {
                    format!("GANNET_{}", long.to_uppercase().replace('-', "_"))
                }
                _ => format!("GANNET_CONTROL_{}", long.to_uppercase().replace('-', "_")),
            };
            assert_eq!(
                arg.get_env().map(|v| v.to_string_lossy().into_owned()),
                Some(expected),
                "--{long}"
            );
        }
    }

    #[test]
    fn defaults_make_a_one_machine_setup() {
        let config = args(&[]).validate().expect("defaults are valid");
        assert_eq!(
            config.store,
            StoreConfig::Embedded {
                path: PathBuf::from("/var/lib/gannet/control/control.redb")
            }
        );
        assert_eq!(
            config.options.listen,
            vec![Listen::Unix(PathBuf::from("/run/gannet/control.sock"))]
        );
        assert_eq!(config.options.network, Network::default());
        assert_eq!(config.options.socket_mode, 0o660);
    }

    #[test]
    fn every_problem_is_reported_with_its_flag() {
        let errors = args(&[
            "--listen",
            "0.0.0.0:7000",
            "--insecure",
            "--cluster-cidr",
            "10.244.0.1/16,fd00::/48",
            "--node-cidr-mask-size-ipv6",
            "40",
            "--service-cidr",
            "nonsense",
            "--node-port-range",
            "9-2",
            "--socket-mode",
            "999",
            "--etcd-endpoints",
            "etcd-without-port",
        ])
        .validate()
        .expect_err("all wrong")
        .0;
        let flags: Vec<&str> = errors
            .iter()
            .map(|e| e.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(
            flags,
            vec![
                "--insecure:",
                "--cluster-cidr",
                "--node-cidr-mask-size-ipv6",
                "--service-cidr",
                "--node-port-range",
                "--socket-mode",
                "--etcd-endpoints",
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn etcd_tls_flags_are_checked_together() {
        let errors = |extra: &[&str]| {
            let mut all = vec!["--etcd-endpoints"];
            all.extend_from_slice(extra);
            args(&all).validate().err().map(|e| e.0).unwrap_or_default()
        };
        let https_without_ca = errors(&["https://127.0.0.1:2379"]);
        assert!(
            https_without_ca
                .iter()
                .any(|e| e.starts_with("--etcd-cafile: required")),
            "{https_without_ca:#?}"
        );
        let unused = errors(&["http://127.0.0.1:2379", "--etcd-cafile", "/nonexistent.pem"]);
        assert!(
            unused
                .iter()
                .any(|e| e.starts_with("--etcd-cafile: given, but no --etcd-endpoints is https://")),
            "{unused:#?}"
        );
        let half = errors(&[
            "https://127.0.0.1:2379,http://127.0.0.1:2380",
            "--etcd-cafile",
            "/nonexistent.pem",
            "--etcd-certfile",
            "/c.pem",
        ]);
        for expected in [
            "--etcd-endpoints https://127.0.0.1:2379,http://127.0.0.1:2380: all members",
            "--etcd-cafile /nonexistent.pem: No such file",
            "--etcd-certfile and --etcd-keyfile: give both or neither",
        ] {
            assert!(
                half.iter().any(|e| e.starts_with(expected)),
                "expected {expected:?} in {half:#?}"
            );
        }
    }

    #[test]
    fn tls_listener_needs_the_certificates() {
        let dir = std::env::temp_dir().join(format!("gannet-config-{}", std::process::id()));
        let errors = args(&[
            "--listen",
            "127.0.0.1:0",
            "--tls-dir",
            dir.to_str().expect("utf-8"),
        ])
        .validate()
        .expect_err("no files")
        .0;
        assert_eq!(
            errors.len(),
            1,
            "one line for the missing files: {errors:#?}"
        );
        for name in [certs::SERVER_CERT, certs::SERVER_KEY, certs::CA_CERT] {
            assert!(errors[0].contains(name), "names {name}: {errors:#?}");
        }
        assert_eq!(
            errors[0].matches("gannet-control certs").count(),
            1,
            "one hint: {errors:#?}"
        );
    }

    #[test]
    fn overlapping_cluster_and_service_cidrs_are_refused() {
        let errors = args(&[
            "--cluster-cidr",
            "10.0.0.0/8,fd00:10:244::/56",
            "--service-cidr",
            "10.96.0.0/12,fd00:10::/32",
        ])
        .validate()
        .expect_err("both families overlap")
        .0;
        assert_eq!(
            errors,
            vec![
                "--service-cidr 10.96.0.0/12: overlaps --cluster-cidr 10.0.0.0/8 (cluster IPs and \
                 pod addresses need ranges of their own)",
                "--service-cidr fd00:10::/32: overlaps --cluster-cidr fd00:10:244::/56 (cluster \
                 IPs and pod addresses need ranges of their own)",
            ],
        );
        args(&[
            "--cluster-cidr",
            "10.96.0.0/16",
            "--service-cidr",
            "10.97.0.0/16",
        ])
        .validate()
        .expect("adjacent ranges do not overlap");
    }

    #[test]
    fn dual_stack_networks() {
        let config = args(&[
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--service-cidr",
            "fd00:96::/108,10.96.0.0/16",
        ])
        .validate()
        .expect("valid");
        let network = config.options.network;
        assert_eq!(network.pod_networks.len(), 2);
        assert_eq!(network.pod_networks[1].node_prefix, 64);
        assert_eq!(network.service_cidrs[0].to_string(), "fd00:96::/108");
    }
}
