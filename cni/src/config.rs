//! The plugin's network configuration (stdin) and the environment a runtime sets, parsed and
//! validated in one place. Errors carry the spec's codes and name the field or variable.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::net::Cidr;
use crate::spec::{CniError, CniVersion, Dns, Route, code};

/// Where the node's subnet file is read from when the configuration gives neither `ipam.ranges`,
/// `ipam.subnet` nor `subnetFile`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/gannet/subnet.env";
/// Default directory of the built-in IPAM's store (one subdirectory per network).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/gannet";
/// How long `ADD` waits for a missing subnet file by default, in seconds.
pub const DEFAULT_SUBNET_FILE_WAIT_SECONDS: u32 = 10;
/// MTU when neither the configuration nor the subnet file sets one.
pub const DEFAULT_MTU: u32 = 1500;
/// The `ipam.type` values that select the built-in IPAM (as does a missing `ipam`).
pub const BUILTIN_IPAM_TYPES: [&str; 2] = ["gannet", "gannet-cni"];

/// The network configuration on stdin (one plugin's configuration, as a runtime passes it).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version of the configuration.
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type (our binary's name).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// MTU of both veth ends.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The node's subnet file (Flannel `subnet.env` format).
    #[serde(default)]
    pub subnet_file: Option<PathBuf>,
    /// How long `ADD` waits for a missing subnet file (the node agent writes it once the node
    /// has its lease), in seconds; default [`DEFAULT_SUBNET_FILE_WAIT_SECONDS`].
    #[serde(default)]
    pub subnet_file_wait_seconds: Option<u32>,
    /// Unix socket of the gannet agent; when set, endpoints are registered with it.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// File to append logs to (else stderr).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// Log level or filter (`info`, `debug`, ...).
    #[serde(default)]
    pub log_level: Option<String>,
    /// IP masquerade: not done by this plugin (see the README).
    #[serde(default)]
    pub ip_masq: Option<bool>,
    /// The `ipam` section as given (a delegate plugin's settings are its own business).
    #[serde(default, rename = "ipam")]
    pub ipam_raw: Option<serde_json::Value>,
    /// The `ipam` section parsed, when the built-in IPAM is used.
    #[serde(skip)]
    pub ipam: Option<IpamConf>,
    /// DNS settings, passed through to the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// The previous plugin's result (chains) or the cached result (`CHECK`, `DEL`).
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// Capability arguments from the runtime.
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    /// The `args` convention (`args.cni.ips`, `args.cni.mac`).
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    /// `GC`: the attachments still in use.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// `GC`: the pre-1.1 name of `cni.dev/valid-attachments`.
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

/// `ipam` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    /// IPAM plugin; empty, `gannet` or `gannet-cni` select the built-in IPAM.
    #[serde(rename = "type", default)]
    pub ipam_type: String,
    /// Range sets: one address is allocated from each set.
    #[serde(default)]
    pub ranges: Option<Vec<Vec<RangeConf>>>,
    /// Shorthand for a single range.
    #[serde(default)]
    pub subnet: Option<Cidr>,
    /// With `subnet`: first address to hand out.
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    /// With `subnet`: last address to hand out.
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    /// With `subnet`: an address never handed out.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Store directory (default `/var/lib/cni/gannet`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Extra routes for the pod (via the link-local gateway).
    #[serde(default)]
    pub routes: Option<Vec<Route>>,
}

/// One range of a range set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    /// The subnet.
    pub subnet: Cidr,
    /// First address to hand out.
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    /// Last address to hand out.
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    /// An address never handed out.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// A container attachment (`GC`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
pub struct Attachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

impl NetConf {
    /// Whether IPAM is built in (else `ipam.type` names a delegate plugin).
    #[must_use]
    pub fn builtin_ipam(&self) -> bool {
        let ipam_type = self.ipam_type();
        ipam_type.is_empty() || BUILTIN_IPAM_TYPES.contains(&ipam_type)
    }

    /// `ipam.type` (empty if absent).
    #[must_use]
    pub fn ipam_type(&self) -> &str {
        self.ipam_raw
            .as_ref()
            .and_then(|ipam| ipam.get("type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
    }

    /// The store directory of this network.
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.ipam
            .as_ref()
            .and_then(|ipam| ipam.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
            .join(&self.name)
    }

    /// The configured range sets (`ipam.ranges`, or `ipam.subnet` as one range), if any.
    #[must_use]
    pub fn configured_ranges(&self) -> Option<Vec<Vec<RangeConf>>> {
        let ipam = self.ipam.as_ref()?;
        if let Some(ranges) = &ipam.ranges {
            return Some(ranges.clone());
        }
        ipam.subnet.map(|subnet| {
            vec![vec![RangeConf {
                subnet,
                range_start: ipam.range_start,
                range_end: ipam.range_end,
                gateway: ipam.gateway,
            }]]
        })
    }

    /// The attachments `GC` must keep (`cni.dev/valid-attachments`, else `cni.dev/attachments`).
    #[must_use]
    pub fn gc_attachments(&self) -> Option<&[Attachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.attachments.as_deref())
    }
}

/// Where a requested address or MAC came from, for error messages and codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `CNI_ARGS` key `IP`/`MAC` (an environment variable: errors have code 4).
    CniArgs(&'static str),
    /// A field of the network configuration (`runtimeConfig.ips[0]`, `args.cni.mac`: code 7).
    Field(String),
}

impl Source {
    /// The error code for an invalid value from here.
    #[must_use]
    pub fn code(&self) -> u32 {
        match self {
            Source::CniArgs(_) => code::INVALID_ENVIRONMENT,
            Source::Field(_) => code::INVALID_NETWORK_CONFIG,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::CniArgs(key) => write!(f, "CNI_ARGS {key}"),
            Source::Field(field) => write!(f, "field `{field}`"),
        }
    }
}

/// What the runtime asked for this attachment: static addresses and a MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// Addresses, each with where it came from.
    pub ips: Vec<(IpAddr, Source)>,
    /// The pod interface's MAC.
    pub mac: Option<([u8; 6], Source)>,
}

/// Reads the requested addresses and MAC: the `ips`/`mac` capabilities (`runtimeConfig`), else
/// the `args.cni` convention, else `CNI_ARGS` `IP=` (comma-separated) and `MAC=`. An address may
/// carry a prefix length (`10.1.2.3/24`, as the `ips` capability has it), which is ignored: a pod
/// address is always a `/32` or `/128`.
///
/// # Errors
/// 4 for an invalid `CNI_ARGS` value, 7 for an invalid field, naming it.
pub fn parse_requests(conf: &NetConf, env: &CniEnv) -> Result<Requests, CniError> {
    let field = |path: &str, key: &str| -> Option<(serde_json::Value, String)> {
        let mut value = match path {
            "runtimeConfig" => conf.runtime_config.as_ref()?,
            _ => conf.args.as_ref()?.get("cni")?,
        };
        value = value.get(key)?;
        Some((value.clone(), format!("{path}.{key}")))
    };
    let mut out = Requests::default();
    let ips_field = field("runtimeConfig", "ips").or_else(|| field("args.cni", "ips"));
    if let Some((value, name)) = ips_field {
        let list = value.as_array().ok_or_else(|| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("network configuration: field `{name}`: expected an array of addresses"),
            )
        })?;
        for (i, item) in list.iter().enumerate() {
            let source = Source::Field(format!("{name}[{i}]"));
            let text = item.as_str().unwrap_or_default();
            let ip = parse_requested_ip(text).ok_or_else(|| {
                CniError::new(
                    source.code(),
                    format!("network configuration: {source}: {item} is not an IP address"),
                )
            })?;
            out.ips.push((ip, source));
        }
    } else if let Some(text) = env.args.get("IP").filter(|t| !t.is_empty()) {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ip = parse_requested_ip(part).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("invalid environment variables: CNI_ARGS IP={text}: {part:?} is not an IP address"),
                )
            })?;
            out.ips.push((ip, Source::CniArgs("IP")));
        }
    }
    let mac_field = field("runtimeConfig", "mac").or_else(|| field("args.cni", "mac"));
    let mac = match mac_field {
        Some((value, name)) => Some((
            value.as_str().unwrap_or_default().to_owned(),
            Source::Field(name),
        )),
        None => env
            .args
            .get("MAC")
            .filter(|t| !t.is_empty())
            .map(|t| (t.clone(), Source::CniArgs("MAC"))),
    };
    if let Some((text, source)) = mac {
        let bytes = parse_mac(&text).map_err(|why| {
            let what = match &source {
                Source::CniArgs(_) => format!("invalid environment variables: {source}={text}"),
                Source::Field(_) => format!("network configuration: {source}: {text:?}"),
            };
            CniError::new(source.code(), format!("{what}: {why}"))
        })?;
        out.mac = Some((bytes, source));
    }
    Ok(out)
}

fn parse_requested_ip(text: &str) -> Option<IpAddr> {
    let addr = text.split_once('/').map_or(text, |(addr, prefix)| {
        if prefix.parse::<u8>().is_ok() {
            addr
        } else {
            ""
        }
    });
    addr.parse().ok()
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`), a unicast address other than all zeros.
pub(crate) fn parse_mac(text: &str) -> Result<[u8; 6], &'static str> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return Err("not a MAC address (six two-digit hex octets separated by `:`)");
    }
    let mut mac = [0_u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| "not a MAC address (six two-digit hex octets separated by `:`)")?;
    }
    if mac[0] & 1 == 1 {
        return Err("a multicast MAC address cannot be an interface's");
    }
    if mac == [0; 6] {
        return Err("the all-zero MAC address cannot be an interface's");
    }
    Ok(mac)
}

/// Parses stdin. Returns the configuration and its version.
///
/// # Errors
/// 6 if stdin is not a JSON object of the right shape (naming the field), 1 for an unsupported
/// `cniVersion`, 7 for a missing or invalid `name` or an invalid `ipam` section, 2 for a field value
/// this plugin does not support.
pub fn parse_config(stdin: &[u8]) -> Result<(NetConf, CniVersion), CniError> {
    let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("network configuration on stdin is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "network configuration on stdin is not a JSON object",
        ));
    }
    let Some(version_text) = value.get("cniVersion") else {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "network configuration: missing field `cniVersion`",
        ));
    };
    let Some(version_text) = version_text.as_str() else {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "network configuration: field `cniVersion` is not a string",
        ));
    };
    let Some(version) = CniVersion::parse(version_text) else {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI versions: cniVersion {version_text:?} is not supported"),
        )
        .with_details(format!(
            "supported versions: {}",
            crate::spec::SUPPORTED_VERSIONS.join(", ")
        )));
    };
    let mut conf: NetConf = serde_path_to_error::deserialize(value).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("network configuration: field `{}`: {}", e.path(), e.inner()),
        )
    })?;
    if let Some(raw) = conf.ipam_raw.clone() {
        if !raw.is_object() {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                "network configuration: field `ipam` is not an object",
            ));
        }
        if conf.builtin_ipam() {
            let ipam: IpamConf = serde_path_to_error::deserialize(raw).map_err(|e| {
                CniError::new(
                    code::DECODING_FAILURE,
                    format!(
                        "network configuration: field `ipam.{}`: {}",
                        e.path(),
                        e.inner()
                    ),
                )
            })?;
            conf.ipam = Some(ipam);
        }
    }
    validate(&conf)?;
    Ok((conf, version))
}

fn validate(conf: &NetConf) -> Result<(), CniError> {
    if conf.name.is_empty() {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            "network configuration: missing network name (field `name`)",
        ));
    }
    if !valid_identifier(&conf.name) {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!(
                "network configuration: field `name` {:?} must start with a letter or digit and hold only letters, digits, `_`, `.` and `-`",
                conf.name
            ),
        ));
    }
    if let Some(mtu) = conf.mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!("network configuration: field `mtu` {mtu} is outside 68..=65535"),
        ));
    }
    if conf.ip_masq == Some(true) {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "unsupported field `ipMasq`: true (gannet-cni routes pod traffic; masquerading is the agent's job)",
        ));
    }
    if conf.builtin_ipam()
        && let Some(ranges) = conf.configured_ranges()
    {
        validate_ranges(&ranges)?;
    }
    Ok(())
}

/// Checks range sets: non-empty, start/end/gateway inside the subnet, one family per set.
///
/// # Errors
/// 7 naming the field (`ipam.ranges[i][j].rangeStart`, ...).
pub fn validate_ranges(ranges: &[Vec<RangeConf>]) -> Result<(), CniError> {
    let bad = |field: String, what: String| {
        CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!("network configuration: field `{field}`: {what}"),
        )
    };
    if ranges.is_empty() {
        return Err(bad("ipam.ranges".into(), "no range set".into()));
    }
    for (i, set) in ranges.iter().enumerate() {
        let Some(first) = set.first() else {
            return Err(bad(format!("ipam.ranges[{i}]"), "empty range set".into()));
        };
        for (j, range) in set.iter().enumerate() {
            let at = |name: &str| format!("ipam.ranges[{i}][{j}].{name}");
            if range.subnet.is_ipv4() != first.subnet.is_ipv4() {
                return Err(bad(
                    at("subnet"),
                    format!(
                        "{} mixes address families within one range set",
                        range.subnet
                    ),
                ));
            }
            let host_bits =
                if range.subnet.is_ipv4() { 32 } else { 128 } - u32::from(range.subnet.prefix());
            if host_bits < 2 {
                return Err(bad(
                    at("subnet"),
                    format!("{} is too small to hold pods", range.subnet),
                ));
            }
            for (name, addr) in [
                ("rangeStart", range.range_start),
                ("rangeEnd", range.range_end),
                ("gateway", range.gateway),
            ] {
                if let Some(addr) = addr
                    && !range.subnet.contains(addr)
                {
                    return Err(bad(
                        at(name),
                        format!("{addr} is outside subnet {}", range.subnet),
                    ));
                }
            }
            if let (Some(start), Some(end)) = (range.range_start, range.range_end)
                && crate::net::to_bits(start) > crate::net::to_bits(end)
            {
                return Err(bad(
                    at("rangeEnd"),
                    format!("{end} is before rangeStart {start}"),
                ));
            }
        }
    }
    Ok(())
}

/// Network names and container ids: a letter or digit, then letters, digits, `_`, `.`, `-`.
pub(crate) fn valid_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The verb in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// ADD
    Add,
    /// DEL
    Del,
    /// CHECK
    Check,
    /// VERSION
    Version,
    /// GC
    Gc,
    /// STATUS
    Status,
}

/// The runtime's environment variables, validated for the verb.
#[derive(Debug, Clone)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION/GC/STATUS).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    #[must_use]
    pub fn pod_namespace(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAMESPACE").map(String::as_str)
    }

    /// `K8S_POD_NAME` from `CNI_ARGS`.
    #[must_use]
    pub fn pod_name(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAME").map(String::as_str)
    }
}

/// Reads and validates the CNI environment variables through `get`.
///
/// # Errors
/// 4, naming every missing or invalid variable.
pub fn parse_env(get: &dyn Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
    let var = |name: &str| get(name).filter(|v| !v.is_empty());
    let command = match var("CNI_COMMAND").as_deref() {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("VERSION") => Command::Version,
        Some("GC") => Command::Gc,
        Some("STATUS") => Command::Status,
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "CNI_COMMAND: unknown command {other:?} (expected ADD, DEL, CHECK, VERSION, GC or STATUS)"
                ),
            ));
        }
        None => {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                "required environment variables [CNI_COMMAND] missing",
            ));
        }
    };
    let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
    let mut missing = Vec::new();
    let mut invalid = Vec::new();
    let container_id = var("CNI_CONTAINERID").unwrap_or_default();
    let ifname = var("CNI_IFNAME").unwrap_or_default();
    let netns = var("CNI_NETNS").map(PathBuf::from);
    if per_container {
        if container_id.is_empty() {
            missing.push("CNI_CONTAINERID");
        } else if !valid_identifier(&container_id) {
            invalid.push(format!(
                "CNI_CONTAINERID={container_id:?} (letters, digits, `_`, `.`, `-`, starting with a letter or digit)"
            ));
        }
        if ifname.is_empty() {
            missing.push("CNI_IFNAME");
        } else if let Err(why) = check_ifname(&ifname) {
            invalid.push(format!("CNI_IFNAME={ifname:?} ({why})"));
        }
        if netns.is_none() && command != Command::Del {
            missing.push("CNI_NETNS");
        }
    }
    let path: Vec<PathBuf> = var("CNI_PATH")
        .map(|p| {
            p.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    let args_text = get("CNI_ARGS").unwrap_or_default();
    let args = match parse_cni_args(&args_text) {
        Ok(args) => args,
        Err(why) => {
            invalid.push(format!("CNI_ARGS={args_text:?} ({why})"));
            BTreeMap::new()
        }
    };
    if !missing.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "required environment variables [{}] missing",
                missing.join(",")
            ),
        ));
    }
    if !invalid.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("invalid environment variables: {}", invalid.join("; ")),
        ));
    }
    Ok(CniEnv {
        command,
        container_id,
        netns,
        ifname,
        args,
        path,
    })
}

/// Interface names the kernel accepts: 1-15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub(crate) fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.len() > 15 {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("reserved name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("contains `/`, `:` or whitespace");
    }
    Ok(())
}

/// `K=V;K=V` (empty allowed).
fn parse_cni_args(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not KEY=VALUE"));
        };
        if key.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_env(&|name| map.get(name).cloned())
    }

    #[test]
    fn env_names_missing_and_invalid_variables() {
        let err = env(&[("CNI_COMMAND", "ADD")]).expect_err("missing");
        assert_eq!(err.code, 4);
        assert!(
            err.msg.contains("CNI_CONTAINERID")
                && err.msg.contains("CNI_IFNAME")
                && err.msg.contains("CNI_NETNS"),
            "{err}"
        );
        let err = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_NETNS", "/x"),
        ])
        .expect_err("invalid");
        assert!(
            err.msg.contains("CNI_CONTAINERID") && err.msg.contains("CNI_IFNAME"),
            "{err}"
        );
        let err = env(&[("CNI_COMMAND", "NOPE")]).expect_err("bad verb");
        assert!(err.msg.contains("CNI_COMMAND"), "{err}");
        let ok = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web",
            ),
        ])
        .expect("DEL needs no netns");
        assert_eq!(ok.pod_name(), Some("web"));
        assert_eq!(ok.pod_namespace(), Some("ns"));
        let err = env(&[("CNI_COMMAND", "STATUS"), ("CNI_ARGS", "novalue")]).expect_err("args");
        assert!(err.msg.contains("CNI_ARGS"), "{err}");
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = parse_config(b"{").expect_err("not json");
        assert_eq!(err.code, 6);
        let err = parse_config(br#"{"cniVersion":"0.2.0","name":"n"}"#).expect_err("old");
        assert_eq!(err.code, 1);
        let err = parse_config(br#"{"cniVersion":"1.0.0"}"#).expect_err("no name");
        assert_eq!(err.code, 7);
        assert!(err.msg.contains("name"), "{err}");
        let err = parse_config(br#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#).expect_err("mtu");
        assert_eq!(err.code, 6);
        assert!(err.msg.contains("`mtu`"), "{err}");
        let err = parse_config(
            br#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}}"#,
        )
        .expect_err("range");
        assert_eq!(err.code, 7);
        assert!(err.msg.contains("ipam.ranges[0][0].rangeStart"), "{err}");
        let err = parse_config(
            br#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/33"}]]}}"#,
        )
        .expect_err("subnet");
        assert_eq!(err.code, 6);
        assert!(err.msg.contains("ipam.ranges[0][0].subnet"), "{err}");
        let err =
            parse_config(br#"{"cniVersion":"1.0.0","name":"n","ipMasq":true}"#).expect_err("masq");
        assert_eq!(err.code, 2);
        assert!(
            err.msg.contains("ipMasq") && err.msg.contains("true"),
            "{err}"
        );
    }

    #[test]
    fn builtin_or_delegated_ipam() {
        let (conf, _) =
            parse_config(br#"{"cniVersion":"1.1.0","name":"n","type":"gannet-cni"}"#).expect("ok");
        assert!(conf.builtin_ipam());
        let (conf, _) = parse_config(
            br#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"any"}]]}}"#,
        )
        .expect("the delegate's settings are not ours to check");
        assert!(!conf.builtin_ipam());
        assert_eq!(conf.ipam_type(), "host-local");
    }

    #[test]
    fn requests_from_capabilities_args_and_cni_args() {
        let env = |args: &str| {
            parse_env(&|name: &str| match name {
                "CNI_COMMAND" => Some("ADD".into()),
                "CNI_CONTAINERID" => Some("c".into()),
                "CNI_IFNAME" => Some("eth0".into()),
                "CNI_NETNS" => Some("/x".into()),
                "CNI_ARGS" => Some(args.into()),
                _ => None,
            })
            .expect("env")
        };
        let conf = |extra: &str| {
            parse_config(format!(r#"{{"cniVersion":"1.0.0","name":"n"{extra}}}"#).as_bytes())
                .expect("conf")
                .0
        };
        let r = parse_requests(
            &conf(""),
            &env("IgnoreUnknown=1;IP=10.0.0.5,fd00::5;MAC=02:00:00:00:00:01"),
        )
        .expect("CNI_ARGS");
        assert_eq!(
            r.ips,
            [
                ("10.0.0.5".parse().expect("ip"), Source::CniArgs("IP")),
                ("fd00::5".parse().expect("ip"), Source::CniArgs("IP"))
            ]
        );
        assert_eq!(r.mac, Some(([2, 0, 0, 0, 0, 1], Source::CniArgs("MAC"))));
        let r = parse_requests(
            &conf(r#","runtimeConfig":{"ips":["10.0.0.7/24"],"mac":"02:00:00:00:00:02"}"#),
            &env("IP=10.0.0.5;MAC=02:00:00:00:00:01"),
        )
        .expect("capabilities win");
        assert_eq!(r.ips[0].0.to_string(), "10.0.0.7");
        assert_eq!(r.ips[0].1.to_string(), "field `runtimeConfig.ips[0]`");
        assert_eq!(r.mac.expect("mac").0, [2, 0, 0, 0, 0, 2]);
        let err = parse_requests(&conf(""), &env("IP=10.0.0.300")).expect_err("bad ip");
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_ARGS IP=10.0.0.300"), "{err}");
        let err = parse_requests(&conf(""), &env("MAC=01:00:5e:00:00:01")).expect_err("multicast");
        assert_eq!(err.code, 4);
        assert!(
            err.msg.contains("CNI_ARGS MAC=01:00:5e:00:00:01") && err.msg.contains("multicast"),
            "{err}"
        );
        let err = parse_requests(&conf(r#","runtimeConfig":{"ips":["x"]}"#), &env(""))
            .expect_err("bad field");
        assert_eq!(err.code, 7);
        assert!(err.msg.contains("runtimeConfig.ips[0]"), "{err}");
        let err = parse_requests(&conf(r#","args":{"cni":{"mac":"zz"}}"#), &env(""))
            .expect_err("bad args.cni.mac");
        assert_eq!(err.code, 7);
        assert!(err.msg.contains("args.cni.mac"), "{err}");
    }
}
