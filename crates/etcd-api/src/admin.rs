//! The admin HTTP listener: `/metrics` (Prometheus text), `/health` (200 when
//! this member knows a leader and can serve a linearizable read), `/ready`
//! (200 once the member has applied everything committed at start-up and
//! knows a leader), `/member` (this member's id and the leader it knows),
//! and `/fault` (GET/PUT/DELETE the injected network faults; only on members
//! started with `--enable-fault-injection`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::metrics::Metrics;

/// Largest accepted body of a `/fault` request.
pub const MAX_FAULT_BODY_BYTES: usize = 64 * 1024;

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
        "/fault" => {
            let faults = node.faults();
            if !faults.enabled() {
                return reply(StatusCode::FORBIDDEN, "text/plain", "fault injection is disabled on this member: start it with --enable-fault-injection\n".into());
            }
            match req.method().as_str() {
                "GET" => reply(StatusCode::OK, "application/json", serde_json::to_string(&faults.get()).expect("faults encode")),
                "DELETE" => {
                    let _ = faults.set(consensus::NetworkFaults::default());
                    reply(StatusCode::OK, "application/json", "{}".into())
                }
                "PUT" | "POST" => {
                    use http_body_util::BodyExt;
                    let body = match http_body_util::Limited::new(req.into_body(), MAX_FAULT_BODY_BYTES).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(e) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("body rejected (max {MAX_FAULT_BODY_BYTES} bytes): {e}\n")),
                    };
                    let wanted: consensus::NetworkFaults = match serde_json::from_slice(&body) {
                        Ok(f) => f,
                        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", format!("invalid fault spec: {e}; expected {{\"isolated_from\":[member ids],\"delay_ms\":N}}\n")),
                    };
                    match faults.set(wanted) {
                        Ok(()) => reply(StatusCode::OK, "application/json", serde_json::to_string(&faults.get()).expect("faults encode")),
                        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
                    }
                }
                _ => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET, PUT or DELETE\n".into()),
            }
        }
        "/member" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::json!({"id": node.id(), "id_hex": format!("{:x}", node.id()), "name": node.name(), "cluster_id": node.cluster_id(), "leader": node.status().leader}).to_string(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /health, /ready, /member or /fault\n".into()),
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
