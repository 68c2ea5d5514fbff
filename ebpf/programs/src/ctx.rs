//! Reading and writing the destination (or peer) address of a `bpf_sock_addr` context.
//!
//! The verifier allows only 4-byte accesses to `user_ip4`, `user_ip6[i]` and `user_port`, so
//! every access is a single volatile `u32` load or store: the compiler must not merge the four
//! words of `user_ip6` into wider loads.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{bindings::bpf_sock_addr, programs::SockAddrContext};
use gannet_common::v4_mapped;

/// An address and port in network order, IPv4 as `::ffff:a.b.c.d`.
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    pub(crate) addr: [u8; 16],
    pub(crate) port: u16,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

#[inline(always)]
pub(crate) fn protocol(ctx: &SockAddrContext) -> u8 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let proto = unsafe { read_volatile(addr_of!((*sa).protocol)) };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "IP protocol numbers fit in a u8"
    )]
    let proto = proto as u8;
    proto
}

#[inline(always)]
pub(crate) fn read(ctx: &SockAddrContext, family: Family) -> SockAddr {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: valid context; 4-byte loads of fields the verifier lets this hook read.
    unsafe {
        #[expect(clippy::cast_possible_truncation, reason = "user_port holds a u16")]
        let port = read_volatile(addr_of!((*sa).user_port)) as u16;
        let addr = match family {
            Family::V4 => v4_mapped(read_volatile(addr_of!((*sa).user_ip4)).to_ne_bytes()),
            Family::V6 => {
                let w0 = read_volatile(addr_of!((*sa).user_ip6[0])).to_ne_bytes();
                let w1 = read_volatile(addr_of!((*sa).user_ip6[1])).to_ne_bytes();
                let w2 = read_volatile(addr_of!((*sa).user_ip6[2])).to_ne_bytes();
                let w3 = read_volatile(addr_of!((*sa).user_ip6[3])).to_ne_bytes();
                [
                    w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2],
                    w2[3], w3[0], w3[1], w3[2], w3[3],
                ]
            }
        };
        SockAddr { addr, port }
    }
}

/// Whether `addr` is IPv4-mapped, i.e. can be written to an IPv4 context.
#[inline(always)]
pub(crate) fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

#[inline(always)]
pub(crate) fn write(ctx: &SockAddrContext, family: Family, to: &SockAddr) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let a = &to.addr;
    // SAFETY: valid context; 4-byte stores to fields the verifier lets this hook write.
    unsafe {
        match family {
            Family::V4 => write_volatile(
                addr_of_mut!((*sa).user_ip4),
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            ),
            Family::V6 => {
                write_volatile(
                    addr_of_mut!((*sa).user_ip6[0]),
                    u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
                );
                write_volatile(
                    addr_of_mut!((*sa).user_ip6[1]),
                    u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                );
                write_volatile(
                    addr_of_mut!((*sa).user_ip6[2]),
                    u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
                );
                write_volatile(
                    addr_of_mut!((*sa).user_ip6[3]),
                    u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
                );
            }
        }
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(to.port));
    }
}

/// The state of the context's socket (`TCP_*` for TCP).
#[inline(always)]
pub(crate) fn state(ctx: &SockAddrContext) -> u32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context whose socket is set;
    // `state` is a 4-byte field the verifier lets these hooks read.
    unsafe {
        let sk = read_volatile(addr_of!((*sa).__bindgen_anon_1.sk));
        read_volatile(addr_of!((*sk).state))
    }
}
