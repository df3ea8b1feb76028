//! `PhalanxClockSkew` (a default rule): a member run under libfaketime with
//! its clock 5 s ahead is named by the alert; the others are not. The
//! offset is measured by the leader at each scrape of the member's
//! `phalanx_wall_clock_seconds` (minus half the round trip).

mod support;

use std::time::Duration;

use support::alerts::get_json;
use support::{free_port, wait_for, Cluster};

const FAKETIME_LIBS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];
/// The skewed member's clock offset (libfaketime's `FAKETIME`).
const SKEW: &str = "+5s";

#[test]
fn a_member_five_seconds_ahead_fires_clock_skew_naming_it() {
    let lib = FAKETIME_LIBS
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| panic!("libfaketime is missing (looked in {FAKETIME_LIBS:?}): run `bash .ci/install` (Debian package libfaketime)"));
    let api: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let a2 = api.clone();
    let mut c = Cluster::start_with(3, move |i| {
        vec![
            format!("--alerting-listen=127.0.0.1:{}", a2[i]),
            "--alerting-scrape-interval-ms=500".into(),
            "--alerting-evaluation-interval-ms=500".into(),
        ]
    });
    let leader = c.wait_leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let vname = c.members[victim].name.clone();

    // Restart a follower with its clock 5 s ahead.
    c.members[victim].kill9();
    c.members[victim].env = vec![
        ("LD_PRELOAD".into(), lib.to_string()),
        ("FAKETIME".into(), SKEW.into()),
    ];
    let token = c.token.clone();
    c.members[victim].spawn(&token);
    c.wait_healthy(&[victim]);

    let alert = wait_for(
        "PhalanxClockSkew firing for the skewed member",
        Duration::from_secs(60),
        || {
            let v = get_json(api[leader], "/api/v1/alerts")?;
            v["data"]["alerts"]
                .as_array()?
                .iter()
                .find(|a| a["labels"]["alertname"] == "PhalanxClockSkew" && a["state"] == "firing")
                .cloned()
        },
    );
    assert_eq!(alert["labels"]["member"], vname.as_str(), "{alert}");
    let offset: f64 = alert["value"].as_str().unwrap().parse().unwrap();
    assert!((4.5..5.5).contains(&offset), "offset {offset}: {alert}");
    let v = get_json(api[leader], "/api/v1/alerts").unwrap();
    let skewed: Vec<&serde_json::Value> = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["labels"]["alertname"] == "PhalanxClockSkew")
        .collect();
    assert_eq!(skewed.len(), 1, "only the skewed member: {v}");
    // The measured offsets of the others are small.
    let q = get_json(
        api[leader],
        "/api/v1/query?query=phalanx_clock_offset_seconds",
    )
    .unwrap();
    for r in q["data"]["result"].as_array().unwrap() {
        let x: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
        if r["metric"]["member"] != vname.as_str() {
            assert!(x.abs() < 0.5, "{r}");
        }
    }
    assert_eq!(
        c.leader(),
        Some(leader),
        "the leader changed during the test"
    );
}
