//! The gossip wire seal: every datagram between agents is a chitchat envelope sealed with
//! ChaCha20-Poly1305 under the cluster gossip key, so only holders of the key take part.
//!
//! ```text
//!  datagram = MAGIC (4: "PLG" 1) | nonce (12, random) | AEAD(key, nonce, aad = MAGIC,
//!                                                            sent_at_ms (8, BE) | envelope)
//! ```
//!
//! The sender's clock goes inside the sealed part: a captured datagram replayed more than
//! [`MAX_SKEW_MS`] later is dropped (`stale`). Within that window a replay is harmless: chitchat's
//! state is versioned, an old delta changes nothing. Pure code (no sockets), tested below.

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Version tag of the format; a different one is `malformed`.
pub const MAGIC: [u8; 4] = *b"PLG\x01";
/// Nonce length.
const NONCE: usize = 12;
/// Poly1305 tag length.
const TAG: usize = 16;
/// Bytes a seal adds to an envelope.
pub const OVERHEAD: usize = MAGIC.len() + NONCE + 8 + TAG;
/// The largest datagram sent or accepted (the largest UDP payload over IPv4).
pub const MAX_DATAGRAM: usize = 65_507;
/// How far a datagram's send time may be from the receiver's clock.
pub const MAX_SKEW_MS: u64 = 30_000;

/// Why a datagram was dropped (the `reason` label of `palisade_agent_gossip_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// Not a sealed gossip datagram: too short, unknown magic, or a sealed payload chitchat
    /// cannot decode.
    Malformed,
    /// Longer than [`MAX_DATAGRAM`] (or truncated by the receive buffer).
    Oversize,
    /// The seal does not verify: another key, or altered bytes.
    Unauthenticated,
    /// Sealed correctly, but sent more than [`MAX_SKEW_MS`] away from now (a replay, or a clock
    /// far off).
    Stale,
    // The reasons below are a node's *state*, not a datagram: the datagram opened (the sender
    // holds the gossip key) but the state it carries for a node is not that node's to give
    // (`super::sign`). Counted once per state version, never merged.
    /// No signature or no certificate.
    Unsigned,
    /// The certificate is not base64 DER X.509 (malformed).
    BadCertificate,
    /// The certificate does not chain to the cluster CA (or lacks the client-auth usage).
    UntrustedCertificate,
    /// The certificate is expired or not valid yet.
    ExpiredCertificate,
    /// A valid certificate of another node than the one the state claims to be.
    WrongName,
    /// The signature is malformed or does not cover these exact keys, generation and sequence.
    BadSignature,
    /// Correctly signed, but older than a state already accepted for that node (a replay).
    Replayed,
}

impl DropReason {
    /// Every reason, for status.
    pub const ALL: [DropReason; 11] = [
        DropReason::Malformed,
        DropReason::Oversize,
        DropReason::Unauthenticated,
        DropReason::Stale,
        DropReason::Unsigned,
        DropReason::BadCertificate,
        DropReason::UntrustedCertificate,
        DropReason::ExpiredCertificate,
        DropReason::WrongName,
        DropReason::BadSignature,
        DropReason::Replayed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Oversize => "oversize",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Stale => "stale",
            DropReason::Unsigned => "unsigned",
            DropReason::BadCertificate => "bad_certificate",
            DropReason::UntrustedCertificate => "untrusted_certificate",
            DropReason::ExpiredCertificate => "expired_certificate",
            DropReason::WrongName => "wrong_name",
            DropReason::BadSignature => "bad_signature",
            DropReason::Replayed => "replayed",
        }
    }
}

/// A gossip key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("gossip key file `{path}`")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read it.
    #[error(
        "gossip key file `{path}`: mode {mode:o} lets others read the cluster's gossip key (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// Not 64 hex digits.
    #[error(
        "gossip key file `{path}`: expected 64 hex digits (32 bytes) on the first line, found {found}"
    )]
    Format {
        /// The file.
        path: String,
        /// What was found (never the key itself).
        found: String,
    },
}

/// The cluster gossip key (32 bytes). `Debug` never prints it.
#[derive(Clone)]
pub struct GossipKey([u8; 32]);

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

impl GossipKey {
    /// A key from raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> GossipKey {
        GossipKey(b)
    }

    /// Reads a key file: 64 hex digits on the first line, mode 0600 or stricter (the file is
    /// the only thing between a stranger and the cluster's gossip).
    pub fn from_file(path: &Path) -> Result<GossipKey, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
            path: p.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: p, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse_hex(text.lines().next().unwrap_or("").trim()).ok_or_else(|| {
            let line = text.lines().next().unwrap_or("").trim();
            KeyError::Format {
                path: p,
                found: format!(
                    "{} character(s){}",
                    line.len(),
                    if line.chars().all(|c| c.is_ascii_hexdigit()) {
                        ""
                    } else {
                        ", not all hex"
                    }
                ),
            }
        })
    }

    fn parse_hex(s: &str) -> Option<GossipKey> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(GossipKey(out))
    }
}

/// Seals and opens datagrams under one key.
pub struct Sealer {
    aead: ChaCha20Poly1305,
}

impl Sealer {
    /// A sealer for `key`.
    pub fn new(key: &GossipKey) -> Sealer {
        Sealer {
            aead: ChaCha20Poly1305::new(Key::from_slice(&key.0)),
        }
    }

    /// Seals `envelope` sent at `now_ms`; `None` when the result would exceed
    /// [`MAX_DATAGRAM`] (the caller counts it and sends nothing).
    pub fn seal(&self, envelope: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        if envelope.len() + OVERHEAD > MAX_DATAGRAM {
            return None;
        }
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut plain = Vec::with_capacity(8 + envelope.len());
        plain.extend_from_slice(&now_ms.to_be_bytes());
        plain.extend_from_slice(envelope);
        let sealed = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &MAGIC,
                },
            )
            .ok()?;
        let mut out = Vec::with_capacity(OVERHEAD + envelope.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// Opens a datagram received at `now_ms`: the envelope bytes, or why it is dropped.
    pub fn open(&self, datagram: &[u8], now_ms: u64) -> Result<Vec<u8>, DropReason> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(DropReason::Oversize);
        }
        if datagram.len() < OVERHEAD || datagram[..MAGIC.len()] != MAGIC {
            return Err(DropReason::Malformed);
        }
        let nonce = Nonce::from_slice(&datagram[MAGIC.len()..MAGIC.len() + NONCE]);
        let mut plain = self
            .aead
            .decrypt(
                nonce,
                Payload {
                    msg: &datagram[MAGIC.len() + NONCE..],
                    aad: &MAGIC,
                },
            )
            .map_err(|_| DropReason::Unauthenticated)?;
        let mut at = [0u8; 8];
        at.copy_from_slice(&plain[..8]);
        let sent = u64::from_be_bytes(at);
        if sent.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(DropReason::Stale);
        }
        plain.drain(..8);
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000_000;

    fn sealer(b: u8) -> Sealer {
        Sealer::new(&GossipKey::from_bytes([b; 32]))
    }

    #[test]
    fn a_sealed_envelope_opens_to_the_same_bytes_with_the_exact_overhead() {
        let s = sealer(7);
        let env = b"chitchat envelope bytes".to_vec();
        let d = s.seal(&env, NOW).expect("fits");
        assert_eq!(d.len(), env.len() + OVERHEAD);
        assert_eq!(OVERHEAD, 40);
        assert_eq!(&d[..4], &MAGIC);
        assert_eq!(s.open(&d, NOW + 1_000), Ok(env.clone()));
        // Fresh nonce per datagram: the same envelope never seals to the same bytes.
        assert_ne!(s.seal(&env, NOW).expect("fits"), d);
    }

    #[test]
    fn any_altered_byte_fails_authentication() {
        let s = sealer(7);
        let d = s.seal(b"hello gossip", NOW).expect("fits");
        for i in MAGIC.len()..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            assert_eq!(
                s.open(&t, NOW),
                Err(DropReason::Unauthenticated),
                "byte {i}"
            );
        }
        // The magic is authenticated too, but a wrong one is not ours at all.
        let mut t = d.clone();
        t[3] = 2;
        assert_eq!(s.open(&t, NOW), Err(DropReason::Malformed));
    }

    #[test]
    fn another_key_is_unauthenticated() {
        let d = sealer(7).seal(b"members only", NOW).expect("fits");
        assert_eq!(sealer(8).open(&d, NOW), Err(DropReason::Unauthenticated));
    }

    #[test]
    fn truncated_and_junk_datagrams_are_malformed_or_unauthenticated() {
        let s = sealer(7);
        let d = s.seal(b"members only", NOW).expect("fits");
        assert_eq!(s.open(&d[..OVERHEAD - 1], NOW), Err(DropReason::Malformed));
        assert_eq!(s.open(&[], NOW), Err(DropReason::Malformed));
        assert_eq!(s.open(b"junk", NOW), Err(DropReason::Malformed));
        // Long enough and the right magic, but cut: the tag no longer matches.
        assert_eq!(
            s.open(&d[..d.len() - 1], NOW),
            Err(DropReason::Unauthenticated)
        );
    }

    #[test]
    fn oversize_is_refused_on_both_sides() {
        let s = sealer(7);
        let biggest = vec![0u8; MAX_DATAGRAM - OVERHEAD];
        let d = s.seal(&biggest, NOW).expect("the largest envelope fits");
        assert_eq!(d.len(), MAX_DATAGRAM);
        assert_eq!(s.open(&d, NOW).map(|e| e.len()), Ok(biggest.len()));
        assert!(s.seal(&[0u8; MAX_DATAGRAM - OVERHEAD + 1], NOW).is_none());
        assert_eq!(
            s.open(&vec![0u8; MAX_DATAGRAM + 1], NOW),
            Err(DropReason::Oversize)
        );
    }

    #[test]
    fn a_replay_outside_the_window_is_stale() {
        let s = sealer(7);
        let d = s.seal(b"old news", NOW).expect("fits");
        assert!(s.open(&d, NOW + MAX_SKEW_MS).is_ok());
        assert_eq!(s.open(&d, NOW + MAX_SKEW_MS + 1), Err(DropReason::Stale));
        assert_eq!(s.open(&d, NOW - MAX_SKEW_MS - 1), Err(DropReason::Stale));
    }

    #[test]
    fn key_files_must_be_private_and_well_formed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("palisade-gossip-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("key");
        std::fs::write(&f, format!("{}\n", "ab".repeat(32))).expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = GossipKey::from_file(&f).expect_err("world-readable");
        assert!(e.to_string().contains("mode 644"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let k = GossipKey::from_file(&f).expect("valid");
        assert_eq!(k.0, [0xab; 32]);
        assert_eq!(format!("{k:?}"), "GossipKey(..)", "never printed");
        std::fs::write(&f, "not-a-key\n").expect("write");
        let e = GossipKey::from_file(&f).expect_err("not hex");
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        assert!(
            !e.to_string().contains("not-a-key"),
            "the content is not echoed: {e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
