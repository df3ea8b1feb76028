//! `phalanx demo` end to end: members, gateways and sample backends come up,
//! the printed commands work, and SIGTERM stops every child process.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

/// The demo process; on drop (e.g. a failed assertion) it and every pid it
/// printed are killed.
struct Demo {
    child: Child,
    pids: Vec<u32>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in &self.pids {
            if alive(*p) {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
        }
    }
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // Field 3 (after the parenthesised command name) is the state.
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
    }
}

#[test]
fn demo_starts_gateways_and_stops_every_child() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args(["demo", "--data-dir"])
        .arg(dir.path())
        .args(["--ready-timeout-secs", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut demo = Demo {
        child,
        pids: Vec::new(),
    };
    let (tx, rx) = mpsc::channel::<String>();
    let out = demo.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Read until the "Press Ctrl-C" line; collect ENDPOINTS, curl lines and pids.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut endpoints = None;
    let mut gateways = Vec::new();
    let mut transcript = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => panic!("demo did not finish starting; output so far:\n{transcript}"),
        };
        transcript.push_str(&line);
        transcript.push('\n');
        if let Some(e) = line.strip_prefix("ENDPOINTS=") {
            endpoints = Some(e.to_string());
        }
        if let Some(rest) = line.trim_start().strip_prefix("curl http://127.0.0.1:") {
            gateways.push(rest.split('/').next().unwrap().parse::<u16>().unwrap());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "pid") {
            demo.pids.push(words[i + 1].parse().unwrap());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    println!("{transcript}");
    let endpoints = endpoints.expect("ENDPOINTS line");
    assert_eq!(
        gateways.len(),
        3,
        "one curl line per gateway:\n{transcript}"
    );
    assert_eq!(
        demo.pids.len(),
        6,
        "3 members + 3 backends with pids:\n{transcript}"
    );
    assert!(demo.pids.iter().all(|p| alive(*p)));

    // etcdctl put / get through the printed endpoints.
    let ctl = |args: &[&str]| {
        let out = Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--command-timeout=10s")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(ctl(&["put", "greeting", "hello"]).trim(), "OK");
    assert_eq!(
        ctl(&["get", "greeting", "--print-value-only"]).trim(),
        "hello"
    );
    assert!(ctl(&["get", "/phalanx/gateway/config", "--print-value-only"]).contains("[[pools]]"));

    // HTTP through every gateway, round robin over the three backends.
    for &g in &gateways {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..6 {
            let (status, body) = http_get(g, "/").expect("gateway answers");
            assert_eq!(status, 200, "gateway :{g}: {body}");
            seen.insert(body.trim().to_string());
        }
        assert_eq!(
            seen.len(),
            3,
            "gateway :{g} should round-robin over 3 backends: {seen:?}"
        );
    }

    // Kill backend-1 as the demo suggests: traffic moves to the others, no error.
    let b1: u32 = transcript
        .lines()
        .find(|l| l.trim_start().starts_with("backend-1 "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|p| p.parse().ok())
        .expect("backend-1 pid line");
    assert!(Command::new("kill")
        .args(["-9", &b1.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for("backend-1 gone", Duration::from_secs(10), || {
        (!alive(b1)).then_some(())
    });
    for &g in &gateways {
        for _ in 0..6 {
            let (status, body) = http_get(g, "/").expect("gateway answers");
            assert_eq!(
                status, 200,
                "gateway :{g} after backend-1 was killed: {body}"
            );
            assert_ne!(body.trim(), "backend-1");
        }
    }

    // SIGTERM: the demo exits and takes every child with it.
    let demo_pid = demo.child.id();
    assert!(Command::new("kill")
        .args(["-15", &demo_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = wait_for(
        "demo to exit after SIGTERM",
        Duration::from_secs(30),
        || demo.child.try_wait().unwrap(),
    );
    assert!(status.success(), "demo exit status {status}");
    let leftover = wait_for(
        "every child of the demo to exit",
        Duration::from_secs(10),
        || {
            let l: Vec<u32> = demo.pids.iter().copied().filter(|p| alive(*p)).collect();
            l.is_empty().then_some(l)
        },
    );
    assert!(leftover.is_empty());
    println!("demo stopped; pids {:?} all exited", demo.pids);
}
