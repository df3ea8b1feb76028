//! CA bundles re-read when their file changes, like certificates: a client
//! CA rotated on disk (`--trusted-ca-file`) takes effect without a restart,
//! both ways (a newly trusted CA's clients get in, a dropped CA's clients
//! are refused), and an unusable bundle keeps the previous one in force.

mod support;

use std::time::Duration;
use support::certs::*;
use support::{wait_for, Cluster};

const FAIL_FAST: &str = "--command-timeout=4s";

#[test]
fn a_rotated_client_ca_bundle_takes_effect_without_restart() {
    let mut c = Cluster::plan(3, |_| Vec::new());
    c.set_schemes("https", "https");
    let old_ca = TestCa::new(c.dir.path(), "old-ca");
    let new_ca = TestCa::new(c.dir.path(), "new-ca");
    // The client CA bundle each member reads (its own copy, rotated below);
    // the peers keep trusting the old CA, which signs the members' certificates.
    let bundle = |i: usize| c.dir.path().join(format!("client-ca-{i}.pem"));
    let bundles: Vec<_> = (0..3).map(bundle).collect();
    for (i, m) in c.members.iter_mut().enumerate() {
        std::fs::copy(&old_ca.ca_file, &bundles[i]).unwrap();
        let own = old_ca.issue(&m.name.clone(), i as u64 + 1, 30);
        let mut flags = member_tls_flags(&old_ca.ca_file, &own);
        let at = flags.iter().position(|f| f == "--trusted-ca-file").unwrap();
        flags[at + 1] = bundles[i].display().to_string();
        m.extra_args = flags;
    }
    c.start_all();
    let pids: Vec<_> = c.members.iter().map(|m| m.pid()).collect();

    // Clients verify the members with the old CA (their server certificates).
    let old_client = old_ca.issue("old-client", 100, 30);
    let new_client = new_ca.issue("new-client", 101, 30);
    let mut as_old = tls_args(&old_ca.ca_file, Some(&old_client));
    as_old.push(FAIL_FAST.into());
    let mut as_new = tls_args(&old_ca.ca_file, Some(&new_client));
    as_new.push(FAIL_FAST.into());
    let eps = c.endpoints();
    ctl_ok(&eps, &as_old, &["put", "k", "v"]);
    let urls = c.endpoint_list();
    for url in &urls {
        let out = etcdctl(url, &as_new, &["get", "k"]);
        assert!(
            !out.status.success(),
            "{url} accepted an untrusted CA's client"
        );
    }

    // Transition: both CAs in every bundle, replaced in place.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&old_ca.ca_file).unwrap(),
        std::fs::read_to_string(&new_ca.ca_file).unwrap()
    );
    for b in &bundles {
        write_atomic(b, &both);
    }
    for url in &urls {
        wait_for(
            &format!("{url} to accept the new CA's client"),
            Duration::from_secs(15),
            || {
                etcdctl(url, &as_new, &["get", "k"])
                    .status
                    .success()
                    .then_some(())
            },
        );
        ctl_ok(url, &as_old, &["get", "k"]);
    }

    // An unusable bundle (no certificate in it) keeps the previous one. The
    // file is looked at by handshakes: each probe below makes one.
    write_atomic(&bundles[0], "not a PEM bundle\n");
    wait_for(
        "member 1 to log that it keeps the previous CA bundle",
        Duration::from_secs(15),
        || {
            ctl_ok(&urls[0], &as_new, &["get", "k"]);
            c.members[0]
                .log_text()
                .contains("keeping the previous CA bundle")
                .then_some(())
        },
    );
    ctl_ok(&urls[0], &as_new, &["get", "k"]);
    ctl_ok(&urls[0], &as_old, &["get", "k"]);

    // The old CA retired: only the new CA in the bundles.
    let new_only = std::fs::read_to_string(&new_ca.ca_file).unwrap();
    for b in &bundles {
        write_atomic(b, &new_only);
    }
    for url in &urls {
        wait_for(
            &format!("{url} to refuse the retired CA's client"),
            Duration::from_secs(15),
            || (!etcdctl(url, &as_old, &["get", "k"]).status.success()).then_some(()),
        );
        let got = ctl_ok(url, &as_new, &["get", "k", "--print-value-only"]);
        assert_eq!(got.trim(), "v");
    }
    // No member was restarted.
    let now: Vec<_> = c.members.iter().map(|m| m.pid()).collect();
    assert_eq!(pids, now);
    for m in c.members.iter_mut() {
        assert!(m.is_running(), "{} stopped", m.name);
    }
}
