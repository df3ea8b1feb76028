//! Pure request validation, mirroring etcd's v3rpc `check*Request` functions and the txn
//! put/delete overlap check (`checkIntervals`). Run before proposing so bad requests never
//! reach the log; the state machine re-runs the structural checks defensively.

use crate::error::EtcdError;
use crate::{consts, PbDeleteRequest, PbPutRequest, PbRangeRequest, PbTxnOpRequest, PbTxnRequest};
use std::collections::HashSet;

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// etcd `checkPutRequest`.
pub fn validate_put(r: &PbPutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// etcd `checkRangeRequest`.
pub fn validate_range(r: &PbRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if !(consts::SORT_NONE..=consts::SORT_DESCEND).contains(&r.sort_order)
        || !(consts::SORT_TARGET_KEY..=consts::SORT_TARGET_VALUE).contains(&r.sort_target)
    {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

/// etcd `checkDeleteRequest`.
pub fn validate_delete_range(r: &PbDeleteRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd `checkTxnRequest` followed by `checkIntervals` on both branches.
///
/// Op counting follows etcd: a txn level counts `max(len(compare), len(success),
/// len(failure))`, and nested txns are checked against the budget left over
/// (`max_txn_ops - opc`). Duplicate detection follows etcd: two puts of one key in a
/// branch (nested included, except the then/else of the same nested txn which are
/// mutually exclusive), or a put of a key covered by a delete in the same branch.
pub fn validate_txn(r: &PbTxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn_request(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_request(r: &PbTxnRequest, max_txn_ops: i64) -> Result<(), EtcdError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(PbTxnOpRequest::RequestRange(q)) => validate_range(q)?,
            Some(PbTxnOpRequest::RequestPut(q)) => validate_put(q)?,
            Some(PbTxnOpRequest::RequestDeleteRange(q)) => validate_delete_range(q)?,
            Some(PbTxnOpRequest::RequestTxn(q)) => check_txn_request(q, max_txn_ops - opc)?,
            // etcd: "empty op / nil entry" -> ErrGRPCKeyNotFound
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// Half-open byte interval [begin, end); `end == None` means +infinity.
#[derive(Clone, Debug)]
struct Interval {
    begin: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        k >= self.begin.as_slice() && self.end.as_ref().is_none_or(|e| k < e.as_slice())
    }
}

/// Interval a delete request covers, as etcd's checkIntervals builds it: no range_end is a
/// point; otherwise [key, range_end) taken literally. Note etcd does NOT special-case the
/// "\0" (from-key) form here, so such a delete never conflicts with a put at validation time;
/// we mirror that (the state machine then guards the one case it matters, see `check_txn`).
fn delete_interval(d: &PbDeleteRequest) -> Interval {
    if d.range_end.is_empty() {
        let mut end = d.key.clone();
        end.push(0);
        Interval {
            begin: d.key.clone(),
            end: Some(end),
        }
    } else {
        Interval {
            begin: d.key.clone(),
            end: Some(d.range_end.clone()),
        }
    }
}

/// etcd `checkIntervals`: returns (puts, dels) of this level including nested levels.
fn check_intervals(
    reqs: &[crate::PbTxnRequestOp],
) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), EtcdError> {
    let mut dels: Vec<Interval> = Vec::new();
    for r in reqs {
        if let Some(PbTxnOpRequest::RequestDeleteRange(d)) = &r.request {
            dels.push(delete_interval(d));
        }
    }
    let intersects = |dels: &[Interval], k: &[u8]| dels.iter().any(|iv| iv.contains(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for r in reqs {
        let Some(PbTxnOpRequest::RequestTxn(t)) = &r.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || intersects(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // A key put in both then and else of the same nested txn is fine (exclusive).
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
            if intersects(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for r in reqs {
        let Some(PbTxnOpRequest::RequestPut(p)) = &r.request else {
            continue;
        };
        if puts.contains(&p.key) || intersects(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}
