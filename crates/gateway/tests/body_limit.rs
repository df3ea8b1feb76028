//! `max_request_body_bytes` holds for chunked request bodies (issue 10): a
//! 100 MB chunked upload gets `413` and the backend receives fewer bytes
//! than the limit (none of the body); bodies under the limit pass intact.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use gateway::{sample_backend, Config, Gateway};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;

const LIMIT: u64 = 1024 * 1024;

fn cfg(backend: std::net::SocketAddr) -> Config {
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
max_request_body_bytes = {LIMIT}
"#
    ))
    .unwrap()
}

/// Raw TCP backend counting every byte it receives (heads included).
async fn counting_backend() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = n2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    n.fetch_add(k as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, n)
}

/// Chunked request body fed through a channel (no content-length, so hyper
/// sends it with `Transfer-Encoding: chunked`).
struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// POST with a chunked body fed by the returned sender.
fn chunked_post(url: &str) -> (tokio::sync::mpsc::Sender<Bytes>, http::Request<ChanBody>) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let req = http::Request::post(url).body(ChanBody(rx)).unwrap();
    (tx, req)
}

fn chunk_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, ChanBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_gets_413_before_reaching_the_backend() {
    let (addr, received) = counting_backend().await;
    let gw = Gateway::start(cfg(addr)).await.unwrap();
    let url = format!("http://{}/upload", gw.local_addr());
    let c = chunk_client();
    let (tx, req) = chunked_post(&url);
    // 100 MB in 64 KiB chunks; the sender stops when the gateway stops reading.
    let total: u64 = 100 * 1024 * 1024;
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    let feeder = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        while sent2.load(Ordering::Relaxed) < total {
            if tx.send(chunk.clone()).await.is_err() {
                break;
            }
            sent2.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .expect("response in time")
        .expect("a response, not a connection error");
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.map(|b| b.to_bytes());
    feeder.abort();
    // Give any forwarded byte time to arrive before measuring.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = received.load(Ordering::Relaxed);
    eprintln!(
        "chunked upload: {status} after {:?}, client sent ≥ {} bytes, backend received {got} bytes (limit {LIMIT})",
        t.elapsed(),
        sent.load(Ordering::Relaxed)
    );
    assert_eq!(status, 413);
    if let Ok(b) = body {
        assert_eq!(&b[..], b"request body too large\n");
    }
    assert!(got < LIMIT, "backend received {got} bytes");
    assert_eq!(
        got, 0,
        "nothing is forwarded before the body is known to fit"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn chunked_body_under_the_limit_is_forwarded_intact() {
    let b = sample_backend::spawn(any_addr(), "b").await.unwrap();
    let gw = Gateway::start(cfg(b.local_addr())).await.unwrap();
    let url = format!("http://{}/upload", gw.local_addr());
    let c = chunk_client();
    // Exactly the limit (above the 64 KiB replay limit), then a tiny one.
    for size in [LIMIT as usize, 10] {
        let (tx, req) = chunked_post(&url);
        tokio::spawn(async move {
            let mut left = size;
            while left > 0 {
                let k = left.min(100_000);
                let _ = tx.send(Bytes::from(vec![b'y'; k])).await;
                left -= k;
            }
        });
        let r = tokio::time::timeout(Duration::from_secs(20), c.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-body-bytes"], size.to_string().as_str());
    }
    gw.shutdown().await;
}
