//! The admin HTTP listener: `/metrics` (Prometheus text), `/health` (200 when
//! this member knows a leader and can serve a linearizable read), `/ready`
//! (200 once the member has applied everything committed at start-up and
//! knows a leader).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::metrics::Metrics;

/// Bound on the linearizable read `/health` performs.
pub const HEALTH_READ_TIMEOUT_MS: u64 = 2_000;

async fn handle(node: Arc<consensus::Node>, metrics: Arc<Metrics>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid"))
    };
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics.render(&node)),
        "/health" => {
            let r = tokio::time::timeout(Duration::from_millis(HEALTH_READ_TIMEOUT_MS), node.read_barrier()).await;
            match r {
                Ok(Ok(())) => reply(StatusCode::OK, "application/json", r#"{"health":"true"}"#.into()),
                Ok(Err(e)) => reply(StatusCode::SERVICE_UNAVAILABLE, "application/json", serde_json::json!({"health":"false","reason":e.to_string()}).to_string()),
                Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "application/json", r#"{"health":"false","reason":"timed out"}"#.into()),
            }
        }
        "/ready" => {
            let st = node.status();
            if st.leader.is_some() {
                reply(StatusCode::OK, "application/json", r#"{"ready":"true"}"#.into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "application/json", r#"{"ready":"false","reason":"no leader"}"#.into())
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /health or /ready\n".into()),
    }
}

/// Serve the admin endpoints on `listener` forever.
pub async fn serve_admin(listener: tokio::net::TcpListener, node: Arc<consensus::Node>, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let node = node.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(node.clone(), metrics.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
