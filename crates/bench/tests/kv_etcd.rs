//! `bench kv` against a real single-node etcd (Debian's `etcd-server`).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::{run_kv, KvArgs, Workload};

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
    assert!(
        Path::new(ETCD).exists(),
        "{ETCD} not found: this test needs a real etcd. Run the project's install script \
         (it installs Debian's etcd-server and etcd-client packages: `apt-get install etcd-server etcd-client`)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (cp, pp) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{cp}");
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
            let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
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
