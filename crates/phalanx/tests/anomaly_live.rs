//! Issue 14's live-cluster test: a latency anomaly injected through the
//! drill's slow-backend fault, under steady gateway load, fires the gateway
//! latency anomaly rule within 3 evaluation intervals, and no anomaly alert
//! fires during 10 minutes of steady simulated load before it.
//!
//! The clock is accelerated 25×: the history's resolution and the
//! evaluation interval are 200 ms instead of 5 s, and the rule's windows are
//! scaled alike (its `[1m]` rate window becomes `[2400ms]`, `keep_firing_for:
//! 5m` becomes `12s`). The detector sees the same number of samples per
//! simulated minute as in production, so 10 simulated minutes are 120
//! evaluations, 24 s of wall time. Evaluations are counted from the member's
//! own `phalanx_alerting_evaluations_total`, not from wall time, so a slow CI
//! machine cannot make the test pass or fail by timing.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::sample_backend;
use support::alerts::{get_json, set_doc};
use support::{free_port, http_get, wait_for, Cluster};

/// The acceleration: simulated time per wall time.
const ACCELERATION: u64 = 25;
/// Production's evaluation interval and history resolution.
const PRODUCTION_INTERVAL_MS: u64 = 5_000;
const INTERVAL_MS: u64 = PRODUCTION_INTERVAL_MS / ACCELERATION;
/// 10 simulated minutes of steady load, in evaluations.
const STEADY_EVALUATIONS: u64 = 10 * 60 * 1000 / PRODUCTION_INTERVAL_MS;
/// The fault: every backend answer delayed by this much (answers take well
/// under a millisecond before).
const SLOW_MS: u64 = 40;
/// The offered load: LOAD_CLIENTS × (1 s / CLIENT_PERIOD) requests/s (200).
const LOAD_CLIENTS: usize = 10;
const CLIENT_PERIOD: Duration = Duration::from_millis(50);
/// Bound on the whole test's waits (wall time, generous for CI).
const WAIT: Duration = Duration::from_secs(120);

/// The default PhalanxGatewayLatencyAnomaly rule with its windows divided
/// by the acceleration (same name, so it replaces the default).
const RULES: &str = r#"groups:
- name: accelerated
  rules:
  - alert: PhalanxGatewayLatencyAnomaly
    expr: anomaly_alert(histogram_quantile(0.99, sum by (member, pool, le) (rate(gateway_downstream_latency_seconds_bucket[2400ms]))), "robust", 0.9, "above")
    keep_firing_for: 12s
    labels:
      severity: warning
      kind: anomaly
    annotations:
      summary: "p99 latency of pool {{ $labels.pool }} is anomalous: {{ $value | humanize }}s, expected {{ $labels.__anomaly_lower__ | humanize }}s to {{ $labels.__anomaly_upper__ | humanize }}s"
"#;

/// Anomaly alerts (label `kind="anomaly"`) pending or firing, as the
/// leader's API serves them: (name, state, summary).
fn anomaly_alerts(api: u16) -> Vec<(String, String, String)> {
    let Some(v) = get_json(api, "/api/v1/alerts") else {
        return vec![];
    };
    v["data"]["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["labels"]["kind"] == "anomaly" && x["state"] != "inactive")
                .map(|x| {
                    (
                        x["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                        x["state"].as_str().unwrap_or("").to_string(),
                        x["annotations"]["summary"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_slow_backend_fires_the_latency_anomaly_within_three_evaluations_and_steady_load_never_does() {
    let (gw, api) = (free_port(), free_port());
    let c = Cluster::start_with(1, move |_| {
        vec![
            format!("--gateway-listen=127.0.0.1:{gw}"),
            format!("--alerting-listen=127.0.0.1:{api}"),
            format!("--alerting-scrape-interval-ms={INTERVAL_MS}"),
            format!("--alerting-evaluation-interval-ms={INTERVAL_MS}"),
            // Only the rule under test: the store's own latency is not what
            // this test loads.
            "--alerting-disable-default-rules=PhalanxLatencyAnomaly,PhalanxGatewayErrorRatioAnomaly"
                .into(),
        ]
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let backends: Vec<_> = ["b1", "b2"]
        .iter()
        .map(|n| {
            rt.block_on(sample_backend::spawn("127.0.0.1:0".parse().unwrap(), n))
                .unwrap()
        })
        .collect();
    let cfg = format!(
        "[[pools]]\nname = \"api\"\nendpoints = [\"{}\", \"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\npool = \"api\"\n",
        backends[0].local_addr(),
        backends[1].local_addr()
    );
    c.ctl(&["put", "/phalanx/gateway/config", &cfg]);
    set_doc(c.dir.path(), "rules", "rules.yml", RULES, &c.endpoints());
    wait_for("the gateway routing", WAIT, || {
        matches!(http_get(gw, "/"), Some((200, _))).then_some(())
    });

    // Steady load at a fixed rate (open loop: a slow backend does not slow
    // the offered load down, as with real users): LOAD_CLIENTS clients, each
    // sending a request every CLIENT_PERIOD, enough of them that the slowed
    // answers still keep the pace.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..LOAD_CLIENTS)
        .map(|_| {
            let (stop, errors) = (stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if !matches!(http_get(gw, "/"), Some((200, _))) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    next += CLIENT_PERIOD;
                    // Pacing, not waiting for a condition: the load's rate.
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    } else {
                        next = Instant::now();
                    }
                }
            })
        })
        .collect();
    // The leader's evaluation counter, from its alerting listener.
    let evaluations = || {
        http_get(api, "/metrics")
            .and_then(|(_, page)| {
                drill::admin::metric_value(&page, "phalanx_alerting_evaluations_total")
            })
            .map(|v| v as u64)
            .unwrap_or(0)
    };
    // The rule is in force once the leader evaluates it (its series appear).
    wait_for("the accelerated rule evaluated", WAIT, || {
        let v = get_json(api, "/api/v1/rules")?;
        v.to_string().contains("2400ms").then_some(())
    });

    // 10 simulated minutes of steady load: no anomaly alert, ever.
    let start = evaluations();
    wait_for(
        &format!("{STEADY_EVALUATIONS} evaluations of steady load"),
        WAIT,
        || {
            let now = anomaly_alerts(api);
            assert!(
                now.is_empty(),
                "an anomaly alert during steady load, {} evaluations in: {now:?}",
                evaluations() - start
            );
            (evaluations() >= start + STEADY_EVALUATIONS).then_some(())
        },
    );

    // The drill's slow-backend fault (what `PUT /control {"slow_ms"}` does).
    for b in &backends {
        b.control().set_slow_ms(SLOW_MS).unwrap();
    }
    // Evaluations completed when the fault is in place: every later one
    // can see it.
    let before = evaluations();
    let (fired_at, alerts) = wait_for("the latency anomaly to fire", WAIT, || {
        let a = anomaly_alerts(api);
        let firing = a
            .iter()
            .any(|(n, s, _)| n == "PhalanxGatewayLatencyAnomaly" && s == "firing");
        firing.then(|| (evaluations(), a))
    });
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let took = fired_at.saturating_sub(before);
    println!(
        "steady: {STEADY_EVALUATIONS} evaluations without an anomaly alert; fault to firing: {took} evaluations; {alerts:?}"
    );
    // `took` counts the evaluations completed after the fault was in place,
    // up to when the alert was seen: the counter is read after the alert, so
    // it may include one evaluation after the one that fired it.
    assert!(
        took <= 3 + 1,
        "fired {took} evaluations after the fault (bound: 3, plus one for reading the counter late)"
    );
    let summary = &alerts
        .iter()
        .find(|(n, _, _)| n == "PhalanxGatewayLatencyAnomaly")
        .unwrap()
        .2;
    assert!(
        summary.contains("pool api") && summary.contains("expected"),
        "{summary}"
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "client errors under load"
    );
}
