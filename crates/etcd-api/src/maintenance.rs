//! Maintenance service: Status, Alarm, Hash/HashKV, Snapshot, MoveLeader.
//!
//! Snapshot file format, shaped like etcd's so `etcdctl snapshot save`
//! accepts it (etcdctl checks that the size is a multiple of 512 plus a
//! 32-byte SHA-256 trailer, and verifies the digest):
//!
//! ```text
//! payload        mvcc::Store::write_snapshot stream (self-checking, CRC32)
//! zero padding   so that everything up to the digest is a multiple of 512 bytes,
//!                its last 8 bytes holding the payload length (u64 LE)
//! sha256         of everything before it
//! ```

use crate::status::ToStatus;
use std::pin::Pin;

use etcd_client::proto::{
    PbAlarmMember, PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse,
    PbDowngradeRequest, PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest,
    PbHashResponse, PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse,
    PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::EtcdApi;

/// API version reported by Status: the etcd v3 API level this server speaks.
/// Phalanx implements etcd's 3.4 API (the `etcdctl` 3.4 it is tested with);
/// Phalanx's own version is on `/version` as `phalanx`.
pub const REPORTED_VERSION: &str = "3.4.0";

/// Snapshot files are padded to a multiple of this, as etcd's are.
const SNAPSHOT_ALIGN_BYTES: usize = 512;

const ALARM_GET: i32 = 0;
const ALARM_ACTIVATE: i32 = 1;
const ALARM_DEACTIVATE: i32 = 2;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbMaintenanceService for EtcdApi {
    async fn alarm(
        &self,
        request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        // Listing alarms is open (as in etcd); raising or clearing them is root's.
        if request.get_ref().action != ALARM_GET {
            self.check_admin(request.metadata())?;
        }
        let req = request.into_inner();
        match req.action {
            ALARM_GET => {
                self.barrier(false).await?;
                let alarms = self
                    .node()
                    .store()
                    .alarms()
                    .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
                let list = alarms
                    .into_iter()
                    .filter(|(_, a)| req.alarm == 0 || *a == req.alarm)
                    .map(|(member_id, alarm)| PbAlarmMember { member_id, alarm })
                    .collect();
                Ok(Response::new(PbAlarmResponse {
                    header: Some(self.current_header()),
                    alarms: list,
                }))
            }
            ALARM_ACTIVATE | ALARM_DEACTIVATE => {
                let cmd = mvcc::Command::Alarm {
                    action: req.action,
                    member_id: req.member_id,
                    alarm: req.alarm,
                };
                match self.propose(cmd).await? {
                    mvcc::ApplyResponse::Alarm(mut r) => {
                        r.header = Some(self.current_header());
                        Ok(Response::new(r))
                    }
                    _ => Err(Status::internal(
                        "etcdserver: unexpected apply result for alarm",
                    )),
                }
            }
            other => Err(Status::invalid_argument(format!(
                "etcdserver: unknown alarm action {other}"
            ))),
        }
    }

    async fn status(
        &self,
        _request: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let node = self.node();
        // A member that stopped for good answers with why, never with the
        // frozen figures of its stopped Raft core (which may say "leader").
        node.check_serving().map_err(crate::node_status)?;
        let st = node.status();
        let store = node.store().clone();
        let size = tokio::task::spawn_blocking(move || store.db_size())
            .await
            .map_err(|e| Status::internal(format!("etcdserver: status task failed: {e}")))?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        let db_size = size.file_bytes as i64;
        let errors = node
            .store()
            .alarms()
            .unwrap_or_default()
            .iter()
            .map(|(m, a)| {
                format!(
                    "memberID:{m} alarm:{}",
                    if *a == crate::ALARM_NOSPACE {
                        "NOSPACE"
                    } else {
                        "CORRUPT"
                    }
                )
            })
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
            db_size_in_use: size.in_use_bytes as i64,
            is_learner: st.is_learner,
            storage_version: String::new(),
            db_size_quota: self.limits().quota_backend_bytes as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        self.check_admin(_request.metadata())?;
        // etcd defragments only the member it is sent to (etcdctl sends it
        // to each endpoint); so does this.
        self.node().check_serving().map_err(crate::node_status)?;
        let store = self.node().store().clone();
        let report = tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| Status::internal(format!("etcdserver: defragment task failed: {e}")))?
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        tracing::info!(
            "defragmented {}: {} -> {} bytes",
            self.node().store().path().display(),
            report.file_bytes_before,
            report.file_bytes_after
        );
        Ok(Response::new(PbDefragmentResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn hash(
        &self,
        _request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        self.check_admin(_request.metadata())?;
        let (hash, _, _) = self.node().store().hash_kv(0).map_err(|e| e.to_status())?;
        Ok(Response::new(PbHashResponse {
            header: Some(self.current_header()),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        self.check_admin(request.metadata())?;
        let rev = request.into_inner().revision;
        let (hash, compact_revision, hash_revision) = self
            .node()
            .store()
            .hash_kv(rev)
            .map_err(|e| e.to_status())?;
        Ok(Response::new(PbHashKvResponse {
            header: Some(self.header(hash_revision)),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_admin(_request.metadata())?;
        let store = self.node().store().clone();
        let data = tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            store.write_snapshot(&mut data).map(|_| data)
        })
        .await
        .map_err(|e| Status::internal(format!("etcdserver: snapshot task failed: {e}")))?
        .map_err(|e| Status::internal(format!("etcdserver: snapshot failed: {e}")))?;
        let payload_len = data.len() as u64;
        let mut full = data;
        let padded = (full.len() + 8).div_ceil(SNAPSHOT_ALIGN_BYTES) * SNAPSHOT_ALIGN_BYTES;
        full.resize(padded - 8, 0);
        full.extend_from_slice(&payload_len.to_le_bytes());
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

    async fn move_leader(
        &self,
        request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        self.check_admin(request.metadata())?;
        let target = request.into_inner().target_id;
        self.node()
            .move_leader(target)
            .await
            .map_err(crate::node_status)?;
        Ok(Response::new(PbMoveLeaderResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        self.check_admin(_request.metadata())?;
        Err(Status::unimplemented(
            "etcdserver: downgrade is not supported by phalanx",
        ))
    }
}
