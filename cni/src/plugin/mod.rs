//! The verbs: environment and stdin in, one result or error object out.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};

use crate::agent_api::{self, Request, RequestBody};
use crate::config::{
    Attachment, CniEnv, Command, DEFAULT_MTU, DEFAULT_SUBNET_FILE,
    DEFAULT_SUBNET_FILE_WAIT_SECONDS, NetConf, RangeConf, Requests, Source, parse_config,
    parse_env,
};
use crate::delegate::Delegate;
use crate::ipam::{IpamError, Store};
use crate::net::Cidr;
use crate::netns;
use crate::spec::{CniError, CniVersion, SUPPORTED_VERSIONS, VersionInfo, code};
use crate::subnet_env::{SubnetEnv, SubnetEnvError};

mod add;
mod check;
mod del;
mod gc;
mod status;

/// Environment variable of the test hook that pauses `ADD` at a point: `<point>:<marker file>`,
/// point `after-ipam` (addresses reserved, no link yet), `after-veth` (veth pair created, before
/// the agent is told) or, in `DEL`, `before-reap` (the pair retired and the addresses released,
/// its deletion not started). The plugin creates the marker file and sleeps, so a test can kill it
/// there.
pub const PAUSE_ENV: &str = "GANNET_CNI_DEBUG_PAUSE";

/// Environment variable with the log filter when the configuration sets no `logLevel`.
pub const LOG_ENV: &str = "GANNET_LOG";

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Everything for stdout (a result, version info, an error object, or nothing).
    pub stdout: Vec<u8>,
    /// Exit status.
    pub exit_code: u8,
}

/// One plugin invocation: `get` reads environment variables, `stdin` holds the configuration.
pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let is_version = get("CNI_COMMAND").as_deref() == Some("VERSION");
    let mut input = Vec::new();
    // VERSION needs no configuration (podman calls it with a dummy environment).
    if !is_version && let Err(e) = stdin.read_to_end(&mut input) {
        return failure(
            &CniError::new(
                code::IO_FAILURE,
                format!("reading the network configuration from stdin: {e}"),
            ),
            CniVersion::LATEST.as_str(),
        );
    }
    let version_hint = serde_json::from_slice::<serde_json::Value>(&input)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| CniVersion::parse(v).is_some())
        .unwrap_or_else(|| CniVersion::LATEST.as_str().to_owned());
    match dispatch(get, &input) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => {
            warn!(code = e.code, error = %e, "failed");
            failure(&e, &version_hint)
        }
    }
}

fn failure(e: &CniError, version: &str) -> Outcome {
    let mut stdout = serde_json::to_vec(&e.to_json(version)).unwrap_or_default();
    stdout.push(b'\n');
    Outcome {
        stdout,
        exit_code: 1,
    }
}

fn to_stdout(value: &impl serde::Serialize) -> Result<Vec<u8>, CniError> {
    let mut out = serde_json::to_vec(value)
        .map_err(|e| CniError::new(code::INTERNAL, format!("encoding the result: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

fn dispatch(get: &dyn Fn(&str) -> Option<String>, input: &[u8]) -> Result<Vec<u8>, CniError> {
    let env = match parse_env(get) {
        Ok(env) => env,
        Err(e) => {
            if get("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
                eprintln_about();
            }
            return Err(e);
        }
    };
    if env.command == Command::Version {
        return to_stdout(&VersionInfo {
            cni_version: CniVersion::LATEST.as_str().to_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        });
    }
    let (conf, version) = parse_config(input)?;
    init_logging(&conf);
    match env.command {
        Command::Check if version < CniVersion::V0_4_0 => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("config version {version} does not allow CHECK (0.4.0 or newer needed)"),
            ));
        }
        Command::Gc | Command::Status if version < CniVersion::V1_1_0 => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "config version {version} does not allow {} (1.1.0 or newer needed)",
                    if env.command == Command::Gc {
                        "GC"
                    } else {
                        "STATUS"
                    }
                ),
            ));
        }
        _ => {}
    }
    let raw: serde_json::Value = serde_json::from_slice(input)
        .map_err(|e| CniError::new(code::DECODING_FAILURE, e.to_string()))?;
    let plugin = Plugin {
        env: &env,
        conf: &conf,
        raw: &raw,
        version,
        get,
    };
    info!(command = ?env.command, container = %env.container_id, ifname = %env.ifname, network = %conf.name, "invoked");
    match env.command {
        Command::Add => {
            let result = plugin.add()?;
            to_stdout(&result.for_version(version))
        }
        Command::Del => plugin.del().map(|()| Vec::new()),
        Command::Check => plugin.check().map(|()| Vec::new()),
        Command::Gc => plugin.gc().map(|()| Vec::new()),
        Command::Status => plugin.status().map(|()| Vec::new()),
        Command::Version => unreachable!("answered above"),
    }
}

#[expect(
    clippy::print_stderr,
    reason = "the about text a plugin prints when run without a command"
)]
fn eprintln_about() {
    eprintln!(
        "gannet-cni v{}: routed pod networking\nCNI protocol versions supported: {}",
        env!("CARGO_PKG_VERSION"),
        SUPPORTED_VERSIONS.join(", ")
    );
}

fn init_logging(conf: &NetConf) {
    use tracing_subscriber::EnvFilter;
    let filter = conf
        .log_level
        .clone()
        .or_else(|| std::env::var(LOG_ENV).ok())
        .unwrap_or_else(|| {
            if conf.log_file.is_some() {
                "info"
            } else {
                "warn"
            }
            .to_owned()
        });
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if let Some(path) = &conf.log_file {
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => {
                let _ = builder
                    .with_ansi(false)
                    .with_writer(Mutex::new(file))
                    .try_init();
                return;
            }
            Err(e) => {
                let _ = tracing_subscriber::fmt()
                    .with_writer(std::io::stderr)
                    .try_init();
                warn!(path = %path.display(), error = %e, "cannot open the log file; logging to stderr");
                return;
            }
        }
    }
    let _ = builder.with_writer(std::io::stderr).try_init();
}

struct Plugin<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    raw: &'a serde_json::Value,
    version: CniVersion,
    get: &'a dyn Fn(&str) -> Option<String>,
}

/// Where addresses come from, resolved.
struct Pool {
    ranges: Vec<Vec<RangeConf>>,
    mtu: u32,
}

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::INTERNAL, e.to_string())
}

fn ipam_error(e: &IpamError) -> CniError {
    ipam_error_for(e, &Requests::default())
}

/// An IPAM error, naming where a requested address came from.
fn ipam_error_for(e: &IpamError, requests: &Requests) -> CniError {
    let source = |ip: &std::net::IpAddr| {
        requests
            .ips
            .iter()
            .find(|(requested, _)| requested == ip)
            .map_or(Source::CniArgs("IP"), |(_, source)| source.clone())
    };
    match e {
        IpamError::Exhausted { .. } => {
            CniError::new(code::POOL_EXHAUSTED, format!("IP pool exhausted: {e}"))
        }
        IpamError::OutOfRange { ip, .. } | IpamError::TwoInOneSet { second: ip, .. } => {
            let source = source(ip);
            CniError::new(source.code(), format!("{source} {ip}: {e}"))
        }
        IpamError::InUse { ip, .. } | IpamError::AlreadyHolds { ip, .. } => {
            let source = source(ip);
            CniError::new(code::ADDRESS_IN_USE, format!("{source} {ip}: {e}"))
        }
        IpamError::Io { .. } => CniError::new(code::IO_FAILURE, e.to_string()),
    }
}

impl Plugin<'_> {
    fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
        }
    }

    fn store(&self) -> Store {
        Store::new(self.conf.data_dir())
    }

    /// The ranges and MTU: from the configuration, else from the subnet file. With `wait`, a
    /// missing subnet file is waited for (`subnetFileWaitSeconds`): a pod that starts before the
    /// node has its lease gets its address once the agent writes the file.
    fn pool(&self, wait: bool) -> Result<Pool, CniError> {
        let configured = self.conf.configured_ranges();
        let needs_file =
            configured.is_none() || self.conf.subnet_file.is_some() && self.conf.mtu.is_none();
        let file = if needs_file {
            let path = self
                .conf
                .subnet_file
                .clone()
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.into());
            let wait_seconds = if wait {
                self.conf
                    .subnet_file_wait_seconds
                    .unwrap_or(DEFAULT_SUBNET_FILE_WAIT_SECONDS)
            } else {
                0
            };
            let deadline =
                std::time::Instant::now() + std::time::Duration::from_secs(wait_seconds.into());
            let mut loaded = SubnetEnv::load(&path);
            if matches!(loaded, Err(SubnetEnvError::Missing(_))) && wait_seconds > 0 {
                info!(file = %path.display(), wait_seconds, "waiting for the node agent to write the subnet file");
                while matches!(loaded, Err(SubnetEnvError::Missing(_)))
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    loaded = SubnetEnv::load(&path);
                }
            }
            match loaded {
                Ok(env) => Some(env),
                Err(e @ SubnetEnvError::Missing(_)) => {
                    let waited = if wait_seconds > 0 {
                        format!(" after waiting {wait_seconds} s (subnetFileWaitSeconds)")
                    } else {
                        String::new()
                    };
                    return Err(CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!(
                            "{e}{waited}; the node agent writes it once the node has its pod CIDR lease, or set `ipam.ranges`"
                        ),
                    ));
                }
                Err(e @ SubnetEnvError::Read { .. }) => {
                    return Err(CniError::new(code::IO_FAILURE, e.to_string()));
                }
                Err(e) => return Err(CniError::new(code::INVALID_NETWORK_CONFIG, e.to_string())),
            }
        } else {
            None
        };
        if let Some(env) = &file
            && env.ipmasq == Some(false)
        {
            info!("FLANNEL_IPMASQ=false: gannet-cni sets up no masquerading");
        }
        let ranges = match configured {
            Some(ranges) => ranges,
            None => file.as_ref().map(SubnetEnv::ranges).unwrap_or_default(),
        };
        let mtu = self
            .conf
            .mtu
            .or_else(|| file.as_ref().and_then(|f| f.mtu))
            .unwrap_or(DEFAULT_MTU);
        Ok(Pool { ranges, mtu })
    }

    fn extra_routes(&self) -> Vec<Cidr> {
        self.conf
            .ipam
            .as_ref()
            .and_then(|i| i.routes.as_ref())
            .map(|routes| {
                routes
                    .iter()
                    .map(|r| r.dst)
                    .filter(|d| d.prefix() > 0)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn delegate(&self) -> Result<Delegate, CniError> {
        Delegate::find(self.conf.ipam_type(), &self.env.path)
    }

    fn open_netns(&self) -> Result<(std::path::PathBuf, File), CniError> {
        let path = self.env.netns.clone().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                "required environment variables [CNI_NETNS] missing",
            )
        })?;
        let file = netns::open(&path).map_err(|e| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "CNI_NETNS={}: cannot open the network namespace: {e}",
                    path.display()
                ),
            )
        })?;
        if netns::is_own(&file).unwrap_or(false) {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "CNI_NETNS={} is the plugin's own network namespace",
                    path.display()
                ),
            ));
        }
        Ok((path, file))
    }

    fn agent_call(&self, body: RequestBody) -> Result<(), agent_api::AgentError> {
        match &self.conf.agent_socket {
            None => {
                // Working alone is fine, unless a gannetd runs on this node: then the pod is never
                // reported to it, so it never becomes an endpoint and gets no fast path.
                if matches!(body, RequestBody::Register { .. })
                    && let Some(socket) = unused_agent_socket(self.conf, Path::exists)
                {
                    warn!(
                        socket = %socket.display(),
                        "a gannetd runs on this node but the network configuration has no \
                         agentSocket: this pod is not registered with it, so it will not become \
                         an endpoint nor get the fast path (add \"agentSocket\"; `gannet-cni \
                         install` writes it)"
                    );
                }
                Ok(())
            }
            Some(socket) => {
                agent_api::call(socket, &Request::new(body), agent_api::DEFAULT_TIMEOUT).map(drop)
            }
        }
    }

    fn pause(&self, point: &str) {
        let Some(spec) = (self.get)(PAUSE_ENV) else {
            return;
        };
        let Some((wanted, marker)) = spec.split_once(':') else {
            return;
        };
        if wanted != point {
            return;
        }
        warn!(point, "test hook: pausing");
        let _ = std::fs::write(marker, point);
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The socket of a gannetd on this node that a configuration without `agentSocket` leaves
/// unused: `cni.sock` beside the subnet file gannetd writes (its state directory), or at
/// gannetd's default place. `exists` is `Path::exists` outside tests.
fn unused_agent_socket(
    conf: &crate::config::NetConf,
    exists: impl Fn(&Path) -> bool,
) -> Option<std::path::PathBuf> {
    if conf.agent_socket.is_some() {
        return None;
    }
    let beside_subnet_file = conf
        .subnet_file
        .as_deref()
        .and_then(Path::parent)
        .map(|dir| dir.join("cni.sock"));
    beside_subnet_file
        .into_iter()
        .chain([std::path::PathBuf::from(agent_api::DEFAULT_SOCKET)])
        .find(|socket| exists(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> crate::config::NetConf {
        let text =
            format!(r#"{{"cniVersion": "1.0.0", "name": "n", "type": "gannet-cni"{extra}}}"#);
        crate::config::parse_config(text.as_bytes())
            .expect("a valid configuration")
            .0
    }

    #[test]
    fn a_running_gannetd_left_out_of_the_configuration_is_found() {
        let state = Path::new("/var/run/gannet-test");
        let only = |wanted: &'static str| move |p: &Path| p == Path::new(wanted);
        // Beside the subnet file gannetd writes, or at its default place.
        let with_file = conf(r#", "subnetFile": "/var/run/gannet-test/subnet.env""#);
        assert_eq!(
            unused_agent_socket(&with_file, only("/var/run/gannet-test/cni.sock")),
            Some(state.join("cni.sock"))
        );
        assert_eq!(
            unused_agent_socket(&conf(""), only(agent_api::DEFAULT_SOCKET)),
            Some(agent_api::DEFAULT_SOCKET.into())
        );
        // No gannetd, or the configuration names its socket: nothing to say.
        assert_eq!(unused_agent_socket(&with_file, |_| false), None);
        let named = conf(r#", "agentSocket": "/var/run/gannet-test/cni.sock""#);
        assert_eq!(unused_agent_socket(&named, |_| true), None);
    }
}
