//! What a [`crate::Client`] connects to and how: servers, bearer token, timeout.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::error::ClientError;

/// Environment variable the CLI reads its servers from (comma-separated base URLs).
pub const ENV_SERVER: &str = "PALISADE_SERVER";
/// Environment variable the CLI reads its token file path from.
pub const ENV_TOKEN_FILE: &str = "PALISADE_TOKEN_FILE";
/// The server used when none is given: a member on this host with the documented API port.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8001";
/// Default time allowed for one request (long polls add their own wait to it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Client configuration. The token never appears in `Debug` output.
#[derive(Clone)]
pub struct ClientConfig {
    /// Base URLs of the members, e.g. `http://127.0.0.1:8001`, tried in order.
    pub servers: Vec<String>,
    /// Bearer token sent with every request, when set.
    pub token: Option<String>,
    /// Time allowed for one request to one server (connect, send, answer). Long polls
    /// (`watch`, `wait_policies`) get their own wait on top of it.
    pub timeout: Duration,
    /// TLS towards `https://` members: the cluster CA to trust and, for agents, the node's
    /// certificate to present.
    pub tls: Option<TlsConfig>,
}

/// What the client trusts and presents over TLS. The private key never appears in `Debug`.
#[derive(Clone)]
pub struct TlsConfig {
    /// PEM of the cluster CA: the only root trusted (no system store).
    pub ca_pem: Vec<u8>,
    /// PEM of a client certificate followed by its private key (a node's, for an agent), if any.
    pub identity_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &format!("{} bytes", self.ca_pem.len()))
            .field("client_certificate", &self.identity_pem.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// Reads a control-plane TLS directory (`ca.pem`, and `cert.pem` + `key.pem` when present:
    /// the layout `palisade controlplane certs issue` writes). Errors name the file.
    pub fn from_dir(dir: &Path) -> Result<TlsConfig, ClientError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| ClientError::Config {
                reason: format!("TLS directory: cannot read `{}`: {e}", path.display()),
            })
        };
        let ca_pem = read("ca.pem")?;
        let identity_pem = if dir.join("cert.pem").exists() {
            let mut pem = read("cert.pem")?;
            pem.push(b'\n');
            pem.extend(read("key.pem")?);
            Some(pem)
        } else {
            None
        };
        Ok(TlsConfig {
            ca_pem,
            identity_pem,
        })
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("servers", &self.servers)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            servers: vec![DEFAULT_SERVER.to_owned()],
            token: None,
            timeout: DEFAULT_TIMEOUT,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// A configuration for `servers` without a token and with the default timeout.
    pub fn new(servers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ClientConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            ..ClientConfig::default()
        }
    }

    /// Builds a configuration from the values a command line gathered (flags, or the
    /// environment through them): `servers` may hold comma-separated lists and is
    /// [`DEFAULT_SERVER`] when empty; the token is read from `token_file` (see
    /// [`read_token_file`]).
    pub fn from_flags(servers: &[String], token_file: Option<&Path>) -> Result<Self, ClientError> {
        let mut list: Vec<String> = servers
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if list.is_empty() {
            list.push(DEFAULT_SERVER.to_owned());
        }
        let token = token_file.map(read_token_file).transpose()?;
        Ok(ClientConfig {
            servers: list,
            token,
            timeout: DEFAULT_TIMEOUT,
            tls: None,
        })
    }

    /// Sets the token.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets TLS (needed for `https://` members).
    #[must_use]
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the per-request timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Reads a bearer token: the first line of `path` that is neither blank nor a `#` comment (the
/// format of the control plane's token files, so an operator can point at the same file).
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClientError::Config {
        reason: format!("cannot read token file `{}`: {e}", path.display()),
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Config {
            reason: format!("token file `{}` holds no token", path.display()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let cfg = ClientConfig::new(["http://a:1"]).with_token("s3cret-token-value");
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
    }

    #[test]
    fn servers_split_on_commas_and_default() {
        let cfg = ClientConfig::from_flags(
            &["http://a:1, http://b:2".into(), "http://c:3".into()],
            None,
        )
        .expect("valid");
        assert_eq!(cfg.servers, ["http://a:1", "http://b:2", "http://c:3"]);
        let cfg = ClientConfig::from_flags(&[], None).expect("valid");
        assert_eq!(cfg.servers, [DEFAULT_SERVER]);
    }

    #[test]
    fn token_file_first_non_comment_line() {
        let dir = std::env::temp_dir().join(format!("cp-client-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("token");
        std::fs::write(
            &f,
            "# admin token\n\n  abcdefghijklmnopqrstuvwxyz  \nsecond\n",
        )
        .expect("write");
        assert_eq!(
            read_token_file(&f).expect("token"),
            "abcdefghijklmnopqrstuvwxyz"
        );
        std::fs::write(&f, "# nothing\n").expect("write");
        let e = read_token_file(&f).expect_err("empty");
        assert!(e.to_string().contains("holds no token"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
