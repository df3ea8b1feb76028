//! Cluster service: member list/add/remove/update/promote, routed to the
//! leader by `consensus::Node`.

use std::time::Duration;

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::{node_status, EtcdApi};

impl EtcdApi {
    fn member_list(&self) -> Vec<PbMember> {
        self.node()
            .members()
            .into_iter()
            .map(|(id, m, learner)| PbMember {
                id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: learner,
            })
            .collect()
    }

    /// Membership changes commit on the leader first; wait (bounded) until
    /// this member has applied them too, so the answer lists them.
    async fn await_membership(&self, pred: impl Fn(&[PbMember]) -> bool) -> Vec<PbMember> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.node().config().request_timeout_ms);
        let mut changes = self.node().changes();
        loop {
            let list = self.member_list();
            // Stop at the deadline, and also when the Raft core stopped (its
            // metrics never change again; `changed()` would return at once).
            if pred(&list)
                || !matches!(
                    tokio::time::timeout_at(deadline, changes.changed()).await,
                    Ok(true)
                )
            {
                return list;
            }
        }
    }
}

#[tonic::async_trait]
impl PbClusterService for EtcdApi {
    async fn member_add(
        &self,
        request: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        self.check_admin(request.metadata())?;
        let req = request.into_inner();
        if req.peer_ur_ls.is_empty() {
            return Err(Status::invalid_argument(
                "etcdserver: member peer URLs not provided",
            ));
        }
        for u in &req.peer_ur_ls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: invalid peer URL {u:?}: must be http:// or https://"
                )));
            }
        }
        let id = self
            .node()
            .member_add(req.peer_ur_ls.clone(), req.is_learner)
            .await
            .map_err(node_status)?;
        let members = self
            .await_membership(|l| l.iter().any(|m| m.id == id))
            .await;
        let member = PbMember {
            id,
            name: String::new(),
            peer_ur_ls: req.peer_ur_ls,
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        Ok(Response::new(PbMemberAddResponse {
            header: Some(self.current_header()),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        self.check_admin(request.metadata())?;
        let id = request.into_inner().id;
        self.node().member_remove(id).await.map_err(node_status)?;
        let members = self
            .await_membership(|l| !l.iter().any(|m| m.id == id))
            .await;
        Ok(Response::new(PbMemberRemoveResponse {
            header: Some(self.current_header()),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        self.check_admin(request.metadata())?;
        let req = request.into_inner();
        self.node()
            .member_update(req.id, req.peer_ur_ls.clone())
            .await
            .map_err(node_status)?;
        let urls = req.peer_ur_ls;
        let members = self
            .await_membership(|l| l.iter().any(|m| m.id == req.id && m.peer_ur_ls == urls))
            .await;
        Ok(Response::new(PbMemberUpdateResponse {
            header: Some(self.current_header()),
            members,
        }))
    }

    async fn member_list(
        &self,
        request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        let req = request.into_inner();
        self.barrier(!req.linearizable).await?;
        Ok(Response::new(PbMemberListResponse {
            header: Some(self.current_header()),
            members: self.member_list(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        self.check_admin(request.metadata())?;
        let id = request.into_inner().id;
        self.node().member_promote(id).await.map_err(node_status)?;
        let members = self
            .await_membership(|l| l.iter().any(|m| m.id == id && !m.is_learner))
            .await;
        Ok(Response::new(PbMemberPromoteResponse {
            header: Some(self.current_header()),
            members,
        }))
    }
}
