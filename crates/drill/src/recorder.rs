//! [`Recorder`]: the shared, time-stamped log of everything the workload
//! did — the operation history (docs/history-format.md §1), the watch log
//! (§2) and the lease log (§3) — plus per-operation metadata for the report.

use std::sync::Mutex;
use std::time::Instant;

use linearizability::{Event, EventType, Function};
use serde_json::Value;

/// The operation kinds of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Func {
    Read,
    Write,
    Cas,
}

impl Func {
    pub fn name(self) -> &'static str {
        match self {
            Func::Read => "read",
            Func::Write => "write",
            Func::Cas => "cas",
        }
    }
}

impl From<Func> for Function {
    fn from(f: Func) -> Function {
        match f {
            Func::Read => Function::Read,
            Func::Write => Function::Write,
            Func::Cas => Function::Cas,
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpStatus {
    Ok,
    Fail,
    Info,
}

impl OpStatus {
    pub fn name(self) -> &'static str {
        match self {
            OpStatus::Ok => "ok",
            OpStatus::Fail => "fail",
            OpStatus::Info => "info",
        }
    }
}

impl From<OpStatus> for EventType {
    fn from(s: OpStatus) -> EventType {
        match s {
            OpStatus::Ok => EventType::Ok,
            OpStatus::Fail => EventType::Fail,
            OpStatus::Info => EventType::Info,
        }
    }
}

/// One completed operation, for the report (times in µs since the start).
#[derive(Debug, Clone)]
pub struct OpRecord {
    pub process: i64,
    /// Index of the endpoint the client is pinned to (`None` = any).
    pub member: Option<usize>,
    pub f: Func,
    pub key: String,
    pub status: OpStatus,
    /// write: the value; cas: the new value; read: the value observed.
    pub value: Option<String>,
    /// Store revision of a successful write/cas.
    pub revision: Option<i64>,
    pub invoke_us: u64,
    pub complete_us: u64,
}

#[derive(Default)]
struct Inner {
    history: Vec<String>,
    ops: Vec<OpRecord>,
    watch: Vec<String>,
    leases: Vec<String>,
    watch_events: u64,
    lease_reads: u64,
}

/// Thread-safe recorder; the clock is read under the lock so file order and
/// time order agree.
pub struct Recorder {
    start: Instant,
    inner: Mutex<Inner>,
}

/// Everything recorded, taken out at the end.
#[derive(Default)]
pub struct Recorded {
    pub history: Vec<String>,
    pub ops: Vec<OpRecord>,
    pub watch: Vec<String>,
    pub leases: Vec<String>,
    /// Watch-log lines of kind `event` (changes delivered).
    pub watch_events: u64,
    /// Lease-log lines of kind `read`.
    pub lease_reads: u64,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Recorder {
            start,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// µs since the start.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// ms since the start (the lease log's clock).
    pub fn now_ms(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record an invocation; returns its time (µs).
    pub fn invoke(&self, process: i64, f: Func, key: &str, value: Value) -> u64 {
        let mut g = self.lock();
        let t = self.now_us();
        g.history
            .push(Event::new(process, EventType::Invoke, f.into(), key, value, t as i64).to_line());
        t
    }

    /// Record a completion; `value` is the history's value field.
    #[allow(clippy::too_many_arguments)]
    pub fn complete(
        &self,
        process: i64,
        member: Option<usize>,
        f: Func,
        key: &str,
        status: OpStatus,
        value: Value,
        plain: Option<String>,
        revision: Option<i64>,
        invoke_us: u64,
    ) -> u64 {
        let mut g = self.lock();
        let t = self.now_us();
        g.history
            .push(Event::new(process, status.into(), f.into(), key, value, t as i64).to_line());
        g.ops.push(OpRecord {
            process,
            member,
            f,
            key: key.to_string(),
            status,
            value: plain,
            revision,
            invoke_us,
            complete_us: t,
        });
        t
    }

    /// The most recent `limit` acknowledged writes (write or successful
    /// cas) that carry a revision, as (key, revision).
    pub fn acknowledged_revisions(&self, limit: usize) -> Vec<(String, i64)> {
        let g = self.lock();
        let mut out: Vec<(String, i64)> = g
            .ops
            .iter()
            .rev()
            .filter(|o| o.status == OpStatus::Ok && matches!(o.f, Func::Write | Func::Cas))
            .filter_map(|o| Some((o.key.clone(), o.revision?)))
            .take(limit)
            .collect();
        out.reverse();
        out
    }

    /// Record a watch-log line (docs/history-format.md §2).
    pub fn watch_line(&self, v: Value) {
        let mut g = self.lock();
        if v["kind"] == "event" {
            g.watch_events += 1;
        }
        g.watch.push(v.to_string());
    }

    /// Record a lease-log line (docs/history-format.md §3).
    pub fn lease_line(&self, v: Value) {
        let mut g = self.lock();
        if v["kind"] == "read" {
            g.lease_reads += 1;
        }
        g.leases.push(v.to_string());
    }

    /// Highest revision of a successful write/cas so far (0 if none).
    pub fn max_revision(&self) -> i64 {
        self.lock()
            .ops
            .iter()
            .filter_map(|o| o.revision)
            .max()
            .unwrap_or(0)
    }

    pub fn take(&self) -> Recorded {
        let mut g = self.lock();
        Recorded {
            history: std::mem::take(&mut g.history),
            ops: std::mem::take(&mut g.ops),
            watch: std::mem::take(&mut g.watch),
            leases: std::mem::take(&mut g.leases),
            watch_events: std::mem::take(&mut g.watch_events),
            lease_reads: std::mem::take(&mut g.lease_reads),
        }
    }
}
