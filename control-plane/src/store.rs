//! Persistent storage of one member: the Raft log and the applied state machine in one RocksDB
//! database, one column family per concern.
//!
//! | column family | holds |
//! |---|---|
//! | `log` | index (u64, big-endian) → log entry (JSON) |
//! | `meta` | vote, committed log id, last purged log id |
//! | `sm_meta` | last applied log id, last membership, current snapshot |
//! | `sm_*` | one per state table ([`crate::app::Table`]) |
//!
//! Log appends are written with `sync` (fsync before the append is acknowledged); state machine
//! writes are one atomic batch per `apply` call without sync: after a crash the state machine
//! restarts from its last persisted applied id and replays the (durable) log from there.

// openraft's storage traits return its `StorageError` (over 200 bytes); our helpers return it too.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod state_machine;
#[cfg(test)]
mod test_store;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options};

pub use log_store::LogStore;
pub use state_machine::StateMachineStore;

use crate::app::Table;

/// Column family of the Raft log.
pub const CF_LOG: &str = "log";
/// Column family of the log store's metadata (vote, committed, purged).
pub const CF_META: &str = "meta";
/// Column family of the state machine's metadata (applied, membership, snapshot).
pub const CF_SM_META: &str = "sm_meta";

/// Error opening the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB could not open the database.
    #[error("cannot open the rocksdb database at `{path}`")]
    Open {
        /// Database directory.
        path: String,
        /// Cause.
        #[source]
        source: rocksdb::Error,
    },
    /// The stored state machine could not be loaded.
    #[error("cannot load the state machine from `{path}`")]
    Load {
        /// Database directory.
        path: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Opens (creating if needed) the database at `dir` and returns the log store and the state
/// machine sharing it.
pub async fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let mut cfs = vec![CF_LOG, CF_META, CF_SM_META];
    cfs.extend(Table::ALL.iter().map(|t| t.cf_name()));
    let descriptors = cfs
        .into_iter()
        .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db =
        DB::open_cf_descriptors(&opts, dir, descriptors).map_err(|source| StoreError::Open {
            path: dir.display().to_string(),
            source,
        })?;
    let db = Arc::new(db);
    let log = LogStore::new(db.clone());
    let sm = StateMachineStore::load(db)
        .await
        .map_err(|e| StoreError::Load {
            path: dir.display().to_string(),
            source: Box::new(e),
        })?;
    Ok((log, sm))
}
