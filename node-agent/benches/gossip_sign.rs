//! The cost of per-node gossip signatures (agent/gossip/sign.rs): signing this node's state
//! (once per change of it) and verifying a peer's (once per new version of it: certificate
//! chain to the cluster CA, name, ECDSA P-256 signature over every key), for states of 1, 100
//! and 4,096 endpoints (the per-node bound). A timed loop, no root needed.
//!
//! Run: `cargo bench -p palisade-node-agent --bench gossip_sign` (GOSSIP_SIGN_SECONDS=2 per
//! measurement).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use palisade_node_agent::agent::{GossipSigner, GossipVerifier, NodeGossip};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A CA and a node certificate shaped as `palisade controlplane certs issue --role node` makes
/// them (P-256, URI SAN, client auth).
fn credentials(node: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "palisade cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = p.self_signed(&ca_key).expect("ca").pem();
    let issuer = Issuer::new(p, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, node);
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://palisade/node/{node}")
            .try_into()
            .expect("uri"),
    )];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, &issuer).expect("cert");
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// A node's published keys with `n` endpoints and 10 identities, `cert` included.
fn state(n: usize, cert: &str) -> BTreeMap<String, String> {
    let mut g = NodeGossip::default();
    for i in 0..n {
        g.endpoints.insert(
            std::net::IpAddr::from([10, 200, (i / 250) as u8, (i % 250) as u8 + 1]),
            300 + (i % 10) as u32,
        );
    }
    for id in 300..310 {
        g.identities.insert(
            id,
            vec![
                format!("k8s:app=app-{id}"),
                "k8s:io.kubernetes.pod.namespace=default".into(),
            ],
        );
    }
    let mut kv = g.to_kv();
    kv.insert("cert".into(), cert.into());
    kv
}

/// The keys as chitchat hands them over.
fn pairs(kv: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    kv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Runs `f` for about `secs`, returns the mean time per call.
fn time(secs: f64, mut f: impl FnMut()) -> Duration {
    f();
    let (start, mut n) = (Instant::now(), 0u32);
    while start.elapsed().as_secs_f64() < secs {
        f();
        n += 1;
    }
    start.elapsed() / n
}

fn main() {
    let secs: f64 = std::env::var("GOSSIP_SIGN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let (ca, cert, key) = credentials("n2");
    let signer = GossipSigner::from_pem(cert.as_bytes(), key.as_bytes()).expect("signer");
    let verifier = GossipVerifier::from_ca_pem(ca.as_bytes()).expect("verifier");
    println!(
        "{:>9} {:>11} {:>12} {:>13}",
        "endpoints", "state bytes", "sign (µs)", "verify (µs)"
    );
    for n in [1, 100, 4_096] {
        let mut kv = state(n, signer.cert_value());
        let bytes: usize = kv.iter().map(|(k, v)| k.len() + v.len()).sum();
        let sign = time(secs, || {
            std::hint::black_box(signer.sign("n2", 1, 2, pairs(&kv)).expect("sign"));
        });
        kv.insert(
            "sig".into(),
            signer.sign("n2", 1, 2, pairs(&kv)).expect("sign"),
        );
        let now = rustls_pki_types::UnixTime::now();
        assert_eq!(verifier.verify("n2", 1, pairs(&kv), now), Ok(2));
        let verify = time(secs, || {
            std::hint::black_box(verifier.verify("n2", 1, pairs(&kv), now).expect("verify"));
        });
        println!(
            "{n:>9} {bytes:>11} {:>12.1} {:>13.1}",
            sign.as_secs_f64() * 1e6,
            verify.as_secs_f64() * 1e6
        );
    }
}
