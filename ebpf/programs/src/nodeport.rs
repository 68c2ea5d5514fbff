//! Traffic from outside the node: node ports, external IPs and LoadBalancer IPs (tc on the
//! external interfaces, and on the overlay device for the replies that come back through it).
//!
//! What happens to a packet arriving at an external interface (`gannet_nodeport`, tcx ingress):
//! 1. A reply of a flow translated earlier (its conntrack entry has `CT_F_REPLY`): rewritten
//!    back (backend → frontend, SNAT address → client) and sent to the client.
//! 2. A packet of a tracked flow to a frontend: rewritten as its entry says (same backend, same
//!    SNAT port) and forwarded.
//! 3. The first packet to an externally reachable frontend (`SVC_F_EXTERNAL`): a client outside
//!    its `loadBalancerSourceRanges` (`SVC_F_SOURCE_RANGES`) is dropped; a backend is picked from
//!    the frontend's Maglev table by the flow's hash (with `sessionAffinity: ClientIP`: the
//!    client's backend if it had one within the timeout, else by the client address's hash);
//!    both directions are tracked; the destination becomes the
//!    backend, and, unless the backend is a pod of this node or the service has
//!    `externalTrafficPolicy: Local`, the source becomes this node's SNAT address and a port
//!    from `SNAT_PORT_MIN..=SNAT_PORT_MAX`, so the reply comes back here. Then it is forwarded
//!    (`fib::forward`). A frontend without a backend: `externalTrafficPolicy: Local` drops, as
//!    kube-proxy does; otherwise it is refused (`reject.rs`: the host stack answers for the
//!    node's own addresses, the program answers for others: a TCP RST, an ICMP port
//!    unreachable for UDP).
//! 4. Anything else continues (`TC_ACT_UNSPEC`: the next tcx program, then the host stack).
//!
//! Replies from a pod of this node (the backend of a flow whose source was kept) arrive at the
//! pod's veth instead; `gannet_from_pod` hands them to [`reply_from_pod`].

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    bindings::{BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::{
        Array, LruHashMap, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{TcContext, XdpContext},
};
use gannet_common::{
    AffinityValue, BackendValue, CT_F_DSR, CT_F_REPLY, CT_F_SNAT, CtEntry, CtKey,
    DEFAULT_MAX_NODEPORT_AFFINITY, DEFAULT_MAX_SOURCE_RANGES, NODEPORT_F_DSR, NODEPORT_F_ENABLED,
    NODEPORT_F_SNAT_V4, NODEPORT_F_SNAT_V6, NP_STAT_CT_FAILED, NP_STAT_DENIED, NP_STAT_DSR_IN,
    NP_STAT_FORWARD, NP_STAT_ICMP_ERRORS, NP_STAT_NEW_FLOWS, NP_STAT_NO_BACKEND, NP_STAT_REPLIES,
    NP_STAT_XDP_TX, NP_STATS, NodePortConfig, NpAffinityKey, SNAT_PORT_MAX, SNAT_PORT_MIN,
    SVC_F_AFFINITY, SVC_F_EXTERNAL, SVC_F_LOCAL, SVC_F_SOURCE_RANGES, ServiceKey, ServiceValue,
};

use crate::{
    conntrack::{self, CONNTRACK, NSEC_PER_SEC},
    dsr, endpoint, fib,
    flow::{self, Flow, TCP_ACK, TCP_SYN},
    icmp::{self, Direction, IcmpError},
    maglev,
    maps::{BACKENDS, SERVICES},
    nat::{self, Tuple},
    packet::{self, Data, L3},
    reject, xdp,
};

#[map(name = "GANNET_NP_CFG")]
static CONFIG: Array<NodePortConfig> = Array::pinned(1, 0);

#[map(name = "GANNET_NP_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(NP_STATS, 0);

/// `loadBalancerSourceRanges`: (service id, client prefix) → 1. Never preallocated (a trie).
#[map(name = "GANNET_SRC_RNG")]
static SOURCE_RANGES: LpmTrie<[u8; 20], u8> = LpmTrie::pinned(DEFAULT_MAX_SOURCE_RANGES, 0);

/// `sessionAffinity: ClientIP` for packets from outside: (service id, client) → backend and
/// the time of the client's last new flow.
#[map(name = "GANNET_NP_AFF")]
static AFFINITY: LruHashMap<NpAffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_MAX_NODEPORT_AFFINITY, 0);

/// Working memory of the packet being handled: BPF gives a program and the functions it calls
/// 512 bytes of stack together, too little for a flow, its keys and entries. tc programs do not
/// nest on one CPU, so one element per CPU serves.
pub(crate) struct Scratch {
    flow: Flow,
    icmp: IcmpError,
    key: CtKey,
    entry: CtEntry,
    reply_key: CtKey,
    reply: CtEntry,
    /// The client entry's key of a flow whose SNAT port is being taken over.
    old_key: CtKey,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// How many random SNAT ports a new flow tries before it takes over one of a flow that is over.
const SNAT_ATTEMPTS: u32 = 8;

#[classifier]
fn gannet_nodeport(mut ctx: TcContext) -> i32 {
    from_netdev(&mut ctx)
}

#[inline(always)]
pub(crate) fn count(stat: u32) {
    if let Some(counter) = STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU value: no other CPU writes it.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn config() -> Option<&'static NodePortConfig> {
    let config = CONFIG.get(0)?;
    (config.flags & NODEPORT_F_ENABLED != 0).then_some(config)
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's element; no other program runs on this CPU until ours returns.
    SCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut *s })
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and entries live in per-CPU scratch memory; by value they would be copied onto the stack"
)]
#[inline(always)]
fn from_netdev(ctx: &mut TcContext) -> i32 {
    let Some(config) = config() else {
        return TC_ACT_UNSPEC;
    };
    let Some(s) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    if !flow::parse_into(Data::tc(ctx), &mut s.flow) {
        return icmp_error(ctx, s);
    }
    if let Some((frontend, port)) = dsr::option(Data::tc(ctx)) {
        return dsr_in(ctx, s, frontend, port);
    }
    conntrack::key_into(&s.flow, &mut s.key);
    if let Some(entry) = CONNTRACK.get_ptr_mut(&s.key) {
        // SAFETY: the LRU map keeps the value valid for the program's run.
        let tracked = unsafe { &*entry };
        // The clock at tick resolution (CLOCK_MONOTONIC_COARSE: the agent's timeouts are
        // seconds): no clock read per packet, and `touch` writes the time once per tick.
        // SAFETY: helper without arguments.
        let seen = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
        if tracked.flags & CT_F_REPLY != 0 {
            conntrack::touch(entry, &s.flow, seen);
            count(NP_STAT_REPLIES);
            return translate_reply(ctx, &s.flow, tracked);
        }
        if still_valid(&s.flow, tracked) {
            conntrack::touch(entry, &s.flow, seen);
            count(NP_STAT_FORWARD);
            return translate(ctx, &s.flow, tracked);
        }
    }
    let service_key = ServiceKey {
        addr: s.flow.daddr,
        port: s.flow.dport,
        proto: s.flow.proto,
        pad: 0,
    };
    // SAFETY: not preallocated: the value is not rewritten while the program holds it.
    let Some(service) = (unsafe { SERVICES.get(service_key) }) else {
        return TC_ACT_UNSPEC;
    };
    if service.flags & SVC_F_EXTERNAL == 0 {
        return TC_ACT_UNSPEC;
    }
    if service.flags & SVC_F_SOURCE_RANGES != 0 && !source_allowed(service.id, &s.flow.saddr) {
        count(NP_STAT_DENIED);
        return TC_ACT_SHOT;
    }
    match new_flow(s, service, config) {
        NewFlow::Tracked => translate(ctx, &s.flow, &s.entry),
        NewFlow::Verdict(verdict) => verdict,
        NewFlow::Refuse => reject::refuse(ctx, &s.flow),
    }
}

/// Whether `client` lies in one of the source ranges of service `id`.
#[inline(always)]
fn source_allowed(id: u32, client: &[u8; 16]) -> bool {
    let id = id.to_be_bytes();
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&id);
    data[4..].copy_from_slice(client);
    SOURCE_RANGES.get(Key::new(160, data)).is_some()
}

/// A reply from a pod of this node (tc ingress of its veth): translated back and sent to the
/// client when it belongs to a tracked flow; `None` otherwise.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys live in per-CPU scratch memory; by value they would be copied onto the stack"
)]
#[inline(never)]
pub(crate) fn reply_from_pod(ctx: &mut TcContext) -> Option<i32> {
    config()?;
    let s = scratch()?;
    if !flow::parse_into(Data::tc(ctx), &mut s.flow) {
        return None;
    }
    conntrack::key_into(&s.flow, &mut s.key);
    let entry = CONNTRACK.get_ptr_mut(&s.key)?;
    // SAFETY: the LRU map keeps the value valid for the program's run.
    let tracked = unsafe { &*entry };
    if tracked.flags & CT_F_REPLY == 0 {
        return None;
    }
    conntrack::touch(entry, &s.flow, now());
    count(NP_STAT_REPLIES);
    Some(translate_reply(ctx, &s.flow, tracked))
}

/// `gannet_nodeport_xdp`: the same lookups and tracking as [`from_netdev`]; the packet is
/// rewritten and sent here only when it leaves by the interface it came in on (see `xdp.rs`).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key lives in per-CPU scratch memory; by value it would be copied onto the stack"
)]
#[inline(always)]
pub(crate) fn from_xdp(ctx: &XdpContext) -> u32 {
    let Some(config) = config() else {
        return XDP_PASS;
    };
    let Some(s) = scratch() else {
        return XDP_PASS;
    };
    if !flow::parse_into(Data::xdp(ctx), &mut s.flow) {
        return XDP_PASS;
    }
    conntrack::key_into(&s.flow, &mut s.key);
    if let Some(entry) = CONNTRACK.get_ptr_mut(&s.key) {
        // SAFETY: the LRU map keeps the value valid for the program's run.
        let tracked = unsafe { &*entry };
        if tracked.flags & CT_F_REPLY != 0 || still_valid(&s.flow, tracked) {
            let verdict = xdp::transmit(ctx, &s.flow, tracked);
            if verdict != XDP_PASS {
                // Counted here only when sent here; tc counts what it translates.
                conntrack::touch(entry, &s.flow, now());
                count(if tracked.flags & CT_F_REPLY != 0 {
                    NP_STAT_REPLIES
                } else {
                    NP_STAT_FORWARD
                });
                count(NP_STAT_XDP_TX);
            }
            return verdict;
        }
    }
    let service_key = ServiceKey {
        addr: s.flow.daddr,
        port: s.flow.dport,
        proto: s.flow.proto,
        pad: 0,
    };
    // SAFETY: not preallocated: the value is not rewritten while the program holds it.
    let Some(service) = (unsafe { SERVICES.get(service_key) }) else {
        return XDP_PASS;
    };
    if service.flags & SVC_F_EXTERNAL == 0 {
        return XDP_PASS;
    }
    if service.flags & SVC_F_SOURCE_RANGES != 0 && !source_allowed(service.id, &s.flow.saddr) {
        count(NP_STAT_DENIED);
        return XDP_DROP;
    }
    match new_flow(s, service, config) {
        NewFlow::Tracked => {
            let verdict = xdp::transmit(ctx, &s.flow, &s.entry);
            if verdict == XDP_TX {
                count(NP_STAT_XDP_TX);
            }
            verdict
        }
        NewFlow::Verdict(verdict) => xdp::action(verdict),
        // tc refuses it.
        NewFlow::Refuse => XDP_PASS,
    }
}

/// The tracked flow an ICMP error is about (see `icmp.rs`), its quoted packet parsed into
/// `s.icmp`.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key lives in per-CPU scratch memory; by value it would be copied onto the stack"
)]
#[inline(always)]
fn icmp_flow(ctx: &TcContext, s: &mut Scratch) -> Option<*mut CtEntry> {
    let l3 = packet::l3(ctx)?;
    if !icmp::parse(ctx, l3, &mut s.icmp) {
        return None;
    }
    icmp::key_into(&s.icmp, &mut s.key);
    CONNTRACK.get_ptr_mut(&s.key)
}

/// An ICMP error about a tracked flow arriving at an external interface: rewritten and sent to
/// the client or the backend; anything else `TC_ACT_UNSPEC`.
#[inline(never)]
fn icmp_error(ctx: &mut TcContext, s: &mut Scratch) -> i32 {
    let Some(entry) = icmp_flow(ctx, s) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: the LRU map keeps the value valid for the program's run.
    let tracked = unsafe { &*entry };
    let Some(direction) = icmp::rewrite(ctx, &s.icmp, tracked) else {
        return TC_ACT_SHOT;
    };
    icmp::as_flow(&s.icmp, tracked, &mut s.flow);
    count(NP_STAT_ICMP_ERRORS);
    match direction {
        Direction::ToClient => fib::route(ctx, &s.flow, &s.flow.saddr, &s.flow.daddr),
        Direction::ToBackend => fib::forward(ctx, &s.flow, &s.flow.saddr, &s.flow.daddr),
    }
}

/// An ICMP error a pod of this node sends about a client's packet (e.g. UDP port unreachable):
/// rewritten and routed to the client; anything else `TC_ACT_UNSPEC`. Separate from
/// [`icmp_error`] (and called by `gannet_from_pod` itself, not under [`reply_from_pod`]) so the
/// veth's call graph (which the verifier sizes as a whole) holds no tunnel.
#[inline(never)]
pub(crate) fn icmp_error_from_pod(ctx: &mut TcContext) -> i32 {
    if config().is_none() {
        return TC_ACT_UNSPEC;
    }
    let Some(s) = scratch() else {
        return TC_ACT_UNSPEC;
    };
    let Some(entry) = icmp_flow(ctx, s) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: the LRU map keeps the value valid for the program's run.
    let tracked = unsafe { &*entry };
    if tracked.flags & CT_F_REPLY == 0 || icmp::rewrite(ctx, &s.icmp, tracked).is_none() {
        return TC_ACT_UNSPEC;
    }
    icmp::as_flow(&s.icmp, tracked, &mut s.flow);
    count(NP_STAT_ICMP_ERRORS);
    fib::route(ctx, &s.flow, &s.flow.saddr, &s.flow.daddr)
}

/// Whether a tracked client → frontend entry still applies: its backend is still the one it
/// named, and a TCP SYN does not reopen a flow that was closed.
#[inline(always)]
fn still_valid(flow: &Flow, tracked: &CtEntry) -> bool {
    if flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && conntrack::closing(tracked) {
        return false;
    }
    // SAFETY: not preallocated: the value is not rewritten while we read it.
    match unsafe { BACKENDS.get(tracked.backend_id) } {
        Some(backend) => backend.addr == tracked.daddr && backend.port == tracked.dport,
        None => false,
    }
}

/// Rewrites the packet as `tracked` says and forwards it. Not inlined, nor are its parts: the
/// frames of a call chain share the 512 bytes of BPF stack.
#[inline(never)]
fn translate(ctx: &mut TcContext, flow: &Flow, tracked: &CtEntry) -> i32 {
    let to = Tuple {
        saddr: tracked.saddr,
        daddr: tracked.daddr,
        sport: tracked.sport,
        dport: tracked.dport,
    };
    if !nat::rewrite(ctx, flow, &to) {
        return TC_ACT_SHOT;
    }
    // The frontend the client addressed travels with the packet (the flow still holds it).
    if tracked.flags & CT_F_DSR != 0 && !dsr::push(ctx, &flow.daddr, flow.dport) {
        return TC_ACT_SHOT;
    }
    fib::forward(ctx, flow, &to.saddr, &to.daddr)
}

/// A client's packet another node balanced here with direct server return (`dsr.rs`): the
/// frontend it names must be one of the cluster's external frontends (else it is dropped: the
/// option would let anyone make a pod answer from any address). The backend's replies are
/// tracked to leave from the frontend; the option goes; the packet goes on to its pod.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and entries live in per-CPU scratch memory; by value they would be copied onto the stack"
)]
#[inline(never)]
fn dsr_in(ctx: &mut TcContext, s: &mut Scratch, frontend: [u8; 16], port: u16) -> i32 {
    let external = |addr: [u8; 16]| {
        let key = ServiceKey {
            addr,
            port,
            proto: s.flow.proto,
            pad: 0,
        };
        // SAFETY: not preallocated: the value is not rewritten while the program holds it.
        unsafe { SERVICES.get(key) }.is_some_and(|service| service.flags & SVC_F_EXTERNAL != 0)
    };
    // An external or LoadBalancer IP is a frontend on every node; another node's address with
    // a node port is one when this node's address with the same port is.
    let node = config().map_or([0; 16], |c| c.node_v4);
    if !external(frontend) && (node == [0; 16] || !external(node)) {
        count(NP_STAT_DENIED);
        return TC_ACT_SHOT;
    }
    let flow = &s.flow;
    s.reply_key = CtKey {
        saddr: flow.daddr,
        daddr: flow.saddr,
        sport: flow.dport,
        dport: flow.sport,
        proto: flow.proto,
        pad: [0; 3],
    };
    s.reply = CtEntry {
        saddr: frontend,
        daddr: flow.saddr,
        sport: port,
        dport: flow.sport,
        flags: CT_F_REPLY | CT_F_DSR,
        tcp: 0,
        pad: 0,
        service_id: 0,
        backend_id: 0,
        last_seen_ns: now(),
    };
    // Refreshed by every packet of the flow (each carries the option).
    if CONNTRACK.insert(&s.reply_key, &s.reply, 0).is_err() {
        count(NP_STAT_CT_FAILED);
        return TC_ACT_SHOT;
    }
    if let Err(verdict) = dsr::pull(ctx) {
        return verdict;
    }
    count(NP_STAT_DSR_IN);
    fib::forward(ctx, &s.flow, &s.flow.saddr, &s.flow.daddr)
}

/// [`translate`] for a reply: its client is never a pod of this node or behind the tunnel, so
/// it goes out as the FIB says. A function of its own so that the veth's call graph (which the
/// verifier sizes as a whole) does not include the tunnel's.
#[inline(never)]
fn translate_reply(ctx: &mut TcContext, flow: &Flow, tracked: &CtEntry) -> i32 {
    let to = Tuple {
        saddr: tracked.saddr,
        daddr: tracked.daddr,
        sport: tracked.sport,
        dport: tracked.dport,
    };
    if !nat::rewrite(ctx, flow, &to) {
        return TC_ACT_SHOT;
    }
    fib::route(ctx, flow, &to.saddr, &to.daddr)
}

/// How a backend's replies reach the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Return {
    /// Through this node, which the client's packets keep as their source (SNAT): a backend on
    /// another node.
    Snat,
    /// Straight from the backend's node (`--lb-mode dsr`, IPv4): the packets carry the frontend
    /// in an IP option.
    Dsr,
    /// Through this node without SNAT: a pod of this node, or `externalTrafficPolicy: Local`.
    Direct,
}

/// What `new_flow` decided.
enum NewFlow {
    /// Tracked: translate the packet with `Scratch::entry`.
    Tracked,
    /// Not tracked: return this verdict.
    Verdict(i32),
    /// No backend: refuse the connection.
    Refuse,
}

/// Picks a backend for the first packet of a flow and tracks the flow in both directions; the
/// client → backend entry is left in `s.entry`.
#[inline(never)]
fn new_flow(s: &mut Scratch, service: &ServiceValue, config: &NodePortConfig) -> NewFlow {
    let affinity = service.flags & SVC_F_AFFINITY != 0;
    let hash = maglev::hash(&s.flow, affinity);
    let remembered = if affinity {
        remembered_backend(service, &s.flow.saddr)
    } else {
        None
    };
    let backend_id = match remembered {
        Some(id) => id,
        None => match maglev::backend(service.id, hash, config.maglev_table_size) {
            Some(id) => id,
            None => return no_backend(service),
        },
    };
    // SAFETY: not preallocated: the value is not rewritten while the program holds it.
    let Some(backend) = (unsafe { BACKENDS.get(backend_id) }) else {
        return no_backend(service);
    };
    if affinity {
        remember_backend(service.id, &s.flow.saddr, backend_id);
    }
    let mode = if service.flags & SVC_F_LOCAL != 0 || endpoint::local(backend.addr).is_some() {
        Return::Direct
    } else if config.flags & NODEPORT_F_DSR != 0 && s.flow.l3 == L3::V4 {
        Return::Dsr
    } else {
        Return::Snat
    };
    if !track(s, service.id, backend_id, backend, mode, config) {
        count(NP_STAT_CT_FAILED);
        return NewFlow::Verdict(TC_ACT_SHOT);
    }
    count(NP_STAT_NEW_FLOWS);
    NewFlow::Tracked
}

/// The backend a `sessionAffinity: ClientIP` client was given within the service's timeout
/// (counted from its last new flow, as kube-proxy counts it). The agent removes entries of
/// backends a service loses.
#[inline(always)]
fn remembered_backend(service: &ServiceValue, client: &[u8; 16]) -> Option<u32> {
    let key = NpAffinityKey {
        service_id: service.id,
        pad: 0,
        client: *client,
    };
    // SAFETY: copied out at once; a concurrent update stores another backend of the service.
    let entry = unsafe { AFFINITY.get(key) }.copied()?;
    let timeout = u64::from(service.affinity_timeout) * NSEC_PER_SEC;
    (now().wrapping_sub(entry.last_used_ns) <= timeout).then_some(entry.backend_id)
}

#[inline(always)]
fn remember_backend(service_id: u32, client: &[u8; 16], backend_id: u32) {
    let key = NpAffinityKey {
        service_id,
        pad: 0,
        client: *client,
    };
    let value = AffinityValue {
        backend_id,
        backend_epoch: 0,
        pad: 0,
        last_used_ns: now(),
    };
    // Best effort: without the entry the next flow is still balanced by the client's hash.
    let _ = AFFINITY.insert(key, value, 0);
}

/// No backend for a new flow: `externalTrafficPolicy: Local` drops (as kube-proxy), any other
/// frontend refuses it (`reject.rs`).
#[inline(always)]
fn no_backend(service: &ServiceValue) -> NewFlow {
    count(NP_STAT_NO_BACKEND);
    if service.flags & SVC_F_LOCAL != 0 {
        NewFlow::Verdict(TC_ACT_SHOT)
    } else {
        NewFlow::Refuse
    }
}

/// Tracks a new flow in both directions (`s.entry` for the client's packets, `s.reply` under
/// `s.reply_key` for the backend's). With `snat`, the reply key claims a free SNAT port.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and entries live in per-CPU scratch memory; by value they would be copied onto the stack"
)]
#[inline(always)]
fn track(
    s: &mut Scratch,
    service_id: u32,
    backend_id: u32,
    backend: &BackendValue,
    mode: Return,
    config: &NodePortConfig,
) -> bool {
    let now = now();
    let flow = &s.flow;
    s.entry = CtEntry {
        saddr: flow.saddr,
        daddr: backend.addr,
        sport: flow.sport,
        dport: backend.port,
        flags: 0,
        tcp: conntrack::tcp_bits(flow),
        pad: 0,
        service_id,
        backend_id,
        last_seen_ns: now,
    };
    s.reply = CtEntry {
        saddr: flow.daddr,
        daddr: flow.saddr,
        sport: flow.dport,
        dport: flow.sport,
        flags: CT_F_REPLY,
        tcp: 0,
        pad: 0,
        service_id,
        backend_id,
        last_seen_ns: now,
    };
    s.reply_key = CtKey {
        saddr: backend.addr,
        daddr: flow.saddr,
        sport: backend.port,
        dport: flow.sport,
        proto: flow.proto,
        pad: [0; 3],
    };
    if mode == Return::Dsr {
        s.entry.flags = CT_F_DSR;
    }
    if mode == Return::Snat {
        let (address, flag) = match flow.l3 {
            L3::V4 => (config.snat_v4, NODEPORT_F_SNAT_V4),
            L3::V6 => (config.snat_v6, NODEPORT_F_SNAT_V6),
        };
        if config.flags & flag == 0 {
            return false;
        }
        s.entry.saddr = address;
        s.entry.flags = CT_F_SNAT;
        s.reply.flags = CT_F_REPLY | CT_F_SNAT;
        s.reply_key.daddr = address;
        if !claim_snat_port(s) {
            return false;
        }
    } else if CONNTRACK.insert(&s.reply_key, &s.reply, 0).is_err() {
        return false;
    }
    if CONNTRACK.insert(&s.key, &s.entry, 0).is_err() {
        let _ = CONNTRACK.remove(&s.reply_key);
        return false;
    }
    true
}

/// Finds a SNAT port for the flow: the reply entry is inserted only if its key is new, trying
/// random ports (as netfilter's `fully-random`: flows that collide once do not collide again).
/// When every port tried is taken, the first one whose flow is over (`conntrack::over`: a RST,
/// FINs both ways, or idle past its timeout, still waiting for the agent's sweep) is taken over,
/// as netfilter reuses the ports of connections in `TIME_WAIT`: without it, closed flows would
/// hold every port of a busy backend until the sweep. The port goes into both entries.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and entries live in per-CPU scratch memory; by value they would be copied onto the stack"
)]
#[inline(always)]
fn claim_snat_port(s: &mut Scratch) -> bool {
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    // Network order; no port of the range is 0.
    let mut reusable = 0u16;
    for _ in 0..SNAT_ATTEMPTS {
        // SAFETY: helper without arguments.
        let random = unsafe { bpf_get_prandom_u32() };
        #[expect(
            clippy::cast_possible_truncation,
            reason = "below the port range's size"
        )]
        let port = (SNAT_PORT_MIN + (random % range) as u16).to_be();
        s.reply_key.dport = port;
        if CONNTRACK
            .insert(&s.reply_key, &s.reply, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            s.entry.sport = port;
            return true;
        }
        if reusable == 0 && port_reusable(s) {
            reusable = port;
        }
    }
    if reusable == 0 {
        return false;
    }
    s.reply_key.dport = reusable;
    take_over_port(s)
}

/// Whether the flow holding the SNAT port of `s.reply_key` is over. Leaves the key of that flow's
/// client entry in `s.old_key`.
#[inline(never)]
fn port_reusable(s: &mut Scratch) -> bool {
    match old_flow(s) {
        // Gone since the insert failed: free.
        None => true,
        // SAFETY: LRU map values stay valid for the program's run.
        Some((reply, client)) => unsafe {
            conntrack::over(s.reply_key.proto, &*reply, client.map(|c| &*c), now())
        },
    }
}

/// The reply entry under `s.reply_key` and, when it is still there and belongs to the same
/// flow, its client entry (whose key goes into `s.old_key`).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys live in per-CPU scratch memory; by value they would be copied onto the stack"
)]
#[inline(always)]
fn old_flow(s: &mut Scratch) -> Option<(*const CtEntry, Option<*const CtEntry>)> {
    let reply = CONNTRACK.get_ptr(&s.reply_key)?;
    // SAFETY: LRU map values stay valid for the program's run.
    let r = unsafe { &*reply };
    // The reply entry restores the client and the frontend: the client entry's key.
    s.old_key = CtKey {
        saddr: r.daddr,
        daddr: r.saddr,
        sport: r.dport,
        dport: r.sport,
        proto: s.reply_key.proto,
        pad: [0; 3],
    };
    let client = CONNTRACK.get_ptr(&s.old_key).filter(|c| {
        // SAFETY: as above.
        let c = unsafe { &**c };
        // The client may have started a new flow from the same port since.
        c.flags & CT_F_REPLY == 0
            && c.sport == s.reply_key.dport
            && c.saddr == s.reply_key.daddr
            && c.backend_id == r.backend_id
    });
    Some((reply, client))
}

/// Takes the port of `s.reply_key` over from a flow that is over: its client entry goes (a late
/// packet of it then starts no confusion on the new flow's addresses), the reply entry becomes
/// the new flow's.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and entries live in per-CPU scratch memory; by value they would be copied onto the stack"
)]
#[inline(never)]
fn take_over_port(s: &mut Scratch) -> bool {
    if let Some((_, Some(_))) = old_flow(s) {
        let _ = CONNTRACK.remove(&s.old_key);
    }
    if CONNTRACK.insert(&s.reply_key, &s.reply, 0).is_err() {
        return false;
    }
    s.entry.sport = s.reply_key.dport;
    true
}
