//! The checked workload: [`run_client`] (sequential read/write/cas client
//! pinned to one endpoint), [`run_watcher`] (one prefix watch that resumes
//! across failures) and [`run_lease_client`] (one lease kept alive with a key
//! attached, read continuously). Everything goes to the [`Recorder`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use client_security::ClientSecurity;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use serde_json::{json, Value};

use crate::recorder::{Func, OpStatus, Recorder};

/// Pause after a failed connection attempt before the next one, in ms.
pub const RECONNECT_BACKOFF_MS: u64 = 100;

/// A watch session that delivers nothing for this long is reopened on the
/// next endpoint (it may be stuck on a paused or partitioned member), in ms.
pub const WATCH_IDLE_REOPEN_MS: u64 = 3_000;

/// Interval between the lease client's linearizable reads of its key, in ms.
pub const LEASE_READ_INTERVAL_MS: u64 = 250;

/// Process ids of the final reads (far above any client's).
pub const FINAL_READ_PROCESS: i64 = 1_000_000;

/// Workload settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub keys: usize,
    pub op_timeout: Duration,
    pub think: Duration,
    /// Every key of the run starts with this (unique per run).
    pub prefix: String,
    pub lease_ttl_secs: i64,
    /// TLS and credentials of every workload, watch and lease client.
    pub security: ClientSecurity,
}

impl WorkloadConfig {
    pub fn key(&self, i: usize) -> String {
        format!("{}k{i}", self.prefix)
    }
    pub fn lease_key(&self) -> String {
        format!("{}lease", self.prefix.trim_end_matches('/'))
    }
}

/// Tiny deterministic PRNG (xorshift64*), seeded per client.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// A client of `endpoints` with the drill's TLS and credentials
/// (`cfg.security`; with a user, connecting includes an Authenticate call
/// and pins the client to one member: `ClientSecurity::connect`), or None
/// if that fails within `cfg.op_timeout`.
pub async fn connect(endpoints: &[String], cfg: &WorkloadConfig) -> Option<Client> {
    let op_timeout = cfg.op_timeout;
    let base = ConnectOptions::new()
        .with_connect_timeout(op_timeout)
        .with_timeout(op_timeout);
    match tokio::time::timeout(op_timeout, cfg.security.connect(endpoints, base)).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// Did the request certainly not take effect? Only rejections the server
/// makes while validating a request count; anything that may have happened
/// after the request was sent (timeouts, lost connections, leader changes)
/// is indeterminate.
pub fn definite_failure(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        // The connection could not even be opened: nothing was sent.
        etcd_client::Error::GRpcStatus(s)
            if s.code() == Code::Unavailable && s.message().contains("onnection refused") =>
        {
            true
        }
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::ResourceExhausted
                | Code::Unimplemented
                | Code::AlreadyExists
                | Code::NotFound
        ),
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::Utf8Error(_) => true,
        _ => false,
    }
}

fn val(v: &Option<String>) -> Value {
    match v {
        Some(s) => Value::String(s.clone()),
        None => Value::Null,
    }
}

/// One sequential client pinned to `cfg.endpoints[id % n]`, until `stop`.
pub async fn run_client(
    id: usize,
    cfg: Arc<WorkloadConfig>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let member = id % cfg.endpoints.len();
    let ep = vec![cfg.endpoints[member].clone()];
    let mut rng = Rng::new(id as u64 + 1);
    let mut process = id as i64;
    let mut client: Option<Client> = None;
    let mut seq = 0u64;
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = connect_or_back_off(&ep, &cfg).await;
            if client.is_none() {
                continue;
            }
        }
        let c = client.as_mut().expect("connected");
        let key = cfg.key(rng.below(cfg.keys as u64) as usize);
        let roll = rng.below(100);
        let mut broken = false;
        let mut errored = false;
        if roll < 50 {
            let t0 = rec.invoke(process, Func::Read, &key, Value::Null);
            match tokio::time::timeout(cfg.op_timeout, c.get(key.clone(), None)).await {
                Ok(Ok(r)) => {
                    let v = r
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                    rec.complete(
                        process,
                        Some(member),
                        Func::Read,
                        &key,
                        OpStatus::Ok,
                        val(&v),
                        v.clone(),
                        None,
                        t0,
                    );
                    seen.insert(key, v);
                }
                Ok(Err(e)) => {
                    let st = if definite_failure(&e) {
                        OpStatus::Fail
                    } else {
                        OpStatus::Info
                    };
                    rec.complete(
                        process,
                        Some(member),
                        Func::Read,
                        &key,
                        st,
                        Value::Null,
                        None,
                        None,
                        t0,
                    );
                    broken = !definite_failure(&e);
                    errored = true;
                }
                Err(_) => {
                    rec.complete(
                        process,
                        Some(member),
                        Func::Read,
                        &key,
                        OpStatus::Info,
                        Value::Null,
                        None,
                        None,
                        t0,
                    );
                    broken = true;
                }
            }
        } else if roll < 80 {
            seq += 1;
            let v = format!("c{id}-{seq}");
            let t0 = rec.invoke(process, Func::Write, &key, json!(v));
            match tokio::time::timeout(cfg.op_timeout, c.put(key.clone(), v.clone(), None)).await {
                Ok(Ok(r)) => {
                    let rev = r.header().map(|h| h.revision());
                    rec.complete(
                        process,
                        Some(member),
                        Func::Write,
                        &key,
                        OpStatus::Ok,
                        json!(v),
                        Some(v.clone()),
                        rev,
                        t0,
                    );
                    seen.insert(key, Some(v));
                }
                Ok(Err(e)) if definite_failure(&e) => {
                    rec.complete(
                        process,
                        Some(member),
                        Func::Write,
                        &key,
                        OpStatus::Fail,
                        json!(v),
                        Some(v),
                        None,
                        t0,
                    );
                    errored = true;
                }
                _ => {
                    rec.complete(
                        process,
                        Some(member),
                        Func::Write,
                        &key,
                        OpStatus::Info,
                        json!(v),
                        Some(v),
                        None,
                        t0,
                    );
                    broken = true;
                }
            }
        } else {
            seq += 1;
            let new = format!("c{id}-{seq}");
            let expected = seen.get(&key).cloned().flatten();
            let cmp = match &expected {
                None => Compare::version(key.clone(), CompareOp::Equal, 0),
                Some(e) => Compare::value(key.clone(), CompareOp::Equal, e.clone()),
            };
            let txn = Txn::new().when(vec![cmp]).and_then(vec![TxnOp::put(
                key.clone(),
                new.clone(),
                None,
            )]);
            let arg = json!([val(&expected), new]);
            let t0 = rec.invoke(process, Func::Cas, &key, arg.clone());
            match tokio::time::timeout(cfg.op_timeout, c.txn(txn)).await {
                Ok(Ok(r)) if r.succeeded() => {
                    let rev = r.header().map(|h| h.revision());
                    rec.complete(
                        process,
                        Some(member),
                        Func::Cas,
                        &key,
                        OpStatus::Ok,
                        arg,
                        Some(new.clone()),
                        rev,
                        t0,
                    );
                    seen.insert(key, Some(new));
                }
                Ok(Ok(_)) => {
                    // Comparison failed: a read asserting value != expected.
                    rec.complete(
                        process,
                        Some(member),
                        Func::Cas,
                        &key,
                        OpStatus::Fail,
                        arg,
                        Some(new),
                        None,
                        t0,
                    );
                    seen.remove(&key);
                }
                Ok(Err(e)) if definite_failure(&e) => {
                    rec.complete(
                        process,
                        Some(member),
                        Func::Cas,
                        &key,
                        OpStatus::Fail,
                        arg,
                        Some(new),
                        None,
                        t0,
                    );
                    errored = true;
                }
                _ => {
                    rec.complete(
                        process,
                        Some(member),
                        Func::Cas,
                        &key,
                        OpStatus::Info,
                        arg,
                        Some(new),
                        None,
                        t0,
                    );
                    broken = true;
                }
            }
        }
        if broken {
            // The operation may still be in flight: continue as a new
            // process (as Jepsen does).
            process += cfg.clients as i64;
            seen.clear();
        }
        if broken || errored {
            // Fresh connection after a pause, so a dead member is not hammered.
            client = None;
            tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
        }
        if !cfg.think.is_zero() {
            tokio::time::sleep(cfg.think).await;
        }
    }
}

/// Highest revision the watcher has delivered.
#[derive(Debug, Default)]
pub struct WatchProgress {
    pub last_revision: AtomicI64,
}

/// The watcher: one logical watch `w1` on the run's prefix from
/// `start_revision`, reopened (resuming from last delivered + 1) after any
/// error, cancel, end of stream or [`WATCH_IDLE_REOPEN_MS`] of silence; each
/// session uses the next endpoint in turn.
pub async fn run_watcher(
    cfg: Arc<WorkloadConfig>,
    start_revision: i64,
    rec: Arc<Recorder>,
    progress: Arc<WatchProgress>,
    stop: Arc<AtomicBool>,
) {
    let mut next = start_revision;
    let mut session = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let ep = vec![cfg.endpoints[session % cfg.endpoints.len()].clone()];
        session += 1;
        let Some(mut client) = connect_or_back_off(&ep, &cfg).await else {
            continue;
        };
        let opts = WatchOptions::new().with_prefix().with_start_revision(next);
        let mut stream = match tokio::time::timeout(
            cfg.op_timeout,
            client.watch(cfg.prefix.clone(), Some(opts)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
                continue;
            }
        };
        rec.watch_line(json!({"kind": "watch", "watch": "w1", "key": cfg.prefix, "prefix": true, "start_revision": next}));
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let msg = tokio::time::timeout(
                Duration::from_millis(WATCH_IDLE_REOPEN_MS),
                stream.message(),
            )
            .await;
            let resp = match msg {
                Ok(Ok(Some(r))) => r,
                _ => break,
            };
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let rev = kv.mod_revision();
                let line = match ev.event_type() {
                    EventType::Put => {
                        json!({"kind": "event", "watch": "w1", "revision": rev, "key": key, "type": "put", "value": String::from_utf8_lossy(kv.value())})
                    }
                    EventType::Delete => {
                        json!({"kind": "event", "watch": "w1", "revision": rev, "key": key, "type": "delete"})
                    }
                };
                rec.watch_line(line);
                if rev >= next {
                    next = rev + 1;
                }
                progress.last_revision.fetch_max(rev, Ordering::Relaxed);
            }
            if resp.canceled() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
    }
}

/// The lease client: grants a lease of `cfg.lease_ttl_secs`, attaches the
/// lease key, renews it every TTL/4 and reads the key every
/// [`LEASE_READ_INTERVAL_MS`]; if the lease is found expired it grants a new
/// one and re-attaches the key. On `stop` it revokes the lease and reads the
/// key once more (it must be gone). Returns whether that final check ran.
pub async fn run_lease_client(
    cfg: Arc<WorkloadConfig>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    final_timeout: Duration,
) -> bool {
    let key = cfg.lease_key();
    let ttl = cfg.lease_ttl_secs;
    let renew_every = Duration::from_millis((ttl as u64 * 1000 / 4).max(250));
    let mut client: Option<Client> = None;
    let mut lease: Option<i64> = None;
    let mut attached = false;
    let mut last_renew = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = connect_or_back_off(&cfg.endpoints, &cfg).await;
            if client.is_none() {
                continue;
            }
        }
        let c = client.as_mut().expect("connected");
        let Some(id) = lease else {
            let sent = rec.now_ms();
            match tokio::time::timeout(cfg.op_timeout, c.lease_grant(ttl, None)).await {
                Ok(Ok(r)) => {
                    rec.lease_line(json!({"kind": "grant", "lease": r.id(), "ttl_ms": r.ttl() * 1000, "sent": sent, "time": rec.now_ms()}));
                    lease = Some(r.id());
                    attached = false;
                    last_renew = tokio::time::Instant::now();
                }
                _ => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
                }
            }
            continue;
        };
        if !attached {
            let sent = rec.now_ms();
            match tokio::time::timeout(
                cfg.op_timeout,
                c.put(
                    key.clone(),
                    format!("lease-{id}"),
                    Some(PutOptions::new().with_lease(id)),
                ),
            )
            .await
            {
                Ok(Ok(_)) => {
                    rec.lease_line(json!({"kind": "put", "key": key, "lease": id, "sent": sent, "time": rec.now_ms()}));
                    attached = true;
                }
                Ok(Err(e)) if definite_failure(&e) => {
                    // e.g. the lease expired meanwhile: grant a new one.
                    lease = None;
                }
                _ => {
                    rec.lease_line(
                        json!({"kind": "put", "key": key, "lease": id, "sent": sent, "time": null}),
                    );
                    client = None;
                }
            }
            continue;
        }
        if last_renew.elapsed() >= renew_every {
            last_renew = tokio::time::Instant::now();
            let sent = rec.now_ms();
            let r = tokio::time::timeout(cfg.op_timeout, async {
                let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match r {
                Ok(Ok(Some(resp))) => {
                    rec.lease_line(json!({"kind": "keepalive", "lease": id, "ttl_ms": resp.ttl() * 1000, "sent": sent, "time": rec.now_ms()}));
                    if resp.ttl() <= 0 {
                        lease = None;
                    }
                }
                _ => {
                    rec.lease_line(json!({"kind": "keepalive", "lease": id, "ttl_ms": ttl * 1000, "sent": sent, "time": null}));
                    client = None;
                }
            }
            continue;
        }
        if !lease_read(c, &key, &cfg, &rec).await {
            client = None;
        }
        tokio::time::sleep(Duration::from_millis(LEASE_READ_INTERVAL_MS)).await;
    }
    // Final: revoke, then one read that must find the key gone.
    let Some(id) = lease else { return false };
    let deadline = tokio::time::Instant::now() + final_timeout;
    let mut revoked = false;
    while tokio::time::Instant::now() < deadline {
        let Some(c) = client.as_mut() else {
            client = connect_or_back_off(&cfg.endpoints, &cfg).await;
            continue;
        };
        if !revoked {
            let sent = rec.now_ms();
            match tokio::time::timeout(cfg.op_timeout, c.lease_revoke(id)).await {
                Ok(Ok(_)) => {
                    rec.lease_line(
                        json!({"kind": "revoke", "lease": id, "sent": sent, "time": rec.now_ms()}),
                    );
                    revoked = true;
                }
                Ok(Err(e)) if definite_failure(&e) => {
                    // Already expired (lease not found): also gone.
                    revoked = true;
                }
                _ => {
                    rec.lease_line(
                        json!({"kind": "revoke", "lease": id, "sent": sent, "time": null}),
                    );
                    client = None;
                }
            }
            continue;
        }
        if lease_read(c, &key, &cfg, &rec).await {
            return true;
        }
        client = None;
    }
    false
}

/// One linearizable read of the lease client's key, logged for the lease
/// checker; `false` if it got no answer (the caller reconnects).
async fn lease_read(c: &mut Client, key: &str, cfg: &WorkloadConfig, rec: &Recorder) -> bool {
    let sent = rec.now_ms();
    match tokio::time::timeout(cfg.op_timeout, c.get(key, None)).await {
        Ok(Ok(r)) => {
            let kv = r.kvs().first();
            rec.lease_line(json!({"kind": "read", "key": key, "sent": sent, "time": rec.now_ms(), "present": kv.is_some(), "lease": kv.map(|k| k.lease()).unwrap_or(0)}));
            true
        }
        _ => false,
    }
}

/// Final linearizable read of every key, each retried until `deadline`;
/// recorded in the history (process [`FINAL_READ_PROCESS`] + key index).
/// Returns key → value read (`None` = absent); keys never read are missing.
pub async fn final_reads(
    cfg: &WorkloadConfig,
    rec: &Recorder,
    deadline: tokio::time::Instant,
) -> HashMap<String, Option<String>> {
    let mut out = HashMap::new();
    let mut client: Option<Client> = None;
    for i in 0..cfg.keys {
        let key = cfg.key(i);
        let mut process = FINAL_READ_PROCESS + i as i64;
        while tokio::time::Instant::now() < deadline {
            let Some(c) = client.as_mut() else {
                client = connect_or_back_off(&cfg.endpoints, cfg).await;
                continue;
            };
            let t0 = rec.invoke(process, Func::Read, &key, Value::Null);
            match tokio::time::timeout(cfg.op_timeout, c.get(key.clone(), Some(GetOptions::new())))
                .await
            {
                Ok(Ok(r)) => {
                    let v = r
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                    rec.complete(
                        process,
                        None,
                        Func::Read,
                        &key,
                        OpStatus::Ok,
                        val(&v),
                        v.clone(),
                        None,
                        t0,
                    );
                    out.insert(key.clone(), v);
                    break;
                }
                _ => {
                    rec.complete(
                        process,
                        None,
                        Func::Read,
                        &key,
                        OpStatus::Info,
                        Value::Null,
                        None,
                        None,
                        t0,
                    );
                    process += cfg.keys as i64;
                    client = None;
                }
            }
        }
    }
    out
}

/// Most recent acknowledged writes the final phase reads back at their own
/// revision (bounds the final phase of a long drill).
pub const MAX_REVISION_CHECKS: usize = 20_000;
/// Reads in flight while checking writes at their revisions.
pub const REVISION_CHECK_CONCURRENCY: usize = 16;

/// What the store answered for a key at a revision.
#[derive(Debug, Clone, PartialEq)]
pub enum AtRevision {
    /// The key's value and `mod_revision` there (`None`: absent).
    Held(Option<(String, i64)>),
    /// The store's revision is below it: the revision itself was lost.
    Future,
}

/// Reads each (key, revision) back with a linearizable range at that
/// revision, [`REVISION_CHECK_CONCURRENCY`] at a time, until `deadline`.
/// An acknowledged write must still be there: the key's version at its
/// revision is the write itself. A write lost from the log (and its
/// revision reused by a later write) shows as another value or an older
/// `mod_revision`, however many writes followed it. Pairs that got no answer
/// (compacted, timed out) are missing from the result.
pub async fn revision_reads(
    cfg: &WorkloadConfig,
    writes: Vec<(String, i64)>,
    deadline: tokio::time::Instant,
) -> HashMap<(String, i64), AtRevision> {
    let mut out = HashMap::new();
    let mut pending = writes.into_iter();
    let mut client: Option<Client> = None;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut retry: Vec<(String, i64)> = Vec::new();
    loop {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let Some(c) = client.clone() else {
            client = connect_or_back_off(&cfg.endpoints, cfg).await;
            continue;
        };
        while in_flight.len() < REVISION_CHECK_CONCURRENCY {
            let Some((key, rev)) = retry.pop().or_else(|| pending.next()) else {
                break;
            };
            let mut c = c.clone();
            let op_timeout = cfg.op_timeout;
            in_flight.spawn(async move {
                let opts = GetOptions::new().with_revision(rev);
                let r = tokio::time::timeout(op_timeout, c.get(key.clone(), Some(opts))).await;
                (key, rev, r)
            });
        }
        let Some(done) = in_flight.join_next().await else {
            break;
        };
        let Ok((key, rev, r)) = done else { continue };
        match r {
            Ok(Ok(resp)) => {
                let at = resp.kvs().first().map(|kv| {
                    (
                        String::from_utf8_lossy(kv.value()).into_owned(),
                        kv.mod_revision(),
                    )
                });
                out.insert((key, rev), AtRevision::Held(at));
            }
            Ok(Err(etcd_client::Error::GRpcStatus(s)))
                if s.message().contains("future revision") =>
            {
                out.insert((key, rev), AtRevision::Future);
            }
            Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.message().contains("compacted") => {
                // Not judgeable: the revision has been compacted away.
            }
            _ => {
                retry.push((key, rev));
                client = None;
            }
        }
    }
    in_flight.abort_all();
    out
}

/// Current store revision (a linearizable read's header), retried until `deadline`.
pub async fn current_revision(cfg: &WorkloadConfig, deadline: tokio::time::Instant) -> Option<i64> {
    while tokio::time::Instant::now() < deadline {
        if let Some(mut c) = connect_or_back_off(&cfg.endpoints, cfg).await {
            if let Ok(Ok(r)) =
                tokio::time::timeout(cfg.op_timeout, c.get(cfg.prefix.clone(), None)).await
            {
                if let Some(h) = r.header() {
                    return Some(h.revision());
                }
            }
            tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
        }
    }
    None
}

/// A client of the cluster, or `None` after a pause of
/// [`RECONNECT_BACKOFF_MS`] (the caller retries within its deadline).
async fn connect_or_back_off(endpoints: &[String], cfg: &WorkloadConfig) -> Option<Client> {
    let client = connect(endpoints, cfg).await;
    if client.is_none() {
        tokio::time::sleep(Duration::from_millis(RECONNECT_BACKOFF_MS)).await;
    }
    client
}
