//! The learned addresses on disk, so a restarted agent keeps `toFQDNs` egress working without
//! waiting for pods to resolve again (Cilium restores its DNS cache the same way).
//!
//! ```text
//!  run loop: cache changed ─▶ encode (expiries as Unix ms, each address's identity)
//!              ─▶ <state-dir>/fqdn-cache.json.tmp (0600) ─▶ rename: readers see old or new
//!  start: decode ─▶ any field wrong? ─▶ whole file ignored, error logged and shown in status
//!           │ ok                          (pods resolve again: a cold start, never fail open)
//!           ▼
//!         entries past their TTL dropped ─▶ cache + engine identities (same ids as before)
//!           ─▶ first policy sync ─▶ ipcache: the datapath never lacks an address it held
//! ```
//!
//! Expiries are stored as wall-clock times because `Instant`s mean nothing to another process;
//! a clock step while the agent is down shortens or lengthens them by the step, as it would
//! for any wall-clock deadline.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::cache::{FqdnCache, normalize};

/// File name of the saved state in the agent's state directory.
pub const FILE: &str = "fqdn-cache.json";
/// Format version; another one is refused (not guessed at).
const VERSION: u32 = 1;

/// A saved state that cannot be used (none of it is: never trusted partially).
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// The file exists but could not be read.
    #[error("reading `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not the JSON this module writes.
    #[error("`{path}` is not a saved DNS cache")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: serde_json::Error,
    },
    /// A field holds a value this module never writes.
    #[error("`{path}`: `{field}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field (`entries[3].name`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Saved {
    version: u32,
    entries: Vec<SavedEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SavedEntry {
    name: String,
    ip: IpAddr,
    /// When the TTL runs out (ms since the Unix epoch).
    expires_unix_ms: u64,
    /// The last packet of a flow holding it (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    active_unix_ms: Option<u64>,
    /// Endpoints whose queries learned it.
    learners: Vec<IpAddr>,
    /// The node-local identity the address had in the ipcache (none: not programmed, e.g. a
    /// pod's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<u32>,
}

/// One entry of a restored state, on this run's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredEntry {
    /// Name (normalized).
    pub name: String,
    /// Address.
    pub ip: IpAddr,
    /// When its TTL runs out.
    pub until: Instant,
    /// The last packet of a flow holding it, when known and representable.
    pub active: Option<Instant>,
    /// Endpoints whose queries learned it.
    pub learners: BTreeSet<IpAddr>,
    /// The identity it had.
    pub identity: Option<u32>,
}

/// A decoded state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Entries still within their TTL.
    pub entries: Vec<RestoredEntry>,
    /// Entries whose TTL ran out while the agent was down (dropped).
    pub expired: usize,
}

/// The cache as saved at `now` (`wall` is the wall clock at the same moment); `identity` gives
/// each address's identity in the ipcache.
pub fn encode(
    cache: &FqdnCache,
    identity: impl Fn(IpAddr) -> Option<u32>,
    now: Instant,
    wall: SystemTime,
) -> Vec<u8> {
    let wall_ms = unix_ms(wall);
    let at = |t: Instant| -> u64 {
        if t >= now {
            wall_ms.saturating_add(ms(t - now))
        } else {
            wall_ms.saturating_sub(ms(now - t))
        }
    };
    let entries = cache
        .iter()
        .map(|(name, ip, e)| SavedEntry {
            name: name.to_string(),
            ip,
            expires_unix_ms: at(e.until),
            active_unix_ms: e.active.map(at),
            learners: e.learners.iter().copied().collect(),
            identity: identity(ip),
        })
        .collect();
    serde_json::to_vec_pretty(&Saved {
        version: VERSION,
        entries,
    })
    .unwrap_or_default()
}

/// Reads a saved state at `now` (`wall`: the wall clock then), checking every field; entries
/// past their TTL are dropped and counted.
pub fn decode(
    path: &Path,
    bytes: &[u8],
    now: Instant,
    wall: SystemTime,
) -> Result<Restored, SavedError> {
    let invalid = |field: String, reason: String| SavedError::Invalid {
        path: path.to_path_buf(),
        field,
        reason,
    };
    let saved: Saved = serde_json::from_slice(bytes).map_err(|source| SavedError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if saved.version != VERSION {
        return Err(invalid(
            "version".into(),
            format!("{} (this agent reads {VERSION})", saved.version),
        ));
    }
    let wall_ms = unix_ms(wall);
    let mut out = Restored::default();
    for (i, e) in saved.entries.into_iter().enumerate() {
        let field = |f: &str| format!("entries[{i}].{f}");
        if e.name.is_empty() || normalize(&e.name) != e.name || e.name.len() > 253 {
            return Err(invalid(
                field("name"),
                format!(
                    "`{}` is not a lowercase DNS name without the trailing dot",
                    e.name
                ),
            ));
        }
        if e.learners.is_empty() {
            return Err(invalid(
                field("learners"),
                "empty (every address was learned by some endpoint)".into(),
            ));
        }
        if let Some(id) = e.identity
            && !palisade_policy::identity::Identity(id).is_local_scope()
        {
            return Err(invalid(
                field("identity"),
                format!("{id} is not a node-local identity"),
            ));
        }
        if let Some(a) = e.active_unix_ms
            && a > wall_ms.saturating_add(ms(Duration::from_secs(86_400)))
        {
            return Err(invalid(
                field("activeUnixMs"),
                format!("{a} is more than a day ahead of this clock"),
            ));
        }
        if e.expires_unix_ms <= wall_ms {
            out.expired += 1;
            continue;
        }
        let until = now + Duration::from_millis(e.expires_unix_ms - wall_ms);
        let active = e.active_unix_ms.and_then(|a| {
            if a >= wall_ms {
                Some(now + Duration::from_millis(a - wall_ms))
            } else {
                now.checked_sub(Duration::from_millis(wall_ms - a))
            }
        });
        out.entries.push(RestoredEntry {
            name: e.name,
            ip: e.ip,
            until,
            active,
            learners: e.learners.into_iter().collect(),
            identity: e.identity,
        });
    }
    Ok(out)
}

/// The saved state in `dir`, `None` when there is none.
pub fn load(dir: &Path, now: Instant, wall: SystemTime) -> Result<Option<Restored>, SavedError> {
    let path = dir.join(FILE);
    match fs::read(&path) {
        Ok(bytes) => decode(&path, &bytes, now, wall).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SavedError::Read { path, source }),
    }
}

/// Moves an unusable saved state aside (`fqdn-cache.json.corrupt`, replacing an older one) so
/// the next save does not destroy what an operator may want to look at. Returns where it went.
pub fn quarantine(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(FILE);
    let aside = path.with_extension("json.corrupt");
    fs::rename(&path, &aside)?;
    Ok(aside)
}

/// Writes `bytes` as the saved state in `dir`: a temporary file (0600: the names pods resolve
/// are nobody else's business) renamed over the old one, so a reader sees the old state or the
/// new, never half of one. No fsync: what this guards against is the agent's own restart, and a
/// file torn by a power cut is refused as a whole on the next start (the pods resolve again,
/// as on any cold node).
pub fn save(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join(FILE);
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    fs::rename(&tmp, &path)
}

fn unix_ms(t: SystemTime) -> u64 {
    ms(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::super::cache::CacheLimits;
    use super::*;

    fn limits() -> CacheLimits {
        CacheLimits {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3_600),
            grace: Duration::from_secs(5),
            connection_idle: Duration::from_secs(60),
            max_ips_per_name: 10,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const LOCAL: u32 = 0xFF00_0001;

    #[test]
    fn a_saved_cache_comes_back_on_a_later_clock_without_what_expired_meanwhile() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut c = FqdnCache::new(limits());
        let (pod, other) = (ip("10.200.1.11"), ip("10.200.1.12"));
        c.learn(t0, "api.corp.test", ip("10.96.0.11"), 300, pod);
        c.learn(t0, "api.corp.test", ip("10.96.0.11"), 300, other);
        c.learn(t0, "short.corp.test", ip("10.96.0.12"), 10, pod);
        let bytes = encode(&c, |a| (a == ip("10.96.0.11")).then_some(LOCAL), t0, wall);
        // 20 s later (the agent was down): the 10 s entry is gone, the other has 280 s left.
        let t1 = Instant::now();
        let r =
            decode(Path::new("f"), &bytes, t1, wall + Duration::from_secs(20)).expect("decodes");
        assert_eq!(r.expired, 1);
        assert_eq!(r.entries.len(), 1);
        let e = &r.entries[0];
        assert_eq!((e.name.as_str(), e.ip), ("api.corp.test", ip("10.96.0.11")));
        assert_eq!(e.until, t1 + Duration::from_secs(280));
        assert_eq!(e.learners, BTreeSet::from([pod, other]));
        assert_eq!(e.identity, Some(LOCAL));
    }

    #[test]
    fn a_file_with_one_wrong_field_is_refused_whole_naming_the_field() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now = Instant::now();
        let good = r#"{"name":"a.test","ip":"10.96.0.1","expiresUnixMs":1800000100000,"learners":["10.200.1.11"]}"#;
        let doc = |bad: &str| format!(r#"{{"version":1,"entries":[{good},{bad}]}}"#);
        let ok = decode(Path::new("f"), doc(good).as_bytes(), now, wall).expect("valid");
        assert_eq!(ok.entries.len(), 2);
        for (bad, field) in [
            (
                r#"{"name":"A.test","ip":"10.96.0.2","expiresUnixMs":1800000100000,"learners":["10.200.1.11"]}"#,
                "`entries[1].name`",
            ),
            (
                r#"{"name":"b.test","ip":"10.96.0.2","expiresUnixMs":1800000100000,"learners":[]}"#,
                "`entries[1].learners`",
            ),
            (
                r#"{"name":"b.test","ip":"10.96.0.2","expiresUnixMs":1800000100000,"learners":["10.200.1.11"],"identity":300}"#,
                "`entries[1].identity`",
            ),
        ] {
            let err = decode(Path::new("f"), doc(bad).as_bytes(), now, wall)
                .expect_err(bad)
                .to_string();
            assert!(err.contains(field), "{err}");
        }
        for junk in [
            &b"{\"version\":1,\"entries\":[{\"name\":\"a.te"[..],
            br#"{"version":1,"entries":[],"extra":1}"#,
            br#"{"version":1,"entries":[{"name":"a.test","ip":"10.96.0.999","expiresUnixMs":1,"learners":["10.200.1.11"]}]}"#,
        ] {
            assert!(matches!(
                decode(Path::new("f"), junk, now, wall),
                Err(SavedError::Parse { .. })
            ));
        }
        let err = decode(Path::new("f"), br#"{"version":2,"entries":[]}"#, now, wall)
            .expect_err("version")
            .to_string();
        assert!(err.contains("`version`"), "{err}");
    }

    #[test]
    fn the_file_is_replaced_whole_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("pal-fqdn-saved-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let (now, wall) = (Instant::now(), SystemTime::now());
        assert_eq!(load(&dir, now, wall).expect("none"), None);
        let mut c = FqdnCache::new(limits());
        c.learn(now, "a.test", ip("10.96.0.1"), 60, ip("10.200.1.11"));
        save(&dir, &encode(&c, |_| None, now, wall)).expect("save");
        let mode = fs::metadata(dir.join(FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.join("fqdn-cache.json.tmp").exists());
        let r = load(&dir, now, wall).expect("loads").expect("some");
        assert_eq!(r.entries.len(), 1);
        fs::write(dir.join(FILE), b"{").expect("corrupt");
        assert!(load(&dir, now, wall).is_err());
        let aside = quarantine(&dir).expect("moved aside");
        assert_eq!(fs::read(&aside).expect("kept"), b"{");
        assert_eq!(load(&dir, now, wall).expect("none now"), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
