//! The write path: `Writer` applies commands inside one redb write
//! transaction, one revision per command, with etcd's validation and errors.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------

/// Internal failure of one command: a deterministic etcd error (no state changed) or a
/// fatal storage error (the whole batch is abandoned).
pub(super) enum Fail {
    Etcd(EtcdError),
    Fatal(MvccError),
}
impl From<MvccError> for Fail {
    fn from(e: MvccError) -> Self {
        Fail::Fatal(e)
    }
}
impl From<EtcdError> for Fail {
    fn from(e: EtcdError) -> Self {
        Fail::Etcd(e)
    }
}

/// Changes of the write request being applied: all share main revision `main`.
pub(super) struct Pending {
    pub(super) main: i64,
    pub(super) sub: i64,
    pub(super) events: Vec<PbEvent>,
}

impl Pending {
    pub(super) fn new(cur: i64) -> Self {
        Pending {
            main: cur + 1,
            sub: 0,
            events: Vec::new(),
        }
    }
    /// Revision reads inside this request observe (etcd: beginRev, +1 once anything changed).
    pub(super) fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }
}

/// Chosen branch of a txn and of each nested txn inside it, decided up front on the
/// pre-txn state (etcd `compareToPath`).
pub(super) struct TxnPath {
    pub(super) succeeded: bool,
    pub(super) nested: Vec<TxnPath>,
}

pub(crate) struct Writer<'t> {
    pub(crate) meta: Table<'t, &'static str, &'static [u8]>,
    pub(crate) rev: Table<'t, (i64, i64), &'static [u8]>,
    pub(crate) rev_chunk: Table<'t, (i64, i64, u32), &'static [u8]>,
    pub(crate) index: Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) key_rev: Table<'t, (&'static [u8], i64, i64), &'static [u8]>,
    pub(crate) lease: Table<'t, i64, &'static [u8]>,
    pub(crate) lease_key: Table<'t, (i64, &'static [u8]), &'static [u8]>,
    pub(super) cur_rev: i64,
    pub(super) compact: i64,
    /// The auth state as this writer's transaction sees it, when known
    /// without decoding it (the store's cache at the batch's start; dropped
    /// when an auth change is applied in the batch): the apply-time check of
    /// every client write reads it.
    pub(crate) auth: Option<std::sync::Arc<auth::AuthState>>,
}

impl<'t> Writer<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Self, MvccError> {
        let meta = txn.open_table(META).map_err(db("open meta"))?;
        let cur_rev = get_meta_i64(&meta, META_REV)?;
        let compact = get_meta_i64(&meta, META_COMPACT)?;
        Ok(Writer {
            meta,
            rev: txn.open_table(REV).map_err(db("open rev"))?,
            rev_chunk: txn
                .open_table(crate::codec::REV_CHUNK)
                .map_err(db("open rev_chunk"))?,
            index: txn.open_table(KEY_INDEX).map_err(db("open key_index"))?,
            key_rev: txn.open_table(KEY_REV).map_err(db("open key_rev"))?,
            lease: txn.open_table(LEASE).map_err(db("open lease"))?,
            lease_key: txn.open_table(LEASE_KEY).map_err(db("open lease_key"))?,
            cur_rev,
            compact,
            auth: None,
        })
    }

    /// The history as readers see it (records reassembled from their pieces).
    pub(crate) fn history(&self) -> super::history::WriteHistory<'_, 't> {
        super::history::History {
            rev: &self.rev,
            chunks: &self.rev_chunk,
        }
    }

    pub(crate) fn put_meta(&mut self, name: &str, payload: &[u8]) -> Result<(), MvccError> {
        self.meta
            .insert(name, seal(&[name.as_bytes()], payload).as_slice())
            .map_err(db("write meta"))?;
        Ok(())
    }

    pub(super) fn lease_exists(&self, id: i64) -> Result<bool, MvccError> {
        Ok(get_lease_ttl(&self.lease, id)?.is_some())
    }

    pub(super) fn write_record(
        &mut self,
        key: &[u8],
        main: i64,
        sub: i64,
        rec: &[u8],
        tomb: bool,
        entry: &IndexEntry,
    ) -> Result<(), MvccError> {
        let rk = rev_key_bytes(main, sub);
        let existed = super::history::insert(&mut self.rev, &mut self.rev_chunk, main, sub, rec)?;
        assert!(!existed, "revision ({main}, {sub}) written twice");
        self.key_rev
            .insert(
                (key, main, sub),
                seal(&[key, &rk], &[tomb as u8]).as_slice(),
            )
            .map_err(db("write key_rev"))?;
        self.index
            .insert(key, seal(&[key], &entry.encode()).as_slice())
            .map_err(db("write key_index"))?;
        Ok(())
    }

    /// etcd `storeTxnWrite.put`. Returns the previous live KeyValue, if any.
    pub(super) fn put(
        &mut self,
        p: &mut Pending,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Option<PbKeyValue>, MvccError> {
        let (main, sub) = (p.main, p.sub);
        let old = get_index(&self.index, key)?;
        let (mut create, mut version, mut old_lease, mut prev) = (main, 1, 0, None);
        if let Some(e) = old {
            assert!(
                (e.mod_main, e.mod_sub) < (main, sub),
                "revision must grow: key {:?}",
                render_key(&[key])
            );
            if !e.tombstone {
                create = e.create;
                version = e.version + 1;
                old_lease = e.lease;
                prev = Some(kv_at(&self.history(), key, e.mod_main, e.mod_sub)?);
            }
        }
        let kv = PbKeyValue {
            key: key.to_vec(),
            create_revision: create,
            mod_revision: main,
            version,
            value,
            lease,
        };
        let rec = RevRecord::encode_put_payload(&kv);
        let entry = IndexEntry {
            create,
            mod_main: main,
            mod_sub: sub,
            version,
            lease,
            tombstone: false,
        };
        self.write_record(key, main, sub, &rec, false, &entry)?;
        if old_lease != 0 && old_lease != lease {
            self.lease_key
                .remove((old_lease, key))
                .map_err(db("detach lease"))?;
        }
        if lease != 0 {
            debug_assert!(self.lease_exists(lease)?, "attach to missing lease {lease}");
            self.lease_key
                .insert(
                    (lease, key),
                    seal(&[&lease.to_be_bytes(), key], &[]).as_slice(),
                )
                .map_err(db("attach lease"))?;
        }
        p.events.push(PbEvent {
            r#type: EVENT_PUT,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        p.sub += 1;
        Ok(prev)
    }

    /// etcd `storeTxnWrite.delete` of one live key. Returns its previous KeyValue.
    pub(super) fn delete_key(
        &mut self,
        p: &mut Pending,
        key: &[u8],
        e: IndexEntry,
    ) -> Result<PbKeyValue, MvccError> {
        assert!(!e.tombstone);
        let (main, sub) = (p.main, p.sub);
        assert!((e.mod_main, e.mod_sub) < (main, sub), "revision must grow");
        let prev = kv_at(&self.history(), key, e.mod_main, e.mod_sub)?;
        let rec = RevRecord::encode_tombstone_payload(key);
        let entry = IndexEntry {
            create: 0,
            mod_main: main,
            mod_sub: sub,
            version: 0,
            lease: 0,
            tombstone: true,
        };
        self.write_record(key, main, sub, &rec, true, &entry)?;
        if e.lease != 0 {
            self.lease_key
                .remove((e.lease, key))
                .map_err(db("detach lease"))?;
        }
        let kv = PbKeyValue {
            key: key.to_vec(),
            mod_revision: main,
            ..Default::default()
        };
        p.events.push(PbEvent {
            r#type: EVENT_DELETE,
            kv: Some(kv),
            prev_kv: Some(prev.clone()),
        });
        p.sub += 1;
        Ok(prev)
    }

    /// etcd `deleteRange`: delete every live key in the range, in key order.
    pub(super) fn delete_range(
        &mut self,
        p: &mut Pending,
        key: &[u8],
        end: &[u8],
    ) -> Result<Vec<PbKeyValue>, MvccError> {
        let mut live = Vec::new();
        scan_index(&self.index, key, end, |k, e| {
            if !e.tombstone {
                live.push((k.to_vec(), e));
            }
            Ok(())
        })?;
        let mut prevs = Vec::with_capacity(live.len());
        for (k, e) in live {
            prevs.push(self.delete_key(p, &k, e)?);
        }
        Ok(prevs)
    }

    pub(super) fn range(
        &self,
        r: &PbRangeRequest,
        cur: i64,
    ) -> Result<Result<PbRangeResponse, EtcdError>, MvccError> {
        range_request(
            &self.index,
            &self.history(),
            &self.key_rev,
            r,
            cur,
            self.compact,
        )
    }

    // ----- checks (pre-state, no mutation) -----

    /// etcd `checkRequestPut` on the pre-request state.
    pub(super) fn check_put(&self, r: &PbPutRequest) -> Result<(), Fail> {
        if r.lease != 0 && !self.lease_exists(r.lease)? {
            return Err(EtcdError::LeaseNotFound.into());
        }
        if r.ignore_value || r.ignore_lease {
            match get_index(&self.index, &r.key)? {
                Some(e) if !e.tombstone => {}
                _ => return Err(EtcdError::KeyNotFound.into()),
            }
        }
        Ok(())
    }

    /// etcd `checkRequestRange` (a txn's embedded range; revision 0 is always fine).
    pub(super) fn check_range_rev(&self, r: &PbRangeRequest) -> Result<(), Fail> {
        if r.revision == 0 {
            return Ok(());
        }
        if r.revision > self.cur_rev {
            return Err(EtcdError::FutureRevision.into());
        }
        if r.revision < self.compact {
            return Err(EtcdError::Compacted.into());
        }
        Ok(())
    }

    pub(super) fn compares_hold(&self, cmps: &[PbCompare]) -> Result<bool, MvccError> {
        for c in cmps {
            let (kvs, _) = range_keys(
                &self.index,
                &self.history(),
                &self.key_rev,
                &c.key,
                &c.range_end,
                self.cur_rev,
                0,
                false,
            )?;
            let ok = if kvs.is_empty() {
                // etcd: comparing a value of a missing key always fails (no way to express
                // "missing" in grpc); other targets compare against a zero KeyValue.
                c.target != TARGET_VALUE && compare_kv(c, &PbKeyValue::default())
            } else {
                kvs.iter().all(|kv| compare_kv(c, kv))
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn compute_path(&self, t: &PbTxnRequest) -> Result<TxnPath, MvccError> {
        let succeeded = self.compares_hold(&t.compare)?;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut nested = Vec::new();
        for op in ops {
            if let Some(PbTxnOpRequest::RequestTxn(n)) = &op.request {
                nested.push(self.compute_path(n)?);
            }
        }
        Ok(TxnPath { succeeded, nested })
    }

    /// etcd `checkTxn` along the chosen path, plus one guard etcd lacks: a put with
    /// ignore_value/ignore_lease after a delete covering its key in the same txn (only
    /// possible with a "\0" range_end, which etcd's overlap check does not catch, and which
    /// makes etcd panic during apply) is rejected up front with KeyNotFound.
    pub(super) fn check_txn(
        &self,
        t: &PbTxnRequest,
        path: &TxnPath,
        dels: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), Fail> {
        let ops = if path.succeeded {
            &t.success
        } else {
            &t.failure
        };
        let mut nested = path.nested.iter();
        for op in ops {
            match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => self.check_range_rev(r)?,
                Some(PbTxnOpRequest::RequestPut(r)) => {
                    self.check_put(r)?;
                    if (r.ignore_value || r.ignore_lease)
                        && dels.iter().any(|(k, e)| key_in_range(&r.key, k, e))
                    {
                        return Err(EtcdError::KeyNotFound.into());
                    }
                }
                Some(PbTxnOpRequest::RequestDeleteRange(r)) => {
                    dels.push((r.key.clone(), r.range_end.clone()))
                }
                Some(PbTxnOpRequest::RequestTxn(n)) => {
                    self.check_txn(n, nested.next().expect("path matches txn"), dels)?
                }
                None => return Err(EtcdError::KeyNotFound.into()),
            }
        }
        Ok(())
    }

    // ----- execution (checks already passed; only fatal errors possible) -----

    pub(super) fn exec_put(
        &mut self,
        p: &mut Pending,
        r: &PbPutRequest,
    ) -> Result<PbPutResponse, MvccError> {
        let (mut value, mut lease) = (r.value.clone(), r.lease);
        if r.ignore_value || r.ignore_lease {
            let e = get_index(&self.index, &r.key)?
                .filter(|e| !e.tombstone)
                .expect("checked: ignore_value/ignore_lease key exists");
            if r.ignore_value {
                value = kv_at(&self.history(), &r.key, e.mod_main, e.mod_sub)?.value;
            }
            if r.ignore_lease {
                lease = e.lease;
            }
        }
        let prev = self.put(p, &r.key, value, lease)?;
        Ok(PbPutResponse {
            header: header(p.main),
            prev_kv: if r.prev_kv { prev } else { None },
        })
    }

    pub(super) fn exec_delete(
        &mut self,
        p: &mut Pending,
        r: &PbDeleteRequest,
    ) -> Result<PbDeleteResponse, MvccError> {
        let prevs = self.delete_range(p, &r.key, &r.range_end)?;
        Ok(PbDeleteResponse {
            header: header(p.read_rev()),
            deleted: prevs.len() as i64,
            prev_kvs: if r.prev_kv { prevs } else { Vec::new() },
        })
    }

    pub(super) fn exec_txn(
        &mut self,
        p: &mut Pending,
        t: &PbTxnRequest,
        path: &TxnPath,
    ) -> Result<PbTxnResponse, MvccError> {
        let ops = if path.succeeded {
            &t.success
        } else {
            &t.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match op.request.as_ref().expect("checked: no empty ops") {
                PbTxnOpRequest::RequestRange(r) => {
                    let resp = self
                        .range(r, p.read_rev())?
                        .unwrap_or_else(|e| panic!("txn range passed its checks but failed: {e}"));
                    PbTxnOpResponse::ResponseRange(resp)
                }
                PbTxnOpRequest::RequestPut(r) => PbTxnOpResponse::ResponsePut(self.exec_put(p, r)?),
                PbTxnOpRequest::RequestDeleteRange(r) => {
                    PbTxnOpResponse::ResponseDeleteRange(self.exec_delete(p, r)?)
                }
                PbTxnOpRequest::RequestTxn(n) => {
                    let np = nested.next().expect("path matches txn");
                    let mut resp = self.exec_txn(p, n, np)?;
                    // etcd leaves nested txn headers empty.
                    resp.header = Some(PbResponseHeader::default());
                    PbTxnOpResponse::ResponseTxn(resp)
                }
            };
            responses.push(PbResponseOp {
                response: Some(resp),
            });
        }
        Ok(PbTxnResponse {
            header: None,
            succeeded: path.succeeded,
            responses,
        })
    }

    // ----- commands -----

    pub(super) fn finish(&mut self, p: &Pending) {
        if p.sub > 0 {
            assert_eq!(
                p.main,
                self.cur_rev + 1,
                "a write request bumps the revision by one"
            );
            self.cur_rev = p.main;
        } else {
            assert!(p.events.is_empty());
        }
    }

    pub(super) fn apply(&mut self, cmd: &Command) -> Result<Applied, MvccError> {
        let mut p = Pending::new(self.cur_rev);
        let res = self.apply_inner(cmd, &mut p);
        let response = match res {
            Ok(r) => r,
            Err(Fail::Fatal(e)) => return Err(e),
            Err(Fail::Etcd(e)) => {
                // Every check happens before the first mutation; an etcd error must not
                // leave partial changes behind.
                assert!(
                    p.sub == 0 && p.events.is_empty(),
                    "etcd error after mutation began"
                );
                ApplyResponse::Error(e)
            }
        };
        self.finish(&p);
        Ok(Applied {
            response,
            revision: self.cur_rev,
            events: p.events,
        })
    }

    pub(super) fn apply_inner(
        &mut self,
        cmd: &Command,
        p: &mut Pending,
    ) -> Result<ApplyResponse, Fail> {
        fn dec<M: Message + Default>(what: &'static str, b: &[u8]) -> Result<M, MvccError> {
            M::decode(b).map_err(|e| MvccError::Decode {
                what,
                detail: e.to_string(),
            })
        }
        match cmd {
            Command::Put(b) => {
                let r: PbPutRequest = dec("PutRequest", b)?;
                validate_put(&r)?;
                self.check_put(&r)?;
                let resp = self.exec_put(p, &r)?;
                Ok(ApplyResponse::Put(resp))
            }
            Command::DeleteRange(b) => {
                let r: PbDeleteRequest = dec("DeleteRangeRequest", b)?;
                validate_delete_range(&r)?;
                let resp = self.exec_delete(p, &r)?;
                Ok(ApplyResponse::DeleteRange(resp))
            }
            Command::Txn(b) => {
                let r: PbTxnRequest = dec("TxnRequest", b)?;
                // Structural checks again (the op limit is the proposer's business).
                validate_txn(&r, usize::MAX / 2)?;
                let path = self.compute_path(&r)?;
                self.check_txn(&r, &path, &mut Vec::new())?;
                let mut resp = self.exec_txn(p, &r, &path)?;
                resp.header = header(p.read_rev());
                Ok(ApplyResponse::Txn(resp))
            }
            Command::Compact { revision } => {
                let rev = *revision;
                if rev <= self.compact {
                    return Err(EtcdError::Compacted.into());
                }
                if rev > self.cur_rev {
                    return Err(EtcdError::FutureRevision.into());
                }
                self.compact_to(rev)?;
                Ok(ApplyResponse::Compact(PbCompactionResponse {
                    header: header(self.cur_rev),
                }))
            }
            Command::LeaseGrant { id, ttl_seconds } => {
                let (id, ttl) = (*id, *ttl_seconds);
                if id == 0 {
                    return Err(EtcdError::LeaseNotFound.into());
                }
                if ttl > MAX_LEASE_TTL {
                    return Err(EtcdError::TtlTooLarge.into());
                }
                if self.lease_exists(id)? {
                    return Err(EtcdError::LeaseExists.into());
                }
                self.lease
                    .insert(
                        id,
                        seal(&[&id.to_be_bytes()], &ttl.to_le_bytes()).as_slice(),
                    )
                    .map_err(db("write lease"))?;
                Ok(ApplyResponse::LeaseGrant(PbLeaseGrantResponse {
                    header: header(self.cur_rev),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            Command::LeaseRevoke { id } => {
                let id = *id;
                if !self.lease_exists(id)? {
                    return Err(EtcdError::LeaseNotFound.into());
                }
                let keys = lease_keys(&self.lease_key, id)?;
                // etcd deletes the attached keys in one write txn, in sorted key order.
                for k in &keys {
                    match get_index(&self.index, k)? {
                        Some(e) if !e.tombstone && e.lease == id => {
                            self.delete_key(p, k, e)?;
                        }
                        _ => {
                            return Err(MvccError::Corrupted {
                                table: LEASE_KEY_TABLE,
                                key: format!(
                                    "({id}, {}) (attached key is not live on this lease)",
                                    render_key(&[k])
                                ),
                            }
                            .into())
                        }
                    }
                }
                for k in &keys {
                    // delete_key already detached them; make sure nothing is left behind.
                    self.lease_key
                        .remove((id, k.as_slice()))
                        .map_err(db("detach lease"))?;
                }
                self.lease.remove(id).map_err(db("remove lease"))?;
                Ok(ApplyResponse::LeaseRevoke(PbLeaseRevokeResponse {
                    header: header(p.read_rev()),
                }))
            }
            // The state machine flattens batches into their commands before
            // applying; a batch here is a nested one, which no proposer
            // writes. Fatal, and the same on every member.
            Command::Batch(_) => Err(Fail::Fatal(MvccError::Decode {
                what: "Command",
                detail: "a batch nested inside a batch".into(),
            })),
            Command::Auth(cmd) => {
                let mut state =
                    decode_auth(get_meta(&self.meta, crate::codec::META_AUTH)?.as_deref())?;
                state.apply(cmd).map_err(EtcdError::Auth)?;
                // `Authenticate` only validates: nothing to store (simple
                // tokens live in each member's memory, never in kv.redb,
                // its snapshots or backups).
                if cmd.changes_state() {
                    let bytes =
                        postcard::to_allocvec(&state).expect("encoding auth state cannot fail");
                    self.put_meta(crate::codec::META_AUTH, &bytes)?;
                    self.auth = None;
                }
                Ok(ApplyResponse::Auth {
                    auth_revision: state.revision,
                })
            }
            Command::AsUser {
                user,
                auth_revision,
                cmd,
            } => {
                if !matches!(
                    **cmd,
                    Command::Put(_)
                        | Command::DeleteRange(_)
                        | Command::Txn(_)
                        | Command::LeaseRevoke { .. }
                ) {
                    // No proposer writes one: fatal on every member alike.
                    return Err(Fail::Fatal(MvccError::Decode {
                        what: "Command",
                        detail:
                            "an AsUser entry wrapping something other than Put, DeleteRange, Txn or LeaseRevoke"
                                .into(),
                    }));
                }
                let state = match &self.auth {
                    Some(s) => s.clone(),
                    None => {
                        let s = std::sync::Arc::new(decode_auth(
                            get_meta(&self.meta, crate::codec::META_AUTH)?.as_deref(),
                        )?);
                        self.auth = Some(s.clone());
                        s
                    }
                };
                if state.enabled {
                    permitted_at_apply(&state, user, *auth_revision, cmd)
                        .map_err(EtcdError::Auth)?;
                    // etcd's `checkLeasePuts`: revoking a lease deletes its
                    // keys, and attaching a lease to a key lets whoever
                    // revokes it delete that key too; so both need WRITE on
                    // every key attached to the lease now.
                    for id in leases_written(cmd) {
                        for key in lease_keys(&self.lease_key, id)? {
                            state
                                .check(user, &key, &[], auth::PermKind::Write)
                                .map_err(EtcdError::Auth)?;
                        }
                    }
                }
                self.apply_inner(cmd, p)
            }
            Command::Alarm {
                action,
                member_id,
                alarm,
            } => {
                let mut alarms = decode_alarms(get_meta(&self.meta, META_ALARMS)?.as_deref())?;
                match *action {
                    ALARM_ACTIVATE if *alarm != 0 && !alarms.contains(&(*member_id, *alarm)) => {
                        alarms.push((*member_id, *alarm));
                        alarms.sort_unstable();
                    }
                    ALARM_DEACTIVATE => alarms.retain(|(m, a)| {
                        !((*alarm == 0 || *a == *alarm) && (*member_id == 0 || *m == *member_id))
                    }),
                    _ => {}
                }
                let bytes = postcard::to_allocvec(&alarms).expect("encoding alarms cannot fail");
                self.put_meta(META_ALARMS, &bytes)?;
                Ok(ApplyResponse::Alarm(PbAlarmResponse {
                    header: header(self.cur_rev),
                    alarms: alarms
                        .iter()
                        .map(|(m, a)| PbAlarmMember {
                            member_id: *m,
                            alarm: *a,
                        })
                        .collect(),
                }))
            }
        }
    }
}

/// The leases whose attached keys a client write must be allowed to write
/// (etcd's `checkLeasePuts`): a revoked lease, and the lease a put attaches
/// (also inside a transaction, where etcd 3.4 does not look: the same
/// attachment by another route).
fn leases_written(cmd: &Command) -> Vec<i64> {
    fn txn_leases(t: &PbTxnRequest, out: &mut Vec<i64>) {
        for op in t.success.iter().chain(t.failure.iter()) {
            match &op.request {
                Some(PbTxnOpRequest::RequestPut(p)) if p.lease != 0 => out.push(p.lease),
                Some(PbTxnOpRequest::RequestTxn(n)) => txn_leases(n, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    match cmd {
        Command::LeaseRevoke { id } => out.push(*id),
        Command::Put(b) => {
            if let Ok(r) = PbPutRequest::decode(b.as_slice()) {
                if r.lease != 0 {
                    out.push(r.lease);
                }
            }
        }
        Command::Txn(b) => {
            if let Ok(t) = PbTxnRequest::decode(b.as_slice()) {
                txn_leases(&t, &mut out);
            }
        }
        _ => {}
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// etcd's apply-time permission check of a client write (`authApplierV3`):
/// a request without a user, or judged at an auth revision older than the
/// applied one, is refused; then every key range the request reads or
/// writes must be permitted (a transaction's compares and both branches,
/// recursively, as the API layer checks them). Deterministic: it reads
/// only the replicated auth state.
fn permitted_at_apply(
    state: &auth::AuthState,
    user: &str,
    auth_revision: u64,
    cmd: &Command,
) -> Result<(), auth::AuthError> {
    use auth::{AuthError, PermKind};
    if user.is_empty() {
        return Err(AuthError::UserEmpty);
    }
    if auth_revision < state.revision {
        return Err(AuthError::AuthOldRevision);
    }
    let check = |key: &[u8], end: &[u8], want| state.check(user, key, end, want);
    /// Every compare and operation of both branches, recursively.
    fn walk(t: &PbTxnRequest, state: &auth::AuthState, user: &str) -> Result<(), AuthError> {
        let check = |key: &[u8], end: &[u8], want| state.check(user, key, end, want);
        for c in &t.compare {
            check(&c.key, &c.range_end, PermKind::Read)?;
        }
        for op in t.success.iter().chain(t.failure.iter()) {
            match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => {
                    check(&r.key, &r.range_end, PermKind::Read)?
                }
                Some(PbTxnOpRequest::RequestPut(r)) => {
                    check(&r.key, &[], PermKind::Write)?;
                    if r.prev_kv {
                        check(&r.key, &[], PermKind::Read)?;
                    }
                }
                Some(PbTxnOpRequest::RequestDeleteRange(r)) => {
                    check(&r.key, &r.range_end, PermKind::Write)?;
                    if r.prev_kv {
                        check(&r.key, &r.range_end, PermKind::Read)?;
                    }
                }
                Some(PbTxnOpRequest::RequestTxn(n)) => walk(n, state, user)?,
                None => {}
            }
        }
        Ok(())
    }
    // An undecodable request fails the command's own apply below, exactly
    // as it does unwrapped.
    match cmd {
        Command::Put(b) => {
            if let Ok(r) = PbPutRequest::decode(b.as_slice()) {
                check(&r.key, &[], PermKind::Write)?;
                if r.prev_kv {
                    check(&r.key, &[], PermKind::Read)?;
                }
            }
        }
        Command::DeleteRange(b) => {
            if let Ok(r) = PbDeleteRequest::decode(b.as_slice()) {
                check(&r.key, &r.range_end, PermKind::Write)?;
                if r.prev_kv {
                    check(&r.key, &r.range_end, PermKind::Read)?;
                }
            }
        }
        Command::Txn(b) => {
            if let Ok(t) = PbTxnRequest::decode(b.as_slice()) {
                walk(&t, state, user)?;
            }
        }
        _ => {}
    }
    Ok(())
}
