//! Protection from failing third-party providers, end to end through a
//! gateway in this process and real TCP backends: stale-if-error and
//! stale-while-revalidate caching, a fallback provider with its own Host
//! and path prefix, hedged requests bounded by the retry budget, and
//! per-provider bulkheads. Waits are deadlines on conditions, not sleeps.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use gateway::sample_backend::{self, SampleBackendOptions};
use gateway::Gateway;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A provider backend under the test's control: answers `<name> <n> <path>`
/// (n = its request count) with the configured `Cache-Control` and status,
/// and records the Host and path of every request.
struct Provider {
    addr: SocketAddr,
    st: Arc<ProviderState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProviderState {
    name: String,
    cache_control: Mutex<String>,
    status: AtomicU16,
    delay_ms: AtomicU64,
    requests: AtomicU64,
    seen: Mutex<Vec<(String, String)>>,
    stopped: AtomicBool,
}

impl Provider {
    async fn start(name: &str, cache_control: &str) -> Provider {
        let l = tokio::net::TcpListener::bind(any_addr()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let st = Arc::new(ProviderState {
            name: name.into(),
            cache_control: Mutex::new(cache_control.into()),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let s2 = st.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in this set: aborting the accept task
            // drops the set, which closes every open connection (a dead
            // provider, not one that keeps answering on kept-alive
            // connections).
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let st = s2.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| answer(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Provider { addr, st, task }
    }

    fn requests(&self) -> u64 {
        self.st.requests.load(Ordering::SeqCst)
    }

    /// Stop listening and close every connection; returns once the port
    /// refuses connections.
    async fn kill(&self) {
        self.st.stopped.store(true, Ordering::SeqCst);
        self.task.abort();
        let addr = self.addr;
        wait_until(
            Duration::from_secs(10),
            "provider port closed",
            || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
        )
        .await;
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    st: Arc<ProviderState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = st.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    st.seen.lock().unwrap().push((host, path.clone()));
    let d = st.delay_ms.load(Ordering::SeqCst);
    if d > 0 {
        tokio::time::sleep(Duration::from_millis(d)).await;
    }
    let mut r = Response::new(Full::new(Bytes::from(format!("{} {n} {path}", st.name))));
    *r.status_mut() = http::StatusCode::from_u16(st.status.load(Ordering::SeqCst)).unwrap();
    let cc = st.cache_control.lock().unwrap().clone();
    if !cc.is_empty() {
        r.headers_mut().insert("cache-control", cc.parse().unwrap());
    }
    Ok(r)
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn stale_if_error_serves_the_last_good_response_until_it_expires_then_the_error() {
    // The provider allows 1 s of freshness and 2 s of stale-if-error; the
    // route's default (60 s) must not override what the provider said.
    let p = Provider::start("provider", "max-age=1, stale-if-error=2").await;
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "provider"
endpoints = ["{}"]
[[routes]]
pool = "provider"
retry = {{ max_retries = 1 }}
cache = {{ default_stale_if_error_ms = 60000 }}
"#,
        p.addr
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let url = format!("http://{}/quote?sym=PHX", gw.local_addr());

    let first = get(&c, &url).await.unwrap();
    let stored_at = Instant::now();
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "provider 1 /quote?sym=PHX");
    assert!(
        header(&first, "cache-status").contains("fwd=uri-miss"),
        "{first:?}"
    );
    // Inside max-age: answered from the cache, the provider sees nothing.
    let hit = get(&c, &url).await.unwrap();
    assert_eq!(
        (hit.status, hit.body.as_str()),
        (200, "provider 1 /quote?sym=PHX")
    );
    assert!(header(&hit, "cache-status").contains("hit"), "{hit:?}");
    assert_eq!(p.requests(), 1);

    p.kill().await;
    // Until age 3 s (max-age 1 + stale-if-error 2) every answer is the
    // stale copy, marked as such; then the error itself.
    let mut stale_answers = 0;
    let mut last_age = 0;
    let error = loop {
        let r = get(&c, &url).await.unwrap();
        let age_ms = stored_at.elapsed().as_millis();
        if r.status != 200 {
            break (r, age_ms);
        }
        assert!(
            age_ms < 3_500,
            "stale copy served past stale-if-error: {age_ms} ms"
        );
        assert_eq!(r.body, "provider 1 /quote?sym=PHX");
        let cs = header(&r, "cache-status");
        if cs.contains("fwd=stale") {
            stale_answers += 1;
            assert!(cs.contains("detail=stale-if-error"), "{cs}");
            assert!(cs.contains("fwd-status=503"), "{cs}");
            let warnings: Vec<_> = r.headers.get_all("warning").iter().collect();
            assert!(
                warnings
                    .iter()
                    .any(|w| w.to_str().unwrap().starts_with("111 ")),
                "{warnings:?}"
            );
            let age: u64 = header(&r, "age").parse().unwrap();
            assert!(age >= last_age && age <= 3, "age {age}");
            last_age = age;
        } else {
            // Still fresh (within max-age): a plain hit.
            assert!(cs.contains("hit"), "{r:?}");
        }
        assert!(
            Instant::now() < stored_at + Duration::from_secs(10),
            "never turned into an error"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (err, age_ms) = error;
    assert!(age_ms >= 2_900, "error after only {age_ms} ms");
    assert_eq!(err.status, 503, "{err:?}");
    assert!(err.headers.get("warning").is_none());
    assert!(stale_answers >= 5, "{stale_answers} stale answers");
    let m = gw.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "gateway_cache_requests_total",
            &["class=\"stale_if_error\""]
        ),
        stale_answers as f64
    );
    assert_eq!(metric_sum(&m, "gateway_cache_stores_total", &[]), 1.0);
    println!(
        "stale-if-error: {stale_answers} stale answers, then {} after {age_ms} ms",
        err.status
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_with_one_refresh_in_flight() {
    let p = Provider::start("provider", "max-age=1, stale-while-revalidate=60").await;
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "provider"
endpoints = ["{}"]
[[routes]]
pool = "provider"
cache = {{ max_cache_entries = 10 }}
"#,
        p.addr
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let url = format!("http://{}/list", gw.local_addr());
    assert_eq!(get(&c, &url).await.unwrap().body, "provider 1 /list");
    // The provider turns slow; once the copy is stale, answers still come
    // at once, from the copy, while one background request refreshes it.
    p.st.delay_ms.store(800, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stale = loop {
        let r = get(&c, &url).await.unwrap();
        if header(&r, "cache-status").contains("stale-while-revalidate") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the copy never turned stale: {r:?}"
        );
        assert_eq!(p.requests(), 1, "fresh copies are answered from the cache");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stale.body, "provider 1 /list");
    assert!(stale
        .headers
        .get_all("warning")
        .iter()
        .any(|w| w.to_str().unwrap().starts_with("110 ")));
    let t0 = Instant::now();
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &url).await.unwrap() })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap().body, "provider 1 /list");
    }
    let burst_ms = t0.elapsed().as_millis();
    assert!(
        burst_ms < 700,
        "stale answers waited for the provider: {burst_ms} ms"
    );
    // Exactly one refresh went out for the key, whatever the burst.
    wait_until(Duration::from_secs(10), "refreshed copy", || {
        let (c, url) = (c.clone(), url.clone());
        async move { get(&c, &url).await.unwrap().body == "provider 2 /list" }
    })
    .await;
    assert_eq!(p.requests(), 2, "one refresh per key in flight");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_fallback_provider_gets_its_own_host_and_path_prefix_when_the_primary_fails() {
    let primary = Provider::start("primary", "").await;
    primary.st.status.store(500, Ordering::SeqCst);
    let fallback = Provider::start("fallback", "").await;
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "primary"
endpoints = ["{}"]
backups = ["fallback"]
outlier_detection = {{ enabled = false }}
circuit_breaker = {{ consecutive_failures = 3, open_ms = 60000 }}
[[pools]]
name = "fallback"
endpoints = ["{}"]
host_header = "api.fallback.example"
upstream_path_prefix = "/compat/v2"
[[routes]]
pool = "primary"
retry = {{ retry_on_status = [500, 502, 503, 504] }}
"#,
        primary.addr, fallback.addr
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let url = format!("http://{}/rates?cur=EUR", gw.local_addr());
    for i in 0..20 {
        let r = get_with(&c, &url, &[("host", "api.primary.example")])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(r.body.starts_with("fallback "), "{r:?}");
        assert!(r.body.ends_with(" /compat/v2/rates?cur=EUR"), "{r:?}");
    }
    // The primary saw its own Host and path; after 3 failures its breaker
    // opened and requests went straight to the fallback.
    assert_eq!(primary.requests(), 3);
    for (host, path) in primary.st.seen.lock().unwrap().iter() {
        assert_eq!(
            (host.as_str(), path.as_str()),
            ("api.primary.example", "/rates?cur=EUR")
        );
    }
    let seen = fallback.st.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    for (host, path) in &seen {
        assert_eq!(
            (host.as_str(), path.as_str()),
            ("api.fallback.example", "/compat/v2/rates?cur=EUR")
        );
    }
    let m = gw.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "gateway_fallback_responses_total",
            &["pool=\"primary\"", "backup=\"fallback\""]
        ),
        20.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "gateway_breaker_rejections_total",
            &["pool=\"primary\""]
        ),
        17.0
    );
    assert_eq!(
        metric_sum(&m, "gateway_pool_available", &["pool=\"primary\""]),
        0.0
    );
    assert_eq!(
        metric_sum(&m, "gateway_pool_available", &["pool=\"fallback\""]),
        1.0
    );

    // A primary that dies (connect failures, no breaker involved) also
    // hands over to the fallback, with no client error.
    let dead = Provider::start("dead", "").await;
    let fb2 = Provider::start("fallback2", "").await;
    dead.kill().await;
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "dead"
endpoints = ["{}"]
backups = ["fallback2"]
[[pools]]
name = "fallback2"
endpoints = ["{}"]
host_header = "fallback2.example:8443"
[[routes]]
pool = "dead"
"#,
        dead.addr, fb2.addr
    ));
    gw.apply_config(cfg).unwrap();
    for _ in 0..10 {
        let r = get(&c, &url).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.starts_with("fallback2 "), "{r:?}");
    }
    assert!(fb2
        .st
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|(h, p)| h == "fallback2.example:8443" && p == "/rates?cur=EUR"));
    gw.shutdown().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `n` sequential GETs; their latencies, sorted.
async fn timed_gets(c: &HttpClient, url: &str, n: usize) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let r = get(c, url).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        lat.push(t0.elapsed());
    }
    lat.sort();
    lat
}

#[tokio::test]
async fn hedging_brings_p99_near_the_fast_endpoint_within_the_retry_budget() {
    let mut slow = SampleBackendOptions::new("slow");
    slow.delay_ms = 300;
    let slow = sample_backend::spawn_with(any_addr(), slow).await.unwrap();
    let fast = sample_backend::spawn(any_addr(), "fast").await.unwrap();
    let pools = |ratio: f64| {
        format!(
            r#"
[[pools]]
name = "p"
endpoints = ["{}", "{}"]
outlier_detection = {{ enabled = false }}
retry_budget = {{ ratio = {ratio}, min_retries_per_s = 0, window_ms = 60000 }}
[[routes]]
pool = "p"
hedge = {{ after_ms = 25 }}
"#,
            slow.local_addr(),
            fast.local_addr()
        )
    };
    let c = client();
    // The fast endpoint on its own, without the gateway.
    let direct = timed_gets(&c, &format!("http://{}/", fast.local_addr()), 50).await;
    let fast_p99 = percentile(&direct, 99.0);
    let gw = Gateway::start(config_with(&pools(1.0))).await.unwrap();
    let url = format!("http://{}/", gw.local_addr());
    let n = 100;
    let lat = timed_gets(&c, &url, n).await;
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    let m = gw.metrics_text();
    let sent = metric_sum(&m, "gateway_hedges_total", &["class=\"sent\""]);
    let won = metric_sum(&m, "gateway_hedges_total", &["class=\"won\""]);
    println!(
        "hedged, budget ratio 1.0: p50 {p50:?}, p99 {p99:?} (fast endpoint alone: p99 \
         {fast_p99:?}), hedges sent {sent}, won {won}"
    );
    // Round robin puts first tries on the slow endpoint (300 ms): without
    // hedging p99 would be ≥ 300 ms. Each of those is hedged after 25 ms
    // to the fast one, which wins.
    assert!(p99 < Duration::from_millis(200), "p99 {p99:?}");
    // Close to the fast endpoint's: the hedge delay (25 ms) plus scheduling.
    assert!(
        p99 < fast_p99 + Duration::from_millis(150),
        "p99 {p99:?}, fast {fast_p99:?}"
    );
    assert!(sent >= 40.0, "hedges sent {sent}");
    assert_eq!(won, sent, "the fast endpoint always answers first");
    // The budget: ratio × requests in the window (1.0 × 100).
    assert!(sent <= n as f64, "hedges sent {sent}");
    gw.shutdown().await;

    // A tight budget (10 % of the requests) bounds the hedges; the others
    // are denied and those requests wait for the slow endpoint.
    let gw = Gateway::start(config_with(&pools(0.1))).await.unwrap();
    let url = format!("http://{}/", gw.local_addr());
    let n = 30;
    let lat = timed_gets(&c, &url, n).await;
    let m = gw.metrics_text();
    let sent = metric_sum(&m, "gateway_hedges_total", &["class=\"sent\""]);
    let denied = metric_sum(&m, "gateway_hedges_total", &["class=\"denied\""]);
    println!(
        "hedged, budget ratio 0.1: p99 {:?}, hedges sent {sent}, denied {denied}",
        percentile(&lat, 99.0)
    );
    assert!(sent <= 0.1 * n as f64, "sent {sent}");
    assert!(sent >= 1.0, "sent {sent}");
    assert!(denied >= 10.0, "denied {denied}");
    assert_eq!(
        metric_sum(&m, "gateway_retries_total", &[]),
        0.0,
        "hedges are not retries"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn hedging_on_a_latency_percentile_learns_the_delay() {
    let mut slow = SampleBackendOptions::new("slow");
    slow.delay_ms = 600;
    let slow = sample_backend::spawn_with(any_addr(), slow).await.unwrap();
    let fast = sample_backend::spawn(any_addr(), "fast").await.unwrap();
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "p"
endpoints = ["{}", "{}"]
outlier_detection = {{ enabled = false }}
retry_budget = {{ ratio = 1.0, min_retries_per_s = 0 }}
[[routes]]
pool = "p"
hedge = {{ percentile = 90.0, min_samples = 10, after_ms = 100, min_delay_ms = 5 }}
"#,
        slow.local_addr(),
        fast.local_addr()
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let url = format!("http://{}/", gw.local_addr());
    let lat = timed_gets(&c, &url, 100).await;
    let p99 = percentile(&lat, 99.0);
    let sent = metric_sum(
        &gw.metrics_text(),
        "gateway_hedges_total",
        &["class=\"sent\""],
    );
    println!("percentile hedging: p99 {p99:?}, hedges sent {sent}");
    // Completed tries are fast ones (the slow ones lose and are cancelled),
    // so p90 is a few ms: slow first tries are hedged early.
    assert!(p99 < Duration::from_millis(300), "p99 {p99:?}");
    assert!(sent >= 40.0, "sent {sent}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_hung_provider_is_held_by_its_bulkhead_and_other_routes_stay_fast() {
    let mut h = SampleBackendOptions::new("hung");
    h.hang = true;
    let hung = sample_backend::spawn_with(any_addr(), h).await.unwrap();
    let ok = sample_backend::spawn(any_addr(), "ok").await.unwrap();
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "hung"
endpoints = ["{}"]
max_concurrent_requests = 4
max_pending_requests = 0
outlier_detection = {{ enabled = false }}
[[pools]]
name = "ok"
endpoints = ["{}"]
[[routes]]
path_prefix = "/hung"
pool = "hung"
timeout_ms = 3000
retry = {{ max_retries = 0 }}
[[routes]]
pool = "ok"
"#,
        hung.local_addr(),
        ok.local_addr()
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let base = format!("http://{}", gw.local_addr());
    // Baseline latency of the healthy route.
    let before = timed_gets(&c, &format!("{base}/ok"), 50).await;
    // 4 requests fill the hung provider's bulkhead...
    let hung_reqs: Vec<_> = (0..4)
        .map(|_| {
            let (c, u) = (c.clone(), format!("{base}/hung"));
            tokio::spawn(async move { get(&c, &u).await.unwrap() })
        })
        .collect();
    let g = gw.clone();
    wait_until(Duration::from_secs(5), "bulkhead full", || {
        let g = g.clone();
        async move {
            metric_sum(
                &g.metrics_text(),
                "gateway_pool_in_flight_requests",
                &["pool=\"hung\""],
            ) == 4.0
        }
    })
    .await;
    // ...further ones are refused at once with 503 + Retry-After, while the
    // other route goes on answering every request, as fast as before.
    let extra: Vec<_> = (0..30)
        .map(|_| {
            let (c, u) = (c.clone(), format!("{base}/hung"));
            tokio::spawn(async move {
                let t0 = Instant::now();
                (get(&c, &u).await.unwrap(), t0.elapsed())
            })
        })
        .collect();
    let during = timed_gets(&c, &format!("{base}/ok"), 200).await;
    for e in extra {
        let (r, took) = e.await.unwrap();
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(header(&r, "retry-after"), "1");
        assert!(took < Duration::from_millis(1_000), "refusal took {took:?}");
    }
    let (p99_before, p99_during) = (percentile(&before, 99.0), percentile(&during, 99.0));
    println!("bulkhead: other route p99 {p99_before:?} before, {p99_during:?} with the hung provider full");
    assert!(
        p99_during < Duration::from_millis(250),
        "other route slowed down: p99 {p99_during:?}"
    );
    let m = gw.metrics_text();
    assert_eq!(
        metric_sum(
            &m,
            "gateway_overload_rejections_total",
            &["pool=\"hung\"", "class=\"concurrency\""]
        ),
        30.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "gateway_pool_max_concurrent_requests",
            &["pool=\"hung\""]
        ),
        4.0
    );
    for r in hung_reqs {
        assert_eq!(r.await.unwrap().status, 504);
    }
    gw.shutdown().await;
}

#[test]
fn provider_protection_settings_are_validated_with_field_and_range() {
    let doc = |pool: &str, route: &str| {
        format!(
            r#"
[[listeners]]
name = "web"
address = "127.0.0.1:0"
[[pools]]
name = "api"
endpoints = ["127.0.0.1:9001"]
{pool}
[[routes]]
pool = "api"
{route}
"#
        )
    };
    let err = |pool: &str, route: &str| match gateway::Config::from_toml_str(&doc(pool, route)) {
        Ok(_) => panic!("accepted: {pool} {route}"),
        Err(e) => e.to_string(),
    };
    for (pool, route, parts) in [
        (
            "",
            "cache = { max_cache_bytes = 0 }",
            &[
                "routes[0].cache.max_cache_bytes",
                "between 1 and 17179869184",
                "got 0",
                "route to pool `api`",
            ][..],
        ),
        (
            "",
            "cache = { max_cache_entries = -1 }",
            &["routes[0].cache.max_cache_entries", "got -1"][..],
        ),
        (
            "",
            "cache = { max_cache_bytes = 1000, max_cacheable_body_bytes = 2000 }",
            &[
                "routes[0].cache.max_cacheable_body_bytes",
                "must be <= cache.max_cache_bytes (1000), got 2000",
            ][..],
        ),
        (
            "",
            "cache = { default_stale_if_error_ms = \"5m\" }",
            &[
                "routes[0].cache.default_stale_if_error_ms",
                "the string \"5m\"",
            ][..],
        ),
        (
            "",
            "hedge = { max_hedges_per_request = 5 }",
            &[
                "routes[0].hedge.max_hedges_per_request",
                "between 1 and 4",
                "got 5",
            ][..],
        ),
        (
            "",
            "hedge = { percentile = 100.0 }",
            &["routes[0].hedge.percentile", "between 0 and 99.9"][..],
        ),
        (
            "",
            "hedge = { after_ms = 0 }",
            &["routes[0].hedge.after_ms", "got 0"][..],
        ),
        (
            "",
            "hedge = { percentile = 95.0, window_samples = 10, min_samples = 20 }",
            &[
                "routes[0].hedge.min_samples",
                "must be <= hedge.window_samples (10), got 20",
            ][..],
        ),
        (
            "host_header = \"bad host/\"",
            "",
            &["pools[0].host_header", "is not a host name"][..],
        ),
        (
            "upstream_path_prefix = \"v2\"",
            "",
            &["pools[0].upstream_path_prefix", "must start with `/`"][..],
        ),
        (
            "upstream_path_prefix = \"/v2/\"",
            "",
            &["pools[0].upstream_path_prefix", "not end with `/`"][..],
        ),
        (
            "",
            "cache = { max_cache_size = 1 }",
            &["unknown field `max_cache_size`"][..],
        ),
    ] {
        let e = err(pool, route);
        for p in parts {
            assert!(e.contains(p), "expected `{p}` in: {e}");
        }
    }
    // The same checks for a configuration built in code.
    let mut c = gateway::Config::from_toml_str(&doc("", "hedge = {}\ncache = {}")).unwrap();
    c.routes[0].hedge.as_mut().unwrap().max_hedges_per_request = 0;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("routes[0].hedge.max_hedges_per_request"), "{e}");
    // Accepted and round-tripped through the TOML the admin endpoint shows.
    let ok = gateway::Config::from_toml_str(&doc(
        "host_header = \"api.example:8443\"\nupstream_path_prefix = \"/v2\"",
        "cache = { default_stale_while_revalidate_ms = 1000 }\nhedge = { percentile = 95.0 }",
    ))
    .unwrap();
    let back = gateway::Config::from_toml_str(&ok.to_toml_string()).unwrap();
    assert_eq!(back, ok);
}
