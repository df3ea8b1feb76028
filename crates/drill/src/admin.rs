//! The one small HTTP/1.1 client of the drill, `phalanx demo` and the
//! phalanx tests (members' admin listeners: `/metrics`, `/member`, `/fault`,
//! `/health`; gateways; sample backends): one request per connection
//! through hyper, the whole exchange bounded by a deadline, the reply body
//! bounded by [`MAX_ADMIN_REPLY_BYTES`].
//!
//! [`request`] is the drill's form (a base URL, [`DrillError`]);
//! [`exchange`] the general one (`host:port`, [`HttpError`]);
//! [`get_blocking`] serves synchronous callers (the tests).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::DrillError;

/// Bound on one admin request (connect + send + read the whole reply), in ms.
pub const ADMIN_TIMEOUT_MS: u64 = 1_500;

/// Largest admin reply read, in bytes (the metrics page is a few KiB).
pub const MAX_ADMIN_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no complete reply within {0:?}")]
    Timeout(Duration),
    #[error("invalid request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("HTTP: {0}")]
    Protocol(#[from] hyper::Error),
    #[error("reading the reply body: {0}")]
    Body(String),
    #[error("running the request: {0}")]
    Runtime(std::io::Error),
}

/// `http://host:port[/]` → `host:port`.
pub fn host_port(url: &str) -> Result<String, DrillError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| DrillError::Usage(format!("{url:?}: expected an http://HOST:PORT URL")))?;
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || !hp.contains(':') {
        return Err(DrillError::Usage(format!(
            "{url:?}: expected an http://HOST:PORT URL"
        )));
    }
    Ok(hp.to_string())
}

/// One request to `addr` (`host:port`), `Connection: close`; returns
/// (status, body). A JSON `body` is sent with its content type.
pub async fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends with the exchange (or with this future,
        // when the deadline drops it).
        let conn = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr)
            .header(hyper::header::CONNECTION, "close");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or("").to_string())))?;
        let reply = send.send_request(req).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                conn.abort();
                return Err(e.into());
            }
        };
        let status = reply.status().as_u16();
        let bytes = Limited::new(reply.into_body(), MAX_ADMIN_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| HttpError::Body(e.to_string()))?
            .to_bytes();
        conn.abort();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

/// [`exchange`] `GET` for synchronous callers, on a runtime of its own;
/// inside a tokio runtime (where `block_on` would panic) that runtime runs
/// on a thread of its own.
pub fn get_blocking(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HttpError::Runtime)?
            .block_on(exchange(addr, "GET", path, None, timeout))
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|s| {
        s.spawn(run)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One request to a member's admin listener at `base` (`http://host:port`),
/// bounded by [`ADMIN_TIMEOUT_MS`]; returns (status, body).
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), DrillError> {
    let hp = host_port(base)?;
    exchange(
        &hp,
        method,
        path,
        body,
        Duration::from_millis(ADMIN_TIMEOUT_MS),
    )
    .await
    .map_err(|e| DrillError::Admin {
        url: base.to_string(),
        detail: format!("{method} {path}: {e}"),
    })
}

/// The value of metric `name` (an unlabelled sample) in a `/metrics` page.
pub fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// The member's `/metrics` page, if it answers.
pub async fn metrics_page(base: &str) -> Option<String> {
    let (status, body) = request(base, "GET", "/metrics", None).await.ok()?;
    (status == 200).then_some(body)
}

/// The member id from `/member`.
pub async fn member_id(base: &str) -> Result<u64, DrillError> {
    let (status, body) = request(base, "GET", "/member", None).await?;
    if status != 200 {
        return Err(DrillError::Admin {
            url: base.to_string(),
            detail: format!("GET /member: HTTP {status}: {}", body.trim()),
        });
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| DrillError::Admin {
        url: base.to_string(),
        detail: format!("GET /member: invalid JSON: {e}"),
    })?;
    v.get("id")
        .and_then(|i| i.as_u64())
        .ok_or_else(|| DrillError::Admin {
            url: base.to_string(),
            detail: "GET /member: no numeric \"id\"".into(),
        })
}

/// PUT /fault.
pub async fn set_fault(
    base: &str,
    isolated_from: &[u64],
    delay_ms: u64,
    jitter_ms: u64,
) -> Result<(), DrillError> {
    let body = serde_json::json!({ "isolated_from": isolated_from, "delay_ms": delay_ms, "jitter_ms": jitter_ms }).to_string();
    let (status, reply) = request(base, "PUT", "/fault", Some(&body)).await?;
    if status != 200 {
        return Err(DrillError::Admin {
            url: base.to_string(),
            detail: format!("PUT /fault: HTTP {status}: {}", reply.trim()),
        });
    }
    Ok(())
}

/// DELETE /fault.
pub async fn clear_fault(base: &str) -> Result<(), DrillError> {
    let (status, reply) = request(base, "DELETE", "/fault", None).await?;
    if status != 200 {
        return Err(DrillError::Admin {
            url: base.to_string(),
            detail: format!("DELETE /fault: HTTP {status}: {}", reply.trim()),
        });
    }
    Ok(())
}

/// Whether `/fault` is served (the member runs with `--enable-fault-injection`).
pub async fn fault_injection_enabled(base: &str) -> Result<bool, DrillError> {
    let (status, _) = request(base, "GET", "/fault", None).await?;
    Ok(status == 200)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server answering `reply` to the first request; returns
    /// its address and the request it read.
    async fn serve_once(reply: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&req).contains("\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn exchange_returns_status_and_body() {
        let (addr, task) =
            serve_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown").await;
        let r = exchange(&addr, "GET", "/health", None, Duration::from_secs(5)).await;
        assert_eq!(r.unwrap(), (503, "down".to_string()));
        let req = task.await.unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
    }

    #[tokio::test]
    async fn exchange_is_bounded_by_its_deadline() {
        // Accepts (through the backlog) but never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let r = exchange(&addr, "GET", "/", None, Duration::from_millis(200)).await;
        assert!(matches!(r, Err(HttpError::Timeout(_))), "{r:?}");
    }

    #[test]
    fn metric_value_reads_an_unlabelled_sample() {
        let page = "# HELP x\nphalanx_server_is_leader_total 7\nphalanx_server_is_leader 1\n";
        assert_eq!(metric_value(page, "phalanx_server_is_leader"), Some(1.0));
        assert_eq!(metric_value(page, "missing"), None);
    }
}
