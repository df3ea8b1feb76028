//! Locks and elections: etcdctl's `lock` and `elect` (etcd's client-side
//! recipes over KV, Watch and Lease), the server-side Lock and Election
//! services (through the etcd-client crate), and the lock key's revision
//! used as a fencing token by a small storage service that refuses stale
//! tokens, with the Raft leader killed while the lock is contended.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, LockOptions, ProclaimOptions, ResignOptions};
use support::*;

/// `etcdctl lock`: three contenders run a critical section each; the
/// sections never overlap, and ETCD_LOCK_REV grows from holder to holder.
#[test]
fn etcdctl_lock_one_holder_at_a_time_and_elect_hands_over() {
    let c = Cluster::start(3, &[]);
    let log = c.dir.path().join("cs.log");
    let script = format!(
        "echo \"S $ETCD_LOCK_REV $(date +%s%N)\" >> {l}; sleep 0.4; echo \"E $ETCD_LOCK_REV $(date +%s%N)\" >> {l}",
        l = log.display()
    );
    let eps = c.endpoint_list();
    let children: Vec<_> = (0..3)
        .map(|i| {
            Command::new(etcdctl_path())
                .env("ETCDCTL_API", "3")
                .args([
                    &format!("--endpoints={}", eps[i]),
                    "lock",
                    "job-lock",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for ch in children {
        let o = ch.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "etcdctl lock: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(String, i64, u128)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(lines.len(), 6, "{text}");
    let mut last_rev = 0;
    for pair in lines.chunks(2) {
        assert_eq!(
            (pair[0].0.as_str(), pair[1].0.as_str()),
            ("S", "E"),
            "overlapping critical sections:\n{text}"
        );
        assert_eq!(pair[0].1, pair[1].1, "{text}");
        assert!(pair[0].1 > last_rev, "lock revisions must grow:\n{text}");
        last_rev = pair[0].1;
    }

    // `etcdctl elect`: p1 leads, p2 waits; an observer sees p1; p1 resigns
    // (SIGINT: etcdctl closes its session) and p2 takes over.
    let spawn_elect = |ep: &str, args: &[&str]| {
        Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .arg("elect")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut p1 = spawn_elect(&eps[0], &["leader-election", "p1"]);
    let p1_out = read_lines(p1.stdout.take().unwrap());
    wait_for("p1 to lead", Duration::from_secs(10), || {
        p1_out
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "p1")
            .then_some(())
    });
    let mut p2 = spawn_elect(&eps[1], &["leader-election", "p2"]);
    let p2_out = read_lines(p2.stdout.take().unwrap());
    let mut obs = spawn_elect(&eps[2], &["-l", "leader-election"]);
    let obs_out = read_lines(obs.stdout.take().unwrap());
    wait_for("the observer to see p1", Duration::from_secs(10), || {
        obs_out
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "p1")
            .then_some(())
    });
    // Once p2's candidate key is in the store, p2 is waiting its turn.
    wait_for("p2's candidate key", Duration::from_secs(10), || {
        let out = c.etcdctl(&["get", "--prefix", "leader-election", "--keys-only"]);
        let keys = String::from_utf8_lossy(&out.stdout);
        (keys.lines().filter(|l| !l.is_empty()).count() == 2).then_some(())
    });
    assert!(
        !p2_out.lock().unwrap().iter().any(|l| l == "p2"),
        "p2 led while p1 did"
    );
    drill::cluster::signal(p1.id(), "INT").expect("SIGINT to p1");
    p1.wait().unwrap();
    wait_for(
        "p2 to lead after p1 resigned",
        Duration::from_secs(15),
        || {
            p2_out
                .lock()
                .unwrap()
                .iter()
                .any(|l| l == "p2")
                .then_some(())
        },
    );
    wait_for("the observer to see p2", Duration::from_secs(10), || {
        obs_out
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "p2")
            .then_some(())
    });
    for mut ch in [p2, obs] {
        let _ = ch.kill();
        let _ = ch.wait();
    }
}

/// Waits (bounded) until `n` keys exist under `prefix`: a contender whose
/// key is there is queued behind the holder.
async fn keys_under(c: &mut Client, prefix: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = c
            .get(
                prefix,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await
            .unwrap()
            .count();
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} keys under {prefix:?}, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_lines(out: std::process::ChildStdout) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            l2.lock().unwrap().push(l);
        }
    });
    lines
}

/// The storage a lock protects: it remembers the largest fencing token it
/// has seen and refuses writes carrying a smaller one.
#[derive(Default)]
struct FencedStorage {
    max_token: i64,
    data: BTreeMap<String, String>,
    refused: Vec<(i64, String)>,
}

impl FencedStorage {
    fn write(&mut self, token: i64, key: &str, value: &str) -> Result<(), String> {
        if token < self.max_token {
            self.refused.push((token, value.to_string()));
            return Err(format!("stale fencing token {token} < {}", self.max_token));
        }
        self.max_token = token;
        self.data.insert(key.into(), value.into());
        Ok(())
    }
}

/// The server-side Lock and Election services: one holder at a time, and
/// the lock key's create revision as a fencing token across a leader kill.
#[test]
fn lock_service_fencing_token_survives_leader_kill() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let url_a = c.members[followers[0]].client_url();
    let url_b = c.members[followers[1]].client_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut storage = FencedStorage::default();

    let (mut a, mut b, token_a, lock_b) = rt.block_on(async {
        let mut a = Client::connect([url_a.clone()], None).await.unwrap();
        let mut b = Client::connect([url_b.clone()], None).await.unwrap();
        // Election service: one leader, proclaim, observe, resign.
        let la = a.lease_grant(30, None).await.unwrap().id();
        let lb = b.lease_grant(30, None).await.unwrap().id();
        let ca = a.campaign("svc", "a", la).await.unwrap();
        let leader_a = ca.leader().unwrap().clone();
        let mut b2 = b.clone();
        let campaign_b = tokio::spawn(async move { b2.campaign("svc", "b", lb).await });
        keys_under(&mut b, "svc/", 2).await;
        assert!(!campaign_b.is_finished(), "two election leaders at once");
        let lr = b.leader("svc").await.unwrap();
        assert_eq!(lr.kv().unwrap().value(), b"a");
        a.proclaim(
            "a2",
            Some(ProclaimOptions::new().with_leader(leader_a.clone())),
        )
        .await
        .unwrap();
        assert_eq!(b.leader("svc").await.unwrap().kv().unwrap().value(), b"a2");
        a.resign(Some(ResignOptions::new().with_leader(leader_a.clone())))
            .await
            .unwrap();
        let cb = tokio::time::timeout(Duration::from_secs(10), campaign_b)
            .await
            .expect("b elected after a resigned")
            .unwrap()
            .unwrap();
        assert!(
            cb.leader().unwrap().rev() > leader_a.rev(),
            "election terms grow"
        );
        let e = a
            .proclaim("stale", Some(ProclaimOptions::new().with_leader(leader_a)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("election: not leader"), "{e}");

        // Lock service. A holds the lock with a short lease it never renews
        // (a client that will pause); B waits on another member.
        let lease_a = a.lease_grant(3, None).await.unwrap().id();
        let lease_b = b.lease_grant(60, None).await.unwrap().id();
        let la = a
            .lock("res", Some(LockOptions::new().with_lease(lease_a)))
            .await
            .unwrap();
        let token_a = la.header().unwrap().revision();
        let mut b2 = b.clone();
        let lock_b = tokio::spawn(async move {
            let r = b2
                .lock("res", Some(LockOptions::new().with_lease(lease_b)))
                .await;
            (r, Instant::now())
        });
        keys_under(&mut b, "res/", 2).await;
        assert!(!lock_b.is_finished(), "two lock holders at once");
        (a, b, token_a, lock_b)
    });
    storage
        .write(token_a, "x", "from A, holding the lock")
        .unwrap();

    // Kill the Raft leader while A holds the lock and B waits.
    c.members[leader].kill9();
    let killed_at = Instant::now();

    // A pauses (and sends no keep-alives); its lease ends under the new
    // leader, B gets the lock with a larger token.
    let (got_b, token_b) = rt.block_on(async {
        let (r, at) = tokio::time::timeout(Duration::from_secs(30), lock_b)
            .await
            .expect("B gets the lock after A's lease ends")
            .unwrap();
        let r = r.expect("B's Lock call");
        (at, r.header().unwrap().revision())
    });
    assert!(got_b > killed_at);
    assert!(
        token_b > token_a,
        "fencing tokens grow: {token_a} then {token_b}"
    );
    storage.write(token_b, "x", "from B").unwrap();

    // A wakes up, believes it still holds the lock, and writes: refused.
    let late = storage.write(token_a, "x", "from A, after its lease ended");
    assert!(late.is_err(), "a stale holder's write must be refused");
    assert_eq!(storage.data["x"], "from B");
    assert_eq!(storage.refused.len(), 1);

    // B unlocks; A (new lease) can lock again, with a larger token still.
    rt.block_on(async {
        let key_b = {
            let r = b
                .get("res/", Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .unwrap();
            assert_eq!(r.kvs().len(), 1, "only B's key remains");
            r.kvs()[0].key().to_vec()
        };
        b.unlock(key_b).await.unwrap();
        let lease = a.lease_grant(10, None).await.unwrap().id();
        let r = a
            .lock("res", Some(LockOptions::new().with_lease(lease)))
            .await
            .unwrap();
        assert!(r.header().unwrap().revision() > token_b);
    });
}
