//! Admin HTTP endpoint: `GET /metrics` (Prometheus text), `GET /pools`
//! (JSON: pools, endpoints, health), `GET /config` (TOML in force),
//! `GET /healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use crate::endpoint::now_ms;
use crate::proxy::Shared;
use crate::router::Runtime;

/// A running admin endpoint.
pub(crate) struct AdminHandle {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl AdminHandle {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// JSON listing of pools and endpoints.
pub(crate) fn pools_json(rt: &Runtime) -> serde_json::Value {
    let now = now_ms();
    let mut pools: Vec<_> = rt.pools.values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let list: Vec<serde_json::Value> = pools
        .iter()
        .map(|p| {
            let cfg = p.cfg();
            let eps: Vec<serde_json::Value> = p
                .members()
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "address": e.addr.to_string(),
                        "weight": e.weight(),
                        "healthy": e.is_healthy(),
                        "ejected": e.is_ejected(now),
                        "available": e.is_available(now),
                        "ejections": e.ejection_count(),
                        "active_requests": e.active(),
                    })
                })
                .collect();
            serde_json::json!({
                "name": p.name,
                "algorithm": cfg.algorithm.to_string(),
                "backups": cfg.backups,
                "circuit_breaker": p.breaker.state_name(),
                "in_flight": p.admission.in_flight(),
                "pending": p.admission.pending(),
                "endpoints": eps,
            })
        })
        .collect();
    serde_json::json!({ "pools": list })
}

fn respond(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

async fn serve(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics_text(),
        ),
        "/pools" => respond(
            StatusCode::OK,
            "application/json",
            pools_json(&shared.runtime()).to_string(),
        ),
        "/config" => respond(
            StatusCode::OK,
            "application/toml",
            shared.runtime().config.to_toml_string(),
        ),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

pub(crate) fn start(l: std::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<AdminHandle> {
    let l = tokio::net::TcpListener::from_std(l)?;
    let local_addr = l.local_addr()?;
    let (tx, mut rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let (s, _) = tokio::select! {
                _ = crate::listener::stopped(&mut rx) => return,
                r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| serve(shared.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(AdminHandle {
        local_addr,
        stop: tx,
    })
}
