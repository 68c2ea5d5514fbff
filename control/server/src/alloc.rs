//! Address arithmetic for allocation: cluster IPs from service CIDRs, pod CIDRs (one subnet of a
//! configurable size per node) from cluster CIDRs, node ports from a port range.
//!
//! Allocation here only picks free values from what is known to be used; that a value is still
//! free is checked by the store transaction that claims it (one key per allocated value).

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

/// Kubernetes' NodePort range.
pub const DEFAULT_NODE_PORTS: RangeInclusive<u16> = 30000..=32767;

/// Address family of an IP or CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    #[must_use]
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    /// `IPv4` / `IPv6`, as Kubernetes spells `ipFamilies`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }
}

/// A cluster CIDR and the prefix length of each node's share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub cidr: IpNet,
    pub node_prefix: u8,
}

impl PodNetwork {
    /// How many node subnets the cluster CIDR holds (saturating at `u64::MAX`).
    #[must_use]
    pub fn subnets(&self) -> u64 {
        let bits = u32::from(self.node_prefix - self.cidr.prefix_len());
        1_u64.checked_shl(bits).unwrap_or(u64::MAX)
    }

    /// The `index`th node subnet.
    #[must_use]
    pub fn subnet(&self, index: u64) -> Option<IpNet> {
        if index >= self.subnets() {
            return None;
        }
        let host_bits = u32::from(self.cidr.max_prefix_len() - self.node_prefix);
        let offset = u128::from(index).checked_shl(host_bits)?;
        let base = ip_to_u128(self.cidr.network()).checked_add(offset)?;
        IpNet::new(
            u128_to_ip(base, Family::of(self.cidr.addr())),
            self.node_prefix,
        )
        .ok()
    }

    /// Whether `subnet` is one of the node subnets.
    #[must_use]
    pub fn holds(&self, subnet: &IpNet) -> bool {
        subnet.prefix_len() == self.node_prefix
            && self.cidr.contains(subnet)
            && subnet.network() == subnet.addr()
    }

    /// The first node subnet not in `used`.
    #[must_use]
    pub fn first_free(&self, used: &HashSet<IpNet>) -> Option<IpNet> {
        // Bounded: a cluster has far fewer nodes than this.
        (0..self.subnets().min(1 << 20))
            .filter_map(|index| self.subnet(index))
            .find(|subnet| !used.contains(subnet))
    }
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn u128_to_ip(value: u128, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(u32::try_from(value).unwrap_or(u32::MAX).into()),
        Family::V6 => IpAddr::V6(value.into()),
    }
}

/// A pseudo-random number, different per call: allocations start at a random point so that
/// replicas allocating at once rarely pick the same value.
pub(crate) fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let mut x = (nanos as u64)
        ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        ^ u64::from(std::process::id()).rotate_left(32);
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The usable cluster IPs of a service CIDR: all but the network address (and, for IPv4, the
/// broadcast address), as offsets `1..size-1`.
fn usable(cidr: &IpNet) -> (u128, u128) {
    let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    let size = 1_u128.checked_shl(host_bits).unwrap_or(u128::MAX);
    let last = match cidr {
        IpNet::V4(_) => size.saturating_sub(2),
        IpNet::V6(_) => size.saturating_sub(1),
    };
    (1, last)
}

/// Whether `ip` may be a cluster IP of `cidr`.
#[must_use]
pub fn is_usable_cluster_ip(cidr: &IpNet, ip: IpAddr) -> bool {
    if !cidr.contains(&ip) {
        return false;
    }
    let offset = ip_to_u128(ip) - ip_to_u128(cidr.network());
    let (first, last) = usable(cidr);
    (first..=last).contains(&offset)
}

/// A free cluster IP of `cidr`, starting the search at a random point.
#[must_use]
pub fn pick_cluster_ip(cidr: &IpNet, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    let (first, last) = usable(cidr);
    if last < first {
        return None;
    }
    let count = last - first + 1;
    let start = u128::from(random()) % count;
    let base = ip_to_u128(cidr.network());
    let family = Family::of(cidr.addr());
    // Bounded scan: a service CIDR is never that full, and the check is a hash lookup.
    for step in 0..count.min(1 << 22) {
        let offset = first + (start + step) % count;
        let ip = u128_to_ip(base + offset, family);
        if !used.contains(&ip) {
            return Some(ip);
        }
    }
    None
}

/// A free node port of `range`, starting at a random point.
#[must_use]
pub fn pick_node_port(range: &RangeInclusive<u16>, used: &HashSet<u16>) -> Option<u16> {
    let count = u64::from(*range.end()).checked_sub(u64::from(*range.start()))? + 1;
    let start = random() % count;
    (0..count)
        .map(|step| u64::from(*range.start()) + (start + step) % count)
        .filter_map(|port| u16::try_from(port).ok())
        .find(|port| !used.contains(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().expect("test CIDR")
    }

    #[test]
    fn node_subnets_of_ipv4_and_ipv6_cluster_cidrs() {
        let v4 = PodNetwork {
            cidr: net("10.244.0.0/16"),
            node_prefix: 24,
        };
        assert_eq!(v4.subnets(), 256);
        assert_eq!(v4.subnet(0), Some(net("10.244.0.0/24")));
        assert_eq!(v4.subnet(255), Some(net("10.244.255.0/24")));
        assert_eq!(v4.subnet(256), None);
        assert!(v4.holds(&net("10.244.7.0/24")));
        assert!(!v4.holds(&net("10.244.7.0/25")), "wrong size");
        assert!(!v4.holds(&net("10.245.7.0/24")), "outside");

        let v6 = PodNetwork {
            cidr: net("fd00:10:244::/56"),
            node_prefix: 64,
        };
        assert_eq!(v6.subnets(), 256);
        assert_eq!(v6.subnet(3), Some(net("fd00:10:244:3::/64")));

        let used: HashSet<IpNet> = [net("10.244.0.0/24"), net("10.244.1.0/24")].into();
        assert_eq!(v4.first_free(&used), Some(net("10.244.2.0/24")));

        let tiny = PodNetwork {
            cidr: net("10.0.0.0/23"),
            node_prefix: 24,
        };
        let full: HashSet<IpNet> = [net("10.0.0.0/24"), net("10.0.1.0/24")].into();
        assert_eq!(tiny.first_free(&full), None, "exhausted");
    }

    #[test]
    fn cluster_ips_skip_network_and_broadcast_and_used_addresses() {
        let cidr = net("10.96.0.0/30");
        // Usable: .1 and .2 only.
        let mut used = HashSet::new();
        for _ in 0..2 {
            let ip = pick_cluster_ip(&cidr, &used).expect("a free address");
            assert!(is_usable_cluster_ip(&cidr, ip), "{ip}");
            assert!(used.insert(ip), "{ip} picked twice");
        }
        assert_eq!(pick_cluster_ip(&cidr, &used), None, "exhausted");
        assert!(!is_usable_cluster_ip(
            &cidr,
            "10.96.0.0".parse().expect("ip")
        ));
        assert!(!is_usable_cluster_ip(
            &cidr,
            "10.96.0.3".parse().expect("ip")
        ));
        assert!(!is_usable_cluster_ip(
            &cidr,
            "10.97.0.1".parse().expect("ip")
        ));

        let v6 = net("fd00:96::/112");
        let ip = pick_cluster_ip(&v6, &HashSet::new()).expect("v6 address");
        assert!(v6.contains(&ip) && ip != v6.network());
    }

    #[test]
    fn node_ports_come_from_the_range_and_are_not_reused() {
        let range = 30000..=30002;
        let mut used = HashSet::new();
        for _ in 0..3 {
            let port = pick_node_port(&range, &used).expect("a free port");
            assert!(range.contains(&port));
            assert!(used.insert(port));
        }
        assert_eq!(pick_node_port(&range, &used), None);
    }
}
