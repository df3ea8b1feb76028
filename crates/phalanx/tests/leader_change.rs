//! Watches and leases across a leader change (kill -9 of the leader).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use support::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn watch_delivers_every_change_once_in_order_across_leader_kill() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let follower_url = c.members[follower].client_url();
    let rt = rt();
    // Watch from a follower, from the beginning of history.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch_url = follower_url.clone();
    rt.spawn(async move {
        let mut cl = Client::connect(vec![watch_url], None).await.unwrap();
        let mut stream = cl
            .watch(
                "wl-",
                Some(WatchOptions::new().with_prefix().with_start_revision(1)),
            )
            .await
            .unwrap();
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events() {
                let kv = ev.kv().unwrap();
                let _ = events_tx.send((
                    kv.mod_revision(),
                    ev.event_type() == EventType::Put,
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                ));
            }
        }
    });
    let mut w = Writer::start("wl", c.endpoint_list());
    w.wait_acked(100, Duration::from_secs(30));
    c.members[leader].kill9();
    *w.endpoints.lock().unwrap() = c.endpoint_list();
    wait_for("a new leader", Duration::from_secs(20), || {
        c.leader().filter(|l| *l != leader)
    });
    let n = w.acked_count();
    w.wait_acked(n + 100, Duration::from_secs(30));
    let acked = w.stop();

    // Final state, read linearizably: every committed write to the prefix.
    let (final_rev, committed) = rt.block_on(async {
        let mut cl = Client::connect(vec![follower_url.clone()], None)
            .await
            .unwrap();
        let r = cl
            .get("wl-", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let committed: BTreeMap<i64, (String, String)> = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.mod_revision(),
                    (
                        kv.key_str().unwrap().to_string(),
                        kv.value_str().unwrap().to_string(),
                    ),
                )
            })
            .collect();
        (r.header().unwrap().revision(), committed)
    });
    let mut seen: Vec<(i64, bool, String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen
        .last()
        .is_none_or(|e| e.0 < *committed.keys().last().unwrap())
    {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "watch did not deliver up to revision {final_rev}; got {} events",
            seen.len()
        );
        if let Ok(Some(e)) =
            rt.block_on(async { tokio::time::timeout(left, events_rx.recv()).await })
        {
            seen.push(e);
        }
    }
    // In revision order, no duplicates.
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "watch events out of order or duplicated"
    );
    // Every committed write (each key written once) was delivered, with its value.
    let delivered: BTreeMap<i64, (String, String)> = seen
        .iter()
        .filter(|e| e.1)
        .map(|e| (e.0, (e.2.clone(), e.3.clone())))
        .collect();
    for (rev, kv) in &committed {
        assert_eq!(
            delivered.get(rev),
            Some(kv),
            "committed write at revision {rev} missing from the watch"
        );
    }
    assert_eq!(
        delivered.len(),
        committed.len(),
        "watch delivered writes that are not committed"
    );
    for (n, _) in &acked {
        assert!(
            committed.values().any(|(k, _)| *k == format!("wl-{n:08}")),
            "acknowledged write {n} lost"
        );
    }
    println!(
        "watch across leader kill: {} events, in order, none lost or duplicated",
        seen.len()
    );
}

#[test]
fn kept_alive_lease_survives_leader_kill_and_expires_after() {
    let mut c = Cluster::start(3, &[]);
    let rt = rt();
    let eps = c.endpoint_list();
    let ttl = 4;
    let id = rt.block_on(async {
        let mut cl = Client::connect(eps.clone(), None).await.unwrap();
        let id = cl.lease_grant(ttl, None).await.unwrap().id();
        cl.put("leased-key", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        id
    });
    // Keep the lease alive every second, reconnecting across failures.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, eps2) = (stop.clone(), eps.clone());
    let keeper = rt.spawn(async move {
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut cl) = Client::connect(eps2.clone(), None).await {
                if let Ok((mut k, mut stream)) = cl.lease_keep_alive(id).await {
                    while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                        if k.keep_alive().await.is_err() {
                            break;
                        }
                        match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                            Ok(Ok(Some(_))) => tokio::time::sleep(Duration::from_millis(800)).await,
                            _ => break,
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let leader = c.wait_leader();
    c.members[leader].kill9();
    wait_for("a new leader", Duration::from_secs(20), || {
        c.leader().filter(|l| *l != leader)
    });
    let live: Vec<String> = c.endpoint_list();
    // Two full TTLs after the kill, the key is still there.
    let until = Instant::now() + Duration::from_secs(2 * ttl as u64);
    rt.block_on(async {
        let mut cl = Client::connect(live.clone(), None).await.unwrap();
        while Instant::now() < until {
            let r = cl.get("leased-key", None).await.unwrap();
            assert_eq!(
                r.kvs().len(),
                1,
                "a kept-alive lease expired early after a leader change"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(keeper).unwrap();
    let stopped = Instant::now();
    wait_for(
        "the lease to expire once no longer kept alive",
        Duration::from_secs(20),
        || {
            rt.block_on(async {
                let mut cl = Client::connect(live.clone(), None).await.ok()?;
                let r = cl.get("leased-key", None).await.ok()?;
                r.kvs().is_empty().then_some(())
            })
        },
    );
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(ttl as u64 - 2),
        "lease expired {took:?} after the last keep-alive, before its TTL"
    );
    println!("lease across leader kill: kept alive for {}s past the kill; expired {} ms after keep-alives stopped (TTL {ttl}s)", 2 * ttl, took.as_millis());
}
