//! Peer TLS (issue 11, done-when c): a member whose peer certificate comes
//! from another CA cannot join a cluster with `--peer-client-cert-auth`,
//! and its log says why.

mod support;

use std::time::Duration;
use support::certs::*;
use support::{labelled_metric, wait_for, Cluster, Member};

fn wait_exit(m: &mut Member, what: &str) -> std::process::ExitStatus {
    let mut child = m.child.take().unwrap();
    wait_for(what, Duration::from_secs(40), || child.try_wait().unwrap())
}

#[test]
fn a_member_with_a_peer_certificate_from_another_ca_cannot_join() {
    let mut c = Cluster::plan(1, |_| Vec::new());
    c.set_schemes("https", "https");
    let ca = TestCa::new(c.dir.path(), "ca");
    let rogue_ca = TestCa::new(c.dir.path(), "rogue-ca");
    c.members[0].extra_args = member_tls_flags(&ca.ca_file, &ca.issue("n1", 1, 30));
    let ic = c.initial_cluster();
    c.start_all();

    // The cluster expects n2 (so only TLS can stop it).
    let client = ca.issue("root", 100, 30);
    let args = tls_args(&ca.ca_file, Some(&client));
    let n2_index = c.new_member("n2");
    let mut n2 = c.members.remove(n2_index);
    ctl_ok(
        &c.endpoints(),
        &args,
        &[
            "member",
            "add",
            "n2",
            &format!("--peer-urls={}", n2.peer_url()),
        ],
    );
    n2.initial_cluster = format!("{ic},n2={}", n2.peer_url());
    let token = c.token.clone();

    // 1. n2's certificate is from the rogue CA; n2 trusts both CAs (so it
    //    accepts n1), n1 trusts only its own: n1 refuses n2's certificate.
    let both = c.dir.path().join("both-cas.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(&ca.ca_file).unwrap()
            + &std::fs::read_to_string(&rogue_ca.ca_file).unwrap(),
    )
    .unwrap();
    let rogue = rogue_ca.issue("n2", 2, 30);
    n2.extra_args = member_tls_flags(&both, &rogue);
    n2.spawn(&token);
    let st = wait_exit(&mut n2, "n2 to give up joining");
    assert!(!st.success(), "n2 joined: {}", n2.log_text());
    let log = n2.log_text();
    assert!(log.contains("could not join the existing cluster"), "{log}");
    assert!(
        log.contains("refused this member's certificate")
            || log.contains("UnknownCA")
            || log.contains("BadCertificate"),
        "n2's log does not say its certificate was refused:\n{log}"
    );
    let page = c.members[0].metrics();
    let refused = labelled_metric(
        &page,
        r#"phalanx_tls_handshake_failures_total{listener="peer"}"#,
    );
    assert!(refused.unwrap_or(0.0) >= 1.0, "{page}");

    // 2. n2 trusts only the rogue CA: it refuses n1's certificate itself.
    let _ = std::fs::remove_dir_all(&n2.data_dir);
    n2.extra_args = member_tls_flags(&rogue_ca.ca_file, &rogue);
    n2.spawn(&token);
    let st = wait_exit(&mut n2, "n2 to give up joining (2)");
    assert!(!st.success());
    let log = n2.log_text();
    assert!(
        log.contains("not signed by a CA this member trusts") && log.contains("UnknownIssuer"),
        "n2's log does not say the peer's certificate is untrusted:\n{log}"
    );

    // 3. A certificate its own --peer-trusted-ca-file does not sign is
    //    refused at start, before any peer is asked.
    let _ = std::fs::remove_dir_all(&n2.data_dir);
    n2.extra_args = member_tls_flags(&ca.ca_file, &rogue);
    n2.spawn(&token);
    let st = wait_exit(&mut n2, "n2 to refuse to start");
    assert_eq!(st.code(), Some(1));
    let log = n2.log_text();
    assert!(
        log.contains("not signed by any CA in") && log.contains("n2-2.crt"),
        "{log}"
    );

    // The cluster is unaffected.
    assert!(c.members[0].healthy());
    c.members.push(n2);
}
