//! The `ebpf` overlay's maps, from user space: the node map (`GANNET_NODES`: a remote pod CIDR →
//! its node's underlay address and VTEP MAC) and the tunnel's settings (`GANNET_TUNNEL`). Both
//! are pinned under `<bpf-root>/maps` by the pod fast path's loader and opened here by path, so
//! the overlay owns their contents without owning the programs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie};
use gannet_common::{NodeValue, TunnelConfig, V4_MAPPED_PREFIX_BITS, map_names, v4_mapped};
use ipnet::IpNet;

use crate::datapath::full;

/// A failed map operation, naming the map.
#[derive(Debug, thiserror::Error)]
#[error("map {map} ({path}): {what}: {source}")]
pub struct MapsError {
    map: &'static str,
    path: PathBuf,
    what: &'static str,
    #[source]
    source: Box<MapError>,
}

/// The node map and the tunnel's settings.
pub struct TunnelMaps {
    nodes: LpmTrie<MapData, [u8; 16], NodeValue>,
    tunnel: Array<MapData, TunnelConfig>,
    maps_dir: PathBuf,
}

/// The node-map key of a pod CIDR: its network address in 16 bytes (IPv4-mapped for IPv4) and
/// its length in bits over those 16 bytes.
pub fn key(cidr: IpNet) -> Key<[u8; 16]> {
    let cidr = cidr.trunc();
    match cidr {
        IpNet::V4(v4) => Key::new(
            V4_MAPPED_PREFIX_BITS + u32::from(v4.prefix_len()),
            v4_mapped(v4.network().octets()),
        ),
        IpNet::V6(v6) => Key::new(u32::from(v6.prefix_len()), v6.network().octets()),
    }
}

/// The pod CIDR a node-map key stands for.
pub fn cidr(key: &Key<[u8; 16]>) -> Option<IpNet> {
    let data = key.data();
    let len = key.prefix_len();
    let mapped = data[..10] == [0; 10] && data[10..12] == [0xff, 0xff];
    if mapped && len >= V4_MAPPED_PREFIX_BITS {
        let v4 = std::net::Ipv4Addr::new(data[12], data[13], data[14], data[15]);
        IpNet::new(
            IpAddr::V4(v4),
            u8::try_from(len - V4_MAPPED_PREFIX_BITS).ok()?,
        )
        .ok()
    } else {
        IpNet::new(
            IpAddr::V6(std::net::Ipv6Addr::from(data)),
            u8::try_from(len).ok()?,
        )
        .ok()
    }
}

/// A node-map value: the node's underlay address and VTEP MAC.
pub fn value(ip: IpAddr, mac: [u8; 6]) -> NodeValue {
    NodeValue {
        ip: match ip {
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        },
        mac,
        flags: 0,
    }
}

impl TunnelMaps {
    /// Opens the pinned maps under `<bpf_root>/maps` (the pod fast path must be loaded first).
    ///
    /// # Errors
    /// When a map is not pinned there or is not of the expected type and layout.
    pub fn open(bpf_root: &Path) -> Result<Self, MapsError> {
        let maps_dir = bpf_root.join("maps");
        let open = |name: &'static str| {
            let path = maps_dir.join(name);
            MapData::from_pin(&path).map_err(|source| MapsError {
                map: name,
                path,
                what: "opening the pinned map",
                source: Box::new(source),
            })
        };
        let err = |map, what| {
            let path = maps_dir.join(map);
            move |source| MapsError {
                map,
                path,
                what,
                source: Box::new(source),
            }
        };
        let nodes = Map::from_map_data(open(map_names::NODES)?)
            .and_then(LpmTrie::try_from)
            .map_err(err(map_names::NODES, "checking the map"))?;
        let tunnel = Map::from_map_data(open(map_names::TUNNEL)?)
            .and_then(Array::try_from)
            .map_err(err(map_names::TUNNEL, "checking the map"))?;
        Ok(Self {
            nodes,
            tunnel,
            maps_dir,
        })
    }

    fn err(
        &self,
        map: &'static str,
        what: &'static str,
    ) -> impl FnOnce(MapError) -> MapsError + use<> {
        let path = self.maps_dir.join(map);
        move |source| MapsError {
            map,
            path,
            what,
            source: Box::new(source),
        }
    }

    /// Writes this node's tunnel settings.
    ///
    /// # Errors
    /// When the kernel refuses the update.
    pub fn set_config(&mut self, config: &TunnelConfig) -> Result<(), MapsError> {
        let err = self.err(map_names::TUNNEL, "update");
        self.tunnel.set(0, config, 0).map_err(err)
    }

    /// This node's tunnel settings as the programs see them.
    ///
    /// # Errors
    /// When the kernel refuses the lookup.
    pub fn config(&self) -> Result<TunnelConfig, MapsError> {
        self.tunnel
            .get(&0, 0)
            .map_err(self.err(map_names::TUNNEL, "lookup"))
    }

    /// Sends `cidr` to the node `value` describes (adds or replaces).
    ///
    /// # Errors
    /// When the kernel refuses (e.g. the map is full).
    pub fn put(&mut self, cidr: IpNet, value: &NodeValue) -> Result<(), MapsError> {
        let err = self.err(map_names::NODES, "update");
        self.nodes
            .insert(&key(cidr), value, 0)
            .map_err(|e| err(full::check(map_names::NODES, e)))
    }

    /// The entry for exactly `cidr`, if any.
    pub fn get(&self, cidr: IpNet) -> Option<NodeValue> {
        self.nodes.get(&key(cidr), 0).ok()
    }

    /// Removes the entry for `cidr`; returns whether it was there.
    ///
    /// # Errors
    /// When the kernel refuses for another reason than the entry's absence.
    pub fn remove(&mut self, cidr: IpNet) -> Result<bool, MapsError> {
        match self.nodes.remove(&key(cidr)) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(false),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(source) => Err(self.err(map_names::NODES, "delete")(source)),
        }
    }

    /// Every entry of the node map.
    ///
    /// # Errors
    /// When iterating fails.
    pub fn list(&self) -> Result<Vec<(IpNet, NodeValue)>, MapsError> {
        let mut out = Vec::new();
        for entry in &self.nodes {
            let (key, value) = entry.map_err(self.err(map_names::NODES, "iterate"))?;
            if let Some(cidr) = cidr(&key) {
                out.push((cidr, value));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_ipv4_prefixes_into_the_v4_mapped_range_and_back() {
        for text in [
            "10.244.2.0/24",
            "10.0.0.0/8",
            "fd00:244:2::/64",
            "0.0.0.0/0",
        ] {
            let net: IpNet = text.parse().unwrap();
            let k = key(net);
            assert_eq!(cidr(&k), Some(net), "{text}");
        }
        let k = key("10.244.2.0/24".parse().unwrap());
        assert_eq!(k.prefix_len(), 120);
        assert_eq!(k.data()[10..], [0xff, 0xff, 10, 244, 2, 0]);
        // Host bits are cleared.
        assert_eq!(
            cidr(&key("10.244.2.7/24".parse().unwrap())),
            Some("10.244.2.0/24".parse().unwrap())
        );
    }
}
