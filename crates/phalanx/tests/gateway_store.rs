//! Store-backed gateways: a 3-member cluster where every member runs a
//! gateway (`--gateway-listen`) whose configuration lives in the replicated
//! store; real sample backends; configuration changes under load; invalid
//! configurations rejected with a visible reason; kill -9 of a member.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::sample_backend::{self, SampleBackend};
use support::*;

const KEY: &str = "/phalanx/gateway/config";

/// A cluster whose member `i` runs a gateway on `gw_ports[i]`.
fn start_cluster_with_gateways(n: usize) -> (Cluster, Vec<u16>) {
    let gw_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let c = Cluster::start_with(n, |i| {
        vec![
            "--gateway-listen".into(),
            format!("127.0.0.1:{}", gw_ports[i]),
            "--gateway-admin-listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ]
    });
    (c, gw_ports)
}

fn config_toml(backends: &[&SampleBackend]) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.local_addr()))
        .collect();
    format!(
        "[[pools]]\nname = \"web\"\nendpoints = [{}]\n\n[[routes]]\npath_prefix = \"/\"\npool = \"web\"\n",
        eps.join(", ")
    )
}

/// `etcdctl put`, returning the revision of the write.
fn put(c: &Cluster, value: &str) -> i64 {
    let out = c.ctl(&["put", KEY, value, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

/// Status documents of all gateways, by node name.
fn statuses(c: &Cluster) -> std::collections::HashMap<String, serde_json::Value> {
    let out = c.etcdctl(&[
        "get",
        "--prefix",
        &format!("{KEY}/status/"),
        "--print-value-only",
    ]);
    if !out.status.success() {
        return Default::default();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["node"].as_str().unwrap_or("").to_string(), v))
        .collect()
}

/// Wait until the gateways of `nodes` report a status about revision `rev` with `state`.
fn wait_status(c: &Cluster, nodes: &[usize], rev: i64, state: &str) -> Vec<serde_json::Value> {
    wait_for(
        &format!("gateway status {state} at revision {rev}"),
        Duration::from_secs(30),
        || {
            let st = statuses(c);
            let mut out = Vec::new();
            for &i in nodes {
                let s = st.get(&c.members[i].name)?;
                if s["revision"].as_i64()? != rev || s["state"].as_str()? != state {
                    return None;
                }
                out.push(s.clone());
            }
            Some(out)
        },
    )
}

/// Wait until GETs through the gateway on `port` have been answered by every backend named.
fn wait_backends_seen(port: u16, names: &[&str]) {
    let mut seen = std::collections::HashSet::new();
    wait_for(
        &format!("gateway :{port} to route to {names:?}"),
        Duration::from_secs(30),
        || {
            if let Some((200, body)) = http_get(port, "/") {
                seen.insert(body.trim().to_string());
            }
            names.iter().all(|n| seen.contains(*n)).then_some(())
        },
    );
}

/// Background HTTP load through the given gateways; counts non-200 answers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(ports: Vec<u16>, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, ok, errors, ports) =
                    (stop.clone(), ok.clone(), errors.clone(), ports.clone());
                std::thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let port = ports[i % ports.len()];
                        i += 1;
                        match http_get(port, "/") {
                            Some((200, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => errors
                                .lock()
                                .unwrap()
                                .push(format!("gateway :{port}: {other:?}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            errors,
            threads,
        }
    }

    fn wait_ok(&self, more: u64) {
        let target = self.ok.load(Ordering::Relaxed) + more;
        wait_for(
            &format!("{more} more successful requests"),
            Duration::from_secs(30),
            || (self.ok.load(Ordering::Relaxed) >= target).then_some(()),
        );
    }

    /// Stop; returns (successes, errors).
    fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.lock().unwrap().clone(),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn store_backed_gateways_follow_the_store_on_every_node() {
    let (mut c, gw) = start_cluster_with_gateways(3);
    // Backends live in this test's runtime (its worker thread serves them).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let spawn = |name: &str| {
        rt.block_on(sample_backend::spawn("127.0.0.1:0".parse().unwrap(), name))
            .unwrap()
    };
    let (a, b) = (spawn("a"), spawn("b"));

    // Key absent: every gateway answers 503 "no route".
    for &p in &gw {
        wait_for(
            &format!("gateway :{p} answering 503"),
            Duration::from_secs(30),
            || match http_get(p, "/") {
                Some((503, body)) if body.contains("no route") => Some(()),
                _ => None,
            },
        );
    }

    // Write the configuration: every gateway routes to both backends.
    let rev = put(&c, &config_toml(&[&a, &b]));
    for &p in &gw {
        wait_backends_seen(p, &["a", "b"]);
    }
    wait_status(&c, &[0, 1, 2], rev, "applied");

    // Add, then remove an endpoint under load: zero errors.
    let load = Load::start(gw.clone(), 3);
    load.wait_ok(100);
    let cb = spawn("c");
    let rev = put(&c, &config_toml(&[&a, &b, &cb]));
    for &p in &gw {
        wait_backends_seen(p, &["a", "b", "c"]);
    }
    wait_status(&c, &[0, 1, 2], rev, "applied");
    load.wait_ok(100);
    let rev = put(&c, &config_toml(&[&a, &cb]));
    wait_status(&c, &[0, 1, 2], rev, "applied");
    // b is out of rotation everywhere: once its in-flight requests have
    // drained, its request count stops moving.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let before = b.requests();
        load.wait_ok(50);
        if b.requests() == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "removed endpoint b kept receiving requests for 10 s"
        );
    }
    let b_before = b.requests();
    load.wait_ok(200);
    assert_eq!(
        b.requests(),
        b_before,
        "removed endpoint b still receives requests"
    );
    let (ok, errors) = load.stop();
    assert!(
        errors.is_empty(),
        "{} errors during add/remove under load ({ok} ok), e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    println!("add/remove endpoint under load: {ok} requests, 0 errors");

    // Invalid configurations are rejected with a reason; the old one keeps serving.
    let rev = put(&c, "[[pools]\nname = \"web\"\n");
    for s in wait_status(&c, &[0, 1, 2], rev, "rejected") {
        let e = s["error"].as_str().unwrap();
        assert!(e.contains("syntax"), "unclear rejection reason: {e}");
    }
    let bad = config_toml(&[&a, &cb]).replace(
        &format!("\"{}\"", a.local_addr()),
        &format!("{{ address = \"{}\", weight = 0 }}", a.local_addr()),
    );
    let rev = put(&c, &bad);
    let st = wait_status(&c, &[0, 1, 2], rev, "rejected");
    for s in &st {
        let e = s["error"].as_str().unwrap();
        assert!(
            e.contains("pools[0].endpoints[0].weight") && e.contains("between 1 and 10000"),
            "unclear rejection reason: {e}"
        );
        assert!(s["in_force_revision"].as_i64().unwrap() < rev);
    }
    println!("rejection visible in the store: {}", st[0]);
    assert!(
        wait_for("rejection in a member log", Duration::from_secs(10), || {
            let l = c.members[0].log_text();
            l.contains("rejected").then_some(l)
        })
        .contains("pools[0].endpoints[0].weight")
    );
    for &p in &gw {
        wait_backends_seen(p, &["a", "c"]);
    }

    // kill -9 the leader: the other gateways keep serving without an error,
    // and still follow the store.
    let leader = c.wait_leader();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let load = Load::start(survivors.iter().map(|&i| gw[i]).collect(), 2);
    load.wait_ok(100);
    c.members[leader].kill9();
    load.wait_ok(300);
    let rev = wait_for(
        "a write after the leader kill",
        Duration::from_secs(30),
        || {
            let out = c.etcdctl(&["put", KEY, &config_toml(&[&a, &b]), "-w", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["header"]["revision"].as_i64()
        },
    );
    wait_status(&c, &survivors, rev, "applied");
    for &i in &survivors {
        wait_backends_seen(gw[i], &["a", "b"]);
    }
    load.wait_ok(100);
    let (ok, errors) = load.stop();
    assert!(
        errors.is_empty(),
        "{} errors through surviving gateways ({ok} ok), e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    println!(
        "kill -9 of the leader {}: {ok} requests through the other gateways, 0 errors",
        c.members[leader].name
    );
}
