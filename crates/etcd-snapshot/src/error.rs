//! Typed errors: each names the file, and the page, bucket or record that is wrong, and
//! says what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// Neither meta page is a valid bbolt meta page.
    #[error("{path}: not a valid bbolt database: {detail} (expected a file written by `etcdctl snapshot save`, or an etcd member's `member/snap/db`)")]
    NotBbolt { path: PathBuf, detail: String },

    /// A page that the tree refers to is damaged, out of the file, or refers back into
    /// the tree (a cycle).
    #[error("{path}: page {page}: {detail}; the file is corrupted: take a new snapshot")]
    CorruptPage {
        path: PathBuf,
        page: u64,
        detail: String,
    },

    /// A bucket etcd always has is missing, or one of its records is not what etcd writes.
    #[error("{path}: bucket {bucket:?}: {detail}")]
    Bucket {
        path: PathBuf,
        bucket: String,
        detail: String,
    },

    /// The SHA-256 that `etcdctl snapshot save` appends does not match the database.
    #[error("{path}: SHA-256 trailer mismatch: the file says {expected}, its {db_bytes} database bytes hash to {found}; the snapshot is corrupted or truncated: save it again")]
    HashMismatch {
        path: PathBuf,
        db_bytes: u64,
        expected: String,
        found: String,
    },

    /// The file has no trailing SHA-256 and the caller asked for one.
    #[error("{path}: the file has no SHA-256 trailer ({size} bytes, not a multiple of 512 plus 32), so its integrity cannot be checked; if it is a raw etcd database (e.g. `member/snap/db`), pass --skip-hash-check, as with `etcdctl snapshot restore`")]
    MissingHash { path: PathBuf, size: u64 },

    /// Phalanx's mvcc snapshot stream is malformed.
    #[error("mvcc snapshot stream: {detail}")]
    Stream { detail: String },

    /// The writer was given keys out of order (a bug in the caller: bbolt pages must be
    /// sorted).
    #[error("{path}: bucket {bucket:?}: key {key} is not greater than the previous key; bbolt needs keys in ascending order")]
    Unsorted {
        path: PathBuf,
        bucket: String,
        key: String,
    },
}

impl SnapshotError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SnapshotError::Io { op, path, source }
    }
}

/// Printable form of a key for error messages: ASCII kept, the rest hex-escaped.
pub(crate) fn render(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() + 2);
    s.push('"');
    for &c in b.iter().take(128) {
        if (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    if b.len() > 128 {
        s.push_str("...");
    }
    s.push('"');
    s
}

/// Writing the mvcc stream failed (mvcc's `SnapshotStreamWriter`: an I/O
/// error of the output).
impl From<mvcc::MvccError> for SnapshotError {
    fn from(e: mvcc::MvccError) -> Self {
        SnapshotError::Stream {
            detail: format!("write: {e}"),
        }
    }
}
