//! `verify` and `restore`.
//!
//! Restore writes a new member's data dir holding only `member/kv.redb` (plus
//! `member/restored-from.json`, for people): the store as of revision R, compacted at
//! and bumped to `backup revision + bump_revision` (etcd's `--bump-revision
//! --mark-compacted`), without Raft bookkeeping. Started with `--initial-cluster-state
//! new` and the same `--initial-cluster`/`--initial-cluster-token` on every member, the
//! members bootstrap a new cluster over that state (`consensus::Node::start` writes the
//! identity and the Raft log as for any new member).

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::dest::{Destination, RetrySettings, S3Settings};
use crate::error::BackupError;
use crate::format::*;
use crate::repo::{list_backups, read_manifest, stream_backup, BackupEntry};
use mvcc::LoadDurability;

/// etcd's documentation suggests a bump of a billion revisions when the revision the lost
/// cluster reached after the backup is unknown.
pub const DEFAULT_BUMP_REVISION: i64 = 1_000_000_000;

/// Page cache of the store a restore writes (a member's is
/// `mvcc::STORE_CACHE_BYTES`, 256 MiB). A restore loads the whole backup in one
/// write transaction and then reads every key three times (the reduction and the
/// two reads of the final check); with a cache smaller than the store, redb writes
/// dirty pages back during the load and reads pages back from the file on every
/// later pass (at 1 M keys, a 440 MB store: about 1 s of a restore's 8 s CPU, most
/// of it system time). The cache grows only as pages are touched: a restore holds
/// at most this much in it (1 M keys: 475 MB peak resident, against 630 MB with
/// the member's cache size).
pub const RESTORE_STORE_CACHE_BYTES: usize = 2 << 30;

#[derive(Clone, Debug)]
pub struct ReadSettings {
    pub from: String,
    pub identity_files: Vec<PathBuf>,
    pub s3: S3Settings,
    pub retry: RetrySettings,
    /// Counters a verify or restore updates as it runs, for the caller to show.
    pub progress: crate::progress::Progress,
}

#[derive(Clone, Debug)]
pub enum Target {
    Newest,
    Revision(i64),
    /// RFC 3339; the newest backup taken at or before it, at that backup's revision.
    Time(String),
}

#[derive(Clone, Debug)]
pub struct RestoreSettings {
    pub read: ReadSettings,
    pub target: Target,
    pub name: String,
    /// `name=url,...` as etcd's `--initial-cluster`.
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub data_dir: PathBuf,
    pub bump_revision: i64,
    /// Page size of the final cross-check between the backup and the restored store.
    pub check_page_keys: i64,
    /// Page cache of the store the restore writes, in bytes (see
    /// [`RESTORE_STORE_CACHE_BYTES`]; a member's restore drill uses the
    /// member's own, `mvcc::STORE_CACHE_BYTES`, so it does not grow the member).
    pub cache_bytes: usize,
}

#[derive(Debug)]
pub struct RestoreReport {
    pub backup: String,
    pub backup_revision: i64,
    pub revision: i64,
    pub new_revision: i64,
    pub keys: u64,
    pub leases: u64,
    pub detached_lease_keys: u64,
    /// Archive segments replayed on top of the backup (0: the backup alone).
    pub segments: u64,
    /// Revisions replayed from the archive.
    pub archived_revisions: u64,
    pub elapsed: std::time::Duration,
}

#[derive(Debug)]
pub struct VerifyReport {
    pub backup: String,
    pub revision: i64,
    pub objects: usize,
    pub bytes: u64,
    pub hash_kv: u32,
}

fn store_err(path: &Path) -> impl Fn(String) -> BackupError + '_ {
    move |detail| BackupError::Store {
        path: path.to_path_buf(),
        detail,
    }
}

/// Verify the newest backup (or `id`): every object read and checked, the manifest
/// decrypted, the snapshot replayed into a scratch store and its HashKV at the backup
/// revision compared with the one the member reported. All bad objects are named.
/// The result is recorded in `backups/<id>/verified.json`.
pub async fn verify(
    settings: &ReadSettings,
    id: Option<&str>,
) -> Result<VerifyReport, BackupError> {
    let d = Destination::open(&settings.from, &settings.s3, &settings.retry)?;
    let ids = load_identities(&settings.identity_files)?;
    let all = list_backups(&d).await?;
    let entry = match id {
        Some(id) => all
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| BackupError::Manifest {
                url: d.url.clone(),
                backup: id.into(),
                detail: "no such complete backup (see `phalanx backup list`)".into(),
            })?,
        None => all
            .into_iter()
            .last()
            .ok_or_else(|| BackupError::NoBackups { url: d.url.clone() })?,
    };
    let r = verify_entry(&d, &entry, &ids, &settings.progress).await;
    let rec = Verified {
        ok: r.is_ok(),
        checked_at: now_rfc3339().0,
        problems: match &r {
            Ok(_) => Vec::new(),
            Err(e) => vec![e.to_string()],
        },
    };
    // Best effort: the verdict is the return value.
    let _ = d
        .put(
            &backup_key(&entry.id, VERIFIED_NAME),
            serde_json::to_vec_pretty(&rec).expect("json").into(),
        )
        .await;
    r
}

async fn verify_entry(
    d: &Destination,
    entry: &BackupEntry,
    ids: &[Box<dyn age::Identity + Send + Sync>],
    progress: &crate::progress::Progress,
) -> Result<VerifyReport, BackupError> {
    progress.set_phase("verify: fetching and checking every object");
    let m = read_manifest(d, entry, ids).await?;
    let scratch =
        tempfile::tempdir().map_err(BackupError::io("create scratch dir", std::env::temp_dir()))?;
    let sp = scratch.path().to_path_buf();
    let rev = m.revision;
    let (problems, res) = stream_backup(
        d,
        &m,
        &entry.summary.recipients,
        ids,
        true,
        progress,
        move |r| crate::backup::hash_kv_of_stream(r, rev, &sp),
    )
    .await;
    if !problems.is_empty() {
        let n = problems.len();
        let mut list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        if n == 1 {
            return Err(problems.into_iter().next().expect("one"));
        }
        list.truncate(20);
        return Err(BackupError::Manifest {
            url: d.url.clone(),
            backup: m.id.clone(),
            detail: format!("{n} objects failed their checks: {}", list.join("; ")),
        });
    }
    let found = res.expect("sink ran")?;
    if found != m.hash_kv {
        return Err(BackupError::HashMismatch {
            url: d.url.clone(),
            backup: m.id.clone(),
            revision: m.revision,
            expected: m.hash_kv,
            found,
        });
    }
    Ok(VerifyReport {
        backup: m.id.clone(),
        revision: m.revision,
        objects: m.chunks.len() + 1,
        bytes: entry.summary.stored_bytes,
        hash_kv: found,
    })
}

/// What a restore replays: a backup, then archive segments up to `want`.
#[derive(Debug)]
pub struct Plan {
    pub entry: BackupEntry,
    pub want: i64,
    pub segments: Vec<crate::archive::SegmentName>,
    /// The newest revision the repository can restore (backup or archive).
    pub newest: i64,
}

/// Choose the backup and the archive segments for `target`: a backup alone when one
/// holds the revision; else the newest backup at or before it and the archive chain
/// from there. `--time`: the newest revision seen applied at or before that time.
pub async fn plan(
    d: &Destination,
    all: &[BackupEntry],
    segments: &[crate::archive::SegmentName],
    target: &Target,
    ids: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<Plan, BackupError> {
    use crate::archive::chain;
    let newest_b = all
        .last()
        .ok_or_else(|| BackupError::NoBackups { url: d.url.clone() })?;
    // The newest point: the furthest any backup's chain reaches.
    let mut newest = i64::MIN;
    let mut newest_entry = newest_b;
    for e in all {
        let (_, end) = chain(segments, e.summary.revision);
        if end >= newest {
            newest = end;
            newest_entry = e;
        }
    }
    let with_chain = |e: &BackupEntry, want: i64| {
        let (c, _) = chain(segments, e.summary.revision);
        let segs: Vec<_> = c
            .into_iter()
            .filter(|s| s.after < want || s.upto <= want)
            .collect();
        Plan {
            entry: e.clone(),
            want,
            segments: segs,
            newest,
        }
    };
    match target {
        Target::Newest => Ok(with_chain(newest_entry, newest)),
        Target::Revision(r) => {
            if let Ok((e, want)) = choose(&d.url, all, target) {
                return Ok(Plan {
                    entry: e.clone(),
                    want,
                    segments: vec![],
                    newest,
                });
            }
            if *r > newest {
                return Err(BackupError::RevisionTooNew {
                    url: d.url.clone(),
                    wanted: *r,
                    newest,
                    backup: newest_entry.id.clone(),
                });
            }
            // The newest backup at or before r whose chain reaches r.
            for e in all.iter().rev().filter(|e| e.summary.revision <= *r) {
                let (_, end) = chain(segments, e.summary.revision);
                if end >= *r {
                    return Ok(with_chain(e, *r));
                }
            }
            // Not reachable: report as before (compacted or a gap).
            choose(&d.url, all, target).map(|(e, w)| Plan {
                entry: e.clone(),
                want: w,
                segments: vec![],
                newest,
            })
        }
        Target::Time(t) => {
            let (e, _) = choose(&d.url, all, target)?;
            let when = humantime::parse_rfc3339_weak(t).map_err(|x| BackupError::BadTime {
                value: t.clone(),
                detail: x.to_string(),
            })?;
            let ms = when
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let (c, _) = chain(segments, e.summary.revision);
            let mut want = e.summary.revision;
            for s in &c {
                if s.last_ms <= ms {
                    want = want.max(s.upto);
                    continue;
                }
                // The segment straddling t: its marks say when each revision was seen.
                let seg = crate::archive::read_segment(d, s, ids).await?;
                for (rev, at) in &seg.marks {
                    if *at <= ms {
                        want = want.max(*rev);
                    }
                }
                break;
            }
            Ok(with_chain(e, want))
        }
    }
}

/// Replay archive segments onto `store` (holding the backup) up to revision `want`.
/// Returns the number of revisions replayed.
pub(crate) fn replay(
    store: &mvcc::Store,
    segs: &[crate::archive::Segment],
    want: i64,
) -> Result<u64, String> {
    use etcd_client::proto::{PbTxnOpRequest as Op, PbTxnRequestOp};
    let apply = |cmd: mvcc::Command| -> Result<mvcc::Applied, String> {
        match store.apply_batch(&[Some(cmd)], b"archive-replay", false) {
            Ok(mut v) => v.pop().flatten().ok_or_else(|| "no result".to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let mut n = 0u64;
    for seg in segs {
        let mut used = std::collections::HashSet::new();
        for ev in &seg.events {
            if let Some(kv) = &ev.kv {
                if kv.mod_revision <= want && kv.lease != 0 {
                    used.insert(kv.lease);
                }
            }
        }
        for (id, ttl, seen) in &seg.grants {
            if (*seen <= want || used.contains(id)) && store.lease(*id).is_none() {
                apply(mvcc::Command::LeaseGrant {
                    id: *id,
                    ttl_seconds: *ttl,
                })?;
            }
        }
        let mut i = 0;
        while i < seg.events.len() {
            let rev = seg.events[i]
                .kv
                .as_ref()
                .map(|k| k.mod_revision)
                .unwrap_or(0);
            let mut j = i;
            while j < seg.events.len()
                && seg.events[j]
                    .kv
                    .as_ref()
                    .map(|k| k.mod_revision)
                    .unwrap_or(0)
                    == rev
            {
                j += 1;
            }
            let group = &seg.events[i..j];
            i = j;
            if rev <= store.current_revision() {
                continue; // already in the backup (overlapping segments)
            }
            if rev > want {
                break;
            }
            if rev != store.current_revision() + 1 {
                return Err(format!(
                    "archive gap: next archived revision is {rev}, the store is at {}",
                    store.current_revision()
                ));
            }
            let ops: Vec<PbTxnRequestOp> = group
                .iter()
                .map(|ev| {
                    let kv = ev.kv.clone().unwrap_or_default();
                    PbTxnRequestOp {
                        request: Some(if ev.r#type == mvcc::consts::EVENT_DELETE {
                            Op::RequestDeleteRange(mvcc::PbDeleteRequest {
                                key: kv.key,
                                ..Default::default()
                            })
                        } else {
                            Op::RequestPut(mvcc::PbPutRequest {
                                key: kv.key,
                                value: kv.value,
                                lease: kv.lease,
                                ..Default::default()
                            })
                        }),
                    }
                })
                .collect();
            let a = apply(mvcc::Command::txn(&mvcc::PbTxnRequest {
                success: ops,
                ..Default::default()
            }))
            .map_err(|e| format!("replaying revision {rev}: {e}"))?;
            let same = a.revision == rev
                && a.events.len() == group.len()
                && a.events.iter().zip(group).all(|(x, y)| {
                    let (xk, yk) = (
                        x.kv.clone().unwrap_or_default(),
                        y.kv.clone().unwrap_or_default(),
                    );
                    x.r#type == y.r#type
                        && xk.key == yk.key
                        && xk.mod_revision == yk.mod_revision
                        && (y.r#type == mvcc::consts::EVENT_DELETE || xk == yk)
                });
            if !same {
                return Err(format!(
                    "replaying revision {rev} did not give the archived key-values (store at {})",
                    a.revision
                ));
            }
            n += 1;
        }
        for (id, seen) in &seg.revokes {
            if *seen <= want {
                if let Some(l) = store.lease(*id) {
                    if l.keys.is_empty() {
                        apply(mvcc::Command::LeaseRevoke { id: *id })?;
                    }
                }
            }
        }
    }
    if store.current_revision() < want {
        return Err(format!(
            "the archive ends at revision {}, before the target {want}",
            store.current_revision()
        ));
    }
    Ok(n)
}

/// Pick the backup for `target`.
pub fn choose<'a>(
    url: &str,
    all: &'a [BackupEntry],
    target: &Target,
) -> Result<(&'a BackupEntry, i64), BackupError> {
    let newest = all
        .last()
        .ok_or_else(|| BackupError::NoBackups { url: url.into() })?;
    match target {
        Target::Newest => Ok((newest, newest.summary.revision)),
        Target::Revision(r) => {
            if *r > newest.summary.revision {
                return Err(BackupError::RevisionTooNew {
                    url: url.into(),
                    wanted: *r,
                    newest: newest.summary.revision,
                    backup: newest.id.clone(),
                });
            }
            // The oldest backup at or after r holds the most history before it.
            let mut cands: Vec<&BackupEntry> =
                all.iter().filter(|e| e.summary.revision >= *r).collect();
            cands.sort_by_key(|e| e.summary.revision);
            for e in &cands {
                if e.summary.compact_revision <= *r {
                    return Ok((e, *r));
                }
            }
            let e = cands[0];
            let oldest = all
                .iter()
                .map(|e| e.summary.compact_revision.max(1))
                .min()
                .unwrap_or(1);
            Err(BackupError::RevisionCompacted {
                url: url.into(),
                wanted: *r,
                backup: e.id.clone(),
                compacted: e.summary.compact_revision,
                oldest,
            })
        }
        Target::Time(t) => {
            let when = humantime::parse_rfc3339_weak(t).map_err(|e| BackupError::BadTime {
                value: t.clone(),
                detail: e.to_string(),
            })?;
            let ms = when
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            match all.iter().rev().find(|e| e.summary.created_unix_ms <= ms) {
                Some(e) => Ok((e, e.summary.revision)),
                None => Err(BackupError::TimeTooOld {
                    url: url.into(),
                    wanted: t.clone(),
                    backup: all[0].id.clone(),
                    oldest: all[0].summary.created_at.clone(),
                }),
            }
        }
    }
}

fn check_flags(s: &RestoreSettings) -> Result<(), BackupError> {
    check_cluster_flags(
        &s.name,
        &s.initial_cluster,
        &s.initial_cluster_token,
        &s.initial_advertise_peer_urls,
    )?;
    if s.bump_revision < 0 {
        return Err(BackupError::BadFlags("--bump-revision must be >= 0".into()));
    }
    Ok(())
}

/// The cluster flags of a restore agree with each other (etcdutl's checks).
fn check_cluster_flags(
    name: &str,
    initial_cluster: &str,
    initial_cluster_token: &str,
    initial_advertise_peer_urls: &[String],
) -> Result<(), BackupError> {
    let mut found = None;
    for part in initial_cluster.split(',').filter(|p| !p.is_empty()) {
        let (n, u) = part.split_once('=').ok_or_else(|| {
            BackupError::BadFlags(format!(
                "--initial-cluster entry {part:?} is not name=peer-url"
            ))
        })?;
        if n == name {
            found.get_or_insert_with(Vec::new).push(u.to_string());
        }
    }
    let Some(mut listed) = found else {
        return Err(BackupError::BadFlags(format!(
            "--initial-cluster does not list --name {name:?}; add `{name}=<peer-url>`"
        )));
    };
    let mut adv = initial_advertise_peer_urls.to_vec();
    listed.sort();
    adv.sort();
    if listed != adv {
        return Err(BackupError::BadFlags(format!(
            "--initial-cluster lists {name:?} with peer URLs {listed:?}, but --initial-advertise-peer-urls is {adv:?}; they must match"
        )));
    }
    if initial_cluster_token.is_empty() {
        return Err(BackupError::BadFlags(
            "--initial-cluster-token is empty".into(),
        ));
    }
    Ok(())
}

/// A restore writes only into an absent or empty data dir.
fn check_empty_data_dir(data_dir: &Path) -> Result<(), BackupError> {
    if data_dir.exists() {
        let mut it =
            std::fs::read_dir(data_dir).map_err(BackupError::io("read data dir", data_dir))?;
        if it.next().is_some() {
            return Err(BackupError::DataDirNotEmpty {
                path: data_dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Restore one member's data dir. Run it once per member with the same source, target
/// and cluster flags; then start every member with `--initial-cluster-state new`.
pub async fn restore(s: &RestoreSettings) -> Result<RestoreReport, BackupError> {
    let started = std::time::Instant::now();
    check_flags(s)?;
    let data_dir = s.data_dir.clone();
    check_empty_data_dir(&data_dir)?;
    let d = Destination::open(&s.read.from, &s.read.s3, &s.read.retry)?;
    let ids = load_identities(&s.read.identity_files)?;
    let all = list_backups(&d).await?;
    let segments = crate::archive::list_segments(&d).await?;
    let plan = plan(&d, &all, &segments, &s.target, &ids).await?;
    let (entry, want) = (plan.entry.clone(), plan.want);
    let m = read_manifest(&d, &entry, &ids).await?;
    if want < m.compact_revision.max(1) {
        return Err(BackupError::RevisionCompacted {
            url: d.url.clone(),
            wanted: want,
            backup: m.id.clone(),
            compacted: m.compact_revision,
            oldest: m.compact_revision.max(1),
        });
    }
    // Fetch (and check) the archive to replay before touching the data dir.
    let mut segs = Vec::new();
    for name in &plan.segments {
        segs.push(crate::archive::read_segment(&d, name, &ids).await?);
    }

    std::fs::create_dir_all(&data_dir).map_err(BackupError::io("create data dir", &data_dir))?;
    let work = data_dir.join("member.restoring");
    let r = restore_into(&d, &entry, &m, &ids, want, s, &work, segs, plan.newest).await;
    match r {
        Ok(mut rep) => {
            let member = data_dir.join("member");
            std::fs::rename(work.join("member"), &member).map_err(BackupError::io(
                "move restored member dir into place",
                &member,
            ))?;
            let _ = std::fs::remove_dir_all(&work);
            std::fs::File::open(&data_dir)
                .and_then(|f| f.sync_all())
                .map_err(BackupError::io("sync data dir", &data_dir))?;
            rep.elapsed = started.elapsed();
            Ok(rep)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn restore_into(
    d: &Destination,
    entry: &BackupEntry,
    m: &crate::format::Manifest,
    ids: &[Box<dyn age::Identity + Send + Sync>],
    want: i64,
    s: &RestoreSettings,
    work: &Path,
    segs: Vec<crate::archive::Segment>,
    newest: i64,
) -> Result<RestoreReport, BackupError> {
    let member = work.join("member");
    std::fs::create_dir_all(&member).map_err(BackupError::io("create member dir", &member))?;
    let kv = member.join("kv.redb");
    // 1. The backup as it was (its whole history), loaded as it streams in straight
    //    into the new member's store, committed without fsync (step 5 makes the
    //    result durable);
    //    HashKV at the backup revision computed on the stream meanwhile.
    let (kv1, rev, cache_bytes) = (kv.clone(), m.revision, s.cache_bytes);
    let t0 = std::time::Instant::now();
    let progress = &s.read.progress;
    progress.set_phase("restore: fetching, checking and loading the backup");
    let (problems, res) = stream_backup(
        d,
        m,
        &entry.summary.recipients,
        ids,
        false,
        progress,
        move |r| {
            let store = mvcc::Store::open_with_cache_bytes(&kv1, cache_bytes)
                .map_err(|e| store_err(&kv1)(e.to_string()))?;
            let mut tap = crate::streamcheck::HashKvTap::new(r, rev);
            store
                .load_snapshot(&mut tap, mvcc::LoadDurability::Scratch)
                .map_err(|e| store_err(&kv1)(e.to_string()))?;
            let h = tap
                .finish()
                .map_err(|e| store_err(&kv1)(format!("HashKV at {rev}: {e}")))?;
            Ok((h, store))
        },
    )
    .await;
    if let Some(p) = problems.into_iter().next() {
        return Err(p);
    }
    let (h, store) = res.expect("sink ran")?;
    tracing::debug!(
        "restore: backup fetched, checked and loaded, HashKV computed in {:?}",
        t0.elapsed()
    );
    if h != m.hash_kv {
        return Err(BackupError::HashMismatch {
            url: d.url.clone(),
            backup: m.id.clone(),
            revision: m.revision,
            expected: m.hash_kv,
            found: h,
        });
    }
    progress.set_phase("restore: replaying the archive");
    // 2. The archive replayed on top, revision by revision, up to `want`; every
    //    replayed revision must produce exactly the archived key-values.
    let store = std::sync::Arc::new(store);
    let nsegs = segs.len() as u64;
    let mut archived_revisions = 0u64;
    if !segs.is_empty() {
        let (p, st) = (kv.clone(), store.clone());
        archived_revisions = tokio::task::spawn_blocking(move || -> Result<u64, BackupError> {
            replay(&st, &segs, want).map_err(|e| store_err(&p)(e))
        })
        .await
        .expect("replay task")?;
    }
    progress.set_phase("restore: reducing to the target revision and checking every key");
    let progress = progress.clone();
    // 3. The store reduced in place to the state at `want` (bumped, compacted; one
    //    commit), while another thread reads every key at `want` from the full
    //    history it still holds; 4. the reduced store read back and compared with
    //    that, page by page, while 5. one fsync makes it durable.
    let new_rev = m.revision.max(newest) + s.bump_revision;
    let page = usize::try_from(s.check_page_keys.max(1)).unwrap_or(usize::MAX);
    let kv3 = kv.clone();
    let mut rep = tokio::task::spawn_blocking(move || -> Result<RestoreReport, BackupError> {
        let t0 = std::time::Instant::now();
        let leases: std::collections::HashSet<i64> = store
            .try_leases()
            .map_err(|e| store_err(&kv3)(e.to_string()))?
            .iter()
            .map(|l| l.id)
            .collect();
        let (reference, reduced) = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (st, ls, p) = (&store, &leases, &kv3);
            let reader = scope.spawn(move || {
                let t = std::time::Instant::now();
                let r = page_digests(st, want, &[0], &[0], page, Some(ls), p);
                tracing::debug!("restore: backup read at {want} in {:?}", t.elapsed());
                // The reduction may commit now (or stop, on an error here).
                let _ = tx.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                r
            });
            let reduced =
                store.reduce_to_state_at(want, new_rev, LoadDurability::Scratch, move || {
                    rx.recv()
                        .unwrap_or_else(|_| Err("the reading thread stopped".into()))
                        .map_err(|e| format!("reading the backup at revision {want}: {e}"))
                });
            (reader.join().expect("reference reader thread"), reduced)
        });
        let reference = reference?;
        let mvcc::StateAt {
            keys,
            leases,
            detached,
        } = reduced.map_err(|e| store_err(&kv3)(e.to_string()))?;
        tracing::debug!(
            "restore: reduced to the state at {want} in {:?}",
            t0.elapsed()
        );
        // 5. The reduced store written to disk (one fsync) while it is read back.
        progress.set_phase("restore: writing the store to disk and reading it back");
        let t0 = std::time::Instant::now();
        let (synced, restored) = std::thread::scope(|scope| {
            let syncing = scope.spawn(|| {
                let t = std::time::Instant::now();
                let r = store.make_durable();
                tracing::debug!("restore: store made durable in {:?}", t.elapsed());
                r
            });
            let restored = restored_page_digests(&store, &reference, page, &kv3);
            (syncing.join().expect("fsync thread"), restored)
        });
        synced.map_err(|e| store_err(&kv3)(e.to_string()))?;
        compare_pages(&reference, &restored?, want, &kv3)?;
        tracing::debug!(
            "restore: every key checked and the store made durable in {:?}",
            t0.elapsed()
        );
        Ok(RestoreReport {
            backup: String::new(),
            backup_revision: 0,
            revision: want,
            new_revision: new_rev,
            keys,
            leases,
            detached_lease_keys: detached,
            segments: 0,
            archived_revisions: 0,
            elapsed: Default::default(),
        })
    })
    .await
    .expect("restore task")?;
    rep.backup = m.id.clone();
    rep.backup_revision = m.revision;
    rep.segments = nsegs;
    rep.archived_revisions = archived_revisions;
    let prov = serde_json::json!({
        "restored_at": now_rfc3339().0,
        "from": d.url,
        "backup": m.id,
        "backup_revision": m.revision,
        "revision": want,
        "new_revision": new_rev,
        "cluster_id_of_backup": m.cluster_id,
        "name": s.name,
        "initial_cluster": s.initial_cluster,
        "initial_cluster_token": s.initial_cluster_token,
    });
    let p = member.join("restored-from.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&prov).expect("json"))
        .map_err(BackupError::io("write", &p))?;
    Ok(rep)
}

/// One page of keys, as [`page_digests`] reads them: its first and last key, how
/// many, and the SHA-256 of every key's key, value, create and mod revision, version
/// and lease, in order.
#[derive(Debug, PartialEq, Eq)]
struct PageDigest {
    first: Vec<u8>,
    last: Vec<u8>,
    keys: usize,
    sha256: [u8; 32],
}

/// Threads reading the restored store back for the final check (the fsync runs
/// beside them).
pub const RESTORE_CHECK_THREADS: usize = 2;

/// [`page_digests`] of the restored store (at its newest revision), read by
/// [`RESTORE_CHECK_THREADS`] threads: the key space is cut where pages of `reference`
/// begin, so each thread's pages are the reference's pages there if the stores
/// agree, and the ranges tile the whole key space (a key before, between or after
/// the reference's keys is read by exactly one thread and shows as a difference).
fn restored_page_digests(
    store: &mvcc::Store,
    reference: &[PageDigest],
    page: usize,
    path: &Path,
) -> Result<Vec<PageDigest>, BackupError> {
    let t = std::time::Instant::now();
    let threads = RESTORE_CHECK_THREADS.clamp(1, reference.len().max(1));
    // Range i is [bounds[i], bounds[i + 1]); [0] as a start is the first key, as an
    // end "to the last key".
    let mut bounds: Vec<Vec<u8>> = vec![vec![0]];
    for i in 1..threads {
        bounds.push(reference[i * reference.len() / threads].first.clone());
    }
    bounds.push(vec![0]);
    let parts: Vec<Result<Vec<PageDigest>, BackupError>> = std::thread::scope(|scope| {
        let readers: Vec<_> = bounds
            .windows(2)
            .map(|w| scope.spawn(move || page_digests(store, 0, &w[0], &w[1], page, None, path)))
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().expect("restored store reader thread"))
            .collect()
    });
    let mut out = Vec::with_capacity(reference.len());
    for p in parts {
        out.extend(p?);
    }
    tracing::debug!(
        "restore: restored store read back by {threads} threads in {:?}",
        t.elapsed()
    );
    Ok(out)
}

/// Every key of `store` in `[from, end)` (`end` `[0]`: to the last key) at revision
/// `at` (0: the newest) through the store's read path (`range_page`), `page` keys at
/// a time, one [`PageDigest`] per page. With `leases`, a key whose lease is not among
/// them counts as having none (what a restore writes for a key whose lease is gone).
/// Memory: one page, and one digest per page.
fn page_digests(
    store: &mvcc::Store,
    at: i64,
    from: &[u8],
    end: &[u8],
    page: usize,
    leases: Option<&std::collections::HashSet<i64>>,
    path: &Path,
) -> Result<Vec<PageDigest>, BackupError> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    let mut from = from.to_vec();
    loop {
        // Pages that stop at `page` keys: a counted Range per page would scan the rest
        // of the store each time (quadratic on large stores).
        let kvs = store
            .range_page(&from, end, at, page)
            .map_err(|x| store_err(path)(format!("reading every key at revision {at}: {x:?}")))?;
        let (Some(first), Some(last)) = (kvs.first(), kvs.last()) else {
            return Ok(out);
        };
        let mut h = Sha256::new();
        for kv in &kvs {
            let lease = match leases {
                Some(l) if !l.contains(&kv.lease) => 0,
                _ => kv.lease,
            };
            h.update((kv.key.len() as u64).to_le_bytes());
            h.update(&kv.key);
            h.update((kv.value.len() as u64).to_le_bytes());
            h.update(&kv.value);
            for x in [kv.create_revision, kv.mod_revision, kv.version, lease] {
                h.update(x.to_le_bytes());
            }
        }
        out.push(PageDigest {
            first: first.key.clone(),
            last: last.key.clone(),
            keys: kvs.len(),
            sha256: h.finalize().into(),
        });
        if kvs.len() < page {
            return Ok(out);
        }
        from = last.key.clone();
        from.push(0);
    }
}

/// The restored store's pages equal the backup's at `at`; otherwise the first page
/// that differs is named by its keys.
fn compare_pages(
    backup: &[PageDigest],
    restored: &[PageDigest],
    at: i64,
    path: &Path,
) -> Result<(), BackupError> {
    let keys = |p: &[PageDigest]| p.iter().map(|d| d.keys).sum::<usize>();
    for (i, (b, r)) in backup.iter().zip(restored).enumerate() {
        if b != r {
            return Err(store_err(path)(format!(
                "restored store differs from the backup at revision {at} in the keys from {:?} to {:?} (page {i} of {}: {} keys restored, {} in the backup)",
                String::from_utf8_lossy(&b.first),
                String::from_utf8_lossy(&b.last),
                backup.len(),
                r.keys,
                b.keys
            )));
        }
    }
    if backup.len() != restored.len() {
        return Err(store_err(path)(format!(
            "restored store differs from the backup at revision {at}: {} keys vs {} keys",
            keys(restored),
            keys(backup)
        )));
    }
    Ok(())
}

/// Settings of `phalanx restore --from-etcd-snapshot`: the cluster flags of
/// [`RestoreSettings`], and the snapshot file.
#[derive(Clone, Debug)]
pub struct EtcdRestoreSettings {
    /// A file written by `etcdctl snapshot save` against etcd 3.4/3.5 (or a Phalanx member).
    pub snapshot: PathBuf,
    /// Accept a file without etcd's SHA-256 trailer, e.g. a member's `member/snap/db`
    /// (etcdctl's `--skip-hash-check`). A trailer that is present is always verified.
    pub skip_hash_check: bool,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub data_dir: PathBuf,
    /// Counters the restore updates as it runs, for the caller to show.
    pub progress: crate::progress::Progress,
}

#[derive(Debug)]
pub struct EtcdRestoreReport {
    /// The etcd cluster's revision; the restored store continues from it.
    pub revision: i64,
    pub compact_revision: i64,
    /// Keys live at `revision`.
    pub keys: u64,
    /// Puts and deletes of the retained history carried over.
    pub history_records: u64,
    pub leases: u64,
    pub leased_keys: u64,
    /// History records whose lease was not in the snapshot; restored without a lease.
    pub detached_records: u64,
    /// SHA-256 of the database (hex) when the file carried etcd's trailer.
    pub sha256: Option<String>,
    /// Members of the etcd cluster, as its snapshot recorded them (`name=peer URLs`).
    pub etcd_members: Vec<String>,
    pub elapsed: std::time::Duration,
}

/// Write a new member's data dir holding an etcd snapshot's state: every revision since
/// etcd's last compaction (so keys keep their create/mod revisions and versions, and
/// reads at past revisions answer as in etcd), the current and compacted revisions, and
/// the leases with their keys. Run it once per member with the same file and cluster
/// flags, then start every member with `--initial-cluster-state new`. Blocking.
///
/// Uses the same data-dir layout and writer as [`restore()`]: the state becomes an mvcc
/// snapshot stream installed by `mvcc::Store::install_snapshot` into `member/kv.redb`,
/// in a work dir renamed into place only once complete.
pub fn restore_from_etcd_snapshot(
    s: &EtcdRestoreSettings,
) -> Result<EtcdRestoreReport, BackupError> {
    let started = std::time::Instant::now();
    check_cluster_flags(
        &s.name,
        &s.initial_cluster,
        &s.initial_cluster_token,
        &s.initial_advertise_peer_urls,
    )?;
    check_empty_data_dir(&s.data_dir)?;
    // Read and check the whole file before the data dir is touched.
    s.progress
        .set_phase("restore: reading and checking the etcd snapshot");
    let snap = etcd_snapshot::EtcdSnapshot::open(&s.snapshot, s.skip_hash_check)?;
    std::fs::create_dir_all(&s.data_dir)
        .map_err(BackupError::io("create data dir", &s.data_dir))?;
    let work = s.data_dir.join("member.restoring");
    let r = restore_etcd_into(&snap, s, &work);
    match r {
        Ok(mut rep) => {
            let member = s.data_dir.join("member");
            std::fs::rename(work.join("member"), &member).map_err(BackupError::io(
                "move restored member dir into place",
                &member,
            ))?;
            let _ = std::fs::remove_dir_all(&work);
            std::fs::File::open(&s.data_dir)
                .and_then(|f| f.sync_all())
                .map_err(BackupError::io("sync data dir", &s.data_dir))?;
            rep.elapsed = started.elapsed();
            Ok(rep)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            Err(e)
        }
    }
}

/// A reader that counts what it reads into a [`crate::progress::Progress`].
struct Counted<'a, R> {
    inner: R,
    progress: &'a crate::progress::Progress,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes_done(n as u64);
        Ok(n)
    }
}

/// Write buffer of the converted etcd snapshot.
const ETCD_STREAM_BUFFER_BYTES: usize = 1 << 20;

fn restore_etcd_into(
    snap: &etcd_snapshot::EtcdSnapshot,
    s: &EtcdRestoreSettings,
    work: &Path,
) -> Result<EtcdRestoreReport, BackupError> {
    let member = work.join("member");
    std::fs::create_dir_all(&member).map_err(BackupError::io("create member dir", &member))?;
    let stream_path = work.join("etcd.mvcc-stream");
    s.progress
        .set_phase("restore: converting the etcd snapshot");
    let imp = {
        let f =
            std::fs::File::create(&stream_path).map_err(BackupError::io("create", &stream_path))?;
        let mut w = BufWriter::with_capacity(ETCD_STREAM_BUFFER_BYTES, f);
        let imp = snap.write_mvcc_stream(&mut w)?;
        w.into_inner()
            .map_err(|x| BackupError::io("write", &stream_path)(x.into_error()))?;
        imp
    };
    let kv = member.join("kv.redb");
    let store = mvcc::Store::open(&kv).map_err(|e| store_err(&kv)(e.to_string()))?;
    {
        let f = std::fs::File::open(&stream_path).map_err(BackupError::io("open", &stream_path))?;
        if let Ok(m) = f.metadata() {
            s.progress.set_total_bytes(m.len());
        }
        s.progress
            .set_phase("restore: loading the converted snapshot");
        let mut f = Counted {
            inner: f,
            progress: &s.progress,
        };
        store
            .load_snapshot(&mut f, mvcc::LoadDurability::Durable)
            .map_err(|e| store_err(&kv)(e.to_string()))?;
    }
    std::fs::remove_file(&stream_path).map_err(BackupError::io("remove", &stream_path))?;
    // The installed store says what the snapshot said.
    if store.current_revision() != imp.revision || store.compact_revision() != imp.compact_revision
    {
        return Err(store_err(&kv)(format!(
            "restored store is at revision {} (compacted {}), the etcd snapshot at {} (compacted {})",
            store.current_revision(),
            store.compact_revision(),
            imp.revision,
            imp.compact_revision
        )));
    }
    let leased: u64 = store
        .try_leases()
        .map_err(|e| store_err(&kv)(e.to_string()))?
        .iter()
        .map(|l| l.keys.len() as u64)
        .sum();
    if leased != imp.leased_keys {
        return Err(store_err(&kv)(format!(
            "restored store has {leased} keys attached to leases, the etcd snapshot {}",
            imp.leased_keys
        )));
    }
    let keys = store
        .range(&mvcc::PbRangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .map_err(|e| store_err(&kv)(format!("counting keys: {e:?}")))?
        .count as u64;
    drop(store);
    let sha256 = match &snap.trailer {
        etcd_snapshot::Trailer::Verified(h) => Some(h.clone()),
        etcd_snapshot::Trailer::Absent => None,
    };
    let etcd_members: Vec<String> = imp
        .members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_urls.join(",")))
        .collect();
    let prov = serde_json::json!({
        "restored_at": now_rfc3339().0,
        "from_etcd_snapshot": s.snapshot.display().to_string(),
        "sha256": sha256,
        "revision": imp.revision,
        "compact_revision": imp.compact_revision,
        "etcd_consistent_index": imp.consistent_index,
        "etcd_members": etcd_members,
        "name": s.name,
        "initial_cluster": s.initial_cluster,
        "initial_cluster_token": s.initial_cluster_token,
    });
    let p = member.join("restored-from.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&prov).expect("json"))
        .map_err(BackupError::io("write", &p))?;
    Ok(EtcdRestoreReport {
        revision: imp.revision,
        compact_revision: imp.compact_revision,
        keys,
        history_records: imp.history_records,
        leases: imp.leases,
        leased_keys: imp.leased_keys,
        detached_records: imp.detached_records,
        sha256,
        etcd_members,
        elapsed: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(keys: &[(&str, &str)]) -> (tempfile::TempDir, mvcc::Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = mvcc::Store::open(&dir.path().join("kv.redb")).unwrap();
        let cmds: Vec<_> = keys
            .iter()
            .map(|(k, v)| {
                Some(mvcc::Command::put(&mvcc::PbPutRequest {
                    key: k.as_bytes().to_vec(),
                    value: v.as_bytes().to_vec(),
                    ..Default::default()
                }))
            })
            .collect();
        s.apply_batch(&cmds, b"m", false).unwrap();
        (dir, s)
    }

    /// The restored store is read back by several threads over ranges cut at the
    /// reference's pages: equal stores compare equal, and a key missing, added (before,
    /// between or after the reference's keys, or at a cut) or changed is found.
    #[test]
    fn restored_store_read_back_in_ranges_finds_every_difference() {
        let names: Vec<String> = (0..100).map(|i| format!("k{i:03}")).collect();
        let base: Vec<(&str, &str)> = names.iter().map(|k| (k.as_str(), "v")).collect();
        let (_d, a) = store_with(&base);
        let p = Path::new("test");
        for page in [1usize, 7, 10, 1000] {
            let reference = page_digests(&a, 0, &[0], &[0], page, None, p).unwrap();
            let restored = restored_page_digests(&a, &reference, page, p).unwrap();
            assert_eq!(reference, restored, "page {page}");
            let cut = &reference[reference.len() / 2].first;
            let cut = std::str::from_utf8(cut).unwrap().to_string();
            let variants: Vec<Vec<(&str, &str)>> = vec![
                base[1..].to_vec(),
                base.iter().filter(|(k, _)| *k != cut).cloned().collect(),
                [vec![("a", "v")], base.clone()].concat(),
                [base.clone(), vec![("z", "v")]].concat(),
                [base.clone(), vec![("k050x", "v")]].concat(),
                base.iter()
                    .map(|&(k, v)| if k == "k077" { (k, "w") } else { (k, v) })
                    .collect(),
            ];
            for (i, keys) in variants.iter().enumerate() {
                let (_d2, b) = store_with(keys);
                let restored = restored_page_digests(&b, &reference, page, p).unwrap();
                assert!(
                    compare_pages(&reference, &restored, 0, p).is_err(),
                    "page {page} variant {i}"
                );
            }
        }
    }
}
