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
        SampleBackendOptions { name: name.to_string(), status: 0, delay_ms: 0, hang: false }
    }
}

struct State {
    opts: SampleBackendOptions,
    status: AtomicU16,
    requests: AtomicU64,
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
pub async fn spawn_with(addr: SocketAddr, opts: SampleBackendOptions) -> std::io::Result<SampleBackend> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let addr = l.local_addr()?;
    let state = Arc::new(State { status: AtomicU16::new(opts.status), opts, requests: AtomicU64::new(0) });
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
    Ok(SampleBackend { addr, state, stop: tx, task: Some(task) })
}

fn query_param(q: Option<&str>, k: &str) -> Option<u64> {
    q?.split('&').filter_map(|kv| kv.split_once('=')).find(|(a, _)| *a == k)?.1.parse().ok()
}

async fn answer(st: Arc<State>, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let name = st.opts.name.clone();
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
        r.headers_mut().insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
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
        .filter_map(|h| req.headers().get(*h).map(|v| (format!("x-seen-{}", h.trim_start_matches("x-")), v.clone())))
        .collect();
    let version = format!("{:?}", req.version());
    let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
    let names = names.join(",");
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(format!("{name}\n"))));
    *r.status_mut() = StatusCode::from_u16(if status == 0 { 200 } else { status }).unwrap_or(StatusCode::OK);
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
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}
