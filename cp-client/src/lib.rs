//! A blocking client of the control plane's REST API (`control-plane/README.md`), used by the
//! `palisade` CLI and the node agent.
//!
//! ```text
//!  Client::register_node / apply_policy / watch / ...   typed methods (client.rs)
//!        │ method, path, query, JSON body, timeout
//!        ▼
//!  Transport::call ── servers in order, from the last one that answered ──▶ member's /v1 API
//!        │ connection error or 503: next server      any other status: final
//!        ▼
//!  Reply { status, body } ──▶ the method decodes it, or ClientError::Api { status, message, field }
//! ```
//!
//! Every operation of the API is idempotent, so retrying on another member is always safe. The
//! client is blocking (`reqwest::blocking`): call it from plain threads, or from
//! `tokio::task::spawn_blocking` inside an async runtime.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod error;
pub mod outcome;
mod transport;

pub use client::Client;
pub use config::{ClientConfig, TlsConfig};
pub use error::ClientError;
pub use outcome::{ApplyOutcome, WaitOutcome, WatchBatch};

/// Results of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
