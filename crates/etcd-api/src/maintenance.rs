//! Maintenance service: Status, Alarm, Hash/HashKV, Snapshot, MoveLeader.
//!
//! Snapshot streams a real etcd snapshot, so that `etcdctl snapshot save` from a
//! Phalanx member yields a file that `etcdctl snapshot status` reads and
//! `etcdctl snapshot restore` turns into an etcd data dir (migration back to etcd):
//!
//! ```text
//! bbolt database   etcd's schema (crate etcd-snapshot): buckets key (every revision
//!                  since the last compaction), lease, meta (consistent_index,
//!                  compaction revisions), members, cluster, alarm, auth*
//! sha256           of the database bytes (etcd's trailer; the file is then 32 bytes
//!                  past a multiple of 512, which is how etcdctl recognises it)
//! ```
//!
//! The member's mvcc snapshot stream (one read transaction) is converted as it is
//! produced into a temporary database file in the member's data dir, which is then
//! streamed in `snapshot_chunk_bytes` messages and removed — memory stays bounded
//! whatever the store's size. Phalanx's own backups ask for the mvcc stream itself
//! with gRPC metadata (`etcd_snapshot::mvcc_wire`): no bbolt file is built for them.

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
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::{Request, Response, Status};

use crate::EtcdApi;

/// API version reported by Status: the etcd v3 API level this server speaks.
/// Phalanx implements etcd's 3.4 API (the `etcdctl` 3.4 it is tested with);
/// Phalanx's own version is on `/version` as `phalanx`.
pub const REPORTED_VERSION: &str = "3.4.0";

/// mvcc stream pieces in flight between the store's reader and the converter.
const SNAPSHOT_PIPE_PIECES: usize = 16;
/// Size of those pieces.
const SNAPSHOT_PIPE_PIECE_BYTES: usize = 64 * 1024;
/// Snapshot messages queued ahead of a slow client.
const SNAPSHOT_SEND_QUEUE_MESSAGES: usize = 4;

/// Distinguishes the temporary files of snapshots taken at the same time.
static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

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
        let node = self.node();
        node.check_serving().map_err(crate::node_status)?;
        let store = node.store().clone();
        match _request
            .metadata()
            .get(etcd_snapshot::MVCC_FORMAT_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
        {
            Some(etcd_snapshot::MVCC_FORMAT_METADATA_VALUE) => {
                return Ok(Response::new(self.mvcc_snapshot(store, true)));
            }
            Some(etcd_snapshot::MVCC_FORMAT_V2_METADATA_VALUE) => {
                return Ok(Response::new(self.mvcc_snapshot(store, false)));
            }
            _ => {}
        }
        let settings = etcd_snapshot::ExportSettings {
            members: node
                .members()
                .into_iter()
                .map(|(id, m, learner)| etcd_snapshot::schema::MemberJson {
                    id,
                    peer_urls: m.peer_urls,
                    name: m.name,
                    client_urls: m.client_urls,
                    is_learner: learner,
                })
                .collect(),
            cluster_version: REPORTED_VERSION.into(),
            consistent_index: node.status().applied_index,
        };
        let dir = store
            .path()
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."));
        let tmp = TempFile(dir.join(format!(
            "etcd-snapshot-{}-{}.db.tmp",
            std::process::id(),
            SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed)
        )));
        let path = tmp.0.clone();
        let summary =
            tokio::task::spawn_blocking(move || build_etcd_snapshot(&store, &path, &settings))
                .await
                .map_err(|e| Status::internal(format!("etcdserver: snapshot task failed: {e}")))?
                .map_err(|e| Status::internal(format!("etcdserver: snapshot failed: {e}")))?;
        tracing::info!(
            "snapshot: etcd database of {} bytes at revision {} ({} history records, {} leases)",
            summary.db_bytes,
            summary.revision,
            summary.history_records,
            summary.leases
        );
        let chunk = self.limits().snapshot_chunk_bytes.max(1);
        let header = self.current_header();
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_SEND_QUEUE_MESSAGES);
        // The temporary file goes with the sending task: removed when the stream ends,
        // fails, or the client goes away.
        tokio::task::spawn_blocking(move || {
            let r = send_file(&tmp, chunk, header, &tx);
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "etcdserver: snapshot read failed: {e}"
                ))));
            }
            drop(tmp);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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

impl crate::EtcdApi {
    /// Phalanx's backups' variant of Snapshot (`etcd_snapshot::mvcc_wire`): the store's
    /// mvcc snapshot stream, sent as it is produced from one read transaction, then
    /// (`with_trailer`, version 1) etcd's trailer. Memory: `SNAPSHOT_SEND_QUEUE_MESSAGES` messages of
    /// `snapshot_chunk_bytes`. The size is not known in advance, so `remaining_bytes`
    /// is 0 in every message (only the backup side asks for this format; it ignores it).
    fn mvcc_snapshot(
        &self,
        store: std::sync::Arc<mvcc::Store>,
        with_trailer: bool,
    ) -> SnapshotStream {
        let chunk = self.limits().snapshot_chunk_bytes.max(1);
        let header = self.current_header();
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_SEND_QUEUE_MESSAGES);
        tokio::task::spawn_blocking(move || {
            let mut w = MessageWriter {
                tx: &tx,
                header,
                buf: Vec::with_capacity(chunk),
                chunk,
                trailer: with_trailer.then(etcd_snapshot::TrailerWriter::new),
                sent: 0,
            };
            let r = store
                .write_snapshot(&mut w)
                .map_err(|e| e.to_string())
                .and_then(|_| w.finish().map_err(|e| e.to_string()));
            match r {
                Ok(bytes) => tracing::info!("snapshot: mvcc stream of {bytes} bytes sent"),
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(format!(
                        "etcdserver: snapshot failed: {e}"
                    ))));
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

/// Cuts what it is given into Snapshot messages of `chunk` bytes; an error once the
/// client has gone away (which stops the store's reader).
struct MessageWriter<'a> {
    tx: &'a tokio::sync::mpsc::Sender<Result<PbSnapshotResponse, Status>>,
    header: etcd_client::proto::PbResponseHeader,
    buf: Vec<u8>,
    chunk: usize,
    /// Version 1 of the format: etcd's trailer, accumulated as bytes are sent.
    trailer: Option<etcd_snapshot::TrailerWriter>,
    /// Bytes of the mvcc stream written so far.
    sent: u64,
}

impl MessageWriter<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx
            .blocking_send(Ok(PbSnapshotResponse {
                header: Some(self.header),
                remaining_bytes: 0,
                blob,
                version: REPORTED_VERSION.into(),
            }))
            .map_err(|_| std::io::Error::other("the client went away"))
    }

    /// Send what is buffered and the trailer, if any; the mvcc stream's length.
    fn finish(mut self) -> std::io::Result<u64> {
        if let Some(t) = self.trailer.take() {
            self.buf.extend_from_slice(&t.finish());
        }
        self.send()?;
        Ok(self.sent)
    }
}

impl Write for MessageWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if let Some(t) = self.trailer.as_mut() {
            t.update(&b[..n]);
        }
        self.sent += n as u64;
        if self.buf.len() == self.chunk {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Write the store's state as an etcd database at `path`: the store's mvcc snapshot
/// stream runs on its own thread into a bounded pipe that the converter reads.
fn build_etcd_snapshot(
    store: &mvcc::Store,
    path: &std::path::Path,
    settings: &etcd_snapshot::ExportSettings,
) -> Result<etcd_snapshot::ExportSummary, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(SNAPSHOT_PIPE_PIECES);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut w =
                std::io::BufWriter::with_capacity(SNAPSHOT_PIPE_PIECE_BYTES, PipeWriter(tx));
            store
                .write_snapshot(&mut w)
                .map_err(|e| e.to_string())
                .and_then(|_| w.flush().map_err(|e| e.to_string()))
        });
        let mut r = PipeReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        let converted = etcd_snapshot::write_etcd_db(&mut r, path, settings);
        // Unblock the producer if the converter stopped early.
        drop(r);
        let produced = producer
            .join()
            .map_err(|_| "the snapshot reader panicked".to_string())?;
        match (produced, converted) {
            (Err(e), _) => Err(format!("reading the store: {e}")),
            (Ok(()), Err(e)) => Err(e.to_string()),
            (Ok(()), Ok(s)) => Ok(s),
        }
    })
}

struct PipeWriter(std::sync::mpsc::SyncSender<Vec<u8>>);

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::other("snapshot converter stopped"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct PipeReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                // The producer finished (or failed; its error is reported by the caller).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Stream the database file in `chunk`-byte messages, then etcd's SHA-256 trailer.
fn send_file(
    tmp: &TempFile,
    chunk: usize,
    header: etcd_client::proto::PbResponseHeader,
    tx: &tokio::sync::mpsc::Sender<Result<PbSnapshotResponse, Status>>,
) -> std::io::Result<()> {
    let mut f = std::fs::File::open(&tmp.0)?;
    let db_len = f.metadata()?.len();
    let total = db_len + etcd_snapshot::SHA256_BYTES;
    let mut sha = Sha256::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; chunk];
    let msg = |blob: Vec<u8>, sent: u64| PbSnapshotResponse {
        header: Some(header),
        remaining_bytes: total - sent,
        blob,
        version: REPORTED_VERSION.into(),
    };
    while sent < db_len {
        let n = ((db_len - sent) as usize).min(chunk);
        f.read_exact(&mut buf[..n])?;
        sha.update(&buf[..n]);
        sent += n as u64;
        if tx.blocking_send(Ok(msg(buf[..n].to_vec(), sent))).is_err() {
            return Ok(()); // the client went away
        }
    }
    let digest = sha.finalize().to_vec();
    let _ = tx.blocking_send(Ok(msg(digest, total)));
    Ok(())
}
