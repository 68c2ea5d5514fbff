//! The transport flow of a packet: its addresses, protocol and ports, and where its L4 header
//! starts. Only what the NodePort programs translate is parsed: TCP and UDP over IPv4 (not
//! fragmented) and over IPv6 without extension headers; anything else is not a flow to them.

use gannet_common::{PROTO_TCP, PROTO_UDP, v4_mapped};

use crate::packet::{Data, ETH_HLEN, L3};

/// IPv4: the "more fragments" bit and the fragment offset.
const IPV4_FRAG_MASK: u16 = 0x3fff;
const IPV6_HLEN: usize = 40;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS: usize = 13;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy)]
pub(crate) struct Flow {
    pub(crate) l3: L3,
    /// Offset of the TCP or UDP header.
    pub(crate) l4: usize,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub(crate) proto: u8,
    /// Addresses, network order, IPv4 as `::ffff:a.b.c.d`.
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
    /// Ports, network order (as they lie in the packet).
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// TCP flags (0 for UDP).
    pub(crate) tcp_flags: u8,
}

impl Flow {
    /// Offset of the L4 checksum.
    #[inline(always)]
    pub(crate) fn csum_offset(&self) -> usize {
        self.l4 + if self.proto == PROTO_TCP { 16 } else { 6 }
    }
}

/// Parses the flow of a TCP or UDP packet gannet can translate into `out` (field by field:
/// the caller's copy lives in per-CPU memory, and a `Flow` on the stack costs what the NodePort
/// call chain cannot spare); `false` for any other packet.
#[inline(always)]
pub(crate) fn parse_into(data: Data, out: &mut Flow) -> bool {
    let Some(l3) = data.l3() else {
        return false;
    };
    // SAFETY (all reads below): `at` checked that the bytes lie within the packet.
    let l4 = match l3 {
        L3::V4 => {
            let Some(header) = data.at::<[u8; 20]>(ETH_HLEN) else {
                return false;
            };
            let h = unsafe { &*header };
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if ihl < 20 || u16::from_be_bytes([h[6], h[7]]) & IPV4_FRAG_MASK != 0 {
                return false;
            }
            out.proto = h[9];
            out.saddr = v4_mapped([h[12], h[13], h[14], h[15]]);
            out.daddr = v4_mapped([h[16], h[17], h[18], h[19]]);
            ETH_HLEN + ihl
        }
        L3::V6 => {
            let Some(header) = data.at::<[u8; 40]>(ETH_HLEN) else {
                return false;
            };
            let h = unsafe { &*header };
            out.proto = h[6];
            let mut i = 0;
            while i < 16 {
                out.saddr[i] = h[8 + i];
                out.daddr[i] = h[24 + i];
                i += 1;
            }
            ETH_HLEN + IPV6_HLEN
        }
    };
    if out.proto != PROTO_TCP && out.proto != PROTO_UDP {
        return false;
    }
    let Some(header) = data.at::<[u8; 14]>(l4) else {
        // Too short for a TCP header; a UDP header is 8 bytes.
        let Some(udp) = data.at::<[u16; 2]>(l4) else {
            return false;
        };
        if out.proto == PROTO_TCP {
            return false;
        }
        let ports = unsafe { *udp };
        out.sport = ports[0];
        out.dport = ports[1];
        out.tcp_flags = 0;
        out.l3 = l3;
        out.l4 = l4;
        return true;
    };
    let h = unsafe { &*header };
    out.sport = u16::from_ne_bytes([h[0], h[1]]);
    out.dport = u16::from_ne_bytes([h[2], h[3]]);
    out.tcp_flags = if out.proto == PROTO_TCP {
        h[TCP_FLAGS]
    } else {
        0
    };
    out.l3 = l3;
    out.l4 = l4;
    true
}
