//! Thin wrappers over the socket system calls the modes need beyond `std::net`: options, timed
//! connect, poll, raw `sendto`/`recvfrom`.

use std::io::{self, ErrorKind};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use super::report::Failure;

/// A blocking, close-on-exec socket of `kind` for `addr`'s family; IPv6 sockets are `IPV6_V6ONLY`.
pub(super) fn new_socket(addr: &SocketAddr, kind: libc::c_int) -> io::Result<OwnedFd> {
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

pub(super) fn set_int_option(
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

pub(super) fn get_int_option(
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
pub(super) fn poll_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
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

pub(super) fn send_to(fd: &impl AsFd, data: &[u8], to: &SocketAddr) -> Result<(), Failure> {
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
pub(super) fn recv_from(fd: &impl AsFd, buf: &mut [u8]) -> io::Result<(usize, IpAddr)> {
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

pub(super) fn bind_socket(fd: &impl AsFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = raw_sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    check(unsafe { libc::bind(fd.as_fd().as_raw_fd(), (&raw const storage).cast(), len) }).map(drop)
}

/// connect(2) with a timeout: non-blocking connect, poll for writability, read `SO_ERROR`.
pub(super) fn connect_socket(
    fd: &impl AsFd,
    addr: &SocketAddr,
    timeout: Duration,
) -> io::Result<()> {
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
pub(super) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(super) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
