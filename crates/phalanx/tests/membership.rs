//! Runtime membership: a 1-member cluster grows to 3, then a member is
//! replaced (remove + add a fresh one), all while writes continue.

mod support;

use std::time::Duration;

use support::*;

fn add_member(c: &mut Cluster, name: &str) -> usize {
    let idx = c.new_member(name);
    let peer = c.members[idx].peer_url();
    let out = c.ctl(&["member", "add", name, &format!("--peer-urls={peer}")]);
    // etcdctl prints the ETCD_INITIAL_CLUSTER line the new member must use.
    let ic = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("ETCD_INITIAL_CLUSTER=\"")
                .map(|s| s.trim_end_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {out}"));
    c.members[idx].initial_cluster = ic;
    let token = c.token.clone();
    c.members[idx].spawn(&token);
    c.wait_healthy(&[idx]);
    idx
}

fn voters(c: &Cluster) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&c.ctl(&["member", "list", "-w", "json"])).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !m["isLearner"].as_bool().unwrap_or(false))
        .count()
}

#[test]
fn grow_from_one_to_three_then_replace_a_member_under_writes() {
    let mut c = Cluster::start(1, &[]);
    let mut w = Writer::start("mb", c.endpoint_list());
    w.wait_acked(50, Duration::from_secs(30));

    let n2 = add_member(&mut c, "n2");
    *w.endpoints.lock().unwrap() = c.endpoint_list();
    let n = w.acked_count();
    w.wait_acked(n + 50, Duration::from_secs(30));
    let n3 = add_member(&mut c, "n3");
    *w.endpoints.lock().unwrap() = c.endpoint_list();
    let n = w.acked_count();
    w.wait_acked(n + 50, Duration::from_secs(30));
    wait_for("3 voters", Duration::from_secs(30), || {
        (voters(&c) == 3).then_some(())
    });

    // Replace n1 (the original member, possibly the leader) with a fresh n4.
    let list: serde_json::Value =
        serde_json::from_str(&c.ctl(&["member", "list", "-w", "json"])).unwrap();
    let n1_peer = c.members[0].peer_url();
    let n1_id = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["peerURLs"][0] == n1_peer.as_str())
        .unwrap()["ID"]
        .as_u64()
        .unwrap();
    *w.endpoints.lock().unwrap() = vec![c.members[n2].client_url(), c.members[n3].client_url()];
    c.ctl(&["member", "remove", &format!("{n1_id:x}")]);
    c.members[0].kill9();
    let n4 = add_member(&mut c, "n4");
    *w.endpoints.lock().unwrap() = c.endpoint_list();
    let n = w.acked_count();
    w.wait_acked(n + 50, Duration::from_secs(30));
    wait_for("3 voters", Duration::from_secs(30), || {
        (voters(&c) == 3).then_some(())
    });
    let acked = w.stop();
    let eps = vec![
        c.members[n2].client_url(),
        c.members[n3].client_url(),
        c.members[n4].client_url(),
    ];
    assert_all_present(eps, "mb", &acked);
    assert_hashes_agree(&c);
    println!(
        "membership: 1 -> 3 members, then n1 replaced by n4; {} writes acknowledged, none lost",
        acked.len()
    );
}
