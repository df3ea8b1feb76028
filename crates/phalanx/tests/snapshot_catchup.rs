//! A follower that missed more than the snapshot threshold catches up by
//! snapshot: the leader has compacted the log it would need.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn lagging_follower_catches_up_by_snapshot() {
    let mut c = Cluster::start(3, &["--snapshot-count", "100"]);
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let token = c.token.clone();
    c.members[follower].kill9();
    let applied_at_kill = c.members[leader]
        .metric("phalanx_raft_applied_index")
        .unwrap();

    let live: Vec<String> = c.endpoint_list();
    let mut w = Writer::start("sn", live.clone());
    w.wait_acked(600, Duration::from_secs(60));
    let acked = w.stop();
    // The leader snapshotted and compacted past what the follower has.
    let purged = wait_for("leader to compact its log", Duration::from_secs(30), || {
        let p = c.members[leader].metric("phalanx_raft_purged_index")?;
        (p > applied_at_kill).then_some(p)
    });

    c.members[follower].spawn(&token);
    c.wait_healthy(&[follower]);
    let leader_applied = c.members[leader]
        .metric("phalanx_raft_applied_index")
        .unwrap();
    wait_for("follower to catch up", Duration::from_secs(30), || {
        (c.members[follower].metric("phalanx_raft_applied_index")? >= leader_applied).then_some(())
    });
    let snap = c.members[follower]
        .metric("phalanx_raft_snapshot_index")
        .unwrap();
    assert!(snap > applied_at_kill, "follower snapshot index {snap} should come from the leader's snapshot (> {applied_at_kill})");
    // Serve from the follower alone, serializable (its own data).
    assert_all_present(vec![c.members[follower].client_url()], "sn", &acked);
    assert_hashes_agree(&c);
    println!("snapshot catch-up: follower down at index {applied_at_kill}, leader purged to {purged}, follower installed snapshot at {snap}");
}
