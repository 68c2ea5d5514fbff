//! Service lookup, backend selection, affinity and socket reverse NAT.

use aya_ebpf::{
    EbpfContext as _,
    btf_maps::SkStorage,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::btf_map,
    programs::SockAddrContext,
};
use gannet_common::{
    AFFINITY_NETNS, AFFINITY_SOCKET, AffinityKey, AffinityValue, BackendValue, RevNatKey,
    RevNatValue, SVC_F_AFFINITY, ServiceKey, ServiceValue, SlotKey, SockRevNat,
};

use crate::{
    ctx::SockAddr,
    maps::{AFFINITY, BACKENDS, REV_NAT, SERVICES, SLOTS},
};

/// The reverse translation of a TCP socket, in the socket's own storage: one
/// `bpf_sk_storage_get` per connect instead of an LRU hash insert, and freed with the socket
/// instead of crowding out live entries. Here rather than in `maps.rs`, which the pod object
/// shares: only this object uses it. Pinned by the agent (`map_names::SOCK_REV_NAT`), so a
/// restarted gannetd keeps translating the connections made before.
#[btf_map(name = "GANNET_SK_RNAT")]
static SOCK_REV_NAT: SkStorage<SockRevNat> = SkStorage::new();

/// What `forward` decided for a destination.
pub(crate) enum Verdict {
    /// Not a service address: leave the socket call alone.
    NotService,
    /// A service: `dst` now holds the selected backend.
    Translated,
    /// A service with no ready backend: fail the call.
    NoBackend,
}

/// How a client keeps its backend when the service has no ClientIP affinity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stickiness {
    /// A new random backend for every call (TCP: one call per connection).
    PerCall,
    /// The same backend for every datagram of one socket (UDP).
    PerSocket,
}

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Translates a connect/sendmsg destination that is a service frontend to a backend, and
/// records the reverse translation for `recvmsg`/`getpeername`: TCP in the socket's storage, UDP
/// (one socket, many peers) in the reverse-NAT LRU map under the socket cookie.
#[inline(always)]
pub(crate) fn forward(
    ctx: &SockAddrContext,
    dst: &mut SockAddr,
    proto: u8,
    stickiness: Stickiness,
) -> Verdict {
    let key = ServiceKey {
        addr: dst.addr,
        port: dst.port,
        proto,
        pad: 0,
    };
    // SAFETY: the service map is not preallocated, so the value is not rewritten under us.
    let Some(svc) = (unsafe { SERVICES.get(key) }).copied() else {
        return Verdict::NotService;
    };
    // Only UDP needs the socket cookie (per-socket stickiness and the reverse-NAT key): read it
    // once, and not at all for TCP.
    let cookie = match stickiness {
        // SAFETY: helper valid for sock_addr programs.
        Stickiness::PerSocket => unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        Stickiness::PerCall => 0,
    };
    let Some(backend) = select(ctx, &key, svc, stickiness, cookie) else {
        return Verdict::NoBackend;
    };

    match stickiness {
        Stickiness::PerCall => {
            let mut rev = SockRevNat {
                backend_addr: backend.addr,
                service_addr: dst.addr,
                backend_port: backend.port,
                service_port: dst.port,
            };
            // SAFETY: the context's socket is valid for the program's run. The storage is
            // created with `rev` if the socket has none; a socket that failed to connect and
            // connects again already has one, which is overwritten.
            let stored = unsafe { SOCK_REV_NAT.get_or_insert_ptr_mut(ctx, Some(&mut rev)) };
            if !stored.is_null() {
                // SAFETY: points to this socket's storage; only this socket's own calls, which
                // the socket lock serialises, write it.
                unsafe { *stored = rev };
            }
            // Best effort: without storage (out of memory) the application sees the backend's
            // address in getpeername(), but its traffic still flows.
        }
        Stickiness::PerSocket => {
            let rev_key = RevNatKey {
                cookie,
                addr: backend.addr,
                port: backend.port,
                pad: [0; 6],
            };
            let rev = RevNatValue {
                addr: dst.addr,
                port: dst.port,
                pad: 0,
                service_id: svc.id,
            };
            // Best effort: if the LRU map refuses, the application sees the backend's address
            // in recvfrom(), but its traffic still flows.
            let _ = REV_NAT.insert(rev_key, rev, 0);
        }
    }

    dst.addr = backend.addr;
    dst.port = backend.port;
    Verdict::Translated
}

/// Translates a received datagram's source (or a socket's peer) from a backend back to the
/// service the socket addressed. Returns `None` for peers this socket did not reach through a
/// service.
#[inline(always)]
pub(crate) fn reverse(ctx: &SockAddrContext, peer: &SockAddr, proto: u8) -> Option<SockAddr> {
    if proto == gannet_common::PROTO_TCP {
        // SAFETY: the context's socket is valid for the program's run; no storage is created.
        let stored = unsafe { SOCK_REV_NAT.get_ptr_mut(ctx) };
        if !stored.is_null() {
            // SAFETY: points to this socket's storage, copied out at once.
            let rev = unsafe { *stored };
            if rev.backend_addr == peer.addr && rev.backend_port == peer.port {
                return Some(SockAddr {
                    addr: rev.service_addr,
                    port: rev.service_port,
                });
            }
        }
        // Falls through for TCP sockets connected by a gannetd that still kept them in the
        // LRU map.
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey {
        cookie,
        addr: peer.addr,
        port: peer.port,
        pad: [0; 6],
    };
    // SAFETY: copied out at once; a concurrent LRU update can at worst return another valid
    // translation of the same socket.
    let rev = (unsafe { REV_NAT.get(key) }).copied()?;
    Some(SockAddr {
        addr: rev.addr,
        port: rev.port,
    })
}

#[inline(always)]
fn select(
    ctx: &SockAddrContext,
    key: &ServiceKey,
    svc: ServiceValue,
    stickiness: Stickiness,
    cookie: u64,
) -> Option<BackendValue> {
    if svc.count == 0 {
        return None;
    }
    let (affinity_key, timeout_ns) = if svc.flags & SVC_F_AFFINITY != 0 {
        // SAFETY: helper valid for sock_addr programs.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        let key = AffinityKey {
            service_id: svc.id,
            kind: AFFINITY_NETNS,
            client: netns,
        };
        (Some(key), u64::from(svc.affinity_timeout) * NSEC_PER_SEC)
    } else if stickiness == Stickiness::PerSocket {
        let key = AffinityKey {
            service_id: svc.id,
            kind: AFFINITY_SOCKET,
            client: cookie,
        };
        (Some(key), u64::MAX)
    } else {
        (None, 0)
    };

    let Some(affinity_key) = affinity_key else {
        // No affinity (TCP without ClientIP): no clock read, no affinity lookup.
        return pick_random(key, svc).map(|(_, backend)| backend);
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = AFFINITY.get_ptr_mut(affinity_key) {
        // SAFETY: `entry` points into the map value; a racing update of the same client's entry
        // can only store another backend of this service.
        let remembered = unsafe { *entry };
        if now.wrapping_sub(remembered.last_used_ns) <= timeout_ns {
            // The agent removes affinity entries of a backend before it frees the backend; an
            // entry it missed (a purge that failed, a crash between switch and purge) must not
            // follow the id once it is reused for another backend: the epoch says whether the
            // id still holds the backend the entry was made for (one compare, no lookup).
            // SAFETY: the backend map is not preallocated.
            if let Some(backend) = unsafe { BACKENDS.get(remembered.backend_id) }
                && backend.epoch == remembered.backend_epoch
            {
                // SAFETY: as above; a plain store of the timestamp.
                unsafe { (*entry).last_used_ns = now };
                return Some(*backend);
            }
        }
    }

    let (backend_id, backend) = pick_random(key, svc)?;
    let value = AffinityValue {
        backend_id,
        backend_epoch: backend.epoch,
        pad: 0,
        last_used_ns: now,
    };
    let _ = AFFINITY.insert(affinity_key, value, 0);
    Some(backend)
}

/// Picks a uniformly random slot of the service's current generation.
///
/// The agent writes a new generation's slots before it switches the service value, and frees
/// the old ones only afterwards; if a switch and a free both happen between our service lookup
/// and our slot lookup, the slot is gone, and one re-read of the service finds the new
/// generation.
#[inline(always)]
fn pick_random(key: &ServiceKey, mut svc: ServiceValue) -> Option<(u32, BackendValue)> {
    for attempt in 0..2 {
        if attempt > 0 {
            // SAFETY: not preallocated, see `forward`.
            svc = (unsafe { SERVICES.get(key) }).copied()?;
        }
        if svc.count == 0 {
            return None;
        }
        // SAFETY: helper without arguments.
        let index = unsafe { bpf_get_prandom_u32() } % u32::from(svc.count);
        let slot = SlotKey::new(svc.id, svc.generation, index);
        // SAFETY: not preallocated, see `forward`.
        if let Some(&backend_id) = unsafe { SLOTS.get(slot) }
            // SAFETY: not preallocated, see `forward`.
            && let Some(backend) = unsafe { BACKENDS.get(backend_id) }
        {
            return Some((backend_id, *backend));
        }
    }
    None
}
