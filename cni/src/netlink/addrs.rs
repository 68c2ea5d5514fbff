//! Addresses of a link: adding (once), listing, removing.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};

use super::{Netlink, NetlinkError, family};
use crate::net::Cidr;

impl Netlink {
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
}
