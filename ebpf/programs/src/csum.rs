//! Internet checksums updated by hand (RFC 1624), for XDP, which has no checksum helpers: when
//! bytes `old` of a packet become `new`, a checksum over them changes by the one's-complement
//! difference. XDP sees frames as the NIC delivered them, with complete checksums.

/// Adds the 16-bit words of `bytes` (big-endian) to a one's-complement accumulator.
#[inline(always)]
fn add<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Subtracts (adds the complement of) the 16-bit words of `bytes`.
#[inline(always)]
fn sub<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(!u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = sum as u16;
    folded
}

/// The checksum field `field` (as it lies in the packet) after bytes `old` became `new`.
#[inline(always)]
pub(crate) fn replace<const N: usize>(field: [u8; 2], old: &[u8; N], new: &[u8; N]) -> [u8; 2] {
    let sum = u32::from(!u16::from_be_bytes(field));
    (!fold(add(sub(sum, old), new))).to_be_bytes()
}

/// [`replace`] for a UDP checksum over IPv4: 0 means "none" and stays 0; a computed 0 is sent as
/// 0xffff.
#[inline(always)]
pub(crate) fn replace_udp4<const N: usize>(
    field: [u8; 2],
    old: &[u8; N],
    new: &[u8; N],
) -> [u8; 2] {
    if field == [0, 0] {
        return field;
    }
    let next = replace(field, old, new);
    if next == [0, 0] { [0xff, 0xff] } else { next }
}
