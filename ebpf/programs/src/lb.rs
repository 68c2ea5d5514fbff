//! Service lookup, backend selection, affinity, per-socket UDP state and socket reverse NAT.

use aya_ebpf::{
    EbpfContext as _,
    btf_maps::SkStorage,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::btf_map,
    programs::SockAddrContext,
};
use gannet_common::{
    AFFINITY_NETNS, AffinityKey, AffinityValue, BackendValue, RevNatKey, RevNatValue,
    SVC_F_AFFINITY, ServiceKey, ServiceValue, SlotKey, SockRevNat, UDP_SOCK_PEERS, UdpPeer,
    UdpSockState,
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
    /// The same backend for every datagram of one socket (UDP); `connect`: the call is a
    /// `connect()`.
    PerSocket { connect: bool },
}

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// The state of a UDP socket, in the socket's own storage: the services it sent to, the
/// backend each gave it (per-socket stickiness) and the reverse translation of the backends'
/// replies. Freed with the socket, so one pod churning sockets cannot crowd out another
/// socket's entries, as it could in the node-wide LRU maps this replaces. Pinned by the agent
/// (`map_names::SOCK_UDP`); gannetd reads it through `sock_diag` to tell which service a
/// connected socket reached a backend through.
#[btf_map(name = "GANNET_SK_UDP")]
static SOCK_UDP: SkStorage<UdpSockState> = SkStorage::new();

/// Translates a connect/sendmsg destination that is a service frontend to a backend, and
/// records the reverse translation for `recvmsg`/`getpeername` in the socket's storage.
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
    let backend = match stickiness {
        Stickiness::PerCall => {
            let picked = if svc.flags & SVC_F_AFFINITY != 0 {
                select_affinity(ctx, &key, svc)
            } else {
                // No affinity (TCP without ClientIP): no clock read, no affinity lookup.
                pick_random(&key, svc)
            };
            let Some(picked) = picked else {
                return Verdict::NoBackend;
            };
            let mut rev = SockRevNat {
                backend_addr: picked.backend.addr,
                service_addr: dst.addr,
                backend_port: picked.backend.port,
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
            picked.backend
        }
        Stickiness::PerSocket { connect } => {
            let Some((backend, service_id)) = forward_udp(ctx, dst, &key, svc) else {
                return Verdict::NoBackend;
            };
            if connect {
                // A hint for the agent, which cannot read the socket's storage: the service a
                // connected socket reached its backend through, so that it does not terminate
                // the socket when another service sharing the backend loses it. Nothing here
                // reads it for a translation; evicted, it only costs that socket a reconnect.
                // SAFETY: helper valid for sock_addr programs.
                let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
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
                    service_id,
                };
                let _ = REV_NAT.insert(rev_key, rev, 0);
            }
            backend
        }
    };
    dst.addr = backend.addr;
    dst.port = backend.port;
    Verdict::Translated
}

/// A UDP datagram (or connect) to a service: the backend this socket was given for the service
/// while it is still one of the service's current backends, else a new one (or the client's,
/// with ClientIP affinity); recorded in the socket's storage either way. Returns the backend
/// and the service's id.
#[inline(always)]
fn forward_udp(
    ctx: &SockAddrContext,
    dst: &SockAddr,
    key: &ServiceKey,
    svc: ServiceValue,
) -> Option<(BackendValue, u32)> {
    if svc.count == 0 {
        return None;
    }
    // SAFETY: the context's socket is valid for the program's run; storage the socket does not
    // have yet is created zeroed (every entry empty).
    let state = unsafe { SOCK_UDP.get_or_insert_ptr_mut(ctx, None) };
    if state.is_null() {
        // Best effort: without storage (out of memory) every datagram is balanced anew and
        // replies show the backend's address, but traffic still flows.
        return if svc.flags & SVC_F_AFFINITY != 0 {
            select_affinity(ctx, key, svc)
        } else {
            pick_random(key, svc)
        }
        .map(|p| (p.backend, svc.id));
    }
    // SAFETY: points to this socket's storage; only this socket's own calls write it. UDP
    // sendmsg does not take the socket lock: two threads sending on one socket at the same
    // instant can lose an update, or, replacing the same entry for two services, leave it mixed
    // from both (its next datagram then fails the slot check and is balanced anew; a reply
    // until then may show the other service). Plain stores of integers, never unsafe memory.
    let state = unsafe { &mut *state };
    let mut sends = state.sends.wrapping_add(1);
    if sends == 0 {
        sends = 1;
    }
    state.sends = sends;

    // This frontend's entry, and the one to replace if it has none: an empty one, else the one
    // used least recently.
    let mut found = UDP_SOCK_PEERS;
    let mut victim = 0;
    let mut victim_age = 0;
    for (i, peer) in state.peers.iter().enumerate() {
        if peer.last_send == 0 {
            if victim_age != u32::MAX {
                victim = i;
                victim_age = u32::MAX;
            }
            continue;
        }
        if peer.service_id == svc.id
            && peer.service_port == dst.port
            && peer.service_addr == dst.addr
        {
            found = i;
        }
        let age = sends.wrapping_sub(peer.last_send);
        if age > victim_age {
            victim = i;
            victim_age = age;
        }
    }

    let remembered = state.peers.get(found).copied();
    let picked = if svc.flags & SVC_F_AFFINITY != 0 {
        select_affinity(ctx, key, svc)?
    } else if let Some(peer) = remembered
        && let Some(backend) = still_current(svc, &peer)
    {
        Picked {
            id: peer.backend_id,
            slot: peer.slot,
            backend,
        }
    } else {
        pick_random(key, svc)?
    };

    let index = if found < UDP_SOCK_PEERS {
        found
    } else {
        victim
    };
    if let Some(entry) = state.peers.get_mut(index) {
        *entry = UdpPeer {
            service_addr: dst.addr,
            backend_addr: picked.backend.addr,
            service_port: dst.port,
            backend_port: picked.backend.port,
            service_id: svc.id,
            backend_id: picked.id,
            backend_epoch: picked.backend.epoch,
            slot: picked.slot,
            last_send: sends,
        };
    }
    Some((picked.backend, svc.id))
}

/// The backend `peer` remembers, if the service's current generation still holds it at the
/// slot it was picked from and the id still holds the same allocation (two lookups; the agent
/// cannot reach a socket's storage to forget a backend that left, so every use checks).
#[inline(always)]
fn still_current(svc: ServiceValue, peer: &UdpPeer) -> Option<BackendValue> {
    if u32::from(peer.slot) >= u32::from(svc.count) {
        return None;
    }
    let slot = SlotKey::new(svc.id, svc.generation, u32::from(peer.slot));
    // SAFETY: not preallocated, see `forward`.
    let id = (unsafe { SLOTS.get(slot) }).copied()?;
    if id != peer.backend_id {
        return None;
    }
    // SAFETY: not preallocated, see `forward`.
    let backend = (unsafe { BACKENDS.get(id) }).copied()?;
    (backend.epoch == peer.backend_epoch).then_some(backend)
}

/// Translates a received datagram's source (or a socket's peer) from a backend back to the
/// service the socket addressed. Returns `None` for peers this socket did not reach through a
/// service.
///
/// A UDP socket can reach one backend through two services that share it; `recvmsg` sees only
/// the peer's address, so a reply is attributed to the service this socket last sent a
/// datagram to that backend through.
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
    } else {
        // SAFETY: as above.
        let stored = unsafe { SOCK_UDP.get_ptr_mut(ctx) };
        if !stored.is_null() {
            // SAFETY: points to this socket's storage, read entry by entry.
            let state = unsafe { &*stored };
            // An index, not an `Option<SockAddr>`: the verifier must never see the undefined
            // payload of a `None` being copied.
            let mut best = UDP_SOCK_PEERS;
            let mut best_age = u32::MAX;
            for (i, entry) in state.peers.iter().enumerate() {
                if entry.last_send != 0
                    && entry.backend_port == peer.port
                    && entry.backend_addr == peer.addr
                {
                    let age = state.sends.wrapping_sub(entry.last_send);
                    if best == UDP_SOCK_PEERS || age < best_age {
                        best = i;
                        best_age = age;
                    }
                }
            }
            if let Some(entry) = state.peers.get(best) {
                return Some(SockAddr {
                    addr: entry.service_addr,
                    port: entry.service_port,
                });
            }
        }
    }
    // Sockets translated by a gannetd from before socket storage kept their translations in
    // the LRU map under the socket cookie.
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

/// A backend picked for a service: its id, the slot it was picked from, and its value.
#[derive(Clone, Copy)]
struct Picked {
    id: u32,
    slot: u16,
    backend: BackendValue,
}

/// `sessionAffinity: ClientIP`: the backend the client's network namespace was given while it
/// is fresh and its id still holds the same allocation, else a random one, remembered.
#[inline(always)]
fn select_affinity(ctx: &SockAddrContext, key: &ServiceKey, svc: ServiceValue) -> Option<Picked> {
    if svc.count == 0 {
        return None;
    }
    // SAFETY: helper valid for sock_addr programs.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let affinity_key = AffinityKey {
        service_id: svc.id,
        kind: AFFINITY_NETNS,
        client: netns,
    };
    let timeout_ns = u64::from(svc.affinity_timeout) * NSEC_PER_SEC;
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
                return Some(Picked {
                    id: remembered.backend_id,
                    slot: 0,
                    backend: *backend,
                });
            }
        }
    }

    let picked = pick_random(key, svc)?;
    let value = AffinityValue {
        backend_id: picked.id,
        backend_epoch: picked.backend.epoch,
        pad: 0,
        last_used_ns: now,
    };
    let _ = AFFINITY.insert(affinity_key, value, 0);
    Some(picked)
}

/// Picks a uniformly random slot of the service's current generation.
///
/// The agent writes a new generation's slots before it switches the service value, and frees
/// the old ones only afterwards; if a switch and a free both happen between our service lookup
/// and our slot lookup, the slot is gone, and one re-read of the service finds the new
/// generation.
#[inline(always)]
fn pick_random(key: &ServiceKey, mut svc: ServiceValue) -> Option<Picked> {
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
            #[expect(
                clippy::cast_possible_truncation,
                reason = "the index is below the u16 count"
            )]
            let slot = index as u16;
            return Some(Picked {
                id: backend_id,
                slot,
                backend: *backend,
            });
        }
    }
    None
}
