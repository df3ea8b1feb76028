//! etcd's `checkLeasePuts`, end to end with Debian's etcdctl: a user may
//! attach a lease to a key, or revoke it, only with WRITE on every key the
//! lease holds (revoking deletes them). Decided when the entry is applied;
//! a refused revoke leaves the lease alive (keep-alives still work), an
//! allowed one ends its clock on the leader (keep-alives then fail).

mod support;

use std::process::Output;
use support::*;

const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(c: &Cluster, args: &[&str]) -> String {
    let o = c.etcdctl(args);
    assert!(o.status.success(), "etcdctl {args:?}: {}", text(&o));
    text(&o)
}

fn denied(c: &Cluster, args: &[&str]) {
    let o = c.etcdctl(args);
    let t = text(&o);
    assert!(
        !o.status.success() && t.contains("etcdserver: permission denied"),
        "etcdctl {args:?} was not refused: {t}"
    );
}

/// `lease grant` → the lease id (hex, as etcdctl prints and takes it).
fn grant(c: &Cluster, user: &str) -> String {
    let out = ok(c, &[user, "lease", "grant", "600"]);
    // "lease 694d77aa9e7e8f0e granted with TTL(600s)"
    out.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn attaching_or_revoking_a_lease_needs_write_on_all_its_keys() {
    let c = Cluster::start(1, &["--bcrypt-cost", "4"]);
    c.ctl(&["user", "add", "root:rootpw"]);
    c.ctl(&["role", "add", "app"]);
    c.ctl(&[
        "role",
        "grant-permission",
        "--prefix=true",
        "app",
        "readwrite",
        "/app/",
    ]);
    c.ctl(&["user", "add", "alice:alicepw"]);
    c.ctl(&["user", "grant-role", "alice", "app"]);
    c.ctl(&["auth", "enable"]);

    // A shared lease holding alice's key and one she may not write.
    let shared = grant(&c, ROOT);
    ok(
        &c,
        &[ALICE, "put", "/app/a", "1", &format!("--lease={shared}")],
    );
    ok(
        &c,
        &[ROOT, "put", "/secret", "s", &format!("--lease={shared}")],
    );

    // Alice can neither attach it to another key nor revoke it.
    denied(
        &c,
        &[ALICE, "put", "/app/b", "1", &format!("--lease={shared}")],
    );
    denied(&c, &[ALICE, "lease", "revoke", &shared]);
    // Still alive and kept alive; nothing deleted.
    ok(&c, &[ALICE, "lease", "keep-alive", "--once", &shared]);
    assert!(ok(&c, &[ROOT, "get", "/secret"]).contains("/secret\ns"));
    assert!(!ok(&c, &[ROOT, "get", "/app/b"]).contains("/app/b"));

    // Her own lease, holding only her keys: she attaches and revokes it.
    let own = grant(&c, ALICE);
    ok(
        &c,
        &[ALICE, "put", "/app/c", "1", &format!("--lease={own}")],
    );
    ok(&c, &[ALICE, "lease", "revoke", &own]);
    assert!(!ok(&c, &[ROOT, "get", "/app/c"]).contains("/app/c"));
    // Its clock is gone on the leader: a keep-alive finds no lease.
    let o = c.etcdctl(&[ALICE, "lease", "keep-alive", "--once", &own]);
    assert!(
        !o.status.success() && text(&o).contains("not found"),
        "keep-alive of a revoked lease: {}",
        text(&o)
    );

    // root may revoke the shared lease: both keys go.
    ok(&c, &[ROOT, "lease", "revoke", &shared]);
    assert!(!ok(&c, &[ROOT, "get", "--prefix", "/"]).contains("/secret"));
}
