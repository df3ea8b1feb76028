//! The user's own scrape targets (`phalanx alerting targets set`): the
//! leader scrapes a service's Prometheus endpoint into the history, labelled
//! `job` and `instance`, with `up`; when the service stops, its `up` goes to
//! 0 without it counting as a member (no `PhalanxMemberDown`); a bad targets
//! document is refused with its line and field, and the one in force stays.

mod support;

use std::time::Duration;

use support::alerts::{alerting_cluster, enc, get_json, phalanx};
use support::servers::Proc;
use support::{free_port, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// The value of the single series `query` returns on the member's API.
fn value(api: u16, query: &str) -> Option<f64> {
    let v = get_json(api, &format!("/api/v1/query?query={}", enc(query)))?;
    let r = v["data"]["result"].as_array()?;
    (r.len() == 1).then(|| r[0]["value"][1].as_str()?.parse().ok())?
}

#[test]
fn the_leader_scrapes_the_users_targets_into_the_history() {
    let (c, api) = alerting_cluster(1, &[]);
    let dir = c.dir.path().to_path_buf();
    let eps = c.endpoints();

    // A service exposing Prometheus text: a static file behind Python's
    // http.server.
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(
        www.join("metrics"),
        "# TYPE app_requests_total counter\napp_requests_total{path=\"/\"} 42\n",
    )
    .unwrap();
    let port = free_port();
    let mut svc = Proc::start(
        "metrics service",
        "/usr/bin/python3",
        &[
            "-m".into(),
            "http.server".into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--directory".into(),
            www.to_str().unwrap().into(),
            port.to_string(),
        ],
        dir.join("svc.log"),
    );

    let file = dir.join("targets.yml");
    std::fs::write(
        &file,
        format!("scrape_configs:\n- job_name: app\n  static_configs:\n  - targets: ['127.0.0.1:{port}']\n"),
    )
    .unwrap();
    let out = phalanx(&[
        "alerting",
        "targets",
        "set",
        file.to_str().unwrap(),
        "--endpoints",
        &eps,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let instance = format!("127.0.0.1:{port}");
    wait_for("the service's series in the history", WAIT, || {
        svc.assert_running();
        let q = format!("app_requests_total{{job=\"app\", instance=\"{instance}\", path=\"/\"}}");
        (value(api[0], &q)? == 42.0).then_some(())
    });
    assert_eq!(value(api[0], "up{job=\"app\"}"), Some(1.0));

    // A bad document is refused, naming the line and field; the targets in
    // force stay.
    std::fs::write(
        &file,
        "scrape_configs:\n- job_name: app\n  static_configs:\n  - targets: ['no-port']\n",
    )
    .unwrap();
    let out = phalanx(&[
        "alerting",
        "targets",
        "set",
        file.to_str().unwrap(),
        "--endpoints",
        &eps,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 4") && err.contains("targets") && err.contains("host:port"),
        "{err}"
    );

    // The service stops: its `up` goes to 0; it is not a member.
    svc.kill();
    wait_for("up{job=\"app\"} == 0", WAIT, || {
        (value(api[0], "up{job=\"app\"}")? == 0.0).then_some(())
    });
    let alerts = get_json(api[0], "/api/v1/alerts").unwrap();
    let member_down: Vec<_> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == "PhalanxMemberDown")
        .collect();
    assert!(
        member_down.is_empty(),
        "a scrape target counted as a member: {member_down:?}"
    );
}
