//! Certificate users (issue 11): with `--client-cert-auth` and auth enabled,
//! a request without a token acts as the user named by the client
//! certificate's CN, as in etcd. A certificate with CN=alice reads where
//! alice's role allows and nowhere else; CN=root acts as root; a CN that
//! names no user is refused.

mod support;

use support::certs::*;
use support::Cluster;

#[test]
fn a_client_certificate_cn_acts_as_that_user() {
    let mut c = Cluster::plan(1, |_| Vec::new());
    c.set_schemes("https", "https");
    let ca = TestCa::new(c.dir.path(), "ca");
    let own = ca.issue("n1", 1, 30);
    c.members[0].extra_args = member_tls_flags(&ca.ca_file, &own);
    c.start_all();
    let eps = c.endpoints();

    let root = tls_args(&ca.ca_file, Some(&ca.issue("root", 10, 30)));
    let alice = tls_args(&ca.ca_file, Some(&ca.issue("alice", 11, 30)));
    let mallory = tls_args(&ca.ca_file, Some(&ca.issue("mallory", 12, 30)));
    for args in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["user", "add", "alice", "--new-user-password=alicepw"],
        &["role", "add", "app-reader"],
        &[
            "role",
            "grant-permission",
            "app-reader",
            "read",
            "/app/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "app-reader"],
        &["put", "/app/x", "1"],
        &["put", "/secret", "s"],
        &["auth", "enable"],
    ] {
        ctl_ok(&eps, &root, args);
    }

    // alice's certificate, no --user: read where her role allows.
    let got = ctl_ok(&eps, &alice, &["get", "/app/x", "--print-value-only"]);
    assert_eq!(got.trim(), "1");
    for args in [&["put", "/app/y", "2"][..], &["get", "/secret"]] {
        let out = etcdctl(&eps, &alice, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("permission denied"),
            "alice {args:?}: {err}"
        );
    }
    // root's certificate acts as root.
    let got = ctl_ok(&eps, &root, &["get", "/secret", "--print-value-only"]);
    assert_eq!(got.trim(), "s");
    ctl_ok(&eps, &root, &["user", "list"]);
    // A verified certificate whose CN is no user gets nothing.
    let out = etcdctl(&eps, &mallory, &["get", "/app/x"]);
    assert!(
        !out.status.success(),
        "mallory read: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A password login still works beside certificate users.
    let got = ctl_ok(
        &eps,
        &mallory,
        &[
            "--user=alice:alicepw",
            "get",
            "/app/x",
            "--print-value-only",
        ],
    );
    assert_eq!(got.trim(), "1");
}
