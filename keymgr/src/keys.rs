//! Node-local x25519 keys: generation, storage, rotation and destruction.
//!
//! The private key is born here from the OS's randomness and never leaves the node: it is written
//! only to the key directory (0700, files 0600), never printed (`Debug` shows the epoch and the
//! public-key fingerprint), and wiped (overwritten with zeros, synced) before its file is unlinked.
//!
//! ```text
//!  open(dir) ──► epoch 1 created, or the newest stored key loaded (restart keeps the key)
//!  rotate()  ──► epoch n+1 is current; epoch n stays for the grace period (peers may still use it)
//!  destroy_expired(now) ──► keys superseded more than `grace` ago are wiped and unlinked
//! ```
//!
//! File format, one file per epoch, `key-<epoch, 20 digits>.key`, exactly [`KEY_FILE_LEN`] bytes:
//! the 32-byte private key, then the creation time as big-endian seconds since the Unix epoch (u64).
//! A key is superseded when the key of the next epoch was created, so no other state is needed.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand_core::OsRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

/// How long a superseded private key is kept when the caller does not choose: long enough for every
/// peer to learn the new public key through the control plane and complete a handshake with it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10 * 60);

/// Exact length of a key file: 32 bytes of private key and 8 bytes of creation time.
pub const KEY_FILE_LEN: usize = 40;

const KEY_FILE_PREFIX: &str = "key-";
const KEY_FILE_SUFFIX: &str = ".key";

/// Errors of the key store. None of them carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key directory or a key file could not be read or written.
    #[error("key store io on `{path}`")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key file does not have the expected length.
    #[error("key file `{path}` is malformed: {len} bytes, expected {KEY_FILE_LEN}")]
    Malformed {
        /// The file concerned.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// A key file or the key directory is readable by others than its owner.
    #[error("`{path}` has mode {mode:o}; refusing to use a key others can read")]
    Permissions {
        /// The file or directory concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The epoch counter would overflow (never in practice; a guard against a forged file name).
    #[error("key epoch overflow")]
    EpochOverflow,
}

/// Errors parsing a public key.
#[derive(Debug, thiserror::Error)]
pub enum PublicKeyError {
    /// The text is not base64.
    #[error("public key is not base64")]
    Base64(#[source] base64::DecodeError),
    /// The decoded key is not 32 bytes long.
    #[error("public key has {0} bytes, expected 32")]
    Length(usize),
}

// === impl PublicKey ===

/// An x25519 public key, as published to the control plane (`wireguard_public_key`: base64 of the
/// 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Standard base64 with padding, as WireGuard tools and the control plane write it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Parses standard base64 of 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, PublicKeyError> {
        let bytes = BASE64.decode(text.trim()).map_err(PublicKeyError::Base64)?;
        let len = bytes.len();
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| PublicKeyError::Length(len))?;
        Ok(Self(bytes))
    }

    /// A short stable name for the key in logs and status output: the first 8 bytes of its
    /// SHA-256, hex. Public, so safe to show; short, so humans can compare two of them.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(crate) fn to_dalek(self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = PublicKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

// === impl NodeKey ===

/// One key pair of this node with its epoch. The private half is zeroized when dropped
/// (x25519-dalek's `zeroize` feature) and is reachable only inside this crate.
#[derive(Clone)]
pub struct NodeKey {
    epoch: u64,
    secret: StaticSecret,
    public: PublicKey,
    created: SystemTime,
}

impl NodeKey {
    /// A fresh key from the OS's randomness. Not persisted: use [`KeyStore`] for node keys; this is
    /// for tests and for throwaway identities (a forged sender in a test, say).
    pub fn generate(epoch: u64) -> Self {
        Self::from_secret(
            epoch,
            StaticSecret::random_from_rng(OsRng),
            SystemTime::now(),
        )
    }

    fn from_secret(epoch: u64, secret: StaticSecret, created: SystemTime) -> Self {
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self {
            epoch,
            secret,
            public,
            created,
        }
    }

    /// The epoch: 1 for the node's first key, one more at each rotation.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The public key, to publish.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// When the key was generated.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// The private key, for the tunnel backends of this crate only.
    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("epoch", &self.epoch)
            .field("public", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

// === impl KeyStore ===

/// The node's keys in a directory: the current one and those still in their grace period.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    grace: Duration,
    /// The current key: the newest epoch.
    current: NodeKey,
    /// Superseded keys still in their grace period, by epoch.
    previous: BTreeMap<u64, NodeKey>,
}

impl KeyStore {
    /// Opens the key directory (created with mode 0700 if missing), loads every stored key and
    /// creates epoch 1 when there is none. A restart therefore keeps the node's key and epoch.
    /// Refuses a directory or key file that others can read.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, KeyError> {
        let dir = dir.as_ref().to_path_buf();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io(&dir))?;
        }
        // DirBuilder's mode is filtered by the umask and an existing directory keeps its mode, so
        // set it explicitly: the directory listing itself reveals epochs and timing.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;

        let mut keys = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let Some(epoch) = name.to_str().and_then(parse_key_file_name) else {
                continue;
            };
            let key = read_key_file(&entry.path(), epoch)?;
            keys.insert(epoch, key);
        }
        let current = match keys.pop_last() {
            Some((_, key)) => key,
            None => create_key(&dir, 1)?,
        };
        Ok(Self {
            dir,
            grace: DEFAULT_GRACE,
            current,
            previous: keys,
        })
    }

    /// Sets how long a superseded key is kept before [`KeyStore::destroy_expired`] wipes it.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current key: the one to publish and to initiate handshakes with.
    pub fn current(&self) -> &NodeKey {
        &self.current
    }

    /// Every live key, oldest epoch first (the current key last).
    pub fn keys(&self) -> impl Iterator<Item = &NodeKey> {
        self.previous.values().chain(std::iter::once(&self.current))
    }

    /// Makes a new key with the next epoch and persists it; the previous key stays until its grace
    /// period has passed. Returns the new current key.
    pub fn rotate(&mut self) -> Result<&NodeKey, KeyError> {
        let next = self
            .current()
            .epoch
            .checked_add(1)
            .ok_or(KeyError::EpochOverflow)?;
        let key = create_key(&self.dir, next)?;
        let old = std::mem::replace(&mut self.current, key);
        self.previous.insert(old.epoch, old);
        Ok(&self.current)
    }

    /// When the key of `epoch` was superseded (the next key's creation), if it was.
    pub fn superseded_at(&self, epoch: u64) -> Option<SystemTime> {
        if epoch >= self.current.epoch {
            return None;
        }
        let successor = self
            .previous
            .range(epoch.saturating_add(1)..)
            .next()
            .map_or(&self.current, |(_, k)| k);
        Some(successor.created)
    }

    /// Wipes and removes every superseded key whose grace period has ended at `now`. Returns the
    /// destroyed epochs. The current key is never destroyed.
    pub fn destroy_expired(&mut self, now: SystemTime) -> Result<Vec<u64>, KeyError> {
        let expired: Vec<u64> = self
            .previous
            .keys()
            .copied()
            .filter(|&epoch| {
                self.superseded_at(epoch)
                    .is_some_and(|at| at + self.grace <= now)
            })
            .collect();
        for &epoch in &expired {
            wipe_file(&key_path(&self.dir, epoch))?;
            self.previous.remove(&epoch);
            tracing::info!(epoch, "destroyed superseded wireguard private key");
        }
        Ok(expired)
    }
}

fn key_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("{KEY_FILE_PREFIX}{epoch:020}{KEY_FILE_SUFFIX}"))
}

fn create_key(dir: &Path, epoch: u64) -> Result<NodeKey, KeyError> {
    let key = NodeKey::generate(epoch);
    write_key_file(dir, &key_path(dir, epoch), &key)?;
    tracing::info!(epoch, public = %key.public.fingerprint(), "created wireguard key");
    Ok(key)
}

fn parse_key_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(KEY_FILE_PREFIX)?
        .strip_suffix(KEY_FILE_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a key file. The buffer is zeroized when dropped.
fn encode_key(key: &NodeKey) -> Zeroizing<[u8; KEY_FILE_LEN]> {
    let mut buf = Zeroizing::new([0u8; KEY_FILE_LEN]);
    let secret = Zeroizing::new(key.secret.to_bytes());
    buf[..32].copy_from_slice(secret.as_ref());
    let created = key
        .created
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    buf[32..].copy_from_slice(&created.to_be_bytes());
    buf
}

fn decode_key(bytes: &[u8; KEY_FILE_LEN], epoch: u64) -> NodeKey {
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&bytes[..32]);
    let mut created = [0u8; 8];
    created.copy_from_slice(&bytes[32..]);
    let created = UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(created));
    NodeKey::from_secret(epoch, StaticSecret::from(*secret), created)
}

fn write_key_file(dir: &Path, path: &Path, key: &NodeKey) -> Result<(), KeyError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    // Written to a temporary name and renamed, so a crash never leaves a truncated key that a
    // restart would refuse; created with 0600 from the start so the key is never readable by
    // others, not even for an instant.
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(encode_key(key).as_ref()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

fn read_key_file(path: &Path, epoch: u64) -> Result<NodeKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN + 1));
    // Read at most one byte more than expected so a huge file is not slurped.
    (&mut file)
        .take(KEY_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let exact: &[u8; KEY_FILE_LEN] =
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed {
                path: path.to_path_buf(),
                len: bytes.len(),
            })?;
    Ok(decode_key(exact, epoch))
}

/// Overwrites the file with zeros, syncs it, then unlinks it, so the private key does not survive
/// in the file's blocks after deletion (as far as the filesystem overwrites in place).
fn wipe_file(path: &Path) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new().write(true).open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let zeros = vec![0u8; usize::try_from(len).unwrap_or(KEY_FILE_LEN)];
    file.write_all(&zeros).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::remove_file(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn open_creates_epoch_one_with_private_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let store = KeyStore::open(&dir).unwrap();
        assert_eq!(store.current().epoch(), 1);
        assert_eq!(mode(&dir), 0o700);
        let files: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(mode(&files[0]), 0o600);
        assert_eq!(fs::metadata(&files[0]).unwrap().len(), KEY_FILE_LEN as u64);
    }

    #[test]
    fn reopen_keeps_key_and_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let first = KeyStore::open(tmp.path()).unwrap().current().public_key();
        let store = KeyStore::open(tmp.path()).unwrap();
        assert_eq!(store.current().public_key(), first);
        assert_eq!(store.current().epoch(), 1);
    }

    #[test]
    fn rotation_increments_epoch_and_keeps_previous_until_grace() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(tmp.path())
            .unwrap()
            .with_grace(Duration::from_secs(60));
        let k1 = store.current().public_key();
        let k2 = store.rotate().unwrap().public_key();
        assert_ne!(k1, k2);
        assert_eq!(store.current().epoch(), 2);
        assert_eq!(store.rotate().unwrap().epoch(), 3);
        let epochs: Vec<u64> = store.keys().map(NodeKey::epoch).collect();
        assert_eq!(epochs, vec![1, 2, 3]);

        // Reopening sees the same three keys, the newest current.
        let reopened = KeyStore::open(tmp.path()).unwrap();
        assert_eq!(reopened.current().epoch(), 3);
        assert_eq!(reopened.keys().count(), 3);

        // Within the grace period nothing is destroyed.
        assert!(store.destroy_expired(SystemTime::now()).unwrap().is_empty());
        // After it, the superseded keys are, never the current one.
        let later = SystemTime::now() + Duration::from_secs(120);
        assert_eq!(store.destroy_expired(later).unwrap(), vec![1, 2]);
        assert_eq!(store.current().epoch(), 3);
        let files = fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(files, 1);
        let reopened = KeyStore::open(tmp.path()).unwrap();
        assert_eq!(reopened.current().epoch(), 3);
        assert_eq!(reopened.keys().count(), 1);
    }

    #[test]
    fn wipe_zeroes_before_unlink() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("victim");
        fs::write(&path, [0xAAu8; KEY_FILE_LEN]).unwrap();
        // Keep a second link to observe the contents after the wipe unlinks the first name.
        let witness = tmp.path().join("witness");
        fs::hard_link(&path, &witness).unwrap();
        wipe_file(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(fs::read(&witness).unwrap(), vec![0u8; KEY_FILE_LEN]);
    }

    #[test]
    fn key_file_round_trip_has_exact_length() {
        let key = NodeKey::generate(7);
        let bytes = encode_key(&key);
        assert_eq!(bytes.len(), KEY_FILE_LEN);
        let back = decode_key(&bytes, 7);
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(back.epoch(), 7);
    }

    #[test]
    fn refuses_readable_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        KeyStore::open(tmp.path()).unwrap();
        let file = fs::read_dir(tmp.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyStore::open(tmp.path()),
            Err(KeyError::Permissions { .. })
        ));
    }

    #[test]
    fn debug_shows_no_private_key() {
        let key = NodeKey::generate(1);
        let secret_b64 = BASE64.encode(key.secret().to_bytes());
        let shown = format!("{key:?}");
        assert!(!shown.contains(&secret_b64));
        assert!(shown.contains(&key.public_key().fingerprint()));
        let store_dbg = format!("{:?}", NodeKey::generate(2));
        assert!(store_dbg.starts_with("NodeKey"));
    }

    #[test]
    fn public_key_base64_round_trip() {
        let key = NodeKey::generate(1).public_key();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(PublicKey::from_base64(&text).unwrap(), key);
        assert!(matches!(
            PublicKey::from_base64("AAAA"),
            Err(PublicKeyError::Length(3))
        ));
    }
}
