//! Command line of gannetd, parsed and validated in one place. Every problem is collected and
//! reported together; bad configuration exits with status 64 (`EX_USAGE`).

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use gannet_common::{
    DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_ENDPOINTS, DEFAULT_MAX_REV_NAT,
    DEFAULT_MAX_SERVICES, DEFAULT_MAX_SLOTS,
};

use crate::sys;

/// `EX_USAGE` from sysexits.h.
pub const EXIT_USAGE: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "gannetd",
    version,
    about = "gannet node agent: eBPF service load balancing",
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
    /// Run the agent (the default when no subcommand is given).
    Run(RunArgs),
    /// Remove everything gannetd created: its cgroup links, its pinned maps and its bpffs
    /// directory. Stop gannetd first.
    Cleanup(CommonArgs),
    /// Print what the data plane holds (services with their backends, endpoints with their
    /// counters) as JSON, read from the pinned maps.
    Status(CommonArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// cgroup v2 directory the socket load balancer is attached to.
    #[arg(long, default_value = "/sys/fs/cgroup", env = "GANNET_CGROUP_PATH")]
    pub cgroup_path: PathBuf,
    /// Directory under bpffs for gannetd's pinned maps and links (bpffs is mounted at
    /// /sys/fs/bpf when missing).
    #[arg(long, default_value = "/sys/fs/bpf/gannet", env = "GANNET_BPF_ROOT")]
    pub bpf_root: PathBuf,
    /// Directory for gannetd's runtime state: the CNI socket (`cni.sock`) and the endpoint
    /// registry (`endpoints.json`).
    #[arg(long, default_value = "/run/gannet", env = "GANNET_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Name of this node (defaults to the host name).
    #[arg(long, env = "GANNET_NODE_NAME")]
    pub node_name: Option<String>,
    /// Directory of Kubernetes YAML (v1 Service, discovery.k8s.io/v1 EndpointSlice) to serve.
    #[arg(long, env = "GANNET_MANIFEST_DIR")]
    pub manifest_dir: Option<PathBuf>,
    /// How often the manifest directory is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub sync_interval_ms: u64,
    /// Capacity: service frontends (ClusterIP × port × protocol).
    #[arg(long, default_value_t = DEFAULT_MAX_SERVICES)]
    pub max_services: u32,
    /// Capacity: distinct backends (address:port).
    #[arg(long, default_value_t = DEFAULT_MAX_BACKENDS)]
    pub max_backends: u32,
    /// Capacity: backend slots of all services together.
    #[arg(long, default_value_t = DEFAULT_MAX_SLOTS)]
    pub max_slots: u32,
    /// Capacity: socket reverse-NAT entries (LRU).
    #[arg(long, default_value_t = DEFAULT_MAX_REV_NAT)]
    pub max_rev_nat: u32,
    /// Capacity: affinity entries (LRU).
    #[arg(long, default_value_t = DEFAULT_MAX_AFFINITY)]
    pub max_affinity: u32,
    /// Capacity: pod addresses on this node.
    #[arg(long, default_value_t = DEFAULT_MAX_ENDPOINTS)]
    pub max_endpoints: u32,
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
}

/// Validated configuration of `gannetd run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub node_name: String,
    pub cgroup_path: PathBuf,
    pub bpf_root: PathBuf,
    pub state_dir: PathBuf,
    pub manifest_dir: PathBuf,
    pub sync_interval: Duration,
    pub capacity: Capacity,
}

/// Validated configuration of `gannetd cleanup`.
#[derive(Debug, Clone)]
pub struct CleanupConfig {
    pub cgroup_path: PathBuf,
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

fn check_bpf_root(path: &Path, errors: &mut Vec<String>) {
    if !path.is_absolute() {
        errors.push(format!(
            "--bpf-root {}: must be an absolute path under a bpffs mount",
            path.display()
        ));
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
        check_cgroup(&self.common.cgroup_path, &mut errors);
        check_bpf_root(&self.common.bpf_root, &mut errors);
        check_state_dir(&self.common.state_dir, &mut errors);
        let manifest_dir = match &self.manifest_dir {
            None => {
                errors.push(
                    "--manifest-dir: required: gannetd needs a source of services".to_owned(),
                );
                PathBuf::new()
            }
            Some(dir) if !dir.is_dir() => {
                errors.push(format!("--manifest-dir {}: not a directory", dir.display()));
                dir.clone()
            }
            Some(dir) => dir.clone(),
        };
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
            ("--max-rev-nat", self.max_rev_nat),
            ("--max-affinity", self.max_affinity),
            ("--max-endpoints", self.max_endpoints),
        ] {
            if value == 0 {
                errors.push(format!("{flag} 0: must be at least 1"));
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(RunConfig {
            node_name,
            cgroup_path: self.common.cgroup_path.clone(),
            bpf_root: self.common.bpf_root.clone(),
            state_dir: self.common.state_dir.clone(),
            manifest_dir,
            sync_interval: Duration::from_millis(self.sync_interval_ms),
            capacity: Capacity {
                services: self.max_services,
                backends: self.max_backends,
                slots: self.max_slots,
                rev_nat: self.max_rev_nat,
                affinity: self.max_affinity,
                endpoints: self.max_endpoints,
            },
        })
    }
}

impl CommonArgs {
    pub fn validate_cleanup(&self) -> Result<CleanupConfig, ConfigErrors> {
        let mut errors = Vec::new();
        check_bpf_root(&self.bpf_root, &mut errors);
        check_state_dir(&self.state_dir, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(CleanupConfig {
            cgroup_path: self.cgroup_path.clone(),
            bpf_root: self.bpf_root.clone(),
            state_dir: self.state_dir.clone(),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}
