//! Issue 12, backups run by the cluster itself: real `phalanx node` members, the policy
//! set with `phalanx backup schedule set`, the leader running it.
//!
//! * `archive_restores_newest_point_after_whole_cluster_kill`: the done-when test —
//!   a schedule with the continuous archive, kill -9 of every member under write load,
//!   restore to the newest point; every write acknowledged earlier than
//!   `archive_interval_ms` + 1 s before the kill is there (the measured loss window is
//!   printed); `--time` lands on the right revision.
//! * `leader_kill_during_scheduled_backup_gives_exactly_one_backup`.
//! * `retention_keeps_exactly_the_policy_and_kept_backups_restore`.
//! * `s3_killed_mid_backup_file_completes_and_next_backup_reaches_s3`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::backups::{keygen, ok, phalanx, s3_env, set_schedule};
use support::servers::Moto;
use support::{free_port, wait_for, Cluster, BIN};

/// Members here start beside moto, load generators and restores on a busy
/// machine, and a restored member loads its whole state first: twice the
/// default bound.
const MEMBER_HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `n` members, not started, each also serving the backup API on a free
/// port (`--backup-listen`); those ports, by member.
fn plan(n: usize) -> (Cluster, Vec<u16>) {
    let backup_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let ports = backup_ports.clone();
    let c = Cluster::plan(n, move |i| {
        vec!["--backup-listen".into(), format!("127.0.0.1:{}", ports[i])]
    });
    (c, backup_ports)
}

/// Start every member of `c` with `extra` flags and `env` besides its own.
fn start(c: &mut Cluster, extra: &[String], env: &[(String, String)]) {
    for m in &mut c.members {
        m.extra_args.extend(extra.iter().cloned());
        m.env.extend(env.iter().cloned());
    }
    c.start_all_within(MEMBER_HEALTHY_TIMEOUT);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Put 300 values of 10 KiB under `big/`: byte `j` of value `i` is
/// `byte(i, j)` (a mix that does not compress, so backups of them take time).
fn put_big_values(rt: &tokio::runtime::Runtime, c: &Cluster, byte: impl Fn(u64, u64) -> u8) {
    rt.block_on(async {
        let eps: Vec<String> = c.endpoints().split(',').map(String::from).collect();
        let mut cl = etcd_client::Client::connect(eps, None).await.unwrap();
        for i in 0..300u64 {
            let v: Vec<u8> = (0..10_240u64).map(|j| byte(i, j)).collect();
            cl.put(format!("big/{i:05}"), v, None).await.unwrap();
        }
    });
}

/// `phalanx backup schedule show --json`.
fn schedule_status(endpoints: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "backup",
            "schedule",
            "show",
            "--json",
            "--endpoints",
            endpoints,
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn get_json(rt: &tokio::runtime::Runtime, endpoints: &str, key: &str) -> Option<serde_json::Value> {
    rt.block_on(async {
        let eps: Vec<String> = endpoints.split(',').map(String::from).collect();
        let mut c = etcd_client::Client::connect(eps, None).await.ok()?;
        let r = c.get(key, None).await.ok()?;
        r.kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok())
    })
}

fn list_ids(url: &str, env: &[(String, String)]) -> Vec<(String, i64)> {
    let out = ok(phalanx(&["backup", "list", "--json", "--from", url], env));
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["revision"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Restore into one new member's data dir; returns the restore's stdout.
fn restore_one(
    from: &str,
    key: &Path,
    target: &[&str],
    env: &[(String, String)],
) -> (Cluster, String) {
    let (c, _) = plan(1);
    let m = &c.members[0];
    let mut args = vec![
        "restore".to_string(),
        "--from".into(),
        from.into(),
        "--identity".into(),
        key.to_str().unwrap().into(),
        "--name".into(),
        m.name.clone(),
        "--initial-cluster".into(),
        c.initial_cluster(),
        "--initial-cluster-token".into(),
        c.token.clone(),
        "--initial-advertise-peer-urls".into(),
        m.peer_url(),
        "--data-dir".into(),
        m.data_dir.to_str().unwrap().into(),
    ];
    args.extend(target.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(phalanx(&a, env));
    (c, out)
}

/// The members (indexes) whose backup API's `/metrics` says
/// `phalanx_backup_running_here 1`; `None` while a member does not answer or
/// lacks the series.
fn running_here(backup_ports: &[u16]) -> Option<Vec<usize>> {
    let mut on = Vec::new();
    for (i, port) in backup_ports.iter().enumerate() {
        let metrics = drill::admin::get_blocking(
            &format!("127.0.0.1:{port}"),
            "/metrics",
            Duration::from_secs(5),
        )
        .ok()?
        .1;
        let v = metrics
            .lines()
            .find_map(|l| l.strip_prefix("phalanx_backup_running_here "))?;
        if v.trim() == "1" {
            on.push(i);
        }
    }
    Some(on)
}

fn restored_revision(out: &str) -> i64 {
    out.split("as of revision ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out}"))
}

#[test]
fn archive_restores_newest_point_after_whole_cluster_kill() {
    const ARCHIVE_INTERVAL_MS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keygen(d);
    let repo = format!("file://{}", d.join("repo").display());
    let (mut c, _) = plan(3);
    start(&mut c, &[], &[]);
    let rt = rt();
    set_schedule(
        &c.endpoints(),
        &[&repo],
        &public,
        &[
            "--backup-interval-ms",
            "3600000",
            "--archive-interval-ms",
            &ARCHIVE_INTERVAL_MS.to_string(),
        ],
        &[],
    );
    // The leader takes the first full backup at once, then archives.
    wait_for(
        "the first scheduled backup",
        Duration::from_secs(60),
        || {
            let s = schedule_status(&c.endpoints());
            s["status"]["last_backup_id"]
                .as_str()
                .filter(|x| !x.is_empty())
                .map(|_| ())
        },
    );
    let eps: Vec<String> = c.endpoints().split(',').map(String::from).collect();
    // --time: k1, then the time T, then k2.
    let (rev1, t, rev2) = rt.block_on(async {
        let mut cl = etcd_client::Client::connect(eps.clone(), None)
            .await
            .unwrap();
        let r1 = cl
            .put("time/k1", "1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r2 = cl
            .put("time/k2", "2", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        (r1, t, r2)
    });
    // Write load: 16 clients, each writing its own keys in sequence; acknowledged
    // (key, ack time) recorded.
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..16 {
        let (eps, acked, stop) = (eps.clone(), acked.clone(), stop.clone());
        load.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut cl = etcd_client::Client::connect(eps, None).await.unwrap();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let k = format!("load/{w:02}/{i:08}");
                    let r = tokio::time::timeout(
                        Duration::from_secs(2),
                        cl.put(k.clone(), format!("v{i}"), None),
                    )
                    .await;
                    if let Ok(Ok(_)) = r {
                        acked.lock().unwrap().push((k, now_ms()));
                    }
                    i += 1;
                }
            });
        }));
    }
    // Under load until the archive has shipped segments while writes were
    // being acknowledged (not a fixed time): the kill then lands mid-stream.
    let segments_before = walk(&d.join("repo/archive")).len();
    wait_for(
        "archive segments shipped under write load",
        Duration::from_secs(60),
        || {
            let shipped = walk(&d.join("repo/archive")).len() >= segments_before + 2;
            (shipped && acked.lock().unwrap().len() >= 200).then_some(())
        },
    );
    // kill -9 the whole cluster under load.
    let kill_ms = now_ms();
    c.kill_all();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "too little load: {}", acked.len());

    // Restore the newest point into a new member.
    let started = Instant::now();
    let (mut r, out) = restore_one(&repo, &key, &[], &[]);
    let rto = started.elapsed();
    assert!(out.contains("archive segments"), "{out}");
    start(&mut r, &["--disable-backup-service".into()], &[]);
    let present: std::collections::HashSet<String> = rt.block_on(async {
        let mut cl = etcd_client::Client::connect([r.members[0].client_url()], None)
            .await
            .unwrap();
        let g = cl
            .get(
                "load/",
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .unwrap();
        g.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).to_string())
            .collect()
    });
    let lost: Vec<&(String, u64)> = acked.iter().filter(|(k, _)| !present.contains(k)).collect();
    let newest_present = acked
        .iter()
        .filter(|(k, _)| present.contains(k))
        .map(|(_, t)| *t)
        .max()
        .unwrap_or(0);
    let oldest_lost = lost.iter().map(|(_, t)| *t).min();
    let window_ms = oldest_lost.map(|t| kill_ms.saturating_sub(t)).unwrap_or(0);
    println!(
        "LOSS WINDOW: {} of {} acknowledged writes lost; the oldest lost was acknowledged {} ms before the kill; newest restored write acknowledged {} ms before the kill; restore took {:.2}s",
        lost.len(),
        acked.len(),
        window_ms,
        kill_ms.saturating_sub(newest_present),
        rto.as_secs_f64()
    );
    let bound = ARCHIVE_INTERVAL_MS + 1_000;
    for (k, t) in &lost {
        assert!(
            *t + bound > kill_ms,
            "write {k} acknowledged {} ms before the kill is lost (bound {bound} ms)",
            kill_ms - t
        );
    }
    r.kill_all();

    // --time T lands on the newest revision at or before T: k1's, not k2's.
    let (_r2, out) = restore_one(&repo, &key, &["--time", &t], &[]);
    let got = restored_revision(&out);
    assert_eq!(
        got, rev1,
        "--time {t} gave revision {got}; k1 is at {rev1}, k2 at {rev2}"
    );
    // and --revision lands exactly.
    let (_r3, out) = restore_one(&repo, &key, &["--revision", &rev2.to_string()], &[]);
    assert_eq!(restored_revision(&out), rev2);
}

#[test]
fn leader_kill_during_scheduled_backup_gives_exactly_one_backup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keygen(d);
    let repo_dir = d.join("repo");
    let repo = format!("file://{}", repo_dir.display());
    let (mut c, _) = plan(3);
    start(&mut c, &[], &[]);
    let rt = rt();
    // ~3 MiB of incompressible values, so a throttled backup takes seconds.
    put_big_values(&rt, &c, |i, j| {
        ((i * 7919 + j * 104_729) ^ (j >> 3)).wrapping_mul(2_654_435_761) as u8
    });
    let leader = c.wait_leader();
    let leader_name = c.members[leader].name.clone();
    set_schedule(
        &c.endpoints(),
        &[&repo],
        &public,
        &[
            "--backup-interval-ms",
            "3600000",
            "--archive-interval-ms",
            "0",
            "--max-upload-bytes-per-s",
            "100000",
        ],
        &[],
    );
    // Mid-backup: the run is claimed by the leader and chunks are being written.
    let eps = c.endpoints();
    wait_for(
        "the leader's backup under way",
        Duration::from_secs(30),
        || {
            let run = get_json(&rt, &eps, "/phalanx/backup/run")?;
            let chunks = walk(&repo_dir.join("chunks")).len();
            (run["member"] == leader_name.as_str() && run["state"] == "running" && chunks >= 1)
                .then_some(())
        },
    );
    assert!(list_ids(&repo, &[]).is_empty(), "no backup may exist yet");
    c.members[leader].kill9();
    println!("killed leader {leader_name} mid-backup");
    // The new leader retries; exactly one complete backup results.
    let st = wait_for(
        "a backup by the new leader",
        Duration::from_secs(90),
        || {
            let s = schedule_status(&c.endpoints());
            let st = s["status"].clone();
            (st["last_backup_id"].as_str().is_some_and(|x| !x.is_empty())
                && st["runner"] != leader_name.as_str())
            .then_some(st)
        },
    );
    let ids = list_ids(&repo, &[]);
    assert_eq!(ids.len(), 1, "exactly one complete backup: {ids:?}");
    assert_eq!(ids[0].0, st["last_backup_id"].as_str().unwrap());
    ok(phalanx(
        &[
            "backup",
            "verify",
            "--from",
            &repo,
            "--identity",
            key.to_str().unwrap(),
        ],
        &[],
    ));
    // The new leader recorded it on the event timeline.
    let out = ok(phalanx(&["events", "--endpoints", &c.endpoints()], &[]));
    assert!(out.contains("backup_completed"), "{out}");
    // Still exactly one after the dust settles (no late second backup).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(list_ids(&repo, &[]).len(), 1);
}

#[test]
fn retention_keeps_exactly_the_policy_and_kept_backups_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keygen(d);
    let repo = format!("file://{}", d.join("repo").display());
    let (mut c, backup_ports) = plan(3);
    start(&mut c, &[], &[]);
    let rt = rt();
    let eps: Vec<String> = c.endpoints().split(',').map(String::from).collect();
    set_schedule(
        &c.endpoints(),
        &[&repo],
        &public,
        &[
            "--backup-interval-ms",
            "1500",
            "--archive-interval-ms",
            "200",
            "--keep-last",
            "2",
        ],
        &[],
    );
    // Changing data between backups, until 5 backups have been taken.
    let mut seen = std::collections::BTreeSet::new();
    let mut i = 0;
    wait_for("5 scheduled backups", Duration::from_secs(90), || {
        rt.block_on(async {
            let mut cl = etcd_client::Client::connect(eps.clone(), None).await.ok()?;
            cl.put(format!("ret/{}", i % 7), format!("v{i}"), None)
                .await
                .ok()
        });
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
        let s = schedule_status(&c.endpoints());
        if let Some(id) = s["status"]["last_backup_id"]
            .as_str()
            .filter(|x| !x.is_empty())
        {
            seen.insert(id.to_string());
        }
        (seen.len() >= 5).then_some(())
    });
    // Exactly one member says it runs the schedule.
    wait_for(
        "phalanx_backup_running_here 1 on exactly one member",
        Duration::from_secs(10),
        || (running_here(&backup_ports)?.len() == 1).then_some(()),
    );
    ok(phalanx(
        &["backup", "schedule", "clear", "--endpoints", &c.endpoints()],
        &[],
    ));
    let eps_s = c.endpoints();
    wait_for(
        "the running backup finished",
        Duration::from_secs(30),
        || {
            get_json(&rt, &eps_s, "/phalanx/backup/run")
                .is_none()
                .then_some(())
        },
    );
    // With the schedule cleared, no member runs it any more.
    wait_for(
        "phalanx_backup_running_here 0 on every member",
        Duration::from_secs(10),
        || (running_here(&backup_ports) == Some(vec![])).then_some(()),
    );
    let ids = list_ids(&repo, &[]);
    assert_eq!(ids.len(), 2, "keep-last 2 keeps exactly 2: {ids:?}");
    let newest: Vec<String> = seen.iter().rev().take(2).cloned().collect();
    for (id, _) in &ids {
        assert!(
            newest.contains(id),
            "kept {id} is not one of the 2 newest {newest:?}"
        );
    }
    // Archive segments needed by no kept backup are gone; the rest are there.
    let oldest_kept = ids.iter().map(|x| x.1).min().unwrap();
    let segs: Vec<i64> = walk(&d.join("repo/archive"))
        .iter()
        .map(|p| {
            p.file_name().unwrap().to_str().unwrap()[..20]
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        segs.iter().all(|u| *u > oldest_kept),
        "{segs:?} vs {oldest_kept}"
    );
    // Every kept backup still restores (chunks and archive intact).
    for (id, rev) in &ids {
        ok(phalanx(
            &[
                "backup",
                "verify",
                "--from",
                &repo,
                "--backup",
                id,
                "--identity",
                key.to_str().unwrap(),
            ],
            &[],
        ));
        let (_r, out) = restore_one(&repo, &key, &["--revision", &rev.to_string()], &[]);
        assert_eq!(restored_revision(&out), *rev);
    }
    // And the newest point (newest backup + archive).
    let (_r, out) = restore_one(&repo, &key, &[], &[]);
    assert!(restored_revision(&out) >= ids.iter().map(|x| x.1).max().unwrap());
}

#[test]
fn s3_killed_mid_backup_file_completes_and_next_backup_reaches_s3() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_key, public) = keygen(d);
    let mut moto = Moto::start(&d.join("moto.log"), free_port());
    moto.create_bucket("phalanx-bk");
    let env = s3_env(&moto.endpoint());
    let repo_dir = d.join("repo");
    let file = format!("file://{}", repo_dir.display());
    let s3 = "s3://phalanx-bk/cluster".to_string();
    let (mut c, backup_ports) = plan(3);
    start(&mut c, &[], &env);
    let rt = rt();
    put_big_values(&rt, &c, |i, j| {
        ((i * 31 + j * 7) ^ (j >> 2)).wrapping_mul(2_654_435_761) as u8
    });
    set_schedule(
        &c.endpoints(),
        &[&file, &s3],
        &public,
        &[
            "--backup-interval-ms",
            "4000",
            "--failed-backup-retry-ms",
            "2000",
            "--archive-interval-ms",
            "500",
            "--max-upload-bytes-per-s",
            "150000",
            "--max-upload-retries",
            "1",
            "--retry-initial-backoff-ms",
            "100",
            "--request-timeout-ms",
            "3000",
        ],
        &env,
    );
    let eps = c.endpoints();
    wait_for("the backup under way", Duration::from_secs(30), || {
        let run = get_json(&rt, &eps, "/phalanx/backup/run")?;
        (run["state"] == "running" && !walk(&repo_dir.join("chunks")).is_empty()).then_some(())
    });
    moto.kill();
    println!("S3 server killed mid-backup");
    // The file destination completes; the S3 failure is in the status and metrics.
    let st = wait_for(
        "the backup finished with S3 failed",
        Duration::from_secs(60),
        || {
            let st = schedule_status(&c.endpoints())["status"].clone();
            let f = &st["destinations"][&file];
            let s = &st["destinations"][&s3];
            (f["last_success_ms"].as_u64().unwrap_or(0) > 0
                && s["backup_failures_total"].as_u64().unwrap_or(0) >= 1)
                .then_some(st)
        },
    );
    println!("status: {st:#}");
    assert_eq!(list_ids(&file, &[]).len(), 1);
    assert!(st["destinations"][&s3]["last_error"]
        .as_str()
        .unwrap()
        .contains("s3://phalanx-bk/cluster"));
    let leader = c.wait_leader();
    let metrics = drill::admin::get_blocking(
        &format!("127.0.0.1:{}", backup_ports[leader]),
        "/metrics",
        Duration::from_secs(5),
    )
    .unwrap()
    .1;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "phalanx_backup_failures_total{{destination=\"{s3}\"}}"
            ))
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!line.ends_with(" 0"), "{line}");
    assert!(metrics.contains(&format!(
        "phalanx_backup_last_success_timestamp_seconds{{destination=\"{file}\"}}"
    )));
    let out = ok(phalanx(&["events", "--endpoints", &c.endpoints()], &[]));
    assert!(out.contains("backup_failed") && out.contains(&s3), "{out}");
    // The server comes back (empty: moto keeps nothing); the next backup reaches it.
    let moto2 = Moto::start(&moto.log, moto.port);
    moto2.create_bucket("phalanx-bk");
    wait_for(
        "a backup at S3 after it came back",
        Duration::from_secs(90),
        || {
            let st = schedule_status(&c.endpoints())["status"].clone();
            (st["destinations"][&s3]["last_success_ms"]
                .as_u64()
                .unwrap_or(0)
                > 0)
            .then_some(())
        },
    );
    assert!(!list_ids(&s3, &env).is_empty());
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e)
            } else {
                out.push(e)
            }
        }
    }
    out
}
