//! The HTTP load through the members' gateways ([`run_http_client`]) and its
//! judgement ([`analyze`] → [`GatewaySummary`]).
//!
//! Each client is a sequential HTTP/1.1 keep-alive client; its requests go
//! to the gateways in turn (client `c`'s `k`-th request to gateway
//! `(c + k) mod n`), one connection per gateway, reopened after any error.
//! Like a client given several gateway addresses, a request whose connection
//! cannot even be opened (the member and its gateway are down: nothing was
//! sent) moves on to the next gateway, within the same deadline; such
//! requests are counted as `failovers`. Every request is `GET /` bounded by
//! `--http-timeout-ms` and recorded ([`HttpRecord`]): `ok` (2xx), or an
//! error — `http_5xx`, `http_other` (any other status), `connection` (no
//! gateway could be connected to, connection lost, body cut) or `timeout`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::faults::FaultWindow;
use crate::verdict::Verdict;

/// Pause of each HTTP client between two requests, in ms.
pub const HTTP_THINK_MS: u64 = 10;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpOutcome {
    Ok,
    Http5xx,
    HttpOther,
    Connection,
    Timeout,
}

impl HttpOutcome {
    pub fn name(self) -> &'static str {
        match self {
            HttpOutcome::Ok => "ok",
            HttpOutcome::Http5xx => "http_5xx",
            HttpOutcome::HttpOther => "http_other",
            HttpOutcome::Connection => "connection",
            HttpOutcome::Timeout => "timeout",
        }
    }
    pub const ERRORS: [HttpOutcome; 4] = [
        HttpOutcome::Http5xx,
        HttpOutcome::HttpOther,
        HttpOutcome::Connection,
        HttpOutcome::Timeout,
    ];
}

/// One request (times in µs since the drill started).
#[derive(Debug, Clone)]
pub struct HttpRecord {
    pub client: usize,
    /// Index of the member whose gateway was asked.
    pub gateway: usize,
    pub outcome: HttpOutcome,
    pub status: Option<u16>,
    pub start_us: u64,
    pub end_us: u64,
    /// Gateways that refused the connection before this one answered.
    pub failovers: u32,
}

/// The requests, shared by the clients; same clock as the KV [`crate::recorder::Recorder`].
pub struct HttpRecorder {
    start: Instant,
    records: Mutex<Vec<HttpRecord>>,
}

impl HttpRecorder {
    pub fn new(start: Instant) -> Self {
        HttpRecorder {
            start,
            records: Mutex::new(Vec::new()),
        }
    }
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn push(&self, r: HttpRecord) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
    }
    pub fn take(&self) -> Vec<HttpRecord> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Why a request failed without an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestError {
    /// No connection could be opened: the request was certainly not sent.
    Connect,
    /// The request may have been sent: connection lost, body cut.
    Lost,
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, RequestError> {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|_| RequestError::Connect)?;
    let _ = s.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .map_err(|_| RequestError::Lost)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// One `GET /` on the connection in `slot` (opened if needed); returns the status.
async fn one_request(
    slot: &mut Option<SendRequest<Empty<Bytes>>>,
    addr: SocketAddr,
) -> Result<u16, RequestError> {
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        *slot = Some(connect(addr).await?);
    }
    let lost = |_| RequestError::Lost;
    let send = slot.as_mut().expect("connected");
    send.ready().await.map_err(lost)?;
    let req = hyper::Request::get("/")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|_| RequestError::Lost)?;
    let resp = send.send_request(req).await.map_err(lost)?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.map_err(lost)?;
    Ok(status)
}

/// One HTTP client, until `stop`.
pub async fn run_http_client(
    id: usize,
    gateways: Arc<Vec<SocketAddr>>,
    timeout: Duration,
    rec: Arc<HttpRecorder>,
    stop: Arc<AtomicBool>,
) {
    let n = gateways.len();
    let mut conns: Vec<Option<SendRequest<Empty<Bytes>>>> = (0..n).map(|_| None).collect();
    let mut k = id;
    while !stop.load(Ordering::Relaxed) {
        let mut g = k % n;
        k += 1;
        let start_us = rec.now_us();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut failovers = 0u32;
        let r = loop {
            match tokio::time::timeout_at(deadline, one_request(&mut conns[g], gateways[g])).await {
                // Nothing was sent: try the next gateway (each at most once).
                Ok(Err(RequestError::Connect)) if (failovers as usize) + 1 < n => {
                    conns[g] = None;
                    failovers += 1;
                    g = (g + 1) % n;
                }
                other => break other,
            }
        };
        let end_us = rec.now_us();
        let (outcome, status) = match r {
            Ok(Ok(s)) if (200..300).contains(&s) => (HttpOutcome::Ok, Some(s)),
            Ok(Ok(s)) if s >= 500 => (HttpOutcome::Http5xx, Some(s)),
            Ok(Ok(s)) => (HttpOutcome::HttpOther, Some(s)),
            Ok(Err(_)) => (HttpOutcome::Connection, None),
            Err(_) => (HttpOutcome::Timeout, None),
        };
        if outcome != HttpOutcome::Ok {
            // A fresh connection next time: this one may be broken or busy.
            conns[g] = None;
        }
        rec.push(HttpRecord {
            client: id,
            gateway: g,
            outcome,
            status,
            start_us,
            end_us,
            failovers,
        });
        tokio::time::sleep(Duration::from_millis(HTTP_THINK_MS)).await;
    }
}

/// Requests and their outcomes over some period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpCounts {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// Errors by kind (`http_5xx`, `http_other`, `connection`, `timeout`), all present.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Requests that moved to another gateway because theirs refused the connection.
    pub failovers: u64,
}

impl HttpCounts {
    fn new() -> Self {
        HttpCounts {
            errors_by_kind: HttpOutcome::ERRORS
                .iter()
                .map(|k| (k.name().to_string(), 0))
                .collect(),
            ..Default::default()
        }
    }
    fn add(&mut self, r: &HttpRecord) {
        let o = r.outcome;
        self.requests += 1;
        self.failovers += u64::from(r.failovers > 0);
        if o == HttpOutcome::Ok {
            self.ok += 1;
        } else {
            self.errors += 1;
            *self.errors_by_kind.entry(o.name().to_string()).or_default() += 1;
        }
    }
}

/// Gateway figures of one fault window: requests that *completed* inside it.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayWindow {
    pub kind: String,
    pub targets: Vec<String>,
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(flatten)]
    pub counts: HttpCounts,
    /// Client-observed latency of those requests, in ms.
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
}

/// The gateway part of the judgement (`summary.json` key `gateway`).
#[derive(Debug, Clone, Serialize)]
pub struct GatewaySummary {
    pub profile: String,
    pub backends: Vec<String>,
    pub gateways: Vec<String>,
    pub http_clients: usize,
    pub http_timeout_ms: u64,
    #[serde(flatten)]
    pub counts: HttpCounts,
    /// ok / requests, in percent.
    pub availability_percent: f64,
    /// errors / requests, in percent.
    pub error_percent: f64,
    /// Client-observed latency of every request (errors included), in ms.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Errors of requests that completed outside every fault window.
    pub errors_outside_windows: u64,
    pub windows: Vec<GatewayWindow>,
    pub max_error_percent: f64,
    pub verdict: Verdict,
    pub detail: String,
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

/// Settings echoed into the summary.
pub struct GatewaySetup {
    pub profile: String,
    pub backends: Vec<String>,
    pub gateways: Vec<String>,
    pub http_clients: usize,
    pub http_timeout_ms: u64,
    pub max_error_percent: f64,
}

/// Judge the requests: PASS when errors are at most `max_error_percent` of
/// the requests (and there were requests at all).
pub fn analyze(
    records: &[HttpRecord],
    windows: &[FaultWindow],
    setup: GatewaySetup,
) -> GatewaySummary {
    let mut counts = HttpCounts::new();
    let mut lat: Vec<f64> = Vec::with_capacity(records.len());
    for r in records {
        counts.add(r);
        lat.push((r.end_us - r.start_us) as f64 / 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let inside = |r: &HttpRecord, w: &FaultWindow| {
        r.end_us >= w.start_ms * 1000 && r.end_us <= w.end_ms * 1000
    };
    let gw_windows: Vec<GatewayWindow> = windows
        .iter()
        .map(|w| {
            let mut c = HttpCounts::new();
            let mut wl = Vec::new();
            for r in records.iter().filter(|r| inside(r, w)) {
                c.add(r);
                wl.push((r.end_us - r.start_us) as f64 / 1000.0);
            }
            wl.sort_by(f64::total_cmp);
            GatewayWindow {
                kind: w.kind.name().to_string(),
                targets: w.targets.clone(),
                start_ms: w.start_ms,
                end_ms: w.end_ms,
                counts: c,
                latency_p99_ms: percentile(&wl, 0.99),
                latency_max_ms: wl.last().copied(),
            }
        })
        .collect();
    let errors_outside_windows = records
        .iter()
        .filter(|r| r.outcome != HttpOutcome::Ok && !windows.iter().any(|w| inside(r, w)))
        .count() as u64;
    let pct = |x: u64| {
        if counts.requests == 0 {
            0.0
        } else {
            x as f64 * 100.0 / counts.requests as f64
        }
    };
    let (availability_percent, error_percent) = (pct(counts.ok), pct(counts.errors));
    let (verdict, detail) = if counts.requests == 0 {
        (
            Verdict::Unknown,
            "no request was made through the gateways".to_string(),
        )
    } else if error_percent <= setup.max_error_percent {
        (
            Verdict::Pass,
            format!(
                "{} of {} requests failed ({error_percent:.2} %, budget {} %)",
                counts.errors, counts.requests, setup.max_error_percent
            ),
        )
    } else {
        (
            Verdict::Fail,
            format!(
                "{} of {} requests failed ({error_percent:.2} %), over the budget of {} %",
                counts.errors, counts.requests, setup.max_error_percent
            ),
        )
    };
    GatewaySummary {
        profile: setup.profile,
        backends: setup.backends,
        gateways: setup.gateways,
        http_clients: setup.http_clients,
        http_timeout_ms: setup.http_timeout_ms,
        latency_p50_ms: percentile(&lat, 0.50),
        latency_p99_ms: percentile(&lat, 0.99),
        counts,
        availability_percent,
        error_percent,
        errors_outside_windows,
        windows: gw_windows,
        max_error_percent: setup.max_error_percent,
        verdict,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultKind;

    fn rec(o: HttpOutcome, end_ms: u64) -> HttpRecord {
        HttpRecord {
            client: 0,
            gateway: 0,
            outcome: o,
            status: None,
            start_us: end_ms * 1000 - 2000,
            end_us: end_ms * 1000,
            failovers: 0,
        }
    }

    #[test]
    fn counts_errors_per_window_and_judges_the_budget() {
        let w = FaultWindow {
            kind: FaultKind::BackendKill,
            targets: vec!["backend-1".into()],
            start_ms: 100,
            end_ms: 200,
            leader_before: None,
            leader_during: None,
            new_leader_elected: false,
            note: None,
        };
        let mut rs: Vec<HttpRecord> = (0..96).map(|i| rec(HttpOutcome::Ok, 10 + i * 3)).collect();
        rs.push(rec(HttpOutcome::Timeout, 150));
        rs.push(rec(HttpOutcome::Http5xx, 160));
        rs.push(rec(HttpOutcome::Connection, 300));
        rs.push(rec(HttpOutcome::Http5xx, 301));
        let setup = |max| GatewaySetup {
            profile: "resilient".into(),
            backends: vec![],
            gateways: vec![],
            http_clients: 1,
            http_timeout_ms: 1000,
            max_error_percent: max,
        };
        let s = analyze(&rs, std::slice::from_ref(&w), setup(4.0));
        assert_eq!(
            (s.counts.requests, s.counts.ok, s.counts.errors),
            (100, 96, 4)
        );
        assert_eq!(s.counts.errors_by_kind["http_5xx"], 2);
        assert_eq!(s.windows[0].counts.errors, 2);
        assert_eq!(s.windows[0].counts.errors_by_kind["timeout"], 1);
        assert_eq!(s.errors_outside_windows, 2);
        assert_eq!(s.verdict, Verdict::Pass);
        assert_eq!(s.latency_p50_ms, Some(2.0));
        assert_eq!(analyze(&rs, &[w], setup(3.9)).verdict, Verdict::Fail);
        assert_eq!(analyze(&[], &[], setup(1.0)).verdict, Verdict::Unknown);
    }
}
