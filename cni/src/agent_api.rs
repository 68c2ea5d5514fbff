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
//! → {"apiVersion":1,"kind":"Check","network":"gannet","containerId":"c1","ifName":"eth0",
//!    "hostIfName":"gnt3f…","hostIfIndex":7}
//! ← {"apiVersion":1,"ok":true}
//! ```
//!
//! `Status` answered with `ok: true` means the agent is ready for endpoints; with `ok: false` (or
//! no answer) the plugin's `STATUS` reports code 50 and `ADD` fails with code 11 before creating
//! anything. `Register` is sent after the pod's network is complete; `ok: false` fails the `ADD`
//! (which is then rolled back). `Unregister` is sent on `DEL` and for attachments removed by `GC`;
//! it is best effort (the agent must also reconcile against the host's links on its own).
//! `Check` is sent by `CHECK`: `ok: false` means the agent does not know the attachment (or
//! knows it on another host interface), and `CHECK` fails.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::IpAddr;
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
    /// Does the agent still know this attachment, on this host interface? Sent by `CHECK`;
    /// `ok: false` names what differs.
    Check {
        /// CNI network name.
        network: String,
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        if_name: String,
        /// The host side of the veth pair, as the plugin finds it now.
        host_if_name: String,
        /// Its interface index.
        host_if_index: u32,
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

/// Reads one request line as a server receives it (without its `\n`): JSON of a [`Request`]
/// of [`API_VERSION`], at most [`MAX_LINE`] bytes. The error is the reason to answer with.
///
/// # Errors
/// If the line is too long, not a request, or of another version.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_LINE {
        return Err(format!(
            "request of {} bytes is longer than {MAX_LINE}",
            line.len()
        ));
    }
    let request: Request =
        serde_json::from_slice(line).map_err(|e| format!("invalid request: {e}"))?;
    request.check_version()?;
    Ok(request)
}

impl Request {
    /// Whether the server speaks this request's version.
    ///
    /// # Errors
    /// For a version other than [`API_VERSION`], saying which.
    pub fn check_version(&self) -> Result<(), String> {
        if self.api_version == API_VERSION {
            Ok(())
        } else {
            Err(format!(
                "apiVersion {} is not supported (gannetd speaks {API_VERSION})",
                self.api_version
            ))
        }
    }
}

/// What a registration claims, read from an [`Endpoint`] that passed [`Endpoint::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The pod interface's MAC address.
    pub mac: [u8; 6],
    /// The pod's addresses (unicast, at least one).
    pub ips: Vec<IpAddr>,
    /// `namespace/name`, or `name` when no namespace was given; `None` without a pod name.
    pub pod: Option<String>,
}

impl Endpoint {
    /// The key of this attachment in a server's registry: `network/containerId/ifName`
    /// (unambiguous once [`Endpoint::check`] passed: none of the three holds a `/`).
    #[must_use]
    pub fn key(&self) -> String {
        attachment_key(&self.network, &self.container_id, &self.if_name)
    }

    /// What every registration must satisfy, whatever the server's state: the names a runtime
    /// may give (network and container as in the network configuration and `CNI_CONTAINERID`,
    /// an interface name the kernel takes, Kubernetes names for the pod), a unicast MAC, and at
    /// least one address that a pod can have (not unspecified, loopback, multicast or
    /// broadcast). Whether the addresses are free and in the node's pod CIDRs is the server's
    /// to check. The error names the field.
    ///
    /// # Errors
    /// The first problem found.
    pub fn check(&self) -> Result<Claim, String> {
        use crate::config::{check_ifname, parse_mac, valid_identifier};
        let identifier = |field: &str, value: &str| {
            if valid_identifier(value) {
                Ok(())
            } else {
                Err(format!(
                    "{field} {value:?}: must start with a letter or digit and hold only letters, digits, `_`, `.` and `-`"
                ))
            }
        };
        identifier("network", &self.network)?;
        identifier("containerId", &self.container_id)?;
        if self.if_name.is_empty() {
            return Err("ifName: must be set".to_owned());
        }
        check_ifname(&self.if_name).map_err(|e| format!("ifName {:?}: {e}", self.if_name))?;
        let mac = parse_mac(&self.mac).map_err(|e| format!("mac {:?}: {e}", self.mac))?;
        if let Some(ns) = &self.pod_namespace {
            dns1123_label(ns).map_err(|e| format!("podNamespace {ns:?}: {e}"))?;
        }
        if let Some(name) = &self.pod_name {
            dns1123_subdomain(name).map_err(|e| format!("podName {name:?}: {e}"))?;
        }
        if self.ips.is_empty() {
            return Err("ips: no addresses".to_owned());
        }
        let ips: Vec<IpAddr> = self.ips.iter().map(Cidr::addr).collect();
        for ip in &ips {
            let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
            if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || broadcast {
                return Err(format!("ips: {ip} is not a pod address"));
            }
        }
        let pod = match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
            (None, Some(name)) => Some(name.clone()),
            _ => None,
        };
        Ok(Claim { mac, ips, pod })
    }
}

/// `network/containerId/ifName`, the key of an attachment in a server's registry.
#[must_use]
pub fn attachment_key(network: &str, container_id: &str, if_name: &str) -> String {
    format!("{network}/{container_id}/{if_name}")
}

/// A DNS-1123 label (a Kubernetes namespace): at most 63 lower-case letters, digits and `-`,
/// starting and ending with a letter or digit.
fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".to_owned());
    }
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = s.as_bytes();
    if !bytes.iter().all(|&c| ok(c) || c == b'-') || !ok(bytes[0]) || !ok(bytes[bytes.len() - 1]) {
        return Err(
            "must be lower-case letters, digits and '-', starting and ending with a letter or digit"
                .to_owned(),
        );
    }
    Ok(())
}

/// A DNS-1123 subdomain (a Kubernetes pod name): at most 253 characters, DNS-1123 labels joined
/// by `.`.
fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters".to_owned());
    }
    s.split('.').try_for_each(dns1123_label)
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

    fn endpoint() -> Endpoint {
        Endpoint {
            network: "gannet".into(),
            container_id: "c1".into(),
            if_name: "eth0".into(),
            netns: "/run/netns/x".into(),
            ips: vec!["10.244.0.2/32".parse().expect("cidr")],
            mac: "02:00:00:00:00:01".into(),
            host_if_name: "gnt".into(),
            host_if_index: 7,
            host_mac: "02:00:00:00:00:02".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("web-1".into()),
        }
    }

    #[test]
    fn request_lines_are_parsed_with_their_version_and_length() {
        let request = parse_request(br#"{"apiVersion":1,"kind":"Status"}"#).expect("status");
        assert_eq!(request.body, RequestBody::Status);
        let err = parse_request(br#"{"apiVersion":2,"kind":"Status"}"#).expect_err("version");
        assert!(err.contains("apiVersion 2 is not supported"), "{err}");
        let err = parse_request(br#"{"apiVersion":1,"kind":"Nope"}"#).expect_err("kind");
        assert!(err.starts_with("invalid request:"), "{err}");
        let mut long = br#"{"apiVersion":1,"kind":"Status"}"#.to_vec();
        long.resize(MAX_LINE + 1, b' ');
        let err = parse_request(&long).expect_err("too long");
        assert!(err.contains("longer than"), "{err}");
    }

    #[test]
    fn registrations_are_checked_naming_the_field() {
        let claim = endpoint().check().expect("valid");
        assert_eq!(claim.mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(claim.pod.as_deref(), Some("default/web-1"));
        type Change = fn(&mut Endpoint);
        let cases: [(Change, &str); 8] = [
            (
                |e| e.pod_namespace = Some("Default".into()),
                "podNamespace \"Default\"",
            ),
            (|e| e.pod_name = Some("web_1".into()), "podName \"web_1\""),
            (
                |e| e.mac = "01:00:5e:00:00:01".into(),
                "mac \"01:00:5e:00:00:01\"",
            ),
            (|e| e.mac = "+2:0:0:0:0:1".into(), "mac"),
            (|e| e.ips.clear(), "ips: no addresses"),
            (
                |e| e.ips = vec!["255.255.255.255/32".parse().expect("cidr")],
                "not a pod address",
            ),
            (|e| e.if_name = "eth0/x".into(), "ifName"),
            (|e| e.network = String::new(), "network"),
        ];
        for (change, why) in cases {
            let mut bad = endpoint();
            change(&mut bad);
            let err = bad.check().expect_err(why);
            assert!(err.contains(why), "expected {why:?} in: {err}");
        }
    }

    /// Two attachments must never share a registry key: `network/containerId/ifName` was
    /// ambiguous while the parts could hold a `/` (network `a/b` with container `c` and network
    /// `a` with container `b/c`), so one pod's registration replaced another's.
    #[test]
    fn registry_keys_are_unambiguous() {
        let mut one = endpoint();
        one.network = "a/b".into();
        one.container_id = "c".into();
        let mut other = endpoint();
        other.network = "a".into();
        other.container_id = "b/c".into();
        assert_eq!(one.key(), other.key());
        assert!(
            one.check()
                .expect_err("network")
                .contains("network \"a/b\"")
        );
        assert!(
            other
                .check()
                .expect_err("container")
                .contains("containerId \"b/c\"")
        );
    }
}
