//! Backups and restores of etcd snapshots (what members stream since they speak etcd's
//! snapshot format, and what `etcdctl snapshot save` writes), with real components: a
//! real `mvcc::Store`, its etcd snapshot written by `etcd_snapshot`, a `file://`
//! destination. Values large enough to be stored in pieces by mvcc go all the way
//! through backup and restore.

use std::path::Path;

use backup::*;
use sha2::{Digest, Sha256};

fn put(k: &str, v: Vec<u8>, lease: i64) -> mvcc::Command {
    mvcc::Command::put(&mvcc::PbPutRequest {
        key: k.as_bytes().to_vec(),
        value: v,
        lease,
        ..Default::default()
    })
}

/// A store with small and large values (stored in pieces), an overwrite, a delete,
/// a lease with a key; returns it and its revision.
fn build(dir: &Path) -> mvcc::Store {
    let s = mvcc::Store::open(&dir.join("kv.redb")).unwrap();
    let mut n = 0u64;
    let mut apply = |c: mvcc::Command| {
        n += 1;
        s.apply_batch(&[Some(c)], &n.to_le_bytes(), false).unwrap();
    };
    apply(mvcc::Command::LeaseGrant {
        id: 9,
        ttl_seconds: 120,
    });
    for i in 0..200u32 {
        let len = if i % 20 == 0 {
            70_000 + i as usize
        } else {
            100
        };
        let v: Vec<u8> = (0..len).map(|j| (j as u32 * 31 + i) as u8).collect();
        apply(put(&format!("k/{i:03}"), v, 0));
    }
    apply(put("k/000", vec![b'x'; 9_000], 0));
    apply(put("leased", b"L".to_vec(), 9));
    apply(mvcc::Command::delete_range(&mvcc::PbDeleteRequest {
        key: b"k/199".to_vec(),
        ..Default::default()
    }));
    s
}

/// The store's etcd snapshot, as a member streams it and `etcdctl snapshot save` stores it.
fn etcd_snapshot_file(store: &mvcc::Store, path: &Path) {
    let mut stream = Vec::new();
    store.write_snapshot(&mut stream).unwrap();
    etcd_snapshot::write_etcd_db(
        &mut stream.as_slice(),
        path,
        &etcd_snapshot::ExportSettings::default(),
    )
    .unwrap();
    let mut db = std::fs::read(path).unwrap();
    let digest = Sha256::digest(&db);
    db.extend_from_slice(&digest);
    std::fs::write(path, db).unwrap();
}

fn all(store: &mvcc::Store) -> Vec<mvcc::PbKeyValue> {
    store
        .range(&mvcc::PbRangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap()
        .kvs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_file_backs_up_and_restores_large_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = build(d);
    let snap = d.join("snap.db");
    etcd_snapshot_file(&store, &snap);
    let id = age::x25519::Identity::generate();
    let key = d.join("key.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&key, format!("{}\n", id.to_string().expose_secret())).unwrap();
    }
    let url = format!("file://{}", d.join("repo").display());
    let settings = BackupSettings {
        destinations: vec![url.clone()],
        recipients: vec![id.to_public().to_string()],
        ..Default::default()
    };
    let first = backup_now(&Source::File(snap.clone()), &settings)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(first.revision, store.current_revision());
    // The conversion is deterministic: the same file backs up to the same chunks.
    let second = backup_now(&Source::File(snap.clone()), &settings)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(second.destinations[0].new_chunks, 0);
    let read = ReadSettings {
        from: url.clone(),
        identity_files: vec![key.clone()],
        s3: S3Settings::default(),
        retry: RetrySettings::default(),
        progress: Default::default(),
    };
    verify(&read, None).await.unwrap();
    let restored = d.join("restored");
    let rep = restore(&RestoreSettings {
        read,
        target: Target::Newest,
        name: "m1".into(),
        initial_cluster: "m1=http://127.0.0.1:2380".into(),
        initial_cluster_token: "t".into(),
        initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
        data_dir: restored.clone(),
        bump_revision: 0,
        check_page_keys: 50,
        cache_bytes: backup::RESTORE_STORE_CACHE_BYTES,
    })
    .await
    .unwrap();
    assert_eq!(rep.keys, 200);
    let back = mvcc::Store::open(&restored.join("member/kv.redb")).unwrap();
    let (a, b) = (all(&store), all(&back));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x.key == y.key && x.value == y.value && x.mod_revision == y.mod_revision);
    }
}

#[test]
fn restore_from_an_etcd_snapshot_writes_a_member_dir_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = build(d);
    let snap = d.join("snap.db");
    etcd_snapshot_file(&store, &snap);
    let settings = |data_dir: &Path, file: &Path| EtcdRestoreSettings {
        snapshot: file.to_path_buf(),
        skip_hash_check: false,
        name: "m1".into(),
        initial_cluster: "m1=http://127.0.0.1:2380".into(),
        initial_cluster_token: "t".into(),
        initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
        data_dir: data_dir.to_path_buf(),
        progress: Default::default(),
    };
    let target = d.join("m1");
    let rep = restore_from_etcd_snapshot(&settings(&target, &snap)).unwrap();
    assert_eq!(rep.revision, store.current_revision());
    assert_eq!((rep.keys, rep.leases, rep.leased_keys), (200, 1, 1));
    assert!(rep.sha256.is_some());
    let back = mvcc::Store::open(&target.join("member/kv.redb")).unwrap();
    assert!(all(&store) == all(&back), "restored keys differ");
    assert_eq!(store.hash_kv(0).unwrap(), back.hash_kv(0).unwrap());
    assert!(target.join("member/restored-from.json").exists());
    assert!(!target.join("member.restoring").exists());
    // The data dir is not empty now.
    let e = restore_from_etcd_snapshot(&settings(&target, &snap)).unwrap_err();
    assert!(matches!(e, BackupError::DataDirNotEmpty { .. }), "{e}");
    // A damaged file: refused before anything is written.
    let mut b = std::fs::read(&snap).unwrap();
    b[4 * 4096 + 7] ^= 0x10;
    let bad = d.join("bad.db");
    std::fs::write(&bad, &b).unwrap();
    let fresh = d.join("m2");
    let e = restore_from_etcd_snapshot(&settings(&fresh, &bad)).unwrap_err();
    assert!(e.to_string().contains("SHA-256 trailer mismatch"), "{e}");
    assert!(!fresh.exists());
    // Flags that disagree.
    let mut s = settings(&fresh, &snap);
    s.initial_advertise_peer_urls = vec!["http://127.0.0.1:9".into()];
    assert!(matches!(
        restore_from_etcd_snapshot(&s).unwrap_err(),
        BackupError::BadFlags(_)
    ));
}
