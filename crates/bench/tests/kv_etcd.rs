//! `bench kv` against a real single-node etcd (Debian's `etcd-server`).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::{run_kv, KvArgs, Workload};
use client_security::{ClientSecurity, ClientSecuritySettings};

const ETCD: &str = "/usr/bin/etcd";

/// Kills etcd when the test ends, however it ends.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_etcd() -> Etcd {
    start_etcd_with(&[], "http", None).await
}

/// etcd with `extra` flags on a `scheme` client URL; readiness is probed with
/// `security` (default: plain).
async fn start_etcd_with(
    extra: &[String],
    scheme: &str,
    security: Option<&ClientSecurity>,
) -> Etcd {
    assert!(
        Path::new(ETCD).exists(),
        "{ETCD} not found: this test needs a real etcd. Run the project's install script \
         (it installs Debian's etcd-server and etcd-client packages: `apt-get install etcd-server etcd-client`)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (cp, pp) = (free_port(), free_port());
    let client_url = format!("{scheme}://127.0.0.1:{cp}");
    let peer_url = format!("http://127.0.0.1:{pp}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let child = Command::new(ETCD)
        .args(["--name", "bench-test", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("bench-test={peer_url}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn etcd");
    let etcd = Etcd {
        child,
        endpoint: client_url,
        _dir: dir,
    };
    // Poll until a request succeeds rather than sleeping a guessed time.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = async {
            let plain = ClientSecurity::plain();
            let sec = security.unwrap_or(&plain);
            let opts = sec
                .options(
                    etcd_client::ConnectOptions::new(),
                    &[etcd.endpoint.as_str()],
                )
                .ok()?;
            let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], Some(opts))
                .await
                .ok()?;
            c.get("ready-probe", None).await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), ok)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return etcd;
        }
        assert!(
            Instant::now() < deadline,
            "etcd did not become ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn args(endpoint: &str, workload: Workload) -> KvArgs {
    KvArgs {
        endpoints: vec![endpoint.to_string()],
        clients: 4,
        duration: Duration::from_secs(2),
        workload,
        value_bytes: 256,
        keys: 100,
        fill_txn_ops: 10,
        put_percent: 50,
        request_timeout_ms: 5_000,
        connect_timeout_ms: 5_000,
        error_backoff_ms: 10,
        report_gaps: workload == Workload::Put,
        json: false,
        security: ClientSecurity::plain(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_cleanly_against_etcd() {
    let etcd = start_etcd().await;
    for w in [
        Workload::Put,
        Workload::GetLinearizable,
        Workload::GetSerializable,
        Workload::Mixed,
    ] {
        let report = run_kv(&args(&etcd.endpoint, w)).await.expect("bench runs");
        assert!(report.ops > 0, "{w:?}: no successful operations\n{report}");
        assert_eq!(report.errors_total, 0, "{w:?}: errors\n{report}");
        assert!(
            report.latency.p50_us > 0 && report.latency.p50_us <= report.latency.p999_us,
            "{report}"
        );
        if w == Workload::Put {
            let gap = report.longest_put_gap_ms.expect("gaps requested");
            assert!(gap > 0.0 && gap < 2_000.0, "{report}");
        }
        // The JSON form carries the same numbers.
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["ops"], report.ops);
    }
    // Fill writes every key exactly once (100 keys, 10 per txn) and stops.
    let report = run_kv(&args(&etcd.endpoint, Workload::Fill))
        .await
        .expect("fill runs");
    assert_eq!((report.ops, report.errors_total), (10, 0), "{report}");
    let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let all = c
        .get(
            "bench/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(all.count(), 100);
}

#[tokio::test]
async fn unreachable_endpoint_is_reported() {
    // Nothing listens on a just-freed port; connecting must fail clearly
    // or every request must be counted as an error, never a success.
    let port = free_port();
    let mut a = args(&format!("http://127.0.0.1:{port}"), Workload::Put);
    a.duration = Duration::from_millis(300);
    a.connect_timeout_ms = 500;
    a.request_timeout_ms = 500;
    match run_kv(&a).await {
        Err(e) => assert!(e.to_string().contains("cannot connect"), "{e:#}"),
        Ok(r) => assert!(r.ops == 0 && r.errors_total > 0, "{r}"),
    }
}

/// The anchor for Phalanx's secure benchmark: the same load generator against
/// etcd 3.4 with client TLS, `--client-cert-auth` and auth enabled
/// (`--auth-token simple`): puts and Authenticate calls succeed with the
/// flags etcdctl takes, and fail without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_speaks_tls_client_certs_and_auth_to_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls::gen::Ca::new("bench-ca").unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let write_pair = |cn: &str, serial: u64| {
        let g = ca
            .issue(cn, &["127.0.0.1".into(), "localhost".into()], serial, 30)
            .unwrap();
        let (c, k) = (
            dir.path().join(format!("{cn}.crt")),
            dir.path().join(format!("{cn}.key")),
        );
        std::fs::write(&c, g.cert_pem).unwrap();
        std::fs::write(&k, g.key_pem).unwrap();
        (c, k)
    };
    let (server_cert, server_key) = write_pair("server", 1);
    let (client_cert, client_key) = write_pair("root", 2);
    let p = |x: &std::path::Path| x.display().to_string();
    let extra = vec![
        "--cert-file".into(),
        p(&server_cert),
        "--key-file".into(),
        p(&server_key),
        "--trusted-ca-file".into(),
        p(&ca_file),
        "--client-cert-auth".into(),
        "--auth-token".into(),
        "simple".into(),
    ];
    let tls_only = ClientSecurity::load(&ClientSecuritySettings {
        cacert: Some(ca_file.clone()),
        cert: Some(client_cert.clone()),
        key: Some(client_key.clone()),
        user: None,
    })
    .unwrap();
    let etcd = start_etcd_with(&extra, "https", Some(&tls_only)).await;
    // Enable auth: root with a password (etcd 3.4 needs the root user first).
    let opts = tls_only
        .options(
            etcd_client::ConnectOptions::new(),
            &[etcd.endpoint.as_str()],
        )
        .unwrap();
    let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], Some(opts))
        .await
        .unwrap();
    c.user_add("root", "rootpw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();

    let full = ClientSecurity::load(&ClientSecuritySettings {
        cacert: Some(ca_file.clone()),
        cert: Some(client_cert),
        key: Some(client_key),
        user: Some("root:rootpw".into()),
    })
    .unwrap();
    for w in [
        Workload::Put,
        Workload::GetLinearizable,
        Workload::Authenticate,
    ] {
        let mut a = args(&etcd.endpoint, w);
        a.duration = Duration::from_millis(1_500);
        a.security = full.clone();
        let r = run_kv(&a).await.expect("bench runs with TLS and auth");
        assert!(r.ops > 0 && r.errors_total == 0, "{w:?}\n{r}");
    }
    // Without a client certificate, etcd refuses the handshake.
    let no_cert = ClientSecurity::load(&ClientSecuritySettings {
        cacert: Some(ca_file),
        user: Some("root:rootpw".into()),
        ..Default::default()
    })
    .unwrap();
    let mut a = args(&etcd.endpoint, Workload::Put);
    a.duration = Duration::from_millis(300);
    a.connect_timeout_ms = 1_000;
    a.security = no_cert;
    match run_kv(&a).await {
        Err(e) => assert!(e.to_string().contains("cannot connect"), "{e:#}"),
        Ok(r) => assert!(r.ops == 0 && r.errors_total > 0, "{r}"),
    }
    // The authenticate workload needs --user.
    let mut a = args(&etcd.endpoint, Workload::Authenticate);
    a.security = tls_only;
    let e = run_kv(&a).await.unwrap_err().to_string();
    assert!(e.contains("--user"), "{e}");
}
