//! Conversion between an etcd snapshot and Phalanx's mvcc snapshot stream.
//!
//! The mvcc snapshot stream is the interchange format of Phalanx's store (written by
//! `mvcc::Store::write_snapshot`, installed by `mvcc::Store::install_snapshot`, stored
//! by backups; docs/backup-format.md):
//!
//! ```text
//! "PHXMVCC\0" | version u32 LE (1) | records | 0xFF | record count u64 LE | CRC32 u32 LE
//! record = tag u8 | key length u32 LE | key | value length u32 LE | value
//! ```
//!
//! | tag | key | value |
//! |---|---|---|
//! | 1 meta | `rev`, `compact_rev` (also `applied_meta`, `alarms`, `auth`) | i64 LE (others: Phalanx's own) |
//! | 2 rev | main i64 BE, sub i64 BE | `0` + KeyValue protobuf, or `1` + key (tombstone) |
//! | 3 index | key | create, mod main, mod sub, version, lease (i64 LE each), tombstone u8 |
//! | 4 key_rev | key + main BE + sub BE | tombstone u8 |
//! | 5 lease | id i64 BE | granted TTL i64 LE |
//! | 6 lease_key | id i64 BE + key | empty |
//!
//! Both directions carry the whole retained history (every revision since the last
//! compaction, tombstones included), the current and compacted revisions, and leases
//! with their TTLs; keys keep their create/mod revisions, versions and leases. Not
//! carried: Phalanx's Raft bookkeeping (`applied_meta`), alarms and auth users/roles
//! (see docs/backup.md).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use etcd_client::proto::PbKeyValue;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::bbolt::{BucketRoot, Db};
use crate::error::{render, SnapshotError};
use crate::schema::*;
use crate::writer::DbWriter;

/// Magic and version of Phalanx's mvcc snapshot stream (owned by
/// `mvcc::snapshot_stream`).
pub use mvcc::snapshot_stream::{MAGIC as MVCC_MAGIC, VERSION as MVCC_VERSION};
use mvcc::snapshot_stream::{T_END, T_INDEX, T_KEY_REV, T_LEASE, T_LEASE_KEY, T_META, T_REV};
/// Largest record key or value accepted from an mvcc stream (etcd's own limits on
/// requests are far below).
pub const MAX_STREAM_PART_BYTES: usize = 256 * 1024 * 1024;
/// etcd appends a SHA-256 to the database; files are then 32 bytes past a multiple
/// of this (etcdctl's test for the trailer).
pub const TRAILER_ALIGN_BYTES: u64 = 512;
pub const SHA256_BYTES: u64 = 32;
/// Read buffer for hashing and streaming.
const IO_BUFFER_BYTES: usize = 1 << 20;

/// What [`EtcdSnapshot::open`] found about the trailing SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trailer {
    /// Present and equal to the SHA-256 of the database bytes (hex).
    Verified(String),
    /// The file is a bare database (no trailer); accepted because the caller allowed it.
    Absent,
}

/// An etcd snapshot file opened for reading: the database and its verified trailer.
pub struct EtcdSnapshot {
    db: Db,
    pub trailer: Trailer,
}

/// What an etcd snapshot holds, as converted.
#[derive(Clone, Debug, Default)]
pub struct ImportSummary {
    /// etcd's current revision (newest revision, or the compaction revision if larger).
    pub revision: i64,
    pub compact_revision: i64,
    /// History records (puts and tombstones) carried over.
    pub history_records: u64,
    pub leases: u64,
    /// Keys whose latest revision is attached to a lease.
    pub leased_keys: u64,
    /// Records whose lease is not in the `lease` bucket; restored without a lease (etcd
    /// itself would keep them attached to a lease it does not know, never to expire).
    pub detached_records: u64,
    pub consistent_index: u64,
    pub members: Vec<MemberJson>,
}

/// What was written into an etcd snapshot.
#[derive(Clone, Debug, Default)]
pub struct ExportSummary {
    pub revision: i64,
    pub compact_revision: i64,
    pub history_records: u64,
    pub leases: u64,
    pub db_bytes: u64,
}

/// Cluster facts an etcd database records besides the key space.
#[derive(Clone, Debug, Default)]
pub struct ExportSettings {
    pub members: Vec<MemberJson>,
    /// `cluster/clusterVersion`, e.g. `3.4.0`.
    pub cluster_version: String,
    /// `meta/consistent_index`: the Raft index the state corresponds to.
    pub consistent_index: u64,
}

impl EtcdSnapshot {
    /// Open an etcd snapshot. A file 32 bytes past a multiple of 512 carries etcd's
    /// SHA-256 trailer, which is always verified; a file without it is accepted only when
    /// `allow_missing_hash` (etcdctl's `--skip-hash-check`).
    pub fn open(path: &Path, allow_missing_hash: bool) -> Result<EtcdSnapshot, SnapshotError> {
        let size = std::fs::metadata(path)
            .map_err(SnapshotError::io("stat", path))?
            .len();
        let has_hash = size % TRAILER_ALIGN_BYTES == SHA256_BYTES;
        let (db_len, trailer) = if has_hash {
            let db_len = size - SHA256_BYTES;
            let f = std::fs::File::open(path).map_err(SnapshotError::io("open", path))?;
            let mut r = BufReader::with_capacity(IO_BUFFER_BYTES, f);
            let mut h = Sha256::new();
            let mut left = db_len;
            let mut buf = vec![0u8; IO_BUFFER_BYTES];
            while left > 0 {
                let n = (left as usize).min(buf.len());
                r.read_exact(&mut buf[..n])
                    .map_err(SnapshotError::io("read", path))?;
                h.update(&buf[..n]);
                left -= n as u64;
            }
            let mut want = [0u8; SHA256_BYTES as usize];
            r.read_exact(&mut want)
                .map_err(SnapshotError::io("read", path))?;
            let found = h.finalize();
            if found.as_slice() != want {
                return Err(SnapshotError::HashMismatch {
                    path: path.to_path_buf(),
                    db_bytes: db_len,
                    expected: hex(&want),
                    found: hex(&found),
                });
            }
            (db_len, Trailer::Verified(hex(&found)))
        } else if allow_missing_hash {
            (size, Trailer::Absent)
        } else {
            return Err(SnapshotError::MissingHash {
                path: path.to_path_buf(),
                size,
            });
        };
        let db = Db::open(path, Some(db_len))?;
        Ok(EtcdSnapshot { db, trailer })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn path(&self) -> PathBuf {
        self.db.path().to_path_buf()
    }

    fn bad(&self, bucket: &[u8], detail: impl Into<String>) -> SnapshotError {
        SnapshotError::Bucket {
            path: self.path(),
            bucket: String::from_utf8_lossy(bucket).into_owned(),
            detail: detail.into(),
        }
    }

    fn required(&self, name: &[u8]) -> Result<BucketRoot, SnapshotError> {
        self.db.bucket(name)?.ok_or_else(|| {
            self.bad(
                name,
                "missing: every etcd database has it, so this is not an etcd snapshot",
            )
        })
    }

    /// Entries of an optional bucket (empty when absent).
    fn entries(&self, name: &[u8]) -> Result<Vec<crate::bbolt::Entry>, SnapshotError> {
        match self.db.bucket(name)? {
            None => Ok(Vec::new()),
            Some(b) => self.db.iter(&b).collect(),
        }
    }

    /// Members recorded in the `members` bucket (etcd 3.4+; informational: a restore
    /// starts a new cluster with the members given on its command line).
    pub fn members(&self) -> Result<Vec<MemberJson>, SnapshotError> {
        let mut out = Vec::new();
        for e in self.entries(BUCKET_MEMBERS)? {
            let m: MemberJson = serde_json::from_slice(&e.value)
                .map_err(|x| self.bad(BUCKET_MEMBERS, format!("member {}: {x}", render(&e.key))))?;
            out.push(m);
        }
        Ok(out)
    }

    /// A compaction revision of the `meta` bucket; -1 (never compacted, as etcd and
    /// mvcc say) when absent.
    fn meta_rev(&self, v: Option<&Vec<u8>>, name: &[u8]) -> Result<i64, SnapshotError> {
        match v {
            None => Ok(-1),
            Some(b) => parse_rev_key(b).map(|(m, _, _)| m).ok_or_else(|| {
                self.bad(
                    BUCKET_META,
                    format!("{} is not a revision: {}", render(name), render(b)),
                )
            }),
        }
    }

    /// Write the snapshot's state as an mvcc snapshot stream (installable with
    /// `mvcc::Store::install_snapshot`). Memory: the lease table and one entry per key
    /// whose newest revision carries a lease.
    pub fn write_mvcc_stream(&self, out: &mut dyn Write) -> Result<ImportSummary, SnapshotError> {
        let meta: HashMap<Vec<u8>, Vec<u8>> = self
            .entries(BUCKET_META)?
            .into_iter()
            .filter(|e| !e.is_bucket)
            .map(|e| (e.key, e.value))
            .collect();
        let consistent_index = match meta.get(META_CONSISTENT_INDEX) {
            None => 0,
            Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| {
                self.bad(
                    BUCKET_META,
                    format!("consistent_index is {} bytes, want 8", b.len()),
                )
            })?),
        };
        let finished = self.meta_rev(meta.get(META_FINISHED_COMPACT), META_FINISHED_COMPACT)?;
        let scheduled = self.meta_rev(meta.get(META_SCHEDULED_COMPACT), META_SCHEDULED_COMPACT)?;
        // A compaction etcd scheduled but had not finished when the snapshot was taken
        // (etcd compacts in batches) would be completed by etcd on start; here reads
        // below it are refused as compacted, and the records it had yet to remove stay
        // until the next compaction.
        let compact = finished.max(scheduled);

        let mut leases: BTreeMap<i64, i64> = BTreeMap::new();
        for e in self.entries(BUCKET_LEASE)? {
            let id = <[u8; 8]>::try_from(e.key.as_slice())
                .map(i64::from_be_bytes)
                .map_err(|_| {
                    self.bad(
                        BUCKET_LEASE,
                        format!("key {} is not an 8-byte lease id", render(&e.key)),
                    )
                })?;
            let l = LeasePb::decode(e.value.as_slice())
                .map_err(|x| self.bad(BUCKET_LEASE, format!("lease {id:x}: {x}")))?;
            if l.id != id {
                return Err(self.bad(
                    BUCKET_LEASE,
                    format!("lease stored under id {id:x} says it is {:x}", l.id),
                ));
            }
            leases.insert(id, l.ttl);
        }
        let members = self.members()?;

        let mut w = mvcc::SnapshotStreamWriter::begin(out)?;
        let mut sum = ImportSummary {
            compact_revision: compact,
            leases: leases.len() as u64,
            consistent_index,
            members,
            ..Default::default()
        };
        let mut leased: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut newest = 0i64;
        let key_bucket = self.required(BUCKET_KEY)?;
        for e in self.db.iter(&key_bucket) {
            let e = e?;
            let Some((main, sub, tomb)) = parse_rev_key(&e.key) else {
                return Err(self.bad(
                    BUCKET_KEY,
                    format!("key {} is not a revision", render(&e.key)),
                ));
            };
            if e.is_bucket {
                return Err(self.bad(BUCKET_KEY, format!("revision {main}.{sub} is a bucket")));
            }
            let mut kv = PbKeyValue::decode(e.value.as_slice()).map_err(|x| {
                self.bad(
                    BUCKET_KEY,
                    format!("revision {main}.{sub}: not a KeyValue: {x}"),
                )
            })?;
            if kv.key.is_empty() {
                return Err(self.bad(
                    BUCKET_KEY,
                    format!("revision {main}.{sub} has an empty key"),
                ));
            }
            let mut rk = [0u8; 16];
            rk[..8].copy_from_slice(&main.to_be_bytes());
            rk[8..].copy_from_slice(&sub.to_be_bytes());
            let (payload, index) = if tomb {
                leased.remove(&kv.key);
                let mut p = Vec::with_capacity(1 + kv.key.len());
                p.push(1u8);
                p.extend_from_slice(&kv.key);
                (p, index_entry(0, main, sub, 0, 0, true))
            } else {
                if kv.mod_revision != main {
                    return Err(self.bad(
                        BUCKET_KEY,
                        format!(
                            "revision {main}.{sub} of key {} says mod_revision {}",
                            render(&kv.key),
                            kv.mod_revision
                        ),
                    ));
                }
                if kv.lease != 0 && !leases.contains_key(&kv.lease) {
                    kv.lease = 0;
                    sum.detached_records += 1;
                }
                if kv.lease != 0 {
                    leased.insert(kv.key.clone(), kv.lease);
                } else {
                    leased.remove(&kv.key);
                }
                let mut p = Vec::with_capacity(1 + kv.encoded_len());
                p.push(0u8);
                kv.encode(&mut p).expect("Vec grows");
                let idx = index_entry(kv.create_revision, main, sub, kv.version, kv.lease, false);
                (p, idx)
            };
            w.record(T_REV, &[&rk], &payload)?;
            w.record(T_KEY_REV, &[&kv.key, &rk], &[tomb as u8])?;
            // The index holds each key's newest record; records come in revision order
            // and installing a later index record replaces the earlier one.
            w.record(T_INDEX, &[&kv.key], &index)?;
            newest = newest.max(main);
            sum.history_records += 1;
        }
        // etcd's rule on start: the newest revision, or the compaction revision if all
        // records up to it were compacted away; a fresh etcd is at revision 1.
        let rev = newest.max(compact).max(1);
        sum.revision = rev;
        w.record(T_META, &[b"rev"], &rev.to_le_bytes())?;
        w.record(T_META, &[b"compact_rev"], &compact.to_le_bytes())?;
        for (id, ttl) in &leases {
            w.record(T_LEASE, &[&id.to_be_bytes()], &ttl.to_le_bytes())?;
        }
        let mut lk: Vec<(i64, Vec<u8>)> = leased.into_iter().map(|(k, id)| (id, k)).collect();
        lk.sort();
        sum.leased_keys = lk.len() as u64;
        for (id, key) in lk {
            w.record(T_LEASE_KEY, &[&id.to_be_bytes(), &key], &[])?;
        }
        w.finish()?;
        Ok(sum)
    }
}

fn index_entry(create: i64, main: i64, sub: i64, version: i64, lease: i64, tomb: bool) -> [u8; 41] {
    let mut b = [0u8; 41];
    b[0..8].copy_from_slice(&create.to_le_bytes());
    b[8..16].copy_from_slice(&main.to_le_bytes());
    b[16..24].copy_from_slice(&sub.to_le_bytes());
    b[24..32].copy_from_slice(&version.to_le_bytes());
    b[32..40].copy_from_slice(&lease.to_le_bytes());
    b[40] = tomb as u8;
    b
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One record of an mvcc stream: (tag, key, value).
type Record = (u8, Vec<u8>, Vec<u8>);

/// Reads an mvcc snapshot stream record by record, checking count and CRC32 at the end.
struct StreamReader<R: Read> {
    r: R,
    crc: crc32fast::Hasher,
    records: u64,
}

fn bad_stream(detail: impl Into<String>) -> SnapshotError {
    SnapshotError::Stream {
        detail: detail.into(),
    }
}

impl<R: Read> StreamReader<R> {
    fn take(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.r
            .read_exact(buf)
            .map_err(|e| bad_stream(format!("truncated after {} records: {e}", self.records)))?;
        self.crc.update(buf);
        Ok(())
    }
    fn part(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let mut l = [0u8; 4];
        self.take(&mut l)?;
        let n = u32::from_le_bytes(l) as usize;
        if n > MAX_STREAM_PART_BYTES {
            return Err(bad_stream(format!("record part of {n} bytes is too large")));
        }
        let mut v = vec![0u8; n];
        self.take(&mut v)?;
        Ok(v)
    }
    /// The next record, or `None` after the end marker (count and CRC checked).
    fn next(&mut self) -> Result<Option<Record>, SnapshotError> {
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        if tag[0] == T_END {
            let mut n = [0u8; 8];
            self.take(&mut n)?;
            if u64::from_le_bytes(n) != self.records {
                return Err(bad_stream(format!(
                    "record count mismatch: trailer says {}, stream has {}",
                    u64::from_le_bytes(n),
                    self.records
                )));
            }
            let want = self.crc.clone().finalize();
            let mut c = [0u8; 4];
            self.r
                .read_exact(&mut c)
                .map_err(|_| bad_stream("truncated in its CRC"))?;
            if u32::from_le_bytes(c) != want {
                return Err(bad_stream("CRC32 mismatch: the stream is corrupted"));
            }
            return Ok(None);
        }
        let k = self.part()?;
        let v = self.part()?;
        self.records += 1;
        Ok(Some((tag[0], k, v)))
    }
}

/// Build an etcd database at `out` from an mvcc snapshot stream. The stream must hold
/// its history records in revision order (as `mvcc::Store::write_snapshot` writes them);
/// they are written into the `key` bucket as they arrive, so memory holds one page plus
/// the leases. On error `out` is left incomplete: the caller removes it.
pub fn write_etcd_db(
    stream: &mut dyn Read,
    out: &Path,
    settings: &ExportSettings,
) -> Result<ExportSummary, SnapshotError> {
    let mut r = StreamReader {
        r: BufReader::with_capacity(IO_BUFFER_BYTES, stream),
        crc: crc32fast::Hasher::new(),
        records: 0,
    };
    let mut head = [0u8; 12];
    r.take(&mut head)?;
    if &head[..8] != MVCC_MAGIC {
        return Err(bad_stream("bad magic: not a Phalanx mvcc snapshot stream"));
    }
    let ver = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
    if ver != MVCC_VERSION {
        return Err(bad_stream(format!("unsupported stream version {ver}")));
    }
    let mut w = DbWriter::create(out)?;
    let mut sum = ExportSummary::default();
    let (mut rev, mut compact) = (None, None);
    let mut leases: Vec<(i64, i64)> = Vec::new();
    let key_bucket = {
        let mut kb = w.bucket("key");
        while let Some((tag, k, v)) = r.next()? {
            match tag {
                T_META => {
                    let counter = || {
                        <[u8; 8]>::try_from(v.as_slice())
                            .map(i64::from_le_bytes)
                            .map_err(|_| bad_stream("meta counter is not 8 bytes"))
                    };
                    match k.as_slice() {
                        b"rev" => rev = Some(counter()?),
                        b"compact_rev" => compact = Some(counter()?),
                        // Raft bookkeeping, alarms and auth: Phalanx's own, not carried.
                        _ => {}
                    }
                }
                T_REV => {
                    let rk: [u8; 16] = k
                        .as_slice()
                        .try_into()
                        .map_err(|_| bad_stream("history record key is not 16 bytes"))?;
                    let main = i64::from_be_bytes(rk[..8].try_into().expect("8"));
                    let sub = i64::from_be_bytes(rk[8..].try_into().expect("8"));
                    if main < 0 || sub < 0 {
                        return Err(bad_stream(format!("negative revision {main}.{sub}")));
                    }
                    match v.first() {
                        Some(0) => {
                            // Stored verbatim: the same bytes etcd would have written. Not
                            // decoded here: mvcc checked each record's checksum when it read
                            // it, and the stream's CRC32 is checked at its end (the output
                            // is discarded if it fails).
                            let mut kv = v;
                            kv.remove(0);
                            kb.put_owned(rev_key(main, sub, false), kv)?;
                        }
                        Some(1) => {
                            let kv = PbKeyValue {
                                key: v[1..].to_vec(),
                                ..Default::default()
                            };
                            kb.put_owned(rev_key(main, sub, true), kv.encode_to_vec())?;
                        }
                        _ => {
                            return Err(bad_stream(format!(
                                "revision {main}.{sub}: unknown record kind"
                            )))
                        }
                    }
                    sum.history_records += 1;
                }
                T_LEASE => {
                    let id = <[u8; 8]>::try_from(k.as_slice())
                        .map(i64::from_be_bytes)
                        .map_err(|_| bad_stream("lease id is not 8 bytes"))?;
                    let ttl = <[u8; 8]>::try_from(v.as_slice())
                        .map(i64::from_le_bytes)
                        .map_err(|_| bad_stream("lease TTL is not 8 bytes"))?;
                    leases.push((id, ttl));
                }
                // Derived data: etcd rebuilds its index and lease attachments from `key`.
                T_INDEX | T_KEY_REV | T_LEASE_KEY => {}
                t => return Err(bad_stream(format!("unknown record tag {t}"))),
            }
        }
        kb.finish()?
    };
    let (Some(rev), Some(compact)) = (rev, compact) else {
        return Err(bad_stream("no revision counters in the stream"));
    };
    sum.revision = rev;
    sum.compact_revision = compact;
    sum.leases = leases.len() as u64;

    // etcd's lease ids are positive, so big-endian bytes sort like the ids.
    leases.sort();
    let lease_bucket = {
        let mut b = w.bucket("lease");
        for (id, ttl) in &leases {
            let l = LeasePb {
                id: *id,
                ttl: *ttl,
                remaining_ttl: 0,
            };
            b.put(&id.to_be_bytes(), &l.encode_to_vec())?;
        }
        b.finish()?
    };
    let members_bucket = {
        let mut ms = settings.members.clone();
        ms.sort_by_key(|m| format!("{:x}", m.id));
        let mut b = w.bucket("members");
        for m in &ms {
            let json = serde_json::to_vec(m).map_err(|e| bad_stream(e.to_string()))?;
            b.put(format!("{:x}", m.id).as_bytes(), &json)?;
        }
        b.finish()?
    };
    let meta_bucket = {
        let mut b = w.bucket("meta");
        b.put(
            META_CONSISTENT_INDEX,
            &settings.consistent_index.to_be_bytes(),
        )?;
        if compact > 0 {
            // etcd records a compaction as scheduled, then as finished once done.
            b.put(META_FINISHED_COMPACT, &rev_key(compact, 0, false))?;
            b.put(META_SCHEDULED_COMPACT, &rev_key(compact, 0, false))?;
        }
        b.finish()?
    };
    let empty = |w: &mut DbWriter, name: &str| w.bucket(name).finish();
    let alarm = empty(&mut w, "alarm")?;
    let auth = {
        let mut b = w.bucket("auth");
        b.put(AUTH_ENABLED_KEY, &[0])?;
        b.put(AUTH_REVISION_KEY, &1u64.to_be_bytes())?;
        b.finish()?
    };
    let auth_roles = empty(&mut w, "authRoles")?;
    let auth_users = empty(&mut w, "authUsers")?;
    let cluster = {
        let mut b = w.bucket("cluster");
        b.put(CLUSTER_VERSION_KEY, settings.cluster_version.as_bytes())?;
        b.finish()?
    };
    let removed = empty(&mut w, "members_removed")?;
    let mut root = w.bucket("");
    root.put_bucket(BUCKET_ALARM, alarm)?;
    root.put_bucket(BUCKET_AUTH, auth)?;
    root.put_bucket(BUCKET_AUTH_ROLES, auth_roles)?;
    root.put_bucket(BUCKET_AUTH_USERS, auth_users)?;
    root.put_bucket(BUCKET_CLUSTER, cluster)?;
    root.put_bucket(BUCKET_KEY, key_bucket)?;
    root.put_bucket(BUCKET_LEASE, lease_bucket)?;
    root.put_bucket(BUCKET_MEMBERS, members_bucket)?;
    root.put_bucket(BUCKET_MEMBERS_REMOVED, removed)?;
    root.put_bucket(BUCKET_META, meta_bucket)?;
    let root = root.finish_root()?;
    sum.db_bytes = w.finish(root)?;
    Ok(sum)
}
