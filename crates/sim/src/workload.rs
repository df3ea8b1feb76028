//! The seeded client workload (reads, writes, cas through the members'
//! API layer) and its history recorder; with auth on, the setup through
//! the log, the logins, the users' writes as `Command::AsUser`, root's auth
//! changes and the final auth checks ([`AuthOutcomes`]).

#[allow(unused_imports)]
use super::*;

/// Shared recorder of the history (JSON lines) and of acknowledged writes.
pub(crate) struct Recorder {
    pub(crate) t0: Instant,
    pub(crate) lines: Mutex<Vec<String>>,
    /// (key, value, revision) of every acknowledged write / successful cas.
    pub(crate) acked: Mutex<Vec<(String, String, i64)>>,
    pub(crate) counts: Mutex<Counts>,
}

/// Completed operations by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

impl Recorder {
    pub(crate) fn now_us(&self) -> i64 {
        (Instant::now() - self.t0).as_micros() as i64
    }

    pub(crate) fn event(
        &self,
        process: u64,
        ty: EventType,
        f: Function,
        key: &str,
        value: serde_json::Value,
    ) {
        let line = Event::new(process as i64, ty, f, key, value, self.now_us()).to_line();
        self.lines.lock().expect("recorder poisoned").push(line);
        let mut c = self.counts.lock().expect("recorder poisoned");
        match ty {
            EventType::Ok => c.ok += 1,
            EventType::Fail => c.fail += 1,
            EventType::Info => c.info += 1,
            EventType::Invoke => {}
        }
    }
}

pub(crate) enum OpKind {
    Read,
    Write,
    Cas,
}

pub(crate) enum WriteOutcome {
    Applied(ApplyResponse),
    /// Certainly not proposed: no leader could be found to send it to.
    NotSent,
    /// May or may not take effect.
    Unknown,
}

/// A write through the member's API layer (forwarded to the leader if
/// needed), as the etcd KV service does it.
pub(crate) async fn propose(node: &Arc<Node>, cmd: Command) -> WriteOutcome {
    match node.propose(cmd).await {
        Ok(outcome) => match ApplyResponse::decode(&outcome.response) {
            Ok(r) => WriteOutcome::Applied(r),
            Err(_) => WriteOutcome::Unknown,
        },
        Err(NodeError::NoLeader) => WriteOutcome::NotSent,
        Err(_) => WriteOutcome::Unknown,
    }
}

pub(crate) fn read_value(store: &Store, key: &str, revision: i64) -> Option<(String, i64)> {
    let req = PbRangeRequest {
        key: key.as_bytes().to_vec(),
        revision,
        ..Default::default()
    };
    let resp = store.range(&req).ok()?;
    resp.kvs.first().map(|kv| {
        (
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.mod_revision,
        )
    })
}

pub(crate) struct ClientCtx {
    pub(crate) net: Arc<Net>,
    pub(crate) rec: Arc<Recorder>,
    pub(crate) keys: Vec<String>,
    pub(crate) end: Instant,
    pub(crate) max_think_ms: u64,
    /// With [`SimConfig::auth`](crate::SimConfig): who each client is, and
    /// the permission outcomes.
    pub(crate) auth: Option<Arc<AuthRun>>,
}

pub(crate) async fn client(ctx: Arc<ClientCtx>, pid: u64, seed: u64) {
    // The workload rng draws only the op, key and think time: a function of the seed.
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (pid + 1));
    let mut route = StdRng::seed_from_u64(seed ^ (pid << 32) ^ 0x4047e);
    let mut seq = 0u64;
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    if let Some(run) = &ctx.auth {
        login(&ctx, run, pid, &mut route).await;
    }
    while Instant::now() < ctx.end {
        let kind = match rng.gen_range(0..100) {
            0..=39 => OpKind::Read,
            40..=79 => OpKind::Write,
            _ => OpKind::Cas,
        };
        let key = ctx.keys[rng.gen_range(0..ctx.keys.len())].clone();
        let think = Duration::from_millis(rng.gen_range(0..=ctx.max_think_ms));
        seq += 1;
        let value = format!("{pid}.{seq}");
        let expect_absent = rng.gen_bool(0.2);
        // Route: half the operations to a member that believes it leads (a
        // client following leader hints), half to any live member (a client
        // with several endpoints), whose Node forwards to the leader.
        let target = loop {
            if Instant::now() >= ctx.end {
                return;
            }
            let to_leader = route.gen_bool(0.5);
            let leaders = if to_leader {
                ctx.net.leaders()
            } else {
                Vec::new()
            };
            let pool = if leaders.is_empty() {
                ctx.net.all()
            } else {
                leaders
            };
            if let Some(t) = pool.choose(&mut route) {
                break t.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (target_id, target) = target;
        match kind {
            OpKind::Read => {
                ctx.rec.event(
                    pid,
                    EventType::Invoke,
                    Function::Read,
                    &key,
                    serde_json::Value::Null,
                );
                // The etcd KV service's linearizable read: the member's
                // ReadIndex barrier (skipped by the planted SkipReadIndex),
                // then its own store.
                let ok = target.node.read_barrier().await.is_ok()
                    && ctx
                        .auth
                        .as_ref()
                        .is_none_or(|run| read_permitted(run, pid, &target, target_id, &key));
                match ok.then(|| {
                    target.store.range(&PbRangeRequest {
                        key: key.as_bytes().to_vec(),
                        ..Default::default()
                    })
                }) {
                    Some(Ok(resp)) => {
                        let v = resp
                            .kvs
                            .first()
                            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                        ctx.rec.event(
                            pid,
                            EventType::Ok,
                            Function::Read,
                            &key,
                            v.clone().map_or(serde_json::Value::Null, Into::into),
                        );
                        seen.insert(key.clone(), v);
                    }
                    _ => ctx.rec.event(
                        pid,
                        EventType::Fail,
                        Function::Read,
                        &key,
                        serde_json::Value::Null,
                    ),
                }
            }
            OpKind::Write => {
                ctx.rec.event(
                    pid,
                    EventType::Invoke,
                    Function::Write,
                    &key,
                    value.clone().into(),
                );
                let put = PbPutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                };
                let outcome = match &ctx.auth {
                    None => propose(&target.node, Command::put(&put)).await,
                    Some(run) => {
                        match propose_as(run, pid, &target, target_id, Command::put(&put), "put")
                            .await
                        {
                            AuthWrite::Applied(r) => WriteOutcome::Applied(r),
                            // Refused when applied: certainly no effect.
                            AuthWrite::Refused => WriteOutcome::NotSent,
                            AuthWrite::Other(o) => o,
                        }
                    }
                };
                match outcome {
                    WriteOutcome::Applied(ApplyResponse::Put(r)) => {
                        ctx.rec.event(
                            pid,
                            EventType::Ok,
                            Function::Write,
                            &key,
                            value.clone().into(),
                        );
                        let rev = r.header.map_or(0, |h| h.revision);
                        ctx.rec.acked.lock().expect("recorder poisoned").push((
                            key.clone(),
                            value.clone(),
                            rev,
                        ));
                        seen.insert(key.clone(), Some(value));
                    }
                    WriteOutcome::NotSent => {
                        ctx.rec
                            .event(pid, EventType::Fail, Function::Write, &key, value.into())
                    }
                    _ => ctx
                        .rec
                        .event(pid, EventType::Info, Function::Write, &key, value.into()),
                }
            }
            OpKind::Cas => {
                let expected = if expect_absent {
                    None
                } else {
                    seen.get(&key).cloned().flatten()
                };
                let args = Event::cas_value(expected.as_deref(), &value);
                ctx.rec
                    .event(pid, EventType::Invoke, Function::Cas, &key, args.clone());
                let compare = match &expected {
                    Some(v) => PbCompare {
                        result: consts::CMP_EQUAL,
                        target: consts::TARGET_VALUE,
                        key: key.as_bytes().to_vec(),
                        target_union: Some(PbTargetUnion::Value(v.as_bytes().to_vec())),
                        ..Default::default()
                    },
                    None => PbCompare {
                        result: consts::CMP_EQUAL,
                        target: consts::TARGET_VERSION,
                        key: key.as_bytes().to_vec(),
                        target_union: Some(PbTargetUnion::Version(0)),
                        ..Default::default()
                    },
                };
                let put = PbPutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                };
                let txn = PbTxnRequest {
                    compare: vec![compare],
                    success: vec![PbTxnRequestOp {
                        request: Some(PbTxnOpRequest::RequestPut(put)),
                    }],
                    failure: vec![],
                };
                let outcome = match &ctx.auth {
                    None => propose(&target.node, Command::txn(&txn)).await,
                    Some(run) => {
                        match propose_as(run, pid, &target, target_id, Command::txn(&txn), "cas")
                            .await
                        {
                            AuthWrite::Applied(r) => WriteOutcome::Applied(r),
                            // Refused: no effect, but a cas is never `fail`
                            // for an error (that asserts a failed compare).
                            AuthWrite::Refused | AuthWrite::Other(_) => WriteOutcome::Unknown,
                        }
                    }
                };
                match outcome {
                    WriteOutcome::Applied(ApplyResponse::Txn(r)) if r.succeeded => {
                        ctx.rec.event(pid, EventType::Ok, Function::Cas, &key, args);
                        let rev = r.header.map_or(0, |h| h.revision);
                        ctx.rec.acked.lock().expect("recorder poisoned").push((
                            key.clone(),
                            value.clone(),
                            rev,
                        ));
                        seen.insert(key.clone(), Some(value));
                    }
                    WriteOutcome::Applied(ApplyResponse::Txn(_)) => {
                        ctx.rec
                            .event(pid, EventType::Fail, Function::Cas, &key, args)
                    }
                    // A cas that certainly did not run still cannot be `fail`:
                    // in the history format that asserts the comparison failed.
                    _ => ctx
                        .rec
                        .event(pid, EventType::Info, Function::Cas, &key, args),
                }
            }
        }
        tokio::time::sleep(think).await;
    }
}

// ---------------------------------------------------------------- run

// ---------------------------------------------------------------- auth

/// The user the workload's clients act as: READWRITE on every workload key.
pub const AUTH_PERMITTED_USER: &str = "alice";
/// The user of the last client when auth is on: READ only on the workload
/// keys, so each of its writes and compare-and-sets must be refused — at
/// apply time, identically on every member.
pub const AUTH_DENIED_USER: &str = "mallory";
/// bcrypt cost of the simulated users' passwords. The lowest bcrypt
/// allows: what the simulator checks (who may do what, on every member) does
/// not depend on it, and a debug build verifies a cost-4 hash quickly.
pub const SIM_BCRYPT_COST: u32 = auth::password::MIN_COST;
/// Every this many simulated ms, root changes auth (grants a permission to
/// a role nobody has): the auth revision moves while writes are in flight,
/// so the apply-time revision check (`revision of auth store is old`) runs.
pub const AUTH_CHURN_EVERY_MS: u64 = 1_500;
/// How long the auth setup (users, roles, enable; before the workload and
/// its faults) may take, simulated ms.
pub const AUTH_SETUP_TIMEOUT_MS: u64 = 20_000;
/// The role of [`AUTH_PERMITTED_USER`], [`AUTH_DENIED_USER`] and of the
/// churn (held by nobody).
const ROLE_READWRITE: &str = "rw";
const ROLE_READONLY: &str = "ro";
const ROLE_CHURN: &str = "churn";
/// The permissions cover every workload key (`k0`, `k1`, …): `[k, l)`.
const KEYS_FROM: &[u8] = b"k";
const KEYS_TO: &[u8] = b"l";

/// What auth did in a run with [`SimConfig::auth`](crate::SimConfig) on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthOutcomes {
    /// Logins (`Authenticate` through the log, password checked by the member
    /// that received it) accepted.
    pub logins: u64,
    /// Wrong-password logins refused by the member (each client tries one).
    pub wrong_passwords_refused: u64,
    /// Writes and compare-and-sets of [`AUTH_DENIED_USER`] refused with
    /// `permission denied` when applied.
    pub denied: u64,
    /// Writes (either user) and logins refused with `revision of auth store
    /// is old`: auth changed between the member's judgement and the apply.
    pub stale_revision: u64,
    /// Reads permitted after the read barrier (both users may read).
    pub reads_permitted: u64,
    /// Auth changes root made during the workload.
    pub churn: u64,
    /// Everything that broke the rules: a refused user's write applied, a
    /// permitted user refused, a wrong password accepted, members whose
    /// auth state differs after the run. Any entry fails the run.
    pub violations: Vec<String>,
}

impl AuthOutcomes {
    pub(crate) fn note(&self) -> String {
        format!(
            " auth=[logins={} badpw-refused={} denied={} stale-rev={} reads-permitted={} churn={} violations={}]",
            self.logins,
            self.wrong_passwords_refused,
            self.denied,
            self.stale_revision,
            self.reads_permitted,
            self.churn,
            self.violations.len()
        )
    }
}

/// A run's auth: the users' passwords and the outcomes so far.
pub(crate) struct AuthRun {
    pub(crate) outcomes: Mutex<AuthOutcomes>,
    /// The pid of the client acting as [`AUTH_DENIED_USER`].
    pub(crate) denied_pid: u64,
    /// [`SimConfig::planted_auth_bypass`](crate::SimConfig).
    bypass: bool,
}

impl AuthRun {
    pub(crate) fn new(clients: usize, bypass: bool) -> Self {
        AuthRun {
            outcomes: Mutex::default(),
            bypass,
            // With one client, it is the permitted one (nobody is denied).
            denied_pid: if clients >= 2 {
                clients as u64 - 1
            } else {
                u64::MAX
            },
        }
    }

    fn user(&self, pid: u64) -> &'static str {
        if pid == self.denied_pid {
            AUTH_DENIED_USER
        } else {
            AUTH_PERMITTED_USER
        }
    }

    fn with(&self, f: impl FnOnce(&mut AuthOutcomes)) {
        f(&mut self.outcomes.lock().expect("auth outcomes poisoned"))
    }

    fn violation(&self, v: String) {
        self.with(|o| o.violations.push(v))
    }

    fn password(user: &str) -> String {
        format!("{user}-sim-password")
    }
}

/// The outcome of an auth change or a login through the log.
enum AuthProposal {
    Applied,
    Refused(auth::AuthError),
    /// Not sent, timed out, or no answer: may or may not have been applied.
    Unknown,
}

async fn propose_auth(node: &Arc<Node>, cmd: auth::AuthCommand) -> AuthProposal {
    match propose(node, Command::Auth(cmd)).await {
        WriteOutcome::Applied(ApplyResponse::Auth { .. }) => AuthProposal::Applied,
        WriteOutcome::Applied(ApplyResponse::Error(mvcc::EtcdError::Auth(e))) => {
            AuthProposal::Refused(e)
        }
        _ => AuthProposal::Unknown,
    }
}

/// Root's setup through the replicated log, before the workload (and its
/// faults) start: `root` (user and role), the permitted user with READWRITE
/// on the keys, the denied user with READ only, the churn role, then auth
/// enable — etcd's order (root must exist before enabling). Each step is
/// retried until applied; a step refused after an unanswered attempt (the
/// user already exists, …) was applied by that attempt. Ends by checking the
/// result on a member that passed a read barrier.
pub(crate) async fn setup_auth(net: &Arc<Net>, seed: u64) -> Result<(), SimError> {
    use auth::{AuthCommand as A, Perm, PermKind};
    let hash = |user: &str, n: u8| {
        // Salts from the seed: the log is a function of the seed.
        let mut salt = [n; 16];
        salt[..8].copy_from_slice(&seed.to_le_bytes());
        auth::password::hash_with_salt(&AuthRun::password(user), SIM_BCRYPT_COST, salt)
            .map_err(|e| SimError::Config(format!("hashing {user}'s password: {e}")))
    };
    let user_add = |name: &str, n: u8| -> Result<A, SimError> {
        Ok(A::UserAdd {
            name: name.into(),
            password_hash: hash(name, n)?,
            no_password: false,
        })
    };
    let perm = |role: &str, kind| A::RoleGrantPermission {
        role: role.into(),
        perm: Perm {
            kind,
            key: KEYS_FROM.to_vec(),
            range_end: KEYS_TO.to_vec(),
        },
    };
    let grant = |user: &str, role: &str| A::UserGrantRole {
        user: user.into(),
        role: role.into(),
    };
    let steps = vec![
        user_add(auth::ROOT_USER, 1)?,
        A::RoleAdd {
            name: auth::ROOT_ROLE.into(),
        },
        grant(auth::ROOT_USER, auth::ROOT_ROLE),
        user_add(AUTH_PERMITTED_USER, 2)?,
        A::RoleAdd {
            name: ROLE_READWRITE.into(),
        },
        perm(ROLE_READWRITE, PermKind::ReadWrite),
        grant(AUTH_PERMITTED_USER, ROLE_READWRITE),
        user_add(AUTH_DENIED_USER, 3)?,
        A::RoleAdd {
            name: ROLE_READONLY.into(),
        },
        perm(ROLE_READONLY, PermKind::Read),
        grant(AUTH_DENIED_USER, ROLE_READONLY),
        A::RoleAdd {
            name: ROLE_CHURN.into(),
        },
        A::Enable,
    ];
    let deadline = Instant::now() + Duration::from_millis(AUTH_SETUP_TIMEOUT_MS);
    let too_late = |what: String| SimError::Start {
        id: 0,
        detail: format!(
            "auth setup: {what} not applied within {AUTH_SETUP_TIMEOUT_MS} simulated ms"
        ),
    };
    for step in steps {
        let mut uncertain = false;
        loop {
            if Instant::now() >= deadline {
                return Err(too_late(format!("{step:?}")));
            }
            let Some((_, member)) = net.all().into_iter().next() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match propose_auth(&member.node, step.clone()).await {
                AuthProposal::Applied => break,
                AuthProposal::Refused(_) if uncertain => break,
                AuthProposal::Refused(e) => {
                    return Err(SimError::Start {
                        id: 0,
                        detail: format!("auth setup: {step:?} refused: {e}"),
                    })
                }
                AuthProposal::Unknown => {
                    uncertain = true;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    // What the setup meant to build, as applied.
    loop {
        if Instant::now() >= deadline {
            return Err(too_late("the checked auth state".into()));
        }
        if let Some((_, m)) = net.all().into_iter().next() {
            if m.node.read_barrier().await.is_ok() {
                let s = m.store.auth_state().map_err(|e| SimError::Start {
                    id: 0,
                    detail: format!("auth setup: reading the auth state: {e}"),
                })?;
                let ok = s.enabled
                    && s.is_admin(auth::ROOT_USER)
                    && s.permitted(AUTH_PERMITTED_USER, KEYS_FROM, KEYS_TO, PermKind::Write)
                    && s.permitted(AUTH_DENIED_USER, KEYS_FROM, KEYS_TO, PermKind::Read)
                    && !s.permitted(AUTH_DENIED_USER, KEYS_FROM, KEYS_TO, PermKind::Write);
                return if ok {
                    Ok(())
                } else {
                    Err(SimError::Start {
                        id: 0,
                        detail: format!(
                            "auth setup applied, but the state is not as set up: {s:?}"
                        ),
                    })
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client's logins at its start, as the etcd API's Authenticate does them:
/// the member that receives it checks the password against its applied
/// state, then proposes the token's hash with the auth revision it checked
/// at; the apply refuses it if auth changed since. First a wrong password
/// (refused by the member), then the right one until it is accepted.
async fn login(ctx: &ClientCtx, run: &AuthRun, pid: u64, route: &mut StdRng) {
    let user = run.user(pid);
    let mut attempt = 0u64;
    for wrong in [true, false] {
        loop {
            if Instant::now() >= ctx.end {
                return;
            }
            let Some((id, m)) = ctx.net.all().choose(route).cloned() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            // A login reads the state after a barrier, as the API does.
            if m.node.read_barrier().await.is_err() {
                continue;
            }
            let Ok(state) = m.store.auth_state() else {
                continue;
            };
            let password = if wrong {
                format!("{}-but-wrong", AuthRun::password(user))
            } else {
                AuthRun::password(user)
            };
            let matches = state
                .users
                .get(user)
                .is_some_and(|u| auth::password::verify(&password, &u.password_hash));
            if wrong {
                if matches {
                    run.violation(format!("n{id} accepted a wrong password for {user}"));
                } else {
                    run.with(|o| o.wrong_passwords_refused += 1);
                }
                break;
            }
            if !matches {
                run.violation(format!("n{id} refused {user}'s password"));
                return;
            }
            attempt += 1;
            // A token name from the seed's stream: reproducible, unique.
            let token = format!("sim-{pid}-{attempt}-{}", route.gen::<u64>());
            let cmd = auth::AuthCommand::Authenticate {
                name: user.into(),
                token_hash: auth::token::simple_token_hash(&token),
                checked_revision: state.revision,
                issued_unix_ms: 0,
            };
            match propose_auth(&m.node, cmd).await {
                AuthProposal::Applied => {
                    run.with(|o| o.logins += 1);
                    return;
                }
                AuthProposal::Refused(auth::AuthError::AuthOldRevision) => {
                    run.with(|o| o.stale_revision += 1)
                }
                AuthProposal::Refused(e) => {
                    run.violation(format!("n{id} refused {user}'s login when applied: {e}"));
                    return;
                }
                AuthProposal::Unknown => {}
            }
        }
    }
}

/// Root's auth changes during the workload: every [`AUTH_CHURN_EVERY_MS`]
/// one more permission for a role nobody holds, through any live member.
pub(crate) async fn auth_churn(ctx: Arc<ClientCtx>, run: Arc<AuthRun>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xa07_c4a2);
    let mut n = 0u64;
    while Instant::now() + Duration::from_millis(AUTH_CHURN_EVERY_MS) < ctx.end {
        tokio::time::sleep(Duration::from_millis(AUTH_CHURN_EVERY_MS)).await;
        let Some((_, m)) = ctx.net.all().choose(&mut rng).cloned() else {
            continue;
        };
        n += 1;
        let cmd = auth::AuthCommand::RoleGrantPermission {
            role: ROLE_CHURN.into(),
            perm: auth::Perm {
                kind: auth::PermKind::Read,
                key: format!("churn/{n}").into_bytes(),
                range_end: Vec::new(),
            },
        };
        if let AuthProposal::Applied = propose_auth(&m.node, cmd).await {
            run.with(|o| o.churn += 1);
        }
    }
}

/// How an auth-checked write came out.
pub(crate) enum AuthWrite {
    /// Applied: the write's own response follows the usual mapping.
    Applied(ApplyResponse),
    /// Refused when applied (permission denied, stale revision): it
    /// certainly had no effect.
    Refused,
    /// No answer or another error: as without auth.
    Other(WriteOutcome),
}

/// A client write under auth: proposed as `user`, with the auth revision
/// of the member's applied state (what the etcd API's `as_caller` does),
/// and its permission outcome judged against what the user may do.
pub(crate) async fn propose_as(
    run: &AuthRun,
    pid: u64,
    target: &Live,
    target_id: NodeId,
    cmd: Command,
    what: &str,
) -> AuthWrite {
    let user = run.user(pid);
    let auth_revision = target.store.auth_state().map_or(0, |s| s.revision);
    let denied_user = user == AUTH_DENIED_USER;
    let wrapped = if denied_user && run.bypass {
        cmd
    } else {
        Command::AsUser {
            user: user.into(),
            auth_revision,
            cmd: Box::new(cmd),
        }
    };
    match propose(&target.node, wrapped).await {
        WriteOutcome::Applied(ApplyResponse::Error(mvcc::EtcdError::Auth(e))) => {
            match e {
                auth::AuthError::AuthOldRevision => run.with(|o| o.stale_revision += 1),
                auth::AuthError::PermissionDenied if denied_user => run.with(|o| o.denied += 1),
                e => run.violation(format!(
                    "{user}'s {what} through n{target_id} refused when applied: {e}"
                )),
            }
            AuthWrite::Refused
        }
        WriteOutcome::Applied(r) => {
            if denied_user && !matches!(r, ApplyResponse::Error(_)) {
                run.violation(format!(
                    "{user}'s {what} through n{target_id} was applied: {r:?}"
                ));
            }
            AuthWrite::Applied(r)
        }
        other => AuthWrite::Other(other),
    }
}

/// A read under auth, after the member's read barrier: may `user` read
/// `key` by this member's applied state (the etcd API's check after its
/// barrier)? Both simulated users may; a refusal is a violation.
pub(crate) fn read_permitted(
    run: &AuthRun,
    pid: u64,
    target: &Live,
    id: NodeId,
    key: &str,
) -> bool {
    let user = run.user(pid);
    let ok = target
        .store
        .auth_state()
        .is_ok_and(|s| s.permitted(user, key.as_bytes(), &[], auth::PermKind::Read));
    if ok {
        run.with(|o| o.reads_permitted += 1);
    } else {
        run.violation(format!(
            "{user}'s read of {key} refused on n{id} after its barrier"
        ));
    }
    ok
}

/// After the run, healed: every member's applied auth state equals the
/// leader's (each first passes a read barrier, so it has applied everything
/// the leader committed), and no value the denied user tried to write is in
/// any key's history on the leader.
pub(crate) async fn auth_final_checks(net: &Arc<Net>, leader: &Live, run: &AuthRun) {
    let want = match leader.store.auth_state() {
        Ok(s) => s,
        Err(e) => return run.violation(format!("leader's auth state unreadable: {e}")),
    };
    for (id, m) in net.all() {
        let deadline = Instant::now() + Duration::from_millis(FINAL_CONVERGE_MS);
        let barrier = loop {
            let barrier = m.node.read_barrier().await;
            if barrier.is_ok() && m.store.auth_state().is_ok_and(|s| *s == *want) {
                break None;
            }
            if Instant::now() >= deadline {
                break Some(barrier);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Some(barrier) = barrier {
            run.violation(match barrier {
                Err(e) => {
                    format!("n{id} never passed a read barrier to compare its auth state: {e}")
                }
                Ok(_) => format!(
                    "n{id}'s auth state differs from the leader's (revision {:?} vs {})",
                    m.store.auth_state().map(|s| s.revision),
                    want.revision
                ),
            });
        }
    }
    let denied_prefix = format!("{}.", run.denied_pid);
    let rev = leader.store.current_revision();
    match leader
        .store
        .events(KEYS_FROM, KEYS_TO, 1, rev, false, usize::MAX)
    {
        Ok(events) => {
            for e in events {
                if let Some(kv) = e.kv {
                    if kv.value.starts_with(denied_prefix.as_bytes()) {
                        run.violation(format!(
                            "{AUTH_DENIED_USER}'s value {} is in {}'s history at revision {}",
                            String::from_utf8_lossy(&kv.value),
                            String::from_utf8_lossy(&kv.key),
                            kv.mod_revision
                        ));
                    }
                }
            }
        }
        Err(e) => run.violation(format!("reading the leader's history: {e}")),
    }
}
