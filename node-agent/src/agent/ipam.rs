//! Pod address management for one node's pod CIDR, persisted so a restarted agent never hands
//! out an address twice. Allocation is idempotent per (container, interface), as CNI requires.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Host offset of the first address handed out on its own. The ones below it are left to
/// requests: an operator's (or a test suite's) static plan asks for them with `CNI_ARGS` `IP=`,
/// as host-local IPAM's `rangeStart` leaves the low addresses to static assignment.
const FIRST_HOST: u32 = 10;

/// IPAM errors.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address of the CIDR is in use.
    #[error("pod CIDR `{0}` is exhausted")]
    Exhausted(Ipv4Net),
    /// The requested address is outside the CIDR or reserved.
    #[error("requested address `{addr}` is not assignable in pod CIDR `{cidr}`")]
    NotInCidr {
        /// The address.
        addr: Ipv4Addr,
        /// The CIDR.
        cidr: Ipv4Net,
    },
    /// The requested address belongs to another container.
    #[error("requested address `{addr}` is already assigned to container `{owner}`")]
    Taken {
        /// The address.
        addr: Ipv4Addr,
        /// Its holder.
        owner: String,
    },
    /// The state file could not be read or written.
    #[error("ipam state `{path}`")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file is corrupt.
    #[error("ipam state `{path}` is not valid JSON")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// `container/ifname` → address.
    allocations: BTreeMap<String, Ipv4Addr>,
}

/// The allocator.
#[derive(Debug)]
pub struct Ipam {
    cidr: Ipv4Net,
    path: PathBuf,
    state: State,
}

impl Ipam {
    /// Opens (or starts) the allocation state in `dir`.
    pub fn open(cidr: Ipv4Net, dir: &Path) -> Result<Self, IpamError> {
        let path = dir.join("ipam.json");
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        Ok(Self { cidr, path, state })
    }

    /// The address of `(container, ifname)`: the one it already holds, the requested one, or the
    /// lowest free one.
    pub fn allocate(
        &mut self,
        container: &str,
        ifname: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        let key = format!("{container}/{ifname}");
        if let Some(ip) = self.state.allocations.get(&key)
            && requested.is_none_or(|r| r == *ip)
        {
            return Ok(*ip);
        }
        let ip = match requested {
            Some(addr) => {
                if !self.requestable(addr) {
                    return Err(IpamError::NotInCidr {
                        addr,
                        cidr: self.cidr,
                    });
                }
                if let Some((owner, _)) = self
                    .state
                    .allocations
                    .iter()
                    .find(|(k, v)| **v == addr && **k != key)
                {
                    return Err(IpamError::Taken {
                        addr,
                        owner: owner.clone(),
                    });
                }
                addr
            }
            None => self
                .cidr
                .hosts()
                .filter(|a| self.assignable(*a))
                .find(|a| !self.state.allocations.values().any(|v| v == a))
                .ok_or(IpamError::Exhausted(self.cidr))?,
        };
        self.state.allocations.insert(key, ip);
        self.save()?;
        Ok(ip)
    }

    /// Releases the address of `(container, ifname)`; succeeds when none is held.
    pub fn release(&mut self, container: &str, ifname: &str) -> Result<(), IpamError> {
        if self
            .state
            .allocations
            .remove(&format!("{container}/{ifname}"))
            .is_some()
        {
            self.save()?;
        }
        Ok(())
    }

    /// Addresses in use.
    pub fn in_use(&self) -> usize {
        self.state.allocations.len()
    }

    /// Whether `a` may be handed out without being asked for.
    fn assignable(&self, a: Ipv4Addr) -> bool {
        let offset = u32::from(a).wrapping_sub(u32::from(self.cidr.network()));
        self.requestable(a) && offset >= FIRST_HOST
    }

    /// Whether `a` may be asked for: any host address of the CIDR (not the network address,
    /// not the broadcast address).
    fn requestable(&self, a: Ipv4Addr) -> bool {
        self.cidr.contains(&a) && a != self.cidr.network() && a != self.cidr.broadcast()
    }

    fn save(&self) -> Result<(), IpamError> {
        write_atomically(
            &self.path,
            &serde_json::to_vec_pretty(&self.state).unwrap_or_default(),
        )
        .map_err(|source| IpamError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Writes via a temporary file and a rename, so a crash never leaves half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path) -> Ipam {
        Ipam::open("10.200.1.0/24".parse().expect("cidr"), dir).expect("open")
    }

    #[test]
    fn allocation_is_idempotent_persistent_and_honours_requests() {
        let dir = std::env::temp_dir().join(format!("pal-ipam-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let mut a = ipam(&dir);
        let first = a.allocate("c1", "eth0", None).expect("alloc");
        assert_eq!(first, Ipv4Addr::new(10, 200, 1, 10));
        assert_eq!(
            a.allocate("c1", "eth0", None).expect("again"),
            first,
            "idempotent"
        );
        let req = Ipv4Addr::new(10, 200, 1, 77);
        assert_eq!(a.allocate("c2", "eth0", Some(req)).expect("requested"), req);
        assert!(matches!(
            a.allocate("c3", "eth0", Some(req)),
            Err(IpamError::Taken { .. })
        ));
        assert!(matches!(
            a.allocate("c3", "eth0", Some(Ipv4Addr::new(10, 9, 9, 9))),
            Err(IpamError::NotInCidr { .. })
        ));
        for reserved in [Ipv4Addr::new(10, 200, 1, 0), Ipv4Addr::new(10, 200, 1, 255)] {
            assert!(matches!(
                a.allocate("c3", "eth0", Some(reserved)),
                Err(IpamError::NotInCidr { .. })
            ));
        }
        // The low addresses are never handed out on their own, but may be asked for.
        let low = Ipv4Addr::new(10, 200, 1, 1);
        assert_eq!(a.allocate("c6", "eth0", Some(low)).expect("low"), low);
        drop(a);
        let mut b = ipam(&dir);
        assert_eq!(b.in_use(), 3, "persisted");
        assert_eq!(
            b.allocate("c4", "eth0", None).expect("next"),
            Ipv4Addr::new(10, 200, 1, 11)
        );
        b.release("c1", "eth0").expect("release");
        b.release("c1", "eth0").expect("release twice");
        assert_eq!(b.allocate("c5", "eth0", None).expect("reuse"), first);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
