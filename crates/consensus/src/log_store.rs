//! The Raft log and vote, durable in a redb file (`<data-dir>/member/raft.redb`).
//!
//! Every record is framed as `crc32(payload) ‖ payload` with payload =
//! postcard; the checksum is verified on every read and a mismatch is a
//! storage error that stops the Raft core (a node never serves from a corrupt
//! log). `append` commits with `Durability::Immediate` (fsync) before it
//! reports the entries flushed, which is what lets the leader count this
//! member towards a commit quorum: an acknowledged write is on a quorum's disk.
//!
//! Group commit: `append` only queues entries (they are readable at once,
//! from memory) for a writer thread, which folds every append that queued up
//! while the previous fsync ran into one transaction, then reports them
//! flushed. openraft counts an entry towards the commit quorum only after
//! that report.
//!
//! [`IoMode::Inline`] (the simulator's) runs the writer as a tokio task and
//! every other file operation on the calling task, and
//! [`LogStore::open_backend`] puts the log on any `redb::StorageBackend`
//! (the simulator's disk, which loses unsynced writes on a crash).

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
    Open {
        path: String,
        hint: &'static str,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("raft log: {0}")]
    Db(String),
    #[error("raft log {path} is corrupted: {detail}. This member must not start from it: remove the member with `etcdctl member remove` and re-add it with an empty --data-dir, or restore the file from a backup")]
    CorruptFile { path: String, detail: String },
    #[error("raft log: checksum mismatch in {what}: the file is corrupted; remove this member with `etcdctl member remove` and re-add it with an empty data dir, or restore the file from a backup")]
    Corrupted { what: String },
    #[error("raft log {path}")]
    InFile {
        path: String,
        #[source]
        source: Box<LogStoreError>,
    },
    #[error("raft log: cannot decode {what}: {detail}")]
    Decode { what: String, detail: String },
}

fn db_err(e: impl std::fmt::Display) -> LogStoreError {
    LogStoreError::Db(e.to_string())
}

fn open_error(path: &str, source: redb::DatabaseError) -> LogStoreError {
    let hint = match &source {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => {
            " (the file is corrupted: remove this member with `etcdctl member remove` and re-add it with an empty data dir, or restore the file from a backup)"
        }
        redb::DatabaseError::DatabaseAlreadyOpen => " (another process uses this data dir: stop it first)",
        // Anything else that keeps redb from opening the file means it is
        // damaged (or not a raft log at all).
        _ => " (the file is damaged or not a raft log: remove this member with `etcdctl member remove` and re-add it with an empty data dir, or restore the file from a backup)",
    };
    LogStoreError::Open {
        path: path.to_string(),
        hint,
        source,
    }
}

pub(crate) fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let payload =
        postcard::to_allocvec(value).expect("postcard encoding of an in-memory value cannot fail");
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub(crate) fn unframe<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl Fn() -> String,
) -> Result<T, LogStoreError> {
    if bytes.len() < 4 {
        return Err(LogStoreError::Corrupted { what: what() });
    }
    let (sum, payload) = bytes.split_at(4);
    if u32::from_le_bytes(sum.try_into().expect("4 bytes")) != crc32fast::hash(payload) {
        return Err(LogStoreError::Corrupted { what: what() });
    }
    postcard::from_bytes(payload).map_err(|e| LogStoreError::Decode {
        what: what(),
        detail: e.to_string(),
    })
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
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStoreOptions {
    pub io: IoMode,
    /// Planted bug: commit without fsync (`PlantedBug::AckBeforeFsync`).
    pub unsafe_no_fsync: bool,
}

/// The durable Raft log. Cheap to clone (shares the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    io: IoMode,
    /// Planted bug: commit without fsync (`PlantedBug::AckBeforeFsync`).
    unsafe_no_fsync: bool,
    /// Entries handed to `append` whose transaction has not committed yet:
    /// readable at once, as openraft requires.
    pending: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Entry>>>,
    /// Queue to the group-commit writer thread.
    writer: tokio::sync::mpsc::Sender<WriteOp>,
    /// Set, with the error, once an append failed: the log is not trusted
    /// again and the member must stop (see [`LogStore::write_failure`]).
    failure: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

/// Work for the writer thread.
enum WriteOp {
    Append(Vec<Entry>, LogFlushed<TypeConfig>),
    /// Answered once every append queued before it is on disk.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Page cache of the log file: replication reads recent entries, which stay hot.
pub const LOG_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Appends that may wait for the writer thread before `append` applies
/// back-pressure to the Raft core.
pub const MAX_QUEUED_APPENDS: usize = 1024;
/// Most appends folded into one transaction (one fsync).
pub const MAX_APPENDS_PER_COMMIT: usize = 256;

impl LogStore {
    /// Open or create the log file at `path` (production: [`IoMode::Threads`]).
    ///
    /// Every page checksum is verified (redb's `check_integrity`) and then
    /// every record's; a damaged file is refused with an error naming it,
    /// never a panic (redb panics on some malformed pages: caught here).
    pub fn open(path: &Path, unsafe_no_fsync: bool) -> Result<Self, LogStoreError> {
        let label = path.display().to_string();
        let corrupt = |detail: String| LogStoreError::CorruptFile {
            path: label.clone(),
            detail,
        };
        let opened = mvcc::guard::catch_panics(|| {
            let mut db = redb::Builder::new()
                .set_cache_size(LOG_CACHE_BYTES)
                .create(path)
                .map_err(|source| open_error(&label, source))?;
            match db.check_integrity() {
                Ok(true) => {}
                // A repair rolls the log back to an older commit: entries
                // (or a vote) this member acknowledged may be gone.
                Ok(false) => {
                    return Err(corrupt(
                        "page checksums failed; redb could only repair it by rolling it back, which may lose acknowledged entries or the vote".into(),
                    ))
                }
                Err(e) => return Err(corrupt(format!("integrity check failed: {e}"))),
            }
            Self::from_db(
                db,
                &label,
                LogStoreOptions {
                    io: IoMode::Threads,
                    unsafe_no_fsync,
                },
            )
        });
        match opened {
            Ok(r) => r,
            Err(panic) => Err(corrupt(format!("redb panicked reading it: {panic}"))),
        }
    }

    /// Open or create a log on `backend`; `label` names it in errors.
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        label: &str,
        options: LogStoreOptions,
    ) -> Result<Self, LogStoreError> {
        let db = redb::Builder::new()
            .set_cache_size(LOG_CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|source| open_error(label, source))?;
        Self::from_db(db, label, options)
    }

    fn from_db(db: Database, label: &str, options: LogStoreOptions) -> Result<Self, LogStoreError> {
        let LogStoreOptions {
            io,
            unsafe_no_fsync,
        } = options;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(LOG).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_QUEUED_APPENDS);
        let store = LogStore {
            db: Arc::new(db),
            io,
            unsafe_no_fsync,
            pending: Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new())),
            writer: tx,
            failure: Arc::new(tokio::sync::watch::channel(None).0),
        };
        // Verify every record once at start-up: a corrupted log refuses to
        // start rather than failing later in the middle of replication.
        store.verify_all().map_err(|e| LogStoreError::InFile {
            path: label.to_string(),
            source: Box::new(e),
        })?;
        // The writer holds the file and the pending map, not the queue's
        // sender: when the last LogStore clone is dropped the queue closes,
        // the writer ends and the file is released.
        let w = LogWriter {
            db: store.db.clone(),
            pending: store.pending.clone(),
            unsafe_no_fsync,
            failure: store.failure.clone(),
            label: label.to_string(),
        };
        match io {
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
        let purged: Option<LogId> = self.get_meta::<Option<LogId>>(KEY_PURGED)?.flatten();
        let last = self.last_entry_id()?.or(purged);
        let vote: Option<Vote> = self.get_meta(KEY_VOTE)?;
        Ok(DurableState {
            last_log_id: last,
            has_vote: vote.is_some(),
        })
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

    fn verify_all(&self) -> Result<(), LogStoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let log = txn.open_table(LOG).map_err(db_err)?;
        let mut prev: Option<u64> = None;
        for row in log.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let index = k.value();
            let entry: Entry = unframe(v.value(), || format!("log entry {index}"))?;
            if entry.get_log_id().index != index {
                return Err(LogStoreError::Corrupted {
                    what: format!("log entry {index} holds index {}", entry.get_log_id().index),
                });
            }
            if let Some(p) = prev {
                if p + 1 != index {
                    return Err(LogStoreError::Corrupted {
                        what: format!("gap in log between {p} and {index}"),
                    });
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

    fn put_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), LogStoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        if !durable || self.unsafe_no_fsync {
            // Planted bug: no write of this store is ever made durable.
            txn.set_durability(redb::Durability::None).map_err(db_err)?;
        }
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(key, frame(value).as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
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
        // Pending first: an entry leaves `pending` only after it is in the
        // file, so reading in this order can never miss one.
        let pending: Vec<Entry> = self
            .pending
            .lock()
            .expect("pending poisoned")
            .range(start..end_exclusive)
            .map(|(_, e)| e.clone())
            .collect();
        let mut out = self.read_range_on_disk(start, end_exclusive, max_entries, max_bytes)?;
        if let Some(first_pending) = pending.first().map(|e| e.get_log_id().index) {
            out.retain(|e| e.get_log_id().index < first_pending);
            let next = out
                .last()
                .map(|e| e.get_log_id().index + 1)
                .unwrap_or(start);
            if out.len() < max_entries && (out.is_empty() || next == first_pending) {
                for e in pending {
                    if out.len() >= max_entries {
                        break;
                    }
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    fn read_range_on_disk(
        &self,
        start: u64,
        end_exclusive: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, LogStoreError> {
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

    fn delete_range(
        &self,
        range: impl RangeBounds<u64>,
        purged: Option<LogId>,
    ) -> Result<(), LogStoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        if self.unsafe_no_fsync {
            txn.set_durability(redb::Durability::None).map_err(db_err)?;
        }
        {
            let mut log = txn.open_table(LOG).map_err(db_err)?;
            log.retain_in(range, |_, _| false).map_err(db_err)?;
            if let Some(p) = purged {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert(KEY_PURGED, frame(&Some(p)).as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

/// What the log file holds at start-up (see [`LogStore::durable_state`]).
#[derive(Debug, Clone, Copy)]
pub struct DurableState {
    pub last_log_id: Option<LogId>,
    pub has_vote: bool,
}

/// The group-commit writer thread's state.
struct LogWriter {
    db: Arc<Database>,
    pending: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Entry>>>,
    unsafe_no_fsync: bool,
    failure: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// The file, for error messages.
    label: String,
}

impl LogWriter {
    fn run_on_thread(&self, mut rx: tokio::sync::mpsc::Receiver<WriteOp>) {
        let mut failed: Option<String> = None;
        while let Some(first) = rx.blocking_recv() {
            self.commit_group(first, &mut rx, &mut failed);
        }
    }

    async fn run_as_task(&self, mut rx: tokio::sync::mpsc::Receiver<WriteOp>) {
        let mut failed: Option<String> = None;
        while let Some(first) = rx.recv().await {
            self.commit_group(first, &mut rx, &mut failed);
        }
    }

    /// Group commit: `first` and every append queued behind it (up to
    /// [`MAX_APPENDS_PER_COMMIT`]) go into one transaction; then each
    /// append's callback fires.
    fn commit_group(
        &self,
        first: WriteOp,
        rx: &mut tokio::sync::mpsc::Receiver<WriteOp>,
        failed: &mut Option<String>,
    ) {
        let mut ops = vec![first];
        while ops.len() < MAX_APPENDS_PER_COMMIT {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let entries: Vec<Entry> = ops
            .iter()
            .flat_map(|op| match op {
                WriteOp::Append(e, _) => e.to_vec(),
                WriteOp::Barrier(_) => Vec::new(),
            })
            .collect();
        let result = match &*failed {
            Some(e) => Err(e.clone()),
            None if entries.is_empty() => Ok(()),
            None => {
                append_entries(&self.db, self.unsafe_no_fsync, &entries).map_err(|e| e.to_string())
            }
        };
        if let Err(e) = &result {
            // A log that failed to write is not trusted again: every later
            // append fails too, which stops the Raft core.
            if failed.is_none() {
                tracing::error!("raft log write to {} failed: {e}", self.label);
                let detail = format!("writing the raft log {} failed: {e}", self.label);
                self.failure.send_if_modified(|f| {
                    let first = f.is_none();
                    if first {
                        *f = Some(detail);
                    }
                    first
                });
            }
            *failed = Some(e.clone());
        } else {
            let mut pending = self.pending.lock().expect("pending poisoned");
            for e in &entries {
                let index = e.get_log_id().index;
                // Only drop what is still the same entry (a later append
                // may have replaced it after a truncation).
                if pending.get(&index).map(|p| p.get_log_id()) == Some(e.get_log_id()) {
                    pending.remove(&index);
                }
            }
        }
        for op in ops {
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

/// One transaction appending `entries`, fsynced unless the planted bug says otherwise.
fn append_entries(
    db: &Database,
    unsafe_no_fsync: bool,
    entries: &[Entry],
) -> Result<(), LogStoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    if unsafe_no_fsync {
        txn.set_durability(redb::Durability::None).map_err(db_err)?;
    }
    {
        let mut log = txn.open_table(LOG).map_err(db_err)?;
        for e in entries {
            log.insert(e.get_log_id().index, frame(e).as_slice())
                .map_err(db_err)?;
        }
    }
    // Durability::Immediate is redb's default: commit returns after fsync.
    let started = std::time::Instant::now();
    let r = txn.commit().map_err(db_err);
    WAL_FSYNC.observe(started.elapsed().as_secs_f64());
    r
}

/// Upper bounds of the buckets of [`WAL_FSYNC`], seconds: etcd's
/// `etcd_disk_wal_fsync_duration_seconds` buckets (1 ms doubling, 14).
pub const WAL_FSYNC_BUCKETS_S: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// Durations of the Raft log's durable group commits (the write and its
/// fsync): Phalanx's `etcd_disk_wal_fsync_duration_seconds`. One log per
/// process in a deployment, so one process-wide histogram; the member's
/// metrics registry (etcd-api) registers a handle to it.
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
        let purged: Option<LogId> = self
            .get_meta::<Option<LogId>>(KEY_PURGED)
            .map_err(read_err)?
            .flatten();
        let last_pending = self
            .pending
            .lock()
            .expect("pending poisoned")
            .values()
            .next_back()
            .map(|e| *e.get_log_id());
        let last = last_pending
            .or(self.last_entry_id().map_err(read_err)?)
            .or(purged);
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
            .run("log store", move || this.put_meta(KEY_VOTE, &vote, true))
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
        let vote: Option<Vote> = self
            .get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?;
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
        let this = self.clone();
        this.io
            .run("log store", move || {
                this.put_meta(KEY_COMMITTED, &committed, false)
            })
            .await
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(KEY_COMMITTED)
            .map_err(read_err)?
            .flatten())
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        {
            let mut pending = self.pending.lock().expect("pending poisoned");
            for e in &entries {
                pending.insert(e.get_log_id().index, e.clone());
            }
        }
        self.writer
            .send(WriteOp::Append(entries, callback))
            .await
            .map_err(|_| write_err(LogStoreError::Db("log writer stopped".into())))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.barrier().await.map_err(write_err)?;
        self.pending
            .lock()
            .expect("pending poisoned")
            .retain(|i, _| *i < log_id.index);
        let this = self.clone();
        this.io
            .run("log store", move || this.delete_range(log_id.index.., None))
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.barrier().await.map_err(write_err)?;
        let this = self.clone();
        this.io
            .run("log store", move || {
                this.delete_range(..=log_id.index, Some(log_id))
            })
            .await
            .map_err(write_err)
    }
}
