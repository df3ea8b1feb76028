//! # backup — Phalanx backups and disaster recovery
//!
//! A backup is one member's Maintenance.Snapshot (the whole MVCC state, including the
//! history since the last compaction, read in one transaction: consistent across keys,
//! leases and revisions), cut into content-defined chunks (FastCDC), each addressed by
//! the SHA-256 of its plaintext, zstd-compressed and encrypted to age X25519
//! recipients, uploaded to one or more destinations (`file://`, `s3://`) through
//! `object_store`. An encrypted JSON manifest, written last, makes the backup exist.
//! Format: docs/backup-format.md; operations: docs/backup.md.
//!
//! * [`backup_now`] — take a backup (a host with only the public key can).
//! * [`list_backups`] — complete backups at a destination.
//! * [`verify`] — read and check every object, replay into a scratch store, compare
//!   HashKV at the backup revision.
//! * [`restore()`] — write a new member's data dir at a revision or time (a backup,
//!   then the continuous archive up to the target).
//! * [`restore_from_etcd_snapshot`] — write a new member's data dir from an etcd
//!   snapshot (`etcdctl snapshot save` against etcd 3.4/3.5): migration from etcd.
//! * [`service`] — backups run by the cluster (leader only): schedule, archive,
//!   retention, restore drills, metrics; the policy lives in the replicated store.
//! * [`prune()`] — retention (restic's `forget` rules) and chunk/segment GC.
//! * [`streamcheck`] — checks computed on a snapshot stream while it loads (HashKV at a
//!   revision), so a restore needs no scratch copy of the backup to check it against.
//!
//! Memory stays bounded: the snapshot streams through the chunker; at most
//! `upload_concurrency` chunks of at most `chunk_max_bytes` are in flight.

pub mod archive;
mod backup;
mod dest;
mod error;
pub mod format;
pub mod progress;
pub mod prune;
mod repo;
mod restore;
pub mod service;
pub mod snapstream;
pub mod streamcheck;
#[cfg(test)]
mod test_util;

pub use backup::{
    backup_now, backup_now_gated, BackupOutcome, BackupSettings, CommitGate, DestinationOutcome,
    Source,
};
pub use dest::{Destination, RetrySettings, S3Settings};
pub use error::BackupError;
pub use format::ChunkerSettings;
pub use prune::{forget, prune, PruneReport, Retention};
pub use repo::{list_backups, BackupEntry};
pub use restore::{
    choose, plan, restore, restore_from_etcd_snapshot, verify, EtcdRestoreReport,
    EtcdRestoreSettings, Plan, ReadSettings, RestoreReport, RestoreSettings, Target, VerifyReport,
    DEFAULT_BUMP_REVISION, RESTORE_STORE_CACHE_BYTES,
};
pub use service::{Policy, ServiceHandle, ServiceSettings, Status};

/// Default lock staleness, milliseconds (for command-line defaults).
pub const fn backup_lock_stale_ms() -> u64 {
    backup::DEFAULT_LOCK_STALE_MS
}
