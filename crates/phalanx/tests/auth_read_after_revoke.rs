//! A linearizable read is judged by the permissions in force when it is
//! served, not by a member's stale copy of them (etcd checks a read's
//! permission after its read index is applied). A follower cut off from the
//! leader misses a permission revoke that the leader and the other follower
//! commit; as soon as the partition heals, a user's linearizable read on
//! that follower — with a token obtained before, so nothing else makes the
//! follower catch up first — must be refused, although the follower has not
//! yet applied the revoke when the read arrives. Checking before the read
//! barrier (the old order) let the read through.

mod support;

use etcd_client::proto::{PbAuthenticateRequest, PbAuthenticateResponse, PbRangeResponse};
use support::grpc::*;
use support::*;
use tonic::Code;

/// Rounds of grant → partition → revoke → heal → read. One suffices on a
/// correct member; with the old order a read passed in nearly every round
/// (the follower's catch-up after the heal waits for openraft's 500 ms
/// replication back-off), so three make a regression all but certain to show.
const ROUNDS: usize = 3;

fn ctl_at(c: &Cluster, endpoint: &str, args: &[&str]) -> String {
    let o = c.etcdctl_at(endpoint, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "etcdctl {args:?}: {text}");
    text
}

#[test]
fn a_read_on_a_lagging_follower_sees_a_revoke_committed_before_it() {
    // A long election timeout: the follower's short isolation (a few hundred
    // ms) must not make it campaign, so only the revoke's replication lags.
    let c = Cluster::start(
        3,
        &[
            "--bcrypt-cost",
            "4",
            "--enable-fault-injection",
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "2000",
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let leader = c.wait_leader();
    let f = (0..3).find(|i| *i != leader).unwrap();
    let leader_ep = c.members[leader].client_url();
    let f_url = c.members[f].client_url();
    let leader_id = c.members[leader].member_doc()["id"].as_u64().unwrap();
    let f_admin = format!("http://127.0.0.1:{}", c.members[f].metrics_port);

    c.ctl(&["user", "add", "root:rootpw"]);
    c.ctl(&["put", "/app/k", "secret"]);
    c.ctl(&["role", "add", "reader"]);
    c.ctl(&["user", "add", "alice:alicepw"]);
    c.ctl(&["user", "grant-role", "alice", "reader"]);
    c.ctl(&["auth", "enable"]);
    const ROOT: &str = "--user=root:rootpw";

    // Alice's token, installed on the follower before any partition.
    let token = rt.block_on(async {
        let r: PbAuthenticateResponse = call(
            &f_url,
            AUTHENTICATE,
            PbAuthenticateRequest {
                name: "alice".into(),
                password: "alicepw".into(),
            },
            None,
        )
        .await
        .expect("alice logs in on the follower");
        r.token
    });
    let read = || -> Result<PbRangeResponse, tonic::Status> {
        rt.block_on(call(&f_url, RANGE, range("/app/k"), Some(&token)))
    };

    for round in 0..ROUNDS {
        ctl_at(
            &c,
            &leader_ep,
            &[
                ROOT,
                "role",
                "grant-permission",
                "--prefix=true",
                "reader",
                "read",
                "/app/",
            ],
        );
        // Linearizable: the grant is in force on the follower at once.
        let r = read().unwrap_or_else(|e| panic!("round {round}: alice may read: {e}"));
        assert_eq!(r.kvs[0].value, b"secret");

        rt.block_on(drill::admin::set_fault(&f_admin, &[leader_id], 0, 0))
            .unwrap();
        ctl_at(
            &c,
            &leader_ep,
            &[
                ROOT,
                "role",
                "revoke-permission",
                "--prefix=true",
                "reader",
                "/app/",
            ],
        );
        rt.block_on(drill::admin::clear_fault(&f_admin)).unwrap();

        // The revoke committed before this read was sent: refused.
        let e = read().expect_err("a read after the revoke committed is refused");
        assert_eq!(
            (e.code(), e.message()),
            (Code::PermissionDenied, "etcdserver: permission denied"),
            "round {round}"
        );
    }

    // The cluster is unharmed: every member serves, and one leader stayed.
    c.wait_healthy(&[0, 1, 2]);
    assert_eq!(c.wait_leader(), leader, "the isolation caused an election");
    let out = ctl_at(&c, &f_url, &[ROOT, "get", "/app/k"]);
    assert!(out.contains("secret"), "{out}");
}
