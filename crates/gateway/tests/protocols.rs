//! Protocols (h2c, TLS + ALPN, TCP, WebSocket upgrade), proxy headers,
//! admin endpoint, and hostile input.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use gateway::sample_backend;
use gateway::{Config, Gateway};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn simple(addr: std::net::SocketAddr, extra_pool: &str) -> Config {
    config_with(&format!("[[pools]]\nname = \"p\"\nendpoints = [\"{addr}\"]\n{extra_pool}\n[[routes]]\npool = \"p\"\n"))
}

async fn h2_get<T>(io: T, authority: &str) -> (u16, String, http::HeaderMap)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{authority}/"))
        .version(http::Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    let st = r.status().as_u16();
    let h = r.headers().clone();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (st, String::from_utf8_lossy(&b).trim().to_string(), h)
}

#[tokio::test]
async fn http2_cleartext_h2c_both_sides() {
    let b = sample_backend::spawn(any_addr(), "b").await.unwrap();
    // h2c from the client, HTTP/1.1 to the backend.
    let gw = Gateway::start(simple(b.local_addr(), "")).await.unwrap();
    let s = TcpStream::connect(gw.local_addr()).await.unwrap();
    let (st, body, h) = h2_get(s, &gw.local_addr().to_string()).await;
    assert_eq!((st, body.as_str()), (200, "b"));
    assert_eq!(h["x-seen-version"], "HTTP/1.1");
    assert_eq!(h["x-seen-via"], "2.0 phalanx");
    gw.shutdown().await;
    // h2c to the backend too.
    let gw = Gateway::start(simple(b.local_addr(), "protocol = \"h2c\""))
        .await
        .unwrap();
    let s = TcpStream::connect(gw.local_addr()).await.unwrap();
    let (st, _, h) = h2_get(s, &gw.local_addr().to_string()).await;
    assert_eq!(st, 200);
    assert_eq!(h["x-seen-version"], "HTTP/2.0");
    gw.shutdown().await;
}

#[tokio::test]
async fn https_with_alpn_h2_and_http1() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let b = sample_backend::spawn(any_addr(), "tls-b").await.unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cp, kp) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cp, cert.cert.pem()).unwrap();
    std::fs::write(&kp, cert.key_pair.serialize_pem()).unwrap();
    let cfg = Config::from_toml_str(&format!(
        r#"
[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "https"
tls_cert_path = "{}"
tls_key_path = "{}"
[[pools]]
name = "p"
endpoints = ["{}"]
[[routes]]
pool = "p"
"#,
        cp.display(),
        kp.display(),
        b.local_addr()
    ))
    .unwrap();
    let gw = Gateway::start(cfg).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    for (alpn, want_h2) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], true),
        (vec![b"http/1.1".to_vec()], false),
    ] {
        let mut cc = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        cc.alpn_protocols = alpn;
        let conn = tokio_rustls::TlsConnector::from(Arc::new(cc));
        let tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
        let tls = conn
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        if want_h2 {
            assert_eq!(negotiated.as_deref(), Some(&b"h2"[..]));
            let (st, body, h) = h2_get(tls, "localhost").await;
            assert_eq!((st, body.as_str()), (200, "tls-b"));
            assert_eq!(h["x-seen-forwarded-proto"], "https");
        } else {
            assert_eq!(negotiated.as_deref(), Some(&b"http/1.1"[..]));
            let (mut send, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(c);
            let req = http::Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let r = send.send_request(req).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-seen-forwarded-proto"], "https");
        }
    }
    gw.shutdown().await;
    // A missing certificate file is a configuration error naming the field.
    let e = Config::from_toml_str(
        "[[listeners]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\nprotocol = \"https\"\ntls_cert_path = \"/nonexistent.pem\"\ntls_key_path = \"/nonexistent.key\"\n[[pools]]\nname = \"p\"\n[[routes]]\npool = \"p\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("listeners[0].tls_cert_path"), "{e}");
}

#[tokio::test]
async fn tcp_proxying_with_connect_retry() {
    let b = sample_backend::spawn(any_addr(), "tcp-b").await.unwrap();
    let dead = free_addr();
    let cfg = Config::from_toml_str(&format!(
        r#"
[[listeners]]
name = "l4"
address = "127.0.0.1:0"
protocol = "tcp"
pool = "p"
[[pools]]
name = "p"
algorithm = "round-robin"
endpoints = ["{dead}", "{}"]
"#,
        b.local_addr()
    ))
    .unwrap();
    let gw = Gateway::start(cfg).await.unwrap();
    for _ in 0..4 {
        let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("tcp-b\n"),
            "{out}"
        );
    }
    gw.shutdown().await;
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        buf.push(b[0]);
    }
    String::from_utf8_lossy(&buf).to_string()
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let b = sample_backend::spawn(any_addr(), "ws").await.unwrap();
    let gw = Gateway::start(simple(b.local_addr(), "")).await.unwrap();
    let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    for msg in [&b"hello"[..], &b"second frame"[..]] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn proxy_headers_and_hop_by_hop() {
    let b = sample_backend::spawn(any_addr(), "h").await.unwrap();
    let gw = Gateway::start(simple(b.local_addr(), "")).await.unwrap();
    let c = client();
    let r = get_with(
        &c,
        &format!("http://{}/", gw.local_addr()),
        &[
            ("x-forwarded-for", "10.1.2.3"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-seen-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(r.headers["x-seen-forwarded-proto"], "http");
    assert_eq!(r.headers["x-seen-via"], "1.1 phalanx");
    assert_eq!(r.headers["via"], "1.1 phalanx");
    let names = r.headers["x-seen-header-names"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        !names.contains("x-secret") && !names.contains("keep-alive"),
        "{names}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_endpoint_serves_metrics_and_pools() {
    let b = sample_backend::spawn(any_addr(), "a").await.unwrap();
    let mut cfg = simple(b.local_addr(), "");
    cfg.admin_listen = Some(any_addr());
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    assert_eq!(
        get(&c, &format!("http://{}/", gw.local_addr()))
            .await
            .unwrap()
            .status,
        200
    );
    let admin = gw.admin_addr().unwrap();
    let m = get(&c, &format!("http://{admin}/metrics")).await.unwrap();
    assert_eq!(m.status, 200);
    for name in [
        "gateway_upstream_requests_total",
        "gateway_upstream_latency_seconds_bucket",
        "gateway_endpoint_healthy",
        "gateway_endpoint_active_requests",
        "gateway_downstream_responses_total",
        "gateway_retries_total",
        "gateway_retry_budget_exhausted_total",
        "gateway_breaker_rejections_total",
        "gateway_listener_active_connections",
    ] {
        assert!(m.body.contains(name), "missing {name}:\n{}", m.body);
    }
    let p = get(&c, &format!("http://{admin}/pools")).await.unwrap();
    let j: serde_json::Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(
        j["pools"][0]["endpoints"][0]["address"],
        b.local_addr().to_string()
    );
    assert_eq!(j["pools"][0]["endpoints"][0]["healthy"], true);
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_rejected_and_others_are_served() {
    let b = sample_backend::spawn(any_addr(), "ok").await.unwrap();
    let gw = Gateway::start(simple(b.local_addr(), "")).await.unwrap();
    let addr = gw.local_addr();
    let c = client();
    let url = format!("http://{addr}/");

    // Slowloris: an incomplete head is cut after header_read_timeout_ms (1 s).
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let t0 = Instant::now();

    // Malformed request line → 400.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head:?}");

    // Oversized headers → 431.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = "a".repeat(100_000);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head:?}");

    // Other clients keep being served meanwhile.
    assert_eq!(get(&c, &url).await.unwrap().body, "ok");

    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "slowloris connection closed");
    let el = t0.elapsed();
    assert!(el < Duration::from_millis(3000), "closed after {el:?}");
    assert!(
        buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{buf:?}"
    );
    assert_eq!(get(&c, &url).await.unwrap().body, "ok");
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_configuration_names_field_and_reason() {
    let base = "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n";
    let cases = [
        ("[[pools]]\nname = \"p\"\nendpoints = [\"nonsense\"]\n[[routes]]\npool = \"p\"\n", "pools[0].endpoints[0].address"),
        ("[[pools]]\nname = \"p\"\n[[routes]]\npool = \"q\"\n", "routes[0].pool"),
        ("[[pools]]\nname = \"p\"\nbackups = [\"p\"]\n[[routes]]\npool = \"p\"\n", "pools[0].backups[0]"),
        ("[[pools]]\nname = \"p\"\nhealth_check = { rise = 0 }\n[[routes]]\npool = \"p\"\n", "pools[0].health_check.rise"),
        ("[[pools]]\nname = \"p\"\nalgorithm = \"consistent-hash\"\nhash = { key = \"header\" }\n[[routes]]\npool = \"p\"\n", "pools[0].hash.name"),
        ("[[pools]]\nname = \"p\"\nconnect_timeout_ms = \"fast\"\n[[routes]]\npool = \"p\"\n", "connect_timeout_ms"),
        ("[[pools]]\nname = \"p\"\nalgorithm = \"fastest\"\n[[routes]]\npool = \"p\"\n", "fastest"),
    ];
    for (t, field) in cases {
        let e = Config::from_toml_str(&format!("{base}{t}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "expected `{field}` in: {e}");
    }
    // The gateway refuses to start on an invalid config, and a running one keeps its config.
    let b = sample_backend::spawn(any_addr(), "ok").await.unwrap();
    let good = simple(b.local_addr(), "");
    let mut bad = good.clone();
    bad.pools[0].max_concurrent_requests = 0;
    assert!(Gateway::start(bad.clone()).await.is_err());
    let gw = Gateway::start(good.clone()).await.unwrap();
    let e = gw.apply_config(bad).unwrap_err().to_string();
    assert!(e.contains("pools[0].max_concurrent_requests"), "{e}");
    assert_eq!(gw.config(), good);
    assert_eq!(
        get(&client(), &format!("http://{}/", gw.local_addr()))
            .await
            .unwrap()
            .body,
        "ok"
    );
    gw.shutdown().await;
}
