//! A small synchronous rtnetlink client: one request at a time on a blocking `NETLINK_ROUTE`
//! socket, which belongs to the network namespace it was created in.
//!
//! The socket and its request machinery are here; the requests are by object: `links`
//! (veths, VXLAN devices), `addrs`, `routes`, `neigh` (neighbours) and `fdb` (VXLAN
//! forwarding entries).

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

mod addrs;
mod fdb;
mod links;
mod neigh;
mod routes;

pub use fdb::FdbEntry;
pub use links::{Link, Vxlan, delete_link_request};
pub use neigh::Neighbour;
pub use routes::RouteEntry;

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {op}: {source}")]
pub struct NetlinkError {
    op: String,
    #[source]
    source: io::Error,
}

impl NetlinkError {
    fn new(op: impl Into<String>, source: io::Error) -> NetlinkError {
        NetlinkError {
            op: op.into(),
            source,
        }
    }

    /// The kernel's errno, if the kernel refused the request.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A `NETLINK_ROUTE` socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netlink(fd {})", self.socket.as_raw_fd())
    }
}

/// Formats a MAC address as `aa:bb:...`.
#[must_use]
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    ///
    /// # Errors
    /// If the socket cannot be created or bound.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| NetlinkError::new("creating a socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| NetlinkError::new("binding the socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NetlinkError::new("connecting the socket", e))?;
        // Extended acks make the kernel explain some refusals; not essential.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends `message` and collects the replies until the ACK (or, for dumps, `NLMSG_DONE`).
    fn exchange(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0_u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| NetlinkError::new(op, e))?;
        let mut replies = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| NetlinkError::new(op, e))?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| {
                        NetlinkError::new(
                            op,
                            io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                        )
                    })?;
                let length = reply.header.length as usize;
                offset += length.div_ceil(4) * 4;
                if length == 0 {
                    break;
                }
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(replies),
                            Some(code) => Err(NetlinkError::new(
                                op,
                                io::Error::from_raw_os_error(-code.get()),
                            )),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request about something that may not exist: `Ok(false)` when the kernel answers
    /// with one of the `absent` errnos, `Ok(true)` when it did the request.
    fn exchange_if_present(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        absent: &[i32],
    ) -> Result<bool, NetlinkError> {
        match self.exchange(op, message, 0) {
            Ok(_) => Ok(true),
            Err(e) if e.errno().is_some_and(|errno| absent.contains(&errno)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}
