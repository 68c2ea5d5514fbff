//! From flags to a [`RunConfig`] (and a [`CleanupConfig`]): every flag checked, every problem
//! collected into [`ConfigErrors`] with the flag it is about.

use super::*;

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
    pub(super) fn tls_dir(&self) -> PathBuf {
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
