//! Error types.
//!
//! Two families, deliberately kept apart:
//! * [`EtcdError`] — client-visible, deterministic outcomes of a request (identical on every
//!   member, so they can be part of the replicated result). Code and message strings are
//!   etcd's own, because clients (clientv3, etcdctl) match on the message text.
//! * [`MvccError`] — fatal local problems (I/O, corruption, foreign file). These are never
//!   replicated; the Raft layer should stop applying rather than diverge.

use std::path::PathBuf;

/// etcd's client-visible errors, with etcd's exact gRPC code and message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EtcdError {
    /// OutOfRange "etcdserver: mvcc: required revision has been compacted"
    Compacted,
    /// OutOfRange "etcdserver: mvcc: required revision is a future revision"
    FutureRevision,
    /// InvalidArgument "etcdserver: key is not provided"
    EmptyKey,
    /// InvalidArgument "etcdserver: key not found" (ignore_value/ignore_lease on an absent key,
    /// or an empty RequestOp in a txn — etcd uses the same error for both)
    KeyNotFound,
    /// NotFound "etcdserver: requested lease not found"
    LeaseNotFound,
    /// FailedPrecondition "etcdserver: lease already exists"
    LeaseExists,
    /// OutOfRange "etcdserver: too large lease TTL"
    TtlTooLarge,
    /// InvalidArgument "etcdserver: duplicate key given in txn request"
    DuplicateKey,
    /// InvalidArgument "etcdserver: too many operations in txn request"
    TooManyOps,
    /// InvalidArgument "etcdserver: value is provided"
    ValueProvided,
    /// InvalidArgument "etcdserver: lease is provided"
    LeaseProvided,
    /// InvalidArgument "etcdserver: invalid sort option"
    InvalidSortOption,
    /// ResourceExhausted "etcdserver: mvcc: database space exceeded"
    NoSpace,
    /// DataLoss "etcdserver: corrupt cluster" — a local read hit corrupted storage; we refuse
    /// to serve the data (see [`MvccError::Corrupted`]).
    Corrupt,
    /// Internal "etcdserver: storage failure" — a local read failed with an I/O-level error.
    StorageFailure,
    /// An auth error (users, roles, permissions), etcd's message and code.
    Auth(auth::AuthError),
}

impl EtcdError {
    /// All variants, in their wire-tag order (index = tag used by [`EtcdError::to_tag`]).
    const ALL: [EtcdError; 32] = [
        EtcdError::Compacted,
        EtcdError::FutureRevision,
        EtcdError::EmptyKey,
        EtcdError::KeyNotFound,
        EtcdError::LeaseNotFound,
        EtcdError::LeaseExists,
        EtcdError::TtlTooLarge,
        EtcdError::DuplicateKey,
        EtcdError::TooManyOps,
        EtcdError::ValueProvided,
        EtcdError::LeaseProvided,
        EtcdError::InvalidSortOption,
        EtcdError::NoSpace,
        EtcdError::Corrupt,
        EtcdError::StorageFailure,
        // Appended: tags of the variants above are stable.
        EtcdError::Auth(auth::AuthError::RootUserNotExist),
        EtcdError::Auth(auth::AuthError::RootRoleNotExist),
        EtcdError::Auth(auth::AuthError::UserAlreadyExist),
        EtcdError::Auth(auth::AuthError::UserEmpty),
        EtcdError::Auth(auth::AuthError::UserNotFound),
        EtcdError::Auth(auth::AuthError::RoleAlreadyExist),
        EtcdError::Auth(auth::AuthError::RoleNotFound),
        EtcdError::Auth(auth::AuthError::RoleEmpty),
        EtcdError::Auth(auth::AuthError::AuthFailed),
        EtcdError::Auth(auth::AuthError::PermissionDenied),
        EtcdError::Auth(auth::AuthError::RoleNotGranted),
        EtcdError::Auth(auth::AuthError::PermissionNotGranted),
        EtcdError::Auth(auth::AuthError::AuthNotEnabled),
        EtcdError::Auth(auth::AuthError::InvalidAuthToken),
        EtcdError::Auth(auth::AuthError::InvalidAuthMgmt),
        EtcdError::Auth(auth::AuthError::AuthOldRevision),
        EtcdError::Auth(auth::AuthError::LimitExceeded),
    ];

    /// etcd's exact message string.
    pub fn message(&self) -> &'static str {
        match self {
            EtcdError::Auth(a) => auth_message(*a),
            EtcdError::Compacted => "etcdserver: mvcc: required revision has been compacted",
            EtcdError::FutureRevision => "etcdserver: mvcc: required revision is a future revision",
            EtcdError::EmptyKey => "etcdserver: key is not provided",
            EtcdError::KeyNotFound => "etcdserver: key not found",
            EtcdError::LeaseNotFound => "etcdserver: requested lease not found",
            EtcdError::LeaseExists => "etcdserver: lease already exists",
            EtcdError::TtlTooLarge => "etcdserver: too large lease TTL",
            EtcdError::DuplicateKey => "etcdserver: duplicate key given in txn request",
            EtcdError::TooManyOps => "etcdserver: too many operations in txn request",
            EtcdError::ValueProvided => "etcdserver: value is provided",
            EtcdError::LeaseProvided => "etcdserver: lease is provided",
            EtcdError::InvalidSortOption => "etcdserver: invalid sort option",
            EtcdError::NoSpace => "etcdserver: mvcc: database space exceeded",
            EtcdError::Corrupt => "etcdserver: corrupt cluster",
            EtcdError::StorageFailure => "etcdserver: storage failure",
        }
    }

    /// Stable one-byte tag used in [`crate::ApplyResponse::encode`].
    pub fn to_tag(&self) -> u8 {
        Self::ALL
            .iter()
            .position(|e| e == self)
            .expect("every variant is in ALL") as u8
    }

    /// Inverse of [`EtcdError::to_tag`].
    pub fn from_tag(tag: u8) -> Option<EtcdError> {
        Self::ALL.get(tag as usize).copied()
    }
}

fn auth_message(a: auth::AuthError) -> &'static str {
    use auth::AuthError as A;
    match a {
        A::RootUserNotExist => "etcdserver: root user does not exist",
        A::RootRoleNotExist => "etcdserver: root user does not have root role",
        A::UserAlreadyExist => "etcdserver: user name already exists",
        A::UserEmpty => "etcdserver: user name is empty",
        A::UserNotFound => "etcdserver: user name not found",
        A::RoleAlreadyExist => "etcdserver: role name already exists",
        A::RoleNotFound => "etcdserver: role name not found",
        A::RoleEmpty => "etcdserver: role name is empty",
        A::AuthFailed => "etcdserver: authentication failed, invalid user ID or password",
        A::PermissionDenied => "etcdserver: permission denied",
        A::RoleNotGranted => "etcdserver: role is not granted to the user",
        A::PermissionNotGranted => "etcdserver: permission is not granted to the role",
        A::AuthNotEnabled => "etcdserver: authentication is not enabled",
        A::InvalidAuthToken => "etcdserver: invalid auth token",
        A::InvalidAuthMgmt => "etcdserver: invalid auth management",
        A::AuthOldRevision => "etcdserver: revision of auth store is old",
        A::LimitExceeded => {
            "etcdserver: too many users, roles or permissions, or a name or key too long"
        }
    }
}

impl From<auth::AuthError> for EtcdError {
    fn from(e: auth::AuthError) -> Self {
        EtcdError::Auth(e)
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for EtcdError {}

/// Fatal storage errors. None of these are part of the replicated state machine's output.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// redb refused to open/create the file (not a redb file, locked by another process, I/O).
    #[error("cannot open mvcc store {path}: {source}. If it is locked, stop the other process using it; if it is damaged, remove the member with `etcdctl member remove` and re-add it with an empty --data-dir, or restore the file from a backup; if it is not a Phalanx data file, point the data directory elsewhere")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// The file is a valid redb database but not one written by this crate.
    #[error("{path} is not a Phalanx mvcc store ({reason}); refusing to touch it. Move it away or point the data directory at the right location")]
    NotOurs { path: PathBuf, reason: String },
    /// The store was written by an incompatible format version.
    #[error("{path} has mvcc format version {found}, this binary supports {supported}; use a matching Phalanx version")]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A stored record failed checksum verification (or an internal cross-check).
    /// We never serve such data.
    #[error("corrupted record in table `{table}` at key {key}: checksum mismatch. The data file is damaged: remove this member with `etcdctl member remove` and re-add it with an empty --data-dir, or restore the file from a backup")]
    Corrupted { table: &'static str, key: String },
    /// The file failed its integrity check at open (page or record
    /// checksums, or redb could not read it).
    #[error("{path} is corrupted: {detail}. This member must not serve from it: remove the member with `etcdctl member remove` and re-add it with an empty --data-dir (it copies the data from the others), or restore the file from a backup")]
    CorruptFile { path: PathBuf, detail: String },
    /// Defragmentation failed; the store is unchanged.
    #[error("defragmenting {path} failed: {detail}")]
    Defrag { path: PathBuf, detail: String },
    /// A record passed its checksum but could not be decoded (format bug or foreign data).
    #[error("cannot decode {what}: {detail}")]
    Decode { what: &'static str, detail: String },
    /// Any redb-level failure, with the operation that hit it.
    #[error("storage error during {op}: {source}")]
    Storage {
        op: &'static str,
        #[source]
        source: redb::Error,
    },
    /// Plain I/O failure (snapshots, temp files).
    #[error("I/O error during {op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// A snapshot stream is malformed or fails its checksum; nothing was changed.
    #[error("invalid snapshot: {0}; the local state was left unchanged")]
    Snapshot(String),
    /// A deterministic etcd error surfaced through a local (non-replicated) API such as
    /// [`crate::Store::events`].
    #[error("{0}")]
    Etcd(#[from] EtcdError),
}

impl MvccError {
    /// Whether this error means stored data is damaged.
    pub fn is_corruption(&self) -> bool {
        match self {
            MvccError::Corrupted { .. }
            | MvccError::Decode { .. }
            | MvccError::CorruptFile { .. } => true,
            MvccError::Storage { source, .. } => {
                matches!(source, redb::Error::Corrupted(_) | redb::Error::Io(_))
            }
            _ => false,
        }
    }

    /// Map to a client-visible error for read paths.
    pub fn to_etcd(&self) -> EtcdError {
        match self {
            MvccError::Etcd(e) => *e,
            MvccError::Corrupted { .. } | MvccError::Decode { .. } => EtcdError::Corrupt,
            _ => EtcdError::StorageFailure,
        }
    }
}

/// Helper: wrap any redb error type with the operation name.
pub(crate) fn db<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> MvccError {
    move |e| MvccError::Storage {
        op,
        source: e.into(),
    }
}
