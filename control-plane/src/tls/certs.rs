//! The cluster CA and the certificates it issues (rcgen, ECDSA P-256). Keys are generated in
//! the process that writes them, written with mode 0600, and never overwritten.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_FILE, CertRole, KEY_FILE, TlsError, io_err, role_uri,
    valid_name,
};

/// Writes a new file (never replacing one) with `mode`.
fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                TlsError::Exists {
                    path: path.to_owned(),
                }
            } else {
                TlsError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

fn refuse_existing(paths: &[&Path]) -> Result<(), TlsError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(TlsError::Exists {
            path: (*p).to_owned(),
        }),
        None => Ok(()),
    }
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks slightly behind the issuer's.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

fn generate_key(what: &'static str) -> Result<KeyPair, TlsError> {
    KeyPair::generate().map_err(|source| TlsError::Generate { what, source })
}

/// Creates a cluster CA in `dir` (created if missing): `ca.pem` and `ca-key.pem` (0600), valid
/// for `days`. Refuses to overwrite either.
pub fn init_ca(dir: &Path, days: u32) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    refuse_existing(&[&cert_path, &key_path])?;
    let key = generate_key("CA key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "palisade");
    dn.push(DnType::CommonName, "palisade cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .map_err(|source| TlsError::Generate {
            what: "CA certificate",
            source,
        })?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)
}

/// Issues a certificate for `name` in `role` with the CA in `ca_dir`, into `out` (created if
/// missing): `cert.pem`, `key.pem` (0600, generated here) and a copy of `ca.pem`, so `out` is a
/// complete tls dir. `sans` are IP addresses or DNS names the holder serves on (members need
/// the IPs of their `--raft-listen` and `--api-listen` addresses). Refuses to overwrite.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    role: CertRole,
    out: &Path,
    sans: &[String],
    days: u32,
) -> Result<(), TlsError> {
    if !valid_name(name) {
        return Err(TlsError::Argument {
            field: "name",
            value: name.to_owned(),
            reason: "must be 1 to 253 characters of a-z, 0-9, `-` and `.`",
        });
    }
    let mut alt_names = vec![SanType::URI(role_uri(role, name).try_into().map_err(
        |source| TlsError::Generate {
            what: "role uri",
            source,
        },
    )?)];
    for san in sans {
        alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                SanType::DnsName(san.as_str().try_into().map_err(|_| TlsError::Argument {
                    field: "san",
                    value: san.clone(),
                    reason: "neither an IP address nor a DNS name",
                })?)
            }
        });
    }

    let (ca_cert_path, ca_key_path) = (ca_dir.join(CA_CERT_FILE), ca_dir.join(CA_KEY_FILE));
    let ca_pem = std::fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::Invalid {
        path: ca_key_path.clone(),
        reason: format!("not a PEM private key: {e}"),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| TlsError::Invalid {
        path: ca_cert_path.clone(),
        reason: format!("not a PEM CA certificate: {e}"),
    })?;

    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let (cert_path, key_path, out_ca) = (
        out.join(CERT_FILE),
        out.join(KEY_FILE),
        out.join(CA_CERT_FILE),
    );
    refuse_existing(&[&cert_path, &key_path])?;
    let copy_ca = match std::fs::read_to_string(&out_ca) {
        Ok(existing) if existing == ca_pem => false,
        Ok(_) => return Err(TlsError::Exists { path: out_ca }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(source) => {
            return Err(TlsError::Io {
                path: out_ca,
                source,
            });
        }
    };

    let key = generate_key("key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "palisade");
    dn.push(DnType::OrganizationalUnitName, role.name());
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        // Members serve (Raft, API) and call each other; agents and operators only call.
        CertRole::Member => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        CertRole::Node | CertRole::Admin | CertRole::Read => {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        }
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| TlsError::Generate {
            what: "certificate",
            source,
        })?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    if copy_ca {
        write_new(&out_ca, ca_pem.as_bytes(), 0o644)?;
    }
    Ok(())
}
