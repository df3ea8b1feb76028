//! The HTTP/1.1 fast path over real sockets (issue 16): request smuggling
//! attempts are refused with 400 and the connection closed, and nothing
//! reaches the upstream; upstream keep-alive connections are pooled;
//! request bodies (Content-Length, chunked, Expect: 100-continue),
//! pipelining, HEAD, HTTP/1.0 clients, chunked upstream responses; Upgrade
//! and h2c requests are handed to hyper's server (the path choice of
//! docs/gateway.md "HTTP/1.1 fast path").

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use gateway::{Config, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw HTTP/1.1 backend recording what reaches it: connections accepted
/// and each request (head + body). It answers `200` with
/// `<method> <target> body=<body>` (chunked when the request path is
/// `/chunked`), keeping connections open.
#[derive(Clone, Default)]
struct Recorder {
    conns: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> (Recorder, SocketAddr) {
        let rec = Recorder::default();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let r = rec.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                r.conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(r.clone().serve(s));
            }
        });
        (rec, addr)
    }

    async fn serve(self, mut s: TcpStream) {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let Some(end) = find(&buf, b"\r\n\r\n") else {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let cl: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + cl {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + cl]).to_string();
            buf.drain(..end + 4 + cl);
            self.requests
                .lock()
                .unwrap()
                .push(format!("{head}\r\n\r\n{body}"));
            let line = head.lines().next().unwrap_or("").to_string();
            let mut parts = line.split(' ');
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let answer = format!("{method} {target} body={body}");
            let resp = if target == "/chunked" {
                let (a, b) = answer.split_at(answer.len() / 2);
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
            } else if method == "HEAD" {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    answer.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                )
            };
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn cfg(backend: SocketAddr) -> Config {
    Config::from_toml_str(&format!(
        r#"
[[listeners]]
name = "web"
address = "127.0.0.1:0"
[[pools]]
name = "p"
endpoints = ["{backend}"]
[[routes]]
pool = "p"
"#
    ))
    .unwrap()
}

/// Send raw bytes, read until the gateway closes (or `timeout`).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).to_string(), closed)
}

/// Read one response (head + Content-Length or chunked body) from `s`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let body_len = if head.contains("transfer-encoding: chunked") {
                find(&buf[end..], b"0\r\n\r\n").map(|i| i + 5 - 4)
            } else {
                let cl = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                (buf.len() >= end + 4 + cl).then_some(cl)
            };
            if let Some(n) = body_len {
                let r = String::from_utf8_lossy(&buf[..end + 4 + n]).to_string();
                buf.drain(..end + 4 + n);
                return r;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn smuggling_attempts_get_400_close_and_never_reach_the_upstream() {
    let (rec, backend) = Recorder::start().await;
    let gw = Gateway::start(cfg(backend)).await.unwrap();
    let addr = gw.local_addr();
    let cases: [(&str, &str); 7] = [
        (
            "CL.TE",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "TE.CL",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
        ),
        (
            "differing Content-Length",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "TE obfuscated with a space before the colon",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
        ),
        (
            "chunked not final",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "two Host fields",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
    ];
    for (name, raw) in cases {
        let (out, closed) = exchange(addr, raw.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{name}: {out:?}");
        assert_eq!(
            out.matches("HTTP/1.1").count(),
            1,
            "{name}: one answer only: {out:?}"
        );
        assert!(out.contains("connection: close"), "{name}: {out:?}");
        assert!(closed, "{name}: the connection must be closed");
    }
    // A coding other than chunked: 501, closed.
    let (out, closed) = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 501 "), "{out:?}");
    assert!(closed);
    assert!(
        rec.requests().is_empty(),
        "an ambiguous request reached the upstream: {:?}",
        rec.requests()
    );
    // The gateway still serves well-formed requests.
    let (out, _) = exchange(
        addr,
        b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("GET /fine body="), "{out:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn keep_alive_bodies_pipelining_and_upstream_connection_reuse() {
    let (rec, backend) = Recorder::start().await;
    let gw = Gateway::start(cfg(backend)).await.unwrap();
    let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
    let mut buf = Vec::new();

    // Sequential keep-alive requests: one upstream connection carries them.
    for i in 0..20 {
        s.write_all(format!("GET /seq/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with(&format!("GET /seq/{i} body=")), "{r}");
        assert!(r.to_lowercase().contains("via: 1.1 phalanx"), "{r}");
    }
    assert_eq!(
        rec.conns.load(Ordering::SeqCst),
        1,
        "upstream keep-alive connection pooled and reused"
    );

    // A Content-Length body and a chunked one (forwarded with a length).
    s.write_all(b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert!(r.ends_with("POST /cl body=hello"), "{r}");
    s.write_all(
        b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert!(r.ends_with("POST /te body=abcde"), "{r}");
    let up = rec.requests();
    let last = up.last().unwrap().to_lowercase();
    assert!(
        last.contains("content-length: 5") && !last.contains("transfer-encoding"),
        "{last}"
    );

    // Expect: 100-continue: the interim answer comes before the body is sent.
    s.write_all(
        b"PUT /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut interim = Vec::new();
    while find(&interim, b"\r\n\r\n").is_none() {
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        interim.extend_from_slice(&b[..n]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    buf.extend_from_slice(&interim[b"HTTP/1.1 100 Continue\r\n\r\n".len()..]);
    s.write_all(b"xyz").await.unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert!(r.ends_with("PUT /expect body=xyz"), "{r}");

    // Pipelined requests, answered in order; a chunked upstream response is
    // relayed chunked; HEAD gets the head only.
    s.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /chunked HTTP/1.1\r\nHost: x\r\n\r\nHEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /p3 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert!(r.ends_with("GET /p1 body="), "{r}");
    let r = read_response(&mut s, &mut buf).await;
    assert!(
        r.to_lowercase().contains("transfer-encoding: chunked")
            && r.contains("\r\n9\r\nGET /chun\r\n")
            && r.ends_with("\r\n9\r\nked body=\r\n0\r\n\r\n"),
        "{r}"
    );
    let mut head_only = String::new();
    while !head_only.ends_with("\r\n\r\n") {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            head_only = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            buf.drain(..end + 4);
            break;
        }
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).await.unwrap();
        buf.extend_from_slice(&b[..n]);
    }
    assert!(
        head_only.starts_with("HTTP/1.1 200")
            && head_only.to_lowercase().contains("content-length: 13"),
        "{head_only}"
    );
    let r = read_response(&mut s, &mut buf).await;
    assert!(r.ends_with("GET /p3 body="), "HEAD sent no body: {r}");
    assert_eq!(
        rec.conns.load(Ordering::SeqCst),
        1,
        "still one upstream connection"
    );

    // HTTP/1.0: answered, then closed.
    let (out, closed) = exchange(gw.local_addr(), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("GET /old body="),
        "{out}"
    );
    assert!(closed);
    gw.shutdown().await;
}

#[tokio::test]
async fn oversized_body_gets_413_and_the_connection_closes() {
    let (rec, backend) = Recorder::start().await;
    let mut c = cfg(backend);
    c.routes[0].max_request_body_bytes = 10;
    let gw = Gateway::start(c).await.unwrap();
    let (out, closed) = exchange(
        gw.local_addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert!(closed);
    assert!(rec.requests().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_keepalive_close_race_is_retried_on_a_new_connection() {
    // A backend that answers one request per connection and then closes it
    // without saying so (no `Connection: close`): the pooled connection is
    // dead when taken next; the request goes again on a new connection and
    // the client sees no error.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let n = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut b = vec![0u8; 4096];
                let mut got = Vec::new();
                while find(&got, b"\r\n\r\n").is_none() {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&b[..k]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let mut c = cfg(backend);
    // No retries: a success must come from the fast path's own resend.
    c.routes[0].retry.max_retries = 0;
    let gw = Gateway::start(c).await.unwrap();
    let client = client();
    for _ in 0..10 {
        let r = get(&client, &format!("http://{}/", gw.local_addr()))
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    }
    assert!(conns.load(Ordering::SeqCst) >= 10);
    gw.shutdown().await;
}

#[tokio::test]
async fn upgrade_and_h2c_are_handed_to_hyper() {
    let b = gateway::sample_backend::spawn(any_addr(), "hb")
        .await
        .unwrap();
    let gw = Gateway::start(cfg(b.local_addr())).await.unwrap();
    // h2c with prior knowledge on the same plaintext listener.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let r = get(&h2, &format!("http://{}/", gw.local_addr()))
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hb"));
    // An Upgrade request after a fast-path request on the same connection.
    let mut s = TcpStream::connect(gw.local_addr()).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert!(r.ends_with("hb\n"), "{r}");
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while find(&head, b"\r\n\r\n").is_none() {
        let mut b = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        head.extend_from_slice(&b[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    gw.shutdown().await;
}
