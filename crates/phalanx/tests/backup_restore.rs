//! Issue 12's done-when test: a real 3-member cluster, `phalanx backup now` to a file
//! destination and a real S3-compatible server (moto, started here) at once, the
//! cluster destroyed, `phalanx restore --revision R` into 3 new data dirs from each
//! destination in turn; the restored cluster serves exactly the state at R (Debian's
//! etcdctl) and HashKV agrees on all members. Plus: a missing object is named by verify
//! and restore; restore without the identity fails clearly.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::backups::{keygen, ok, phalanx, s3_env};
use support::servers::Moto;
use support::{free_port, Cluster};

/// Members here start beside moto and restores on a busy machine, and a
/// restored member loads its whole state first: twice the default bound.
const MEMBER_HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// `phalanx restore` (with `source`: where from, which point, the identity)
/// of a lone member `n1` into `data_dir`, for restores that must fail
/// before anything starts: its peer address is never dialled.
fn restore_lone_member(source: &[&str], data_dir: &Path, env: &[(String, String)]) -> Output {
    let mut args = vec!["restore"];
    args.extend_from_slice(source);
    args.extend([
        "--name",
        "n1",
        "--initial-cluster",
        "n1=http://127.0.0.1:1",
        "--initial-cluster-token",
        "t",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:1",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    phalanx(&args, env)
}

fn revision_of(c: &Cluster, key: &str) -> i64 {
    let j: serde_json::Value = serde_json::from_str(&c.ctl(&["get", key, "-w", "json"])).unwrap();
    j["header"]["revision"].as_i64().unwrap()
}

#[test]
fn backup_to_file_and_s3_then_restore_revision_into_new_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let moto = Moto::start(&d.join("moto.log"), free_port());
    moto.create_bucket("phalanx-backups");
    let s3 = s3_env(&moto.endpoint());
    let (key, public) = keygen(d);

    let mut old = Cluster::plan(3, |_| Vec::new());
    old.start_all_within(MEMBER_HEALTHY_TIMEOUT);
    for i in 0..50 {
        old.ctl(&["put", &format!("app/k{i:03}"), &format!("v{i}-first")]);
    }
    let lease_out = old.ctl(&["lease", "grant", "600"]);
    let lease = lease_out.split_whitespace().nth(1).unwrap().to_string();
    old.ctl(&["put", "app/leased", "held", &format!("--lease={lease}")]);
    old.ctl(&["put", "app/deleted-later", "still here at R"]);
    let r = revision_of(&old, "app/k000");
    let expected = old.ctl(&[
        "get",
        "app/",
        "--prefix",
        "--rev",
        &r.to_string(),
        "-w",
        "json",
    ]);
    let expected_kvs = kvs(&expected);
    // More writes after R, which the restore must not show.
    for i in 0..10 {
        old.ctl(&["put", &format!("app/k{i:03}"), "second"]);
    }
    old.ctl(&["del", "app/deleted-later"]);
    old.ctl(&["put", "app/added-later", "x"]);
    let head = revision_of(&old, "app/k000");
    assert!(head > r);

    let file_url = format!("file://{}", d.join("repo").display());
    let s3_url = "s3://phalanx-backups/cluster-a".to_string();
    let out = ok(phalanx(
        &[
            "backup",
            "now",
            "--endpoints",
            &old.endpoints(),
            "--to",
            &file_url,
            "--to",
            &s3_url,
            "--recipient",
            &public,
        ],
        &s3,
    ));
    assert!(out.contains(&format!("at revision {head}")), "{out}");
    assert_eq!(out.matches(": ok, uploaded").count(), 2, "{out}");
    for url in [&file_url, &s3_url] {
        let list = ok(phalanx(&["backup", "list", "--from", url], &s3));
        assert!(list.contains(&format!(" {head} ")), "{list}");
        ok(phalanx(
            &[
                "backup",
                "verify",
                "--from",
                url,
                "--identity",
                key.to_str().unwrap(),
            ],
            &s3,
        ));
    }
    // A failing destination (no such bucket) fails alone, named; the other is complete.
    let file2 = format!("file://{}", d.join("repo2").display());
    let partial = phalanx(
        &[
            "backup",
            "now",
            "--endpoints",
            &old.endpoints(),
            "--to",
            "s3://no-such-bucket/x",
            "--to",
            &file2,
            "--recipient",
            &public,
            "--max-upload-retries",
            "1",
        ],
        &s3,
    );
    assert!(!partial.status.success());
    let text = String::from_utf8_lossy(&partial.stdout);
    assert!(text.contains("s3://no-such-bucket/x: FAILED"), "{text}");
    assert!(text.contains(&format!("{file2}: ok")), "{text}");
    assert!(ok(phalanx(&["backup", "list", "--from", &file2], &s3)).contains(&format!(" {head} ")));
    // Destroy the cluster (processes and data).
    old.kill_all();
    for m in &old.members {
        std::fs::remove_dir_all(&m.data_dir).unwrap();
    }

    // Restore without the identity: refused, saying what to pass.
    let no_id = restore_lone_member(
        &["--from", &file_url, "--revision", &r.to_string()],
        &d.join("noid"),
        &s3,
    );
    assert!(!no_id.status.success());
    let err = String::from_utf8_lossy(&no_id.stderr);
    assert!(err.contains("--identity") && err.contains(&public), "{err}");

    for url in [&file_url, &s3_url] {
        let mut new = Cluster::plan(3, |_| Vec::new());
        let ic = new.initial_cluster();
        let started = Instant::now();
        for m in &new.members {
            ok(phalanx(
                &[
                    "restore",
                    "--from",
                    url,
                    "--revision",
                    &r.to_string(),
                    "--identity",
                    key.to_str().unwrap(),
                    "--name",
                    &m.name,
                    "--initial-cluster",
                    &ic,
                    "--initial-cluster-token",
                    &new.token,
                    "--initial-advertise-peer-urls",
                    &m.peer_url(),
                    "--data-dir",
                    m.data_dir.to_str().unwrap(),
                ],
                &s3,
            ));
        }
        println!(
            "restore of 3 members from {url}: {:.2}s",
            started.elapsed().as_secs_f64()
        );
        new.start_all_within(MEMBER_HEALTHY_TIMEOUT);
        // Exactly the state at R, from every member.
        for m in &new.members {
            let got = new.etcdctl_at(
                &m.client_url(),
                &["get", "app/", "--prefix", "--consistency=s", "-w", "json"],
            );
            assert!(got.status.success());
            assert_eq!(
                kvs(&String::from_utf8_lossy(&got.stdout)),
                expected_kvs,
                "member {} restored from {url}",
                m.name
            );
        }
        let got = new.ctl(&["get", "app/", "--prefix", "-w", "json"]);
        assert_eq!(kvs(&got), expected_kvs);
        assert!(!got.contains("added-later"));
        // Revisions never go backwards: the new cluster is past the old head, and the
        // restored history is compacted (watchers re-list).
        let now_rev = revision_of(&new, "app/k000");
        assert!(
            now_rev > head,
            "restored revision {now_rev} must exceed the old head {head}"
        );
        let old_read = new.etcdctl_at(
            &new.endpoints(),
            &["get", "app/k000", "--rev", &r.to_string()],
        );
        assert!(!old_read.status.success());
        assert!(String::from_utf8_lossy(&old_read.stderr).contains("compacted"));
        // The leased key's lease exists in the new cluster.
        let leases = new.ctl(&["lease", "list"]);
        assert!(leases.contains(&lease), "{leases}");
        // HashKV agrees on all members.
        let hk = new.ctl(&["endpoint", "hashkv", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&hk).unwrap();
        let hashes: Vec<u64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["HashKV"]["hash"].as_u64().unwrap())
            .collect();
        assert_eq!(hashes.len(), 3);
        assert!(
            hashes.iter().all(|h| *h == hashes[0]),
            "HashKV differs: {hk}"
        );
        // A write works.
        new.ctl(&["put", "app/after-restore", "ok"]);
        new.kill_all();
    }

    // A lost object is named by verify and by restore.
    let victim = walk(&d.join("repo/chunks")).into_iter().next().unwrap();
    std::fs::remove_file(&victim).unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let v = phalanx(
        &[
            "backup",
            "verify",
            "--from",
            &file_url,
            "--identity",
            key.to_str().unwrap(),
        ],
        &s3,
    );
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains(&name));
    let list = ok(phalanx(&["backup", "list", "--from", &file_url], &s3));
    assert!(list.contains("FAILED"), "{list}");
    let rr = restore_lone_member(
        &["--from", &file_url, "--identity", key.to_str().unwrap()],
        &d.join("lost"),
        &s3,
    );
    assert!(!rr.status.success());
    assert!(String::from_utf8_lossy(&rr.stderr).contains(&name));
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
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

/// (key, value, create_revision, mod_revision, version) of an `etcdctl get -w json`.
fn kvs(json: &str) -> Vec<(String, String, i64, i64, i64)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap().to_string(),
                        kv["value"].as_str().unwrap().to_string(),
                        kv["create_revision"].as_i64().unwrap(),
                        kv["mod_revision"].as_i64().unwrap(),
                        kv["version"].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
