//! The connection flags shared by every command that talks to the control plane.

use std::path::PathBuf;

use anyhow::Result;
use palisade_cp_client::config::{DEFAULT_SERVER, ENV_SERVER, ENV_TOKEN_FILE};
use palisade_cp_client::{Client, ClientConfig};

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
}

impl ConnectArgs {
    /// A client of the configured servers (contacts none yet).
    pub fn client(&self) -> Result<Client> {
        let cfg = ClientConfig::from_flags(&self.servers, self.token_file.as_deref())?;
        Ok(Client::new(cfg)?)
    }
}
