//! Links: looking them up, veth pairs and VXLAN devices, up/down, `NOARP`, names, MTU, deletion.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use super::{Netlink, NetlinkError};

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

impl Netlink {
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
