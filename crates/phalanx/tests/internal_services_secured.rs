//! The member's own services on a fully secured cluster: https-only client
//! listeners, `--client-cert-auth`, peer TLS and auth enabled. Alerting,
//! scheduled backups and the store-backed gateway reach the store through
//! the member's in-process channel (no certificate, no password given to
//! them): the leader keeps evaluating the default rules (`up` for every
//! member, then `PhalanxMemberDown` for a killed one, kept in the store),
//! the leader takes the scheduled backup (a snapshot, root-only), and the
//! gateway reports its status in the store.

mod support;

use std::time::Duration;

use support::alerts::{get_json, up_values};
use support::backups::{keygen, ok, phalanx};
use support::certs::*;
use support::{free_port, wait_for, Cluster};

/// The alert states the leader keeps in the store, as its API serves them.
fn alerts(api_port: u16) -> Option<serde_json::Value> {
    get_json(api_port, "/api/v1/alerts")
}

#[test]
fn alerting_backups_and_gateway_work_with_tls_only_client_cert_auth_and_auth_on() {
    let api: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let gateway_port = free_port();
    let mut c = Cluster::plan(3, |_| Vec::new());
    c.set_schemes("https", "https");
    let ca = TestCa::new(c.dir.path(), "ca");
    for (i, m) in c.members.iter_mut().enumerate() {
        let own = ca.issue(&m.name.clone(), i as u64 + 1, 30);
        m.extra_args = member_tls_flags(&ca.ca_file, &own);
        m.extra_args.extend(
            [
                "--bcrypt-cost",
                "4",
                "--alerting-listen",
                &format!("127.0.0.1:{}", api[i]),
                "--alerting-scrape-interval-ms",
                "500",
                "--alerting-evaluation-interval-ms",
                "500",
            ]
            .map(String::from),
        );
    }
    c.members[0].extra_args.extend([
        "--gateway-listen".to_string(),
        format!("127.0.0.1:{gateway_port}"),
    ]);
    c.start_all();

    // Auth on, through etcdctl with a client certificate and root's password.
    let root_cert = ca.issue("root", 100, 30);
    let tls = tls_args(&ca.ca_file, Some(&root_cert));
    let eps = c.endpoints();
    ctl_ok(&eps, &tls, &["user", "add", "root:rootpw"]);
    ctl_ok(&eps, &tls, &["auth", "enable"]);
    let mut root = tls.clone();
    root.push("--user=root:rootpw".into());
    // A certificate whose CN is no user gets nothing from the store.
    let stranger = tls_args(&ca.ca_file, Some(&ca.issue("stranger", 101, 30)));
    let out = etcdctl(&eps, &stranger, &["get", "--prefix", "/phalanx/"]);
    assert!(!out.status.success(), "a stranger read the store");

    // The leader evaluates: every member up, in its history, with auth on.
    let leader = c.wait_leader();
    wait_for(
        "the leader's history to hold up == 1 for 3 members",
        Duration::from_secs(30),
        || {
            let v = up_values(api[leader])?;
            (v.len() == 3 && v.iter().all(|(_, x)| x == "1")).then_some(())
        },
    );
    // Its API reads the alert state back from the store through the
    // member's own channel, auth on.
    wait_for(
        "the alert state from the store",
        Duration::from_secs(15),
        || (alerts(api[leader])?["status"] == "success").then_some(()),
    );

    // The gateway on member 1 follows its configuration in the store and
    // reports each outcome there, all through its member's channel: a
    // document written now, with auth on, is applied and reported.
    let doc = "[[pools]]\nname = \"p\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\npool = \"p\"\n";
    ctl_ok(&eps, &root, &["put", "/phalanx/gateway/config", doc]);
    wait_for(
        "the gateway's 'applied' status in the store",
        Duration::from_secs(15),
        || {
            let out = etcdctl(
                &eps,
                &root,
                &[
                    "get",
                    "--print-value-only",
                    "/phalanx/gateway/config/status/n1",
                ],
            );
            let status = String::from_utf8_lossy(&out.stdout).to_string();
            status.contains("\"state\":\"applied\"").then_some(())
        },
    );

    // A scheduled backup: set by the operator's tool with its own TLS and
    // credentials; taken by the leader's backup service (Maintenance.Snapshot,
    // root-only with auth on) through its member's channel.
    let (_key, public) = keygen(c.dir.path());
    let repo = format!("file://{}", c.dir.path().join("repo").display());
    let mut args: Vec<String> = [
        "backup",
        "schedule",
        "set",
        "--endpoints",
        &eps,
        "--to",
        &repo,
        "--recipient",
        &public,
        "--backup-interval-ms",
        "3600000",
        "--cacert",
    ]
    .map(String::from)
    .to_vec();
    args.push(ca.ca_file.display().to_string());
    args.extend(["--cert".into(), root_cert.cert.display().to_string()]);
    args.extend(["--key".into(), root_cert.key.display().to_string()]);
    args.extend(["--user".into(), "root:rootpw".into()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(phalanx(&a, &[]));
    wait_for(
        "the scheduled backup in the repository",
        Duration::from_secs(60),
        || {
            let out = phalanx(&["backup", "list", "--json", "--from", &repo], &[]);
            (out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"id\""))
                .then_some(())
        },
    );

    // kill -9 a follower: the default PhalanxMemberDown rule catches it and
    // the leader keeps the alert in the store.
    let victim = (0..3).find(|&i| i != leader).unwrap();
    let vname = c.members[victim].name.clone();
    c.members[victim].kill9();
    wait_for(
        "PhalanxMemberDown firing for the killed member",
        Duration::from_secs(30),
        || {
            let v = alerts(api[leader])?;
            v["data"]["alerts"]
                .as_array()?
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "PhalanxMemberDown"
                        && a["labels"]["member"] == vname.as_str()
                        && a["state"] == "firing"
                })
                .then_some(())
        },
    );

    for m in &c.members {
        let log = m.log_text();
        for bad in [
            "evaluation round failed",
            "UnknownCA",
            "client listener: refused",
        ] {
            assert!(!log.contains(bad), "{}: {bad:?} in its log:\n{log}", m.name);
        }
    }
}
