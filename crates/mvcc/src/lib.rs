//! # mvcc — etcd v3's MVCC key-value state machine on redb
//!
//! This crate is the deterministic state machine the Raft layer applies committed log
//! entries to. It performs no network I/O and reads no clock: every input (including lease
//! ids and revocations) arrives as a [`Command`]. Given the same sequence of commands, every
//! member produces byte-identical state, responses ([`ApplyResponse`]) and watch events.
//!
//! ## Main types
//! * [`Command`] — payload of a Raft log entry (postcard-serialized; etcd requests inside are
//!   prost-encoded bytes so the log format does not depend on serde support in prost types).
//! * [`Store`] — the state machine. [`Store::apply_batch`] applies a batch of entries in one
//!   redb write transaction together with the Raft layer's opaque `applied_meta`, so data and
//!   "last applied" can never disagree after a crash. Reads ([`Store::range`],
//!   [`Store::events`], [`Store::hash_kv`], snapshots) run on redb read transactions and see
//!   a consistent snapshot without blocking the writer.
//! * [`ApplyResponse`] / [`Applied`] — deterministic result of one command, plus the watch
//!   events it produced (prev_kv always filled when a previous version existed).
//! * [`EtcdError`] — client-visible errors with etcd's exact gRPC code and message.
//! * [`MvccError`] — fatal local errors (I/O, checksum mismatch, foreign file).
//!
//! ## Semantics (etcd v3)
//! One store-wide revision: an empty store is at revision 1; every write request that changes
//! something bumps it by exactly one; its individual changes get sub-revisions 0, 1, ...
//! Read-only txns and deletes that delete nothing do not bump it. Keys carry
//! `create_revision`, `mod_revision`, `version` (1 on creation, reset by delete).
//! Compaction at `r` keeps, for every key, the newest version `<= r` (unless it is a
//! tombstone) and everything after `r`. The compact revision is `-1` until the first
//! compaction (as in etcd).
//!
//! ## On-disk layout (redb tables)
//! Every stored value is `crc32(table key bytes ++ payload) ++ payload`; the checksum is
//! verified on every read and a mismatch is [`MvccError::Corrupted`] naming table and key.
//!
//! | table       | key                      | payload                                             |
//! |-------------|--------------------------|-----------------------------------------------------|
//! | `meta`      | name (`&str`)            | `format` = "phalanx-mvcc"+u32 version, `rev`, `compact_rev` (i64 LE), `applied_meta` (opaque) |
//! | `rev`       | `(main, sub)` i64s       | kind byte (0 put / 1 tombstone) + prost `KeyValue` (put) or key bytes (tombstone) |
//! | `key_index` | key bytes                | latest state: create, mod (main, sub), version, lease, tombstone flag (41 bytes) |
//! | `key_rev`   | `(key, main, sub)`       | 1 byte tombstone flag — per-key history for past reads and compaction |
//! | `lease`     | lease id (i64)           | granted TTL (i64 LE)                                |
//! | `lease_key` | `(lease id, key)`        | empty — keys attached to a lease                    |
//!
//! The auth state (users, bcrypt hashes, roles, permissions, enabled flag; crate `auth`) is
//! the `meta` entry `auth`: one postcard-encoded `auth::AuthState`, rewritten by each
//! [`Command::Auth`], included in snapshots; read through [`Store::auth_state`], which caches
//! it until the next auth change.
//!
//! A put costs one lookup in `key_index` (plus one in `rev` for the previous value, needed
//! for prev_kv in events) and three inserts; no scans. Reads at the current revision come
//! straight from `key_index`; past reads do one reverse seek per key in `key_rev`.
//!
//! ## Snapshots
//! [`Store::write_snapshot`] streams all tables in a self-describing format: magic
//! `PHXMVCC\0`, u32 format version, tagged length-prefixed records, an end marker, and a
//! trailing CRC32 over everything before it. [`Store::install_snapshot`] spools the stream
//! to a temporary file next to the database, verifies the checksum, and only then replaces
//! all state in one durable write transaction. [`Store::load_snapshot`] skips the spool,
//! for stores nothing else writes to (restores, scratch stores): it writes the records
//! into one write transaction as they arrive and commits only once the CRC32 and record
//! count check out (durably, or without fsync for a scratch store: [`LoadDurability`]).

mod codec;
mod error;
pub mod guard;
mod snapshot;
mod store;
mod validate;

pub use error::{EtcdError, MvccError};
pub use snapshot::{
    stream as snapshot_stream, LoadDurability, StateAt, StreamWriter as SnapshotStreamWriter,
    REDUCE_BATCH_KEYS,
};
pub use store::{
    DbSize, DefragReport, LeaseInfo, ReclaimPolicy, Store, DEFRAG_WAIT_FOR_READERS_MS,
    STORE_CACHE_BYTES,
};
pub use validate::{
    validate_delete_range, validate_put, validate_range, validate_txn, DEFAULT_MAX_TXN_OPS,
};

pub use etcd_client::proto::{PbAlarmMember, PbAlarmResponse};
pub use etcd_client::proto::{
    PbCompactionResponse, PbCompare, PbDeleteRequest, PbDeleteResponse, PbEvent, PbKeyValue,
    PbLeaseGrantResponse, PbLeaseRevokeResponse, PbPutRequest, PbPutResponse, PbRangeRequest,
    PbRangeResponse, PbResponseHeader, PbResponseOp, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest,
    PbTxnRequestOp, PbTxnResponse,
};

use prost::Message;
use serde::{Deserialize, Serialize};

/// Names for etcd's protobuf enum values (the generated fields are plain `i32`).
pub mod consts {
    /// `Compare.CompareResult`
    pub const CMP_EQUAL: i32 = 0;
    pub const CMP_GREATER: i32 = 1;
    pub const CMP_LESS: i32 = 2;
    pub const CMP_NOT_EQUAL: i32 = 3;
    /// `Compare.CompareTarget`
    pub const TARGET_VERSION: i32 = 0;
    pub const TARGET_CREATE: i32 = 1;
    pub const TARGET_MOD: i32 = 2;
    pub const TARGET_VALUE: i32 = 3;
    pub const TARGET_LEASE: i32 = 4;
    /// `RangeRequest.SortOrder`
    pub const SORT_NONE: i32 = 0;
    pub const SORT_ASCEND: i32 = 1;
    pub const SORT_DESCEND: i32 = 2;
    /// `RangeRequest.SortTarget`
    pub const SORT_TARGET_KEY: i32 = 0;
    pub const SORT_TARGET_VERSION: i32 = 1;
    pub const SORT_TARGET_CREATE: i32 = 2;
    pub const SORT_TARGET_MOD: i32 = 3;
    pub const SORT_TARGET_VALUE: i32 = 4;
    /// `mvccpb.Event.EventType`
    pub const EVENT_PUT: i32 = 0;
    pub const EVENT_DELETE: i32 = 1;
    /// etcd's `MaxLeaseTTL` (seconds).
    pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
}

/// The payload of every Raft log entry. Serde (postcard) serializable; etcd requests are
/// carried as prost-encoded bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// prost-encoded `PbPutRequest`
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    /// prost-encoded `PbDeleteRequest`
    DeleteRange(#[serde(with = "serde_bytes")] Vec<u8>),
    /// prost-encoded `PbTxnRequest`
    Txn(#[serde(with = "serde_bytes")] Vec<u8>),
    Compact {
        revision: i64,
    },
    /// `id` is always assigned by the proposer (never 0).
    LeaseGrant {
        id: i64,
        ttl_seconds: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Raise or clear a cluster alarm (etcd `AlarmRequest` ACTIVATE=1 /
    /// DEACTIVATE=2). Alarms are replicated so every member refuses the same
    /// writes; `alarm` 0 with DEACTIVATE clears every alarm of `member_id`
    /// (0 = any member).
    Alarm {
        action: i32,
        member_id: u64,
        alarm: i32,
    },
    /// Several client commands proposed together as one Raft entry (the
    /// leader batches concurrent writes). The state machine applies them in
    /// order, each at its own revision with its own response, exactly as if
    /// they were consecutive entries. Never nested; never empty. Last in the
    /// enum so entries written before batching existed still decode.
    Batch(Vec<Command>),
    /// A change to the replicated auth state (users, roles, permissions,
    /// enabled). Appended after `Batch` so every earlier entry still decodes.
    /// Does not change the key-value revision (as in etcd).
    Auth(auth::AuthCommand),
    /// A client's `Put`, `DeleteRange`, `Txn` or `LeaseRevoke` with who sent it: the user
    /// (empty: the proposing member saw auth disabled, or no user) and the
    /// auth revision its permissions were judged at. Applied only if auth
    /// is disabled at this point of the log, or the user is permitted now
    /// and `auth_revision` is not older than the applied auth state (etcd's
    /// `Header.Username`/`AuthRevision` and its apply-time permission
    /// check, with its `checkLeasePuts`: WRITE on every key attached to a
    /// revoked lease or to a lease a put attaches); else an etcd error,
    /// identically on every member. Appended
    /// last so every earlier entry still decodes; never nested, never
    /// wraps a batch (either is fatal, as a nested batch is).
    AsUser {
        user: String,
        auth_revision: u64,
        cmd: Box<Command>,
    },
}

impl Command {
    pub fn put(req: &PbPutRequest) -> Self {
        Command::Put(req.encode_to_vec())
    }
    pub fn delete_range(req: &PbDeleteRequest) -> Self {
        Command::DeleteRange(req.encode_to_vec())
    }
    pub fn txn(req: &PbTxnRequest) -> Self {
        Command::Txn(req.encode_to_vec())
    }
    /// Approximate encoded size in bytes, for bounding write batches.
    pub fn approx_len(&self) -> usize {
        match self {
            Command::Put(b) | Command::DeleteRange(b) | Command::Txn(b) => b.len() + 8,
            Command::Batch(cmds) => cmds.iter().map(Command::approx_len).sum::<usize>() + 8,
            Command::AsUser { user, cmd, .. } => cmd.approx_len() + user.len() + 16,
            _ => 32,
        }
    }
    /// postcard encoding (convenience for log storage).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("postcard encoding of Command cannot fail")
    }
    pub fn from_bytes(b: &[u8]) -> Result<Self, MvccError> {
        postcard::from_bytes(b).map_err(|e| MvccError::Decode {
            what: "Command",
            detail: e.to_string(),
        })
    }
}

/// Deterministic result of applying one command (identical on every member).
#[derive(Clone, Debug, PartialEq)]
pub enum ApplyResponse {
    Put(PbPutResponse),
    DeleteRange(PbDeleteResponse),
    Txn(PbTxnResponse),
    Compact(PbCompactionResponse),
    LeaseGrant(PbLeaseGrantResponse),
    LeaseRevoke(PbLeaseRevokeResponse),
    Alarm(PbAlarmResponse),
    Error(EtcdError),
    /// A successful [`Command::Auth`]: the auth revision after it.
    Auth {
        auth_revision: u64,
    },
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_TXN: u8 = 3;
const TAG_COMPACT: u8 = 4;
const TAG_LEASE_GRANT: u8 = 5;
const TAG_LEASE_REVOKE: u8 = 6;
const TAG_ERROR: u8 = 7;
const TAG_ALARM: u8 = 8;
const TAG_AUTH: u8 = 9;

impl ApplyResponse {
    /// Tag byte followed by the prost encoding (or the error tag byte).
    pub fn encode(&self) -> Vec<u8> {
        fn tagged<M: Message>(tag: u8, m: &M) -> Vec<u8> {
            let mut out = Vec::with_capacity(1 + m.encoded_len());
            out.push(tag);
            m.encode(&mut out).expect("Vec grows");
            out
        }
        match self {
            ApplyResponse::Put(m) => tagged(TAG_PUT, m),
            ApplyResponse::DeleteRange(m) => tagged(TAG_DELETE, m),
            ApplyResponse::Txn(m) => tagged(TAG_TXN, m),
            ApplyResponse::Compact(m) => tagged(TAG_COMPACT, m),
            ApplyResponse::LeaseGrant(m) => tagged(TAG_LEASE_GRANT, m),
            ApplyResponse::LeaseRevoke(m) => tagged(TAG_LEASE_REVOKE, m),
            ApplyResponse::Alarm(m) => tagged(TAG_ALARM, m),
            ApplyResponse::Error(e) => vec![TAG_ERROR, e.to_tag()],
            ApplyResponse::Auth { auth_revision } => {
                let mut out = vec![TAG_AUTH];
                out.extend_from_slice(&auth_revision.to_le_bytes());
                out
            }
        }
    }

    pub fn decode(b: &[u8]) -> Result<Self, MvccError> {
        let err = |d: String| MvccError::Decode {
            what: "ApplyResponse",
            detail: d,
        };
        let (&tag, body) = b.split_first().ok_or_else(|| err("empty".into()))?;
        let pe = |e: prost::DecodeError| err(e.to_string());
        Ok(match tag {
            TAG_PUT => ApplyResponse::Put(PbPutResponse::decode(body).map_err(pe)?),
            TAG_DELETE => ApplyResponse::DeleteRange(PbDeleteResponse::decode(body).map_err(pe)?),
            TAG_TXN => ApplyResponse::Txn(PbTxnResponse::decode(body).map_err(pe)?),
            TAG_COMPACT => ApplyResponse::Compact(PbCompactionResponse::decode(body).map_err(pe)?),
            TAG_LEASE_GRANT => {
                ApplyResponse::LeaseGrant(PbLeaseGrantResponse::decode(body).map_err(pe)?)
            }
            TAG_LEASE_REVOKE => {
                ApplyResponse::LeaseRevoke(PbLeaseRevokeResponse::decode(body).map_err(pe)?)
            }
            TAG_ALARM => ApplyResponse::Alarm(PbAlarmResponse::decode(body).map_err(pe)?),
            TAG_ERROR => {
                let t = *body
                    .first()
                    .ok_or_else(|| err("missing error tag".into()))?;
                ApplyResponse::Error(
                    EtcdError::from_tag(t).ok_or_else(|| err(format!("unknown error tag {t}")))?,
                )
            }
            TAG_AUTH => ApplyResponse::Auth {
                auth_revision: u64::from_le_bytes(
                    body.try_into()
                        .map_err(|_| err("auth revision is not 8 bytes".into()))?,
                ),
            },
            t => return Err(err(format!("unknown tag {t}"))),
        })
    }

    /// The header revision of a successful response (None for errors).
    pub fn header_revision(&self) -> Option<i64> {
        let h = match self {
            ApplyResponse::Put(m) => m.header.as_ref(),
            ApplyResponse::DeleteRange(m) => m.header.as_ref(),
            ApplyResponse::Txn(m) => m.header.as_ref(),
            ApplyResponse::Compact(m) => m.header.as_ref(),
            ApplyResponse::LeaseGrant(m) => m.header.as_ref(),
            ApplyResponse::LeaseRevoke(m) => m.header.as_ref(),
            ApplyResponse::Alarm(m) => m.header.as_ref(),
            ApplyResponse::Error(_) | ApplyResponse::Auth { .. } => None,
        };
        h.map(|h| h.revision)
    }
}

/// Result of applying one command.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub response: ApplyResponse,
    /// Store revision after applying this command.
    pub revision: i64,
    /// Watch events produced, in order. `prev_kv` is always filled when a previous version
    /// existed; watchers strip it when not requested.
    pub events: Vec<PbEvent>,
}

/// Public view of table names, for tools and tests that need to inspect the raw file.
pub mod layout {
    pub const META_TABLE: &str = "meta";
    pub const REV_TABLE: &str = "rev";
    pub const REV_CHUNK_TABLE: &str = "rev_chunk";
    pub const KEY_INDEX_TABLE: &str = "key_index";
    pub const KEY_REV_TABLE: &str = "key_rev";
    pub const LEASE_TABLE: &str = "lease";
    pub const LEASE_KEY_TABLE: &str = "lease_key";
}
