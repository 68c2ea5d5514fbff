//! `gannet-cni install`: places the binary in the CNI binary directory and a sample conflist in
//! the CNI configuration directory, each by writing a temporary file and renaming it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Default CNI binary directory.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Default CNI configuration directory.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Name of the sample conflist.
pub const CONFLIST_NAME: &str = "10-gannet.conflist";
/// Name of the installed binary (the `type` in configurations).
pub const BINARY_NAME: &str = "gannet-cni";

/// An installation step failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct InstallError {
    what: &'static str,
    path: PathBuf,
    source: io::Error,
}

/// What `install` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The binary's path.
    pub binary: PathBuf,
    /// The conflist's path.
    pub conflist: PathBuf,
    /// Whether the conflist was written (false: an existing one was kept).
    pub conflist_written: bool,
    /// Reference plugins a runtime will look for beside gannet-cni that are not in the binary
    /// directory (see [`COMPANION_PLUGINS`]).
    pub missing_companions: Vec<&'static str>,
}

/// The reference plugins runtimes run with gannet-cni's conflist: `portmap` (its second plugin)
/// and `loopback` (containerd's CRI and cri-o bring each sandbox's `lo` up with it). gannet does
/// not ship them: they come with the node's CNI plugins (Debian's `containernetworking-plugins`).
pub const COMPANION_PLUGINS: [&str; 2] = ["loopback", "portmap"];

/// Where the conflist sends gannet-cni to: gannetd's registration socket and its subnet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    /// gannetd's CNI socket (`agentSocket`); `None`: the plugin works alone.
    pub agent_socket: Option<PathBuf>,
    /// The node's subnet file (`subnetFile`).
    pub subnet_file: PathBuf,
}

impl Default for NodeFiles {
    /// gannetd's defaults (`--state-dir /run/gannet`).
    fn default() -> Self {
        NodeFiles {
            agent_socket: Some(PathBuf::from(crate::agent_api::DEFAULT_SOCKET)),
            subnet_file: PathBuf::from(crate::config::DEFAULT_SUBNET_FILE),
        }
    }
}

/// The sample conflist, for a node running gannetd with its defaults.
#[must_use]
pub fn sample_conflist() -> serde_json::Value {
    conflist(&NodeFiles::default())
}

/// The conflist `install` writes: gannet-cni with its IPAM reading the node's subnet file,
/// registering pods with gannetd (their addresses reach the control plane, and they get the fast
/// path), then portmap.
#[must_use]
pub fn conflist(node: &NodeFiles) -> serde_json::Value {
    let mut plugin = serde_json::json!({
        "type": BINARY_NAME,
        "capabilities": { "ips": true, "mac": true },
        "subnetFile": node.subnet_file,
        "ipam": { "type": "gannet", "dataDir": crate::config::DEFAULT_DATA_DIR },
        "logFile": "/var/log/gannet-cni.log"
    });
    if let Some(socket) = &node.agent_socket {
        plugin["agentSocket"] = serde_json::json!(socket);
    }
    serde_json::json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "gannet",
        "plugins": [
            plugin,
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

/// Copies `source` (normally the running executable) to `bin_dir/gannet-cni` and writes the
/// conflist for `node` to `conf_dir` unless one exists (or `overwrite_conf`).
///
/// # Errors
/// If a directory cannot be created or a file cannot be written.
pub fn install(
    source: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    overwrite_conf: bool,
    node: &NodeFiles,
) -> Result<Installed, InstallError> {
    let err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError { what, path, source }
    };
    fs::create_dir_all(bin_dir).map_err(err("creating", bin_dir))?;
    fs::create_dir_all(conf_dir).map_err(err("creating", conf_dir))?;
    let binary = bin_dir.join(BINARY_NAME);
    let tmp = bin_dir.join(format!(".{BINARY_NAME}.tmp-{}", std::process::id()));
    fs::copy(source, &tmp).map_err(err("copying the binary to", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .map_err(err("making executable", &tmp))?;
    // rename(2) replaces a binary that runtimes may be executing without disturbing them.
    fs::rename(&tmp, &binary).map_err(err("installing", &binary))?;
    let conflist = conf_dir.join(CONFLIST_NAME);
    let conflist_written = overwrite_conf || !conflist.exists();
    if conflist_written {
        let tmp = conf_dir.join(format!(".{CONFLIST_NAME}.tmp-{}", std::process::id()));
        let mut text = serde_json::to_string_pretty(&self::conflist(node)).unwrap_or_default();
        text.push('\n');
        fs::write(&tmp, text).map_err(err("writing", &tmp))?;
        fs::rename(&tmp, &conflist).map_err(err("installing", &conflist))?;
    }
    let missing_companions = COMPANION_PLUGINS
        .into_iter()
        .filter(|name| !bin_dir.join(name).is_file())
        .collect();
    Ok(Installed {
        binary,
        conflist,
        conflist_written,
        missing_companions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_conflist_points_at_gannetd_defaults() {
        let conf = sample_conflist();
        let plugin = &conf["plugins"][0];
        assert_eq!(plugin["agentSocket"], "/run/gannet/cni.sock");
        assert_eq!(plugin["subnetFile"], "/run/gannet/subnet.env");
        let alone = conflist(&NodeFiles {
            agent_socket: None,
            subnet_file: PathBuf::from("/x/subnet.env"),
        });
        assert!(
            alone["plugins"][0].get("agentSocket").is_none(),
            "without a socket the plugin works alone: {alone}"
        );
        assert_eq!(alone["plugins"][0]["subnetFile"], "/x/subnet.env");
    }

    #[test]
    fn install_names_the_reference_plugins_missing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        let source = dir.path().join("gannet-cni-build");
        fs::write(&source, b"#!/bin/sh\n").unwrap();
        let done = install(&source, &bin, &conf, false, &NodeFiles::default()).unwrap();
        assert_eq!(done.missing_companions, ["loopback", "portmap"]);
        fs::write(bin.join("loopback"), b"").unwrap();
        let done = install(&source, &bin, &conf, false, &NodeFiles::default()).unwrap();
        assert_eq!(done.missing_companions, ["portmap"]);
        assert!(
            !done.conflist_written,
            "the first install's conflist is kept"
        );
    }
}
