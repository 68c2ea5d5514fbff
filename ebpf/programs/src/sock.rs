//! Socket-level service load balancing (cgroup `sock_addr` hooks).
//!
//! What happens to a socket call in a cgroup gannetd is attached to:
//! - `connect()` (TCP and UDP) and `sendmsg()` (unconnected UDP) to `ClusterIP:port`: the
//!   destination is rewritten to a selected backend before the kernel routes anything, so no
//!   packet ever carries the virtual IP. A service without ready backends fails the call with
//!   `ECONNREFUSED`.
//! - `recvmsg()` (UDP) and `getpeername()`: a backend address this socket reached through a
//!   service is translated back, so the application only ever sees the service address.
#![no_std]
#![no_main]
#![expect(
    unused_crate_dependencies,
    reason = "build-std links compiler_builtins and the crate's own anchor library into every binary"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand each program its context by value"
)]

mod ctx;
mod lb;
mod maps;

use aya_ebpf::{helpers::bpf_set_retval, macros::cgroup_sock_addr, programs::SockAddrContext};
use gannet_common::{ECONNREFUSED, PROTO_TCP, PROTO_UDP};

use crate::{
    ctx::Family,
    lb::{Stickiness, Verdict},
};

/// Return value of a `sock_addr` program that lets the call proceed.
const ALLOW: i32 = 1;
/// Return value that fails the call (with the errno set by `bpf_set_retval`).
const REJECT: i32 = 0;
/// `TCP_CLOSE`: the state of a TCP socket that may connect.
const TCP_CLOSE: u32 = 7;

#[cgroup_sock_addr(connect4)]
fn gannet_connect4(ctx: SockAddrContext) -> i32 {
    translate_destination(&ctx, Family::V4, Hook::Connect)
}

#[cgroup_sock_addr(connect6)]
fn gannet_connect6(ctx: SockAddrContext) -> i32 {
    translate_destination(&ctx, Family::V6, Hook::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
fn gannet_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate_destination(&ctx, Family::V4, Hook::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
fn gannet_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate_destination(&ctx, Family::V6, Hook::Sendmsg)
}

#[cgroup_sock_addr(recvmsg4)]
fn gannet_recvmsg4(ctx: SockAddrContext) -> i32 {
    translate_peer(&ctx, Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
fn gannet_recvmsg6(ctx: SockAddrContext) -> i32 {
    translate_peer(&ctx, Family::V6)
}

#[cgroup_sock_addr(getpeername4)]
fn gannet_getpeer4(ctx: SockAddrContext) -> i32 {
    translate_peer(&ctx, Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
fn gannet_getpeer6(ctx: SockAddrContext) -> i32 {
    translate_peer(&ctx, Family::V6)
}

/// Which call a destination hook runs for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Connect,
    Sendmsg,
}

/// connect/sendmsg: service frontend → backend.
#[inline(always)]
fn translate_destination(ctx: &SockAddrContext, family: Family, hook: Hook) -> i32 {
    let proto = ctx::protocol(ctx);
    let stickiness = match proto {
        // A connect on a socket that is not closed (connecting, connected) fails in the kernel
        // with EALREADY or EISCONN whatever the address; should the hook run for one, leave it
        // alone, so the socket storage keeps the translation of the connection it has.
        PROTO_TCP if ctx::state(ctx) != TCP_CLOSE => return ALLOW,
        PROTO_TCP => Stickiness::PerCall,
        PROTO_UDP => Stickiness::PerSocket {
            connect: hook == Hook::Connect,
        },
        _ => return ALLOW,
    };
    let mut dst = ctx::read(ctx, family);
    match lb::forward(ctx, &mut dst, proto, stickiness) {
        Verdict::NotService => ALLOW,
        Verdict::Translated => {
            // The agent pairs IPv4 frontends with IPv4 backends only; an IPv4 socket can only
            // be given an IPv4 address.
            if family == Family::V4 && !ctx::is_v4_mapped(&dst.addr) {
                return refuse();
            }
            ctx::write(ctx, family, &dst);
            ALLOW
        }
        Verdict::NoBackend => refuse(),
    }
}

/// recvmsg/getpeername: backend → the service frontend this socket addressed.
#[inline(always)]
fn translate_peer(ctx: &SockAddrContext, family: Family) -> i32 {
    let peer = ctx::read(ctx, family);
    if let Some(service) = lb::reverse(ctx, &peer, ctx::protocol(ctx)) {
        ctx::write(ctx, family, &service);
    }
    // recvmsg and getpeername programs must return 1.
    ALLOW
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: bpf_set_retval is available to connect and sendmsg hooks (kernel ≥ 5.18); the
    // call then fails with this errno instead of EPERM.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
