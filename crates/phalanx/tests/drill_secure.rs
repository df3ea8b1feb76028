//! Drills and benchmarks with TLS and auth on: `phalanx drill --local 3
//! --secure` (client and peer TLS with generated certificates, client
//! certificates required, auth enabled, the workload running as a user that
//! may only touch `drill/`) passes kill-leader and partition-leader; the
//! clients' etcdctl-style flags (`--cacert/--cert/--key/--user`) work for
//! `phalanx drill --endpoints` and `phalanx bench kv` against such a cluster,
//! and the cluster really refuses plain, certificate-less and unauthorised
//! clients. Drills run one at a time.

use std::process::Command;
use std::time::Duration;

use client_security::{ClientSecurity, ClientSecuritySettings};
use drill::cluster::{ClusterOptions, LocalCluster};
use drill::secure::{SecureFiles, DRILL_USER};

#[path = "support/drill.rs"]
mod drill_support;
mod support;
use drill_support::{
    assert_busy, assert_passed, drill, explain, local_drill, one_at_a_time, report_md, summary, BIN,
};
use support::backups::keygen;

#[test]
fn secure_drill_kill_and_partition_leader_passes() {
    let _one = one_at_a_time();
    let r = local_drill("kill-leader,partition-leader", "16s", &["--secure"]);
    let s = assert_passed(&r);
    assert_busy(&r, &s, 100);
    let windows = s["windows"].as_array().unwrap();
    assert_eq!(windows[0]["new_leader_elected"], true, "{}", explain(&r));
    assert_eq!(windows[1]["new_leader_elected"], true, "{}", explain(&r));
    for f in [
        "ca.pem",
        "member.crt",
        "member.key",
        "drill.crt",
        "drill.key",
    ] {
        assert!(r.dir.join("certs").join(f).exists(), "certs/{f} missing");
    }
    let md = report_md(&r);
    assert!(
        md.contains("client and peer TLS") && md.contains("auth on"),
        "report.md does not state the security settings:\n{md}"
    );
    // The members served TLS on the client and peer ports.
    let log = std::fs::read_to_string(r.dir.join("logs").join("n1.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn secure_requires_local_and_refuses_backend_faults() {
    let _one = one_at_a_time();
    let r = drill(&["--local", "3", "--secure", "--faults", "backend-kill"]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    assert!(r.stderr.contains("--secure"), "{}", r.stderr);
    let r = drill(&["--local", "3", "--user", "a:b", "--faults", "kill-leader"]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    assert!(r.stderr.contains("--endpoints"), "{}", r.stderr);
    let r = drill(&["--endpoints", "http://127.0.0.1:1", "--secure"]);
    assert_ne!(r.code, 0, "{}", explain(&r));
}

fn security(files: &SecureFiles, cert: bool, user: Option<String>) -> ClientSecurity {
    ClientSecurity::load(&ClientSecuritySettings {
        cacert: Some(files.ca.clone()),
        cert: cert.then(|| files.user_cert.clone()),
        key: cert.then(|| files.user_key.clone()),
        user,
    })
    .unwrap()
}

async fn try_get(
    endpoint: &str,
    sec: &ClientSecurity,
    key: &str,
) -> Result<(), etcd_client::Error> {
    let t = Duration::from_secs(5);
    let opts = sec.options(
        etcd_client::ConnectOptions::new()
            .with_connect_timeout(t)
            .with_timeout(t),
        &[endpoint],
    )?;
    let mut c = etcd_client::Client::connect([endpoint], Some(opts)).await?;
    c.get(key, None).await.map(|_| ())
}

/// One secure member: it refuses what it must refuse, and `phalanx bench kv`
/// and `phalanx drill --endpoints` get through with etcdctl's flags.
#[test]
fn secure_cluster_refuses_strangers_and_admits_the_tools_flags() {
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let files = SecureFiles::generate(&tmp.path().join("certs")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut o = ClusterOptions::new(1, std::path::Path::new(BIN), &tmp.path().join("logs"));
    o.secure = Some(files.clone());
    o.fault_injection = true;
    let cluster = rt
        .block_on(LocalCluster::launch(o))
        .expect("secure cluster starts");
    let ep = cluster.client_urls()[0].clone();
    assert!(ep.starts_with("https://"), "{ep}");
    let pw = files.user_password.clone();
    let user = Some(format!("{DRILL_USER}:{pw}"));

    rt.block_on(async {
        // Plain text on the TLS port: refused.
        let plain_ep = ep.replace("https://", "http://");
        let e = try_get(&plain_ep, &ClientSecurity::plain(), "drill/x").await;
        assert!(e.is_err(), "plain client admitted");
        // TLS without a client certificate: refused (--client-cert-auth).
        let e = try_get(&ep, &security(&files, false, user.clone()), "drill/x").await;
        assert!(e.is_err(), "client without certificate admitted");
        // A wrong password: refused at Authenticate.
        let e = try_get(
            &ep,
            &security(&files, true, Some(format!("{DRILL_USER}:nope"))),
            "drill/x",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("authentication failed"), "{e}");
        // The drill user may read drill/ but nothing else.
        let ok = security(&files, true, user.clone());
        try_get(&ep, &ok, "drill/x").await.expect("drill/ readable");
        let e = try_get(&ep, &ok, "other/x").await.unwrap_err().to_string();
        assert!(e.contains("permission denied"), "{e}");
    });

    let p = |x: &std::path::Path| x.display().to_string();
    let sec_flags = [
        "--cacert".to_string(),
        p(&files.ca),
        "--cert".into(),
        p(&files.user_cert),
        "--key".into(),
        p(&files.user_key),
        "--user".into(),
        format!("{DRILL_USER}:{pw}"),
    ];
    // bench kv (keys must be under drill/ for this user: bench writes bench/..., so
    // use root's certificate and password instead).
    let root_flags = [
        "--cacert".to_string(),
        p(&files.ca),
        "--cert".into(),
        p(&files.root_cert),
        "--key".into(),
        p(&files.root_key),
        "--user".into(),
        format!("root:{}", files.root_password),
    ];
    for workload in ["put", "get-linearizable", "authenticate"] {
        let out = Command::new(BIN)
            .args(["bench", "kv", "--endpoints", &ep, "--clients", "4"])
            .args(["--duration", "1s", "--workload", workload, "--json"])
            .args(&root_flags)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{workload}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["ops"].as_u64().unwrap() > 0 && v["errors_total"] == 0,
            "{workload}: {v}"
        );
    }
    // Without --user, the put is refused by auth (counted as errors), not admitted.
    let out = Command::new(BIN)
        .args(["bench", "kv", "--endpoints", &ep, "--duration", "500ms"])
        .args(["--cacert", &p(&files.ca), "--json"])
        .args(["--cert", &p(&files.user_cert), "--key", &p(&files.user_key)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!(v["ops"], 0, "{text}");
    assert!(
        text.contains("permission denied"),
        "expected permission denied for bench/ keys as user drill (certificate CN): {text}"
    );

    // The other commands that talk to a cluster take the same flags.
    let run = |args: &[&str], flags: &[String]| {
        let out = Command::new(BIN).args(args).args(flags).output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run(
        &["events", "--endpoints", &ep, "--since", "1h"],
        &root_flags,
    );
    assert!(ok, "phalanx events with TLS and auth: {text}");
    let (ok, text) = run(&["events", "--endpoints", &ep, "--since", "1h"], &[]);
    assert!(
        !ok,
        "phalanx events without the CA and a certificate succeeded: {text}"
    );
    let (ok, text) = run(
        &["backup", "schedule", "show", "--endpoints", &ep],
        &root_flags,
    );
    assert!(ok && text.contains("no backup policy"), "{text}");
    let (_identity, public) = keygen(tmp.path());
    let repo = format!("file://{}", tmp.path().join("repo").display());
    let backup_now = |flags: &[String]| {
        run(
            &[
                "backup",
                "now",
                "--endpoints",
                &ep,
                "--to",
                &repo,
                "--recipient",
                &public,
            ],
            flags,
        )
    };
    let (ok, text) = backup_now(&root_flags);
    assert!(
        ok && text.contains("at revision"),
        "phalanx backup now with TLS and auth: {text}"
    );
    // As the drill user (no root role), the snapshot is refused by auth.
    let (ok, text) = backup_now(&sec_flags);
    assert!(!ok && text.contains("permission denied"), "{text}");

    // drill --endpoints with the flags, no faults.
    let admin = cluster.admin_urls()[0].clone();
    let mut args = vec![
        "--endpoints".to_string(),
        ep.clone(),
        "--admin-endpoints".into(),
        admin,
        "--faults".into(),
        "none".into(),
        "--duration".into(),
        "3s".into(),
    ];
    args.extend(sec_flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = drill(&args);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let s = summary(&r.dir);
    assert!(s["total"]["ok"].as_u64().unwrap() > 10, "{}", explain(&r));
    let md = report_md(&r);
    assert!(md.contains("user `drill`"), "{md}");
    drop(cluster);
}
