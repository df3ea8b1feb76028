//! Fuzz target: etcd request validation (`mvcc::validate_*`), which every
//! client request passes before it is proposed. Inputs are protobuf bytes as
//! a client sends them. Property: a request is accepted or refused with an
//! etcd error; no panic, whatever the nesting of transactions.

use mvcc::{
    validate_delete_range, validate_put, validate_range, validate_txn, PbCompare, PbDeleteRequest,
    PbPutRequest, PbRangeRequest, PbTxnRequest, PbTxnRequestOp, DEFAULT_MAX_TXN_OPS,
};
use prost::Message;

fn seeds() -> Vec<Vec<u8>> {
    let put = PbPutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let range = PbRangeRequest {
        key: b"a".to_vec(),
        range_end: b"z".to_vec(),
        limit: 10,
        ..Default::default()
    };
    let del = PbDeleteRequest {
        key: b"k".to_vec(),
        ..Default::default()
    };
    use mvcc::PbTxnOpRequest as Op;
    let inner = PbTxnRequest {
        compare: vec![PbCompare {
            key: b"k".to_vec(),
            ..Default::default()
        }],
        success: vec![PbTxnRequestOp {
            request: Some(Op::RequestPut(put.clone())),
        }],
        failure: vec![PbTxnRequestOp {
            request: Some(Op::RequestRange(range.clone())),
        }],
    };
    let txn = PbTxnRequest {
        compare: inner.compare.clone(),
        success: vec![
            PbTxnRequestOp {
                request: Some(Op::RequestTxn(inner.clone())),
            },
            PbTxnRequestOp {
                request: Some(Op::RequestDeleteRange(del.clone())),
            },
        ],
        failure: vec![],
    };
    vec![
        put.encode_to_vec(),
        range.encode_to_vec(),
        del.encode_to_vec(),
        inner.encode_to_vec(),
        txn.encode_to_vec(),
    ]
}

#[test]
fn fuzz_etcd_request_validation() {
    let report = fuzz::fuzz("etcd_validate", &seeds(), |input| {
        if let Ok(r) = PbPutRequest::decode(input) {
            let _ = validate_put(&r);
        }
        if let Ok(r) = PbRangeRequest::decode(input) {
            let _ = validate_range(&r);
        }
        if let Ok(r) = PbDeleteRequest::decode(input) {
            let _ = validate_delete_range(&r);
        }
        if let Ok(r) = PbTxnRequest::decode(input) {
            let _ = validate_txn(&r, DEFAULT_MAX_TXN_OPS);
            let _ = validate_txn(&r, 1);
        }
    });
    assert!(report.executions > 0);
}
