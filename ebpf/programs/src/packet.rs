//! Ethernet, IPv4 and IPv6 header access for tc programs: fixed offsets, bounds-checked loads
//! (direct, or through `bpf_skb_load_bytes` where the headers may lie outside the linear data),
//! and the TTL/hop-limit decrement a router owes a forwarded packet.

use core::mem::{MaybeUninit, align_of, size_of};

use aya_ebpf::programs::{TcContext, XdpContext};

use crate::csum;

pub(crate) const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

pub(crate) const IPV4_TTL: usize = ETH_HLEN + 8;
pub(crate) const IPV4_CSUM: usize = ETH_HLEN + 10;
pub(crate) const IPV4_SADDR: usize = ETH_HLEN + 12;
pub(crate) const IPV4_DADDR: usize = ETH_HLEN + 16;
const IPV6_HOP_LIMIT: usize = ETH_HLEN + 7;
pub(crate) const IPV6_SADDR: usize = ETH_HLEN + 8;
pub(crate) const IPV6_DADDR: usize = ETH_HLEN + 24;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum L3 {
    V4,
    V6,
}

/// The network-layer family of an Ethernet frame, if gannet handles it.
#[inline(always)]
pub(crate) fn l3(ctx: &TcContext) -> Option<L3> {
    let proto = u16::from_be(ctx.load::<u16>(12).ok()?);
    match proto {
        ETH_P_IP => Some(L3::V4),
        ETH_P_IPV6 => Some(L3::V6),
        _ => None,
    }
}

/// Whether the frame is an ARP packet.
#[inline(always)]
pub(crate) fn is_arp(ctx: &TcContext) -> bool {
    ctx.load::<u16>(12)
        .is_ok_and(|proto| u16::from_be(proto) == ETH_P_ARP)
}

/// Source and destination addresses, 16 bytes each (IPv4 as `::ffff:a.b.c.d`).
#[inline(always)]
pub(crate) fn addresses(ctx: &TcContext, l3: L3) -> Option<([u8; 16], [u8; 16])> {
    match l3 {
        L3::V4 => {
            let s: [u8; 4] = ctx.load(IPV4_SADDR).ok()?;
            let d: [u8; 4] = ctx.load(IPV4_DADDR).ok()?;
            Some((gannet_common::v4_mapped(s), gannet_common::v4_mapped(d)))
        }
        L3::V6 => Some((ctx.load(IPV6_SADDR).ok()?, ctx.load(IPV6_DADDR).ok()?)),
    }
}

/// The `T` at `offset` of the packet: read directly when it lies in the linear data (as the
/// headers of every packet a NodePort program translates do), else through
/// `bpf_skb_load_bytes`.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    match Data::tc(ctx).at::<T>(offset) {
        // SAFETY: `at` checked that the bytes lie within the packet.
        Some(p) => Some(unsafe { p.read_unaligned() }),
        None => ctx.load(offset).ok(),
    }
}

/// Decrements the TTL (IPv4, with the header checksum) or hop limit (IPv6). Returns `false`
/// when the packet must not be forwarded (TTL ≤ 1: the host stack answers with ICMP) or the
/// packet could not be written.
#[inline(always)]
pub(crate) fn decrement_ttl(ctx: &mut TcContext, l3: L3) -> bool {
    match l3 {
        L3::V4 => {
            // TTL, protocol and the header checksum, written back in one store (the checksum
            // updated here: see `csum.rs`); TTL and protocol form one of its 16-bit words.
            let Some(old) = read::<[u8; 4]>(ctx, IPV4_TTL) else {
                return false;
            };
            if old[0] <= 1 {
                return false;
            }
            let word = [old[0] - 1, old[1]];
            let sum = csum::replace([old[2], old[3]], &[old[0], old[1]], &word);
            ctx.store(IPV4_TTL, &[word[0], word[1], sum[0], sum[1]], 0)
                .is_ok()
        }
        L3::V6 => {
            let Some(hop) = read::<u8>(ctx, IPV6_HOP_LIMIT) else {
                return false;
            };
            hop > 1 && ctx.store(IPV6_HOP_LIMIT, &(hop - 1), 0).is_ok()
        }
    }
}

/// Zeroes `value` in place, a 32-bit word at a time, and returns it.
///
/// Not `core::mem::zeroed()`: LLVM makes a zero-fill of more than a few bytes a `memset`, which
/// bpf-linker (it expands `memcpy` inline, not `memset`) leaves as a call to a function storing
/// one byte per iteration (64 of them for a FIB lookup's parameters, once a fifth of the
/// NodePort hit path). Volatile stores are never merged back into one.
///
/// # Safety
/// All-zero bytes must be a valid `T` (plain integers and unions of them).
#[inline(always)]
pub(crate) unsafe fn zero<T>(value: &mut MaybeUninit<T>) -> &mut T {
    const {
        assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4);
    }
    let words = value.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: word `i` lies within `value`, 4-aligned (checked above).
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is written, and all-zero is a valid `T` (the caller's promise).
    unsafe { value.assume_init_mut() }
}

/// Rewrites the Ethernet addresses.
#[inline(always)]
pub(crate) fn set_macs(ctx: &mut TcContext, dst: [u8; 6], src: [u8; 6]) -> bool {
    let macs = [
        dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], src[0], src[1], src[2], src[3], src[4],
        src[5],
    ];
    ctx.store(0, &macs, 0).is_ok()
}

/// The packet's linear data, read from the context once (the verifier refuses context reads
/// through a pointer the compiler derived and kept), for direct access from tc and XDP alike.
#[derive(Clone, Copy)]
pub(crate) struct Data {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Data {
    #[inline(always)]
    pub(crate) fn tc(ctx: &TcContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    #[inline(always)]
    pub(crate) fn xdp(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// A pointer to a `T` at `offset`, when it lies within the data. (Read whole headers: a
    /// one-byte bound check is one the verifier cannot use.)
    #[inline(always)]
    pub(crate) fn at<T>(self, offset: usize) -> Option<*mut T> {
        if self.start + offset + core::mem::size_of::<T>() > self.end {
            return None;
        }
        Some((self.start + offset) as *mut T)
    }

    /// The network-layer family of the frame.
    #[inline(always)]
    pub(crate) fn l3(self) -> Option<L3> {
        // SAFETY: `at` checked the bytes lie within the packet.
        let eth = unsafe { *self.at::<[u8; ETH_HLEN]>(0)? };
        match u16::from_be_bytes([eth[12], eth[13]]) {
            ETH_P_IP => Some(L3::V4),
            ETH_P_IPV6 => Some(L3::V6),
            _ => None,
        }
    }
}

/// A 16-byte address as four 32-bit words in memory order (what `bpf_csum_diff` and the FIB
/// lookup's address fields take).
#[inline(always)]
pub(crate) fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
