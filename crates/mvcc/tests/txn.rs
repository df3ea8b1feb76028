mod common;
use common::*;
use etcd_client::proto::PbTargetUnion;
use mvcc::consts::*;
use mvcc::*;

fn cmp(key: &str, target: i32, result: i32, u: PbTargetUnion) -> PbCompare {
    PbCompare {
        key: key.into(),
        target,
        result,
        target_union: Some(u),
        range_end: vec![],
    }
}
fn op_put(k: &str, v: &str) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(put_req(k, v))),
    }
}
fn op_get(k: &str) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestRange(range_req(k, ""))),
    }
}
fn op_del(k: &str, end: &str) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: true,
        })),
    }
}
fn op_txn(t: PbTxnRequest) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestTxn(t)),
    }
}
fn txn(s: &Store, t: PbTxnRequest) -> (PbTxnResponse, Applied) {
    let a = apply(s, Command::txn(&t));
    match &a.response {
        ApplyResponse::Txn(r) => (r.clone(), a),
        other => panic!("{other:?}"),
    }
}

#[test]
fn compare_targets_and_results() {
    let (_d, s) = store();
    put(&s, "k", "v"); // create 2, mod 2, version 1
    put(&s, "k", "w"); // mod 3, version 2
    let check = |c: PbCompare| -> bool {
        let (r, _) = txn(
            &s,
            PbTxnRequest {
                compare: vec![c],
                ..Default::default()
            },
        );
        r.succeeded
    };
    assert!(check(cmp(
        "k",
        TARGET_VALUE,
        CMP_EQUAL,
        PbTargetUnion::Value(b"w".to_vec())
    )));
    assert!(!check(cmp(
        "k",
        TARGET_VALUE,
        CMP_EQUAL,
        PbTargetUnion::Value(b"v".to_vec())
    )));
    assert!(check(cmp(
        "k",
        TARGET_VALUE,
        CMP_GREATER,
        PbTargetUnion::Value(b"v".to_vec())
    )));
    assert!(check(cmp(
        "k",
        TARGET_VALUE,
        CMP_LESS,
        PbTargetUnion::Value(b"x".to_vec())
    )));
    assert!(check(cmp(
        "k",
        TARGET_VALUE,
        CMP_NOT_EQUAL,
        PbTargetUnion::Value(b"x".to_vec())
    )));
    assert!(check(cmp(
        "k",
        TARGET_VERSION,
        CMP_EQUAL,
        PbTargetUnion::Version(2)
    )));
    assert!(check(cmp(
        "k",
        TARGET_CREATE,
        CMP_EQUAL,
        PbTargetUnion::CreateRevision(2)
    )));
    assert!(check(cmp(
        "k",
        TARGET_MOD,
        CMP_EQUAL,
        PbTargetUnion::ModRevision(3)
    )));
    assert!(check(cmp(
        "k",
        TARGET_MOD,
        CMP_GREATER,
        PbTargetUnion::ModRevision(2)
    )));
    assert!(check(cmp(
        "k",
        TARGET_LEASE,
        CMP_EQUAL,
        PbTargetUnion::Lease(0)
    )));
    // missing key: version/create/mod compare against 0; value compares always fail
    assert!(check(cmp(
        "missing",
        TARGET_CREATE,
        CMP_EQUAL,
        PbTargetUnion::CreateRevision(0)
    )));
    assert!(check(cmp(
        "missing",
        TARGET_VERSION,
        CMP_LESS,
        PbTargetUnion::Version(1)
    )));
    assert!(!check(cmp(
        "missing",
        TARGET_VALUE,
        CMP_EQUAL,
        PbTargetUnion::Value(vec![])
    )));
    assert!(!check(cmp(
        "missing",
        TARGET_VALUE,
        CMP_NOT_EQUAL,
        PbTargetUnion::Value(b"x".to_vec())
    )));
    // read-only txns never bump the revision
    assert_eq!(s.current_revision(), 3);
}

#[test]
fn range_compare_requires_all_keys() {
    let (_d, s) = store();
    put(&s, "p/a", "1");
    put(&s, "p/b", "1");
    put(&s, "p/c", "2");
    let mut c = cmp(
        "p/",
        TARGET_VALUE,
        CMP_EQUAL,
        PbTargetUnion::Value(b"1".to_vec()),
    );
    c.range_end = b"p0".to_vec();
    let (r, _) = txn(
        &s,
        PbTxnRequest {
            compare: vec![c.clone()],
            ..Default::default()
        },
    );
    assert!(!r.succeeded);
    c.range_end = b"p/c".to_vec();
    let (r, _) = txn(
        &s,
        PbTxnRequest {
            compare: vec![c],
            ..Default::default()
        },
    );
    assert!(r.succeeded);
    let mut c = cmp("p/", TARGET_VERSION, CMP_GREATER, PbTargetUnion::Version(0));
    c.range_end = b"\0".to_vec();
    let (r, _) = txn(
        &s,
        PbTxnRequest {
            compare: vec![c],
            ..Default::default()
        },
    );
    assert!(r.succeeded);
}

#[test]
fn branches_responses_and_subrevisions() {
    let (_d, s) = store();
    put(&s, "a", "0"); // 2
    let t = PbTxnRequest {
        compare: vec![cmp(
            "a",
            TARGET_VALUE,
            CMP_EQUAL,
            PbTargetUnion::Value(b"0".to_vec()),
        )],
        success: vec![
            op_put("b", "1"),
            op_get("b"),
            op_put("c", "2"),
            op_del("a", ""),
        ],
        failure: vec![op_get("a")],
    };
    let (r, a) = txn(&s, t.clone());
    assert!(r.succeeded);
    assert_eq!(r.header.as_ref().unwrap().revision, 3);
    assert_eq!(a.revision, 3);
    assert_eq!(r.responses.len(), 4);
    // the range inside the txn sees the earlier put in the same txn
    let Some(PbTxnOpResponse::ResponseRange(rr)) = &r.responses[1].response else {
        panic!()
    };
    assert_eq!(rr.kvs[0].value, b"1");
    assert_eq!(rr.kvs[0].mod_revision, 3);
    let Some(PbTxnOpResponse::ResponseDeleteRange(dr)) = &r.responses[3].response else {
        panic!()
    };
    assert_eq!(dr.deleted, 1);
    // all changes share main revision 3, events in op order
    assert_eq!(a.events.len(), 3);
    assert_eq!(
        a.events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect::<Vec<_>>(),
        [3, 3, 3]
    );
    assert_eq!(a.events[2].r#type, EVENT_DELETE);
    assert_eq!(s.events(b"\0", b"\0", 3, 3, false, 100).unwrap().len(), 3);
    // failure branch now (a deleted): read-only, no bump
    let (r, a) = txn(&s, t);
    assert!(!r.succeeded);
    assert_eq!(a.revision, 3);
    let Some(PbTxnOpResponse::ResponseRange(rr)) = &r.responses[0].response else {
        panic!()
    };
    assert!(rr.kvs.is_empty());
    assert!(a.events.is_empty());
}

#[test]
fn nested_txn() {
    let (_d, s) = store();
    put(&s, "x", "1"); // 2
    let inner = PbTxnRequest {
        compare: vec![cmp(
            "x",
            TARGET_VERSION,
            CMP_EQUAL,
            PbTargetUnion::Version(1),
        )],
        success: vec![op_put("inner-then", "t")],
        failure: vec![op_put("inner-else", "e")],
    };
    let outer = PbTxnRequest {
        compare: vec![cmp(
            "x",
            TARGET_VALUE,
            CMP_EQUAL,
            PbTargetUnion::Value(b"1".to_vec()),
        )],
        // the nested compare is evaluated on the pre-txn state, like etcd (x still version 1)
        success: vec![op_put("x", "2"), op_txn(inner)],
        failure: vec![],
    };
    let (r, a) = txn(&s, outer);
    assert!(r.succeeded);
    let Some(PbTxnOpResponse::ResponseTxn(tr)) = &r.responses[1].response else {
        panic!()
    };
    assert!(tr.succeeded);
    assert!(get(&s, "inner-then").is_some());
    assert!(get(&s, "inner-else").is_none());
    assert_eq!(a.revision, 3);
    assert_eq!(a.events.len(), 2);
}

#[test]
fn txn_apply_errors_leave_no_trace() {
    let (_d, s) = store();
    put(&s, "a", "1");
    // put with an unknown lease in the chosen branch -> whole txn fails
    let t = PbTxnRequest {
        success: vec![
            op_put("b", "1"),
            PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                    key: "c".into(),
                    lease: 99,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    let a = apply(&s, Command::txn(&t));
    assert_eq!(a.response, ApplyResponse::Error(EtcdError::LeaseNotFound));
    assert!(get(&s, "b").is_none());
    assert_eq!(a.revision, 2);
    // future revision in an embedded range
    let mut q = range_req("a", "");
    q.revision = 10;
    let t = PbTxnRequest {
        success: vec![
            op_put("b", "1"),
            PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestRange(q)),
            },
        ],
        ..Default::default()
    };
    assert_eq!(
        apply(&s, Command::txn(&t)).response,
        ApplyResponse::Error(EtcdError::FutureRevision)
    );
    // ignore_value on a key the txn deleted through a "\0" range (etcd's checks miss it)
    let t = PbTxnRequest {
        success: vec![
            op_del("a", "\0"),
            PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                    key: "a".into(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert_eq!(
        apply(&s, Command::txn(&t)).response,
        ApplyResponse::Error(EtcdError::KeyNotFound)
    );
    assert_eq!(get(&s, "a").unwrap().value, b"1");
    assert_eq!(s.current_revision(), 2);
    // errors in the branch not taken do not matter (checks follow the chosen path)
    let t = PbTxnRequest {
        compare: vec![cmp(
            "a",
            TARGET_VALUE,
            CMP_EQUAL,
            PbTargetUnion::Value(b"1".to_vec()),
        )],
        success: vec![op_put("b", "1")],
        failure: vec![PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                key: "c".into(),
                lease: 99,
                ..Default::default()
            })),
        }],
    };
    let (r, _) = txn(&s, t);
    assert!(r.succeeded);
}

#[test]
fn txn_validation() {
    let many = PbTxnRequest {
        success: (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_eq!(
        validate_txn(&many, DEFAULT_MAX_TXN_OPS),
        Err(EtcdError::TooManyOps)
    );
    let ok = PbTxnRequest {
        success: (0..128).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_eq!(validate_txn(&ok, DEFAULT_MAX_TXN_OPS), Ok(()));
    // nested txns count against the remaining budget
    let inner = PbTxnRequest {
        success: (0..3).map(|i| op_put(&format!("n{i}"), "v")).collect(),
        ..Default::default()
    };
    let outer = PbTxnRequest {
        success: vec![op_put("a", "1"), op_txn(inner.clone())],
        ..Default::default()
    };
    assert_eq!(validate_txn(&outer, 5), Ok(()));
    assert_eq!(validate_txn(&outer, 4), Err(EtcdError::TooManyOps));
    // duplicates
    let dup = PbTxnRequest {
        success: vec![op_put("a", "1"), op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&dup, 128), Err(EtcdError::DuplicateKey));
    let dup_fail_branch = PbTxnRequest {
        failure: vec![op_put("a", "1"), op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(
        validate_txn(&dup_fail_branch, 128),
        Err(EtcdError::DuplicateKey)
    );
    let across_branches = PbTxnRequest {
        success: vec![op_put("a", "1")],
        failure: vec![op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&across_branches, 128), Ok(()));
    let put_in_del = PbTxnRequest {
        success: vec![op_del("a", "c"), op_put("b", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&put_in_del, 128), Err(EtcdError::DuplicateKey));
    let put_del_same = PbTxnRequest {
        success: vec![op_put("b", "2"), op_del("b", "")],
        ..Default::default()
    };
    assert_eq!(
        validate_txn(&put_del_same, 128),
        Err(EtcdError::DuplicateKey)
    );
    let overlapping_dels = PbTxnRequest {
        success: vec![op_del("a", "c"), op_del("b", "d")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&overlapping_dels, 128), Ok(()));
    let nested_dup = PbTxnRequest {
        success: vec![
            op_put("a", "1"),
            op_txn(PbTxnRequest {
                success: vec![op_put("a", "2")],
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert_eq!(validate_txn(&nested_dup, 128), Err(EtcdError::DuplicateKey));
    let nested_then_else = PbTxnRequest {
        success: vec![op_txn(PbTxnRequest {
            success: vec![op_put("a", "2")],
            failure: vec![op_put("a", "3")],
            ..Default::default()
        })],
        ..Default::default()
    };
    assert_eq!(validate_txn(&nested_then_else, 128), Ok(()));
    let nested_del = PbTxnRequest {
        success: vec![
            op_del("a", "z"),
            op_txn(PbTxnRequest {
                failure: vec![op_put("m", "2")],
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert_eq!(validate_txn(&nested_del, 128), Err(EtcdError::DuplicateKey));
    // op-level validation
    let empty_key = PbTxnRequest {
        success: vec![op_put("", "1")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&empty_key, 128), Err(EtcdError::EmptyKey));
    let empty_op = PbTxnRequest {
        success: vec![PbTxnRequestOp { request: None }],
        ..Default::default()
    };
    assert_eq!(validate_txn(&empty_op, 128), Err(EtcdError::KeyNotFound));
    let empty_cmp = PbTxnRequest {
        compare: vec![cmp(
            "",
            TARGET_VERSION,
            CMP_EQUAL,
            PbTargetUnion::Version(0),
        )],
        ..Default::default()
    };
    assert_eq!(validate_txn(&empty_cmp, 128), Err(EtcdError::EmptyKey));
    // the state machine re-checks duplicates defensively
    let (_d, s) = store();
    assert_eq!(
        apply(&s, Command::txn(&dup)).response,
        ApplyResponse::Error(EtcdError::DuplicateKey)
    );
    assert_eq!(s.current_revision(), 1);
}

#[test]
fn put_validation_and_ignore_flags() {
    assert_eq!(validate_put(&put_req("", "v")), Err(EtcdError::EmptyKey));
    assert_eq!(
        validate_put(&PbPutRequest {
            key: "k".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        }),
        Err(EtcdError::ValueProvided)
    );
    assert_eq!(
        validate_put(&PbPutRequest {
            key: "k".into(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        }),
        Err(EtcdError::LeaseProvided)
    );
    assert_eq!(
        validate_delete_range(&PbDeleteRequest::default()),
        Err(EtcdError::EmptyKey)
    );
    assert_eq!(
        validate_range(&PbRangeRequest::default()),
        Err(EtcdError::EmptyKey)
    );

    let (_d, s) = store();
    let iv = PbPutRequest {
        key: "k".into(),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(
        apply(&s, Command::put(&iv)).response,
        ApplyResponse::Error(EtcdError::KeyNotFound)
    );
    assert_eq!(s.current_revision(), 1);
    apply(
        &s,
        Command::LeaseGrant {
            id: 7,
            ttl_seconds: 10,
        },
    );
    put_lease(&s, "k", "orig", 7);
    let a = apply(
        &s,
        Command::put(&PbPutRequest {
            prev_kv: true,
            ..iv.clone()
        }),
    );
    let ApplyResponse::Put(p) = a.response else {
        panic!()
    };
    assert_eq!(p.prev_kv.unwrap().value, b"orig");
    let kv = get(&s, "k").unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.lease),
        (&b"orig"[..], 2, 0)
    );
    // ignore_lease keeps the lease
    put_lease(&s, "k", "x", 7);
    apply(
        &s,
        Command::put(&PbPutRequest {
            key: "k".into(),
            value: "y".into(),
            ignore_lease: true,
            ..Default::default()
        }),
    );
    let kv = get(&s, "k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"y"[..], 7));
    assert_eq!(s.lease(7).unwrap().keys, vec![b"k".to_vec()]);
}
