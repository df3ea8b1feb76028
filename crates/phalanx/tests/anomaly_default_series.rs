//! Issue 14: the anomaly functions run over the metrics history on every
//! default series of a live member — request rate, error ratio and p99
//! latency per gateway route (its pool) and per store method (etcd's
//! `grpc_server_*` series), the Raft log's fsync latency, leader changes
//! and backup duration.
//!
//! One member with a store-backed gateway (a pool with a live backend and a
//! pool whose only endpoint refuses connections), a backup schedule to a
//! file destination, and a small steady load of etcd requests (puts, reads,
//! and reads at a future revision, which etcd refuses with `OutOfRange`) and
//! gateway requests. For each series, `anomaly_score(E, "robust")` through
//! the member's query API must give a score in [0, 1] for the series the
//! load produced; the store's series must also carry etcd's labels and
//! codes.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway::sample_backend;
use support::alerts::{enc, get_json};
use support::backups::{keygen, set_schedule};
use support::{free_port, http_get, wait_for, Cluster};

/// History resolution and evaluation interval of the test member.
const INTERVAL_MS: u64 = 200;
/// One round of load (a put, two reads, two gateway requests) per period.
const LOAD_PERIOD: Duration = Duration::from_millis(20);
/// Bound on each wait (wall time, generous for CI).
const WAIT: Duration = Duration::from_secs(90);

/// `anomaly_score(expr, "robust")` at the member's query API: each result's
/// labels and score, once every score is in [0, 1].
fn scores(api: u16, expr: &str) -> Option<Vec<(serde_json::Value, f64)>> {
    let q = format!(
        "/api/v1/query?query={}",
        enc(&format!("anomaly_score({expr}, \"robust\")"))
    );
    let v = get_json(api, &q)?;
    let r = v["data"]["result"].as_array()?;
    let out: Vec<(serde_json::Value, f64)> = r
        .iter()
        .filter_map(|s| {
            let score: f64 = s["value"][1].as_str()?.parse().ok()?;
            Some((s["metric"].clone(), score))
        })
        .collect();
    for (labels, score) in &out {
        assert!(
            (0.0..=1.0).contains(score),
            "anomaly_score of {expr} for {labels} is {score}, outside [0, 1]"
        );
    }
    Some(out)
}

/// Wait until `anomaly_score(expr, "robust")` scores a series whose labels
/// include every `(name, value)` of `want`.
fn wait_scored(api: u16, what: &str, expr: &str, want: &[(&str, &str)]) {
    let got = wait_for(&format!("an anomaly score of {what}"), WAIT, || {
        let s = scores(api, expr)?;
        s.into_iter()
            .find(|(labels, _)| want.iter().all(|(k, v)| labels[*k] == *v))
    });
    println!("{what}: {} scores {}", got.0, got.1);
}

#[test]
fn anomaly_scores_run_over_every_default_series() {
    let keys = tempfile::tempdir().unwrap();
    let (identity, public) = keygen(keys.path());
    let (gw, api) = (free_port(), free_port());
    let identity_arg = identity.to_str().unwrap().to_string();
    let c = Cluster::start_with(1, move |_| {
        vec![
            format!("--gateway-listen=127.0.0.1:{gw}"),
            format!("--alerting-listen=127.0.0.1:{api}"),
            format!("--alerting-scrape-interval-ms={INTERVAL_MS}"),
            format!("--alerting-evaluation-interval-ms={INTERVAL_MS}"),
            format!("--backup-identity-file={identity_arg}"),
            "--alerting-anomaly-sensitivity=0.97".into(),
        ]
    });
    let eps = c.endpoints();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let backend = rt
        .block_on(sample_backend::spawn("127.0.0.1:0".parse().unwrap(), "b1"))
        .unwrap();
    // A pool whose endpoint refuses connections: its requests fail (5xx).
    let dead = format!("127.0.0.1:{}", free_port());
    let cfg = format!(
        "[[pools]]\nname = \"api\"\nendpoints = [\"{}\"]\n\n[[pools]]\nname = \"down\"\nendpoints = [\"{dead}\"]\n\n[[routes]]\npath_prefix = \"/down\"\npool = \"down\"\n\n[[routes]]\npath_prefix = \"/\"\npool = \"api\"\n",
        backend.local_addr()
    );
    c.ctl(&["put", "/phalanx/gateway/config", &cfg]);
    wait_for("the gateway routing", WAIT, || {
        matches!(http_get(gw, "/"), Some((200, _))).then_some(())
    });
    let repo = format!("file://{}", c.dir.path().join("repo").display());
    set_schedule(
        &eps,
        &[&repo],
        &public,
        &["--backup-interval-ms", "2000", "--archive-interval-ms", "0"],
        &[],
    );

    // The sensitivity setting is the default anomaly rules' threshold.
    let rules = wait_for("the rules in force", WAIT, || {
        get_json(api, "/api/v1/rules")
    });
    let text = rules.to_string();
    assert!(
        text.contains("PhalanxGatewayLatencyAnomaly")
            && text.contains("\\\"robust\\\", 0.97, \\\"above\\\"")
            && !text.contains("\\\"robust\\\", 0.9,"),
        "the default anomaly rules fire above 0.97: {text}"
    );

    // Steady load until the end of the test: one round of store and gateway
    // requests every LOAD_PERIOD (a rate, set by an interval).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, eps) = (stop.clone(), c.endpoint_list());
        let gw = format!("http://127.0.0.1:{gw}");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut cl = etcd_client::Client::connect(eps, None).await.unwrap();
                let mut pace = tokio::time::interval(LOAD_PERIOD);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    cl.put(format!("k{}", i % 100), format!("v{i}"), None)
                        .await
                        .unwrap();
                    cl.get(format!("k{}", i % 100), None).await.unwrap();
                    // etcd refuses a read at a future revision (OutOfRange).
                    let future = etcd_client::GetOptions::new().with_revision(1 << 40);
                    assert!(cl.get("k0", Some(future)).await.is_err());
                    let _ = drill::admin::request(&gw, "GET", "/", None).await;
                    let _ = drill::admin::request(&gw, "GET", "/down/x", None).await;
                    i += 1;
                }
            });
        })
    };

    // Store methods: request rate, error ratio, p99 latency.
    wait_scored(
        api,
        "the Put request rate",
        "sum by (member, grpc_service, grpc_method) (rate(grpc_server_handled_total[2s]))",
        &[("grpc_service", "etcdserverpb.KV"), ("grpc_method", "Put")],
    );
    // The detector is fed the history: the expected band's centre (the
    // median of the values before) becomes the steady Put rate.
    let put_rate = "sum by (member) (rate(grpc_server_handled_total{grpc_method=\"Put\"}[2s]))";
    let expected = wait_for("the Put rate's expected value", WAIT, || {
        let v = get_json(
            api,
            &format!(
                "/api/v1/query?query={}",
                enc(&format!("anomaly_expected({put_rate}, \"robust\")"))
            ),
        )?;
        let e: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
        (e > 0.0).then_some(e)
    });
    println!("expected Put rate: {expected:.1}/s");
    assert!(
        expected < 1_000.0,
        "at most one Put per LOAD_PERIOD is sent, yet {expected}/s is expected"
    );
    wait_scored(
        api,
        "the Range error ratio",
        "sum by (member, grpc_method) (rate(grpc_server_handled_total{grpc_code!=\"OK\"}[2s])) / sum by (member, grpc_method) (rate(grpc_server_handled_total[2s]))",
        &[("grpc_method", "Range")],
    );
    let codes = get_json(
        api,
        &format!(
            "/api/v1/query?query={}",
            enc("grpc_server_handled_total{grpc_method=\"Range\",grpc_code=\"OutOfRange\"} > 0")
        ),
    )
    .unwrap();
    assert!(
        !codes["data"]["result"].as_array().unwrap().is_empty(),
        "the future-revision reads are counted under OutOfRange: {codes}"
    );
    wait_scored(
        api,
        "the Range p99 latency",
        "histogram_quantile(0.99, sum by (member, grpc_method, le) (rate(grpc_server_handling_seconds_bucket{grpc_type=\"unary\"}[2s])))",
        &[("grpc_method", "Range")],
    );

    // Gateway routes (labelled by the pool each targets): request rate,
    // error ratio, p99 latency.
    wait_scored(
        api,
        "the gateway request rate",
        "sum by (member, pool) (rate(gateway_downstream_responses_total[2s]))",
        &[("pool", "api")],
    );
    wait_scored(
        api,
        "the gateway error ratio",
        "sum by (member, pool) (rate(gateway_downstream_responses_total{class=\"5xx\"}[2s])) / sum by (member, pool) (rate(gateway_downstream_responses_total[2s]))",
        &[("pool", "down")],
    );
    wait_scored(
        api,
        "the gateway p99 latency",
        "histogram_quantile(0.99, sum by (member, pool, le) (rate(gateway_downstream_latency_seconds_bucket[2s])))",
        &[("pool", "api")],
    );

    // The Raft log's fsync latency, leader changes, backup duration.
    wait_scored(
        api,
        "the fsync p99 latency",
        "histogram_quantile(0.99, rate(phalanx_disk_wal_fsync_duration_seconds_bucket[2s]))",
        &[],
    );
    wait_scored(
        api,
        "leader changes",
        "phalanx_server_leader_changes_seen_total",
        &[],
    );
    let changes = get_json(
        api,
        &format!(
            "/api/v1/query?query={}",
            enc("phalanx_server_leader_changes_seen_total")
        ),
    )
    .unwrap();
    assert_eq!(
        changes["data"]["result"][0]["value"][1], "1",
        "one member elects itself once: {changes}"
    );
    wait_scored(
        api,
        "the backup duration",
        "phalanx_backup_duration_seconds > 0",
        &[("destination", repo.as_str())],
    );

    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
}
