//! The `gannet-probe` traffic tool: its client and server logic and the JSON reports it prints.
//!
//! Every socket operation has a timeout, and failures are counted by errno name (`ECONNREFUSED`,
//! `ETIMEDOUT`, `EPERM`, ...) so tests can tell a rejected connect from a lost packet. Two names are
//! not errnos: `ETIMEDOUT` also stands for a reply that did not arrive within the timeout, and `EOF`
//! for a TCP connection closed before a reply line.
//!
//! Two modes report differently: `icmp` (echo requests through a raw socket, failures named
//! `timeout`, `frag-needed`, `dest-unreachable`, `time-exceeded` or an errno such as `EMSGSIZE`) and
//! `stream` (one TCP connection carrying a bulk transfer to a `serve --sink` server).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, BufRead, ErrorKind, Read as _, Write};
use std::mem;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::Output;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Default timeout of every socket operation, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// What clients send as one request.
pub const REQUEST: &[u8] = b"x\n";
/// The line `serve` prints once every address is bound.
pub const READY_LINE: &str = "ready";
/// How much the TCP server reads per request.
const SERVER_READ: usize = 64;
/// Longest reply a client accepts.
const MAX_REPLY: usize = 4096;
/// How much `stream` writes, and a sink server reads, per call.
const STREAM_CHUNK: usize = 64 * 1024;
/// ICMP payload bytes per echo request when no size is given (ping's default).
pub const DEFAULT_ICMP_SIZE: usize = 56;
/// `icmp` failure: no reply (nor ICMP error about the request) within the timeout.
pub const ICMP_TIMEOUT: &str = "timeout";
/// `icmp` failure: an ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) came back.
pub const ICMP_FRAG_NEEDED: &str = "frag-needed";
/// `icmp` failure: an ICMP "destination unreachable" other than "fragmentation needed" came back.
pub const ICMP_DEST_UNREACHABLE: &str = "dest-unreachable";
/// `icmp` failure: an ICMP "time exceeded" came back.
pub const ICMP_TIME_EXCEEDED: &str = "time-exceeded";

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

    fn record(&mut self, result: Result<(String, SocketAddr), Failure>, took: Duration) {
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
pub struct Failure(Cow<'static, str>);

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

/// Transport of the `loop` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Proto {
    /// A new TCP connection per request.
    #[default]
    Tcp,
    /// A new UDP socket per request.
    Udp,
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Proto, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(format!("unknown protocol {other:?} (expected tcp or udp)")),
        }
    }
}

/// Where and how a client mode sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Destination (a service VIP or a backend).
    pub to: SocketAddr,
    /// Source address to bind before connecting or sending (port 0 for any).
    pub bind: Option<SocketAddr>,
    /// Timeout of every socket operation.
    pub timeout: Duration,
}

/// Socket handling of the `udp` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpOptions {
    /// A fresh socket per request instead of one for all.
    pub per_request_socket: bool,
    /// `connect()` the socket and use `send()`/`recv()` instead of `sendto()` to the destination.
    pub connected: bool,
}

/// `tcp` mode: `count` connections, each: connect, send a request, read the reply line,
/// getpeername, close.
#[must_use]
pub fn tcp_count(opts: &ClientOptions, count: u64) -> Report {
    let start = Instant::now();
    let mut report = Report::default();
    for _ in 0..count {
        let began = Instant::now();
        report.record(tcp_request(opts), began.elapsed());
    }
    report.elapsed_us = micros(start.elapsed());
    report
}

/// `udp` mode: `count` requests, by default through one unconnected socket (sendto/recvfrom).
#[must_use]
pub fn udp_count(opts: &ClientOptions, count: u64, udp: UdpOptions) -> Report {
    let start = Instant::now();
    let mut report = Report::default();
    let mut shared = None;
    for _ in 0..count {
        let began = Instant::now();
        let result = if udp.per_request_socket {
            udp_socket(opts, udp.connected)
                .and_then(|socket| udp_exchange(&socket, opts, udp.connected))
        } else {
            shared_udp_exchange(&mut shared, opts, udp.connected)
        };
        report.record(result, began.elapsed());
    }
    report.elapsed_us = micros(start.elapsed());
    report
}

/// `loop` mode: a new TCP connection (or UDP socket) and one request, again and again for
/// `duration`, pausing `interval` between requests.
#[must_use]
pub fn run_loop(
    opts: &ClientOptions,
    proto: Proto,
    duration: Duration,
    interval: Duration,
) -> Report {
    let start = Instant::now();
    let mut report = Report::default();
    while start.elapsed() < duration {
        let began = Instant::now();
        let result = match proto {
            Proto::Tcp => tcp_request(opts),
            Proto::Udp => {
                udp_socket(opts, false).and_then(|socket| udp_exchange(&socket, opts, false))
            }
        };
        report.record(result, began.elapsed());
        if !interval.is_zero() {
            thread::sleep(interval.min(duration.saturating_sub(start.elapsed())));
        }
    }
    report.elapsed_us = micros(start.elapsed());
    report
}

/// `hold` mode: one TCP connection, driven by `input` lines. Prints `connected <peer>` once
/// connected; for each `ping` line sends a request on the connection and prints the backend's name
/// or `error: ERRNO`. Returns at end of input.
///
/// # Errors
/// If the connection cannot be made (after printing `error: ERRNO`), or reading `input` or writing
/// `output` fails.
pub fn hold(
    opts: &ClientOptions,
    input: impl BufRead,
    mut output: impl Write,
) -> anyhow::Result<Report> {
    let start = Instant::now();
    let connected = tcp_connect(opts).and_then(|stream| Ok((stream.peer_addr()?, stream)));
    let (peer, mut stream) = match connected {
        Ok(connected) => connected,
        Err(failure) => {
            writeln!(output, "error: {failure}")?;
            output.flush()?;
            bail!("connecting to {}: {failure}", opts.to);
        }
    };
    writeln!(output, "connected {peer}")?;
    output.flush()?;
    let mut report = Report::default();
    for line in input.lines() {
        match line?.trim() {
            "ping" => {
                let began = Instant::now();
                match tcp_exchange(&mut stream) {
                    Ok(backend) => {
                        writeln!(output, "{backend}")?;
                        report.record_ok(&backend, peer);
                    }
                    Err(failure) => {
                        writeln!(output, "error: {failure}")?;
                        report.record_failure(&failure, began.elapsed());
                    }
                }
            }
            "" => continue,
            other => writeln!(output, "error: unknown command {other:?} (expected ping)")?,
        }
        output.flush()?;
    }
    report.elapsed_us = micros(start.elapsed());
    Ok(report)
}

/// `hold --udp` mode: one connected UDP socket (or, with `connected` false, an unconnected
/// one), driven by `input` lines. Prints `connected <peer>` once connected (`unconnected`);
/// for each `ping` line sends a request and prints the backend's name or `error: ERRNO`, where
/// ERRNO is the socket's pending error (`SO_ERROR`, what the kernel aborted the socket with) if
/// it has one, else the failed call's; `ping-from` does the same and prints the reply's source
/// address after the name; `ping-to ADDR` sends to ADDR instead (`sendto`, also on a connected
/// socket) and prints the name and the source; `send-to ADDR` only sends (prints `sent`) and
/// `recv` only receives (prints the name and the source); `peer` prints `getpeername()`; for each
/// `reconnect` line connects the socket again and prints `connected <peer>` or `error: ERRNO`.
/// Returns at end of input.
///
/// # Errors
/// If the first connect fails (after printing `error: ERRNO`), or reading `input` or writing
/// `output` fails.
pub fn hold_udp(
    opts: &ClientOptions,
    connected: bool,
    input: impl BufRead,
    mut output: impl Write,
) -> anyhow::Result<Report> {
    let start = Instant::now();
    let socket = match udp_socket(opts, connected) {
        Ok(socket) => socket,
        Err(failure) => {
            writeln!(output, "error: {failure}")?;
            output.flush()?;
            bail!("connecting to {}: {failure}", opts.to);
        }
    };
    let pending_or = |socket: &UdpSocket, failure: Failure| match socket.take_error() {
        Ok(Some(pending)) => Failure::from(pending),
        _ => failure,
    };
    if connected {
        writeln!(output, "connected {}", socket.peer_addr()?)?;
    } else {
        writeln!(output, "unconnected")?;
    }
    output.flush()?;
    let mut report = Report::default();
    for line in input.lines() {
        let line = line?;
        let (command, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match command {
            "ping" | "ping-from" | "ping-to" => {
                let began = Instant::now();
                let result = if command == "ping-to" {
                    arg.parse::<SocketAddr>()
                        .map_err(|e| Failure::from(io::Error::new(io::ErrorKind::InvalidInput, e)))
                        .and_then(|to| {
                            let to_opts = ClientOptions { to, ..*opts };
                            udp_exchange(&socket, &to_opts, false)
                        })
                } else {
                    udp_exchange(&socket, opts, connected)
                };
                match result {
                    Ok((backend, peer)) => {
                        if command == "ping" {
                            writeln!(output, "{backend}")?;
                        } else {
                            writeln!(output, "{backend} {peer}")?;
                        }
                        report.record_ok(&backend, peer);
                    }
                    Err(failure) => {
                        let failure = pending_or(&socket, failure);
                        writeln!(output, "error: {failure}")?;
                        report.record_failure(&failure, began.elapsed());
                    }
                }
            }
            "send-to" => {
                let sent = arg
                    .parse::<SocketAddr>()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
                    .and_then(|to| socket.send_to(REQUEST, to));
                match sent {
                    Ok(_) => writeln!(output, "sent")?,
                    Err(e) => writeln!(output, "error: {}", Failure::from(e))?,
                }
            }
            "recv" => {
                let mut buf = [0_u8; 2048];
                match socket.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        let backend = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                        writeln!(output, "{backend} {peer}")?;
                    }
                    Err(e) => writeln!(output, "error: {}", Failure::from(e))?,
                }
            }
            "peer" => match socket.peer_addr() {
                Ok(peer) => writeln!(output, "{peer}")?,
                Err(e) => writeln!(output, "error: {}", Failure::from(e))?,
            },
            "reconnect" => match socket.connect(opts.to).and_then(|()| socket.peer_addr()) {
                Ok(peer) => writeln!(output, "connected {peer}")?,
                Err(e) => writeln!(output, "error: {}", Failure::from(e))?,
            },
            "" => continue,
            other => writeln!(
                output,
                "error: unknown command {other:?} (expected ping, ping-from, ping-to, \
                 send-to, recv, peer or reconnect)"
            )?,
        }
        output.flush()?;
    }
    report.elapsed_us = micros(start.elapsed());
    Ok(report)
}

/// One TCP request on a new connection: the backend's name and `getpeername()`.
///
/// # Errors
/// The failure of the first step that failed.
pub fn tcp_request(opts: &ClientOptions) -> Result<(String, SocketAddr), Failure> {
    let mut stream = tcp_connect(opts)?;
    let backend = tcp_exchange(&mut stream)?;
    let peer = stream.peer_addr()?;
    Ok((backend, peer))
}

fn tcp_connect(opts: &ClientOptions) -> Result<TcpStream, Failure> {
    let fd = new_socket(&opts.to, libc::SOCK_STREAM)?;
    if let Some(bind) = opts.bind {
        bind_socket(&fd, &bind)?;
    }
    connect_socket(&fd, &opts.to, opts.timeout)?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(opts.timeout))?;
    stream.set_write_timeout(Some(opts.timeout))?;
    Ok(stream)
}

/// Sends a request and reads the reply line.
fn tcp_exchange(stream: &mut TcpStream) -> Result<String, Failure> {
    stream.write_all(REQUEST)?;
    read_reply_line(stream)
}

/// Reads up to the first newline (at most 4 KiB) and returns the line, trimmed.
fn read_reply_line(stream: &mut TcpStream) -> Result<String, Failure> {
    let mut reply = Vec::new();
    let mut chunk = [0_u8; 256];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(Failure::EOF),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        };
        reply.extend_from_slice(&chunk[..n]);
        if let Some(end) = reply.iter().position(|&b| b == b'\n') {
            return Ok(String::from_utf8_lossy(&reply[..end]).trim().to_owned());
        }
        if reply.len() > MAX_REPLY {
            return Err(Failure::from_errno(libc::EMSGSIZE));
        }
    }
}

/// What the `stream` mode prints at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReport {
    /// 1 if the server counted exactly the bytes sent, else 0.
    pub ok: u64,
    /// Bytes the kernel accepted from `write()` (not necessarily delivered).
    pub bytes_sent: u64,
    /// The byte count the server replied with after EOF (`null` if no reply came).
    pub bytes_acked_by_server: Option<u64>,
    /// `getsockopt(TCP_MAXSEG)` on the connected socket, before any data (`null` if not connected).
    pub mss: Option<u32>,
    /// Wall-clock time from connect to the server's reply or the failure, in microseconds.
    pub elapsed_us: u64,
    /// Why the transfer failed: an errno name (`ETIMEDOUT` when a write or the reply made no
    /// progress for the timeout), `EOF`, `EPROTO` for a reply that is not a number, or `short` when
    /// the server counted fewer bytes than were sent. `null` on success.
    pub error: Option<String>,
}

/// `stream` mode: one TCP connection that writes `bytes` bytes, shuts its sending side down, and
/// reads the byte count a `serve --sink` server replies with.
///
/// Every write and the reply wait at most `opts.timeout` without progress, so a path that
/// black-holes full-sized segments fails with `ETIMEDOUT` instead of hanging.
#[must_use]
pub fn stream(opts: &ClientOptions, bytes: u64) -> StreamReport {
    let start = Instant::now();
    let mut report = StreamReport::default();
    let result = stream_to(opts, bytes, &mut report);
    report.elapsed_us = micros(start.elapsed());
    match result {
        Ok(acked) => {
            report.bytes_acked_by_server = Some(acked);
            if acked == bytes {
                report.ok = 1;
            } else {
                report.error = Some("short".to_owned());
            }
        }
        Err(failure) => report.error = Some(failure.name().to_owned()),
    }
    report
}

fn stream_to(opts: &ClientOptions, bytes: u64, report: &mut StreamReport) -> Result<u64, Failure> {
    let mut stream = tcp_connect(opts)?;
    report.mss = get_int_option(&stream, libc::IPPROTO_TCP, libc::TCP_MAXSEG)
        .ok()
        .and_then(|mss| u32::try_from(mss).ok());
    let chunk = vec![0x5a_u8; STREAM_CHUNK];
    while report.bytes_sent < bytes {
        let left = usize::try_from(bytes - report.bytes_sent).unwrap_or(usize::MAX);
        match stream.write(&chunk[..left.min(STREAM_CHUNK)]) {
            Ok(0) => return Err(Failure::from_errno(libc::EPIPE)),
            Ok(n) => report.bytes_sent += u64::try_from(n).expect("a write fits u64"),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    stream.shutdown(Shutdown::Write)?;
    read_reply_line(&mut stream)?
        .parse()
        .map_err(|_| Failure::from_errno(libc::EPROTO))
}

fn udp_socket(opts: &ClientOptions, connected: bool) -> Result<UdpSocket, Failure> {
    let fd = new_socket(&opts.to, libc::SOCK_DGRAM)?;
    if let Some(bind) = opts.bind {
        bind_socket(&fd, &bind)?;
    }
    if connected {
        connect_socket(&fd, &opts.to, opts.timeout)?;
    }
    let socket = UdpSocket::from(fd);
    socket.set_read_timeout(Some(opts.timeout))?;
    socket.set_write_timeout(Some(opts.timeout))?;
    Ok(socket)
}

/// One request through the long-lived socket in `shared`, made on first use (and again after a
/// failure to make it).
fn shared_udp_exchange(
    shared: &mut Option<UdpSocket>,
    opts: &ClientOptions,
    connected: bool,
) -> Result<(String, SocketAddr), Failure> {
    let socket = match shared {
        Some(socket) => {
            discard_pending(socket);
            socket
        }
        None => shared.insert(udp_socket(opts, connected)?),
    };
    udp_exchange(socket, opts, connected)
}

/// Drops datagrams (late replies to earlier requests) and errors already queued on `socket`.
fn discard_pending(socket: &UdpSocket) {
    let mut buf = [0_u8; 2048];
    if socket.set_nonblocking(true).is_ok() {
        while socket.recv_from(&mut buf).is_ok() {}
        let _ = socket.set_nonblocking(false);
    }
}

fn udp_exchange(
    socket: &UdpSocket,
    opts: &ClientOptions,
    connected: bool,
) -> Result<(String, SocketAddr), Failure> {
    if connected {
        socket.send(REQUEST)?;
    } else {
        socket.send_to(REQUEST, opts.to)?;
    }
    let mut buf = [0_u8; 2048];
    let (n, from) = socket.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).trim().to_owned(), from))
}

/// What the `icmp` mode sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpOptions {
    /// Destination of the echo requests (ICMP over IPv4 or IPv6).
    pub to: IpAddr,
    /// Number of echo requests, sent one after the other, each after the previous one's outcome.
    pub count: u64,
    /// ICMP payload bytes after the 8-byte echo header, as ping's `-s`: the IP packet is this plus
    /// 28 (IPv4) or 48 (IPv6) bytes.
    pub size: usize,
    /// Forbid fragmentation: IPv4 `IP_MTU_DISCOVER=IP_PMTUDISC_DO` (DF set), IPv6 `IPV6_DONTFRAG`.
    /// Without it IPv4 packets leave with DF clear (`IP_PMTUDISC_DONT`, routers may fragment) and
    /// IPv6 packets are fragmented by the sender to the path MTU it knows.
    pub dont_fragment: bool,
    /// How long to wait for each reply.
    pub timeout: Duration,
}

/// What the `icmp` mode prints at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpReport {
    /// Echo requests attempted (`ok + failed`), including those `sendto()` refused.
    pub sent: u64,
    /// Requests answered by an echo reply.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Failures by name: `timeout`, `frag-needed`, `dest-unreachable`, `time-exceeded`, or the errno
    /// `sendto()` returned (`EMSGSIZE` for a packet above the path MTU known to the sender with
    /// fragmentation forbidden, `ENETUNREACH`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Distinct source addresses of the echo replies, sorted.
    pub replies_from: Vec<String>,
    /// Median round-trip time of the replies, in microseconds (`null` without replies).
    pub rtt_us_p50: Option<u64>,
    /// Longest round-trip time of the replies, in microseconds (`null` without replies).
    pub rtt_us_max: Option<u64>,
    /// The next-hop MTU in the last "fragmentation needed" / "packet too big" received.
    pub mtu_reported: Option<u32>,
    /// The sender's path MTU to the destination after the run, as the kernel has it cached
    /// (`IP_MTU` / `IPV6_MTU` of a UDP socket connected to it; `null` if it cannot be read).
    pub path_mtu: Option<u32>,
    /// Size of each echo request's IP packet (header, ICMP header and payload).
    pub ip_packet_bytes: u64,
    /// Wall-clock time of the whole run, in microseconds.
    pub elapsed_us: u64,
}

impl IcmpReport {
    /// How many requests failed with `name` (0 if none).
    #[must_use]
    pub fn error_count(&self, name: &str) -> u64 {
        self.errors.get(name).copied().unwrap_or(0)
    }
}

/// What a received ICMP message says about our echo request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EchoOutcome {
    Reply,
    /// "Fragmentation needed" / "packet too big", with the next-hop MTU it reports.
    FragNeeded(u32),
    Unreachable,
    TimeExceeded,
}

/// `icmp` mode: `opts.count` echo requests through a raw socket, one at a time. Replies and ICMP
/// errors are matched to a request by identifier and sequence number; other ICMP traffic the raw
/// socket sees (other pings, neighbour discovery, our own requests on loopback) is ignored.
///
/// # Errors
/// If the raw socket cannot be opened or configured (it needs `CAP_NET_RAW`).
pub fn icmp_echo(opts: &IcmpOptions) -> anyhow::Result<IcmpReport> {
    let start = Instant::now();
    let v6 = opts.to.is_ipv6();
    let socket =
        icmp_socket(opts).with_context(|| format!("opening a raw ICMP socket for {}", opts.to))?;
    let id = echo_id();
    let header = if v6 { 40 } else { 20 };
    let mut report = IcmpReport {
        ip_packet_bytes: u64::try_from(header + 8 + opts.size).unwrap_or(u64::MAX),
        ..IcmpReport::default()
    };
    let mut rtts = Vec::new();
    let mut replies_from = BTreeSet::new();
    let mut buf = vec![0_u8; 65_536];
    let to = SocketAddr::new(opts.to, 0);
    for n in 0..opts.count {
        let seq = u16::try_from(n & 0xffff).expect("masked to 16 bits");
        let request = echo_request(v6, id, seq, opts.size);
        report.sent += 1;
        let began = Instant::now();
        let outcome = send_to(&socket, &request, &to)
            .and_then(|()| await_echo(&socket, v6, id, seq, began + opts.timeout, &mut buf));
        let failure = match outcome {
            Ok((EchoOutcome::Reply, from)) => {
                report.ok += 1;
                rtts.push(micros(began.elapsed()));
                replies_from.insert(from);
                continue;
            }
            Ok((EchoOutcome::FragNeeded(mtu), _)) => {
                report.mtu_reported = Some(mtu);
                Cow::Borrowed(ICMP_FRAG_NEEDED)
            }
            Ok((EchoOutcome::Unreachable, _)) => Cow::Borrowed(ICMP_DEST_UNREACHABLE),
            Ok((EchoOutcome::TimeExceeded, _)) => Cow::Borrowed(ICMP_TIME_EXCEEDED),
            Err(failure) => failure.0,
        };
        report.failed += 1;
        *report.errors.entry(failure.into_owned()).or_default() += 1;
    }
    rtts.sort_unstable();
    report.rtt_us_p50 = rtts.get(rtts.len().saturating_sub(1) / 2).copied();
    report.rtt_us_max = rtts.last().copied();
    report.replies_from = replies_from.iter().map(ToString::to_string).collect();
    report.path_mtu = kernel_path_mtu(opts.to);
    report.elapsed_us = micros(start.elapsed());
    Ok(report)
}

/// What the `spoof` mode prints at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoofReport {
    /// Datagrams the kernel accepted for sending.
    pub sent: u64,
    /// Sends that failed, by errno name.
    pub errors: BTreeMap<String, u64>,
}

/// `spoof` mode: `count` UDP datagrams (the request line) from `from:40000` to `to`, IPv4, with
/// headers of our own through a raw socket (`IPPROTO_RAW`, needs `CAP_NET_RAW`): the source
/// address is whatever `from` says, as an attacker in a pod would send it.
///
/// # Errors
/// If the raw socket cannot be opened.
pub fn spoof_udp(
    from: Ipv4Addr,
    to: std::net::SocketAddrV4,
    count: u64,
) -> anyhow::Result<SpoofReport> {
    const SRC_PORT: u16 = 40_000;
    // SAFETY: socket(2) has no memory-safety preconditions.
    let raw = check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    })
    .context("opening a raw IPv4 socket")?;
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let udp_len = u16::try_from(8 + REQUEST.len()).expect("a short request");
    let total = 20 + udp_len;
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&from.octets());
    packet.extend_from_slice(&to.ip().octets());
    // The kernel fills in the header checksum (and the id, left 0); a UDP checksum of 0 means
    // none, which IPv4 allows.
    packet.extend_from_slice(&SRC_PORT.to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(REQUEST);
    let mut report = SpoofReport::default();
    for _ in 0..count {
        match send_to(&fd, &packet, &SocketAddr::V4(to)) {
            Ok(()) => report.sent += 1,
            Err(failure) => *report.errors.entry(failure.name().to_owned()).or_default() += 1,
        }
    }
    Ok(report)
}

fn icmp_socket(opts: &IcmpOptions) -> io::Result<OwnedFd> {
    let (family, proto) = if opts.to.is_ipv6() {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: socket(2) has no memory-safety preconditions.
    let raw = check(unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    match (opts.to.is_ipv6(), opts.dont_fragment) {
        (false, true) => set_int_option(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )?,
        (false, false) => set_int_option(
            &fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )?,
        (true, true) => set_int_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?,
        (true, false) => {}
    }
    Ok(fd)
}

/// An identifier for this run's echo requests, different across processes and runs.
fn echo_id() -> u16 {
    let mixed = u64::from(std::process::id()) ^ crate::next_id().wrapping_mul(0x9e37_79b9);
    let [a, b, ..] = mixed.to_le_bytes();
    u16::from_le_bytes([a, b])
}

/// An echo request (ICMP type 8, or 128 over IPv6) with `size` payload bytes. The IPv4 checksum is
/// computed here; over IPv6 the kernel fills it in (it covers the pseudo-header).
fn echo_request(v6: bool, id: u16, seq: u16, size: usize) -> Vec<u8> {
    let mut packet = Vec::with_capacity(8 + size);
    packet.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0]);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend((0..=u8::MAX).cycle().take(size));
    if !v6 {
        let sum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The one's-complement sum of RFC 1071.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|pair| {
            u64::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

/// Waits until `deadline` for a reply or an ICMP error about request `id`/`seq`. A socket error
/// the kernel reports meanwhile (an ICMP error it attributed to the socket) is the failure if
/// nothing matching arrives; otherwise the failure is `timeout`.
fn await_echo(
    socket: &OwnedFd,
    v6: bool,
    id: u16,
    seq: u16,
    deadline: Instant,
    buf: &mut [u8],
) -> Result<(EchoOutcome, IpAddr), Failure> {
    let mut pending = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(pending.unwrap_or(Failure(Cow::Borrowed(ICMP_TIMEOUT))));
        }
        match poll_readable(socket, left) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        }
        match recv_from(socket, buf) {
            Ok((n, from)) => {
                let message = &buf[..n];
                let outcome = if v6 {
                    parse_icmpv6(message, id, seq)
                } else {
                    parse_icmpv4(message, id, seq)
                };
                if let Some(outcome) = outcome {
                    return Ok((outcome, from));
                }
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(err) => pending = Some(Failure::from(err)),
        }
    }
}

/// Reads an IPv4 ICMP message as a raw socket receives it (with its IP header).
fn parse_icmpv4(packet: &[u8], id: u16, seq: u16) -> Option<EchoOutcome> {
    let icmp = packet.get(ipv4_header_len(packet)?..)?;
    let (kind, code) = (*icmp.first()?, *icmp.get(1)?);
    match kind {
        // Echo reply.
        0 => (echo_ids(icmp)? == (id, seq)).then_some(EchoOutcome::Reply),
        // Destination unreachable, time exceeded: they quote our request's IP header and 8 bytes.
        3 | 11 => {
            let inner = icmp.get(8..)?;
            let inner_icmp = inner.get(ipv4_header_len(inner)?..)?;
            let ours = *inner.get(9)? == 1
                && *inner_icmp.first()? == 8
                && echo_ids(inner_icmp)? == (id, seq);
            ours.then(|| match (kind, code) {
                (3, 4) => {
                    EchoOutcome::FragNeeded(u32::from(u16::from_be_bytes([icmp[6], icmp[7]])))
                }
                (3, _) => EchoOutcome::Unreachable,
                _ => EchoOutcome::TimeExceeded,
            })
        }
        _ => None,
    }
}

/// Reads an ICMP message over IPv6 as a raw socket receives it (without the IPv6 header).
fn parse_icmpv6(icmp: &[u8], id: u16, seq: u16) -> Option<EchoOutcome> {
    let kind = *icmp.first()?;
    match kind {
        // Echo reply.
        129 => (echo_ids(icmp)? == (id, seq)).then_some(EchoOutcome::Reply),
        // Destination unreachable, packet too big, time exceeded: they quote our request.
        1..=3 => {
            let inner = icmp.get(8..)?;
            // An IPv6 header (no extension headers: we send none) whose next header is ICMPv6.
            let ours = *inner.first()? >> 4 == 6
                && *inner.get(6)? == 58
                && *inner.get(40)? == 128
                && echo_ids(inner.get(40..)?)? == (id, seq);
            ours.then(|| match kind {
                2 => EchoOutcome::FragNeeded(u32::from_be_bytes([
                    icmp[4], icmp[5], icmp[6], icmp[7],
                ])),
                1 => EchoOutcome::Unreachable,
                _ => EchoOutcome::TimeExceeded,
            })
        }
        _ => None,
    }
}

/// Length of the IPv4 header `packet` starts with, if it starts with one.
fn ipv4_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let len = usize::from(first & 0x0f) * 4;
    (first >> 4 == 4 && len >= 20).then_some(len)
}

/// Identifier and sequence number of an echo request or reply.
fn echo_ids(icmp: &[u8]) -> Option<(u16, u16)> {
    let ids = icmp.get(4..8)?;
    Some((
        u16::from_be_bytes([ids[0], ids[1]]),
        u16::from_be_bytes([ids[2], ids[3]]),
    ))
}

/// The path MTU the kernel has cached for `to`, read through a UDP socket connected to it.
fn kernel_path_mtu(to: IpAddr) -> Option<u32> {
    let addr = SocketAddr::new(to, 9);
    let fd = new_socket(&addr, libc::SOCK_DGRAM).ok()?;
    connect_socket(&fd, &addr, Duration::from_secs(1)).ok()?;
    let (level, name) = if to.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    u32::try_from(get_int_option(&fd, level, name).ok()?).ok()
}

/// The `serve` mode: TCP listeners and UDP sockets that answer every request with the name.
#[derive(Debug)]
pub struct Server {
    name: Arc<str>,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    /// TCP connections are sinks (see [`Server::with_sink`]).
    sink: bool,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    tcp_connections: AtomicU64,
    tcp_requests: AtomicU64,
    udp_requests: AtomicU64,
    sink_bytes: AtomicU64,
    clients: Mutex<BTreeMap<String, u64>>,
    tcp_clients: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn client(&self, peer: SocketAddr) {
        *self
            .clients
            .lock()
            .expect("stats lock")
            .entry(peer.ip().to_string())
            .or_default() += 1;
    }

    fn tcp_client(&self, peer: SocketAddr) {
        self.tcp_connections.fetch_add(1, Ordering::Relaxed);
        *self
            .tcp_clients
            .lock()
            .expect("stats lock")
            .entry(peer.ip().to_string())
            .or_default() += 1;
    }
}

impl Server {
    /// Binds TCP (if `tcp`) and UDP (if `udp`) on every address in `listen`. IPv6 sockets are
    /// `IPV6_V6ONLY`, so `0.0.0.0:P` and `[::]:P` can both be bound.
    ///
    /// # Errors
    /// If a socket cannot be created or bound; the error names the address.
    pub fn bind(name: &str, listen: &[SocketAddr], tcp: bool, udp: bool) -> anyhow::Result<Server> {
        let mut server = Server {
            name: Arc::from(name),
            tcp: Vec::new(),
            udp: Vec::new(),
            sink: false,
            stats: Arc::default(),
        };
        for addr in listen {
            if tcp {
                server
                    .tcp
                    .push(tcp_listen(addr).with_context(|| format!("listening on TCP {addr}"))?);
            }
            if udp {
                server
                    .udp
                    .push(udp_bind(addr).with_context(|| format!("binding UDP {addr}"))?);
            }
        }
        Ok(server)
    }

    /// Makes every TCP connection a sink (`serve --sink`): the server reads until the client shuts
    /// its side down (EOF), then replies with the number of bytes it read, in decimal, and a
    /// newline, and closes. The whole connection counts as one request. UDP is unchanged.
    #[must_use]
    pub fn with_sink(mut self) -> Server {
        self.sink = true;
        self
    }

    /// The bound addresses, as `tcp ADDR` / `udp ADDR`.
    #[must_use]
    pub fn local_addrs(&self) -> Vec<String> {
        let tcp = self.tcp.iter().map(|l| (l.local_addr(), "tcp"));
        let udp = self.udp.iter().map(|s| (s.local_addr(), "udp"));
        tcp.chain(udp)
            .map(|(addr, proto)| match addr {
                Ok(addr) => format!("{proto} {addr}"),
                Err(err) => format!("{proto} ?: {err}"),
            })
            .collect()
    }

    /// Starts serving on background threads: one per socket plus one per TCP connection.
    ///
    /// # Errors
    /// If a socket cannot be duplicated for its thread.
    pub fn start(&self) -> anyhow::Result<()> {
        for listener in &self.tcp {
            let listener = listener.try_clone().context("duplicating a TCP listener")?;
            let (name, stats, sink) = (Arc::clone(&self.name), Arc::clone(&self.stats), self.sink);
            thread::spawn(move || accept_loop(&listener, &name, &stats, sink));
        }
        for socket in &self.udp {
            let socket = socket.try_clone().context("duplicating a UDP socket")?;
            let (name, stats) = (Arc::clone(&self.name), Arc::clone(&self.stats));
            thread::spawn(move || udp_loop(&socket, &name, &stats));
        }
        Ok(())
    }

    /// What has been served so far.
    #[must_use]
    pub fn report(&self) -> ServeReport {
        ServeReport {
            name: self.name.to_string(),
            tcp_connections: self.stats.tcp_connections.load(Ordering::Relaxed),
            tcp_requests: self.stats.tcp_requests.load(Ordering::Relaxed),
            udp_requests: self.stats.udp_requests.load(Ordering::Relaxed),
            clients: self.stats.clients.lock().expect("stats lock").clone(),
            tcp_clients: self.stats.tcp_clients.lock().expect("stats lock").clone(),
            sink_bytes: self.stats.sink_bytes.load(Ordering::Relaxed),
        }
    }
}

fn accept_loop(listener: &TcpListener, name: &Arc<str>, stats: &Arc<Stats>, sink: bool) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stats.tcp_client(peer);
                let (name, stats) = (Arc::clone(name), Arc::clone(stats));
                if sink {
                    thread::spawn(move || sink_connection(stream, peer, &stats));
                } else {
                    thread::spawn(move || serve_connection(stream, peer, &name, &stats));
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!("gannet-probe: accept: {}", Failure::from(err));
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Answers every read of up to 64 bytes with `NAME\n` until the client closes.
fn serve_connection(mut stream: TcpStream, peer: SocketAddr, name: &str, stats: &Stats) {
    let reply = format!("{name}\n");
    let mut buf = [0_u8; SERVER_READ];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                stats.tcp_requests.fetch_add(1, Ordering::Relaxed);
                stats.client(peer);
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Reads until EOF, then replies with the byte count and a newline (see [`Server::with_sink`]).
fn sink_connection(mut stream: TcpStream, peer: SocketAddr, stats: &Stats) {
    let mut buf = vec![0_u8; STREAM_CHUNK];
    let mut total: u64 = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let n = u64::try_from(n).expect("a read fits u64");
                total += n;
                stats.sink_bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!(
                    "gannet-probe: sink from {peer}: {} after {total} bytes",
                    Failure::from(err)
                );
                return;
            }
        }
    }
    stats.tcp_requests.fetch_add(1, Ordering::Relaxed);
    stats.client(peer);
    if let Err(err) = stream.write_all(format!("{total}\n").as_bytes()) {
        eprintln!("gannet-probe: sink reply to {peer}: {}", Failure::from(err));
    }
}

fn udp_loop(socket: &UdpSocket, name: &str, stats: &Stats) {
    let mut buf = [0_u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                stats.udp_requests.fetch_add(1, Ordering::Relaxed);
                stats.client(peer);
                if let Err(err) = socket.send_to(name.as_bytes(), peer) {
                    eprintln!("gannet-probe: UDP reply to {peer}: {}", Failure::from(err));
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!("gannet-probe: UDP receive: {}", Failure::from(err));
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn tcp_listen(addr: &SocketAddr) -> io::Result<TcpListener> {
    let fd = new_socket(addr, libc::SOCK_STREAM)?;
    set_int_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind_socket(&fd, addr)?;
    // SAFETY: listen(2) on a socket we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
    Ok(TcpListener::from(fd))
}

fn udp_bind(addr: &SocketAddr) -> io::Result<UdpSocket> {
    let fd = new_socket(addr, libc::SOCK_DGRAM)?;
    bind_socket(&fd, addr)?;
    Ok(UdpSocket::from(fd))
}

/// A blocking, close-on-exec socket of `kind` for `addr`'s family; IPv6 sockets are `IPV6_V6ONLY`.
fn new_socket(addr: &SocketAddr, kind: libc::c_int) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) has no memory-safety preconditions.
    let raw = check(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if addr.is_ipv6() {
        set_int_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    Ok(fd)
}

fn set_int_option(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int of the length passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            socklen_of::<libc::c_int>(),
        )
    })
    .map(drop)
}

fn get_int_option(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: the option is written into a c_int whose length is in `len`.
    check(unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    })?;
    Ok(value)
}

/// Waits up to `timeout` for `fd` to be readable (or to have an error pending).
fn poll_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    let millis =
        libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    let mut pollfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    Ok(check(unsafe { libc::poll(&raw mut pollfd, 1, millis) })? > 0)
}

fn send_to(fd: &impl AsFd, data: &[u8], to: &SocketAddr) -> Result<(), Failure> {
    let (storage, len) = raw_sockaddr(to);
    // SAFETY: `data` is valid for its length and `storage` holds a sockaddr of `len` bytes.
    let sent = unsafe {
        libc::sendto(
            fd.as_fd().as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            0,
            (&raw const storage).cast(),
            len,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

/// A non-blocking recvfrom(2): the length received and the sender's address.
fn recv_from(fd: &impl AsFd, buf: &mut [u8]) -> io::Result<(usize, IpAddr)> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY: `buf` is valid for writes of its length, `storage` for `len` bytes.
    let n = unsafe {
        libc::recvfrom(
            fd.as_fd().as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&raw mut storage).cast(),
            &raw mut len,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let from = match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in, for which storage is large and aligned enough.
            let sin = unsafe { (&raw const storage).cast::<libc::sockaddr_in>().read() };
            IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6, for which storage is large and aligned enough.
            let sin6 = unsafe { (&raw const storage).cast::<libc::sockaddr_in6>().read() };
            IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
        }
        family => {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("recvfrom returned address family {family}"),
            ));
        }
    };
    Ok((n, from))
}

fn bind_socket(fd: &impl AsFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = raw_sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    check(unsafe { libc::bind(fd.as_fd().as_raw_fd(), (&raw const storage).cast(), len) }).map(drop)
}

/// connect(2) with a timeout: non-blocking connect, poll for writability, read `SO_ERROR`.
fn connect_socket(fd: &impl AsFd, addr: &SocketAddr, timeout: Duration) -> io::Result<()> {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor we own.
    let flags = check(unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    let (storage, len) = raw_sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let result = match check(unsafe { libc::connect(raw, (&raw const storage).cast(), len) }) {
        Ok(_) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => wait_connected(raw, timeout),
        Err(err) => Err(err),
    };
    // SAFETY: fcntl(2) on a descriptor we own.
    check(unsafe { libc::fcntl(raw, libc::F_SETFL, flags) })?;
    result
}

fn wait_connected(raw: libc::c_int, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
        }
        let millis =
            libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        let mut pollfd = libc::pollfd {
            fd: raw,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        match check(unsafe { libc::poll(&raw mut pollfd, 1, millis) }) {
            Ok(0) => {}
            Ok(_) => break,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let mut error: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: SO_ERROR writes one c_int into `error`, whose length is in `len`.
    check(unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut error).cast(),
            &raw mut len,
        )
    })?;
    if error == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(error))
    }
}

/// `addr` as a `sockaddr_in` or `sockaddr_in6` (ports and addresses in network byte order).
fn raw_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in.
            let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
            sin.sin_family = libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits");
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            socklen_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).expect("AF_INET6 fits");
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            socklen_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len)
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).expect("socket structures are small")
}

/// A libc return value, or the errno it signals.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Netns;

    /// Runs `f` in a fresh namespace of its own (loopback only), never in the caller's.
    fn in_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        let netns = Netns::new("unit").expect("creating a netns");
        netns.run(f).expect("joining the netns")
    }

    fn loopback_server(tcp: bool, udp: bool) -> (Server, u16) {
        // Port 0 lets the kernel choose; TCP and UDP then bind that port separately.
        let server = Server::bind("unit", &["127.0.0.1:0".parse().expect("addr")], tcp, udp)
            .expect("bind loopback");
        let port = server
            .tcp
            .first()
            .map(|l| l.local_addr().expect("addr").port())
            .or_else(|| {
                server
                    .udp
                    .first()
                    .map(|s| s.local_addr().expect("addr").port())
            })
            .expect("a socket");
        server.start().expect("start");
        (server, port)
    }

    fn opts(port: u16) -> ClientOptions {
        ClientOptions {
            to: SocketAddr::from(([127, 0, 0, 1], port)),
            bind: None,
            timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn tcp_round_trips_on_loopback() {
        in_netns(|| {
            let (server, port) = loopback_server(true, false);
            let report = tcp_count(&opts(port), 3);
            assert_eq!((report.ok, report.failed), (3, 0), "{report:?}");
            assert_eq!(report.backend_count("unit"), 3, "{report:?}");
            assert_eq!(
                report.peers.get(&format!("127.0.0.1:{port}")),
                Some(&3),
                "{report:?}"
            );
            let served = server.report();
            assert_eq!(
                (served.tcp_connections, served.tcp_requests),
                (3, 3),
                "{served:?}"
            );
            assert_eq!(served.clients.get("127.0.0.1"), Some(&3), "{served:?}");
            assert_eq!(served.tcp_clients.get("127.0.0.1"), Some(&3), "{served:?}");
        });
    }

    #[test]
    fn udp_round_trips_on_loopback() {
        in_netns(|| {
            let (_server, port) = loopback_server(false, true);
            for udp in [
                UdpOptions::default(),
                UdpOptions {
                    per_request_socket: true,
                    connected: false,
                },
                UdpOptions {
                    per_request_socket: false,
                    connected: true,
                },
            ] {
                let report = udp_count(&opts(port), 4, udp);
                assert_eq!(
                    (report.ok, report.backend_count("unit")),
                    (4, 4),
                    "{udp:?}: {report:?}"
                );
                assert_eq!(
                    report.peers.get(&format!("127.0.0.1:{port}")),
                    Some(&4),
                    "{udp:?}: {report:?}"
                );
            }
        });
    }

    #[test]
    fn refused_connections_fail_fast_by_name() {
        in_netns(|| {
            // Nothing listens in a fresh namespace. (Binding a port and closing it again is not
            // enough: a concurrent fork may briefly keep the listener open.)
            let report = tcp_count(&opts(9), 2);
            assert_eq!(
                (report.ok, report.error_count("ECONNREFUSED")),
                (0, 2),
                "{report:?}"
            );
            let after = report.first_error_after_us.expect("a failure was timed");
            assert!(after < 400_000, "refusal took {after} us");
        });
    }

    #[test]
    fn hold_answers_pings_on_one_connection() {
        in_netns(|| {
            let (server, port) = loopback_server(true, false);
            let mut out = Vec::new();
            let report = hold(&opts(port), &b"ping\n\nping\nbogus\n"[..], &mut out).expect("hold");
            let out = String::from_utf8(out).expect("utf8");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines[0], format!("connected 127.0.0.1:{port}"), "{out}");
            assert_eq!(&lines[1..3], ["unit", "unit"], "{out}");
            assert!(lines[3].starts_with("error: unknown command"), "{out}");
            assert_eq!(report.ok, 2, "{report:?}");
            assert_eq!(
                server.report().tcp_connections,
                1,
                "pings must share one connection"
            );
        });
    }

    /// Bound on every ICMP reply in these tests.
    const ICMP_WAIT: Duration = Duration::from_millis(1000);

    fn icmp(to: &str, count: u64, size: usize, dont_fragment: bool) -> IcmpReport {
        let opts = IcmpOptions {
            to: to.parse().expect("address"),
            count,
            size,
            dont_fragment,
            timeout: ICMP_WAIT,
        };
        icmp_echo(&opts).unwrap_or_else(|err| panic!("icmp to {to}: {err:#}"))
    }

    #[test]
    fn icmp_echoes_on_loopback() {
        in_netns(|| {
            for (to, bytes) in [("127.0.0.1", 84), ("::1", 104)] {
                let report = icmp(to, 3, DEFAULT_ICMP_SIZE, false);
                assert_eq!(
                    (report.sent, report.ok, report.failed),
                    (3, 3, 0),
                    "{to}: {report:?}"
                );
                assert_eq!(report.replies_from, [to], "{to}: {report:?}");
                assert_eq!(report.ip_packet_bytes, bytes, "{to}: {report:?}");
                let (p50, max) = (report.rtt_us_p50, report.rtt_us_max);
                assert!(
                    p50.is_some() && p50 <= max,
                    "{to}: rtt p50 {p50:?}, max {max:?}"
                );
            }
        });
    }

    #[test]
    fn icmp_dont_fragment_above_the_mtu_fails_with_emsgsize() {
        let netns = Netns::new("unit").expect("creating a netns");
        netns
            .ip(&["link", "set", "lo", "mtu", "1400"])
            .expect("lowering lo's MTU");
        netns
            .run(|| {
                for to in ["127.0.0.1", "::1"] {
                    let report = icmp(to, 2, 1400, true);
                    assert_eq!(
                        (report.ok, report.error_count("EMSGSIZE")),
                        (0, 2),
                        "{to}, 1400 bytes, DF, MTU 1400: {report:?}"
                    );
                    assert_eq!(report.path_mtu, Some(1400), "{to}: {report:?}");
                    let report = icmp(to, 2, 1400, false);
                    assert_eq!(
                        report.ok, 2,
                        "{to}, 1400 bytes, fragmentation allowed: {report:?}"
                    );
                    let report = icmp(to, 1, 1300, true);
                    assert_eq!(report.ok, 1, "{to}, 1300 bytes, DF: {report:?}");
                }
            })
            .expect("joining the netns");
    }

    #[test]
    fn icmp_without_a_reply_times_out() {
        let netns = Netns::new("unit").expect("creating a netns");
        // A veth pair inside the namespace, and a neighbour entry with a MAC nobody has: requests
        // leave v0, arrive at v1 (which has no address), and are dropped there.
        let setup = [
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"][..],
            &["addr", "add", "10.9.0.1/24", "dev", "v0"],
            &["link", "set", "v0", "up"],
            &["link", "set", "v1", "up"],
            &[
                "neigh",
                "add",
                "10.9.0.2",
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                "v0",
            ],
        ];
        for args in setup {
            netns.ip(args).expect("building v0 - v1");
        }
        let report = netns
            .run(|| {
                icmp_echo(&IcmpOptions {
                    to: "10.9.0.2".parse().expect("addr"),
                    count: 2,
                    size: DEFAULT_ICMP_SIZE,
                    dont_fragment: false,
                    timeout: Duration::from_millis(200),
                })
                .expect("icmp")
            })
            .expect("joining the netns");
        assert_eq!(
            (report.ok, report.error_count(ICMP_TIMEOUT)),
            (0, 2),
            "{report:?}"
        );
        assert!(report.elapsed_us >= 400_000, "{report:?}");
        assert!(report.replies_from.is_empty(), "{report:?}");
    }

    /// Namespaces `client` - `router` - `server`: 10.1.0.0/24 and `fd01::/64` between client and
    /// router (MTU 1500), 10.2.0.0/24 and `fd02::/64` between router and server (MTU 1280).
    fn narrow_path() -> [Netns; 3] {
        let client = Netns::new("pcli").expect("netns");
        let router = Netns::new("prtr").expect("netns");
        let server = Netns::new("psrv").expect("netns");
        let setup = || -> anyhow::Result<()> {
            // See `cluster::disable_dad`: a router with tentative link-local addresses cannot resolve
            // neighbours for forwarded IPv6 packets.
            for ns in [&client, &router, &server] {
                crate::cluster::disable_dad(ns)?;
            }
            client.ip(&[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "c0",
                "netns",
                router.name(),
            ])?;
            router.ip(&[
                "link",
                "add",
                "s0",
                "mtu",
                "1280",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                "1280",
                "netns",
                server.name(),
            ])?;
            for (ns, dev, v4, v6) in [
                (&client, "eth0", "10.1.0.2/24", "fd01::2/64"),
                (&router, "c0", "10.1.0.1/24", "fd01::1/64"),
                (&router, "s0", "10.2.0.1/24", "fd02::1/64"),
                (&server, "eth0", "10.2.0.2/24", "fd02::2/64"),
            ] {
                ns.ip(&["addr", "add", v4, "dev", dev])?;
                ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"])?;
                ns.ip(&["link", "set", dev, "up"])?;
            }
            for (ns, v4, v6) in [
                (&client, "10.1.0.1", "fd01::1"),
                (&server, "10.2.0.1", "fd02::1"),
            ] {
                ns.ip(&["route", "add", "default", "via", v4])?;
                ns.ip(&["-6", "route", "add", "default", "via", v6])?;
            }
            router.sysctl("net.ipv4.ip_forward", "1")?;
            router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            // Until the carrier is on (deferred), IPv6 drops what it should route over a link.
            for (ns, dev) in [
                (&client, "eth0"),
                (&router, "c0"),
                (&router, "s0"),
                (&server, "eth0"),
            ] {
                crate::cluster::wait_oper_state(ns, dev, true, Duration::from_secs(5))?;
            }
            Ok(())
        };
        setup().expect("building client - router - server");
        [client, router, server]
    }

    #[test]
    fn icmp_reports_frag_needed_from_a_router_then_emsgsize() {
        let [client, _router, _server] = narrow_path();
        client
            .run(|| {
                for to in ["10.2.0.2", "fd02::2"] {
                    let report = icmp(to, 1, 100, true);
                    assert_eq!(report.ok, 1, "{to}: small packets must pass: {report:?}");
                    assert_eq!(report.replies_from, [to], "{report:?}");
                    // 1300 bytes of payload: above the router's 1280-byte link.
                    let report = icmp(to, 2, 1300, true);
                    assert_eq!(
                        (
                            report.ok,
                            report.error_count(ICMP_FRAG_NEEDED),
                            report.error_count("EMSGSIZE")
                        ),
                        (0, 1, 1),
                        "{to}: expected frag-needed from the router, then EMSGSIZE: {report:?}"
                    );
                    assert_eq!(report.mtu_reported, Some(1280), "{to}: {report:?}");
                    assert_eq!(report.path_mtu, Some(1280), "{to}: {report:?}");
                    // The sender (IPv6) or the router (IPv4) fragments when allowed to.
                    let report = icmp(to, 2, 1300, false);
                    assert_eq!(report.ok, 2, "{to}, fragmentation allowed: {report:?}");
                }
            })
            .expect("joining the client netns");
    }

    #[test]
    fn icmp_parsing_matches_identifier_and_sequence() {
        let request = echo_request(false, 0x1234, 7, 8);
        assert_eq!(internet_checksum(&request), 0, "checksum must verify");
        let ipv4 = |icmp: &[u8]| {
            let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
            packet.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            packet.extend_from_slice(icmp);
            packet
        };
        let mut reply = request.clone();
        reply[0] = 0;
        assert_eq!(
            parse_icmpv4(&ipv4(&reply), 0x1234, 7),
            Some(EchoOutcome::Reply)
        );
        assert_eq!(parse_icmpv4(&ipv4(&reply), 0x1234, 8), None, "other seq");
        assert_eq!(parse_icmpv4(&ipv4(&reply), 0x1235, 7), None, "other id");
        assert_eq!(parse_icmpv4(&ipv4(&request), 0x1234, 7), None, "a request");
        let mut frag_needed = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
        frag_needed.extend_from_slice(&ipv4(&request[..8]));
        assert_eq!(
            parse_icmpv4(&ipv4(&frag_needed), 0x1234, 7),
            Some(EchoOutcome::FragNeeded(1400))
        );
        assert_eq!(parse_icmpv4(&ipv4(&frag_needed), 0x1234, 6), None);

        let request6 = echo_request(true, 0x1234, 7, 8);
        let mut reply6 = request6.clone();
        reply6[0] = 129;
        assert_eq!(parse_icmpv6(&reply6, 0x1234, 7), Some(EchoOutcome::Reply));
        assert_eq!(parse_icmpv6(&request6, 0x1234, 7), None, "a request");
        let mut too_big = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
        let mut inner = vec![0x60, 0, 0, 0, 0, 16, 58, 64];
        inner.extend_from_slice(&[0; 32]);
        too_big.extend_from_slice(&inner);
        too_big.extend_from_slice(&request6);
        assert_eq!(
            parse_icmpv6(&too_big, 0x1234, 7),
            Some(EchoOutcome::FragNeeded(1280))
        );
        assert_eq!(parse_icmpv6(&too_big, 0x4321, 7), None);
    }

    fn sink_server() -> (Server, u16) {
        let server = Server::bind("sink", &["127.0.0.1:0".parse().expect("addr")], true, false)
            .expect("bind loopback")
            .with_sink();
        let port = server.tcp[0].local_addr().expect("addr").port();
        server.start().expect("start");
        (server, port)
    }

    #[test]
    fn stream_delivers_every_byte_to_a_sink() {
        in_netns(|| {
            let (server, port) = sink_server();
            let bytes = 20 * 1024 * 1024;
            let report = stream(&opts(port), bytes);
            assert_eq!(
                (report.ok, report.bytes_sent, report.bytes_acked_by_server),
                (1, bytes, Some(bytes)),
                "{report:?}"
            );
            assert_eq!(report.error, None, "{report:?}");
            assert!(
                report.mss.is_some_and(|mss| mss > 1000),
                "loopback MSS: {report:?}"
            );
            let served = server.report();
            assert_eq!(served.sink_bytes, bytes, "{served:?}");
            assert_eq!(
                (served.tcp_connections, served.tcp_requests),
                (1, 1),
                "{served:?}"
            );
            assert_eq!(served.tcp_clients.get("127.0.0.1"), Some(&1), "{served:?}");
        });
    }

    #[test]
    fn stream_to_a_stalled_peer_times_out() {
        in_netns(|| {
            // Accepts connections in the kernel but never reads: the buffers fill, then writes stall.
            let listener = tcp_listen(&"127.0.0.1:0".parse().expect("addr")).expect("listen");
            let port = listener.local_addr().expect("addr").port();
            let opts = ClientOptions {
                timeout: Duration::from_millis(300),
                ..opts(port)
            };
            let bytes = 256 * 1024 * 1024;
            let report = stream(&opts, bytes);
            assert_eq!(
                (report.ok, report.error.as_deref()),
                (0, Some("ETIMEDOUT")),
                "{report:?}"
            );
            assert!(
                report.bytes_sent > 0 && report.bytes_sent < bytes,
                "{report:?}"
            );
            assert!(report.elapsed_us < 5_000_000, "took too long: {report:?}");
            drop(listener);
        });
    }

    #[test]
    fn stream_to_a_closed_port_is_refused() {
        in_netns(|| {
            let report = stream(&opts(9), 1024);
            assert_eq!(
                (report.ok, report.error.as_deref(), report.mss),
                (0, Some("ECONNREFUSED"), None),
                "{report:?}"
            );
        });
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
        assert_eq!(errno_name(9999), "E9999");
        assert_eq!(
            Failure::from(io::Error::from_raw_os_error(libc::EAGAIN)).name(),
            "ETIMEDOUT"
        );
    }
}
