//! Routes of the main table: adding, replacing (via a gateway or straight out of a link),
//! deleting by protocol, listing.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Netlink, NetlinkError, family};
use crate::net::Cidr;

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

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

impl Netlink {
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
