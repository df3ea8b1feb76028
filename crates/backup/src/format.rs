//! The repository format (docs/backup-format.md): object names, the manifest and
//! summary documents, and sealing (zstd + age) of objects.

use std::io::{Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::BackupError;

pub const CONFIG_KEY: &str = "config.json";
pub const CHUNKS_PREFIX: &str = "chunks";
pub const BACKUPS_PREFIX: &str = "backups";
pub const MANIFEST_NAME: &str = "manifest.age";
pub const SUMMARY_NAME: &str = "summary.json";
pub const VERIFIED_NAME: &str = "verified.json";
/// Plain list of the chunk objects a backup references (for chunk GC without the key).
pub const REFS_NAME: &str = "refs.json";
pub const LOCKS_PREFIX: &str = "locks";
pub const ARCHIVE_PREFIX: &str = "archive";
pub const FORMAT_VERSION: u32 = 1;

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// `chunks/<first two hex digits of the plaintext hash>/<plaintext sha256>-<object sha256>`.
pub fn chunk_key(plain_sha256: &str, object_sha256: &str) -> String {
    format!(
        "{CHUNKS_PREFIX}/{}/{plain_sha256}-{object_sha256}",
        &plain_sha256[..2]
    )
}

/// Parse a chunk key back into (plaintext sha256, object sha256).
pub fn parse_chunk_key(key: &str) -> Option<(String, String)> {
    let name = key.rsplit('/').next()?;
    let (p, o) = name.split_once('-')?;
    (p.len() == 64 && o.len() == 64).then(|| (p.to_string(), o.to_string()))
}

pub fn backup_key(id: &str, name: &str) -> String {
    format!("{BACKUPS_PREFIX}/{id}/{name}")
}

/// Repository settings, written (unencrypted) by the first backup to a destination.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RepoConfig {
    pub format: String,
    pub version: u32,
    pub chunker: ChunkerSettings,
    pub created_at: String,
}

/// FastCDC (2020) parameters. Dedup across backups needs the same values every time,
/// so a repository keeps the ones it was created with.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerSettings {
    pub chunk_min_bytes: u32,
    pub chunk_avg_bytes: u32,
    pub chunk_max_bytes: u32,
}

impl Default for ChunkerSettings {
    fn default() -> Self {
        ChunkerSettings {
            chunk_min_bytes: 64 * 1024,
            chunk_avg_bytes: 256 * 1024,
            chunk_max_bytes: 1024 * 1024,
        }
    }
}

/// One chunk of the snapshot stream, in stream order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChunkRef {
    /// SHA-256 of the plaintext (the chunk's address).
    pub sha256: String,
    /// SHA-256 of the stored object (age file).
    pub object_sha256: String,
    /// Plaintext length in bytes.
    pub len: u32,
}

/// The encrypted per-backup document; written last, atomically.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created_at: String,
    pub created_unix_ms: u64,
    pub phalanx_version: String,
    /// Cluster id and member id (hex) from the snapshot's response header.
    pub cluster_id: String,
    pub member_id: String,
    /// The member the snapshot was taken from.
    pub source_endpoint: String,
    /// The store revision the backup is at; restorable revisions are
    /// `max(compact_revision, 1) ..= revision`.
    pub revision: i64,
    pub compact_revision: i64,
    /// etcd HashKV at `revision`, as reported by the member.
    pub hash_kv: u32,
    pub snapshot_bytes: u64,
    /// SHA-256 of the whole normalized stream: written by releases before the stream
    /// was checked by its chunks' hashes alone; verified when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_sha256: Option<String>,
    pub snapshot_records: u64,
    pub chunker: ChunkerSettings,
    pub chunks: Vec<ChunkRef>,
}

/// Unencrypted facts about a backup, for `backup list` and for picking a backup by
/// revision or time without the secret key. Written just before the manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created_at: String,
    pub created_unix_ms: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub cluster_id: String,
    pub phalanx_version: String,
    pub recipients: Vec<String>,
    pub snapshot_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    /// Bytes of every object this backup references (chunks + manifest).
    pub stored_bytes: u64,
    /// Bytes this backup uploaded (new chunks + manifest + summary).
    pub uploaded_bytes: u64,
    /// SHA-256 of `manifest.age`, so the manifest is checkable without the key.
    pub manifest_sha256: String,
}

/// `backups/<id>/refs.json`: the chunk objects of a backup, written before its summary
/// and manifest, so retention can tell which chunks are still referenced without the key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Refs {
    pub format: String,
    pub id: String,
    pub revision: i64,
    pub chunks: Vec<String>,
}

/// Written by `backup verify`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verified {
    pub ok: bool,
    pub checked_at: String,
    pub problems: Vec<String>,
}

pub fn now_rfc3339() -> (String, u64) {
    let now = std::time::SystemTime::now();
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (humantime::format_rfc3339_millis(now).to_string(), ms)
}

pub fn parse_recipients(list: &[String]) -> Result<Vec<age::x25519::Recipient>, BackupError> {
    if list.is_empty() {
        return Err(BackupError::NoRecipient);
    }
    list.iter()
        .map(|r| {
            age::x25519::Recipient::from_str(r.trim()).map_err(|e| BackupError::BadRecipient {
                recipient: r.clone(),
                detail: e.to_string(),
            })
        })
        .collect()
}

/// Identities from age identity files (as written by `age-keygen`).
pub fn load_identities(
    paths: &[std::path::PathBuf],
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, BackupError> {
    let mut out: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(|e| BackupError::BadIdentity {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        let mut n = 0;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id =
                age::x25519::Identity::from_str(line).map_err(|e| BackupError::BadIdentity {
                    path: p.clone(),
                    detail: format!("not an age X25519 secret key line: {e}"),
                })?;
            out.push(Box::new(id));
            n += 1;
        }
        if n == 0 {
            return Err(BackupError::BadIdentity {
                path: p.clone(),
                detail: "holds no AGE-SECRET-KEY line".into(),
            });
        }
    }
    Ok(out)
}

/// zstd-compress then age-encrypt `plain` to every recipient. The result is a standard
/// age file (binary, not armored).
pub fn seal(
    plain: &[u8],
    recipients: &[age::x25519::Recipient],
    zstd_level: i32,
) -> std::io::Result<Vec<u8>> {
    let compressed = zstd::bulk::compress(plain, zstd_level)?;
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(compressed.len() + 256);
    let mut w = enc.wrap_output(&mut out)?;
    w.write_all(&compressed)?;
    w.finish()?;
    Ok(out)
}

pub enum OpenError {
    /// No identity matches any of the file's recipients.
    NoMatchingKey,
    /// Damaged or not an age/zstd object.
    Damaged(String),
}

/// age-decrypt then zstd-decompress; the plaintext may be at most `max_plain_bytes`.
pub fn open(
    object: &[u8],
    identities: &[Box<dyn age::Identity + Send + Sync>],
    max_plain_bytes: usize,
) -> Result<Vec<u8>, OpenError> {
    let dec = age::Decryptor::new(object).map_err(|e| OpenError::Damaged(e.to_string()))?;
    let mut r = dec
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => OpenError::NoMatchingKey,
            e => OpenError::Damaged(e.to_string()),
        })?;
    let mut compressed = Vec::new();
    r.read_to_end(&mut compressed)
        .map_err(|e| OpenError::Damaged(format!("decryption: {e}")))?;
    zstd::bulk::decompress(&compressed, max_plain_bytes)
        .map_err(|e| OpenError::Damaged(format!("decompression: {e}")))
}
