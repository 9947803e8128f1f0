//! The ipcache's prefix entries for the CIDRs policies name (`toCIDR`, `toCIDRSet`,
//! `fromCIDR`, `ipBlock`): each prefix maps to the node-local identity the engine gave it
//! ([`Engine::sync_cidr_identities`]), so an address outside the cluster resolves to the most
//! specific prefix any policy names — what CIDR rules select — as Cilium's CIDR identities do.
//! Without them every such address would be `world`, and only `/0` rules would match it.
//!
//! Pods, nodes and DNS-learned addresses keep their own host entries: a policy prefix the length
//! of a host address is written only where no other entry holds that address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use palisade_policy::identity::Identity;

use crate::datapath::{Datapath, DatapathError};

/// The prefix entries this agent wrote.
#[derive(Debug, Default)]
pub struct CidrIpcache {
    /// `None` until the first sync, which adopts what a previous run left pinned.
    written: Option<BTreeMap<IpNet, u32>>,
}

fn host_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

impl CidrIpcache {
    /// Brings the ipcache's policy-prefix entries to `want` (the engine's CIDR identities);
    /// returns how many entries it wrote or removed. New entries are written before stale ones
    /// go; an entry that could not be written or removed is retried on the next sync.
    pub fn sync(
        &mut self,
        dp: &mut Datapath,
        want: &BTreeMap<IpNet, Identity>,
        fqdn_ips: &BTreeMap<IpAddr, Identity>,
    ) -> Result<usize, DatapathError> {
        let written = match self.written.take() {
            Some(w) => w,
            // A previous run's prefix entries (shorter than a host address, node-local ids)
            // are this module's: adopt them so the ones no policy names any more are removed.
            None => dp
                .ipcache_entries()?
                .into_iter()
                .filter(|(a, len, id)| *len < host_len(*a) && Identity(*id).is_local_scope())
                .filter_map(|(a, len, id)| IpNet::new(a, len).ok().map(|n| (n, id)))
                .collect(),
        };
        let is_host = |p: &IpNet| p.prefix_len() == host_len(p.addr());
        // Host-length prefixes yield to the entries pods, nodes and DNS answers own.
        let taken: Vec<(IpAddr, u8)> =
            if want.keys().any(|p| is_host(p) && !written.contains_key(p)) {
                dp.ipcache_entries()?
                    .into_iter()
                    .map(|(a, len, _)| (a, len))
                    .collect()
            } else {
                Vec::new()
            };
        let mut now = BTreeMap::new();
        let mut changed = 0;
        let mut first_err = None;
        for (p, id) in want {
            let (addr, len) = (p.addr(), p.prefix_len());
            if is_host(p) && !written.contains_key(p) && taken.contains(&(addr, len)) {
                continue;
            }
            if written.get(p) == Some(&id.0) {
                now.insert(*p, id.0);
                continue;
            }
            match dp.upsert_ipcache(addr, len, id.0) {
                Ok(()) => {
                    changed += 1;
                    now.insert(*p, id.0);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for (p, id) in written {
            if now.contains_key(&p) || want.contains_key(&p) {
                continue;
            }
            // A DNS answer may have taken the address over since: that entry is not ours.
            if is_host(&p) && fqdn_ips.contains_key(&p.addr()) {
                continue;
            }
            match dp.remove_ipcache(p.addr(), p.prefix_len()) {
                Ok(()) => changed += 1,
                Err(e) => {
                    now.insert(p, id);
                    first_err.get_or_insert(e);
                }
            }
        }
        self.written = Some(now);
        match first_err {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// How many prefix entries this agent holds in the ipcache.
    pub fn len(&self) -> usize {
        self.written.as_ref().map_or(0, BTreeMap::len)
    }
}
