//! Priority-aware load shedding and zone-aware routing, with real TCP
//! backends (a slow in-process sample backend; backend processes killed
//! with SIGKILL and restarted for the zones).
//!
//! * `critical_traffic_survives_three_times_capacity`: a pool of 4
//!   concurrent requests in front of a 100 ms backend (capacity ≈ 40 req/s)
//!   is offered ≈ 120 req/s, open loop, by critical, default and sheddable
//!   clients; critical requests keep ≥ 99 % success while sheddable ones
//!   are refused with a fast 503 + Retry-After, counted per priority.
//! * `cpu_saturation_sheds_sheddable_first`: the CPU trigger refuses
//!   sheddable requests while critical ones pass.
//! * `zone_local_then_spill_then_failover_and_back`: a gateway in zone `a`
//!   with two endpoints in `a` and two in `b` keeps traffic in `a`, spills
//!   proportionally when one `a` endpoint dies, moves everything to `b`
//!   when both die (0 client errors), and moves back when they return.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gateway::sample_backend::{self, SampleBackendOptions};
use gateway::{Gateway, GatewayHandle};

/// Re-executed as a separate backend process by `ProcBackend`.
#[test]
fn backend_process_entry() {
    common::backend_process_entry();
}

/// One request's result as a client saw it.
#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    latency: Duration,
    retry_after: Option<String>,
}

/// Open-loop load: `rate_per_s` requests a second to `url` with `headers`
/// for `duration`, each on its own task (so a slow answer does not slow the
/// offered rate, as with real independent callers).
async fn open_loop(
    c: HttpClient,
    url: String,
    headers: Vec<(&'static str, &'static str)>,
    rate_per_s: u64,
    duration: Duration,
) -> Vec<Outcome> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate_per_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let (c, url, headers, out) = (c.clone(), url.clone(), headers.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = get_with(&c, &url, &headers).await;
            let o = match r {
                Ok(r) => Outcome {
                    status: r.status,
                    latency: t0.elapsed(),
                    retry_after: r
                        .headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                },
                Err(_) => Outcome {
                    status: 0,
                    latency: t0.elapsed(),
                    retry_after: None,
                },
            };
            out.lock().unwrap().push(o);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = out.lock().unwrap().clone();
    v
}

fn percentile_ms(mut v: Vec<Duration>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    let i = ((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

fn shed_count(gw: &GatewayHandle, priority: &str, reason: &str) -> f64 {
    let m = gw.metrics_text();
    let series = format!(
        "gateway_shed_requests_total{{pool=\"p\",priority=\"{priority}\",reason=\"{reason}\"}}"
    );
    m.lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_traffic_survives_three_times_capacity() {
    const SERVICE_MS: u64 = 100;
    const SLOTS: u64 = 4;
    let mut o = SampleBackendOptions::new("slow");
    o.delay_ms = SERVICE_MS;
    let backend = sample_backend::spawn_with(any_addr(), o).await.unwrap();
    // `/` trusts the priority header; `/bulk` is sheddable whatever the
    // client claims (its clients send `critical` to try to jump the queue).
    let toml = |bulk_priority: &str, trust: bool| {
        config_with(&format!(
            r#"
[[pools]]
name = "p"
endpoints = ["{}"]
max_concurrent_requests = {SLOTS}
max_pending_requests = 64
pending_timeout_ms = 2000
[[routes]]
path_prefix = "/bulk"
pool = "p"
priority = "{bulk_priority}"
[[routes]]
pool = "p"
trust_priority_header = {trust}
"#,
            backend.local_addr()
        ))
    };
    let capacity_per_s = SLOTS * 1000 / SERVICE_MS; // 40
    let (crit_rate, def_rate, shed_rate) = (20, 10, 90); // 120 = 3 × capacity
    let c = client();

    // Baseline: the same load with every request of default priority (the
    // header untrusted, `/bulk` not sheddable): one FIFO queue for all.
    let baseline = {
        let gw = Gateway::start(toml("default", false)).await.unwrap();
        let base = format!("http://{}", gw.local_addr());
        let run = Duration::from_secs(4);
        let crit = tokio::spawn(open_loop(
            c.clone(),
            format!("{base}/"),
            vec![("x-phalanx-priority", "critical")],
            crit_rate,
            run,
        ));
        let others = tokio::spawn(open_loop(
            c.clone(),
            format!("{base}/bulk"),
            vec![],
            def_rate + shed_rate,
            run,
        ));
        let (crit, _) = (crit.await.unwrap(), others.await.unwrap());
        gw.shutdown().await;
        crit
    };
    let baseline_ok = baseline.iter().filter(|o| o.status == 200).count();
    println!(
        "baseline without priorities: the would-be critical requests got {baseline_ok} ok of {} ({:.1} %)",
        baseline.len(),
        100.0 * baseline_ok as f64 / baseline.len().max(1) as f64
    );

    let gw = Gateway::start(toml("sheddable", true)).await.unwrap();
    let base = format!("http://{}", gw.local_addr());
    // Warm the connection pools so the first second is not all handshakes.
    for _ in 0..4 {
        get(&c, &format!("{base}/")).await.unwrap();
    }
    let run = Duration::from_secs(8);
    let crit = tokio::spawn(open_loop(
        c.clone(),
        format!("{base}/"),
        vec![("x-phalanx-priority", "critical")],
        crit_rate,
        run,
    ));
    let def = tokio::spawn(open_loop(
        c.clone(),
        format!("{base}/"),
        vec![],
        def_rate,
        run,
    ));
    let shed = tokio::spawn(open_loop(
        c.clone(),
        format!("{base}/bulk"),
        vec![("x-phalanx-priority", "critical")],
        shed_rate,
        run,
    ));
    let (crit, def, shed) = (crit.await.unwrap(), def.await.unwrap(), shed.await.unwrap());

    let ok = |v: &[Outcome]| v.iter().filter(|o| o.status == 200).count();
    let refused = |v: &[Outcome]| v.iter().filter(|o| o.status == 503).count();
    let pct = |n: usize, d: usize| 100.0 * n as f64 / d.max(1) as f64;
    let offered = crit.len() + def.len() + shed.len();
    println!(
        "offered {offered} requests in {:?} = {:.0} req/s against a capacity of {capacity_per_s} req/s ({:.1}x)",
        run,
        offered as f64 / run.as_secs_f64(),
        offered as f64 / run.as_secs_f64() / capacity_per_s as f64
    );
    for (name, v) in [("critical", &crit), ("default", &def), ("sheddable", &shed)] {
        let ok_lat: Vec<Duration> = v
            .iter()
            .filter(|o| o.status == 200)
            .map(|o| o.latency)
            .collect();
        let refused_lat: Vec<Duration> = v
            .iter()
            .filter(|o| o.status == 503)
            .map(|o| o.latency)
            .collect();
        println!(
            "{name:>9}: {} sent, {} ok ({:.2} %), {} refused 503 ({:.2} %), other {}; ok p50 {:.0} ms p99 {:.0} ms; refusal p50 {:.1} ms p99 {:.1} ms",
            v.len(),
            ok(v),
            pct(ok(v), v.len()),
            refused(v),
            pct(refused(v), v.len()),
            v.len() - ok(v) - refused(v),
            percentile_ms(ok_lat.clone(), 50.0),
            percentile_ms(ok_lat, 99.0),
            percentile_ms(refused_lat.clone(), 50.0),
            percentile_ms(refused_lat, 99.0),
        );
    }
    for p in ["critical", "default", "sheddable"] {
        println!(
            "gateway_shed_requests_total{{priority={p}}}: concurrency {} pending_timeout {} displaced {}",
            shed_count(&gw, p, "concurrency"),
            shed_count(&gw, p, "pending_timeout"),
            shed_count(&gw, p, "displaced")
        );
    }

    // Without priorities the same traffic fares much worse.
    assert!(
        pct(baseline_ok, baseline.len()) < 90.0,
        "the baseline was not overloaded: {baseline_ok} of {}",
        baseline.len()
    );
    assert!(
        pct(ok(&crit), crit.len()) >= 99.0,
        "critical success below 99 %: {} of {}",
        ok(&crit),
        crit.len()
    );
    assert!(
        pct(refused(&shed), shed.len()) >= 50.0,
        "sheddable requests were not shed: {} refused of {}",
        refused(&shed),
        shed.len()
    );
    // Shedding order: sheddable refused most, critical least.
    assert!(pct(refused(&shed), shed.len()) > pct(refused(&def), def.len()));
    assert!(pct(refused(&def), def.len()) >= pct(refused(&crit), crit.len()));
    // Every refusal is a 503 with Retry-After, and a fast one: sheddable
    // requests do not wait for a slot.
    for o in shed.iter().filter(|o| o.status == 503) {
        assert_eq!(o.retry_after.as_deref(), Some("1"), "{o:?}");
    }
    let refused_p99 = percentile_ms(
        shed.iter()
            .filter(|o| o.status == 503)
            .map(|o| o.latency)
            .collect(),
        99.0,
    );
    assert!(
        refused_p99 < SERVICE_MS as f64,
        "sheddable refusals p99 {refused_p99} ms"
    );
    // Counted per priority in the metrics (sheddable ones never wait, so
    // they are all refused at the concurrency limit).
    assert_eq!(
        shed_count(&gw, "sheddable", "concurrency") as usize,
        refused(&shed)
    );
    let crit_shed: f64 = ["concurrency", "pending_timeout", "displaced"]
        .iter()
        .map(|r| shed_count(&gw, "critical", r))
        .sum();
    assert_eq!(crit_shed as usize, refused(&crit));
    gw.shutdown().await;
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_saturation_sheds_sheddable_first() {
    let backend = sample_backend::spawn(any_addr(), "b").await.unwrap();
    // A threshold of 1 % of the CPUs: the busy thread below is above it.
    let cfg = config_with(&format!(
        r#"
[load_shedding]
cpu_shed_sheddable_percent = 1
cpu_sample_interval_ms = 10
cpu_window_ms = 200
retry_after_s = 3
[[pools]]
name = "p"
endpoints = ["{}"]
[[routes]]
pool = "p"
trust_priority_header = true
"#,
        backend.local_addr()
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let url = format!("http://{}/", gw.local_addr());
    let c = client();
    let stop = Arc::new(AtomicBool::new(false));
    let spin = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        })
    };
    let sheddable = [("x-phalanx-priority", "sheddable")];
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = get_with(&c, &url, &sheddable).await.unwrap();
        if r.status == 503 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "sheddable requests never refused for CPU"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused.body.contains("CPU saturated"), "{}", refused.body);
    assert_eq!(refused.headers.get("retry-after").unwrap(), "3");
    // Critical and default requests pass meanwhile (no default threshold).
    for h in ["critical", "default"] {
        let r = get_with(&c, &url, &[("x-phalanx-priority", h)])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{h}: {}", r.body);
    }
    assert!(shed_count(&gw, "sheddable", "cpu") >= 1.0);
    let m = gw.metrics_text();
    let cpu: f64 = m
        .lines()
        .find(|l| l.starts_with("gateway_process_cpu_utilization_percent "))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap();
    println!("process CPU utilization while spinning: {cpu} %");
    assert!(cpu >= 1.0);
    stop.store(true, Ordering::Relaxed);
    spin.join().unwrap();
    gw.shutdown().await;
    backend.stop().await;
}

fn zone_counts(w: &HashMap<String, u64>) -> (u64, u64) {
    let a = w
        .iter()
        .filter(|(k, _)| k.starts_with("a"))
        .map(|(_, v)| v)
        .sum();
    let b = w
        .iter()
        .filter(|(k, _)| k.starts_with("b"))
        .map(|(_, v)| v)
        .sum();
    (a, b)
}

async fn wait_available(gw: &GatewayHandle, addr: std::net::SocketAddr, want: bool) {
    let gw = gw.clone();
    wait_until(
        Duration::from_secs(10),
        &format!("{addr} available={want}"),
        || {
            let gw = gw.clone();
            async move {
                let j = gw.pools_json();
                j["pools"][0]["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["address"] == addr.to_string() && e["available"] == want)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_local_then_spill_then_failover_and_back() {
    let names = ["a1", "a2", "b1", "b2"];
    let addrs: Vec<_> = names.iter().map(|_| free_addr()).collect();
    let mut bs = Vec::new();
    for (a, n) in addrs.iter().zip(names) {
        bs.push(ProcBackend::start(*a, n).await);
    }
    let eps: Vec<String> = addrs
        .iter()
        .zip(names)
        .map(|(a, n)| format!("{{ address = \"{a}\", zone = \"zone-{}\" }}", &n[..1]))
        .collect();
    let mut cfg = config_with(&format!(
        r#"
[[pools]]
name = "p"
endpoints = [{}]
zone_routing = {{ min_local_healthy_percent = 70 }}
health_check = {{ interval_ms = 100, timeout_ms = 200, rise = 2, fall = 2, jitter_percent = 0 }}
outlier_detection = {{ consecutive_connect_failures = 1, max_ejection_percent = 100, base_ejection_ms = 60000 }}
[[routes]]
pool = "p"
retry = {{ max_retries = 3 }}
"#,
        eps.join(", ")
    ));
    // The gateway's own zone (`zone = "zone-a"` at the top of the file,
    // `phalanx gateway --zone zone-a`).
    cfg.zone = Some("zone-a".into());
    let gw = Gateway::start(cfg).await.unwrap();
    let load = Load::start(format!("http://{}/", gw.local_addr()), 4);

    // 1. The local zone is healthy: everything stays in zone a.
    let w = load.window(400).await;
    let (a, b) = zone_counts(&w);
    println!("zone a healthy: a {a}, b {b} ({w:?})");
    assert_eq!(b, 0, "traffic left a healthy local zone: {w:?}");
    // The zone counter saw the same: every selection local.
    let zone_metric = |gw: &GatewayHandle, locality: &str| {
        metric_sum(
            &gw.metrics_text(),
            "gateway_zone_requests_total",
            &["pool=\"p\"", &format!("locality=\"{locality}\"")],
        )
    };
    let (local0, remote0) = (zone_metric(&gw, "local"), zone_metric(&gw, "remote"));
    assert!(local0 >= a as f64, "local selections {local0} < {a}");
    assert_eq!(remote0, 0.0, "remote selections while zone a was healthy");

    // 2. One of the two local endpoints dies: 50 % of zone a is available,
    //    below 70 %, so 0.5 / 0.7 ≈ 71 % stays local and the rest spills to b.
    bs[0].kill().await;
    wait_available(&gw, addrs[0], false).await;
    load.window(50).await;
    let w = load.window(1000).await;
    let (a, b) = zone_counts(&w);
    let local = a as f64 / (a + b) as f64;
    println!(
        "a1 down: a {a}, b {b}: {:.1} % local (rule: 71.4 %)",
        local * 100.0
    );
    assert!((0.6..=0.83).contains(&local), "local share {local}: {w:?}");
    // Spilled requests are counted as remote selections.
    let remote1 = zone_metric(&gw, "remote");
    assert!(
        remote1 - remote0 >= b as f64,
        "remote selections {remote1} - {remote0} < {b} requests answered by zone b"
    );

    // 3. The whole local zone dies: everything moves to zone b.
    bs[1].kill().await;
    wait_available(&gw, addrs[1], false).await;
    load.window(50).await;
    let w = load.window(400).await;
    let (a, b) = zone_counts(&w);
    println!("zone a down: a {a}, b {b}");
    assert_eq!(a, 0, "{w:?}");

    // 4. Zone a returns: traffic moves back.
    bs[0] = ProcBackend::start(addrs[0], "a1").await;
    bs[1] = ProcBackend::start(addrs[1], "a2").await;
    wait_available(&gw, addrs[0], true).await;
    wait_available(&gw, addrs[1], true).await;
    load.window(50).await;
    let w = load.window(400).await;
    let (a, b) = zone_counts(&w);
    println!("zone a back: a {a}, b {b}");
    assert_eq!(b, 0, "traffic did not move back to zone a: {w:?}");

    let errors = load.finish().await;
    println!("client errors over the whole run: {}", errors.len());
    assert!(
        errors.is_empty(),
        "client-visible errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    gw.shutdown().await;
}

#[test]
fn out_of_range_and_malformed_settings_are_named() {
    let base = |extra_top: &str, pool_extra: &str, route_extra: &str| {
        format!(
            r#"
{extra_top}
[[listeners]]
name = "l"
address = "127.0.0.1:0"
[[pools]]
name = "p"
endpoints = [{{ address = "127.0.0.1:1", zone = "z1" }}]
{pool_extra}
[[routes]]
pool = "p"
{route_extra}
"#
        )
    };
    let err = |t: String| gateway::Config::from_toml_str(&t).unwrap_err().to_string();
    let cases = [
        (
            base("[load_shedding]\ncpu_shed_sheddable_percent = 101", "", ""),
            "load_shedding.cpu_shed_sheddable_percent",
            "between 0 and 100, got 101",
        ),
        (
            base("[load_shedding]\nretry_after_s = 0", "", ""),
            "load_shedding.retry_after_s",
            "between 1 and 3600",
        ),
        (
            base("[load_shedding]\ncpu_sample_interval_ms = 5", "", ""),
            "load_shedding.cpu_sample_interval_ms",
            "between 10 and 60000",
        ),
        (
            base(
                "[load_shedding]\ncpu_sample_interval_ms = 500\ncpu_window_ms = 200",
                "",
                "",
            ),
            "load_shedding.cpu_window_ms",
            "must be >= load_shedding.cpu_sample_interval_ms (500), got 200",
        ),
        (
            base(
                "[load_shedding]\ncpu_shed_sheddable_percent = 90\ncpu_shed_default_percent = 80",
                "",
                "",
            ),
            "load_shedding.cpu_shed_default_percent",
            "sheddable requests are refused first",
        ),
        (
            base("[load_shedding]\npriority_header = \"bad header\"", "", ""),
            "load_shedding.priority_header",
            "not a valid header name",
        ),
        (
            base("[load_shedding]\nsheddable_max_wait_ms = -1", "", ""),
            "load_shedding.sheddable_max_wait_ms",
            "between 0 and 600000, got -1",
        ),
        (
            base("", "zone_routing = { min_local_healthy_percent = 0 }", ""),
            "pools[0].zone_routing.min_local_healthy_percent",
            "between 1 and 100, got 0 (pool `p`)",
        ),
        (
            base("", "adaptive_concurrency = { smoothing_percent = 0 }", ""),
            "pools[0].adaptive_concurrency.smoothing_percent",
            "between 1 and 100, got 0 (pool `p`)",
        ),
        (
            base(
                "",
                "adaptive_concurrency = { min_limit = 10, initial_limit = 5 }",
                "",
            ),
            "pools[0].adaptive_concurrency.initial_limit",
            "must be >= adaptive_concurrency.min_limit (10), got 5",
        ),
        (
            base(
                "",
                "max_concurrent_requests = 3\nadaptive_concurrency = { min_limit = 4 }",
                "",
            ),
            "pools[0].adaptive_concurrency.min_limit",
            "must be <= max_concurrent_requests (3), got 4",
        ),
        (base("zone = \"\"", "", ""), "`zone`", "1 to 64 characters"),
        (
            base("zone = \"eu west\"", "", ""),
            "`zone`",
            "only letters, digits",
        ),
        (
            base("", "zone_routing = { local_zone = \"a/b\" }", ""),
            "pools[0].zone_routing.local_zone",
            "only letters, digits",
        ),
        (
            base("", "", "priority = \"urgent\""),
            "priority",
            "unknown variant `urgent`",
        ),
    ];
    for (text, field, reason) in cases {
        let e = err(text);
        assert!(e.contains(field) && e.contains(reason), "{field}: {e}");
    }
    let e = err(base("", "", "").replace("zone = \"z1\"", "zone = \"z 1\""));
    assert!(
        e.contains("pools[0].endpoints[0].zone") && e.contains("endpoint `127.0.0.1:1`"),
        "{e}"
    );
    // Accepted: the documented example values.
    let ok = base(
        "zone = \"eu-west-1a\"\n[load_shedding]\ncpu_shed_sheddable_percent = 80\ncpu_shed_default_percent = 95",
        "zone_routing = { min_local_healthy_percent = 50 }",
        "priority = \"critical\"\ntrust_priority_header = true",
    );
    let c = gateway::Config::from_toml_str(&ok).unwrap();
    assert_eq!(c.zone.as_deref(), Some("eu-west-1a"));
    // And it survives a round trip through its TOML form (`GET /config`).
    let again = gateway::Config::from_toml_str(&c.to_toml_string()).unwrap();
    assert_eq!(again, c);
}

/// A backend that serves `workers` requests at a time, `service_ms` each,
/// and queues the rest: its latency grows with the concurrency it is given.
/// Records the most requests it ever held at once (served + queued).
struct QueueingBackend {
    addr: std::net::SocketAddr,
    max_held: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl QueueingBackend {
    async fn start(workers: usize, service_ms: u64) -> QueueingBackend {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind(any_addr()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sem = Arc::new(tokio::sync::Semaphore::new(workers));
        let held = Arc::new(AtomicU64::new(0));
        let max_held = Arc::new(AtomicU64::new(0));
        let (h, m) = (held.clone(), max_held.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (sem, h, m) = (sem.clone(), h.clone(), m.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                        let (sem, h, m) = (sem.clone(), h.clone(), m.clone());
                        async move {
                            let now = h.fetch_add(1, Ordering::SeqCst) + 1;
                            m.fetch_max(now, Ordering::SeqCst);
                            let _p = sem.acquire().await.unwrap();
                            tokio::time::sleep(Duration::from_millis(service_ms)).await;
                            h.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"q\n")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        QueueingBackend {
            addr,
            max_held,
            task,
        }
    }
}

impl Drop for QueueingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gauge(gw: &GatewayHandle, series: &str) -> Option<f64> {
    gw.metrics_text()
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// The adaptive limit learns the backend's latency at light load, then,
/// when 24 clients arrive at a backend that serves 2 at a time, holds the
/// requests in flight to the backend near what it serves without long
/// queues (the rest wait at the gateway, by priority), with no error. The
/// long window (5000 requests) keeps the learned latency as the reference
/// for the whole test; with the default 600 the reference would follow the
/// queueing latency within a few hundred requests and the limit would
/// climb back (Gradient2 accepts a lasting slowdown as the new normal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_limit_keeps_queues_out_of_the_backend() {
    let backend = QueueingBackend::start(2, 20).await;
    let cfg = config_with(&format!(
        r#"
[[pools]]
name = "p"
endpoints = ["{}"]
max_concurrent_requests = 100
max_pending_requests = 1000
pending_timeout_ms = 10000
adaptive_concurrency = {{ min_limit = 2, initial_limit = 4, rtt_tolerance_percent = 120, long_window_samples = 5000 }}
[[routes]]
pool = "p"
timeout_ms = 20000
"#,
        backend.addr
    ));
    let gw = Gateway::start(cfg).await.unwrap();
    let url = format!("http://{}/", gw.local_addr());
    // Light load: 2 clients, the backend's own pace (20 ms, no queue).
    let light = Load::start(url.clone(), 2);
    light.window(100).await;
    assert!(light.finish().await.is_empty());
    let learned = gauge(&gw, "gateway_adaptive_concurrency_limit{pool=\"p\"}").unwrap();
    // 24 clients: without a limit the backend would hold 24 requests.
    let heavy = Load::start(url, 24);
    heavy.window(300).await;
    let limit = gauge(&gw, "gateway_adaptive_concurrency_limit{pool=\"p\"}").unwrap();
    let errors = heavy.finish().await;
    let held = backend.max_held.load(Ordering::SeqCst);
    println!(
        "adaptive limit: {learned} after light load, {limit} under 24 clients; most requests the backend held at once: {held} (24 without the limit); client errors: {}",
        errors.len()
    );
    assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(5)]);
    assert!(limit <= 8.0, "adaptive limit {limit}");
    assert!(held <= 10, "the backend held {held} requests at once");
    gw.shutdown().await;
}
