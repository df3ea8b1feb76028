//! Authenticated peer port (issue 11, done-when d): peer messages carry the
//! cluster id and the sender's member id; a member refuses (and counts in
//! `phalanx_peer_rejected_total{reason}`) messages from another cluster,
//! from a non-member and from a removed member; leadership-transfer control
//! messages are obeyed only from the current leader, at a bounded rate.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::network::{PeerCallError, PeerClient, PeerRequest, PeerTimeouts, REMOVED_MARKER};
use support::*;

fn rejected(m: &Member, reason: &str) -> f64 {
    let series = format!("phalanx_peer_rejected_total{{reason=\"{reason}\"}}");
    labelled_metric(&m.metrics(), &series).unwrap_or(0.0)
}

/// Send `req` to `to` as member `from` of cluster `cluster`.
fn send(
    rt: &tokio::runtime::Runtime,
    to: &Member,
    from: u64,
    cluster: u64,
    req: PeerRequest,
) -> Result<(), String> {
    let _runtime = rt.enter();
    let timeouts = PeerTimeouts {
        connect_timeout_ms: 1_000,
        request_timeout_ms: 2_000,
        raft_rpc_min_timeout_ms: 2_000,
    };
    let client = PeerClient::new(
        from,
        0,
        &to.peer_url(),
        timeouts,
        Arc::new(consensus::Faults::new(false)),
        None,
    )
    .unwrap()
    .with_cluster(cluster);
    rt.block_on(client.call::<()>(&req, Some(Duration::from_secs(2))))
        .map_err(|e| match e {
            PeerCallError::Unreachable { detail, .. } | PeerCallError::Removed { detail, .. } => {
                detail
            }
            other => other.to_string(),
        })
}

#[test]
fn peer_messages_from_strangers_non_leaders_and_removed_members_are_refused_and_counted() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    let id = |i: usize| c.members[i].member_doc()["id"].as_u64().unwrap();
    let cluster = c.members[0].member_doc()["cluster_id"].as_u64().unwrap();
    let (leader_id, a_id) = (id(leader), id(a));
    let term = |i: usize| c.members[i].metric("phalanx_raft_term").unwrap();
    let term_before = term(b);

    // Another cluster's message (even naming a real member).
    let e = send(
        &rt,
        &c.members[b],
        a_id,
        cluster ^ 0xff,
        PeerRequest::ElectAfter { ms: 0 },
    )
    .unwrap_err();
    assert!(e.contains("foreign_cluster"), "{e}");
    // A non-member.
    let e = send(
        &rt,
        &c.members[b],
        0x5eed,
        cluster,
        PeerRequest::ElectAfter { ms: 0 },
    )
    .unwrap_err();
    assert!(e.contains("not_member"), "{e}");
    // A control message replayed from a member that is not the leader.
    for _ in 0..5 {
        let e = send(
            &rt,
            &c.members[b],
            a_id,
            cluster,
            PeerRequest::ElectAfter { ms: 0 },
        )
        .unwrap_err();
        assert!(e.contains("control_not_from_leader"), "{e}");
    }
    // A forged removal notice (a removed member stops for good): refused
    // from a member that is not the leader, and when it names another member.
    let b_id = id(b);
    let e = send(
        &rt,
        &c.members[b],
        a_id,
        cluster,
        PeerRequest::Removed {
            member: b_id,
            log_index: 1,
        },
    )
    .unwrap_err();
    assert!(e.contains("control_not_from_leader"), "{e}");
    let e = send(
        &rt,
        &c.members[b],
        leader_id,
        cluster,
        PeerRequest::Removed {
            member: a_id,
            log_index: 1,
        },
    )
    .unwrap_err();
    assert!(e.contains("control_not_from_leader"), "{e}");
    assert!(
        c.members[b].healthy(),
        "a refused removal notice stopped the member"
    );
    // None of them started an election: the term and the leader stay, over
    // three maximum election timeouts (3 × 225 ms) and more.
    let watch_until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < watch_until {
        assert_eq!(term(b), term_before, "a refused message changed the term");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.leader(), Some(leader));

    // Even the leader's control messages are rate-limited (default 10/s).
    let mut limited = 0;
    for _ in 0..25 {
        if let Err(e) = send(
            &rt,
            &c.members[b],
            leader_id,
            cluster,
            PeerRequest::PauseElections { ms: 1 },
        ) {
            assert!(e.contains("control_rate_limited"), "{e}");
            limited += 1;
        }
    }
    assert!(
        limited >= 5,
        "only {limited} of 25 control messages were refused"
    );

    for (reason, at_least) in [
        ("foreign_cluster", 1.0),
        ("not_member", 1.0),
        ("control_not_from_leader", 5.0),
        ("control_rate_limited", 5.0),
    ] {
        let n = rejected(&c.members[b], reason);
        assert!(
            n >= at_least,
            "phalanx_peer_rejected_total{{reason={reason:?}}} = {n}"
        );
    }

    // A removed member is refused (and told it was removed).
    c.ctl(&["member", "remove", &format!("{a_id:x}")]);
    let e = wait_for(
        "the removal applied on the leader",
        Duration::from_secs(20),
        || {
            send(
                &rt,
                &c.members[leader],
                a_id,
                cluster,
                PeerRequest::PauseElections { ms: 1 },
            )
            .err()
            .filter(|e| e.contains(REMOVED_MARKER))
        },
    );
    assert!(e.contains("was removed"), "{e}");
    assert!(rejected(&c.members[leader], "removed") >= 1.0);
}
