//! The per-pod programs, attached (tcx) to each pod's host-side veth in the node's namespace.
//!
//! What happens to a packet a pod sends (`gannet_from_pod`, tc ingress of the host veth):
//! counted as the pod's tx; dropped (and counted as such) if it is not the pod's to send: an
//! IPv4 or IPv6 source that is not one of the pod's addresses (IPv6 link-local ones go to the
//! host stack only), ARP for another address, a neighbour advertisement for another address;
//! if its destination is another pod of this node, its MACs are set
//! for the peer, its TTL is decremented, and it is handed straight to the peer's namespace with
//! `bpf_redirect_peer` (no host routing, no netfilter); anything else goes on to the host stack.
//!
//! What happens to a packet the host stack sends to a pod (`gannet_to_pod`, tc egress of the
//! host veth): counted as the pod's rx, and passed.
//!
//! With `--overlay ebpf`, a pod's packet for another node's pod CIDR is routed by
//! `gannet_from_pod` straight into the VXLAN device (external mode) with a tunnel key, and the
//! device's own programs (attached with tcx to `gannet.vxlan`) handle the rest:
//! - `gannet_from_tunnel` (ingress, after decapsulation): another VNI is dropped; a packet for a
//!   pod of this node goes straight into the pod's namespace; anything else to the host stack;
//! - `gannet_to_tunnel` (egress): packets the host routes into the device (host processes to
//!   remote pods) get the remote node's tunnel key; those that have one pass.
//!
//! The same object holds `gannet_nodeport` (see `nodeport.rs`), for the node's external
//! interfaces: NodePort, external IP and LoadBalancer traffic, and its replies; and its XDP
//! front, `gannet_nodeport_xdp` (see `xdp.rs`).
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

mod conntrack;
mod csum;
mod dsr;
mod endpoint;
mod fib;
mod flow;
mod icmp;
mod maglev;
mod maps;
mod nat;
mod nodeport;
mod packet;
mod reject;
mod tunnel;
mod xdp;

use aya_ebpf::{macros::classifier, programs::TcContext};

#[classifier]
fn gannet_from_pod(mut ctx: TcContext) -> i32 {
    endpoint::from_pod(&mut ctx)
}

#[classifier]
fn gannet_to_pod(ctx: TcContext) -> i32 {
    endpoint::to_pod(&ctx)
}

#[classifier]
fn gannet_from_tunnel(mut ctx: TcContext) -> i32 {
    tunnel::from_tunnel(&mut ctx)
}

#[classifier]
fn gannet_to_tunnel(mut ctx: TcContext) -> i32 {
    tunnel::to_tunnel(&mut ctx)
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
