//! Internet checksums updated by hand (RFC 1624): when bytes `old` of a packet become `new`, a
//! checksum over them changes by the one's-complement difference. XDP has no checksum helpers
//! and sees frames as the NIC delivered them, with complete checksums; tc computes the IPv4
//! header checksum here too (it is always complete, and a valid header adds the same to a
//! `CHECKSUM_COMPLETE` sum whatever it holds), and hands the kernel's TCP/UDP checksum helper
//! one [`diff`] instead of one call per changed word.

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

/// The one's-complement difference `new − old` as the kernel's checksum helpers take it
/// (`bpf_l4_csum_replace` with size 0, a `__wsum`, what `bpf_csum_diff` returns): the 16-bit
/// words in memory order, folded.
#[inline(always)]
pub(crate) fn diff<const N: usize>(old: &[u8; N], new: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(!u16::from_ne_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_ne_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    u32::from(fold(sum))
}
