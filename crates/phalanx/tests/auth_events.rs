//! Auth and permission changes appear in the event timeline (`phalanx
//! events`, alerting's keys under /phalanx/alerting/events/), written by the
//! member that made the change once it is applied, naming the change and
//! the user who made it, never a password or a hash.

mod support;

use std::process::Command;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_phalanx");

fn events(c: &Cluster, user: &str) -> String {
    let out = Command::new(BIN)
        .args(["events", "--endpoints", &c.endpoints(), "--since", "1h"])
        .args(["--user", user])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "phalanx events: {text}");
    text
}

#[test]
fn auth_changes_are_events_with_their_author() {
    let c = Cluster::start(3, &["--bcrypt-cost", "4"]);
    c.ctl(&["user", "add", "root:rootpw"]);
    c.ctl(&["user", "grant-role", "root", "root"]);
    c.ctl(&["role", "add", "app"]);
    c.ctl(&[
        "role",
        "grant-permission",
        "--prefix=true",
        "app",
        "readwrite",
        "/app/",
    ]);
    c.ctl(&["auth", "enable"]);
    c.ctl(&["--user=root:rootpw", "user", "add", "alice:alicepw"]);
    c.ctl(&["--user=root:rootpw", "user", "grant-role", "alice", "app"]);
    c.ctl(&[
        "--user=root:rootpw",
        "user",
        "passwd",
        "alice",
        "--interactive=false",
    ]);
    // A refused change (alice is not root) records nothing.
    let o = c.etcdctl(&["--user=alice:alicepw", "role", "add", "sneaky"]);
    assert!(!o.status.success());

    let text = events(&c, "root:rootpw");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("auth_changed"))
        .collect();
    for want in [
        "user root added (auth was disabled: caller not identified)",
        "role root granted to user root",
        "role app added",
        "READWRITE on keys [\"/app/\", \"/app0\") granted to role app",
        "auth enabled",
        "user alice added by root",
        "role app granted to user alice by root",
        "password of user alice changed by root",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "no event {want:?} in:\n{text}"
        );
    }
    assert!(!text.contains("sneaky"), "{text}");
    assert!(!text.contains("alicepw") && !text.contains("$2"), "{text}");
}
