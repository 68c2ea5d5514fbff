//! The wire protocol between `gannet-cni` and the node agent (`gannetd`).
//!
//! Newline-delimited JSON over a unix stream socket (the `agentSocket` path of the network
//! configuration). The plugin connects, writes one [`Request`] as one line, reads one [`Response`]
//! line and closes the connection; a server may also accept several requests on one connection,
//! answering each in order. Every message carries `"apiVersion": 1`; a server answers a request
//! of another version with `ok: false`.
//!
//! ```text
//! → {"apiVersion":1,"kind":"Status"}
//! ← {"apiVersion":1,"ok":true}
//! → {"apiVersion":1,"kind":"Register","endpoint":{"network":"gannet","containerId":"c1",
//!    "ifName":"eth0","netns":"/run/netns/p1","ips":["10.244.1.5/32"],"mac":"02:…",
//!    "hostIfName":"gnt3f…","hostIfIndex":7,"hostMac":"ee:…","podNamespace":"default",
//!    "podName":"web-0"}}
//! ← {"apiVersion":1,"ok":true}
//! → {"apiVersion":1,"kind":"Unregister","network":"gannet","containerId":"c1","ifName":"eth0"}
//! ← {"apiVersion":1,"ok":false,"error":"…"}
//! ```
//!
//! `Status` answered with `ok: true` means the agent is ready for endpoints; with `ok: false` (or
//! no answer) the plugin's `STATUS` reports code 50 and `ADD` fails with code 11 before creating
//! anything. `Register` is sent after the pod's network is complete; `ok: false` fails the `ADD`
//! (which is then rolled back). `Unregister` is sent on `DEL` and for attachments removed by `GC`;
//! it is best effort (the agent must also reconcile against the host's links on its own).

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::Cidr;

/// Where gannetd listens for registrations by default (`cni.sock` in its default `--state-dir`,
/// `/run/gannet`); the conflist `gannet-cni install` writes points here.
pub const DEFAULT_SOCKET: &str = "/run/gannet/cni.sock";

/// The protocol version this module speaks.
pub const API_VERSION: u32 = 1;

/// How long the plugin waits for the agent, per operation (connect, write, read).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest line either side accepts.
pub const MAX_LINE: usize = 64 * 1024;

/// A request from the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Always [`API_VERSION`] when sent by this plugin.
    pub api_version: u32,
    /// What is asked.
    #[serde(flatten)]
    pub body: RequestBody,
}

/// The request kinds (the `kind` field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum RequestBody {
    /// Is the agent ready to take endpoints?
    Status,
    /// A pod's interface was set up.
    Register {
        /// The endpoint.
        endpoint: Endpoint,
    },
    /// A pod's interface was (or is being) removed.
    Unregister {
        /// CNI network name.
        network: String,
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        if_name: String,
    },
}

/// A pod interface as the plugin set it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// CNI network name.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface inside the pod.
    pub if_name: String,
    /// `CNI_NETNS`: the pod's network namespace path.
    pub netns: PathBuf,
    /// The pod's addresses (`/32`, `/128`).
    pub ips: Vec<Cidr>,
    /// The pod interface's MAC address.
    pub mac: String,
    /// The host side of the veth pair, in the node's namespace.
    pub host_if_name: String,
    /// Its interface index.
    pub host_if_index: u32,
    /// Its MAC address (the pods' gateway MAC).
    pub host_mac: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// Always [`API_VERSION`] when sent by a server of this version.
    pub api_version: u32,
    /// Whether the request succeeded (for `Status`: whether the agent is ready).
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Request {
    /// A request of the current version.
    #[must_use]
    pub fn new(body: RequestBody) -> Request {
        Request {
            api_version: API_VERSION,
            body,
        }
    }
}

impl Response {
    /// A success.
    #[must_use]
    pub fn ok() -> Response {
        Response {
            api_version: API_VERSION,
            ok: true,
            error: None,
        }
    }

    /// A failure with a reason.
    #[must_use]
    pub fn error(reason: impl Into<String>) -> Response {
        Response {
            api_version: API_VERSION,
            ok: false,
            error: Some(reason.into()),
        }
    }
}

/// Talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket does not answer (no agent, or it is hung).
    #[error("agent socket {}: {what}: {source}", path.display())]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The answer is not a valid response.
    #[error("agent socket {}: invalid response {line:?}: {reason}", path.display())]
    BadResponse {
        /// The socket path.
        path: PathBuf,
        /// What came back.
        line: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The agent refused.
    #[error("agent refused: {0}")]
    Refused(String),
}

/// Sends `request` to the agent at `socket` and returns its response (`ok: false` is
/// [`AgentError::Refused`]).
///
/// # Errors
/// See [`AgentError`].
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, AgentError> {
    let unreachable = |what| {
        let path = socket.to_path_buf();
        move |source| AgentError::Unreachable { path, what, source }
    };
    let stream = UnixStream::connect(socket).map_err(unreachable("connecting"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(unreachable("setting timeouts"))?;
    let mut line = serde_json::to_vec(request).map_err(|e| AgentError::BadResponse {
        path: socket.to_path_buf(),
        line: String::new(),
        reason: format!("encoding the request: {e}"),
    })?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(unreachable("sending the request"))?;
    let mut reader = BufReader::new(&stream).take(MAX_LINE as u64);
    let mut reply = String::new();
    let read = reader
        .read_line(&mut reply)
        .map_err(unreachable("reading the response"))?;
    if read == 0 {
        return Err(AgentError::Unreachable {
            path: socket.to_path_buf(),
            what: "reading the response",
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
        });
    }
    let response: Response =
        serde_json::from_str(reply.trim_end()).map_err(|e| AgentError::BadResponse {
            path: socket.to_path_buf(),
            line: reply.trim_end().to_owned(),
            reason: e.to_string(),
        })?;
    if response.api_version != API_VERSION {
        return Err(AgentError::BadResponse {
            path: socket.to_path_buf(),
            line: reply.trim_end().to_owned(),
            reason: format!(
                "apiVersion {} (expected {API_VERSION})",
                response.api_version
            ),
        });
    }
    if !response.ok {
        return Err(AgentError::Refused(
            response
                .error
                .unwrap_or_else(|| "no reason given".to_owned()),
        ));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let status = serde_json::to_value(Request::new(RequestBody::Status)).expect("json");
        assert_eq!(
            status,
            serde_json::json!({"apiVersion": 1, "kind": "Status"})
        );
        let unregister = serde_json::to_value(Request::new(RequestBody::Unregister {
            network: "n".into(),
            container_id: "c".into(),
            if_name: "eth0".into(),
        }))
        .expect("json");
        assert_eq!(
            unregister,
            serde_json::json!({"apiVersion": 1, "kind": "Unregister", "network": "n", "containerId": "c", "ifName": "eth0"})
        );
        let register = Request::new(RequestBody::Register {
            endpoint: Endpoint {
                network: "n".into(),
                container_id: "c".into(),
                if_name: "eth0".into(),
                netns: "/run/netns/x".into(),
                ips: vec!["10.0.0.2/32".parse().expect("cidr")],
                mac: "02:00:00:00:00:01".into(),
                host_if_name: "gnt".into(),
                host_if_index: 7,
                host_mac: "02:00:00:00:00:02".into(),
                pod_namespace: Some("default".into()),
                pod_name: None,
            },
        });
        let json = serde_json::to_value(&register).expect("json");
        assert_eq!(json["kind"], "Register");
        assert_eq!(json["endpoint"]["hostIfIndex"], 7);
        assert_eq!(json["endpoint"]["ips"][0], "10.0.0.2/32");
        assert_eq!(json["endpoint"]["podNamespace"], "default");
        assert!(json["endpoint"].get("podName").is_none());
        let back: Request = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, register);
        assert_eq!(
            serde_json::to_value(Response::error("x")).expect("json"),
            serde_json::json!({"apiVersion": 1, "ok": false, "error": "x"})
        );
    }
}
