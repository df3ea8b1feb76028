//! `phalanx anomaly`: the built binary on NAB data (detect, score) and on
//! malformed CSV input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn nab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../anomaly/testdata/nab")
}

fn phalanx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(args)
        .output()
        .expect("running phalanx")
}

fn temp_csv(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("phalanx-anomaly-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn detect_prints_one_scored_row_per_input_row() {
    let input = nab_dir().join("data/realKnownCause/ec2_request_latency_system_failure.csv");
    let text = std::fs::read_to_string(&input).unwrap();
    let in_rows: Vec<&str> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(in_rows.len() > 1000);
    let out = phalanx(&["anomaly", "detect", input.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("timestamp,value,anomaly_score"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), in_rows.len());
    let mut alarms = 0;
    for (row, inp) in rows.iter().zip(&in_rows) {
        let cols: Vec<&str> = row.split(',').collect();
        assert_eq!(cols.len(), 3, "{row}");
        let (ts, value) = inp.trim_end().split_once(',').unwrap();
        assert_eq!(cols[0], ts, "timestamps echoed in order");
        assert_eq!(
            cols[1].parse::<f64>().unwrap(),
            value.parse::<f64>().unwrap(),
            "{row}"
        );
        let score: f64 = cols[2].parse().unwrap();
        assert!((0.0..=1.0).contains(&score), "score out of [0, 1]: {row}");
        if score >= 0.5 {
            alarms += 1;
        }
    }
    // This file has three labelled anomalies: some alarms, but not many.
    assert!((1..=20).contains(&alarms), "{alarms} alarms");
}

#[test]
fn score_reproduces_nab_windowed_gaussian_figures() {
    let nab = nab_dir();
    let results = nab.join("results/windowedGaussian");
    let labels = nab.join("combined_windows.json");
    let out = phalanx(&[
        "anomaly",
        "score",
        "--results",
        results.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let score_of = |profile: &str| -> String {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(profile))
            .unwrap_or_else(|| panic!("no {profile} line in:\n{stdout}"));
        line.split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(score_of("standard"), "21.97", "{stdout}");
    assert_eq!(score_of("reward_low_FP_rate"), "4.87", "{stdout}");
    assert_eq!(score_of("reward_low_FN_rate"), "29.80", "{stdout}");
}

fn assert_fails_naming_line(name: &str, text: &str, line: usize, also: &str) {
    let p = temp_csv(name, text);
    let out = phalanx(&["anomaly", "detect", p.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{name}: should fail; stderr {stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}:{line}:")),
        "{name}: error should name line {line}: {stderr}"
    );
    assert!(stderr.contains(also), "{name}: {stderr}");
    // Nothing but possibly the header may have been printed.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().count() <= 1,
        "{name}: printed rows: {stdout}"
    );
}

#[test]
fn malformed_csv_exits_non_zero_naming_the_line() {
    assert_fails_naming_line(
        "bad_timestamp.csv",
        "timestamp,value\n2014-07-01 00:00:00,1\n2014-07-01 00:05:00,2\n2014-13-01 00:10:00,3\n",
        4,
        "timestamp",
    );
    assert_fails_naming_line(
        "bad_value.csv",
        "timestamp,value\n2014-07-01 00:00:00,1\n2014-07-01 00:05:00,lots\n",
        3,
        "lots",
    );
    assert_fails_naming_line(
        "unsorted.csv",
        "timestamp,value\n2014-07-01 00:05:00,1\n2014-07-01 00:10:00,2\n2014-07-01 00:00:00,3\n",
        4,
        "out of order",
    );
}

#[test]
fn unsorted_rows_are_accepted_with_allow_backward() {
    let p = temp_csv(
        "unsorted_ok.csv",
        "timestamp,value\n2014-07-01 00:05:00,1\n2014-07-01 00:10:00,2\n2014-07-01 00:00:00,3\n",
    );
    let out = phalanx(&["anomaly", "detect", "--allow-backward", p.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
}

#[test]
fn bench_prints_a_table_of_throughput_and_bytes_per_series() {
    let out = phalanx(&[
        "anomaly",
        "bench",
        "--data",
        nab_dir().to_str().unwrap(),
        "--method",
        "forecast",
        "--method",
        "robust",
        "--runs",
        "1",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("| method | samples/s per core"), "{stdout}");
    // One row per method asked for: rate in millions, and the state size.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| robust |"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        row.contains(" M |") && row.trim_end().ends_with("| 4688 |"),
        "{row}"
    );
    assert!(
        stdout.contains("| forecast |") && !stdout.contains("| ensemble |"),
        "{stdout}"
    );
    let bad = phalanx(&["anomaly", "bench", "--method", "magic"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("magic"));
}
