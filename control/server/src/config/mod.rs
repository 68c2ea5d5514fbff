//! Command line of gannet-control, parsed and validated in one place. Every problem is collected
//! and reported together; bad configuration exits with status 64 (`EX_USAGE`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[cfg(test)]
mod tests;
mod validate;

pub use self::validate::{ConfigErrors, RunConfig, StoreConfig};

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
