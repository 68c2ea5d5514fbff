//! Direct server return (`--lb-mode dsr`) for IPv4: the node that balances a flow to a backend
//! on another node does not SNAT it; it sends the client's packets on with their own source and
//! an IPv4 option naming the frontend (`DSR_OPTION_TYPE`), so the backend's node knows where the
//! replies must seem to come from. That node removes the option, remembers the frontend for the
//! flow (a reply entry: the backend's replies get the frontend as their source), and the replies
//! go from there straight to the client.
//!
//! Why an IP option and not the tunnel header: the overlay is VXLAN (Flannel's wire format),
//! whose header has no room for metadata, and host-gw has no tunnel at all; an IP option works
//! on both. It costs 8 bytes of MTU per packet.
//!
//! The option is inserted in front of the fixed header's last bytes: `bpf_skb_adjust_room` makes
//! room between the Ethernet and IP headers (`BPF_ADJ_ROOM_MAC`), and the fixed header is written
//! again in front of the option; removing it is the same in reverse. The IPv4 header checksum is
//! recomputed; the transport checksum does not cover IP options.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    programs::TcContext,
};
use gannet_common::{DSR_OPTION_LEN, DSR_OPTION_TYPE};

use crate::packet::{Data, ETH_HLEN};

/// The IPv4 header checksum of a header of `N` bytes (its checksum field zero or not).
#[inline(always)]
fn header_checksum<const N: usize>(h: &[u8; N]) -> [u8; 2] {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < N {
        if i != 10 {
            sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        }
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = sum as u16;
    (!folded).to_be_bytes()
}

/// Inserts the DSR option naming frontend `addr:port` (IPv4, network order) into an IPv4 packet
/// without options. Returns `false` when it cannot (options already there, too short): the
/// packet is then unchanged, or dropped by the caller if half-changed.
#[inline(never)]
pub(crate) fn push(ctx: &mut TcContext, addr: &[u8; 16], port: u16) -> bool {
    let Ok(mut h) = ctx.load::<[u8; 20]>(ETH_HLEN) else {
        return false;
    };
    if h[0] != 0x45 {
        return false;
    }
    let total = u16::from_be_bytes([h[2], h[3]]) + u16::from(DSR_OPTION_LEN);
    h[0] = 0x47;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    let port = port.to_ne_bytes();
    let option: [u8; 8] = [
        DSR_OPTION_TYPE,
        DSR_OPTION_LEN,
        port[0],
        port[1],
        addr[12],
        addr[13],
        addr[14],
        addr[15],
    ];
    let mut full = [0u8; 28];
    full[..20].copy_from_slice(&h);
    full[20..].copy_from_slice(&option);
    let csum = header_checksum(&full);
    full[10] = csum[0];
    full[11] = csum[1];
    if ctx
        .adjust_room(i32::from(DSR_OPTION_LEN), BPF_ADJ_ROOM_MAC, 0)
        .is_err()
    {
        return false;
    }
    ctx.store(ETH_HLEN, &full, 0).is_ok()
}

/// The frontend (IPv4 address as `::ffff:a.b.c.d`, port) a packet's DSR option names, when it
/// has one (IPv4 header of 28 bytes, the option last).
#[inline(always)]
pub(crate) fn option(data: Data) -> Option<([u8; 16], u16)> {
    // SAFETY: `at` checked the bytes lie within the packet.
    let h = unsafe { *data.at::<[u8; 28]>(ETH_HLEN)? };
    if h[0] != 0x47 || h[20] != DSR_OPTION_TYPE || h[21] != DSR_OPTION_LEN {
        return None;
    }
    let port = u16::from_ne_bytes([h[22], h[23]]);
    Some((gannet_common::v4_mapped([h[24], h[25], h[26], h[27]]), port))
}

/// Removes the DSR option (see [`option`]). `TC_ACT_SHOT` when it could not.
#[inline(never)]
pub(crate) fn pull(ctx: &mut TcContext) -> Result<(), i32> {
    let Ok(h) = ctx.load::<[u8; 20]>(ETH_HLEN) else {
        return Err(TC_ACT_SHOT);
    };
    let mut base = h;
    base[0] = 0x45;
    let total = u16::from_be_bytes([h[2], h[3]]).saturating_sub(u16::from(DSR_OPTION_LEN));
    base[2..4].copy_from_slice(&total.to_be_bytes());
    let csum = header_checksum(&base);
    base[10] = csum[0];
    base[11] = csum[1];
    // The room goes from in front of the IP header: what stays of the old header there is
    // overwritten with the new one.
    if ctx
        .adjust_room(-i32::from(DSR_OPTION_LEN), BPF_ADJ_ROOM_MAC, 0)
        .is_err()
        || ctx.store(ETH_HLEN, &base, 0).is_err()
    {
        return Err(TC_ACT_SHOT);
    }
    Ok(())
}
