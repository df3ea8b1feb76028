//! Storage faults stop a member or keep it from starting, clearly; they
//! never leave it serving wrong data, claiming leadership or reporting
//! healthy:
//!
//! - a full disk (a member's data dir on a small tmpfs) makes it exit
//!   non-zero, while the other two keep every acknowledged write;
//! - random bytes in the Raft log's write-ahead log (`member/wal/`) or
//!   kv.redb, an overwritten tail, a file truncated to 0: refused at start
//!   with a message naming the file, never a panic, never `/health` true;
//! - lost Raft state (the WAL's segments deleted, the whole data dir wiped)
//!   is refused, so a member can never vote twice in a term.

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{http_get, wait_for, Cluster};

/// Exit code of a member that stopped for good while running.
const HALTED_EXIT_CODE: i32 = 2;
/// Exit code of a member that refused to start.
const REFUSED_EXIT_CODE: i32 = 1;
/// Size of the tmpfs the disk-full member's data dir lives on.
const TMPFS_SIZE_MIB: u64 = 24;
/// Value size of the filling writes.
const FILL_VALUE_BYTES: usize = 256 * 1024;
/// Bound on filling the tmpfs until its member stops.
const FILL_TIMEOUT_S: u64 = 90;

/// A tmpfs mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (it runs as root in CI): mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir: Some(dir) }
    }
    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a member process still holding a file must not make the
        // unmount (and so the test's cleanup) fail.
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        drop(self.dir.take());
    }
}

/// A 3-member cluster whose member `n3` keeps its data dir at `n3_dir`.
fn cluster_with_n3_at(n3_dir: PathBuf) -> Cluster {
    let mut c = Cluster::plan(3, |_| Vec::new());
    c.members[2].data_dir = n3_dir;
    c.start_all();
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The value written under key number `n` (deterministic, so a read can be
/// checked without keeping the values).
fn value_of(n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((n * 31 + i * 7) % 251) as u8).collect()
}

/// Member `i`'s Status as (its id, the leader it reports), if it answers.
async fn status_of(url: &str) -> Option<(u64, u64)> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(300))
        .with_timeout(Duration::from_millis(1_000));
    let mut c = etcd_client::Client::connect([url], Some(opts)).await.ok()?;
    let s = c.status().await.ok()?;
    Some((s.header()?.member_id(), s.leader()))
}

#[test]
fn disk_full_member_stops_and_the_others_keep_every_write() {
    let tmpfs = Tmpfs::mount(TMPFS_SIZE_MIB);
    let mut c = cluster_with_n3_at(tmpfs.path().join("n3"));
    // n3 (on the small disk) must be a follower, so that a leader claim
    // from it could only come from a stopped Raft core's frozen metrics.
    let leader = c.wait_leader();
    if leader == 2 {
        let (_, body) = http_get(c.members[0].metrics_port, "/member").unwrap();
        let id: serde_json::Value = serde_json::from_str(&body).unwrap();
        let to = format!("{:x}", id["id"].as_u64().unwrap());
        let eps = c.members[2].client_url();
        c.ctl(&["--endpoints", &eps, "move-leader", &to]);
        wait_for("leadership moved off n3", Duration::from_secs(20), || {
            c.leader().filter(|l| *l != 2)
        });
    }
    let others = vec![c.members[0].client_url(), c.members[1].client_url()];
    let n3_url = c.members[2].client_url();
    let n3_metrics = c.members[2].metrics_port;

    let mut acked: Vec<usize> = Vec::new();
    let mut n3_claimed_leader = Vec::new();
    let mut n3_ready_after_fault = Vec::new();
    let started = Instant::now();
    let exit = rt().block_on(async {
        let mut client = etcd_client::Client::connect(others.clone(), None)
            .await
            .unwrap();
        let mut n = 0usize;
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(FILL_TIMEOUT_S),
                "n3 did not stop within {FILL_TIMEOUT_S} s of filling its disk"
            );
            let key = format!("fill-{n:06}");
            if client
                .put(key, value_of(n, FILL_VALUE_BYTES), None)
                .await
                .is_ok()
            {
                acked.push(n);
            }
            n += 1;
            // n3 never says it leads, and once its log reports the fault it
            // never says it is ready.
            if let Some((id, leader)) = status_of(&n3_url).await {
                if leader == id {
                    n3_claimed_leader.push(n);
                }
            }
            let faulted = std::fs::read_to_string(&c.members[2].log)
                .unwrap_or_default()
                .contains("No space left on device");
            if faulted && matches!(http_get(n3_metrics, "/ready"), Some((200, _))) {
                n3_ready_after_fault.push(n);
            }
            if let Some(status) = c.members[2].child.as_mut().unwrap().try_wait().unwrap() {
                return status;
            }
        }
    });
    c.members[2].child = None;
    let log = c.members[2].log_text();
    assert_eq!(exit.code(), Some(HALTED_EXIT_CODE), "n3 log:\n{log}");
    assert!(
        log.contains("No space left on device") && log.contains("storage fault"),
        "n3 did not say why it stopped:\n{log}"
    );
    assert!(
        n3_claimed_leader.is_empty(),
        "n3 claimed leadership after writes {n3_claimed_leader:?}"
    );
    assert!(
        n3_ready_after_fault.is_empty(),
        "n3 reported ready after its disk filled (writes {n3_ready_after_fault:?})"
    );
    assert!(
        acked.len() >= 10,
        "too few writes acknowledged: {}",
        acked.len()
    );

    // The other two keep serving, with every acknowledged write.
    let out = c.etcdctl_at(&others.join(","), &["put", "after-fault", "ok"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt().block_on(async {
        for url in &others {
            let mut cl = etcd_client::Client::connect([url.as_str()], None)
                .await
                .unwrap();
            for n in &acked {
                let r = cl.get(format!("fill-{n:06}"), None).await.unwrap();
                let kv = r
                    .kvs()
                    .first()
                    .unwrap_or_else(|| panic!("{url} lost acknowledged write {n}"));
                assert!(
                    kv.value() == value_of(*n, FILL_VALUE_BYTES).as_slice(),
                    "{url}: wrong value for write {n}"
                );
            }
        }
    });
    drop(c);
    drop(tmpfs);
}

/// Deterministic pseudo-random bytes (xorshift), so a failure replays.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// How a file is damaged.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Random bytes at `n` places spread over the file (from offset 0).
    Scattered(usize),
    /// The last MiB (or the whole file if smaller) overwritten.
    Tail,
    /// Truncated to 0 bytes.
    Truncate,
}

fn damage(path: &Path, how: Damage) {
    let len = std::fs::metadata(path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    match how {
        Damage::Scattered(n) => {
            // Spare the header page (a damaged header is refused by redb
            // itself: "magic number mismatch"); hit the pages.
            for k in 1..=n as u64 {
                let at = (len * k / (n as u64 + 1)) & !4095;
                f.seek(SeekFrom::Start(at + 512)).unwrap();
                f.write_all(&noise(k, 2048)).unwrap();
            }
        }
        Damage::Tail => {
            let n = len.min(1 << 20);
            f.seek(SeekFrom::Start(len - n)).unwrap();
            f.write_all(&noise(99, n as usize)).unwrap();
        }
        Damage::Truncate => f.set_len(0).unwrap(),
    }
    f.sync_all().unwrap();
}

/// Put `n` keys of assorted sizes so the files span many pages.
fn fill(c: &Cluster, n: usize) {
    rt().block_on(async {
        let mut cl = etcd_client::Client::connect(c.endpoint_list(), None)
            .await
            .unwrap();
        for i in 0..n {
            cl.put(
                format!("k-{i:05}"),
                value_of(i, 512 + (i * 997) % 8192),
                None,
            )
            .await
            .unwrap();
        }
    });
}

/// Start a stopped member and wait (bounded) until it exits, checking it
/// never reports healthy meanwhile. Its exit code and log.
fn start_expecting_exit(c: &mut Cluster, i: usize) -> (Option<i32>, String) {
    match start_damaged(c, i, false) {
        Started::Exited(code, log) => (code, log),
        Started::Healthy => unreachable!("healthy not allowed"),
    }
}

enum Started {
    Exited(Option<i32>, String),
    /// Reported healthy (allowed only when the damage hit free pages).
    Healthy,
}

/// Start a stopped member with a damaged file: it exits (bounded wait) or,
/// if `may_be_healthy`, reports healthy.
fn start_damaged(c: &mut Cluster, i: usize, may_be_healthy: bool) -> Started {
    c.members[i].spawn(&c.token.clone());
    let metrics = c.members[i].metrics_port;
    let child = c.members[i].child.as_mut().unwrap();
    let status = wait_for(
        "the damaged member to exit",
        Duration::from_secs(30),
        || {
            if matches!(http_get(metrics, "/health"), Some((200, _))) {
                assert!(
                    may_be_healthy,
                    "a member with a damaged file reported healthy"
                );
                return Some(None);
            }
            child.try_wait().unwrap().map(Some)
        },
    );
    match status {
        None => Started::Healthy,
        Some(status) => {
            c.members[i].child = None;
            Started::Exited(status.code(), c.members[i].log_text())
        }
    }
}

/// Read every key back: each present with its value, or the read fails.
fn all_keys_intact(c: &Cluster, n: usize) -> Result<(), String> {
    rt().block_on(async {
        let mut cl = etcd_client::Client::connect(c.endpoint_list(), None)
            .await
            .map_err(|e| e.to_string())?;
        let r = cl
            .get("k-", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(r.kvs().len(), n, "keys missing without an error");
        for (i, kv) in r.kvs().iter().enumerate() {
            assert!(
                kv.value() == value_of(i, 512 + (i * 997) % 8192).as_slice(),
                "wrong value served for key {i}"
            );
        }
        Ok(())
    })
}

#[test]
fn damaged_files_are_refused_by_name_never_a_panic() {
    for (file, how) in [
        ("wal", Damage::Scattered(8)),
        ("kv.redb", Damage::Scattered(8)),
        ("kv.redb", Damage::Tail),
        ("wal", Damage::Tail),
        ("kv.redb", Damage::Truncate),
        ("wal", Damage::Truncate),
    ] {
        // Snapshots every 50 entries make kv.redb durable (applies between
        // snapshots are not fsynced: the log covers them) and purge the log
        // behind it, so the damage hits data only kv.redb holds.
        let mut c = Cluster::start(1, &["--snapshot-count", "50"]);
        fill(&c, 300);
        c.members[0].kill9();
        // "wal": the Raft log's last write-ahead log segment.
        let path = match file {
            "wal" => last_wal_segment(&c.members[0].data_dir),
            _ => c.members[0].data_dir.join("member").join(file),
        };
        damage(&path, how);
        let before = c.members[0].log_text().len();
        let (code, log) = match start_damaged(&mut c, 0, true) {
            Started::Exited(code, log) => (code, log),
            Started::Healthy => {
                // The damage may have hit only free pages: then every key
                // reads back intact. If a read finds it instead, the member
                // must answer with an error and stop, never serve it.
                match all_keys_intact(&c, 300) {
                    Ok(()) => {
                        eprintln!("{file} {how:?}: damage hit free space only; all data intact");
                        continue;
                    }
                    Err(e) => {
                        eprintln!("{file} {how:?}: read refused: {e}");
                        let child = c.members[0].child.as_mut().unwrap();
                        let status = wait_for(
                            "the member to stop after finding corruption",
                            Duration::from_secs(10),
                            || child.try_wait().unwrap(),
                        );
                        c.members[0].child = None;
                        (status.code(), c.members[0].log_text())
                    }
                }
            }
        };
        let log = &log[before..];
        eprintln!("{file} {how:?}: exit {code:?}: {}", log.trim());
        assert!(
            !log.contains("panicked"),
            "{file} {how:?}: a panic instead of a clear refusal:\n{log}"
        );
        assert!(
            code == Some(REFUSED_EXIT_CODE) || code == Some(HALTED_EXIT_CODE),
            "{file} {how:?}: exit code {code:?}:\n{log}"
        );
        assert!(
            log.contains(&path.display().to_string()),
            "{file} {how:?}: the message does not name {}:\n{log}",
            path.display()
        );
        assert!(
            log.contains("etcdctl member remove") || log.contains("backup"),
            "{file} {how:?}: the message does not say what to do:\n{log}"
        );
    }
}

/// The last segment of a member's Raft log (`member/wal/*.wal`).
fn last_wal_segment(data_dir: &Path) -> PathBuf {
    let dir = data_dir.join("member").join("wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop()
        .unwrap_or_else(|| panic!("no segment in {}", dir.display()))
}

/// The Raft log's segments deleted under an intact identity: the member's
/// entries are gone, so it could vote twice in a term. It must refuse to start.
#[test]
fn lost_raft_log_is_refused() {
    let mut c = Cluster::start(3, &[]);
    fill(&c, 20);
    c.members[2].kill9();
    let wal = c.members[2].data_dir.join("member").join("wal");
    for e in std::fs::read_dir(&wal).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "wal") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let (code, log) = start_expecting_exit(&mut c, 2);
    assert_eq!(code, Some(REFUSED_EXIT_CODE), "{log}");
    assert!(
        log.contains("holds no Raft log") && log.contains("member remove"),
        "{log}"
    );
    // The same with the whole log directory (vote included) deleted.
    std::fs::remove_dir_all(&wal).unwrap();
    let (code, log) = start_expecting_exit(&mut c, 2);
    assert_eq!(code, Some(REFUSED_EXIT_CODE), "{log}");
}

/// The whole data dir wiped, the member restarted with the same flags: its
/// peers know it as started, so it refuses (etcd's "member has already been
/// bootstrapped"), and etcd's procedure brings it back.
#[test]
fn wiped_member_is_refused_then_rejoins_by_the_procedure() {
    let mut c = Cluster::start(3, &[]);
    fill(&c, 20);
    c.members[2].kill9();
    std::fs::remove_dir_all(&c.members[2].data_dir).unwrap();
    let (code, log) = start_expecting_exit(&mut c, 2);
    assert_eq!(code, Some(REFUSED_EXIT_CODE), "{log}");
    assert!(
        log.contains("already been bootstrapped")
            && log.contains("member remove")
            && log.contains("member add")
            && log.contains("--initial-cluster-state existing"),
        "{log}"
    );
    // A wiped data dir was not half-initialised by the refused start.
    assert!(!c.members[2]
        .data_dir
        .join("member")
        .join("identity.json")
        .exists());

    // The procedure: remove, add, start empty with `existing`.
    let (_, body) = http_get(c.members[0].metrics_port, "/member").unwrap();
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    let eps = format!(
        "{},{}",
        c.members[0].client_url(),
        c.members[1].client_url()
    );
    let list = c.etcdctl_at(&eps, &["member", "list"]);
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    let id = list
        .lines()
        .find(|l| l.contains(", n3,"))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("n3 not in {list}; n1 is {me}"))
        .trim()
        .to_string();
    let out = c.etcdctl_at(&eps, &["member", "remove", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer = c.members[2].peer_url();
    let out = c.etcdctl_at(
        &eps,
        &["member", "add", "n3", &format!("--peer-urls={peer}")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.members[2].state = "existing";
    c.members[2].spawn(&c.token.clone());
    c.wait_healthy(&[2]);
    let out = c.etcdctl_at(
        &c.members[2].client_url(),
        &["get", "k-00019", "--print-value-only"],
    );
    assert!(out.status.success() && !out.stdout.is_empty());
}
