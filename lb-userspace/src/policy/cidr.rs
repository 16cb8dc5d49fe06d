//! IPv4 prefixes: containment, and a block with exceptions as the disjoint
//! prefixes that remain (`ipBlock.except`).

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

/// An IPv4 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Cidr {
    pub ip: Ipv4Addr,
    pub len: u8,
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

impl Cidr {
    /// The prefix of `ip` of `len` bits (host bits cleared).
    pub fn new(ip: Ipv4Addr, len: u8) -> Self {
        let len = len.min(32);
        Self {
            ip: Ipv4Addr::from(u32::from(ip) & mask(len)),
            len,
        }
    }

    pub fn host(ip: Ipv4Addr) -> Self {
        Self::new(ip, 32)
    }

    pub const ANY: Cidr = Cidr {
        ip: Ipv4Addr::UNSPECIFIED,
        len: 0,
    };

    /// "10.0.0.0/8"; `None` unless an IPv4 address with a prefix length.
    pub fn parse(text: &str) -> Option<Self> {
        let (ip, len) = text.trim().split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
        Some(Self::new(ip, len))
    }

    /// Whether every address of `other` is in `self`.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.len <= other.len && u32::from(other.ip) & mask(self.len) == u32::from(self.ip)
    }

    /// The prefixes `self` contains, in `prefixes`' order, are those
    /// between these two bounds (and as long as `self` or longer).
    pub fn contained_range(&self) -> std::ops::RangeInclusive<Cidr> {
        let last = Ipv4Addr::from(u32::from(self.ip) | !mask(self.len));
        Cidr {
            ip: self.ip,
            len: 0,
        }..=Cidr { ip: last, len: 32 }
    }

    fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The two halves, one bit longer.
    fn halves(&self) -> [Cidr; 2] {
        let len = self.len + 1;
        let high = u32::from(self.ip) | (1 << (32 - u32::from(len)));
        [
            Cidr::new(self.ip, len),
            Cidr::new(Ipv4Addr::from(high), len),
        ]
    }

    /// `self` without the addresses in `except`, as disjoint prefixes.
    pub fn minus(&self, except: &[Cidr]) -> Vec<Cidr> {
        if except.iter().any(|e| e.contains(self)) {
            return Vec::new();
        }
        if !except.iter().any(|e| e.overlaps(self)) {
            return vec![*self];
        }
        // Some exception lies strictly inside: split and look again.
        self.halves().iter().flat_map(|h| h.minus(except)).collect()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Cidr {
        Cidr::parse(text).expect(text)
    }

    #[test]
    fn parse_clears_host_bits_and_refuses_nonsense() {
        assert_eq!(c("10.1.2.3/8"), c("10.0.0.0/8"));
        for bad in ["10.0.0.0", "10.0.0.0/33", "fd00::/8", "x/8", "10.0.0.0/-1"] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn minus_leaves_disjoint_prefixes_covering_exactly_the_rest() {
        let block = c("10.0.0.0/8");
        let except = [c("10.1.0.0/16"), c("10.200.3.4/32")];
        let rest = block.minus(&except);
        // Exact: every address sampled is in the rest iff not excepted,
        // and in at most one prefix of it.
        for probe in (0..=u32::MAX).step_by(65_537).map(Ipv4Addr::from).chain([
            Ipv4Addr::new(10, 1, 255, 255),
            Ipv4Addr::new(10, 2, 0, 0),
            Ipv4Addr::new(10, 200, 3, 4),
            Ipv4Addr::new(10, 200, 3, 5),
        ]) {
            let host = Cidr::host(probe);
            let wanted = block.contains(&host) && !except.iter().any(|e| e.contains(&host));
            let holding = rest.iter().filter(|r| r.contains(&host)).count();
            assert_eq!(holding, usize::from(wanted), "{probe}: {rest:?}");
        }
        // /8 − /16: 8 prefixes; the /32 then splits the /9 holding it into
        // 23 (one per bit from /10 to /32).
        assert_eq!(rest.len(), 8 - 1 + 23);
        assert!(c("10.1.0.0/16").minus(&[c("10.0.0.0/8")]).is_empty());
        assert_eq!(block.minus(&[c("11.0.0.0/8")]), vec![block]);
    }
}
