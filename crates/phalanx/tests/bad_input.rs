//! Bad input gets etcd's error (code and message), and the cluster keeps serving.

mod support;

use std::process::Command;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use support::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn status_of(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[test]
fn bad_requests_get_etcd_errors_and_the_cluster_keeps_serving() {
    let c = Cluster::start(3, &["--quota-backend-bytes", "8388608"]);
    let t0 = std::time::Instant::now();
    let lap = |what: &str| eprintln!("[{:>6} ms] {what}", t0.elapsed().as_millis());
    rt().block_on(async {
        let mut cl = etcd_client::Client::connect(c.endpoint_list(), None)
            .await
            .unwrap();
        cl.put("ok", "1", None).await.unwrap();

        // Empty key.
        let (code, msg) = status_of(cl.put("", "v", None).await.unwrap_err());
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: key is not provided"
            )
        );

        lap("// Unknown lease.");
        // Unknown lease.
        let (code, msg) = status_of(
            cl.put("k", "v", Some(PutOptions::new().with_lease(12345)))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::NotFound,
                "etcdserver: requested lease not found"
            )
        );

        lap("// Request over max_request_by");
        // Request over max_request_bytes (1.5 MiB) but within the transport's overhead allowance.
        let big = vec![b'x'; 1_700_000];
        let (code, msg) = status_of(cl.put("big", big, None).await.unwrap_err());
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: request is too large"
            )
        );
        // Far over: refused by the transport, still no harm.
        let huge = vec![b'x'; 4_000_000];
        assert!(cl.put("huge", huge, None).await.is_err());

        lap("// Too many ops");
        // Too many ops in a txn (default max 128).
        let ops: Vec<TxnOp> = (0..129)
            .map(|i| TxnOp::put(format!("t{i}"), "v", None))
            .collect();
        let (code, msg) = status_of(cl.txn(Txn::new().and_then(ops)).await.unwrap_err());
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: too many operations in txn request"
            )
        );

        // Duplicate key in a txn.
        let ops = vec![TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)];
        let (code, msg) = status_of(cl.txn(Txn::new().and_then(ops)).await.unwrap_err());
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request"
            )
        );

        lap("// Future and compacted");
        // Future and compacted revisions.
        let rev = cl
            .put("r", "1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let (code, msg) = status_of(
            cl.get("r", Some(GetOptions::new().with_revision(rev + 1000)))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision"
            )
        );
        cl.put("r", "2", None).await.unwrap();
        cl.compact(rev + 1, None).await.unwrap();
        let (code, msg) = status_of(
            cl.get("r", Some(GetOptions::new().with_revision(rev)))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )
        );
        let (_, msg) = status_of(cl.compact(rev, None).await.unwrap_err());
        assert_eq!(
            msg,
            "etcdserver: mvcc: required revision has been compacted"
        );

        // A txn comparing on a key still works afterwards.
        let t = Txn::new()
            .when(vec![Compare::value("r", CompareOp::Equal, "2")])
            .and_then(vec![TxnOp::put("after", "yes", None)]);
        assert!(cl.txn(t).await.unwrap().succeeded());

        lap("// Space quota");
        // Space quota: fill past 8 MiB; writes then fail with NOSPACE, reads still work.
        let value = vec![b'q'; 512 * 1024];
        let mut nospace = None;
        for i in 0..200 {
            match cl.put(format!("fill-{i}"), value.clone(), None).await {
                Ok(_) => {}
                Err(e) => {
                    nospace = Some(status_of(e));
                    break;
                }
            }
        }
        let (code, msg) = nospace.expect("the quota was never hit");
        assert_eq!(
            (code, msg.as_str()),
            (
                tonic::Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded"
            )
        );
        lap("let alarms = cl.alarm");
        let alarms = cl
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await
            .unwrap();
        assert!(alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == etcd_client::AlarmType::Nospace));
        assert_eq!(cl.get("ok", None).await.unwrap().kvs()[0].value(), b"1");
        // Deletes are still allowed under the alarm.
        cl.delete("fill-0", None).await.unwrap();
    });
    // The cluster still serves on every member.
    for m in &c.members {
        let out = c.etcdctl_at(&m.client_url(), &["get", "ok", "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }
}

fn start_err(args: &[&str]) -> String {
    let out = Command::new(BIN).arg("node").args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "expected the member to refuse to start"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn members_refuse_foreign_conflicting_or_corrupted_data() {
    let mut c = Cluster::start(1, &[]);
    c.ctl(&["put", "a", "1"]);
    c.members[0].kill9();
    let m = &c.members[0];
    let data = m.data_dir.to_str().unwrap().to_string();
    let common = |token: &str, name: &str, peer: &str| -> Vec<String> {
        vec![
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            data.clone(),
            "--listen-client-urls".into(),
            format!("http://127.0.0.1:{}", free_port()),
            "--advertise-client-urls".into(),
            "http://127.0.0.1:1".into(),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{}", free_port()),
            "--initial-advertise-peer-urls".into(),
            peer.into(),
            "--initial-cluster".into(),
            format!("{name}={peer}"),
            "--initial-cluster-token".into(),
            token.into(),
        ]
    };
    let as_refs = |v: &Vec<String>| {
        v.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\u{0}")
    };
    // Another cluster's data dir (different token).
    let args = common("other-cluster", &m.name, &m.peer_url());
    let err = start_err(&as_refs(&args).split('\u{0}').collect::<Vec<_>>());
    assert!(
        err.contains("belongs to cluster") && err.contains("other-cluster"),
        "{err}"
    );
    // Same cluster, different member identity.
    let args = common(&c.token, "intruder", "http://127.0.0.1:1");
    let err = start_err(&as_refs(&args).split('\u{0}').collect::<Vec<_>>());
    assert!(
        err.contains("belongs to member") && err.contains("intruder"),
        "{err}"
    );
    // Corrupted identity file.
    let ident = m.data_dir.join("member/identity.json");
    let text = std::fs::read_to_string(&ident)
        .unwrap()
        .replace(&m.name, "nX");
    std::fs::write(&ident, text).unwrap();
    let args = common(&c.token, &m.name, &m.peer_url());
    let err = start_err(&as_refs(&args).split('\u{0}').collect::<Vec<_>>());
    assert!(err.contains("corrupted"), "{err}");
}

#[test]
fn corrupted_store_file_refuses_to_start() {
    let mut c = Cluster::start(1, &[]);
    for i in 0..50 {
        c.ctl(&["put", &format!("key{i}"), &"v".repeat(200)]);
    }
    c.members[0].kill9();
    // Flip bytes in the raft log's write-ahead log: a checksum must catch it.
    let path = {
        let mut segs: Vec<_> = std::fs::read_dir(c.members[0].data_dir.join("member/wal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segs.sort();
        segs.pop().expect("a WAL segment")
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = "v".repeat(200);
    // Every copy (each put's record holds one).
    let positions: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert!(!positions.is_empty(), "a stored value in the log file");
    for pos in positions {
        bytes[pos + 10] ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    let token = c.token.clone();
    c.members[0].spawn(&token);
    let status = wait_for("the member to exit", Duration::from_secs(20), || {
        c.members[0].child.as_mut().unwrap().try_wait().unwrap()
    });
    assert!(!status.success());
    let log = c.members[0].log_text();
    assert!(
        log.contains(&path.display().to_string())
            && log.contains("corrupted")
            && log.contains("re-add it"),
        "{log}"
    );
}

#[test]
fn an_anomaly_sensitivity_outside_0_to_1_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for v in ["1.5", "0", "-0.2", "NaN"] {
        let err = start_err(&[
            "--data-dir",
            dir.path().to_str().unwrap(),
            &format!("--alerting-anomaly-sensitivity={v}"),
        ]);
        assert!(
            err.contains("--alerting-anomaly-sensitivity") && err.contains("between 0 and 1"),
            "{v}: {err}"
        );
    }
}

#[test]
fn write_batch_limits_of_zero_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for flag in [
        "--max-write-batch-commands",
        "--max-write-batch-bytes",
        "--max-write-batches-in-flight",
    ] {
        let err = start_err(&["--data-dir", dir.path().to_str().unwrap(), flag, "0"]);
        assert!(
            err.contains(&format!("{flag} must be at least 1")),
            "{flag}: {err}"
        );
    }
    // The same limit from a config file names the same setting.
    let cfg = dir.path().join("member.toml");
    std::fs::write(&cfg, "max-write-batches-in-flight = 0\n").unwrap();
    let err = start_err(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--config-file",
        cfg.to_str().unwrap(),
    ]);
    assert!(
        err.contains("--max-write-batches-in-flight must be at least 1"),
        "{err}"
    );
}
