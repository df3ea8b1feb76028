//! Phalanx store → etcd snapshot → Phalanx store keeps everything etcd's schema carries
//! (history, revisions, versions, leases; same HashKV), and Debian's etcd 3.4
//! `etcdctl snapshot status` / `snapshot restore` accept what the writer produces.

use std::path::Path;
use std::process::Command;

use etcd_snapshot::schema::MemberJson;
use etcd_snapshot::{write_etcd_db, EtcdSnapshot, ExportSettings, SnapshotError, Trailer};
use sha2::{Digest, Sha256};

fn put(k: &str, v: &str, lease: i64) -> mvcc::Command {
    mvcc::Command::put(&mvcc::PbPutRequest {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        lease,
        ..Default::default()
    })
}

fn del(k: &str) -> mvcc::Command {
    mvcc::Command::delete_range(&mvcc::PbDeleteRequest {
        key: k.as_bytes().to_vec(),
        ..Default::default()
    })
}

/// Keys, overwrites, deletes, a lease with keys, a compaction, more history after it.
fn populated(dir: &Path) -> mvcc::Store {
    let s = mvcc::Store::open(&dir.join("kv.redb")).unwrap();
    let mut n = 0u64;
    let mut apply = |c: mvcc::Command| {
        n += 1;
        s.apply_batch(&[Some(c)], &n.to_le_bytes(), false).unwrap();
    };
    apply(mvcc::Command::LeaseGrant {
        id: 0x1234,
        ttl_seconds: 300,
    });
    apply(mvcc::Command::LeaseGrant {
        id: 0x99,
        ttl_seconds: 60,
    });
    for i in 0..2_000 {
        apply(put(
            &format!("k/{i:05}"),
            &format!("v{i}-{}", "x".repeat(i % 300)),
            0,
        ));
    }
    apply(put("leased/a", "A", 0x1234));
    apply(put("leased/b", "B", 0x1234));
    apply(put("leased/moved", "M", 0x1234));
    apply(put("leased/moved", "M2", 0));
    for i in 0..50 {
        apply(put(&format!("k/{i:05}"), "overwritten", 0));
    }
    apply(del("k/00007"));
    apply(mvcc::Command::Compact { revision: 1_500 });
    apply(put("k/00007", "back", 0));
    apply(del("k/00008"));
    apply(put("big", &"z".repeat(100_000), 0));
    s
}

fn kvs(s: &mvcc::Store, rev: i64) -> Vec<mvcc::PbKeyValue> {
    s.range(&mvcc::PbRangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision: rev,
        ..Default::default()
    })
    .unwrap()
    .kvs
}

fn export(store: &mvcc::Store, out: &Path) -> etcd_snapshot::ExportSummary {
    let mut stream = Vec::new();
    store.write_snapshot(&mut stream).unwrap();
    let settings = ExportSettings {
        members: vec![MemberJson {
            id: 0xabc,
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            name: "n1".into(),
            client_urls: vec!["http://127.0.0.1:2379".into()],
            is_learner: false,
        }],
        cluster_version: "3.4.0".into(),
        consistent_index: 42,
    };
    let sum = write_etcd_db(&mut stream.as_slice(), out, &settings).unwrap();
    let mut db = std::fs::read(out).unwrap();
    let digest = Sha256::digest(&db);
    db.extend_from_slice(&digest);
    std::fs::write(out, db).unwrap();
    sum
}

#[test]
fn store_to_etcd_and_back_keeps_history_leases_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    let a = populated(dir.path());
    let file = dir.path().join("snap.db");
    let sum = export(&a, &file);
    assert_eq!(sum.revision, a.current_revision());
    assert_eq!(sum.compact_revision, 1_500);
    assert_eq!(sum.leases, 2);

    let snap = EtcdSnapshot::open(&file, false).unwrap();
    assert!(matches!(snap.trailer, Trailer::Verified(_)));
    let mut stream = Vec::new();
    let imp = snap.write_mvcc_stream(&mut stream).unwrap();
    assert_eq!(imp.revision, a.current_revision());
    assert_eq!(imp.compact_revision, 1_500);
    assert_eq!(
        (imp.leases, imp.leased_keys, imp.detached_records),
        (2, 2, 0)
    );
    assert_eq!(imp.consistent_index, 42);
    assert_eq!(imp.members[0].name, "n1");

    let bdir = tempfile::tempdir().unwrap();
    let b = mvcc::Store::open(&bdir.path().join("kv.redb")).unwrap();
    b.install_snapshot(&mut stream.as_slice()).unwrap();
    assert_eq!(b.current_revision(), a.current_revision());
    assert_eq!(b.compact_revision(), a.compact_revision());
    for rev in [0, 1_500, 1_700, a.current_revision() - 2] {
        assert!(kvs(&a, rev) == kvs(&b, rev), "reads at {rev} differ");
    }
    assert_eq!(a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
    let la = a.leases();
    let lb = b.leases();
    assert_eq!(format!("{la:?}"), format!("{lb:?}"));
    assert_eq!(lb.iter().find(|l| l.id == 0x1234).unwrap().keys.len(), 2);
}

#[test]
fn a_corrupted_or_bare_snapshot_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let a = populated(dir.path());
    let file = dir.path().join("snap.db");
    export(&a, &file);
    let mut b = std::fs::read(&file).unwrap();
    // A flipped byte in the database: the SHA-256 trailer no longer matches.
    b[5 * 4096 + 100] ^= 1;
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, &b).unwrap();
    let e = EtcdSnapshot::open(&bad, false).err().unwrap();
    assert!(matches!(e, SnapshotError::HashMismatch { .. }), "{e}");
    // Without the trailer: refused unless allowed (etcdctl's --skip-hash-check).
    b[5 * 4096 + 100] ^= 1;
    std::fs::write(&bad, &b[..b.len() - 32]).unwrap();
    let e = EtcdSnapshot::open(&bad, false).err().unwrap();
    assert!(e.to_string().contains("--skip-hash-check"), "{e}");
    let s = EtcdSnapshot::open(&bad, true).unwrap();
    assert_eq!(s.trailer, Trailer::Absent);
    s.write_mvcc_stream(&mut std::io::sink()).unwrap();
    // Not a database at all.
    std::fs::write(&bad, vec![7u8; 8192]).unwrap();
    let e = EtcdSnapshot::open(&bad, true).err().unwrap();
    assert!(matches!(e, SnapshotError::NotBbolt { .. }), "{e}");
}

const ETCDCTL: &str = "/usr/bin/etcdctl";

fn etcdctl(args: &[&str]) -> (bool, String) {
    assert!(
        Path::new(ETCDCTL).exists(),
        "etcdctl is missing: run `bash .ci/install`"
    );
    let o = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn etcd_reads_and_restores_what_the_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = populated(dir.path());
    let file = dir.path().join("snap.db");
    export(&a, &file);
    let f = file.to_str().unwrap();
    let (ok, out) = etcdctl(&["snapshot", "status", f, "-w", "json"]);
    assert!(ok, "snapshot status: {out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["revision"].as_i64().unwrap(),
        a.current_revision(),
        "{out}"
    );
    let restored = dir.path().join("restored");
    let (ok, out) = etcdctl(&[
        "snapshot",
        "restore",
        f,
        "--name",
        "e1",
        "--initial-cluster",
        "e1=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(ok, "snapshot restore: {out}");
    // etcd's restore rewrote the database with bbolt: read it back with our reader.
    let db = restored.join("member/snap/db");
    let back = EtcdSnapshot::open(&db, true).unwrap();
    let imp = back.write_mvcc_stream(&mut std::io::sink()).unwrap();
    assert_eq!(imp.revision, a.current_revision());
    assert_eq!(imp.compact_revision, 1_500);
}
