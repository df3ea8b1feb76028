//! Maintenance service: Status, Alarm, Hash/HashKV, Snapshot, MoveLeader.
//!
//! Snapshot format: the store's self-checking snapshot stream
//! (`mvcc::Store::write_snapshot`) followed by the SHA-256 of those bytes, the
//! same trailer shape etcd uses, so `etcdctl snapshot save` stores it and a
//! restore can verify it end to end.

use std::pin::Pin;

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse, PbMaintenanceService,
    PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest,
    PbStatusResponse,
};
use futures::Stream;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::EtcdApi;

/// API version reported by Status: the etcd v3 API level this server speaks.
pub const REPORTED_VERSION: &str = "3.5.0";

const ALARM_GET: i32 = 0;
const ALARM_ACTIVATE: i32 = 1;
const ALARM_DEACTIVATE: i32 = 2;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbMaintenanceService for EtcdApi {
    async fn alarm(&self, request: Request<PbAlarmRequest>) -> Result<Response<PbAlarmResponse>, Status> {
        let req = request.into_inner();
        let mut alarms = self.alarms().lock().expect("alarms poisoned");
        match req.action {
            ALARM_GET => {}
            ALARM_ACTIVATE => {
                if req.alarm != 0 && !alarms.iter().any(|a| a.alarm == req.alarm && a.member_id == req.member_id) {
                    alarms.push(etcd_client::proto::PbAlarmMember { member_id: req.member_id, alarm: req.alarm });
                }
            }
            ALARM_DEACTIVATE => alarms.retain(|a| !(a.alarm == req.alarm && (req.member_id == 0 || a.member_id == req.member_id))),
            other => return Err(Status::invalid_argument(format!("etcdserver: unknown alarm action {other}"))),
        }
        let list = if req.action == ALARM_GET && req.alarm != 0 {
            alarms.iter().filter(|a| a.alarm == req.alarm).cloned().collect()
        } else {
            alarms.clone()
        };
        Ok(Response::new(PbAlarmResponse { header: Some(self.current_header()), alarms: list }))
    }

    async fn status(&self, _request: Request<PbStatusRequest>) -> Result<Response<PbStatusResponse>, Status> {
        let node = self.node();
        let st = node.status();
        let db_size = node.store().db_size_bytes() as i64;
        let errors = self
            .alarms()
            .lock()
            .expect("alarms poisoned")
            .iter()
            .map(|a| format!("memberID:{} alarm:{}", a.member_id, if a.alarm == crate::ALARM_NOSPACE { "NOSPACE" } else { "CORRUPT" }))
            .collect();
        Ok(Response::new(PbStatusResponse {
            header: Some(self.current_header()),
            version: REPORTED_VERSION.into(),
            db_size,
            leader: st.leader.unwrap_or(0),
            raft_index: st.last_log_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors,
            db_size_in_use: db_size,
            is_learner: st.is_learner,
            storage_version: String::new(),
            db_size_quota: self.limits().quota_backend_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(&self, _request: Request<PbDefragmentRequest>) -> Result<Response<PbDefragmentResponse>, Status> {
        Err(Status::unimplemented("etcdserver: defragment is not supported by phalanx: its storage reuses freed pages"))
    }

    async fn hash(&self, _request: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        let (hash, _, _) = self.node().store().hash_kv(0).map_err(|e| e.to_status())?;
        Ok(Response::new(PbHashResponse { header: Some(self.current_header()), hash }))
    }

    async fn hash_kv(&self, request: Request<PbHashKvRequest>) -> Result<Response<PbHashKvResponse>, Status> {
        let rev = request.into_inner().revision;
        let (hash, compact_revision, hash_revision) = self.node().store().hash_kv(rev).map_err(|e| e.to_status())?;
        Ok(Response::new(PbHashKvResponse { header: Some(self.header(hash_revision)), hash, compact_revision, hash_revision }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _request: Request<PbSnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let store = self.node().store().clone();
        let data = tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            store.write_snapshot(&mut data).map(|_| data)
        })
        .await
        .map_err(|e| Status::internal(format!("etcdserver: snapshot task failed: {e}")))?
        .map_err(|e| Status::internal(format!("etcdserver: snapshot failed: {e}")))?;
        let mut full = data;
        let digest = Sha256::digest(&full);
        full.extend_from_slice(&digest);
        let chunk = self.limits().snapshot_chunk_bytes.max(1);
        let header = self.current_header();
        let total = full.len();
        let mut messages = Vec::with_capacity(total / chunk + 1);
        let mut sent = 0usize;
        for piece in full.chunks(chunk) {
            sent += piece.len();
            messages.push(Ok(PbSnapshotResponse {
                header: Some(header),
                remaining_bytes: (total - sent) as u64,
                blob: piece.to_vec(),
                version: REPORTED_VERSION.into(),
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn move_leader(&self, request: Request<PbMoveLeaderRequest>) -> Result<Response<PbMoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        Err(Status::unimplemented(format!("etcdserver: moving leadership (to {target:x}) is not supported yet")))
    }

    async fn downgrade(&self, _request: Request<PbDowngradeRequest>) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(Status::unimplemented("etcdserver: downgrade is not supported by phalanx"))
    }
}
