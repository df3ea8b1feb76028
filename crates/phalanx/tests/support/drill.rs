//! Running `phalanx drill` from tests: the run, its report and a failure
//! explanation with everything needed to diagnose it. Included with
//! `#[path = "support/drill.rs"] mod drill_support;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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
