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
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
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
    /// A VXLAN device's settings.
    pub vxlan: Option<Vxlan>,
}

/// A VXLAN device's settings, as created by [`Netlink::create_vxlan`] and reported back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vxlan {
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Source address of the encapsulated packets; `None` for a `collect_md` device.
    pub local: Option<IpAddr>,
    /// The underlay device (`dev`), by index.
    pub underlay: Option<u32>,
    /// `external`: the tunnel endpoint comes with each packet (`bpf_skb_set_tunnel_key`).
    pub collect_metadata: bool,
}

/// As `ip -d link` shows them: `vxlan id 1 dstport 8472 local 10.0.0.1 dev 2`.
impl std::fmt::Display for Vxlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vxlan id {} dstport {}", self.vni, self.port)?;
        if let Some(local) = self.local {
            write!(f, " local {local}")?;
        }
        if let Some(dev) = self.underlay {
            write!(f, " dev {dev}")?;
        }
        if self.collect_metadata {
            f.write_str(" external")?;
        }
        Ok(())
    }
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
    /// `RTM_PROTOCOL`: who installed the route.
    pub protocol: u8,
    /// `RTNH_F_ONLINK`.
    pub onlink: bool,
}

/// A VXLAN forwarding entry: frames for `mac` are sent to the VTEP at `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// Link-layer address of the remote VTEP.
    pub mac: Vec<u8>,
    /// Underlay address of the remote VTEP.
    pub dst: Option<IpAddr>,
    /// `NUD_PERMANENT`.
    pub permanent: bool,
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

    /// Sets or clears `NOARP` on link `index`: without neighbour resolution the kernel addresses
    /// frames on it to the link's own MAC (for devices whose frames a program readdresses).
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn set_noarp(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        if on {
            message.header.flags = LinkFlags::Noarp;
        }
        message.header.change_mask = LinkFlags::Noarp;
        self.exchange(
            &format!(
                "setting NOARP {} on link {index}",
                if on { "on" } else { "off" }
            ),
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
        self.exchange_if_present(
            &format!("setting link {index} down"),
            RouteNetlinkMessage::SetLink(message),
            &[libc::ENODEV],
        )
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
        self.exchange_if_present(
            &format!("renaming link {index} to {name}"),
            RouteNetlinkMessage::SetLink(message),
            &[libc::ENODEV],
        )
    }

    /// Deletes link `index`; returns whether it existed.
    ///
    /// # Errors
    /// If the kernel refuses for another reason than the link's absence.
    pub fn delete_link(&mut self, index: u32) -> Result<bool, NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.exchange_if_present(
            &format!("deleting link {index}"),
            RouteNetlinkMessage::DelLink(message),
            &[libc::ENODEV],
        )
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
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
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

    /// Creates a VXLAN device `name` (learning off: forwarding entries come from the agent only).
    /// With `settings.collect_metadata` the device is `external`: no VNI, local address or
    /// underlay of its own, the endpoint comes with each packet.
    ///
    /// # Errors
    /// If the kernel refuses (for example `EEXIST` when the name or the VNI and port are taken).
    pub fn create_vxlan(
        &mut self,
        name: &str,
        settings: &Vxlan,
        mtu: u32,
        mac: &[u8],
    ) -> Result<(), NetlinkError> {
        let mut data = vec![InfoVxlan::Port(settings.port), InfoVxlan::Learning(false)];
        if settings.collect_metadata {
            data.push(InfoVxlan::CollectMetadata(true));
        } else {
            data.push(InfoVxlan::Id(settings.vni));
            match settings.local {
                Some(IpAddr::V4(ip)) => data.push(InfoVxlan::Local(ip)),
                Some(IpAddr::V6(ip)) => data.push(InfoVxlan::Local6(ip)),
                None => {}
            }
            if let Some(underlay) = settings.underlay {
                data.push(InfoVxlan::Link(underlay));
            }
        }
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        message.attributes.push(LinkAttribute::Mtu(mtu));
        message
            .attributes
            .push(LinkAttribute::Address(mac.to_vec()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.exchange(
            &format!(
                "creating VXLAN device {name} (VNI {}, port {})",
                settings.vni, settings.port
            ),
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Sets the MTU of link `index`.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::Mtu(mtu));
        self.exchange(
            &format!("setting the MTU of link {index} to {mtu}"),
            RouteNetlinkMessage::SetLink(message),
            0,
        )
        .map(drop)
    }

    /// Adds `cidr` to link `index` unless the link has it already.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn ensure_address(&mut self, index: u32, cidr: Cidr) -> Result<(), NetlinkError> {
        match self.add_address(index, cidr) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Removes `cidr` from link `index`; returns whether it was there.
    ///
    /// # Errors
    /// If the kernel refuses for another reason than the address's absence.
    pub fn delete_address(&mut self, index: u32, cidr: Cidr) -> Result<bool, NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.family = family(cidr.addr());
        message.header.prefix_len = cidr.prefix();
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(cidr.addr()));
        self.exchange_if_present(
            &format!("removing address {cidr} from link {index}"),
            RouteNetlinkMessage::DelAddress(message),
            &[libc::EADDRNOTAVAIL, libc::ENODEV],
        )
    }

    /// Adds or replaces the route to `dst` in the main table: via `gw` (on-link when `onlink`,
    /// i.e. without a route to the gateway) out of link `oif`, marked as installed by `protocol`.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn replace_route(
        &mut self,
        dst: Cidr,
        gw: IpAddr,
        oif: u32,
        onlink: bool,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        let mut message = route_message(dst, protocol);
        message.header.scope = RouteScope::Universe;
        if onlink {
            message.header.flags = RouteFlags::Onlink;
        }
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        message.attributes.push(RouteAttribute::Oif(oif));
        let onlink = if onlink { " onlink" } else { "" };
        self.exchange(
            &format!("replacing route {dst} via {gw} dev {oif}{onlink}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Adds or replaces the route to `dst` in the main table straight out of link `oif` (scope
    /// link, no gateway), marked as installed by `protocol`.
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn replace_device_route(
        &mut self,
        dst: Cidr,
        oif: u32,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        let mut message = route_message(dst, protocol);
        message.header.scope = RouteScope::Link;
        message.attributes.push(RouteAttribute::Oif(oif));
        self.exchange(
            &format!("replacing route {dst} dev {oif}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Deletes the route to `dst` of the main table installed by `protocol`; returns whether it
    /// was there.
    ///
    /// # Errors
    /// If the kernel refuses for another reason than the route's absence.
    pub fn delete_route(&mut self, dst: Cidr, protocol: u8) -> Result<bool, NetlinkError> {
        let message = route_message(dst, protocol);
        self.exchange_if_present(
            &format!("deleting route {dst}"),
            RouteNetlinkMessage::DelRoute(message),
            &[libc::ESRCH, libc::ENOENT],
        )
    }

    /// Deletes the neighbour entry `ip` on link `index`; returns whether it was there.
    ///
    /// # Errors
    /// If the kernel refuses for another reason than the entry's absence.
    pub fn delete_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<bool, NetlinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(ip);
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        self.exchange_if_present(
            &format!("deleting neighbour {ip} on link {index}"),
            RouteNetlinkMessage::DelNeighbour(message),
            &[libc::ENOENT, libc::ENODEV],
        )
    }

    fn fdb_message(index: u32, mac: &[u8], dst: IpAddr) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        message
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(dst)));
        message
    }

    /// Adds or replaces the permanent forwarding entry `mac` → `dst` of VXLAN device `index`
    /// (`bridge fdb replace MAC dev DEV dst DST self permanent`).
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn replace_fdb(&mut self, index: u32, mac: &[u8], dst: IpAddr) -> Result<(), NetlinkError> {
        self.exchange(
            &format!(
                "replacing fdb entry {} dst {dst} on link {index}",
                format_mac(mac)
            ),
            RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, mac, dst)),
            NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Deletes the forwarding entry `mac` → `dst` of VXLAN device `index`; returns whether it was
    /// there.
    ///
    /// # Errors
    /// If the kernel refuses for another reason than the entry's absence.
    pub fn delete_fdb(
        &mut self,
        index: u32,
        mac: &[u8],
        dst: IpAddr,
    ) -> Result<bool, NetlinkError> {
        self.exchange_if_present(
            &format!(
                "deleting fdb entry {} dst {dst} on link {index}",
                format_mac(mac)
            ),
            RouteNetlinkMessage::DelNeighbour(Self::fdb_message(index, mac, dst)),
            &[libc::ENOENT, libc::ENODEV],
        )
    }

    /// The forwarding entries of VXLAN device `index` that have a destination.
    ///
    /// # Errors
    /// If the dump fails.
    pub fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Bridge;
        let replies = self.exchange(
            "listing fdb entries",
            RouteNetlinkMessage::GetNeighbour(request),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => {
                    let mut entry = FdbEntry {
                        mac: Vec::new(),
                        dst: None,
                        permanent: n.header.state == NeighbourState::Permanent,
                    };
                    for attribute in &n.attributes {
                        match attribute {
                            NeighbourAttribute::LinkLayerAddress(mac) => entry.mac.clone_from(mac),
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                                entry.dst = Some(IpAddr::V4(*v4));
                            }
                            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                                entry.dst = Some(IpAddr::V6(*v6));
                            }
                            // AF_BRIDGE entries carry the VTEP's address as raw bytes.
                            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                                entry.dst = match bytes.len() {
                                    4 => {
                                        <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from)
                                    }
                                    16 => <[u8; 16]>::try_from(bytes.as_slice())
                                        .ok()
                                        .map(IpAddr::from),
                                    _ => None,
                                };
                            }
                            _ => {}
                        }
                    }
                    entry.dst.is_some().then_some(entry)
                }
                _ => None,
            })
            .collect())
    }
}

fn route_message(dst: Cidr, protocol: u8) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = family(dst.addr());
    message.header.destination_prefix_length = dst.prefix();
    message.header.table = RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::from(protocol);
    message.header.kind = RouteType::Unicast;
    if dst.prefix() > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                dst.network(),
            )));
    }
    message
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
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
        vxlan: None,
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
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(attributes)) => {
                            link.vxlan = Some(parse_vxlan(attributes));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(attributes: &[InfoVxlan]) -> Vxlan {
    let mut vxlan = Vxlan::default();
    for attribute in attributes {
        match attribute {
            InfoVxlan::Id(vni) => vxlan.vni = *vni,
            InfoVxlan::Port(port) => vxlan.port = *port,
            InfoVxlan::Local(ip) => vxlan.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => vxlan.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(index) => vxlan.underlay = Some(*index),
            InfoVxlan::CollectMetadata(on) => vxlan.collect_metadata = *on,
            _ => {}
        }
    }
    vxlan
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
        protocol: u8::from(message.header.protocol),
        onlink: message.header.flags.contains(RouteFlags::Onlink),
    })
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
