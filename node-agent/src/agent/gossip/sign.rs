//! Per-node signatures on gossiped state: the cluster gossip key admits a node to gossip, and
//! this proves which node a state comes from. Each agent signs its own keys with its node
//! private key (the mTLS key the cluster CA issued for the control-plane link) and publishes its
//! certificate next to them; a peer merges a node's state only when the certificate chains to
//! the cluster CA, is valid now, names that node, and the signature covers exactly the keys
//! received, under a sequence number higher than any it accepted for the node before.
//!
//! ```text
//!  keys of node N:  cert = base64(DER of N's certificate)
//!                   sig  = <seq> "." base64(ECDSA P-256 SHA-256 signature, ASN.1)
//!                   ... every other key (node, ep/*, id/*)
//!  signed bytes  =  DOMAIN | u32 len | N | generation (u64 BE) | seq (u64 BE)
//!                   | for each key but `sig`, in byte order: u32 len | key | u32 len | value
//! ```
//!
//! The certificate must carry the URI SAN `spiffe://palisade/node/<N>` (what `palisade
//! controlplane certs issue --role node` writes), the client-auth usage, and a validity that
//! includes now. Pure code (no sockets), tested below.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::seal::DropReason;

/// The key holding the signer's certificate (base64 DER).
pub const CERT_KEY: &str = "cert";
/// The key holding the sequence number and signature.
pub const SIG_KEY: &str = "sig";
/// Separates these signatures from anything else the node key signs (TLS handshakes).
const DOMAIN: &[u8] = b"palisade gossip state v1\0";
/// The SAN a node certificate carries, followed by the node name.
const NODE_URI_PREFIX: &str = "spiffe://palisade/node/";
/// The longest certificate accepted (base64); real ones are under 1 KiB.
const MAX_CERT_B64: usize = 4_096;

/// Node credentials that cannot be used for signing, or a CA that cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A file could not be read.
    #[error("gossip signing: cannot read `{path}`")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("gossip signing: `{what}`: {reason}")]
    Invalid {
        /// Which file or field.
        what: String,
        /// Why.
        reason: String,
    },
}

fn invalid(what: &str, reason: impl fmt::Display) -> SignError {
    SignError::Invalid {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, SignError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| SignError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// This node's signing half: its certificate (as published) and private key.
pub struct NodeSigner {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_b64: String,
    rng: SystemRandom,
}

impl fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSigner")
            .field("cert_bytes", &self.cert_b64.len())
            .finish_non_exhaustive()
    }
}

impl NodeSigner {
    /// From a control-plane TLS directory (`cert.pem`, `key.pem`).
    pub fn from_dir(dir: &Path) -> Result<NodeSigner, SignError> {
        NodeSigner::from_pem(&read(dir, "cert.pem")?, &read(dir, "key.pem")?)
    }

    /// From PEM: the certificate (the first one is used) and its PKCS#8 P-256 private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<NodeSigner, SignError> {
        let cert = CertificateDer::from_pem_slice(cert_pem)
            .map_err(|e| invalid("cert.pem", format!("not a PEM certificate: {e}")))?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem)
            .map_err(|e| invalid("key.pem", format!("not a PEM PKCS#8 private key: {e}")))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            key.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| invalid("key.pem", format!("not an ECDSA P-256 key: {e}")))?;
        // The key must be the certificate's, or every peer would drop what this node says.
        let parsed = EndEntityCert::try_from(&cert)
            .map_err(|e| invalid("cert.pem", format!("not an X.509 certificate: {e}")))?;
        let probe = key
            .sign(&rng, b"palisade key check")
            .map_err(|_| invalid("key.pem", "cannot sign"))?;
        parsed
            .verify_signature(
                webpki::ring::ECDSA_P256_SHA256,
                b"palisade key check",
                probe.as_ref(),
            )
            .map_err(|_| invalid("key.pem", "is not the key of cert.pem"))?;
        Ok(NodeSigner {
            key,
            cert_b64: B64.encode(cert.as_ref()),
            cert_der: cert.as_ref().to_vec(),
            rng,
        })
    }

    /// Refuses a certificate that does not name `node` (peers would drop all it signs).
    pub fn check_names(&self, node: &str) -> Result<(), SignError> {
        match names_node(&self.cert_der, node) {
            Ok(true) => Ok(()),
            _ => Err(invalid(
                "cert.pem",
                format!("does not name node `{node}` (URI SAN `{NODE_URI_PREFIX}{node}`)"),
            )),
        }
    }

    /// The value of [`CERT_KEY`].
    pub fn cert_value(&self) -> &str {
        &self.cert_b64
    }

    /// The value of [`SIG_KEY`] for these keys (those named [`SIG_KEY`] are skipped; the
    /// [`CERT_KEY`] must be among them, as peers will see it).
    pub fn sign<'a>(
        &self,
        node: &str,
        generation: u64,
        seq: u64,
        kv: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<String> {
        let msg = signed_bytes(node, generation, seq, kv);
        let sig = self.key.sign(&self.rng, &msg).ok()?;
        Some(format!("{seq}.{}", B64.encode(sig.as_ref())))
    }
}

/// The bytes a signature covers (see the module doc). Keys are taken in byte order whatever
/// order they come in.
pub fn signed_bytes<'a>(
    node: &str,
    generation: u64,
    seq: u64,
    kv: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<u8> {
    let sorted: BTreeMap<&str, &str> = kv.into_iter().filter(|(k, _)| *k != SIG_KEY).collect();
    let mut out = Vec::with_capacity(
        DOMAIN.len()
            + 20
            + node.len()
            + sorted
                .iter()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>(),
    );
    out.extend_from_slice(DOMAIN);
    put(&mut out, node.as_bytes());
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    for (k, v) in &sorted {
        put(&mut out, k.as_bytes());
        put(&mut out, v.as_bytes());
    }
    out
}

/// Appends a length-prefixed field (values are bounded far below 4 GiB).
fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// The verifying half: the cluster CA every agent trusts.
#[derive(Debug, Clone)]
pub struct StateVerifier {
    anchors: Vec<TrustAnchor<'static>>,
}

impl StateVerifier {
    /// From a control-plane TLS directory (`ca.pem`).
    pub fn from_dir(dir: &Path) -> Result<StateVerifier, SignError> {
        StateVerifier::from_ca_pem(&read(dir, "ca.pem")?)
    }

    /// From the CA's PEM certificate.
    pub fn from_ca_pem(pem: &[u8]) -> Result<StateVerifier, SignError> {
        let ca = CertificateDer::from_pem_slice(pem)
            .map_err(|e| invalid("ca.pem", format!("not a PEM certificate: {e}")))?;
        let anchor = webpki::anchor_from_trusted_cert(&ca)
            .map_err(|e| invalid("ca.pem", format!("not a usable CA certificate: {e}")))?
            .to_owned();
        Ok(StateVerifier {
            anchors: vec![anchor],
        })
    }

    /// Checks node `node`'s keys (generation `generation`) at `now`; returns the signed
    /// sequence number. Every failure is a drop reason; nothing here panics on bad input.
    pub fn verify<'a>(
        &self,
        node: &str,
        generation: u64,
        kv: impl IntoIterator<Item = (&'a str, &'a str)>,
        now: UnixTime,
    ) -> Result<u64, DropReason> {
        let kv: BTreeMap<&str, &str> = kv.into_iter().collect();
        let (Some(cert_b64), Some(sig)) = (kv.get(CERT_KEY).copied(), kv.get(SIG_KEY).copied())
        else {
            return Err(DropReason::Unsigned);
        };
        if cert_b64.len() > MAX_CERT_B64 {
            return Err(DropReason::BadCertificate);
        }
        let der = B64
            .decode(cert_b64)
            .map_err(|_| DropReason::BadCertificate)?;
        let der = CertificateDer::from(der);
        let cert = EndEntityCert::try_from(&der).map_err(|_| DropReason::BadCertificate)?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &[],
            now,
            KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                DropReason::ExpiredCertificate
            }
            webpki::Error::BadDer | webpki::Error::BadDerTime | webpki::Error::TrailingData(_) => {
                DropReason::BadCertificate
            }
            _ => DropReason::UntrustedCertificate,
        })?;
        if !names_node(&der, node)? {
            return Err(DropReason::WrongName);
        }
        let (seq, sig) = sig.split_once('.').ok_or(DropReason::BadSignature)?;
        let seq: u64 = seq.parse().map_err(|_| DropReason::BadSignature)?;
        let sig = B64.decode(sig).map_err(|_| DropReason::BadSignature)?;
        let msg = signed_bytes(node, generation, seq, kv.iter().map(|(k, v)| (*k, *v)));
        cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, &msg, &sig)
            .map_err(|_| DropReason::BadSignature)?;
        Ok(seq)
    }
}

/// Whether the certificate's URI SAN names node `node` (a chain-verified certificate that
/// x509-parser cannot read is a bad certificate).
fn names_node(der: &[u8], node: &str) -> Result<bool, DropReason> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| DropReason::BadCertificate)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| DropReason::BadCertificate)?;
    Ok(san.is_some_and(|san| {
        san.value.general_names.iter().any(|n| {
            matches!(n, GeneralName::URI(u)
                if u.strip_prefix(NODE_URI_PREFIX) == Some(node))
        })
    }))
}

/// The time now, for [`StateVerifier::verify`].
pub fn unix_now() -> UnixTime {
    UnixTime::now()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SanType,
    };

    /// A test CA: its PEM and an issuer.
    pub(crate) struct TestCa {
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub fn new() -> TestCa {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, "test CA");
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            let cert = p.self_signed(&key).expect("ca");
            let pem = cert.pem();
            TestCa {
                issuer: Issuer::new(p, key),
                pem,
            }
        }

        /// A node certificate for `name` as the control plane issues them, valid from
        /// `from_days` to `to_days` relative to now; returns (cert PEM, key PEM).
        pub fn node(&self, name: &str, from_days: i64, to_days: i64) -> (String, String) {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, name);
            p.subject_alt_names = vec![SanType::URI(
                format!("{NODE_URI_PREFIX}{name}").try_into().expect("uri"),
            )];
            p.is_ca = IsCa::ExplicitNoCa;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now + time::Duration::days(from_days);
            p.not_after = now + time::Duration::days(to_days);
            let cert = p.signed_by(&key, &self.issuer).expect("cert");
            (cert.pem(), key.serialize_pem())
        }

        pub fn signer(&self, name: &str) -> NodeSigner {
            let (c, k) = self.node(name, -1, 30);
            NodeSigner::from_pem(c.as_bytes(), k.as_bytes()).expect("signer")
        }

        pub fn verifier(&self) -> StateVerifier {
            StateVerifier::from_ca_pem(self.pem.as_bytes()).expect("verifier")
        }
    }

    /// A node's published keys, signed.
    fn signed(s: &NodeSigner, node: &str, generation: u64, seq: u64) -> BTreeMap<String, String> {
        let mut kv: BTreeMap<String, String> = [
            ("ep/10.200.2.10".to_string(), "300".to_string()),
            ("id/300".to_string(), r#"["k8s:app=db"]"#.to_string()),
            (CERT_KEY.to_string(), s.cert_value().to_string()),
        ]
        .into();
        let sig = s
            .sign(
                node,
                generation,
                seq,
                kv.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .expect("sign");
        kv.insert(SIG_KEY.to_string(), sig);
        kv
    }

    fn check(
        v: &StateVerifier,
        node: &str,
        generation: u64,
        kv: &BTreeMap<String, String>,
    ) -> Result<u64, DropReason> {
        v.verify(
            node,
            generation,
            kv.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            unix_now(),
        )
    }

    #[test]
    fn a_signed_state_verifies_and_any_change_to_it_does_not() {
        let ca = TestCa::new();
        let (s, v) = (ca.signer("n2"), ca.verifier());
        let kv = signed(&s, "n2", 7, 42);
        assert_eq!(check(&v, "n2", 7, &kv), Ok(42));
        // Another value, an added key, a removed key, another generation: the bytes differ.
        let mut changed = kv.clone();
        changed.insert("ep/10.200.2.10".into(), "301".into());
        assert_eq!(check(&v, "n2", 7, &changed), Err(DropReason::BadSignature));
        let mut added = kv.clone();
        added.insert("ep/10.200.2.99".into(), "300".into());
        assert_eq!(check(&v, "n2", 7, &added), Err(DropReason::BadSignature));
        let mut removed = kv.clone();
        removed.remove("id/300");
        assert_eq!(check(&v, "n2", 7, &removed), Err(DropReason::BadSignature));
        assert_eq!(check(&v, "n2", 8, &kv), Err(DropReason::BadSignature));
        // The sequence number is signed: raising it (to pass as newer) breaks the signature.
        let mut bumped = kv.clone();
        let sig = kv[SIG_KEY].split_once('.').expect("sig").1.to_string();
        bumped.insert(SIG_KEY.into(), format!("43.{sig}"));
        assert_eq!(check(&v, "n2", 7, &bumped), Err(DropReason::BadSignature));
    }

    #[test]
    fn a_valid_certificate_of_another_node_is_the_wrong_name() {
        let ca = TestCa::new();
        // n1 signs correctly with its own certificate, claiming to be n2.
        let kv = signed(&ca.signer("n1"), "n2", 7, 42);
        assert_eq!(
            check(&ca.verifier(), "n2", 7, &kv),
            Err(DropReason::WrongName)
        );
        // A name that merely starts like another is no match either.
        let kv = signed(&ca.signer("n2"), "n2x", 7, 42);
        assert_eq!(
            check(&ca.verifier(), "n2x", 7, &kv),
            Err(DropReason::WrongName)
        );
    }

    #[test]
    fn another_cas_certificate_is_untrusted_and_an_expired_one_is_expired() {
        let (ca, other) = (TestCa::new(), TestCa::new());
        let kv = signed(&other.signer("n2"), "n2", 7, 42);
        assert_eq!(
            check(&ca.verifier(), "n2", 7, &kv),
            Err(DropReason::UntrustedCertificate)
        );
        for (from, to) in [(-30, -1), (1, 30)] {
            let (c, k) = ca.node("n2", from, to);
            let s = NodeSigner::from_pem(c.as_bytes(), k.as_bytes()).expect("signer");
            let kv = signed(&s, "n2", 7, 42);
            assert_eq!(
                check(&ca.verifier(), "n2", 7, &kv),
                Err(DropReason::ExpiredCertificate),
                "valid from {from} to {to} days"
            );
        }
    }

    #[test]
    fn garbage_is_counted_never_a_panic() {
        let ca = TestCa::new();
        let v = ca.verifier();
        let good = signed(&ca.signer("n2"), "n2", 7, 42);
        let mut unsigned = good.clone();
        unsigned.remove(SIG_KEY);
        assert_eq!(check(&v, "n2", 7, &unsigned), Err(DropReason::Unsigned));
        let mut no_cert = good.clone();
        no_cert.remove(CERT_KEY);
        assert_eq!(check(&v, "n2", 7, &no_cert), Err(DropReason::Unsigned));
        let cert = good[CERT_KEY].clone();
        for bad_cert in [
            "not base64!".to_string(),
            B64.encode(b"not DER"),
            cert[..cert.len() / 2].to_string(),
            B64.encode(&B64.decode(&cert).expect("b64")[..200]),
            "A".repeat(MAX_CERT_B64 + 4),
            String::new(),
        ] {
            let mut kv = good.clone();
            kv.insert(CERT_KEY.into(), bad_cert.clone());
            assert_eq!(
                check(&v, "n2", 7, &kv),
                Err(DropReason::BadCertificate),
                "cert {bad_cert:.40}"
            );
        }
        for bad_sig in [
            "",
            ".",
            "42",
            "x.AAAA",
            "42.not base64!",
            "42.AAAA",
            "99999999999999999999999.AA",
        ] {
            let mut kv = good.clone();
            kv.insert(SIG_KEY.into(), bad_sig.into());
            assert_eq!(
                check(&v, "n2", 7, &kv),
                Err(DropReason::BadSignature),
                "sig {bad_sig}"
            );
        }
    }

    #[test]
    fn signed_bytes_have_the_documented_layout_whatever_the_key_order() {
        let a = signed_bytes("n2", 1, 2, [("b", "2"), ("a", "1"), (SIG_KEY, "ignored")]);
        let b = signed_bytes("n2", 1, 2, [("a", "1"), ("b", "2")]);
        assert_eq!(a, b);
        let mut want = DOMAIN.to_vec();
        want.extend_from_slice(&[0, 0, 0, 2]);
        want.extend_from_slice(b"n2");
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&2u64.to_be_bytes());
        for f in ["a", "1", "b", "2"] {
            want.extend_from_slice(&[0, 0, 0, 1]);
            want.extend_from_slice(f.as_bytes());
        }
        assert_eq!(a, want);
        assert_eq!(a.len(), DOMAIN.len() + 4 + 2 + 16 + 4 * 5);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_at_load() {
        let ca = TestCa::new();
        let (c, _) = ca.node("n1", -1, 30);
        let (_, other_key) = ca.node("n1", -1, 30);
        let e = NodeSigner::from_pem(c.as_bytes(), other_key.as_bytes()).expect_err("mismatch");
        assert!(e.to_string().contains("is not the key of cert.pem"), "{e}");
        let e = NodeSigner::from_pem(b"junk", other_key.as_bytes()).expect_err("junk");
        assert!(e.to_string().contains("cert.pem"), "{e}");
        let e = StateVerifier::from_ca_pem(b"junk").expect_err("junk");
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }
}
