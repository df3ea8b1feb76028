//! KV service: Range, Put, DeleteRange, Txn, Compact.

use crate::status::ToStatus;
use std::time::Instant;

use etcd_client::proto::PbRangeResponse;
use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeStreamResponse, PbTxnRequest,
    PbTxnResponse,
};
use mvcc::{ApplyResponse, Command};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::{node_status, EtcdApi};
use auth::PermKind;

impl EtcdApi {
    /// Propose a command and decode its deterministic outcome.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<ApplyResponse, Status> {
        let started = Instant::now();
        let outcome = self.node().propose(cmd).await;
        self.metrics()
            .observe_proposal(started.elapsed(), outcome.is_ok());
        let outcome = outcome.map_err(node_status)?;
        let resp = ApplyResponse::decode(&outcome.response)
            .map_err(|e| Status::internal(format!("etcdserver: undecodable apply result: {e}")))?;
        match resp {
            ApplyResponse::Error(e) => Err(e.to_status()),
            other => Ok(other),
        }
    }

    /// A Range with the member's own rights (locks, elections): validated,
    /// then the read barrier unless serializable, then read locally.
    pub(crate) async fn do_range(&self, req: &PbRangeRequest) -> Result<PbRangeResponse, Status> {
        mvcc::validate_range(req).map_err(|e| e.to_status())?;
        self.barrier(req.serializable).await?;
        self.read_local(req)
    }

    /// A client's Range: validated, then the read barrier unless
    /// serializable, then READ on `[key, range_end)` judged by the auth
    /// state applied *after* the barrier, then read locally. In this order
    /// (etcd's: it checks once the read index is applied) a revoke committed
    /// before the read arrived is in force even on a member that had not
    /// applied it yet; checked first, such a member would judge by its stale
    /// copy and serve the read (a grant would be missed the same way).
    pub(crate) async fn checked_range(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: &PbRangeRequest,
    ) -> Result<PbRangeResponse, Status> {
        mvcc::validate_range(req).map_err(|e| e.to_status())?;
        self.barrier(req.serializable).await?;
        self.check_range(md, &req.key, &req.range_end, PermKind::Read)?;
        self.read_local(req)
    }

    fn read_local(&self, req: &PbRangeRequest) -> Result<PbRangeResponse, Status> {
        let mut resp = self.node().store().range(req).map_err(|e| e.to_status())?;
        let rev = resp
            .header
            .as_ref()
            .map(|h| h.revision)
            .unwrap_or_else(|| self.node().store().current_revision());
        resp.header = Some(self.header(rev));
        Ok(resp)
    }
}

fn unexpected(what: &str) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result for {what}"))
}

#[tonic::async_trait]
impl PbKvService for EtcdApi {
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        self.check_size(request.get_ref().encoded_len())?;
        Ok(Response::new(
            self.checked_range(request.metadata(), request.get_ref())
                .await?,
        ))
    }

    type RangeStreamStream =
        futures::stream::Once<futures::future::Ready<Result<PbRangeStreamResponse, Status>>>;

    async fn range_stream(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        self.check_size(request.get_ref().encoded_len())?;
        let resp = self
            .checked_range(request.metadata(), request.get_ref())
            .await?;
        Ok(Response::new(futures::stream::once(
            futures::future::ready(Ok(PbRangeStreamResponse {
                range_response: Some(resp),
            })),
        )))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let r = request.get_ref();
        self.check_range(request.metadata(), &r.key, &[], PermKind::Write)?;
        if r.prev_kv {
            self.check_range(request.metadata(), &r.key, &[], PermKind::Read)?;
        }
        let req = request.get_ref();
        self.check_size(req.encoded_len())?;
        mvcc::validate_put(req).map_err(|e| e.to_status())?;
        self.check_quota().await?;
        let cmd = self.as_caller(request.metadata(), Command::put(req))?;
        match self.propose(cmd).await? {
            ApplyResponse::Put(mut r) => {
                let rev = r.header.as_ref().map(|h| h.revision).unwrap_or_default();
                r.header = Some(self.header(rev));
                Ok(Response::new(r))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let r = request.get_ref();
        self.check_range(request.metadata(), &r.key, &r.range_end, PermKind::Write)?;
        if r.prev_kv {
            self.check_range(request.metadata(), &r.key, &r.range_end, PermKind::Read)?;
        }
        let req = request.get_ref();
        self.check_size(req.encoded_len())?;
        mvcc::validate_delete_range(req).map_err(|e| e.to_status())?;
        let cmd = self.as_caller(request.metadata(), Command::delete_range(req))?;
        match self.propose(cmd).await? {
            ApplyResponse::DeleteRange(mut r) => {
                let rev = r.header.as_ref().map(|h| h.revision).unwrap_or_default();
                r.header = Some(self.header(rev));
                Ok(Response::new(r))
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        self.check_txn(request.metadata(), request.get_ref())?;
        let req = request.get_ref();
        self.check_size(req.encoded_len())?;
        mvcc::validate_txn(req, self.limits().max_txn_ops).map_err(|e| e.to_status())?;
        if txn_has_put(req) {
            self.check_quota().await?;
        }
        let cmd = self.as_caller(request.metadata(), Command::txn(req))?;
        match self.propose(cmd).await? {
            ApplyResponse::Txn(mut r) => {
                let rev = r.header.as_ref().map(|h| h.revision).unwrap_or_default();
                r.header = Some(self.header(rev));
                Ok(Response::new(r))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        // Compaction destroys history for every user: root only (auth.rs).
        self.check_admin(request.metadata())?;
        let req = request.into_inner();
        match self
            .propose(Command::Compact {
                revision: req.revision,
            })
            .await?
        {
            ApplyResponse::Compact(mut r) => {
                let rev = r.header.as_ref().map(|h| h.revision).unwrap_or_default();
                r.header = Some(self.header(rev));
                Ok(Response::new(r))
            }
            _ => Err(unexpected("compact")),
        }
    }
}

fn txn_has_put(req: &PbTxnRequest) -> bool {
    use etcd_client::proto::PbTxnOpRequest;
    req.success
        .iter()
        .chain(req.failure.iter())
        .any(|op| match &op.request {
            Some(PbTxnOpRequest::RequestPut(_)) => true,
            Some(PbTxnOpRequest::RequestTxn(t)) => txn_has_put(t),
            _ => false,
        })
}
