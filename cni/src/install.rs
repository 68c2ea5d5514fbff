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
}

/// The sample conflist: gannet-cni with its IPAM reading the node's subnet file, then portmap.
#[must_use]
pub fn sample_conflist() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": "gannet",
        "plugins": [
            {
                "type": BINARY_NAME,
                "capabilities": { "ips": true, "mac": true },
                "subnetFile": crate::config::DEFAULT_SUBNET_FILE,
                "ipam": { "type": "gannet", "dataDir": crate::config::DEFAULT_DATA_DIR },
                "logFile": "/var/log/gannet-cni.log"
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

/// Copies `source` (normally the running executable) to `bin_dir/gannet-cni` and writes the sample
/// conflist to `conf_dir` unless one exists (or `overwrite_conf`).
///
/// # Errors
/// If a directory cannot be created or a file cannot be written.
pub fn install(
    source: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    overwrite_conf: bool,
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
        let mut text = serde_json::to_string_pretty(&sample_conflist()).unwrap_or_default();
        text.push('\n');
        fs::write(&tmp, text).map_err(err("writing", &tmp))?;
        fs::rename(&tmp, &conflist).map_err(err("installing", &conflist))?;
    }
    Ok(Installed {
        binary,
        conflist,
        conflist_written,
    })
}
