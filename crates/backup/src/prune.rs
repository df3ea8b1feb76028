//! Retention: which backups a keep-last/hourly/daily/weekly/monthly/yearly policy keeps
//! (restic's `forget` rules), and pruning a repository down to them: manifests first
//! (a removed backup stops existing at once), then chunks no kept backup references and
//! archive segments no kept backup needs. Locks (`locks/<kind>-<ms>-<rand>`) keep a
//! prune from deleting a chunk a running backup is about to reuse.

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::dest::Destination;
use crate::error::BackupError;
use crate::format::*;
use crate::repo::{list_backups, BackupEntry};

/// A retention policy; 0 means "this rule keeps nothing". A backup is kept when any
/// rule keeps it. All zero: keep everything (no pruning).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Retention {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
}

impl Retention {
    pub fn keeps_everything(&self) -> bool {
        *self == Retention::default()
    }
}

/// Civil (year, month) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// restic's `forget`, in UTC: `times_ms` are the backups' creation times; returns the
/// indexes kept. Newest first, each rule keeps a backup when its bucket (the backup
/// itself for keep-last; its hour, day, ISO week, month, year) differs from the last
/// one that rule kept, while the rule has count left; the oldest backup is kept by
/// any rule that still has count left when reaching it.
pub fn forget(times_ms: &[u64], r: &Retention) -> BTreeSet<usize> {
    let mut order: Vec<usize> = (0..times_ms.len()).collect();
    order.sort_by(|a, b| times_ms[*b].cmp(&times_ms[*a]).then(b.cmp(a)));
    if r.keeps_everything() {
        return order.into_iter().collect();
    }
    type Bucker = fn(i64, usize) -> i64;
    let rules: [(u32, Bucker); 6] = [
        (r.keep_last, |_, nr| nr as i64),
        (r.keep_hourly, |ms, _| ms.div_euclid(3_600_000)),
        (r.keep_daily, |ms, _| ms.div_euclid(86_400_000)),
        // ISO weeks start on Monday; 1970-01-01 was a Thursday.
        (r.keep_weekly, |ms, _| {
            (ms.div_euclid(86_400_000) + 3).div_euclid(7)
        }),
        (r.keep_monthly, |ms, _| {
            let (y, m) = civil(ms.div_euclid(86_400_000));
            y * 12 + m as i64
        }),
        (r.keep_yearly, |ms, _| civil(ms.div_euclid(86_400_000)).0),
    ];
    let mut left: Vec<u32> = rules.iter().map(|(n, _)| *n).collect();
    let mut last: Vec<Option<i64>> = vec![None; rules.len()];
    let mut keep = BTreeSet::new();
    let n = order.len();
    for (nr, &i) in order.iter().enumerate() {
        let ms = times_ms[i] as i64;
        let mut kept = false;
        for (k, (_, bucker)) in rules.iter().enumerate() {
            if left[k] == 0 {
                continue;
            }
            let v = bucker(ms, nr);
            if last[k] != Some(v) || nr == n - 1 {
                kept = true;
                last[k] = Some(v);
                left[k] -= 1;
            }
        }
        if kept {
            keep.insert(i);
        }
    }
    keep
}

pub fn lock_key(kind: &str) -> String {
    let (_, ms) = now_rfc3339();
    format!(
        "{LOCKS_PREFIX}/{kind}{ms:013}-{:08x}",
        rand::random::<u32>()
    )
}

/// Locks named `<kind>…` younger than `stale_ms`.
pub(crate) async fn fresh_locks(
    d: &Destination,
    kind: &str,
    stale_ms: u64,
) -> Result<usize, BackupError> {
    let (_, now) = now_rfc3339();
    let mut n = 0;
    for (key, _) in d.list(LOCKS_PREFIX).await? {
        let name = key.rsplit('/').next().unwrap_or("");
        let Some(rest) = name.strip_prefix(kind) else {
            continue;
        };
        let ms: u64 = rest
            .split('-')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if ms + stale_ms > now {
            n += 1;
        }
    }
    Ok(n)
}

/// What [`prune`] did at one destination.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    pub chunks_deleted: u64,
    pub segments_deleted: u64,
    /// Why chunk GC was skipped this time, if it was.
    pub chunk_gc_skipped: Option<String>,
}

/// Apply `r` to the repository at `d`. `lock_stale_ms`: locks older than this are
/// ignored. Removing a backup deletes its manifest first, so it is never half-listed.
pub async fn prune(
    d: &Destination,
    r: &Retention,
    lock_stale_ms: u64,
) -> Result<PruneReport, BackupError> {
    let mut rep = PruneReport::default();
    let all = list_backups(d).await?;
    if r.keeps_everything() || all.is_empty() {
        rep.kept = all.iter().map(|e| e.id.clone()).collect();
        return Ok(rep);
    }
    let times: Vec<u64> = all.iter().map(|e| e.summary.created_unix_ms).collect();
    let keep = forget(&times, r);
    let mut kept: Vec<&BackupEntry> = Vec::new();
    let mut removed: Vec<&BackupEntry> = Vec::new();
    for (i, e) in all.iter().enumerate() {
        if keep.contains(&i) {
            kept.push(e)
        } else {
            removed.push(e)
        }
    }
    rep.kept = kept.iter().map(|e| e.id.clone()).collect();
    for e in &removed {
        // The manifest first: from here on the backup does not exist.
        d.delete(&backup_key(&e.id, MANIFEST_NAME)).await?;
        rep.removed.push(e.id.clone());
    }
    // Every object of removed backups, and of interrupted ones (no manifest) whose
    // writer's lock is stale.
    let (_, now) = now_rfc3339();
    let kept_ids: HashSet<&str> = kept.iter().map(|e| e.id.as_str()).collect();
    for (key, _) in d.list(BACKUPS_PREFIX).await? {
        let mut parts = key.rsplitn(3, '/');
        let (Some(_), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        if kept_ids.contains(id) {
            continue;
        }
        let removed_now = rep.removed.iter().any(|x| x == id);
        let ms: u64 = id
            .split('-')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if removed_now || ms + lock_stale_ms < now {
            d.delete(&key).await?;
        }
    }
    // Chunks: only with our prune lock in place and no fresh backup lock.
    let lock = lock_key("prune-");
    d.put(&lock, Bytes::from_static(b"{}")).await?;
    let res = gc_chunks(d, &kept, lock_stale_ms, &mut rep).await;
    let _ = d.delete(&lock).await;
    res?;
    // Archive segments wholly at or below the oldest kept backup's revision are needed
    // by no kept backup.
    if let Some(oldest) = kept.iter().map(|e| e.summary.revision).min() {
        for s in crate::archive::list_segments(d).await? {
            if s.upto <= oldest {
                d.delete(&s.key()).await?;
                rep.segments_deleted += 1;
            }
        }
    }
    Ok(rep)
}

async fn gc_chunks(
    d: &Destination,
    kept: &[&BackupEntry],
    lock_stale_ms: u64,
    rep: &mut PruneReport,
) -> Result<(), BackupError> {
    if fresh_locks(d, "backup-", lock_stale_ms).await? > 0 {
        rep.chunk_gc_skipped = Some("a backup is running (fresh lock)".into());
        return Ok(());
    }
    let mut referenced: HashSet<String> = HashSet::new();
    for e in kept {
        let key = backup_key(&e.id, REFS_NAME);
        let Some(b) = d.get(&key).await? else {
            rep.chunk_gc_skipped = Some(format!(
                "backup {} has no {REFS_NAME} (written before retention existed)",
                e.id
            ));
            return Ok(());
        };
        let refs: Refs = serde_json::from_slice(&b).map_err(|x| BackupError::CorruptObject {
            url: d.url.clone(),
            object: key.clone(),
            detail: x.to_string(),
        })?;
        referenced.extend(refs.chunks);
    }
    for (key, _) in d.list(CHUNKS_PREFIX).await? {
        if !referenced.contains(&key) {
            d.delete(&key).await?;
            rep.chunks_deleted += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;
    const D: u64 = 24 * H;

    fn kept(times: &[u64], r: Retention) -> Vec<u64> {
        let mut v: Vec<u64> = forget(times, &r).into_iter().map(|i| times[i]).collect();
        v.sort();
        v
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let t: Vec<u64> = (0..6).map(|i| 1_700_000_000_000 + i * 1000).collect();
        let r = Retention {
            keep_last: 2,
            ..Default::default()
        };
        assert_eq!(kept(&t, r), vec![t[4], t[5]]);
    }

    #[test]
    fn hourly_keeps_the_newest_of_each_hour_and_the_oldest_while_counts_remain() {
        // 2023-11-14 22:13:20 UTC base; three backups in hour A, two in hour B.
        let base = 1_700_000_000_000 / H * H;
        let t = vec![base + 1, base + 2, base + 3, base + H + 1, base + H + 2];
        let r = Retention {
            keep_hourly: 2,
            ..Default::default()
        };
        assert_eq!(kept(&t, r), vec![base + 3, base + H + 2]);
        let r = Retention {
            keep_hourly: 5,
            ..Default::default()
        };
        // counts remain at the oldest: restic keeps it too
        assert_eq!(kept(&t, r), vec![base + 1, base + 3, base + H + 2]);
    }

    #[test]
    fn daily_weekly_monthly_combine() {
        // one backup per day for 70 days from Monday 2024-01-01 00:30 UTC
        let mon = 1_704_067_200_000u64 + 30 * 60_000;
        let t: Vec<u64> = (0..70).map(|i| mon + i * D).collect();
        let r = Retention {
            keep_daily: 3,
            keep_weekly: 2,
            keep_monthly: 2,
            ..Default::default()
        };
        let k = kept(&t, r);
        // daily: days 69, 68, 67; weekly: newest of its ISO week: day 69 (Sunday? no:
        // day 69 = 2024-03-10, a Sunday) and the previous Sunday day 62; monthly:
        // newest of March (69) and of February (59 = 2024-02-29).
        assert_eq!(k, vec![t[59], t[62], t[67], t[68], t[69]]);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1));
        assert_eq!(civil(19_782), (2024, 2)); // 2024-02-29
        assert_eq!(civil(19_783), (2024, 3));
    }
}
