//! Concurrent writes are batched into shared Raft entries (on every member,
//! for its own clients); each write must still land at its own revision,
//! answer with it, and be readable from every member.

mod support;

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use support::*;

const WRITERS: usize = 48;
const PUTS_PER_WRITER: usize = 20;

#[test]
fn concurrent_writes_on_every_member_each_get_their_own_revision() {
    // Alerting (on by default) writes its own keys through the members' proposals;
    // off here, so the proposal counters below count exactly this test's writes.
    let c = Cluster::start(3, &["--disable-alerting"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let endpoints = c.endpoint_list();
    let acked: BTreeMap<String, (String, i64)> = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            // Each writer talks to one member only, so every member batches.
            let ep = endpoints[w % endpoints.len()].clone();
            tasks.push(tokio::spawn(async move {
                let mut cl = Client::connect([ep], None).await.unwrap();
                let mut acked = Vec::new();
                for i in 0..PUTS_PER_WRITER {
                    let key = format!("batch/{w:02}/{i:02}");
                    let value = format!("v{w}-{i}");
                    if i % 5 == 4 {
                        // A transaction whose compare fails must fail alone,
                        // not take the rest of its batch with it.
                        let t = Txn::new()
                            .when([Compare::value(key.clone(), CompareOp::Equal, "never")])
                            .and_then([TxnOp::put(key.clone(), "wrong", None)])
                            .or_else([TxnOp::put(key.clone(), value.clone(), None)]);
                        let r = cl.txn(t).await.unwrap();
                        assert!(
                            !r.succeeded(),
                            "{key}: compare against a missing key succeeded"
                        );
                        acked.push((key, value, r.header().unwrap().revision()));
                    } else {
                        let r = cl.put(key.clone(), value.clone(), None).await.unwrap();
                        acked.push((key, value, r.header().unwrap().revision()));
                    }
                }
                acked
            }));
        }
        let mut all = BTreeMap::new();
        for t in tasks {
            for (k, v, rev) in t.await.unwrap() {
                all.insert(k, (v, rev));
            }
        }
        all
    });
    assert_eq!(acked.len(), WRITERS * PUTS_PER_WRITER);
    let mut revisions: Vec<i64> = acked.values().map(|(_, r)| *r).collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        acked.len(),
        "two acknowledged writes share a revision"
    );

    // Every member serves every write, at the revision it was acknowledged with.
    rt.block_on(async {
        for ep in &endpoints {
            let mut cl = Client::connect([ep.clone()], None).await.unwrap();
            let r = cl
                .get("batch/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            assert_eq!(
                r.kvs().len(),
                acked.len(),
                "{ep} sees a different number of keys"
            );
            for kv in r.kvs() {
                let (value, rev) = &acked[kv.key_str().unwrap()];
                assert_eq!(
                    kv.value_str().unwrap(),
                    value,
                    "{ep}: {}",
                    kv.key_str().unwrap()
                );
                assert_eq!(
                    kv.mod_revision(),
                    *rev,
                    "{ep}: {} mod_revision",
                    kv.key_str().unwrap()
                );
            }
        }
    });

    let entries: f64 = (0..3)
        .filter_map(|i| c.members[i].metric("phalanx_server_proposal_entries_total"))
        .sum();
    let commands: f64 = (0..3)
        .filter_map(|i| c.members[i].metric("phalanx_server_proposal_commands_total"))
        .sum();
    println!(
        "{} writes from {WRITERS} concurrent clients went into {entries} Raft entries ({:.1} writes per entry)",
        acked.len(),
        commands / entries.max(1.0)
    );
    assert_eq!(
        commands as usize,
        acked.len(),
        "every write was counted once by the member that proposed it"
    );
}
