//! The socket load balancer's maps. Names are pinned under `<bpf-root>/maps/` and must match
//! `gannet_common::map_names` (the agent looks them up by those names and fails loudly if one
//! is missing). Sizes here are defaults: the agent sets the configured capacity at load time.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use gannet_common::{
    AffinityKey, AffinityValue, BackendValue, DEFAULT_MAX_AFFINITY, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_REV_NAT, DEFAULT_MAX_SERVICES, DEFAULT_MAX_SLOTS, RevNatKey, RevNatValue,
    ServiceKey, ServiceValue, SlotKey,
};

// The agent-written maps are not preallocated: an update then replaces the element under RCU,
// so a program that looked a value up never reads one that is being rewritten.

#[map(name = "GANNET_SVC")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "GANNET_SLOTS")]
pub(crate) static SLOTS: HashMap<SlotKey, u32> =
    HashMap::pinned(DEFAULT_MAX_SLOTS, BPF_F_NO_PREALLOC);

#[map(name = "GANNET_BACKENDS")]
pub(crate) static BACKENDS: HashMap<u32, BackendValue> =
    HashMap::pinned(DEFAULT_MAX_BACKENDS, BPF_F_NO_PREALLOC);

#[map(name = "GANNET_REVNAT")]
pub(crate) static REV_NAT: LruHashMap<RevNatKey, RevNatValue> =
    LruHashMap::pinned(DEFAULT_MAX_REV_NAT, 0);

#[map(name = "GANNET_AFFINITY")]
pub(crate) static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(DEFAULT_MAX_AFFINITY, 0);
