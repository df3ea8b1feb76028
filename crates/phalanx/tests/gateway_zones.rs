//! `phalanx gateway --zone`: the real binary with a configuration file whose
//! endpoints carry zones, in front of `phalanx sample-backend` processes.
//! The flag overrides the file's `zone`; traffic stays in the gateway's zone,
//! moves to the other zone with no client error when the local backend is
//! killed (SIGKILL), and comes back when it is restarted.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, http_get, wait_for, BIN};

/// A child process killed (and reaped) when dropped.
struct Proc(Option<Child>);

impl Proc {
    fn spawn(args: &[String], log: &Path) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        Proc(Some(
            drill::cluster::exit_with_parent(&mut cmd).spawn().unwrap(),
        ))
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn backend(name: &str, port: u16, dir: &Path) -> Proc {
    let p = Proc::spawn(
        &[
            "sample-backend".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--name".into(),
            name.into(),
        ],
        &dir.join(format!("{name}.log")),
    );
    wait_for(&format!("backend {name}"), Duration::from_secs(20), || {
        http_get(port, "/healthz").filter(|(s, _)| *s == 200)
    });
    p
}

/// `n` sequential GETs through the gateway; answers counted by backend name,
/// anything but a 200 kept as an error.
fn send(port: u16, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    let mut by = HashMap::new();
    let mut errors = Vec::new();
    for _ in 0..n {
        match http_get(port, "/") {
            Some((200, body)) => *by.entry(body.trim().to_string()).or_insert(0) += 1,
            other => errors.push(format!("{other:?}")),
        }
    }
    (by, errors)
}

#[test]
fn gateway_zone_flag_keeps_traffic_local_fails_over_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let (a1, b1, gw_port, admin_port) = (free_port(), free_port(), free_port(), free_port());
    let _a = backend("a1", a1, dir.path());
    let mut b = backend("b1", b1, dir.path());
    let cfg = dir.path().join("gateway.toml");
    // The file says zone-a; the gateway is started with --zone zone-b.
    std::fs::write(
        &cfg,
        format!(
            r#"
zone = "zone-a"
admin_listen = "127.0.0.1:{admin_port}"
[[listeners]]
name = "web"
address = "127.0.0.1:{gw_port}"
[[pools]]
name = "p"
endpoints = [
  {{ address = "127.0.0.1:{a1}", zone = "zone-a" }},
  {{ address = "127.0.0.1:{b1}", zone = "zone-b" }},
]
health_check = {{ interval_ms = 100, timeout_ms = 200, rise = 2, fall = 2, jitter_percent = 0 }}
outlier_detection = {{ consecutive_connect_failures = 1, max_ejection_percent = 100 }}
[[routes]]
pool = "p"
retry = {{ max_retries = 2 }}
"#
        ),
    )
    .unwrap();
    let _gw = Proc::spawn(
        &[
            "gateway".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--zone".into(),
            "zone-b".into(),
        ],
        &dir.path().join("gateway.log"),
    );
    wait_for("gateway admin", Duration::from_secs(20), || {
        http_get(admin_port, "/healthz").filter(|(s, _)| *s == 200)
    });
    let (by, errors) = send(gw_port, 200);
    println!("zone-b healthy: {by:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by.get("b1"), Some(&200), "{by:?}");

    // The local zone's only backend dies: everything goes to zone-a, and the
    // request that meets the dead backend is retried there.
    b.kill9();
    let (by, errors) = send(gw_port, 200);
    println!("b1 killed: {by:?}");
    assert!(
        errors.is_empty(),
        "client errors after the kill: {errors:?}"
    );
    assert_eq!(by.get("a1"), Some(&200), "{by:?}");

    // It comes back: after `rise` good checks, traffic returns to zone-b.
    let _b = backend("b1", b1, dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (by, errors) = send(gw_port, 1);
        assert!(errors.is_empty(), "{errors:?}");
        if by.contains_key("b1") {
            break;
        }
        assert!(Instant::now() < deadline, "traffic never returned to b1");
    }
    let (by, errors) = send(gw_port, 200);
    println!("b1 back: {by:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(by.get("b1"), Some(&200), "{by:?}");
}
