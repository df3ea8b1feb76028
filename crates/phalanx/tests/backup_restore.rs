//! Issue 12's done-when test: a real 3-member cluster, `phalanx backup now` to a file
//! destination and a real S3-compatible server (moto, started here) at once, the
//! cluster destroyed, `phalanx restore --revision R` into 3 new data dirs from each
//! destination in turn; the restored cluster serves exactly the state at R (Debian's
//! etcdctl) and HashKV agrees on all members. Plus: a missing object is named by verify
//! and restore; restore without the identity fails clearly.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_phalanx");
const ETCDCTL: &str = "/usr/bin/etcdctl";

fn free_port() -> u16 {
    drill::ports::free_local_port().expect("a free local port")
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// Members on free ports; killed when dropped.
struct Cluster {
    members: Vec<Member>,
    token: String,
}

impl Cluster {
    fn plan(dir: &Path, prefix: &str, n: usize, token: &str) -> Cluster {
        let members = (1..=n)
            .map(|i| Member {
                name: format!("n{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                data_dir: dir.join(format!("{prefix}-n{i}")),
                log: dir.join(format!("{prefix}-n{i}.log")),
                child: None,
            })
            .collect();
        Cluster {
            members,
            token: token.into(),
        }
    }
    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn start(&mut self) {
        let ic = self.initial_cluster();
        for m in &mut self.members {
            let child = drill::cluster::spawn_node(
                Path::new(BIN),
                &drill::cluster::NodeSpec {
                    name: &m.name,
                    data_dir: &m.data_dir,
                    client_port: m.client_port,
                    peer_port: m.peer_port,
                    metrics_port: m.metrics_port,
                    initial_cluster: &ic,
                    initial_cluster_state: "new",
                    token: &self.token,
                    extra_args: &[],
                    env: &[("PHALANX_LOG".into(), "warn".into())],
                    log: &m.log,
                },
            )
            .expect("spawning phalanx node");
            m.child = Some(child);
        }
        for m in &self.members {
            wait_for(
                &format!("member {} healthy (log {})", m.name, m.log.display()),
                Duration::from_secs(60),
                || {
                    let r = drill::admin::get_blocking(
                        &format!("127.0.0.1:{}", m.metrics_port),
                        "/health",
                        Duration::from_secs(5),
                    );
                    matches!(r, Ok((200, _))).then_some(())
                },
            );
        }
    }
    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }
    fn ctl_at(&self, endpoints: &str, args: &[&str]) -> Output {
        Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--command-timeout=10s")
            .args(args)
            .output()
            .expect("running etcdctl")
    }
    fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_at(&self.endpoints(), args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn stop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Python of the test virtualenv that `.ci/install` fills with moto
/// (`PHALANX_TEST_VENV`, default /opt/phalanx-test-venv).
fn test_python() -> std::path::PathBuf {
    let venv =
        std::env::var("PHALANX_TEST_VENV").unwrap_or_else(|_| "/opt/phalanx-test-venv".into());
    let py = Path::new(&venv).join("bin/python3");
    assert!(
        py.exists(),
        "{} is missing: run `bash .ci/install` (it creates the test virtualenv with moto[server])",
        py.display()
    );
    py
}

/// moto's S3 server on a free port; killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start(log: &Path) -> Moto {
        let port = free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(test_python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting moto's S3 server from the test virtualenv");
        let m = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        wait_for(
            "moto's S3 server listening",
            Duration::from_secs(60),
            || TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()),
        );
        m
    }
    fn create_bucket(&self, bucket: &str) {
        let out = Command::new(test_python())
            .args([
                "-c",
                &format!(
                    "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{bucket}')",
                    self.endpoint
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "create bucket: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn phalanx(args: &[&str], s3_endpoint: &str) -> Output {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", s3_endpoint)
        .output()
        .expect("running phalanx");
    println!(
        "$ phalanx {} ({:.2}s)\n{}{}",
        args.join(" "),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("key.txt");
    let out = Command::new("/usr/bin/age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen (apt-get install age)");
    assert!(out.status.success());
    let text = std::fs::read_to_string(&key).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .trim()
        .to_string();
    (key, public)
}

fn revision_of(c: &Cluster, key: &str) -> i64 {
    let j: serde_json::Value = serde_json::from_str(&c.ctl(&["get", key, "-w", "json"])).unwrap();
    j["header"]["revision"].as_i64().unwrap()
}

#[test]
fn backup_to_file_and_s3_then_restore_revision_into_new_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let moto = Moto::start(&d.join("moto.log"));
    moto.create_bucket("phalanx-backups");
    let (key, public) = keygen(d);

    let mut old = Cluster::plan(d, "old", 3, &format!("old-{}", free_port()));
    old.start();
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
        &moto.endpoint,
    ));
    assert!(out.contains(&format!("at revision {head}")), "{out}");
    assert_eq!(out.matches(": ok, uploaded").count(), 2, "{out}");
    for url in [&file_url, &s3_url] {
        let list = ok(phalanx(&["backup", "list", "--from", url], &moto.endpoint));
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
            &moto.endpoint,
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
        &moto.endpoint,
    );
    assert!(!partial.status.success());
    let text = String::from_utf8_lossy(&partial.stdout);
    assert!(text.contains("s3://no-such-bucket/x: FAILED"), "{text}");
    assert!(text.contains(&format!("{file2}: ok")), "{text}");
    assert!(ok(phalanx(
        &["backup", "list", "--from", &file2],
        &moto.endpoint
    ))
    .contains(&format!(" {head} ")));
    // Destroy the cluster (processes and data).
    old.stop();
    for m in &old.members {
        std::fs::remove_dir_all(&m.data_dir).unwrap();
    }

    // Restore without the identity: refused, saying what to pass.
    let no_id = phalanx(
        &[
            "restore",
            "--from",
            &file_url,
            "--revision",
            &r.to_string(),
            "--name",
            "n1",
            "--initial-cluster",
            "n1=http://127.0.0.1:1",
            "--initial-cluster-token",
            "t",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
            "--data-dir",
            d.join("noid").to_str().unwrap(),
        ],
        &moto.endpoint,
    );
    assert!(!no_id.status.success());
    let err = String::from_utf8_lossy(&no_id.stderr);
    assert!(err.contains("--identity") && err.contains(&public), "{err}");

    for (i, url) in [&file_url, &s3_url].into_iter().enumerate() {
        let mut new = Cluster::plan(
            d,
            &format!("restored{i}"),
            3,
            &format!("restored-{i}-{}", free_port()),
        );
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
                &moto.endpoint,
            ));
        }
        println!(
            "restore of 3 members from {url}: {:.2}s",
            started.elapsed().as_secs_f64()
        );
        new.start();
        // Exactly the state at R, from every member.
        for m in &new.members {
            let got = new.ctl_at(
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
        let old_read = new.ctl_at(
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
        new.stop();
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
        &moto.endpoint,
    );
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains(&name));
    let list = ok(phalanx(
        &["backup", "list", "--from", &file_url],
        &moto.endpoint,
    ));
    assert!(list.contains("FAILED"), "{list}");
    let rr = phalanx(
        &[
            "restore",
            "--from",
            &file_url,
            "--identity",
            key.to_str().unwrap(),
            "--name",
            "n1",
            "--initial-cluster",
            "n1=http://127.0.0.1:1",
            "--initial-cluster-token",
            "t",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
            "--data-dir",
            d.join("lost").to_str().unwrap(),
        ],
        &moto.endpoint,
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
