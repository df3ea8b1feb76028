//! Query latency of the metrics history (BENCHMARKS.md): a 24 h
//! `query_range` over 1,000 series recorded every 5 s (the default scrape
//! interval), as the HTTP API evaluates it (the same `Engine::range`).
//!
//! `cargo run --release -p alerting --example query_bench`

use std::time::Instant;

use alerting::promql::{self, Engine};
use alerting::tsdb::{Labels, Tsdb, TsdbSettings};

/// Series in the history.
const SERIES: usize = 1_000;
/// Scrape interval (ms): the default `--alerting-scrape-interval-ms`.
const SCRAPE_MS: i64 = 5_000;
/// Time span (ms) recorded and queried.
const SPAN_MS: i64 = 24 * 3_600_000;
/// Runs of each query; the median is reported.
const RUNS: usize = 5;

fn main() {
    let samples = (SPAN_MS / SCRAPE_MS + 1) as usize * SERIES;
    let mut db = Tsdb::new(TsdbSettings {
        max_series: SERIES,
        max_samples_bytes: samples * 16,
        ..TsdbSettings::default()
    });
    let labels: Vec<Labels> = (0..SERIES)
        .map(|i| {
            let mut l = Labels::new();
            l.insert("__name__".into(), "bench_requests_total".into());
            l.insert("member".into(), format!("n{}", i % 5));
            l.insert("series".into(), i.to_string());
            l
        })
        .collect();
    let t0 = 1_700_000_000_000i64;
    let fill = Instant::now();
    let mut t = t0;
    let mut k = 0u64;
    while t <= t0 + SPAN_MS {
        k += 1;
        db.append(
            t,
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), (k * (i as u64 % 7 + 1)) as f64)),
        );
        t += SCRAPE_MS;
    }
    println!(
        "history: {} series, {} bytes of samples, filled in {:.1} s",
        db.series_count(),
        db.samples_bytes(),
        fill.elapsed().as_secs_f64()
    );
    let eng = Engine {
        db: &db,
        lookback_ms: promql::DEFAULT_LOOKBACK_MS,
    };
    for (q, step_ms) in [
        ("bench_requests_total", 60_000),
        ("rate(bench_requests_total[5m])", 60_000),
        ("sum by (member) (rate(bench_requests_total[5m]))", 60_000),
        ("sum by (member) (rate(bench_requests_total[5m]))", 345_000),
    ] {
        let e = promql::parse(q).unwrap();
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..RUNS {
            let s = Instant::now();
            let r = eng.range(&e, t0, t0 + SPAN_MS, step_ms).unwrap();
            times.push(s.elapsed().as_secs_f64());
            n = r.len();
        }
        times.sort_by(f64::total_cmp);
        println!(
            "query_range 24h step {}s `{q}`: {n} series, median {:.3} s (min {:.3}, max {:.3})",
            step_ms / 1000,
            times[RUNS / 2],
            times[0],
            times[RUNS - 1]
        );
    }
}
