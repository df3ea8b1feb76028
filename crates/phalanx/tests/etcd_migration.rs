//! Migration between etcd and Phalanx, with real processes both ways: Debian's etcd
//! 3.4 (`/usr/bin/etcd`) and `etcdctl`, and `phalanx` members.
//!
//! * etcd → Phalanx: keys, overwrites, deletes, a compaction and a lease on a real
//!   etcd; `etcdctl snapshot save`; `phalanx restore --from-etcd-snapshot` into three
//!   data dirs; the three-member cluster serves the same keys with the same values,
//!   create/mod revisions, versions and leases, answers past reads as etcd did, and
//!   continues etcd's revisions. Damaged files and non-empty data dirs are refused.
//! * Phalanx → etcd: `etcdctl snapshot save` from a Phalanx member is an etcd snapshot:
//!   `etcdctl snapshot status` reads it, `etcdctl snapshot restore` restores it, and a
//!   real etcd started on the result serves the same keys, revisions, versions, leases.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::*;

const ETCD: &str = "/usr/bin/etcd";
/// A single etcd member on a fresh or restored data dir answers health quickly; the
/// bound is for a busy CI machine.
const ETCD_HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

/// One real etcd member on free loopback ports, killed when dropped.
struct Etcd {
    child: Child,
    client_url: String,
    log: PathBuf,
}

impl Etcd {
    /// Start `name` on `data_dir` (new or restored by `etcdctl snapshot restore` with
    /// the same name and peer URL) and wait until it answers `endpoint health`.
    fn start(dir: &Path, name: &str, data_dir: &Path, peer_port: u16) -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "etcd is missing: run `bash .ci/install` (installs Debian's etcd-server)"
        );
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = dir.join(format!("{name}.etcd.log"));
        let child = Command::new(ETCD)
            .args([
                "--name",
                name,
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("{name}={peer_url}"),
                "--initial-cluster-token",
                "etcd-migration-test",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting etcd");
        let e = Etcd {
            child,
            client_url,
            log,
        };
        wait_for(
            &format!("etcd {name} healthy (log: {})", e.log.display()),
            ETCD_HEALTHY_TIMEOUT,
            || {
                etcdctl_command(&e.client_url)
                    .args(["endpoint", "health"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
            },
        );
        e
    }

    fn ctl(&self, args: &[&str]) -> String {
        ok_out(
            etcdctl_command(&self.client_url)
                .args(args)
                .output()
                .unwrap(),
            args,
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok_out(out: Output, what: &[&str]) -> String {
    assert!(
        out.status.success(),
        "{what:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `phalanx ARGS`.
fn phalanx(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running phalanx")
}

/// (key, value, create_revision, mod_revision, version, lease) of an `etcdctl get -w
/// json` (keys and values stay base64), and the header's revision.
type Kv = (String, String, i64, i64, i64, i64);

fn kvs(json: &str) -> (Vec<Kv>, i64) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let list = v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap().to_string(),
                        kv["value"].as_str().unwrap_or("").to_string(),
                        kv["create_revision"].as_i64().unwrap(),
                        kv["mod_revision"].as_i64().unwrap(),
                        kv["version"].as_i64().unwrap(),
                        kv["lease"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (list, v["header"]["revision"].as_i64().unwrap())
}

const ALL: [&str; 5] = ["get", "", "--prefix", "-w", "json"];

/// The workload's keys (a Phalanx cluster also keeps its own under `/phalanx/`).
fn app_keys(kvs: Vec<Kv>) -> Vec<Kv> {
    // base64 of "/phalanx/": 9 bytes encode to exactly these 12 characters, so the
    // encoded key starts with them exactly when the key starts with "/phalanx/".
    const PHALANX_PREFIX_B64: &str = "L3BoYWxhbngv";
    kvs.into_iter()
        .filter(|kv| !kv.0.starts_with(PHALANX_PREFIX_B64))
        .collect()
}

/// Assert equal key-value lists, naming the keys that differ (values can be long).
fn assert_same(got: &[Kv], want: &[Kv], what: &str) {
    let short = |kv: &Kv| (kv.0.clone(), kv.2, kv.3, kv.4, kv.5, kv.1.len());
    let g: Vec<_> = got.iter().map(short).collect();
    let w: Vec<_> = want.iter().map(short).collect();
    assert_eq!(g, w, "{what}: keys, revisions, versions or leases differ");
    for (a, b) in got.iter().zip(want) {
        assert!(a.1 == b.1, "{what}: value of {} differs", a.0);
    }
}

/// The lease id (hex, as etcdctl prints and takes it) from `lease grant`'s output.
fn lease_id(grant: &str) -> String {
    grant
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected lease grant output {grant:?}"))
        .to_string()
}

/// The same workload on either store: keys, overwrites, deletes, a lease holding two
/// keys (one key moved off it), a compaction in the middle. Returns (lease id, a
/// revision after the compaction to read at later).
fn workload(ctl: &dyn Fn(&[&str]) -> String) -> (String, i64) {
    for i in 0..20 {
        ctl(&["put", &format!("app/k{i:02}"), &format!("v{i}")]);
    }
    let lease = lease_id(&ctl(&["lease", "grant", "600"]));
    ctl(&["put", "app/leased-a", "A", &format!("--lease={lease}")]);
    ctl(&["put", "app/leased-b", "B", &format!("--lease={lease}")]);
    ctl(&["put", "app/leased-moved", "M", &format!("--lease={lease}")]);
    ctl(&["put", "app/leased-moved", "M2"]);
    for i in 0..5 {
        ctl(&["put", &format!("app/k{i:02}"), &format!("v{i}-second")]);
    }
    ctl(&["del", "app/k10"]);
    ctl(&["del", "app/k11"]);
    let (_, rev) = kvs(&ctl(&ALL));
    ctl(&["compact", &rev.to_string()]);
    ctl(&["put", "app/k00", "v0-third"]);
    let (_, mid) = kvs(&ctl(&ALL));
    ctl(&["put", "app/k00", "v0-fourth"]);
    ctl(&["put", "app/k10", "back"]);
    ctl(&["del", "app/k12"]);
    ctl(&["put", "other", &"x".repeat(10_000)]);
    (lease, mid)
}

/// `etcdctl lease timetolive --keys` of `lease`: its keys, sorted.
fn lease_keys(ctl: &dyn Fn(&[&str]) -> String, lease: &str) -> Vec<String> {
    let out = ctl(&["lease", "timetolive", lease, "--keys"]);
    // "lease 694d… granted with TTL(600s), remaining(599s), attached keys([a b])"
    let keys = out
        .split("attached keys([")
        .nth(1)
        .unwrap_or_else(|| panic!("no keys in {out:?}"));
    let mut v: Vec<String> = keys
        .trim_end()
        .trim_end_matches("])")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn etcd_snapshot_restores_into_a_phalanx_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let etcd = Etcd::start(d, "e1", &d.join("etcd-data"), free_port());
    let ectl = |a: &[&str]| etcd.ctl(a);
    let (lease, mid) = workload(&ectl);
    let (want, want_rev) = kvs(&ectl(&ALL));
    let want_mid = kvs(&ectl(&[
        "get",
        "app/k00",
        "--rev",
        &mid.to_string(),
        "-w",
        "json",
    ]))
    .0;
    let want_lease_keys = lease_keys(&ectl, &lease);
    assert_eq!(want_lease_keys, ["app/leased-a", "app/leased-b"]);
    let snap = d.join("etcd.snapshot.db");
    ectl(&["snapshot", "save", snap.to_str().unwrap()]);
    drop(etcd);

    let mut c = Cluster::plan(3, |_| Vec::new());
    let ic = c.initial_cluster();
    let restore = |m: &Member, file: &Path, extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--from-etcd-snapshot",
            file.to_str().unwrap(),
            "--name",
            &m.name,
            "--initial-cluster",
            &ic,
            "--initial-cluster-token",
            &c.token,
            "--initial-advertise-peer-urls",
        ];
        let peer = m.peer_url();
        args.push(&peer);
        args.push("--data-dir");
        let dd = m.data_dir.to_str().unwrap().to_string();
        args.push(&dd);
        args.extend_from_slice(extra);
        phalanx(&args)
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Refusals, each saying what is wrong. A flipped byte: the SHA-256 trailer.
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes[3 * 4096 + 40] ^= 0x5a;
    let bad = d.join("bad.db");
    std::fs::write(&bad, &bytes).unwrap();
    let o = restore(&c.members[0], &bad, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("SHA-256 trailer mismatch"),
        "{}",
        stderr(&o)
    );
    assert!(!c.members[0].data_dir.join("member").exists());
    // Without the trailer: only with --skip-hash-check.
    bytes[3 * 4096 + 40] ^= 0x5a;
    let bare = d.join("bare.db");
    std::fs::write(&bare, &bytes[..bytes.len() - 32]).unwrap();
    let o = restore(&c.members[0], &bare, &[]);
    assert!(stderr(&o).contains("--skip-hash-check"), "{}", stderr(&o));
    // Not a database.
    std::fs::write(&bad, vec![0x42u8; 3 * 4096]).unwrap();
    let o = restore(&c.members[0], &bad, &["--skip-hash-check"]);
    assert!(
        stderr(&o).contains("not a valid bbolt database"),
        "{}",
        stderr(&o)
    );
    // A non-empty data dir.
    std::fs::create_dir_all(&c.members[0].data_dir).unwrap();
    std::fs::write(c.members[0].data_dir.join("precious"), "x").unwrap();
    let o = restore(&c.members[0], &snap, &[]);
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    std::fs::remove_dir_all(&c.members[0].data_dir).unwrap();

    // The restore proper: member 1 from the bare database (hash check skipped), the
    // others from the saved snapshot.
    for (i, m) in c.members.iter().enumerate() {
        let o = if i == 0 {
            restore(m, &bare, &["--skip-hash-check"])
        } else {
            restore(m, &snap, &[])
        };
        let out = ok_out(o, &["restore", &m.name]);
        println!("{out}");
        assert!(out.contains(&format!("at revision {want_rev}")), "{out}");
    }
    c.start_all();
    c.wait_leader();

    let pctl = |a: &[&str]| c.ctl(a);
    for m in &c.members {
        let out = ok_out(
            c.etcdctl_at(
                &m.client_url(),
                &["get", "", "--prefix", "--consistency=s", "-w", "json"],
            ),
            &["get on", &m.name],
        );
        let (got, rev) = kvs(&out);
        assert_same(&app_keys(got), &want, &format!("member {}", m.name));
        // The members' own bookkeeping writes come after etcd's revisions.
        assert!(
            rev >= want_rev,
            "member {} is at revision {rev} < {want_rev}",
            m.name
        );
    }
    // Past reads answer as in etcd; below the compaction they are refused as in etcd.
    let got_mid = kvs(&pctl(&[
        "get",
        "app/k00",
        "--rev",
        &mid.to_string(),
        "-w",
        "json",
    ]))
    .0;
    assert_eq!(got_mid, want_mid);
    let o = c.etcdctl(&["get", "app/k00", "--rev", "2"]);
    assert!(stderr(&o).contains("compacted"), "{}", stderr(&o));
    // The lease and its keys.
    assert!(pctl(&["lease", "list"]).contains(&lease));
    assert_eq!(lease_keys(&pctl, &lease), want_lease_keys);
    // Revisions continue past etcd's.
    pctl(&["put", "app/after", "1"]);
    let (after, _) = kvs(&pctl(&["get", "app/after", "-w", "json"]));
    assert!(after[0].3 > want_rev);
    // Revoking the migrated lease deletes its keys.
    pctl(&["lease", "revoke", &lease]);
    assert!(kvs(&pctl(&["get", "app/leased-a", "-w", "json"]))
        .0
        .is_empty());
    assert_hashes_agree(&c);
}

#[test]
fn phalanx_snapshot_restores_into_a_real_etcd() {
    let c = Cluster::start(3, &[]);
    c.wait_leader();
    let pctl = |a: &[&str]| c.ctl(a);
    let (lease, mid) = workload(&pctl);
    let (want, want_rev) = kvs(&pctl(&ALL));
    let want_mid = kvs(&pctl(&[
        "get",
        "app/k00",
        "--rev",
        &mid.to_string(),
        "-w",
        "json",
    ]))
    .0;
    let want_lease_keys = lease_keys(&pctl, &lease);

    let d = c.dir.path().to_path_buf();
    let snap = d.join("phalanx.snapshot.db");
    let one = c.members[0].client_url();
    ok_out(
        c.etcdctl_at(&one, &["snapshot", "save", snap.to_str().unwrap()]),
        &["snapshot save"],
    );
    // No temporary file is left in the member's data dir.
    let leftovers: Vec<_> = std::fs::read_dir(c.members[0].data_dir.join("member"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("etcd-snapshot"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let size = std::fs::metadata(&snap).unwrap().len();
    assert_eq!(size % 512, 32, "etcd's shape: database + SHA-256");

    let ctl = |args: &[&str]| {
        ok_out(
            Command::new(etcdctl_path())
                .env("ETCDCTL_API", "3")
                .args(args)
                .output()
                .unwrap(),
            args,
        )
    };
    let status = ctl(&["snapshot", "status", snap.to_str().unwrap(), "-w", "json"]);
    let st: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    // The members' own bookkeeping (under /phalanx/) may have written since.
    let snap_rev = st["revision"].as_i64().unwrap();
    assert!(snap_rev >= want_rev, "{status}");
    println!("etcdctl snapshot status: {status}");

    let peer_port = free_port();
    let restored = d.join("etcd-restored");
    ctl(&[
        "snapshot",
        "restore",
        snap.to_str().unwrap(),
        "--name",
        "e1",
        "--initial-cluster",
        &format!("e1=http://127.0.0.1:{peer_port}"),
        "--initial-advertise-peer-urls",
        &format!("http://127.0.0.1:{peer_port}"),
        "--initial-cluster-token",
        "etcd-migration-test",
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    let etcd = Etcd::start(&d, "e1", &restored, peer_port);
    let ectl = |a: &[&str]| etcd.ctl(a);
    let (got, rev) = kvs(&ectl(&ALL));
    assert_same(
        &app_keys(got),
        &app_keys(want),
        "etcd restored from Phalanx",
    );
    assert_eq!(rev, snap_rev);
    let got_mid = kvs(&ectl(&[
        "get",
        "app/k00",
        "--rev",
        &mid.to_string(),
        "-w",
        "json",
    ]))
    .0;
    assert_eq!(got_mid, want_mid);
    assert!(ectl(&["lease", "list"]).contains(&lease));
    assert_eq!(lease_keys(&ectl, &lease), want_lease_keys);
    // etcd takes writes on it and continues the revisions.
    ectl(&["put", "app/after", "1"]);
    let (after, _) = kvs(&ectl(&["get", "app/after", "-w", "json"]));
    assert_eq!(after[0].3, snap_rev + 1);
}
