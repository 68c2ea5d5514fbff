//! The CNI delegation protocol: running another plugin (an IPAM plugin named by `ipam.type`) from
//! `CNI_PATH` with this process's environment and the network configuration on stdin.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::spec::{CniError, CniVersion, VersionInfo, code, compare_versions};

/// A delegate plugin found in `CNI_PATH`.
#[derive(Debug)]
pub struct Delegate {
    name: String,
    path: PathBuf,
}

impl Delegate {
    /// Looks up `name` in `cni_path`.
    ///
    /// # Errors
    /// 4 if `CNI_PATH` is empty, 7 if the plugin is not found there.
    pub fn find(name: &str, cni_path: &[PathBuf]) -> Result<Delegate, CniError> {
        if cni_path.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!(
                    "required environment variables [CNI_PATH] missing (needed to run the IPAM plugin {name:?})"
                ),
            ));
        }
        if name.contains('/') {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                format!(
                    "network configuration: field `ipam.type` {name:?} must be a plugin name, not a path"
                ),
            ));
        }
        cni_path
            .iter()
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .map(|path| Delegate {
                name: name.to_owned(),
                path,
            })
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_NETWORK_CONFIG,
                    format!(
                        "IPAM plugin {name:?} (field `ipam.type`) not found in CNI_PATH {}",
                        cni_path
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(":")
                    ),
                )
            })
    }

    /// The versions the delegate speaks (its `VERSION` answer).
    ///
    /// # Errors
    /// If it fails or answers nonsense.
    pub fn versions(&self) -> Result<Vec<String>, CniError> {
        let out = self.run("VERSION", br#"{"cniVersion":"0.4.0"}"#)?;
        let info: VersionInfo = serde_json::from_value(out.unwrap_or_default()).map_err(|e| {
            CniError::new(
                code::INTERNAL,
                format!("IPAM plugin {}: invalid VERSION answer: {e}", self.name),
            )
        })?;
        Ok(info.supported_versions)
    }

    /// The newest version both sides speak that is not newer than `wanted`.
    ///
    /// # Errors
    /// 1 if there is none.
    pub fn negotiate(&self, wanted: CniVersion) -> Result<CniVersion, CniError> {
        let theirs = self.versions()?;
        CniVersion::ALL
            .into_iter()
            .rev()
            .filter(|v| *v <= wanted)
            .find(|v| {
                theirs
                    .iter()
                    .any(|t| compare_versions(t, v.as_str()).is_eq())
            })
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "IPAM plugin {} speaks {} and none of them is {wanted} or older",
                        self.name,
                        theirs.join(", ")
                    ),
                )
            })
    }

    /// Runs the delegate with `CNI_COMMAND=command` and `config` on stdin (the `cniVersion` set to
    /// `version`); returns its stdout as JSON (`None` if empty).
    ///
    /// # Errors
    /// The delegate's own error (code and message kept, the plugin named), or 999 if it cannot run.
    pub fn call(
        &self,
        command: &str,
        config: &serde_json::Value,
        version: CniVersion,
    ) -> Result<Option<serde_json::Value>, CniError> {
        let mut config = config.clone();
        config["cniVersion"] = serde_json::Value::String(version.as_str().to_owned());
        let stdin = serde_json::to_vec(&config).map_err(|e| {
            CniError::new(
                code::INTERNAL,
                format!("encoding the delegate's configuration: {e}"),
            )
        })?;
        self.run(command, &stdin)
    }

    fn run(&self, command: &str, stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
        let fail = |what: String| {
            CniError::new(code::INTERNAL, format!("IPAM plugin {}: {what}", self.name))
        };
        let mut child = Command::new(&self.path)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", self.path.display())))?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading stdin closes the pipe; its exit status tells.
            let _ = input.write_all(stdin);
        }
        let output = child
            .wait_with_output()
            .map_err(|e| fail(format!("waiting for it: {e}")))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let value: Option<serde_json::Value> = if text.trim().is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(text.trim())
                    .map_err(|e| fail(format!("{command}: output is not JSON ({e}): {text:?}")))?,
            )
        };
        if !output.status.success() {
            let (code, msg, details) = value
                .as_ref()
                .map(|v| {
                    (
                        v.get("code").and_then(serde_json::Value::as_u64),
                        v.get("msg")
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or(""),
                        v.get("details")
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or(""),
                    )
                })
                .unwrap_or((None, "", ""));
            return Err(CniError::new(
                code.and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(code::INTERNAL),
                format!(
                    "IPAM plugin {} failed {command} ({}): {msg}",
                    self.name, output.status
                ),
            )
            .with_details(details));
        }
        Ok(value)
    }

    /// The plugin's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}
