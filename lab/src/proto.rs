//! The lab's command channel: one JSON object per line each way on the guest's virtio-serial
//! port `gannet.cmd` (a unix socket of qemu on the host).
//!
//! A virtio-serial port needs no network, so commands reach a guest before its NIC is up and
//! whatever gannet does to the guest's network; and only the host's root can reach it (the
//! socket lives in the lab's directory). The host sends a [`Request`] and reads lines until the
//! [`Response`] with the same id: a response to a request whose client went away (a killed
//! `gannet-lab exec`) is skipped by the next client.

use serde::{Deserialize, Serialize};

/// The name of the command port (`/sys/class/virtio-ports/*/name` in the guest).
pub const COMMAND_PORT: &str = "gannet.cmd";

/// A command to run in the guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host; the response carries it back.
    pub id: u64,
    /// Program and arguments (no shell: give `sh -c '…'` for one).
    pub argv: Vec<String>,
    /// Written to the command's standard input, then closed.
    #[serde(default)]
    pub stdin: String,
    /// The command's process group is killed after this long.
    pub timeout_ms: u64,
}

/// What a command did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    /// Exit status, when the command exited.
    pub status: Option<i32>,
    /// The signal that ended it, when one did (also after a timeout).
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Output (lossy UTF-8; what was written until the command and its pipes finished, or a
    /// second after the command exited when something it left behind holds them open).
    pub stdout: String,
    pub stderr: String,
    /// Why the command could not be run at all.
    pub error: Option<String>,
}

impl Response {
    /// Whether the command ran and exited with status 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.error.is_none() && self.status == Some(0)
    }
}
