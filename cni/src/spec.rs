//! The CNI protocol's data types (spec 1.1.0 and the older versions this plugin accepts): versions,
//! error codes, the error object and results, with the per-version result shapes.
//!
//! These are our own serde types rather than the archived `cni-plugin` crate's, which stops at spec
//! 1.0.0 (no `GC`/`STATUS`, no `cni.dev/valid-attachments`, no 1.1 interface/route fields).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net::Cidr;

/// The spec versions this plugin speaks, oldest first (what `VERSION` reports).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A spec version this plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0
    V0_3_0,
    /// 0.3.1
    V0_3_1,
    /// 0.4.0: adds `CHECK`.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds `GC`, `STATUS` and the interface/route extensions.
    V1_1_0,
}

impl CniVersion {
    /// The newest version.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// Every version, oldest first.
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The version named `text`, if supported.
    #[must_use]
    pub fn parse(text: &str) -> Option<CniVersion> {
        CniVersion::ALL.into_iter().find(|v| v.as_str() == text)
    }

    /// The version as the spec writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares two dotted versions numerically (`"0.10.0" > "0.4.0"`); unparsable parts count as 0.
#[must_use]
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a).cmp(&parts(b))
}

/// The spec's well-known error codes, and this plugin's own (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (the message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (the message names them).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure, e.g. reading stdin.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (e.g. the configuration is not JSON).
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// A transient condition: try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (cannot service `ADD`).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// The plugin is not available and existing containers may have limited connectivity.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY: u32 = 51;
    /// gannet: every address of the pool is allocated.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// gannet: `CHECK` found the container's network different from the result.
    pub const CHECK_MISMATCH: u32 = 101;
    /// gannet: a requested address (`CNI_ARGS` `IP=`, the `ips` capability) is allocated to
    /// another attachment.
    pub const ADDRESS_IN_USE: u32 = 102;
    /// gannet: the gannet agent refused the endpoint (it named why: an address outside the
    /// node's pod CIDRs or held by another live endpoint, a full map, ...): the same request
    /// again will not do better, unlike an agent that does not answer (11).
    pub const AGENT_REFUSED: u32 = 103;
    /// Any other failure (the code the reference plugins use).
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: printed to stdout as the spec's error object, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The error code (see [`code`]).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object of spec version `version`.
    #[must_use]
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        let mut object = serde_json::json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            object["details"] = serde_json::Value::String(self.details.clone());
        }
        object
    }
}

/// A CNI result (the union of every supported version's fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The version of the result's format.
    #[serde(default)]
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// An interface in a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The network namespace path for interfaces inside the sandbox; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Socket path (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// PCI ID (1.1.0).
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`: present in 0.3.x/0.4.0 results only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address and its prefix length.
    pub address: Cidr,
    /// Default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: Cidr,
    /// Next hop (absent: on-link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Priority/metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

/// DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether no field is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// Parses a result of any supported version (a `prevResult` or a delegated plugin's output).
    ///
    /// # Errors
    /// If `value` is not a result object of a 0.3.0 or newer shape.
    pub fn from_value(value: serde_json::Value) -> Result<CniResult, String> {
        if let Some(version) = value.get("cniVersion").and_then(serde_json::Value::as_str)
            && compare_versions(version, "0.3.0").is_lt()
        {
            return Err(format!(
                "result version {version} is older than 0.3.0 and not supported"
            ));
        }
        serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    /// This result in the shape of `version`: `ips[].version` only before 1.0.0, the 1.1.0
    /// interface and route fields only from 1.1.0 on.
    #[must_use]
    pub fn for_version(&self, version: CniVersion) -> CniResult {
        let mut out = self.clone();
        out.cni_version = version.as_str().to_owned();
        for ip in &mut out.ips {
            ip.version = (version < CniVersion::V1_0_0)
                .then(|| if ip.address.is_ipv4() { "4" } else { "6" }.to_owned());
        }
        if version < CniVersion::V1_1_0 {
            for interface in &mut out.interfaces {
                interface.mtu = None;
                interface.socket_path = None;
                interface.pci_id = None;
            }
            for route in &mut out.routes {
                route.mtu = None;
                route.advmss = None;
                route.priority = None;
                route.table = None;
                route.scope = None;
            }
        }
        out
    }

    /// Appends `other`'s interfaces, addresses (re-indexed) and routes to this result.
    pub fn append(&mut self, other: CniResult) {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
    }
}

/// What `VERSION` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The version of this object's format.
    pub cni_version: String,
    /// Every version the plugin speaks.
    pub supported_versions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: String::new(),
            interfaces: vec![
                Interface {
                    name: "gnt0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: Some(1500),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    sandbox: "/run/netns/x".into(),
                    mtu: Some(1500),
                    ..Interface::default()
                },
            ],
            ips: vec![IpConfig {
                version: None,
                address: "10.244.1.5/32".parse().expect("cidr"),
                gateway: Some("169.254.1.1".parse().expect("ip")),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("cidr"),
                gw: Some("169.254.1.1".parse().expect("ip")),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn result_shapes_per_version() {
        let r = sample();
        let v04 = serde_json::to_value(r.for_version(CniVersion::V0_4_0)).expect("json");
        assert_eq!(v04["cniVersion"], "0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][0]["interface"], 1);
        assert!(v04["interfaces"][0].get("mtu").is_none(), "{v04}");
        assert!(v04.get("dns").is_none(), "{v04}");
        let v10 = serde_json::to_value(r.for_version(CniVersion::V1_0_0)).expect("json");
        assert!(v10["ips"][0].get("version").is_none(), "{v10}");
        assert!(v10["interfaces"][1].get("mtu").is_none(), "{v10}");
        let v11 = serde_json::to_value(r.for_version(CniVersion::V1_1_0)).expect("json");
        assert_eq!(v11["interfaces"][1]["mtu"], 1500);
        assert_eq!(v11["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(v11["interfaces"][0].get("sandbox").is_none(), "{v11}");
    }

    #[test]
    fn parses_older_results_and_rejects_0_2() {
        let r = CniResult::from_value(serde_json::json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
        }))
        .expect("0.3.1 result");
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/24");
        let err = CniResult::from_value(serde_json::json!({"cniVersion": "0.2.0", "ip4": {}}))
            .expect_err("0.2.0");
        assert!(err.contains("0.2.0"), "{err}");
        let err = CniResult::from_value(serde_json::json!({"ips": [{"address": "nope"}]}))
            .expect_err("bad address");
        assert!(err.contains("ips[0].address"), "{err}");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(compare_versions("0.10.0", "0.4.0").is_gt());
        assert!(compare_versions("1.0.0", "1.1.0").is_lt());
        assert_eq!(CniVersion::parse("0.4.0"), Some(CniVersion::V0_4_0));
        assert_eq!(CniVersion::parse("0.2.0"), None);
    }

    #[test]
    fn error_json() {
        let e = CniError::new(code::INVALID_ENVIRONMENT, "CNI_IFNAME missing");
        assert_eq!(
            e.to_json("1.0.0"),
            serde_json::json!({"cniVersion": "1.0.0", "code": 4, "msg": "CNI_IFNAME missing"})
        );
        let e = e.with_details("more");
        assert_eq!(e.to_json("1.0.0")["details"], "more");
    }
}
