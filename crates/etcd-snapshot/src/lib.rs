//! # etcd-snapshot — etcd snapshots in and out of Phalanx
//!
//! An etcd snapshot (what `etcdctl snapshot save` writes) is etcd's bbolt database
//! followed by the SHA-256 of its bytes. This crate reads and writes such files and
//! converts them to and from Phalanx's mvcc snapshot stream, so a cluster moves from
//! etcd to Phalanx (`phalanx restore --from-etcd-snapshot`) and back (the Maintenance
//! Snapshot RPC of a Phalanx member streams an etcd snapshot).
//!
//! Main types:
//!
//! * [`bbolt::Db`] — a small read-only bbolt reader: both meta pages validated (magic,
//!   version, FNV-64a checksum), the valid one with the newest transaction chosen;
//!   branch, leaf and overflow pages, nested and inline buckets, in-order iteration with
//!   [`bbolt::Cursor`]. Every page id is checked against the file; cycles, damaged
//!   pages and unordered keys are errors naming the page — never a panic. Our own
//!   reader rather than the `bbolt-rs` crate: we need read-only iteration of a file
//!   that may be hostile, which is ~400 lines with positioned reads and no `unsafe`,
//!   while `bbolt-rs` is a full read-write port built on memory maps (and `unsafe`),
//!   which this workspace forbids and which would trust the file's pointers.
//! * [`writer::DbWriter`] — builds a fresh bbolt file bottom-up in one pass (page size
//!   4096, two meta pages, an empty freelist page, sub-buckets of the root bucket,
//!   small buckets inline, overflow pages for large nodes), accepted by Go's bbolt.
//! * [`schema`] — etcd's buckets and encodings (`key`, `lease`, `meta`, `members`, …).
//! * [`EtcdSnapshot`] — an opened etcd snapshot, trailer verified
//!   ([`Trailer`]); [`EtcdSnapshot::write_mvcc_stream`] converts it for
//!   `mvcc::Store::install_snapshot` ([`ImportSummary`]).
//! * [`write_etcd_db`] — the other way: an mvcc snapshot stream in, an etcd database out
//!   ([`ExportSettings`] carries the members, cluster version and consistent index;
//!   [`ExportSummary`] reports what was written).
//! * [`mvcc_wire`] — the Maintenance.Snapshot variant Phalanx's backups ask for with
//!   gRPC metadata: the mvcc stream itself plus etcd's trailer ([`TrailerWriter`]).
//! * [`SnapshotError`] — every failure, naming the file and the page, bucket or record.

pub mod bbolt;
mod convert;
mod error;
pub mod mvcc_wire;
pub mod schema;
pub mod writer;

pub use convert::{
    write_etcd_db, EtcdSnapshot, ExportSettings, ExportSummary, ImportSummary, Trailer,
    MAX_STREAM_PART_BYTES, MVCC_MAGIC, MVCC_VERSION, SHA256_BYTES, TRAILER_ALIGN_BYTES,
};
pub use error::SnapshotError;
pub use mvcc_wire::{
    TrailerWriter, MVCC_FORMAT_METADATA_KEY, MVCC_FORMAT_METADATA_VALUE,
    MVCC_FORMAT_V2_METADATA_VALUE,
};

/// Whether `head` (the first bytes of a file or stream) starts a bbolt database: page 0
/// is a meta page whose meta starts with bbolt's magic.
pub fn looks_like_bbolt(head: &[u8]) -> bool {
    head.len() >= bbolt::PAGE_HEADER_BYTES + 4
        && u32::from_le_bytes(
            head[bbolt::PAGE_HEADER_BYTES..bbolt::PAGE_HEADER_BYTES + 4]
                .try_into()
                .expect("4 bytes"),
        ) == bbolt::MAGIC
}
