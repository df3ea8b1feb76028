//! A member removed with `etcdctl member remove` stops itself: it logs that
//! it was permanently removed (name and id) and exits non-zero, within one
//! election timeout of the removal, whether it saw the removal entry or was
//! stopped while removed and restarted later. The other members keep serving.

mod support;

use std::time::{Duration, Instant};

use support::{http_get, wait_for, Cluster};

/// Election timeout the members run with (ms); openraft waits up to 1.5×.
const ELECTION_TIMEOUT_MS: u64 = 1_000;
const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Allowance on top of the longest election timeout for the peer round
/// trip and process teardown (the member drains clients for at most 1 s).
const EXIT_MARGIN_MS: u64 = 2_500;
/// Exit code of a member that stopped for good (`node_cmd::HALTED_EXIT_CODE`).
const HALTED_EXIT_CODE: i32 = 2;

fn flags() -> Vec<String> {
    vec![
        "--heartbeat-interval".into(),
        HEARTBEAT_INTERVAL_MS.to_string(),
        "--election-timeout".into(),
        ELECTION_TIMEOUT_MS.to_string(),
    ]
}

fn exit_bound() -> Duration {
    Duration::from_millis(ELECTION_TIMEOUT_MS * 3 / 2 + EXIT_MARGIN_MS)
}

/// The member's id in hex, from its admin listener.
fn member_id_hex(c: &Cluster, i: usize) -> String {
    let (status, body) = http_get(c.members[i].metrics_port, "/member").expect("/member answers");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["id_hex"].as_str().unwrap().to_string()
}

fn endpoints_except(c: &Cluster, skip: usize) -> String {
    c.members
        .iter()
        .enumerate()
        .filter(|(i, m)| *i != skip && m.child.is_some())
        .map(|(_, m)| m.client_url())
        .collect::<Vec<_>>()
        .join(",")
}

/// Wait until member `i` exits; its exit status and how long it took.
fn wait_exit(c: &mut Cluster, i: usize, bound: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    let what = format!("member {} to exit", c.members[i].name);
    let child = c.members[i].child.as_mut().expect("running");
    let status = wait_for(&what, bound + Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    c.members[i].child = None;
    (status, start.elapsed())
}

fn assert_others_serve(c: &Cluster, removed: usize, key: &str) {
    let eps = endpoints_except(c, removed);
    let out = c.etcdctl_at(&eps, &["put", key, "v"]);
    assert!(
        out.status.success(),
        "put after removal failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    for (i, m) in c.members.iter().enumerate() {
        if i == removed {
            continue;
        }
        let out = c.etcdctl_at(&m.client_url(), &["get", key, "--print-value-only"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "v",
            "member {} after removal: {}",
            m.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn assert_says_removed(c: &Cluster, i: usize, id_hex: &str) {
    let log = c.members[i].log_text();
    let line = log
        .lines()
        .find(|l| l.contains("permanently removed from the cluster"))
        .unwrap_or_else(|| {
            panic!(
                "no removal line in the log of {}:\n{log}",
                c.members[i].name
            )
        });
    assert!(
        line.contains(&format!("{:?}", c.members[i].name)) && line.contains(id_hex),
        "the removal line names neither the member nor its id: {line}"
    );
    assert!(line.contains("ERROR"), "not logged as an error: {line}");
}

#[test]
fn removed_member_that_saw_its_removal_exits() {
    let mut c = Cluster::start(3, &flags().iter().map(String::as_str).collect::<Vec<_>>());
    let leader = c.wait_leader();
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let id = member_id_hex(&c, victim);
    let eps = endpoints_except(&c, victim);
    let out = c.etcdctl_at(&eps, &["member", "remove", &id]);
    assert!(
        out.status.success(),
        "member remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, took) = wait_exit(&mut c, victim, exit_bound());
    println!("removed member exited {took:?} after `member remove` returned");
    // The leader tells it at once: within one election timeout.
    let bound = Duration::from_millis(ELECTION_TIMEOUT_MS);
    assert!(
        took <= bound,
        "removed member took {took:?} to exit (bound: one election timeout, {bound:?})\n{}",
        c.logs()
    );
    assert_eq!(status.code(), Some(HALTED_EXIT_CODE), "{}", c.logs());
    assert_says_removed(&c, victim, &id);
    assert_others_serve(&c, victim, "after-removal");

    // Started again, it refuses at once (it knows it was removed).
    c.members[victim].spawn(&c.token.clone());
    let (status, _) = wait_exit(&mut c, victim, Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", c.members[victim].log_text());
    assert!(
        c.members[victim]
            .log_text()
            .contains("was removed from the cluster earlier"),
        "{}",
        c.members[victim].log_text()
    );
}

#[test]
fn removed_member_restarted_later_exits() {
    let mut c = Cluster::start(3, &flags().iter().map(String::as_str).collect::<Vec<_>>());
    let leader = c.wait_leader();
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let id = member_id_hex(&c, victim);
    // Stopped (as if partitioned away), it cannot see its removal.
    c.members[victim].kill9();
    let eps = endpoints_except(&c, victim);
    let out = c.etcdctl_at(&eps, &["member", "remove", &id]);
    assert!(
        out.status.success(),
        "member remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.etcdctl_at(&eps, &["put", "while-away", "v"]);
    // The others restart too: they remember the removed id from disk
    // (member/members-ever), not only while they run.
    for i in (0..3).filter(|i| *i != victim) {
        c.members[i].kill9();
        c.members[i].spawn(&c.token.clone());
    }
    wait_for(
        "the two remaining members to serve again",
        Duration::from_secs(30),
        || {
            let out = c.etcdctl_at(
                &endpoints_except(&c, victim),
                &["put", "after-restart-of-peers", "v"],
            );
            out.status.success().then_some(())
        },
    );

    // Restarted later, it learns from its peers that it was removed: its
    // first campaign (one election timeout after start) is refused.
    c.members[victim].spawn(&c.token.clone());
    let bound = exit_bound() + Duration::from_secs(3); // + process start-up
    let (status, took) = wait_exit(&mut c, victim, bound);
    assert!(
        took <= bound,
        "restarted removed member took {took:?} to exit (bound {bound:?})\n{}",
        c.logs()
    );
    assert_eq!(status.code(), Some(HALTED_EXIT_CODE), "{}", c.logs());
    assert_says_removed(&c, victim, &id);
    assert_others_serve(&c, victim, "after-restart");
}
