//! Hand-made histories: linearizable ones pass, each classic anomaly is
//! caught, malformed input is rejected with its line number.

use std::time::Duration;

use linearizability::sim::{generate, SimConfig};
use linearizability::{check, History, HistoryError, Limits, Outcome};

/// Builds one event line. `v` is raw JSON for the value.
fn ev(p: i64, ty: &str, f: &str, key: &str, v: &str, t: i64) -> String {
    format!(r#"{{"process":{p},"type":"{ty}","f":"{f}","key":"{key}","value":{v},"time":{t}}}"#)
}

fn outcome(lines: &[String]) -> Outcome {
    let h = History::parse_str(&lines.join("\n")).expect("history parses");
    check(&h, &Limits::default())
}

fn assert_linearizable(lines: &[String]) {
    match outcome(lines) {
        Outcome::Linearizable => {}
        other => panic!("expected linearizable, got {other:?}"),
    }
}

/// Asserts a violation on `key` and returns the rendered report.
fn assert_violation(lines: &[String], key: &str) -> String {
    match outcome(lines) {
        Outcome::NotLinearizable(v) => {
            assert_eq!(v.len(), 1, "{v:?}");
            assert_eq!(v[0].key, key);
            assert!(!v[0].stuck.is_empty());
            v[0].to_string()
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&[
        ev(0, "invoke", "read", "x", "null", 0),
        ev(0, "ok", "read", "x", "null", 1),
        ev(0, "invoke", "write", "x", r#""1""#, 2),
        ev(0, "ok", "write", "x", r#""1""#, 3),
        ev(1, "invoke", "cas", "x", r#"["1","2"]"#, 4),
        ev(1, "ok", "cas", "x", r#"["1","2"]"#, 5),
        ev(1, "invoke", "cas", "x", r#"["1","3"]"#, 6),
        ev(1, "fail", "cas", "x", r#"["1","3"]"#, 7),
        ev(0, "invoke", "read", "x", "null", 8),
        ev(0, "ok", "read", "x", r#""2""#, 9),
        ev(0, "invoke", "delete", "x", "null", 10),
        ev(0, "ok", "delete", "x", "null", 11),
        ev(1, "invoke", "cas", "x", r#"[null,"4"]"#, 12),
        ev(1, "ok", "cas", "x", r#"[null,"4"]"#, 13),
        ev(1, "invoke", "read", "x", "null", 14),
        ev(1, "ok", "read", "x", r#""4""#, 15),
    ]);
}

#[test]
fn concurrent_reads_may_see_either_side_of_a_write() {
    // The write overlaps both reads: one sees the old value, one the new,
    // in an order the real-time constraints allow.
    assert_linearizable(&[
        ev(0, "invoke", "write", "x", r#""1""#, 0),
        ev(0, "ok", "write", "x", r#""1""#, 1),
        ev(0, "invoke", "write", "x", r#""2""#, 10),
        ev(1, "invoke", "read", "x", "null", 11),
        ev(1, "ok", "read", "x", r#""2""#, 12),
        ev(2, "invoke", "read", "x", "null", 11),
        ev(2, "ok", "read", "x", r#""1""#, 13),
        ev(0, "ok", "write", "x", r#""2""#, 20),
    ]);
}

#[test]
fn info_write_may_take_effect_late_or_never() {
    let base = vec![
        ev(0, "invoke", "write", "x", r#""1""#, 0),
        ev(0, "info", "write", "x", r#""1""#, 1),
        ev(1, "invoke", "read", "x", "null", 2),
        ev(1, "ok", "read", "x", "null", 3),
    ];
    // Never took effect (so far).
    assert_linearizable(&base);
    // Took effect long after the client gave up.
    let mut late = base.clone();
    late.push(ev(1, "invoke", "read", "x", "null", 100));
    late.push(ev(1, "ok", "read", "x", r#""1""#, 101));
    assert_linearizable(&late);
}

#[test]
fn unterminated_invocation_is_indeterminate() {
    assert_linearizable(&[
        ev(0, "invoke", "cas", "x", r#"[null,"1"]"#, 0),
        ev(1, "invoke", "read", "x", "null", 5),
        ev(1, "ok", "read", "x", r#""1""#, 6),
    ]);
}

#[test]
fn independent_keys_are_checked_separately() {
    assert_linearizable(&[
        ev(0, "invoke", "write", "a", r#""1""#, 0),
        ev(1, "invoke", "write", "b", r#""1""#, 0),
        ev(0, "ok", "write", "a", r#""1""#, 1),
        ev(1, "ok", "write", "b", r#""1""#, 1),
        ev(0, "invoke", "read", "b", "null", 2),
        ev(0, "ok", "read", "b", r#""1""#, 3),
    ]);
}

#[test]
fn stale_read_is_caught() {
    let report = assert_violation(
        &[
            ev(0, "invoke", "write", "x", r#""1""#, 0),
            ev(0, "ok", "write", "x", r#""1""#, 1),
            ev(0, "invoke", "write", "x", r#""2""#, 2),
            ev(0, "ok", "write", "x", r#""2""#, 3),
            ev(1, "invoke", "read", "x", "null", 4),
            ev(1, "ok", "read", "x", r#""1""#, 5),
        ],
        "x",
    );
    // The report names the read that cannot be ordered.
    assert!(report.contains("line 5"), "{report}");
}

#[test]
fn lost_write_is_caught() {
    assert_violation(
        &[
            ev(0, "invoke", "write", "x", r#""1""#, 0),
            ev(0, "ok", "write", "x", r#""1""#, 1),
            ev(1, "invoke", "read", "x", "null", 2),
            ev(1, "ok", "read", "x", "null", 3),
        ],
        "x",
    );
}

#[test]
fn double_successful_cas_is_caught() {
    assert_violation(
        &[
            ev(0, "invoke", "write", "x", r#""0""#, 0),
            ev(0, "ok", "write", "x", r#""0""#, 1),
            ev(1, "invoke", "cas", "x", r#"["0","1"]"#, 2),
            ev(2, "invoke", "cas", "x", r#"["0","2"]"#, 2),
            ev(1, "ok", "cas", "x", r#"["0","1"]"#, 3),
            ev(2, "ok", "cas", "x", r#"["0","2"]"#, 3),
        ],
        "x",
    );
}

#[test]
fn value_vanishing_after_being_read_is_caught() {
    assert_violation(
        &[
            ev(0, "invoke", "write", "x", r#""1""#, 0),
            ev(0, "ok", "write", "x", r#""1""#, 1),
            ev(1, "invoke", "read", "x", "null", 2),
            ev(1, "ok", "read", "x", r#""1""#, 3),
            ev(2, "invoke", "read", "x", "null", 4),
            ev(2, "ok", "read", "x", "null", 5),
        ],
        "x",
    );
}

#[test]
fn failed_write_becoming_visible_is_caught() {
    assert_violation(
        &[
            ev(0, "invoke", "write", "x", r#""1""#, 0),
            ev(0, "fail", "write", "x", r#""1""#, 1),
            ev(1, "invoke", "read", "x", "null", 2),
            ev(1, "ok", "read", "x", r#""1""#, 3),
        ],
        "x",
    );
}

#[test]
fn failed_cas_whose_comparison_must_have_held_is_caught() {
    assert_violation(
        &[
            ev(0, "invoke", "write", "x", r#""1""#, 0),
            ev(0, "ok", "write", "x", r#""1""#, 1),
            ev(1, "invoke", "cas", "x", r#"["1","2"]"#, 2),
            ev(1, "fail", "cas", "x", r#"["1","2"]"#, 3),
        ],
        "x",
    );
}

#[test]
fn only_the_bad_key_is_reported() {
    match outcome(&[
        ev(0, "invoke", "write", "good", r#""1""#, 0),
        ev(0, "ok", "write", "good", r#""1""#, 1),
        ev(0, "invoke", "write", "bad", r#""1""#, 2),
        ev(0, "ok", "write", "bad", r#""1""#, 3),
        ev(0, "invoke", "read", "bad", "null", 4),
        ev(0, "ok", "read", "bad", "null", 5),
    ]) {
        Outcome::NotLinearizable(v) => assert_eq!(
            v.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(),
            ["bad"]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exhausted_time_limit_reports_unknown() {
    let h = History::parse_str(&generate(&SimConfig {
        operations: 200,
        ..SimConfig::default()
    }))
    .unwrap();
    match check(
        &h,
        &Limits {
            timeout: Some(Duration::ZERO),
        },
    ) {
        Outcome::Unknown { .. } => {}
        other => panic!("expected unknown, got {other:?}"),
    }
}

#[test]
fn generated_10k_history_from_16_clients_is_linearizable() {
    for keys in [1, 10] {
        let text = generate(&SimConfig {
            clients: 16,
            operations: 10_000,
            keys,
            info_percent: 1,
            seed: 42,
        });
        let h = History::parse_str(&text).unwrap();
        assert_eq!(h.ops.len(), 10_000);
        // Real overlap, or the test proves little.
        let max_open = {
            let mut ev: Vec<(i64, i32)> = h
                .ops
                .iter()
                .flat_map(|o| [(o.call, 1), (o.ret.unwrap_or(i64::MAX), -1)])
                .collect();
            ev.sort();
            ev.iter()
                .scan(0, |c, (_, d)| {
                    *c += d;
                    Some(*c)
                })
                .max()
                .unwrap()
        };
        assert!(max_open >= 8, "only {max_open} concurrent operations");
        match check(
            &h,
            &Limits {
                timeout: Some(Duration::from_secs(120)),
            },
        ) {
            Outcome::Linearizable => {}
            other => panic!("{keys} keys: {other:?}"),
        }
    }
}

#[test]
fn corrupted_generated_history_is_caught() {
    // Flip one successful read to a value nobody wrote.
    let text = generate(&SimConfig {
        clients: 16,
        operations: 2_000,
        keys: 1,
        info_percent: 0,
        seed: 3,
    });
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let i = lines
        .iter()
        .position(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["type"] == "ok" && v["f"] == "read"
        })
        .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
    v["value"] = "never-written".into();
    lines[i] = v.to_string();
    assert!(matches!(outcome(&lines), Outcome::NotLinearizable(_)));
}

fn malformed(lines: &[String]) -> (usize, String) {
    match History::parse_str(&lines.join("\n")) {
        Err(e @ HistoryError::Malformed { .. }) => (e.line().unwrap(), e.to_string()),
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn invoke_while_open_is_malformed() {
    let (line, msg) = malformed(&[
        ev(0, "invoke", "write", "x", r#""1""#, 0),
        ev(0, "invoke", "read", "x", "null", 1),
    ]);
    assert_eq!(line, 2);
    assert!(msg.contains("still open"), "{msg}");
}

#[test]
fn malformed_inputs_name_their_line() {
    let ok = ev(0, "invoke", "write", "x", r#""1""#, 0);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid event"),
        (ev(1, "bogus", "read", "x", "null", 1), "unknown variant"),
        (ev(1, "invoke", "incr", "x", "null", 1), "unknown variant"),
        (ev(1, "invoke", "cas", "x", r#""1""#, 1), "cas value"),
        (ev(1, "invoke", "write", "x", "null", 1), "write value"),
        (ev(1, "ok", "read", "x", "null", 1), "never invoked"),
        (ev(0, "ok", "read", "x", "null", 1), "does not match"),
        (ev(0, "ok", "write", "y", r#""1""#, 1), "does not match"),
        (
            ev(0, "ok", "write", "x", r#""1""#, -1),
            "before the previous event",
        ),
        (
            r#"{"process":1,"type":"invoke","f":"read","key":"x","value":null}"#.into(),
            "missing field `time`",
        ),
    ];
    for (bad, why) in cases {
        let (line, msg) = malformed(&[ok.clone(), bad.clone()]);
        assert_eq!(line, 2, "{bad}: {msg}");
        assert!(msg.contains(why), "{bad}: expected {why:?} in {msg:?}");
    }
}
