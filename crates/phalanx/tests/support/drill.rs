//! Running `phalanx drill` from tests: the run, its report and a failure
//! explanation with everything needed to diagnose it. Included with
//! `#[path = "support/drill.rs"] mod drill_support;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

pub const BIN: &str = env!("CARGO_BIN_EXE_phalanx");

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// `phalanx drill ARGS --report <temporary dir>`.
pub fn drill(args: &[&str]) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("report");
    let out = Command::new(BIN)
        .arg("drill")
        .args(args)
        .arg("--report")
        .arg(&dir)
        .output()
        .expect("running phalanx drill");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
        _tmp: tmp,
    };
    // The verdict line, for CI logs.
    for l in r.stdout.lines().filter(|l| l.starts_with("drill: ")) {
        println!("{l}");
    }
    r
}

pub fn summary(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json written");
    serde_json::from_str(&text).unwrap()
}

pub fn explain(r: &Run) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}\nreport:\n{}",
        r.code,
        r.stdout,
        r.stderr,
        std::fs::read_to_string(r.dir.join("report.md")).unwrap_or_default()
    )
}

/// `phalanx drill --local 3 --faults FAULTS --duration DURATION EXTRA...`.
pub fn local_drill(faults: &str, duration: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--local", "3", "--faults", faults, "--duration", duration];
    args.extend_from_slice(extra);
    drill(&args)
}

/// Drills of one test binary run one at a time: they are timing-sensitive on
/// small machines. Hold the guard for the whole test.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A test that failed holding the lock poisons it; the next still runs.
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The store's verdicts in `summary.json`.
pub const STORE_VERDICTS: [&str; 4] = ["linearizable", "watch", "leases", "lost_writes_verdict"];

/// Assert every store checker of the run said PASS; its summary.
pub fn assert_store_verdicts_pass(r: &Run) -> serde_json::Value {
    let s = summary(&r.dir);
    for v in STORE_VERDICTS {
        assert_eq!(s[v], "PASS", "{v}: {}", explain(r));
    }
    s
}

/// Assert the run exited 0 and every store checker said PASS; its summary.
pub fn assert_passed(r: &Run) -> serde_json::Value {
    assert_eq!(r.code, 0, "{}", explain(r));
    assert_store_verdicts_pass(r)
}

/// Assert a run was busy: more than `min_ok` successful operations and
/// more than 10 acknowledged writes (a verdict over nothing proves nothing).
pub fn assert_busy(r: &Run, s: &serde_json::Value, min_ok: u64) {
    assert!(
        s["total"]["ok"].as_u64().unwrap() > min_ok,
        "too few successful operations: {}",
        explain(r)
    );
    assert!(s["acknowledged_writes"].as_u64().unwrap() > 10);
}

/// The run's report.md.
pub fn report_md(r: &Run) -> String {
    std::fs::read_to_string(r.dir.join("report.md")).unwrap()
}

/// Assert the run's report.md contains every one of `needles`.
pub fn assert_report_has(r: &Run, needles: &[&str]) {
    let md = report_md(r);
    for needle in needles {
        assert!(md.contains(needle), "report.md lacks {needle:?}:\n{md}");
    }
}

/// The run's timeline.svg.
pub fn timeline_svg(r: &Run) -> String {
    std::fs::read_to_string(r.dir.join("timeline.svg")).unwrap()
}
