//! Support for the TLS tests: certificates made with rcgen (through
//! `tls::gen`), `phalanx node` members on https:// URLs (drill's launcher
//! writes http:// ones, so the command line is built here), and etcdctl
//! with `--cacert/--cert/--key`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_phalanx");
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

pub fn free_port() -> u16 {
    drill::ports::free_local_port().expect("a free local port")
}

/// Poll `f` every 50 ms until it returns Some, or panic with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    drill::admin::get_blocking(&format!("127.0.0.1:{port}"), path, Duration::from_secs(5)).ok()
}

/// A sample of a labelled metric, e.g. `phalanx_peer_rejected_total{reason="not_member"}`.
pub fn labelled_metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// Write `text` to `path` atomically (temp file + rename), as a rotation tool would.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Files of one certificate.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA, its PEM file, and the certificates it issued into `dir`.
pub struct TestCa {
    pub ca: tls::gen::Ca,
    pub ca_file: PathBuf,
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let ca = tls::gen::Ca::new(name).unwrap();
        let ca_file = dir.join(format!("{name}.pem"));
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        TestCa {
            ca,
            ca_file,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for 127.0.0.1/localhost with subject CN `cn`.
    pub fn issue(&self, cn: &str, serial: u64, valid_days: i64) -> CertFiles {
        let g = self
            .ca
            .issue(
                cn,
                &["127.0.0.1".into(), "localhost".into()],
                serial,
                valid_days,
            )
            .unwrap();
        let cert = self.dir.join(format!("{cn}-{serial}.crt"));
        let key = self.dir.join(format!("{cn}-{serial}.key"));
        std::fs::write(&cert, g.cert_pem).unwrap();
        std::fs::write(&key, g.key_pem).unwrap();
        CertFiles { cert, key }
    }
}

pub struct TlsMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub client_scheme: &'static str,
    pub peer_scheme: &'static str,
    /// Flags after the generated ones (TLS files ...).
    pub extra: Vec<String>,
    pub child: Option<Child>,
}

impl TlsMember {
    pub fn new(
        dir: &Path,
        name: &str,
        client_scheme: &'static str,
        peer_scheme: &'static str,
    ) -> Self {
        TlsMember {
            name: name.into(),
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            data_dir: dir.join(name),
            log: dir.join(format!("{name}.log")),
            client_scheme,
            peer_scheme,
            extra: Vec::new(),
            child: None,
        }
    }
    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer_port)
    }

    /// Start `phalanx node` (the listen client URLs may be extended through
    /// `extra_client_urls`).
    pub fn spawn(
        &mut self,
        initial_cluster: &str,
        state: &str,
        token: &str,
        extra_client_urls: &[String],
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let log2 = log.try_clone().unwrap();
        let mut listen = vec![self.client_url()];
        listen.extend_from_slice(extra_client_urls);
        let mut cmd = Command::new(BIN);
        cmd.arg("node")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &listen.join(",")])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", self.metrics_port),
            ])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", token])
            .args(&self.extra)
            .env(
                "PHALANX_LOG",
                std::env::var("PHALANX_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        drill::cluster::exit_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawning phalanx node"));
    }

    pub fn healthy(&self) -> bool {
        matches!(http_get(self.metrics_port, "/health"), Some((200, _)))
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The member's `/member` document.
    pub fn member_doc(&self) -> serde_json::Value {
        let (_, body) = http_get(self.metrics_port, "/member").expect("/member answers");
        serde_json::from_str(&body).unwrap()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Members that are killed on drop; the directory is kept if the test failed.
pub struct TlsCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<TlsMember>,
    pub token: String,
}

impl TlsCluster {
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn wait_healthy(&self) {
        for m in &self.members {
            if m.child.is_some() {
                wait_for(
                    &format!("member {} healthy (log {})", m.name, m.log.display()),
                    Duration::from_secs(30),
                    || m.healthy().then_some(()),
                );
            }
        }
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("TLS test data and logs kept in {}", kept.display());
        }
    }
}

/// Run etcdctl (API 3) against `endpoints` with `tls_args` (e.g.
/// `--cacert=...`), bounded by a 10 s command timeout.
pub fn etcdctl(endpoints: &str, tls_args: &[String], args: &[&str]) -> Output {
    assert!(
        Path::new(ETCDCTL).exists(),
        "etcdctl is missing: run `bash .ci/install`"
    );
    Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .arg("--dial-timeout=3s")
        .args(tls_args)
        .args(args)
        .output()
        .expect("running etcdctl")
}

pub fn ctl_ok(endpoints: &str, tls_args: &[String], args: &[&str]) -> String {
    let out = etcdctl(endpoints, tls_args, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn tls_args(ca: &Path, client: Option<&CertFiles>) -> Vec<String> {
    let mut v = vec![format!("--cacert={}", ca.display())];
    if let Some(c) = client {
        v.push(format!("--cert={}", c.cert.display()));
        v.push(format!("--key={}", c.key.display()));
    }
    v
}

/// Flags of a member with client and peer TLS, client-certificate auth on both.
pub fn member_tls_flags(ca: &Path, own: &CertFiles) -> Vec<String> {
    let p = |p: &Path| p.display().to_string();
    vec![
        "--cert-file".into(),
        p(&own.cert),
        "--key-file".into(),
        p(&own.key),
        "--trusted-ca-file".into(),
        p(ca),
        "--client-cert-auth".into(),
        "--peer-cert-file".into(),
        p(&own.cert),
        "--peer-key-file".into(),
        p(&own.key),
        "--peer-trusted-ca-file".into(),
        p(ca),
        "--peer-client-cert-auth".into(),
        "--tls-reload-check-interval-ms".into(),
        "100".into(),
    ]
}
