//! Authentication and RBAC driven by Debian's etcdctl 3.4, as an operator
//! would: users, roles, prefix permissions, `auth enable`, etcd's exact
//! refusals, root-only operations, persistence across a full restart, and
//! `auth disable`.

mod support;

use std::process::Output;
use support::*;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run etcdctl expecting failure with `msg` in its output.
fn refused(c: &Cluster, args: &[&str], msg: &str) {
    let o = c.etcdctl(args);
    let t = text(&o);
    assert!(
        !o.status.success() || t.contains(msg),
        "etcdctl {args:?} succeeded: {t}"
    );
    assert!(
        t.contains(msg),
        "etcdctl {args:?}: expected {msg:?}, got: {t}"
    );
}

#[test]
fn etcdctl_users_roles_permissions_and_root_only_operations() {
    let mut c = Cluster::start(3, &["--bcrypt-cost", "4"]);
    const ROOT: &str = "--user=root:rootpw";
    const ALICE: &str = "--user=alice:alicepw";

    // Enabling needs a root user.
    refused(
        &c,
        &["auth", "enable"],
        "etcdserver: root user does not exist",
    );
    assert!(c
        .ctl(&["user", "add", "root:rootpw"])
        .contains("User root created"));
    c.ctl(&["put", "/app/config", "v1"]);
    c.ctl(&["put", "/other/secret", "s"]);
    c.ctl(&["role", "add", "app-reader"]);
    c.ctl(&[
        "role",
        "grant-permission",
        "--prefix=true",
        "app-reader",
        "read",
        "/app/",
    ]);
    c.ctl(&["user", "add", "alice:alicepw"]);
    c.ctl(&["user", "grant-role", "alice", "app-reader"]);
    refused(
        &c,
        &["user", "add", "alice:x"],
        "etcdserver: user name already exists",
    );
    // etcdctl creates the root role and grants it to root when enabling.
    assert!(c
        .ctl(&["auth", "enable"])
        .contains("Authentication Enabled"));

    // Unauthenticated requests are refused with etcd's messages.
    refused(
        &c,
        &["get", "/app/config"],
        "etcdserver: user name is empty",
    );
    refused(
        &c,
        &["put", "/app/config", "x"],
        "etcdserver: user name is empty",
    );
    refused(
        &c,
        &["--user=alice:wrong", "get", "/app/config"],
        "etcdserver: authentication failed, invalid user ID or password",
    );
    refused(
        &c,
        &["--user=mallory:x", "get", "/app/config"],
        "etcdserver: authentication failed, invalid user ID or password",
    );

    // READ on /app/: read there, nothing else.
    assert_eq!(
        c.ctl(&[ALICE, "get", "/app/config", "--print-value-only"])
            .trim(),
        "v1"
    );
    assert!(c
        .ctl(&[ALICE, "get", "/app/", "--prefix", "--keys-only"])
        .contains("/app/config"));
    refused(
        &c,
        &[ALICE, "put", "/app/config", "v2"],
        "etcdserver: permission denied",
    );
    refused(
        &c,
        &[ALICE, "del", "/app/config"],
        "etcdserver: permission denied",
    );
    refused(
        &c,
        &[ALICE, "get", "/other/secret"],
        "etcdserver: permission denied",
    );
    refused(
        &c,
        &[ALICE, "get", "", "--from-key"],
        "etcdserver: permission denied",
    );
    refused(
        &c,
        &[ALICE, "get", "/", "--prefix"],
        "etcdserver: permission denied",
    );
    // A txn is checked op by op, compares included.
    let txn = |user: &str, input: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .args([&format!("--endpoints={}", c.endpoints()), user, "txn"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        text(&child.wait_with_output().unwrap())
    };
    let t = txn(
        ALICE,
        "value(\"/other/secret\") = \"s\"\n\nget /app/config\n\n\n",
    );
    assert!(t.contains("etcdserver: permission denied"), "{t}");
    let t = txn(
        ALICE,
        "value(\"/app/config\") = \"v1\"\n\nget /app/config\n\n\n",
    );
    assert!(t.contains("SUCCESS") && t.contains("v1"), "{t}");
    let t = txn(
        ALICE,
        "value(\"/app/config\") = \"v1\"\n\nget /app/config\n\nput /app/config v3\n\n",
    );
    assert!(t.contains("etcdserver: permission denied"), "{t}");

    // A watch outside the permitted range is refused at creation.
    let out = std::process::Command::new("timeout")
        .args([
            "5",
            etcdctl_path(),
            &format!("--endpoints={}", c.endpoints()),
            ALICE,
            "watch",
            "/other/",
            "--prefix",
        ])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        t.contains("etcdserver: permission denied"),
        "watch outside range: {t}"
    );

    // Root-only operations.
    refused(
        &c,
        &[ALICE, "compaction", "1"],
        "etcdserver: permission denied",
    );
    refused(&c, &[ALICE, "defrag"], "etcdserver: permission denied");
    refused(
        &c,
        &[ALICE, "user", "list"],
        "etcdserver: permission denied",
    );
    refused(
        &c,
        &[ALICE, "role", "add", "x"],
        "etcdserver: permission denied",
    );
    refused(
        &c,
        &[
            ALICE,
            "member",
            "add",
            "n9",
            "--peer-urls=http://127.0.0.1:1",
        ],
        "etcdserver: permission denied",
    );
    refused(
        &c,
        &[ALICE, "auth", "disable"],
        "etcdserver: permission denied",
    );
    let snap = c.dir.path().join("alice.db");
    let o = c.etcdctl_at(
        &c.members[0].client_url(),
        &[ALICE, "snapshot", "save", snap.to_str().unwrap()],
    );
    assert!(
        text(&o).contains("etcdserver: permission denied"),
        "snapshot: {}",
        text(&o)
    );
    // Open to everyone, as in etcd: member list and status.
    assert!(c.ctl(&[ALICE, "member", "list"]).contains("n1"));
    assert!(c.ctl(&[ALICE, "endpoint", "status"]).contains("3.4."));
    // Root can do everything.
    assert!(c.ctl(&[ROOT, "user", "list"]).contains("alice"));
    assert!(c
        .ctl(&[ROOT, "role", "get", "app-reader"])
        .contains("[/app/, /app0) (prefix /app/)"));
    assert!(c
        .ctl(&[ROOT, "user", "get", "alice"])
        .contains("app-reader"));
    c.ctl(&[ROOT, "put", "/other/secret", "s2"]);
    c.ctl(&[ROOT, "compaction", "2"]);
    refused(
        &c,
        &[ROOT, "user", "delete", "root"],
        "etcdserver: invalid auth management",
    );
    refused(
        &c,
        &[ROOT, "role", "revoke-permission", "app-reader", "/nope"],
        "etcdserver: permission is not granted to the role",
    );
    refused(
        &c,
        &[ROOT, "user", "grant-role", "alice", "nope"],
        "etcdserver: role name not found",
    );
    refused(
        &c,
        &[ROOT, "user", "get", "bob"],
        "etcdserver: user name not found",
    );

    // WRITE granted later is in force at once, on every member.
    c.ctl(&[
        ROOT,
        "role",
        "grant-permission",
        "--prefix=true",
        "app-reader",
        "readwrite",
        "/app/",
    ]);
    for m in 0..3 {
        let ep = c.members[m].client_url();
        let o = c.etcdctl_at(&ep, &[ALICE, "put", "/app/config", &format!("m{m}")]);
        assert!(o.status.success(), "member {m}: {}", text(&o));
    }

    // Everything survives a restart of every member (auth state is in the store).
    for m in &mut c.members {
        m.kill9();
    }
    let token = c.token.clone();
    for m in &mut c.members {
        m.spawn(&token);
    }
    c.wait_healthy(&[0, 1, 2]);
    wait_for(
        "a leader after restart",
        std::time::Duration::from_secs(30),
        || c.leader(),
    );
    refused(
        &c,
        &["get", "/app/config"],
        "etcdserver: user name is empty",
    );
    assert_eq!(
        c.ctl(&[ALICE, "get", "/app/config", "--print-value-only"])
            .trim(),
        "m2"
    );
    refused(
        &c,
        &[ALICE, "get", "/other/secret"],
        "etcdserver: permission denied",
    );

    // Password change: the old one stops working.
    // (etcdctl reads the new password from stdin with --interactive=false.)
    let mut child = std::process::Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={}", c.endpoints()),
            ROOT,
            "user",
            "passwd",
            "alice",
            "--interactive=false",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"newpw\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "passwd: {}", text(&o));
    refused(
        &c,
        &[ALICE, "get", "/app/config"],
        "etcdserver: authentication failed, invalid user ID or password",
    );
    assert!(c
        .ctl(&["--user=alice:newpw", "get", "/app/config"])
        .contains("m2"));

    // `auth disable` restores open access.
    assert!(c
        .ctl(&[ROOT, "auth", "disable"])
        .contains("Authentication Disabled"));
    assert_eq!(
        c.ctl(&["get", "/other/secret", "--print-value-only"])
            .trim(),
        "s2"
    );
    c.ctl(&["put", "/other/secret", "open"]);
    c.ctl(&["compaction", "3"]);
}

/// Users, roles and permissions reach a member that catches up by snapshot.
#[test]
fn auth_state_travels_in_snapshots() {
    let mut c = Cluster::start(3, &["--snapshot-count", "100", "--bcrypt-cost", "4"]);
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let token = c.token.clone();
    c.members[follower].kill9();
    let applied_at_kill = c.members[leader]
        .metric("phalanx_raft_applied_index")
        .unwrap();
    c.ctl(&["user", "add", "root:rootpw"]);
    c.ctl(&["user", "add", "bob:bobpw"]);
    c.ctl(&["role", "add", "w"]);
    c.ctl(&[
        "role",
        "grant-permission",
        "--prefix=true",
        "w",
        "readwrite",
        "sn",
    ]);
    c.ctl(&["user", "grant-role", "bob", "w"]);
    let mut w = Writer::start("sn", c.endpoint_list());
    w.wait_acked(300, std::time::Duration::from_secs(60));
    w.stop();
    c.ctl(&["auth", "enable"]);
    wait_for(
        "leader to compact its log",
        std::time::Duration::from_secs(30),
        || (c.members[leader].metric("phalanx_raft_purged_index")? > applied_at_kill).then_some(()),
    );
    c.members[follower].spawn(&token);
    c.wait_healthy(&[follower]);
    let leader_applied = c.members[leader]
        .metric("phalanx_raft_applied_index")
        .unwrap();
    wait_for(
        "follower to catch up",
        std::time::Duration::from_secs(30),
        || {
            (c.members[follower].metric("phalanx_raft_applied_index")? >= leader_applied)
                .then_some(())
        },
    );
    let snap = c.members[follower]
        .metric("phalanx_raft_snapshot_index")
        .unwrap();
    assert!(snap > applied_at_kill, "caught up by snapshot");
    // The follower alone, serializable reads: its own auth state decides.
    let ep = c.members[follower].client_url();
    let o = c.etcdctl_at(
        &ep,
        &[
            "--user=bob:bobpw",
            "get",
            "sn",
            "--prefix",
            "--limit=1",
            "--consistency=s",
        ],
    );
    assert!(o.status.success(), "bob on the follower: {}", text(&o));
    let o = c.etcdctl_at(&ep, &["--user=bob:bobpw", "get", "x", "--consistency=s"]);
    assert!(
        text(&o).contains("etcdserver: permission denied"),
        "{}",
        text(&o)
    );
    let o = c.etcdctl_at(&ep, &["get", "sn", "--prefix", "--consistency=s"]);
    assert!(
        text(&o).contains("etcdserver: user name is empty"),
        "{}",
        text(&o)
    );
}
