//! The connection flags shared by every command that talks to the control plane.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use palisade_cp_client::config::{DEFAULT_SERVER, ENV_SERVER, ENV_TOKEN_FILE};
use palisade_cp_client::{Client, ClientConfig, TlsConfig};

/// Where the control plane is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Control-plane member API URL (repeatable or comma-separated; tried in order, moving on
    /// when one is unreachable or has no leader).
    #[arg(
        long = "server",
        value_name = "URL",
        env = ENV_SERVER,
        value_delimiter = ',',
        default_value = DEFAULT_SERVER
    )]
    pub servers: Vec<String>,
    /// File holding the bearer token (its first line that is not blank or a `#` comment).
    #[arg(long, value_name = "FILE", env = ENV_TOKEN_FILE)]
    pub token_file: Option<PathBuf>,
    /// TLS directory for `https://` members: `ca.pem` (the cluster CA, the only root trusted)
    /// and optionally `cert.pem` + `key.pem` (a client certificate).
    #[arg(long, value_name = "DIR", env = "PALISADE_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Talk to the control plane of this local lab (`palisade lab up`): its members' URLs, reached
    /// from inside the lab's control-plane host namespace (overrides --server).
    #[arg(long, value_name = "NAME")]
    pub lab: Option<String>,
}

impl ConnectArgs {
    /// A client of the configured servers (contacts none yet).
    pub fn client(&self) -> Result<Client> {
        let (servers, tls_dir, token_file) = match &self.lab {
            None => (
                self.servers.clone(),
                self.tls_dir.clone(),
                self.token_file.clone(),
            ),
            Some(name) => {
                let lab = palisade_lab::Lab::load(name)?;
                let cluster = lab.state().cluster.clone().ok_or_else(|| {
                    anyhow!("--lab {name}: the lab runs no control plane (it was made with --control-plane-voters 0)")
                })?;
                // The lab's addresses exist only inside its namespaces: enter the control plane's
                // host before the client starts its threads (they inherit the namespace).
                palisade_lab::exec::enter_netns(&cluster.cp_netns)
                    .map_err(|e| anyhow!("--lab {name}: {e}"))?;
                // The lab's operator credentials: its CA and admin token (root-only files).
                (
                    cluster.api_urls.clone(),
                    Some(cluster.operator_tls_dir(name)),
                    Some(cluster.admin_token_file(name)),
                )
            }
        };
        let mut cfg = ClientConfig::from_flags(&servers, token_file.as_deref())?;
        if let Some(dir) = tls_dir {
            cfg = cfg.with_tls(TlsConfig::from_dir(&dir)?);
        }
        Ok(Client::new(cfg)?)
    }
}
