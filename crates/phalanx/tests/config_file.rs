//! `phalanx node --config-file`: the same settings as the flags, from TOML;
//! flags win; unknown keys and bad values are refused with a precise error.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::alerts::get_json;
use support::*;

#[test]
fn node_runs_from_a_config_file_and_rejects_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let (alerting, backup) = (free_port(), free_port());
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"name = "solo"
data-dir = "{data}"
listen-client-urls = "http://127.0.0.1:{client}"
advertise-client-urls = "http://127.0.0.1:{client}"
listen-peer-urls = "http://127.0.0.1:{peer}"
initial-advertise-peer-urls = "http://127.0.0.1:{peer}"
initial-cluster = "solo=http://127.0.0.1:{peer}"
initial-cluster-state = "new"
initial-cluster-token = "cfg-test"
listen-metrics-urls = "http://127.0.0.1:{metrics}"
heartbeat-interval = 50
election-timeout = 300
alerting-listen = "127.0.0.1:{alerting}"
alerting-anomaly-sensitivity = 0.8
backup-listen = "127.0.0.1:{backup}"
backup-identity-file = ["{identity}"]
"#,
            data = dir.path().join("data").display(),
            identity = dir.path().join("key.txt").display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["node", "--config-file", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the configured member to become healthy",
        Duration::from_secs(30),
        || matches!(http_get(metrics, "/health"), Some((200, _))).then_some(()),
    );
    let out = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints=http://127.0.0.1:{client}"),
            "put",
            "k",
            "v",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The alerting and backup services took their settings from the file:
    // both listen where it says, and the default anomaly rules fire above
    // the file's sensitivity.
    let rules = wait_for(
        "the alerting listener given in the file",
        Duration::from_secs(30),
        || get_json(alerting, "/api/v1/rules"),
    )
    .to_string();
    assert!(
        rules.contains("\\\"robust\\\", 0.8, \\\"above\\\""),
        "the default anomaly rules should fire above the file's 0.8: {rules}"
    );
    wait_for(
        "the backup listener given in the file",
        Duration::from_secs(30),
        || matches!(http_get(backup, "/status"), Some((200, _))).then_some(()),
    );
    let _ = child.kill();
    let _ = child.wait();

    // Flags win over the file, for the alerting group too.
    let err = refused(&cfg, &["--alerting-anomaly-sensitivity", "1.5"]);
    assert!(err.contains("--alerting-anomaly-sensitivity"), "{err}");

    // Contradicting alerting keys: refused, naming both.
    let both = dir.path().join("both.toml");
    std::fs::write(
        &both,
        "name = \"x\"\ndisable-alerting = true\nalerting-listen = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let err = refused(&both, &[]);
    assert!(
        err.contains("disable-alerting") && err.contains("alerting-listen"),
        "{err}"
    );

    // Unknown keys, in each group: named in the error.
    for key in ["alerting-retention", "backup-identity"] {
        let bad = dir.path().join(format!("{key}.toml"));
        std::fs::write(&bad, format!("name = \"x\"\n{key} = 1\n")).unwrap();
        let err = refused(&bad, &[]);
        assert!(
            err.contains(key) && err.contains(&format!("{key}.toml")),
            "{err}"
        );
    }

    // Unknown key: named in the error.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nelection-timout = 300\n").unwrap();
    let err = refused(&bad, &[]);
    assert!(
        err.contains("election-timout") && err.contains("bad.toml"),
        "{err}"
    );

    // Inconsistent timing: refused with both values.
    let err = refused(
        &cfg,
        &["--heartbeat-interval", "200", "--election-timeout", "300"],
    );
    assert!(
        err.contains("--election-timeout (300 ms)")
            && err.contains("--heartbeat-interval (200 ms)"),
        "{err}"
    );

    // A URL that is not http: refused, naming the flag.
    let err = refused(&cfg, &["--listen-client-urls", "https://127.0.0.1:1"]);
    assert!(err.contains("--listen-client-urls"), "{err}");
}

/// `phalanx node --config-file CFG FLAGS…` must refuse to start: its stderr.
fn refused(cfg: &std::path::Path, flags: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["node", "--config-file", cfg.to_str().unwrap()])
        .args(flags)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the member started: {err}");
    err
}

/// A request or a write batch is one Raft log record: a limit above what a
/// record holds is refused at start, naming the flag, instead of letting a
/// large request fail-stop the member later.
#[test]
fn request_and_batch_limits_above_a_log_record_are_refused() {
    for flag in ["--max-request-bytes", "--max-write-batch-bytes"] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(support::BIN)
            .args(["node", "--name", "n1", "--data-dir"])
            .arg(dir.path())
            .args([flag, "40000000"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} 40000000 was accepted");
        assert!(
            err.contains(flag) && err.contains("33554432"),
            "{flag}: the error should name the flag and the limit: {err}"
        );
    }
}
