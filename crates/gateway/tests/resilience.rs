//! Failure handling with real backends: killed processes, hanging servers,
//! failover to backup pools, retry budgets, overload, live reconfiguration,
//! circuit breaking and graceful draining.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gateway::sample_backend::{self, SampleBackendOptions};
use gateway::{Gateway, GatewayHandle};

/// Re-executed as a separate backend process by `ProcBackend`.
#[test]
fn backend_process_entry() {
    common::backend_process_entry();
}

fn endpoint_json(gw: &GatewayHandle, pool: &str, addr: std::net::SocketAddr) -> serde_json::Value {
    let j = gw.pools_json();
    j["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .and_then(|p| {
            p["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["address"] == addr.to_string())
                .cloned()
        })
        .unwrap_or(serde_json::Value::Null)
}

async fn wait_available(
    gw: &GatewayHandle,
    pool: &str,
    addr: std::net::SocketAddr,
    want: bool,
    t: Duration,
) {
    let gw = gw.clone();
    let pool = pool.to_string();
    wait_until(t, &format!("{addr} available={want}"), || {
        let (gw, pool) = (gw.clone(), pool.clone());
        async move { endpoint_json(&gw, &pool, addr)["available"] == want }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_three_backends_under_load() {
    let addrs = [free_addr(), free_addr(), free_addr()];
    let mut bs = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        bs.push(ProcBackend::start(*a, &format!("b{i}")).await);
    }
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "p"
endpoints = {}
health_check = {{ interval_ms = 300, timeout_ms = 200, rise = 2, fall = 3, jitter_percent = 0 }}
outlier_detection = {{ consecutive_connect_failures = 1, max_ejection_percent = 50, base_ejection_ms = 60000 }}
[[routes]]
pool = "p"
"#,
        endpoints_toml(&addrs)
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let load = Load::start(format!("http://{}/", gw.local_addr()), 4);
    load.wait_more(200).await;
    bs[1].kill().await;
    wait_available(&gw, "p", addrs[1], false, Duration::from_secs(5)).await;
    let ep = endpoint_json(&gw, "p", addrs[1]);
    assert_eq!(
        ep["ejections"], 1,
        "ejected by its first connect failure: {ep}"
    );
    let m = gw.metrics_text();
    let failed = metric_sum(
        &m,
        "gateway_upstream_requests_total",
        &[&addrs[1].to_string(), "connect_error"],
    ) + metric_sum(
        &m,
        "gateway_upstream_requests_total",
        &[&addrs[1].to_string(), "reset"],
    );
    // At most one failure per concurrent client raced the ejection.
    assert!(
        (1.0..=4.0).contains(&failed),
        "failed tries before ejection: {failed}\n{m}"
    );
    load.wait_more(200).await;
    let before = load.served_by("b1");
    // Bring it back: re-admitted after `rise` good health checks.
    bs[1] = ProcBackend::start(addrs[1], "b1").await;
    wait_available(&gw, "p", addrs[1], true, Duration::from_secs(5)).await;
    let l = &load;
    wait_until(Duration::from_secs(10), "b1 serves again", || async move {
        l.served_by("b1") > before + 10
    })
    .await;
    let errors = load.finish().await;
    assert!(
        errors.is_empty(),
        "client-visible errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn hanging_backend_per_try_timeout_and_retry() {
    let mut o = SampleBackendOptions::new("hang");
    o.hang = true;
    let hang = sample_backend::spawn_with(any_addr(), o).await.unwrap();
    let good = sample_backend::spawn(any_addr(), "good").await.unwrap();
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "p"
endpoints = {}
[[routes]]
pool = "p"
timeout_ms = 5000
retry = {{ per_try_timeout_ms = 150, max_retries = 2 }}
"#,
        endpoints_toml(&[hang.local_addr(), good.local_addr()])
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let url = format!("http://{}/", gw.local_addr());
    let t0 = Instant::now();
    let m = distribution(&c, &url, 30).await;
    assert_eq!(m.get("good"), Some(&30), "{m:?}");
    assert!(hang.requests() >= 1, "the hanging backend was tried");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let mt = gw.metrics_text();
    assert!(
        metric_sum(
            &mt,
            "gateway_upstream_requests_total",
            &[&hang.local_addr().to_string(), "timeout"]
        ) >= 1.0
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_pool_failover_and_failback() {
    let pa = [free_addr(), free_addr()];
    let p0 = sample_backend::spawn(pa[0], "primary0").await.unwrap();
    let p1 = sample_backend::spawn(pa[1], "primary1").await.unwrap();
    let backup = sample_backend::spawn(any_addr(), "backup").await.unwrap();
    let interval = 200u64;
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "main"
endpoints = {}
backups = ["spare"]
health_check = {{ interval_ms = {interval}, timeout_ms = 100, rise = 1, fall = 1, jitter_percent = 0 }}
outlier_detection = {{ max_ejection_percent = 100 }}
[[pools]]
name = "spare"
endpoints = ["{}"]
[[routes]]
pool = "main"
"#,
        endpoints_toml(&pa),
        backup.local_addr()
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let load = Load::start(format!("http://{}/", gw.local_addr()), 2);
    load.wait_more(100).await;
    assert_eq!(load.served_by("backup"), 0);
    let t_down = Instant::now();
    p0.stop().await;
    p1.stop().await;
    let l = &load;
    wait_until(Duration::from_secs(5), "backup serves", || async move {
        l.served_by("backup") > 0
    })
    .await;
    let switch = t_down.elapsed();
    assert!(
        switch < Duration::from_millis(interval + 100),
        "moved to backup after {switch:?}"
    );
    load.wait_more(100).await;
    // Recovery: fail back to the primaries.
    let _p0 = sample_backend::spawn(pa[0], "primary0").await.unwrap();
    let _p1 = sample_backend::spawn(pa[1], "primary1").await.unwrap();
    wait_available(&gw, "main", pa[0], true, Duration::from_secs(5)).await;
    wait_available(&gw, "main", pa[1], true, Duration::from_secs(5)).await;
    let b = load.served_by("backup");
    load.wait_more(100).await;
    let b2 = load.served_by("backup");
    assert!(
        b2 - b <= 2,
        "failed back to primaries (backup served {} more)",
        b2 - b
    );
    let errors = load.finish().await;
    assert!(
        errors.is_empty(),
        "client-visible errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn retries_stay_within_budget_on_503() {
    let mut o = SampleBackendOptions::new("bad");
    o.status = 503;
    let b0 = sample_backend::spawn_with(any_addr(), o.clone())
        .await
        .unwrap();
    let b1 = sample_backend::spawn_with(any_addr(), o).await.unwrap();
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "p"
endpoints = {}
outlier_detection = {{ enabled = false }}
retry_budget = {{ ratio = 0.1, min_retries_per_s = 0, window_ms = 60000 }}
[[routes]]
pool = "p"
retry = {{ max_retries = 2, backoff_base_ms = 0, backoff_max_ms = 0 }}
"#,
        endpoints_toml(&[b0.local_addr(), b1.local_addr()])
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let url = format!("http://{}/", gw.local_addr());
    let n = 200u64;
    for _ in 0..n {
        let r = get(&c, &url).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "bad");
    }
    let m = gw.metrics_text();
    let retries = metric_sum(&m, "gateway_retries_total", &[]) as u64;
    let exhausted = metric_sum(&m, "gateway_retry_budget_exhausted_total", &[]) as u64;
    let upstream = b0.requests() + b1.requests();
    eprintln!(
        "requests {n}, retries {retries}, budget exhausted {exhausted}, upstream tries {upstream}"
    );
    assert!(retries <= n / 10, "retries {retries} exceed 10% budget");
    assert!(retries >= n / 10 - 2, "budget was used: {retries}");
    assert_eq!(upstream, n + retries, "every retry reached a backend once");
    assert!(
        exhausted >= n - retries,
        "denied retries counted: {exhausted}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn overload_limits_hold_with_fast_503_and_rate_limit() {
    let b = sample_backend::spawn(any_addr(), "slow").await.unwrap();
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "p"
endpoints = ["{}"]
max_concurrent_requests = 4
max_pending_requests = 0
[[routes]]
path_prefix = "/limited"
pool = "p"
rate_limit = {{ requests_per_s = 0.5, burst = 3 }}
[[routes]]
pool = "p"
"#,
        b.local_addr()
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let url = format!("http://{}/?sleep_ms=1000", gw.local_addr());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, url) = (client(), url.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = get(&c, &url).await.unwrap();
            (r, t.elapsed())
        }));
    }
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        let (r, el) = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                rejected += 1;
                assert!(el < Duration::from_millis(500), "503 was not fast: {el:?}");
                assert_eq!(r.headers.get("retry-after").unwrap(), "1");
                assert!(r.body.contains("overloaded"), "{}", r.body);
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, rejected), (4, 16));
    assert_eq!(b.requests(), 4, "backend never saw more than the limit");
    // Rate limit: burst 3 then 429.
    let c = client();
    let lim = format!("http://{}/limited", gw.local_addr());
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&c, &lim).await.unwrap().status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reconfiguration_add_and_remove_under_load() {
    let b: Vec<_> = [
        sample_backend::spawn(any_addr(), "b0").await.unwrap(),
        sample_backend::spawn(any_addr(), "b1").await.unwrap(),
        sample_backend::spawn(any_addr(), "b2").await.unwrap(),
    ]
    .into();
    let mk = |idx: &[usize]| {
        let addrs: Vec<_> = idx.iter().map(|i| b[*i].local_addr()).collect();
        config_with(&format!(
            "[[pools]]\nname = \"p\"\nendpoints = {}\n[[routes]]\npool = \"p\"\n",
            endpoints_toml(&addrs)
        ))
    };
    let gw = Gateway::start(mk(&[0, 1])).await.unwrap();
    let load = Load::start(format!("http://{}/", gw.local_addr()), 4);
    load.wait_more(100).await;
    gw.apply_config(mk(&[0, 1, 2])).unwrap();
    let l = &load;
    wait_until(Duration::from_secs(5), "b2 gets traffic", || async move {
        l.served_by("b2") > 20
    })
    .await;
    // An invalid configuration is rejected and the one in force stays.
    let mut bad = mk(&[0, 1, 2]);
    bad.routes[0].pool = "nope".into();
    let e = gw.apply_config(bad).unwrap_err().to_string();
    assert!(
        e.contains("routes[0].pool") && e.contains("unknown pool"),
        "{e}"
    );
    gw.apply_config(mk(&[1, 2])).unwrap();
    load.wait_more(50).await;
    let b0_after_removal = load.served_by("b0");
    load.wait_more(200).await;
    assert_eq!(
        load.served_by("b0"),
        b0_after_removal,
        "removed endpoint gets no new requests"
    );
    let errors = load.finish().await;
    assert!(
        errors.is_empty(),
        "client-visible errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_eq!(gw.config().pools[0].endpoints.len(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn circuit_breaker_opens_and_rejects() {
    let mut o = SampleBackendOptions::new("bad");
    o.status = 500;
    let b = sample_backend::spawn_with(any_addr(), o).await.unwrap();
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "p"
endpoints = ["{}"]
outlier_detection = {{ enabled = false }}
circuit_breaker = {{ consecutive_failures = 3, open_ms = 60000 }}
[[routes]]
pool = "p"
"#,
        b.local_addr()
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let c = client();
    let url = format!("http://{}/", gw.local_addr());
    for _ in 0..3 {
        assert_eq!(get(&c, &url).await.unwrap().status, 500);
    }
    let r = get(&c, &url).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body.contains("circuit breaker open"));
    assert_eq!(b.requests(), 3);
    assert_eq!(
        metric_sum(&gw.metrics_text(), "gateway_breaker_rejections_total", &[]),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let b = sample_backend::spawn(any_addr(), "b").await.unwrap();
    let cfg = config_with(&format!(
        "[[pools]]\nname = \"p\"\nendpoints = [\"{}\"]\n[[routes]]\npool = \"p\"\n",
        b.local_addr()
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let addr = gw.local_addr();
    let c = client();
    let url = format!("http://{addr}/?sleep_ms=700");
    let inflight = tokio::spawn(async move { get(&c, &url).await });
    let g = gw.clone();
    wait_until(Duration::from_secs(5), "request in flight", || {
        let g = g.clone();
        async move { g.pools_json()["pools"][0]["in_flight"] == 1 }
    })
    .await;
    gw.shutdown().await;
    let r = inflight.await.unwrap().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "b"));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
