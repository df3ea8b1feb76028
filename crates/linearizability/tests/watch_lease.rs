//! Watch-stream and lease-safety checkers on hand-made logs.

use linearizability::{
    check_leases, check_watch, HistoryError, LeaseOptions, LeaseViolationKind, WatchViolationKind,
};

const COMMITS: &str = r#"{"kind":"commit","revision":2,"key":"a","type":"put","value":"1"}
{"kind":"commit","revision":3,"key":"b","type":"put","value":"x"}
{"kind":"commit","revision":4,"key":"a","type":"put","value":"2"}
{"kind":"commit","revision":5,"key":"a","type":"delete"}
"#;

fn watch(extra: &str) -> Vec<WatchViolationKind> {
    let log = format!("{COMMITS}{extra}");
    check_watch(log.as_bytes())
        .expect("well-formed")
        .into_iter()
        .map(|v| v.kind)
        .collect()
}

const START: &str = "{\"kind\":\"watch\",\"watch\":\"w\",\"key\":\"a\",\"start_revision\":2}\n";
const E2: &str = "{\"kind\":\"event\",\"watch\":\"w\",\"revision\":2,\"key\":\"a\",\"type\":\"put\",\"value\":\"1\"}\n";
const E4: &str = "{\"kind\":\"event\",\"watch\":\"w\",\"revision\":4,\"key\":\"a\",\"type\":\"put\",\"value\":\"2\"}\n";
const E5: &str =
    "{\"kind\":\"event\",\"watch\":\"w\",\"revision\":5,\"key\":\"a\",\"type\":\"delete\"}\n";

#[test]
fn complete_ordered_stream_passes() {
    assert_eq!(watch(&format!("{START}{E2}{E4}{E5}")), []);
}

#[test]
fn resumed_stream_passes() {
    let resume = "{\"kind\":\"watch\",\"watch\":\"w\",\"key\":\"a\",\"start_revision\":3}\n";
    assert_eq!(watch(&format!("{START}{E2}{resume}{E4}{E5}")), []);
}

#[test]
fn prefix_watch_sees_all_keys() {
    let start =
        "{\"kind\":\"watch\",\"watch\":\"p\",\"key\":\"\",\"prefix\":true,\"start_revision\":3}\n";
    let ev = |r: i64, k: &str, v: &str| {
        format!("{{\"kind\":\"event\",\"watch\":\"p\",\"revision\":{r},\"key\":\"{k}\",\"type\":\"put\",\"value\":\"{v}\"}}\n")
    };
    let progress = "{\"kind\":\"progress\",\"watch\":\"p\",\"revision\":5}\n";
    // Revision 5 (delete of a) is covered by the progress mark: lost.
    assert_eq!(
        watch(&format!(
            "{start}{}{}{progress}",
            ev(3, "b", "x"),
            ev(4, "a", "2")
        )),
        [WatchViolationKind::Loss]
    );
}

#[test]
fn lost_event_is_caught() {
    assert_eq!(
        watch(&format!("{START}{E2}{E5}")),
        [WatchViolationKind::Loss]
    );
}

#[test]
fn duplicate_event_is_caught() {
    assert_eq!(
        watch(&format!("{START}{E2}{E4}{E4}{E5}")),
        [WatchViolationKind::Duplicate]
    );
}

#[test]
fn reordered_event_is_caught() {
    assert_eq!(
        watch(&format!("{START}{E2}{E5}{E4}")),
        [WatchViolationKind::Reorder]
    );
}

#[test]
fn resume_past_a_gap_is_caught() {
    let resume = "{\"kind\":\"watch\",\"watch\":\"w\",\"key\":\"a\",\"start_revision\":5}\n";
    assert_eq!(
        watch(&format!("{START}{E2}{resume}{E5}")),
        [WatchViolationKind::Loss]
    );
}

#[test]
fn phantom_and_out_of_range_events_are_caught() {
    let wrong = "{\"kind\":\"event\",\"watch\":\"w\",\"revision\":4,\"key\":\"a\",\"type\":\"put\",\"value\":\"9\"}\n";
    let other = "{\"kind\":\"event\",\"watch\":\"w\",\"revision\":3,\"key\":\"b\",\"type\":\"put\",\"value\":\"x\"}\n";
    assert_eq!(
        watch(&format!("{START}{E2}{other}{wrong}")),
        [WatchViolationKind::OutOfRange, WatchViolationKind::Phantom]
    );
}

#[test]
fn malformed_watch_log_names_line() {
    let log = format!("{COMMITS}{{\"kind\":\"event\",\"watch\":\"nobody\",\"revision\":2,\"key\":\"a\",\"type\":\"put\",\"value\":\"1\"}}\n");
    match check_watch(log.as_bytes()) {
        Err(e @ HistoryError::Malformed { .. }) => assert_eq!(e.line(), Some(5)),
        other => panic!("{other:?}"),
    }
}

fn leases(log: &str) -> Vec<LeaseViolationKind> {
    check_leases(log.as_bytes(), LeaseOptions { grace_ms: 500 })
        .expect("well-formed")
        .into_iter()
        .map(|v| v.kind)
        .collect()
}

const GRANT: &str = "{\"kind\":\"grant\",\"lease\":7,\"ttl_ms\":5000,\"sent\":0,\"time\":10}\n";
const PUT: &str = "{\"kind\":\"put\",\"key\":\"k\",\"lease\":7,\"sent\":20,\"time\":30}\n";

#[test]
fn safe_lease_log_passes() {
    let log = format!(
        "{GRANT}{PUT}\
         {{\"kind\":\"read\",\"key\":\"k\",\"sent\":100,\"time\":110,\"present\":true,\"lease\":7}}\n\
         {{\"kind\":\"keepalive\",\"lease\":7,\"ttl_ms\":5000,\"sent\":3000,\"time\":3010}}\n\
         {{\"kind\":\"read\",\"key\":\"k\",\"sent\":7000,\"time\":7010,\"present\":true,\"lease\":7}}\n\
         {{\"kind\":\"read\",\"key\":\"k\",\"sent\":9000,\"time\":9010,\"present\":false}}\n\
         {{\"kind\":\"revoke\",\"lease\":7,\"sent\":9500,\"time\":9510}}\n"
    );
    assert_eq!(leases(&log), []);
}

#[test]
fn key_vanishing_before_ttl_is_caught() {
    let log = format!("{GRANT}{PUT}{{\"kind\":\"read\",\"key\":\"k\",\"sent\":2000,\"time\":2010,\"present\":false}}\n");
    assert_eq!(leases(&log), [LeaseViolationKind::VanishedEarly]);
}

#[test]
fn racing_delete_explains_absence() {
    let log = format!(
        "{GRANT}{PUT}{{\"kind\":\"delete\",\"key\":\"k\",\"sent\":1000,\"time\":null}}\n\
         {{\"kind\":\"read\",\"key\":\"k\",\"sent\":2000,\"time\":2010,\"present\":false}}\n"
    );
    assert_eq!(leases(&log), []);
}

#[test]
fn key_of_revoked_lease_is_caught() {
    let log = format!(
        "{GRANT}{PUT}{{\"kind\":\"revoke\",\"lease\":7,\"sent\":100,\"time\":110}}\n\
         {{\"kind\":\"read\",\"key\":\"k\",\"sent\":200,\"time\":210,\"present\":true,\"lease\":7}}\n"
    );
    assert_eq!(leases(&log), [LeaseViolationKind::Lingered]);
}

#[test]
fn key_of_expired_lease_is_caught() {
    let log = format!("{GRANT}{PUT}{{\"kind\":\"read\",\"key\":\"k\",\"sent\":6000,\"time\":6010,\"present\":true,\"lease\":7}}\n");
    assert_eq!(leases(&log), [LeaseViolationKind::Lingered]);
    // An unacknowledged keepalive may have renewed it: no verdict.
    let log = format!(
        "{GRANT}{PUT}{{\"kind\":\"keepalive\",\"lease\":7,\"ttl_ms\":5000,\"sent\":4000,\"time\":null}}\n\
         {{\"kind\":\"read\",\"key\":\"k\",\"sent\":6000,\"time\":6010,\"present\":true,\"lease\":7}}\n"
    );
    assert_eq!(leases(&log), []);
}

#[test]
fn malformed_lease_log_names_line() {
    let log = format!(
        "{GRANT}{{\"kind\":\"read\",\"key\":\"k\",\"sent\":5,\"time\":1,\"present\":false}}\n"
    );
    match check_leases(log.as_bytes(), LeaseOptions::default()) {
        Err(e) => assert_eq!(e.line(), Some(2), "{e}"),
        other => panic!("{other:?}"),
    }
}
