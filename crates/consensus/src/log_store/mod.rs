//! The Raft log and vote, durable in a write-ahead log
//! (`<data-dir>/member/wal/`, crate `wal`).
//!
//! Files in the WAL directory:
//! - `<first index>.wal` segments: one checksummed record per entry
//!   (postcard-encoded `Entry`), see the `wal` crate for the format and the
//!   recovery rules (a torn tail is truncated with a warning naming what
//!   was dropped; damage anywhere else stops the member, naming the file
//!   and byte offset);
//! - `meta`: the vote and the last purged log id, in two alternating
//!   checksummed slots, every write fsynced before it returns;
//! - `committed`: the last committed log id (advisory, never fsynced), in
//!   its own two-slot file so its unsynced writes can never touch `meta`.
//!
//! Group commit: `append` only queues entries (they are readable at once,
//! from memory) for a writer, which writes every append that queued up while
//! the previous sync ran with one write and makes it durable with one
//! `fdatasync`, then reports them flushed. openraft counts an entry towards
//! the commit quorum only after that report, which is what lets the leader
//! count this member towards a commit quorum: an acknowledged write is on a
//! quorum's disk. Recent entries stay in memory (up to
//! [`RECENT_CACHE_BYTES`]) so replication rarely reads the files.
//!
//! [`IoMode::Inline`] (the simulator's) runs the writer as a tokio task and
//! every other file operation on the calling task, and
//! [`LogStore::open_dir`] puts the log on any [`wal::Dir`] (the simulator's
//! disk, which loses unsynced writes on a power cut and may keep a torn
//! prefix of them).
//!
//! ## Upgrade from `raft.redb`
//! Releases before the WAL kept the log in a redb file `member/raft.redb`.
//! [`LogStore::open`] upgrades such a data dir in place on first start:
//! it reads and verifies the whole file ([`legacy::read`]), writes entries,
//! vote, committed and purged ids into `member/wal.upgrading/`, syncs it,
//! renames it to `member/wal/` (the commit point), syncs the member dir, and
//! only then removes `raft.redb`. A crash before the rename leaves
//! `raft.redb` untouched and a partial `wal.upgrading/`, which the next start
//! discards and redoes; a crash after it leaves a complete `wal/`, which wins,
//! and the leftover `raft.redb` is removed.

pub mod legacy;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, StorageIOError};
use serde::{Deserialize, Serialize};
use wal::{Dir, FsDir, SlotFile, Wal, WalError, WalOptions};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Name of the WAL directory inside `<data-dir>/member/`.
pub const WAL_DIR_NAME: &str = "wal";
/// Where an upgrade from `raft.redb` builds the WAL before its commit point.
pub const UPGRADE_DIR_NAME: &str = "wal.upgrading";
/// The durable slot file: vote and last purged id.
const META_FILE: &str = "meta";
/// The advisory slot file: last committed id.
const COMMITTED_FILE: &str = "committed";

/// Errors of the log, with the file they concern.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("raft log: {0}")]
    Db(String),
    #[error("raft log {path} is corrupted: {detail}. This member must not start from it: remove the member with `etcdctl member remove` and re-add it with an empty --data-dir, or restore the file from a backup")]
    CorruptFile { path: String, detail: String },
    #[error("raft log {path}: upgrading it to the write-ahead log in {wal_dir} failed: {detail}. The old log is left untouched; fix the cause (disk space, permissions) and start the member again")]
    Upgrade {
        path: String,
        wal_dir: String,
        detail: String,
    },
}

/// Where a store's blocking file work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// Blocking work on tokio's blocking pool, the log's group commit on its
    /// own OS thread (production).
    #[default]
    Threads,
    /// Everything on the calling task; the group-commit writer is a tokio
    /// task. With a single-threaded runtime every I/O then happens in an
    /// order the scheduler alone decides (the deterministic simulator).
    Inline,
}

impl IoMode {
    /// Run blocking storage work `f` as this mode says.
    pub async fn run<T: Send + 'static>(
        self,
        what: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        match self {
            IoMode::Inline => f(),
            IoMode::Threads => tokio::task::spawn_blocking(f)
                .await
                .unwrap_or_else(|e| panic!("{what} task panicked: {e}")),
        }
    }
}

/// How to open a [`LogStore`].
#[derive(Debug, Clone, Copy)]
pub struct LogStoreOptions {
    pub io: IoMode,
    /// Planted bug `PlantedBug::AckBeforeFsync`: appends are reported
    /// flushed before the WAL's write and fdatasync (written later from a
    /// write-behind buffer, never synced), and the vote is saved without a
    /// sync. Ignored unless [`crate::PLANTED_BUGS_COMPILED`].
    pub unsafe_no_fsync: bool,
    /// Planted bug `PlantedBug::TornRecordAccepted`: recovery accepts a
    /// checksum-failing record at the WAL's tail as whole. Ignored unless
    /// [`crate::PLANTED_BUGS_COMPILED`].
    pub unsafe_accept_torn_records: bool,
    /// Start a new WAL segment at this size, bytes.
    pub segment_bytes: u64,
    /// [`IoMode::Inline`] only: the writer task waits this long between
    /// writing a group and syncing it, as a disk would, so a simulated power
    /// cut can land while a write is in flight (torn writes).
    pub simulated_fsync_latency: Duration,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            io: IoMode::Threads,
            unsafe_no_fsync: false,
            unsafe_accept_torn_records: false,
            segment_bytes: wal::DEFAULT_SEGMENT_BYTES,
            simulated_fsync_latency: Duration::ZERO,
        }
    }
}

/// The durable slot file's value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DurableMeta {
    vote: Option<Vote>,
    purged: Option<LogId>,
}

struct Meta {
    durable_file: SlotFile,
    committed_file: SlotFile,
    durable: DurableMeta,
    committed: Option<LogId>,
}

/// Entries in memory: a contiguous suffix of the log (every entry not yet
/// synced, and recent synced ones up to [`RECENT_CACHE_BYTES`]).
#[derive(Default)]
struct Mem {
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
}

impl Mem {
    fn insert(&mut self, e: Entry, size: usize) {
        if let Some((_, old)) = self.entries.insert(e.get_log_id().index, (e, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
    }
    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let doomed: Vec<u64> = self.entries.keys().copied().filter(|&i| !keep(i)).collect();
        for i in doomed {
            let (_, size) = self.entries.remove(&i).expect("present");
            self.bytes -= size;
        }
    }
    /// Drop the oldest synced entries (`<= synced`) beyond the budget.
    fn evict(&mut self, synced: u64) {
        while self.bytes > RECENT_CACHE_BYTES {
            match self.entries.first_key_value() {
                Some((&i, _)) if i <= synced => {
                    let (_, size) = self.entries.remove(&i).expect("present");
                    self.bytes -= size;
                }
                _ => break,
            }
        }
    }
}

struct Shared {
    wal: Mutex<Wal>,
    meta: Mutex<Meta>,
    mem: Mutex<Mem>,
    /// The WAL directory, for messages.
    label: String,
    unsafe_no_fsync: bool,
}

/// The durable Raft log. Cheap to clone (shares the files).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    io: IoMode,
    /// Queue to the group-commit writer.
    writer: tokio::sync::mpsc::Sender<WriteOp>,
    /// Set, with the error, once an append failed: the log is not trusted
    /// again and the member must stop (see [`LogStore::write_failure`]).
    failure: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

/// Work for the writer.
enum WriteOp {
    Append(Vec<(Entry, Vec<u8>)>, LogFlushed<TypeConfig>),
    /// Answered once every append queued before it is on disk.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Encoded entries kept in memory after they are synced, so replication to
/// a follower that is a little behind reads no file.
pub const RECENT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Appends that may wait for the writer before `append` applies
/// back-pressure to the Raft core.
pub const MAX_QUEUED_APPENDS: usize = 1024;
/// Most appends folded into one group commit (one fdatasync).
pub const MAX_APPENDS_PER_COMMIT: usize = 256;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("log store lock poisoned")
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    postcard::to_allocvec(e).expect("postcard encoding of an in-memory entry cannot fail")
}

impl LogStore {
    /// Open the log of the member whose legacy log file is `path`
    /// (`<data-dir>/member/raft.redb`): the WAL lives next to it in
    /// `<data-dir>/member/wal/`. A `raft.redb` left by an older release is
    /// upgraded in place first (see the module docs). Production:
    /// [`IoMode::Threads`].
    pub fn open(path: &Path, unsafe_no_fsync: bool) -> Result<Self, LogStoreError> {
        Self::open_with(
            path,
            LogStoreOptions {
                unsafe_no_fsync,
                ..LogStoreOptions::default()
            },
        )
    }

    /// [`LogStore::open`] with every option.
    pub fn open_with(path: &Path, options: LogStoreOptions) -> Result<Self, LogStoreError> {
        let member_dir = path.parent().unwrap_or(Path::new("."));
        let wal_dir = member_dir.join(WAL_DIR_NAME);
        upgrade_legacy(path, &wal_dir)?;
        let dir = FsDir::create_all(&wal_dir).map_err(|source| WalError::Io {
            op: "creating",
            file: wal_dir.display().to_string(),
            source,
        })?;
        Self::open_dir(Arc::new(dir), &wal_dir.display().to_string(), options)
    }

    /// Open or create a log in `dir`; `label` names it in messages.
    pub fn open_dir(
        dir: Arc<dyn Dir>,
        label: &str,
        mut options: LogStoreOptions,
    ) -> Result<Self, LogStoreError> {
        // A build without planted bugs has none of their paths.
        options.unsafe_no_fsync &= crate::PLANTED_BUGS_COMPILED;
        options.unsafe_accept_torn_records &= crate::PLANTED_BUGS_COMPILED;
        let (durable_file, durable) = SlotFile::open(&*dir, META_FILE)?;
        let durable: DurableMeta = match durable {
            None => DurableMeta::default(),
            Some(b) => postcard::from_bytes(&b).map_err(|e| LogStoreError::CorruptFile {
                path: dir.describe(META_FILE),
                detail: format!("cannot decode the vote: {e}"),
            })?,
        };
        let (committed_file, committed) = SlotFile::open(&*dir, COMMITTED_FILE)?;
        let committed: Option<LogId> = match committed {
            None => None,
            Some(b) => postcard::from_bytes(&b).map_err(|e| LogStoreError::CorruptFile {
                path: dir.describe(COMMITTED_FILE),
                detail: format!("cannot decode the committed id: {e}"),
            })?,
        };
        let wal_options = WalOptions {
            segment_bytes: options.segment_bytes,
            unsafe_accept_torn_records: options.unsafe_accept_torn_records,
            ..WalOptions::default()
        };
        let purged_index = durable.purged.map(|p| p.index);
        let (mut wal, recovery) = Wal::open(dir.clone(), wal_options, purged_index)?;
        if let Some(p) = purged_index {
            // Finish a purge a crash interrupted (segments up to it may remain).
            wal.purge_upto(p)?;
        }
        if recovery.torn_records_accepted > 0 {
            tracing::error!(
                "raft log {label}: PLANTED BUG torn-record-accepted: {} torn record(s) accepted as whole",
                recovery.torn_records_accepted
            );
        }
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_QUEUED_APPENDS);
        let store = LogStore {
            shared: Arc::new(Shared {
                wal: Mutex::new(wal),
                meta: Mutex::new(Meta {
                    durable_file,
                    committed_file,
                    durable,
                    committed,
                }),
                mem: Mutex::new(Mem::default()),
                label: label.to_string(),
                unsafe_no_fsync: options.unsafe_no_fsync,
            }),
            io: options.io,
            writer: tx,
            failure: Arc::new(tokio::sync::watch::channel(None).0),
        };
        // Decode every entry once at start-up: a damaged log refuses to
        // start rather than failing later in the middle of replication.
        store.verify_all()?;
        store.clamp_committed()?;
        // The writer holds the files, not the queue's sender: when the last
        // LogStore clone is dropped the queue closes, the writer ends and
        // the files are released.
        let w = LogWriter {
            write_behind: Mutex::default(),
            shared: store.shared.clone(),
            failure: store.failure.clone(),
            simulated_fsync_latency: options.simulated_fsync_latency,
        };
        match options.io {
            IoMode::Threads => {
                std::thread::Builder::new()
                    .name("raft-log-writer".into())
                    .spawn(move || w.run_on_thread(rx))
                    .map_err(|e| {
                        LogStoreError::Db(format!("starting the log writer thread: {e}"))
                    })?;
            }
            IoMode::Inline => {
                tokio::spawn(async move { w.run_as_task(rx).await });
            }
        }
        Ok(store)
    }

    /// Becomes `Some(error)` when an append failed (disk full, I/O error).
    /// openraft 0.9 does not always stop on a failed append callback, so
    /// the member watches this and stops itself rather than lingering.
    pub fn write_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    /// Whether the log holds no entry and no purge marker, and whether a
    /// vote was ever saved: a member with an identity must have both (see
    /// `Node::start`). Also the term of the last entry.
    pub fn durable_state(&self) -> Result<DurableState, LogStoreError> {
        let meta = lock(&self.shared.meta);
        let purged = meta.durable.purged;
        let has_vote = meta.durable.vote.is_some();
        drop(meta);
        Ok(DurableState {
            last_log_id: self.last_entry_id()?.or(purged),
            has_vote,
        })
    }

    /// WAL segment fdatasyncs and directory syncs so far (tests, metrics).
    pub fn wal_syncs(&self) -> (u64, u64) {
        let wal = lock(&self.shared.wal);
        (wal.data_syncs(), wal.dir_syncs())
    }

    /// Wait until everything queued so far is on disk.
    async fn barrier(&self) -> Result<(), LogStoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(WriteOp::Barrier(tx))
            .await
            .map_err(|_| LogStoreError::Db("log writer stopped".into()))?;
        rx.await
            .map_err(|_| LogStoreError::Db("log writer stopped".into()))
    }

    fn decode(&self, index: u64, bytes: &[u8]) -> Result<Entry, LogStoreError> {
        let corrupt = |detail: String| LogStoreError::CorruptFile {
            path: self.shared.label.clone(),
            detail,
        };
        let e: Entry = postcard::from_bytes(bytes)
            .map_err(|err| corrupt(format!("log entry {index} cannot be decoded: {err}")))?;
        if e.get_log_id().index != index {
            return Err(corrupt(format!(
                "record {index} holds entry {}",
                e.get_log_id().index
            )));
        }
        Ok(e)
    }

    fn verify_all(&self) -> Result<(), LogStoreError> {
        let (first, last) = {
            let wal = lock(&self.shared.wal);
            (wal.first_index(), wal.last_index())
        };
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(());
        };
        let mut prev_term = 0;
        for i in first..=last {
            let bytes = lock(&self.shared.wal).read(i)?;
            let e = self.decode(i, &bytes)?;
            let term = e.get_log_id().leader_id.term;
            if term < prev_term {
                return Err(LogStoreError::CorruptFile {
                    path: self.shared.label.clone(),
                    detail: format!(
                        "log entry {i} has term {term}, below its predecessor's {prev_term}"
                    ),
                });
            }
            prev_term = term;
        }
        Ok(())
    }

    /// The saved committed id is written without a sync, so after a power
    /// cut it may name an entry whose (unsynced) record was lost. Every
    /// entry up to it was committed, and committed entries are never
    /// truncated, so the surviving prefix up to it is committed: clamp it.
    fn clamp_committed(&self) -> Result<(), LogStoreError> {
        let last = self.last_entry_id()?;
        let mut meta = lock(&self.shared.meta);
        let purged = meta.durable.purged;
        if let Some(c) = meta.committed {
            let bound = last.or(purged);
            if bound.is_none_or(|b| b.index < c.index) {
                tracing::info!(
                    "raft log {}: saved committed index {} is beyond the log's end {:?} (its unsynced tail was lost): using the end",
                    self.shared.label,
                    c.index,
                    bound.map(|b| b.index)
                );
                meta.committed = bound;
            }
        }
        Ok(())
    }

    /// Entries in `[start, end_exclusive)`, at most `max_entries` and, past
    /// the first entry, at most `max_bytes` of encoded entries.
    fn read_range(
        &self,
        start: u64,
        end_exclusive: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, LogStoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // Purged entries may remain in a segment that also holds later
        // ones; they are gone as far as Raft is concerned.
        let start = match lock(&self.shared.meta).durable.purged {
            Some(p) => start.max(p.index + 1),
            None => start,
        };
        // Memory holds a contiguous suffix of the log; entries below its
        // first one are in the files (an entry leaves memory only once
        // synced, oldest first), so reading the files first can miss none.
        let mem_first = lock(&self.shared.mem).entries.keys().next().copied();
        let file_end = mem_first.unwrap_or(u64::MAX).min(end_exclusive);
        if start < file_end {
            let (first, last) = {
                let wal = lock(&self.shared.wal);
                (wal.first_index(), wal.last_index())
            };
            if let (Some(first), Some(last)) = (first, last) {
                for i in start.max(first)..file_end.min(last + 1) {
                    let raw = lock(&self.shared.wal).read(i)?;
                    bytes += raw.len();
                    if !out.is_empty() && bytes > max_bytes {
                        return Ok(out);
                    }
                    out.push(self.decode(i, &raw)?);
                    if out.len() >= max_entries {
                        return Ok(out);
                    }
                }
            }
        }
        let next = out
            .last()
            .map(|e: &Entry| e.get_log_id().index + 1)
            .unwrap_or(start);
        if next >= end_exclusive {
            return Ok(out);
        }
        let mem = lock(&self.shared.mem);
        for (&i, (e, size)) in mem.entries.range(next..end_exclusive) {
            // Stop at a hole (the files ended before memory begins).
            if out
                .last()
                .is_some_and(|l: &Entry| l.get_log_id().index + 1 != i)
            {
                break;
            }
            bytes += size;
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            if out.len() >= max_entries {
                break;
            }
        }
        Ok(out)
    }

    /// Whether every entry from `start` on is held in memory (reading them
    /// touches no file).
    fn in_memory_from(&self, start: u64) -> bool {
        lock(&self.shared.mem)
            .entries
            .keys()
            .next()
            .is_some_and(|first| *first <= start)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, LogStoreError> {
        if let Some((e, _)) = lock(&self.shared.mem).entries.values().next_back() {
            return Ok(Some(*e.get_log_id()));
        }
        let last = lock(&self.shared.wal).last_index();
        match last {
            None => Ok(None),
            Some(i) => {
                let raw = lock(&self.shared.wal).read(i)?;
                Ok(Some(*self.decode(i, &raw)?.get_log_id()))
            }
        }
    }

    fn save_durable(&self, update: impl FnOnce(&mut DurableMeta)) -> Result<(), LogStoreError> {
        let mut meta = lock(&self.shared.meta);
        let mut next = meta.durable.clone();
        update(&mut next);
        let bytes = postcard::to_allocvec(&next).expect("encoding meta cannot fail");
        // Planted bug AckBeforeFsync: no write of this store is made durable.
        meta.durable_file
            .write(&bytes, !self.shared.unsafe_no_fsync)?;
        meta.durable = next;
        Ok(())
    }
}

/// Upgrade a legacy `raft.redb` at `legacy` into `wal_dir` (module docs).
fn upgrade_legacy(legacy: &Path, wal_dir: &Path) -> Result<(), LogStoreError> {
    let member_dir = wal_dir.parent().unwrap_or(Path::new("."));
    let sync_member_dir = || std::fs::File::open(member_dir).and_then(|d| d.sync_all());
    let upgrade_err = |detail: String| LogStoreError::Upgrade {
        path: legacy.display().to_string(),
        wal_dir: wal_dir.display().to_string(),
        detail,
    };
    if !legacy.exists() {
        return Ok(());
    }
    if wal_dir.exists() {
        // The rename committed an earlier upgrade; only the removal of the
        // old file was cut short.
        tracing::info!(
            "raft log: {} was already upgraded to {}; removing the old file",
            legacy.display(),
            wal_dir.display()
        );
        std::fs::remove_file(legacy).map_err(|e| upgrade_err(format!("removing it: {e}")))?;
        sync_member_dir().map_err(|e| upgrade_err(format!("syncing the member dir: {e}")))?;
        return Ok(());
    }
    let old = legacy::read(legacy)?;
    let tmp: PathBuf = member_dir.join(UPGRADE_DIR_NAME);
    if tmp.exists() {
        tracing::warn!(
            "raft log: discarding {}, left by an upgrade a crash interrupted; upgrading again",
            tmp.display()
        );
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| upgrade_err(format!("removing {}: {e}", tmp.display())))?;
    }
    let dir = Arc::new(
        FsDir::create_all(&tmp)
            .map_err(|e| upgrade_err(format!("creating {}: {e}", tmp.display())))?,
    );
    {
        let (mut meta, _) = SlotFile::open(&*dir, META_FILE)?;
        let durable = DurableMeta {
            vote: old.vote,
            purged: old.purged,
        };
        meta.write(
            &postcard::to_allocvec(&durable).expect("encoding meta cannot fail"),
            true,
        )?;
        let (mut committed, _) = SlotFile::open(&*dir, COMMITTED_FILE)?;
        committed.write(
            &postcard::to_allocvec(&old.committed).expect("encoding cannot fail"),
            true,
        )?;
        let (mut wal, _) = Wal::open(dir.clone(), WalOptions::default(), None)?;
        let encoded: Vec<(u64, Vec<u8>)> = old
            .entries
            .iter()
            .map(|e| (e.get_log_id().index, encode_entry(e)))
            .collect();
        wal.append(encoded.iter().map(|(i, b)| (*i, b.as_slice())))?;
        wal.sync()?;
        dir.sync_dir()
            .map_err(|e| upgrade_err(format!("syncing {}: {e}", tmp.display())))?;
    }
    std::fs::rename(&tmp, wal_dir)
        .map_err(|e| upgrade_err(format!("renaming {}: {e}", tmp.display())))?;
    sync_member_dir().map_err(|e| upgrade_err(format!("syncing the member dir: {e}")))?;
    std::fs::remove_file(legacy).map_err(|e| upgrade_err(format!("removing it: {e}")))?;
    sync_member_dir().map_err(|e| upgrade_err(format!("syncing the member dir: {e}")))?;
    tracing::info!(
        "raft log: upgraded {} to the write-ahead log in {} ({} entries, vote {:?}, committed {:?}, purged {:?})",
        legacy.display(),
        wal_dir.display(),
        old.entries.len(),
        old.vote,
        old.committed,
        old.purged
    );
    Ok(())
}

/// What the log holds at start-up (see [`LogStore::durable_state`]).
#[derive(Debug, Clone, Copy)]
pub struct DurableState {
    pub last_log_id: Option<LogId>,
    pub has_vote: bool,
}

/// Groups the planted bug `AckBeforeFsync` acknowledges before their
/// records reach the file at all (see `LogWriter::write_behind`).
pub const PLANTED_WRITE_BEHIND_GROUPS: usize = 64;

/// The planted bug's write-behind buffer.
#[derive(Default)]
struct WriteBehind {
    records: Vec<(u64, Vec<u8>)>,
    groups: usize,
}

/// The group-commit writer's state.
struct LogWriter {
    /// Only used by the planted bug `AckBeforeFsync`.
    write_behind: Mutex<WriteBehind>,
    shared: Arc<Shared>,
    failure: Arc<tokio::sync::watch::Sender<Option<String>>>,
    simulated_fsync_latency: Duration,
}

/// One group taken off the queue.
struct Group {
    ops: Vec<WriteOp>,
}

impl LogWriter {
    fn run_on_thread(&self, mut rx: tokio::sync::mpsc::Receiver<WriteOp>) {
        let mut failed: Option<String> = None;
        while let Some(first) = rx.blocking_recv() {
            let group = Self::take_group(first, &mut rx);
            let written = self.write(&group, &mut failed);
            let synced = written.and_then(|last| self.sync(last, &mut failed));
            self.finish(group, synced);
        }
    }

    async fn run_as_task(&self, mut rx: tokio::sync::mpsc::Receiver<WriteOp>) {
        let mut failed: Option<String> = None;
        while let Some(first) = rx.recv().await {
            let group = Self::take_group(first, &mut rx);
            let written = self.write(&group, &mut failed);
            if written.as_ref().is_ok_and(|l| l.is_some())
                && !self.simulated_fsync_latency.is_zero()
            {
                // The disk takes its time; a power cut may land here, with
                // the group written but not synced.
                tokio::time::sleep(self.simulated_fsync_latency).await;
            }
            let synced = written.and_then(|last| self.sync(last, &mut failed));
            self.finish(group, synced);
        }
    }

    /// `first` and every op queued behind it, up to [`MAX_APPENDS_PER_COMMIT`].
    fn take_group(first: WriteOp, rx: &mut tokio::sync::mpsc::Receiver<WriteOp>) -> Group {
        let mut ops = vec![first];
        while ops.len() < MAX_APPENDS_PER_COMMIT {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        Group { ops }
    }

    fn fail(&self, failed: &mut Option<String>, e: String) -> String {
        // A log that failed to write is not trusted again: every later
        // append fails too, which stops the Raft core.
        if failed.is_none() {
            tracing::error!("raft log write to {} failed: {e}", self.shared.label);
            let detail = format!("writing the raft log {} failed: {e}", self.shared.label);
            self.failure.send_if_modified(|f| {
                let first = f.is_none();
                if first {
                    *f = Some(detail);
                }
                first
            });
            *failed = Some(e.clone());
        }
        e
    }

    /// Write the group's entries with one write; the last index written.
    fn write(&self, group: &Group, failed: &mut Option<String>) -> Result<Option<u64>, String> {
        if let Some(e) = failed {
            return Err(e.clone());
        }
        let records: Vec<(u64, &[u8])> = group
            .ops
            .iter()
            .flat_map(|op| match op {
                WriteOp::Append(entries, _) => entries
                    .iter()
                    .map(|(e, b)| (e.get_log_id().index, b.as_slice()))
                    .collect(),
                WriteOp::Barrier(_) => Vec::new(),
            })
            .collect();
        if self.shared.unsafe_no_fsync {
            return self.write_behind(group, records, failed);
        }
        let last = records.last().map(|(i, _)| *i);
        if records.is_empty() {
            return Ok(None);
        }
        lock(&self.shared.wal)
            .append(records)
            .map_err(|e| self.fail(failed, e.to_string()))?;
        Ok(last)
    }

    /// PLANTED BUG `AckBeforeFsync`: the group is reported flushed at once
    /// (see `finish`), while its records wait in a write-behind buffer that
    /// reaches the file — never fdatasynced — only every
    /// [`PLANTED_WRITE_BEHIND_GROUPS`] groups (or at a truncate/purge
    /// barrier). A kill -9 loses the buffer, a power cut the page cache too:
    /// acknowledged entries vanish, which the drill and the simulator must
    /// catch. The last index written to the file, if any.
    fn write_behind(
        &self,
        group: &Group,
        records: Vec<(u64, &[u8])>,
        failed: &mut Option<String>,
    ) -> Result<Option<u64>, String> {
        let mut wb = lock(&self.write_behind);
        wb.records
            .extend(records.into_iter().map(|(i, b)| (i, b.to_vec())));
        wb.groups += 1;
        let barrier = group.ops.iter().any(|op| matches!(op, WriteOp::Barrier(_)));
        if !barrier && wb.groups < PLANTED_WRITE_BEHIND_GROUPS {
            return Ok(None);
        }
        let records = std::mem::take(&mut wb.records);
        wb.groups = 0;
        let last = records.last().map(|(i, _)| *i);
        if records.is_empty() {
            return Ok(None);
        }
        lock(&self.shared.wal)
            .append(records.iter().map(|(i, b)| (*i, b.as_slice())))
            .map_err(|e| self.fail(failed, e.to_string()))?;
        Ok(last)
    }

    /// One fdatasync for the whole group (none under the planted bug).
    fn sync(&self, last: Option<u64>, failed: &mut Option<String>) -> Result<(), String> {
        let Some(last) = last else {
            return Ok(());
        };
        if !self.shared.unsafe_no_fsync {
            let started = std::time::Instant::now();
            let r = lock(&self.shared.wal).sync();
            WAL_FSYNC.observe(started.elapsed().as_secs_f64());
            r.map_err(|e| self.fail(failed, e.to_string()))?;
        }
        lock(&self.shared.mem).evict(last);
        Ok(())
    }

    fn finish(&self, group: Group, result: Result<(), String>) {
        for op in group.ops {
            match op {
                WriteOp::Append(_, cb) => {
                    cb.log_io_completed(result.clone().map_err(std::io::Error::other))
                }
                WriteOp::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Upper bounds of the buckets of [`WAL_FSYNC`], seconds: etcd's
/// `etcd_disk_wal_fsync_duration_seconds` buckets (1 ms doubling, 14).
pub const WAL_FSYNC_BUCKETS_S: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// Durations of the WAL's group-commit fdatasyncs: Phalanx's
/// `etcd_disk_wal_fsync_duration_seconds`. One log per process in a
/// deployment, so one process-wide histogram; the member's metrics registry
/// (etcd-api) registers a handle to it.
pub static WAL_FSYNC: std::sync::LazyLock<prometheus_client::metrics::histogram::Histogram> =
    std::sync::LazyLock::new(|| {
        prometheus_client::metrics::histogram::Histogram::new(WAL_FSYNC_BUCKETS_S)
    });

fn read_err(e: LogStoreError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}
fn write_err(e: LogStoreError) -> StorageError {
    StorageIOError::write_logs(&e).into()
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
        if self.in_memory_from(start) {
            return self
                .read_range(start, end, usize::MAX, usize::MAX)
                .map_err(read_err);
        }
        let this = self.clone();
        this.io
            .run("log store", move || {
                this.read_range(start, end, usize::MAX, usize::MAX)
            })
            .await
            .map_err(read_err)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        // Replication reads what it has just appended, which is still in
        // memory: read it here rather than pay two thread switches per
        // AppendEntries for a hand-off to the blocking pool.
        if self.in_memory_from(start) {
            return self
                .read_range(start, end, MAX_ENTRIES_PER_READ, MAX_BYTES_PER_READ)
                .map_err(read_err);
        }
        let this = self.clone();
        this.io
            .run("log store", move || {
                this.read_range(start, end, MAX_ENTRIES_PER_READ, MAX_BYTES_PER_READ)
            })
            .await
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = lock(&self.shared.meta).durable.purged;
        let last = self.last_entry_id().map_err(read_err)?.or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let this = self.clone();
        let vote = *vote;
        // The vote must be durable before it is acted on (Raft safety).
        this.io
            .run("log store", move || {
                this.save_durable(|m| m.vote = Some(vote))
            })
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    /// The vote as last saved, but never "committed": openraft 0.9 restores
    /// a member whose committed vote names itself as leader at once
    /// (`Engine::startup`), yet the commit index is volatile (ours is saved
    /// without fsync and is stale after a crash). Such a leader answered
    /// ReadIndex from the stale commit index and served reads that missed
    /// acknowledged writes after a power cut of the whole cluster — found by
    /// the simulator (seed 79 of 1..1000). Term and voted-for, all Raft needs
    /// to persist, are kept; the member campaigns afresh instead.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote = lock(&self.shared.meta).durable.vote;
        Ok(vote.map(|mut v| {
            v.committed = false;
            v
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Advisory, so not fsynced: Raft recomputes the commit index from a
        // quorum; this only lets a restarted member re-apply what it knew was
        // committed without waiting for a leader. (It is called on every
        // commit advance: an fsync here would serialise the write path.)
        let save = move |meta: &mut std::sync::MutexGuard<'_, Meta>| {
            let bytes = postcard::to_allocvec(&committed).expect("encoding cannot fail");
            meta.committed_file.write(&bytes, false)?;
            meta.committed = committed;
            Ok::<_, LogStoreError>(())
        };
        // An unsynced write of a few bytes to the page cache costs less than
        // the hand-off to the blocking pool, so it is done here on every
        // commit, unless a vote or purge is being synced under the lock.
        if let Ok(mut meta) = self.shared.meta.try_lock() {
            return save(&mut meta).map_err(write_err);
        }
        let this = self.clone();
        this.io
            .run("log store", move || save(&mut lock(&this.shared.meta)))
            .await
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.shared.meta).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<(Entry, Vec<u8>)> = entries
            .into_iter()
            .map(|e| {
                let b = encode_entry(&e);
                (e, b)
            })
            .collect();
        {
            let mut mem = lock(&self.shared.mem);
            for (e, b) in &entries {
                mem.insert(e.clone(), b.len());
            }
        }
        self.writer
            .send(WriteOp::Append(entries, callback))
            .await
            .map_err(|_| write_err(LogStoreError::Db("log writer stopped".into())))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.barrier().await.map_err(write_err)?;
        lock(&self.shared.mem).retain(|i| i < log_id.index);
        let this = self.clone();
        this.io
            .run("log store", move || {
                lock(&this.shared.wal).truncate_from(log_id.index)
            })
            .await
            .map_err(|e| write_err(e.into()))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.barrier().await.map_err(write_err)?;
        let this = self.clone();
        this.io
            .run("log store", move || {
                // The purge point is durable before any segment goes, so a
                // crash in between leaves segments the next open removes.
                this.save_durable(|m| m.purged = Some(log_id))?;
                lock(&this.shared.mem).retain(|i| i > log_id.index);
                lock(&this.shared.wal).purge_upto(log_id.index)?;
                Ok::<_, LogStoreError>(())
            })
            .await
            .map_err(write_err)
    }
}
