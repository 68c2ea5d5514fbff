//! The `gannet-probe` traffic tool: its client and server logic and the JSON reports it prints.
//!
//! Every socket operation has a timeout, and failures are counted by errno name (`ECONNREFUSED`,
//! `ETIMEDOUT`, `EPERM`, ...) so tests can tell a rejected connect from a lost packet. Two names are
//! not errnos: `ETIMEDOUT` also stands for a reply that did not arrive within the timeout, and `EOF`
//! for a TCP connection closed before a reply line.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, ErrorKind, Read as _, Write};
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
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

/// The `serve` mode: TCP listeners and UDP sockets that answer every request with the name.
#[derive(Debug)]
pub struct Server {
    name: Arc<str>,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    tcp_connections: AtomicU64,
    tcp_requests: AtomicU64,
    udp_requests: AtomicU64,
    clients: Mutex<BTreeMap<String, u64>>,
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
            let (name, stats) = (Arc::clone(&self.name), Arc::clone(&self.stats));
            thread::spawn(move || accept_loop(&listener, &name, &stats));
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
        }
    }
}

fn accept_loop(listener: &TcpListener, name: &Arc<str>, stats: &Arc<Stats>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
                let (name, stats) = (Arc::clone(name), Arc::clone(stats));
                thread::spawn(move || serve_connection(stream, peer, &name, &stats));
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
