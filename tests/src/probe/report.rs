//! What the probe prints: the client and server reports, how a failure is named, and reading a
//! report back from a probe's output.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::sys::micros;

/// What a client mode (`tcp`, `udp`, `loop`, `hold`) prints at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Requests that got a reply.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Failures by errno name.
    pub errors: BTreeMap<String, u64>,
    /// Replies by backend name.
    pub backends: BTreeMap<String, u64>,
    /// Successful requests by peer address: what `getpeername()` returned for TCP, the reply's source
    /// address as `recvfrom()` reported it for UDP.
    pub peers: BTreeMap<String, u64>,
    /// How long the first failed request took, in microseconds (`null` if none failed).
    pub first_error_after_us: Option<u64>,
    /// `loop` mode: from the start of the run to the end of the first request that got a reply,
    /// in microseconds (`null` if none did).
    #[serde(default)]
    pub first_ok_after_us: Option<u64>,
    /// Wall-clock time of the whole run, in microseconds.
    pub elapsed_us: u64,
}

impl Report {
    /// Counts a reply from `backend` whose peer address was `peer`.
    pub fn record_ok(&mut self, backend: &str, peer: SocketAddr) {
        self.ok += 1;
        *self.backends.entry(backend.to_owned()).or_default() += 1;
        *self.peers.entry(peer.to_string()).or_default() += 1;
    }

    /// Counts a failed request that took `took`.
    pub fn record_failure(&mut self, failure: &Failure, took: Duration) {
        self.failed += 1;
        *self.errors.entry(failure.name().to_owned()).or_default() += 1;
        self.first_error_after_us.get_or_insert(micros(took));
    }

    pub(super) fn record(&mut self, result: Result<(String, SocketAddr), Failure>, took: Duration) {
        match result {
            Ok((backend, peer)) => self.record_ok(&backend, peer),
            Err(failure) => self.record_failure(&failure, took),
        }
    }

    /// How many requests failed with `errno` (0 if none).
    #[must_use]
    pub fn error_count(&self, errno: &str) -> u64 {
        self.errors.get(errno).copied().unwrap_or(0)
    }

    /// How many replies came from `backend` (0 if none).
    #[must_use]
    pub fn backend_count(&self, backend: &str) -> u64 {
        self.backends.get(backend).copied().unwrap_or(0)
    }
}

/// What `serve` prints when it gets `SIGTERM` or `SIGINT`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeReport {
    /// The backend name it replied with.
    pub name: String,
    /// TCP connections accepted.
    pub tcp_connections: u64,
    /// TCP requests (reads) answered.
    pub tcp_requests: u64,
    /// UDP datagrams answered.
    pub udp_requests: u64,
    /// Requests (TCP and UDP) by client IP address, as the server saw it.
    pub clients: BTreeMap<String, u64>,
    /// TCP connections accepted by client IP address, as the server saw it (the peer address
    /// `accept()` returned), counted at accept whether or not the client sent anything: the source
    /// address after any NAT on the way, e.g. the node's address when a node masquerades a pod.
    #[serde(default)]
    pub tcp_clients: BTreeMap<String, u64>,
    /// Bytes read on `--sink` connections (counted as they arrive).
    #[serde(default)]
    pub sink_bytes: u64,
}

/// Parses the JSON object a probe printed as the last non-empty line of its stdout, after checking
/// that it exited successfully.
///
/// # Errors
/// If the probe failed or its stdout holds no such JSON; the error quotes stdout and stderr.
pub fn parse_json_output<T: DeserializeOwned>(output: &Output) -> anyhow::Result<T> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "probe failed ({}); stdout: {stdout:?}; stderr: {stderr:?}",
            output.status
        );
    }
    let last = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).with_context(|| {
        format!("probe printed no JSON report; stdout: {stdout:?}; stderr: {stderr:?}")
    })
}

/// Why one request failed: an errno name, `ETIMEDOUT` for a reply that did not come in time, or
/// `EOF` for a connection closed before the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub(super) Cow<'static, str>);

impl Failure {
    /// A TCP connection closed before a reply line arrived.
    pub const EOF: Failure = Failure(Cow::Borrowed("EOF"));

    /// The failure for OS error `code`.
    #[must_use]
    pub fn from_errno(code: i32) -> Failure {
        Failure(errno_name(code))
    }

    /// The errno name, for example `ECONNREFUSED`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<io::Error> for Failure {
    fn from(err: io::Error) -> Failure {
        match err.raw_os_error() {
            // Our sockets are blocking with SO_RCVTIMEO/SO_SNDTIMEO: EAGAIN means the timeout expired.
            Some(libc::EAGAIN) => Failure(Cow::Borrowed("ETIMEDOUT")),
            Some(code) => Failure::from_errno(code),
            None => match err.kind() {
                ErrorKind::TimedOut | ErrorKind::WouldBlock => Failure(Cow::Borrowed("ETIMEDOUT")),
                ErrorKind::UnexpectedEof => Failure::EOF,
                kind => Failure(Cow::Owned(format!("{kind:?}"))),
            },
        }
    }
}

/// The symbolic name of errno `code` (`E<number>` for ones not listed).
#[must_use]
pub fn errno_name(code: i32) -> Cow<'static, str> {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EPIPE => "EPIPE",
        libc::ENOSYS => "ENOSYS",
        libc::EPROTO => "EPROTO",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETRESET => "ENETRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        _ => return Cow::Owned(format!("E{code}")),
    };
    Cow::Borrowed(name)
}
