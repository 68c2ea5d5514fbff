//! What a runtime asks for beyond the configuration: addresses and a MAC, from `capabilities`,
//! `args` or `CNI_ARGS`, each with where it came from.

use std::net::IpAddr;

use crate::spec::{CniError, code};

use super::NetConf;
use super::env::CniEnv;

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
