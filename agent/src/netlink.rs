//! A raw netlink socket of the calling thread's network namespace, as `conntrack` (ctnetlink)
//! and `sockdiag` (`NETLINK_SOCK_DIAG`) use it: requests sent whole, one datagram received at a
//! time into a buffer of the socket's own, a receive timeout as a guard against a hang. The
//! messages themselves are each user's business.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// User-space receive buffer. The kernel sizes dump datagrams after the largest buffer a reader
/// offered and caps them at 32 KiB (`netlink_recvmsg`); a larger datagram than this is reported,
/// never silently cut.
const RECV_BUFFER: usize = 64 * 1024;

/// How long one receive waits for the kernel, which always answers; a guard against a hang.
const RECV_TIMEOUT_SECS: libc::time_t = 10;

/// Why a system call on the socket failed, or what arrived was not a whole datagram.
#[derive(Debug)]
pub enum NetlinkError {
    Io {
        doing: &'static str,
        source: io::Error,
    },
    Malformed {
        doing: &'static str,
        detail: String,
    },
}

/// A netlink socket talking to the kernel.
pub struct NetlinkSocket {
    fd: OwnedFd,
    seq: u32,
    /// The last datagram received (its first [`NetlinkSocket::recv`] bytes).
    pub buf: Vec<u8>,
}

impl NetlinkSocket {
    /// Opens a socket of `protocol` (`NETLINK_NETFILTER`, `NETLINK_SOCK_DIAG`, …), named
    /// `name` in errors. Errors are capped to the request's header, and the kernel's error
    /// messages asked for: conveniences that old kernels lack, so failing to set them is fine.
    ///
    /// # Errors
    /// If the kernel refuses the socket or its receive timeout.
    pub fn open(protocol: libc::c_int, doing: &'static str) -> Result<Self, NetlinkError> {
        let io = |doing| move |source| NetlinkError::Io { doing, source };
        // SAFETY: plain socket creation.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io(doing)(io::Error::last_os_error()));
        }
        // SAFETY: we own the new descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for option in [libc::NETLINK_CAP_ACK, libc::NETLINK_EXT_ACK] {
            let _ = set_option(&fd, libc::SOL_NETLINK, option, &1i32);
        }
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)
            .map_err(io("setting the netlink socket's receive timeout"))?;
        Ok(Self {
            fd,
            // Any start will do: the socket is ours alone and every answer echoes its request's.
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// The sequence number of the next request.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `request` (one or more messages) to the kernel.
    ///
    /// # Errors
    /// If `sendto` fails (other than by a signal).
    pub fn send(&self, request: &[u8], doing: &'static str) -> Result<(), NetlinkError> {
        // SAFETY: all-zero is a valid sockaddr_nl; pid 0 is the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: valid socket, buffer and address of the sizes passed.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    request.as_ptr().cast(),
                    request.len(),
                    0,
                    (&raw const kernel).cast(),
                    socklen_of::<libc::sockaddr_nl>(),
                )
            };
            if sent >= 0 {
                // Netlink datagrams are sent whole or not at all.
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(NetlinkError::Io { doing, source: err });
            }
        }
    }

    /// Receives one datagram into `self.buf`; returns its length.
    ///
    /// # Errors
    /// If `recv` fails (also after the receive timeout), or the datagram was larger than the
    /// buffer.
    pub fn recv(&mut self, doing: &'static str) -> Result<usize, NetlinkError> {
        loop {
            // SAFETY: valid socket and buffer of the size passed. MSG_TRUNC makes the kernel
            // return the datagram's real length.
            let len = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            let Ok(len) = usize::try_from(len) else {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io { doing, source: err });
            };
            if len > self.buf.len() {
                return Err(NetlinkError::Malformed {
                    doing,
                    detail: format!(
                        "a datagram of {len} bytes, more than the {} byte buffer",
                        self.buf.len()
                    ),
                });
            }
            return Ok(len);
        }
    }
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: valid socket; `value` is a readable `T` of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            socklen_of::<T>(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).expect("a small struct")
}
