//! IP prefixes (`10.244.1.5/32`, `fd00::/64`) as CNI writes them, with the address arithmetic the
//! IPAM needs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address with a prefix length. The address may have host bits set (`10.244.1.1/24` names the
/// address 10.244.1.1 in the network 10.244.1.0/24), as in CNI results and Flannel's `subnet.env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A prefix that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct CidrError {
    input: String,
    reason: &'static str,
}

impl Cidr {
    /// `addr/prefix`, if `prefix` fits the address family.
    #[must_use]
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        (prefix <= max_prefix(addr)).then_some(Cidr { addr, prefix })
    }

    /// A single-host prefix: `/32` for IPv4, `/128` for IPv6.
    #[must_use]
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// The address as written (host bits kept).
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    #[must_use]
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv4 prefix.
    #[must_use]
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The network address (host bits cleared).
    #[must_use]
    pub fn network(&self) -> IpAddr {
        from_bits(self.addr, to_bits(self.addr) & self.mask())
    }

    /// The last address of the prefix (all host bits set).
    #[must_use]
    pub fn last(&self) -> IpAddr {
        from_bits(
            self.addr,
            to_bits(self.addr) | !self.mask() & family_mask(self.addr),
        )
    }

    /// This prefix with its host bits cleared.
    #[must_use]
    pub fn truncated(&self) -> Cidr {
        Cidr {
            addr: self.network(),
            prefix: self.prefix,
        }
    }

    /// Whether `ip` lies inside this prefix (same family, same network bits).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && to_bits(ip) & self.mask() == to_bits(self.network())
    }

    /// Whether `other` lies entirely inside this prefix.
    #[must_use]
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    fn mask(&self) -> u128 {
        let bits = u32::from(max_prefix(self.addr));
        let host_bits = bits - u32::from(self.prefix);
        let ones = family_mask(self.addr);
        if host_bits >= 128 {
            0
        } else {
            ones & !((1_u128 << host_bits) - 1)
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn family_mask(addr: IpAddr) -> u128 {
    if addr.is_ipv4() {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    }
}

/// The address as an integer (IPv4 in the low 32 bits).
#[must_use]
pub fn to_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

/// The address of `family`'s family whose integer value is `bits` (truncated to 32 bits for IPv4).
#[must_use]
pub fn from_bits(family: IpAddr, bits: u128) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from_bits(
            u32::try_from(bits & u128::from(u32::MAX)).unwrap_or(u32::MAX),
        )),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from_bits(bits)),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Cidr, CidrError> {
        let err = |reason| CidrError {
            input: input.to_owned(),
            reason,
        };
        let (addr, prefix) = input
            .split_once('/')
            .ok_or_else(|| err("missing /prefix"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("prefix is not a number"))?;
        Cidr::new(addr, prefix).ok_or_else(|| err("prefix too long for the address family"))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("valid CIDR")
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(cidr("10.244.1.1/24").to_string(), "10.244.1.1/24");
        assert_eq!(cidr("fd00::5/128").to_string(), "fd00::5/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("x/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn network_last_and_contains() {
        let c = cidr("10.244.1.1/24");
        assert_eq!(c.network().to_string(), "10.244.1.0");
        assert_eq!(c.last().to_string(), "10.244.1.255");
        assert!(c.contains("10.244.1.200".parse().expect("ip")));
        assert!(!c.contains("10.244.2.1".parse().expect("ip")));
        assert!(!c.contains("::1".parse().expect("ip")));
        let all = cidr("0.0.0.0/0");
        assert_eq!(all.last().to_string(), "255.255.255.255");
        let v6 = cidr("fd00:244::1/64");
        assert_eq!(v6.network().to_string(), "fd00:244::");
        assert_eq!(v6.last().to_string(), "fd00:244::ffff:ffff:ffff:ffff");
        assert!(cidr("10.0.0.0/8").contains_cidr(&cidr("10.244.0.0/16")));
        assert!(!cidr("10.244.0.0/16").contains_cidr(&cidr("10.0.0.0/8")));
    }
}
