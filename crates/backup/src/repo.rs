//! Reading a repository: list backups, open a manifest, stream a backup's chunks back
//! (every object's SHA-256 checked, decrypted, decompressed, plaintext SHA-256 checked).

use std::collections::BTreeMap;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::dest::Destination;
use crate::error::BackupError;
use crate::format::*;

/// One complete backup (its manifest exists), newest last in listings.
#[derive(Clone, Debug)]
pub struct BackupEntry {
    pub id: String,
    pub summary: Summary,
    pub manifest_bytes: u64,
    pub verified: Option<Verified>,
}

/// Every complete backup at `d`, oldest first. A backup whose manifest is missing (an
/// interrupted upload) is never listed.
pub async fn list_backups(d: &Destination) -> Result<Vec<BackupEntry>, BackupError> {
    #[derive(Default)]
    struct Seen {
        manifest: Option<u64>,
        summary: bool,
        verified: bool,
    }
    let mut by_id: BTreeMap<String, Seen> = BTreeMap::new();
    for (key, size) in d.list(BACKUPS_PREFIX).await? {
        let mut parts = key.rsplitn(3, '/');
        let (Some(name), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        let e = by_id.entry(id.to_string()).or_default();
        match name {
            MANIFEST_NAME => e.manifest = Some(size),
            SUMMARY_NAME => e.summary = true,
            VERIFIED_NAME => e.verified = true,
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (id, seen) in by_id {
        let Some(manifest_bytes) = seen.manifest else {
            continue;
        };
        let skey = backup_key(&id, SUMMARY_NAME);
        let summary: Summary = match d.get(&skey).await? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| BackupError::CorruptObject {
                url: d.url.clone(),
                object: skey.clone(),
                detail: e.to_string(),
            })?,
            None => {
                return Err(BackupError::MissingObject {
                    url: d.url.clone(),
                    object: skey,
                    backup: id,
                })
            }
        };
        let verified = if seen.verified {
            d.get(&backup_key(&id, VERIFIED_NAME))
                .await?
                .and_then(|b| serde_json::from_slice(&b).ok())
        } else {
            None
        };
        out.push(BackupEntry {
            id,
            summary,
            manifest_bytes,
            verified,
        });
    }
    out.sort_by(|a, b| {
        (a.summary.created_unix_ms, a.summary.revision)
            .cmp(&(b.summary.created_unix_ms, b.summary.revision))
    });
    Ok(out)
}

/// Read, check and decrypt a backup's manifest.
pub async fn read_manifest(
    d: &Destination,
    entry: &BackupEntry,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<Manifest, BackupError> {
    let key = backup_key(&entry.id, MANIFEST_NAME);
    let obj = d
        .get(&key)
        .await?
        .ok_or_else(|| BackupError::MissingObject {
            url: d.url.clone(),
            object: key.clone(),
            backup: entry.id.clone(),
        })?;
    let found = sha256_hex(&obj);
    if found != entry.summary.manifest_sha256 {
        return Err(BackupError::CorruptObject {
            url: d.url.clone(),
            object: key,
            detail: format!(
                "SHA-256 is {found}, the summary recorded {}",
                entry.summary.manifest_sha256
            ),
        });
    }
    if identities.is_empty() {
        return Err(BackupError::IdentityRequired {
            url: d.url.clone(),
            backup: entry.id.clone(),
            recipients: entry.summary.recipients.clone(),
        });
    }
    // A manifest lists about 150 bytes per chunk; 1 GiB of plaintext JSON is far beyond
    // any real store.
    let plain = match open(&obj, identities, 1 << 30) {
        Ok(p) => p,
        Err(OpenError::NoMatchingKey) => {
            return Err(BackupError::WrongIdentity {
                url: d.url.clone(),
                object: key,
                recipients: entry.summary.recipients.clone(),
            })
        }
        Err(OpenError::Damaged(detail)) => {
            return Err(BackupError::CorruptObject {
                url: d.url.clone(),
                object: key,
                detail,
            })
        }
    };
    let m: Manifest = serde_json::from_slice(&plain).map_err(|e| BackupError::CorruptObject {
        url: d.url.clone(),
        object: key.clone(),
        detail: format!("not a manifest: {e}"),
    })?;
    if m.id != entry.id || m.revision != entry.summary.revision {
        return Err(BackupError::Manifest {
            url: d.url.clone(),
            backup: entry.id.clone(),
            detail: format!(
                "manifest says backup {} at revision {}, its summary {} at {}",
                m.id, m.revision, entry.id, entry.summary.revision
            ),
        });
    }
    Ok(m)
}

/// Fetch one chunk: check the object's SHA-256, decrypt, decompress, check the
/// plaintext's SHA-256. Errors name the object.
pub async fn fetch_chunk(
    d: &Destination,
    backup: &str,
    c: &ChunkRef,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    max_plain_bytes: usize,
    recipients: &[String],
) -> Result<Bytes, BackupError> {
    let key = chunk_key(&c.sha256, &c.object_sha256);
    let obj = d
        .get(&key)
        .await?
        .ok_or_else(|| BackupError::MissingObject {
            url: d.url.clone(),
            object: key.clone(),
            backup: backup.to_string(),
        })?;
    let found = sha256_hex(&obj);
    if found != c.object_sha256 {
        return Err(BackupError::CorruptObject {
            url: d.url.clone(),
            object: key,
            detail: format!("object SHA-256 is {found}, expected {}", c.object_sha256),
        });
    }
    let plain = match open(&obj, identities, max_plain_bytes) {
        Ok(p) => p,
        Err(OpenError::NoMatchingKey) => {
            return Err(BackupError::WrongIdentity {
                url: d.url.clone(),
                object: key,
                recipients: recipients.to_vec(),
            })
        }
        Err(OpenError::Damaged(detail)) => {
            return Err(BackupError::CorruptObject {
                url: d.url.clone(),
                object: key,
                detail,
            })
        }
    };
    let psha = crate::format::hex(&Sha256::digest(&plain));
    if psha != c.sha256 || plain.len() != c.len as usize {
        return Err(BackupError::CorruptObject {
            url: d.url.clone(),
            object: key,
            detail: format!(
                "plaintext SHA-256 {psha} ({} bytes), expected {} ({} bytes)",
                plain.len(),
                c.sha256,
                c.len
            ),
        });
    }
    Ok(Bytes::from(plain))
}

/// Stream a backup's snapshot into `sink` (a blocking consumer running on its own
/// thread), checking every object and the whole stream's SHA-256. Every object is
/// checked even after a failure when `keep_going` (verify), so all problems are named.
/// Returns the problems found (empty = all good) and the sink's result.
pub async fn stream_backup<T: Send + 'static>(
    d: &Destination,
    m: &Manifest,
    recipients: &[String],
    identities: &[Box<dyn age::Identity + Send + Sync>],
    keep_going: bool,
    progress: &crate::progress::Progress,
    sink: impl FnOnce(&mut (dyn std::io::Read + Send)) -> Result<T, BackupError> + Send + 'static,
) -> (Vec<BackupError>, Option<Result<T, BackupError>>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    let consumer = tokio::task::spawn_blocking(move || {
        let mut r = crate::snapstream::ChannelReader::new(rx);
        let res = sink(&mut r);
        // Drain so the producer never blocks on a consumer that gave up.
        let mut buf = [0u8; 8192];
        while let Ok(n) = std::io::Read::read(&mut r, &mut buf) {
            if n == 0 {
                break;
            }
        }
        res
    });
    let max_plain = m.chunker.chunk_max_bytes as usize;
    let mut problems = Vec::new();
    // Older manifests also recorded the whole stream's SHA-256.
    progress.set_total_bytes(m.snapshot_bytes);
    let mut sha = m.snapshot_sha256.as_ref().map(|_| Sha256::new());
    let mut total = 0u64;
    let mut feeding = true;
    for c in &m.chunks {
        match fetch_chunk(d, &m.id, c, identities, max_plain, recipients).await {
            Ok(b) => {
                progress.chunk_done(b.len() as u64);
                if feeding {
                    if let Some(sha) = sha.as_mut() {
                        sha.update(&b);
                    }
                    total += b.len() as u64;
                    if tx.send(Ok(b)).await.is_err() {
                        feeding = false;
                    }
                }
            }
            Err(e) => {
                let wrong_key = matches!(e, BackupError::WrongIdentity { .. });
                problems.push(e);
                if feeding {
                    let _ = tx
                        .send(Err(std::io::Error::other("a chunk failed its checks")))
                        .await;
                    feeding = false;
                }
                if !keep_going || wrong_key {
                    break;
                }
            }
        }
    }
    if feeding {
        let found = sha.map(|s| crate::format::hex(&s.finalize()));
        if found != m.snapshot_sha256 || total != m.snapshot_bytes {
            let sha = |s: &Option<String>| {
                s.as_ref()
                    .map(|s| format!("SHA-256 {s}, "))
                    .unwrap_or_default()
            };
            problems.push(BackupError::Manifest {
                url: d.url.clone(),
                backup: m.id.clone(),
                detail: format!(
                    "reassembled snapshot has {}{total} bytes, the manifest recorded {}{} bytes",
                    sha(&found),
                    sha(&m.snapshot_sha256),
                    m.snapshot_bytes
                ),
            });
            let _ = tx
                .send(Err(std::io::Error::other("snapshot checksum mismatch")))
                .await;
        }
    }
    drop(tx);
    let res = consumer.await.expect("sink thread");
    (problems, Some(res))
}
