//! A small IPv4 CIDR type (pure; parsing, containment and offsets for the address plan).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network such as `10.200.0.0/16` (host bits must be zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

/// A string that is not an IPv4 CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an IPv4 CIDR: {reason}")]
pub struct CidrError {
    input: String,
    reason: &'static str,
}

// === impl Ipv4Cidr ===

impl Ipv4Cidr {
    /// Builds a CIDR; `None` if the prefix is over 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        let c = Ipv4Cidr { addr, prefix };
        (prefix <= 32 && c.network() == addr).then_some(c)
    }

    /// A CIDR from constants known to be valid (the defaults).
    pub(crate) const fn new_unchecked(addr: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Cidr { addr, prefix }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// Number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The address `offset` past the network address, if it is a usable host address
    /// (not the network or broadcast address, for prefixes up to /30).
    pub fn host(&self, offset: u64) -> Option<Ipv4Addr> {
        if offset == 0 || offset + 1 >= self.size() {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.addr) + offset as u32))
    }

    /// True if `ip` is inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrError {
            input: s.to_string(),
            reason,
        };
        let (a, p) = s.split_once('/').ok_or_else(|| err("missing `/prefix`"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| err("bad prefix length"))?;
        Ipv4Cidr::new(addr, prefix).ok_or_else(|| err("host bits are set"))
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = CidrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(c: Ipv4Cidr) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_offsets() {
        let c: Ipv4Cidr = "10.98.0.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.98.0.0/24");
        assert_eq!(c.size(), 256);
        assert_eq!(c.host(11), Some(Ipv4Addr::new(10, 98, 0, 11)));
        assert_eq!(c.host(254), Some(Ipv4Addr::new(10, 98, 0, 254)));
        assert_eq!(c.host(255), None);
        assert_eq!(c.host(0), None);
        assert!(c.contains(Ipv4Addr::new(10, 98, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 98, 1, 1)));
        assert!("10.98.0.1/24".parse::<Ipv4Cidr>().is_err());
        assert!("10.98.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("10.98.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("x/8".parse::<Ipv4Cidr>().is_err());
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, "\"10.98.0.0/24\"");
        assert_eq!(serde_json::from_str::<Ipv4Cidr>(&j).unwrap(), c);
    }
}
