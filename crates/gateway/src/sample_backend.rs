//! A tiny HTTP backend (hyper, HTTP/1.1 and h2c) for demos and tests.
//!
//! Every response carries the backend's name as body (`<name>\n`) and in the
//! `x-backend` header. Query parameters: `sleep_ms=N` delays the answer,
//! `status=N` picks the status. `/healthz` answers 200 `ok`. A request with
//! `Upgrade` gets `101 Switching Protocols` and the connection then echoes
//! bytes. Request headers `x-forwarded-for`, `x-forwarded-proto` and `via` are
//! echoed back as `x-seen-forwarded-for`, `x-seen-forwarded-proto`, `x-seen-via`;
//! `x-seen-header-names` lists the request header names, `x-seen-version` the
//! HTTP version received, `x-body-bytes` the request body size.
//!
//! Runtime control (for fault drills): [`SampleBackend::control`] gives a
//! [`SampleControl`] that makes the whole backend slow (every answer,
//! health checks included, waits `slow_ms` first) or changes its status;
//! [`serve_control`] exposes it on a separate listener (`GET /control`,
//! `PUT /control` with `{"slow_ms": N, "status": N}`), so the data path has
//! no reserved URL.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

/// Behaviour of a sample backend.
#[derive(Debug, Clone)]
pub struct SampleBackendOptions {
    /// Name returned in bodies and `x-backend`.
    pub name: String,
    /// Status of every answer (0 = 200, `status=` query may override).
    pub status: u16,
    /// Delay before every answer.
    pub delay_ms: u64,
    /// Accept connections and read requests but never answer.
    pub hang: bool,
}

impl SampleBackendOptions {
    /// Defaults: 200, no delay.
    pub fn new(name: &str) -> Self {
        SampleBackendOptions {
            name: name.to_string(),
            status: 0,
            delay_ms: 0,
            hang: false,
        }
    }
}

struct State {
    opts: SampleBackendOptions,
    status: AtomicU16,
    requests: AtomicU64,
    /// Set at run time: every answer (health checks included) waits this long first.
    slow_ms: AtomicU64,
}

/// Largest `slow_ms` accepted by [`SampleControl::set_slow_ms`] / `PUT /control`.
pub const MAX_SLOW_MS: u64 = 600_000;

/// Largest body of a `PUT /control` request.
pub const MAX_CONTROL_BODY_BYTES: usize = 4 * 1024;

/// Runtime control of a running sample backend (cheap to clone).
#[derive(Clone)]
pub struct SampleControl {
    state: Arc<State>,
}

impl SampleControl {
    /// Make every answer, health checks included, wait `ms` first (0 = normal).
    pub fn set_slow_ms(&self, ms: u64) -> Result<(), String> {
        if ms > MAX_SLOW_MS {
            return Err(format!(
                "slow_ms {ms} exceeds the limit of {MAX_SLOW_MS} ms"
            ));
        }
        self.state.slow_ms.store(ms, Ordering::Relaxed);
        Ok(())
    }
    /// Current slowness, in ms.
    pub fn slow_ms(&self) -> u64 {
        self.state.slow_ms.load(Ordering::Relaxed)
    }
    /// Change the status of every answer (0 = 200).
    pub fn set_status(&self, s: u16) {
        self.state.status.store(s, Ordering::Relaxed);
    }
    /// Requests answered or being answered so far (health checks excluded).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
    fn to_json(&self) -> String {
        serde_json::json!({
            "name": self.state.opts.name,
            "slow_ms": self.slow_ms(),
            "status": self.state.status.load(Ordering::Relaxed),
            "requests": self.requests(),
        })
        .to_string()
    }
}

/// A running sample backend; stopped (listener and all connections closed)
/// by [`SampleBackend::stop`] or when dropped.
pub struct SampleBackend {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SampleBackend {
    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// Name.
    pub fn name(&self) -> &str {
        &self.state.opts.name
    }
    /// Requests answered or being answered so far (health checks excluded).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
    /// Change the status of every answer (0 = 200).
    pub fn set_status(&self, s: u16) {
        self.state.status.store(s, Ordering::Relaxed);
    }
    /// Runtime control of this backend.
    pub fn control(&self) -> SampleControl {
        SampleControl {
            state: self.state.clone(),
        }
    }
    /// Close the listener and every open connection; waits until done.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for SampleBackend {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Start a backend answering with `name` on `addr` (port 0 = any).
pub async fn spawn(addr: SocketAddr, name: &str) -> std::io::Result<SampleBackend> {
    spawn_with(addr, SampleBackendOptions::new(name)).await
}

/// Start a backend with options.
pub async fn spawn_with(
    addr: SocketAddr,
    opts: SampleBackendOptions,
) -> std::io::Result<SampleBackend> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let addr = l.local_addr()?;
    let state = Arc::new(State {
        status: AtomicU16::new(opts.status),
        opts,
        requests: AtomicU64::new(0),
        slow_ms: AtomicU64::new(0),
    });
    let (tx, mut rx) = watch::channel(false);
    let st = state.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (s, _) = tokio::select! {
                _ = crate::listener::stopped(&mut rx) => break,
                r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let _ = s.set_nodelay(true);
            let st = st.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req| answer(st.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
        drop(l);
        conns.shutdown().await;
    });
    Ok(SampleBackend {
        addr,
        state,
        stop: tx,
        task: Some(task),
    })
}

fn query_param(q: Option<&str>, k: &str) -> Option<u64> {
    q?.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(a, _)| *a == k)?
        .1
        .parse()
        .ok()
}

async fn answer(
    st: Arc<State>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let name = st.opts.name.clone();
    let slow = st.slow_ms.load(Ordering::Relaxed);
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    if req.uri().path() == "/healthz" {
        let s = st.status.load(Ordering::Relaxed);
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        if s >= 500 {
            *r.status_mut() = StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        }
        return Ok(r);
    }
    st.requests.fetch_add(1, Ordering::Relaxed);
    if st.opts.hang {
        std::future::pending::<()>().await;
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        r.headers_mut().insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        return Ok(r);
    }
    let q = req.uri().query().map(str::to_string);
    let delay = query_param(q.as_deref(), "sleep_ms").unwrap_or(st.opts.delay_ms);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut status = st.status.load(Ordering::Relaxed);
    if let Some(s) = query_param(q.as_deref(), "status") {
        status = s as u16;
    }
    let seen: Vec<(String, HeaderValue)> = ["x-forwarded-for", "x-forwarded-proto", "via", "host"]
        .iter()
        .filter_map(|h| {
            req.headers()
                .get(*h)
                .map(|v| (format!("x-seen-{}", h.trim_start_matches("x-")), v.clone()))
        })
        .collect();
    let version = format!("{:?}", req.version());
    let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
    let names = names.join(",");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(format!("{name}\n"))));
    *r.status_mut() =
        StatusCode::from_u16(if status == 0 { 200 } else { status }).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert("x-backend", v);
    }
    h.insert("x-body-bytes", HeaderValue::from(body.len()));
    if let Ok(v) = HeaderValue::from_str(&version) {
        h.insert("x-seen-version", v);
    }
    if let Ok(v) = HeaderValue::from_str(&names) {
        h.insert("x-seen-header-names", v);
    }
    for (k, v) in seen {
        if let Ok(k) = http::HeaderName::from_bytes(k.as_bytes()) {
            h.insert(k, v);
        }
    }
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    Ok(r)
}

/// Serve `GET /control` (JSON: name, slow_ms, status, requests) and
/// `PUT /control` (JSON object with any of `slow_ms`, `status`; errors name
/// the field) for `ctl` on `addr` until the returned task is aborted.
pub async fn serve_control(
    addr: SocketAddr,
    ctl: SampleControl,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let ctl = ctl.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| control_answer(ctl.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

async fn control_answer(
    ctl: SampleControl,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        Ok(r)
    };
    if req.uri().path() != "/control" {
        return reply(StatusCode::NOT_FOUND, "not found: use /control\n".into());
    }
    match req.method().as_str() {
        "GET" => reply(StatusCode::OK, ctl.to_json()),
        "PUT" | "POST" => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_CONTROL_BODY_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("body rejected (max {MAX_CONTROL_BODY_BYTES} bytes): {e}\n"),
                    )
                }
            };
            match apply_control(&ctl, &body) {
                Ok(()) => reply(StatusCode::OK, ctl.to_json()),
                Err(e) => reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, "use GET or PUT\n".into()),
    }
}

/// Apply a `PUT /control` body; nothing changes unless every field is valid.
fn apply_control(ctl: &SampleControl, body: &[u8]) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let mut slow = None;
    let mut status = None;
    for (k, val) in obj {
        match k.as_str() {
            "slow_ms" => match val.as_u64() {
                Some(ms) if ms <= MAX_SLOW_MS => slow = Some(ms),
                _ => return Err(format!("field `slow_ms`: expected a whole number of ms from 0 to {MAX_SLOW_MS}, got {val}")),
            },
            "status" => match val.as_u64() {
                Some(s) if s == 0 || (100..=599).contains(&s) => status = Some(s as u16),
                _ => return Err(format!("field `status`: expected 0 (= 200) or an HTTP status 100-599, got {val}")),
            },
            other => return Err(format!("unknown field `{other}` (known: slow_ms, status)")),
        }
    }
    if let Some(ms) = slow {
        ctl.set_slow_ms(ms)?;
    }
    if let Some(s) = status {
        ctl.set_status(s);
    }
    Ok(())
}

#[cfg(test)]
mod control_tests {
    use super::*;

    #[tokio::test]
    async fn slow_mode_delays_health_checks_too_and_bad_fields_are_named() {
        let b = spawn("127.0.0.1:0".parse().unwrap(), "b").await.unwrap();
        let ctl = b.control();
        assert!(apply_control(&ctl, br#"{"slow_ms":-1}"#)
            .unwrap_err()
            .contains("`slow_ms`"));
        assert!(apply_control(&ctl, br#"{"slow_ms":600001}"#)
            .unwrap_err()
            .contains("`slow_ms`"));
        assert!(apply_control(&ctl, br#"{"status":42}"#)
            .unwrap_err()
            .contains("`status`"));
        assert!(apply_control(&ctl, br#"{"slowms":1}"#)
            .unwrap_err()
            .contains("`slowms`"));
        apply_control(&ctl, br#"{"slow_ms":500}"#).unwrap();
        assert_eq!(ctl.slow_ms(), 500);
        let get = |path: &'static str| {
            let addr = b.local_addr();
            async move {
                let t0 = std::time::Instant::now();
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                assert!(out.starts_with("HTTP/1.1 200"), "{out}");
                t0.elapsed()
            }
        };
        assert!(get("/healthz").await >= Duration::from_millis(500));
        assert!(get("/").await >= Duration::from_millis(500));
        ctl.set_slow_ms(0).unwrap();
        assert!(get("/healthz").await < Duration::from_millis(500));
    }
}
