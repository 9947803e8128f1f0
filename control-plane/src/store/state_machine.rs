//! The state machine (openraft storage v2 `RaftStateMachine`) on RocksDB: applies committed
//! requests to [`crate::app::State`] and persists the rows they touched, the applied log id and
//! the membership in one atomic write batch.
//!
//! Snapshots are the whole state as JSON with their metadata; the current one is kept in the
//! `sm_meta` column family so it survives a restart. Installing a snapshot rewrites every state
//! column family in one batch.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use rocksdb::{DB, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use super::CF_SM_META;
use crate::app::{Response, State, StateError, Table};
use crate::{Member, NodeId, TypeConfig};

const KEY_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"last_membership";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

type StResult<T> = Result<T, StorageError<NodeId>>;

/// The applied state, shared read-only with the client API.
#[derive(Debug, Default)]
pub struct Applied {
    /// The last applied log id.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last applied membership.
    pub membership: StoredMembership<NodeId, Member>,
    /// The state.
    pub state: State,
}

/// A snapshot as stored and sent: metadata plus the JSON-encoded state.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The state machine. Cloning shares the database and the applied state (the snapshot builder is
/// a clone).
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    applied: Arc<RwLock<Applied>>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn missing_cf(name: &str) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::error(format!("missing column family `{name}`")))
        .into()
}

fn poisoned() -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::error("state machine lock poisoned")).into()
}

// === impl StateMachineStore ===

impl StateMachineStore {
    /// Loads the applied state from the database.
    pub(crate) async fn load(db: Arc<DB>) -> Result<Self, StorageError<NodeId>> {
        let sm = StateMachineStore {
            db,
            applied: Arc::new(RwLock::new(Applied::default())),
        };
        let mut applied = Applied {
            last_applied: sm.get_meta(KEY_APPLIED)?.flatten(),
            membership: sm.get_meta(KEY_MEMBERSHIP)?.unwrap_or_default(),
            state: State::new(),
        };
        for table in Table::ALL {
            let cf = sm
                .db
                .cf_handle(table.cf_name())
                .ok_or_else(|| missing_cf(table.cf_name()))?;
            for item in sm.db.iterator_cf(cf, IteratorMode::Start) {
                let (k, v) = item.map_err(read_err)?;
                let key = String::from_utf8_lossy(&k);
                applied
                    .state
                    .load_row(table, &key, &v)
                    .map_err(|e: StateError| read_err(e))?;
            }
        }
        applied.state.reindex();
        *sm.applied.write().map_err(|_| poisoned())? = applied;
        Ok(sm)
    }

    /// The applied state, for reads.
    pub fn applied(&self) -> Arc<RwLock<Applied>> {
        self.applied.clone()
    }

    fn cf(&self, name: &str) -> StResult<&rocksdb::ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| missing_cf(name))
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StResult<Option<T>> {
        let cf = self.cf(CF_SM_META)?;
        let Some(bytes) = self.db.get_cf(cf, key).map_err(read_err)? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&bytes).map_err(read_err)?))
    }

    fn put_meta_batch<T: Serialize>(
        &self,
        batch: &mut WriteBatch,
        key: &[u8],
        value: &T,
    ) -> StResult<()> {
        let cf = self.cf(CF_SM_META)?;
        batch.put_cf(cf, key, serde_json::to_vec(value).map_err(write_err)?);
        Ok(())
    }

    fn build(&self) -> StResult<Snapshot<TypeConfig>> {
        let (data, last_applied, membership) = {
            let a = self.applied.read().map_err(|_| poisoned())?;
            let data = serde_json::to_vec(&a.state).map_err(read_err)?;
            (data, a.last_applied, a.membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, data.len()),
            None => format!("none-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let cf = self.cf(CF_SM_META)?;
        self.db
            .put_cf(
                cf,
                KEY_SNAPSHOT,
                serde_json::to_vec(&stored).map_err(write_err)?,
            )
            .map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        self.build()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        let a = self.applied.read().map_err(|_| poisoned())?;
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut out = Vec::new();
        let mut a = self.applied.write().map_err(|_| poisoned())?;
        let mut touched = Vec::new();
        let mut membership_changed = false;
        for entry in entries {
            a.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Response::Empty),
                EntryPayload::Normal(req) => {
                    let (resp, rows) = a.state.apply(&req);
                    touched.extend(rows);
                    out.push(resp);
                }
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    out.push(Response::Empty);
                }
            }
        }
        touched.sort();
        touched.dedup();
        for (table, key) in touched {
            let cf = self.cf(table.cf_name())?;
            match a.state.row(table, &key) {
                Some(v) => batch.put_cf(cf, key.as_bytes(), v),
                None => batch.delete_cf(cf, key.as_bytes()),
            }
        }
        self.put_meta_batch(&mut batch, KEY_APPLIED, &a.last_applied)?;
        if membership_changed {
            self.put_meta_batch(&mut batch, KEY_MEMBERSHIP, &a.membership)?;
        }
        self.db.write(batch).map_err(write_err)?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        let data = snapshot.into_inner();
        let mut state: State = serde_json::from_slice(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        state.reindex();
        let mut batch = WriteBatch::default();
        for table in Table::ALL {
            let cf = self.cf(table.cf_name())?;
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = item.map_err(read_err)?;
                batch.delete_cf(cf, k);
            }
        }
        for (table, key, value) in state.all_rows() {
            let cf = self.cf(table.cf_name())?;
            batch.put_cf(cf, key.as_bytes(), value);
        }
        self.put_meta_batch(&mut batch, KEY_APPLIED, &meta.last_log_id)?;
        self.put_meta_batch(&mut batch, KEY_MEMBERSHIP, &meta.last_membership)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.put_meta_batch(&mut batch, KEY_SNAPSHOT, &stored)?;
        let mut a = self.applied.write().map_err(|_| poisoned())?;
        self.db.write(batch).map_err(write_err)?;
        a.last_applied = meta.last_log_id;
        a.membership = meta.last_membership.clone();
        a.state = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = self.get_meta(KEY_SNAPSHOT)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
