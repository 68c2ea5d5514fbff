//! What the reconciler writes to: the [`ServiceMaps`] it drives, how a map operation fails, and
//! the affinity purge it asks for after a change.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use gannet_common::{BackendValue, ServiceKey, ServiceValue, SlotKey};
use gannet_k8s::Backend;
use ipnet::IpNet;

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MapOpError {
    #[error("map {map} is full (capacity {capacity})")]
    Full { map: &'static str, capacity: u32 },
    #[error("map {map}: {op}: {source}")]
    Other {
        map: &'static str,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The maps of the socket load balancer, as the reconciler writes them. Implemented over the
/// kernel maps (`BpfMaps`); unit tests use an in-memory version that checks every step.
pub trait ServiceMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapOpError>;
    /// Deleting a missing entry is not an error.
    fn del_service(&mut self, key: &ServiceKey) -> Result<(), MapOpError>;
    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), MapOpError>;
    fn del_slot(&mut self, key: &SlotKey) -> Result<(), MapOpError>;
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapOpError>;
    fn del_backend(&mut self, id: u32) -> Result<(), MapOpError>;
    /// Deletes the affinity entries `purge` dooms ([`purge_dooms`]); returns how many were
    /// deleted by the time it returns. The eBPF maps walk their LRU map on a thread of their
    /// own and wait for it only briefly, so a large map's purge finishes after this returns
    /// (see `datapath::purge`).
    fn purge_affinity(&mut self, purge: &Arc<AffinityPurge>) -> Result<usize, MapOpError>;
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapOpError>;
    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, MapOpError>;
    fn backends(&self) -> Result<Vec<(u32, BackendValue)>, MapOpError>;
    /// Writes the Maglev table of an externally reachable service
    /// ([`maglev_size`](Self::maglev_size) backend ids), to replace its table, atomically, at
    /// the next [`flush_maglev`](Self::flush_maglev); until then the service keeps the table it
    /// has. Replaces what was staged for the service.
    fn put_maglev(&mut self, service_id: u32, table: &[u32]) -> Result<(), MapOpError>;
    /// Stages the removal of a service's Maglev table (a missing one is fine) for the next
    /// [`flush_maglev`](Self::flush_maglev). Replaces what was staged for the service.
    fn del_maglev(&mut self, service_id: u32);
    /// Tables and removals staged.
    fn maglev_staged(&self) -> usize;
    /// Installs and removes the staged tables, as few kernel calls as the maps allow (one
    /// batch each). Returns the services whose table could not be installed or removed; the
    /// others took effect.
    fn flush_maglev(&mut self) -> Vec<(u32, MapOpError)>;
    /// Service ids that have a Maglev table.
    fn maglev_ids(&self) -> Result<BTreeSet<u32>, MapOpError>;
    /// A service's Maglev table as installed (when adopting a running data plane): its entries,
    /// or `None` when it has none or it cannot be read.
    fn maglev_table(&self, service_id: u32) -> Option<Vec<u32>>;
    /// Entries of every Maglev table (`--maglev-table-size`).
    fn maglev_size(&self) -> u32;
    /// Adds `loadBalancerSourceRanges` of a service.
    fn put_ranges(&mut self, service_id: u32, nets: &[IpNet]) -> Result<(), MapOpError>;
    /// Removes source ranges of a service; missing ones are fine.
    fn del_ranges(&mut self, service_id: u32, nets: &[IpNet]) -> Result<(), MapOpError>;
    /// Every service's source ranges.
    fn ranges(&self) -> Result<BTreeMap<u32, Vec<IpNet>>, MapOpError>;
    /// Terminates the connected UDP sockets that frontends sent to backends they no longer
    /// have: `gone` maps each such backend to the ids of the UDP frontends that lost it (updated
    /// or removed). Called after the switch and the affinity purge, so a socket that connects
    /// again gets one of the frontend's current backends. Returns how many were terminated.
    fn terminate_udp(
        &mut self,
        gone: &BTreeMap<Backend, BTreeSet<u32>>,
    ) -> Result<usize, crate::sockdiag::SockDiagError>;
}

/// Affinity to forget after a change: per service id, the backend ids it lost (`Some`) or all
/// of them (`None`: the service went).
pub type AffinityPurge = HashMap<u32, Option<BTreeSet<u32>>>;

/// Whether `purge` dooms an affinity entry of service `service_id` to backend `backend_id`.
#[must_use]
pub fn purge_dooms(purge: &AffinityPurge, service_id: u32, backend_id: u32) -> bool {
    match purge.get(&service_id) {
        Some(None) => true,
        Some(Some(ids)) => ids.contains(&backend_id),
        None => false,
    }
}
