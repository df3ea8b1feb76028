//! The metrics history answers like Prometheus: a real Prometheus (Debian's
//! `prometheus`) scrapes every member of a loaded 3-member cluster while the
//! leader's history records the same metrics; `rate(...)`,
//! `histogram_quantile(...)` and `sum by` give the same series on both, and
//! the same values within sampling tolerance.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::alerts::{enc, get_json};
use support::servers::{debian_bin, Proc};
use support::{free_port, wait_for, Cluster, Writer};

/// Scrape interval of both (ms): the member's history and Prometheus's.
const SCRAPE_MS: u64 = 1_000;
/// Relative tolerance on a value: the two scrape at different instants.
const REL_TOLERANCE: f64 = 0.15;
/// How long both record under load before the comparison.
const RECORD_FOR: Duration = Duration::from_secs(30);

fn result_map(v: &serde_json::Value) -> BTreeMap<String, f64> {
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("not a vector: {v}"))
        .iter()
        .map(|r| {
            let mut m = r["metric"].as_object().cloned().unwrap_or_default();
            m.remove("__name__");
            let key = serde_json::Value::Object(m).to_string();
            (key, r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        })
        .collect()
}

#[test]
fn history_answers_rate_histogram_quantile_and_sum_by_like_prometheus() {
    let prom_bin = debian_bin("/usr/bin/prometheus", "prometheus");
    let api: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let a2 = api.clone();
    let c = Cluster::start_with(3, move |i| {
        vec![
            format!("--alerting-listen=127.0.0.1:{}", a2[i]),
            format!("--alerting-scrape-interval-ms={SCRAPE_MS}"),
            format!("--alerting-evaluation-interval-ms={SCRAPE_MS}"),
        ]
    });
    let dir = c.dir.path().to_path_buf();
    let leader = c.wait_leader();

    // Prometheus scrapes every member's /metrics, labelled like the history (member="nX").
    let prom_port = free_port();
    let mut targets = String::new();
    for m in &c.members {
        targets.push_str(&format!(
            "  - targets: ['127.0.0.1:{}']\n    labels:\n      member: {}\n",
            m.metrics_port, m.name
        ));
    }
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: {}ms\n  scrape_timeout: {}ms\nscrape_configs:\n- job_name: phalanx\n  static_configs:\n{targets}",
            SCRAPE_MS,
            SCRAPE_MS / 2
        ),
    )
    .unwrap();
    let data = dir.join("prometheus-data");
    let mut prom = Proc::start(
        "prometheus",
        prom_bin,
        &[
            format!("--config.file={}", cfg.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        dir.join("prometheus.log"),
    );
    wait_for(
        "Prometheus to scrape 3 members",
        Duration::from_secs(60),
        || {
            prom.assert_running();
            let v = get_json(prom_port, "/api/v1/query?query=up")?;
            let m = result_map(&v);
            (m.len() == 3 && m.values().all(|x| *x == 1.0)).then_some(())
        },
    );

    // Steady load: the proposal counters and the latency histogram move.
    let mut w = Writer::start("prom-cmp", c.endpoint_list());
    std::thread::sleep(RECORD_FOR);

    // Compare at one instant both have settled past.
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 3.0;
    let queries = [
        "sum by (member) (rate(phalanx_server_proposals_total[20s]))",
        "histogram_quantile(0.9, sum by (le) (rate(phalanx_server_proposal_duration_seconds_bucket[20s])))",
        "sum by (member) (rate(phalanx_raft_applied_index[20s]))",
        "sum by (member) (phalanx_raft_term)",
    ];
    let mut report = Vec::new();
    for q in queries {
        let path = format!("/api/v1/query?query={}&time={t:.3}", enc(q));
        let ours = get_json(api[leader], &path).unwrap_or_else(|| panic!("history: {q}"));
        let theirs = get_json(prom_port, &path).unwrap_or_else(|| panic!("Prometheus: {q}"));
        let (a, b) = (result_map(&ours), result_map(&theirs));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{q}: different series\nhistory: {ours}\nPrometheus: {theirs}"
        );
        assert!(!a.is_empty(), "{q}: empty on both");
        for (k, x) in &a {
            let y = b[k];
            let tol = REL_TOLERANCE * x.abs().max(y.abs()) + 1e-9;
            assert!(
                (x - y).abs() <= tol,
                "{q} {k}: history {x} vs Prometheus {y} (tolerance {tol})"
            );
            report.push(format!("{q} {k}: history {x:.6} Prometheus {y:.6}"));
        }
    }
    w.stop();
    eprintln!("{}", report.join("\n"));
}
