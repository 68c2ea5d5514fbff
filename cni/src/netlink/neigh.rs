//! Neighbour entries of a link: permanent entries added, listed, deleted.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;

use super::{Netlink, NetlinkError, family, format_mac};

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

impl Netlink {
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
}

pub(super) fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}
