//! The environment a runtime sets: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH`, checked and named in errors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::spec::{CniError, code};

use super::valid_identifier;

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
