//! The flow relay's TLS client of the agents' observers.
//!
//! An agent serves its observer with its node certificate, which is a client certificate
//! (extended key usage clientAuth only, so a node never passes as a server to a standard
//! verifier: see `a_node_certificate_never_passes_as_a_server`). The relay therefore checks it
//! as what it is: chained to the cluster CA for client use, and naming the very node the relay
//! dialed (`spiffe://palisade/node/NAME`). No other client trusts it as a server. The relay
//! presents this member's certificate (the agents require one of the cluster CA).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{CertRole, identity_of, provider};

/// This member's credentials for calling agents (cheap to clone).
#[derive(Clone)]
pub struct AgentClientTls {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for AgentClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClientTls").finish_non_exhaustive()
    }
}

impl AgentClientTls {
    pub(super) fn new(
        roots: Arc<RootCertStore>,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
    ) -> Self {
        Self {
            roots,
            chain,
            key: Arc::new(key.clone_key()),
        }
    }

    /// A client configuration that accepts only `node`'s agent (HTTP/2 by ALPN).
    pub fn for_node(&self, node: &str) -> Result<Arc<ClientConfig>, String> {
        let provider = provider();
        let chain_check =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|e| format!("agent verifier: {e}"))?;
        let verifier = NodeVerifier {
            chain_check,
            node: node.to_string(),
            provider: provider.clone(),
        };
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| format!("member certificate: {e}"))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Accepts the node certificate of one node, chained to the CA.
#[derive(Debug)]
struct NodeVerifier {
    chain_check: Arc<dyn ClientCertVerifier>,
    node: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain_check
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = identity_of(end_entity).map_err(rustls::Error::General)?;
        if id.role != CertRole::Node || id.name != self.node {
            return Err(rustls::Error::General(format!(
                "the observer at node `{}` presented the certificate of {} `{}`",
                self.node,
                id.role.name(),
                id.name
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{TlsMaterial, init_ca, issue};

    #[test]
    fn only_the_dialed_nodes_certificate_passes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        init_ca(&ca, 30)?;
        let other_ca = dir.path().join("other-ca");
        init_ca(&other_ca, 30)?;
        let load = |ca: &std::path::Path, name: &str, role: CertRole| {
            let tag = ca.file_name().and_then(|n| n.to_str()).unwrap_or("ca");
            let out = dir.path().join(format!("{name}-{}-{tag}", role.name()));
            issue(ca, name, role, &out, &[], 30)?;
            TlsMaterial::load(&out).map_err(Box::<dyn std::error::Error>::from)
        };
        let member = load(&ca, "cp1", CertRole::Member)?;
        let n1 = load(&ca, "n1", CertRole::Node)?;
        let n2 = load(&ca, "n2", CertRole::Node)?;
        let m2 = load(&ca, "n1", CertRole::Member)?;
        let forged = load(&other_ca, "n1", CertRole::Node)?;
        let tls = member.agent_client();
        let verifier = NodeVerifier {
            chain_check: WebPkiClientVerifier::builder_with_provider(tls.roots.clone(), provider())
                .build()?,
            node: "n1".into(),
            provider: provider(),
        };
        let name = ServerName::try_from("agent.palisade")?;
        let check = |m: &TlsMaterial| {
            verifier.verify_server_cert(&m.chain[0], &[], &name, &[], UnixTime::now())
        };
        assert!(check(&n1).is_ok());
        assert!(check(&n2).is_err(), "another node");
        assert!(check(&m2).is_err(), "a member named like the node");
        assert!(check(&forged).is_err(), "another CA");
        assert!(tls.for_node("n1").is_ok());
        Ok(())
    }
}
