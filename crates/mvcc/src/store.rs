//! The [`Store`]: apply path (writer) and read paths.

use crate::codec::META_ALARMS;
use crate::codec::{
    decode_i64, render_key, rev_key_bytes, seal, unseal, IndexEntry, RevRecord, FORMAT_MAGIC,
    FORMAT_VERSION, KEY_INDEX, KEY_REV, LEASE, LEASE_KEY, META, META_APPLIED, META_COMPACT,
    META_FORMAT, META_REV, REV,
};
use crate::consts::*;
use crate::error::{db, EtcdError, MvccError};
use crate::layout::*;
use crate::validate::{validate_delete_range, validate_put, validate_range, validate_txn};
use crate::{
    Applied, ApplyResponse, Command, PbAlarmMember, PbAlarmResponse, PbCompactionResponse,
    PbCompare, PbDeleteRequest, PbDeleteResponse, PbEvent, PbKeyValue, PbLeaseGrantResponse,
    PbLeaseRevokeResponse, PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse,
    PbResponseHeader, PbResponseOp, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};
use etcd_client::proto::PbTargetUnion;
use prost::Message;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableHandle, WriteTransaction,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// A lease as stored by the state machine (expiry timing lives in the Raft layer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    pub ttl_seconds: i64,
    /// Attached keys, in byte order.
    pub keys: Vec<Vec<u8>>,
}

/// etcd's MVCC store on a redb file. `Send + Sync`; all methods take `&self`.
pub struct Store {
    pub(crate) db: Db,
    pub(crate) path: PathBuf,
    /// Where an incoming snapshot is spooled before it is verified: a file
    /// next to `path`, or (for a store on a non-file backend) memory.
    pub(crate) spool_in_memory: bool,
    /// Serializes writers (apply_batch, install_snapshot). redb would serialize them too,
    /// but we also need the cached counters below to change only under this lock.
    pub(crate) writer: Mutex<()>,
    /// Cached committed current revision / compact revision (authoritative copy in `meta`).
    pub(crate) rev: AtomicI64,
    pub(crate) compact: AtomicI64,
    /// Told (once) when a read finds corrupted data, so the member stops
    /// instead of answering `DataLoss` forever while reporting healthy.
    pub(crate) corruption_hook: CorruptionHook,
}

/// See [`Store::on_corruption`].
#[derive(Default)]
pub(crate) struct CorruptionHook {
    hook: Mutex<Option<Box<dyn Fn(String) + Send + Sync>>>,
    fired: std::sync::atomic::AtomicBool,
}

/// The database behind a lock that only [`Store::defragment`] takes
/// exclusively: redb's `compact` needs `&mut Database` and no transaction
/// open, everything else begins its transactions under a shared lock.
pub(crate) struct Db {
    inner: std::sync::RwLock<Database>,
}

impl Db {
    fn new(db: Database) -> Self {
        Db {
            inner: std::sync::RwLock::new(db),
        }
    }
    fn shared(&self) -> std::sync::RwLockReadGuard<'_, Database> {
        // A panic while holding the lock already stops the member (the
        // binary's panic hook); the database itself stays consistent.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        self.shared().begin_read()
    }
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, redb::TransactionError> {
        self.shared().begin_write()
    }
}

/// How long [`Store::defragment`] waits for open read transactions (a
/// snapshot being streamed, a long range) to end before giving up.
pub const DEFRAG_WAIT_FOR_READERS_MS: u64 = 10_000;

/// What [`Store::defragment`] did.
#[derive(Debug, Clone, Copy)]
pub struct DefragReport {
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
}

/// Size figures of the store (etcd's `dbSize` and `dbSizeInUse`).
#[derive(Debug, Clone, Copy)]
pub struct DbSize {
    /// Length of the file.
    pub file_bytes: u64,
    /// Bytes of the pages holding live data (the rest is free space that
    /// a defragmentation returns to the file system).
    pub in_use_bytes: u64,
}

// ---------------------------------------------------------------------------------------
// Generic read helpers: work on both write-transaction tables and read-only tables.
// ---------------------------------------------------------------------------------------

pub(crate) trait RevT: ReadableTable<(i64, i64), &'static [u8]> {}
impl<T: ReadableTable<(i64, i64), &'static [u8]>> RevT for T {}
pub(crate) trait IndexT: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> IndexT for T {}
pub(crate) trait KeyRevT: ReadableTable<(&'static [u8], i64, i64), &'static [u8]> {}
impl<T: ReadableTable<(&'static [u8], i64, i64), &'static [u8]>> KeyRevT for T {}
pub(crate) trait MetaT: ReadableTable<&'static str, &'static [u8]> {}
impl<T: ReadableTable<&'static str, &'static [u8]>> MetaT for T {}
pub(crate) trait LeaseT: ReadableTable<i64, &'static [u8]> {}
impl<T: ReadableTable<i64, &'static [u8]>> LeaseT for T {}
pub(crate) trait LeaseKeyT: ReadableTable<(i64, &'static [u8]), &'static [u8]> {}
impl<T: ReadableTable<(i64, &'static [u8]), &'static [u8]>> LeaseKeyT for T {}

pub(crate) fn get_meta(t: &impl MetaT, name: &str) -> Result<Option<Vec<u8>>, MvccError> {
    match t.get(name).map_err(db("read meta"))? {
        None => Ok(None),
        Some(g) => Ok(Some(
            unseal(META_TABLE, &[name.as_bytes()], g.value())?.to_vec(),
        )),
    }
}

/// etcd `AlarmRequest.AlarmAction` values.
const ALARM_ACTIVATE: i32 = 1;
const ALARM_DEACTIVATE: i32 = 2;

fn decode_alarms(bytes: Option<&[u8]>) -> Result<Vec<(u64, i32)>, MvccError> {
    match bytes {
        None => Ok(Vec::new()),
        Some(b) => postcard::from_bytes(b).map_err(|e| MvccError::Decode {
            what: "alarms",
            detail: e.to_string(),
        }),
    }
}

/// Page cache of the store file. redb's default (1 GiB) made a member with
/// 1M keys hold ~1.3 GiB resident; hot pages fit comfortably in this.
pub const STORE_CACHE_BYTES: usize = 256 * 1024 * 1024;

fn get_meta_i64(t: &impl MetaT, name: &'static str) -> Result<i64, MvccError> {
    let v = get_meta(t, name)?.ok_or_else(|| MvccError::Decode {
        what: "meta",
        detail: format!("missing `{name}` entry"),
    })?;
    decode_i64("meta counter", &v)
}

pub(crate) fn get_rev(t: &impl RevT, main: i64, sub: i64) -> Result<Option<RevRecord>, MvccError> {
    match t.get((main, sub)).map_err(db("read rev"))? {
        None => Ok(None),
        Some(g) => {
            let kb = rev_key_bytes(main, sub);
            let p = unseal(REV_TABLE, &[&kb], g.value())?;
            Ok(Some(RevRecord::decode_payload(p)?))
        }
    }
}

pub(crate) fn get_index(t: &impl IndexT, key: &[u8]) -> Result<Option<IndexEntry>, MvccError> {
    match t.get(key).map_err(db("read key_index"))? {
        None => Ok(None),
        Some(g) => Ok(Some(IndexEntry::decode(unseal(
            KEY_INDEX_TABLE,
            &[key],
            g.value(),
        )?)?)),
    }
}

/// The live KeyValue stored at (main, sub) for `key`. Cross-checks that the record exists,
/// is a put, belongs to `key` and carries the right mod_revision — any mismatch means the
/// indexes and the history disagree, which we treat as corruption.
fn kv_at(t: &impl RevT, key: &[u8], main: i64, sub: i64) -> Result<PbKeyValue, MvccError> {
    match get_rev(t, main, sub)? {
        Some(RevRecord::Put(kv)) if kv.key == key && kv.mod_revision == main => Ok(kv),
        _ => Err(MvccError::Corrupted {
            table: REV_TABLE,
            key: format!(
                "({main}, {sub}) (expected a put of {} referenced by the key index)",
                render_key(&[key])
            ),
        }),
    }
}

fn decode_key_rev_flag(key: &[u8], main: i64, sub: i64, v: &[u8]) -> Result<bool, MvccError> {
    let p = unseal(KEY_REV_TABLE, &[key, &rev_key_bytes(main, sub)], v)?;
    match p {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(MvccError::Decode {
            what: "key_rev flag",
            detail: format!("{p:?}"),
        }),
    }
}

/// Newest history entry of `key` with main revision <= `at`: (main, sub, is_tombstone).
fn key_rev_last_le(
    t: &impl KeyRevT,
    key: &[u8],
    at: i64,
) -> Result<Option<(i64, i64, bool)>, MvccError> {
    let mut it = t
        .range((key, i64::MIN, i64::MIN)..=(key, at, i64::MAX))
        .map_err(db("scan key_rev"))?;
    match it.next_back() {
        None => Ok(None),
        Some(r) => {
            let (k, v) = r.map_err(db("scan key_rev"))?;
            let (_, m, s) = k.value();
            let tomb = decode_key_rev_flag(key, m, s, v.value())?;
            Ok(Some((m, s, tomb)))
        }
    }
}

/// Newest history entry of `key` strictly before (main, sub).
fn key_rev_prev(
    t: &impl KeyRevT,
    key: &[u8],
    main: i64,
    sub: i64,
) -> Result<Option<(i64, i64, bool)>, MvccError> {
    let mut it = t
        .range((key, i64::MIN, i64::MIN)..(key, main, sub))
        .map_err(db("scan key_rev"))?;
    match it.next_back() {
        None => Ok(None),
        Some(r) => {
            let (k, v) = r.map_err(db("scan key_rev"))?;
            let (_, m, s) = k.value();
            let tomb = decode_key_rev_flag(key, m, s, v.value())?;
            Ok(Some((m, s, tomb)))
        }
    }
}

/// etcd range_end rules: empty = the single key; "\0" = every key >= key; else [key, end).
pub(crate) fn key_in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

/// Visit key_index entries for keys in the etcd range, in key order.
fn scan_index(
    t: &impl IndexT,
    key: &[u8],
    end: &[u8],
    mut f: impl FnMut(&[u8], IndexEntry) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    if end.is_empty() {
        if let Some(e) = get_index(t, key)? {
            f(key, e)?;
        }
        return Ok(());
    }
    let iter = if end == [0] {
        t.range::<&[u8]>(key..)
    } else {
        if key >= end {
            return Ok(());
        }
        t.range::<&[u8]>(key..end)
    }
    .map_err(db("scan key_index"))?;
    for item in iter {
        let (k, v) = item.map_err(db("scan key_index"))?;
        let k = k.value();
        let e = IndexEntry::decode(unseal(KEY_INDEX_TABLE, &[k], v.value())?)?;
        f(k, e)?;
    }
    Ok(())
}

/// Raw MVCC range (etcd `rangeKeys`): the KeyValues visible at revision `at`.
/// Returns (kvs, count) where count is the number of matching keys regardless of `limit`
/// (0 = unlimited); with `count_only` no values are read.
#[allow(clippy::too_many_arguments)]
fn range_keys(
    index: &impl IndexT,
    revt: &impl RevT,
    key_rev: &impl KeyRevT,
    key: &[u8],
    end: &[u8],
    at: i64,
    limit: usize,
    count_only: bool,
) -> Result<(Vec<PbKeyValue>, i64), MvccError> {
    let mut kvs = Vec::new();
    let mut count: i64 = 0;
    scan_index(index, key, end, |k, e| {
        // Fast path: the latest state is the state at `at`.
        let found = if e.mod_main <= at {
            (!e.tombstone).then_some((e.mod_main, e.mod_sub))
        } else {
            match key_rev_last_le(key_rev, k, at)? {
                Some((m, s, false)) => Some((m, s)),
                _ => None,
            }
        };
        if let Some((m, s)) = found {
            count += 1;
            if !count_only && (limit == 0 || kvs.len() < limit) {
                let kv = kv_at(revt, k, m, s)?;
                debug_assert!(kv.mod_revision <= at && kv.create_revision <= kv.mod_revision);
                debug_assert!(kv.version >= 1);
                kvs.push(kv);
            }
        }
        Ok(())
    })?;
    Ok((kvs, count))
}

/// etcd's Range request (applier `Range`) over a view whose current revision is `cur`.
fn range_request(
    index: &impl IndexT,
    revt: &impl RevT,
    key_rev: &impl KeyRevT,
    r: &PbRangeRequest,
    cur: i64,
    compact: i64,
) -> Result<Result<PbRangeResponse, EtcdError>, MvccError> {
    let mut rev = r.revision;
    if rev > cur {
        return Ok(Err(EtcdError::FutureRevision));
    }
    if rev <= 0 {
        rev = cur;
    }
    if rev < compact {
        return Ok(Err(EtcdError::Compacted));
    }
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Sorting and filtering need everything; otherwise fetch one extra for `more`.
    let mut limit = r.limit;
    if r.sort_order != SORT_NONE || filtered {
        limit = 0;
    }
    if limit > 0 {
        limit += 1;
    }
    let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
    let (mut kvs, count) = range_keys(
        index,
        revt,
        key_rev,
        &r.key,
        &r.range_end,
        rev,
        limit,
        r.count_only,
    )?;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let mut order = r.sort_order;
    if r.sort_target != SORT_TARGET_KEY && order == SORT_NONE {
        order = SORT_ASCEND; // etcd: non-key targets default to ascending
    } else if r.sort_target == SORT_TARGET_KEY && order == SORT_ASCEND {
        order = SORT_NONE; // already key-ascending
    }
    if order == SORT_ASCEND || order == SORT_DESCEND {
        let cmp = |a: &PbKeyValue, b: &PbKeyValue| match r.sort_target {
            SORT_TARGET_VERSION => a.version.cmp(&b.version),
            SORT_TARGET_CREATE => a.create_revision.cmp(&b.create_revision),
            SORT_TARGET_MOD => a.mod_revision.cmp(&b.mod_revision),
            SORT_TARGET_VALUE => a.value.cmp(&b.value),
            _ => a.key.cmp(&b.key),
        };
        if order == SORT_ASCEND {
            kvs.sort_by(cmp);
        } else {
            kvs.sort_by(|a, b| cmp(b, a));
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(Ok(PbRangeResponse {
        header: Some(PbResponseHeader {
            revision: cur,
            ..Default::default()
        }),
        kvs,
        more,
        count,
    }))
}

/// etcd `compareKV`.
fn compare_kv(c: &PbCompare, kv: &PbKeyValue) -> bool {
    use std::cmp::Ordering as O;
    let result = match c.target {
        TARGET_VALUE => {
            let v: &[u8] = match &c.target_union {
                Some(PbTargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        TARGET_CREATE => {
            let v = match c.target_union {
                Some(PbTargetUnion::CreateRevision(v)) => v,
                _ => 0,
            };
            kv.create_revision.cmp(&v)
        }
        TARGET_MOD => {
            let v = match c.target_union {
                Some(PbTargetUnion::ModRevision(v)) => v,
                _ => 0,
            };
            kv.mod_revision.cmp(&v)
        }
        TARGET_VERSION => {
            let v = match c.target_union {
                Some(PbTargetUnion::Version(v)) => v,
                _ => 0,
            };
            kv.version.cmp(&v)
        }
        TARGET_LEASE => {
            let v = match c.target_union {
                Some(PbTargetUnion::Lease(v)) => v,
                _ => 0,
            };
            kv.lease.cmp(&v)
        }
        _ => O::Equal,
    };
    match c.result {
        CMP_EQUAL => result == O::Equal,
        CMP_NOT_EQUAL => result != O::Equal,
        CMP_GREATER => result == O::Greater,
        CMP_LESS => result == O::Less,
        _ => true,
    }
}

fn header(rev: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------

/// Internal failure of one command: a deterministic etcd error (no state changed) or a
/// fatal storage error (the whole batch is abandoned).
enum Fail {
    Etcd(EtcdError),
    Fatal(MvccError),
}
impl From<MvccError> for Fail {
    fn from(e: MvccError) -> Self {
        Fail::Fatal(e)
    }
}
impl From<EtcdError> for Fail {
    fn from(e: EtcdError) -> Self {
        Fail::Etcd(e)
    }
}

/// Changes of the write request being applied: all share main revision `main`.
struct Pending {
    main: i64,
    sub: i64,
    events: Vec<PbEvent>,
}

impl Pending {
    fn new(cur: i64) -> Self {
        Pending {
            main: cur + 1,
            sub: 0,
            events: Vec::new(),
        }
    }
    /// Revision reads inside this request observe (etcd: beginRev, +1 once anything changed).
    fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }
}

/// Chosen branch of a txn and of each nested txn inside it, decided up front on the
/// pre-txn state (etcd `compareToPath`).
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

pub(crate) struct Writer<'t> {
    pub(crate) meta: Table<'t, &'static str, &'static [u8]>,
    pub(crate) rev: Table<'t, (i64, i64), &'static [u8]>,
    pub(crate) index: Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) key_rev: Table<'t, (&'static [u8], i64, i64), &'static [u8]>,
    pub(crate) lease: Table<'t, i64, &'static [u8]>,
    pub(crate) lease_key: Table<'t, (i64, &'static [u8]), &'static [u8]>,
    cur_rev: i64,
    compact: i64,
}

impl<'t> Writer<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Self, MvccError> {
        let meta = txn.open_table(META).map_err(db("open meta"))?;
        let cur_rev = get_meta_i64(&meta, META_REV)?;
        let compact = get_meta_i64(&meta, META_COMPACT)?;
        Ok(Writer {
            meta,
            rev: txn.open_table(REV).map_err(db("open rev"))?,
            index: txn.open_table(KEY_INDEX).map_err(db("open key_index"))?,
            key_rev: txn.open_table(KEY_REV).map_err(db("open key_rev"))?,
            lease: txn.open_table(LEASE).map_err(db("open lease"))?,
            lease_key: txn.open_table(LEASE_KEY).map_err(db("open lease_key"))?,
            cur_rev,
            compact,
        })
    }

    pub(crate) fn put_meta(&mut self, name: &str, payload: &[u8]) -> Result<(), MvccError> {
        self.meta
            .insert(name, seal(&[name.as_bytes()], payload).as_slice())
            .map_err(db("write meta"))?;
        Ok(())
    }

    fn lease_exists(&self, id: i64) -> Result<bool, MvccError> {
        Ok(get_lease_ttl(&self.lease, id)?.is_some())
    }

    fn write_record(
        &mut self,
        key: &[u8],
        main: i64,
        sub: i64,
        rec: &[u8],
        tomb: bool,
        entry: &IndexEntry,
    ) -> Result<(), MvccError> {
        let rk = rev_key_bytes(main, sub);
        let prev = self
            .rev
            .insert((main, sub), seal(&[&rk], rec).as_slice())
            .map_err(db("write rev"))?;
        assert!(prev.is_none(), "revision ({main}, {sub}) written twice");
        drop(prev);
        self.key_rev
            .insert(
                (key, main, sub),
                seal(&[key, &rk], &[tomb as u8]).as_slice(),
            )
            .map_err(db("write key_rev"))?;
        self.index
            .insert(key, seal(&[key], &entry.encode()).as_slice())
            .map_err(db("write key_index"))?;
        Ok(())
    }

    /// etcd `storeTxnWrite.put`. Returns the previous live KeyValue, if any.
    fn put(
        &mut self,
        p: &mut Pending,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Option<PbKeyValue>, MvccError> {
        let (main, sub) = (p.main, p.sub);
        let old = get_index(&self.index, key)?;
        let (mut create, mut version, mut old_lease, mut prev) = (main, 1, 0, None);
        if let Some(e) = old {
            assert!(
                (e.mod_main, e.mod_sub) < (main, sub),
                "revision must grow: key {:?}",
                render_key(&[key])
            );
            if !e.tombstone {
                create = e.create;
                version = e.version + 1;
                old_lease = e.lease;
                prev = Some(kv_at(&self.rev, key, e.mod_main, e.mod_sub)?);
            }
        }
        let kv = PbKeyValue {
            key: key.to_vec(),
            create_revision: create,
            mod_revision: main,
            version,
            value,
            lease,
        };
        let rec = RevRecord::encode_put_payload(&kv);
        let entry = IndexEntry {
            create,
            mod_main: main,
            mod_sub: sub,
            version,
            lease,
            tombstone: false,
        };
        self.write_record(key, main, sub, &rec, false, &entry)?;
        if old_lease != 0 && old_lease != lease {
            self.lease_key
                .remove((old_lease, key))
                .map_err(db("detach lease"))?;
        }
        if lease != 0 {
            debug_assert!(self.lease_exists(lease)?, "attach to missing lease {lease}");
            self.lease_key
                .insert(
                    (lease, key),
                    seal(&[&lease.to_be_bytes(), key], &[]).as_slice(),
                )
                .map_err(db("attach lease"))?;
        }
        p.events.push(PbEvent {
            r#type: EVENT_PUT,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        p.sub += 1;
        Ok(prev)
    }

    /// etcd `storeTxnWrite.delete` of one live key. Returns its previous KeyValue.
    fn delete_key(
        &mut self,
        p: &mut Pending,
        key: &[u8],
        e: IndexEntry,
    ) -> Result<PbKeyValue, MvccError> {
        assert!(!e.tombstone);
        let (main, sub) = (p.main, p.sub);
        assert!((e.mod_main, e.mod_sub) < (main, sub), "revision must grow");
        let prev = kv_at(&self.rev, key, e.mod_main, e.mod_sub)?;
        let rec = RevRecord::encode_tombstone_payload(key);
        let entry = IndexEntry {
            create: 0,
            mod_main: main,
            mod_sub: sub,
            version: 0,
            lease: 0,
            tombstone: true,
        };
        self.write_record(key, main, sub, &rec, true, &entry)?;
        if e.lease != 0 {
            self.lease_key
                .remove((e.lease, key))
                .map_err(db("detach lease"))?;
        }
        let kv = PbKeyValue {
            key: key.to_vec(),
            mod_revision: main,
            ..Default::default()
        };
        p.events.push(PbEvent {
            r#type: EVENT_DELETE,
            kv: Some(kv),
            prev_kv: Some(prev.clone()),
        });
        p.sub += 1;
        Ok(prev)
    }

    /// etcd `deleteRange`: delete every live key in the range, in key order.
    fn delete_range(
        &mut self,
        p: &mut Pending,
        key: &[u8],
        end: &[u8],
    ) -> Result<Vec<PbKeyValue>, MvccError> {
        let mut live = Vec::new();
        scan_index(&self.index, key, end, |k, e| {
            if !e.tombstone {
                live.push((k.to_vec(), e));
            }
            Ok(())
        })?;
        let mut prevs = Vec::with_capacity(live.len());
        for (k, e) in live {
            prevs.push(self.delete_key(p, &k, e)?);
        }
        Ok(prevs)
    }

    fn range(
        &self,
        r: &PbRangeRequest,
        cur: i64,
    ) -> Result<Result<PbRangeResponse, EtcdError>, MvccError> {
        range_request(&self.index, &self.rev, &self.key_rev, r, cur, self.compact)
    }

    // ----- checks (pre-state, no mutation) -----

    /// etcd `checkRequestPut` on the pre-request state.
    fn check_put(&self, r: &PbPutRequest) -> Result<(), Fail> {
        if r.lease != 0 && !self.lease_exists(r.lease)? {
            return Err(EtcdError::LeaseNotFound.into());
        }
        if r.ignore_value || r.ignore_lease {
            match get_index(&self.index, &r.key)? {
                Some(e) if !e.tombstone => {}
                _ => return Err(EtcdError::KeyNotFound.into()),
            }
        }
        Ok(())
    }

    /// etcd `checkRequestRange` (a txn's embedded range; revision 0 is always fine).
    fn check_range_rev(&self, r: &PbRangeRequest) -> Result<(), Fail> {
        if r.revision == 0 {
            return Ok(());
        }
        if r.revision > self.cur_rev {
            return Err(EtcdError::FutureRevision.into());
        }
        if r.revision < self.compact {
            return Err(EtcdError::Compacted.into());
        }
        Ok(())
    }

    fn compares_hold(&self, cmps: &[PbCompare]) -> Result<bool, MvccError> {
        for c in cmps {
            let (kvs, _) = range_keys(
                &self.index,
                &self.rev,
                &self.key_rev,
                &c.key,
                &c.range_end,
                self.cur_rev,
                0,
                false,
            )?;
            let ok = if kvs.is_empty() {
                // etcd: comparing a value of a missing key always fails (no way to express
                // "missing" in grpc); other targets compare against a zero KeyValue.
                c.target != TARGET_VALUE && compare_kv(c, &PbKeyValue::default())
            } else {
                kvs.iter().all(|kv| compare_kv(c, kv))
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn compute_path(&self, t: &PbTxnRequest) -> Result<TxnPath, MvccError> {
        let succeeded = self.compares_hold(&t.compare)?;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut nested = Vec::new();
        for op in ops {
            if let Some(PbTxnOpRequest::RequestTxn(n)) = &op.request {
                nested.push(self.compute_path(n)?);
            }
        }
        Ok(TxnPath { succeeded, nested })
    }

    /// etcd `checkTxn` along the chosen path, plus one guard etcd lacks: a put with
    /// ignore_value/ignore_lease after a delete covering its key in the same txn (only
    /// possible with a "\0" range_end, which etcd's overlap check does not catch, and which
    /// makes etcd panic during apply) is rejected up front with KeyNotFound.
    fn check_txn(
        &self,
        t: &PbTxnRequest,
        path: &TxnPath,
        dels: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), Fail> {
        let ops = if path.succeeded {
            &t.success
        } else {
            &t.failure
        };
        let mut nested = path.nested.iter();
        for op in ops {
            match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => self.check_range_rev(r)?,
                Some(PbTxnOpRequest::RequestPut(r)) => {
                    self.check_put(r)?;
                    if (r.ignore_value || r.ignore_lease)
                        && dels.iter().any(|(k, e)| key_in_range(&r.key, k, e))
                    {
                        return Err(EtcdError::KeyNotFound.into());
                    }
                }
                Some(PbTxnOpRequest::RequestDeleteRange(r)) => {
                    dels.push((r.key.clone(), r.range_end.clone()))
                }
                Some(PbTxnOpRequest::RequestTxn(n)) => {
                    self.check_txn(n, nested.next().expect("path matches txn"), dels)?
                }
                None => return Err(EtcdError::KeyNotFound.into()),
            }
        }
        Ok(())
    }

    // ----- execution (checks already passed; only fatal errors possible) -----

    fn exec_put(&mut self, p: &mut Pending, r: &PbPutRequest) -> Result<PbPutResponse, MvccError> {
        let (mut value, mut lease) = (r.value.clone(), r.lease);
        if r.ignore_value || r.ignore_lease {
            let e = get_index(&self.index, &r.key)?
                .filter(|e| !e.tombstone)
                .expect("checked: ignore_value/ignore_lease key exists");
            if r.ignore_value {
                value = kv_at(&self.rev, &r.key, e.mod_main, e.mod_sub)?.value;
            }
            if r.ignore_lease {
                lease = e.lease;
            }
        }
        let prev = self.put(p, &r.key, value, lease)?;
        Ok(PbPutResponse {
            header: header(p.main),
            prev_kv: if r.prev_kv { prev } else { None },
        })
    }

    fn exec_delete(
        &mut self,
        p: &mut Pending,
        r: &PbDeleteRequest,
    ) -> Result<PbDeleteResponse, MvccError> {
        let prevs = self.delete_range(p, &r.key, &r.range_end)?;
        Ok(PbDeleteResponse {
            header: header(p.read_rev()),
            deleted: prevs.len() as i64,
            prev_kvs: if r.prev_kv { prevs } else { Vec::new() },
        })
    }

    fn exec_txn(
        &mut self,
        p: &mut Pending,
        t: &PbTxnRequest,
        path: &TxnPath,
    ) -> Result<PbTxnResponse, MvccError> {
        let ops = if path.succeeded {
            &t.success
        } else {
            &t.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match op.request.as_ref().expect("checked: no empty ops") {
                PbTxnOpRequest::RequestRange(r) => {
                    let resp = self
                        .range(r, p.read_rev())?
                        .unwrap_or_else(|e| panic!("txn range passed its checks but failed: {e}"));
                    PbTxnOpResponse::ResponseRange(resp)
                }
                PbTxnOpRequest::RequestPut(r) => PbTxnOpResponse::ResponsePut(self.exec_put(p, r)?),
                PbTxnOpRequest::RequestDeleteRange(r) => {
                    PbTxnOpResponse::ResponseDeleteRange(self.exec_delete(p, r)?)
                }
                PbTxnOpRequest::RequestTxn(n) => {
                    let np = nested.next().expect("path matches txn");
                    let mut resp = self.exec_txn(p, n, np)?;
                    // etcd leaves nested txn headers empty.
                    resp.header = Some(PbResponseHeader::default());
                    PbTxnOpResponse::ResponseTxn(resp)
                }
            };
            responses.push(PbResponseOp {
                response: Some(resp),
            });
        }
        Ok(PbTxnResponse {
            header: None,
            succeeded: path.succeeded,
            responses,
        })
    }

    // ----- commands -----

    fn finish(&mut self, p: &Pending) {
        if p.sub > 0 {
            assert_eq!(
                p.main,
                self.cur_rev + 1,
                "a write request bumps the revision by one"
            );
            self.cur_rev = p.main;
        } else {
            assert!(p.events.is_empty());
        }
    }

    fn apply(&mut self, cmd: &Command) -> Result<Applied, MvccError> {
        let mut p = Pending::new(self.cur_rev);
        let res = self.apply_inner(cmd, &mut p);
        let response = match res {
            Ok(r) => r,
            Err(Fail::Fatal(e)) => return Err(e),
            Err(Fail::Etcd(e)) => {
                // Every check happens before the first mutation; an etcd error must not
                // leave partial changes behind.
                assert!(
                    p.sub == 0 && p.events.is_empty(),
                    "etcd error after mutation began"
                );
                ApplyResponse::Error(e)
            }
        };
        self.finish(&p);
        Ok(Applied {
            response,
            revision: self.cur_rev,
            events: p.events,
        })
    }

    fn apply_inner(&mut self, cmd: &Command, p: &mut Pending) -> Result<ApplyResponse, Fail> {
        fn dec<M: Message + Default>(what: &'static str, b: &[u8]) -> Result<M, MvccError> {
            M::decode(b).map_err(|e| MvccError::Decode {
                what,
                detail: e.to_string(),
            })
        }
        match cmd {
            Command::Put(b) => {
                let r: PbPutRequest = dec("PutRequest", b)?;
                validate_put(&r)?;
                self.check_put(&r)?;
                let resp = self.exec_put(p, &r)?;
                Ok(ApplyResponse::Put(resp))
            }
            Command::DeleteRange(b) => {
                let r: PbDeleteRequest = dec("DeleteRangeRequest", b)?;
                validate_delete_range(&r)?;
                let resp = self.exec_delete(p, &r)?;
                Ok(ApplyResponse::DeleteRange(resp))
            }
            Command::Txn(b) => {
                let r: PbTxnRequest = dec("TxnRequest", b)?;
                // Structural checks again (the op limit is the proposer's business).
                validate_txn(&r, usize::MAX / 2)?;
                let path = self.compute_path(&r)?;
                self.check_txn(&r, &path, &mut Vec::new())?;
                let mut resp = self.exec_txn(p, &r, &path)?;
                resp.header = header(p.read_rev());
                Ok(ApplyResponse::Txn(resp))
            }
            Command::Compact { revision } => {
                let rev = *revision;
                if rev <= self.compact {
                    return Err(EtcdError::Compacted.into());
                }
                if rev > self.cur_rev {
                    return Err(EtcdError::FutureRevision.into());
                }
                self.compact_to(rev)?;
                Ok(ApplyResponse::Compact(PbCompactionResponse {
                    header: header(self.cur_rev),
                }))
            }
            Command::LeaseGrant { id, ttl_seconds } => {
                let (id, ttl) = (*id, *ttl_seconds);
                if id == 0 {
                    return Err(EtcdError::LeaseNotFound.into());
                }
                if ttl > MAX_LEASE_TTL {
                    return Err(EtcdError::TtlTooLarge.into());
                }
                if self.lease_exists(id)? {
                    return Err(EtcdError::LeaseExists.into());
                }
                self.lease
                    .insert(
                        id,
                        seal(&[&id.to_be_bytes()], &ttl.to_le_bytes()).as_slice(),
                    )
                    .map_err(db("write lease"))?;
                Ok(ApplyResponse::LeaseGrant(PbLeaseGrantResponse {
                    header: header(self.cur_rev),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            Command::LeaseRevoke { id } => {
                let id = *id;
                if !self.lease_exists(id)? {
                    return Err(EtcdError::LeaseNotFound.into());
                }
                let keys = lease_keys(&self.lease_key, id)?;
                // etcd deletes the attached keys in one write txn, in sorted key order.
                for k in &keys {
                    match get_index(&self.index, k)? {
                        Some(e) if !e.tombstone && e.lease == id => {
                            self.delete_key(p, k, e)?;
                        }
                        _ => {
                            return Err(MvccError::Corrupted {
                                table: LEASE_KEY_TABLE,
                                key: format!(
                                    "({id}, {}) (attached key is not live on this lease)",
                                    render_key(&[k])
                                ),
                            }
                            .into())
                        }
                    }
                }
                for k in &keys {
                    // delete_key already detached them; make sure nothing is left behind.
                    self.lease_key
                        .remove((id, k.as_slice()))
                        .map_err(db("detach lease"))?;
                }
                self.lease.remove(id).map_err(db("remove lease"))?;
                Ok(ApplyResponse::LeaseRevoke(PbLeaseRevokeResponse {
                    header: header(p.read_rev()),
                }))
            }
            // The state machine flattens batches into their commands before
            // applying; a batch here is a nested one, which no proposer
            // writes. Fatal, and the same on every member.
            Command::Batch(_) => Err(Fail::Fatal(MvccError::Decode {
                what: "Command",
                detail: "a batch nested inside a batch".into(),
            })),
            Command::Alarm {
                action,
                member_id,
                alarm,
            } => {
                let mut alarms = decode_alarms(get_meta(&self.meta, META_ALARMS)?.as_deref())?;
                match *action {
                    ALARM_ACTIVATE if *alarm != 0 => {
                        if !alarms.contains(&(*member_id, *alarm)) {
                            alarms.push((*member_id, *alarm));
                            alarms.sort_unstable();
                        }
                    }
                    ALARM_DEACTIVATE => alarms.retain(|(m, a)| {
                        !((*alarm == 0 || *a == *alarm) && (*member_id == 0 || *m == *member_id))
                    }),
                    _ => {}
                }
                let bytes = postcard::to_allocvec(&alarms).expect("encoding alarms cannot fail");
                self.put_meta(META_ALARMS, &bytes)?;
                Ok(ApplyResponse::Alarm(PbAlarmResponse {
                    header: header(self.cur_rev),
                    alarms: alarms
                        .iter()
                        .map(|(m, a)| PbAlarmMember {
                            member_id: *m,
                            alarm: *a,
                        })
                        .collect(),
                }))
            }
        }
    }

    /// Physical compaction at `at`: for every key keep its newest revision <= `at` unless it
    /// is a tombstone, plus everything after `at`. Only keys with history in
    /// (previous compact, at] can have droppable revisions, so we visit just those.
    fn compact_to(&mut self, at: i64) -> Result<(), MvccError> {
        let lo = self.compact.max(0) + if self.compact >= 0 { 1 } else { 0 };
        let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
        for item in self
            .rev
            .range((lo, i64::MIN)..=(at, i64::MAX))
            .map_err(db("scan rev"))?
        {
            let (k, v) = item.map_err(db("scan rev"))?;
            let (m, s) = k.value();
            let rec =
                RevRecord::decode_payload(unseal(REV_TABLE, &[&rev_key_bytes(m, s)], v.value())?)?;
            keys.insert(rec.key().to_vec());
        }
        for key in keys {
            let mut revs: Vec<(i64, i64, bool)> = Vec::new();
            for item in self
                .key_rev
                .range((key.as_slice(), i64::MIN, i64::MIN)..=(key.as_slice(), at, i64::MAX))
                .map_err(db("scan key_rev"))?
            {
                let (k, v) = item.map_err(db("scan key_rev"))?;
                let (_, m, s) = k.value();
                revs.push((m, s, decode_key_rev_flag(&key, m, s, v.value())?));
            }
            let Some(&(_, _, last_tomb)) = revs.last() else {
                continue;
            };
            let drop_n = if last_tomb {
                revs.len()
            } else {
                revs.len() - 1
            };
            for &(m, s, _) in &revs[..drop_n] {
                self.rev.remove((m, s)).map_err(db("compact rev"))?;
                self.key_rev
                    .remove((key.as_slice(), m, s))
                    .map_err(db("compact key_rev"))?;
            }
            if last_tomb {
                let later = key_rev_last_le(&self.key_rev, &key, i64::MAX)?;
                if later.is_none() {
                    let e =
                        get_index(&self.index, &key)?.expect("compacted key has an index entry");
                    assert!(
                        e.tombstone && e.mod_main <= at,
                        "only a tombstoned key leaves the index"
                    );
                    self.index
                        .remove(key.as_slice())
                        .map_err(db("compact key_index"))?;
                }
            }
        }
        self.compact = at;
        Ok(())
    }
}

pub(crate) fn get_lease_ttl(t: &impl LeaseT, id: i64) -> Result<Option<i64>, MvccError> {
    match t.get(id).map_err(db("read lease"))? {
        None => Ok(None),
        Some(g) => Ok(Some(decode_i64(
            "lease ttl",
            unseal(LEASE_TABLE, &[&id.to_be_bytes()], g.value())?,
        )?)),
    }
}

pub(crate) fn lease_keys(t: &impl LeaseKeyT, id: i64) -> Result<Vec<Vec<u8>>, MvccError> {
    let mut out = Vec::new();
    let empty: &[u8] = &[];
    for item in t.range((id, empty)..).map_err(db("scan lease_key"))? {
        let (k, v) = item.map_err(db("scan lease_key"))?;
        let (lid, key) = k.value();
        if lid != id {
            break;
        }
        unseal(LEASE_KEY_TABLE, &[&id.to_be_bytes(), key], v.value())?;
        out.push(key.to_vec());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------

impl Store {
    /// Open or create `path` (a redb file). Refuses files that are not Phalanx mvcc stores or
    /// whose metadata fails checksum verification.
    ///
    /// Every page checksum is verified first (redb's `check_integrity`),
    /// then every record's own checksum ([`Store::verify_all`]); a damaged
    /// file is refused with [`MvccError::CorruptFile`] naming it, never a
    /// panic: redb panics on some malformed pages, and those panics are
    /// caught here and reported the same way.
    pub fn open(path: &Path) -> Result<Store, MvccError> {
        let corrupt = |detail: String| MvccError::CorruptFile {
            path: path.to_path_buf(),
            detail,
        };
        let opened = crate::guard::catch_panics(|| {
            let mut db_ = redb::Builder::new()
                .set_cache_size(STORE_CACHE_BYTES)
                .create(path)
                .map_err(|source| match source {
                    redb::DatabaseError::Storage(redb::StorageError::Corrupted(c)) => {
                        corrupt(format!("redb refused the file: {c}"))
                    }
                    source => MvccError::Open {
                        path: path.to_path_buf(),
                        source,
                    },
                })?;
            match db_.check_integrity() {
                Ok(true) => {}
                // Repaired: redb rolled the file back to an older commit or
                // rebuilt its allocator. The data may be older than what
                // this member acknowledged to Raft, so it is not trusted.
                Ok(false) => {
                    return Err(corrupt(
                        "page checksums failed; redb could only repair it by rolling it back"
                            .into(),
                    ))
                }
                Err(e) => return Err(corrupt(format!("integrity check failed: {e}"))),
            }
            let store = Self::from_db(db_, path, false)?;
            store.verify_all().map_err(|e| corrupt(e.to_string()))?;
            Ok(store)
        });
        match opened {
            Ok(r) => r,
            Err(panic) => Err(corrupt(format!("redb panicked reading it: {panic}"))),
        }
    }

    /// Read every record of every table and verify its checksum.
    pub fn verify_all(&self) -> Result<(), MvccError> {
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        {
            let t = rtx.open_table(META).map_err(db("open meta"))?;
            for item in t.iter().map_err(db("scan meta"))? {
                let (k, v) = item.map_err(db("scan meta"))?;
                unseal(META_TABLE, &[k.value().as_bytes()], v.value())?;
            }
        }
        {
            let t = rtx.open_table(REV).map_err(db("open rev"))?;
            for item in t.iter().map_err(db("scan rev"))? {
                let (k, v) = item.map_err(db("scan rev"))?;
                let (m, s) = k.value();
                RevRecord::decode_payload(unseal(REV_TABLE, &[&rev_key_bytes(m, s)], v.value())?)?;
            }
        }
        {
            let t = rtx.open_table(LEASE).map_err(db("open lease"))?;
            for item in t.iter().map_err(db("scan lease"))? {
                let (k, v) = item.map_err(db("scan lease"))?;
                unseal(LEASE_TABLE, &[&k.value().to_be_bytes()], v.value())?;
            }
        }
        {
            let t = rtx.open_table(LEASE_KEY).map_err(db("open lease_key"))?;
            for item in t.iter().map_err(db("scan lease_key"))? {
                let (k, v) = item.map_err(db("scan lease_key"))?;
                let (id, key) = k.value();
                unseal(LEASE_KEY_TABLE, &[&id.to_be_bytes(), key], v.value())?;
            }
        }
        {
            let t = rtx.open_table(KEY_INDEX).map_err(db("open key_index"))?;
            for item in t.iter().map_err(db("scan key_index"))? {
                let (k, v) = item.map_err(db("scan key_index"))?;
                IndexEntry::decode(unseal(KEY_INDEX_TABLE, &[k.value()], v.value())?)?;
            }
            let t = rtx.open_table(KEY_REV).map_err(db("open key_rev"))?;
            for item in t.iter().map_err(db("scan key_rev"))? {
                let (k, v) = item.map_err(db("scan key_rev"))?;
                let (key, m, s) = k.value();
                decode_key_rev_flag(key, m, s, v.value())?;
            }
        }
        Ok(())
    }

    /// Call `hook` (once) when a read finds corrupted data; the member
    /// stops on it. Until it does, the read is refused with `DataLoss`.
    pub fn on_corruption(&self, hook: Box<dyn Fn(String) + Send + Sync>) {
        *self
            .corruption_hook
            .hook
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Pass `e` through, telling the corruption hook if it is corruption.
    pub(crate) fn noted(&self, e: MvccError) -> MvccError {
        if e.is_corruption() && !self.corruption_hook.fired.swap(true, Ordering::AcqRel) {
            let what = format!("reading {} failed: {e}", self.path.display());
            if let Some(h) = &*self
                .corruption_hook
                .hook
                .lock()
                .unwrap_or_else(|e| e.into_inner())
            {
                h(what);
            }
        }
        e
    }

    /// File size and bytes in use. The in-use figure walks redb's page
    /// tables: call it for Status, not per request.
    pub fn db_size(&self) -> Result<DbSize, MvccError> {
        let file_bytes = self.db_size_bytes();
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.db.begin_write().map_err(db("begin write"))?;
        let stats = txn.stats().map_err(db("stats"))?;
        txn.abort().map_err(db("abort"))?;
        Ok(DbSize {
            file_bytes,
            in_use_bytes: stats.allocated_pages() * stats.page_size() as u64,
        })
    }

    /// etcd's Defragment: give the free space back to the file system
    /// (redb `compact`, which moves pages down and truncates the file).
    /// Writes wait meanwhile; open reads are waited for, up to
    /// [`DEFRAG_WAIT_FOR_READERS_MS`].
    pub fn defragment(&self) -> Result<DefragReport, MvccError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let file_bytes_before = self.db_size_bytes();
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(DEFRAG_WAIT_FOR_READERS_MS);
        let mut dbw = self.db.inner.write().unwrap_or_else(|e| e.into_inner());
        loop {
            match dbw.compact() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(redb::CompactionError::TransactionInProgress)
                    if std::time::Instant::now() < deadline =>
                {
                    // A reader began before the exclusive lock was taken.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(self.noted(MvccError::Defrag {
                        path: self.path.clone(),
                        detail: e.to_string(),
                    }))
                }
            }
        }
        drop(dbw);
        Ok(DefragReport {
            file_bytes_before,
            file_bytes_after: self.db_size_bytes(),
        })
    }

    /// Open or create a store on any redb storage backend (the simulator's
    /// in-memory disk); `label` stands in for the path in errors.
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        label: &Path,
    ) -> Result<Store, MvccError> {
        let db_ = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|source| MvccError::Open {
                path: label.to_path_buf(),
                source,
            })?;
        Self::from_db(db_, label, true)
    }

    fn from_db(db_: Database, path: &Path, spool_in_memory: bool) -> Result<Store, MvccError> {
        let txn = db_.begin_write().map_err(db("begin write"))?;
        let tables: Vec<String> = txn
            .list_tables()
            .map_err(db("list tables"))?
            .map(|h| h.name().to_string())
            .collect();
        let not_ours = |reason: String| MvccError::NotOurs {
            path: path.to_path_buf(),
            reason,
        };
        let (rev, compact);
        if tables.is_empty() {
            // Fresh file: initialize. Empty store is at revision 1, never compacted (-1).
            let mut fmt = FORMAT_MAGIC.to_vec();
            fmt.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            {
                let mut w = txn.open_table(META).map_err(db("open meta"))?;
                for (name, payload) in [
                    (META_FORMAT, fmt),
                    (META_REV, 1i64.to_le_bytes().to_vec()),
                    (META_COMPACT, (-1i64).to_le_bytes().to_vec()),
                ] {
                    w.insert(name, seal(&[name.as_bytes()], &payload).as_slice())
                        .map_err(db("init meta"))?;
                }
            }
            txn.open_table(REV).map_err(db("init"))?;
            txn.open_table(KEY_INDEX).map_err(db("init"))?;
            txn.open_table(KEY_REV).map_err(db("init"))?;
            txn.open_table(LEASE).map_err(db("init"))?;
            txn.open_table(LEASE_KEY).map_err(db("init"))?;
            txn.commit().map_err(db("init commit"))?;
            (rev, compact) = (1, -1);
        } else {
            if !tables.iter().any(|t| t == META_TABLE) {
                return Err(not_ours(format!(
                    "no `meta` table; tables present: {tables:?}"
                )));
            }
            {
                let meta = txn.open_table(META).map_err(db("open meta"))?;
                let fmt = get_meta(&meta, META_FORMAT)?
                    .ok_or_else(|| not_ours("no format marker".into()))?;
                if fmt.len() != FORMAT_MAGIC.len() + 4 || !fmt.starts_with(FORMAT_MAGIC) {
                    return Err(not_ours("wrong format marker".into()));
                }
                let ver =
                    u32::from_le_bytes(fmt[FORMAT_MAGIC.len()..].try_into().expect("4 bytes"));
                if ver != FORMAT_VERSION {
                    return Err(MvccError::UnsupportedFormat {
                        path: path.to_path_buf(),
                        found: ver,
                        supported: FORMAT_VERSION,
                    });
                }
                rev = get_meta_i64(&meta, META_REV)?;
                compact = get_meta_i64(&meta, META_COMPACT)?;
                assert!(
                    rev >= 1 && compact <= rev,
                    "stored counters are inconsistent: rev {rev} compact {compact}"
                );
            }
            txn.abort().map_err(db("abort"))?;
        }
        Ok(Store {
            db: Db::new(db_),
            path: path.to_path_buf(),
            spool_in_memory,
            writer: Mutex::new(()),
            rev: AtomicI64::new(rev),
            compact: AtomicI64::new(compact),
            corruption_hook: CorruptionHook::default(),
        })
    }

    /// Apply a batch of committed entries in ONE redb write transaction, storing
    /// `applied_meta` atomically with the data. `None` items (blank/membership entries) only
    /// advance `applied_meta`. On `Err` nothing of the batch is committed.
    ///
    /// With `durable == false` the commit uses redb `Durability::None`: visible to readers
    /// immediately but only persisted by a later durable commit (the Raft log covers the gap
    /// after a crash, since `applied_meta` rolls back together with the data).
    pub fn apply_batch(
        &self,
        items: &[Option<Command>],
        applied_meta: &[u8],
        durable: bool,
    ) -> Result<Vec<Option<Applied>>, MvccError> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = self.db.begin_write().map_err(db("begin write"))?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(db("set durability"))?;
        let mut out = Vec::with_capacity(items.len());
        let (rev, compact);
        {
            let mut w = Writer::open(&txn)?;
            assert_eq!(
                w.cur_rev,
                self.rev.load(Ordering::Acquire),
                "cached revision diverged from disk"
            );
            for item in items {
                out.push(match item {
                    None => None,
                    Some(cmd) => Some(w.apply(cmd)?),
                });
            }
            w.put_meta(META_REV, &w.cur_rev.to_le_bytes())?;
            w.put_meta(META_COMPACT, &w.compact.to_le_bytes())?;
            w.put_meta(META_APPLIED, applied_meta)?;
            (rev, compact) = (w.cur_rev, w.compact);
        }
        txn.commit().map_err(db("commit"))?;
        assert!(rev >= self.rev.load(Ordering::Acquire) && compact <= rev);
        self.rev.store(rev, Ordering::Release);
        self.compact.store(compact, Ordering::Release);
        Ok(out)
    }

    /// The last `applied_meta` stored by [`Store::apply_batch`] / a snapshot.
    pub fn applied_meta(&self) -> Result<Option<Vec<u8>>, MvccError> {
        self.applied_meta_unnoted().map_err(|e| self.noted(e))
    }

    fn applied_meta_unnoted(&self) -> Result<Option<Vec<u8>>, MvccError> {
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        let meta = rtx.open_table(META).map_err(db("open meta"))?;
        get_meta(&meta, META_APPLIED)
    }

    /// Consistent snapshot read (etcd Range). Header has only `revision` set (the store
    /// revision at read time); the caller fills the rest.
    pub fn range(&self, req: &PbRangeRequest) -> Result<PbRangeResponse, EtcdError> {
        validate_range(req)?;
        self.range_inner(req).map_err(|e| self.noted(e).to_etcd())?
    }

    fn range_inner(
        &self,
        req: &PbRangeRequest,
    ) -> Result<Result<PbRangeResponse, EtcdError>, MvccError> {
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        let meta = rtx.open_table(META).map_err(db("open meta"))?;
        let cur = get_meta_i64(&meta, META_REV)?;
        let compact = get_meta_i64(&meta, META_COMPACT)?;
        let index = rtx.open_table(KEY_INDEX).map_err(db("open key_index"))?;
        let revt = rtx.open_table(REV).map_err(db("open rev"))?;
        let key_rev = rtx.open_table(KEY_REV).map_err(db("open key_rev"))?;
        range_request(&index, &revt, &key_rev, req, cur, compact)
    }

    /// Current store revision (1 for an empty store).
    pub fn current_revision(&self) -> i64 {
        self.rev.load(Ordering::Acquire)
    }

    /// Revision of the last compaction (-1 if never compacted, as in etcd).
    pub fn compact_revision(&self) -> i64 {
        self.compact.load(Ordering::Acquire)
    }

    /// Watch replay: events with main revision in [start_rev, end_rev] for keys in the etcd
    /// range [key, range_end), in revision order. `prev_kv` fills the previous version when
    /// it is still in the history. Returns at most `max_events` events, except that a
    /// revision is never split (the last revision is always complete; at least one revision
    /// is returned when any matches). Continue from `last.mod_revision + 1`.
    ///
    /// `Err(MvccError::Etcd(EtcdError::Compacted))` if `start_rev < compact_revision()`
    /// (etcd's watch rule: a watcher may start exactly at the compact revision).
    pub fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_rev: i64,
        end_rev: i64,
        prev_kv: bool,
        max_events: usize,
    ) -> Result<Vec<PbEvent>, MvccError> {
        self.events_unnoted(key, range_end, start_rev, end_rev, prev_kv, max_events)
            .map_err(|e| self.noted(e))
    }

    fn events_unnoted(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_rev: i64,
        end_rev: i64,
        prev_kv: bool,
        max_events: usize,
    ) -> Result<Vec<PbEvent>, MvccError> {
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        let meta = rtx.open_table(META).map_err(db("open meta"))?;
        let cur = get_meta_i64(&meta, META_REV)?;
        let compact = get_meta_i64(&meta, META_COMPACT)?;
        if start_rev < compact {
            return Err(EtcdError::Compacted.into());
        }
        let end_rev = end_rev.min(cur);
        let mut out: Vec<PbEvent> = Vec::new();
        if start_rev > end_rev {
            return Ok(out);
        }
        let revt = rtx.open_table(REV).map_err(db("open rev"))?;
        let key_rev = rtx.open_table(KEY_REV).map_err(db("open key_rev"))?;
        let max_events = max_events.max(1);
        let mut last_main = i64::MIN;
        for item in revt
            .range((start_rev, i64::MIN)..=(end_rev, i64::MAX))
            .map_err(db("scan rev"))?
        {
            let (k, v) = item.map_err(db("scan rev"))?;
            let (m, s) = k.value();
            let rec =
                RevRecord::decode_payload(unseal(REV_TABLE, &[&rev_key_bytes(m, s)], v.value())?)?;
            if !key_in_range(rec.key(), key, range_end) {
                continue;
            }
            if out.len() >= max_events && m != last_main {
                break;
            }
            let prev = if prev_kv {
                match key_rev_prev(&key_rev, rec.key(), m, s)? {
                    Some((pm, ps, false)) => Some(kv_at(&revt, rec.key(), pm, ps)?),
                    _ => None,
                }
            } else {
                None
            };
            let ev = match rec {
                RevRecord::Put(kv) => PbEvent {
                    r#type: EVENT_PUT,
                    kv: Some(kv),
                    prev_kv: prev,
                },
                RevRecord::Tombstone(key) => PbEvent {
                    r#type: EVENT_DELETE,
                    kv: Some(PbKeyValue {
                        key,
                        mod_revision: m,
                        ..Default::default()
                    }),
                    prev_kv: prev,
                },
            };
            last_main = m;
            out.push(ev);
        }
        Ok(out)
    }

    /// One lease with its attached keys. Panics on storage corruption (never serves
    /// wrong data).
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.try_lease(id)
            .unwrap_or_else(|e| panic!("mvcc lease read failed: {e}"))
    }

    /// Active alarms as (member id, alarm type), sorted.
    pub fn alarms(&self) -> Result<Vec<(u64, i32)>, MvccError> {
        self.alarms_unnoted().map_err(|e| self.noted(e))
    }

    fn alarms_unnoted(&self) -> Result<Vec<(u64, i32)>, MvccError> {
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        let meta = rtx.open_table(META).map_err(db("open meta"))?;
        decode_alarms(get_meta(&meta, META_ALARMS)?.as_deref())
    }

    /// All leases, by id. Panics on storage corruption.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.try_leases()
            .unwrap_or_else(|e| panic!("mvcc lease read failed: {e}"))
    }

    /// Fallible variant of [`Store::lease`].
    pub fn try_lease(&self, id: i64) -> Result<Option<LeaseInfo>, MvccError> {
        self.try_lease_unnoted(id).map_err(|e| self.noted(e))
    }

    fn try_lease_unnoted(&self, id: i64) -> Result<Option<LeaseInfo>, MvccError> {
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        let lt = rtx.open_table(LEASE).map_err(db("open lease"))?;
        let lk = rtx.open_table(LEASE_KEY).map_err(db("open lease_key"))?;
        match get_lease_ttl(&lt, id)? {
            None => Ok(None),
            Some(ttl) => Ok(Some(LeaseInfo {
                id,
                ttl_seconds: ttl,
                keys: lease_keys(&lk, id)?,
            })),
        }
    }

    /// Fallible variant of [`Store::leases`].
    pub fn try_leases(&self) -> Result<Vec<LeaseInfo>, MvccError> {
        self.try_leases_unnoted().map_err(|e| self.noted(e))
    }

    fn try_leases_unnoted(&self) -> Result<Vec<LeaseInfo>, MvccError> {
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        let lt = rtx.open_table(LEASE).map_err(db("open lease"))?;
        let lk = rtx.open_table(LEASE_KEY).map_err(db("open lease_key"))?;
        let mut out = Vec::new();
        for item in lt.iter().map_err(db("scan lease"))? {
            let (k, v) = item.map_err(db("scan lease"))?;
            let id = k.value();
            let ttl = decode_i64(
                "lease ttl",
                unseal(LEASE_TABLE, &[&id.to_be_bytes()], v.value())?,
            )?;
            out.push(LeaseInfo {
                id,
                ttl_seconds: ttl,
                keys: lease_keys(&lk, id)?,
            });
        }
        Ok(out)
    }

    /// etcd HashKV: CRC32 over every history record with main revision <= `revision`
    /// (0 = current). After compaction only the kept records remain, so identical command
    /// sequences (or a snapshot copy) give identical hashes.
    /// Returns (hash, compact_revision, hash_revision).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), EtcdError> {
        self.hash_kv_inner(revision)
            .map_err(|e| self.noted(e).to_etcd())?
    }

    fn hash_kv_inner(
        &self,
        revision: i64,
    ) -> Result<Result<(u32, i64, i64), EtcdError>, MvccError> {
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        let meta = rtx.open_table(META).map_err(db("open meta"))?;
        let cur = get_meta_i64(&meta, META_REV)?;
        let compact = get_meta_i64(&meta, META_COMPACT)?;
        if revision > 0 && revision < compact {
            return Ok(Err(EtcdError::Compacted));
        }
        if revision > cur {
            return Ok(Err(EtcdError::FutureRevision));
        }
        let at = if revision <= 0 { cur } else { revision };
        let revt = rtx.open_table(REV).map_err(db("open rev"))?;
        let mut h = crc32fast::Hasher::new();
        h.update(b"key");
        for item in revt
            .range((i64::MIN, i64::MIN)..=(at, i64::MAX))
            .map_err(db("scan rev"))?
        {
            let (k, v) = item.map_err(db("scan rev"))?;
            let (m, s) = k.value();
            let kb = rev_key_bytes(m, s);
            let payload = unseal(REV_TABLE, &[&kb], v.value())?;
            h.update(&kb);
            h.update(payload);
        }
        Ok(Ok((h.finalize(), compact, at)))
    }

    /// Size of the database file in bytes.
    pub fn db_size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
