//! Command line of gannetd, parsed and validated in one place. Every problem is collected and
//! reported together; bad configuration exits with status 64 (`EX_USAGE`).

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use gannet_api::{Credentials, SERVER_ENV, ServerAddr, metrics, pki};
use gannet_common::{
    DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_CONNTRACK,
    DEFAULT_MAX_ENDPOINTS, DEFAULT_MAX_REV_NAT, DEFAULT_MAX_SERVICES, DEFAULT_MAX_SLOTS,
    MIN_LRU_CAPACITY,
};

use crate::control::ControlConfig;
use crate::overlay::{DEFAULT_VXLAN_PORT, Mode, OverlayConfig};
use crate::sys;
use ipnet::IpNet;

#[cfg(test)]
mod tests;
mod validate;

pub use self::validate::{CleanupConfig, ConfigErrors, MAX_MAGLEV_TABLE_SIZE, RunConfig};

/// File name of the subnet file in the state directory (unless `--subnet-file` says otherwise).
pub const SUBNET_FILE: &str = "subnet.env";

/// `EX_USAGE` from sysexits.h.
pub const EXIT_USAGE: i32 = 64;

/// The TLS directory's variable, as gannetctl's (`--tls-dir`).
pub const TLS_DIR_ENV: &str = "GANNET_TLS_DIR";
/// The TLS directory when neither `--tls-dir` nor a variable names one.
pub const DEFAULT_TLS_DIR: &str = "/etc/gannet/pki";
/// Earlier names of `GANNET_SERVER` and `GANNET_TLS_DIR`, read when the new ones are not set.
pub const OLD_SERVER_ENV: &str = "GANNET_CONTROL";
pub const OLD_TLS_DIR_ENV: &str = "GANNET_CONTROL_TLS_DIR";

#[derive(Debug, Parser)]
#[command(
    name = "gannetd",
    version,
    about = "gannet node agent: eBPF service load balancing and the pod network between nodes",
    after_help = "One gannetd per node: it locks --bpf-root and --state-dir while it runs; a \
                  second gannetd (or gannetd cleanup) on either exits with status 1 naming the \
                  process that holds it. When its pinned maps, its cgroup links or its CNI \
                  socket are removed while it runs, gannetd logs an error and exits with status \
                  1: start it again to re-create them.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; boxing would only complicate the clap derive"
)]
pub enum Command {
    /// Run the agent (the default when no subcommand is given).
    Run(RunArgs),
    /// Remove everything gannetd created: its cgroup links, its pinned maps and its bpffs
    /// directory, the overlay's device and routes, its nftables tables (`inet gannet`,
    /// `inet gannet-services`). Refuses (status 1, naming it) while a gannetd holds the
    /// `--bpf-root` or the `--state-dir` it is given: stop gannetd first.
    Cleanup(CleanupArgs),
    /// Print what the data plane holds (services with their backends, endpoints with their
    /// counters, the NodePort program, the overlay) as tables, or as JSON with `-o json`, read
    /// from the pinned maps in `--bpf-root`, or, when gannetd runs with `--dataplane nftables`,
    /// from the table `inet gannet-services`.
    Status(StatusArgs),
    /// Images for the pods gannetd runs (`--container-runtime`): `gannetd image import FILE`.
    Image(crate::kubelet::image::ImageArgs),
}

/// `gannetd status`'s flags.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// `table` for people, `json` for programs (the whole document, every field).
    #[arg(short = 'o', long, value_enum, default_value_t = StatusOutput::Table)]
    pub output: StatusOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusOutput {
    Table,
    Json,
}

/// The directories every subcommand works on.
#[derive(Debug, Clone, Args)]
pub struct DirArgs {
    /// Directory under bpffs for gannetd's pinned maps and links (bpffs is mounted at
    /// /sys/fs/bpf when missing; a path on another filesystem, or the mount point itself, is
    /// refused). gannetd locks it while it runs: one gannetd per bpf root.
    #[arg(long, default_value = "/sys/fs/bpf/gannet", env = "GANNET_BPF_ROOT")]
    pub bpf_root: PathBuf,
    /// Directory for gannetd's runtime state: the CNI socket (`cni.sock`) and the endpoint
    /// registry (`endpoints.json`). gannetd locks it while it runs: one gannetd per state
    /// directory.
    #[arg(long, default_value = "/run/gannet", env = "GANNET_STATE_DIR")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// cgroup v2 directory the socket load balancer is attached to (a file or a directory of
    /// another filesystem is refused at start).
    #[arg(long, default_value = "/sys/fs/cgroup", env = "GANNET_CGROUP_PATH")]
    pub cgroup_path: PathBuf,
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "GANNET_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// `gannetd cleanup`: the directories and the log format; the links to detach are pinned in
/// `--bpf-root`, so it needs no cgroup. Every other flag of `gannetd run` is accepted too (and
/// its variable read), so that a unit or an operator can give cleanup the agent's own
/// arguments; those are checked as `gannetd run` parses them and otherwise ignored.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "GANNET_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub run_flags: RunFlagsIgnored,
}

/// The help heading of the `gannetd run` flags that `gannetd cleanup` accepts and ignores.
pub const IGNORED_RUN_FLAGS_HEADING: &str = "Accepted for `gannetd run` compatibility (unused)";

/// The flags of `gannetd run` that `gannetd cleanup` uses itself (argument ids).
const CLEANUP_OWN_FLAGS: [&str; 3] = ["bpf_root", "state_dir", "log_format"];

/// Those of `gannetd run`'s flags that cleanup does not use, as run declares them (so a flag
/// added to run is accepted by cleanup without a change here).
fn run_only_flags() -> Vec<clap::Arg> {
    RunArgs::augment_args(clap::Command::new("run"))
        .get_arguments()
        .filter(|arg| !CLEANUP_OWN_FLAGS.contains(&arg.get_id().as_str()))
        .cloned()
        .collect()
}

/// `gannetd run`'s flags (and variables) given to `gannetd cleanup`, which ignores them.
#[derive(Debug, Clone, Default)]
pub struct RunFlagsIgnored {
    /// The flags given on the command line, e.g. `--node-name`.
    pub flags: Vec<String>,
    /// The variables that set one, e.g. `GANNET_NODE_NAME`.
    pub variables: Vec<String>,
}

impl Args for RunFlagsIgnored {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        run_only_flags().into_iter().fold(cmd, |cmd, arg| {
            cmd.arg(arg.help_heading(IGNORED_RUN_FLAGS_HEADING))
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for RunFlagsIgnored {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Self::default();
        for arg in run_only_flags() {
            match matches.value_source(arg.get_id().as_str()) {
                Some(clap::parser::ValueSource::CommandLine) => given
                    .flags
                    .push(format!("--{}", arg.get_long().unwrap_or_default())),
                Some(clap::parser::ValueSource::EnvVariable) => given.variables.push(
                    arg.get_env()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ => {}
            }
        }
        Ok(given)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How services are programmed: `ebpf` (the socket load balancer, the NodePort program in
    /// tc/XDP and the pod fast path) or `nftables` (one nftables table of gannet's own,
    /// `inet gannet-services`, for nodes that cannot run gannet's eBPF programs; no program is
    /// loaded and `--cgroup-path` is not used; the table is checked every 10 s and programmed
    /// again when it was flushed or removed).
    #[arg(long, value_enum, default_value_t = DataPlane::Ebpf, env = "GANNET_DATAPLANE")]
    pub dataplane: DataPlane,
    /// Name of this node (defaults to the host name).
    #[arg(long, env = "GANNET_NODE_NAME")]
    pub node_name: Option<String>,
    /// Directory of Kubernetes YAML (v1 Service, discovery.k8s.io/v1 EndpointSlice) to serve,
    /// instead of taking services from a control plane.
    #[arg(long, env = "GANNET_MANIFEST_DIR")]
    pub manifest_dir: Option<PathBuf>,
    /// The control plane: `unix:PATH` or `https://HOST:PORT` (`http://` for a loopback server
    /// started with `--insecure`); the same flag and variable as gannetctl's. The default when no
    /// `--manifest-dir` is given: `unix:/run/gannet/control.sock`. Old names, still read:
    /// `--control`, `GANNET_CONTROL`.
    #[arg(long = "server", visible_alias = "control", env = SERVER_ENV, value_name = "ADDRESS")]
    pub server: Option<String>,
    /// For `https` control planes: the directory with `ca.pem`, `agent.pem` and `agent-key.pem`
    /// (`gannet-control certs`), as gannetctl's and gannet-control's `--tls-dir`; default:
    /// `/etc/gannet/pki`. Old names, still read: `--control-tls-dir`, `GANNET_CONTROL_TLS_DIR`.
    #[arg(
        long = "tls-dir",
        visible_alias = "control-tls-dir",
        env = TLS_DIR_ENV,
        value_name = "DIR"
    )]
    pub tls_dir: Option<PathBuf>,
    /// This node's address as reported to the control plane (repeatable, or comma-separated);
    /// default: the global addresses of the network namespace gannetd runs in.
    #[arg(long, value_delimiter = ',', env = "GANNET_NODE_IP")]
    pub node_ip: Vec<String>,
    /// Where the node's pod-CIDR lease is written for gannet-cni (Flannel's `subnet.env` keys);
    /// default: `subnet.env` in `--state-dir`.
    #[arg(long, env = "GANNET_SUBNET_FILE")]
    pub subnet_file: Option<PathBuf>,
    /// The pods' MTU, written to the subnet file; default: the underlay's MTU less the VXLAN
    /// overhead (50) with `--overlay vxlan|ebpf`, the underlay's MTU with `host-gw`, 1500 with
    /// `none`.
    #[arg(long, env = "GANNET_POD_MTU")]
    pub pod_mtu: Option<u32>,
    /// How pods reach pods of other nodes: `vxlan` (Flannel-compatible VXLAN), `host-gw`
    /// (routes via the other nodes, one L2 segment), `ebpf` (VXLAN driven by tc programs), or
    /// `none` (a single node).
    #[arg(long, value_enum, default_value_t = Mode::Vxlan, env = "GANNET_OVERLAY")]
    pub overlay: Mode,
    /// The underlay interface the overlay uses; default: the one holding the first `--node-ip`
    /// (or the first interface with a global address).
    #[arg(long, env = "GANNET_OVERLAY_INTERFACE")]
    pub overlay_interface: Option<String>,
    /// The VXLAN network identifier (Flannel's default: 1).
    #[arg(long, default_value_t = 1, env = "GANNET_VXLAN_VNI")]
    pub vxlan_vni: u32,
    /// The VXLAN UDP port (Flannel's default: 8472).
    #[arg(long, default_value_t = DEFAULT_VXLAN_PORT, env = "GANNET_VXLAN_PORT")]
    pub vxlan_port: u16,
    /// How often the overlay's kernel state (routes, neighbours, forwarding entries, the node map,
    /// the nftables table) is checked against the nodes and repaired, in seconds; 0: only at
    /// start and on node changes.
    #[arg(long, default_value_t = 60, env = "GANNET_OVERLAY_RESYNC_SECONDS")]
    pub overlay_resync_seconds: u64,
    /// What counts as inside the cluster for masquerade (repeatable, or comma-separated; one per
    /// family); default: the control plane's cluster CIDRs. Required with `--manifest-dir` while
    /// an overlay and masquerade are on.
    #[arg(long, value_delimiter = ',', env = "GANNET_CLUSTER_CIDR")]
    pub cluster_cidr: Vec<String>,
    /// Masquerade traffic from this node's pods to destinations outside the cluster CIDR
    /// (nftables, table `inet gannet`); `--masquerade=false` turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", env = "GANNET_MASQUERADE")]
    pub masquerade: bool,
    /// How often the manifest directory is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 200, env = "GANNET_SYNC_INTERVAL_MS")]
    pub sync_interval_ms: u64,
    /// Capacity: service frontends (ClusterIP × port × protocol).
    #[arg(long, default_value_t = DEFAULT_MAX_SERVICES, env = "GANNET_MAX_SERVICES")]
    pub max_services: u32,
    /// Capacity: distinct backends (address:port).
    #[arg(long, default_value_t = DEFAULT_MAX_BACKENDS, env = "GANNET_MAX_BACKENDS")]
    pub max_backends: u32,
    /// Capacity: backend slots of all services together.
    #[arg(long, default_value_t = DEFAULT_MAX_SLOTS, env = "GANNET_MAX_SLOTS")]
    pub max_slots: u32,
    /// Capacity: socket reverse-NAT entries of UDP sockets (LRU; TCP sockets keep theirs in
    /// socket storage).
    #[arg(long, default_value_t = DEFAULT_MAX_REV_NAT, env = "GANNET_MAX_REV_NAT")]
    pub max_rev_nat: u32,
    /// Capacity: affinity entries (LRU).
    #[arg(long, default_value_t = DEFAULT_MAX_AFFINITY, env = "GANNET_MAX_AFFINITY")]
    pub max_affinity: u32,
    /// Capacity: pod addresses on this node.
    #[arg(long, default_value_t = DEFAULT_MAX_ENDPOINTS, env = "GANNET_MAX_ENDPOINTS")]
    pub max_endpoints: u32,
    /// Capacity: tracked NodePort/external flows, two entries per flow (LRU: when full, the
    /// least recently used flows are forgotten).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNTRACK, env = "GANNET_MAX_CONNTRACK")]
    pub max_conntrack: u32,
    /// Interfaces where traffic from outside the node reaches node ports, external IPs and
    /// LoadBalancer IPs (tc ingress; repeatable or comma-separated); default: the interfaces
    /// holding the node's addresses. `--nodeport-interfaces=` (empty) turns the packet path off;
    /// connections made on the node are still balanced by the socket load balancer.
    #[arg(long, value_delimiter = ',', num_args = 0..=1, default_missing_value = "", env = "GANNET_NODEPORT_INTERFACES")]
    pub nodeport_interfaces: Option<Vec<String>>,
    /// Which of the node's addresses accept node ports (CIDRs, repeatable or comma-separated;
    /// as kube-proxy's flag); default: every node address (`--node-ip`).
    #[arg(long, value_delimiter = ',', env = "GANNET_NODEPORT_ADDRESSES")]
    pub nodeport_addresses: Vec<String>,
    /// `none`: the NodePort program runs in tc; `xdp`: also in native XDP in front of it, where
    /// the interface's driver has native XDP (gannetd says which do not), sending back out of
    /// the same interface what it can without building an skb.
    #[arg(long, value_enum, default_value_t = Acceleration::None, env = "GANNET_NODEPORT_ACCELERATION")]
    pub nodeport_acceleration: Acceleration,
    /// `snat`: a backend on another node answers through this node, which rewrites the client's
    /// source; `dsr` (IPv4): the client's packets keep their source and carry the frontend in an
    /// IPv4 option (8 bytes of MTU), and the backend's node answers the client directly (the
    /// network must let nodes send from NodePort/LoadBalancer addresses). IPv6 always uses snat.
    #[arg(long, value_enum, default_value_t = LbMode::Snat, env = "GANNET_LB_MODE")]
    pub lb_mode: LbMode,
    /// Entries of each NodePort/external frontend's Maglev table: a prime; larger tables spread
    /// flows more evenly over many backends and cost 4 bytes an entry per frontend.
    #[arg(long, default_value_t = DEFAULT_MAGLEV_TABLE_SIZE, env = "GANNET_MAGLEV_TABLE_SIZE")]
    pub maglev_table_size: u32,
    /// Where Prometheus metrics are served (`GET /metrics`, `OpenMetrics` text): `IP:PORT`; port 0
    /// takes a free port (logged); an empty value turns metrics off. An address that cannot be
    /// bound stops gannetd at start.
    #[arg(
        long,
        default_value = metrics::AGENT_METRICS_ADDRESS,
        env = metrics::METRICS_ADDRESS_ENV,
        value_name = "ADDRESS"
    )]
    pub metrics_address: String,
    /// Run the Pods bound to this node through this container runtime's CRI v1 socket
    /// (containerd: `unix:///run/containerd/containerd.sock`), as a kubelet does; their network
    /// comes from gannet-cni through the runtime's CNI configuration. Needs a control plane
    /// (`--server`). Off when not given: gannetd is a network agent only.
    #[arg(long, env = "GANNET_CONTAINER_RUNTIME", value_name = "ADDRESS")]
    pub container_runtime: Option<String>,
    /// The cgroup the pods' cgroups are created below, as the runtime names cgroups
    /// (`/kubepods`: `/sys/fs/cgroup/kubepods` with the cgroupfs driver), as a kubelet's
    /// `--cgroup-root`; default: the runtime's own (containerd: `/k8s.io`).
    #[arg(long, env = "GANNET_POD_CGROUP_PARENT", value_name = "CGROUP")]
    pub pod_cgroup_parent: Option<String>,
}

/// `--dataplane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataPlane {
    Ebpf,
    Nftables,
}

impl fmt::Display for DataPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ebpf => "ebpf",
            Self::Nftables => "nftables",
        })
    }
}

/// `--nodeport-acceleration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acceleration {
    None,
    Xdp,
}

/// `--lb-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LbMode {
    Snat,
    Dsr,
}

/// Where and how traffic from outside the node is balanced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePortSettings {
    /// `--nodeport-interfaces`; `None`: the interfaces holding the node's addresses.
    pub interfaces: Option<Vec<String>>,
    /// `--nodeport-acceleration xdp`.
    pub xdp: bool,
    /// `--lb-mode dsr`.
    pub dsr: bool,
    /// `--nodeport-addresses`; empty: every node address.
    pub addresses: Vec<IpNet>,
}

/// Whether `n` is a prime (trial division: table sizes are small).
fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Map capacities, as the maps are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    pub rev_nat: u32,
    pub affinity: u32,
    pub endpoints: u32,
    pub conntrack: u32,
    pub maglev_table_size: u32,
}

impl Capacity {
    /// The sizes of the maps the pod object creates.
    #[must_use]
    pub fn pods(&self) -> crate::datapath::pods::PodCapacity {
        crate::datapath::pods::PodCapacity {
            endpoints: self.endpoints,
            conntrack: self.conntrack,
            external: self.services,
            maglev_table_size: self.maglev_table_size,
            affinity: self.affinity,
        }
    }
}

/// Where gannetd takes its services from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory of manifests, scanned every `--sync-interval-ms`.
    Manifests(PathBuf),
    /// A control plane, watched.
    Control(ControlConfig),
}
