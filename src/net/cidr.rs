//! IPv4 address ranges in CIDR notation: the cluster's pod range, each node's podCIDR, and the
//! addresses inside one.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 range, `a.b.c.d/len`, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    base: u32,
    len: u8,
}

impl Cidr {
    /// The range `ip/len`, if `len` is at most 32 and `ip` has no host bits set.
    pub const fn new(ip: Ipv4Addr, len: u8) -> Option<Self> {
        if len > 32 {
            return None;
        }
        let base = ip.to_bits();
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - len as u32)
        };
        if base & !mask != 0 {
            return None;
        }
        Some(Self { base, len })
    }

    /// The range's first address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// The prefix length.
    pub fn prefix(self) -> u8 {
        self.len
    }

    /// How many addresses the range spans.
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    /// Whether `ip` is inside the range.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        self.len == 0 || (u32::from(ip) ^ self.base) >> (32 - u32::from(self.len)) == 0
    }

    /// Whether `other` lies wholly inside this range.
    pub fn covers(self, other: Self) -> bool {
        other.len >= self.len && self.contains(other.network())
    }

    /// The `n`th address of the range (0 is the network address), if it is inside.
    pub fn host(self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(self.base + n as u32))
    }

    /// The `n`th sub-range of prefix length `len` (0 is the first), if it is inside.
    pub fn subnet(self, len: u8, n: u64) -> Option<Self> {
        if len < self.len || len > 32 {
            return None;
        }
        let count = 1u64 << (len - self.len);
        (n < count).then(|| Self {
            base: self.base + (n << (32 - u32::from(len))) as u32,
            len,
        })
    }

    /// Addresses a pod may take: all but the network, the gateway (the first host) and the
    /// broadcast address.
    pub fn pod_addresses(self) -> u64 {
        self.size().saturating_sub(3)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 CIDR (a.b.c.d/len)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?}: {ip:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
        Self::new(ip, len).ok_or_else(|| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            format!(
                "{s:?} has host bits set (did you mean {}/{len}?)",
                Ipv4Addr::from(u32::from(ip) & mask)
            )
        })
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_print_and_split() {
        let c: Cidr = "100.64.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "100.64.0.0/16");
        assert_eq!(c.size(), 65536);
        assert!(c.contains("100.64.255.1".parse().unwrap()));
        assert!(!c.contains("100.65.0.1".parse().unwrap()));
        assert_eq!(c.subnet(24, 0).unwrap().to_string(), "100.64.0.0/24");
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "100.64.3.0/24");
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet(8, 0), None);
        let node = c.subnet(24, 3).unwrap();
        assert!(c.covers(node) && !node.covers(c));
        assert_eq!(node.host(1), Some("100.64.3.1".parse().unwrap()));
        assert_eq!(node.host(256), None);
        assert_eq!(node.pod_addresses(), 253);
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn bad_ranges_are_named() {
        for (bad, says) in [
            ("100.64.0.0", "not an IPv4 CIDR"),
            ("100.64.0/16", "not an IPv4 address"),
            ("100.64.0.0/33", "0 to 32"),
            ("100.64.1.0/16", "did you mean 100.64.0.0/16"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
