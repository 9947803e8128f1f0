//! Typed configuration of one control-plane member. Built by the binary from flags or a config
//! file, validated once, then passed down; nothing below reads the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::app::ClusterConfig;
use crate::{Member, NodeId};

/// Configuration of one member.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Raft id of this member (≥ 1).
    pub id: NodeId,
    /// RocksDB directory.
    pub data_dir: PathBuf,
    /// Listen address of the Raft peer service (trusted-only).
    pub raft_listen: SocketAddr,
    /// Listen address of the client API (REST, `/metrics`).
    pub api_listen: SocketAddr,
    /// Listen address of the automation gRPC API; not served when unset.
    #[serde(default)]
    pub grpc_listen: Option<SocketAddr>,
    /// Port of the agents' flow observers (`--hubble-listen`), which the flow relay served on
    /// `grpc_listen` asks at each registered node's address.
    #[serde(default = "default_hubble_port")]
    pub hubble_port: u16,
    /// Listen address of the web UI (plain HTTP; see [`crate::ui`] for who may reach it); not
    /// served when unset. The daemon's bare `--ui-listen` means [`crate::ui::DEFAULT_UI_LISTEN`].
    #[serde(default)]
    pub ui_listen: Option<SocketAddr>,
    /// The initial members, this one included, used by `init` (empty: a single-member cluster).
    #[serde(default)]
    pub peers: BTreeMap<NodeId, Member>,
    /// Bootstrap the membership from `peers` if this member's log is empty.
    #[serde(default)]
    pub init: bool,
    /// Build a snapshot every this many applied log entries.
    #[serde(default = "default_snapshot_logs")]
    pub snapshot_logs: u64,
    /// Log entries kept after a snapshot (for followers slightly behind).
    #[serde(default = "default_keep_logs")]
    pub keep_logs: u64,
    /// Raft heartbeat interval in milliseconds; elections time out after 3–6 heartbeats.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A node is live while its last heartbeat is at most this old (milliseconds).
    #[serde(default = "default_node_lease_ms")]
    pub node_lease_ms: u64,
    /// Unused identities older than this (ms, replicated clock) are collected by the leader.
    #[serde(default = "default_identity_gc_grace_ms")]
    pub identity_gc_grace_ms: u64,
    /// Period of the leader's identity collection (ms); 0: off.
    #[serde(default = "default_identity_gc_interval_ms")]
    pub identity_gc_interval_ms: u64,
    /// File of admin bearer tokens (one a line). Unset: the client API has no authentication.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// File of read-only bearer tokens.
    #[serde(default)]
    pub read_token_file: Option<PathBuf>,
    /// File holding the token members present to each other (same on every member); required
    /// with `admin_token_file` unless `tls_dir` is set (members then forward with their member
    /// certificate).
    #[serde(default)]
    pub member_token_file: Option<PathBuf>,
    /// File of node bearer tokens: what agents without a node certificate present (reads and
    /// the agents' writes, for any node; see `auth::node_token_check`).
    #[serde(default)]
    pub node_token_file: Option<PathBuf>,
    /// TLS dir (`ca.pem`, `cert.pem`, `key.pem`, see [`crate::tls`]): mutual TLS between
    /// members on the Raft port, HTTPS on the client API. Unset: both are plain.
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    /// Cluster settings applied once at `init`.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

fn default_hubble_port() -> u16 {
    crate::grpc::relay::DEFAULT_HUBBLE_PORT
}

fn default_snapshot_logs() -> u64 {
    10_000
}
fn default_keep_logs() -> u64 {
    1_000
}
fn default_identity_gc_grace_ms() -> u64 {
    900_000
}
fn default_identity_gc_interval_ms() -> u64 {
    60_000
}
fn default_node_lease_ms() -> u64 {
    20_000
}
fn default_heartbeat_ms() -> u64 {
    100
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field is out of range.
    #[error("`{field}`: {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// openraft refused the derived Raft config.
    #[error("invalid raft configuration")]
    Raft(#[source] Box<openraft::ConfigError>),
}

// === impl Config ===

impl Config {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.id == 0 {
            return bad("id", "must be at least 1");
        }
        if self.init && !self.peers.is_empty() && !self.peers.contains_key(&self.id) {
            return bad(
                "peers",
                "must include this member's own id when `init` is set",
            );
        }
        if self.admin_token_file.is_some()
            && self.member_token_file.is_none()
            && self.tls_dir.is_none()
        {
            return bad(
                "member_token_file",
                "is required when `admin_token_file` is set without `tls_dir` (members forward \
                 with it; with `tls_dir` they forward with their member certificate)",
            );
        }
        if self.snapshot_logs == 0 {
            return bad("snapshot_logs", "must be at least 1");
        }
        if self.heartbeat_ms == 0 {
            return bad("heartbeat_ms", "must be at least 1");
        }
        if self.cluster.node_prefix_len < self.cluster.cluster_cidr.prefix_len()
            || self.cluster.node_prefix_len > 30
        {
            return bad(
                "cluster.node_prefix_len",
                "must be between the cluster CIDR's prefix length and 30",
            );
        }
        self.raft_config().map(|_| ())
    }

    /// This member's own addresses, as advertised to peers: its `peers` entry when present,
    /// else its listen addresses.
    pub fn me(&self) -> Member {
        self.peers.get(&self.id).cloned().unwrap_or_else(|| Member {
            raft_addr: self.raft_listen.to_string(),
            api_addr: self.api_listen.to_string(),
        })
    }

    /// The openraft configuration derived from this one.
    pub fn raft_config(&self) -> Result<openraft::Config, ConfigError> {
        let hb = self.heartbeat_ms;
        let cfg = openraft::Config {
            cluster_name: "palisade".to_owned(),
            heartbeat_interval: hb,
            // openraft 0.9 lets a follower that knew a leader campaign only after
            // `election_timeout_max` (the leader lease) plus a random timeout in [min, max] of
            // silence: 6–8 heartbeats here, so a new leader comes in about a second, while a
            // member starved of CPU for half a second (a loaded 2-core host applying a large
            // entry) does not depose a healthy leader. The heartbeat itself stays long enough
            // to be the replication RPC's timeout.
            election_timeout_min: hb * 2,
            election_timeout_max: hb * 4,
            install_snapshot_timeout: 2_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            max_in_snapshot_log_to_keep: self.keep_logs,
            ..openraft::Config::default()
        };
        cfg.validate().map_err(|e| ConfigError::Raft(Box::new(e)))
    }

    /// How long a client operation waits for a leader or a forwarded answer.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis((self.heartbeat_ms * 50).max(3_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
        "id": 2, "data_dir": "/var/lib/palisade/cp2",
        "raft_listen": "127.0.0.1:7002", "api_listen": "127.0.0.1:8002",
        "peers": {
            "1": {"raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001"},
            "2": {"raft_addr": "127.0.0.1:7002", "api_addr": "127.0.0.1:8002"}
        },
        "init": true, "snapshot_logs": 50
    }"#;

    #[test]
    fn a_config_file_parses_with_defaults() -> Result<(), Box<dyn std::error::Error>> {
        let c: Config = serde_json::from_str(SAMPLE)?;
        c.validate()?;
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.me().api_addr, "127.0.0.1:8002");
        assert_eq!(
            (c.snapshot_logs, c.keep_logs, c.heartbeat_ms),
            (50, 1_000, 100)
        );
        assert_eq!(c.cluster, ClusterConfig::default());
        let raft = c.raft_config()?;
        assert_eq!(raft.election_timeout_min, 200);
        Ok(())
    }

    #[test]
    fn invalid_configs_name_the_field() -> Result<(), Box<dyn std::error::Error>> {
        let mut c: Config = serde_json::from_str(SAMPLE)?;
        c.peers.remove(&2);
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("`peers`"), "{e}");
        // No peers at all: a single-member cluster of this one.
        c.peers.clear();
        c.validate()?;
        let mut c: Config = serde_json::from_str(SAMPLE)?;
        c.id = 0;
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("`id`"), "{e}");
        assert!(serde_json::from_str::<Config>(&SAMPLE.replace("\"init\"", "\"inti\"")).is_err());
        Ok(())
    }
}
