//! Done-when test of issue 13: a 3-member cluster with the default rules and
//! a webhook receiver. kill -9 a member → `PhalanxMemberDown` reaches the
//! webhook once; kill the leader while it fires → no second notification
//! (the new leader continues the alert state and notification log from the
//! store); restart the members → the resolved notification arrives once.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{free_port, http_get, wait_for, Cluster, BIN};

/// A webhook receiver: records every POST body (JSON) with its arrival time.
pub struct Webhook {
    pub port: u16,
    pub posts: Arc<Mutex<Vec<(Instant, serde_json::Value)>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let p = posts.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut s) = stream else { continue };
                let p = p.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Ok(n) = s.read(&mut chunk) else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..h]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < h + 4 + len {
                            continue;
                        }
                        let body = &buf[h + 4..h + 4 + len];
                        if let Ok(v) = serde_json::from_slice(body) {
                            p.lock().unwrap().push((Instant::now(), v));
                        }
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                        return;
                    }
                });
            }
        });
        Webhook { port, posts }
    }

    /// Notifications for `alertname` about `member` with `status`.
    pub fn matching(&self, alertname: &str, member: &str, status: &str) -> Vec<Instant> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| {
                v["groupLabels"]["alertname"] == alertname
                    && v["groupLabels"]["member"] == member
                    && v["status"] == status
            })
            .map(|(t, _)| *t)
            .collect()
    }
}

pub fn phalanx(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running phalanx")
}

/// Members with alerting on short intervals; returns the cluster and each member's API port.
pub fn alerting_cluster(n: usize, extra: &[&str]) -> (Cluster, Vec<u16>) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let p = ports.clone();
    let c = Cluster::start_with(n, move |i| {
        let mut v: Vec<String> = vec![
            "--alerting-listen".into(),
            format!("127.0.0.1:{}", p[i]),
            "--alerting-scrape-interval-ms".into(),
            "500".into(),
            "--alerting-evaluation-interval-ms".into(),
            "500".into(),
        ];
        v.extend(extra.iter().cloned());
        v
    });
    (c, ports)
}

/// `up` as the leader's history sees it: member → value.
fn up_values(api_port: u16) -> Option<Vec<(String, String)>> {
    let (code, body) = http_get(api_port, "/api/v1/query?query=up")?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(
        v["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| {
                (
                    r["metric"]["member"].as_str().unwrap_or("").to_string(),
                    r["value"][1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

#[test]
fn member_down_fires_once_survives_leader_change_and_resolves_once() {
    let hook = Webhook::start();
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
            hook.matching("PhalanxMemberDown", &vname, "firing")
                .first()
                .copied()
        },
    );
    let latency = fired - killed;
    eprintln!("BENCH kill -9 → webhook POST: {} ms", latency.as_millis());
    let post = hook
        .posts
        .lock()
        .unwrap()
        .iter()
        .find(|(t, _)| *t == fired)
        .unwrap()
        .1
        .clone();
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
        hook.matching("PhalanxMemberDown", &vname, "firing").len(),
        1,
        "exactly once: {:?}",
        hook.posts.lock().unwrap()
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
        hook.matching("PhalanxMemberDown", &vname, "firing").len(),
        1,
        "no second notification after the leader change: {:?}",
        hook.posts.lock().unwrap()
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
        hook.matching("PhalanxMemberDown", &vname, "resolved")
            .first()
            .copied()
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        hook.matching("PhalanxMemberDown", &vname, "resolved").len(),
        1,
        "resolved exactly once: {:?}",
        hook.posts.lock().unwrap()
    );
    assert_eq!(
        hook.matching("PhalanxMemberDown", &vname, "firing").len(),
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
