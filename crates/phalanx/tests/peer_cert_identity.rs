//! `--peer-cert-identity`: a peer message is served only if the member id it
//! claims belongs to the member its verified certificate names. Three real
//! members with one certificate each from one CA; a fourth process holding
//! a valid certificate of that CA — for another member, or for no member —
//! claims the leader's id and sends a leadership-transfer message that
//! would start an election: it is refused and counted under
//! `phalanx_peer_rejected_total{reason="cert_identity"}`, and the cluster
//! keeps its term. The same process with the leader's own certificate is
//! served. A member added later (nameless until it starts) joins under its
//! own certificate; one whose certificate does not name it refuses to start.

mod support;

use std::sync::Arc;
use std::time::Duration;

use consensus::network::{
    LeaderError, LeaderRequest, LeaderResponse, PeerCallError, PeerClient, PeerRequest,
    PeerTimeouts,
};
use support::certs::*;
use support::{labelled_metric, wait_for, Cluster, Member};

fn rejected(m: &Member, reason: &str) -> f64 {
    let series = format!("phalanx_peer_rejected_total{{reason=\"{reason}\"}}");
    labelled_metric(&m.metrics(), &series).unwrap_or(0.0)
}

/// A peer client presenting `cert` (of `ca`), claiming to be member `from`.
fn client(ca: &TestCa, cert: &CertFiles, from: u64, cluster: u64, to: &Member) -> PeerClient {
    let tls = tls::ClientTls::new(
        &tls::ClientSettings {
            trusted_ca_file: Some(ca.ca_file.clone()),
            cert_file: Some(cert.cert.clone()),
            key_file: Some(cert.key.clone()),
            reload_check_interval_ms: tls::DEFAULT_RELOAD_CHECK_INTERVAL_MS,
            ..Default::default()
        },
        tls::PEER_FLAGS,
    )
    .unwrap();
    let timeouts = PeerTimeouts {
        connect_timeout_ms: 2_000,
        request_timeout_ms: 3_000,
        raft_rpc_min_timeout_ms: 3_000,
    };
    PeerClient::new(
        from,
        0,
        &to.peer_url(),
        timeouts,
        Arc::new(consensus::Faults::new(false)),
        Some(&tls),
    )
    .unwrap()
    .with_cluster(cluster)
}

fn refusal(r: Result<(), PeerCallError>) -> String {
    match r {
        Ok(()) => panic!("the message was served"),
        Err(PeerCallError::Unreachable { detail, .. }) => detail,
        Err(other) => other.to_string(),
    }
}

#[test]
fn a_peer_certificate_speaks_only_for_the_member_it_names() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Peer clients connect lazily, on this runtime.
    let _runtime = rt.enter();
    let mut c = Cluster::plan(3, |_| Vec::new());
    c.set_schemes("https", "https");
    let ca = TestCa::new(c.dir.path(), "ca");
    for (i, m) in c.members.iter_mut().enumerate() {
        let own = ca.issue(&m.name, i as u64 + 1, 30);
        m.extra_args = member_tls_flags(&ca.ca_file, &own);
        m.extra_args.push("--peer-cert-identity".into());
        // Relaxed timing: the term must not change on its own on a loaded
        // machine while the test checks that a forged message left it.
        for a in ["--heartbeat-interval", "100", "--election-timeout", "1000"] {
            m.extra_args.push(a.into());
        }
    }
    c.start_all();
    let root = tls_args(&ca.ca_file, Some(&ca.issue("root", 100, 30)));
    ctl_ok(&c.endpoints(), &root, &["put", "k", "v1"]);

    let leader = c.wait_leader();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    let doc = c.members[leader].member_doc();
    let (leader_id, cluster) = (
        doc["id"].as_u64().unwrap(),
        doc["cluster_id"].as_u64().unwrap(),
    );
    let term = |i: usize| c.members[i].metric("phalanx_raft_term").unwrap();
    let term_before = term(b);
    let elect = PeerRequest::ElectAfter { ms: 0 };

    // A valid certificate for follower a, claiming the leader's id, asks b
    // to start an election: refused before anything runs.
    let a_cert = ca.issue(&c.members[a].name, 200, 30);
    let e = refusal(rt.block_on(
        client(&ca, &a_cert, leader_id, cluster, &c.members[b]).call::<()>(&elect, None),
    ));
    assert!(
        e.contains("cert_identity") && e.contains(&format!("{:?}", c.members[leader].name)),
        "{e}"
    );
    // A valid certificate naming no member at all: refused too.
    let stranger = ca.issue("intruder", 201, 30);
    let e = refusal(rt.block_on(
        client(&ca, &stranger, leader_id, cluster, &c.members[b]).call::<()>(&elect, None),
    ));
    assert!(e.contains("cert_identity") && e.contains("intruder"), "{e}");
    assert!(rejected(&c.members[b], "cert_identity") >= 2.0);

    // The leader's own certificate is served (a leader-bound request to a
    // follower: answered "not the leader", i.e. admitted and handled).
    let l_cert = ca.issue(&c.members[leader].name, 202, 30);
    let answer: Result<LeaderResponse, LeaderError> = rt
        .block_on(
            client(&ca, &l_cert, leader_id, cluster, &c.members[b])
                .call(&PeerRequest::Leader(LeaderRequest::ReadIndex), None),
        )
        .expect("a message under the sender's own certificate is served");
    assert!(
        matches!(answer, Err(LeaderError::NotLeader { .. })),
        "{answer:?}"
    );

    // The cluster is unharmed: same leader and term, writes go through.
    ctl_ok(&c.endpoints(), &root, &["put", "k", "v2"]);
    assert_eq!(c.wait_leader(), leader);
    assert_eq!(term(b), term_before, "the forged message changed the term");

    // A member added later has no name until it starts: it joins under its
    // own certificate, which then binds it.
    let ic = c.initial_cluster();
    let n4 = c.new_member("n4");
    let n4_cert = ca.issue("n4", 4, 30);
    c.members[n4].extra_args = member_tls_flags(&ca.ca_file, &n4_cert);
    c.members[n4].extra_args.push("--peer-cert-identity".into());
    let n4_peer = c.members[n4].peer_url();
    let live = c.members[..3]
        .iter()
        .map(|m| m.client_url())
        .collect::<Vec<_>>()
        .join(",");
    ctl_ok(
        &live,
        &root,
        &["member", "add", "n4", &format!("--peer-urls={n4_peer}")],
    );
    c.members[n4].initial_cluster = format!("{ic},n4={n4_peer}");
    let token = c.token.clone();
    c.members[n4].spawn(&token);
    c.wait_healthy(&[n4]);
    wait_for("n4 to publish its name", Duration::from_secs(30), || {
        let list = ctl_ok(&live, &root, &["member", "list"]);
        list.lines()
            .any(|l| l.contains("started, n4,"))
            .then_some(())
    });
    let got = ctl_ok(&c.members[n4].client_url(), &root, &["get", "k"]);
    assert!(got.contains("v2"), "{got}");

    // A member whose certificate does not name it refuses to start.
    let n5 = c.new_member("n5");
    let mut n5m = c.members.remove(n5);
    n5m.extra_args = member_tls_flags(&ca.ca_file, &ca.issue("n1", 5, 30));
    n5m.extra_args.push("--peer-cert-identity".into());
    n5m.initial_cluster = format!("{},n5={}", c.initial_cluster(), n5m.peer_url());
    n5m.spawn(&token);
    let mut child = n5m.child.take().unwrap();
    let st = wait_for("n5 to refuse to start", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    assert_eq!(st.code(), Some(1));
    let log = n5m.log_text();
    assert!(
        log.contains("--peer-cert-file") && log.contains("neither is this member's name \"n5\""),
        "{log}"
    );
}
