//! The Raft state machine: committed entries go into the `mvcc::Store`.
//!
//! A batch of committed entries is applied in one store transaction together
//! with the Raft bookkeeping (last applied log id + membership), so a crash
//! can never leave data and bookkeeping out of step. Applies are not fsynced
//! (the log is); a snapshot first makes the store durable, so the log is only
//! ever purged behind durable state. After a batch is applied
//! its watch events are published on [`Applier::subscribe`], in revision
//! order; lease grants and revokes are reported to the [`crate::lessor::Lessor`].

// openraft's `StorageError` is the error type its storage traits require;
// boxing it here would only add a conversion at every trait boundary.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use mvcc::PbEvent;
use mvcc::{ApplyResponse, Command, Store};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{AsyncRuntime, EntryPayload, OptionalSend, RaftLogId, StorageIOError};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::lessor::Lessor;
use crate::log_store::IoMode;
use crate::runtime::PhalanxRuntime;
use crate::types::{
    ApplyOutcome, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// Raft bookkeeping stored atomically with the data it describes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AppliedMeta {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// What one applied batch changed, as seen by watchers.
#[derive(Clone, Debug)]
pub enum StoreChange {
    /// Events of consecutive revisions, ending at `revision`.
    Events {
        revision: i64,
        events: Arc<Vec<PbEvent>>,
    },
    /// The whole state was replaced by a snapshot at `revision`: watchers must
    /// re-read history from the store (or learn it was compacted).
    Reset { revision: i64 },
}

/// Capacity (in applied batches) of the channel feeding watchers; a watcher
/// that falls further behind re-reads history from the store instead.
pub const WATCH_CHANNEL_BATCHES: usize = 4096;

/// The last snapshot built: its metadata and bytes.
type BuiltSnapshot = (SnapshotMeta, Arc<Vec<u8>>);

/// The per-member half of auth, told by the state machine about every auth
/// change it applies (on every member, in log order, before the proposer's
/// answer): etcd's simple tokens are assigned, and invalidated, at apply.
/// Implemented by the etcd API (`etcd_api::auth`), registered with
/// [`crate::Node::set_auth_observer`].
pub trait AuthObserver: Send + Sync {
    /// `cmd` was applied successfully. `replayed`: its entry was already in
    /// this member's Raft log when the member started, i.e. it is being
    /// applied again after a restart (a restarted member holds no simple
    /// tokens, as in etcd: installing old tokens again would give them a
    /// fresh lifetime).
    fn applied(&self, cmd: &auth::AuthCommand, replayed: bool);
    /// A snapshot replaced the whole state: the entries it covers were never
    /// applied here, and any invalidation among them is unknown.
    fn reset(&self);
}

type AuthObserverSlot = Arc<std::sync::RwLock<Option<Arc<dyn AuthObserver>>>>;

/// The state machine handed to openraft. Clones share everything.
#[derive(Clone)]
pub struct Applier {
    store: Arc<Store>,
    lessor: Arc<Lessor>,
    changes: broadcast::Sender<StoreChange>,
    /// Serialises apply against snapshot building, so a snapshot's content
    /// and its log id always describe the same state.
    apply_lock: Arc<Mutex<()>>,
    current_snapshot: Arc<Mutex<Option<BuiltSnapshot>>>,
    io: IoMode,
    auth_observer: AuthObserverSlot,
    /// Last log index in the Raft log when the member started: entries up
    /// to it are re-applied after a restart (see [`AuthObserver::applied`]).
    replay_floor: u64,
}

/// Entries applied on the state machine's own task rather than the
/// blocking pool when their payloads total at most this many bytes (see
/// `Applier::apply`).
pub const INLINE_APPLY_MAX_BYTES: usize = 64 * 1024;

/// Whether applying `payload` touches a bounded number of keys: puts,
/// lease grants, alarms and auth changes do; a range delete, a transaction
/// (which may range over or delete any number of keys), a compaction or a
/// lease revoke (which deletes every attached key) may not, so they never
/// hold the state machine's task.
fn apply_is_bounded(payload: &EntryPayload<TypeConfig>) -> bool {
    fn bounded(cmd: &Command) -> bool {
        match cmd {
            Command::Put(_)
            | Command::LeaseGrant { .. }
            | Command::Alarm { .. }
            | Command::Auth(_) => true,
            Command::Batch(cmds) => cmds.iter().all(bounded),
            // A user's put that attaches a lease is checked against every
            // key on that lease (etcd's `checkLeasePuts`): as unbounded as
            // the lease.
            Command::AsUser { cmd, .. } => match cmd.as_ref() {
                Command::Put(req) => !put_attaches_lease(req),
                cmd => bounded(cmd),
            },
            Command::DeleteRange(_)
            | Command::Txn(_)
            | Command::Compact { .. }
            | Command::LeaseRevoke { .. } => false,
        }
    }
    match payload {
        EntryPayload::Normal(cmd) => bounded(cmd),
        EntryPayload::Blank | EntryPayload::Membership(_) => true,
    }
}

/// Whether a prost-encoded `PutRequest` sets a lease (field 3, non-zero),
/// read without decoding the key and value. Undecodable bytes count as
/// attaching one (the apply reports them; unbounded is the safe side).
fn put_attaches_lease(mut req: &[u8]) -> bool {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    const LEASE_FIELD: u32 = 3;
    while !req.is_empty() {
        let Ok((tag, wire)) = decode_key(&mut req) else {
            return true;
        };
        if tag == LEASE_FIELD && wire == WireType::Varint {
            match decode_varint(&mut req) {
                Ok(0) => continue,
                _ => return true,
            }
        }
        if skip_field(wire, tag, &mut req, DecodeContext::default()).is_err() {
            return true;
        }
    }
    false
}

/// An entry's payload size, near enough to choose where to apply it.
fn entry_approx_bytes(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Normal(cmd) => cmd.approx_len(),
        EntryPayload::Blank | EntryPayload::Membership(_) => 64,
    }
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}
fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

impl Applier {
    pub fn new(store: Arc<Store>, lessor: Arc<Lessor>) -> Self {
        let (changes, _) = broadcast::channel(WATCH_CHANNEL_BATCHES);
        Applier {
            store,
            lessor,
            changes,
            apply_lock: Arc::new(Mutex::new(())),
            current_snapshot: Arc::new(Mutex::new(None)),
            io: IoMode::Threads,
            auth_observer: Default::default(),
            replay_floor: 0,
        }
    }

    /// Entries up to log index `index` were in the log at start (see
    /// [`AuthObserver::applied`]).
    pub fn with_replay_floor(mut self, index: u64) -> Self {
        self.replay_floor = index;
        self
    }

    /// Tell `observer` about every auth change applied from now on (it
    /// replaces any earlier one; clones of this applier share it).
    pub fn set_auth_observer(&self, observer: Arc<dyn AuthObserver>) {
        *self
            .auth_observer
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    fn auth_observer(&self) -> Option<Arc<dyn AuthObserver>> {
        self.auth_observer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Run store work as `io` says (the simulator uses [`IoMode::Inline`]).
    pub fn with_io(mut self, io: IoMode) -> Self {
        self.io = io;
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Subscribe to store changes. Subscribe *before* reading the store's
    /// current revision, then skip what was already read: nothing is lost.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreChange> {
        self.changes.subscribe()
    }

    fn read_meta(&self) -> Result<AppliedMeta, StorageError> {
        match self.store.applied_meta().map_err(sm_read_err)? {
            None => Ok(AppliedMeta::default()),
            Some(bytes) => postcard::from_bytes(&bytes).map_err(sm_read_err),
        }
    }

    fn apply_blocking(&self, entries: Vec<Entry>) -> Result<Vec<ApplyOutcome>, StorageError> {
        let guard = self.apply_lock.lock().expect("apply lock poisoned");
        self.apply_locked(entries, &guard)
    }

    /// Apply `entries` holding the apply lock (`_guard`).
    fn apply_locked(
        &self,
        entries: Vec<Entry>,
        _guard: &std::sync::MutexGuard<'_, ()>,
    ) -> Result<Vec<ApplyOutcome>, StorageError> {
        let mut meta = self.read_meta()?;
        let mut items: Vec<Option<Command>> = Vec::with_capacity(entries.len());
        // Per entry, how many consecutive items it became: a batch entry
        // becomes one item per command, every other entry one item.
        let mut batch_len: Vec<Option<usize>> = Vec::with_capacity(entries.len());
        // Per item, the log index of its entry.
        let mut item_index: Vec<u64> = Vec::with_capacity(entries.len());
        for e in &entries {
            let log_id = *e.get_log_id();
            // Raft hands entries over in order, exactly once.
            assert!(
                meta.last_applied.is_none_or(|l| l.index < log_id.index),
                "apply out of order: {log_id} after {:?}",
                meta.last_applied
            );
            meta.last_applied = Some(log_id);
            match &e.payload {
                EntryPayload::Normal(Command::Batch(cmds)) => {
                    items.extend(cmds.iter().cloned().map(Some));
                    item_index.extend(std::iter::repeat_n(log_id.index, cmds.len()));
                    batch_len.push(Some(cmds.len()));
                    continue;
                }
                EntryPayload::Blank => items.push(None),
                EntryPayload::Normal(cmd) => items.push(Some(cmd.clone())),
                EntryPayload::Membership(m) => {
                    meta.membership = StoredMembership::new(Some(log_id), m.clone());
                    items.push(None);
                }
            }
            item_index.push(log_id.index);
            batch_len.push(None);
        }
        assert_eq!(item_index.len(), items.len(), "a log index per item");
        let meta_bytes = postcard::to_allocvec(&meta).expect("encoding applied meta cannot fail");
        // Not fsynced: the Raft log already holds these entries durably, and
        // a member that crashes re-applies them from it. The store is made
        // durable before any snapshot (and so before any log purge).
        let applied = self
            .store
            .apply_batch(&items, &meta_bytes, false)
            .map_err(sm_write_err)?;
        assert_eq!(
            applied.len(),
            items.len(),
            "store returned a result per item"
        );

        let mut outcomes = Vec::with_capacity(applied.len());
        let mut events = Vec::new();
        let mut revision = self.store.current_revision();
        let auth_observer = self.auth_observer();
        for ((item, result), index) in items.iter().zip(applied).zip(&item_index) {
            match result {
                None => outcomes.push(ApplyOutcome {
                    revision: self.store.current_revision(),
                    ..Default::default()
                }),
                Some(a) => {
                    match (&a.response, item) {
                        (ApplyResponse::LeaseGrant(r), _) if r.error.is_empty() => {
                            self.lessor.on_grant(r.id, r.ttl)
                        }
                        // Revoked now, or already gone: either way no clock remains.
                        (_, Some(Command::LeaseRevoke { id })) => self.lessor.on_revoke(*id),
                        // A user's revoke (`AsUser`): its clock goes unless
                        // the apply-time permission check refused it.
                        (r, Some(Command::AsUser { cmd, .. }))
                            if !matches!(r, ApplyResponse::Error(mvcc::EtcdError::Auth(_))) =>
                        {
                            if let Command::LeaseRevoke { id } = **cmd {
                                self.lessor.on_revoke(id)
                            }
                        }
                        (ApplyResponse::Auth { .. }, Some(Command::Auth(cmd))) => {
                            // After the commit above: a token is valid on
                            // this member once its entry is applied here.
                            if let Some(o) = &auth_observer {
                                o.applied(cmd, *index <= self.replay_floor);
                            }
                        }
                        _ => {}
                    }
                    revision = a.revision;
                    events.extend(a.events);
                    outcomes.push(ApplyOutcome {
                        revision: a.revision,
                        response: a.response.encode(),
                        batch: Vec::new(),
                    });
                }
            }
        }
        let outcomes = regroup_batches(outcomes, &batch_len);
        assert_eq!(outcomes.len(), entries.len(), "one outcome per entry");
        if !events.is_empty() {
            // No receivers is fine: nobody watches.
            let _ = self.changes.send(StoreChange::Events {
                revision,
                events: Arc::new(events),
            });
        }
        Ok(outcomes)
    }

    fn build_snapshot_blocking(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let _guard = self.apply_lock.lock().expect("apply lock poisoned");
            let meta = self.read_meta()?;
            // Make every applied batch durable before this snapshot lets
            // openraft purge the log entries behind it.
            let meta_bytes =
                postcard::to_allocvec(&meta).expect("encoding applied meta cannot fail");
            self.store
                .apply_batch(&[], &meta_bytes, true)
                .map_err(sm_write_err)?;
            let mut data = Vec::new();
            self.store
                .write_snapshot(&mut data)
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            (meta, data)
        };
        // Drawn from the runtime's RNG, which a simulator seeds.
        let nonce: u32 = PhalanxRuntime::thread_rng().gen();
        let snapshot_id = match meta.last_applied {
            Some(l) => format!("{}-{}-{nonce}", l.leader_id.term, l.index),
            None => format!("empty-{nonce}"),
        };
        let snap_meta = SnapshotMeta {
            last_log_id: meta.last_applied,
            last_membership: meta.membership,
            snapshot_id,
        };
        let data = Arc::new(data);
        *self
            .current_snapshot
            .lock()
            .expect("snapshot lock poisoned") = Some((snap_meta.clone(), data.clone()));
        Ok(Snapshot {
            meta: snap_meta,
            snapshot: Box::new(Cursor::new((*data).clone())),
        })
    }

    fn install_blocking(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
        let _guard = self.apply_lock.lock().expect("apply lock poisoned");
        let sig = Some(meta.signature());
        self.store
            .install_snapshot(&mut Cursor::new(&data))
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        // The snapshot carries the leader's bookkeeping; make ours say exactly
        // what openraft installed.
        let applied = AppliedMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let meta_bytes =
            postcard::to_allocvec(&applied).expect("encoding applied meta cannot fail");
        self.store
            .apply_batch(&[], &meta_bytes, true)
            .map_err(sm_write_err)?;
        self.lessor.reload(&self.store);
        if let Some(o) = self.auth_observer() {
            o.reset();
        }
        *self
            .current_snapshot
            .lock()
            .expect("snapshot lock poisoned") = Some((meta, Arc::new(data)));
        let _ = self.changes.send(StoreChange::Reset {
            revision: self.store.current_revision(),
        });
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Applier {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = self.clone();
        this.io
            .run("state machine", move || this.build_snapshot_blocking())
            .await
    }
}

impl RaftStateMachine<TypeConfig> for Applier {
    type SnapshotBuilder = Applier;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let meta = self.read_meta()?;
        Ok((meta.last_applied, meta.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // A small apply runs here, on the state machine's task: it is an
        // unsynced store commit, cheaper than the two thread switches a
        // hand-off to the blocking pool costs on every write. A large one,
        // or one that would wait behind a snapshot build, goes to the pool.
        let bytes: usize = entries.iter().map(entry_approx_bytes).sum();
        if bytes <= INLINE_APPLY_MAX_BYTES && entries.iter().all(|e| apply_is_bounded(&e.payload)) {
            if let Ok(guard) = self.apply_lock.try_lock() {
                return self.apply_locked(entries, &guard);
            }
        }
        let this = self.clone();
        this.io
            .run("state machine", move || this.apply_blocking(entries))
            .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let this = self.clone();
        let meta = meta.clone();
        let data = snapshot.into_inner();
        this.io
            .run("state machine", move || this.install_blocking(meta, data))
            .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let cur = self
            .current_snapshot
            .lock()
            .expect("snapshot lock poisoned")
            .clone();
        Ok(cur.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new((*data).clone())),
        }))
    }
}

/// Fold the per-command outcomes of batch entries back into one outcome per
/// entry: `batch_len[i]` is `Some(n)` if entry `i` was a batch of `n`
/// commands (its outcome carries theirs, and the revision of the last).
fn regroup_batches(items: Vec<ApplyOutcome>, batch_len: &[Option<usize>]) -> Vec<ApplyOutcome> {
    let mut items = items.into_iter();
    let mut out = Vec::with_capacity(batch_len.len());
    for len in batch_len {
        match len {
            None => out.push(items.next().expect("an outcome per item")),
            Some(n) => {
                let batch: Vec<ApplyOutcome> = items.by_ref().take(*n).collect();
                assert_eq!(batch.len(), *n, "an outcome per batched command");
                let revision = batch.last().map(|o| o.revision).unwrap_or_default();
                out.push(ApplyOutcome {
                    revision,
                    response: Vec::new(),
                    batch,
                });
            }
        }
    }
    assert!(items.next().is_none(), "every item's outcome was regrouped");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvcc::PbPutRequest;

    fn as_user(cmd: Command) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(Command::AsUser {
            user: "u".into(),
            auth_revision: 1,
            cmd: Box::new(cmd),
        })
    }

    fn put(lease: i64) -> Command {
        Command::put(&PbPutRequest {
            key: b"k".to_vec(),
            value: vec![7; 300],
            lease,
            prev_kv: true,
            ..Default::default()
        })
    }

    #[test]
    fn a_users_put_on_a_lease_is_not_applied_inline() {
        // Plain puts, and a user's put without a lease, are bounded work.
        assert!(apply_is_bounded(&EntryPayload::Normal(put(0))));
        assert!(apply_is_bounded(&EntryPayload::Normal(put(42))));
        assert!(apply_is_bounded(&as_user(put(0))));
        // checkLeasePuts reads every key on the lease.
        assert!(!apply_is_bounded(&as_user(put(42))));
        assert!(!apply_is_bounded(&as_user(put(-1))));
        // Undecodable bytes: the safe side.
        assert!(!apply_is_bounded(&as_user(Command::Put(vec![0xff, 0xff]))));
        assert!(put_attaches_lease(&[0x18]));
        assert!(!put_attaches_lease(&[]));
    }
}
