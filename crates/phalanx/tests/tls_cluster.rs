//! Client and peer TLS with etcd's flags (issue 11, done-when a and b):
//! a 3-member cluster with `--client-cert-auth` and peer TLS serves etcdctl
//! with `--cacert --cert --key`; clients without a certificate, with one
//! from another CA, or speaking plain HTTP are refused; a plain listener
//! next to the TLS one still serves; certificates rotated on disk are
//! picked up without a restart.

mod support;

use std::time::Duration;
use support::certs::*;
use support::{free_port, labelled_metric, wait_for, Cluster, Member};

const FAIL_FAST: &str = "--command-timeout=4s";

#[test]
fn three_members_with_client_and_peer_tls_serve_etcdctl_and_refuse_the_rest() {
    let mut c = Cluster::plan(3, |_| Vec::new());
    c.set_schemes("https", "https");
    let ca = TestCa::new(c.dir.path(), "ca");
    let other = TestCa::new(c.dir.path(), "other-ca");
    for (i, m) in c.members.iter_mut().enumerate() {
        let own = ca.issue(&m.name.clone(), i as u64 + 1, 30);
        m.extra_args = member_tls_flags(&ca.ca_file, &own);
    }
    let plain_port = free_port();
    c.members[0].extra_listen_client_urls = vec![format!("http://127.0.0.1:{plain_port}")];
    c.start_all();

    let client = ca.issue("root", 100, 30);
    let ok = tls_args(&ca.ca_file, Some(&client));
    let eps = c.endpoints();
    ctl_ok(&eps, &ok, &["put", "tls-key", "tls-value"]);
    let got = ctl_ok(&eps, &ok, &["get", "tls-key", "--print-value-only"]);
    assert_eq!(got.trim(), "tls-value");
    let status = ctl_ok(&eps, &ok, &["endpoint", "status"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    for m in &c.members {
        assert!(status.contains(&m.client_url()), "{status}");
    }

    // The plain listener next to the TLS one serves without TLS.
    let plain = format!("http://127.0.0.1:{plain_port}");
    let got = ctl_ok(&plain, &[], &["get", "tls-key", "--print-value-only"]);
    assert_eq!(got.trim(), "tls-value");

    // Refused: no client certificate; a certificate from another CA; plain
    // HTTP on the TLS-only listener.
    let one = c.members[0].client_url();
    let mut no_cert = tls_args(&ca.ca_file, None);
    no_cert.push(FAIL_FAST.into());
    let mut foreign = tls_args(&ca.ca_file, Some(&other.issue("root", 7, 30)));
    foreign.push(FAIL_FAST.into());
    let plain_on_tls = format!("http://127.0.0.1:{}", c.members[0].client_port);
    for (what, eps, args) in [
        ("no client certificate", one.as_str(), no_cert),
        ("a certificate from another CA", one.as_str(), foreign),
        (
            "plain HTTP on the TLS listener",
            plain_on_tls.as_str(),
            vec![FAIL_FAST.to_string()],
        ),
    ] {
        let out = etcdctl(eps, &args, &["get", "tls-key"]);
        assert!(
            !out.status.success(),
            "{what}: etcdctl succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("tls-value"),
            "{what}"
        );
    }

    let page = c.members[0].metrics();
    let failures = labelled_metric(
        &page,
        r#"phalanx_tls_handshake_failures_total{listener="client"}"#,
    );
    assert!(
        failures.unwrap_or(0.0) >= 3.0,
        "handshake failures: {failures:?}\n{page}"
    );
    for listener in ["client", "peer", "peer-client"] {
        let expiry = labelled_metric(
            &page,
            &format!(r#"phalanx_tls_certificate_expiry_seconds{{listener="{listener}"}}"#),
        )
        .unwrap_or_else(|| panic!("no expiry metric for {listener}:\n{page}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as f64;
        assert!(
            expiry > now + 29.0 * 86_400.0 && expiry < now + 31.0 * 86_400.0,
            "{listener}: {expiry}"
        );
    }
}

/// The serial number of the certificate a TLS server presents.
fn served_serial(port: u16, ca: &std::path::Path) -> Option<String> {
    let tls = tls::ClientTls::new(
        &tls::ClientSettings {
            trusted_ca_file: Some(ca.to_path_buf()),
            ..Default::default()
        },
        tls::CLIENT_FLAGS,
    )
    .ok()?;
    let name = tls::rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
    let mut conn = tls::rustls::ClientConnection::new(tls.config.clone(), name).ok()?;
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    let der = conn.peer_certificates()?.first()?.clone();
    Some(tls::certinfo::parse(&der).ok()?.serial_hex)
}

#[test]
fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let mut c = Cluster::plan(1, |_| Vec::new());
    c.set_schemes("https", "http");
    let dir = c.dir.path().to_path_buf();
    let ca = TestCa::new(&dir, "ca");
    let first = ca.issue("n1", 0x11, 30);
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    c.members[0].extra_args = vec![
        "--cert-file".into(),
        cert.display().to_string(),
        "--key-file".into(),
        key.display().to_string(),
        "--tls-reload-check-interval-ms".into(),
        "100".into(),
        "--tls-min-version".into(),
        "TLS1.2".into(),
        "--cipher-suites".into(),
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
    ];
    let port = c.members[0].client_port;
    c.start_all();
    let args = tls_args(&ca.ca_file, None);
    let eps = c.endpoints();
    ctl_ok(&eps, &args, &["put", "before", "1"]);
    assert_eq!(served_serial(port, &ca.ca_file).as_deref(), Some("11"));
    let expiry = |c: &Cluster| {
        labelled_metric(
            &c.members[0].metrics(),
            r#"phalanx_tls_certificate_expiry_seconds{listener="client"}"#,
        )
    };
    let before = expiry(&c).expect("expiry metric");

    // Rotate: new key, then new certificate (each replaced atomically).
    let second = ca.issue("n1", 0x2a, 90);
    write_atomic(&key, &std::fs::read_to_string(&second.key).unwrap());
    write_atomic(&cert, &std::fs::read_to_string(&second.cert).unwrap());
    wait_for(
        "the rotated certificate (serial 2a) served",
        Duration::from_secs(10),
        || (served_serial(port, &ca.ca_file).as_deref() == Some("2a")).then_some(()),
    );
    ctl_ok(&eps, &args, &["put", "after", "2"]);
    let after = expiry(&c).expect("expiry metric");
    assert!(
        after > before + 59.0 * 86_400.0,
        "expiry metric not updated: {before} -> {after}"
    );

    // A broken replacement (key of another certificate) is not used: the
    // rotated pair goes on being served, and the log says why.
    let third = ca.issue("n1", 0x33, 90);
    write_atomic(&cert, &std::fs::read_to_string(&third.cert).unwrap());
    wait_for("the mismatch logged", Duration::from_secs(10), || {
        let _ = served_serial(port, &ca.ca_file);
        c.members[0]
            .log_text()
            .contains("does not match the certificate")
            .then_some(())
    });
    assert_eq!(served_serial(port, &ca.ca_file).as_deref(), Some("2a"));
}

#[test]
fn unusable_tls_files_stop_the_start_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let a = ca.issue("a", 1, 30);
    let b = ca.issue("b", 2, 30);
    let expired = ca.issue("old", 3, -2);
    let other = TestCa::new(dir.path(), "other-ca");
    let missing = dir.path().join("missing.crt");
    let d = |p: &std::path::Path| p.display().to_string();
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![
                "--cert-file".into(),
                d(&a.cert),
                "--key-file".into(),
                d(&b.key),
            ],
            vec![d(&b.key), "does not match".into()],
        ),
        (
            vec![
                "--cert-file".into(),
                d(&expired.cert),
                "--key-file".into(),
                d(&expired.key),
            ],
            vec![d(&expired.cert), "expired".into()],
        ),
        (
            vec![
                "--cert-file".into(),
                d(&missing),
                "--key-file".into(),
                d(&a.key),
            ],
            vec![d(&missing), "cannot read".into()],
        ),
        (
            vec![
                "--cert-file".into(),
                d(&a.cert),
                "--key-file".into(),
                d(&a.key),
                "--client-cert-auth".into(),
            ],
            vec!["--client-cert-auth needs --trusted-ca-file".into()],
        ),
        (
            vec![
                "--peer-cert-file".into(),
                d(&a.cert),
                "--peer-key-file".into(),
                d(&a.key),
                "--peer-trusted-ca-file".into(),
                d(&other.ca_file),
            ],
            vec![d(&a.cert), "not signed by any CA".into()],
        ),
        (
            vec![
                "--cipher-suites".into(),
                "TLS_RSA_WITH_RC4_128_SHA".into(),
                "--cert-file".into(),
                d(&a.cert),
                "--key-file".into(),
                d(&a.key),
            ],
            vec!["--cipher-suites".into(), "not supported".into()],
        ),
    ];
    for (i, (flags, wanted)) in cases.into_iter().enumerate() {
        let client = if flags.iter().any(|f| f == "--cert-file") {
            "https"
        } else {
            "http"
        };
        let mut m = Member::new(dir.path(), &format!("bad{i}"));
        m.client_scheme = client;
        m.peer_scheme = "https";
        m.extra_args = flags;
        m.initial_cluster = format!("{}={}", m.name, m.peer_url());
        m.spawn("bad");
        let mut child = m.child.take().unwrap();
        let status = wait_for(
            "the member to refuse to start",
            Duration::from_secs(20),
            || child.try_wait().unwrap(),
        );
        assert_eq!(status.code(), Some(1), "case {i}: {}", m.log_text());
        let log = m.log_text();
        for w in &wanted {
            assert!(
                log.contains(w.as_str()),
                "case {i}: {w:?} missing from:\n{log}"
            );
        }
    }
}
