//! The default backup rules on a live cluster (issue 13): the backup service's
//! metrics reach every member's `/metrics` and so the alerting history, and
//! `PhalanxBackupFailed` and `PhalanxRestoreDrillFailed` fire for a
//! destination that cannot be written, naming it, while the destination
//! that works fires neither.

mod support;

use std::time::Duration;

use support::alerts::{alerting_cluster, get_json, phalanx, set_doc};
use support::backups::keygen;
use support::servers::Recorder;
use support::wait_for;

/// Bound on the whole incident: first backup attempt, the retry, a restore
/// drill, and the 500 ms evaluations of the test cluster.
const FIRE_WITHIN: Duration = Duration::from_secs(60);

/// Firing notifications the webhook received for `alertname`: their
/// `destination` group labels.
fn firing_destinations(hook: &Recorder, alertname: &str) -> Vec<String> {
    hook.all()
        .into_iter()
        .filter(|r| r.body["groupLabels"]["alertname"] == alertname && r.body["status"] == "firing")
        .map(|r| {
            r.body["groupLabels"]["destination"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn backup_failures_fire_the_default_rules_for_the_failing_destination_only() {
    let keys = tempfile::tempdir().unwrap();
    let (identity, public) = keygen(keys.path());
    let hook = Recorder::start(200);
    let (c, api) = alerting_cluster(3, &["--backup-identity-file", identity.to_str().unwrap()]);
    let dir = c.dir.path().to_path_buf();
    let eps = c.endpoints();
    set_doc(
        &dir,
        "config",
        "alertmanager.yml",
        &format!(
            "route:\n  receiver: hook\n  group_by: [alertname, destination]\n  group_wait: 1s\n  group_interval: 2s\n  repeat_interval: 1h\nreceivers:\n- name: hook\n  webhook_configs:\n  - url: http://127.0.0.1:{}/alerts\n",
            hook.port
        ),
        &eps,
    );

    // A destination under a regular file cannot be created: every backup to
    // it fails, and so does every restore drill from it.
    let good = format!("file://{}", dir.join("repo-good").display());
    let blocker = dir.join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let bad = format!("file://{}", blocker.join("repo").display());
    let out = phalanx(&[
        "backup",
        "schedule",
        "set",
        "--endpoints",
        &eps,
        "--to",
        &good,
        "--to",
        &bad,
        "--recipient",
        &public,
        "--backup-interval-ms",
        "3600000",
        "--failed-backup-retry-ms",
        "1000",
        "--archive-interval-ms",
        "0",
        "--drill-interval-ms",
        "2000",
    ]);
    assert!(
        out.status.success(),
        "schedule set: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The backup service's series are in the alerting history (read from the
    // member's own /metrics, not from --backup-listen).
    let q = format!(
        "/api/v1/query?query={}",
        support::alerts::enc("phalanx_backup_last_success_timestamp_seconds > 0")
    );
    let seen = wait_for("a successful backup in the history", FIRE_WITHIN, || {
        let v = get_json(api[0], &q)?;
        let r = v["data"]["result"].as_array()?;
        let d: Vec<String> = r
            .iter()
            .filter_map(|s| s["metric"]["destination"].as_str().map(String::from))
            .collect();
        d.contains(&good).then_some(d)
    });
    assert!(
        !seen.contains(&bad),
        "no backup to {bad} can have succeeded"
    );
    // The Raft log's fsync histogram (PhalanxHighFsyncLatency's input) is in
    // the history too.
    let fsyncs = format!(
        "/api/v1/query?query={}",
        support::alerts::enc("phalanx_disk_wal_fsync_duration_seconds_count > 0")
    );
    wait_for(
        "the log's fsync histogram in the history",
        FIRE_WITHIN,
        || {
            let v = get_json(api[0], &fsyncs)?;
            (!v["data"]["result"].as_array()?.is_empty()).then_some(())
        },
    );

    for alert in ["PhalanxBackupFailed", "PhalanxRestoreDrillFailed"] {
        let fired = wait_for(&format!("{alert} for {bad}"), FIRE_WITHIN, || {
            let d = firing_destinations(&hook, alert);
            d.contains(&bad).then_some(d)
        });
        assert!(
            !fired.contains(&good),
            "{alert} fired for the destination that works: {fired:?}"
        );
    }
    // The working destination's drill has run and succeeded by now (drills
    // run for every destination in turn); it still has no alert.
    for alert in ["PhalanxBackupFailed", "PhalanxRestoreDrillFailed"] {
        let d = firing_destinations(&hook, alert);
        assert!(!d.contains(&good), "{alert} fired for {good}: {d:?}");
    }
}
