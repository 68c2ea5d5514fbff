//! Listing and terminating connected UDP sockets through `NETLINK_SOCK_DIAG` (`INET_DIAG`),
//! for the socket load balancer: a UDP socket that `connect()`ed to a service was given one
//! backend once, and keeps sending to it after the backend left the service. Terminating it
//! (`SOCK_DESTROY`, what `ss -K` does) makes the kernel abort it with `ECONNABORTED`: it is
//! disconnected, its next `recv()` (or `SO_ERROR`) reports the error, a `send()` without an
//! address fails with `EDESTADDRREQ`, and the application connects again through the service.
//!
//! 1. [`connected_udp`] dumps the UDP sockets of one address family in the `TCP_ESTABLISHED`
//!    state (what a connected UDP socket is in), `SOCK_DIAG_BY_FAMILY` with `NLM_F_DUMP`, with
//!    each socket's cgroup (`INET_DIAG_CGROUP_ID`, Linux 5.7 and later).
//! 2. The caller picks the ones to terminate.
//! 3. [`destroy`] sends a `SOCK_DESTROY` per socket with the socket's identity exactly as the
//!    dump reported it: its addresses, ports, bound interface and cookie, so only that very
//!    socket can go, never a newer one on the same addresses. A socket already gone (`ENOENT`)
//!    is not an error. The kernel needs `CONFIG_INET_DIAG_DESTROY` and the caller
//!    `CAP_NET_ADMIN`.
//!
//! Like every netlink socket, ours sees the network namespace of the thread that opened it:
//! to reach sockets of other namespaces (pods in namespaces of their own), open one in each
//! (`crate::netns::in_each`).
//!
//! Messages are plain netlink: a 16-byte `nlmsghdr`, then `inet_diag_req_v2` (requests) or
//! `inet_diag_msg` followed by attributes (answers). Headers, the interface index, the cookie
//! and the attributes are in host byte order, addresses and ports in network order. The parser
//! is bounds-checked: a malformed message is an error, never a panic.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::netlink::{NetlinkError, NetlinkSocket};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
const NLA_HDRLEN: usize = 4;
const NLA_TYPE_MASK: u16 = !((1 << 15) | (1 << 14));

// include/uapi/linux/sock_diag.h, inet_diag.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// `struct inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the socket id.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retrans, the socket id, then expires, rqueue,
/// wqueue, uid, inode.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;
const INET_DIAG_CGROUP_ID: u16 = 21;
/// The state of a connected UDP socket.
const TCP_ESTABLISHED: u8 = 1;
const IPPROTO_UDP: u8 = 17;
/// Address families, as `sdiag_family` holds them.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// `SOCK_DESTROY` requests sent in one `sendto` before their acks are read.
const DESTROY_BATCH: usize = 64;

/// Why listing or terminating sockets failed.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// A system call on the netlink socket failed.
    #[error("sock_diag: {doing}: {source}")]
    Io {
        doing: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request (`EOPNOTSUPP` for `SOCK_DESTROY`: a kernel without
    /// `CONFIG_INET_DIAG_DESTROY`; `EPERM`: no `CAP_NET_ADMIN`).
    #[error("sock_diag: the kernel refused {doing}: {source}")]
    Refused {
        doing: &'static str,
        #[source]
        source: io::Error,
    },
    /// A message from the kernel did not parse.
    #[error("sock_diag: malformed netlink message while {doing}: {detail}")]
    Malformed { doing: &'static str, detail: String },
}

/// A connected UDP socket, as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSock {
    /// `AF_INET` or `AF_INET6`: the socket's own family (an IPv6 socket may talk IPv4 through
    /// IPv4-mapped addresses).
    pub family: u8,
    pub local: SocketAddr,
    /// Where it is connected to; IPv4-mapped IPv6 addresses are given as IPv4.
    pub peer: SocketAddr,
    /// The socket cookie (`bpf_get_socket_cookie` of the kernel programs).
    pub cookie: u64,
    /// The cgroup v2 id of the socket's cgroup (`None` on kernels before 5.7).
    pub cgroup_id: Option<u64>,
    /// `inet_diag_sockid` as received: what identifies exactly this socket to `SOCK_DESTROY`.
    id: [u8; SOCKID_LEN],
}

/// A `NETLINK_SOCK_DIAG` socket of the calling thread's network namespace.
pub struct DiagSocket(NetlinkSocket);

impl DiagSocket {
    /// Opens the socket.
    ///
    /// # Errors
    /// If the kernel refuses the socket or its options.
    pub fn open() -> Result<Self, SockDiagError> {
        Ok(Self(NetlinkSocket::open(
            libc::NETLINK_SOCK_DIAG,
            "opening a NETLINK_SOCK_DIAG socket",
        )?))
    }
}

impl std::ops::Deref for DiagSocket {
    type Target = NetlinkSocket;
    fn deref(&self) -> &NetlinkSocket {
        &self.0
    }
}

impl std::ops::DerefMut for DiagSocket {
    fn deref_mut(&mut self) -> &mut NetlinkSocket {
        &mut self.0
    }
}

impl From<NetlinkError> for SockDiagError {
    fn from(error: NetlinkError) -> Self {
        match error {
            NetlinkError::Io { doing, source } => SockDiagError::Io { doing, source },
            NetlinkError::Malformed { doing, detail } => SockDiagError::Malformed { doing, detail },
        }
    }
}

/// The connected UDP sockets of `family` (`AF_INET` or `AF_INET6`) in the socket's network
/// namespace.
///
/// # Errors
/// If the kernel refuses the dump or sends something that does not parse.
pub fn connected_udp(socket: &mut DiagSocket, family: u8) -> Result<Vec<UdpSock>, SockDiagError> {
    const DOING: &str = "dumping UDP sockets";
    let malformed = |detail| SockDiagError::Malformed {
        doing: DOING,
        detail,
    };
    let seq = socket.next_seq();
    let request = request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_DUMP,
        seq,
        family,
        1 << TCP_ESTABLISHED,
        &[0; SOCKID_LEN],
    );
    socket.send(&request, DOING)?;
    let mut found = Vec::new();
    loop {
        let len = socket.recv(DOING)?;
        for msg in messages(&socket.buf[..len]) {
            let msg = msg.map_err(malformed)?;
            if msg.seq != seq {
                continue;
            }
            match msg.kind {
                NLMSG_NOOP => {}
                NLMSG_DONE | NLMSG_ERROR => {
                    return match error_code(msg.payload).map_err(malformed)? {
                        0 => Ok(found),
                        errno => Err(SockDiagError::Refused {
                            doing: DOING,
                            source: io::Error::from_raw_os_error(errno),
                        }),
                    };
                }
                SOCK_DIAG_BY_FAMILY => found.push(parse_sock(msg.payload).map_err(malformed)?),
                _ => {}
            }
        }
    }
}

/// Terminates `sockets` (`SOCK_DESTROY`): each is aborted with `ECONNABORTED`. Returns how many
/// the kernel terminated; sockets that are gone meanwhile do not count and are no error.
///
/// # Errors
/// If the kernel refuses a termination for another reason than the socket being gone (the
/// others of its batch are still tried), or an answer does not parse.
pub fn destroy(socket: &mut DiagSocket, sockets: &[UdpSock]) -> Result<usize, SockDiagError> {
    const DOING: &str = "terminating UDP sockets";
    let malformed = |detail| SockDiagError::Malformed {
        doing: DOING,
        detail,
    };
    let mut destroyed = 0;
    let mut failure = None;
    for batch in sockets.chunks(DESTROY_BATCH) {
        let mut request_buf = Vec::new();
        let mut pending = Vec::with_capacity(batch.len());
        for sock in batch {
            let seq = socket.next_seq();
            request_buf.extend_from_slice(&request(
                SOCK_DESTROY,
                NLM_F_ACK,
                seq,
                sock.family,
                u32::MAX,
                &sock.id,
            ));
            pending.push(seq);
        }
        socket.send(&request_buf, DOING)?;
        // Every request is answered: read all answers of the batch before going on.
        while !pending.is_empty() {
            let len = socket.recv(DOING)?;
            for msg in messages(&socket.buf[..len]) {
                let msg = msg.map_err(malformed)?;
                if msg.kind != NLMSG_ERROR {
                    continue;
                }
                let Some(at) = pending.iter().position(|s| *s == msg.seq) else {
                    continue;
                };
                pending.swap_remove(at);
                match error_code(msg.payload).map_err(malformed)? {
                    0 => destroyed += 1,
                    libc::ENOENT => {}
                    errno => {
                        failure.get_or_insert(SockDiagError::Refused {
                            doing: DOING,
                            source: io::Error::from_raw_os_error(errno),
                        });
                    }
                }
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(destroyed),
    }
}

/// An `inet_diag_req_v2` message for UDP.
fn request(kind: u16, flags: u16, seq: u32, family: u8, states: u32, id: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&u32::try_from(len).expect("small").to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, IPPROTO_UDP, 0, 0]);
    buf.extend_from_slice(&states.to_ne_bytes());
    buf.extend_from_slice(id);
    buf
}

/// An `inet_diag_msg` and its attributes.
fn parse_sock(payload: &[u8]) -> Result<UdpSock, String> {
    let head = payload
        .get(..MSG_LEN)
        .ok_or_else(|| format!("{} bytes, less than an inet_diag_msg", payload.len()))?;
    let family = head[0];
    let id: [u8; SOCKID_LEN] = head[4..4 + SOCKID_LEN].try_into().expect("sized above");
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let address = |at: usize| -> Result<IpAddr, String> {
        let bytes: [u8; 16] = id[at..at + 16].try_into().expect("in the id");
        match family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes)).to_canonical()),
            other => Err(format!("a socket of address family {other}")),
        }
    };
    let local = SocketAddr::new(address(4)?, sport);
    let peer = SocketAddr::new(address(20)?, dport);
    let cookie_lo = u32::from_ne_bytes(id[40..44].try_into().expect("in the id"));
    let cookie_hi = u32::from_ne_bytes(id[44..48].try_into().expect("in the id"));
    let mut cgroup_id = None;
    for attr in attrs(payload.get(MSG_LEN..).unwrap_or(&[])) {
        let (kind, value) = attr?;
        if kind == INET_DIAG_CGROUP_ID {
            let value: [u8; 8] = value
                .try_into()
                .map_err(|_| format!("INET_DIAG_CGROUP_ID of {} bytes", value.len()))?;
            cgroup_id = Some(u64::from_ne_bytes(value));
        }
    }
    Ok(UdpSock {
        family,
        local,
        peer,
        cookie: u64::from(cookie_hi) << 32 | u64::from(cookie_lo),
        cgroup_id,
        id,
    })
}

/// The error code of an `NLMSG_ERROR` or `NLMSG_DONE` payload, as a positive errno (0: none).
fn error_code(payload: &[u8]) -> Result<i32, String> {
    let code = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("an error message of {} bytes", payload.len()))?;
    Ok(code.checked_neg().unwrap_or(i32::MAX))
}

struct Message<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of a datagram; after an error, nothing more.
fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<Message<'_>, String>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(header) = rest.get(..NLMSG_HDRLEN) else {
            let left = rest.len();
            rest = &[];
            return Some(Err(format!(
                "{left} bytes left, less than a message header"
            )));
        };
        let len = usize::try_from(u32::from_ne_bytes(header[0..4].try_into().expect("4")))
            .unwrap_or(usize::MAX);
        if len < NLMSG_HDRLEN || len > rest.len() {
            let left = rest.len();
            rest = &[];
            return Some(Err(format!("message length {len} with {left} bytes left")));
        }
        let msg = Message {
            kind: u16::from_ne_bytes([header[4], header[5]]),
            seq: u32::from_ne_bytes(header[8..12].try_into().expect("4")),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// The attributes in `buf`: (type without flags, payload); after an error, nothing more.
fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), String>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(header) = rest.get(..NLA_HDRLEN) else {
            let left = rest.len();
            rest = &[];
            return Some(Err(format!("{left} bytes left, less than an attribute")));
        };
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            let left = rest.len();
            rest = &[];
            return Some(Err(format!(
                "attribute {kind} of length {len} with {left} bytes left"
            )));
        }
        let value = &rest[NLA_HDRLEN..len];
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((kind, value)))
    })
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `inet_diag_msg` for an IPv6 socket `[::ffff:10.0.0.1]:4000` → `[::ffff:10.0.0.2]:53`
    /// with cookie `0x1_0000_0002` and cgroup 77, as the kernel lays it out.
    fn v6_mapped_message() -> Vec<u8> {
        let mut m = vec![AF_INET6, TCP_ESTABLISHED, 0, 0];
        m.extend_from_slice(&4000u16.to_be_bytes());
        m.extend_from_slice(&53u16.to_be_bytes());
        m.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets());
        m.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&2u32.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&[0; 20]);
        m.extend_from_slice(&12u16.to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        m.extend_from_slice(&77u64.to_ne_bytes());
        m
    }

    #[test]
    fn parses_a_socket_with_mapped_addresses_cookie_and_cgroup() {
        let sock = parse_sock(&v6_mapped_message()).expect("parses");
        assert_eq!(sock.family, AF_INET6);
        assert_eq!(sock.local, "10.0.0.1:4000".parse().unwrap());
        assert_eq!(sock.peer, "10.0.0.2:53".parse().unwrap());
        assert_eq!(sock.cookie, 0x1_0000_0002);
        assert_eq!(sock.cgroup_id, Some(77));
        // The destroy request carries the id exactly as received.
        let req = request(SOCK_DESTROY, NLM_F_ACK, 9, sock.family, u32::MAX, &sock.id);
        assert_eq!(req.len(), NLMSG_HDRLEN + REQ_LEN);
        assert_eq!(
            &req[NLMSG_HDRLEN + 8..],
            &v6_mapped_message()[4..4 + SOCKID_LEN]
        );
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let full = v6_mapped_message();
        for len in 0..full.len() {
            // Every prefix either parses (the attributes are optional) or is an error.
            let _ = parse_sock(&full[..len]);
        }
        assert!(parse_sock(&full[..MSG_LEN - 1]).is_err());
        assert!(messages(&[1, 2, 3]).next().expect("one").is_err());
    }
}
