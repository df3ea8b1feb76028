//! On-disk record encodings and checksums.
//!
//! Every value stored in redb is `crc32(table_key_bytes ++ payload) (u32 LE) ++ payload`.
//! Including the table key in the checksum means a value that ends up under the wrong key
//! (misdirected write, B-tree damage) is detected just like a flipped bit in the payload.

use crate::error::MvccError;
use etcd_client::proto::PbKeyValue;
use prost::Message;
use redb::TableDefinition;

/// `meta`: counters and markers, keyed by a short name.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `rev`: (main, sub) revision → put record or tombstone. The MVCC history.
pub(crate) const REV: TableDefinition<(i64, i64), &[u8]> = TableDefinition::new("rev");
/// `rev_chunk`: (main, sub, piece) → one piece of a `rev` record too large to
/// store whole (see `store::history`).
pub(crate) const REV_CHUNK: TableDefinition<(i64, i64, u32), &[u8]> =
    TableDefinition::new("rev_chunk");
/// `key_index`: key → latest state of the key (create/mod/version/lease/tombstone).
pub(crate) const KEY_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key_index");
/// `key_rev`: (key, main, sub) → tombstone flag byte. Per-key revision list for historical reads
/// and compaction; kept separate from `key_index` so a hot key's put does not rewrite an
/// ever-growing revision list.
pub(crate) const KEY_REV: TableDefinition<(&[u8], i64, i64), &[u8]> =
    TableDefinition::new("key_rev");
/// `lease`: lease id → granted TTL.
pub(crate) const LEASE: TableDefinition<i64, &[u8]> = TableDefinition::new("lease");
/// `lease_key`: (lease id, key) → checksum only. Keys attached to each lease.
pub(crate) const LEASE_KEY: TableDefinition<(i64, &[u8]), &[u8]> =
    TableDefinition::new("lease_key");

pub(crate) const META_FORMAT: &str = "format";
pub(crate) const META_REV: &str = "rev";
pub(crate) const META_COMPACT: &str = "compact_rev";
pub(crate) const META_APPLIED: &str = "applied_meta";
/// Active alarms: postcard `Vec<(member_id u64, alarm i32)>`, sorted.
pub(crate) const META_ALARMS: &str = "alarms";
/// postcard `auth::AuthState` (absent until the first auth change).
pub(crate) const META_AUTH: &str = "auth";

/// Content of the `format` meta entry: identifies a Phalanx mvcc store.
pub(crate) const FORMAT_MAGIC: &[u8] = b"phalanx-mvcc";
/// 2: large `rev` records are stored in pieces (`rev_chunk`). A version-1
/// store is upgraded in place when opened (it has no pieces, so nothing is
/// rewritten); an older binary refuses a version-2 store by its version.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The oldest format this binary opens (and upgrades).
pub(crate) const OLDEST_FORMAT_VERSION: u32 = 1;

fn crc_parts(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Build a stored value: checksum over (key context parts ++ payload), then payload.
pub(crate) fn seal(key_parts: &[&[u8]], payload: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    for p in key_parts {
        h.update(p);
    }
    h.update(payload);
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Verify a stored value and return its payload.
pub(crate) fn unseal<'a>(
    table: &'static str,
    key_parts: &[&[u8]],
    stored: &'a [u8],
) -> Result<&'a [u8], MvccError> {
    let corrupted = || MvccError::Corrupted {
        table,
        key: render_key(key_parts),
    };
    if stored.len() < 4 {
        return Err(corrupted());
    }
    let (c, payload) = stored.split_at(4);
    let want = u32::from_le_bytes(c.try_into().expect("4 bytes"));
    let mut parts: Vec<&[u8]> = key_parts.to_vec();
    parts.push(payload);
    if crc_parts(&parts) != want {
        return Err(corrupted());
    }
    Ok(payload)
}

/// Human-readable rendering of a key for error messages (printable ASCII kept, rest hex-escaped).
pub(crate) fn render_key(parts: &[&[u8]]) -> String {
    let mut s = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push('/');
        }
        s.push('"');
        for &b in p.iter() {
            if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                s.push(b as char);
            } else {
                s.push_str(&format!("\\x{b:02x}"));
            }
        }
        s.push('"');
    }
    s
}

pub(crate) fn rev_key_bytes(main: i64, sub: i64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&main.to_be_bytes());
    b[8..].copy_from_slice(&sub.to_be_bytes());
    b
}

/// One entry of the MVCC history.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RevRecord {
    /// A put: the full KeyValue as it was written (mod_revision = this revision).
    Put(PbKeyValue),
    /// A delete marker for `key` (etcd's tombstone).
    Tombstone(Vec<u8>),
}

const REC_PUT: u8 = 0;
const REC_TOMBSTONE: u8 = 1;
/// Not a record: the stub `store::history` leaves in `rev` for a record
/// stored in pieces. Never reaches `decode_payload` (it would be refused).
pub(crate) const REC_CHUNKED: u8 = 2;

impl RevRecord {
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            RevRecord::Put(kv) => &kv.key,
            RevRecord::Tombstone(k) => k,
        }
    }

    pub(crate) fn encode_put_payload(kv: &PbKeyValue) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + kv.encoded_len());
        out.push(REC_PUT);
        kv.encode(&mut out).expect("Vec grows");
        out
    }

    pub(crate) fn encode_tombstone_payload(key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + key.len());
        out.push(REC_TOMBSTONE);
        out.extend_from_slice(key);
        out
    }

    pub(crate) fn decode_payload(p: &[u8]) -> Result<RevRecord, MvccError> {
        match p.first() {
            Some(&REC_PUT) => PbKeyValue::decode(&p[1..])
                .map(RevRecord::Put)
                .map_err(|e| MvccError::Decode {
                    what: "rev record",
                    detail: e.to_string(),
                }),
            Some(&REC_TOMBSTONE) => Ok(RevRecord::Tombstone(p[1..].to_vec())),
            other => Err(MvccError::Decode {
                what: "rev record",
                detail: format!("unknown record kind {other:?}"),
            }),
        }
    }
}

/// Latest state of one key (value lives in the `rev` table at `mod_rev`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Revision that created the current generation (0 when tombstoned).
    pub create: i64,
    /// (main, sub) of the latest record (put or tombstone).
    pub mod_main: i64,
    pub mod_sub: i64,
    /// Version within the current generation (0 when tombstoned).
    pub version: i64,
    /// Attached lease (0 = none).
    pub lease: i64,
    pub tombstone: bool,
}

const INDEX_LEN: usize = 8 * 5 + 1;

impl IndexEntry {
    pub(crate) fn encode(&self) -> [u8; INDEX_LEN] {
        let mut b = [0u8; INDEX_LEN];
        b[0..8].copy_from_slice(&self.create.to_le_bytes());
        b[8..16].copy_from_slice(&self.mod_main.to_le_bytes());
        b[16..24].copy_from_slice(&self.mod_sub.to_le_bytes());
        b[24..32].copy_from_slice(&self.version.to_le_bytes());
        b[32..40].copy_from_slice(&self.lease.to_le_bytes());
        b[40] = self.tombstone as u8;
        b
    }

    pub(crate) fn decode(p: &[u8]) -> Result<IndexEntry, MvccError> {
        if p.len() != INDEX_LEN || p[40] > 1 {
            return Err(MvccError::Decode {
                what: "key_index entry",
                detail: format!("bad length {} or flag", p.len()),
            });
        }
        let i = |o: usize| i64::from_le_bytes(p[o..o + 8].try_into().expect("8 bytes"));
        Ok(IndexEntry {
            create: i(0),
            mod_main: i(8),
            mod_sub: i(16),
            version: i(24),
            lease: i(32),
            tombstone: p[40] == 1,
        })
    }
}

pub(crate) fn decode_i64(what: &'static str, p: &[u8]) -> Result<i64, MvccError> {
    p.try_into()
        .map(i64::from_le_bytes)
        .map_err(|_| MvccError::Decode {
            what,
            detail: format!("expected 8 bytes, got {}", p.len()),
        })
}
