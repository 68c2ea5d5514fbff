//! The transport flow of a packet: its addresses, protocol and ports, and where its L4 header
//! starts. Only what the NodePort programs translate is parsed: TCP and UDP over IPv4 (not
//! fragmented) and over IPv6 without extension headers; anything else is not a flow to them.

use gannet_common::{PROTO_TCP, PROTO_UDP};

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

/// The addresses come first, 8-byte aligned: [`parse_into`] writes them a word at a time.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct Flow {
    /// Addresses, network order, IPv4 as `::ffff:a.b.c.d`.
    pub(crate) saddr: [u8; 16],
    pub(crate) daddr: [u8; 16],
    /// Offset of the TCP or UDP header.
    pub(crate) l4: usize,
    /// Ports, network order (as they lie in the packet).
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) l3: L3,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub(crate) proto: u8,
    /// TCP flags (0 for UDP).
    pub(crate) tcp_flags: u8,
}

const _: () = assert!(
    core::mem::offset_of!(Flow, saddr) == 0 && core::mem::offset_of!(Flow, daddr) == 16,
    "the addresses are written as four words from the start of the flow"
);

impl Flow {
    /// Offset of the L4 checksum.
    #[inline(always)]
    pub(crate) fn csum_offset(&self) -> usize {
        self.l4 + if self.proto == PROTO_TCP { 16 } else { 6 }
    }
}

/// Writes IPv4 addresses `s` and `d` as `::ffff:a.b.c.d` into the flow's addresses, a word at
/// a time. (`gannet_common::v4_mapped` zero-fills ten bytes, which LLVM makes a `memset`, a call
/// to a one-byte-at-a-time loop in BPF: see `packet::zero`.)
#[inline(always)]
fn v4_mapped_into(out: &mut Flow, s: [u8; 4], d: [u8; 4]) {
    let mapped = |a: [u8; 4]| u64::from_ne_bytes([0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]);
    let words = core::ptr::from_mut(out).cast::<u64>();
    // SAFETY: `saddr` and `daddr` are the first 32 bytes of the 8-byte aligned `Flow`
    // (`repr(C, align(8))`): four aligned words.
    unsafe {
        words.write(0);
        words.add(1).write(mapped(s));
        words.add(2).write(0);
        words.add(3).write(mapped(d));
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
            v4_mapped_into(
                out,
                [h[12], h[13], h[14], h[15]],
                [h[16], h[17], h[18], h[19]],
            );
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
