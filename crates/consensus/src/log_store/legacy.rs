//! The Raft log format of releases before the write-ahead log: a redb file
//! `<data-dir>/member/raft.redb` with a `raft_log` table (index →
//! `crc32 ‖ postcard(Entry)`) and a `raft_meta` table (`vote`, `last_purged`,
//! `committed`, each `crc32 ‖ postcard`). Kept only to upgrade such a data
//! dir in place ([`super::LogStore::open`]) and, in tests, to write one.

use std::path::Path;

use openraft::RaftLogId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use super::LogStoreError;
use crate::types::{Entry, LogId, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";
const KEY_COMMITTED: &str = "committed";

/// Everything a legacy log file holds.
#[derive(Debug, Clone, Default)]
pub struct LegacyLog {
    pub entries: Vec<Entry>,
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let payload =
        postcard::to_allocvec(value).expect("postcard encoding of an in-memory value cannot fail");
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn unframe<T: DeserializeOwned>(bytes: &[u8], path: &str, what: &str) -> Result<T, LogStoreError> {
    let corrupt = |detail: String| LogStoreError::CorruptFile {
        path: path.to_string(),
        detail,
    };
    if bytes.len() < 4 {
        return Err(corrupt(format!("{what}: record shorter than its checksum")));
    }
    let (sum, payload) = bytes.split_at(4);
    if u32::from_le_bytes(sum.try_into().expect("4 bytes")) != crc32fast::hash(payload) {
        return Err(corrupt(format!("{what}: checksum mismatch")));
    }
    postcard::from_bytes(payload).map_err(|e| corrupt(format!("{what}: cannot decode: {e}")))
}

/// Read a legacy log file whole, verifying every page (redb's integrity
/// check) and every record's checksum. Never panics on a damaged file.
pub fn read(path: &Path) -> Result<LegacyLog, LogStoreError> {
    let label = path.display().to_string();
    let corrupt = |detail: String| LogStoreError::CorruptFile {
        path: label.clone(),
        detail,
    };
    let db_err = |e: &dyn std::fmt::Display| corrupt(e.to_string());
    let read = mvcc::guard::catch_panics(|| {
        let mut db = redb::Database::open(path).map_err(|e| db_err(&e))?;
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => return Err(corrupt("page checksums failed".into())),
            Err(e) => return Err(corrupt(format!("integrity check failed: {e}"))),
        }
        let txn = db.begin_read().map_err(|e| db_err(&e))?;
        let mut out = LegacyLog::default();
        match txn.open_table(LOG) {
            Ok(log) => {
                for row in log.iter().map_err(|e| db_err(&e))? {
                    let (k, v) = row.map_err(|e| db_err(&e))?;
                    let index = k.value();
                    let entry: Entry = unframe(v.value(), &label, &format!("log entry {index}"))?;
                    if entry.get_log_id().index != index {
                        return Err(corrupt(format!(
                            "log entry {index} holds index {}",
                            entry.get_log_id().index
                        )));
                    }
                    if let Some(prev) = out.entries.last() {
                        if prev.get_log_id().index + 1 != index {
                            return Err(corrupt(format!(
                                "gap in log between {} and {index}",
                                prev.get_log_id().index
                            )));
                        }
                    }
                    out.entries.push(entry);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(db_err(&e)),
        }
        match txn.open_table(META) {
            Ok(meta) => {
                if let Some(v) = meta.get(KEY_VOTE).map_err(|e| db_err(&e))? {
                    out.vote = Some(unframe(v.value(), &label, "vote")?);
                }
                if let Some(v) = meta.get(KEY_PURGED).map_err(|e| db_err(&e))? {
                    out.purged = unframe::<Option<LogId>>(v.value(), &label, "last purged")?;
                }
                if let Some(v) = meta.get(KEY_COMMITTED).map_err(|e| db_err(&e))? {
                    out.committed = unframe::<Option<LogId>>(v.value(), &label, "committed")?;
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(db_err(&e)),
        }
        Ok(out)
    });
    match read {
        Ok(r) => r,
        Err(panic) => Err(corrupt(format!("redb panicked reading it: {panic}"))),
    }
}

/// Write `log` as a legacy log file at `path` (tests: a data dir as the
/// release before the write-ahead log left it).
pub fn write(path: &Path, log: &LegacyLog) -> Result<(), LogStoreError> {
    let err = |e: &dyn std::fmt::Display| LogStoreError::Db(format!("{}: {e}", path.display()));
    let db = redb::Database::create(path).map_err(|e| err(&e))?;
    let txn = db.begin_write().map_err(|e| err(&e))?;
    {
        let mut t = txn.open_table(LOG).map_err(|e| err(&e))?;
        for e in &log.entries {
            t.insert(e.get_log_id().index, frame(e).as_slice())
                .map_err(|e| err(&e))?;
        }
        let mut m = txn.open_table(META).map_err(|e| err(&e))?;
        if let Some(v) = &log.vote {
            m.insert(KEY_VOTE, frame(v).as_slice())
                .map_err(|e| err(&e))?;
        }
        m.insert(KEY_PURGED, frame(&log.purged).as_slice())
            .map_err(|e| err(&e))?;
        m.insert(KEY_COMMITTED, frame(&log.committed).as_slice())
            .map_err(|e| err(&e))?;
    }
    txn.commit().map_err(|e| err(&e))
}
