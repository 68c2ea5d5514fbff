//! The forwarding entries of a VXLAN device (`bridge fdb ... self permanent`): which VTEP
//! frames for a MAC go to.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::neigh::neighbour_address;
use super::{Netlink, NetlinkError, format_mac};

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

impl Netlink {
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
