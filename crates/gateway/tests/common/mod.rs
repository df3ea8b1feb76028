//! Shared helpers for the gateway integration tests: real backends (in-process
//! sample backends or separate killable processes), an HTTP client, and
//! deadline-bounded polling.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

/// A free port on 127.0.0.1 (bind :0, read, release).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Poll `f` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() > end {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Response summary.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: String,
    pub headers: http::HeaderMap,
}

pub async fn get(c: &HttpClient, url: &str) -> Result<Resp, String> {
    get_with(c, url, &[]).await
}

pub async fn get_with(c: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn send(c: &HttpClient, req: http::Request<Full<Bytes>>) -> Result<Resp, String> {
    let r = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .map_err(|_| "client timeout".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        body: String::from_utf8_lossy(&body).trim().to_string(),
        headers,
    })
}

/// Gateway config TOML with one http listener on port 0 and the given pool sections.
pub fn config_with(pools_and_routes: &str) -> gateway::Config {
    let t = format!(
        r#"
drain_timeout_ms = 5000
[[listeners]]
name = "web"
address = "127.0.0.1:0"
header_read_timeout_ms = 1000
{pools_and_routes}
"#
    );
    gateway::Config::from_toml_str(&t).unwrap_or_else(|e| panic!("{e}\n{t}"))
}

pub fn endpoints_toml(addrs: &[SocketAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", v.join(", "))
}

/// Backend in a separate process (this test binary re-executed), killable with SIGKILL.
pub struct ProcBackend {
    pub addr: SocketAddr,
    pub name: String,
    child: Option<Child>,
}

impl ProcBackend {
    pub async fn start(addr: SocketAddr, name: &str) -> ProcBackend {
        let exe = std::env::current_exe().unwrap();
        let child = Command::new(exe)
            .args([
                "--exact",
                "backend_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PHALANX_TEST_BACKEND_ADDR", addr.to_string())
            .env("PHALANX_TEST_BACKEND_NAME", name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = ProcBackend {
            addr,
            name: name.to_string(),
            child: Some(child),
        };
        wait_until(
            Duration::from_secs(20),
            "backend process listening",
            || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await;
        b
    }

    /// SIGKILL the process and wait until the port refuses connections.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let addr = self.addr;
        wait_until(
            Duration::from_secs(10),
            "backend port closed",
            || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
        )
        .await;
    }
}

impl Drop for ProcBackend {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Body of the `backend_process_entry` test: when re-executed as a backend,
/// serve forever; otherwise return at once.
pub fn backend_process_entry() {
    let (Ok(addr), Ok(name)) = (
        std::env::var("PHALANX_TEST_BACKEND_ADDR"),
        std::env::var("PHALANX_TEST_BACKEND_NAME"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let _b = gateway::sample_backend::spawn(addr.parse().unwrap(), &name)
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });
}

/// Count responses by body over `n` sequential GETs.
pub async fn distribution(
    c: &HttpClient,
    url: &str,
    n: usize,
) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for _ in 0..n {
        let r = get(c, url).await.expect("request failed");
        assert_eq!(r.status, 200, "{r:?}");
        *m.entry(r.body).or_insert(0) += 1;
    }
    m
}

/// Read a counter/gauge value (sum over series whose line contains all `filters`).
pub fn metric_sum(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Closed-loop GET load from `workers` clients; counts answers by backend
/// name (the sample backends answer with their name) and records failures.
pub struct Load {
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub by_backend: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: String, workers: usize) -> Load {
        use std::sync::atomic::Ordering;
        let l = Load {
            stop: Default::default(),
            ok: Default::default(),
            errors: Default::default(),
            by_backend: Default::default(),
            tasks: Vec::new(),
        };
        let c = client();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, ok, errors, by, c, url) = (
                    l.stop.clone(),
                    l.ok.clone(),
                    l.errors.clone(),
                    l.by_backend.clone(),
                    c.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match get(&c, &url).await {
                            Ok(r) if r.status == 200 => {
                                *by.lock().unwrap().entry(r.body).or_insert(0) += 1;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => errors
                                .lock()
                                .unwrap()
                                .push(format!("status {} {}", r.status, r.body)),
                            Err(e) => errors.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load { tasks, ..l }
    }

    /// Successful answers so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Successful answers from backend `b` so far.
    pub fn served_by(&self, b: &str) -> u64 {
        *self.by_backend.lock().unwrap().get(b).unwrap_or(&0)
    }

    /// Answers per backend so far.
    pub fn snapshot(&self) -> std::collections::HashMap<String, u64> {
        self.by_backend.lock().unwrap().clone()
    }

    /// Wait (bounded) until `n` more requests have succeeded.
    pub async fn wait_more(&self, n: u64) {
        let target = self.ok() + n;
        let ok = self.ok.clone();
        wait_until(Duration::from_secs(30), "load progress", || {
            let ok = ok.clone();
            async move { ok.load(std::sync::atomic::Ordering::Relaxed) >= target }
        })
        .await;
    }

    /// Answers per backend over the next `n` successful requests.
    pub async fn window(&self, n: u64) -> std::collections::HashMap<String, u64> {
        let before = self.snapshot();
        self.wait_more(n).await;
        let mut d = self.snapshot();
        for (k, v) in d.iter_mut() {
            *v -= before.get(k).copied().unwrap_or(0);
        }
        d
    }

    /// Stop the clients; every failure they saw.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let e = self.errors.lock().unwrap().clone();
        e
    }
}
