//! The admin HTTP listener: `/metrics` (Prometheus text), `/health` (200 when
//! this member knows a leader and can serve a linearizable read), `/ready`
//! (200 once the member has applied everything committed at start-up and
//! knows a leader), `/member` (this member's id and the leader it knows),
//! and `/fault` (GET/PUT/DELETE the injected network faults — isolation from
//! peers, delay and jitter of outgoing peer messages; only on members
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

async fn handle(
    node: Arc<consensus::Node>,
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid"))
    };
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics.render(&node)),
        "/health" | "/ready" if node.fatal().is_some() => {
            let key = if req.uri().path() == "/health" { "health" } else { "ready" };
            let reason = node.fatal().map(|f| f.to_string()).unwrap_or_default();
            reply(StatusCode::SERVICE_UNAVAILABLE, "application/json", serde_json::json!({key:"false","reason":reason}).to_string())
        }
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
                    let wanted = match parse_fault_spec(&body) {
                        Ok(f) => f,
                        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", format!("invalid fault spec: {e}; expected {{\"isolated_from\":[member ids],\"delay_ms\":N,\"jitter_ms\":N}}\n")),
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

/// Parse a `/fault` body. Every error names the offending field: unknown
/// fields and values of the wrong type are rejected (the limits are checked
/// by [`consensus::Faults::set`]).
pub fn parse_fault_spec(body: &[u8]) -> Result<consensus::NetworkFaults, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    for (k, val) in obj {
        match k.as_str() {
            "isolated_from" => {
                if !val.as_array().is_some_and(|a| a.iter().all(|x| x.is_u64())) {
                    return Err(format!("field `isolated_from`: expected an array of member ids (unsigned integers), got {val}"));
                }
            }
            "delay_ms" | "jitter_ms" => {
                if !val.is_u64() {
                    return Err(format!(
                        "field `{k}`: expected a whole number of milliseconds, got {val}"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "unknown field `{other}` (known: isolated_from, delay_ms, jitter_ms)"
                ))
            }
        }
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Serve the admin endpoints on `listener` (plain HTTP) forever.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    node: Arc<consensus::Node>,
    metrics: Arc<Metrics>,
) {
    serve_admin_incoming(tls::incoming(listener, None), node, metrics).await
}

/// Serve the admin endpoints on accepted connections, plain or TLS
/// (`tls::incoming` with the metrics listener's TLS), until the stream ends.
pub async fn serve_admin_incoming(
    incoming: impl futures::Stream<Item = std::io::Result<tls::TlsOrPlain>> + Send + 'static,
    node: Arc<consensus::Node>,
    metrics: Arc<Metrics>,
) {
    use futures::StreamExt;
    let mut incoming = std::pin::pin!(incoming);
    while let Some(stream) = incoming.next().await {
        let Ok(stream) = stream else {
            continue;
        };
        let node = node.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| handle(node.clone(), metrics.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::parse_fault_spec;

    #[test]
    fn fault_spec_errors_name_the_field() {
        let f = parse_fault_spec(br#"{"isolated_from":[7],"delay_ms":20,"jitter_ms":30}"#).unwrap();
        assert_eq!(
            (f.delay_ms, f.jitter_ms, f.isolated_from.len()),
            (20, 30, 1)
        );
        assert_eq!(
            parse_fault_spec(b"{}").unwrap(),
            consensus::NetworkFaults::default()
        );
        for (body, field) in [
            (&br#"{"jitter_ms":-5}"#[..], "`jitter_ms`"),
            (br#"{"jitter_ms":"10"}"#, "`jitter_ms`"),
            (br#"{"delay_ms":1.5}"#, "`delay_ms`"),
            (br#"{"isolated_from":["a"]}"#, "`isolated_from`"),
            (br#"{"jiter_ms":10}"#, "`jiter_ms`"),
        ] {
            let e = parse_fault_spec(body).unwrap_err();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn jitter_above_the_limit_is_refused_by_name() {
        let faults = consensus::Faults::new(true);
        let mut f = consensus::NetworkFaults {
            delay_ms: 10,
            jitter_ms: consensus::faults::MAX_INJECTED_JITTER_MS + 1,
            ..Default::default()
        };
        let e = faults.set(f.clone()).unwrap_err().to_string();
        assert!(e.contains("jitter_ms") && e.contains("limit"), "{e}");
        f.jitter_ms = 50;
        faults.set(f).unwrap();
        for _ in 0..200 {
            let d = faults.delay().unwrap().as_millis() as u64;
            assert!((10..=60).contains(&d), "{d}");
        }
    }
}
