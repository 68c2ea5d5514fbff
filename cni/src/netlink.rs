//! A small synchronous rtnetlink client: one request at a time on a blocking `NETLINK_ROUTE`
//! socket, which belongs to the network namespace it was created in.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::net::Cidr;

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

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

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Hardware address.
    pub mac: Vec<u8>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// `IFLA_INFO_KIND` (`veth`, ...).
    pub kind: Option<String>,
    /// `IFLA_IFALIAS`.
    pub alias: Option<String>,
    /// `IFLA_LINK`: a veth's peer (its index in the peer's namespace).
    pub peer_index: Option<u32>,
}

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: Cidr,
    /// Gateway.
    pub gw: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Table.
    pub table: u32,
}

/// A neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Address.
    pub ip: IpAddr,
    /// Link-layer address.
    pub mac: Vec<u8>,
    /// `NUD_PERMANENT`.
    pub permanent: bool,
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

    /// The link called `name`, if it exists.
    ///
    /// # Errors
    /// If the request fails for another reason than the link's absence.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        match self.exchange(
            &format!("looking up link {name}"),
            RouteNetlinkMessage::GetLink(message),
            0,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(&link)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    ///
    /// # Errors
    /// If the dump fails.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self.exchange(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(&link)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair: `name` here, `peer_name` directly inside `peer_netns`, both with `mtu`,
    /// the peer with `peer_mac` if given.
    ///
    /// # Errors
    /// If the kernel refuses (for example `EEXIST` when a name is taken).
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_netns: &File,
        mtu: u32,
        peer_mac: Option<&[u8]>,
    ) -> Result<(), NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_owned()));
        if let Some(mac) = peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        peer.attributes.push(LinkAttribute::Mtu(mtu));
        peer.attributes
            .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        message.attributes.push(LinkAttribute::Mtu(mtu));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.exchange(
            &format!("creating veth pair {name} / {peer_name}"),
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Sets link `index` up and, if given, its alias.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn set_up(&mut self, index: u32, alias: Option<&str>) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        if let Some(alias) = alias {
            message
                .attributes
                .push(LinkAttribute::IfAlias(alias.to_owned()));
        }
        self.exchange(
            &format!("setting link {index} up"),
            RouteNetlinkMessage::SetLink(message),
            0,
        )
        .map(drop)
    }

    /// Sets link `index` down; returns whether it existed.
    ///
    /// # Errors
    /// If the kernel refuses for another reason than the link's absence.
    pub fn set_down(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.change_mask = LinkFlags::Up;
        match self.exchange(
            &format!("setting link {index} down"),
            RouteNetlinkMessage::SetLink(message),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renames link `index` (the kernel wants it down); returns whether it existed.
    ///
    /// # Errors
    /// If the kernel refuses for another reason than the link's absence (`EEXIST`: the name is
    /// taken).
    pub fn rename(&mut self, index: u32, name: &str) -> Result<bool, NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        match self.exchange(
            &format!("renaming link {index} to {name}"),
            RouteNetlinkMessage::SetLink(message),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes link `index`; returns whether it existed.
    ///
    /// # Errors
    /// If the kernel refuses for another reason than the link's absence.
    pub fn delete_link(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        match self.exchange(
            &format!("deleting link {index}"),
            RouteNetlinkMessage::DelLink(message),
            0,
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `cidr` to link `index` (IPv6 without duplicate address detection).
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn add_address(&mut self, index: u32, cidr: Cidr) -> Result<(), NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.family = family(cidr.addr());
        message.header.prefix_len = cidr.prefix();
        message.header.index = index;
        message.header.scope = AddressScope::Universe;
        message
            .attributes
            .push(AddressAttribute::Local(cidr.addr()));
        message
            .attributes
            .push(AddressAttribute::Address(cidr.addr()));
        if !cidr.is_ipv4() {
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.exchange(
            &format!("adding address {cidr} to link {index}"),
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// The addresses of link `index` (global and link-local).
    ///
    /// # Errors
    /// If the dump fails.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Cidr>, NetlinkError> {
        let replies = self.exchange(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let addr = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let addr = addr.or_else(|| {
                        a.attributes.iter().find_map(|attr| match attr {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    Cidr::new(addr, a.header.prefix_len)
                }
                _ => None,
            })
            .collect())
    }

    /// Adds a route to `dst` in the main table: via `gw` if given, out of link `oif`; scope link
    /// when there is no gateway.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn add_route(
        &mut self,
        dst: Cidr,
        gw: Option<IpAddr>,
        oif: u32,
    ) -> Result<(), NetlinkError> {
        let mut message = RouteMessage::default();
        message.header.address_family = family(dst.addr());
        message.header.destination_prefix_length = dst.prefix();
        message.header.table = RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = if gw.is_none() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        message.header.kind = RouteType::Unicast;
        if dst.prefix() > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    dst.network(),
                )));
        }
        if let Some(gw) = gw {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        message.attributes.push(RouteAttribute::Oif(oif));
        let what = match gw {
            Some(gw) => format!("adding route {dst} via {gw} dev {oif}"),
            None => format!("adding route {dst} dev {oif}"),
        };
        self.exchange(
            &what,
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// The routes of one family (all tables).
    ///
    /// # Errors
    /// If the dump fails.
    pub fn routes(&mut self, ipv4: bool) -> Result<Vec<RouteEntry>, NetlinkError> {
        let mut request = RouteMessage::default();
        request.header.address_family = if ipv4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let replies = self.exchange(
            "listing routes",
            RouteNetlinkMessage::GetRoute(request),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(&r, ipv4),
                _ => None,
            })
            .collect())
    }

    /// Adds a permanent neighbour entry `ip` → `mac` on link `index`.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn add_neighbour(
        &mut self,
        index: u32,
        ip: IpAddr,
        mac: &[u8],
    ) -> Result<(), NetlinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(ip);
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.kind = RouteType::Unicast;
        message
            .attributes
            .push(NeighbourAttribute::Destination(match ip {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.exchange(
            &format!(
                "adding neighbour {ip} lladdr {} on link {index}",
                format_mac(mac)
            ),
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// The neighbour entries on link `index`.
    ///
    /// # Errors
    /// If the dump fails.
    pub fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        let replies = self.exchange(
            "listing neighbours",
            RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => {
                    let ip = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                            Some(IpAddr::V4(*v4))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                            Some(IpAddr::V6(*v6))
                        }
                        _ => None,
                    })?;
                    let mac = n
                        .attributes
                        .iter()
                        .find_map(|a| match a {
                            NeighbourAttribute::LinkLayerAddress(mac) => Some(mac.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    Some(Neighbour {
                        ip,
                        mac,
                        permanent: n.header.state == NeighbourState::Permanent,
                    })
                }
                _ => None,
            })
            .collect())
    }
}

/// The bytes of an `RTM_DELLINK` request for the link called `name` (with an ACK requested), for
/// a process that must not allocate to send it (see [`crate::reaper`]).
#[must_use]
pub fn delete_link_request(name: &str) -> Vec<u8> {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::DelLink(message)),
    );
    packet.finalize();
    let mut buf = vec![0_u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn parse_link(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: Vec::new(),
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        kind: None,
        alias: None,
        peer_index: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Address(mac) => link.mac.clone_from(mac),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
            LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_route(message: &RouteMessage, ipv4: bool) -> Option<RouteEntry> {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    let mut table = u32::from(message.header.table);
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(addr) => dst = route_ip(addr),
            RouteAttribute::Gateway(addr) => gw = route_ip(addr),
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let unspecified = if ipv4 {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    };
    let dst = Cidr::new(
        dst.unwrap_or(unspecified),
        message.header.destination_prefix_length,
    )?;
    Some(RouteEntry {
        dst,
        gw,
        oif,
        table,
    })
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
