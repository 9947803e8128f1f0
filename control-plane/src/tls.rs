//! TLS of the control plane: the cluster CA, member and node certificates, and the rustls
//! configurations of the Raft transport (mutual TLS) and the client API (TLS, client
//! certificates optional).
//!
//! A **tls dir** holds one party's material, all PEM:
//!
//! ```text
//! ca.pem       the cluster CA certificate (the only trust anchor)
//! cert.pem     this party's certificate, issued by that CA
//! key.pem      its private key (mode 0600)
//! ca-key.pem   the CA's private key: only in the CA's own directory (`certs init-ca`)
//! ```
//!
//! **Roles.** A certificate names its holder and role in one SAN URI,
//! `spiffe://palisade/member/NAME` (a control-plane member: Raft peer service, `/internal/v1/*`)
//! or `spiffe://palisade/node/NAME` (the agent of node NAME: the agent calls of the client API
//! for that node only, see [`crate::auth::agent_check`]). The subject carries the same as
//! CN = NAME and OU = role, for people reading it; only the URI is authoritative.

pub mod agent_client;
pub mod certs;
pub mod listener;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::extensions::GeneralName;

pub use certs::{init_ca, issue};
pub use listener::{ClientCert, TlsListener};

/// The CA certificate in a tls dir.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key (the CA's own directory only).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// This party's certificate.
pub const CERT_FILE: &str = "cert.pem";
/// This party's private key.
pub const KEY_FILE: &str = "key.pem";

/// Prefix of the SAN URI that carries a certificate's role and name.
const URI_PREFIX: &str = "spiffe://palisade/";

/// What a certificate's holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// A control-plane member.
    Member,
    /// A node's agent.
    Node,
    /// An operator or automation with every right of the admin token (`palisade kubeconfig`
    /// writes such a certificate into a kubeconfig, for kubectl).
    Admin,
    /// An operator or automation that may only read and watch, like the read token.
    Read,
}

impl CertRole {
    /// Lowercase name, as in the SAN URI.
    pub fn name(self) -> &'static str {
        match self {
            CertRole::Member => "member",
            CertRole::Node => "node",
            CertRole::Admin => "admin",
            CertRole::Read => "read",
        }
    }
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CertRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "member" => Ok(CertRole::Member),
            "node" => Ok(CertRole::Node),
            "admin" => Ok(CertRole::Admin),
            "read" => Ok(CertRole::Read),
            other => Err(format!(
                "unknown role `{other}` (member, node, admin or read)"
            )),
        }
    }
}

/// Who a certificate names: its role and name (from its `spiffe://palisade/ROLE/NAME` URI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The role.
    pub role: CertRole,
    /// The member or node name.
    pub name: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`", self.role, self.name)
    }
}

/// The SAN URI that names `name` in `role`.
pub fn role_uri(role: CertRole, name: &str) -> String {
    format!("{URI_PREFIX}{}/{name}", role.name())
}

/// Whether `name` may name a member or node: 1 to 253 characters of a-z, 0-9, `-` and `.`
/// (the node-name rule of the client API).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or written.
    #[error("cannot access `{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file that would be written exists already.
    #[error("`{path}` exists already; refusing to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file's content is unusable.
    #[error("`{path}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A certificate or key could not be generated.
    #[error("cannot generate the {what}")]
    Generate {
        /// What was generated.
        what: &'static str,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
    /// A name or SAN given to `issue` is invalid.
    #[error("`{field}` `{value}`: {reason}")]
    Argument {
        /// The argument.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// rustls refused the configuration built from the files of `dir`.
    #[error("tls dir `{dir}`: {what}")]
    Config {
        /// The tls dir.
        dir: PathBuf,
        /// What failed.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The role and name a certificate carries in its `spiffe://palisade/ROLE/NAME` SAN URI.
/// `Err` names why it carries none (or more than one).
pub fn identity_of(der: &CertificateDer<'_>) -> Result<PeerIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("undecodable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("undecodable subject alternative names: {e}"))?
        .ok_or("no subject alternative names")?;
    let mut found = None;
    for gn in &san.value.general_names {
        let GeneralName::URI(uri) = gn else { continue };
        let Some(rest) = uri.strip_prefix(URI_PREFIX) else {
            continue;
        };
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| format!("malformed role uri `{uri}`"))?;
        let role: CertRole = role.parse()?;
        if !valid_name(name) {
            return Err(format!("invalid name in role uri `{uri}`"));
        }
        if found.is_some() {
            return Err("more than one palisade role uri".to_owned());
        }
        found = Some(PeerIdentity {
            role,
            name: name.to_owned(),
        });
    }
    found.ok_or_else(|| format!("no `{URI_PREFIX}ROLE/NAME` uri"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One party's loaded tls dir.
pub struct TlsMaterial {
    dir: PathBuf,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Who this party's certificate names.
    pub identity: PeerIdentity,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("TlsMaterial")
            .field("dir", &self.dir)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

// === impl TlsMaterial ===

impl TlsMaterial {
    /// Reads `ca.pem`, `cert.pem` and `key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(io_err(&path))
        };
        let invalid = |name: &str, reason: String| TlsError::Invalid {
            path: dir.join(name),
            reason,
        };
        let (ca_pem, cert_pem, key_pem) = (read(CA_CERT_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?);
        let certs = |name: &str, pem: &[u8]| {
            let v = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(name, format!("not PEM certificates: {e}")))?;
            if v.is_empty() {
                return Err(invalid(name, "holds no certificate".to_owned()));
            }
            Ok(v)
        };
        let ca = certs(CA_CERT_FILE, &ca_pem)?;
        let chain = certs(CERT_FILE, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid(KEY_FILE, format!("not a PEM private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots
                .add(c)
                .map_err(|e| invalid(CA_CERT_FILE, format!("not a usable CA: {e}")))?;
        }
        let identity = identity_of(&chain[0]).map_err(|r| invalid(CERT_FILE, r))?;
        Ok(TlsMaterial {
            dir: dir.to_owned(),
            ca_pem,
            cert_pem,
            key_pem,
            roots: Arc::new(roots),
            chain,
            key,
            identity,
        })
    }

    /// This member's credentials for the flow relay's calls to agents.
    pub fn agent_client(&self) -> agent_client::AgentClientTls {
        agent_client::AgentClientTls::new(self.roots.clone(), self.chain.clone(), &self.key)
    }

    /// The tls dir this was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn config_err(&self, what: impl fmt::Display) -> TlsError {
        TlsError::Config {
            dir: self.dir.clone(),
            what: what.to_string(),
        }
    }

    /// The Raft peer service: this certificate, client certificates required and chained to the
    /// CA (their role is checked per call, see [`crate::grpc::raft_service::require_member`]).
    pub fn raft_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// The Raft client: presents this certificate, verifies the peer's against the CA and its
    /// address (`https://IP:PORT`: the certificate needs that IP as a SAN).
    pub fn raft_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// The client API: this certificate; client certificates optional, verified against the CA
    /// when presented.
    pub fn api_server(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| self.config_err(format!("client verifier: {e}")))?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.config_err(e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.config_err(format!("`{CERT_FILE}`/`{KEY_FILE}`: {e}")))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The automation gRPC API: this certificate; client certificates optional, verified
    /// against the CA when presented (like [`TlsMaterial::api_server`]).
    pub fn grpc_api_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// An HTTPS client of other members' APIs: trusts the CA only and presents this
    /// certificate.
    pub fn api_client(&self) -> Result<ClientConfig, TlsError> {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.config_err(e))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.config_err(format!("`{CERT_FILE}`/`{KEY_FILE}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_role_and_load() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        init_ca(&ca, 30)?;
        assert!(matches!(init_ca(&ca, 30), Err(TlsError::Exists { .. })));
        let m1 = dir.path().join("m1");
        issue(
            &ca,
            "cp-1",
            CertRole::Member,
            &m1,
            &["127.0.0.1".into()],
            30,
        )?;
        let material = TlsMaterial::load(&m1)?;
        assert_eq!(
            material.identity,
            PeerIdentity {
                role: CertRole::Member,
                name: "cp-1".into()
            }
        );
        assert!(!format!("{material:?}").contains("PRIVATE"));
        material.api_server()?;
        material.api_client()?;
        let n = dir.path().join("n");
        issue(&ca, "node-a", CertRole::Node, &n, &[], 30)?;
        assert_eq!(TlsMaterial::load(&n)?.identity.role, CertRole::Node);
        assert!(matches!(
            issue(&ca, "node-a", CertRole::Node, &n, &[], 30),
            Err(TlsError::Exists { .. })
        ));
        assert!(matches!(
            issue(
                &ca,
                "Bad_Name",
                CertRole::Node,
                &dir.path().join("x"),
                &[],
                30
            ),
            Err(TlsError::Argument { field: "name", .. })
        ));
        use std::os::unix::fs::PermissionsExt;
        for key in [ca.join(CA_KEY_FILE), m1.join(KEY_FILE), n.join(KEY_FILE)] {
            assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
        }
        // A CA directory is no member's tls dir: it has no cert.pem.
        let e = TlsMaterial::load(&ca).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains(CERT_FILE)));
        Ok(())
    }

    #[test]
    fn a_node_certificate_never_passes_as_a_server() -> Result<(), Box<dyn std::error::Error>> {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{ServerName, UnixTime};
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca");
        init_ca(&ca, 30)?;
        let verify = |role, out: &str| -> Result<(), Box<dyn std::error::Error>> {
            let out = dir.path().join(out);
            issue(&ca, "x", role, &out, &["127.0.0.1".into()], 30)?;
            let m = TlsMaterial::load(&out)?;
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                m.roots.clone(),
                provider(),
            )
            .build()?;
            let ip = ServerName::try_from("127.0.0.1")?;
            verifier.verify_server_cert(&m.chain[0], &[], &ip, &[], UnixTime::now())?;
            Ok(())
        };
        verify(CertRole::Member, "m")?;
        assert!(verify(CertRole::Node, "n").is_err());
        Ok(())
    }

    #[test]
    fn role_names_parse() {
        assert_eq!("member".parse(), Ok(CertRole::Member));
        assert_eq!("node".parse(), Ok(CertRole::Node));
        assert_eq!("admin".parse(), Ok(CertRole::Admin));
        assert_eq!("read".parse(), Ok(CertRole::Read));
        assert!("operator".parse::<CertRole>().is_err());
        assert!("Admin".parse::<CertRole>().is_err());
        assert_eq!(
            role_uri(CertRole::Node, "node-a"),
            "spiffe://palisade/node/node-a"
        );
    }
}
