//! `phalanx demo` end to end: members, gateways and sample backends come up,
//! the printed commands work, a child that dies is reported with the end of
//! its log, SIGTERM stops every child and keeps the logs, and SIGKILL of the
//! demo takes its children with it. Also: a normal bootstrap logs no ERROR
//! line, and member logs written to files carry no colour codes.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drill::cluster::signal;
use support::*;

/// How long the demo may take to print its "Press Ctrl-C" line.
const DEMO_START_TIMEOUT: Duration = Duration::from_secs(90);

/// A process we saw: its pid and its start time (field 22 of
/// `/proc/<pid>/stat`), so a recycled pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: u32,
    start: u64,
}

/// Fields of `/proc/<pid>/stat` after the parenthesised command name
/// (index 0 is field 3, the state).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        s.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

impl Proc {
    fn of(pid: u32) -> Option<Proc> {
        let f = stat_fields(pid)?;
        Some(Proc {
            pid,
            start: f.get(19)?.parse().ok()?,
        })
    }

    /// Still running (not gone, not a zombie, not a recycled pid).
    fn alive(&self) -> bool {
        stat_fields(self.pid).is_some_and(|f| {
            f[0] != "Z" && f.get(19).and_then(|s| s.parse().ok()) == Some(self.start)
        })
    }
}

/// Every process whose parent is `parent`.
fn children_of(parent: u32) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(parent))
        .filter_map(Proc::of)
        .collect()
}

/// A running `phalanx demo`; on drop (e.g. a failed assertion) it and every
/// child it had are killed.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    transcript: String,
    /// Its children, as printed (pid lines) and found in /proc.
    procs: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in &self.procs {
            if p.alive() {
                let _ = signal(p.pid, "KILL");
            }
        }
    }
}

impl Demo {
    /// Start `phalanx demo` (members log at `info`, so their logs have
    /// lines) and read its output up to "Press Ctrl-C".
    fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args(["demo", "--data-dir"])
            .arg(dir.path())
            .args(["--ready-timeout-secs", "60"])
            .env("PHALANX_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo {
            child,
            lines,
            transcript: String::new(),
            procs: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + DEMO_START_TIMEOUT;
        demo.read_until(deadline, |l| l.starts_with("Press Ctrl-C"));
        let mut printed: Vec<u32> = Vec::new();
        for line in demo.transcript.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "pid") {
                printed.push(words[i + 1].parse().unwrap());
            }
        }
        demo.procs = printed.iter().filter_map(|&p| Proc::of(p)).collect();
        assert_eq!(
            demo.procs.len(),
            6,
            "3 members + 3 backends with pids, all running:\n{}",
            demo.transcript
        );
        // The demo's children according to the kernel: exactly those.
        let mut found = children_of(demo.child.id());
        found.sort_by_key(|p| p.pid);
        let mut expected = demo.procs.clone();
        expected.sort_by_key(|p| p.pid);
        assert_eq!(found, expected, "children of the demo in /proc");
        demo
    }

    /// Read lines until one satisfies `done`; returns it.
    fn read_until(&mut self, deadline: Instant, done: impl Fn(&str) -> bool) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the demo did not print the expected line; output so far:\n{}",
                    self.transcript
                )
            });
            self.transcript.push_str(&line);
            self.transcript.push('\n');
            if done(&line) {
                return line;
            }
        }
    }

    /// The pid printed on the line starting with `name`.
    fn pid_of(&self, name: &str) -> u32 {
        self.transcript
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid line for {name}:\n{}", self.transcript))
    }

    fn wait_children_gone(&self, after: &str) {
        wait_for(
            &format!("every child of the demo to exit after {after}"),
            Duration::from_secs(15),
            || self.procs.iter().all(|p| !p.alive()).then_some(()),
        );
    }
}

#[test]
fn demo_starts_gateways_reports_dead_children_and_stops_every_child() {
    let mut demo = Demo::start();
    println!("{}", demo.transcript);
    let endpoints = demo
        .transcript
        .lines()
        .find_map(|l| l.strip_prefix("ENDPOINTS="))
        .expect("ENDPOINTS line")
        .to_string();
    let gateways: Vec<u16> = demo
        .transcript
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("curl http://127.0.0.1:"))
        .map(|rest| rest.split('/').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        gateways.len(),
        3,
        "one curl line per gateway:\n{}",
        demo.transcript
    );
    assert!(demo.transcript.contains(&format!(
        "Data and logs: {} (kept when the demo exits",
        demo.dir.path().display()
    )));

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

    // Kill backend-1 as the demo suggests: traffic moves to the others, no
    // error, and the demo says so.
    let b1 = demo.pid_of("backend-1");
    signal(b1, "KILL").unwrap();
    let report = demo.read_until(Instant::now() + Duration::from_secs(10), |l| {
        l.contains("backend-1 (pid")
    });
    assert_eq!(
        report,
        format!(
            "sample backend backend-1 (pid {b1}) exited: signal: 9 (SIGKILL); the end of {}:",
            demo.dir.path().join("backend-1.log").display()
        )
    );
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

    // kill -9 a member: reported with its exit status and the end of its log.
    let n3 = demo.pid_of("n3");
    signal(n3, "KILL").unwrap();
    let log = demo.dir.path().join("n3.log");
    let report = demo.read_until(Instant::now() + Duration::from_secs(10), |l| {
        l.contains("n3 (pid")
    });
    assert_eq!(
        report,
        format!(
            "member n3 (pid {n3}) exited: signal: 9 (SIGKILL); the end of {}:",
            log.display()
        )
    );
    let last_line = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .last()
        .expect("n3 logged at info")
        .to_string();
    demo.read_until(Instant::now() + Duration::from_secs(5), |l| l == last_line);

    // SIGTERM: the demo exits, takes every child with it, keeps the logs.
    signal(demo.child.id(), "TERM").unwrap();
    let status = wait_for(
        "demo to exit after SIGTERM",
        Duration::from_secs(30),
        || demo.child.try_wait().unwrap(),
    );
    assert!(status.success(), "demo exit status {status}");
    demo.wait_children_gone("SIGTERM");
    let kept = format!("Data and logs kept in {}", demo.dir.path().display());
    demo.read_until(Instant::now() + Duration::from_secs(5), |l| l == kept);

    // Member logs are files, not terminals: no colour codes in them.
    for n in ["n1", "n2", "n3"] {
        let text = std::fs::read(demo.dir.path().join(format!("{n}.log"))).unwrap();
        assert!(!text.is_empty(), "{n}.log kept, with lines");
        assert!(
            !text.windows(2).any(|w| w == b"\x1b["),
            "{n}.log holds ANSI escape codes:\n{}",
            String::from_utf8_lossy(&text)
        );
    }
    println!("demo stopped; children {:?} all exited", demo.procs);
}

#[test]
fn demo_children_die_when_the_demo_is_sigkilled() {
    let mut demo = Demo::start();
    signal(demo.child.id(), "KILL").unwrap();
    demo.child.wait().unwrap();
    // No cleanup code ran in the demo: the kernel's parent-death signal
    // must take the children down.
    demo.wait_children_gone("SIGKILL");
}

#[test]
fn normal_bootstrap_logs_no_error() {
    let c = Cluster::start(3, &[]);
    // Bootstrap is over when every member has published its client URLs
    // (a membership change each): that is where the ERROR lines came from.
    wait_for(
        "every member's client URL in the member list",
        Duration::from_secs(30),
        || {
            let out = c.etcdctl(&["member", "list"]);
            let list = String::from_utf8_lossy(&out.stdout);
            (out.status.success() && c.members.iter().all(|m| list.contains(&m.client_url())))
                .then_some(())
        },
    );
    for m in &c.members {
        let log = m.log_text();
        // openraft reports at ERROR an RPC that outlived its timeout (the
        // heartbeat interval, 50 ms), and a vote request to a peer whose
        // process is not listening yet (connection refused: on a loaded
        // 2-core machine the first member can campaign before the others
        // have bound their peer ports). Those are the network's while
        // members start, not a bootstrap fault, and are the only ERROR lines
        // allowed.
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .filter(|l| !(l.contains("openraft::") && l.contains("timeout")))
            .filter(|l| {
                !(l.contains("openraft::")
                    && l.contains("while requesting vote")
                    && l.contains("Connection refused"))
            })
            .collect();
        assert!(
            errors.is_empty(),
            "{} logged an ERROR on a normal bootstrap: {errors:#?}\n{}",
            m.name,
            c.logs()
        );
        assert!(!log.contains("\x1b["), "{}.log holds ANSI codes", m.name);
    }
}
