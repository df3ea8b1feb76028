//! etcd's Lock service (`v3lockpb.Lock`), built as etcd's v3lock is, on
//! leases and revisions (the `concurrency.Mutex` recipe run server-side):
//!
//! * `Lock(name, lease)`: put `name/<lease in hex>` with the lease, unless it
//!   exists (one transaction); its create revision orders the contenders.
//!   Then wait until no key under `name/` with a smaller create revision is
//!   left (each waiter watches only its predecessor, so a release wakes one
//!   waiter). The key is held until `Unlock`, or until the lease ends
//!   (revoked, or expired because the client stopped its keep-alives).
//! * `Unlock(key)`: delete the key.
//!
//! ## Fencing token (beyond etcd)
//! `LockResponse.header.revision` is the lock key's **create revision**
//! (etcd sends whatever revision its last read saw). Create revisions come
//! from the one store-wide revision counter, so each successive holder of a
//! lock gets a strictly larger number. A holder passes it to the storage it
//! guards, which remembers the largest token seen and refuses smaller ones:
//! a holder that lost the lock without knowing (a pause longer than its
//! lease) is then refused instead of corrupting data. Raft makes the
//! counter survive leader changes (crates/phalanx/tests/lock_election.rs).
//!
//! A waiting `Lock` whose client goes away deletes its key, as etcd's does.
//! Waiting is bounded by the client's deadline; each wait step also
//! re-reads at least once a second, so a missed notification only delays.

use std::time::Duration;

use consensus::StoreChange;
use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbKeyValue, PbPutRequest, PbRangeRequest, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp,
};
use mvcc::consts::{
    CMP_EQUAL, EVENT_DELETE, SORT_ASCEND, SORT_DESCEND, SORT_TARGET_CREATE, TARGET_CREATE,
};
use mvcc::{ApplyResponse, Command};
use tokio::sync::broadcast;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::EtcdApi;

/// Longest lock or election name, in bytes.
pub const MAX_NAME_BYTES: usize = 4096;

/// etcd's `concurrency.ErrSessionExpired` text.
const ERR_SESSION_EXPIRED: &str = "session expired";

/// The first key after every key starting with `prefix` (etcd's `GetPrefixRangeEnd`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `name/` and the key of `lease` under it.
pub(crate) fn contender_key(name: &[u8], lease: i64) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut key = prefix.clone();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    (prefix, key)
}

/// Deletes a contender's key if the request ends before it is handed over.
pub(crate) struct Abandon {
    api: Option<EtcdApi>,
    key: Vec<u8>,
}

impl Abandon {
    pub(crate) fn new(api: &EtcdApi, key: Vec<u8>) -> Self {
        Abandon {
            api: Some(api.clone()),
            key,
        }
    }
    pub(crate) fn disarm(mut self) {
        self.api = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            let key = std::mem::take(&mut self.key);
            tokio::spawn(async move {
                let req = PbDeleteRequest {
                    key,
                    ..Default::default()
                };
                if let Err(e) = api.propose(Command::delete_range(&req)).await {
                    tracing::debug!("abandoned lock/election key not deleted: {e}");
                }
            });
        }
    }
}

impl EtcdApi {
    /// READ and WRITE on everything under `prefix` (what etcd's recipe does
    /// through the KV API with the caller's token).
    pub(crate) fn check_prefix_rw(&self, md: &MetadataMap, prefix: &[u8]) -> Result<(), Status> {
        let end = prefix_end(prefix);
        self.check_range(md, prefix, &end, auth::PermKind::Write)?;
        self.check_range(md, prefix, &end, auth::PermKind::Read)
    }

    /// Put `key` = `value` with `lease` unless it exists; its create revision
    /// and whether it was created now. An existing key keeps its place (etcd).
    pub(crate) async fn create_contender(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<(i64, bool), Status> {
        let txn = PbTxnRequest {
            compare: vec![PbCompare {
                result: CMP_EQUAL,
                target: TARGET_CREATE,
                key: key.to_vec(),
                range_end: Vec::new(),
                target_union: Some(etcd_client::proto::PbTargetUnion::CreateRevision(0)),
            }],
            success: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestRange(PbRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })),
            }],
        };
        let resp = match self.propose(Command::txn(&txn)).await? {
            ApplyResponse::Txn(r) => r,
            _ => {
                return Err(Status::internal(
                    "etcdserver: unexpected apply result for txn",
                ))
            }
        };
        if resp.succeeded {
            let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or_default();
            return Ok((rev, true));
        }
        match resp.responses.first().and_then(|r| r.response.as_ref()) {
            Some(PbTxnOpResponse::ResponseRange(r)) if !r.kvs.is_empty() => {
                Ok((r.kvs[0].create_revision, false))
            }
            // Deleted between compare and read: cannot happen in one txn.
            _ => Err(Status::unknown(ERR_SESSION_EXPIRED)),
        }
    }

    /// The key under `prefix` with the largest create revision below `rev`.
    async fn predecessor(&self, prefix: &[u8], rev: i64) -> Result<Option<PbKeyValue>, Status> {
        let r = self
            .do_range(&PbRangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: SORT_DESCEND,
                sort_target: SORT_TARGET_CREATE,
                max_create_revision: rev - 1,
                keys_only: true,
                ..Default::default()
            })
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    /// The oldest key under `prefix` (the holder / leader), if any.
    pub(crate) async fn first_contender(
        &self,
        prefix: &[u8],
    ) -> Result<Option<PbKeyValue>, Status> {
        let r = self
            .do_range(&PbRangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: SORT_ASCEND,
                sort_target: SORT_TARGET_CREATE,
                ..Default::default()
            })
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    pub(crate) async fn key_exists(&self, key: &[u8]) -> Result<bool, Status> {
        let r = self
            .do_range(&PbRangeRequest {
                key: key.to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await?;
        Ok(r.count > 0)
    }

    /// Wait until no key under `prefix` was created before `rev`, then check
    /// that `my_key` is still there (its lease may have ended meanwhile).
    pub(crate) async fn wait_predecessors(
        &self,
        prefix: &[u8],
        rev: i64,
        my_key: &[u8],
    ) -> Result<(), Status> {
        loop {
            let mut changes = self.node().applier().subscribe();
            let pred = match self.predecessor(prefix, rev).await {
                Ok(p) => p,
                // No leader for a moment (an election): keep waiting; the
                // client's deadline bounds the whole call.
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(pred) = pred else {
                break;
            };
            wait_deleted(&mut changes, &pred.key).await?;
        }
        if !self.key_exists(my_key).await? {
            return Err(Status::unknown(ERR_SESSION_EXPIRED));
        }
        Ok(())
    }
}

/// Wait for a delete of `key`, any reset of the store, or one second.
pub(crate) async fn wait_deleted(
    changes: &mut broadcast::Receiver<StoreChange>,
    key: &[u8],
) -> Result<(), Status> {
    let recheck = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(recheck);
    loop {
        tokio::select! {
            c = changes.recv() => match c {
                Ok(StoreChange::Events { events, .. }) => {
                    if events.iter().any(|e| e.r#type == EVENT_DELETE && e.kv.as_ref().is_some_and(|kv| kv.key == key)) {
                        return Ok(());
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Status::unavailable("etcdserver: server stopped"))
                }
            },
            _ = &mut recheck => return Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Lock for EtcdApi {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = request.get_ref();
        if req.name.len() > MAX_NAME_BYTES {
            return Err(Status::invalid_argument(crate::ERR_REQUEST_TOO_LARGE));
        }
        let (prefix, key) = contender_key(&req.name, req.lease);
        self.check_prefix_rw(request.metadata(), &prefix)?;
        let lease = req.lease;
        let (rev, _) = self.create_contender(&key, &[], lease).await?;
        let guard = Abandon::new(self, key.clone());
        self.wait_predecessors(&prefix, rev, &key).await?;
        guard.disarm();
        // The fencing token: the key's create revision (module docs).
        Ok(Response::new(LockResponse {
            header: Some(self.header(rev)),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let r = request.get_ref();
        self.check_range(request.metadata(), &r.key, &[], auth::PermKind::Write)?;
        let req = PbDeleteRequest {
            key: request.into_inner().key,
            ..Default::default()
        };
        let rev = match self.propose(Command::delete_range(&req)).await? {
            ApplyResponse::DeleteRange(r) => r.header.map(|h| h.revision).unwrap_or_default(),
            _ => {
                return Err(Status::internal(
                    "etcdserver: unexpected apply result for delete",
                ))
            }
        };
        Ok(Response::new(UnlockResponse {
            header: Some(self.header(rev)),
        }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_end_and_keys() {
        assert_eq!(super::prefix_end(b"a/"), b"a0");
        assert_eq!(super::prefix_end(b"a\xff"), b"b");
        assert_eq!(super::prefix_end(b"\xff"), vec![0]);
        assert_eq!(super::contender_key(b"l", 255).1, b"l/ff");
    }
}
