//! The client modes over TCP and UDP: `tcp`, `udp`, `loop`, `hold`, `hold --udp` and `stream`.

use std::io::{self, BufRead, ErrorKind, Read as _, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::report::{Failure, Report};
use super::sys::{bind_socket, connect_socket, get_int_option, micros, new_socket};
use super::{MAX_REPLY, REQUEST, STREAM_CHUNK};

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
/// `duration` (or, `until_ok`, until one gets a reply), pausing `interval` between requests.
#[must_use]
pub fn run_loop(
    opts: &ClientOptions,
    proto: Proto,
    duration: Duration,
    interval: Duration,
    until_ok: bool,
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
        if report.ok > 0 && report.first_ok_after_us.is_none() {
            report.first_ok_after_us = Some(micros(start.elapsed()));
            if until_ok {
                break;
            }
        }
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
