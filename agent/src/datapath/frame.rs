//! Packet fixtures: Ethernet frames with every checksum computed from scratch, for the packet
//! tests of the programs (input frame → expected verdict and output frame) and for
//! `gannet-testrun`, which runs the same frames through the programs of a running gannetd to
//! measure what a packet costs.

use std::net::Ipv4Addr;

use gannet_common::PROTO_TCP;

/// TCP flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The payload of every TCP fixture.
pub const TCP_PAYLOAD: &[u8] = b"hello";

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `sum`.
pub fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    sum
}

/// The one's complement of the folded sum.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// The checksum of an IPv4 header (its checksum field zero).
#[must_use]
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    fold(sum16(header, 0))
}

/// An Ethernet + IPv4 + TCP frame (sequence 1000, window 65535, [`TCP_PAYLOAD`]) with both
/// checksums right.
#[expect(clippy::too_many_arguments, reason = "a fixture builder")]
#[must_use]
pub fn tcp_v4(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    ttl: u8,
    flags: u8,
) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&1000u32.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(TCP_PAYLOAD);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, PROTO_TCP]);
    pseudo.extend_from_slice(&u16::try_from(tcp.len()).expect("small").to_be_bytes());
    let csum = fold(sum16(&tcp, sum16(&pseudo, 0)));
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());

    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, PROTO_TCP, 0, 0];
    ip[2..4].copy_from_slice(&u16::try_from(20 + tcp.len()).expect("small").to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());

    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let f = tcp_v4(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(10, 99, 0, 250),
            40000,
            Ipv4Addr::new(10, 99, 0, 11),
            30080,
            64,
            TCP_SYN,
        );
        assert_eq!(f.len(), 14 + 20 + 20 + TCP_PAYLOAD.len());
        // A header (or segment) including its checksum sums to 0xffff: its complement is 0.
        assert_eq!(ipv4_checksum(&f[14..34]), 0, "IPv4 header checksum");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, PROTO_TCP, 0, 25]);
        assert_eq!(fold(sum16(&f[34..], sum16(&pseudo, 0))), 0, "TCP checksum");
        assert_eq!(f[47], TCP_SYN);
    }
}
