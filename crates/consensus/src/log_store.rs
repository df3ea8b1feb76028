//! The Raft log and vote, durable in a redb file (`<data-dir>/member/raft.redb`).
//!
//! Every record is framed as `crc32(payload) ‖ payload` with payload =
//! postcard; the checksum is verified on every read and a mismatch is a
//! storage error that stops the Raft core (a node never serves from a corrupt
//! log). `append` commits with `Durability::Immediate` (fsync) before it
//! reports the entries flushed, which is what lets the leader count this
//! member towards a commit quorum: an acknowledged write is on a quorum's disk.
//!
//! Group commit: openraft hands over every entry that queued up while the
//! previous fsync ran in one `append` call, and those go in one transaction.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";
const KEY_COMMITTED: &str = "committed";

/// Errors of the log file itself, with the file they concern.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("cannot open raft log {path}{hint}")]
    Open { path: String, hint: &'static str, #[source] source: redb::DatabaseError },
    #[error("raft log: {0}")]
    Db(String),
    #[error("raft log: checksum mismatch in {what}: the file is corrupted; restore this member from a snapshot or remove it and re-add it with an empty data dir")]
    Corrupted { what: String },
    #[error("raft log: cannot decode {what}: {detail}")]
    Decode { what: String, detail: String },
}

fn db_err(e: impl std::fmt::Display) -> LogStoreError {
    LogStoreError::Db(e.to_string())
}

pub(crate) fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let payload = postcard::to_allocvec(value).expect("postcard encoding of an in-memory value cannot fail");
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub(crate) fn unframe<T: DeserializeOwned>(bytes: &[u8], what: impl Fn() -> String) -> Result<T, LogStoreError> {
    if bytes.len() < 4 {
        return Err(LogStoreError::Corrupted { what: what() });
    }
    let (sum, payload) = bytes.split_at(4);
    if u32::from_le_bytes(sum.try_into().expect("4 bytes")) != crc32fast::hash(payload) {
        return Err(LogStoreError::Corrupted { what: what() });
    }
    postcard::from_bytes(payload).map_err(|e| LogStoreError::Decode { what: what(), detail: e.to_string() })
}

/// The durable Raft log. Cheap to clone (shares the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Planted bug: commit without fsync (`PlantedBug::AckBeforeFsync`).
    unsafe_no_fsync: bool,
}

impl LogStore {
    /// Open or create the log file at `path`.
    pub fn open(path: &Path, unsafe_no_fsync: bool) -> Result<Self, LogStoreError> {
        let db = Database::create(path).map_err(|source| {
            let hint = match &source {
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => {
                    " (the file is corrupted: restore this member from a snapshot, or remove it from the cluster and re-add it with an empty data dir)"
                }
                redb::DatabaseError::DatabaseAlreadyOpen => " (another process uses this data dir: stop it first)",
                _ => "",
            };
            LogStoreError::Open { path: path.display().to_string(), hint, source }
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(LOG).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let store = LogStore { db: Arc::new(db), unsafe_no_fsync };
        // Verify every record once at start-up: a corrupted log refuses to
        // start rather than failing later in the middle of replication.
        store.verify_all()?;
        Ok(store)
    }

    fn verify_all(&self) -> Result<(), LogStoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(LOG).map_err(db_err)?;
        let mut prev: Option<u64> = None;
        for row in log.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let index = k.value();
            let entry: Entry = unframe(v.value(), || format!("log entry {index}"))?;
            if entry.get_log_id().index != index {
                return Err(LogStoreError::Corrupted { what: format!("log entry {index} holds index {}", entry.get_log_id().index) });
            }
            if let Some(p) = prev {
                if p + 1 != index {
                    return Err(LogStoreError::Corrupted { what: format!("gap in log between {p} and {index}") });
                }
            }
            prev = Some(index);
        }
        let meta = txn.open_table(META).map_err(db_err)?;
        for row in meta.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let key = k.value().to_string();
            match key.as_str() {
                KEY_VOTE => drop(unframe::<Vote>(v.value(), || "vote".into())?),
                _ => drop(unframe::<Option<LogId>>(v.value(), || key.clone())?),
            }
        }
        Ok(())
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LogStoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        match meta.get(key).map_err(db_err)? {
            None => Ok(None),
            Some(v) => Ok(Some(unframe(v.value(), || key.to_string())?)),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), LogStoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(key, frame(value).as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Entries in `[start, end_exclusive)`, at most `max_entries` and, past
    /// the first entry, at most `max_bytes` of encoded entries.
    fn read_range(&self, start: u64, end_exclusive: u64, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>, LogStoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(LOG).map_err(db_err)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in log.range(start..end_exclusive).map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let index = k.value();
            bytes += v.value().len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(unframe(v.value(), || format!("log entry {index}"))?);
            if out.len() >= max_entries {
                break;
            }
        }
        Ok(out)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, LogStoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(LOG).map_err(db_err)?;
        let last = log.last().map_err(db_err)?;
        let id = match last {
            None => None,
            Some((k, v)) => {
                let index = k.value();
                let e: Entry = unframe(v.value(), || format!("log entry {index}"))?;
                Some(*e.get_log_id())
            }
        };
        Ok(id)
    }

    fn append_blocking(&self, entries: Vec<Entry>) -> Result<(), LogStoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        if self.unsafe_no_fsync {
            txn.set_durability(redb::Durability::None).map_err(db_err)?;
        }
        {
            let mut log = txn.open_table(LOG).map_err(db_err)?;
            for e in &entries {
                log.insert(e.get_log_id().index, frame(e).as_slice()).map_err(db_err)?;
            }
        }
        // Durability::Immediate is redb's default: commit returns after fsync.
        txn.commit().map_err(db_err)
    }

    fn delete_range(&self, range: impl RangeBounds<u64>, purged: Option<LogId>) -> Result<(), LogStoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut log = txn.open_table(LOG).map_err(db_err)?;
            log.retain_in(range, |_, _| false).map_err(db_err)?;
            if let Some(p) = purged {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert(KEY_PURGED, frame(&Some(p)).as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

fn read_err(e: LogStoreError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}
fn write_err(e: LogStoreError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("log store task panicked")
}

/// Upper bound on entries handed to one replication RPC, so one lagging
/// follower cannot make the leader read its whole log into memory.
const MAX_ENTRIES_PER_READ: usize = 4096;

/// Upper bound on the encoded bytes of one replication batch (beyond its
/// first entry). openraft 0.9 bounds an AppendEntries RPC by the heartbeat
/// interval, so a batch must be small enough for a follower to fsync in that
/// time, or replication would time out and resend forever.
const MAX_BYTES_PER_READ: usize = 256 * 1024;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e + 1,
            Bound::Excluded(e) => *e,
            Bound::Unbounded => u64::MAX,
        };
        let this = self.clone();
        blocking(move || this.read_range(start, end, usize::MAX, usize::MAX)).await.map_err(read_err)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let this = self.clone();
        blocking(move || this.read_range(start, end, MAX_ENTRIES_PER_READ, MAX_BYTES_PER_READ)).await.map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.get_meta::<Option<LogId>>(KEY_PURGED).map_err(read_err)?.flatten();
        let last = self.last_entry_id().map_err(read_err)?.or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let this = self.clone();
        let vote = *vote;
        blocking(move || this.put_meta(KEY_VOTE, &vote)).await.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsync-critical (Raft can recompute it); stored so a restarted
        // member re-applies what it knows was committed without waiting for a leader.
        let this = self.clone();
        blocking(move || this.put_meta(KEY_COMMITTED, &committed)).await.map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED).map_err(read_err)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let this = self.clone();
        let res = blocking(move || this.append_blocking(entries)).await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let this = self.clone();
        blocking(move || this.delete_range(log_id.index.., None)).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let this = self.clone();
        blocking(move || this.delete_range(..=log_id.index, Some(log_id))).await.map_err(write_err)
    }
}
