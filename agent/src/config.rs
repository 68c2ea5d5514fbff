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

/// Validated configuration of `gannetd run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `--container-runtime`: the kubelet role is on.
    pub container_runtime: Option<crate::kubelet::RuntimeEndpoint>,
    /// `--pod-cgroup-parent`; empty: the runtime's default.
    pub pod_cgroup_parent: String,
    pub dataplane: DataPlane,
    pub node_name: String,
    pub cgroup_path: PathBuf,
    pub bpf_root: PathBuf,
    pub state_dir: PathBuf,
    pub source: Source,
    pub sync_interval: Duration,
    pub capacity: Capacity,
    pub overlay: OverlayConfig,
    /// `--pod-mtu`, when given.
    pub pod_mtu: Option<u32>,
    pub subnet_file: PathBuf,
    pub masquerade: bool,
    /// `--cluster-cidr`.
    pub cluster_cidrs: Vec<IpNet>,
    pub nodeport: NodePortSettings,
    /// `--metrics-address`; `None`: no metrics.
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// Validated configuration of `gannetd cleanup`.
#[derive(Debug, Clone)]
pub struct CleanupConfig {
    pub bpf_root: PathBuf,
    pub state_dir: PathBuf,
}

/// All configuration problems found, one per line, each naming its flag.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `--bpf-root` must be a directory on bpffs (what exists of it), or lie under /sys/fs/bpf while
/// bpffs is not mounted there yet (gannetd mounts it). Checked before anything is created; also
/// keeps `gannetd cleanup` from removing a tree that is not gannetd's.
fn check_bpf_root(path: &Path, errors: &mut Vec<String>) {
    if !path.is_absolute() {
        errors.push(format!(
            "--bpf-root {}: must be an absolute path under a bpffs mount",
            path.display()
        ));
        return;
    }
    if path.exists() && !path.is_dir() {
        errors.push(format!("--bpf-root {}: not a directory", path.display()));
        return;
    }
    if is_mount_point(path) {
        errors.push(format!(
            "--bpf-root {}: a mount point; give a directory of gannetd's own below it (e.g. \
             {}/gannet): cleanup removes everything in it",
            path.display(),
            path.display()
        ));
        return;
    }
    let mut probe = path;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    let bpffs = Path::new(crate::datapath::BPFFS);
    let on_bpffs = |p: &Path| sys::fs_magic(p).is_ok_and(|m| m == sys::BPF_FS_MAGIC);
    if on_bpffs(probe) || (path.starts_with(bpffs) && !on_bpffs(bpffs)) {
        return;
    }
    errors.push(format!(
        "--bpf-root {}: {} is not on a bpffs mount (use a directory under {}, or mount bpffs \
         first: mount -t bpf bpf DIR)",
        path.display(),
        probe.display(),
        bpffs.display()
    ));
}

/// Whether `path` exists and is the root of a mount (another device than its parent).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let parent = path.parent().unwrap_or(path);
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(this), Ok(parent)) => this.dev() != parent.dev() || this.ino() == parent.ino(),
        _ => false,
    }
}

fn check_state_dir(path: &Path, errors: &mut Vec<String>) {
    if !path.is_absolute() {
        errors.push(format!(
            "--state-dir {}: must be an absolute path",
            path.display()
        ));
    } else if path.exists() && !path.is_dir() {
        errors.push(format!("--state-dir {}: not a directory", path.display()));
    }
}

fn check_cgroup(path: &Path, errors: &mut Vec<String>) {
    if path.exists() && !path.is_dir() {
        errors.push(format!(
            "--cgroup-path {}: not a directory (a cgroup v2 directory is expected, e.g. \
             /sys/fs/cgroup)",
            path.display()
        ));
        return;
    }
    match sys::fs_magic(path) {
        Ok(sys::CGROUP2_SUPER_MAGIC) => {}
        Ok(_) => errors.push(format!(
            "--cgroup-path {}: not a cgroup v2 directory (on hybrid hosts cgroup2 is often at /sys/fs/cgroup/unified)",
            path.display()
        )),
        Err(e) => errors.push(format!("--cgroup-path {}: {e}", path.display())),
    }
}

impl RunArgs {
    pub fn validate(&self) -> Result<RunConfig, ConfigErrors> {
        let mut errors = Vec::new();
        if self.dataplane == DataPlane::Ebpf {
            check_cgroup(&self.common.cgroup_path, &mut errors);
        }
        check_bpf_root(&self.common.dirs.bpf_root, &mut errors);
        check_state_dir(&self.common.dirs.state_dir, &mut errors);
        let source = self.source(&mut errors);
        let node_name = match &self.node_name {
            Some(name) if name.trim().is_empty() => {
                errors.push("--node-name: must not be empty".to_owned());
                String::new()
            }
            Some(name) => name.clone(),
            None => hostname(),
        };
        if !(10..=60_000).contains(&self.sync_interval_ms) {
            errors.push(format!(
                "--sync-interval-ms {}: must be between 10 and 60000",
                self.sync_interval_ms
            ));
        }
        for (flag, value) in [
            ("--max-services", self.max_services),
            ("--max-backends", self.max_backends),
            ("--max-slots", self.max_slots),
            ("--max-endpoints", self.max_endpoints),
        ] {
            if value == 0 {
                errors.push(format!("{flag} 0: must be at least 1"));
            }
        }
        for (flag, value) in [
            ("--max-rev-nat", self.max_rev_nat),
            ("--max-affinity", self.max_affinity),
            ("--max-conntrack", self.max_conntrack),
        ] {
            if value < MIN_LRU_CAPACITY {
                errors.push(format!(
                    "{flag} {value}: must be at least {MIN_LRU_CAPACITY} (an LRU map: the kernel \
                     hands its entries to CPUs and evicts them 128 at a time, so a smaller one \
                     forgets live flows)"
                ));
            }
        }
        let nodeport = self.nodeport_settings(&mut errors);
        let metrics_address = metrics::parse_address(&self.metrics_address)
            .map_err(|e| errors.push(format!("--metrics-address {e}")))
            .unwrap_or_default();
        let (overlay, cluster_cidrs) = self.overlay_config(&source, &mut errors);
        let container_runtime = self.container_runtime(&source, &mut errors);
        if self.dataplane == DataPlane::Nftables {
            for (given, flag) in [
                (self.overlay == Mode::Ebpf, "--overlay ebpf"),
                (nodeport.xdp, "--nodeport-acceleration xdp"),
                (nodeport.dsr, "--lb-mode dsr"),
            ] {
                if given {
                    errors.push(format!(
                        "{flag}: needs gannet's eBPF programs, which --dataplane nftables does \
                         not load"
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(RunConfig {
            container_runtime,
            pod_cgroup_parent: self.pod_cgroup_parent.clone().unwrap_or_default(),
            metrics_address,
            dataplane: self.dataplane,
            nodeport,
            overlay,
            cluster_cidrs,
            pod_mtu: self.pod_mtu,
            subnet_file: self.subnet_file(),
            masquerade: self.masquerade,
            node_name,
            cgroup_path: self.common.cgroup_path.clone(),
            bpf_root: self.common.dirs.bpf_root.clone(),
            state_dir: self.common.dirs.state_dir.clone(),
            source,
            sync_interval: Duration::from_millis(self.sync_interval_ms),
            capacity: Capacity {
                services: self.max_services,
                backends: self.max_backends,
                slots: self.max_slots,
                rev_nat: self.max_rev_nat,
                affinity: self.max_affinity,
                endpoints: self.max_endpoints,
                conntrack: self.max_conntrack,
                maglev_table_size: self.maglev_table_size,
            },
        })
    }

    /// The NodePort flags, checked.
    fn nodeport_settings(&self, errors: &mut Vec<String>) -> NodePortSettings {
        if !is_prime(self.maglev_table_size) || self.maglev_table_size > MAX_MAGLEV_TABLE_SIZE {
            errors.push(format!(
                "--maglev-table-size {}: must be a prime no larger than {MAX_MAGLEV_TABLE_SIZE} \
                 (e.g. 251, 1021, 4093, 16381, 65521)",
                self.maglev_table_size
            ));
        }

        let interfaces = self.nodeport_interfaces.as_ref().map(|names| {
            let names: Vec<String> = names.iter().filter(|n| !n.is_empty()).cloned().collect();
            for name in &names {
                if let Err(e) = sys::link_info(name) {
                    errors.push(format!("--nodeport-interfaces {name}: {e}"));
                }
            }
            names
        });
        let mut addresses = Vec::new();
        for text in &self.nodeport_addresses {
            match text.parse::<IpNet>() {
                Ok(net) => addresses.push(net.trunc()),
                Err(_) => errors.push(format!("--nodeport-addresses {text}: not a CIDR")),
            }
        }
        NodePortSettings {
            interfaces,
            xdp: self.nodeport_acceleration == Acceleration::Xdp,
            dsr: self.lb_mode == LbMode::Dsr,
            addresses,
        }
    }
}

/// The largest `--maglev-table-size`: a table is kept per NodePort/external frontend in kernel
/// memory (4 bytes an entry).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 131_071;

impl RunArgs {
    /// `--container-runtime`, checked (its socket is asked at start).
    fn container_runtime(
        &self,
        source: &Source,
        errors: &mut Vec<String>,
    ) -> Option<crate::kubelet::RuntimeEndpoint> {
        let text = self.container_runtime.as_deref()?;
        if matches!(source, Source::Manifests(_)) {
            errors.push(format!(
                "--container-runtime {text}: runs the Pods of a control plane; give --server, \
                 not --manifest-dir"
            ));
        }
        if let Some(parent) = &self.pod_cgroup_parent
            && !parent.starts_with('/')
        {
            errors.push(format!(
                "--pod-cgroup-parent {parent}: must start with / (a cgroup path as the runtime \
                 names it, e.g. /kubepods)"
            ));
        }
        text.parse()
            .map_err(|e| errors.push(format!("--container-runtime {e}")))
            .ok()
    }

    fn source(&self, errors: &mut Vec<String>) -> Source {
        let server = self.server.clone().or_else(|| env_value(OLD_SERVER_ENV));
        let control = match (&self.manifest_dir, &server) {
            (Some(_), Some(_)) => {
                errors.push(
                    "--manifest-dir and --server: give one source of services, not both".to_owned(),
                );
                return Source::Manifests(PathBuf::new());
            }
            (Some(dir), None) => {
                if !dir.is_dir() {
                    errors.push(format!("--manifest-dir {}: not a directory", dir.display()));
                }
                return Source::Manifests(dir.clone());
            }
            (None, Some(text)) => text.clone(),
            (None, None) => gannet_api::DEFAULT_SERVER.to_owned(),
        };
        let server = match control.parse::<ServerAddr>() {
            Ok(server) => server,
            Err(e) => {
                errors.push(format!("--server {control}: {e}"));
                ServerAddr::default()
            }
        };
        let mut credentials = Credentials::default();
        if matches!(server, ServerAddr::Https { .. }) {
            let dir = self.tls_dir();
            let mut missing = Vec::new();
            let mut read = |name: &str| match std::fs::read(dir.join(name)) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    missing.push(format!("{name} ({e})"));
                    None
                }
            };
            credentials.ca_pem = read(pki::CA_CERT);
            let cert = read(pki::AGENT_CERT);
            let key = read(pki::AGENT_KEY);
            credentials.identity = cert.zip(key);
            if !missing.is_empty() {
                errors.push(format!(
                    "--tls-dir {}: cannot read {}; `gannet-control certs --out DIR` writes them",
                    dir.display(),
                    missing.join(", ")
                ));
            }
        }
        let mut node_ips = Vec::new();
        for text in &self.node_ip {
            match text.parse::<IpAddr>() {
                Ok(ip) => node_ips.push(ip),
                Err(_) => errors.push(format!("--node-ip {text}: not an IP address")),
            }
        }
        Source::Control(ControlConfig {
            server,
            credentials,
            node_ips,
            vtep_mac: None,
            kubelet: self.container_runtime.is_some(),
        })
    }

    /// `--tls-dir`, else `GANNET_CONTROL_TLS_DIR` (its old variable), else the default.
    fn tls_dir(&self) -> PathBuf {
        self.tls_dir
            .clone()
            .or_else(|| env_value(OLD_TLS_DIR_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR))
    }

    fn subnet_file(&self) -> PathBuf {
        self.subnet_file
            .clone()
            .unwrap_or_else(|| self.common.dirs.state_dir.join(SUBNET_FILE))
    }

    /// The overlay's settings and `--cluster-cidr`, checked.
    fn overlay_config(
        &self,
        source: &Source,
        errors: &mut Vec<String>,
    ) -> (OverlayConfig, Vec<IpNet>) {
        if let Some(mtu) = self.pod_mtu
            && !(576..=65535).contains(&mtu)
        {
            errors.push(format!("--pod-mtu {mtu}: must be between 576 and 65535"));
        }
        if let Some(path) = &self.subnet_file
            && !path.is_absolute()
        {
            errors.push(format!(
                "--subnet-file {}: must be an absolute path",
                path.display()
            ));
        }
        if !(1..=0x00ff_ffff).contains(&self.vxlan_vni) {
            errors.push(format!(
                "--vxlan-vni {}: must be between 1 and 16777215",
                self.vxlan_vni
            ));
        }
        if self.overlay_resync_seconds > 86_400 {
            errors.push(format!(
                "--overlay-resync-seconds {}: at most 86400 (a day)",
                self.overlay_resync_seconds
            ));
        }
        if self.vxlan_port == 0 {
            errors.push("--vxlan-port 0: must be between 1 and 65535".to_owned());
        }
        if let Some(name) = &self.overlay_interface
            && let Err(e) = sys::link_info(name)
        {
            errors.push(format!("--overlay-interface {name}: {e}"));
        }
        let mut cluster_cidrs: Vec<IpNet> = Vec::new();
        for text in &self.cluster_cidr {
            match text.parse::<IpNet>() {
                Ok(net)
                    if cluster_cidrs
                        .iter()
                        .any(|c| c.addr().is_ipv4() == net.addr().is_ipv4()) =>
                {
                    errors.push(format!("--cluster-cidr {text}: one CIDR per family"));
                }
                Ok(net) => cluster_cidrs.push(net.trunc()),
                Err(_) => errors.push(format!("--cluster-cidr {text}: not a CIDR")),
            }
        }
        if matches!(source, Source::Manifests(_))
            && self.overlay != Mode::None
            && self.masquerade
            && cluster_cidrs.is_empty()
        {
            errors.push(
                "--cluster-cidr: required with --manifest-dir and an overlay while --masquerade is on (it says what counts as inside the cluster); or give --masquerade=false".to_owned(),
            );
        }
        let mut node_ips = Vec::new();
        for text in &self.node_ip {
            if let Ok(ip) = text.parse::<IpAddr>() {
                node_ips.push(ip);
            } else if !matches!(source, Source::Control(_)) {
                errors.push(format!("--node-ip {text}: not an IP address"));
            }
        }
        (
            OverlayConfig {
                mode: self.overlay,
                interface: self.overlay_interface.clone(),
                vni: self.vxlan_vni,
                port: self.vxlan_port,
                resync: (self.overlay_resync_seconds > 0)
                    .then(|| Duration::from_secs(self.overlay_resync_seconds)),
                node_ips,
            },
            cluster_cidrs,
        )
    }
}

impl CleanupArgs {
    /// Checks the directories, and logs the flags and variables of `gannetd run` it ignores
    /// (flags at info, variables, which an environment file sets for the agent, at debug).
    pub fn validate(&self) -> Result<CleanupConfig, ConfigErrors> {
        if !self.run_flags.flags.is_empty() {
            tracing::info!(
                flags = self.run_flags.flags.join(","),
                "ignoring flags of gannetd run that cleanup does not use"
            );
        }
        if !self.run_flags.variables.is_empty() {
            tracing::debug!(
                variables = self.run_flags.variables.join(","),
                "ignoring variables of gannetd run that cleanup does not use"
            );
        }
        let mut errors = Vec::new();
        check_bpf_root(&self.dirs.bpf_root, &mut errors);
        check_state_dir(&self.dirs.state_dir, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(CleanupConfig {
            bpf_root: self.dirs.bpf_root.clone(),
            state_dir: self.dirs.state_dir.clone(),
        })
    }
}

/// A variable's value, when set and not empty.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gannet_cni_defaults_are_gannetd_defaults() {
        let cli = Cli::try_parse_from(["gannetd"]).expect("defaults parse");
        let state_dir = cli.run.common.dirs.state_dir;
        assert_eq!(
            state_dir.join(crate::endpoints::SOCKET),
            Path::new(gannet_cni::agent_api::DEFAULT_SOCKET),
            "the conflist gannet-cni installs must find gannetd's socket"
        );
        assert_eq!(
            state_dir.join(SUBNET_FILE),
            Path::new(gannet_cni::config::DEFAULT_SUBNET_FILE),
            "the conflist gannet-cni installs must find gannetd's subnet file"
        );
    }

    #[test]
    fn server_and_tls_dir_take_their_old_names_too() {
        for (server, tls_dir) in [
            ("--server", "--tls-dir"),
            ("--control", "--control-tls-dir"),
        ] {
            let cli =
                Cli::try_parse_from(["gannetd", server, "unix:/tmp/c.sock", tls_dir, "/tmp/pki"])
                    .unwrap_or_else(|e| panic!("{server} and {tls_dir} must parse: {e}"));
            assert_eq!(
                cli.run.server.as_deref(),
                Some("unix:/tmp/c.sock"),
                "{server}"
            );
            assert_eq!(cli.run.tls_dir(), Path::new("/tmp/pki"), "{tls_dir}");
        }
    }

    #[test]
    fn status_takes_only_the_flags_it_uses() {
        for flag in [
            "--server",
            "--node-name",
            "--dataplane",
            "--log-format",
            "--cgroup-path",
        ] {
            assert!(
                Cli::try_parse_from(["gannetd", "status", flag, "x"]).is_err(),
                "gannetd status must refuse {flag}"
            );
        }
    }

    /// Issue 12: cleanup takes the arguments of `gannetd run`, so a unit or an operator can pass
    /// the agent's own; those it does not use are listed under a heading of their own.
    #[test]
    fn container_runtime_needs_a_control_plane_and_a_unix_socket() {
        let errors = |args: &[&str]| -> String {
            let mut all = vec!["gannetd"];
            all.extend_from_slice(args);
            let cli = Cli::try_parse_from(&all).unwrap_or_else(|e| panic!("{all:?}: {e}"));
            match cli.run.validate() {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        let manifests = std::env::temp_dir();
        let manifests = manifests.to_str().unwrap();
        let text = errors(&[
            "--manifest-dir",
            manifests,
            "--container-runtime",
            "unix:///run/containerd/containerd.sock",
        ]);
        assert!(
            text.contains("--container-runtime unix:///run/containerd/containerd.sock: runs the Pods of a control plane"),
            "{text}"
        );
        let text = errors(&["--container-runtime", "tcp://10.0.0.1:1"]);
        assert!(
            text.contains("--container-runtime `tcp://10.0.0.1:1`: only unix sockets"),
            "{text}"
        );
        let text = errors(&[
            "--container-runtime",
            "unix:///x.sock",
            "--pod-cgroup-parent",
            "kubepods",
        ]);
        assert!(
            text.contains("--pod-cgroup-parent kubepods: must start with /"),
            "{text}"
        );
    }

    #[test]
    fn cleanup_accepts_every_flag_of_run() {
        use clap::CommandFactory as _;
        let cli = Cli::command();
        let sub = |name: &str| {
            cli.find_subcommand(name)
                .unwrap_or_else(|| panic!("gannetd {name} exists"))
                .clone()
        };
        let (run, cleanup) = (sub("run"), sub("cleanup"));
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            let theirs = cleanup
                .get_arguments()
                .find(|a| a.get_id() == arg.get_id())
                .unwrap_or_else(|| panic!("gannetd cleanup must accept --{id} as run does"));
            assert_eq!(theirs.get_long(), arg.get_long(), "{id}");
            assert_eq!(theirs.get_env(), arg.get_env(), "{id}");
            let heading = theirs.get_help_heading();
            if CLEANUP_OWN_FLAGS.contains(&id) {
                assert_eq!(heading, None, "--{id} is cleanup's own");
            } else {
                assert_eq!(heading, Some(IGNORED_RUN_FLAGS_HEADING), "--{id}");
            }
        }

        let args = [
            "gannetd",
            "cleanup",
            "--bpf-root",
            "/sys/fs/bpf/x",
            "--node-name",
            "n1",
            "--server",
            "unix:/x.sock",
            "--manifest-dir",
            "/nonexistent",
            "--dataplane",
            "nftables",
            "--cgroup-path",
            "/sys/fs/cgroup",
            "--node-ip",
            "10.0.0.1,10.0.0.2",
            "--masquerade=false",
            "--nodeport-interfaces=",
            "--max-backends",
            "10",
        ];
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let Some(Command::Cleanup(cleanup)) = cli.command else {
            panic!("{args:?} is a cleanup");
        };
        assert_eq!(cleanup.dirs.bpf_root, Path::new("/sys/fs/bpf/x"));
        assert_eq!(
            cleanup.run_flags.flags,
            [
                "--cgroup-path",
                "--dataplane",
                "--node-name",
                "--manifest-dir",
                "--server",
                "--node-ip",
                "--masquerade",
                "--max-backends",
                "--nodeport-interfaces",
            ]
            .map(String::from),
            "the ignored flags are named, each once, in run's order"
        );
        // Values are parsed as run parses them.
        assert!(Cli::try_parse_from(["gannetd", "cleanup", "--dataplane", "bogus"]).is_err());
    }

    /// Every flag of `gannetd run` can come from the environment (the systemd unit's
    /// environment file sets them): `GANNET_` and the flag's name.
    #[test]
    fn every_flag_of_run_has_a_variable() {
        let run = RunArgs::augment_args(clap::Command::new("run"));
        for arg in run.get_arguments() {
            let long = arg.get_long().expect("every flag is a long flag");
            let expected = format!("GANNET_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().map(|v| v.to_string_lossy().into_owned()),
                Some(expected),
                "--{long}"
            );
        }
    }

    #[test]
    fn lru_maps_below_the_floor_are_refused_naming_the_flag() {
        let cli = Cli::try_parse_from([
            "gannetd",
            "--manifest-dir",
            "/tmp",
            "--max-conntrack",
            "64",
            "--max-affinity",
            "1023",
            "--max-rev-nat",
            "1024",
        ])
        .expect("flags parse");
        let errors = cli
            .run
            .validate()
            .expect_err("capacities below the floor")
            .0;
        for flag in [
            "--max-conntrack 64: must be at least 1024",
            "--max-affinity 1023",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(flag)),
                "an error naming `{flag}`: {errors:?}"
            );
        }
        assert!(
            !errors.iter().any(|e| e.contains("--max-rev-nat")),
            "1024 is enough: {errors:?}"
        );
    }
}
