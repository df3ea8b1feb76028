//! A minimal HTTP/1.1 client for a member's admin listener (`/metrics`,
//! `/member`, `/fault`, `/health`). One request per connection, bounded by
//! [`ADMIN_TIMEOUT_MS`].

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::DrillError;

/// Bound on one admin request (connect + send + read the whole reply), in ms.
pub const ADMIN_TIMEOUT_MS: u64 = 1_500;

/// Largest admin reply read, in bytes (the metrics page is a few KiB).
pub const MAX_ADMIN_REPLY_BYTES: usize = 4 * 1024 * 1024;

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

/// One request; returns (status, body).
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), DrillError> {
    let hp = host_port(base)?;
    let fut = async {
        let mut s = TcpStream::connect(&hp).await?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {hp}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_ADMIN_REPLY_BYTES as u64)
            .read_to_end(&mut buf)
            .await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_millis(ADMIN_TIMEOUT_MS), fut)
        .await
        .map_err(|_| DrillError::Admin {
            url: base.to_string(),
            detail: format!("{method} {path}: no reply within {ADMIN_TIMEOUT_MS} ms"),
        })?
        .map_err(|e| DrillError::Admin {
            url: base.to_string(),
            detail: format!("{method} {path}: {e}"),
        })?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| DrillError::Admin {
            url: base.to_string(),
            detail: format!("{method} {path}: malformed reply"),
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A metric's value from `/metrics`, if the member answers and has it.
pub async fn metric(base: &str, name: &str) -> Option<f64> {
    let (status, body) = request(base, "GET", "/metrics", None).await.ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
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
