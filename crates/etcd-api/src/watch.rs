//! Watch service.
//!
//! One task per Watch stream owns all of that stream's watchers. It
//! subscribes to the member's applied-change feed *before* it reads the
//! store's revision, and each watcher remembers `next_rev`, the first
//! revision it has not delivered yet: history is replayed from the store up
//! to the current revision, and live events below `next_rev` are skipped. So
//! every event is delivered once, in revision order — also across leader
//! changes, because every member applies the same log in the same order.
//!
//! State machine per watcher: `Created → (CatchingUp ⇄ Live)* → Canceled`.
//! A watcher falls back to CatchingUp when the live feed lagged or the store
//! was replaced by a snapshot; it is Canceled by the client, or when the
//! revision it needs was compacted (`compact_revision` set, as etcd does).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use consensus::StoreChange;
use etcd_client::proto::{
    PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService,
};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::EtcdApi;

const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;
const EVENT_PUT: i32 = 0;

struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

impl Watcher {
    fn matches(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return key == self.key.as_slice();
        }
        if key < self.key.as_slice() {
            return false;
        }
        self.range_end == [0] || key < self.range_end.as_slice()
    }

    fn wanted(&self, ev: &PbEvent) -> Option<PbEvent> {
        let kv = ev.kv.as_ref()?;
        if kv.mod_revision < self.next_rev || !self.matches(&kv.key) {
            return None;
        }
        let is_put = ev.r#type == EVENT_PUT;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return None;
        }
        let mut ev = ev.clone();
        if !self.prev_kv {
            ev.prev_kv = None;
        }
        Some(ev)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<PbWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbWatchService for EtcdApi {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // The stream's token, checked (auth.rs) at every watch creation.
        let md = request.metadata().clone();
        let input = request.into_inner();
        Ok(Response::new(self.watch_session(md, input)))
    }
}

impl EtcdApi {
    /// Run a watch session over any stream of requests (the gRPC stream, or
    /// the JSON gateway's one request); `md` carries the caller's token.
    pub(crate) fn watch_session(
        &self,
        md: tonic::metadata::MetadataMap,
        input: impl Stream<Item = Result<PbWatchRequest, Status>> + Send + Unpin + 'static,
    ) -> WatchStream {
        let (tx, rx) = mpsc::channel(self.limits().watch_stream_buffer_responses);
        let api = self.clone();
        tokio::spawn(async move {
            let mut session = Session {
                api,
                tx,
                watchers: BTreeMap::new(),
                next_id: 0,
                md,
            };
            if let Err(e) = session.run(input).await {
                tracing::debug!("watch stream ended: {e}");
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

struct Session {
    api: EtcdApi,
    tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// The stream's request metadata (its auth token).
    md: tonic::metadata::MetadataMap,
}

#[derive(Debug)]
struct Closed;
impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client went away")
    }
}

impl Session {
    async fn send(&self, resp: PbWatchResponse) -> Result<(), Closed> {
        self.tx.send(Ok(resp)).await.map_err(|_| Closed)
    }

    fn response(&self, watch_id: i64, revision: i64) -> PbWatchResponse {
        PbWatchResponse {
            header: Some(self.api.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn run(
        &mut self,
        mut input: impl Stream<Item = Result<PbWatchRequest, Status>> + Unpin,
    ) -> Result<(), Closed> {
        use futures::StreamExt;
        let mut changes = self.api.node().applier().subscribe();
        let mut progress = tokio::time::interval(Duration::from_millis(
            self.api.limits().watch_progress_notify_interval_ms,
        ));
        progress.tick().await;
        loop {
            tokio::select! {
                msg = input.next() => match msg {
                    Some(Ok(req)) => self.on_request(req).await?,
                    None | Some(Err(_)) => return Ok(()),
                },
                change = changes.recv() => match change {
                    Ok(StoreChange::Events { revision, events }) => self.on_events(revision, &events).await?,
                    Ok(StoreChange::Reset { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up_all().await?,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = progress.tick() => {
                    let rev = self.api.node().store().current_revision();
                    let ids: Vec<i64> = self.watchers.iter().filter(|(_, w)| w.progress_notify).map(|(id, _)| *id).collect();
                    for id in ids {
                        self.send(self.response(id, rev)).await?;
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, req: PbWatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(PbWatchRequestUnion::CreateRequest(c)) => {
                let store = self.api.node().store();
                let current = store.current_revision();
                if let Err(st) =
                    self.api
                        .check_range(&self.md, &c.key, &c.range_end, auth::PermKind::Read)
                {
                    // etcd answers a refused watch with a created-and-canceled
                    // response whose reason is the gRPC error's text.
                    let mut r = self.response(c.watch_id, current);
                    r.created = true;
                    r.canceled = true;
                    r.cancel_reason =
                        format!("rpc error: code = {:?} desc = {}", st.code(), st.message());
                    return self.send(r).await;
                }
                if self.watchers.len() >= self.api.limits().max_watches_per_stream {
                    let mut r = self.response(-1, current);
                    r.created = true;
                    r.canceled = true;
                    r.cancel_reason = format!(
                        "etcdserver: too many watches on this stream (max_watches_per_stream={})",
                        self.api.limits().max_watches_per_stream
                    );
                    return self.send(r).await;
                }
                let id = if c.watch_id != 0 {
                    if self.watchers.contains_key(&c.watch_id) {
                        let mut r = self.response(c.watch_id, current);
                        r.created = true;
                        r.canceled = true;
                        r.cancel_reason =
                            "etcdserver: duplicate watch ID provided on the WatchStream".into();
                        return self.send(r).await;
                    }
                    c.watch_id
                } else {
                    while self.watchers.contains_key(&self.next_id) {
                        self.next_id += 1;
                    }
                    self.next_id
                };
                let watcher = Watcher {
                    key: c.key,
                    range_end: c.range_end,
                    next_rev: if c.start_revision > 0 {
                        c.start_revision
                    } else {
                        current + 1
                    },
                    prev_kv: c.prev_kv,
                    no_put: c.filters.contains(&FILTER_NOPUT),
                    no_delete: c.filters.contains(&FILTER_NODELETE),
                    progress_notify: c.progress_notify,
                };
                let mut created = self.response(id, current);
                created.created = true;
                self.send(created).await?;
                self.watchers.insert(id, watcher);
                self.catch_up(id).await
            }
            Some(PbWatchRequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    let mut r =
                        self.response(c.watch_id, self.api.node().store().current_revision());
                    r.canceled = true;
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                // etcd answers a progress request with watch id -1 and the
                // current revision: every event below it has been sent.
                let r = self.response(-1, self.api.node().store().current_revision());
                self.send(r).await
            }
            None => Ok(()),
        }
    }

    /// Replay history for one watcher up to the store's current revision.
    async fn catch_up(&mut self, id: i64) -> Result<(), Closed> {
        let store = self.api.node().store().clone();
        let batch = self.api.limits().watch_catchup_batch_events;
        loop {
            let current = store.current_revision();
            let Some(w) = self.watchers.get(&id) else {
                return Ok(());
            };
            if w.next_rev > current {
                return Ok(());
            }
            match store.events(&w.key, &w.range_end, w.next_rev, current, true, batch) {
                Ok(events) => {
                    let w = self.watchers.get_mut(&id).expect("watcher present");
                    let mut out: Vec<PbEvent> = events.iter().filter_map(|e| w.wanted(e)).collect();
                    // Never split a revision: the store returns whole revisions.
                    let last = events
                        .last()
                        .and_then(|e| e.kv.as_ref())
                        .map(|kv| kv.mod_revision);
                    w.next_rev = match last {
                        Some(r) if events.len() >= batch => r + 1,
                        _ => current + 1,
                    };
                    if !out.is_empty() {
                        let mut r = self.response(id, current);
                        r.events = std::mem::take(&mut out);
                        self.send(r).await?;
                    }
                }
                Err(e) => {
                    let compacted = store.compact_revision();
                    self.watchers.remove(&id);
                    let mut r = self.response(id, current);
                    r.canceled = true;
                    r.compact_revision = compacted;
                    r.cancel_reason = e.to_string();
                    return self.send(r).await;
                }
            }
        }
    }

    async fn catch_up_all(&mut self) -> Result<(), Closed> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        Ok(())
    }

    async fn on_events(&mut self, revision: i64, events: &[PbEvent]) -> Result<(), Closed> {
        let mut lagging = Vec::new();
        let mut out = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            let first = events
                .first()
                .and_then(|e| e.kv.as_ref())
                .map(|kv| kv.mod_revision)
                .unwrap_or(revision);
            if w.next_rev < first {
                // A gap between what we delivered and this batch: replay it.
                lagging.push(*id);
                continue;
            }
            let evs: Vec<PbEvent> = events.iter().filter_map(|e| w.wanted(e)).collect();
            w.next_rev = w.next_rev.max(revision + 1);
            if !evs.is_empty() {
                out.push((*id, evs));
            }
        }
        for (id, evs) in out {
            let mut r = self.response(id, revision);
            r.events = evs;
            self.send(r).await?;
        }
        for id in lagging {
            self.catch_up(id).await?;
        }
        Ok(())
    }
}
