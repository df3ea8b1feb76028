//! A full backend quota recovers with etcd's procedure: delete, compact,
//! defrag, disarm. Defragment gives the freed pages back to the file system,
//! so `kv.redb` shrinks and Status reports both `db_size` (file) and
//! `db_size_in_use`.

mod support;

use std::time::Duration;

use support::{wait_for, Cluster};

/// Quota of the test member (bytes).
const QUOTA_BACKEND_BYTES: u64 = 16 * 1024 * 1024;
/// Value size of the filling writes.
const VALUE_BYTES: usize = 64 * 1024;
/// Most puts tried before the quota must have been reached.
const MAX_FILL_PUTS: usize = 2_000;

fn ctl_ok(c: &Cluster, args: &[&str]) -> String {
    c.ctl(args)
}

/// (db_size, db_size_in_use) of the single member, from Status.
fn sizes(c: &Cluster) -> (u64, u64) {
    let out = ctl_ok(c, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let st = &v[0]["Status"];
    (
        st["dbSize"].as_u64().unwrap(),
        st["dbSizeInUse"].as_u64().unwrap(),
    )
}

#[test]
fn full_quota_recovers_with_delete_compact_defrag_disarm() {
    let c = Cluster::start(
        1,
        &["--quota-backend-bytes", &QUOTA_BACKEND_BYTES.to_string()],
    );
    let value = "v".repeat(VALUE_BYTES);
    let mut puts = 0;
    let nospace = loop {
        assert!(puts < MAX_FILL_PUTS, "no NOSPACE after {puts} puts");
        let out = c.etcdctl(&["put", &format!("k-{puts:05}"), &value]);
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).to_string();
        }
        puts += 1;
    };
    assert!(
        nospace.contains("database space exceeded"),
        "expected NOSPACE, got: {nospace}"
    );
    let (full_size, full_in_use) = sizes(&c);
    eprintln!(
        "NOSPACE after {puts} puts of {VALUE_BYTES} B ({} KiB of values): db_size {full_size}, in use {full_in_use}",
        puts * VALUE_BYTES / 1024
    );
    assert!(ctl_ok(&c, &["alarm", "list"]).contains("NOSPACE"));

    // etcd's procedure.
    ctl_ok(&c, &["del", "--prefix", "k-"]);
    let out = ctl_ok(&c, &["get", "x", "-w", "json"]);
    let rev = serde_json::from_str::<serde_json::Value>(&out).unwrap()["header"]["revision"]
        .as_u64()
        .unwrap();
    ctl_ok(&c, &["compact", &rev.to_string(), "--physical"]);
    let defrag = ctl_ok(&c, &["defrag"]);
    assert!(defrag.contains("Finished defragmenting"), "{defrag}");
    let (size, in_use) = sizes(&c);
    eprintln!("after delete, compact, defrag: db_size {size}, in use {in_use}");
    assert!(
        size < full_size / 2,
        "the file did not shrink: {full_size} -> {size}"
    );
    assert!(in_use <= size);
    ctl_ok(&c, &["alarm", "disarm"]);
    assert!(!ctl_ok(&c, &["alarm", "list"]).contains("NOSPACE"));

    // Writes succeed again, and the alarm is not raised again.
    wait_for(
        "a put to succeed after disarm",
        Duration::from_secs(10),
        || {
            c.etcdctl(&["put", "after", &value])
                .status
                .success()
                .then_some(())
        },
    );
    for i in 0..10 {
        ctl_ok(&c, &["put", &format!("again-{i}"), &value]);
    }
    assert!(!ctl_ok(&c, &["alarm", "list"]).contains("NOSPACE"));
}
