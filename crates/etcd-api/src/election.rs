//! etcd's Election service (`v3electionpb.Election`), etcd's v3election
//! recipe run server-side, on the same contender keys as the Lock service
//! (lock.rs): a candidate's key is `name/<lease in hex>`, the leader is the
//! key with the smallest create revision, and `LeaderKey.rev` (that create
//! revision) is the leader's term — a fencing token like the lock's.
//!
//! * `Campaign`: create the key with the value (or take over an existing
//!   one of the same lease, updating its value), wait for every earlier
//!   candidate to go, answer the `LeaderKey`.
//! * `Proclaim`: change the leader's value, only while `LeaderKey` still
//!   names the current key (same create revision); else etcd's
//!   `election: not leader`.
//! * `Leader`: the current leader's key-value, or `election: no leader`.
//! * `Observe`: a stream of the leader's key-value each time it changes.
//! * `Resign`: delete the leader key (if still the same).

use std::pin::Pin;

use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbKeyValue, PbPutRequest, PbTxnOpRequest, PbTxnRequest,
    PbTxnRequestOp,
};
use futures::Stream;
use mvcc::consts::{CMP_EQUAL, TARGET_CREATE};
use mvcc::{ApplyResponse, Command};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::lock::{contender_key, Abandon, MAX_NAME_BYTES};
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3electionpb::*;
use crate::EtcdApi;

/// etcd's `concurrency.ErrElectionNotLeader` / `ErrElectionNoLeader` texts
/// (plain errors in etcd, so gRPC code Unknown).
const ERR_NOT_LEADER: &str = "election: not leader";
const ERR_NO_LEADER: &str = "election: no leader";

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

fn check_name(name: &[u8]) -> Result<(), Status> {
    if name.len() > MAX_NAME_BYTES {
        return Err(Status::invalid_argument(crate::ERR_REQUEST_TOO_LARGE));
    }
    Ok(())
}

impl EtcdApi {
    /// Put `value` on the leader key if its create revision is still `rev`
    /// (`Proclaim`), or delete it (`Resign`); false when not leader.
    async fn if_still(&self, l: &LeaderKey, op: PbTxnOpRequest) -> Result<(bool, i64), Status> {
        let txn = PbTxnRequest {
            compare: vec![PbCompare {
                result: CMP_EQUAL,
                target: TARGET_CREATE,
                key: l.key.clone(),
                range_end: Vec::new(),
                target_union: Some(etcd_client::proto::PbTargetUnion::CreateRevision(l.rev)),
            }],
            success: vec![PbTxnRequestOp { request: Some(op) }],
            failure: Vec::new(),
        };
        match self.propose(Command::txn(&txn)).await? {
            ApplyResponse::Txn(r) => Ok((
                r.succeeded,
                r.header.map(|h| h.revision).unwrap_or_default(),
            )),
            _ => Err(Status::internal(
                "etcdserver: unexpected apply result for txn",
            )),
        }
    }

    async fn current_leader(&self, name: &[u8]) -> Result<Option<PbKeyValue>, Status> {
        let (prefix, _) = contender_key(name, 0);
        self.first_contender(&prefix).await
    }
}

#[tonic::async_trait]
impl Election for EtcdApi {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let r = request.get_ref();
        check_name(&r.name)?;
        let (prefix, key) = contender_key(&r.name, r.lease);
        self.check_prefix_rw(request.metadata(), &prefix)?;
        let req = request.into_inner();
        let (rev, created) = self.create_contender(&key, &req.value, req.lease).await?;
        let guard = Abandon::new(self, key.clone());
        if !created {
            // etcd: re-campaigning with the same lease proclaims the new value.
            let l = LeaderKey {
                name: req.name.clone(),
                key: key.clone(),
                rev,
                lease: req.lease,
            };
            let put = PbTxnOpRequest::RequestPut(PbPutRequest {
                key: key.clone(),
                value: req.value.clone(),
                lease: req.lease,
                ..Default::default()
            });
            self.if_still(&l, put).await?;
        }
        self.wait_predecessors(&prefix, rev, &key).await?;
        guard.disarm();
        Ok(Response::new(CampaignResponse {
            header: Some(self.header(rev)),
            leader: Some(LeaderKey {
                name: req.name,
                key,
                rev,
                lease: req.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let l = request
            .get_ref()
            .leader
            .clone()
            .ok_or_else(|| Status::unknown(ERR_NOT_LEADER))?;
        self.check_range(request.metadata(), &l.key, &[], auth::PermKind::Write)?;
        let value = request.into_inner().value;
        let put = PbTxnOpRequest::RequestPut(PbPutRequest {
            key: l.key.clone(),
            value,
            lease: l.lease,
            ..Default::default()
        });
        match self.if_still(&l, put).await? {
            (true, rev) => Ok(Response::new(ProclaimResponse {
                header: Some(self.header(rev)),
            })),
            (false, _) => Err(Status::unknown(ERR_NOT_LEADER)),
        }
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let r = request.get_ref();
        check_name(&r.name)?;
        let (prefix, _) = contender_key(&r.name, 0);
        // Judged by the auth state after a read barrier, as a Range is
        // (`checked_range`): a revoke committed before this call is in force.
        self.barrier(false).await?;
        self.check_range(
            request.metadata(),
            &prefix,
            &crate::lock::prefix_end(&prefix),
            auth::PermKind::Read,
        )?;
        match self.current_leader(&request.get_ref().name).await? {
            Some(kv) => Ok(Response::new(LeaderResponse {
                header: Some(self.current_header()),
                kv: Some(kv),
            })),
            None => Err(Status::unknown(ERR_NO_LEADER)),
        }
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let r = request.get_ref();
        check_name(&r.name)?;
        let (prefix, _) = contender_key(&r.name, 0);
        self.check_range(
            request.metadata(),
            &prefix,
            &crate::lock::prefix_end(&prefix),
            auth::PermKind::Read,
        )?;
        let name = request.into_inner().name;
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            // (key, mod revision) of the last leader sent.
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                let mut changes = api.node().applier().subscribe();
                let leader = match api.current_leader(&name).await {
                    Ok(l) => l,
                    Err(e) if e.code() == tonic::Code::Unavailable => {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if let Some(kv) = leader {
                    let id = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&id) {
                        last = Some(id);
                        let resp = LeaderResponse {
                            header: Some(api.current_header()),
                            kv: Some(kv),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                // Wake on a change under the prefix (or a reset, or once a
                // second), then re-read.
                let recheck = tokio::time::sleep(std::time::Duration::from_secs(1));
                tokio::pin!(recheck);
                loop {
                    tokio::select! {
                        c = changes.recv() => match c {
                            Ok(consensus::StoreChange::Events { events, .. }) => {
                                if events.iter().any(|e| e.kv.as_ref().is_some_and(|kv| kv.key.starts_with(&prefix))) {
                                    break;
                                }
                            }
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        _ = &mut recheck => break,
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let l = request
            .get_ref()
            .leader
            .clone()
            .ok_or_else(|| Status::unknown(ERR_NOT_LEADER))?;
        self.check_range(request.metadata(), &l.key, &[], auth::PermKind::Write)?;
        let del = PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
            key: l.key.clone(),
            ..Default::default()
        });
        let (_, rev) = self.if_still(&l, del).await?;
        // etcd answers success whether or not the key was still there.
        Ok(Response::new(ResignResponse {
            header: Some(self.header(rev)),
        }))
    }
}
