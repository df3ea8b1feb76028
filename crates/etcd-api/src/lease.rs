//! Lease service. Grants and revokes go through consensus; keep-alives and
//! time-to-live questions go to the leader, whose clock decides expiry (see
//! `consensus::lessor`).

use crate::status::ToStatus;
use std::pin::Pin;

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::Stream;
use mvcc::{ApplyResponse, Command, EtcdError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{node_status, EtcdApi};

/// etcd's largest lease TTL (`MaxLeaseTTL`), in seconds.
pub const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbLeaseService for EtcdApi {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        self.check_authenticated(request.metadata())?;
        let req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL_SECONDS {
            return Err(EtcdError::TtlTooLarge.to_status());
        }
        self.check_quota().await?;
        let ttl = req.ttl.max(consensus::lessor::MIN_LEASE_TTL_SECONDS);
        // The id is chosen here, before proposing, so every member applies
        // the same one; positive like etcd's.
        let id = if req.id != 0 {
            req.id
        } else {
            (rand::random::<u64>() >> 1).max(1) as i64
        };
        match self
            .propose(Command::LeaseGrant {
                id,
                ttl_seconds: ttl,
            })
            .await?
        {
            ApplyResponse::LeaseGrant(mut r) => {
                let rev = r
                    .header
                    .as_ref()
                    .map(|h| h.revision)
                    .unwrap_or_else(|| self.node().store().current_revision());
                r.header = Some(self.header(rev));
                Ok(Response::new(r))
            }
            _ => Err(Status::internal(
                "etcdserver: unexpected apply result for lease grant",
            )),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        // etcd: revoking deletes the attached keys, so it needs WRITE on
        // each. Checked here on this member's view to refuse early, and
        // decided at apply time on the keys attached then (`AsUser`, etcd's
        // `checkLeasePuts`): a key attached in between counts too.
        if let Some(info) = self.node().store().lease(request.get_ref().id) {
            self.check_keys(request.metadata(), &info.keys, auth::PermKind::Write)?;
        } else {
            self.check_authenticated(request.metadata())?;
        }
        let cmd = self.as_caller(
            request.metadata(),
            Command::LeaseRevoke {
                id: request.get_ref().id,
            },
        )?;
        match self.propose(cmd).await? {
            ApplyResponse::LeaseRevoke(mut r) => {
                let rev = r
                    .header
                    .as_ref()
                    .map(|h| h.revision)
                    .unwrap_or_else(|| self.node().store().current_revision());
                r.header = Some(self.header(rev));
                Ok(Response::new(r))
            }
            _ => Err(Status::internal(
                "etcdserver: unexpected apply result for lease revoke",
            )),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.check_authenticated(request.metadata())?;
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let api = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = input.message().await {
                let resp = match api.node().lease_keep_alive(req.id).await {
                    // etcd answers TTL 0 for a lease that no longer exists.
                    Ok(ttl) => Ok(PbLeaseKeepAliveResponse {
                        header: Some(api.current_header()),
                        id: req.id,
                        ttl: ttl.unwrap_or(0),
                    }),
                    Err(e) => Err(node_status(e)),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let r = request.get_ref();
        if r.keys {
            // The attached keys and the user's permissions on them as of a
            // read barrier, as a Range is judged (`checked_range`).
            self.barrier(false).await?;
        }
        match self.node().store().lease(r.id) {
            Some(info) if r.keys => {
                self.check_keys(request.metadata(), &info.keys, auth::PermKind::Read)?
            }
            _ => self.check_authenticated(request.metadata())?,
        }
        let req = request.into_inner();
        let remaining = self
            .node()
            .lease_time_to_live(req.id)
            .await
            .map_err(node_status)?;
        let info = self.node().store().lease(req.id);
        let resp = match (remaining, info) {
            (Some((granted, ttl)), Some(info)) => PbLeaseTimeToLiveResponse {
                header: Some(self.current_header()),
                id: req.id,
                ttl,
                granted_ttl: granted,
                keys: if req.keys { info.keys } else { Vec::new() },
            },
            // etcd answers TTL -1 for a lease that does not exist.
            _ => PbLeaseTimeToLiveResponse {
                header: Some(self.current_header()),
                id: req.id,
                ttl: -1,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        self.check_authenticated(_request.metadata())?;
        self.barrier(false).await?;
        let leases = self
            .node()
            .store()
            .leases()
            .into_iter()
            .map(|l| PbLeaseStatus { id: l.id })
            .collect();
        Ok(Response::new(PbLeaseLeasesResponse {
            header: Some(self.current_header()),
            leases,
        }))
    }
}
