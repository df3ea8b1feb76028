//! `phalanx drill --local 3` with backend faults: the drill starts sample
//! backends (child processes) behind a store-backed gateway on every member,
//! sends HTTP load through the gateways while the checked KV workload runs,
//! kills / hangs / slows / partitions one backend per window, and judges the
//! client-visible errors against a budget. With the drill's resilient gateway
//! configuration (retries, per-try timeouts, health checks) the run must pass;
//! with the bare one (none of those) the very same faults must make it fail,
//! with errors in every window, which also shows every fault was in force.
//! backend-partition adds an iptables rule on the loopback interface, so
//! these tests need root and iptables (`bash .ci/install`; CI runs as root).
//! Drills run one at a time.

use std::net::TcpListener;
use std::process::Command;

#[path = "support/drill.rs"]
mod drill_support;
mod support;
use drill_support::{
    assert_passed, assert_report_has, assert_store_verdicts_pass, drill, explain, local_drill,
    one_at_a_time, report_md, summary, timeline_svg, Run,
};

const ALL_BACKEND_FAULTS: &str = "backend-kill,backend-hang,backend-slow,backend-partition";

fn preflight() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(uid, "0", "the gateway drill tests must run as root (backend-partition adds an iptables rule); CI runs them as root");
    assert!(
        Command::new("iptables")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "`iptables` is missing: run `bash .ci/install`"
    );
}

/// After the drill has exited: no iptables rule of any drill is left, and
/// every port the drill used for backends and gateways is free again (its
/// child processes are gone).
fn assert_cleaned_up(r: &Run, s: &serde_json::Value) {
    let rules = Command::new("iptables")
        .args(["-w", "-S", "INPUT"])
        .output()
        .expect("iptables -S");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        !rules.contains("phalanx-drill-"),
        "iptables rules left behind:\n{rules}"
    );
    let doc = std::fs::read_to_string(r.dir.join("gateway.toml")).expect("gateway.toml written");
    let mut addrs: Vec<String> = doc
        .split('"')
        .filter(|p| p.starts_with("127.0.0.1:"))
        .map(str::to_string)
        .collect();
    addrs.extend(
        s["gateway"]["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                g.as_str()
                    .unwrap()
                    .trim_start_matches("http://")
                    .to_string()
            }),
    );
    assert!(addrs.len() >= 6, "{addrs:?}");
    for a in addrs {
        assert!(
            TcpListener::bind(&a).is_ok(),
            "{a} is still in use after the drill exited: a child process survived"
        );
    }
}

#[test]
fn drill_gateway_backend_faults_cost_no_client_request_with_retries_and_health_checks() {
    preflight();
    let _one = one_at_a_time();
    let r = local_drill(ALL_BACKEND_FAULTS, "16s", &["--fault-window-ms", "2000"]);
    let s = assert_passed(&r);
    let g = &s["gateway"];
    assert_eq!(g["verdict"], "PASS", "{}", explain(&r));
    assert_eq!(g["profile"], "resilient");
    assert_eq!(g["backends"].as_array().unwrap().len(), 3);
    assert_eq!(g["gateways"].as_array().unwrap().len(), 3);
    let requests = g["requests"].as_u64().unwrap();
    assert!(
        requests > 500,
        "too few HTTP requests through the gateways: {}",
        explain(&r)
    );
    assert_eq!(
        g["ok"].as_u64().unwrap() + g["errors"].as_u64().unwrap(),
        requests
    );
    for k in ["http_5xx", "http_other", "connection", "timeout"] {
        assert!(
            g["errors_by_kind"][k].is_u64(),
            "errors_by_kind lacks {k}: {g}"
        );
    }
    let windows = g["windows"].as_array().unwrap();
    let kinds: Vec<&str> = windows
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "backend-kill",
            "backend-hang",
            "backend-slow",
            "backend-partition"
        ]
    );
    for (w, sw) in windows.iter().zip(s["windows"].as_array().unwrap()) {
        assert!(
            sw["note"].is_null(),
            "fault not injected cleanly: {sw}\n{}",
            explain(&r)
        );
        assert!(
            w["targets"][0].as_str().unwrap().starts_with("backend-"),
            "{w}"
        );
        assert!(
            w["requests"].as_u64().unwrap() > 0,
            "no request completed inside {w}"
        );
        assert!(
            w["errors"].is_u64() && w["errors_by_kind"]["timeout"].is_u64(),
            "{w}"
        );
    }
    eprintln!(
        "gateway: {} requests, {} errors, availability {} %, p50 {} ms, p99 {} ms; per window errors {:?}",
        requests,
        g["errors"],
        g["availability_percent"],
        g["latency_p50_ms"],
        g["latency_p99_ms"],
        windows.iter().map(|w| (w["kind"].as_str().unwrap(), w["errors"].as_u64().unwrap(), w["latency_max_ms"].as_f64().unwrap_or(0.0))).collect::<Vec<_>>()
    );
    assert_report_has(
        &r,
        &[
            "**Overall: PASS**",
            "## Gateway",
            "| gateway (client-visible HTTP errors within the budget) | PASS |",
            "| 1 | backend-kill | backend-1 |",
            "| 4 | backend-partition |",
        ],
    );
    let svg = timeline_svg(&r);
    assert!(
        svg.contains("gateway: successful requests per second") && svg.contains("backend-hang"),
        "timeline.svg lacks the gateway panel"
    );
    assert!(
        r.stdout.contains(" gateway=PASS gateway_requests="),
        "{}",
        r.stdout
    );
    assert_cleaned_up(&r, &s);
}

/// A member kill takes that member's gateway down with it; the HTTP clients,
/// like clients given every gateway's address, move to the next gateway when
/// theirs refuses the connection, so the kill costs (almost) no request.
#[test]
fn drill_gateway_clients_fail_over_when_a_member_and_its_gateway_die() {
    preflight();
    let _one = one_at_a_time();
    let r = local_drill(
        "kill-follower,backend-kill",
        "10s",
        &["--fault-window-ms", "2500"],
    );
    assert_eq!(r.code, 0, "{}", explain(&r));
    let s = summary(&r.dir);
    let g = &s["gateway"];
    assert_eq!(g["verdict"], "PASS", "{}", explain(&r));
    let kill = &g["windows"][0];
    assert_eq!(kill["kind"], "kill-follower", "{g}");
    assert!(
        kill["failovers"].as_u64().unwrap() > 0,
        "no request failed over while a member was down: {kill}\n{}",
        explain(&r)
    );
    assert_eq!(
        g["windows"][1]["failovers"], 0,
        "a backend kill needs no gateway failover: {g}"
    );
    eprintln!(
        "kill-follower window: {} requests, {} errors, {} failovers",
        kill["requests"], kill["errors"], kill["failovers"]
    );
    assert_cleaned_up(&r, &s);
}

#[test]
fn drill_gateway_verdict_fails_without_retries_or_health_checks() {
    preflight();
    let _one = one_at_a_time();
    let r = local_drill(
        ALL_BACKEND_FAULTS,
        "16s",
        &["--fault-window-ms", "2000", "--gateway-profile", "bare"],
    );
    assert_eq!(
        r.code,
        1,
        "a gateway without retries or health checks hid every backend fault: {}",
        explain(&r)
    );
    // The store is fine; only the gateway verdict fails.
    let s = assert_store_verdicts_pass(&r);
    let g = &s["gateway"];
    assert_eq!(g["verdict"], "FAIL", "{}", explain(&r));
    assert_eq!(g["profile"], "bare");
    assert!(
        g["error_percent"].as_f64().unwrap() > g["max_error_percent"].as_f64().unwrap(),
        "{g}"
    );
    // Every fault reached the clients inside its own window.
    for w in g["windows"].as_array().unwrap() {
        assert!(
            w["errors"].as_u64().unwrap() > 0,
            "no client error inside the {} window without retries: {w}\n{}",
            w["kind"],
            explain(&r)
        );
    }
    eprintln!(
        "bare gateway: {} requests, {} errors ({} %) {}; per window {:?}",
        g["requests"],
        g["errors"],
        g["error_percent"],
        g["errors_by_kind"],
        g["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["kind"].as_str().unwrap(), w["errors"].as_u64().unwrap()))
            .collect::<Vec<_>>()
    );
    assert!(r.stdout.contains(" gateway=FAIL "), "{}", r.stdout);
    assert!(report_md(&r).contains("**Overall: FAIL**"));
    assert_cleaned_up(&r, &s);
}

#[test]
fn drill_gateway_usage_errors_exit_2() {
    let _one = one_at_a_time();
    let r = drill(&[
        "--endpoints",
        "http://127.0.0.1:1",
        "--admin-endpoints",
        "http://127.0.0.1:2",
        "--faults",
        "backend-kill",
    ]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    assert!(r.stderr.contains("needs --local"), "{}", r.stderr);
    for (opt, val) in [
        ("--backends", "0"),
        ("--backend-delay-ms", "0"),
        ("--http-clients", "0"),
        ("--http-timeout-ms", "0"),
        ("--max-gateway-error-percent", "101"),
    ] {
        let r = drill(&["--local", "3", "--faults", "backend-kill", opt, val]);
        assert_eq!(r.code, 2, "{opt} {val}: {}", explain(&r));
        assert!(r.stderr.contains(opt), "{opt}: {}", r.stderr);
    }
    let r = drill(&[
        "--local",
        "3",
        "--faults",
        "backend-kill",
        "--gateway-profile",
        "sturdy",
    ]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    assert!(r.stderr.contains("--gateway-profile"), "{}", r.stderr);
}

/// Interrupted in the middle of a backend-partition window, the drill must
/// still delete its iptables rule and stop its child processes.
#[test]
fn drill_gateway_interrupted_cleans_up_its_rule_and_processes() {
    preflight();
    let _one = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(drill_support::BIN)
        .args([
            "drill",
            "--local",
            "1",
            "--backends",
            "2",
            "--faults",
            "backend-partition",
            "--duration",
            "60s",
            "--fault-window-ms",
            "30000",
            "--report",
        ])
        .arg(tmp.path().join("report"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting phalanx drill");
    let tag = format!("phalanx-drill-{}-", child.id());
    let rules = || {
        String::from_utf8_lossy(
            &Command::new("iptables")
                .args(["-w", "-S", "INPUT"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    support::wait_for(
        &format!("an iptables rule {tag}*"),
        std::time::Duration::from_secs(60),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("the drill exited ({st}) before partitioning a backend");
            }
            rules().contains(&tag).then_some(())
        },
    );
    let doc = std::fs::read_to_string(tmp.path().join("report/gateway.toml"))
        .expect("gateway.toml written before the faults");
    drill::cluster::signal(child.id(), "TERM").expect("SIGTERM the drill");
    let status = support::wait_for(
        "the drill to exit after SIGTERM",
        std::time::Duration::from_secs(30),
        || child.try_wait().unwrap(),
    );
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        !rules().contains(&tag),
        "the partition rule survived the interrupted drill:\n{}",
        rules()
    );
    for a in doc.split('"').filter(|p| p.starts_with("127.0.0.1:")) {
        assert!(
            TcpListener::bind(a).is_ok(),
            "backend {a} still running after the drill was interrupted"
        );
    }
}
