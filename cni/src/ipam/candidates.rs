//! Which addresses a range set hands out, and in which order: round-robin from the last one
//! handed out, skipping network, broadcast and gateway addresses.

use std::net::IpAddr;

use crate::config::RangeConf;
use crate::net;

/// Whether `ip` is an address [`Candidates`] could hand out from `set`.
pub(super) fn usable_in(set: &[RangeConf], ip: IpAddr) -> bool {
    let bits = net::to_bits(ip);
    set.iter().any(|r| {
        r.subnet.contains(ip)
            && r.gateway != Some(ip)
            && bounds(r).is_some_and(|(first, last)| (first..=last).contains(&bits))
    })
}

/// The first and last usable address of a range, as integers.
fn bounds(r: &RangeConf) -> Option<(u128, u128)> {
    let network = net::to_bits(r.subnet.network());
    let broadcast = net::to_bits(r.subnet.last());
    let last_usable = if r.subnet.is_ipv4() {
        broadcast - 1
    } else {
        broadcast
    };
    let first = r
        .range_start
        .map_or(network + 1, |s| net::to_bits(s).max(network + 1));
    let last = r
        .range_end
        .map_or(last_usable, |e| net::to_bits(e).min(last_usable));
    (first <= last).then_some((first, last))
}

/// The usable addresses of a range set in allocation order: starting after `last` (if it lies in
/// the set), wrapping around, each address once. Skips the network address (for IPv6 the
/// subnet-router anycast address), the IPv4 broadcast address and gateways.
pub(super) struct Candidates {
    /// (first, last, gateway) per range, as integers.
    ranges: Vec<(u128, u128, Option<u128>)>,
    v4: bool,
    /// Current range and the next value to yield from it.
    range: usize,
    next: u128,
    /// How many values are left in this lap.
    left: u128,
}

impl Candidates {
    pub(super) fn new(set: &[RangeConf], last: Option<IpAddr>) -> Candidates {
        let v4 = set.first().is_none_or(|r| r.subnet.is_ipv4());
        let ranges: Vec<(u128, u128, Option<u128>)> = set
            .iter()
            .filter_map(|r| {
                bounds(r).map(|(first, last)| (first, last, r.gateway.map(net::to_bits)))
            })
            .collect();
        let total = ranges
            .iter()
            .fold(0_u128, |sum, &(f, l, _)| sum.saturating_add(l - f + 1));
        let mut range = 0;
        let mut next = ranges.first().map_or(0, |r| r.0);
        if let Some(last) = last.filter(|l| l.is_ipv4() == v4) {
            let bits = net::to_bits(last);
            if let Some(index) = ranges.iter().position(|&(f, l, _)| (f..=l).contains(&bits)) {
                if bits < ranges[index].1 {
                    (range, next) = (index, bits + 1);
                } else {
                    range = (index + 1) % ranges.len();
                    next = ranges[range].0;
                }
            }
        }
        Candidates {
            ranges,
            v4,
            range,
            next,
            left: total,
        }
    }
}

impl Iterator for Candidates {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        while self.left > 0 {
            self.left -= 1;
            let (_, last, gateway) = self.ranges[self.range];
            let value = self.next;
            if value >= last {
                self.range = (self.range + 1) % self.ranges.len();
                self.next = self.ranges[self.range].0;
            } else {
                self.next = value + 1;
            }
            if Some(value) == gateway {
                continue;
            }
            let family = if self.v4 {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            };
            return Some(net::from_bits(family, value));
        }
        None
    }
}
