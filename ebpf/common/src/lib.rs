//! Types and constants shared by gannet's kernel programs and user space.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, has explicit padding and holds only
//! integers. Addresses and ports are kept in **network byte order**, exactly as the kernel
//! hands them to the programs: a port is a `u16` whose two bytes in memory are the port in
//! network order; an address is 16 bytes in network order.
//!
//! IPv4 addresses are stored as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), so one set of
//! maps serves both families, and a dual-stack IPv6 socket connecting to `::ffff:<ClusterIP>`
//! is balanced like an IPv4 socket connecting to `<ClusterIP>`.
#![no_std]

/// Names of the maps, as pinned under `<bpf-root>/maps/`. At most 15 bytes (kernel limit).
pub mod map_names {
    /// [`ServiceKey`](super::ServiceKey) → [`ServiceValue`](super::ServiceValue).
    pub const SERVICES: &str = "GANNET_SVC";
    /// [`SlotKey`](super::SlotKey) → backend id (`u32`).
    pub const SLOTS: &str = "GANNET_SLOTS";
    /// backend id (`u32`) → [`BackendValue`](super::BackendValue).
    pub const BACKENDS: &str = "GANNET_BACKENDS";
    /// [`RevNatKey`](super::RevNatKey) → [`RevNatValue`](super::RevNatValue) (LRU).
    pub const REV_NAT: &str = "GANNET_REVNAT";
    /// [`AffinityKey`](super::AffinityKey) → [`AffinityValue`](super::AffinityValue) (LRU).
    pub const AFFINITY: &str = "GANNET_AFFINITY";
    /// Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`): a TCP socket →
    /// [`SockRevNat`](super::SockRevNat), the reverse translation of its connect; freed with the
    /// socket.
    pub const SOCK_REV_NAT: &str = "GANNET_SK_RNAT";
    /// Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`): a UDP socket →
    /// [`UdpSockState`](super::UdpSockState), the services it sent to, the backend each gave it
    /// and the reverse translation of their replies; freed with the socket.
    pub const SOCK_UDP: &str = "GANNET_SK_UDP";
    /// [`EndpointKey`](super::EndpointKey) → [`EndpointValue`](super::EndpointValue): the pods
    /// of this node.
    pub const ENDPOINTS: &str = "GANNET_EP";
    /// host-side ifindex (`u32`) → [`EndpointStats`](super::EndpointStats), per CPU.
    pub const ENDPOINT_STATS: &str = "GANNET_EP_STATS";
    /// host-side ifindex (`u32`) → [`EndpointDrops`](super::EndpointDrops), per CPU: what the
    /// pod program dropped of what the pod sent. Created by the program at a pod's first drop.
    pub const ENDPOINT_DROPS: &str = "GANNET_EP_DROPS";
    /// LPM trie: aya's `lpm_trie::Key<[u8; 16]>` → [`NodeValue`](super::NodeValue): the other
    /// nodes' pod CIDRs (`--overlay ebpf`). The key's data is the prefix's address in network
    /// order, IPv4 as `::ffff:a.b.c.d`; its length counts bits over all 16 bytes, so an IPv4
    /// `/len` is `96 + len` ([`V4_MAPPED_PREFIX_BITS`](super::V4_MAPPED_PREFIX_BITS)). The
    /// programs look up a destination with length 128.
    pub const NODES: &str = "GANNET_NODES";
    /// Array of one [`TunnelConfig`](super::TunnelConfig): this node's VXLAN device.
    pub const TUNNEL: &str = "GANNET_TUNNEL";
    /// LRU hash: [`CtKey`](super::CtKey) → [`CtEntry`](super::CtEntry): the flows the
    /// NodePort programs translated, one entry per direction.
    pub const CONNTRACK: &str = "GANNET_CT";
    /// Hash of maps: service id (`u32`) → the Maglev lookup table of each externally reachable
    /// frontend: an array (`BPF_F_INNER_MAP | BPF_F_MMAPABLE`) of
    /// [`maglev_slots`]`(`[`maglev_table_size`]`)` `u64` values, two backend ids to a value
    /// (see [`maglev_pack`]).
    ///
    /// [`maglev_slots`]: super::maglev_slots
    /// [`maglev_pack`]: super::maglev_pack
    /// [`maglev_table_size`]: super::NodePortConfig::maglev_table_size
    pub const MAGLEV: &str = "GANNET_MAGLEV";
    /// Array of one [`NodePortConfig`](super::NodePortConfig).
    pub const NODEPORT_CONFIG: &str = "GANNET_NP_CFG";
    /// Per-CPU array of `u64` counters, indexed by the `NP_STAT_*` constants.
    pub const NODEPORT_STATS: &str = "GANNET_NP_STATS";
    /// LPM trie: aya's `lpm_trie::Key<[u8; 20]>` → `u8` (1): the clients a LoadBalancer IP
    /// frontend with `loadBalancerSourceRanges` accepts. The key's data is the service id
    /// (4 bytes, big-endian) then the prefix's address (16 bytes, IPv4 as `::ffff:a.b.c.d`); its
    /// length counts the 32 bits of the id too.
    pub const SOURCE_RANGES: &str = "GANNET_SRC_RNG";
    /// LRU hash: [`NpAffinityKey`](super::NpAffinityKey) →
    /// [`AffinityValue`](super::AffinityValue): `sessionAffinity: ClientIP` for packets from
    /// outside.
    pub const NODEPORT_AFFINITY: &str = "GANNET_NP_AFF";
}

/// Default capacity of [`map_names::SERVICES`]: service frontends (ClusterIP × port × protocol).
pub const DEFAULT_MAX_SERVICES: u32 = 65_536;
/// Default capacity of [`map_names::BACKENDS`]: distinct backend address:port pairs.
pub const DEFAULT_MAX_BACKENDS: u32 = 131_072;
/// Default capacity of [`map_names::SLOTS`]: backend slots of all services, counting both
/// generations while a service is being switched.
pub const DEFAULT_MAX_SLOTS: u32 = 262_144;
/// Default capacity of the socket reverse-NAT LRU map. TCP and UDP sockets keep their
/// translations in socket storage; a UDP `connect()` still leaves an entry here, a hint for the
/// agent (which service a connected socket reached its backend through, see
/// `terminate_udp`), and the reverse hooks read it for sockets translated by a gannetd from
/// before socket storage.
pub const DEFAULT_MAX_REV_NAT: u32 = 131_072;
/// Default capacity of the affinity LRU map (ClientIP affinity; UDP per-socket stickiness lives
/// in the socket's storage, [`UdpSockState`]).
pub const DEFAULT_MAX_AFFINITY: u32 = 65_536;

/// Default capacity of the endpoint map (pod addresses on this node, both families).
pub const DEFAULT_MAX_ENDPOINTS: u32 = 16_384;

/// Default capacity of the node map (the other nodes' pod CIDRs, both families).
pub const DEFAULT_MAX_NODES: u32 = 16_384;

/// The smallest capacity the agent accepts for an LRU map (conntrack, reverse NAT, affinity).
/// The kernel's LRU hash hands free entries to each CPU 128 at a time and, when none is left,
/// evicts up to 128 at once: a map not many times larger than that forgets entries of live flows
/// (measured: with 64 entries on 2 CPUs, one new connection in 20 broke). 1 024 is also
/// Cilium's floor; the agent warns below [`LRU_ENTRIES_PER_CPU`] per possible CPU.
pub const MIN_LRU_CAPACITY: u32 = 1024;
/// Below this many entries per possible CPU the agent warns that an LRU map is too small to
/// behave as one (see [`MIN_LRU_CAPACITY`]).
pub const LRU_ENTRIES_PER_CPU: u32 = 256;

/// Default capacity of the conntrack map (both directions of a flow count: two entries).
pub const DEFAULT_MAX_CONNTRACK: u32 = 262_144;
/// Default capacity of the Maglev outer map: externally reachable frontends.
pub const DEFAULT_MAX_EXTERNAL: u32 = 65_536;
/// The Maglev table size the kernel programs were built with as the inner map's template; the
/// agent creates inner maps of `--maglev-table-size` (the template allows any size).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16_381;

/// Backend ids per value of a Maglev table's inner map. A BPF array rounds every value up to 8
/// bytes, so an array of `u32` ids would take twice the memory of its entries (131 KiB for the
/// default 16 381 entries); two ids to a `u64` take none more than they need (64 KiB).
///
/// The layout, a contract between the agent (which writes the tables through a memory mapping)
/// and the programs (which read them): entry `i` of a table of `m` entries is the half
/// `i % 2` of value `i / 2` ([`maglev_entry`]); value `k` holds entry `2k` in its low 32 bits and
/// entry `2k + 1` in its high 32 bits ([`maglev_pack`]). With `m` odd (it is prime) the high half
/// of the last value is 0 and never read. On a little-endian machine (every BPF target gannet
/// builds for) the array's bytes are exactly the `u32` entries in order.
pub const MAGLEV_IDS_PER_SLOT: u32 = 2;

/// The values of the inner map holding a Maglev table of `entries` backend ids.
#[must_use]
pub const fn maglev_slots(entries: u32) -> u32 {
    entries.div_ceil(MAGLEV_IDS_PER_SLOT)
}

/// A Maglev table's value holding entries `2k` (`even`) and `2k + 1` (`odd`).
#[must_use]
pub const fn maglev_pack(even: u32, odd: u32) -> u64 {
    (odd as u64) << 32 | even as u64
}

/// Entry `index` of a Maglev table, from its value `index / 2`.
#[must_use]
pub const fn maglev_entry(slot: u64, index: u32) -> u32 {
    // Truncation intended: the half `index % 2` selects.
    (slot >> ((index & 1) * 32)) as u32
}

/// Source ports the NodePort programs use when they SNAT a flow to a backend on another node:
/// above Linux's default ephemeral range (32768–60999), so they never collide with the node's
/// own connections unless `ip_local_port_range` was widened.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Most backends one service frontend can have: a slot index must fit below [`SLOT_GEN_BIT`].
pub const MAX_BACKENDS_PER_SERVICE: u32 = 0xffff;

/// `IPPROTO_TCP`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;

/// Errno the connect/sendmsg programs return for a service without ready backends.
pub const ECONNREFUSED: i32 = 111;

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (Kubernetes' default).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;

/// Frontend of a service: `ClusterIP:port/protocol`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Service address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Service port, network order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    pub pad: u8,
}

/// `ServiceValue::flags`: `sessionAffinity: ClientIP`.
pub const SVC_F_AFFINITY: u8 = 1;

/// `ServiceValue::flags`: reachable from outside the node (a NodePort, external IP or
/// LoadBalancer IP frontend): the NodePort programs balance packets to it with its Maglev table.
pub const SVC_F_EXTERNAL: u8 = 2;
/// `ServiceValue::flags`: the frontend accepts only the clients in [`map_names::SOURCE_RANGES`]
/// under its id (`loadBalancerSourceRanges`).
pub const SVC_F_SOURCE_RANGES: u8 = 8;
/// `ServiceValue::flags`: `externalTrafficPolicy: Local`: the Maglev table holds only this node's
/// endpoints and the client's address is kept (no SNAT).
pub const SVC_F_LOCAL: u8 = 4;

/// What a frontend resolves to.
///
/// The agent switches a service atomically: it writes the new backend slots under the
/// generation the programs are *not* reading, then replaces this value (new `count` and
/// `generation` in one map update), and only then frees the old generation's slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Agent-assigned id, unique among frontends; keys the slots and the affinity entries.
    pub id: u32,
    /// Number of backend slots in use; 0 means the service exists but has no ready backend.
    pub count: u16,
    /// Which slot generation (0 or 1) `count` refers to.
    pub generation: u8,
    /// `SVC_F_*` bits.
    pub flags: u8,
    /// ClientIP affinity timeout in seconds (when [`SVC_F_AFFINITY`] is set).
    pub affinity_timeout: u32,
    pub pad: u32,
}

/// Bit of [`SlotKey::slot`] that carries the generation.
pub const SLOT_GEN_BIT: u32 = 1 << 31;

/// One backend slot of a service: `(service id, generation | index)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub service_id: u32,
    /// Slot index (0-based), with [`SLOT_GEN_BIT`] set for generation 1.
    pub slot: u32,
}

impl SlotKey {
    #[inline(always)]
    #[must_use]
    pub const fn new(service_id: u32, generation: u8, index: u32) -> Self {
        let gen_bit = if generation == 0 { 0 } else { SLOT_GEN_BIT };
        Self {
            service_id,
            slot: gen_bit | index,
        }
    }
}

/// A backend: `address:port` of a ready endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendValue {
    /// Backend address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Backend port, network order.
    pub port: u16,
    /// Which allocation of this backend id this is, host order: the agent gives every backend
    /// it allocates a new one (never 0; maps written before epochs existed hold 0). An affinity
    /// entry remembers it ([`AffinityValue::backend_epoch`]), so a stale entry never follows a
    /// reused id to another backend.
    pub epoch: u16,
}

/// Socket-level reverse NAT: which service a socket's peer stands for.
///
/// Written when `connect()`/`sendmsg()` is translated; read by `recvmsg()` and
/// `getpeername()` so the application only ever sees the service address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie()` of the client socket.
    pub cookie: u64,
    /// Backend address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Backend port, network order.
    pub port: u16,
    pub pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNatValue {
    /// Service address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Service port, network order.
    pub port: u16,
    pub pad: u16,
    pub service_id: u32,
}

/// Socket-level reverse NAT of one TCP socket, kept in the socket's own storage
/// ([`map_names::SOCK_REV_NAT`]): written by `connect()`, read by `getpeername()`. A TCP socket
/// has one peer, so no per-backend key is needed; the backend is kept to check that the peer
/// asked about is the one this translation is for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRevNat {
    /// Backend address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub backend_addr: [u8; 16],
    /// Service address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub service_addr: [u8; 16],
    /// Backend port, network order.
    pub backend_port: u16,
    /// Service port, network order.
    pub service_port: u16,
}

/// Services one UDP socket remembers at a time ([`UdpSockState::peers`]). A socket that sends
/// to more services than this forgets the one it sent to least recently: that service's next
/// datagram is balanced anew, and replies from its old backend are no longer translated. Only
/// the socket itself can cause that.
pub const UDP_SOCK_PEERS: usize = 4;

/// One service a UDP socket sent to (or connected to): the backend it was given, and what a
/// reply from that backend is translated back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpPeer {
    /// Service address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub service_addr: [u8; 16],
    /// Backend address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub backend_addr: [u8; 16],
    /// Service port, network order.
    pub service_port: u16,
    /// Backend port, network order.
    pub backend_port: u16,
    /// [`ServiceValue::id`] of the frontend, host order.
    pub service_id: u32,
    /// The backend's id, host order.
    pub backend_id: u32,
    /// [`BackendValue::epoch`] of the backend when it was picked, host order.
    pub backend_epoch: u16,
    /// The slot index the backend was picked from, host order: a later datagram keeps the
    /// backend only while the service's current generation still holds it at this index.
    pub slot: u16,
    /// [`UdpSockState::sends`] at this entry's last datagram, host order; 0: an empty entry.
    pub last_send: u32,
}

/// The socket load balancer's state of one UDP socket, in the socket's own storage
/// ([`map_names::SOCK_UDP`]): written by `connect()`/`sendmsg()`, read by `recvmsg()` and
/// `getpeername()` (and by gannetd through `sock_diag` when a backend leaves a service).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSockState {
    pub peers: [UdpPeer; UDP_SOCK_PEERS],
    /// Datagrams (and connects) translated for this socket, host order, never 0 once counted:
    /// orders the entries by their last use.
    pub sends: u32,
    pub pad: u32,
}

/// `AffinityKey::kind`: the client is a network namespace (ClientIP affinity: at the socket
/// layer every socket of a pod shares the pod's IP, and the netns cookie names the pod).
pub const AFFINITY_NETNS: u32 = 1;
/// `AffinityKey::kind`: the client is one UDP socket (per-socket backend stickiness, as
/// gannetd kept it before it moved into [`UdpSockState`]; no longer written).
pub const AFFINITY_SOCKET: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    /// [`AFFINITY_NETNS`] or [`AFFINITY_SOCKET`].
    pub kind: u32,
    /// Netns cookie or socket cookie, host order.
    pub client: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// [`BackendValue::epoch`] of the backend when the entry was made (socket load balancer);
    /// a hit counts only while the backend id still holds that allocation. 0 in the NodePort
    /// programs' entries (their backends come from the Maglev table).
    pub backend_epoch: u16,
    pub pad: u16,
    /// `bpf_ktime_get_ns()` of the last use.
    pub last_used_ns: u64,
}

/// A pod address on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Pod address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
}

/// How to reach a pod of this node without the host's routing stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointValue {
    /// ifindex of the pod's host-side veth (in the node's network namespace).
    pub ifindex: u32,
    /// `EP_F_*` bits.
    pub flags: u32,
    /// MAC of the pod's interface (the destination of frames into the pod).
    pub mac: [u8; 6],
    /// MAC of the host-side veth (the pod's gateway; the source of frames into the pod).
    pub host_mac: [u8; 6],
}

/// Packet and byte counters of one endpoint, from the pod's point of view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Packets delivered to the pod (by the fast path or the host stack).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets the pod sent.
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Packets of one pod that the pod program dropped (they are counted in its
/// [`EndpointStats::tx_packets`] too).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointDrops {
    /// IPv4 and IPv6 packets whose source is not one of the pod's addresses (IPv6 link-local
    /// and unspecified sources are the pod's own).
    pub source: u64,
    /// ARP packets whose sender address, and IPv6 neighbour advertisements whose target, is
    /// not one of the pod's addresses.
    pub neighbour: u64,
}

/// What an IPv4 prefix length is offset by in the 16-byte, IPv4-mapped key of
/// [`map_names::NODES`]: the 96 bits of `::ffff:` come first.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// A remote node, as the tunnel programs need it: where to send the pod CIDR's packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeValue {
    /// The node's underlay address (the outer destination), network order; IPv4 as
    /// `::ffff:a.b.c.d`.
    pub ip: [u8; 16],
    /// The node's VTEP MAC (the inner destination MAC: the `gannet.io/vtep-mac` annotation,
    /// what Flannel's vxlan backend expects).
    pub mac: [u8; 6],
    /// `NODE_F_*` bits; none are defined yet (0).
    pub flags: u16,
}

/// `TunnelConfig::flags`: the tunnel is set up; without it the pod programs never encapsulate.
pub const TUNNEL_F_ENABLED: u16 = 1;
/// `TunnelConfig::flags`: the underlay is IPv6 (tunnel keys are read with `BPF_F_TUNINFO_IPV6`).
pub const TUNNEL_F_IPV6_UNDERLAY: u16 = 2;

/// This node's end of the overlay (`--overlay ebpf`), the only element of [`map_names::TUNNEL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelConfig {
    /// ifindex of the VXLAN device in external (collect-metadata) mode, host order.
    pub ifindex: u32,
    /// The VNI packets are sent with and accepted from, host order.
    pub vni: u32,
    /// This node's VTEP MAC (the inner source MAC of encapsulated frames).
    pub mac: [u8; 6],
    /// `TUNNEL_F_*` bits.
    pub flags: u16,
}

/// Conntrack key: a packet's addresses and ports as they arrive at the program that translates
/// it (network order; IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    pub pad: [u8; 3],
}

/// `CtEntry::flags`: the entry translates replies (backend → client); without it, the client's
/// packets (client → frontend).
pub const CT_F_REPLY: u8 = 1;
/// `CtEntry::flags`: the flow's source is translated (SNAT to this node, backend elsewhere).
pub const CT_F_SNAT: u8 = 2;

/// `CtEntry::flags`: direct server return (`--lb-mode dsr`): the client's packets carry the
/// frontend to the backend's node in an IPv4 option, and the backend answers the client from
/// there (on the backend's node, a reply entry with this flag rewrites the source to the
/// frontend).
pub const CT_F_DSR: u8 = 4;

/// The IPv4 option that carries the frontend in DSR mode: type 0x9a (copied on fragmentation,
/// class 0, number 26: unassigned by IANA, as Cilium uses it), length 8, then the frontend's
/// port and IPv4 address (network order).
pub const DSR_OPTION_TYPE: u8 = 0x9a;
/// Length of the DSR option, in bytes (the IPv4 header grows by two 32-bit words).
pub const DSR_OPTION_LEN: u8 = 8;

/// `CtEntry::tcp`: a SYN was seen in this direction.
pub const CT_TCP_SYN: u8 = 1;
/// `CtEntry::tcp`: a segment without SYN was seen in this direction (the flow is established).
pub const CT_TCP_ESTABLISHED: u8 = 2;
/// `CtEntry::tcp`: a FIN was seen in this direction.
pub const CT_TCP_FIN: u8 = 4;
/// `CtEntry::tcp`: a RST was seen in this direction.
pub const CT_TCP_RST: u8 = 8;

/// Conntrack timeouts in seconds, applied by the agent's garbage collection to the newer of a
/// flow's two entries (as Cilium's defaults).
pub const CT_TIMEOUT_TCP_ESTABLISHED: u32 = 21_600;
pub const CT_TIMEOUT_TCP_SYN: u32 = 60;
pub const CT_TIMEOUT_TCP_CLOSING: u32 = 10;
pub const CT_TIMEOUT_UDP: u32 = 60;

/// One direction of a translated flow: what a packet matching the key is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// New source address and port, network order.
    pub saddr: [u8; 16],
    /// New destination address and port, network order.
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `CT_F_*` bits.
    pub flags: u8,
    /// `CT_TCP_*` bits seen in this direction.
    pub tcp: u8,
    pub pad: u16,
    /// The frontend's service id (host order).
    pub service_id: u32,
    /// The selected backend's id (host order).
    pub backend_id: u32,
    /// `bpf_ktime_get_ns()` of the last packet in this direction.
    pub last_seen_ns: u64,
}

/// Settings of the NodePort programs, the only element of [`map_names::NODEPORT_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodePortConfig {
    /// Source address for flows translated (SNAT) to a backend on another node, IPv4 (`::ffff:a.b.c.d`):
    /// the overlay device's address with an overlay, else the node's address.
    pub snat_v4: [u8; 16],
    /// The same for IPv6.
    pub snat_v6: [u8; 16],
    /// This node's IPv4 address that accepts node ports (`::ffff:a.b.c.d`; zero: none): with
    /// DSR, another node's packet naming `its address:nodePort` is accepted when
    /// `this address:nodePort` is a frontend here too.
    pub node_v4: [u8; 16],
    /// The same for IPv6.
    pub node_v6: [u8; 16],
    /// Size of every Maglev table (`--maglev-table-size`), host order.
    pub maglev_table_size: u32,
    /// `NODEPORT_F_*` bits.
    pub flags: u32,
}

/// `NodePortConfig::flags`: set up by the agent; without it the programs pass every packet.
pub const NODEPORT_F_ENABLED: u32 = 1;
/// `NodePortConfig::flags`: `snat_v4` is set.
pub const NODEPORT_F_SNAT_V4: u32 = 2;
/// `NodePortConfig::flags`: `snat_v6` is set.
pub const NODEPORT_F_SNAT_V6: u32 = 4;
/// `NodePortConfig::flags`: `--lb-mode dsr`: IPv4 flows to a backend on another node are sent
/// with the DSR option and without SNAT.
pub const NODEPORT_F_DSR: u32 = 8;

/// Counters in [`map_names::NODEPORT_STATS`].
/// Packets of new flows translated to a backend.
pub const NP_STAT_NEW_FLOWS: u32 = 0;
/// Packets translated by an existing entry (client → backend).
pub const NP_STAT_FORWARD: u32 = 1;
/// Replies translated back (backend → client).
pub const NP_STAT_REPLIES: u32 = 2;
/// Packets to a frontend without a backend (passed to the host stack, which refuses them).
pub const NP_STAT_NO_BACKEND: u32 = 3;
/// New flows that could not be tracked (conntrack insert failed, no free SNAT port): dropped.
pub const NP_STAT_CT_FAILED: u32 = 4;
/// Translated packets the programs could not route (no route, not forwarding): dropped.
pub const NP_STAT_FIB_FAILED: u32 = 5;
/// New flows from a client outside a frontend's `loadBalancerSourceRanges`: dropped.
pub const NP_STAT_DENIED: u32 = 6;
/// ICMP errors about a tracked flow, translated.
pub const NP_STAT_ICMP_ERRORS: u32 = 7;
/// Packets the XDP program rewrote and sent back out itself (`XDP_TX`).
pub const NP_STAT_XDP_TX: u32 = 8;
/// Packets that arrived with the DSR option for a pod of this node (the option is removed).
pub const NP_STAT_DSR_IN: u32 = 9;
/// How many counters there are.
pub const NP_STATS: u32 = 10;

/// Default capacity of the source-range trie (prefixes of all frontends together).
pub const DEFAULT_MAX_SOURCE_RANGES: u32 = 16_384;
/// Default capacity of the NodePort affinity LRU map (clients × ClientIP services).
pub const DEFAULT_MAX_NODEPORT_AFFINITY: u32 = 65_536;
/// Bits of the service id in front of the address in a [`map_names::SOURCE_RANGES`] key.
pub const SOURCE_RANGE_ID_BITS: u32 = 32;

/// `sessionAffinity: ClientIP` of a frontend for one client address (packets from outside).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NpAffinityKey {
    pub service_id: u32,
    pub pad: u32,
    /// The client's address, network order; IPv4 as `::ffff:a.b.c.d`.
    pub client: [u8; 16],
}

/// Encodes an IPv4 address (network-order octets) as IPv4-mapped IPv6.
#[inline(always)]
#[must_use]
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all impls): `#[repr(C)]`, integers only, and every padding byte is an
    // explicit field, so any bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::SlotKey {}
    unsafe impl aya::Pod for super::BackendValue {}
    unsafe impl aya::Pod for super::RevNatKey {}
    unsafe impl aya::Pod for super::RevNatValue {}
    unsafe impl aya::Pod for super::SockRevNat {}
    unsafe impl aya::Pod for super::UdpPeer {}
    unsafe impl aya::Pod for super::UdpSockState {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::EndpointValue {}
    unsafe impl aya::Pod for super::EndpointStats {}
    unsafe impl aya::Pod for super::EndpointDrops {}
    unsafe impl aya::Pod for super::NodeValue {}
    unsafe impl aya::Pod for super::TunnelConfig {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::NodePortConfig {}
    unsafe impl aya::Pod for super::NpAffinityKey {}
}

// Layout checks: the kernel side sees exactly these sizes.
const _: () = {
    assert!(core::mem::size_of::<ServiceKey>() == 20);
    assert!(core::mem::size_of::<ServiceValue>() == 16);
    assert!(core::mem::size_of::<SlotKey>() == 8);
    assert!(core::mem::size_of::<BackendValue>() == 20);
    assert!(core::mem::size_of::<RevNatKey>() == 32);
    assert!(core::mem::size_of::<RevNatValue>() == 24);
    assert!(core::mem::size_of::<SockRevNat>() == 36);
    assert!(core::mem::size_of::<UdpPeer>() == 52);
    assert!(core::mem::size_of::<UdpSockState>() == 52 * UDP_SOCK_PEERS + 8);
    assert!(core::mem::size_of::<AffinityKey>() == 16);
    assert!(core::mem::size_of::<AffinityValue>() == 16);
    assert!(core::mem::size_of::<EndpointKey>() == 16);
    assert!(core::mem::size_of::<EndpointValue>() == 20);
    assert!(core::mem::size_of::<EndpointStats>() == 32);
    assert!(core::mem::size_of::<EndpointDrops>() == 16);
    assert!(core::mem::size_of::<NodeValue>() == 24);
    assert!(core::mem::size_of::<TunnelConfig>() == 16);
    assert!(core::mem::size_of::<CtKey>() == 40);
    assert!(core::mem::size_of::<CtEntry>() == 56);
    assert!(core::mem::size_of::<NodePortConfig>() == 72);
    assert!(core::mem::size_of::<NpAffinityKey>() == 24);
};
