//! Backups run by the cluster itself. Every member runs this service; only the
//! leader acts. The policy lives in the replicated store (`<prefix>/policy`, JSON,
//! written by `phalanx backup schedule set`); so do the status (`<prefix>/status`),
//! the claim of the running backup (`<prefix>/run`) and events (the alerting event
//! timeline's key format, `/phalanx/alerting/events/…`).
//!
//! * Scheduled full backups every `backup_interval_ms`, one at a time. The run is
//!   claimed in the store (compare-and-swap on `<prefix>/run`) and the claim is checked
//!   again (CAS) just before the manifest makes the backup exist, so a member that lost
//!   leadership abandons its backup; a new leader sees the backup not done and retries.
//! * The continuous archive ([`crate::archive`]): every `archive_interval_ms`, the
//!   revisions the local store applied since the last shipped one, per destination.
//! * Retention after each successful backup ([`crate::prune`]).
//! * A restore drill every `drill_interval_ms` when the member has an identity file:
//!   a full restore (backup + archive) into a scratch dir, timed (measured RTO).
//! * `/metrics` and `/status` on `listen`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::archive::DestArchive;
use crate::dest::{Destination, RetrySettings, S3Settings};
use crate::error::BackupError;
use crate::format::*;
use crate::prune::Retention;

pub const DEFAULT_PREFIX: &str = "/phalanx/backup";
/// The alerting crate's event timeline prefix (`alerting::store::DEFAULT_PREFIX`).
pub const EVENTS_PREFIX: &str = "/phalanx/alerting";
/// Bound on one store request of the service.
pub const STORE_TIMEOUT_MS: u64 = 5_000;

/// The backup policy, stored as JSON at `<prefix>/policy`. Every limit names its unit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub destinations: Vec<String>,
    pub recipients: Vec<String>,
    pub backup_interval_ms: u64,
    /// 0: no continuous archive.
    pub archive_interval_ms: u64,
    pub retention: Retention,
    /// 0: no restore drill.
    pub drill_interval_ms: u64,
    pub max_upload_retries: u32,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    pub request_timeout_ms: u64,
    /// 0: unlimited.
    pub max_upload_bytes_per_s: u64,
    pub upload_concurrency: usize,
    pub max_segment_events: usize,
    pub lock_stale_ms: u64,
    /// After a failed backup, the next attempt comes after this (or the interval, if shorter).
    pub failed_backup_retry_ms: u64,
    pub s3_endpoint: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            destinations: vec![],
            recipients: vec![],
            backup_interval_ms: 86_400_000,
            archive_interval_ms: 1_000,
            retention: Retention::default(),
            drill_interval_ms: 86_400_000,
            max_upload_retries: 5,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 5_000,
            request_timeout_ms: 60_000,
            max_upload_bytes_per_s: 0,
            upload_concurrency: 4,
            max_segment_events: 100_000,
            lock_stale_ms: crate::backup::DEFAULT_LOCK_STALE_MS,
            failed_backup_retry_ms: 10_000,
            s3_endpoint: None,
        }
    }
}

impl Policy {
    pub fn validate(&self) -> Result<(), String> {
        if self.destinations.is_empty() {
            return Err("destinations: at least one (file:///path or s3://bucket/prefix)".into());
        }
        for u in &self.destinations {
            if !(u.starts_with("file:///") || u.starts_with("s3://")) {
                return Err(format!(
                    "destinations: {u:?} is not file:///absolute/path or s3://bucket/prefix"
                ));
            }
        }
        parse_recipients(&self.recipients).map_err(|e| format!("recipients: {e}"))?;
        for (name, v) in [
            ("backup_interval_ms", self.backup_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("lock_stale_ms", self.lock_stale_ms),
            ("upload_concurrency", self.upload_concurrency as u64),
            ("max_segment_events", self.max_segment_events as u64),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.archive_interval_ms != 0 && self.archive_interval_ms < 10 {
            return Err("archive_interval_ms must be 0 (off) or at least 10".into());
        }
        Ok(())
    }
    fn retry(&self) -> RetrySettings {
        RetrySettings {
            max_upload_retries: self.max_upload_retries,
            retry_initial_backoff_ms: self.retry_initial_backoff_ms,
            retry_max_backoff_ms: self.retry_max_backoff_ms,
            request_timeout_ms: self.request_timeout_ms,
            ..Default::default()
        }
    }
    fn s3(&self) -> S3Settings {
        S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: None,
        }
    }
}

/// One destination's state, as the member running the schedule reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DestStatus {
    pub last_success_ms: u64,
    /// How long the last successful backup to this destination took, from
    /// the start of the store scan to its manifest (`phalanx_backup_duration_seconds`).
    pub last_backup_seconds: f64,
    pub last_backup_id: String,
    pub last_error: Option<String>,
    pub last_error_ms: u64,
    pub backup_failures_total: u64,
    pub archive_failures_total: u64,
    pub uploaded_bytes_total: u64,
    /// Revisions up to here are archived at this destination.
    pub archive_revision: i64,
    pub archive_shipped_ms: u64,
    pub archive_lag_seconds: f64,
    pub last_verified_ms: u64,
    pub restore_drill_seconds: f64,
    /// Failed restore drills (also counted in `backup_failures_total`).
    pub restore_drill_failures_total: u64,
    pub last_prune: Option<String>,
}

/// `<prefix>/status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Status {
    /// The member that runs the schedule (the leader when it wrote this).
    pub runner: String,
    pub updated_ms: u64,
    pub last_backup_ms: u64,
    pub last_backup_id: String,
    pub last_backup_revision: i64,
    pub last_attempt_ms: u64,
    pub last_drill_ms: u64,
    pub destinations: BTreeMap<String, DestStatus>,
}

/// `<prefix>/run`: the claim of the backup in progress.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Run {
    pub member: String,
    pub started_ms: u64,
    /// `running`, then `committing` (the manifest may be written) with `id`.
    pub state: String,
    pub id: String,
}

/// Settings of a member's backup service.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    pub member: String,
    /// This member's client URLs (the store is reached, and snapshots taken, through them).
    pub endpoints: Vec<String>,
    /// The member's in-process channel to its own etcd API
    /// (`etcd_api::internal_channel`); when given, used instead of
    /// `endpoints`, needing no TLS material or credentials whatever the
    /// client listeners require.
    pub channel: Option<etcd_client::Channel>,
    pub prefix: String,
    pub events_prefix: String,
    /// How often the schedule is looked at, milliseconds.
    pub tick_ms: u64,
    /// How often the applied revision is sampled for the archive's time marks, ms.
    pub archive_poll_ms: u64,
    /// Bound on buffered time marks (the oldest are dropped: only `--time` precision suffers).
    pub max_marks: usize,
    /// `/metrics` and `/status` listener.
    pub listen: Option<SocketAddr>,
    /// age identities for restore drills (none: no drill).
    pub identity_files: Vec<PathBuf>,
}

impl ServiceSettings {
    pub fn new(member: &str, endpoints: Vec<String>) -> Self {
        ServiceSettings {
            member: member.into(),
            endpoints,
            channel: None,
            prefix: DEFAULT_PREFIX.into(),
            events_prefix: EVENTS_PREFIX.into(),
            tick_ms: 200,
            archive_poll_ms: 10,
            max_marks: 200_000,
            listen: None,
            identity_files: vec![],
        }
    }
}

type Probe<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// What the member gives the service.
#[derive(Clone)]
pub struct Host {
    /// The member's store (read-only use: revisions, leases, the policy key).
    pub store: Arc<mvcc::Store>,
    pub is_leader: Probe<bool>,
}

struct Shared {
    s: ServiceSettings,
    host: Host,
    marks: Mutex<VecDeque<(i64, u64)>>,
    status: Mutex<Status>,
    /// The in-memory status is this member's (it leads and loaded the stored one).
    active: AtomicBool,
    client: tokio::sync::Mutex<Option<Client>>,
}

/// The running service; its tasks stop when dropped.
pub struct ServiceHandle {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub listen_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
}

impl ServiceHandle {
    /// The service's metrics in Prometheus text format, for the member's own
    /// `/metrics` (so its alerting history, and the default backup rules,
    /// see them without `--backup-listen`).
    pub fn metrics_source(&self) -> Arc<dyn Fn() -> String + Send + Sync> {
        let sh = self.shared.clone();
        Arc::new(move || render_metrics(&status_now(&sh), sh.active.load(Ordering::Acquire)))
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub async fn start(s: ServiceSettings, host: Host) -> Result<ServiceHandle, BackupError> {
    let listener = match s.listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(BackupError::io("bind backup listener", a.to_string()))?,
        ),
        None => None,
    };
    let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let sh = Arc::new(Shared {
        s,
        host,
        marks: Mutex::new(VecDeque::new()),
        status: Mutex::new(Status::default()),
        active: AtomicBool::new(false),
        client: tokio::sync::Mutex::new(None),
    });
    let mut tasks = vec![
        tokio::spawn(marks_loop(sh.clone())),
        tokio::spawn(archive_loop(sh.clone())),
        tokio::spawn(schedule_loop(sh.clone())),
    ];
    if let Some(l) = listener {
        tasks.push(tokio::spawn(serve(l, sh.clone())));
    }
    Ok(ServiceHandle {
        tasks,
        listen_addr,
        shared: sh,
    })
}

fn now_ms() -> u64 {
    now_rfc3339().1
}

fn local_get(store: &mvcc::Store, key: &str) -> Option<Vec<u8>> {
    let r = store
        .range(&mvcc::PbRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .ok()?;
    r.kvs.into_iter().next().map(|kv| kv.value)
}

fn local_policy(sh: &Shared) -> Option<Policy> {
    let b = local_get(&sh.host.store, &format!("{}/policy", sh.s.prefix))?;
    let p: Policy = serde_json::from_slice(&b).ok()?;
    p.validate().ok()?;
    Some(p)
}

async fn client(sh: &Shared) -> Option<Client> {
    let mut g = sh.client.lock().await;
    if g.is_none() {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_millis(STORE_TIMEOUT_MS));
        let connect = async {
            match &sh.s.channel {
                Some(ch) => Client::from_channel(ch.clone(), Some(opts)).await,
                None => Client::connect(sh.s.endpoints.clone(), Some(opts)).await,
            }
        };
        match tokio::time::timeout(Duration::from_millis(STORE_TIMEOUT_MS), connect).await {
            Ok(Ok(c)) => *g = Some(c),
            _ => return None,
        }
    }
    g.clone()
}

/// Append to the event timeline (alerting's format); best effort.
async fn event(sh: &Shared, kind: &str, message: String, destination: Option<&str>) {
    tracing::info!(kind, "{message}");
    let Some(mut c) = client(sh).await else {
        return;
    };
    let ts = now_ms();
    let mut labels = BTreeMap::new();
    if let Some(d) = destination {
        labels.insert("destination".to_string(), d.to_string());
    }
    let v = serde_json::json!({
        "ts_ms": ts, "kind": kind, "member": sh.s.member, "message": message, "labels": labels,
    });
    let key = format!(
        "{}/events/{:016}-{}-{}",
        sh.s.events_prefix,
        ts,
        sh.s.member,
        rand::random::<u32>()
    );
    let _ = tokio::time::timeout(
        Duration::from_millis(STORE_TIMEOUT_MS),
        c.put(key, v.to_string(), None),
    )
    .await;
}

async fn save_status(sh: &Shared) {
    let st = {
        let mut g = sh.status.lock().unwrap();
        g.runner = sh.s.member.clone();
        g.updated_ms = now_ms();
        g.clone()
    };
    if let Some(mut c) = client(sh).await {
        let _ = tokio::time::timeout(
            Duration::from_millis(STORE_TIMEOUT_MS),
            c.put(
                format!("{}/status", sh.s.prefix),
                serde_json::to_vec(&st).expect("json"),
                None,
            ),
        )
        .await;
    }
}

/// On becoming the runner: continue from the stored status.
async fn activate(sh: &Shared) -> bool {
    if sh.active.load(Ordering::Acquire) {
        return true;
    }
    let Some(mut c) = client(sh).await else {
        return false;
    };
    let r = tokio::time::timeout(
        Duration::from_millis(STORE_TIMEOUT_MS),
        c.get(format!("{}/status", sh.s.prefix), None),
    )
    .await;
    let Ok(Ok(r)) = r else { return false };
    let st: Status = r
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok())
        .unwrap_or_default();
    *sh.status.lock().unwrap() = st;
    sh.active.store(true, Ordering::Release);
    true
}

fn leads(sh: &Shared) -> bool {
    let l = (sh.host.is_leader)();
    if !l {
        sh.active.store(false, Ordering::Release);
    }
    l
}

async fn marks_loop(sh: Arc<Shared>) {
    let mut last = 0i64;
    loop {
        tokio::time::sleep(Duration::from_millis(sh.s.archive_poll_ms.max(1))).await;
        if !(sh.host.is_leader)() {
            sh.marks.lock().unwrap().clear();
            last = 0;
            continue;
        }
        let r = sh.host.store.current_revision();
        if r > last {
            let mut m = sh.marks.lock().unwrap();
            m.push_back((r, now_ms()));
            while m.len() > sh.s.max_marks {
                m.pop_front();
            }
            last = r;
        }
    }
}

async fn archive_loop(sh: Arc<Shared>) {
    let mut dests: BTreeMap<String, Option<DestArchive>> = BTreeMap::new();
    let mut failing: BTreeMap<String, bool> = BTreeMap::new();
    let mut current: Option<Policy> = None;
    // Fixed-rate ticks: a pass starts every `archive_interval_ms` however
    // long the previous upload took (never two at once), less the time the
    // last pass took to upload (at most half the interval): a revision
    // committed just after a pass began ships with the next pass's upload,
    // so it waits one period plus one upload, and that is kept within the
    // interval the policy promises. Sleeping the interval *after* each upload
    // made the lag interval + upload time; a plain fixed rate, interval +
    // upload time at worst (p99 at 1.00 s for the 1 s default).
    let mut next_pass = tokio::time::Instant::now();
    let mut last_upload = Duration::ZERO;
    loop {
        let interval = current
            .as_ref()
            .map(|p| p.archive_interval_ms)
            .filter(|x| *x > 0)
            .unwrap_or(sh.s.tick_ms);
        let interval = Duration::from_millis(interval);
        let period = interval - last_upload.min(interval / 2);
        next_pass = (next_pass + period).max(tokio::time::Instant::now());
        tokio::time::sleep_until(next_pass).await;
        let pass_started = tokio::time::Instant::now();
        let policy = local_policy(&sh).filter(|p| p.archive_interval_ms > 0);
        if !leads(&sh) || policy.is_none() || !activate(&sh).await {
            dests.clear();
            current = None;
            continue;
        }
        let p = policy.expect("some");
        if current.as_ref() != Some(&p) {
            dests.clear();
            current = Some(p.clone());
        }
        let Ok(recipients) = parse_recipients(&p.recipients) else {
            continue;
        };
        let marks: Vec<(i64, u64)> = sh.marks.lock().unwrap().iter().copied().collect();
        for url in &p.destinations {
            let d = match Destination::open(url, &p.s3(), &p.retry()) {
                Ok(d) => d,
                Err(e) => {
                    archive_failed(&sh, url, &e.to_string(), &mut failing).await;
                    continue;
                }
            };
            let slot = dests.entry(url.clone()).or_insert(None);
            if slot.is_none() {
                match init_archive(&d).await {
                    Ok(Some(a)) => *slot = Some(a),
                    Ok(None) => continue, // no full backup yet: the schedule takes one
                    Err(e) => {
                        archive_failed(&sh, url, &e.to_string(), &mut failing).await;
                        continue;
                    }
                }
            }
            let st = slot.as_mut().expect("set");
            match crate::archive::ship(
                &d,
                &sh.host.store,
                st,
                &marks,
                &recipients,
                3,
                p.max_segment_events,
            )
            .await
            {
                Ok(out) => {
                    {
                        let mut g = sh.status.lock().unwrap();
                        let ds = g.destinations.entry(url.clone()).or_default();
                        ds.archive_revision = st.after;
                        ds.uploaded_bytes_total += out.bytes;
                        if out.segments > 0 {
                            ds.archive_shipped_ms = now_ms();
                        }
                    }
                    if failing.insert(url.clone(), false) == Some(true) {
                        event(
                            &sh,
                            "archive_recovered",
                            format!("archive to {url} ships again (up to revision {})", st.after),
                            Some(url),
                        )
                        .await;
                        save_status(&sh).await;
                    }
                }
                Err(e) => {
                    if matches!(&e, BackupError::Archive { detail, .. } if detail.contains("compacted"))
                    {
                        // A gap: the chain restarts at the next full backup.
                        *slot = None;
                        sh.status.lock().unwrap().last_backup_ms = 0;
                    }
                    archive_failed(&sh, url, &e.to_string(), &mut failing).await;
                }
            }
        }
        last_upload = pass_started.elapsed();
        // Marks every destination has shipped are no longer needed.
        let min_after = dests
            .values()
            .map(|s| s.as_ref().map(|a| a.after).unwrap_or(i64::MIN))
            .min()
            .unwrap_or(i64::MIN);
        let mut m = sh.marks.lock().unwrap();
        while m.front().is_some_and(|(r, _)| *r <= min_after) {
            m.pop_front();
        }
    }
}

async fn archive_failed(sh: &Shared, url: &str, err: &str, failing: &mut BTreeMap<String, bool>) {
    {
        let mut g = sh.status.lock().unwrap();
        let ds = g.destinations.entry(url.to_string()).or_default();
        ds.archive_failures_total += 1;
        ds.last_error = Some(format!("archive: {err}"));
        ds.last_error_ms = now_ms();
    }
    if failing.insert(url.to_string(), true) != Some(true) {
        event(
            sh,
            "archive_failed",
            format!("archive to {url} failed: {err}"),
            Some(url),
        )
        .await;
        save_status(sh).await;
    }
}

/// Where the archive of `d` continues: the end of the chain from its newest backup.
async fn init_archive(d: &Destination) -> Result<Option<DestArchive>, BackupError> {
    let backups = crate::repo::list_backups(d).await?;
    let Some(newest) = backups.last() else {
        return Ok(None);
    };
    let segs = crate::archive::list_segments(d).await?;
    let (_, end) = crate::archive::chain(&segs, newest.summary.revision);
    Ok(Some(DestArchive {
        after: end,
        leases: BTreeMap::new(),
        compact: i64::MIN,
    }))
}

async fn schedule_loop(sh: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(sh.s.tick_ms)).await;
        let Some(p) = local_policy(&sh) else {
            // No schedule (cleared, or never set): nothing runs here, so this member's
            // status is no longer the live one (`phalanx_backup_running_here` 0); what
            // it did last is kept in the stored status.
            if sh.active.swap(false, Ordering::AcqRel) {
                save_status(&sh).await;
            }
            continue;
        };
        if !leads(&sh) || !activate(&sh).await {
            continue;
        }
        let now = now_ms();
        let (last_ok, last_attempt, last_drill) = {
            let g = sh.status.lock().unwrap();
            (g.last_backup_ms, g.last_attempt_ms, g.last_drill_ms)
        };
        let retry = p.failed_backup_retry_ms.min(p.backup_interval_ms);
        if now >= last_ok.saturating_add(p.backup_interval_ms)
            && now >= last_attempt.saturating_add(retry)
        {
            run_backup(&sh, &p).await;
        }
        if p.drill_interval_ms > 0
            && !sh.s.identity_files.is_empty()
            && now >= last_drill.saturating_add(p.drill_interval_ms)
            && sh.status.lock().unwrap().last_backup_ms > 0
        {
            drill(&sh, &p).await;
        }
    }
}

async fn run_backup(sh: &Arc<Shared>, p: &Policy) {
    let Some(mut c) = client(sh).await else {
        return;
    };
    let run_key = format!("{}/run", sh.s.prefix);
    let Ok(Ok(r)) = tokio::time::timeout(
        Duration::from_millis(STORE_TIMEOUT_MS),
        c.get(run_key.clone(), None),
    )
    .await
    else {
        return;
    };
    let (seen_rev, prev): (i64, Option<Run>) = match r.kvs().first() {
        Some(kv) => (kv.mod_revision(), serde_json::from_slice(kv.value()).ok()),
        None => (0, None),
    };
    // A member that lost leadership while committing may have made its backup exist.
    if let Some(prev) = prev.filter(|r| r.state == "committing" && !r.id.is_empty()) {
        for url in &p.destinations {
            let Ok(d) = Destination::open(url, &p.s3(), &p.retry()) else {
                continue;
            };
            if let Ok(all) = crate::repo::list_backups(&d).await {
                if let Some(e) = all.iter().find(|e| e.id == prev.id) {
                    {
                        let mut g = sh.status.lock().unwrap();
                        g.last_backup_ms = now_ms();
                        g.last_backup_id = e.id.clone();
                        g.last_backup_revision = e.summary.revision;
                    }
                    let _ = c.delete(run_key.clone(), None).await;
                    event(sh, "backup_completed", format!("backup {} (by {}, committed before it lost leadership) is complete at {url}", prev.id, prev.member), Some(url)).await;
                    save_status(sh).await;
                    return;
                }
            }
        }
    }
    let claim = Run {
        member: sh.s.member.clone(),
        started_ms: now_ms(),
        state: "running".into(),
        id: String::new(),
    };
    let txn = Txn::new()
        .when([Compare::mod_revision(
            run_key.clone(),
            CompareOp::Equal,
            seen_rev,
        )])
        .and_then([TxnOp::put(
            run_key.clone(),
            serde_json::to_vec(&claim).expect("json"),
            None,
        )]);
    let Ok(Ok(tr)) =
        tokio::time::timeout(Duration::from_millis(STORE_TIMEOUT_MS), c.txn(txn)).await
    else {
        return;
    };
    if !tr.succeeded() {
        return;
    }
    let my_rev = tr.header().map(|h| h.revision()).unwrap_or(0);
    sh.status.lock().unwrap().last_attempt_ms = now_ms();
    let settings = crate::backup::BackupSettings {
        destinations: p.destinations.clone(),
        recipients: p.recipients.clone(),
        s3: p.s3(),
        retry: p.retry(),
        upload_concurrency: p.upload_concurrency,
        max_upload_bytes_per_s: p.max_upload_bytes_per_s,
        lock_stale_ms: p.lock_stale_ms,
        ..Default::default()
    };
    let committed_rev = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let gate: crate::backup::CommitGate = {
        let (sh, mut c, run_key, claim, committed_rev) = (
            sh.clone(),
            c.clone(),
            run_key.clone(),
            claim.clone(),
            committed_rev.clone(),
        );
        Box::new(move |id: String| {
            Box::pin(async move {
                if !(sh.host.is_leader)() {
                    return false;
                }
                let mut v = claim;
                v.state = "committing".into();
                v.id = id;
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        run_key.clone(),
                        CompareOp::Equal,
                        my_rev,
                    )])
                    .and_then([TxnOp::put(
                        run_key,
                        serde_json::to_vec(&v).expect("json"),
                        None,
                    )]);
                match tokio::time::timeout(Duration::from_millis(STORE_TIMEOUT_MS), c.txn(txn))
                    .await
                {
                    Ok(Ok(r)) if r.succeeded() => {
                        committed_rev.store(
                            r.header().map(|h| h.revision()).unwrap_or(0),
                            Ordering::Release,
                        );
                        true
                    }
                    _ => false,
                }
            })
        })
    };
    let source = match &sh.s.channel {
        Some(ch) => crate::backup::Source::Channel(ch.clone()),
        None => crate::backup::Source::Endpoints(sh.s.endpoints.clone()),
    };
    let out = crate::backup::backup_now_gated(&source, &settings, Some(gate)).await;
    let now = now_ms();
    match out {
        Err(e) => {
            for url in &p.destinations {
                record_backup_failure(sh, url, &e.to_string(), now).await;
            }
        }
        Ok(out) => {
            let mut any_ok = false;
            for d in &out.destinations {
                match &d.error {
                    None => {
                        any_ok = true;
                        let mut g = sh.status.lock().unwrap();
                        let ds = g.destinations.entry(d.url.clone()).or_default();
                        ds.last_success_ms = now;
                        ds.last_backup_seconds = out.elapsed.as_secs_f64();
                        ds.last_backup_id = out.id.clone();
                        ds.uploaded_bytes_total += d.uploaded_bytes;
                        ds.last_error = None;
                    }
                    Some(BackupError::Abandoned { .. }) => {}
                    Some(e) => record_backup_failure(sh, &d.url, &e.to_string(), now).await,
                }
            }
            if any_ok {
                {
                    let mut g = sh.status.lock().unwrap();
                    g.last_backup_ms = now;
                    g.last_backup_id = out.id.clone();
                    g.last_backup_revision = out.revision;
                }
                event(
                    sh,
                    "backup_completed",
                    format!(
                        "backup {} at revision {} complete at {} of {} destination(s) in {:.1}s",
                        out.id,
                        out.revision,
                        out.destinations
                            .iter()
                            .filter(|d| d.error.is_none())
                            .count(),
                        out.destinations.len(),
                        out.elapsed.as_secs_f64()
                    ),
                    None,
                )
                .await;
                // Retention, at the destinations that hold the new backup.
                if !p.retention.keeps_everything() {
                    for d in out.destinations.iter().filter(|d| d.error.is_none()) {
                        let Ok(dest) = Destination::open(&d.url, &p.s3(), &p.retry()) else {
                            continue;
                        };
                        let r = crate::prune::prune(&dest, &p.retention, p.lock_stale_ms).await;
                        let text = match &r {
                            Ok(rep) => format!(
                                "kept {}, removed {}, deleted {} chunks and {} archive segments{}",
                                rep.kept.len(),
                                rep.removed.len(),
                                rep.chunks_deleted,
                                rep.segments_deleted,
                                rep.chunk_gc_skipped
                                    .as_ref()
                                    .map(|s| format!(" (chunk GC skipped: {s})"))
                                    .unwrap_or_default()
                            ),
                            Err(e) => format!("FAILED: {e}"),
                        };
                        sh.status
                            .lock()
                            .unwrap()
                            .destinations
                            .entry(d.url.clone())
                            .or_default()
                            .last_prune = Some(text.clone());
                        if r.is_err() {
                            event(
                                sh,
                                "retention_failed",
                                format!("retention at {}: {text}", d.url),
                                Some(&d.url),
                            )
                            .await;
                        }
                    }
                }
            }
        }
    }
    // Release the claim (only if it is still ours).
    let mine = committed_rev.load(Ordering::Acquire);
    let rev = if mine > 0 { mine } else { my_rev };
    let _ = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(
                    run_key.clone(),
                    CompareOp::Equal,
                    rev,
                )])
                .and_then([TxnOp::delete(run_key, None)]),
        )
        .await;
    save_status(sh).await;
}

async fn record_backup_failure(sh: &Shared, url: &str, err: &str, now: u64) {
    {
        let mut g = sh.status.lock().unwrap();
        let ds = g.destinations.entry(url.to_string()).or_default();
        ds.backup_failures_total += 1;
        ds.last_error = Some(err.to_string());
        ds.last_error_ms = now;
    }
    event(
        sh,
        "backup_failed",
        format!("backup to {url} failed: {err}"),
        Some(url),
    )
    .await;
}

async fn drill(sh: &Arc<Shared>, p: &Policy) {
    sh.status.lock().unwrap().last_drill_ms = now_ms();
    for url in &p.destinations {
        let Ok(dir) = tempfile::tempdir() else { return };
        let settings = crate::restore::RestoreSettings {
            read: crate::restore::ReadSettings {
                from: url.clone(),
                identity_files: sh.s.identity_files.clone(),
                s3: p.s3(),
                retry: p.retry(),
                progress: Default::default(),
            },
            target: crate::restore::Target::Newest,
            name: "drill".into(),
            initial_cluster: "drill=http://127.0.0.1:1".into(),
            initial_cluster_token: "drill".into(),
            initial_advertise_peer_urls: vec!["http://127.0.0.1:1".into()],
            data_dir: dir.path().join("member-data"),
            bump_revision: 0,
            check_page_keys: 1000,
            // Inside the member: no more cache than the member's own store.
            cache_bytes: mvcc::STORE_CACHE_BYTES,
        };
        let started = std::time::Instant::now();
        match crate::restore::restore(&settings).await {
            Ok(rep) => {
                let secs = started.elapsed().as_secs_f64();
                {
                    let mut g = sh.status.lock().unwrap();
                    let ds = g.destinations.entry(url.clone()).or_default();
                    ds.last_verified_ms = now_ms();
                    ds.restore_drill_seconds = secs;
                }
                if let Ok(d) = Destination::open(url, &p.s3(), &p.retry()) {
                    let v = Verified {
                        ok: true,
                        checked_at: now_rfc3339().0,
                        problems: vec![],
                    };
                    let _ = d
                        .put(
                            &backup_key(&rep.backup, VERIFIED_NAME),
                            serde_json::to_vec_pretty(&v).expect("json").into(),
                        )
                        .await;
                }
                event(sh, "restore_drill", format!("restore drill from {url}: backup {} + {} archive segments to revision {} ({} keys) in {secs:.2}s", rep.backup, rep.segments, rep.revision, rep.keys), Some(url)).await;
            }
            Err(e) => {
                sh.status
                    .lock()
                    .unwrap()
                    .destinations
                    .entry(url.to_string())
                    .or_default()
                    .restore_drill_failures_total += 1;
                record_backup_failure(sh, url, &format!("restore drill: {e}"), now_ms()).await;
            }
        }
    }
    save_status(sh).await;
}

/// The status to report: this member's own when it runs the schedule, else the stored one.
pub fn current_status(sh_store: &mvcc::Store, prefix: &str) -> Status {
    local_get(sh_store, &format!("{prefix}/status"))
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn status_now(sh: &Shared) -> Status {
    let mut st = if sh.active.load(Ordering::Acquire) {
        sh.status.lock().unwrap().clone()
    } else {
        current_status(&sh.host.store, &sh.s.prefix)
    };
    if sh.active.load(Ordering::Acquire) {
        // Archive lag: how long the oldest revision not yet at a destination has waited.
        let cur = sh.host.store.current_revision();
        let marks = sh.marks.lock().unwrap();
        let now = now_ms();
        for ds in st.destinations.values_mut() {
            ds.archive_lag_seconds = if ds.archive_revision >= cur || ds.archive_revision == 0 {
                0.0
            } else {
                marks
                    .iter()
                    .find(|(r, _)| *r > ds.archive_revision)
                    .map(|(_, t)| now.saturating_sub(*t) as f64 / 1000.0)
                    .unwrap_or(0.0)
            };
        }
    }
    st
}

/// Prometheus text of a status.
pub fn render_metrics(st: &Status, running_here: bool) -> String {
    let mut out = String::new();
    let mut fam = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in rows {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let per = |f: &dyn Fn(&DestStatus) -> f64| -> Vec<(String, f64)> {
        st.destinations
            .iter()
            .map(|(u, d)| (format!("{{destination=\"{}\"}}", u.replace('"', "")), f(d)))
            .collect()
    };
    fam(
        "phalanx_backup_running_here",
        "gauge",
        "1 on the member that runs the backup schedule",
        vec![(String::new(), running_here as i32 as f64)],
    );
    fam(
        "phalanx_backup_last_success_timestamp_seconds",
        "gauge",
        "Completion time of the last successful backup to the destination",
        per(&|d| d.last_success_ms as f64 / 1000.0),
    );
    fam(
        "phalanx_backup_duration_seconds",
        "gauge",
        "Duration of the last successful backup to the destination (store scan to manifest)",
        per(&|d| d.last_backup_seconds),
    );
    fam(
        "phalanx_backup_last_verified_timestamp_seconds",
        "gauge",
        "Time of the last successful restore drill from the destination",
        per(&|d| d.last_verified_ms as f64 / 1000.0),
    );
    fam(
        "phalanx_backup_restore_drill_seconds",
        "gauge",
        "Duration of the last restore drill (measured RTO)",
        per(&|d| d.restore_drill_seconds),
    );
    fam(
        "phalanx_backup_archive_lag_seconds",
        "gauge",
        "Age of the oldest applied revision not yet archived at the destination",
        per(&|d| d.archive_lag_seconds),
    );
    fam(
        "phalanx_backup_archive_revision",
        "gauge",
        "Revisions up to this one are archived at the destination",
        per(&|d| d.archive_revision as f64),
    );
    fam(
        "phalanx_backup_uploaded_bytes_total",
        "counter",
        "Bytes uploaded to the destination (backups and archive)",
        per(&|d| d.uploaded_bytes_total as f64),
    );
    fam(
        "phalanx_backup_failures_total",
        "counter",
        "Failed backups (and restore drills) at the destination",
        per(&|d| d.backup_failures_total as f64),
    );
    fam(
        "phalanx_restore_drill_failures_total",
        "counter",
        "Failed restore drills from the destination",
        per(&|d| d.restore_drill_failures_total as f64),
    );
    fam(
        "phalanx_backup_archive_failures_total",
        "counter",
        "Failed archive shipments to the destination",
        per(&|d| d.archive_failures_total as f64),
    );
    out
}

async fn serve(l: tokio::net::TcpListener, sh: Arc<Shared>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = l.accept().await else {
            continue;
        };
        let sh = sh.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let st = status_now(&sh);
            let (code, ctype, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    render_metrics(&st, sh.active.load(Ordering::Acquire)),
                ),
                "/status" => (
                    "200 OK",
                    "application/json",
                    serde_json::to_string_pretty(&st).expect("json"),
                ),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /status\n".into(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

async fn admin_client(
    endpoints: &[String],
    security: &client_security::ClientSecurity,
) -> Result<Client, BackupError> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_millis(STORE_TIMEOUT_MS));
    security
        .connect(endpoints, opts)
        .await
        .map_err(|e| BackupError::Source {
            endpoints: endpoints.to_vec(),
            detail: e.to_string(),
        })
}

fn store_error(endpoints: &[String], e: etcd_client::Error) -> BackupError {
    BackupError::Source {
        endpoints: endpoints.to_vec(),
        detail: e.to_string(),
    }
}

/// Validate and store the policy; returns the store revision.
pub async fn set_policy(
    endpoints: &[String],
    security: &client_security::ClientSecurity,
    prefix: &str,
    p: &Policy,
) -> Result<i64, BackupError> {
    p.validate().map_err(BackupError::BadFlags)?;
    let mut c = admin_client(endpoints, security).await?;
    let r = c
        .put(
            format!("{prefix}/policy"),
            serde_json::to_vec_pretty(p).expect("json"),
            None,
        )
        .await
        .map_err(|e| store_error(endpoints, e))?;
    Ok(r.header().map(|h| h.revision()).unwrap_or(0))
}

pub async fn clear_policy(
    endpoints: &[String],
    security: &client_security::ClientSecurity,
    prefix: &str,
) -> Result<(), BackupError> {
    let mut c = admin_client(endpoints, security).await?;
    c.delete(format!("{prefix}/policy"), None)
        .await
        .map_err(|e| store_error(endpoints, e))?;
    Ok(())
}

/// The stored policy and status, as JSON values (None when absent).
pub async fn get_policy_and_status(
    endpoints: &[String],
    security: &client_security::ClientSecurity,
    prefix: &str,
) -> Result<(Option<serde_json::Value>, Option<serde_json::Value>), BackupError> {
    let mut c = admin_client(endpoints, security).await?;
    let mut get = async |k: &str| -> Result<Option<serde_json::Value>, BackupError> {
        Ok(c.get(format!("{prefix}/{k}"), None)
            .await
            .map_err(|e| store_error(endpoints, e))?
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    };
    let p = get("policy").await?;
    let s = get("status").await?;
    Ok((p, s))
}
