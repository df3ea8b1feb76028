//! A member's identity on disk (`<data-dir>/member/identity.json`): which
//! cluster and member this data dir belongs to. Checked at every start so a
//! data dir is never silently reused by another cluster or member.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: NodeId,
    pub name: String,
    pub cluster_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupted ({detail}); this data dir cannot be trusted: restore it from a snapshot or remove the member and re-add it with an empty --data-dir")]
    Corrupted { path: PathBuf, detail: String },
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    identity: Identity,
    crc32: u32,
}

fn checksum(id: &Identity) -> u32 {
    crc32fast::hash(&postcard::to_allocvec(id).expect("encoding identity cannot fail"))
}

pub fn path(member_dir: &Path) -> PathBuf {
    member_dir.join("identity.json")
}

pub fn load(member_dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let p = path(member_dir);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IdentityError::Io { path: p, source }),
    };
    let disk: OnDisk = serde_json::from_slice(&text).map_err(|e| IdentityError::Corrupted {
        path: p.clone(),
        detail: e.to_string(),
    })?;
    if checksum(&disk.identity) != disk.crc32 {
        return Err(IdentityError::Corrupted {
            path: p,
            detail: "checksum mismatch".into(),
        });
    }
    Ok(Some(disk.identity))
}

/// Write atomically (temp file, fsync, rename, fsync dir).
pub fn store(member_dir: &Path, id: &Identity) -> Result<(), IdentityError> {
    let p = path(member_dir);
    let tmp = member_dir.join("identity.json.tmp");
    let io = |source| IdentityError::Io {
        path: p.clone(),
        source,
    };
    let disk = OnDisk {
        identity: id.clone(),
        crc32: checksum(id),
    };
    let text = serde_json::to_vec_pretty(&disk).expect("encoding identity cannot fail");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &p).map_err(io)?;
    std::fs::File::open(member_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}
