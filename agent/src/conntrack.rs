//! Deleting kernel conntrack entries through ctnetlink (`NETLINK_NETFILTER`, subsystem
//! `NFNL_SUBSYS_CTNETLINK`), for the nftables data plane.
//!
//! When a UDP service loses an endpoint, the conntrack entries that DNAT clients to the removed
//! endpoint must go: UDP has no connection to reset, so a client that keeps its source port (a
//! resolver, a game client) would otherwise keep sending into the dead backend until the entry
//! times out, which it never does while the client keeps sending. kube-proxy does the same with
//! `conntrack -D -p udp --orig-dst SERVICE --orig-port-dst PORT --reply-src ENDPOINT ...`.
//!
//! [`delete_flows`] does it with raw netlink, on one socket of its own in the calling thread's
//! network namespace:
//!
//! 1. It dumps the table of the address family (`IPCTNL_MSG_CT_GET`, `NLM_F_DUMP`), asking the
//!    kernel (Linux 5.8 and later, `CTA_FILTER`) to send only the entries whose protocol and
//!    ports fit, and in IPv4 whose addresses fit too (`dump_request` says why not in IPv6);
//!    older kernels ignore the attribute and send every entry of the family.
//! 2. It matches every entry it receives in user space: protocol, original destination =
//!    frontend, reply source = backend. The kernel filter only saves copying; it decides nothing.
//! 3. It deletes each match (`IPCTNL_MSG_CT_DELETE` with the entry's original tuple, zone and id,
//!    `NLM_F_ACK`), a batch of requests per `sendto`. An entry that is already gone (`ENOENT`: it
//!    expired, or another deleter was faster) is not an error.
//!
//! Messages are plain netlink: a 16-byte `nlmsghdr` and a 4-byte `nfgenmsg` (family, version,
//! resource id) followed by attributes, each a 4-byte header (length, type with the
//! `NLA_F_NESTED` flag on nested ones) and a payload padded to 4 bytes. Headers are in host byte
//! order; ctnetlink's addresses, ports, zones and ids are in network byte order. The parser is
//! bounds-checked throughout: a malformed message is an error, never a panic.
//!
//! Not a snapshot: an entry created while the dump runs may be missed. Call this after the data
//! plane stopped sending new flows to the backend, as kube-proxy does.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::netlink::{NetlinkError, NetlinkSocket};

// Netlink (include/uapi/linux/netlink.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
/// On an `NLMSG_ERROR`: the request was not echoed, only its header (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// On an `NLMSG_ERROR` or `NLMSG_DONE`: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Extended ack: the kernel's error message, a NUL-terminated string.
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// nfnetlink (include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h).
const NFGENMSG_LEN: usize = 4;
const NFNETLINK_V0: u8 = 0;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

// enum ctattr_type.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
// enum ctattr_tuple.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_TUPLE_ZONE: u16 = 3;
// enum ctattr_ip.
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto.
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// enum ctattr_filter and its flags.
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const CTA_FILTER_FLAG_IP_SRC: u32 = 1 << 0;
const CTA_FILTER_FLAG_IP_DST: u32 = 1 << 1;
const CTA_FILTER_FLAG_PROTO_NUM: u32 = 1 << 3;
const CTA_FILTER_FLAG_PROTO_SRC_PORT: u32 = 1 << 4;
const CTA_FILTER_FLAG_PROTO_DST_PORT: u32 = 1 << 5;

/// `nfgen_family` values (`AF_INET`, `AF_INET6`).
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Delete requests sent in one `sendto` before their acks are read. The acks of a batch queue
/// up in the socket's receive buffer (about 1 KiB of buffer each), far below the default 208 KiB.
const DELETE_BATCH: usize = 64;

/// Why [`delete_flows`] failed. Kernel errors carry the errno (as an [`io::Error`]) and, when the
/// kernel gave one, its extended-ack message.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// One address is IPv4, the other IPv6.
    #[error(
        "conntrack: frontend {frontend} and backend {backend} are not of the same address family"
    )]
    FamilyMismatch {
        frontend: SocketAddr,
        backend: SocketAddr,
    },
    /// Neither TCP nor UDP.
    #[error("conntrack: protocol {0} is not supported (only 6 = TCP and 17 = UDP)")]
    UnsupportedProtocol(u8),
    /// A system call on the netlink socket failed.
    #[error("conntrack: {doing}: {source}")]
    Io {
        doing: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel answered the dump request with an error.
    #[error("conntrack: the kernel refused to dump the {family} conntrack table: {source}{}", kernel_says(.message.as_deref()))]
    Dump {
        family: &'static str,
        #[source]
        source: io::Error,
        /// The kernel's extended-ack message, if it gave one.
        message: Option<String>,
    },
    /// The kernel refused to delete an entry (other than because it is already gone); the
    /// entries before it, and the others of its batch, may be deleted.
    #[error("conntrack: the kernel refused to delete {entry} ({deleted} entries deleted so far): {source}{}", kernel_says(.message.as_deref()))]
    Delete {
        entry: String,
        deleted: usize,
        #[source]
        source: io::Error,
        message: Option<String>,
    },
    /// A message from the kernel did not parse.
    #[error("conntrack: malformed netlink message while {doing}: {detail}")]
    Malformed { doing: &'static str, detail: String },
}

fn kernel_says(message: Option<&str>) -> String {
    message.map(|m| format!(" ({m})")).unwrap_or_default()
}

/// Deletes the conntrack entries of `protocol` (17 = UDP; also accept 6 = TCP) whose original
/// direction goes to `frontend` (the service address and port the client used) and whose reply
/// comes from `backend` (the endpoint DNAT sent it to). Returns how many entries were deleted.
/// Runs in the calling thread's network namespace.
///
/// # Errors
/// If `frontend` and `backend` are of different address families, `protocol` is neither TCP
/// nor UDP, the netlink socket cannot be used (no `CAP_NET_ADMIN`: `EPERM`), the kernel
/// refuses the dump or a deletion, or a message from the kernel is malformed. Entries that are
/// already gone when they are deleted are not errors.
pub fn delete_flows(
    protocol: u8,
    frontend: SocketAddr,
    backend: SocketAddr,
) -> Result<usize, ConntrackError> {
    let selector = Selector::new(protocol, frontend, backend)?;
    let mut socket = open_socket()?;
    let matches: Vec<Entry> = dump(&mut socket, selector.family(), Some(&selector))?
        .into_iter()
        .filter(|entry| selector.matches(entry))
        .collect();
    let deleted = delete(&mut socket, selector.family(), &matches)?;
    tracing::debug!(
        protocol,
        %frontend,
        %backend,
        matched = matches.len(),
        deleted,
        "deleted conntrack entries"
    );
    Ok(deleted)
}

/// What [`delete_flows`] deletes.
#[derive(Clone, Copy, Debug)]
struct Selector {
    protocol: u8,
    frontend: SocketAddr,
    backend: SocketAddr,
}

impl Selector {
    fn new(
        protocol: u8,
        frontend: SocketAddr,
        backend: SocketAddr,
    ) -> Result<Self, ConntrackError> {
        if protocol != IPPROTO_UDP && protocol != IPPROTO_TCP {
            return Err(ConntrackError::UnsupportedProtocol(protocol));
        }
        if frontend.is_ipv4() != backend.is_ipv4() {
            return Err(ConntrackError::FamilyMismatch { frontend, backend });
        }
        Ok(Self {
            protocol,
            frontend,
            backend,
        })
    }

    fn family(&self) -> u8 {
        family_of(self.frontend.ip())
    }

    fn matches(&self, entry: &Entry) -> bool {
        let (orig, reply) = (&entry.orig, &entry.reply);
        orig.proto == self.protocol
            && reply.proto == self.protocol
            && orig.dst == self.frontend.ip()
            && orig.dst_port == Some(self.frontend.port())
            && reply.src == self.backend.ip()
            && reply.src_port == Some(self.backend.port())
    }
}

fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn family_name(family: u8) -> &'static str {
    if family == AF_INET { "IPv4" } else { "IPv6" }
}

/// One direction of a conntrack entry, as ctnetlink reports it (`CTA_TUPLE_ORIG` or
/// `CTA_TUPLE_REPLY`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tuple {
    src: IpAddr,
    dst: IpAddr,
    /// `CTA_PROTO_NUM`.
    proto: u8,
    /// Present for TCP, UDP, SCTP, DCCP, UDP-Lite; absent for ICMP and protocols without ports.
    src_port: Option<u16>,
    dst_port: Option<u16>,
    /// `CTA_TUPLE_ZONE`: the zone of this direction only, when the entry's zone is
    /// direction-specific.
    zone: Option<u16>,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.proto {
            IPPROTO_TCP => "tcp".to_owned(),
            IPPROTO_UDP => "udp".to_owned(),
            other => format!("protocol {other}"),
        };
        let end = |ip: IpAddr, port: Option<u16>| match port {
            Some(port) => SocketAddr::new(ip, port).to_string(),
            None => ip.to_string(),
        };
        write!(
            f,
            "{name} {} -> {}",
            end(self.src, self.src_port),
            end(self.dst, self.dst_port)
        )
    }
}

/// A conntrack entry: what it takes to find it again and delete exactly it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    orig: Tuple,
    reply: Tuple,
    /// `CTA_ZONE`: the entry's zone when it applies to both directions.
    zone: Option<u16>,
    /// `CTA_ID` (network byte order, as received): a delete that carries it only removes this
    /// very entry, never a newer one that reuses the tuple.
    id: Option<[u8; 4]>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reply_src = match self.reply.src_port {
            Some(port) => SocketAddr::new(self.reply.src, port).to_string(),
            None => self.reply.src.to_string(),
        };
        write!(f, "entry {} (reply from {reply_src}", self.orig)?;
        if let Some(zone) = self.zone.or(self.orig.zone) {
            write!(f, ", zone {zone}")?;
        }
        f.write_str(")")
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// A netlink request under construction: `nlmsghdr`, `nfgenmsg`, attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(ct_msg: u16, flags: u16, seq: u32, family: u8) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by `finish`
        buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ct_msg).to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        buf.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]); // res_id 0 (big endian)
        Self { buf }
    }

    fn put(&mut self, kind: u16, payload: &[u8]) {
        let len = u16::try_from(NLA_HDRLEN + payload.len()).expect("a small attribute");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        fill(self);
        let len = u16::try_from(self.buf.len() - start).expect("a small nest");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn pad(&mut self) {
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("a small message");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// `CTA_TUPLE_IP` with the addresses given.
fn put_tuple_ip(req: &mut Request, src: Option<IpAddr>, dst: Option<IpAddr>) {
    req.nest(CTA_TUPLE_IP, |req| {
        for (ip, v4, v6) in [
            (src, CTA_IP_V4_SRC, CTA_IP_V6_SRC),
            (dst, CTA_IP_V4_DST, CTA_IP_V6_DST),
        ] {
            match ip {
                Some(IpAddr::V4(ip)) => req.put(v4, &ip.octets()),
                Some(IpAddr::V6(ip)) => req.put(v6, &ip.octets()),
                None => {}
            }
        }
    });
}

/// `CTA_TUPLE_PROTO` with the protocol and the ports given.
fn put_tuple_proto(req: &mut Request, proto: u8, src_port: Option<u16>, dst_port: Option<u16>) {
    req.nest(CTA_TUPLE_PROTO, |req| {
        req.put(CTA_PROTO_NUM, &[proto]);
        if let Some(port) = src_port {
            req.put(CTA_PROTO_SRC_PORT, &port.to_be_bytes());
        }
        if let Some(port) = dst_port {
            req.put(CTA_PROTO_DST_PORT, &port.to_be_bytes());
        }
    });
}

/// The dump request for `family`; with a selector, it carries a kernel-side filter on what
/// the selector asks for.
///
/// The filter holds the protocol and ports in both families, and the addresses in IPv4 only:
/// the kernel's IPv6 address comparison in `ctnetlink_filter_match_tuple` is inverted
/// (`!ipv6_addr_cmp(..)`, and `ipv6_addr_cmp` is a `memcmp`), so it skips the entries whose
/// address equals the filter's and lets the others through. So it reads from Linux 5.8 to at
/// least 6.18; on 6.18 an IPv6 filter on the right addresses dumped none of the wanted
/// entries, one on other addresses dumped them.
fn dump_request(seq: u32, family: u8, selector: Option<&Selector>) -> Vec<u8> {
    let mut req = Request::new(IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, family);
    if let Some(sel) = selector {
        let v4 = family == AF_INET;
        let ip_flag = |flag| if v4 { flag } else { 0 };
        req.nest(CTA_TUPLE_ORIG, |req| {
            if v4 {
                put_tuple_ip(req, None, Some(sel.frontend.ip()));
            }
            put_tuple_proto(req, sel.protocol, None, Some(sel.frontend.port()));
        });
        req.nest(CTA_TUPLE_REPLY, |req| {
            if v4 {
                put_tuple_ip(req, Some(sel.backend.ip()), None);
            }
            put_tuple_proto(req, sel.protocol, Some(sel.backend.port()), None);
        });
        req.nest(CTA_FILTER, |req| {
            let orig = ip_flag(CTA_FILTER_FLAG_IP_DST)
                | CTA_FILTER_FLAG_PROTO_NUM
                | CTA_FILTER_FLAG_PROTO_DST_PORT;
            let reply = ip_flag(CTA_FILTER_FLAG_IP_SRC)
                | CTA_FILTER_FLAG_PROTO_NUM
                | CTA_FILTER_FLAG_PROTO_SRC_PORT;
            req.put(CTA_FILTER_ORIG_FLAGS, &orig.to_ne_bytes());
            req.put(CTA_FILTER_REPLY_FLAGS, &reply.to_ne_bytes());
        });
    }
    req.finish()
}

/// The request that deletes exactly `entry`: its original tuple (with the tuple's zone),
/// its zone and its id.
///
/// The original tuple is what makes this a single deletion: a `IPCTNL_MSG_CT_DELETE` without a
/// tuple flushes the whole table, so it is written unconditionally, first.
fn delete_request(seq: u32, family: u8, entry: &Entry) -> Vec<u8> {
    let mut req = Request::new(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, family);
    let orig = &entry.orig;
    req.nest(CTA_TUPLE_ORIG, |req| {
        put_tuple_ip(req, Some(orig.src), Some(orig.dst));
        put_tuple_proto(req, orig.proto, orig.src_port, orig.dst_port);
        if let Some(zone) = orig.zone {
            req.put(CTA_TUPLE_ZONE, &zone.to_be_bytes());
        }
    });
    if let Some(zone) = entry.zone {
        req.put(CTA_ZONE, &zone.to_be_bytes());
    }
    if let Some(id) = entry.id {
        req.put(CTA_ID, &id);
    }
    req.finish()
}

// ---------------------------------------------------------------------------------------------
// Parsing. Every function here takes bytes from the kernel and returns an error (a detail
// string, wrapped by the caller with what it was doing) rather than panicking.

/// One netlink message of a datagram.
#[derive(Debug)]
struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of a datagram; after an error, nothing more.
struct Messages<'a> {
    rest: &'a [u8],
}

fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages { rest: datagram }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = self.rest;
        let Some(header) = rest.get(..NLMSG_HDRLEN) else {
            self.rest = &[];
            return Some(Err(format!(
                "{} bytes left, less than a message header",
                rest.len()
            )));
        };
        let len = usize::try_from(u32_ne(&header[0..4])).unwrap_or(usize::MAX);
        if len < NLMSG_HDRLEN || len > rest.len() {
            self.rest = &[];
            return Some(Err(format!(
                "message length {len} with {} bytes left",
                rest.len()
            )));
        }
        // The last message of a datagram may lack its padding.
        self.rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(Message {
            kind: u16_ne(&header[4..6]),
            flags: u16_ne(&header[6..8]),
            seq: u32_ne(&header[8..12]),
            payload: &rest[NLMSG_HDRLEN..len],
        }))
    }
}

/// The attributes in `buf`: (type without flags, payload); after an error, nothing more.
struct Attrs<'a> {
    rest: &'a [u8],
}

fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = self.rest;
        let Some(header) = rest.get(..NLA_HDRLEN) else {
            self.rest = &[];
            return Some(Err(format!(
                "{} bytes left, less than an attribute header",
                rest.len()
            )));
        };
        let len = usize::from(u16_ne(&header[0..2]));
        let kind = u16_ne(&header[2..4]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            self.rest = &[];
            return Some(Err(format!(
                "attribute {kind} of length {len} with {} bytes left",
                rest.len()
            )));
        }
        self.rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((kind, &rest[NLA_HDRLEN..len])))
    }
}

fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// A fixed-size payload, or an error naming the attribute.
fn exact<const N: usize>(what: &str, payload: &[u8]) -> Result<[u8; N], String> {
    payload
        .try_into()
        .map_err(|_| format!("{what} has {} bytes, not {N}", payload.len()))
}

/// An `IPCTNL_MSG_CT_NEW` message of a dump (after the `nfgenmsg`).
fn parse_entry(payload: &[u8]) -> Result<Entry, String> {
    let attributes = payload
        .get(NFGENMSG_LEN..)
        .ok_or_else(|| format!("{} bytes, less than an nfgenmsg", payload.len()))?;
    let (mut orig, mut reply, mut zone, mut id) = (None, None, None, None);
    for attr in attrs(attributes) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_ORIG => {
                orig = Some(parse_tuple(value).map_err(|e| format!("original tuple: {e}"))?);
            }
            CTA_TUPLE_REPLY => {
                reply = Some(parse_tuple(value).map_err(|e| format!("reply tuple: {e}"))?);
            }
            CTA_ZONE => zone = Some(be16("CTA_ZONE", value)?),
            CTA_ID => id = Some(exact("CTA_ID", value)?),
            _ => {}
        }
    }
    Ok(Entry {
        orig: orig.ok_or("an entry without CTA_TUPLE_ORIG")?,
        reply: reply.ok_or("an entry without CTA_TUPLE_REPLY")?,
        zone,
        id,
    })
}

fn parse_tuple(buf: &[u8]) -> Result<Tuple, String> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut src_port, mut dst_port, mut zone) = (None, None, None);
    for attr in attrs(buf) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_IP => {
                for attr in attrs(value) {
                    let (kind, value) = attr?;
                    match kind {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(address(kind, value)?),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(address(kind, value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for attr in attrs(value) {
                    let (kind, value) = attr?;
                    match kind {
                        CTA_PROTO_NUM => proto = Some(exact::<1>("CTA_PROTO_NUM", value)?[0]),
                        CTA_PROTO_SRC_PORT => src_port = Some(be16("CTA_PROTO_SRC_PORT", value)?),
                        CTA_PROTO_DST_PORT => dst_port = Some(be16("CTA_PROTO_DST_PORT", value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => zone = Some(be16("CTA_TUPLE_ZONE", value)?),
            _ => {}
        }
    }
    let (Some(src), Some(dst)) = (src, dst) else {
        return Err("no source or destination address".to_owned());
    };
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(format!("addresses of two families: {src} and {dst}"));
    }
    Ok(Tuple {
        src,
        dst,
        proto: proto.ok_or("no CTA_PROTO_NUM")?,
        src_port,
        dst_port,
        zone,
    })
}

/// A `CTA_IP_V4_*` (4 bytes) or `CTA_IP_V6_*` (16 bytes) address.
fn address(kind: u16, value: &[u8]) -> Result<IpAddr, String> {
    if kind == CTA_IP_V4_SRC || kind == CTA_IP_V4_DST {
        exact::<4>("an IPv4 address", value).map(IpAddr::from)
    } else {
        exact::<16>("an IPv6 address", value).map(IpAddr::from)
    }
}

/// A port or zone: 2 bytes, network byte order.
fn be16(what: &str, value: &[u8]) -> Result<u16, String> {
    exact(what, value).map(u16::from_be_bytes)
}

/// The error an `NLMSG_ERROR` or `NLMSG_DONE` carries: `None` for 0 (an ack, a clean end),
/// else the errno and the kernel's extended-ack message if there is one.
fn parse_error(msg: &Message<'_>) -> Result<Option<(io::Error, Option<String>)>, String> {
    let code = msg
        .payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("an error message of {} bytes", msg.payload.len()))?;
    if code == 0 {
        return Ok(None);
    }
    let errno = code.checked_neg().unwrap_or(i32::MAX);
    Ok(Some((
        io::Error::from_raw_os_error(errno),
        ext_ack_message(msg),
    )))
}

/// The `NLMSGERR_ATTR_MSG` of an error, if the kernel sent extended-ack attributes. Best
/// effort: an unreadable message is left out, the errno is what counts.
fn ext_ack_message(msg: &Message<'_>) -> Option<String> {
    if msg.flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let tlvs = if msg.kind == NLMSG_DONE {
        msg.payload.get(4..)?
    } else {
        // `struct nlmsgerr`: the error, then the request's header, then (unless capped) the
        // rest of the request.
        let echoed = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            let len = msg.payload.get(4..8).map(u32_ne)?;
            align4(usize::try_from(len).ok()?)
        };
        msg.payload.get(4 + echoed..)?
    };
    attrs(tlvs).find_map(|attr| match attr {
        Ok((NLMSGERR_ATTR_MSG, text)) => {
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            Some(String::from_utf8_lossy(text).into_owned())
        }
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------------
// The socket and the two exchanges.

/// The ctnetlink socket.
type Socket = NetlinkSocket;

fn open_socket() -> Result<Socket, ConntrackError> {
    Ok(Socket::open(
        libc::NETLINK_NETFILTER,
        "opening a NETLINK_NETFILTER socket",
    )?)
}

impl From<NetlinkError> for ConntrackError {
    fn from(error: NetlinkError) -> Self {
        match error {
            NetlinkError::Io { doing, source } => ConntrackError::Io { doing, source },
            NetlinkError::Malformed { doing, detail } => {
                ConntrackError::Malformed { doing, detail }
            }
        }
    }
}

/// The entries of `family`'s table (those the kernel's filter lets through, with a selector).
fn dump(
    socket: &mut Socket,
    family: u8,
    selector: Option<&Selector>,
) -> Result<Vec<Entry>, ConntrackError> {
    const DOING: &str = "dumping the conntrack table";
    let malformed = |detail| ConntrackError::Malformed {
        doing: DOING,
        detail,
    };
    let seq = socket.next_seq();
    socket.send(&dump_request(seq, family, selector), DOING)?;
    let mut entries = Vec::new();
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
                    if let Some((source, message)) = parse_error(&msg).map_err(malformed)? {
                        return Err(ConntrackError::Dump {
                            family: family_name(family),
                            source,
                            message,
                        });
                    }
                    // An ack (`NLMSG_ERROR` 0) would not end a dump, but nothing follows it.
                    return Ok(entries);
                }
                kind if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                    entries.push(parse_entry(msg.payload).map_err(malformed)?);
                }
                _ => {}
            }
        }
    }
}

/// Deletes `entries`, [`DELETE_BATCH`] requests per `sendto`; returns how many the kernel
/// deleted (the ones already gone do not count).
fn delete(socket: &mut Socket, family: u8, entries: &[Entry]) -> Result<usize, ConntrackError> {
    const DOING: &str = "deleting conntrack entries";
    let malformed = |detail| ConntrackError::Malformed {
        doing: DOING,
        detail,
    };
    let mut deleted = 0;
    for batch in entries.chunks(DELETE_BATCH) {
        let mut request = Vec::new();
        let mut pending: Vec<(u32, &Entry)> = Vec::with_capacity(batch.len());
        for entry in batch {
            let seq = socket.next_seq();
            request.extend_from_slice(&delete_request(seq, family, entry));
            pending.push((seq, entry));
        }
        socket.send(&request, DOING)?;
        // Every request of the batch is answered (the kernel processes them all, failed or
        // not); read all answers before reporting a failure, so none is left unread.
        let mut failure = None;
        while !pending.is_empty() {
            let len = socket.recv(DOING)?;
            for msg in messages(&socket.buf[..len]) {
                let msg = msg.map_err(malformed)?;
                if msg.kind != NLMSG_ERROR {
                    continue;
                }
                let Some(at) = pending.iter().position(|(seq, _)| *seq == msg.seq) else {
                    continue;
                };
                let (_, entry) = pending.swap_remove(at);
                match parse_error(&msg).map_err(malformed)? {
                    None => deleted += 1,
                    Some((err, _)) if err.raw_os_error() == Some(libc::ENOENT) => {
                        tracing::trace!(%entry, "conntrack entry already gone");
                    }
                    Some((source, message)) => {
                        failure.get_or_insert((entry, source, message));
                    }
                }
            }
        }
        if let Some((entry, source, message)) = failure {
            return Err(ConntrackError::Delete {
                entry: entry.to_string(),
                deleted,
                source,
                message,
            });
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests;
