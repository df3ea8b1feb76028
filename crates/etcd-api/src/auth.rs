//! etcd's Auth service and the permission checks of every other service.
//!
//! The replicated state (users, roles, permissions, enabled) lives in
//! `mvcc` (`Store::auth_state`) and changes only through Raft
//! (`mvcc::Command::Auth`), so it is the same on every member and survives
//! restarts and snapshots. Passwords are hashed (bcrypt, `--bcrypt-cost`) on
//! the member that receives them, on a blocking thread, at most one hash per
//! core at a time; the log carries only hashes. Logins verify passwords on
//! a pool of one thread per core, two interleaved per thread
//! (`auth::password::VerifyPool`). Tokens (`--auth-token`) are
//! per-member memory, kept in step through Raft for simple tokens (below):
//! see `auth::token`.
//!
//! Who may do what, as etcd 3.4 decides it:
//! * auth disabled: everyone, everything, no token needed;
//! * Range / Watch creation: READ on `[key, range_end)`; Put / DeleteRange:
//!   WRITE (and READ when `prev_kv` is asked); Txn: READ for every compare
//!   and every range, WRITE for every put and delete, recursively;
//! * LeaseRevoke: WRITE on every key attached to the lease;
//!   LeaseTimeToLive with `keys`: READ on them; other lease calls: any
//!   authenticated user;
//! * Compaction, Defragment, Snapshot, Hash, HashKV, MoveLeader, Downgrade,
//!   alarm changes, member add/remove/update/promote and all auth management:
//!   the `root` role only (Status, MemberList and alarm listing need nothing);
//! * UserGet of oneself and RoleGet of a role one holds are allowed too.
//!
//! The token comes from the `token` gRPC metadata (etcd's clients), or
//! `authorization` (etcd's gRPC gateway). Checks read the member's applied
//! auth state: a change is in force on a member once applied there (at
//! once on the member that proposed it).
//!
//! Simple tokens go through Raft as in etcd: the member serving
//! Authenticate checks the password, generates the token and proposes its
//! hash (`AuthCommand::Authenticate`); every member installs it when it
//! applies the entry ([`TokenApply`], the consensus `AuthObserver`), and
//! drops a user's tokens when it applies that user's deletion or password
//! change, and all of them on `AuthDisable` or a snapshot install.
//!
//! Requests on a member-internal connection (`tls::ConnInfo::member_internal`:
//! an in-memory pipe only the member process itself can open, used by its
//! alerting, backup and gateway services; see `crate::internal_channel`)
//! act as the member itself, with the `root` role's rights and no token.

use std::sync::Arc;
use std::time::Instant;

pub use auth::token::TokenConfig;
use auth::token::Tokens;
use auth::{AuthCommand, AuthError, AuthState, Perm, PermKind};
use etcd_client::proto::{PbTxnOpRequest, PbTxnRequest};
use mvcc::{ApplyResponse, Command};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use crate::pb::authpb;
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::*;
use crate::EtcdApi;

/// Auth settings of a member (`--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub token: TokenConfig,
    pub bcrypt_cost: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            token: TokenConfig::default(),
            bcrypt_cost: auth::password::DEFAULT_COST,
        }
    }
}

/// Check settings (cost bounds, JWT key files) without starting anything.
pub fn validate(s: &AuthSettings) -> Result<(), String> {
    AuthRuntime::new(s).map(|_| ())
}

/// The per-member half of auth: tokens and the hashing budget.
pub(crate) struct AuthRuntime {
    tokens: Arc<Tokens>,
    bcrypt_cost: u32,
    hashing: Arc<tokio::sync::Semaphore>,
    /// Password checks (every login): one thread per core, two checks
    /// interleaved per thread (`auth::password::VerifyPool`).
    verifier: auth::password::VerifyPool,
    /// Checks queued on `verifier` at most: enough to keep every thread
    /// verifying pairs, no more (the rest wait here, not in the pool).
    verifying: Arc<tokio::sync::Semaphore>,
}

impl AuthRuntime {
    pub(crate) fn new(s: &AuthSettings) -> Result<Self, String> {
        auth::password::check_cost(s.bcrypt_cost).map_err(|e| e.to_string())?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(AuthRuntime {
            tokens: Arc::new(Tokens::new(&s.token)?),
            bcrypt_cost: s.bcrypt_cost,
            hashing: Arc::new(tokio::sync::Semaphore::new(cores)),
            verifier: auth::password::VerifyPool::new(cores)
                .map_err(|e| format!("starting the password verification threads: {e}"))?,
            verifying: Arc::new(tokio::sync::Semaphore::new(
                cores * auth::password::VERIFY_INTERLEAVE,
            )),
        })
    }
}

/// Installs and invalidates simple tokens as this member applies auth
/// changes (consensus calls it on every member, in log order).
pub(crate) struct TokenApply(pub(crate) Arc<Tokens>);

impl consensus::AuthObserver for TokenApply {
    fn applied(&self, cmd: &AuthCommand, replayed: bool) {
        match cmd {
            // A replayed entry (already in the log when this member started)
            // is not installed: a restarted member holds no simple tokens,
            // as in etcd, rather than giving old ones a fresh lifetime.
            AuthCommand::Authenticate {
                name,
                token_hash,
                checked_revision,
                issued_unix_ms,
            } if !replayed => self.0.install(
                token_hash,
                name,
                *checked_revision,
                *issued_unix_ms,
                Instant::now(),
                Tokens::unix_ms_now(),
            ),
            // etcd: a deleted user's and a changed password's tokens die at
            // once on every member.
            AuthCommand::UserDelete { name } | AuthCommand::UserChangePassword { name, .. } => {
                self.0.invalidate_user(name)
            }
            // etcd's `tokenProvider.disable()`.
            AuthCommand::Disable => self.0.clear(),
            _ => {}
        }
    }

    fn reset(&self) {
        self.0.clear();
    }
}

impl AuthRuntime {
    /// What the state machine must tell this member's tokens.
    pub(crate) fn token_observer(&self) -> Arc<TokenApply> {
        Arc::new(TokenApply(self.tokens.clone()))
    }
}

/// Attempts at Authenticate when auth changes between the password check
/// and the token's apply (`etcdserver: revision of auth store is old`
/// after the last one); etcd retries without a bound.
pub const AUTHENTICATE_ATTEMPTS: usize = 3;

/// The name member-internal requests carry in auth events and logs.
pub const MEMBER_INTERNAL_USER: &str = "phalanx-member-internal";

/// etcd's gRPC status for an auth error.
pub fn auth_status(e: AuthError) -> Status {
    Status::new(Code::from_i32(e.grpc_code()), e.to_string())
}

fn storage(e: mvcc::MvccError) -> Status {
    crate::status::status(&e.to_etcd())
}

/// The caller, once auth is enabled.
pub(crate) struct Caller {
    pub user: String,
    pub state: Arc<AuthState>,
    /// The member itself, on a member-internal connection: root's rights.
    pub internal: bool,
}

impl Caller {
    fn check(&self, key: &[u8], range_end: &[u8], want: PermKind) -> Result<(), Status> {
        if self.internal {
            return Ok(());
        }
        self.state
            .check(&self.user, key, range_end, want)
            .map_err(auth_status)
    }

    /// Whether the caller has the `root` role's rights.
    pub(crate) fn is_admin(&self) -> bool {
        self.internal || self.state.is_admin(&self.user)
    }
}

/// Metadata key carrying the verified client certificate's CN. Set only by
/// [`cert_user_interceptor`], which first removes any value a client sent,
/// so it cannot be forged.
pub(crate) const CERT_USER_KEY: &str = "x-phalanx-cert-user";

/// Metadata key marking a request that came on a member-internal
/// connection. Set only by [`cert_user_interceptor`], which first removes
/// any value a client sent; the HTTP/1.1 gateway builds its metadata from
/// the `authorization` header alone, so it cannot carry it either.
pub(crate) const MEMBER_INTERNAL_KEY: &str = "x-phalanx-member-internal";

/// Runs on every gRPC request before the services: drops a client-sent
/// [`CERT_USER_KEY`] and, on a TLS connection whose client certificate was
/// verified (`--client-cert-auth`), records the certificate's CN there. As
/// in etcd, a request without a token then acts as the user named by that
/// CN when auth is enabled.
pub(crate) fn cert_user_interceptor(
    mut req: tonic::Request<()>,
) -> Result<tonic::Request<()>, Status> {
    req.metadata_mut().remove(CERT_USER_KEY);
    req.metadata_mut().remove(MEMBER_INTERNAL_KEY);
    let info = req.extensions().get::<tls::ConnInfo>();
    let internal = info.is_some_and(|c| c.member_internal);
    let cn = info.and_then(|c| c.peer_cn.clone());
    if let Some(v) = cn.and_then(|cn| cn.parse().ok()) {
        req.metadata_mut().insert(CERT_USER_KEY, v);
    }
    if internal {
        req.metadata_mut().insert(
            MEMBER_INTERNAL_KEY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    Ok(req)
}

/// Wraps a gRPC service: a request carrying a simple token this member does
/// not hold waits for a read barrier first. The token may come from another
/// member, in an entry committed before the client got it but not applied
/// here yet (a follower learns the commit at the next append): after the
/// barrier this member has applied everything committed when the request
/// arrived, so a token issued anywhere is known — or really unknown. The
/// barrier is bounded (`--request-timeout-ms`) and batched with other reads;
/// on failure the request goes on and is judged on what is applied.
#[derive(Clone)]
pub(crate) struct TokenCatchUp<S> {
    api: EtcdApi,
    inner: S,
}

impl<S> TokenCatchUp<S> {
    pub(crate) fn new(api: EtcdApi, inner: S) -> Self {
        TokenCatchUp { api, inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for TokenCatchUp<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for TokenCatchUp<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        // The ready service answers this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let api = self.api.clone();
        Box::pin(async move {
            let token = req
                .headers()
                .get("token")
                .or_else(|| req.headers().get("authorization"))
                .and_then(|v| v.to_str().ok());
            api.catch_up_token(token).await;
            inner.call(req).await
        })
    }
}

fn token_of(md: &MetadataMap) -> Option<&str> {
    md.get("token")
        .or_else(|| md.get("authorization"))
        .and_then(|v| v.to_str().ok())
}

impl EtcdApi {
    pub(crate) fn auth_rt(&self) -> &AuthRuntime {
        &self.inner.auth
    }

    /// Before judging a simple token this member does not hold: a read
    /// barrier, so an entry that installed it elsewhere is applied here too
    /// (see [`TokenCatchUp`]; the HTTP/1.1 gateway calls it directly).
    pub(crate) async fn catch_up_token(&self, token: Option<&str>) {
        let Some(token) = token else {
            return;
        };
        if self.auth_rt().tokens.simple_unknown(token)
            && self.node().store().auth_state().is_ok_and(|s| s.enabled)
        {
            // A failed barrier (no leader, timeout) leaves the decision to
            // what is applied: the token is then refused as unknown.
            let _ = self.node().read_barrier().await;
        }
    }

    /// `None` while auth is disabled (everything allowed); else who calls,
    /// or etcd's error for a missing or invalid token.
    pub(crate) fn caller(&self, md: &MetadataMap) -> Result<Option<Caller>, Status> {
        let state = self.node().store().auth_state().map_err(storage)?;
        if !state.enabled {
            return Ok(None);
        }
        if md.get(MEMBER_INTERNAL_KEY).is_some() {
            return Ok(Some(Caller {
                user: MEMBER_INTERNAL_USER.to_string(),
                state,
                internal: true,
            }));
        }
        let Some(token) = token_of(md) else {
            // No token: the verified client certificate's CN is the user.
            let cert_user = md.get(CERT_USER_KEY).and_then(|v| v.to_str().ok());
            return match cert_user {
                Some(user) if state.users.contains_key(user) => Ok(Some(Caller {
                    user: user.to_string(),
                    state,
                    internal: false,
                })),
                Some(_) => Err(auth_status(AuthError::PermissionDenied)),
                None => Err(auth_status(AuthError::UserEmpty)),
            };
        };
        let info = self
            .auth_rt()
            .tokens
            .info(token, Instant::now())
            .map_err(auth_status)?;
        if !state.users.contains_key(&info.user) {
            return Err(auth_status(AuthError::InvalidAuthToken));
        }
        Ok(Some(Caller {
            user: info.user,
            state,
            internal: false,
        }))
    }

    /// Any authenticated user (or auth disabled).
    pub(crate) fn check_authenticated(&self, md: &MetadataMap) -> Result<(), Status> {
        self.caller(md).map(|_| ())
    }

    /// The `root` role (or auth disabled).
    pub(crate) fn check_admin(&self, md: &MetadataMap) -> Result<(), Status> {
        match self.caller(md)? {
            None => Ok(()),
            Some(c) if c.is_admin() => Ok(()),
            Some(_) => Err(auth_status(AuthError::PermissionDenied)),
        }
    }

    /// `want` on `[key, range_end)`.
    pub(crate) fn check_range(
        &self,
        md: &MetadataMap,
        key: &[u8],
        range_end: &[u8],
        want: PermKind,
    ) -> Result<(), Status> {
        match self.caller(md)? {
            None => Ok(()),
            Some(c) => c.check(key, range_end, want),
        }
    }

    /// `want` on each of `keys` (a lease's attached keys).
    pub(crate) fn check_keys(
        &self,
        md: &MetadataMap,
        keys: &[Vec<u8>],
        want: PermKind,
    ) -> Result<(), Status> {
        match self.caller(md)? {
            None => Ok(()),
            Some(c) => keys.iter().try_for_each(|k| c.check(k, &[], want)),
        }
    }

    /// Every compare and operation of a transaction, recursively.
    pub(crate) fn check_txn(&self, md: &MetadataMap, txn: &PbTxnRequest) -> Result<(), Status> {
        fn walk(c: &Caller, t: &PbTxnRequest) -> Result<(), Status> {
            for cmp in &t.compare {
                c.check(&cmp.key, &cmp.range_end, PermKind::Read)?;
            }
            for op in t.success.iter().chain(t.failure.iter()) {
                match &op.request {
                    Some(PbTxnOpRequest::RequestRange(r)) => {
                        c.check(&r.key, &r.range_end, PermKind::Read)?
                    }
                    Some(PbTxnOpRequest::RequestPut(p)) => {
                        c.check(&p.key, &[], PermKind::Write)?;
                        if p.prev_kv {
                            c.check(&p.key, &[], PermKind::Read)?;
                        }
                    }
                    Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                        c.check(&d.key, &d.range_end, PermKind::Write)?;
                        if d.prev_kv {
                            c.check(&d.key, &d.range_end, PermKind::Read)?;
                        }
                    }
                    Some(PbTxnOpRequest::RequestTxn(t)) => walk(c, t)?,
                    None => {}
                }
            }
            Ok(())
        }
        match self.caller(md)? {
            None => Ok(()),
            Some(c) => walk(&c, txn),
        }
    }

    /// A client write as proposed: with the caller and the auth revision
    /// its permissions were judged at ([`Command::AsUser`]), so the apply
    /// refuses it on every member alike if auth changed in between, or if
    /// auth was enabled before it in the log although this member had not
    /// applied that yet (then the user is empty). A member-internal
    /// caller's write stays plain: it acts with root's rights.
    pub(crate) fn as_caller(&self, md: &MetadataMap, cmd: Command) -> Result<Command, Status> {
        let (user, auth_revision) = match self.caller(md)? {
            Some(c) if c.internal => return Ok(cmd),
            Some(c) => (c.user, c.state.revision),
            None => (
                String::new(),
                self.node().store().auth_state().map_err(storage)?.revision,
            ),
        };
        Ok(Command::AsUser {
            user,
            auth_revision,
            cmd: Box::new(cmd),
        })
    }

    /// [`EtcdApi::check_admin`], returning the caller's user name (empty
    /// while auth is disabled: anyone may then change auth).
    pub(crate) fn admin_caller(&self, md: &MetadataMap) -> Result<String, Status> {
        self.check_admin(md)?;
        Ok(self.caller(md)?.map(|c| c.user).unwrap_or_default())
    }

    /// Propose an auth change by `by`; once it is applied, record it in the
    /// event timeline ([`record_auth_event`](Self::record_auth_event)).
    async fn propose_auth(&self, by: &str, cmd: AuthCommand) -> Result<(), Status> {
        let what = describe_auth_change(&cmd);
        let kind = auth_change_kind(&cmd);
        match self.propose(Command::Auth(cmd)).await? {
            ApplyResponse::Auth { .. } => {
                self.record_auth_event(by, kind, what).await;
                Ok(())
            }
            _ => Err(Status::internal(
                "etcdserver: unexpected apply result for an auth change",
            )),
        }
    }

    /// Write one `auth_changed` event (alerting's timeline format, shown by
    /// `phalanx events`): key `AUTH_EVENTS_PREFIX<ms, 16 digits>-<member>-<n>`,
    /// value `{"ts_ms","kind","member","message","labels"}`. A Put through
    /// Raft like any other, proposed by the member that made the change
    /// (forwarded to the leader) after the change is applied; it carries no
    /// password or hash. Best effort: a failure (no quorum, NOSPACE alarm,
    /// [`AUTH_EVENT_TIMEOUT_MS`]) is logged and does not fail the change.
    async fn record_auth_event(&self, by: &str, change: &str, what: String) {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let member = self.node().name().to_string();
        let message = if by.is_empty() {
            format!("{what} (auth was disabled: caller not identified)")
        } else {
            format!("{what} by {by}")
        };
        let mut labels = serde_json::Map::new();
        labels.insert("change".into(), change.into());
        if !by.is_empty() {
            labels.insert("user".into(), by.into());
        }
        let value = serde_json::json!({
            "ts_ms": ts_ms,
            "kind": AUTH_EVENT_KIND,
            "member": member,
            "message": message,
            "labels": labels,
        });
        let key = format!(
            "{AUTH_EVENTS_PREFIX}{:016}-{member}-{}",
            ts_ms.max(0),
            rand::random::<u32>()
        );
        let put = etcd_client::proto::PbPutRequest {
            key: key.into_bytes(),
            value: value.to_string().into_bytes(),
            ..Default::default()
        };
        let bound = std::time::Duration::from_millis(AUTH_EVENT_TIMEOUT_MS);
        match tokio::time::timeout(bound, self.propose(Command::put(&put))).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                "auth change applied but its event was not recorded: {}",
                e.message()
            ),
            Err(_) => tracing::warn!(
                "auth change applied but its event was not recorded within {AUTH_EVENT_TIMEOUT_MS} ms"
            ),
        }
    }

    /// bcrypt on a blocking thread, at most one per core at a time.
    async fn hash_password(&self, password: String) -> Result<String, Status> {
        let _permit = self
            .auth_rt()
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        let cost = self.auth_rt().bcrypt_cost;
        tokio::task::spawn_blocking(move || auth::password::hash(&password, cost))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: hashing: {e}")))?
            .map_err(|e| Status::invalid_argument(format!("etcdserver: {e}")))
    }

    /// bcrypt on the member's verification threads, interleaved in pairs.
    async fn verify_password(&self, password: String, hash: String) -> Result<bool, Status> {
        let _permit = self
            .auth_rt()
            .verifying
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.auth_rt().verifier.submit(password, hash, move |ok| {
            // The request may have been dropped meanwhile: nobody to tell.
            let _ = tx.send(ok);
        });
        rx.await
            .map_err(|_| Status::internal("etcdserver: password verification thread failed"))
    }

    /// Authenticate: check the password, issue a token. Shared with the
    /// JSON gateway. A JWT is signed here; a simple token goes through Raft
    /// (etcd's `InternalAuthenticateRequest`) so every member knows it: its
    /// hash is proposed with the auth revision the password was checked at,
    /// and the apply refuses it if auth changed since (then the password is
    /// checked again, at most [`AUTHENTICATE_ATTEMPTS`] times).
    ///
    /// That apply-time check is also why a simple-token login needs no read
    /// barrier before a password that matches: if this member's state is
    /// behind (a password change or user deletion not applied here yet),
    /// the entry is refused as stale and the retry checks again after a
    /// barrier. Only a refusal (unknown user, wrong password, auth off) is
    /// confirmed with a barrier first, so a lagging member never refuses a
    /// valid login. This saves a ReadIndex round per login. A JWT has no
    /// entry to refuse it, so its login always takes the barrier first.
    pub(crate) async fn do_authenticate(
        &self,
        name: String,
        password: String,
    ) -> Result<AuthenticateResponse, Status> {
        let stale = AuthError::AuthOldRevision.to_string();
        let tokens = &self.auth_rt().tokens;
        // Whether this member's state is known to be current: after a barrier.
        let mut confirmed = !tokens.is_simple();
        let mut attempt = 0;
        loop {
            attempt += 1;
            if confirmed {
                self.barrier(false).await?;
            }
            let state = self.node().store().auth_state().map_err(storage)?;
            let refusal = if !state.enabled {
                Some(AuthError::AuthNotEnabled)
            } else if !tokens.can_issue() {
                return Err(Status::failed_precondition(
                    "etcdserver: this member verifies JWTs but cannot issue them (no priv-key in --auth-token): authenticate on a member that has it",
                ));
            } else {
                match state.users.get(&name) {
                    Some(user)
                        if !user.no_password
                            && self
                                .verify_password(password.clone(), user.password_hash.clone())
                                .await? =>
                    {
                        None
                    }
                    _ => Some(AuthError::AuthFailed),
                }
            };
            if let Some(refusal) = refusal {
                if confirmed {
                    return Err(auth_status(refusal));
                }
                confirmed = true;
                continue;
            }
            let Some((token, token_hash)) = tokens.generate_simple() else {
                let token = tokens.sign(&name, state.revision).map_err(auth_status)?;
                return Ok(AuthenticateResponse {
                    header: Some(self.current_header()),
                    token,
                });
            };
            let cmd = Command::Auth(AuthCommand::Authenticate {
                name: name.clone(),
                token_hash,
                checked_revision: state.revision,
                issued_unix_ms: Tokens::unix_ms_now(),
            });
            match self.propose(cmd).await {
                // Applied here (installed by `TokenApply`) before the answer.
                Ok(ApplyResponse::Auth { .. }) => {
                    return Ok(AuthenticateResponse {
                        header: Some(self.current_header()),
                        token,
                    })
                }
                Ok(_) => {
                    return Err(Status::internal(
                        "etcdserver: unexpected apply result for Authenticate",
                    ))
                }
                // Auth changed since the check: check again on a state that
                // includes the change (after a barrier).
                Err(e) if e.message() == stale && attempt < AUTHENTICATE_ATTEMPTS => {
                    confirmed = true;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn check_name_len(&self, name: &str) -> Result<(), Status> {
        if name.len() > auth::AuthLimits::MAX_NAME_BYTES {
            return Err(auth_status(AuthError::LimitExceeded));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Auth for EtcdApi {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        self.propose_auth(&by, AuthCommand::Enable).await?;
        Ok(Response::new(AuthEnableResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        self.propose_auth(&by, AuthCommand::Disable).await?;
        Ok(Response::new(AuthDisableResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.check_authenticated(request.metadata())?;
        self.barrier(false).await?;
        let state = self.node().store().auth_state().map_err(storage)?;
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.current_header()),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        Ok(Response::new(
            self.do_authenticate(req.name, req.password).await?,
        ))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        if req.name.is_empty() {
            return Err(auth_status(AuthError::UserEmpty));
        }
        self.check_name_len(&req.name)?;
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            String::new()
        } else {
            self.hash_password(req.password).await?
        };
        self.propose_auth(
            &by,
            AuthCommand::UserAdd {
                name: req.name,
                password_hash,
                no_password,
            },
        )
        .await?;
        Ok(Response::new(AuthUserAddResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let req = request.into_inner();
        if let Some(c) = &caller {
            if !c.is_admin() && c.user != req.name {
                return Err(auth_status(AuthError::PermissionDenied));
            }
        }
        self.barrier(false).await?;
        let state = self.node().store().auth_state().map_err(storage)?;
        let user = state
            .users
            .get(&req.name)
            .ok_or_else(|| auth_status(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header: Some(self.current_header()),
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.check_admin(request.metadata())?;
        self.barrier(false).await?;
        let state = self.node().store().auth_state().map_err(storage)?;
        Ok(Response::new(AuthUserListResponse {
            header: Some(self.current_header()),
            users: state.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        let req = request.into_inner();
        self.propose_auth(
            &by,
            AuthCommand::UserDelete {
                name: req.name.clone(),
            },
        )
        .await?;
        // Its tokens were dropped on every member at apply (`TokenApply`).
        Ok(Response::new(AuthUserDeleteResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        if req.name.is_empty() {
            return Err(auth_status(AuthError::UserEmpty));
        }
        let password_hash = self.hash_password(req.password).await?;
        self.propose_auth(
            &by,
            AuthCommand::UserChangePassword {
                name: req.name.clone(),
                password_hash,
            },
        )
        .await?;
        // Its tokens were dropped on every member at apply (`TokenApply`).
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        let req = request.into_inner();
        self.propose_auth(
            &by,
            AuthCommand::UserGrantRole {
                user: req.user,
                role: req.role,
            },
        )
        .await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        let req = request.into_inner();
        self.propose_auth(
            &by,
            AuthCommand::UserRevokeRole {
                user: req.name,
                role: req.role,
            },
        )
        .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        let req = request.into_inner();
        self.check_name_len(&req.name)?;
        self.propose_auth(&by, AuthCommand::RoleAdd { name: req.name })
            .await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = self.caller(request.metadata())?;
        let req = request.into_inner();
        if let Some(c) = &caller {
            let holds = c
                .state
                .users
                .get(&c.user)
                .is_some_and(|u| u.roles.contains(&req.role));
            if !c.is_admin() && !holds {
                return Err(auth_status(AuthError::PermissionDenied));
            }
        }
        self.barrier(false).await?;
        let state = self.node().store().auth_state().map_err(storage)?;
        let perm = if req.role == auth::ROOT_ROLE && !state.roles.contains_key(&req.role) {
            // etcd's implicit root role: everything.
            vec![authpb::Permission {
                perm_type: PermKind::ReadWrite.to_i32(),
                key: Vec::new(),
                range_end: vec![0],
            }]
        } else {
            state
                .roles
                .get(&req.role)
                .ok_or_else(|| auth_status(AuthError::RoleNotFound))?
                .perms
                .iter()
                .map(|p| authpb::Permission {
                    perm_type: p.kind.to_i32(),
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect()
        };
        Ok(Response::new(AuthRoleGetResponse {
            header: Some(self.current_header()),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.check_admin(request.metadata())?;
        self.barrier(false).await?;
        let state = self.node().store().auth_state().map_err(storage)?;
        Ok(Response::new(AuthRoleListResponse {
            header: Some(self.current_header()),
            roles: state.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        let req = request.into_inner();
        self.propose_auth(&by, AuthCommand::RoleDelete { name: req.role })
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        let req = request.into_inner();
        self.check_size(req.encoded_len())?;
        let Some(p) = req.perm else {
            return Err(Status::invalid_argument("etcdserver: permission not given"));
        };
        let kind = PermKind::from_i32(p.perm_type)
            .ok_or_else(|| Status::invalid_argument("etcdserver: invalid permission type"))?;
        self.propose_auth(
            &by,
            AuthCommand::RoleGrantPermission {
                role: req.name,
                perm: Perm {
                    kind,
                    key: p.key,
                    range_end: p.range_end,
                },
            },
        )
        .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: Some(self.current_header()),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let by = self.admin_caller(request.metadata())?;
        let req = request.into_inner();
        self.propose_auth(
            &by,
            AuthCommand::RoleRevokePermission {
                role: req.role,
                key: req.key,
                range_end: req.range_end,
            },
        )
        .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: Some(self.current_header()),
        }))
    }
}

#[cfg(test)]
mod cert_user_tests {
    use super::*;

    #[test]
    fn a_client_cannot_forge_the_certificate_user() {
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert(CERT_USER_KEY, "root".parse().unwrap());
        let req = cert_user_interceptor(req).unwrap();
        assert!(req.metadata().get(CERT_USER_KEY).is_none());
    }

    #[test]
    fn a_verified_certificate_names_the_user() {
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert(CERT_USER_KEY, "root".parse().unwrap());
        req.extensions_mut().insert(tls::ConnInfo {
            remote_addr: None,
            tls: true,
            peer_cn: Some("alice".into()),
            ..Default::default()
        });
        let req = cert_user_interceptor(req).unwrap();
        assert_eq!(req.metadata().get(CERT_USER_KEY).unwrap(), "alice");
        assert!(req.metadata().get(MEMBER_INTERNAL_KEY).is_none());
    }

    #[test]
    fn only_a_member_internal_connection_is_internal() {
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert(MEMBER_INTERNAL_KEY, "1".parse().unwrap());
        let req = cert_user_interceptor(req).unwrap();
        assert!(req.metadata().get(MEMBER_INTERNAL_KEY).is_none());
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(tls::ConnInfo {
            member_internal: true,
            ..Default::default()
        });
        let req = cert_user_interceptor(req).unwrap();
        assert_eq!(req.metadata().get(MEMBER_INTERNAL_KEY).unwrap(), "1");
    }
}

/// Auth and permission changes are recorded under this prefix, the event
/// timeline of `phalanx events` (`alerting::store::DEFAULT_PREFIX` +
/// `/events/`; etcd-api does not depend on alerting, so the prefix is
/// repeated here and `auth_events.rs` checks they agree end to end).
pub const AUTH_EVENTS_PREFIX: &str = "/phalanx/alerting/events/";
/// The event kind of an auth or permission change.
pub const AUTH_EVENT_KIND: &str = "auth_changed";
/// Bound on recording one auth event, in ms.
pub const AUTH_EVENT_TIMEOUT_MS: u64 = 5_000;

fn auth_change_kind(cmd: &AuthCommand) -> &'static str {
    match cmd {
        AuthCommand::Enable => "auth_enable",
        AuthCommand::Disable => "auth_disable",
        AuthCommand::UserAdd { .. } => "user_add",
        AuthCommand::UserDelete { .. } => "user_delete",
        AuthCommand::UserChangePassword { .. } => "user_change_password",
        AuthCommand::UserGrantRole { .. } => "user_grant_role",
        AuthCommand::UserRevokeRole { .. } => "user_revoke_role",
        AuthCommand::RoleAdd { .. } => "role_add",
        AuthCommand::RoleDelete { .. } => "role_delete",
        AuthCommand::RoleGrantPermission { .. } => "role_grant_permission",
        AuthCommand::RoleRevokePermission { .. } => "role_revoke_permission",
        AuthCommand::Authenticate { .. } => "authenticate",
    }
}

/// `key`, `[key, range_end)` or `key and everything after`, printable.
fn describe_range(key: &[u8], range_end: &[u8]) -> String {
    let k = String::from_utf8_lossy(key);
    match range_end {
        [] => format!("key {k:?}"),
        [0] => format!("keys from {k:?} on"),
        end => format!("keys [{k:?}, {:?})", String::from_utf8_lossy(end)),
    }
}

/// What an auth change did, for people; never a password or a hash.
fn describe_auth_change(cmd: &AuthCommand) -> String {
    match cmd {
        AuthCommand::Enable => "auth enabled".into(),
        AuthCommand::Disable => "auth disabled".into(),
        AuthCommand::UserAdd {
            name, no_password, ..
        } => {
            if *no_password {
                format!("user {name} added (no password: certificate login only)")
            } else {
                format!("user {name} added")
            }
        }
        AuthCommand::UserDelete { name } => format!("user {name} deleted"),
        AuthCommand::UserChangePassword { name, .. } => format!("password of user {name} changed"),
        AuthCommand::UserGrantRole { user, role } => format!("role {role} granted to user {user}"),
        AuthCommand::UserRevokeRole { user, role } => {
            format!("role {role} revoked from user {user}")
        }
        AuthCommand::RoleAdd { name } => format!("role {name} added"),
        AuthCommand::RoleDelete { name } => format!("role {name} deleted"),
        AuthCommand::RoleGrantPermission { role, perm } => format!(
            "{} on {} granted to role {role}",
            format!("{:?}", perm.kind).to_uppercase(),
            describe_range(&perm.key, &perm.range_end)
        ),
        AuthCommand::RoleRevokePermission {
            role,
            key,
            range_end,
        } => format!(
            "permission on {} revoked from role {role}",
            describe_range(key, range_end)
        ),
        AuthCommand::Authenticate { name, .. } => format!("user {name} authenticated"),
    }
}

#[cfg(test)]
mod auth_event_tests {
    use super::*;

    #[test]
    fn descriptions_name_the_change_and_never_the_secret() {
        let d = describe_auth_change(&AuthCommand::UserAdd {
            name: "alice".into(),
            password_hash: "$2b$10$secrethash".into(),
            no_password: false,
        });
        assert_eq!(d, "user alice added");
        let d = describe_auth_change(&AuthCommand::UserChangePassword {
            name: "alice".into(),
            password_hash: "$2b$10$secrethash".into(),
        });
        assert!(!d.contains("secret"), "{d}");
        let d = describe_auth_change(&AuthCommand::RoleGrantPermission {
            role: "r".into(),
            perm: Perm {
                kind: PermKind::ReadWrite,
                key: b"/app/".to_vec(),
                range_end: b"/app0".to_vec(),
            },
        });
        assert_eq!(
            d,
            "READWRITE on keys [\"/app/\", \"/app0\") granted to role r"
        );
        assert_eq!(describe_range(b"k", b"\0"), "keys from \"k\" on");
    }
}
