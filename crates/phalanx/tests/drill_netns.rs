//! Real network partitions: three members, each in its own network namespace,
//! joined by veth pairs to a bridge in a fourth "switch" namespace (which
//! also runs the workload: `phalanx drill --endpoints ... --netns ...`).
//! Faults are iptables DROP rules inside the members' namespaces (random
//! loss: the `statistic` match); the pause is SIGSTOP. Member 3 runs with its clock 30 s ahead (libfaketime) the
//! whole time. Addresses (10.0.X.0/24) exist only inside these namespaces;
//! nothing is added to the root namespace. Needs root, `ip`, `iptables` and
//! libfaketime (`bash .ci/install`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_phalanx");
const FAKETIME_LIBS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(args: &[&str]) {
    if let Err(e) = sh(args) {
        panic!("{e}");
    }
}

fn preflight() -> &'static str {
    let uid = sh(&["id", "-u"]).unwrap_or_default();
    assert_eq!(uid.trim(), "0", "the network-namespace drill tests must run as root (they create namespaces, veths and iptables rules); CI runs them as root");
    assert!(
        sh(&["ip", "-V"]).is_ok(),
        "`ip` (iproute2) is missing: run `bash .ci/install`"
    );
    assert!(
        sh(&["iptables", "--version"]).is_ok(),
        "`iptables` is missing: run `bash .ci/install`"
    );
    FAKETIME_LIBS
        .iter()
        .find(|p| Path::new(p).exists())
        .copied()
        .unwrap_or_else(|| panic!("libfaketime is missing (looked in {FAKETIME_LIBS:?}): run `bash .ci/install` (Debian package faketime)"))
}

/// The namespaces, veths and member processes; all removed on drop, also
/// when a test panics.
struct Lab {
    prefix: String,
    subnet: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn ns(&self, i: usize) -> String {
        format!("{}{}", self.prefix, i)
    }
    fn switch(&self) -> String {
        format!("{}s", self.prefix)
    }
    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i)
    }

    fn create(n: usize) -> Lab {
        let pid = std::process::id();
        let prefix = format!("phxd{}", pid % 100_000);
        let subnet = format!("10.0.{}", 100 + pid % 100);
        let lab = Lab {
            prefix,
            subnet,
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        lab.teardown_namespaces();
        let s = lab.switch();
        must(&["ip", "netns", "add", &s]);
        must(&["ip", "-n", &s, "link", "set", "lo", "up"]);
        must(&["ip", "-n", &s, "link", "add", "br0", "type", "bridge"]);
        must(&[
            "ip",
            "-n",
            &s,
            "addr",
            "add",
            &format!("{}.100/24", lab.subnet),
            "dev",
            "br0",
        ]);
        must(&["ip", "-n", &s, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let ns = lab.ns(i);
            must(&["ip", "netns", "add", &ns]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            // Both ends are created directly inside the namespaces.
            must(&[
                "ip",
                "-n",
                &s,
                "link",
                "add",
                &format!("v{i}"),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ]);
            must(&[
                "ip",
                "-n",
                &s,
                "link",
                "set",
                &format!("v{i}"),
                "master",
                "br0",
            ]);
            must(&["ip", "-n", &s, "link", "set", &format!("v{i}"), "up"]);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lab.ip(i)),
                "dev",
                "eth0",
            ]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        }
        lab
    }

    fn teardown_namespaces(&self) {
        for name in std::iter::once(self.switch()).chain((1..=9).map(|i| self.ns(i))) {
            let _ = sh(&["ip", "netns", "del", &name]);
        }
    }

    fn start_members(&mut self, n: usize, faketime_lib: &str) {
        let ic: Vec<String> = (1..=n)
            .map(|i| format!("n{i}=http://{}:2380", self.ip(i)))
            .collect();
        let ic = ic.join(",");
        for i in 1..=n {
            let log = std::fs::File::create(self.dir.path().join(format!("n{i}.log"))).unwrap();
            let mut cmd = Command::new("ip");
            cmd.args([
                "netns",
                "exec",
                &self.ns(i),
                BIN,
                "node",
                "--name",
                &format!("n{i}"),
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{i}")))
            .args([
                "--listen-client-urls",
                &format!("http://{}:2379", self.ip(i)),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://{}:2379", self.ip(i)),
            ])
            .args(["--listen-peer-urls", &format!("http://{}:2380", self.ip(i))])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}:2380", self.ip(i)),
            ])
            .args([
                "--listen-metrics-urls",
                &format!("http://{}:2381", self.ip(i)),
            ])
            .args([
                "--initial-cluster",
                &ic,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &self.prefix,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
            if i == n {
                // Clock skew: this member's clock runs 30 s ahead.
                cmd.env("LD_PRELOAD", faketime_lib).env("FAKETIME", "+30s");
            }
            // `ip netns exec` execs the command: the child's pid is the member's.
            self.children
                .push(cmd.spawn().expect("starting a member in its namespace"));
        }
    }

    fn endpoints(&self, n: usize, port: u16) -> String {
        (1..=n)
            .map(|i| format!("http://{}:{port}", self.ip(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn logs(&self) -> String {
        (1..=self.children.len())
            .map(|i| {
                format!(
                    "==== n{i} ====\n{}",
                    std::fs::read_to_string(self.dir.path().join(format!("n{i}.log")))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = drill::cluster::signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
        self.teardown_namespaces();
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("member data and logs kept in {}", kept.display());
        }
    }
}

struct DrillRun {
    code: i32,
    stdout: String,
    stderr: String,
    summary: serde_json::Value,
    report: String,
}

fn run_drill(lab: &Lab, n: usize, fault: &str, report: &Path) -> DrillRun {
    let pids: Vec<String> = lab.children.iter().map(|c| c.id().to_string()).collect();
    let netns: Vec<String> = (1..=n).map(|i| lab.ns(i)).collect();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.switch(), BIN, "drill"])
        .args(["--endpoints", &lab.endpoints(n, 2379)])
        .args(["--admin-endpoints", &lab.endpoints(n, 2381)])
        .args(["--netns", &netns.join(",")])
        .args(["--pids", &pids.join(",")])
        .args([
            "--faults",
            fault,
            "--duration",
            "8s",
            "--fault-window-ms",
            "3500",
        ])
        .arg("--report")
        .arg(report)
        .stdin(Stdio::null())
        .output()
        .expect("running phalanx drill in the switch namespace");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for l in stdout.lines().filter(|l| l.starts_with("drill: ")) {
        println!("{l}");
    }
    DrillRun {
        code: out.status.code().unwrap_or(-1),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        summary: std::fs::read_to_string(report.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        report: std::fs::read_to_string(report.join("report.md")).unwrap_or_default(),
    }
}

#[test]
fn drill_real_partitions_pause_and_clock_skew_in_network_namespaces() {
    let faketime = preflight();
    let n = 3;
    let mut lab = Lab::create(n);
    lab.start_members(n, faketime);
    let reports: PathBuf = lab.dir.path().join("reports");
    // The skewed member really runs with libfaketime loaded.
    let skewed = lab.children[n - 1].id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let maps = std::fs::read_to_string(format!("/proc/{skewed}/maps")).unwrap_or_default();
        if maps.contains("libfaketime") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member n{n} runs without libfaketime:\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();

    // (fault, must a new leader be elected during the window?)
    let scenarios = [
        ("partition-leader", Some(true)),
        ("partition-minority", None),
        ("partition-one-way", None),
        ("pause-leader", Some(true)),
        ("loss", None),
    ];
    for (fault, new_leader) in scenarios {
        let r = run_drill(&lab, n, fault, &reports.join(fault));
        let explain = || {
            format!(
                "{fault}: exit {}\nstdout:\n{}\nstderr:\n{}\nreport:\n{}\nlogs:\n{}",
                r.code,
                r.stdout,
                r.stderr,
                r.report,
                lab.logs()
            )
        };
        assert_eq!(r.code, 0, "{}", explain());
        let s = &r.summary;
        assert_eq!(s["linearizable"], "PASS", "{}", explain());
        assert_eq!(
            s["lost_writes"].as_array().map(|l| l.len()),
            Some(0),
            "{}",
            explain()
        );
        assert_eq!(s["watch"], "PASS", "{}", explain());
        assert!(s["total"]["ok"].as_u64().unwrap_or(0) > 20, "{}", explain());
        let w = &s["windows"][0];
        assert_eq!(w["kind"], fault, "{}", explain());
        assert!(
            w["note"].is_null(),
            "fault not injected cleanly: {}",
            explain()
        );
        if let Some(expected) = new_leader {
            assert_eq!(w["new_leader_elected"], expected, "{}", explain());
        }
        if fault == "loss" {
            // The statistic-match rules were really installed (and removed).
            assert!(
                r.report
                    .contains("30 % of the leader's peer packets dropped"),
                "{}",
                explain()
            );
        }
        if fault == "partition-leader" {
            // The isolated old leader's clients must get errors/timeouts, never
            // a successful (possibly stale) answer once the partition holds.
            assert_eq!(
                w["target_clients_ok_ops"],
                0,
                "the isolated leader served its clients: {}",
                explain()
            );
        }
    }
    eprintln!("network-namespace scenarios took {:?}", started.elapsed());
    // Each run is an 8 s drill plus start-up and final phase (about 8.5 s
    // measured); 60 s each catches a hang without flaking on a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(60 * scenarios.len() as u64),
        "took {:?}",
        started.elapsed()
    );
}
