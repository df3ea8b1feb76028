//! Typed errors. Every variant names what failed (destination, object, backup,
//! revision, file) and, where there is one, what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("destination {url:?} is not usable: {detail}. Use file:///absolute/path or s3://bucket/prefix")]
    BadDestination { url: String, detail: String },

    #[error("destination {url}: {op} {object:?} failed after {attempts} attempt(s): {detail}")]
    Storage {
        url: String,
        op: &'static str,
        object: String,
        attempts: u32,
        detail: String,
    },

    #[error("destination {url}: object {object:?} is missing (referenced by backup {backup}); this backup cannot be restored from this destination: restore from another destination or an older backup")]
    MissingObject {
        url: String,
        object: String,
        backup: String,
    },

    #[error("destination {url}: object {object:?} is corrupted ({detail}); this backup cannot be restored from this destination: restore from another destination or an older backup")]
    CorruptObject {
        url: String,
        object: String,
        detail: String,
    },

    #[error("invalid age recipient {recipient:?}: {detail} (expected an X25519 public key `age1…`, as printed by `age-keygen`)")]
    BadRecipient { recipient: String, detail: String },

    #[error("no age recipient given: a backup is always encrypted; pass --recipient age1… (create a key pair with `age-keygen -o key.txt`; keep key.txt off the cluster)")]
    NoRecipient,

    #[error("cannot read age identity file {path}: {detail}")]
    BadIdentity { path: PathBuf, detail: String },

    #[error("backup {backup} at {url} is encrypted to {recipients:?}: pass --identity FILE with the matching age secret key (AGE-SECRET-KEY-…)")]
    IdentityRequired {
        url: String,
        backup: String,
        recipients: Vec<String>,
    },

    #[error("destination {url}: none of the given identities decrypts {object:?} (encrypted to {recipients:?}): pass --identity with the secret key of one of those recipients")]
    WrongIdentity {
        url: String,
        object: String,
        recipients: Vec<String>,
    },

    #[error("cannot take a snapshot from any of the endpoints {endpoints:?}: {detail}")]
    Source {
        endpoints: Vec<String>,
        detail: String,
    },

    #[error("snapshot from {endpoint} is invalid: {detail}")]
    Snapshot { endpoint: String, detail: String },

    #[error("backup {backup} at {url}: {detail}")]
    Manifest {
        url: String,
        backup: String,
        detail: String,
    },

    #[error("backup {backup} at {url} fails verification: HashKV at revision {revision} is {found:#010x}, the cluster reported {expected:#010x}")]
    HashMismatch {
        url: String,
        backup: String,
        revision: i64,
        expected: u32,
        found: u32,
    },

    #[error("no backup at {url}: run `phalanx backup now --to {url}` first")]
    NoBackups { url: String },

    #[error("revision {wanted} is newer than the newest restorable revision {newest} (backup {backup} at {url}): pass --revision {newest} or lower, or omit --revision for the newest")]
    RevisionTooNew {
        url: String,
        wanted: i64,
        newest: i64,
        backup: String,
    },

    #[error("revision {wanted} is not restorable from {url}: the oldest backup holding it ({backup}) was compacted at revision {compacted}; the oldest restorable revision is {oldest}")]
    RevisionCompacted {
        url: String,
        wanted: i64,
        backup: String,
        compacted: i64,
        oldest: i64,
    },

    #[error("time {wanted} is older than the oldest backup at {url} ({backup}, taken {oldest}): pass a later --time, or --revision")]
    TimeTooOld {
        url: String,
        wanted: String,
        backup: String,
        oldest: String,
    },

    #[error("invalid --time {value:?}: {detail} (expected RFC 3339, e.g. 2025-01-31T12:00:00Z)")]
    BadTime { value: String, detail: String },

    #[error("data dir {path} is not empty: restore writes a new member's data dir; pass an empty or missing --data-dir (move the old one away first)")]
    DataDirNotEmpty { path: PathBuf },

    #[error("invalid restore flags: {0}")]
    BadFlags(String),

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("store {path}: {detail}")]
    Store { path: PathBuf, detail: String },

    #[error("destination {url}: backup {backup} abandoned before its manifest was written: this member no longer runs the schedule (another member took over)")]
    Abandoned { url: String, backup: String },

    /// An etcd snapshot that cannot be restored; the message names the file and what is
    /// wrong with it (page, bucket, record or checksum).
    #[error("cannot restore from the etcd snapshot: {0}")]
    EtcdSnapshot(#[from] etcd_snapshot::SnapshotError),

    #[error("archive at {url}: {detail}")]
    Archive { url: String, detail: String },

    #[error("backup failed at {failed} of {total} destination(s): {details}")]
    SomeDestinationsFailed {
        failed: usize,
        total: usize,
        details: String,
    },
}

impl BackupError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BackupError::Io { op, path, source }
    }
}
