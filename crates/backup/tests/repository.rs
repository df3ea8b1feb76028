//! The repository format end to end, on real components but without a cluster: a real
//! `mvcc::Store`, its snapshot in the exact form a member streams (and `etcdctl snapshot
//! save` stores), a real `file://` destination, Debian's `age` tool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backup::format::{self, Manifest};
use backup::*;
use sha2::{Digest, Sha256};

const AGE: &str = "/usr/bin/age";

struct Keys {
    _dir: tempfile::TempDir,
    file: PathBuf,
    recipient: String,
    other_file: PathBuf,
}

fn keys() -> Keys {
    use age::secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let other = age::x25519::Identity::generate();
    let file = dir.path().join("key.txt");
    let other_file = dir.path().join("other.txt");
    std::fs::write(
        &file,
        format!("# test key\n{}\n", id.to_string().expose_secret()),
    )
    .unwrap();
    std::fs::write(
        &other_file,
        format!("{}\n", other.to_string().expose_secret()),
    )
    .unwrap();
    Keys {
        _dir: dir,
        file,
        recipient: id.to_public().to_string(),
        other_file,
    }
}

fn put(k: &str, v: &[u8], lease: i64) -> mvcc::Command {
    mvcc::Command::put(&mvcc::PbPutRequest {
        key: k.as_bytes().to_vec(),
        value: v.to_vec(),
        lease,
        ..Default::default()
    })
}

/// A store with `n` keys of `value_bytes` (deterministic content), a lease with a key,
/// a deleted key; returns (store, revision noted half-way).
fn build_store(dir: &Path, n: usize, value_bytes: usize) -> (mvcc::Store, i64) {
    let store = mvcc::Store::open(&dir.join("kv.redb")).unwrap();
    let mut applied = 0u64;
    let mut apply = |cmds: Vec<mvcc::Command>| {
        applied += 1;
        let items: Vec<Option<mvcc::Command>> = cmds.into_iter().map(Some).collect();
        store
            .apply_batch(&items, &applied.to_le_bytes(), false)
            .unwrap();
    };
    apply(vec![mvcc::Command::LeaseGrant {
        id: 7,
        ttl_seconds: 600,
    }]);
    apply(vec![put("leased", b"with lease 7", 7)]);
    let value = |i: usize, round: u8| -> Vec<u8> {
        let mut h = Sha256::digest(format!("{i}/{round}").as_bytes()).to_vec();
        while h.len() < value_bytes {
            let more = Sha256::digest(&h).to_vec();
            h.extend_from_slice(&more);
        }
        h.truncate(value_bytes);
        h
    };
    for batch in (0..n).collect::<Vec<_>>().chunks(500) {
        apply(
            batch
                .iter()
                .map(|&i| put(&format!("key/{i:06}"), &value(i, 0), 0))
                .collect(),
        );
    }
    apply(vec![put("gone-later", b"present at R", 0)]);
    let mid = store.current_revision();
    // After R: overwrite some keys, delete one, add one.
    apply(
        (0..10)
            .map(|i| put(&format!("key/{i:06}"), &value(i, 1), 0))
            .collect(),
    );
    apply(vec![mvcc::Command::delete_range(&mvcc::PbDeleteRequest {
        key: b"gone-later".to_vec(),
        ..Default::default()
    })]);
    apply(vec![put("new-after-r", b"x", 0)]);
    store.apply_batch(&[None], &[0xAB; 24], true).unwrap();
    (store, mid)
}

/// The store's snapshot exactly as a member streams it (etcd-api's maintenance.rs).
fn snapshot_file(store: &mvcc::Store, path: &Path) {
    let mut data = Vec::new();
    store.write_snapshot(&mut data).unwrap();
    let payload_len = data.len() as u64;
    let padded = (data.len() + 8).div_ceil(512) * 512;
    data.resize(padded - 8, 0);
    data.extend_from_slice(&payload_len.to_le_bytes());
    let digest = Sha256::digest(&data);
    data.extend_from_slice(&digest);
    std::fs::write(path, data).unwrap();
}

fn settings(to: &[String], recipient: &str) -> BackupSettings {
    BackupSettings {
        destinations: to.to_vec(),
        recipients: vec![recipient.to_string()],
        // Small chunks so a few-MB test store makes a few hundred objects.
        chunker: ChunkerSettings {
            chunk_min_bytes: 4 * 1024,
            chunk_avg_bytes: 16 * 1024,
            chunk_max_bytes: 64 * 1024,
        },
        retry: RetrySettings {
            max_upload_retries: 1,
            retry_initial_backoff_ms: 10,
            retry_max_backoff_ms: 50,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn read(url: &str, ids: &[PathBuf]) -> ReadSettings {
    ReadSettings {
        from: url.into(),
        identity_files: ids.to_vec(),
        s3: S3Settings::default(),
        retry: RetrySettings::default(),
        progress: Default::default(),
    }
}

fn restore_settings(
    url: &str,
    ids: &[PathBuf],
    target: Target,
    data_dir: &Path,
) -> RestoreSettings {
    RestoreSettings {
        read: read(url, ids),
        target,
        name: "m1".into(),
        initial_cluster: "m1=http://127.0.0.1:2380".into(),
        initial_cluster_token: "restored".into(),
        initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
        data_dir: data_dir.to_path_buf(),
        bump_revision: DEFAULT_BUMP_REVISION,
        check_page_keys: 1000,
        cache_bytes: backup::RESTORE_STORE_CACHE_BYTES,
    }
}

/// (key, value, create revision, mod revision, version)
type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64);

fn all_keys(store: &mvcc::Store, rev: i64) -> Vec<Kv> {
    let r = store
        .range(&mvcc::PbRangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: rev,
            ..Default::default()
        })
        .unwrap();
    r.kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    keys: Keys,
    url: String,
    mid: i64,
    head: i64,
    store: mvcc::Store,
    first: BackupOutcome,
}

async fn fixture(n: usize) -> Fixture {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let (store, mid) = build_store(&dir.join("src"), n, 1024);
    let head = store.current_revision();
    snapshot_file(&store, &dir.join("snap1.db"));
    let keys = keys();
    let url = format!("file://{}", dir.join("repo").display());
    let first = backup_now(
        &Source::File(dir.join("snap1.db")),
        &settings(std::slice::from_ref(&url), &keys.recipient),
    )
    .await
    .unwrap()
    .into_result()
    .unwrap();
    Fixture {
        _dir: d,
        dir,
        keys,
        url,
        mid,
        head,
        store,
        first,
    }
}

fn objects(repo: &Path, sub: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join(sub)];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e)
            } else {
                out.push(e)
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_backup_of_unchanged_store_dedups_and_restore_gives_state_at_revision() {
    let f = fixture(4000).await;
    let first_up = f.first.destinations[0].uploaded_bytes;
    assert_eq!(f.first.revision, f.head);
    // Unchanged data, but the Raft bookkeeping moved on (as it does on a live member).
    f.store.apply_batch(&[None], &[0xCD; 24], true).unwrap();
    snapshot_file(&f.store, &f.dir.join("snap2.db"));
    let second = backup_now(
        &Source::File(f.dir.join("snap2.db")),
        &settings(std::slice::from_ref(&f.url), &f.keys.recipient),
    )
    .await
    .unwrap()
    .into_result()
    .unwrap();
    let up = second.destinations[0].uploaded_bytes;
    let ratio = up as f64 / first_up as f64;
    println!(
        "dedup: first backup uploaded {first_up} bytes in {} chunks; second uploaded {up} bytes ({:.3}% of the first, {} new chunks)",
        f.first.chunks,
        ratio * 100.0,
        second.destinations[0].new_chunks
    );
    assert!(
        ratio <= 0.01,
        "second backup uploaded {:.2}% of the first",
        ratio * 100.0
    );
    assert_eq!(second.destinations[0].new_chunks, 0);

    let d = Destination::open(&f.url, &S3Settings::default(), &RetrySettings::default()).unwrap();
    let list = list_backups(&d).await.unwrap();
    assert_eq!(list.len(), 2);

    let rep = verify(&read(&f.url, std::slice::from_ref(&f.keys.file)), None)
        .await
        .unwrap();
    assert_eq!(rep.revision, f.head);
    let list = list_backups(&d).await.unwrap();
    assert!(list[1].verified.as_ref().unwrap().ok);

    // Restore at the noted revision R.
    let target = f.dir.join("restored");
    let r = restore(&restore_settings(
        &f.url,
        std::slice::from_ref(&f.keys.file),
        Target::Revision(f.mid),
        &target,
    ))
    .await
    .unwrap();
    assert_eq!(r.revision, f.mid);
    let restored = mvcc::Store::open(&target.join("member/kv.redb")).unwrap();
    assert_eq!(all_keys(&restored, 0), all_keys(&f.store, f.mid));
    assert_eq!(restored.current_revision(), f.head + DEFAULT_BUMP_REVISION);
    assert_eq!(restored.compact_revision(), f.head + DEFAULT_BUMP_REVISION);
    assert!(
        restored.applied_meta().unwrap().is_none(),
        "no Raft bookkeeping in a restored store"
    );
    assert_eq!(restored.leases().len(), 1);
    assert!(all_keys(&restored, 0).iter().any(|k| k.0 == b"gone-later"));
    assert!(!all_keys(&restored, 0).iter().any(|k| k.0 == b"new-after-r"));

    // Newest (no target): the head state.
    let target2 = f.dir.join("restored2");
    restore(&restore_settings(
        &f.url,
        std::slice::from_ref(&f.keys.file),
        Target::Newest,
        &target2,
    ))
    .await
    .unwrap();
    let restored2 = mvcc::Store::open(&target2.join("member/kv.redb")).unwrap();
    assert_eq!(all_keys(&restored2, 0), all_keys(&f.store, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_age_decrypts_every_kind_of_object() {
    assert!(
        Path::new(AGE).exists(),
        "{AGE} is missing: apt-get install -y age"
    );
    let f = fixture(300).await;
    let repo = f.dir.join("repo");
    let chunk = objects(&repo, "chunks").into_iter().next().unwrap();
    let out = std::process::Command::new(AGE)
        .arg("-d")
        .arg("-i")
        .arg(&f.keys.file)
        .arg(&chunk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = zstd::decode_all(&out.stdout[..]).unwrap();
    let name = chunk.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        format::hex(&Sha256::digest(&plain)),
        name.split('-').next().unwrap()
    );
    let manifest = objects(&repo, "backups")
        .into_iter()
        .find(|p| p.ends_with("manifest.age"))
        .unwrap();
    let out = std::process::Command::new(AGE)
        .arg("-d")
        .arg("-i")
        .arg(&f.keys.file)
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(out.status.success());
    let m: Manifest = serde_json::from_slice(&zstd::decode_all(&out.stdout[..]).unwrap()).unwrap();
    assert_eq!(m.revision, f.head);
    assert_eq!(m.chunks.len() as u64, f.first.chunks);
    // The wrong key does not open it.
    let out = std::process::Command::new(AGE)
        .arg("-d")
        .arg("-i")
        .arg(&f.keys.other_file)
        .arg(&chunk)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_and_missing_objects_are_named() {
    let f = fixture(600).await;
    let repo = f.dir.join("repo");
    let chunks = objects(&repo, "chunks");
    assert!(chunks.len() >= 3);
    let (bad, lost) = (&chunks[0], &chunks[chunks.len() - 1]);
    let mut b = std::fs::read(bad).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(bad, b).unwrap();
    std::fs::remove_file(lost).unwrap();
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let e = verify(&read(&f.url, std::slice::from_ref(&f.keys.file)), None)
        .await
        .unwrap_err()
        .to_string();
    println!("verify: {e}");
    assert!(e.contains(&name(bad)) && e.contains("corrupted"), "{e}");
    assert!(e.contains(&name(lost)) && e.contains("missing"), "{e}");
    let d = Destination::open(&f.url, &S3Settings::default(), &RetrySettings::default()).unwrap();
    let list = list_backups(&d).await.unwrap();
    assert!(!list[0].verified.as_ref().unwrap().ok);
    let target = f.dir.join("restored");
    let e = restore(&restore_settings(
        &f.url,
        std::slice::from_ref(&f.keys.file),
        Target::Newest,
        &target,
    ))
    .await
    .unwrap_err()
    .to_string();
    println!("restore: {e}");
    assert!(e.contains(&name(bad)) || e.contains(&name(lost)), "{e}");
    assert!(
        !target.join("member").exists(),
        "a failed restore leaves no member dir"
    );
}

/// A backup whose objects all pass their hash checks, but whose content is not the
/// state its manifest vouches for (here: the manifest, re-encrypted to the same key and
/// re-hashed in the summary, records another HashKV) is refused by `restore` and by
/// `verify`, naming the backup and both hashes; `restore` computes that HashKV on the
/// stream as it loads and leaves no member dir behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_content_disagrees_with_its_recorded_hash_kv_is_refused() {
    let f = fixture(300).await;
    let id = f.first.id.clone();
    let mut m = forge_manifest(&f, |m| m.hash_kv ^= 0x5a5a);
    let recorded = m.hash_kv;
    m.hash_kv ^= 0x5a5a;

    let target = f.dir.join("restored");
    let e = restore(&restore_settings(
        &f.url,
        std::slice::from_ref(&f.keys.file),
        Target::Newest,
        &target,
    ))
    .await
    .unwrap_err();
    println!("restore: {e}");
    assert!(
        matches!(&e, BackupError::HashMismatch { found, .. } if *found == recorded),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&id) && msg.contains(&format!("{:#010x}", m.hash_kv)),
        "{msg}"
    );
    assert!(
        !target.join("member").exists(),
        "a refused restore leaves no member dir"
    );
    let e = verify(&read(&f.url, std::slice::from_ref(&f.keys.file)), None)
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::HashMismatch { .. }), "{e}");
}

/// The counters a backup, a verify and a restore update as they run (what the
/// command line shows as a progress bar or lines) end at the whole stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_verify_and_restore_count_their_progress() {
    let f = fixture(300).await;
    let key = vec![f.keys.file.clone()];
    let mut s = settings(std::slice::from_ref(&f.url), &f.keys.recipient);
    let p = backup::progress::Progress::default();
    s.progress = p.clone();
    let out = backup_now(&Source::File(f.dir.join("snap1.db")), &s)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let seen = p.snapshot();
    assert_eq!(
        (seen.done_bytes, seen.chunks, seen.total_bytes),
        (out.snapshot_bytes, out.chunks, None),
        "{seen:?}"
    );
    assert!(seen.phase.starts_with("backup: "), "{seen:?}");
    // The first backup uploaded every chunk; this one (unchanged) none.
    assert_eq!(seen.uploaded_bytes, 0, "{seen:?}");

    let mut r = read(&f.url, &key);
    r.progress = backup::progress::Progress::default();
    verify(&r, None).await.unwrap();
    let seen = r.progress.snapshot();
    assert_eq!(seen.total_bytes, Some(out.snapshot_bytes), "{seen:?}");
    assert_eq!(
        (seen.done_bytes, seen.chunks),
        (out.snapshot_bytes, out.chunks)
    );
    assert!(seen.line().contains("(100 %)"), "{}", seen.line());

    let mut rs = restore_settings(&f.url, &key, Target::Newest, &f.dir.join("p"));
    rs.read.progress = backup::progress::Progress::default();
    restore(&rs).await.unwrap();
    let seen = rs.read.progress.snapshot();
    assert_eq!(seen.done_bytes, out.snapshot_bytes, "{seen:?}");
    assert!(seen.phase.starts_with("restore: "), "{seen:?}");
}

/// Rewrite the newest backup's manifest with `change` (re-sealed to the fixture's
/// recipient, the summary's manifest SHA-256 updated); the manifest as it was.
fn forge_manifest(f: &Fixture, change: impl FnOnce(&mut Manifest)) -> Manifest {
    let dir = f
        .dir
        .join("repo")
        .join(format::BACKUPS_PREFIX)
        .join(&f.first.id);
    let ids = format::load_identities(std::slice::from_ref(&f.keys.file)).unwrap();
    let obj = std::fs::read(dir.join(format::MANIFEST_NAME)).unwrap();
    let Ok(plain) = format::open(&obj, &ids, 1 << 30) else {
        panic!("the manifest opens with its key")
    };
    let original: Manifest = serde_json::from_slice(&plain).unwrap();
    let mut m = original.clone();
    change(&mut m);
    let recipients = format::parse_recipients(std::slice::from_ref(&f.keys.recipient)).unwrap();
    let forged = format::seal(&serde_json::to_vec(&m).unwrap(), &recipients, 3).unwrap();
    std::fs::write(dir.join(format::MANIFEST_NAME), &forged).unwrap();
    let mut summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format::SUMMARY_NAME)).unwrap()).unwrap();
    summary["manifest_sha256"] = format::sha256_hex(&forged).into();
    std::fs::write(
        dir.join(format::SUMMARY_NAME),
        serde_json::to_vec(&summary).unwrap(),
    )
    .unwrap();
    original
}

/// Manifests now leave out the whole stream's SHA-256 (each chunk's is checked);
/// those of older releases carry it, and it is still checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_manifest_with_the_stream_sha256_is_still_checked() {
    let f = fixture(300).await;
    let ids = format::load_identities(std::slice::from_ref(&f.keys.file)).unwrap();
    let key = vec![f.keys.file.clone()];
    // The stream, reassembled from the chunk objects: its SHA-256.
    let m = forge_manifest(&f, |_| {});
    assert_eq!(m.snapshot_sha256, None, "new manifests leave it out");
    let mut stream = Sha256::new();
    for c in &m.chunks {
        let obj = f
            .dir
            .join("repo")
            .join(format::chunk_key(&c.sha256, &c.object_sha256));
        let Ok(plain) = format::open(&std::fs::read(&obj).unwrap(), &ids, 1 << 30) else {
            panic!("chunk {} opens", obj.display())
        };
        stream.update(&plain);
    }
    let right = format::hex(&stream.finalize());
    forge_manifest(&f, |m| m.snapshot_sha256 = Some(right.clone()));
    verify(&read(&f.url, &key), None)
        .await
        .expect("a manifest with the right stream SHA-256 verifies");
    restore(&restore_settings(
        &f.url,
        &key,
        Target::Newest,
        &f.dir.join("ok"),
    ))
    .await
    .expect("and restores");
    let wrong = format::hex(&Sha256::digest(b"not the stream"));
    forge_manifest(&f, |m| m.snapshot_sha256 = Some(wrong.clone()));
    let e = verify(&read(&f.url, &key), None).await.unwrap_err();
    assert!(
        e.to_string().contains(&right) && e.to_string().contains(&wrong),
        "the refusal names both hashes: {e}"
    );
    let e = restore(&restore_settings(
        &f.url,
        &key,
        Target::Newest,
        &f.dir.join("no"),
    ))
    .await
    .unwrap_err();
    assert!(e.to_string().contains(&wrong), "{e}");
    assert!(!f.dir.join("no").join("member").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_to_do() {
    let f = fixture(200).await;
    let key = vec![f.keys.file.clone()];
    let t = |n: &str| f.dir.join(n);
    let e = restore(&restore_settings(&f.url, &[], Target::Newest, &t("a")))
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::IdentityRequired { .. }), "{e}");
    assert!(e.to_string().contains("--identity"), "{e}");
    let e = restore(&restore_settings(
        &f.url,
        std::slice::from_ref(&f.keys.other_file),
        Target::Newest,
        &t("b"),
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, BackupError::WrongIdentity { .. }), "{e}");
    let e = restore(&restore_settings(
        &f.url,
        &key,
        Target::Revision(f.head + 1),
        &t("c"),
    ))
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("newest restorable revision {}", f.head)),
        "{e}"
    );
    let e = restore(&restore_settings(
        &f.url,
        &key,
        Target::Time("2000-01-01T00:00:00Z".into()),
        &t("d"),
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, BackupError::TimeTooOld { .. }), "{e}");
    std::fs::create_dir_all(t("e")).unwrap();
    std::fs::write(t("e").join("x"), b"x").unwrap();
    let e = restore(&restore_settings(&f.url, &key, Target::Newest, &t("e")))
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::DataDirNotEmpty { .. }), "{e}");
    let mut s = restore_settings(&f.url, &key, Target::Newest, &t("f"));
    s.name = "nope".into();
    assert!(matches!(
        restore(&s).await.unwrap_err(),
        BackupError::BadFlags(_)
    ));
    // A backup without recipients is refused.
    let mut s = settings(std::slice::from_ref(&f.url), "");
    s.recipients.clear();
    let e = backup_now(&Source::File(f.dir.join("snap1.db")), &s)
        .await
        .unwrap_err();
    assert!(matches!(e, BackupError::NoRecipient), "{e}");
    // A time after the backup picks it.
    let later = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(60))
        .to_string();
    restore(&restore_settings(
        &f.url,
        &key,
        Target::Time(later),
        &t("g"),
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_without_its_manifest_is_not_listed_and_a_failing_destination_does_not_stop_the_others(
) {
    let f = fixture(200).await;
    let repo = f.dir.join("repo");
    let d = Destination::open(&f.url, &S3Settings::default(), &RetrySettings::default()).unwrap();
    assert_eq!(list_backups(&d).await.unwrap().len(), 1);
    let manifest = objects(&repo, "backups")
        .into_iter()
        .find(|p| p.ends_with("manifest.age"))
        .unwrap();
    std::fs::remove_file(manifest).unwrap();
    assert_eq!(
        list_backups(&d).await.unwrap().len(),
        0,
        "half-written backups are never listed"
    );

    // A destination that cannot be written (a file where the repository should be) fails
    // alone; the other one gets a complete backup.
    let blocked = f.dir.join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let bad_url = format!("file://{}", blocked.display());
    let out = backup_now(
        &Source::File(f.dir.join("snap1.db")),
        &settings(&[bad_url.clone(), f.url.clone()], &f.keys.recipient),
    )
    .await
    .unwrap();
    assert!(out.destinations[0].error.is_some());
    assert!(out.destinations[1].error.is_none());
    let e = out.into_result().unwrap_err().to_string();
    assert!(e.contains(&bad_url) && e.contains("1 of 2"), "{e}");
    assert_eq!(list_backups(&d).await.unwrap().len(), 1);
}
