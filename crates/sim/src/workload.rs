//! The seeded client workload (reads, writes, cas through the members'
//! API layer) and its history recorder.

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
}

pub(crate) async fn client(ctx: Arc<ClientCtx>, pid: u64, seed: u64) {
    // The workload rng draws only the op, key and think time: a function of the seed.
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (pid + 1));
    let mut route = StdRng::seed_from_u64(seed ^ (pid << 32) ^ 0x4047e);
    let mut seq = 0u64;
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
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
                break t.1.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
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
                let ok = target.node.read_barrier().await.is_ok();
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
                match propose(&target.node, Command::put(&put)).await {
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
                match propose(&target.node, Command::txn(&txn)).await {
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
