//! `phalanx check` end to end: the built binary's exit codes and messages.

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .arg("check")
        .args(args)
        .output()
        .expect("run phalanx");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exited normally"), text)
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

const GOOD: &str = r#"{"process":0,"type":"invoke","f":"write","key":"x","value":"1","time":0}
{"process":0,"type":"ok","f":"write","key":"x","value":"1","time":1}
{"process":1,"type":"invoke","f":"read","key":"x","value":null,"time":2}
{"process":1,"type":"ok","f":"read","key":"x","value":"1","time":3}
"#;

const STALE: &str = r#"{"process":0,"type":"invoke","f":"write","key":"x","value":"1","time":0}
{"process":0,"type":"ok","f":"write","key":"x","value":"1","time":1}
{"process":0,"type":"invoke","f":"write","key":"x","value":"2","time":2}
{"process":0,"type":"ok","f":"write","key":"x","value":"2","time":3}
{"process":1,"type":"invoke","f":"read","key":"x","value":null,"time":4}
{"process":1,"type":"ok","f":"read","key":"x","value":"1","time":5}
"#;

const OVERLAP: &str = r#"{"process":0,"type":"invoke","f":"write","key":"x","value":"1","time":0}
{"process":0,"type":"invoke","f":"write","key":"x","value":"2","time":1}
"#;

#[test]
fn check_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run(&[&write(dir.path(), "good.jsonl", GOOD)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("linearizable"), "{out}");

    let (code, out) = run(&[&write(dir.path(), "stale.jsonl", STALE)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"x\"") && out.contains("line 5"), "{out}");

    let (code, out) = run(&[&write(dir.path(), "overlap.jsonl", OVERLAP)]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("line 2"), "{out}");

    let (code, out) = run(&[&write(
        dir.path(),
        "junk.jsonl",
        "{\"process\":0}\nnot json\n",
    )]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("line 1"), "{out}");

    let (code, out) = run(&[dir.path().join("missing.jsonl").to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn check_watch_and_leases_flags() {
    let dir = tempfile::tempdir().unwrap();
    let commits = "{\"kind\":\"commit\",\"revision\":2,\"key\":\"a\",\"type\":\"put\",\"value\":\"1\"}\n\
                   {\"kind\":\"commit\",\"revision\":3,\"key\":\"a\",\"type\":\"put\",\"value\":\"2\"}\n\
                   {\"kind\":\"watch\",\"watch\":\"w\",\"key\":\"a\",\"start_revision\":2}\n";
    let e = |r: i64, v: &str| {
        format!("{{\"kind\":\"event\",\"watch\":\"w\",\"revision\":{r},\"key\":\"a\",\"type\":\"put\",\"value\":\"{v}\"}}\n")
    };
    let ok = write(
        dir.path(),
        "w1.jsonl",
        &format!("{commits}{}{}", e(2, "1"), e(3, "2")),
    );
    assert_eq!(run(&["--watch", &ok]).0, 0);
    let dup = write(
        dir.path(),
        "w2.jsonl",
        &format!("{commits}{}{}{}", e(2, "1"), e(2, "1"), e(3, "2")),
    );
    let (code, out) = run(&["--watch", &dup]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Duplicate"), "{out}");

    let lease = "{\"kind\":\"grant\",\"lease\":1,\"ttl_ms\":5000,\"sent\":0,\"time\":1}\n\
                 {\"kind\":\"put\",\"key\":\"k\",\"lease\":1,\"sent\":2,\"time\":3}\n";
    let ok = write(dir.path(), "l1.jsonl", &format!("{lease}{{\"kind\":\"read\",\"key\":\"k\",\"sent\":4,\"time\":5,\"present\":true,\"lease\":1}}\n"));
    assert_eq!(run(&["--leases", &ok]).0, 0);
    let bad = write(
        dir.path(),
        "l2.jsonl",
        &format!(
            "{lease}{{\"kind\":\"read\",\"key\":\"k\",\"sent\":4,\"time\":5,\"present\":false}}\n"
        ),
    );
    assert_eq!(run(&["--leases", &bad]).0, 1);
    let junk = write(dir.path(), "l3.jsonl", "{\"kind\":\"nope\"}\n");
    assert_eq!(run(&["--leases", &junk]).0, 2);
}
