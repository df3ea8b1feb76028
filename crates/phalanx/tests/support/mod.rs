//! Test support, the one place the phalanx tests start things: real
//! `phalanx node` processes on free loopback ports (through
//! `drill::cluster::spawn_node`, the launcher the drill and the demo use),
//! real `etcdctl`, and helpers that wait on conditions with deadlines.
//!
//! Parts for some tests only:
//! - [`certs`]: a CA made with rcgen, TLS member flags, etcdctl with TLS;
//! - [`servers`]: foreign servers (Prometheus, Alertmanager, moto, aiosmtpd)
//!   and a recording HTTP receiver;
//! - [`alerts`]: the alerting API and CLI;
//! - [`backups`]: age keys and the `phalanx backup`/`restore` CLI against S3.
//!
//! `support/drill.rs` (running `phalanx drill`) is included on its own by the
//! drill tests.
#![allow(dead_code)]

pub mod alerts;
pub mod backups;
pub mod certs;
pub mod grpc;
pub mod servers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_phalanx");

/// A free port for a test's member to listen on; see `drill::ports`.
pub fn free_port() -> u16 {
    drill::ports::free_local_port().expect("a free local port")
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` on 127.0.0.1:`port` (drill's one HTTP client), 5 s at most.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    drill::admin::get_blocking(&format!("127.0.0.1:{port}"), path, Duration::from_secs(5)).ok()
}

/// A sample of a labelled metric in a `/metrics` page, e.g.
/// `phalanx_peer_rejected_total{reason="not_member"}`.
pub fn labelled_metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

pub fn etcdctl_path() -> &'static str {
    let p = "/usr/bin/etcdctl";
    assert!(
        std::path::Path::new(p).exists(),
        "etcdctl is missing: run `bash .ci/install` (installs Debian's etcd-client package)"
    );
    p
}

/// `etcdctl` (API 3) against `endpoints`, each command bounded by 10 s;
/// the caller adds flags and the command.
pub fn etcdctl_command(endpoints: &str) -> Command {
    let mut cmd = Command::new(etcdctl_path());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s");
    cmd
}

/// How long a starting member may take to answer `/health`.
pub const MEMBER_HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

/// One member process: its ports, files and command line. The command line
/// itself is written by `drill::cluster::spawn_node`.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    pub extra_args: Vec<String>,
    pub initial_cluster: String,
    pub state: &'static str,
    pub log: PathBuf,
    /// Environment variables besides `PHALANX_LOG` (which they may override).
    pub env: Vec<(String, String)>,
    /// `http`, or `https` when `extra_args` has client TLS flags.
    pub client_scheme: &'static str,
    /// `http`, or `https` when `extra_args` has peer TLS flags.
    pub peer_scheme: &'static str,
    /// Client URLs served besides the advertised one (e.g. a plain listener
    /// next to a TLS one).
    pub extra_listen_client_urls: Vec<String>,
}

impl Member {
    /// A member of a new cluster named `name`, not started: free ports, data
    /// in `<dir>/<name>`, log in `<dir>/<name>.log`, plain http, no flags;
    /// `initial_cluster` is for the caller to set.
    pub fn new(dir: &Path, name: &str) -> Member {
        Member {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            data_dir: dir.join(name),
            child: None,
            extra_args: Vec::new(),
            initial_cluster: String::new(),
            state: "new",
            log: dir.join(format!("{name}.log")),
            env: Vec::new(),
            client_scheme: "http",
            peer_scheme: "http",
            extra_listen_client_urls: Vec::new(),
        }
    }

    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer_port)
    }

    /// Start the member (drill's launcher writes the command line; the
    /// process dies with the test's thread even if the test binary is killed).
    pub fn spawn(&mut self, token: &str) {
        assert!(self.child.is_none(), "member {} already running", self.name);
        // PHALANX_TEST_LOG (a tracing filter) raises the members' log
        // level when a failure needs diagnosing.
        let level = std::env::var("PHALANX_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let mut env = vec![("PHALANX_LOG".to_string(), level)];
        env.extend(self.env.iter().cloned());
        let child = drill::cluster::spawn_node(
            Path::new(BIN),
            &drill::cluster::NodeSpec {
                name: &self.name,
                data_dir: &self.data_dir,
                client_port: self.client_port,
                peer_port: self.peer_port,
                metrics_port: self.metrics_port,
                client_scheme: self.client_scheme,
                peer_scheme: self.peer_scheme,
                extra_listen_client_urls: &self.extra_listen_client_urls,
                initial_cluster: &self.initial_cluster,
                initial_cluster_state: self.state,
                token,
                extra_args: &self.extra_args,
                env: &env,
                log: &self.log,
            },
        )
        .expect("spawning phalanx node");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(c) => c.try_wait().ok().flatten().is_none(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Metric value from /metrics, if the member answers.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = http_get(self.metrics_port, "/metrics")?;
        if status != 200 {
            return None;
        }
        drill::admin::metric_value(&body, name)
    }

    /// The whole `/metrics` page (empty if the member does not answer).
    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The member's `/member` document.
    pub fn member_doc(&self) -> serde_json::Value {
        let (_, body) = http_get(self.metrics_port, "/member").expect("/member answers");
        serde_json::from_str(&body).unwrap()
    }

    pub fn healthy(&self) -> bool {
        matches!(http_get(self.metrics_port, "/health"), Some((200, _)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub token: String,
}

impl Cluster {
    /// Start `n` members of a new cluster and wait until all are healthy.
    pub fn start(n: usize, extra_args: &[&str]) -> Cluster {
        let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        Self::start_with(n, |_| extra.clone())
    }

    /// Like [`Cluster::start`], with per-member extra flags (`i` from 0).
    pub fn start_with(n: usize, extra_args: impl Fn(usize) -> Vec<String>) -> Cluster {
        let mut c = Self::plan(n, extra_args);
        c.start_all();
        c
    }

    /// `n` members `n1`… of a new cluster, none started: free ports, data
    /// and logs in a new temporary directory, per-member extra flags (`i`
    /// from 0), `initial_cluster` set. The caller may change any member
    /// (flags, environment, data dir; schemes through [`Cluster::set_schemes`])
    /// before [`Cluster::start_all`].
    pub fn plan(n: usize, extra_args: impl Fn(usize) -> Vec<String>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let members = (1..=n)
            .map(|i| Member {
                extra_args: extra_args(i - 1),
                ..Member::new(dir.path(), &format!("n{i}"))
            })
            .collect();
        let mut c = Cluster {
            dir,
            members,
            token: format!("test-{}", free_port()),
        };
        c.set_initial_cluster();
        c
    }

    /// Serve clients and peers on `client`/`peer` (`http` or `https`; the
    /// TLS flags go in each member's `extra_args`), for every member; the
    /// initial cluster follows (peer URLs carry the scheme).
    pub fn set_schemes(&mut self, client: &'static str, peer: &'static str) {
        for m in &mut self.members {
            m.client_scheme = client;
            m.peer_scheme = peer;
        }
        self.set_initial_cluster();
    }

    /// `--initial-cluster` of the members as they are now.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn set_initial_cluster(&mut self) {
        let ic = self.initial_cluster();
        for m in &mut self.members {
            m.initial_cluster = ic.clone();
        }
    }

    /// Start every member that is not running, then wait until all are
    /// healthy.
    pub fn start_all(&mut self) {
        self.start_all_within(MEMBER_HEALTHY_TIMEOUT);
    }

    /// [`Cluster::start_all`], waiting up to `timeout` for each member (tests
    /// whose members load a large restored state want longer).
    pub fn start_all_within(&mut self, timeout: Duration) {
        for m in &mut self.members {
            if m.child.is_none() {
                m.spawn(&self.token);
            }
        }
        self.wait_healthy_within(&(0..self.members.len()).collect::<Vec<_>>(), timeout);
    }

    pub fn wait_healthy(&self, which: &[usize]) {
        self.wait_healthy_within(which, MEMBER_HEALTHY_TIMEOUT);
    }

    pub fn wait_healthy_within(&self, which: &[usize], timeout: Duration) {
        for &i in which {
            let m = &self.members[i];
            let log = m.log.clone();
            wait_for(
                &format!("member {} healthy (log: {})", m.name, log.display()),
                timeout,
                || m.healthy().then_some(()),
            );
        }
    }

    /// SIGKILL every member.
    pub fn kill_all(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
    }

    pub fn endpoints(&self) -> String {
        let v: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url())
            .collect();
        v.join(",")
    }

    pub fn endpoint_list(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url())
            .collect()
    }

    /// Index of the member that reports itself leader.
    pub fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.child.is_some() && m.metric("phalanx_server_is_leader") == Some(1.0))
    }

    pub fn wait_leader(&self) -> usize {
        wait_for("a leader", Duration::from_secs(30), || self.leader())
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_at(&self.endpoints(), args)
    }

    pub fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> Output {
        etcdctl_command(endpoints)
            .args(args)
            .output()
            .expect("running etcdctl")
    }

    /// Run etcdctl, assert success, return stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\nstdout: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Add a fresh member process (not started) for `--initial-cluster-state
    /// existing`, with the first member's flags, environment and schemes.
    pub fn new_member(&mut self, name: &str) -> usize {
        let mut m = Member {
            state: "existing",
            ..Member::new(self.dir.path(), name)
        };
        if let Some(first) = self.members.first() {
            m.extra_args = first.extra_args.clone();
            m.env = first.env.clone();
            m.client_scheme = first.client_scheme;
            m.peer_scheme = first.peer_scheme;
        }
        self.members.push(m);
        self.members.len() - 1
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("==== {} ====\n{}", m.name, m.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
        if std::thread::panicking() || std::env::var_os("PHALANX_TEST_KEEP").is_some() {
            // Keep data and logs of a failed test for inspection.
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("cluster data and logs kept in {}", kept.display());
        }
    }
}

/// A sequential writer: puts `key-<n>` = `<n>` as fast as it can through the
/// Rust etcd client, reconnecting to the current endpoint list after errors.
/// Records what was acknowledged, and when.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub endpoints: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub acked: std::sync::Arc<std::sync::Mutex<Vec<(u64, Instant)>>>,
    pub errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub prefix: String,
}

/// Per-request bound of the test writer.
pub const WRITER_REQUEST_TIMEOUT_MS: u64 = 2_000;

impl Writer {
    pub fn start(prefix: &str, endpoints: Vec<String>) -> Writer {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let endpoints = Arc::new(Mutex::new(endpoints));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, e, a, er, p) = (
            stop.clone(),
            endpoints.clone(),
            acked.clone(),
            errors.clone(),
            prefix.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut n = 0u64;
                let mut client: Option<etcd_client::Client> = None;
                while !s.load(Ordering::Relaxed) {
                    if client.is_none() {
                        let eps = e.lock().unwrap().clone();
                        let opts = etcd_client::ConnectOptions::new()
                            .with_connect_timeout(Duration::from_millis(500))
                            .with_timeout(Duration::from_millis(WRITER_REQUEST_TIMEOUT_MS));
                        match tokio::time::timeout(
                            Duration::from_secs(2),
                            etcd_client::Client::connect(eps, Some(opts)),
                        )
                        .await
                        {
                            Ok(Ok(c)) => client = Some(c),
                            _ => {
                                er.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        }
                    }
                    let c = client.as_mut().unwrap();
                    let key = format!("{p}-{n:08}");
                    match c.put(key, n.to_string(), None).await {
                        Ok(_) => {
                            a.lock().unwrap().push((n, Instant::now()));
                            n += 1;
                        }
                        Err(_) => {
                            // Indeterminate: the next attempt writes a new key,
                            // so an unacknowledged write is never counted.
                            er.fetch_add(1, Ordering::Relaxed);
                            n += 1;
                            client = None;
                        }
                    }
                }
            });
        });
        Writer {
            stop,
            endpoints,
            acked,
            errors,
            thread: Some(thread),
            prefix: prefix.to_string(),
        }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    pub fn wait_acked(&self, n: usize, timeout: Duration) {
        wait_for(&format!("{n} acknowledged writes"), timeout, || {
            (self.acked_count() >= n).then_some(())
        });
    }

    pub fn stop(&mut self) -> Vec<(u64, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Longest interval without an acknowledged write that overlaps `after`.
pub fn longest_gap(acked: &[(u64, Instant)], after: Instant) -> Duration {
    let mut times: Vec<Instant> = acked.iter().map(|(_, t)| *t).collect();
    times.sort();
    times
        .windows(2)
        .filter(|w| w[1] >= after)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// Every acknowledged key must be readable with its value (linearizable reads).
pub fn assert_all_present(endpoints: Vec<String>, prefix: &str, acked: &[(u64, Instant)]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(endpoints, None).await.unwrap();
        let resp = c
            .get(
                format!("{prefix}-"),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let present: std::collections::HashMap<String, String> = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut missing = Vec::new();
        for (n, _) in acked {
            let key = format!("{prefix}-{n:08}");
            if present.get(&key) != Some(&n.to_string()) {
                missing.push(key);
            }
        }
        assert!(
            missing.is_empty(),
            "{} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    });
}

/// HashKV of every running member at the same revision must agree.
pub fn assert_hashes_agree(c: &Cluster) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let eps = c.endpoint_list();
        let mut first = etcd_client::Client::connect(vec![eps[0].clone()], None)
            .await
            .unwrap();
        let rev = first.status().await.unwrap().header().unwrap().revision();
        let mut hashes = Vec::new();
        for ep in &eps {
            let mut cl = etcd_client::Client::connect(vec![ep.clone()], None)
                .await
                .unwrap();
            // Wait until this member has applied `rev`.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = cl
                    .get(
                        "x",
                        Some(etcd_client::GetOptions::new().with_serializable()),
                    )
                    .await
                    .unwrap();
                if r.header().unwrap().revision() >= rev || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let h = cl.hash_kv(rev).await.unwrap();
            hashes.push((ep.clone(), h.hash()));
        }
        assert!(
            hashes.windows(2).all(|w| w[0].1 == w[1].1),
            "HashKV differs across members at revision {rev}: {hashes:?}"
        );
    });
}
