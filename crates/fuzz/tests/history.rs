//! Fuzz target: the operation-history, watch-log and lease-log parsers
//! (`phalanx check`'s input, written by drills and the simulator) and the
//! checkers behind them. Property: every input gives a verdict or a
//! malformed-input error; no panic; the search stays within its time limit.

use std::time::{Duration, Instant};

use linearizability::{check, check_leases, check_watch, History, LeaseOptions, Limits};

const SEED_HISTORY: &str = r#"{"process":0,"type":"invoke","f":"write","key":"x","value":"1","time":1000}
{"process":1,"type":"invoke","f":"read","key":"x","value":null,"time":1010}
{"process":0,"type":"ok","f":"write","key":"x","value":"1","time":1420}
{"process":1,"type":"ok","f":"read","key":"x","value":"1","time":1500}
{"process":2,"type":"invoke","f":"cas","key":"x","value":["1","2"],"time":1600}
{"process":2,"type":"fail","f":"cas","key":"x","value":["1","2"],"time":1700}
{"process":3,"type":"invoke","f":"delete","key":"y","value":null,"time":1800}
{"process":3,"type":"info","f":"delete","key":"y","time":1900}
"#;

fn seeds() -> Vec<Vec<u8>> {
    let mut s = vec![SEED_HISTORY.as_bytes().to_vec()];
    // Every JSON-lines example in the format's documentation.
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/history-format.md"
    ))
    .expect("docs/history-format.md");
    for block in doc.split("```").skip(1).step_by(2) {
        let lines: String = block
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| format!("{l}\n"))
            .collect();
        if !lines.is_empty() {
            s.push(lines.into_bytes());
        }
    }
    s
}

#[test]
fn fuzz_history_parsers_and_checkers() {
    let limit = Duration::from_millis(200);
    let report = fuzz::fuzz("history", &seeds(), |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            assert!(History::parse(input).is_err(), "non-UTF-8 input parsed");
            return;
        };
        if let Ok(h) = History::parse_str(text) {
            let started = Instant::now();
            let _ = check(
                &h,
                &Limits {
                    timeout: Some(limit),
                },
            );
            assert!(
                started.elapsed() < limit * 5,
                "check ran {:?} past its {limit:?} limit",
                started.elapsed()
            );
        }
        let _ = check_watch(input);
        let _ = check_leases(input, LeaseOptions { grace_ms: 1000 });
    });
    assert!(report.executions > 0);
}
