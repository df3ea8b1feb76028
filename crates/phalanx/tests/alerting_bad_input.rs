//! Bad input to the alerting: a bad rule file or alertmanager.yml is refused
//! naming the line and field, unsupported PromQL names the unsupported part,
//! and the configuration in force stays (also when a bad document is written
//! to the store behind the CLI's back). Plus silences, the query API's
//! shapes, and the `max_series` bound under a flood of series.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{free_port, http_get, wait_for, Cluster, BIN};

fn phalanx(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running phalanx")
}

fn json(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_get(port, path).expect("API answers");
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

fn one_member(extra: &[&str]) -> (Cluster, u16) {
    let api = free_port();
    let mut args = vec![
        format!("--alerting-listen=127.0.0.1:{api}"),
        "--alerting-scrape-interval-ms=300".into(),
        "--alerting-evaluation-interval-ms=300".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let c = Cluster::start_with(1, move |_| args.clone());
    (c, api)
}

#[test]
fn bad_rules_and_config_are_refused_by_line_and_field_and_the_ones_in_force_stay() {
    let (c, api) = one_member(&[]);
    let eps = c.endpoints();
    let dir = c.dir.path().to_path_buf();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = write("good.yml", "groups:\n- name: mine\n  rules:\n  - alert: AlwaysOn\n    expr: vector(1) > 0\n    labels:\n      severity: info\n");
    let out = phalanx(&["alerting", "rules", "set", &good, "--endpoints", &eps]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unsupported PromQL: the line, the field and the unsupported part.
    let bad = write("bad.yml", "groups:\n- name: mine\n  rules:\n  - alert: A\n    expr: up == 0\n  - alert: B\n    expr: topk(3, up)\n");
    let out = phalanx(&["alerting", "rules", "set", &bad, "--endpoints", &eps]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 7") && err.contains("expr") && err.contains("aggregation `topk`"),
        "{err}"
    );
    // A bad duration, an unknown field.
    let bad = write(
        "bad2.yml",
        "groups:\n- name: mine\n  rules:\n  - alert: A\n    expr: up == 0\n    for: 5 minutes\n",
    );
    let err = String::from_utf8_lossy(
        &phalanx(&["alerting", "rules", "set", &bad, "--endpoints", &eps]).stderr,
    )
    .to_string();
    assert!(err.contains("line 6") && err.contains("for"), "{err}");
    let bad = write(
        "bad3.yml",
        "groups:\n- name: mine\n  rules:\n  - alert: A\n    expresion: up == 0\n",
    );
    let err = String::from_utf8_lossy(
        &phalanx(&["alerting", "rules", "set", &bad, "--endpoints", &eps]).stderr,
    )
    .to_string();
    assert!(err.contains("line 5") && err.contains("expresion"), "{err}");
    // The rule file in force stays.
    let out = phalanx(&["alerting", "rules", "show", "--endpoints", &eps]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("AlwaysOn"));

    // alertmanager.yml: undefined receiver, unsupported receiver type.
    let bad = write(
        "am.yml",
        "route:\n  receiver: pager\nreceivers:\n- name: hook\n",
    );
    let err = String::from_utf8_lossy(
        &phalanx(&["alerting", "config", "set", &bad, "--endpoints", &eps]).stderr,
    )
    .to_string();
    assert!(
        err.contains("line 2") && err.contains("route.receiver") && err.contains("pager"),
        "{err}"
    );
    let bad = write("am2.yml", "route:\n  receiver: hook\nreceivers:\n- name: hook\n  pagerduty_configs:\n  - service_key: x\n");
    let err = String::from_utf8_lossy(
        &phalanx(&["alerting", "config", "set", &bad, "--endpoints", &eps]).stderr,
    )
    .to_string();
    assert!(
        err.contains("line 5") && err.contains("pagerduty_configs"),
        "{err}"
    );

    // The leader evaluates the stored rules together with the defaults.
    wait_for("AlwaysOn firing", Duration::from_secs(20), || {
        let (_, v) = json(api, "/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["labels"]["alertname"] == "AlwaysOn" && a["state"] == "firing")
            .then_some(())
    });
    let (_, rules) = json(api, "/api/v1/rules");
    let names: Vec<String> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    for n in [
        "AlwaysOn",
        "PhalanxMemberDown",
        "PhalanxNoLeader",
        "PhalanxInsufficientMembers",
        "PhalanxHighLeaderChanges",
        "PhalanxHighFsyncLatency",
        "PhalanxQuotaNearlyFull",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} not in force: {names:?}");
    }

    // A bad document written behind the CLI's back: rejected by the leader, the rules in force stay, an event says so.
    let out = c.etcdctl(&["put", "/phalanx/alerting/rules", "groups:\n- name: x\n  rules:\n  - alert: Y\n    expr: label_replace(up, \"a\", \"b\", \"c\", \"d\")\n"]);
    assert!(out.status.success());
    wait_for("config_rejected event", Duration::from_secs(20), || {
        let out = phalanx(&["events", "--json", "--endpoints", &eps]);
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        (t.contains("config_rejected") && t.contains("function `label_replace`")).then_some(())
    });
    let (_, rules) = json(api, "/api/v1/rules");
    assert!(rules.to_string().contains("AlwaysOn"), "{rules}");

    // Unsupported PromQL over HTTP names the part; Prometheus's error shape.
    let (code, v) = json(api, "/api/v1/query?query=count_values(%22x%22%2C%20up)");
    assert_eq!((code, v["status"].as_str()), (400, Some("error")));
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("aggregation `count_values`"),
        "{v}"
    );
    let (code, v) = json(api, "/api/v1/query?query=rate(up%5B1m%3A10s%5D)");
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("subquery"), "{v}");

    // Query API shapes.
    let (code, v) = json(
        api,
        "/api/v1/query?query=sum%20by%20(member)%20(phalanx_raft_term)",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(v["data"]["result"][0]["metric"]["member"], "n1");
    wait_for(
        "a range query over 3 s of history",
        Duration::from_secs(20),
        || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let (code, v) = json(
                api,
                &format!(
                    "/api/v1/query_range?query=phalanx_mvcc_revision&start={}&end={now}&step=1",
                    now - 3.0
                ),
            );
            assert_eq!(code, 200, "{v}");
            assert_eq!(v["data"]["resultType"], "matrix");
            (v["data"]["result"][0]["values"].as_array()?.len() == 4).then_some(())
        },
    );
    let (_, v) = json(api, "/api/v1/series?match%5B%5D=phalanx_server_is_leader");
    assert_eq!(v["data"][0]["__name__"], "phalanx_server_is_leader");
    let (_, v) = json(api, "/api/v1/labels");
    assert!(
        v["data"].as_array().unwrap().iter().any(|x| x == "member"),
        "{v}"
    );

    // Silences: add, list, expire (CLI); the timeline records them.
    let out = phalanx(&[
        "alerting",
        "silence",
        "add",
        "--matcher",
        "alertname=\"AlwaysOn\"",
        "--duration",
        "1h",
        "--creator",
        "ops",
        "--comment",
        "known",
        "--endpoints",
        &eps,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = phalanx(&["alerting", "silence", "list", "--endpoints", &eps]);
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        t.contains(&id) && t.contains("active") && t.contains("ops"),
        "{t}"
    );
    let out = phalanx(&[
        "alerting",
        "silence",
        "add",
        "--matcher",
        "alertname=\"AlwaysOn\"",
        "--creator",
        "ops",
        "--comment",
        "",
        "--endpoints",
        &eps,
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("comment"));
    assert!(
        phalanx(&["alerting", "silence", "expire", &id, "--endpoints", &eps])
            .status
            .success()
    );
    let (_, v) = json(api, "/api/v1/silences");
    assert_eq!(v["data"][0]["state"], "expired", "{v}");
    let (_, v) = json(api, "/api/v1/events?since=1h");
    let kinds: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "rules_changed",
        "leader_changed",
        "silence_added",
        "silence_expired",
        "config_rejected",
        "alert_firing",
    ] {
        assert!(kinds.contains(&k), "{k} not in {kinds:?}");
    }
}

#[test]
fn a_flood_of_series_past_max_series_is_refused_counted_and_logged() {
    // A member's own metrics are ~60 series; bound the history at 20.
    let (c, api) = one_member(&["--alerting-max-series=20"]);
    let refused = wait_for("refused series counted", Duration::from_secs(20), || {
        let (_, body) = http_get(api, "/metrics")?;
        let v = drill::admin::metric_value(&body, "phalanx_alerting_series_refused_total")?;
        (v > 0.0).then_some(v)
    });
    assert!(refused > 0.0);
    let (_, body) = http_get(api, "/metrics").unwrap();
    assert_eq!(
        drill::admin::metric_value(&body, "phalanx_alerting_series"),
        Some(20.0),
        "{body}"
    );
    // The refusal is in the history too, and in the log.
    let (_, v) = json(
        api,
        "/api/v1/query?query=count(%7B__name__%3D~%22.%2B%22%7D)",
    );
    assert_eq!(v["data"]["result"][0]["value"][1], "20", "{v}");
    wait_for("the refusal logged", Duration::from_secs(10), || {
        c.members[0]
            .log_text()
            .contains("metrics history is full")
            .then_some(())
    });
    // The member keeps serving.
    assert!(c.members[0].healthy());
}
