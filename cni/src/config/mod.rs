//! The plugin's network configuration (stdin) and the environment a runtime sets, parsed and
//! validated in one place. Errors carry the spec's codes and name the field or variable.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::net::Cidr;
use crate::spec::{CniError, CniVersion, Dns, Route, code};

mod env;
mod requests;
#[cfg(test)]
mod tests;

pub(crate) use self::env::check_ifname;
pub use self::env::{CniEnv, Command, parse_env};
pub(crate) use self::requests::parse_mac;
pub use self::requests::{Requests, Source, parse_requests};

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
