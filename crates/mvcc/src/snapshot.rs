//! Snapshot streaming.
//!
//! Format (all integers little-endian):
//! ```text
//! "PHXMVCC\0"  u32 version
//! repeated: u8 tag, u32 key_len, key, u32 val_len, val      (tag 1..=6, see below)
//! u8 0xFF (end marker)  u64 record_count
//! u32 crc32 over every byte above
//! ```
//! Tags: 1 meta (name → payload), 2 rev ((main,sub) BE → record payload), 3 key_index
//! (key → entry), 4 key_rev (key ++ (main,sub) BE → flag), 5 lease (id BE → ttl),
//! 6 lease_key (id BE ++ key → empty). Payloads are the table payloads without their
//! checksums; the receiver re-seals them. Every payload is checksum-verified while being
//! read on the sending side, so a corrupted store cannot produce a "valid" snapshot.

use crate::codec::{
    rev_key_bytes, seal, unseal, IndexEntry, RevRecord, FORMAT_MAGIC, FORMAT_VERSION, KEY_INDEX,
    KEY_REV, LEASE, LEASE_KEY, META, META_APPLIED, META_COMPACT, META_FORMAT, META_REV, REV,
};
use crate::error::{db, MvccError};
use crate::layout::*;
use crate::store::{get_meta, Store};
use redb::{Durability, ReadableTable};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::atomic::Ordering;

/// The snapshot stream's format, owned here: `MAGIC`, `VERSION` (u32 LE),
/// then records `tag ‖ key_len u32 ‖ key ‖ val_len u32 ‖ val`, then
/// `T_END ‖ record count u64 ‖ CRC32 of everything before it`. Other crates
/// that read or write the stream (etcd-snapshot) use these and
/// [`StreamWriter`], never a copy.
pub mod stream {
    pub const MAGIC: &[u8; 8] = b"PHXMVCC\0";
    pub const VERSION: u32 = 1;
    pub const T_META: u8 = 1;
    pub const T_REV: u8 = 2;
    pub const T_INDEX: u8 = 3;
    pub const T_KEY_REV: u8 = 4;
    pub const T_LEASE: u8 = 5;
    pub const T_LEASE_KEY: u8 = 6;
    pub const T_END: u8 = 0xFF;
}
use stream::{
    MAGIC, T_END, T_INDEX, T_KEY_REV, T_LEASE, T_LEASE_KEY, T_META, T_REV, VERSION as SNAP_VERSION,
};

/// What [`Store::write_state_at`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateAt {
    /// Live keys at the revision.
    pub keys: u64,
    /// Leases (all of them: a lease outlives its keys).
    pub leases: u64,
    /// Keys whose lease no longer exists, written without a lease.
    pub detached: u64,
}

/// Bytes [`StreamWriter`] gathers before it writes them on.
const STREAM_WRITE_BUFFER_BYTES: usize = 1 << 16;

/// Writes a snapshot stream (see [`stream`]): the header, records, and the
/// end marker with the record count and CRC32 of everything before it.
///
/// A record is assembled in the writer's own buffer and checksummed there in one
/// CRC32 update, not one update and one buffered write per field (a stream is
/// millions of small records).
pub struct StreamWriter<'a> {
    inner: &'a mut dyn Write,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    records: u64,
}

impl<'a> StreamWriter<'a> {
    /// Start a stream on `w`: writes the header.
    pub fn begin(w: &'a mut dyn Write) -> Result<Self, MvccError> {
        let mut out = StreamWriter {
            inner: w,
            buf: Vec::with_capacity(STREAM_WRITE_BUFFER_BYTES * 2),
            crc: crc32fast::Hasher::new(),
            records: 0,
        };
        out.buf.extend_from_slice(MAGIC);
        out.buf.extend_from_slice(&SNAP_VERSION.to_le_bytes());
        out.crc.update(&out.buf);
        Ok(out)
    }

    /// End the stream: end marker, record count, CRC32; flushed.
    pub fn finish(mut self) -> Result<(), MvccError> {
        let start = self.buf.len();
        self.buf.push(T_END);
        self.buf.extend_from_slice(&self.records.to_le_bytes());
        self.crc.update(&self.buf[start..]);
        let crc = self.crc.clone().finalize();
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.write_out()?;
        self.inner.flush().map_err(|source| MvccError::Io {
            op: "write snapshot".into(),
            source,
        })
    }

    fn write_out(&mut self) -> Result<(), MvccError> {
        self.inner
            .write_all(&self.buf)
            .map_err(|source| MvccError::Io {
                op: "write snapshot".into(),
                source,
            })?;
        self.buf.clear();
        Ok(())
    }

    /// One record; `key_parts` are concatenated into its key.
    pub fn record(&mut self, tag: u8, key_parts: &[&[u8]], val: &[u8]) -> Result<(), MvccError> {
        let klen: usize = key_parts.iter().map(|p| p.len()).sum();
        let start = self.buf.len();
        self.buf.push(tag);
        self.buf.extend_from_slice(&(klen as u32).to_le_bytes());
        for p in key_parts {
            self.buf.extend_from_slice(p);
        }
        self.buf
            .extend_from_slice(&(val.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(val);
        self.crc.update(&self.buf[start..]);
        self.records += 1;
        if self.buf.len() >= STREAM_WRITE_BUFFER_BYTES {
            self.write_out()?;
        }
        Ok(())
    }
}

impl Store {
    /// Stream the full state (history since compaction, key index, leases, counters,
    /// applied_meta) from one consistent read transaction.
    pub fn write_snapshot(&self, w: &mut dyn Write) -> Result<(), MvccError> {
        self.write_snapshot_unnoted(w).map_err(|e| self.noted(e))
    }

    fn write_snapshot_unnoted(&self, w: &mut dyn Write) -> Result<(), MvccError> {
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        let mut out = StreamWriter::begin(w)?;

        let meta = rtx.open_table(META).map_err(db("open meta"))?;
        for name in [
            META_REV,
            META_COMPACT,
            META_APPLIED,
            crate::codec::META_ALARMS,
            crate::codec::META_AUTH,
        ] {
            if let Some(v) = get_meta(&meta, name)? {
                out.record(T_META, &[name.as_bytes()], &v)?;
            }
        }
        // Whole records: the stream does not depend on how large records are stored.
        let (t, chunks) = crate::store::history::open_read(&rtx)?;
        let h = crate::store::history::History {
            rev: &t,
            chunks: &chunks,
        };
        for item in t.iter().map_err(db("scan rev"))? {
            let (k, v) = item.map_err(db("scan rev"))?;
            let (m, s) = k.value();
            let kb = rev_key_bytes(m, s);
            out.record(T_REV, &[&kb], &h.resolve(m, s, v.value())?)?;
        }
        let t = rtx.open_table(KEY_INDEX).map_err(db("open key_index"))?;
        for item in t.iter().map_err(db("scan key_index"))? {
            let (k, v) = item.map_err(db("scan key_index"))?;
            let k = k.value();
            out.record(T_INDEX, &[k], unseal(KEY_INDEX_TABLE, &[k], v.value())?)?;
        }
        let t = rtx.open_table(KEY_REV).map_err(db("open key_rev"))?;
        for item in t.iter().map_err(db("scan key_rev"))? {
            let (k, v) = item.map_err(db("scan key_rev"))?;
            let (key, m, s) = k.value();
            let kb = rev_key_bytes(m, s);
            out.record(
                T_KEY_REV,
                &[key, &kb],
                unseal(KEY_REV_TABLE, &[key, &kb], v.value())?,
            )?;
        }
        let t = rtx.open_table(LEASE).map_err(db("open lease"))?;
        for item in t.iter().map_err(db("scan lease"))? {
            let (k, v) = item.map_err(db("scan lease"))?;
            let id = k.value().to_be_bytes();
            out.record(T_LEASE, &[&id], unseal(LEASE_TABLE, &[&id], v.value())?)?;
        }
        let t = rtx.open_table(LEASE_KEY).map_err(db("open lease_key"))?;
        for item in t.iter().map_err(db("scan lease_key"))? {
            let (k, v) = item.map_err(db("scan lease_key"))?;
            let (id, key) = k.value();
            let idb = id.to_be_bytes();
            out.record(
                T_LEASE_KEY,
                &[&idb, key],
                unseal(LEASE_KEY_TABLE, &[&idb, key], v.value())?,
            )?;
        }
        out.finish()?;
        Ok(())
    }

    /// Stream the state *as of* revision `at` as a snapshot of a fresh store:
    /// the newest version <= `at` of every key not deleted by then (no older
    /// history), every lease, current and compact revision both `new_rev`
    /// (etcd's `--bump-revision --mark-compacted`), no Raft bookkeeping and
    /// no alarms. A key whose lease is gone is written without one. This is
    /// what a point-in-time restore installs into a new member. Memory: one
    /// key's history at a time, plus the set of lease ids.
    pub fn write_state_at(
        &self,
        at: i64,
        new_rev: i64,
        w: &mut dyn Write,
    ) -> Result<StateAt, MvccError> {
        self.write_state_at_unnoted(at, new_rev, w)
            .map_err(|e| self.noted(e))
    }

    fn write_state_at_unnoted(
        &self,
        at: i64,
        new_rev: i64,
        w: &mut dyn Write,
    ) -> Result<StateAt, MvccError> {
        assert!(new_rev >= at, "a restore never moves revisions backwards");
        let rtx = self.db.begin_read().map_err(db("begin read"))?;
        let (revt, chunks) = crate::store::history::open_read(&rtx)?;
        let h = crate::store::history::History {
            rev: &revt,
            chunks: &chunks,
        };
        let key_rev = rtx.open_table(KEY_REV).map_err(db("open key_rev"))?;
        let mut out = StreamWriter::begin(w)?;
        out.record(T_META, &[META_REV.as_bytes()], &new_rev.to_le_bytes())?;
        out.record(T_META, &[META_COMPACT.as_bytes()], &new_rev.to_le_bytes())?;
        let mut lease_ids = std::collections::HashSet::new();
        let t = rtx.open_table(LEASE).map_err(db("open lease"))?;
        for item in t.iter().map_err(db("scan lease"))? {
            let (k, v) = item.map_err(db("scan lease"))?;
            let id = k.value().to_be_bytes();
            out.record(T_LEASE, &[&id], unseal(LEASE_TABLE, &[&id], v.value())?)?;
            lease_ids.insert(k.value());
        }
        let mut st = StateAt {
            leases: lease_ids.len() as u64,
            ..Default::default()
        };
        let mut emit = |out: &mut StreamWriter<'_>, key: &[u8], main: i64, sub: i64| {
            let mut kv = crate::store::kv_at(&h, key, main, sub)?;
            if kv.lease != 0 && !lease_ids.contains(&kv.lease) {
                kv.lease = 0;
                st.detached += 1;
            }
            let kb = rev_key_bytes(main, sub);
            out.record(T_REV, &[&kb], &RevRecord::encode_put_payload(&kv))?;
            let entry = IndexEntry {
                create: kv.create_revision,
                mod_main: main,
                mod_sub: sub,
                version: kv.version,
                lease: kv.lease,
                tombstone: false,
            };
            out.record(T_INDEX, &[key], &entry.encode())?;
            out.record(T_KEY_REV, &[key, &kb], &[0])?;
            if kv.lease != 0 {
                out.record(T_LEASE_KEY, &[&kv.lease.to_be_bytes(), key], &[])?;
            }
            st.keys += 1;
            Ok::<(), MvccError>(())
        };
        // key_rev is ordered by (key, main, sub): one key's history at a time;
        // `cur` is (key, its newest (main, sub, tombstone) <= at).
        type Current = Option<(Vec<u8>, Option<(i64, i64, bool)>)>;
        let mut cur: Current = None;
        for item in key_rev.iter().map_err(db("scan key_rev"))? {
            let (k, v) = item.map_err(db("scan key_rev"))?;
            let (key, main, sub) = k.value();
            let tomb = crate::store::decode_key_rev_flag(key, main, sub, v.value())?;
            if cur.as_ref().map(|(k, _)| k.as_slice()) != Some(key) {
                if let Some((k, Some((m, s, false)))) = cur.take() {
                    emit(&mut out, &k, m, s)?;
                }
                cur = Some((key.to_vec(), None));
            }
            if main <= at {
                cur.as_mut().expect("set above").1 = Some((main, sub, tomb));
            }
        }
        if let Some((k, Some((m, s, false)))) = cur.take() {
            emit(&mut out, &k, m, s)?;
        }
        out.finish()?;
        Ok(st)
    }

    /// Replace all state with a snapshot. The stream is spooled to a temporary file next to
    /// the database and its checksum verified BEFORE anything is touched; then everything is
    /// replaced in one durable write transaction. On any error the state is unchanged.
    pub fn install_snapshot(&self, r: &mut dyn Read) -> Result<(), MvccError> {
        let io = |op: &str| {
            let op = op.to_string();
            move |source| MvccError::Io { op, source }
        };
        let tmp_path = self.path.with_extension("snapshot-incoming");
        let _cleanup = (!self.spool_in_memory).then(|| RemoveOnDrop(tmp_path.clone()));
        // 1. Spool + checksum (all bytes except the trailing 4 are hashed).
        let mut crc = crc32fast::Hasher::new();
        let mut tail: Vec<u8> = Vec::with_capacity(8);
        let mut total: u64 = 0;
        let mut spooled: Vec<u8> = Vec::new();
        {
            let mut f: Box<dyn Write + '_> = if self.spool_in_memory {
                Box::new(&mut spooled)
            } else {
                Box::new(BufWriter::new(
                    File::create(&tmp_path).map_err(io("create snapshot spool file"))?,
                ))
            };
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io("read snapshot stream")(e)),
                };
                f.write_all(&buf[..n]).map_err(io("spool snapshot"))?;
                total += n as u64;
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 4 {
                    let cut = tail.len() - 4;
                    crc.update(&tail[..cut]);
                    tail.drain(..cut);
                }
            }
            f.flush().map_err(io("spool snapshot"))?;
        }
        if total < (MAGIC.len() + 4 + 1 + 8 + 4) as u64 || tail.len() != 4 {
            return Err(MvccError::Snapshot(format!(
                "stream too short ({total} bytes)"
            )));
        }
        let want = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
        if crc.finalize() != want {
            return Err(MvccError::Snapshot("checksum mismatch".into()));
        }
        let body_len = total - 4;

        // 2. Parse and replace everything in one write transaction.
        let spool: Box<dyn Read + Send> = if self.spool_in_memory {
            Box::new(std::io::Cursor::new(spooled))
        } else {
            Box::new(File::open(&tmp_path).map_err(io("open snapshot spool file"))?)
        };
        let mut rd = BufReader::with_capacity(1 << 16, spool).take(body_len);
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = self.db.begin_write().map_err(db("begin write"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(db("set durability"))?;
        // The CRC was verified above: lengths are what the writer wrote.
        let (rev, compact) = load_records(&txn, &mut rd, usize::MAX)?;
        let mut rest = [0u8; 1];
        if rd.read(&mut rest).map_err(io("read spool"))? != 0 {
            return Err(MvccError::Snapshot(
                "trailing bytes after end marker".into(),
            ));
        }
        txn.commit().map_err(db("commit snapshot"))?;
        self.rev.store(rev, Ordering::Release);
        self.compact.store(compact, Ordering::Release);
        self.auth_changed();
        Ok(())
    }
}

/// Records the parsing thread of [`load_records`] hands over at a time (bytes).
const LOAD_BATCH_BYTES: usize = 1 << 20;
/// Batches in flight between the parsing and the writing thread of [`load_records`].
const LOAD_BATCHES_IN_FLIGHT: usize = 4;

/// What the parsing thread of [`load_records`] found in the stream.
struct Parsed {
    rev: Option<i64>,
    compact: Option<i64>,
    max_main: i64,
}

/// Parse a snapshot stream from its header to its end marker and record count
/// (both checked), replacing every table of `txn` with its records. Returns the
/// stream's (revision, compact revision). The caller checks what follows the count
/// and commits. A record key or value longer than `max_part_bytes` is refused.
///
/// Two threads: one reads, parses and checks the records (every payload decoded),
/// the caller's inserts them into `txn`; they hand over batches of records encoded
/// as in the stream. Why: a large load is millions of inserts into one write
/// transaction, which only one thread can make; the rest of the work runs beside it.
fn load_records<R: Read + Send>(
    txn: &redb::WriteTransaction,
    rd: &mut R,
    max_part_bytes: usize,
) -> Result<(i64, i64), MvccError> {
    let bad = |m: &str| MvccError::Snapshot(m.to_string());
    let mut hdr = [0u8; 12];
    rd.read_exact(&mut hdr)
        .map_err(|e| short_read(e, "truncated header"))?;
    if &hdr[..8] != MAGIC {
        return Err(bad("bad magic (not a Phalanx mvcc snapshot)"));
    }
    let ver = u32::from_le_bytes(hdr[8..12].try_into().expect("4 bytes"));
    if ver != SNAP_VERSION {
        return Err(MvccError::Snapshot(format!(
            "unsupported snapshot version {ver}"
        )));
    }

    txn.delete_table(META).map_err(db("clear meta"))?;
    txn.delete_table(REV).map_err(db("clear rev"))?;
    txn.delete_table(crate::codec::REV_CHUNK)
        .map_err(db("clear rev_chunk"))?;
    txn.delete_table(KEY_INDEX).map_err(db("clear key_index"))?;
    txn.delete_table(KEY_REV).map_err(db("clear key_rev"))?;
    txn.delete_table(LEASE).map_err(db("clear lease"))?;
    txn.delete_table(LEASE_KEY).map_err(db("clear lease_key"))?;
    let parsed = {
        let mut meta = txn.open_table(META).map_err(db("open meta"))?;
        let mut revt = txn.open_table(REV).map_err(db("open rev"))?;
        let mut rev_chunk = txn
            .open_table(crate::codec::REV_CHUNK)
            .map_err(db("open rev_chunk"))?;
        let mut index = txn.open_table(KEY_INDEX).map_err(db("open key_index"))?;
        let mut key_rev = txn.open_table(KEY_REV).map_err(db("open key_rev"))?;
        let mut lease = txn.open_table(LEASE).map_err(db("open lease"))?;
        let mut lease_key = txn.open_table(LEASE_KEY).map_err(db("open lease_key"))?;
        let mut fmt = FORMAT_MAGIC.to_vec();
        fmt.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        meta.insert(
            META_FORMAT,
            seal(&[META_FORMAT.as_bytes()], &fmt).as_slice(),
        )
        .map_err(db("write meta"))?;
        std::thread::scope(|scope| -> Result<Parsed, MvccError> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(LOAD_BATCHES_IN_FLIGHT);
            // Emptied batches go back to the parser (no allocation per batch).
            let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let parser = scope.spawn(move || parse_records(rd, max_part_bytes, tx, back_rx));
            let mut sealed = Vec::new();
            let applied = (|| -> Result<(), MvccError> {
                for batch in rx.iter() {
                    let mut b = batch.as_slice();
                    while !b.is_empty() {
                        let tag = b[0];
                        let klen = u32::from_le_bytes(b[1..5].try_into().expect("4")) as usize;
                        let k = &b[5..5 + klen];
                        let b2 = &b[5 + klen..];
                        let vlen = u32::from_le_bytes(b2[..4].try_into().expect("4")) as usize;
                        let v = &b2[4..4 + vlen];
                        b = &b2[4 + vlen..];
                        // The parser checked every record: tags, names and lengths.
                        match tag {
                            T_META => {
                                let name = meta_name(k).expect("checked by the parser");
                                meta.insert(name, seal(&[name.as_bytes()], v).as_slice())
                                    .map_err(db("write meta"))?;
                            }
                            T_REV => {
                                let (m, s) = split_rev(k).expect("checked by the parser");
                                crate::store::history::insert(&mut revt, &mut rev_chunk, m, s, v)?;
                            }
                            T_INDEX => {
                                seal_into(&mut sealed, &[k], v);
                                index
                                    .insert(k, sealed.as_slice())
                                    .map_err(db("write key_index"))?;
                            }
                            T_KEY_REV => {
                                let (key, rb) = k.split_at(k.len() - 16);
                                let (m, s) = split_rev(rb).expect("checked by the parser");
                                seal_into(&mut sealed, &[key, rb], v);
                                key_rev
                                    .insert((key, m, s), sealed.as_slice())
                                    .map_err(db("write key_rev"))?;
                            }
                            T_LEASE => {
                                let id = i64::from_be_bytes(k.try_into().expect("checked"));
                                lease
                                    .insert(id, seal(&[k], v).as_slice())
                                    .map_err(db("write lease"))?;
                            }
                            _ => {
                                let (idb, key) = k.split_at(8);
                                let id = i64::from_be_bytes(idb.try_into().expect("8"));
                                lease_key
                                    .insert((id, key), seal(&[idb, key], v).as_slice())
                                    .map_err(db("write lease_key"))?;
                            }
                        }
                    }
                    // The parser may have stopped (an error): it is reported below.
                    let _ = back_tx.send(batch);
                }
                Ok(())
            })();
            // On an error here the parser finds the channel closed and stops.
            drop(rx);
            let parsed = parser.join().expect("snapshot parser thread");
            applied?;
            parsed
        })?
    };
    let (Some(rev), Some(compact)) = (parsed.rev, parsed.compact) else {
        return Err(bad("missing revision counters"));
    };
    let max_main = parsed.max_main;
    if rev < 1 || compact > rev || max_main > rev {
        return Err(MvccError::Snapshot(format!(
            "inconsistent counters: rev {rev}, compact {compact}, newest record {max_main}"
        )));
    }
    Ok((rev, compact))
}

/// The meta entry a snapshot's `meta` record names.
fn meta_name(k: &[u8]) -> Option<&'static str> {
    Some(match k {
        b"rev" => META_REV,
        b"compact_rev" => META_COMPACT,
        b"applied_meta" => META_APPLIED,
        b"alarms" => crate::codec::META_ALARMS,
        b"auth" => crate::codec::META_AUTH,
        _ => return None,
    })
}

/// (main, sub) of a 16-byte revision key.
fn split_rev(b: &[u8]) -> Result<(i64, i64), MvccError> {
    if b.len() != 16 {
        return Err(MvccError::Snapshot("bad revision key".into()));
    }
    Ok((
        i64::from_be_bytes(b[..8].try_into().expect("8")),
        i64::from_be_bytes(b[8..].try_into().expect("8")),
    ))
}

/// [`crate::codec::seal`] into a buffer reused from value to value.
fn seal_into(out: &mut Vec<u8>, key_parts: &[&[u8]], payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    for p in key_parts {
        h.update(p);
    }
    h.update(payload);
    out.clear();
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// The parsing side of [`load_records`]: reads records up to the end marker and
/// record count, checks each (as the loader always has), and sends them on in
/// batches. An error ends the stream of batches early.
fn parse_records(
    rd: &mut impl Read,
    max_part_bytes: usize,
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    back: std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<Parsed, MvccError> {
    let bad = |m: &str| MvccError::Snapshot(m.to_string());
    let mut p = Parsed {
        rev: None,
        compact: None,
        max_main: i64::MIN,
    };
    let mut count: u64 = 0;
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let mut batch = Vec::with_capacity(LOAD_BATCH_BYTES + 1024);
    // The writing side stopped (its own error, reported by it).
    let gone = || MvccError::Snapshot("the store writer stopped".into());
    loop {
        let mut tag = [0u8; 1];
        rd.read_exact(&mut tag)
            .map_err(|e| short_read(e, "truncated record"))?;
        if tag[0] == T_END {
            let mut n = [0u8; 8];
            rd.read_exact(&mut n)
                .map_err(|e| short_read(e, "truncated trailer"))?;
            if u64::from_le_bytes(n) != count {
                return Err(bad("record count mismatch"));
            }
            break;
        }
        read_chunk(rd, &mut k, max_part_bytes)
            .map_err(|e| short_read(e, "truncated record key"))?;
        read_chunk(rd, &mut v, max_part_bytes)
            .map_err(|e| short_read(e, "truncated record value"))?;
        count += 1;
        match tag[0] {
            T_META => {
                let name = meta_name(&k).ok_or_else(|| bad("unknown meta entry"))?;
                if name == META_REV || name == META_COMPACT {
                    let x = i64::from_le_bytes(
                        v.as_slice().try_into().map_err(|_| bad("bad counter"))?,
                    );
                    if name == META_REV {
                        p.rev = Some(x)
                    } else {
                        p.compact = Some(x)
                    }
                }
                if name == crate::codec::META_AUTH {
                    crate::store::decode_auth(Some(&v))
                        .map_err(|_| bad("undecodable auth state"))?;
                }
            }
            T_REV => {
                let (m, _) = split_rev(&k)?;
                crate::codec::RevRecord::decode_payload(&v)?;
                p.max_main = p.max_main.max(m);
            }
            T_INDEX => {
                crate::codec::IndexEntry::decode(&v)?;
            }
            T_KEY_REV => {
                if k.len() < 16 {
                    return Err(bad("bad key_rev key"));
                }
                split_rev(&k[k.len() - 16..])?;
            }
            T_LEASE => {
                if k.len() != 8 {
                    return Err(bad("bad lease id"));
                }
            }
            T_LEASE_KEY => {
                if k.len() < 8 {
                    return Err(bad("bad lease_key key"));
                }
            }
            t => return Err(MvccError::Snapshot(format!("unknown record tag {t}"))),
        }
        batch.push(tag[0]);
        batch.extend_from_slice(&(k.len() as u32).to_le_bytes());
        batch.extend_from_slice(&k);
        batch.extend_from_slice(&(v.len() as u32).to_le_bytes());
        batch.extend_from_slice(&v);
        if batch.len() >= LOAD_BATCH_BYTES {
            let next = back
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(LOAD_BATCH_BYTES + 1024));
            let full = std::mem::replace(&mut batch, next);
            batch.clear();
            tx.send(full).map_err(|_| gone())?;
        }
    }
    if !batch.is_empty() {
        tx.send(batch).map_err(|_| gone())?;
    }
    Ok(p)
}

/// Largest record key or value [`Store::load_snapshot`] accepts before the stream's
/// checksum is known (the backup and etcd-snapshot readers use the same bound).
pub const MAX_STREAMED_PART_BYTES: usize = 256 * 1024 * 1024;

/// How [`Store::load_snapshot`] commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadDurability {
    /// One fsynced commit at the end: the store survives a crash once the call returns.
    Durable,
    /// No fsync: for scratch stores read by this process and then thrown away (a
    /// restore's copy of the backup). The data is lost if the machine crashes.
    Scratch,
}

impl Store {
    /// Replace all state with a snapshot read straight from `r`, without spooling it:
    /// records are written into one write transaction as they arrive, the CRC32 and
    /// record count are checked at the end of the stream, and only then is the
    /// transaction committed (once, with `durability`). A bad, truncated or failing
    /// stream aborts the transaction, so on any error the state is unchanged, as with
    /// [`Store::install_snapshot`]. Memory: one record at a time (redb spills dirty
    /// pages of a large transaction to the file).
    ///
    /// It holds the store's writer lock for as long as the stream takes to arrive, so
    /// it is for stores nothing else writes to (a restore, a scratch store); a member
    /// installing a Raft snapshot uses [`Store::install_snapshot`].
    pub fn load_snapshot(
        &self,
        r: &mut (dyn Read + Send),
        durability: LoadDurability,
    ) -> Result<(), MvccError> {
        let mut rd = CrcReader {
            inner: BufReader::with_capacity(1 << 16, r),
            crc: crc32fast::Hasher::new(),
        };
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.begin_load(durability)?;
        // Not verified yet: a damaged length must not allocate gigabytes.
        let (rev, compact) = load_records(&txn, &mut rd, MAX_STREAMED_PART_BYTES)?;
        let want = rd.crc.clone().finalize();
        let mut c = [0u8; 4];
        rd.inner
            .read_exact(&mut c)
            .map_err(|_| MvccError::Snapshot("stream truncated in its CRC".into()))?;
        if u32::from_le_bytes(c) != want {
            return Err(MvccError::Snapshot("checksum mismatch".into()));
        }
        // The end of the stream is read too: a source that reports a failure after the
        // last byte (e.g. a whole-backup hash mismatch) stops the load here.
        let mut rest = [0u8; 1];
        match rd.inner.read(&mut rest) {
            Ok(0) => {}
            Ok(_) => {
                return Err(MvccError::Snapshot(
                    "trailing bytes after the snapshot's checksum".into(),
                ))
            }
            Err(source) => {
                return Err(MvccError::Io {
                    op: "read snapshot stream".into(),
                    source,
                })
            }
        }
        txn.commit().map_err(db("commit snapshot"))?;
        self.rev.store(rev, Ordering::Release);
        self.compact.store(compact, Ordering::Release);
        self.auth_changed();
        Ok(())
    }
}

/// Keys whose history [`Store::reduce_to_state_at`] reads before it applies their
/// changes: its memory is this many keys' revision lists (a key with a long history
/// holds all of its revisions, 17 bytes each).
pub const REDUCE_BATCH_KEYS: usize = 10_000;

impl Store {
    /// A write transaction for a whole-store load or rewrite, committed with
    /// `durability` (the caller holds the writer lock).
    fn begin_load(&self, durability: LoadDurability) -> Result<redb::WriteTransaction, MvccError> {
        let mut txn = self.db.begin_write().map_err(db("begin write"))?;
        txn.set_durability(match durability {
            LoadDurability::Durable => Durability::Immediate,
            LoadDurability::Scratch => Durability::None,
        })
        .map_err(db("set durability"))?;
        Ok(txn)
    }

    /// Turn this store, holding a backup's full history (loaded by
    /// [`Store::load_snapshot`], archive replayed on top), into exactly what
    /// [`Store::write_state_at`]`(at, new_rev)` would have installed into a fresh
    /// store: the newest version <= `at` of every key not deleted by then, no
    /// other history, every lease (a key whose lease is gone loses it), current
    /// and compact revision both `new_rev`, no Raft bookkeeping, alarms or auth
    /// state. In place, in one durable write transaction, so a restore needs no
    /// second store. Memory: [`REDUCE_BATCH_KEYS`] keys' revision lists at a time
    /// plus the set of lease ids.
    ///
    /// The result is checked for orphans: the `rev`, `key_rev` and `key_index`
    /// tables must each end with exactly one entry per key kept (a record that no
    /// key's revision list names is an inconsistent source and an error).
    ///
    /// `before_commit` runs once the reduction is written and before it is committed;
    /// until then every reader still sees the full history (a restore reads the state
    /// at `at` on another thread meanwhile, to check the result against). Its error
    /// aborts the reduction: the store is left unchanged. The commit is durable or not
    /// as `durability` says (a restore commits without fsync, then reads the result
    /// back while [`Store::make_durable`] writes it to disk).
    pub fn reduce_to_state_at(
        &self,
        at: i64,
        new_rev: i64,
        durability: LoadDurability,
        before_commit: impl FnOnce() -> Result<(), String>,
    ) -> Result<StateAt, MvccError> {
        assert!(new_rev >= at, "a restore never moves revisions backwards");
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.begin_load(durability)?;
        let st = reduce_records(&txn, at, new_rev).map_err(|e| self.noted(e))?;
        before_commit().map_err(MvccError::Snapshot)?;
        txn.commit().map_err(db("commit reduced state"))?;
        self.rev.store(new_rev, Ordering::Release);
        self.compact.store(new_rev, Ordering::Release);
        self.auth_changed();
        Ok(st)
    }
}

impl Store {
    /// Make every commit so far durable: an empty write transaction committed with
    /// fsync, which persists the commits made without one before it (redb's
    /// `Durability::None`). Once it returns, a crash loses nothing committed. Readers
    /// are not held up meanwhile.
    pub fn make_durable(&self) -> Result<(), MvccError> {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = self.db.begin_write().map_err(db("begin write"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(db("set durability"))?;
        txn.commit().map_err(db("commit (make durable)"))
    }
}

/// The work of [`Store::reduce_to_state_at`] inside its write transaction.
fn reduce_records(
    txn: &redb::WriteTransaction,
    at: i64,
    new_rev: i64,
) -> Result<StateAt, MvccError> {
    use redb::ReadableTableMetadata;
    {
        let mut meta = txn.open_table(META).map_err(db("open meta"))?;
        for name in [
            META_APPLIED,
            crate::codec::META_ALARMS,
            crate::codec::META_AUTH,
        ] {
            meta.remove(name).map_err(db("write meta"))?;
        }
        for name in [META_REV, META_COMPACT] {
            meta.insert(
                name,
                seal(&[name.as_bytes()], &new_rev.to_le_bytes()).as_slice(),
            )
            .map_err(db("write meta"))?;
        }
    }
    let lease_ids: std::collections::HashSet<i64> = {
        let t = txn.open_table(LEASE).map_err(db("open lease"))?;
        let mut ids = std::collections::HashSet::new();
        for item in t.iter().map_err(db("scan lease"))? {
            ids.insert(item.map_err(db("scan lease"))?.0.value());
        }
        ids
    };
    let mut st = StateAt {
        leases: lease_ids.len() as u64,
        ..Default::default()
    };
    // lease_key is rebuilt from the keys kept (as write_state_at writes it).
    txn.delete_table(LEASE_KEY).map_err(db("clear lease_key"))?;
    let mut lease_key = txn.open_table(LEASE_KEY).map_err(db("open lease_key"))?;
    let mut revt = txn.open_table(REV).map_err(db("open rev"))?;
    let mut chunks = txn
        .open_table(crate::codec::REV_CHUNK)
        .map_err(db("open rev_chunk"))?;
    let mut index = txn.open_table(KEY_INDEX).map_err(db("open key_index"))?;
    let mut key_rev = txn.open_table(KEY_REV).map_err(db("open key_rev"))?;
    // One key's revisions: (main, sub, tombstone), in order.
    type Group = (Vec<u8>, Vec<(i64, i64, bool)>);
    let mut from: Option<Vec<u8>> = None;
    loop {
        // Read a batch of whole keys, then change them (a table cannot be written
        // while it is being iterated).
        let mut groups: Vec<Group> = Vec::new();
        let mut next = None;
        {
            let it = match &from {
                None => key_rev.iter().map_err(db("scan key_rev"))?,
                Some(k) => key_rev
                    .range((k.as_slice(), i64::MIN, i64::MIN)..)
                    .map_err(db("scan key_rev"))?,
            };
            for item in it {
                let (k, v) = item.map_err(db("scan key_rev"))?;
                let (key, main, sub) = k.value();
                let tomb = crate::store::decode_key_rev_flag(key, main, sub, v.value())?;
                if groups.last().map(|g| g.0.as_slice()) != Some(key) {
                    if groups.len() >= REDUCE_BATCH_KEYS {
                        next = Some(key.to_vec());
                        break;
                    }
                    groups.push((key.to_vec(), Vec::new()));
                }
                groups.last_mut().expect("pushed").1.push((main, sub, tomb));
            }
        }
        for (key, revs) in &groups {
            let live = match revs.iter().rev().find(|r| r.0 <= at) {
                Some(&(m, s, false)) => Some((m, s)),
                _ => None,
            };
            for &(m, s, _) in revs {
                if Some((m, s)) != live {
                    crate::store::history::remove(&mut revt, &mut chunks, m, s)?;
                    key_rev
                        .remove((key.as_slice(), m, s))
                        .map_err(db("write key_rev"))?;
                }
            }
            let Some((m, s)) = live else {
                index
                    .remove(key.as_slice())
                    .map_err(db("write key_index"))?;
                continue;
            };
            let mut kv = crate::store::kv_at(
                &crate::store::history::History {
                    rev: &revt,
                    chunks: &chunks,
                },
                key,
                m,
                s,
            )?;
            if kv.lease != 0 && !lease_ids.contains(&kv.lease) {
                kv.lease = 0;
                st.detached += 1;
                crate::store::history::remove(&mut revt, &mut chunks, m, s)?;
                crate::store::history::insert(
                    &mut revt,
                    &mut chunks,
                    m,
                    s,
                    &RevRecord::encode_put_payload(&kv),
                )?;
            }
            let entry = IndexEntry {
                create: kv.create_revision,
                mod_main: m,
                mod_sub: s,
                version: kv.version,
                lease: kv.lease,
                tombstone: false,
            };
            let same = match index.get(key.as_slice()).map_err(db("read key_index"))? {
                Some(v) => {
                    let p = unseal(KEY_INDEX_TABLE, &[key], v.value())?;
                    IndexEntry::decode(p)? == entry
                }
                None => false,
            };
            if !same {
                index
                    .insert(key.as_slice(), seal(&[key], &entry.encode()).as_slice())
                    .map_err(db("write key_index"))?;
            }
            if kv.lease != 0 {
                let idb = kv.lease.to_be_bytes();
                lease_key
                    .insert(
                        (kv.lease, key.as_slice()),
                        seal(&[&idb, key], &[]).as_slice(),
                    )
                    .map_err(db("write lease_key"))?;
            }
            st.keys += 1;
        }
        match next {
            Some(k) => from = Some(k),
            None => break,
        }
    }
    let counts = [
        ("rev", revt.len().map_err(db("count rev"))?),
        ("key_rev", key_rev.len().map_err(db("count key_rev"))?),
        ("key_index", index.len().map_err(db("count key_index"))?),
    ];
    for (table, n) in counts {
        if n != st.keys {
            return Err(MvccError::Snapshot(format!(
                "state at revision {at}: {n} entries left in {table} for {} keys (records that no key's revision list names)",
                st.keys
            )));
        }
    }
    Ok(st)
}

/// Reader that CRC32s every byte it returns.
struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// A read that stopped early: a truncated stream (`what`), or the source's own error.
fn short_read(e: std::io::Error, what: &str) -> MvccError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        MvccError::Snapshot(what.to_string())
    } else {
        MvccError::Io {
            op: format!("read snapshot stream ({what})"),
            source: e,
        }
    }
}

fn read_chunk(r: &mut impl Read, buf: &mut Vec<u8>, max: usize) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("record part of {len} bytes (more than {max})"),
        ));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)
}

struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
