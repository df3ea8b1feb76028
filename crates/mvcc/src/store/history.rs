//! The MVCC history (`rev`) as the rest of the store sees it: one logical
//! payload (a put record or a tombstone) per revision.
//!
//! A payload of [`REV_PIECE_BYTES`] or more is stored as full pieces of
//! exactly that size in `rev_chunk`, keyed `(main, sub, piece)`, plus a stub
//! in `rev` holding the piece count, the total length and the tail that does
//! not fill a piece. Why: redb stores a B-tree leaf in a power-of-two run of
//! pages, so a leaf holding one 64 KiB value took 128 KiB, twice etcd's
//! bytes on disk. A piece fills one 4 KiB leaf page exactly, and the tail
//! shares a `rev` leaf with other small records.
//!
//! Every piece is sealed with its own key (revision and piece number), so a
//! piece that is lost, damaged or misplaced is named in the error. The
//! logical payload, and so HashKV and the snapshot stream, are the same
//! whether a record is stored whole or in pieces.

#[allow(unused_imports)]
use super::*;
use crate::codec::{REC_CHUNKED, REV_CHUNK};

/// Bytes of payload in one piece: a leaf page (4096) less redb's leaf header
/// (4), the piece's value length (4), its fixed 20-byte key and our 4-byte
/// checksum. Filling the page exactly is what keeps large values at ~1.0×.
pub(crate) const REV_PIECE_BYTES: usize = 4096 - 4 - 4 - 20 - 4;

/// `[REC_CHUNKED] ++ total_len u32 LE ++ pieces u32 LE ++ tail`.
const STUB_HEADER_BYTES: usize = 1 + 4 + 4;

pub(crate) trait ChunkT: ReadableTable<(i64, i64, u32), &'static [u8]> {}
impl<T: ReadableTable<(i64, i64, u32), &'static [u8]>> ChunkT for T {}

/// Read access to the history: the `rev` table and its pieces.
pub(crate) struct History<'a, R: RevT, C: ChunkT> {
    pub(crate) rev: &'a R,
    pub(crate) chunks: &'a C,
}

fn piece_key(main: i64, sub: i64, i: u32) -> ([u8; 16], [u8; 4]) {
    (rev_key_bytes(main, sub), i.to_be_bytes())
}

impl<'a, R: RevT, C: ChunkT> History<'a, R, C> {
    /// The record at (main, sub), verified and decoded (the payload is decoded
    /// where redb holds it: no copy of a record stored whole).
    pub(crate) fn record(&self, main: i64, sub: i64) -> Result<Option<RevRecord>, MvccError> {
        match self.rev.get((main, sub)).map_err(db("read rev"))? {
            None => Ok(None),
            Some(g) => Ok(Some(RevRecord::decode_payload(&self.resolve(
                main,
                sub,
                g.value(),
            )?)?)),
        }
    }

    /// The logical payload of a `rev` entry read by the caller (`stored` is
    /// the sealed value), reassembled from its pieces when it has them; a
    /// record stored whole is borrowed from `stored`, not copied.
    pub(crate) fn resolve<'s>(
        &self,
        main: i64,
        sub: i64,
        stored: &'s [u8],
    ) -> Result<std::borrow::Cow<'s, [u8]>, MvccError> {
        let kb = rev_key_bytes(main, sub);
        let p = unseal(REV_TABLE, &[&kb], stored)?;
        let Some((total, pieces, tail)) = parse_stub(p) else {
            return Ok(std::borrow::Cow::Borrowed(p));
        };
        let corrupted = |what: String| MvccError::Corrupted {
            table: REV_CHUNK_TABLE,
            key: format!("({main}, {sub}) {what}"),
        };
        if pieces as usize * REV_PIECE_BYTES + tail.len() != total as usize {
            return Err(corrupted(format!(
                "stub says {total} bytes in {pieces} pieces plus a {}-byte tail",
                tail.len()
            )));
        }
        let mut out = Vec::with_capacity(total as usize);
        for i in 0..pieces {
            let g = self
                .chunks
                .get((main, sub, i))
                .map_err(db("read rev_chunk"))?
                .ok_or_else(|| corrupted(format!("piece {i} of {pieces} is missing")))?;
            let (kb, ib) = piece_key(main, sub, i);
            let piece = unseal(REV_CHUNK_TABLE, &[&kb, &ib], g.value())?;
            if piece.len() != REV_PIECE_BYTES {
                return Err(corrupted(format!(
                    "piece {i} holds {} bytes, not {REV_PIECE_BYTES}",
                    piece.len()
                )));
            }
            out.extend_from_slice(piece);
        }
        out.extend_from_slice(tail);
        Ok(std::borrow::Cow::Owned(out))
    }
}

/// (total length, full pieces, tail) of a stub; None for a whole record.
fn parse_stub(p: &[u8]) -> Option<(u32, u32, &[u8])> {
    if p.first() != Some(&REC_CHUNKED) || p.len() < STUB_HEADER_BYTES {
        return None;
    }
    let total = u32::from_le_bytes(p[1..5].try_into().expect("4 bytes"));
    let pieces = u32::from_le_bytes(p[5..9].try_into().expect("4 bytes"));
    Some((total, pieces, &p[STUB_HEADER_BYTES..]))
}

/// Store `payload` at (main, sub); returns whether a record was there already.
pub(crate) fn insert(
    rev: &mut Table<'_, (i64, i64), &'static [u8]>,
    chunks: &mut Table<'_, (i64, i64, u32), &'static [u8]>,
    main: i64,
    sub: i64,
    payload: &[u8],
) -> Result<bool, MvccError> {
    debug_assert_ne!(payload.first(), Some(&REC_CHUNKED), "a logical payload");
    let kb = rev_key_bytes(main, sub);
    let existed = if payload.len() < REV_PIECE_BYTES {
        rev.insert((main, sub), seal(&[&kb], payload).as_slice())
            .map_err(db("write rev"))?
            .is_some()
    } else {
        let total = u32::try_from(payload.len()).expect("a record is far below 4 GiB");
        let pieces = payload.len() / REV_PIECE_BYTES;
        for (i, piece) in payload.chunks_exact(REV_PIECE_BYTES).enumerate() {
            let (kb, ib) = piece_key(main, sub, i as u32);
            chunks
                .insert((main, sub, i as u32), seal(&[&kb, &ib], piece).as_slice())
                .map_err(db("write rev_chunk"))?;
        }
        let mut stub = Vec::with_capacity(STUB_HEADER_BYTES + REV_PIECE_BYTES);
        stub.push(REC_CHUNKED);
        stub.extend_from_slice(&total.to_le_bytes());
        stub.extend_from_slice(&(pieces as u32).to_le_bytes());
        stub.extend_from_slice(&payload[pieces * REV_PIECE_BYTES..]);
        rev.insert((main, sub), seal(&[&kb], &stub).as_slice())
            .map_err(db("write rev"))?
            .is_some()
    };
    Ok(existed)
}

/// Remove the record at (main, sub) and its pieces.
pub(crate) fn remove(
    rev: &mut Table<'_, (i64, i64), &'static [u8]>,
    chunks: &mut Table<'_, (i64, i64, u32), &'static [u8]>,
    main: i64,
    sub: i64,
) -> Result<(), MvccError> {
    let pieces = {
        let Some(g) = rev.remove((main, sub)).map_err(db("compact rev"))? else {
            return Ok(());
        };
        let kb = rev_key_bytes(main, sub);
        parse_stub(unseal(REV_TABLE, &[&kb], g.value())?).map_or(0, |(_, n, _)| n)
    };
    for i in 0..pieces {
        chunks
            .remove((main, sub, i))
            .map_err(db("compact rev_chunk"))?;
    }
    Ok(())
}

/// The two tables of the history, as a read transaction opens them.
pub(crate) type ReadTables = (
    redb::ReadOnlyTable<(i64, i64), &'static [u8]>,
    redb::ReadOnlyTable<(i64, i64, u32), &'static [u8]>,
);

/// The two tables of the history, as a write transaction opens them.
pub(crate) type WriteHistory<'a, 't> =
    History<'a, Table<'t, (i64, i64), &'static [u8]>, Table<'t, (i64, i64, u32), &'static [u8]>>;

/// Open the history for reading in `rtx`.
pub(crate) fn open_read(rtx: &redb::ReadTransaction) -> Result<ReadTables, MvccError> {
    Ok((
        rtx.open_table(REV).map_err(db("open rev"))?,
        rtx.open_table(REV_CHUNK).map_err(db("open rev_chunk"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::REV_CHUNK;
    use crate::Command;
    use etcd_client::proto::{PbPutRequest, PbRangeRequest};

    fn value(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn put(store: &Store, key: &str, v: Vec<u8>) {
        let req = PbPutRequest {
            key: key.as_bytes().to_vec(),
            value: v,
            ..Default::default()
        };
        store
            .apply_batch(&[Some(Command::put(&req))], b"m", false)
            .unwrap();
    }

    fn get(store: &Store, key: &str) -> Result<Vec<u8>, EtcdError> {
        let r = store.range(&PbRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })?;
        Ok(r.kvs
            .into_iter()
            .next()
            .map(|kv| kv.value)
            .unwrap_or_default())
    }

    fn pieces(store: &Store) -> u64 {
        let rtx = store.db.begin_read().unwrap();
        let t = rtx.open_table(REV_CHUNK).unwrap();
        redb::ReadableTableMetadata::len(&t).unwrap()
    }

    /// Sizes around the piece boundary, and a large value, read back exactly
    /// through range, watch events, a snapshot and compaction.
    #[test]
    fn large_records_round_trip_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kv.redb")).unwrap();
        let sizes = [
            REV_PIECE_BYTES - 40,
            REV_PIECE_BYTES,
            REV_PIECE_BYTES + 1,
            2 * REV_PIECE_BYTES,
            64 * 1024,
        ];
        for (i, n) in sizes.iter().enumerate() {
            put(&store, &format!("k{i}"), value(*n, i as u8));
        }
        assert!(pieces(&store) > 0, "large records are stored in pieces");
        for (i, n) in sizes.iter().enumerate() {
            assert_eq!(get(&store, &format!("k{i}")).unwrap(), value(*n, i as u8));
        }
        let evs = store.events(b"k", b"l", 1, i64::MAX, false, 100).unwrap();
        assert_eq!(evs.len(), sizes.len());
        for (e, (i, n)) in evs.iter().zip(sizes.iter().enumerate()) {
            assert_eq!(e.kv.as_ref().unwrap().value, value(*n, i as u8));
        }
        store.verify_all().unwrap();

        // The snapshot stream carries whole records; a store installed from
        // it stores them in pieces again and hashes the same.
        let mut snap = Vec::new();
        store.write_snapshot(&mut snap).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let other = Store::open(&dir2.path().join("kv.redb")).unwrap();
        other
            .install_snapshot(&mut std::io::Cursor::new(&snap))
            .unwrap();
        assert_eq!(other.hash_kv(0).unwrap(), store.hash_kv(0).unwrap());
        assert_eq!(pieces(&other), pieces(&store));
        assert_eq!(get(&other, "k4").unwrap(), value(64 * 1024, 4));

        // Overwrite everything, compact: the old pieces go with their records.
        let before = pieces(&store);
        for i in 0..sizes.len() {
            put(&store, &format!("k{i}"), b"small".to_vec());
        }
        let rev = store.current_revision();
        store
            .apply_batch(&[Some(Command::Compact { revision: rev })], b"m", true)
            .unwrap();
        assert!(before > 0);
        assert_eq!(pieces(&store), 0, "compaction left orphaned pieces");
        store.verify_all().unwrap();
    }

    /// A lost or damaged piece is named; it is never served.
    #[test]
    fn a_missing_or_damaged_piece_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kv.redb")).unwrap();
        put(&store, "big", value(3 * REV_PIECE_BYTES + 10, 7));
        let (main, sub) = (2, 0);
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(REV_CHUNK).unwrap();
                let mut damaged = t.get((main, sub, 1u32)).unwrap().unwrap().value().to_vec();
                damaged[100] ^= 0xFF;
                t.insert((main, sub, 1u32), damaged.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let e = store.verify_all().unwrap_err().to_string();
        assert!(e.contains("rev_chunk"), "{e}");
        assert!(get(&store, "big").is_err());
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(REV_CHUNK)
                .unwrap()
                .remove((main, sub, 2u32))
                .unwrap();
            txn.commit().unwrap();
        }
        let e = store.verify_all().unwrap_err().to_string();
        assert!(e.contains("rev_chunk"), "{e}");
    }

    /// Space: 63 puts of 64 KiB (the quota report's workload) use at most
    /// 1.1× the value bytes in pages; whole, each took a 128 KiB page run.
    #[test]
    fn large_values_take_about_their_size_in_pages() {
        const PUTS: usize = 63;
        const VALUE_BYTES: usize = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("kv.redb")).unwrap();
        for i in 0..PUTS {
            put(&store, &format!("k-{i:05}"), value(VALUE_BYTES, i as u8));
        }
        store.apply_batch(&[], b"m", true).unwrap();
        let size = store.db_size().unwrap();
        let live = (PUTS * VALUE_BYTES) as f64;
        let ratio = size.in_use_bytes as f64 / live;
        assert!(ratio <= 1.1, "pages in use are {ratio:.2}× the value bytes");
    }

    /// A version-1 store opens and is upgraded in place; a newer one is refused.
    #[test]
    fn format_1_is_upgraded_and_a_newer_format_refused() {
        use crate::codec::{FORMAT_MAGIC, META, META_FORMAT};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let set_version = |v: u32| {
            let store = Store::open(&path).unwrap();
            let txn = store.db.begin_write().unwrap();
            if v == 1 {
                txn.delete_table(REV_CHUNK).unwrap();
            }
            let mut fmt = FORMAT_MAGIC.to_vec();
            fmt.extend_from_slice(&v.to_le_bytes());
            txn.open_table(META)
                .unwrap()
                .insert(
                    META_FORMAT,
                    seal(&[META_FORMAT.as_bytes()], &fmt).as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
        };
        {
            let store = Store::open(&path).unwrap();
            put(&store, "a", value(2 * REV_PIECE_BYTES, 1));
        }
        // Pretend the file predates pieces (version 1 had no rev_chunk table
        // and no large record in pieces): recreate it with only small data.
        std::fs::remove_file(&path).unwrap();
        {
            let store = Store::open(&path).unwrap();
            put(&store, "a", b"small".to_vec());
        }
        set_version(1);
        let store = Store::open(&path).unwrap();
        assert_eq!(get(&store, "a").unwrap(), b"small");
        put(&store, "b", value(2 * REV_PIECE_BYTES, 2));
        assert_eq!(get(&store, "b").unwrap(), value(2 * REV_PIECE_BYTES, 2));
        drop(store);
        set_version(FORMAT_VERSION + 1);
        match Store::open(&path) {
            Err(MvccError::UnsupportedFormat { found, .. }) => {
                assert_eq!(found, FORMAT_VERSION + 1)
            }
            Err(e) => panic!("expected UnsupportedFormat, got {e}"),
            Ok(_) => panic!("a newer format was opened"),
        }
    }
}
