//! The clients: request/response, connect/request/response/close and bulk stream, one thread each.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read as _, Write as _};
use std::mem;
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use super::{CRR_REQUEST, Metric, RR_REQUEST, SINK_REQUEST, SOCKET_TIMEOUT, Sample};

/// Size of one write of the stream client.
const STREAM_CHUNK: usize = 128 * 1024;
/// A crr run stops early when this many connections failed and none succeeded: the target is
/// unreachable, and spinning on errors for the whole interval would measure nothing.
const GIVE_UP_AFTER_ERRORS: u64 = 50;

/// What a client run does.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// What to measure.
    pub metric: Metric,
    /// Where to connect; crr connects to them in turn, rr and stream use the first.
    pub addrs: Vec<SocketAddrV4>,
    /// Length of the measured interval.
    pub duration: Duration,
    /// Traffic before the measured interval that is not counted (rr and crr).
    pub warmup: Duration,
    /// Stop crr after this many connections (a connectivity check), if set.
    pub max_operations: Option<u64>,
}

/// Runs one client as `options` says and returns what it measured.
///
/// # Errors
/// If there is no address, or rr or stream cannot connect or lose their connection (crr counts
/// failed connections in [`Sample::errors`] instead).
pub fn run_client(options: &ClientOptions) -> anyhow::Result<Sample> {
    ensure!(!options.addrs.is_empty(), "no address to connect to");
    match options.metric {
        Metric::Rr => rr(options),
        Metric::Crr => Ok(crr(options)),
        Metric::Stream => stream(options),
    }
}

/// A blocking TCP connection to `addr` with `TCP_NODELAY` and [`SOCKET_TIMEOUT`] on connect,
/// send and receive (Linux applies `SO_SNDTIMEO` to a blocking connect). With `abortive_close`,
/// closing it sends a RST (`SO_LINGER` 0), so neither side keeps a `TIME_WAIT` socket.
fn connect(addr: SocketAddrV4, abortive_close: bool) -> io::Result<TcpStream> {
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: libc::time_t::try_from(SOCKET_TIMEOUT.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(SOCKET_TIMEOUT.subsec_micros().min(999_999) as i32),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &timeout)?;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &1_i32)?;
    if abortive_close {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    loop {
        // SAFETY: `sin` is a valid sockaddr_in and the length matches it.
        let rc = unsafe {
            libc::connect(
                fd,
                (&raw const sin).cast(),
                libc::socklen_t::try_from(mem::size_of::<libc::sockaddr_in>()).unwrap_or(0),
            )
        };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(TcpStream::from(owned))
}

fn setsockopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live T and the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(value).cast(),
            libc::socklen_t::try_from(mem::size_of::<T>()).unwrap_or(0),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The errno name of a failure (`ETIMEDOUT` also for a receive timeout).
fn errno_name(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".to_owned(),
        Some(libc::ECONNRESET) => "ECONNRESET".to_owned(),
        Some(libc::ETIMEDOUT | libc::EAGAIN) => "ETIMEDOUT".to_owned(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".to_owned(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".to_owned(),
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".to_owned(),
        Some(libc::EPERM) => "EPERM".to_owned(),
        Some(code) => format!("errno {code}"),
        None if err.kind() == ErrorKind::UnexpectedEof => "EOF".to_owned(),
        None => err.kind().to_string(),
    }
}

fn rr(options: &ClientOptions) -> anyhow::Result<Sample> {
    let addr = options.addrs[0];
    let mut stream = connect(addr, false).with_context(|| format!("connecting to {addr}"))?;
    let mut transaction = || -> io::Result<()> {
        stream.write_all(&[RR_REQUEST])?;
        let mut reply = [0_u8; 1];
        stream.read_exact(&mut reply)
    };
    let warmup_end = Instant::now() + options.warmup;
    while Instant::now() < warmup_end {
        transaction().with_context(|| format!("request/response with {addr} (warm-up)"))?;
    }
    let start = Instant::now();
    let end = start + options.duration;
    let mut operations = 0_u64;
    loop {
        transaction().with_context(|| format!("request/response with {addr}"))?;
        operations += 1;
        if Instant::now() >= end {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Sample {
        metric: Metric::Rr,
        operations,
        bytes: 0,
        seconds,
        value: operations as f64 / seconds,
        errors: BTreeMap::new(),
        backends: BTreeMap::new(),
    })
}

/// One connect/request/response/close transaction; the backend's id on success.
///
/// The close is abortive (RST): with tens of thousands of connections per second, `TIME_WAIT`
/// sockets would pile up on one side, and new connections reusing their port pairs would get
/// slower as a measurement goes on, whichever path it measures.
fn crr_once(addr: SocketAddrV4) -> Result<u8, String> {
    let mut stream = connect(addr, true).map_err(|err| errno_name(&err))?;
    stream
        .write_all(&[CRR_REQUEST])
        .map_err(|err| errno_name(&err))?;
    let mut reply = [0_u8; 1];
    match stream.read(&mut reply) {
        Ok(0) => Err("EOF".to_owned()),
        Ok(_) => Ok(reply[0]),
        Err(err) => Err(errno_name(&err)),
    }
}

fn crr(options: &ClientOptions) -> Sample {
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    let mut next = 0_usize;
    let mut transaction = |count: bool| -> bool {
        let addr = options.addrs[next % options.addrs.len()];
        next = next.wrapping_add(1);
        match crr_once(addr) {
            Ok(id) => {
                if count {
                    *backends.entry(char::from(id).to_string()).or_default() += 1;
                }
                true
            }
            Err(name) => {
                *errors.entry(name).or_default() += 1;
                false
            }
        }
    };
    let warmup_end = Instant::now() + options.warmup;
    while Instant::now() < warmup_end {
        transaction(false);
    }
    let start = Instant::now();
    let end = start + options.duration;
    let mut operations = 0_u64;
    let mut failed = 0_u64;
    loop {
        if transaction(true) {
            operations += 1;
        } else {
            failed += 1;
        }
        if options
            .max_operations
            .is_some_and(|max| operations + failed >= max)
            || (operations == 0 && failed >= GIVE_UP_AFTER_ERRORS)
            || Instant::now() >= end
        {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Sample {
        metric: Metric::Crr,
        operations,
        bytes: 0,
        seconds,
        value: operations as f64 / seconds,
        errors,
        backends,
    }
}

fn stream(options: &ClientOptions) -> anyhow::Result<Sample> {
    let addr = options.addrs[0];
    let mut stream = connect(addr, false).with_context(|| format!("connecting to {addr}"))?;
    let mut chunk = vec![0x5a_u8; STREAM_CHUNK];
    chunk[0] = SINK_REQUEST;
    let start = Instant::now();
    let end = start + options.duration;
    stream
        .write_all(&chunk)
        .with_context(|| format!("sending to {addr}"))?;
    chunk[0] = 0x5a;
    while Instant::now() < end {
        stream
            .write_all(&chunk)
            .with_context(|| format!("sending to {addr}"))?;
    }
    stream
        .shutdown(Shutdown::Write)
        .with_context(|| format!("shutting down the connection to {addr}"))?;
    // The server answers once it has read everything; the interval ends when it has.
    let mut count = [0_u8; 8];
    stream
        .read_exact(&mut count)
        .with_context(|| format!("reading the byte count from {addr}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let bytes = u64::from_le_bytes(count);
    if bytes == 0 {
        bail!("{addr} received nothing");
    }
    Ok(Sample {
        metric: Metric::Stream,
        operations: 0,
        bytes,
        seconds,
        value: bytes as f64 * 8.0 / seconds / 1e9,
        errors: BTreeMap::new(),
        backends: BTreeMap::new(),
    })
}
