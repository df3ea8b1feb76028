//! Fuzz target: the bbolt reader and the etcd-snapshot conversion, which read files
//! that come from elsewhere (`phalanx restore --from-etcd-snapshot`, backups of etcd
//! snapshots). Seeds are etcd databases written by `etcd_snapshot::write_etcd_db` from
//! a small store; after mutation both meta pages are re-checksummed (when the input
//! still holds them) so the damage reaches the page tree instead of stopping at the
//! meta checksum. Property: every input is refused with an error or converted; no
//! panic, and a converted stream installs into a store or is refused.

use std::path::Path;

use etcd_snapshot::bbolt::{fnv64a, META_CHECKSUMMED_BYTES, PAGE_HEADER_BYTES};
use mvcc::{Command, PbPutRequest, Store};

const PAGE: usize = 4096;

fn seed_db() -> Vec<u8> {
    let s = Store::open_backend(redb::backends::InMemoryBackend::new(), Path::new("seed")).unwrap();
    let mut cmds = vec![Command::LeaseGrant {
        id: 7,
        ttl_seconds: 30,
    }];
    for i in 0..40 {
        cmds.push(Command::put(&PbPutRequest {
            key: format!("key/{i:03}").into_bytes(),
            value: vec![b'v'; (i * 37) % 300],
            lease: if i % 5 == 0 { 7 } else { 0 },
            ..Default::default()
        }));
    }
    cmds.push(Command::Compact { revision: 10 });
    for c in cmds {
        s.apply_batch(&[Some(c)], b"meta", false).unwrap();
    }
    let mut stream = Vec::new();
    s.write_snapshot(&mut stream).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seed.db");
    etcd_snapshot::write_etcd_db(
        &mut stream.as_slice(),
        &out,
        &etcd_snapshot::ExportSettings::default(),
    )
    .unwrap();
    std::fs::read(out).unwrap()
}

/// Recompute the FNV-64a checksum of the meta at the start of page `page`.
fn reseal(b: &mut [u8], page: usize) {
    let at = page * PAGE + PAGE_HEADER_BYTES;
    if b.len() >= at + META_CHECKSUMMED_BYTES + 8 {
        let sum = fnv64a(&b[at..at + META_CHECKSUMMED_BYTES]);
        b[at + META_CHECKSUMMED_BYTES..at + META_CHECKSUMMED_BYTES + 8]
            .copy_from_slice(&sum.to_le_bytes());
    }
}

#[test]
fn fuzz_etcd_snapshot() {
    let seed = seed_db();
    assert!(
        seed.len() <= fuzz::MAX_INPUT_BYTES,
        "seed of {} bytes",
        seed.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.db");
    let report = fuzz::fuzz("etcd_snapshot", &[seed], |input| {
        let mut b = input.to_vec();
        reseal(&mut b, 0);
        reseal(&mut b, 1);
        std::fs::write(&path, &b).unwrap();
        if let Ok(db) = etcd_snapshot::bbolt::Db::open(&path, None) {
            // Walk every bucket the root lists; errors are fine.
            if let Ok(entries) = db.iter(&db.root()).collect::<Result<Vec<_>, _>>() {
                for e in entries.iter().filter(|e| e.is_bucket) {
                    if let Ok(b) = db.parse_bucket_value(&e.key, &e.value) {
                        for item in db.iter(&b) {
                            if item.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
        if let Ok(snap) = etcd_snapshot::EtcdSnapshot::open(&path, true) {
            let mut stream = Vec::new();
            if snap.write_mvcc_stream(&mut stream).is_ok() {
                let s =
                    Store::open_backend(redb::backends::InMemoryBackend::new(), Path::new("fuzz"))
                        .unwrap();
                let _ = s.install_snapshot(&mut stream.as_slice());
            }
        }
    });
    assert!(report.executions > 0);
}
