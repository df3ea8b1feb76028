mod common;
use common::*;
use mvcc::consts::*;
use mvcc::*;

fn workload() -> Vec<Command> {
    let mut v = vec![Command::LeaseGrant {
        id: 42,
        ttl_seconds: 30,
    }];
    for i in 0..20 {
        v.push(Command::put(&put_req(
            &format!("k{}", i % 5),
            &format!("v{i}"),
        )));
    }
    v.push(Command::delete_range(&PbDeleteRequest {
        key: "k1".into(),
        ..Default::default()
    }));
    v.push(Command::put(&PbPutRequest {
        key: "leased".into(),
        value: "x".into(),
        lease: 42,
        ..Default::default()
    }));
    v.push(Command::delete_range(&PbDeleteRequest {
        key: "k2".into(),
        ..Default::default()
    }));
    v.push(Command::put(&put_req("k2", "again")));
    v
}

#[test]
fn compaction_semantics_and_hash() {
    let (_d1, s1) = store();
    let (_d2, s2) = store();
    let cmds: Vec<Option<Command>> = workload().into_iter().map(Some).collect();
    s1.apply_batch(&cmds, b"m", false).unwrap();
    // same commands, different batching
    for c in &cmds {
        s2.apply_batch(std::slice::from_ref(c), b"m", false)
            .unwrap();
    }
    assert_eq!(s1.current_revision(), 25);
    assert_eq!(s1.hash_kv(0).unwrap(), s2.hash_kv(0).unwrap());
    assert_eq!(s1.hash_kv(10).unwrap(), s2.hash_kv(10).unwrap());
    assert_ne!(s1.hash_kv(10).unwrap().0, s1.hash_kv(11).unwrap().0);
    assert_eq!(s1.hash_kv(0).unwrap().1, -1);
    assert_eq!(s1.hash_kv(26), Err(EtcdError::FutureRevision));

    // k1: deleted at 22 (tombstone); k2 deleted at 24, re-put at 25
    let c = apply(&s1, Command::Compact { revision: 24 });
    assert!(matches!(c.response, ApplyResponse::Compact(_)));
    assert_eq!(c.response.header_revision(), Some(25));
    assert_eq!(c.revision, 25);
    apply(&s2, Command::Compact { revision: 24 });
    assert_eq!(s1.compact_revision(), 24);
    assert_eq!(s1.hash_kv(0).unwrap(), s2.hash_kv(0).unwrap());
    assert_eq!(s1.hash_kv(0).unwrap().1, 24);
    assert_eq!(s1.hash_kv(23), Err(EtcdError::Compacted));
    assert_eq!(get_at(&s1, "k0", 23), Err(EtcdError::Compacted));
    // state at and after the compact revision is intact
    let all = |s: &Store, rev: i64| {
        let mut q = range_req("\0", "\0");
        q.revision = rev;
        s.range(&q).unwrap().kvs
    };
    let r24 = all(&s1, 24);
    assert_eq!(
        keys(&PbRangeResponse {
            kvs: r24.clone(),
            ..Default::default()
        }),
        ["k0", "k3", "k4", "leased"]
    );
    assert_eq!(all(&s1, 25).len(), 5);
    assert_eq!(get(&s1, "k2").unwrap().create_revision, 25);
    assert_eq!(get(&s1, "k0").unwrap().version, 4);
    // old versions are physically gone: only one revision per live key at <= 24
    let ev = s1.events(b"\0", b"\0", 24, 25, true, 1000).unwrap();
    // k2's tombstone at 24 was its newest revision <= 24, and tombstones are not kept
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kv.as_ref().unwrap().mod_revision, 25);
    assert!(ev[0].prev_kv.is_none());
    // everything <= 24 that survives: one version per live key (k0, k3, k4, leased)
    assert_eq!(
        s1.events(b"\0", b"\0", 24, 24, false, 1000).unwrap().len(),
        0
    );
    // errors
    assert_eq!(
        apply(&s1, Command::Compact { revision: 24 }).response,
        ApplyResponse::Error(EtcdError::Compacted)
    );
    assert_eq!(
        apply(&s1, Command::Compact { revision: 10 }).response,
        ApplyResponse::Error(EtcdError::Compacted)
    );
    assert_eq!(
        apply(&s1, Command::Compact { revision: 26 }).response,
        ApplyResponse::Error(EtcdError::FutureRevision)
    );
    // compact again at current
    apply(&s1, Command::Compact { revision: 25 });
    assert_eq!(all(&s1, 25).len(), 5);
    assert_eq!(get(&s1, "leased").unwrap().lease, 42);
}

#[test]
fn compaction_drops_tombstones_and_superseded() {
    let (_d, s) = store();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    del(&s, "a", ""); // 4
    put(&s, "b", "1"); // 5
    put(&s, "b", "2"); // 6
    apply(&s, Command::Compact { revision: 5 });
    // a's history is gone completely; b keeps its version at 5 and 6
    let ev = s.events(b"\0", b"\0", 5, 6, true, 100).unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].prev_kv.as_ref().unwrap().value, b"1");
    assert!(get_at(&s, "a", 5).unwrap().is_none());
    assert_eq!(s.hash_kv(0).unwrap().2, 6);
    // a re-put starts from scratch
    put(&s, "a", "3");
    assert_eq!(get(&s, "a").unwrap().version, 1);
    // compacting at the first revision of an empty store works
    let (_d2, s2) = store();
    apply(&s2, Command::Compact { revision: 1 });
    assert_eq!(s2.compact_revision(), 1);
}

#[test]
fn leases_attach_move_revoke() {
    let (_d, s) = store();
    assert_eq!(
        put_lease(&s, "a", "1", 5).response,
        ApplyResponse::Error(EtcdError::LeaseNotFound)
    );
    let g = apply(
        &s,
        Command::LeaseGrant {
            id: 5,
            ttl_seconds: 60,
        },
    );
    let ApplyResponse::LeaseGrant(gr) = &g.response else {
        panic!()
    };
    assert_eq!(
        (gr.id, gr.ttl, gr.header.as_ref().unwrap().revision),
        (5, 60, 1)
    );
    assert_eq!(g.revision, 1, "lease grant does not bump the revision");
    assert_eq!(
        apply(
            &s,
            Command::LeaseGrant {
                id: 5,
                ttl_seconds: 1
            }
        )
        .response,
        ApplyResponse::Error(EtcdError::LeaseExists)
    );
    assert_eq!(
        apply(
            &s,
            Command::LeaseGrant {
                id: 6,
                ttl_seconds: MAX_LEASE_TTL + 1
            }
        )
        .response,
        ApplyResponse::Error(EtcdError::TtlTooLarge)
    );
    apply(
        &s,
        Command::LeaseGrant {
            id: 6,
            ttl_seconds: 10,
        },
    );
    put_lease(&s, "a", "1", 5); // 2
    put_lease(&s, "b", "1", 5); // 3
    put_lease(&s, "c", "1", 5); // 4
    put_lease(&s, "c", "2", 6); // 5 moves c to lease 6
    put(&s, "b", "2"); // 6 detaches b
    assert_eq!(s.lease(5).unwrap().keys, vec![b"a".to_vec()]);
    assert_eq!(
        s.lease(6).unwrap(),
        LeaseInfo {
            id: 6,
            ttl_seconds: 10,
            keys: vec![b"c".to_vec()]
        }
    );
    assert_eq!(s.leases().iter().map(|l| l.id).collect::<Vec<_>>(), [5, 6]);
    put_lease(&s, "d", "1", 6); // 7
    put_lease(&s, "e", "1", 6); // 8
    del(&s, "e", ""); // 9 detaches e
    let r = apply(&s, Command::LeaseRevoke { id: 6 });
    assert!(matches!(r.response, ApplyResponse::LeaseRevoke(_)));
    assert_eq!(r.revision, 10);
    assert_eq!(r.response.header_revision(), Some(10));
    assert_eq!(r.events.len(), 2);
    assert!(r
        .events
        .iter()
        .all(|e| e.r#type == EVENT_DELETE && e.kv.as_ref().unwrap().mod_revision == 10));
    assert_eq!(r.events[0].kv.as_ref().unwrap().key, b"c");
    assert_eq!(r.events[1].kv.as_ref().unwrap().key, b"d");
    assert_eq!(r.events[0].prev_kv.as_ref().unwrap().lease, 6);
    assert!(get(&s, "c").is_none() && get(&s, "d").is_none());
    assert!(s.lease(6).is_none());
    assert_eq!(
        apply(&s, Command::LeaseRevoke { id: 6 }).response,
        ApplyResponse::Error(EtcdError::LeaseNotFound)
    );
    // revoking a lease without keys does not bump the revision
    apply(
        &s,
        Command::LeaseGrant {
            id: 7,
            ttl_seconds: 10,
        },
    );
    assert_eq!(apply(&s, Command::LeaseRevoke { id: 7 }).revision, 10);
    assert_eq!(
        apply(
            &s,
            Command::LeaseGrant {
                id: 0,
                ttl_seconds: 10
            }
        )
        .response,
        ApplyResponse::Error(EtcdError::LeaseNotFound)
    );
}

#[test]
fn events_replay() {
    let (_d, s) = store();
    put(&s, "a", "1"); // 2
    put(&s, "b", "1"); // 3
    put(&s, "a", "2"); // 4
    del(&s, "a", ""); // 5
    let t = PbTxnRequest {
        success: vec![
            PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(put_req("a", "3"))),
            },
            PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(put_req("b", "2"))),
            },
        ],
        ..Default::default()
    };
    apply(&s, Command::txn(&t)); // 6 (two events)
    put(&s, "c", "1"); // 7

    let ev = s.events(b"a", b"", 1, 100, true, 100).unwrap();
    let desc: Vec<_> = ev
        .iter()
        .map(|e| (e.r#type, e.kv.as_ref().unwrap().mod_revision))
        .collect();
    assert_eq!(
        desc,
        [
            (EVENT_PUT, 2),
            (EVENT_PUT, 4),
            (EVENT_DELETE, 5),
            (EVENT_PUT, 6)
        ]
    );
    assert!(ev[0].prev_kv.is_none());
    assert_eq!(ev[1].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(ev[2].prev_kv.as_ref().unwrap().value, b"2");
    assert!(ev[3].prev_kv.is_none(), "previous was a tombstone");
    let no_prev = s.events(b"a", b"", 1, 100, false, 100).unwrap();
    assert!(no_prev.iter().all(|e| e.prev_kv.is_none()));
    // range and window
    let ev = s.events(b"b", b"\0", 3, 6, false, 100).unwrap();
    assert_eq!(
        ev.iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect::<Vec<_>>(),
        [3, 6]
    );
    // limit never splits a revision
    let all = s.events(b"\0", b"\0", 1, 100, false, 100).unwrap();
    assert_eq!(all.len(), 7);
    let first = s.events(b"\0", b"\0", 1, 100, false, 5).unwrap();
    assert_eq!(first.len(), 6, "rev 6 has two events; both are included");
    let next = s.events(b"\0", b"\0", 7, 100, false, 5).unwrap();
    assert_eq!(next.len(), 1);
    let two = s.events(b"\0", b"\0", 1, 100, false, 4).unwrap();
    assert_eq!(two.len(), 4);
    // the events applied equal the replayed ones (with prev_kv)
    let (_d2, s2) = store();
    let mut applied = Vec::new();
    for c in [put_req("x", "1"), put_req("x", "2")] {
        applied.extend(apply(&s2, Command::put(&c)).events);
    }
    applied.extend(del(&s2, "x", "").events);
    assert_eq!(applied, s2.events(b"x", b"", 0, 100, true, 100).unwrap());
    // compaction rule: start < compact -> Compacted; start == compact is allowed
    apply(&s, Command::Compact { revision: 5 });
    assert!(matches!(
        s.events(b"a", b"", 4, 100, false, 10),
        Err(MvccError::Etcd(EtcdError::Compacted))
    ));
    let ev = s.events(b"\0", b"\0", 5, 100, true, 10).unwrap();
    assert_eq!(
        ev.iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect::<Vec<_>>(),
        [6, 6, 7]
    );
    assert_eq!(
        ev[1].prev_kv.as_ref().unwrap().value,
        b"1",
        "b@3 survives compaction as b's latest <= 5"
    );
    // start beyond current: nothing
    assert!(s
        .events(b"\0", b"\0", 8, 100, false, 10)
        .unwrap()
        .is_empty());
}
