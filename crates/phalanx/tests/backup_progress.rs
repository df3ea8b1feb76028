//! Long backup operations show their progress: a progress bar when stderr is a
//! terminal (run under `script`, which gives the command a pseudo-terminal),
//! plain lines every `--progress-interval-ms` otherwise.

mod support;

use std::process::Command;

use support::backups::{keygen, ok, phalanx};
use support::*;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn backup_verify_and_restore_show_progress_lines_or_a_bar() {
    let c = Cluster::start(1, &[]);
    let dir = tempfile::tempdir().unwrap();
    // About 2 MB that compresses to about half (random hex digits): 100 keys of
    // 20 KB, from a xorshift generator.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..100u32 {
        let value: String = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{:02x}", x as u8)
            })
            .collect();
        c.ctl(&["put", &format!("k{i:03}"), &value]);
    }
    let (key, public) = keygen(dir.path());
    let eps = c.endpoint_list().join(",");
    let repo = format!("file://{}", dir.path().join("repo").display());

    let key = key.to_str().unwrap();
    // `phalanx ARGS --progress-interval-ms MS` through a pipe: it succeeds; its stderr.
    let stderr_of = |args: &[&str], interval_ms: &str| -> String {
        let mut args = args.to_vec();
        args.extend(["--progress-interval-ms", interval_ms]);
        let out = phalanx(&args, &[]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        ok(out);
        err
    };
    // `restore` from `source` into a new data dir `name`, with its cluster flags.
    let restore = |source: &[&str], name: &str| -> Vec<String> {
        let data_dir = dir.path().join(name);
        let flags = [
            "--name",
            "r1",
            "--initial-cluster",
            "r1=http://127.0.0.1:1",
            "--initial-cluster-token",
            "progress",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ];
        std::iter::once("restore")
            .chain(source.iter().copied())
            .chain(flags)
            .map(String::from)
            .collect()
    };

    // Not a terminal: plain lines, each naming the phase and the bytes so far.
    let err = stderr_of(
        &[
            "backup",
            "now",
            "--endpoints",
            &eps,
            "--to",
            &repo,
            "--recipient",
            &public,
        ],
        "1",
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("backup: ") && l.contains(" MiB") && l.contains(" chunks")),
        "no progress line: {err}"
    );
    assert!(
        !err.contains('\x1b') && !err.contains('\r'),
        "no terminal codes in a pipe: {err:?}"
    );
    let verify = ["backup", "verify", "--from", &repo, "--identity", key];
    let err = stderr_of(&verify, "1");
    assert!(
        err.lines()
            .any(|l| l.starts_with("verify: ") && l.contains(" of ") && l.contains('%')),
        "no progress line with the total: {err}"
    );
    let args = restore(&["--from", &repo, "--identity", key], "restored");
    let err = stderr_of(&strs(&args), "1");
    assert!(
        err.lines().any(|l| l.starts_with("restore: ")),
        "no progress line: {err}"
    );
    // A migration from an etcd snapshot file (here one saved from the member).
    let snap = dir.path().join("snap.db");
    c.ctl(&["snapshot", "save", snap.to_str().unwrap()]);
    let args = restore(
        &["--from-etcd-snapshot", snap.to_str().unwrap()],
        "from-etcd",
    );
    let err = stderr_of(&strs(&args), "1");
    assert!(
        err.lines()
            .any(|l| l.starts_with("restore: ") && l.contains(" MiB")),
        "no progress line: {err}"
    );
    // With 0, none.
    let err = stderr_of(&verify, "0");
    assert!(!err.contains("verify: "), "{err}");

    // A terminal: a progress bar, redrawn in place. The upload is capped so that
    // the backup lasts several redraws (about 2 MB at 400 KB/s).
    let cmd = format!(
        "{BIN} backup now --endpoints {eps} --to {repo}2 --recipient {public} --max-upload-bytes-per-s 400000"
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("script (bsdutils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("backup "), "the result is printed: {text:?}");
    assert!(
        text.contains("B/") && text.contains("backup: reading the snapshot") && text.contains('\r'),
        "no progress bar on a terminal: {text:?}"
    );
}
