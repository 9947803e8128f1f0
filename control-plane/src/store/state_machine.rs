//! The state machine (openraft storage v2 `RaftStateMachine`) on RocksDB: applies committed
//! requests to [`crate::app::State`] and persists the rows they touched, the applied log id and
//! the membership in one atomic write batch.
//!
//! Snapshots are the whole state as JSON; the current one is kept in the `sm_meta` column family
//! (its metadata as JSON, its data as raw bytes) so it survives a restart. It is built from a
//! copy of the state taken under the read lock, then encoded and stored on a blocking thread:
//! encoding a large state (100,000 identities: ~18 MB) under the lock used to stall every apply
//! and API read for over half a second. Installing a snapshot rewrites every state column family
//! in one batch.

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
/// The current snapshot's metadata (JSON).
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
/// The current snapshot's data (the state's JSON, stored as is).
const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot_data";
/// Where members before 2026-11-27 kept the current snapshot: [`LegacySnapshot`] as JSON, read
/// when the two keys above are absent and deleted when a snapshot is next stored.
const KEY_SNAPSHOT_LEGACY: &[u8] = b"snapshot";

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

/// The current snapshot as members before 2026-11-27 stored it (the data as a JSON array of
/// numbers: about three times its size, and slow to encode and parse).
#[derive(Debug, Deserialize)]
struct LegacySnapshot {
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

    /// Stores `data` as the current snapshot, in `batch`.
    fn put_snapshot_batch(
        &self,
        batch: &mut WriteBatch,
        meta: &SnapshotMeta<NodeId, Member>,
        data: &[u8],
    ) -> StResult<()> {
        let cf = self.cf(CF_SM_META)?;
        self.put_meta_batch(batch, KEY_SNAPSHOT_META, meta)?;
        batch.put_cf(cf, KEY_SNAPSHOT_DATA, data);
        batch.delete_cf(cf, KEY_SNAPSHOT_LEGACY);
        Ok(())
    }

    /// Builds a snapshot of the applied state and stores it. Blocking: run it off the async
    /// workers. The read lock is held only while the state is copied.
    fn build(&self) -> StResult<Snapshot<TypeConfig>> {
        let (state, last_applied, membership) = {
            let a = self.applied.read().map_err(|_| poisoned())?;
            (a.state.clone(), a.last_applied, a.membership.clone())
        };
        let data = serde_json::to_vec(&state).map_err(read_err)?;
        drop(state);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, data.len()),
            None => format!("none-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let mut batch = WriteBatch::default();
        self.put_snapshot_batch(&mut batch, &meta, &data)?;
        self.db.write(batch).map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let sm = self.clone();
        tokio::task::spawn_blocking(move || sm.build())
            .await
            .map_err(|e| {
                StorageIOError::read_state_machine(AnyError::error(format!(
                    "snapshot build task: {e}"
                )))
            })?
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
        self.put_snapshot_batch(&mut batch, meta, &data)?;
        let mut a = self.applied.write().map_err(|_| poisoned())?;
        self.db.write(batch).map_err(write_err)?;
        a.last_applied = meta.last_log_id;
        a.membership = meta.last_membership.clone();
        a.state = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let meta: Option<SnapshotMeta<NodeId, Member>> = self.get_meta(KEY_SNAPSHOT_META)?;
        let data = self
            .db
            .get_cf(self.cf(CF_SM_META)?, KEY_SNAPSHOT_DATA)
            .map_err(read_err)?;
        let (meta, data) = match (meta, data) {
            (Some(meta), Some(data)) => (meta, data),
            _ => match self.get_meta::<LegacySnapshot>(KEY_SNAPSHOT_LEGACY)? {
                Some(legacy) => (legacy.meta, legacy.data),
                None => return Ok(None),
            },
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn data_of(snapshot: Snapshot<TypeConfig>) -> Vec<u8> {
        let mut data = Vec::new();
        snapshot
            .snapshot
            .as_ref()
            .clone()
            .read_to_end(&mut data)
            .expect("read");
        data
    }

    #[tokio::test]
    async fn a_snapshot_stored_by_an_older_member_is_served_until_a_new_one_replaces_it() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let (_log, mut sm) = super::super::open(dir.path()).await.expect("open");
        assert!(sm.get_current_snapshot().await.expect("get").is_none());

        // What a member before the raw-bytes format left on disk.
        let meta = SnapshotMeta::<NodeId, Member> {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "legacy".to_owned(),
        };
        let legacy = serde_json::json!({ "meta": meta, "data": b"{}".to_vec() });
        let cf = sm.cf(CF_SM_META).expect("cf");
        sm.db
            .put_cf(
                cf,
                KEY_SNAPSHOT_LEGACY,
                serde_json::to_vec(&legacy).expect("json"),
            )
            .expect("put");
        let got = sm
            .get_current_snapshot()
            .await
            .expect("get")
            .expect("legacy");
        assert_eq!(got.meta.snapshot_id, "legacy");
        assert_eq!(data_of(got), b"{}");

        // A new snapshot is stored as raw bytes and the legacy one is gone.
        let built = sm.build_snapshot().await.expect("build");
        let built_data = data_of(built);
        let state: State = serde_json::from_slice(&built_data).expect("the data is the state");
        assert_eq!(state, State::new());
        let got = sm.get_current_snapshot().await.expect("get").expect("new");
        assert_ne!(got.meta.snapshot_id, "legacy");
        assert_eq!(data_of(got), built_data);
        let cf = sm.cf(CF_SM_META).expect("cf");
        assert!(
            sm.db
                .get_cf(cf, KEY_SNAPSHOT_LEGACY)
                .expect("get")
                .is_none()
        );
        assert_eq!(
            sm.db.get_cf(cf, KEY_SNAPSHOT_DATA).expect("get").as_deref(),
            Some(&built_data[..]),
            "stored as is, not as a JSON array"
        );
    }
}
