//! Done-when test of issue 13: a 3-member cluster with the default rules and
//! a webhook receiver. kill -9 a member → `PhalanxMemberDown` reaches the
//! webhook once; kill the leader while it fires → no second notification
//! (the new leader continues the alert state and notification log from the
//! store); restart the members → the resolved notification arrives once.

mod support;

use std::time::{Duration, Instant};

use support::alerts::{alerting_cluster, phalanx, up_values};
use support::servers::{Recorded, Recorder};
use support::{http_get, wait_for};

/// Notifications the webhook received for `alertname` about `member` with
/// `status`, in arrival order.
fn matching(hook: &Recorder, alertname: &str, member: &str, status: &str) -> Vec<Recorded> {
    hook.all()
        .into_iter()
        .filter(|r| {
            let v = &r.body;
            v["groupLabels"]["alertname"] == alertname
                && v["groupLabels"]["member"] == member
                && v["status"] == status
        })
        .collect()
}

#[test]
fn member_down_fires_once_survives_leader_change_and_resolves_once() {
    let hook = Recorder::start(200);
    let (mut c, api) = alerting_cluster(3, &[]);
    let dir = c.dir.path().to_path_buf();
    let am = dir.join("alertmanager.yml");
    std::fs::write(
        &am,
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname, member]\n  group_wait: 1s\n  group_interval: 2s\n  repeat_interval: 1h\nreceivers:\n- name: hook\n  webhook_configs:\n  - url: http://127.0.0.1:{}/alerts\n    send_resolved: true\n",
            hook.port
        ),
    )
    .unwrap();
    let eps = c.endpoints();
    let out = phalanx(&[
        "alerting",
        "config",
        "set",
        am.to_str().unwrap(),
        "--endpoints",
        &eps,
    ]);
    assert!(
        out.status.success(),
        "config set: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The leader sees every member up.
    let leader = c.wait_leader();
    wait_for(
        "the leader's history to hold up == 1 for 3 members",
        Duration::from_secs(30),
        || {
            let v = up_values(api[leader])?;
            (v.len() == 3 && v.iter().all(|(_, x)| x == "1")).then_some(())
        },
    );

    // kill -9 a follower.
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let vname = c.members[victim].name.clone();
    c.members[victim].kill9();
    let killed = Instant::now();
    let fired = wait_for(
        "PhalanxMemberDown at the webhook",
        Duration::from_secs(15),
        || {
            matching(&hook, "PhalanxMemberDown", &vname, "firing")
                .first()
                .map(|r| r.at)
        },
    );
    let latency = fired - killed;
    eprintln!("BENCH kill -9 → webhook POST: {} ms", latency.as_millis());
    let post = matching(&hook, "PhalanxMemberDown", &vname, "firing")
        .into_iter()
        .find(|r| r.at == fired)
        .unwrap()
        .body;
    assert_eq!(post["version"], "4");
    assert_eq!(post["receiver"], "hook");
    assert_eq!(
        post["alerts"][0]["labels"]["alertname"],
        "PhalanxMemberDown"
    );
    assert_eq!(post["alerts"][0]["labels"]["severity"], "critical");
    assert!(
        post["alerts"][0]["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains(&vname),
        "{post}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        matching(&hook, "PhalanxMemberDown", &vname, "firing").len(),
        1,
        "exactly once: {:?}",
        hook.all()
    );

    // Kill the leader while it fires, restart it at once (two of three members make a quorum).
    c.members[leader].kill9();
    let token = c.token.clone();
    c.members[leader].spawn(&token);
    let new_leader = wait_for("a new leader", Duration::from_secs(30), || c.leader());
    // The new leader has taken over evaluation: its history sees the victim down.
    wait_for(
        "the new leader to evaluate",
        Duration::from_secs(20),
        || {
            let v = up_values(api[new_leader])?;
            v.iter().any(|(m, x)| *m == vname && x == "0").then_some(())
        },
    );
    // Several group intervals pass: no second notification before repeat_interval.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        matching(&hook, "PhalanxMemberDown", &vname, "firing").len(),
        1,
        "no second notification after the leader change: {:?}",
        hook.all()
    );

    // The alert state continued: still firing, same activeAt.
    let (_, alerts) = http_get(api[new_leader], "/api/v1/alerts").unwrap();
    let alerts: serde_json::Value = serde_json::from_str(&alerts).unwrap();
    assert!(
        alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["member"] == vname.as_str() && a["state"] == "firing"),
        "{alerts}"
    );

    // Restart the victim: resolved, once.
    c.members[victim].spawn(&token);
    wait_for("the resolved notification", Duration::from_secs(30), || {
        matching(&hook, "PhalanxMemberDown", &vname, "resolved")
            .first()
            .map(|r| r.at)
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        matching(&hook, "PhalanxMemberDown", &vname, "resolved").len(),
        1,
        "resolved exactly once: {:?}",
        hook.all()
    );
    assert_eq!(
        matching(&hook, "PhalanxMemberDown", &vname, "firing").len(),
        1
    );

    // The timeline recorded it all.
    let out = phalanx(&["events", "--json", "--endpoints", &c.endpoints()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "leader_changed",
        "member_down",
        "member_up",
        "alert_firing",
        "alert_resolved",
        "config_changed",
    ] {
        assert!(
            text.contains(&format!("\"kind\":\"{kind}\"")),
            "no {kind} event in:\n{text}"
        );
    }
}
