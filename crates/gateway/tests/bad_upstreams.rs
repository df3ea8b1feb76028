//! Misbehaving upstreams (issue 10): garbage bytes, an immediate close, a bad
//! status line and endless headers are answered `502`, a hung upstream `504`
//! (after the per-try timeouts, retries and the route deadline), on the very
//! first request; the access log names the upstream error.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use gateway::{Config, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How a raw-TCP backend misbehaves after accepting a connection.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    Garbage,
    ImmediateClose,
    BadStatusLine,
    EndlessHeaders,
    Hang,
}

/// Raw TCP backend; runs until the test's runtime ends.
async fn raw_backend(m: Misbehaviour) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Misbehaviour::ImmediateClose = m {
                    return;
                }
                // Wait for (the start of) the request.
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match m {
                    Misbehaviour::Garbage => {
                        let _ = s
                            .write_all(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
                            .await;
                    }
                    Misbehaviour::BadStatusLine => {
                        let _ = s
                            .write_all(b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n")
                            .await;
                    }
                    Misbehaviour::EndlessHeaders => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
                        let line =
                            b"X-Endless: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(64);
                        // Until the gateway gives up and closes.
                        while s.write_all(&line).await.is_ok() {}
                    }
                    Misbehaviour::Hang => {
                        std::future::pending::<()>().await;
                    }
                    Misbehaviour::ImmediateClose => {}
                }
                // Keep the socket open a while: the verdict must not depend
                // on the close.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

fn cfg(endpoints: &[SocketAddr], route_extra: &str, access_log: bool) -> Config {
    let t = format!(
        r#"
access_log = {access_log}
[[listeners]]
name = "web"
address = "127.0.0.1:0"
[[pools]]
name = "p"
endpoints = {}
[[routes]]
pool = "p"
{route_extra}
"#,
        endpoints_toml(endpoints)
    );
    Config::from_toml_str(&t).unwrap_or_else(|e| panic!("{e}\n{t}"))
}

/// Default retry policy (2 retries on reset); with one endpoint there is
/// nothing to retry on, with two the retry fails the same way.
async fn first_request(m: Misbehaviour, endpoints: usize) -> (Resp, Duration) {
    let mut eps = Vec::new();
    for _ in 0..endpoints {
        eps.push(raw_backend(m).await);
    }
    let gw = Gateway::start(cfg(&eps, "timeout_ms = 5000", false))
        .await
        .unwrap();
    let t = Instant::now();
    let r = get(&client(), &format!("http://{}/", gw.local_addr()))
        .await
        .unwrap();
    let el = t.elapsed();
    gw.shutdown().await;
    (r, el)
}

#[tokio::test]
async fn garbage_close_bad_status_and_endless_headers_give_502() {
    let cases = [
        (Misbehaviour::Garbage, "invalid status line"),
        (
            Misbehaviour::ImmediateClose,
            "connection closed before response",
        ),
        (Misbehaviour::BadStatusLine, "invalid status line"),
        (Misbehaviour::EndlessHeaders, "response head too large"),
    ];
    for (m, reason) in cases {
        for endpoints in [1, 2] {
            let (r, el) = first_request(m, endpoints).await;
            eprintln!("{m:?} × {endpoints}: {} {:?} in {el:?}", r.status, r.body);
            assert_eq!(r.status, 502, "{m:?} with {endpoints} endpoint(s): {r:?}");
            assert_eq!(
                r.body,
                format!("bad upstream response: {reason}"),
                "{m:?} with {endpoints} endpoint(s)"
            );
            assert!(el < Duration::from_secs(3), "{m:?}: {el:?}");
        }
    }
}

#[tokio::test]
async fn hung_upstream_gives_504_after_per_try_timeouts_and_deadline() {
    // Two hung endpoints, per-try timeout 200 ms, 2 retries: both endpoints
    // are tried (no endpoint is tried twice), then 504.
    let eps = [
        raw_backend(Misbehaviour::Hang).await,
        raw_backend(Misbehaviour::Hang).await,
    ];
    let gw = Gateway::start(cfg(
        &eps,
        "timeout_ms = 5000\nretry = { per_try_timeout_ms = 200, max_retries = 2 }",
        false,
    ))
    .await
    .unwrap();
    let url = format!("http://{}/", gw.local_addr());
    let t = Instant::now();
    let r = get(&client(), &url).await.unwrap();
    let el = t.elapsed();
    eprintln!("hung × 2, per-try 200 ms: {} in {el:?}", r.status);
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout")
    );
    assert!(
        el >= Duration::from_millis(400) && el < Duration::from_secs(3),
        "{el:?}"
    );
    let m = gw.metrics_text();
    assert_eq!(
        metric_sum(&m, "gateway_upstream_requests_total", &["timeout"]),
        2.0,
        "{m}"
    );
    gw.shutdown().await;

    // No per-try timeout: the route deadline (timeout_ms) ends the wait.
    let gw = Gateway::start(cfg(&eps[..1], "timeout_ms = 600", false))
        .await
        .unwrap();
    let t = Instant::now();
    let r = get(&client(), &format!("http://{}/", gw.local_addr()))
        .await
        .unwrap();
    let el = t.elapsed();
    eprintln!("hung × 1, deadline 600 ms: {} in {el:?}", r.status);
    assert_eq!(r.status, 504);
    assert!(
        el >= Duration::from_millis(600) && el < Duration::from_secs(3),
        "{el:?}"
    );
    gw.shutdown().await;
}

/// Re-executed by `access_log_names_the_upstream_error`: serves one request
/// per misbehaviour through a gateway with `access_log = true` (stdout).
#[test]
fn access_log_child_entry() {
    if std::env::var("PHALANX_TEST_ACCESS_LOG_CHILD").is_err() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bad = raw_backend(Misbehaviour::BadStatusLine).await;
        let hang = raw_backend(Misbehaviour::Hang).await;
        let close = raw_backend(Misbehaviour::ImmediateClose).await;
        let text = format!(
            r#"
access_log = true
[[listeners]]
name = "web"
address = "127.0.0.1:0"
[[pools]]
name = "bad"
endpoints = ["{bad}"]
[[pools]]
name = "hang"
endpoints = ["{hang}"]
[[pools]]
name = "close"
endpoints = ["{close}"]
[[routes]]
path_prefix = "/bad"
pool = "bad"
[[routes]]
path_prefix = "/hang"
pool = "hang"
timeout_ms = 300
[[routes]]
path_prefix = "/close"
pool = "close"
"#
        );
        let gw = Gateway::start(Config::from_toml_str(&text).unwrap())
            .await
            .unwrap();
        let c = client();
        for p in ["/bad", "/hang", "/close"] {
            let _ = get(&c, &format!("http://{}{p}", gw.local_addr())).await;
        }
        gw.shutdown().await;
    });
    std::process::exit(0);
}

#[test]
fn access_log_names_the_upstream_error() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "access_log_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PHALANX_TEST_ACCESS_LOG_CHILD", "1")
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let by_path = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no access log line for {p} in:\n{text}"))
            .clone()
    };
    let bad = by_path("/bad");
    assert_eq!(bad["status"], 502, "{bad}");
    assert_eq!(bad["upstream_error"], "invalid status line", "{bad}");
    let hang = by_path("/hang");
    assert_eq!(hang["status"], 504, "{hang}");
    assert_eq!(hang["upstream_error"], "timeout", "{hang}");
    let close = by_path("/close");
    assert_eq!(close["status"], 502, "{close}");
    assert_eq!(
        close["upstream_error"], "connection closed before response",
        "{close}"
    );
}
