//! `backup now`: one snapshot stream, chunked once, uploaded to every destination
//! independently.
//!
//! Pipeline (memory bounded by `upload_concurrency` × `chunk_max_bytes` plus a few
//! snapshot messages):
//! ```text
//! member Snapshot stream ─▶ mpsc(source_queue_messages) ─▶ [blocking thread]
//!   Normalizer (checks CRC32/SHA-256, drops Raft bookkeeping) ─▶ FastCDC ─▶ SHA-256
//!   ─▶ mpsc(2) ─▶ [async] per destination: known chunk? reuse : zstd+age once, upload
//!   (≤ upload_concurrency in flight, bounded retries) ─▶ summary.json ─▶ manifest.age (LAST)
//! ```

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};

use crate::dest::{Destination, RetrySettings, S3Settings};
use crate::error::BackupError;
use crate::format::*;
use crate::snapstream::{ChannelReader, Normalizer, StreamInfo};

/// Settings of `backup now`. Limits carry their unit in their name.
#[derive(Clone, Debug)]
pub struct BackupSettings {
    pub destinations: Vec<String>,
    /// age X25519 public keys (`age1…`); at least one.
    pub recipients: Vec<String>,
    pub s3: S3Settings,
    pub retry: RetrySettings,
    /// Used when a destination holds no repository yet; an existing repository keeps its own.
    pub chunker: ChunkerSettings,
    pub zstd_level: i32,
    /// Chunk uploads in flight at once (over all destinations).
    pub upload_concurrency: usize,
    /// Snapshot messages buffered between the member and the chunker.
    pub source_queue_messages: usize,
    pub connect_timeout_ms: u64,
    /// Upload bandwidth cap over all destinations, bytes per second (0: unlimited).
    pub max_upload_bytes_per_s: u64,
    /// A lock object older than this is ignored (its writer died), milliseconds.
    pub lock_stale_ms: u64,
    /// TLS and credentials towards `Source::Endpoints` (plain by default).
    pub client_security: client_security::ClientSecurity,
    /// Counters the backup updates as it runs, for the caller to show.
    pub progress: crate::progress::Progress,
}

/// Called with the backup id just before any summary or manifest is written; `false`
/// abandons the backup (no manifest is written anywhere, so it never exists). The
/// scheduler uses it to make sure it is still the one member running the backup.
pub type CommitGate = Box<
    dyn FnOnce(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send,
>;

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            destinations: Vec::new(),
            recipients: Vec::new(),
            s3: S3Settings::default(),
            retry: RetrySettings::default(),
            chunker: ChunkerSettings::default(),
            zstd_level: 3,
            upload_concurrency: 4,
            source_queue_messages: 8,
            connect_timeout_ms: 5_000,
            max_upload_bytes_per_s: 0,
            lock_stale_ms: DEFAULT_LOCK_STALE_MS,
            client_security: client_security::ClientSecurity::plain(),
            progress: Default::default(),
        }
    }
}

/// Default of [`BackupSettings::lock_stale_ms`].
pub const DEFAULT_LOCK_STALE_MS: u64 = 3_600_000;

/// Where the snapshot comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A member's Maintenance.Snapshot (the first endpoint that answers).
    Endpoints(Vec<String>),
    /// A snapshot file saved by `etcdctl snapshot save` from a Phalanx member or from
    /// etcd 3.4/3.5 (an etcd snapshot), or in the older Phalanx format (mvcc stream +
    /// etcd's trailer).
    File(PathBuf),
    /// A member's Maintenance.Snapshot through its in-process channel to its
    /// own etcd API (`etcd_api::internal_channel`): the member's scheduled
    /// backups, which need no TLS material or credentials that way.
    Channel(etcd_client::Channel),
}

/// How [`Source::Channel`] is named in messages and outcomes.
pub const MEMBER_INTERNAL_ENDPOINT: &str = "member-internal";

#[derive(Debug)]
pub struct DestinationOutcome {
    pub url: String,
    pub error: Option<BackupError>,
    pub new_chunks: u64,
    pub uploaded_bytes: u64,
    pub stored_bytes: u64,
}

#[derive(Debug)]
pub struct BackupOutcome {
    pub id: String,
    pub revision: i64,
    pub compact_revision: i64,
    pub snapshot_bytes: u64,
    pub chunks: u64,
    pub elapsed: Duration,
    pub destinations: Vec<DestinationOutcome>,
}

impl BackupOutcome {
    /// Error when any destination failed (the others still hold a complete backup).
    pub fn into_result(self) -> Result<BackupOutcome, BackupError> {
        let failed: Vec<String> = self
            .destinations
            .iter()
            .filter_map(|d| d.error.as_ref().map(|e| format!("{}: {e}", d.url)))
            .collect();
        if failed.is_empty() {
            Ok(self)
        } else {
            Err(BackupError::SomeDestinationsFailed {
                failed: failed.len(),
                total: self.destinations.len(),
                details: failed.join("; "),
            })
        }
    }
}

struct DestState {
    dest: Option<Destination>,
    url: String,
    error: Option<BackupError>,
    /// plaintext sha256 → (object sha256, object size)
    known: HashMap<String, (String, u64)>,
    chunks: Vec<ChunkRef>,
    new_chunks: u64,
    uploaded_bytes: u64,
    stored_bytes: u64,
}

impl DestState {
    fn ok(&self) -> bool {
        self.error.is_none() && self.dest.is_some()
    }
}

async fn prepare(
    d: &Destination,
    chunker: ChunkerSettings,
    lock: &str,
    lock_stale_ms: u64,
) -> Result<(RepoConfig, HashMap<String, (String, u64)>), BackupError> {
    let cfg = match d.get(CONFIG_KEY).await? {
        Some(b) => {
            let cfg: RepoConfig =
                serde_json::from_slice(&b).map_err(|e| BackupError::CorruptObject {
                    url: d.url.clone(),
                    object: CONFIG_KEY.into(),
                    detail: e.to_string(),
                })?;
            if cfg.format != "phalanx-backup" || cfg.version != FORMAT_VERSION {
                return Err(BackupError::CorruptObject {
                    url: d.url.clone(),
                    object: CONFIG_KEY.into(),
                    detail: format!(
                        "format {:?} version {} is not one this phalanx writes",
                        cfg.format, cfg.version
                    ),
                });
            }
            cfg
        }
        None => {
            let cfg = RepoConfig {
                format: "phalanx-backup".into(),
                version: FORMAT_VERSION,
                chunker,
                created_at: now_rfc3339().0,
            };
            d.put(
                CONFIG_KEY,
                Bytes::from(serde_json::to_vec_pretty(&cfg).expect("json")),
            )
            .await?;
            cfg
        }
    };
    // Our lock first, then look for a prune: a prune running now may delete any chunk
    // no complete backup references, so we then reuse nothing (upload every chunk).
    d.put(lock, Bytes::from_static(b"{}")).await?;
    let pruning = crate::prune::fresh_locks(d, "prune-", lock_stale_ms).await? > 0;
    let mut known = HashMap::new();
    if pruning {
        tracing::warn!(
            "destination {}: a prune is running; this backup reuses no chunk",
            d.url
        );
        return Ok((cfg, known));
    }
    for (key, size) in d.list(CHUNKS_PREFIX).await? {
        if let Some((p, o)) = parse_chunk_key(&key) {
            known.insert(p, (o, size));
        }
    }
    Ok((cfg, known))
}

struct Taken {
    endpoint: String,
    cluster_id: u64,
    member_id: u64,
    client: Option<etcd_client::Client>,
}

/// Start the source: spawn a task pumping its bytes into `tx`.
async fn open_source(
    source: &Source,
    settings: &BackupSettings,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<Taken, BackupError> {
    match source {
        Source::File(path) => {
            let mut f =
                std::fs::File::open(path).map_err(BackupError::io("open snapshot file", path))?;
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if tx
                                .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            break;
                        }
                    }
                }
            });
            Ok(Taken {
                endpoint: path.display().to_string(),
                cluster_id: 0,
                member_id: 0,
                client: None,
            })
        }
        Source::Endpoints(_) | Source::Channel(_) => {
            // (name, the member's in-process channel if that is the source)
            let targets: Vec<(String, Option<etcd_client::Channel>)> = match source {
                Source::Channel(ch) => vec![(MEMBER_INTERNAL_ENDPOINT.into(), Some(ch.clone()))],
                Source::Endpoints(eps) => eps.iter().map(|e| (e.clone(), None)).collect(),
                Source::File(_) => unreachable!("files are read above"),
            };
            let eps: Vec<String> = targets.iter().map(|(e, _)| e.clone()).collect();
            let mut last = String::from("no endpoints given");
            for (ep, channel) in &targets {
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(settings.connect_timeout_ms));
                let connected = match channel {
                    Some(ch) => {
                        etcd_client::Client::from_channel(ask_mvcc_stream(ch.clone()), None).await
                    }
                    None => match settings
                        .client_security
                        .options(opts.clone(), &[ep.as_str()])
                    {
                        Ok(opts) => match endpoint_channel(ep, settings).await {
                            Ok(ch) => {
                                etcd_client::Client::from_channel(ask_mvcc_stream(ch), Some(opts))
                                    .await
                            }
                            Err(e) => {
                                last = format!("{ep}: {e}");
                                continue;
                            }
                        },
                        Err(e) => {
                            last = format!("{ep}: {e}");
                            continue;
                        }
                    },
                };
                let client = match connected {
                    Ok(c) => c,
                    Err(e) => {
                        last = format!("{ep}: {e}");
                        continue;
                    }
                };
                let mut stream = match client.maintenance_client().snapshot().await {
                    Ok(s) => s,
                    Err(e) => {
                        last = format!("{ep}: {e}");
                        continue;
                    }
                };
                let first = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        last = format!("{ep}: empty snapshot stream");
                        continue;
                    }
                    Err(e) => {
                        last = format!("{ep}: {e}");
                        continue;
                    }
                };
                let (cluster_id, member_id) = first
                    .header()
                    .map(|h| (h.cluster_id(), h.member_id()))
                    .unwrap_or((0, 0));
                let first_blob = Bytes::copy_from_slice(first.blob());
                let ep2 = ep.clone();
                tokio::spawn(async move {
                    if tx.send(Ok(first_blob)).await.is_err() {
                        return;
                    }
                    loop {
                        match stream.message().await {
                            Ok(Some(m)) => {
                                if tx.send(Ok(Bytes::copy_from_slice(m.blob()))).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => return,
                            Err(e) => {
                                let _ = tx
                                    .send(Err(std::io::Error::other(format!(
                                        "{ep2}: snapshot stream broke: {e}"
                                    ))))
                                    .await;
                                return;
                            }
                        }
                    }
                });
                return Ok(Taken {
                    endpoint: ep.clone(),
                    cluster_id,
                    member_id,
                    client: Some(client),
                });
            }
            Err(BackupError::Source {
                endpoints: eps,
                detail: last,
            })
        }
    }
}

/// gRPC path of Maintenance.Snapshot.
const SNAPSHOT_METHOD_PATH: &str = "/etcdserverpb.Maintenance/Snapshot";

/// `channel`, with the metadata that asks a Phalanx member for its mvcc snapshot stream
/// (`etcd_snapshot::mvcc_wire`) added to Snapshot calls: the member then sends the
/// stream a backup stores, rather than an etcd (bbolt) snapshot that would be built on
/// the member and converted back here. Members that do not know it (and etcd) ignore
/// it; [`crate::snapstream::open_snapshot`] accepts either format.
fn ask_mvcc_stream(channel: etcd_client::Channel) -> etcd_client::Channel {
    etcd_client::Channel::Custom(tower::util::BoxCloneSyncService::new(AskMvccStream(
        channel,
    )))
}

#[derive(Clone)]
struct AskMvccStream(etcd_client::Channel);

type GrpcRequest = http::Request<tonic::body::Body>;

impl tower::Service<GrpcRequest> for AskMvccStream {
    type Response = http::Response<tonic::body::Body>;
    type Error = tower::BoxError;
    type Future = <etcd_client::Channel as tower::Service<GrpcRequest>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: GrpcRequest) -> Self::Future {
        if req.uri().path() == SNAPSHOT_METHOD_PATH {
            req.headers_mut().insert(
                etcd_snapshot::MVCC_FORMAT_METADATA_KEY,
                http::HeaderValue::from_static(etcd_snapshot::MVCC_FORMAT_V2_METADATA_VALUE),
            );
        }
        self.0.call(req)
    }
}

/// A gRPC channel to one endpoint, with the TLS of `settings.client_security` for
/// `https://` endpoints (the checks of `ClientSecurity::options` are made by the caller).
async fn endpoint_channel(
    ep: &str,
    settings: &BackupSettings,
) -> Result<etcd_client::Channel, String> {
    let mut e = tonic::transport::Endpoint::from_shared(ep.to_string())
        .map_err(|e| format!("not a URL: {e}"))?
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms));
    if ep.starts_with("https://") {
        e = e
            .tls_config(settings.client_security.tls_options())
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    let ch = e.connect().await.map_err(|e| format!("connect: {e}"))?;
    Ok(etcd_client::Channel::Tonic(ch))
}

/// HashKV at `revision` of a normalized stream, by installing it into a scratch store;
/// the same hash computed on the stream as it loads must agree (a store that did not
/// load what the stream holds is an error).
pub(crate) fn hash_kv_of_stream(
    r: &mut (dyn Read + Send),
    revision: i64,
    scratch: &std::path::Path,
) -> Result<u32, BackupError> {
    let path = scratch.join("kv.redb");
    let store = mvcc::Store::open(&path).map_err(|e| BackupError::Store {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    // A scratch store, thrown away: loaded as the stream arrives, never fsynced.
    let mut tap = crate::streamcheck::HashKvTap::new(r, revision);
    store
        .load_snapshot(&mut tap, mvcc::LoadDurability::Scratch)
        .map_err(|e| BackupError::Store {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    let (h, _, _) = store.hash_kv(revision).map_err(|e| BackupError::Store {
        path: path.clone(),
        detail: format!("HashKV at {revision}: {e}"),
    })?;
    let on_stream = tap.finish().map_err(|detail| BackupError::Store {
        path: path.clone(),
        detail,
    })?;
    if on_stream != h {
        return Err(BackupError::Store {
            path,
            detail: format!(
                "HashKV at {revision} of the loaded store is {h}, of the stream it was loaded from {on_stream}"
            ),
        });
    }
    Ok(h)
}

/// Read buffer between the snapshot source and the normalizer.
const SOURCE_READ_BUFFER_BYTES: usize = 1 << 16;

type Upload =
    std::pin::Pin<Box<dyn std::future::Future<Output = (usize, Result<(), BackupError>)> + Send>>;

/// Take one full backup from `source` to every destination of `settings`.
/// Destinations are independent: the outcome reports each one; call
/// [`BackupOutcome::into_result`] to turn any failure into an error.
pub async fn backup_now(
    source: &Source,
    settings: &BackupSettings,
) -> Result<BackupOutcome, BackupError> {
    backup_now_gated(source, settings, None).await
}

/// [`backup_now`] with a [`CommitGate`] asked before anything that makes the backup
/// exist is written.
pub async fn backup_now_gated(
    source: &Source,
    settings: &BackupSettings,
    gate: Option<CommitGate>,
) -> Result<BackupOutcome, BackupError> {
    let lock = crate::prune::lock_key("backup-");
    let r = backup_inner(source, settings, gate, &lock).await;
    // Best effort: a lock left behind only delays chunk GC until it is stale.
    for url in &settings.destinations {
        if let Ok(d) = Destination::open(url, &settings.s3, &settings.retry) {
            let _ = tokio::time::timeout(Duration::from_secs(5), d.delete(&lock)).await;
        }
    }
    r
}

async fn backup_inner(
    source: &Source,
    settings: &BackupSettings,
    gate: Option<CommitGate>,
    lock: &str,
) -> Result<BackupOutcome, BackupError> {
    let started = std::time::Instant::now();
    let progress = &settings.progress;
    progress.set_phase("backup: opening the destinations");
    let recipients = parse_recipients(&settings.recipients)?;
    if settings.destinations.is_empty() {
        return Err(BackupError::BadDestination {
            url: String::new(),
            detail: "no destination given (pass --to URL)".into(),
        });
    }
    // Open and prepare every destination; one failing never stops the others.
    let mut dests: Vec<DestState> = Vec::new();
    let mut chunker: Option<ChunkerSettings> = None;
    for url in &settings.destinations {
        let mut st = DestState {
            dest: None,
            url: url.clone(),
            error: None,
            known: HashMap::new(),
            chunks: Vec::new(),
            new_chunks: 0,
            uploaded_bytes: 0,
            stored_bytes: 0,
        };
        match Destination::open(url, &settings.s3, &settings.retry) {
            Err(e) => st.error = Some(e),
            Ok(d) => match prepare(&d, settings.chunker, lock, settings.lock_stale_ms).await {
                Ok((cfg, known)) => {
                    if let Some(c) = chunker {
                        if c != cfg.chunker {
                            tracing::warn!("destination {url} was created with other chunk sizes ({:?}); dedup there is reduced", cfg.chunker);
                        }
                    } else {
                        chunker = Some(cfg.chunker);
                    }
                    st.known = known;
                    st.dest = Some(d);
                }
                Err(e) => st.error = Some(e),
            },
        }
        dests.push(st);
    }
    if !dests.iter().any(DestState::ok) {
        return Ok(finish_outcome(String::new(), 0, 0, 0, 0, started, dests));
    }
    let chunker = chunker.unwrap_or(settings.chunker);

    // Source → blocking chunker thread → async uploader.
    let (src_tx, src_rx) = tokio::sync::mpsc::channel(settings.source_queue_messages.max(1));
    let taken = open_source(source, settings, src_tx).await?;
    let (chunk_tx, mut chunk_rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(2);
    let endpoint = taken.endpoint.clone();
    // HashKV at the snapshot's revision is asked for as soon as the stream names that
    // revision (its first record), so the member computes it while it still streams.
    let (rev_tx, rev_rx) = tokio::sync::oneshot::channel::<i64>();
    let early_hash = taken.client.clone().map(|c| {
        tokio::spawn(async move {
            let rev = rev_rx.await.ok()?;
            Some((rev, c.maintenance_client().hash_kv(rev).await))
        })
    });
    // A member sends version 2 of its mvcc stream (no trailer) or an etcd snapshot; a
    // file holding an mvcc stream was saved with etcd's trailer (version 1).
    let mvcc_trailer = taken.client.is_none();
    let chunk_thread =
        tokio::task::spawn_blocking(move || -> Result<StreamInfo, std::io::Error> {
            let (src, etcd_trailer) = crate::snapstream::open_snapshot(
                Box::new(ChannelReader::new(src_rx)),
                mvcc_trailer,
            )?;
            // Buffered: the normalizer reads every record in five small parts.
            let src = std::io::BufReader::with_capacity(SOURCE_READ_BUFFER_BYTES, src);
            let (mut norm, info) = Normalizer::new(src, etcd_trailer);
            norm.notify_revision(rev_tx);
            // Two stages on two threads: the normalizer (parse, CRC32 of the input and
            // of the output, SHA-256 of a trailer-carrying input) feeds the chunker (FastCDC, SHA-256 of each
            // chunk) through a bounded pipe.
            let (mut pw, pr) = crate::snapstream::pipe::pipe();
            std::thread::scope(|scope| {
                let normalizing = scope.spawn(move || -> std::io::Result<()> {
                    let r = std::io::copy(&mut norm, &mut pw)
                        .and_then(|_| std::io::Write::flush(&mut pw));
                    // Closing the pipe ends the chunker's input (early, on an error).
                    drop(pw);
                    r
                });
                let chunked = (|| -> std::io::Result<()> {
                    let mut cdc = crate::snapstream::Chunker::new(
                        pr,
                        chunker.chunk_min_bytes,
                        chunker.chunk_avg_bytes,
                        chunker.chunk_max_bytes,
                    );
                    while let Some(c) = cdc.next_chunk()? {
                        let sha = hex(&Sha256::digest(c));
                        if chunk_tx
                            .blocking_send((sha, Bytes::copy_from_slice(c)))
                            .is_err()
                        {
                            return Err(std::io::Error::other("uploader stopped"));
                        }
                    }
                    Ok(())
                })();
                match (normalizing.join().expect("normalizer thread"), chunked) {
                    // The chunker stopped first: the normalizer only found the pipe closed.
                    (Err(e), Err(c)) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(c),
                    // Else the normalizer's error: the chunker then only saw its input end.
                    (Err(e), _) => Err(e),
                    (Ok(()), chunked) => chunked,
                }
            })?;
            let i = info.lock().expect("info").clone();
            Ok(i)
        });

    let mut uploads: FuturesUnordered<Upload> = FuturesUnordered::new();
    let mut chunks = 0u64;
    let mut paced_bytes = 0u64;
    let pace_start = tokio::time::Instant::now();
    progress.set_phase("backup: reading the snapshot, uploading new chunks");
    while let Some((sha, data)) = chunk_rx.recv().await {
        chunks += 1;
        progress.chunk_done(data.len() as u64);
        let needing: Vec<usize> = (0..dests.len())
            .filter(|&i| dests[i].ok() && !dests[i].known.contains_key(&sha))
            .collect();
        let mut sealed: Option<(String, Bytes)> = None;
        if !needing.is_empty() {
            let recips = recipients.clone();
            let level = settings.zstd_level;
            let d2 = data.clone();
            let obj = tokio::task::spawn_blocking(move || seal(&d2, &recips, level))
                .await
                .expect("seal task")
                .map_err(|e| BackupError::Snapshot {
                    endpoint: endpoint.clone(),
                    detail: format!("encrypting a chunk: {e}"),
                })?;
            sealed = Some((sha256_hex(&obj), Bytes::from(obj)));
        }
        for (i, st) in dests.iter_mut().enumerate() {
            if !st.ok() {
                continue;
            }
            let (osha, size) = match st.known.get(&sha) {
                Some((o, s)) => (o.clone(), *s),
                None => {
                    let (osha, obj) = sealed.clone().expect("sealed when needed");
                    let size = obj.len() as u64;
                    st.known.insert(sha.clone(), (osha.clone(), size));
                    st.new_chunks += 1;
                    st.uploaded_bytes += size;
                    progress.uploaded(size);
                    let d = st.dest.clone().expect("ok dest");
                    let key = chunk_key(&sha, &osha);
                    if settings.max_upload_bytes_per_s > 0 {
                        paced_bytes += size;
                        let due = pace_start
                            + Duration::from_secs_f64(
                                paced_bytes as f64 / settings.max_upload_bytes_per_s as f64,
                            );
                        tokio::time::sleep_until(due).await;
                    }
                    uploads.push(Box::pin(async move { (i, d.put(&key, obj).await) }));
                    (osha, size)
                }
            };
            st.stored_bytes += size;
            st.chunks.push(ChunkRef {
                sha256: sha.clone(),
                object_sha256: osha,
                len: data.len() as u32,
            });
        }
        while uploads.len() >= settings.upload_concurrency.max(1) {
            if let Some((i, Err(e))) = uploads.next().await {
                dests[i].error.get_or_insert(e);
            }
        }
    }
    while let Some((i, r)) = uploads.next().await {
        if let Err(e) = r {
            dests[i].error.get_or_insert(e);
        }
    }
    let info = chunk_thread
        .await
        .expect("chunker thread")
        .map_err(|e| BackupError::Snapshot {
            endpoint: taken.endpoint.clone(),
            detail: e.to_string(),
        })?;
    let (Some(revision), Some(compact_revision)) = (info.revision, info.compact_revision) else {
        return Err(BackupError::Snapshot {
            endpoint: taken.endpoint.clone(),
            detail: "no revision counters in the snapshot".into(),
        });
    };

    progress.set_phase("backup: checking HashKV, writing the manifests");
    // HashKV at the backup revision, from the member itself (or computed for a file).
    let hash_kv = match taken.client.clone() {
        Some(c) => {
            let early = match early_hash {
                Some(t) => t.await.ok().flatten(),
                None => None,
            };
            let answer = match early {
                Some((rev, answer)) if rev == revision => answer,
                _ => c.maintenance_client().hash_kv(revision).await,
            };
            answer
                .map_err(|e| BackupError::Snapshot {
                    endpoint: taken.endpoint.clone(),
                    detail: format!("HashKV at revision {revision}: {e}"),
                })?
                .hash()
        }
        None => {
            let Source::File(path) = source else {
                unreachable!("no client only for files")
            };
            let path = path.clone();
            let ep = taken.endpoint.clone();
            tokio::task::spawn_blocking(move || -> Result<u32, BackupError> {
                let f = std::fs::File::open(&path)
                    .map_err(BackupError::io("open snapshot file", &path))?;
                let (src, etcd_trailer) =
                    crate::snapstream::open_snapshot(Box::new(std::io::BufReader::new(f)), true)
                        .map_err(BackupError::io("read snapshot file", &path))?;
                let (mut norm, _) = Normalizer::new(src, etcd_trailer);
                let dir = tempfile::tempdir()
                    .map_err(BackupError::io("create scratch dir", std::env::temp_dir()))?;
                hash_kv_of_stream(&mut norm, revision, dir.path()).map_err(|e| {
                    BackupError::Snapshot {
                        endpoint: ep,
                        detail: e.to_string(),
                    }
                })
            })
            .await
            .expect("hash task")?
        }
    };

    let (created_at, created_unix_ms) = now_rfc3339();
    let id = format!(
        "{created_unix_ms:013}-r{revision}-{:08x}",
        rand::random::<u32>()
    );
    let cluster_id = format!("{:x}", taken.cluster_id);
    if let Some(gate) = gate {
        if !gate(id.clone()).await {
            for st in dests.iter_mut().filter(|s| s.ok()) {
                st.error = Some(BackupError::Abandoned {
                    url: st.url.clone(),
                    backup: id.clone(),
                });
            }
            return Ok(finish_outcome(
                id,
                revision,
                compact_revision,
                info.bytes_out,
                chunks,
                started,
                dests,
            ));
        }
    }
    for st in dests.iter_mut().filter(|s| s.ok()) {
        let d = st.dest.clone().expect("ok");
        let manifest = Manifest {
            format: "phalanx-backup-manifest".into(),
            version: FORMAT_VERSION,
            id: id.clone(),
            created_at: created_at.clone(),
            created_unix_ms,
            phalanx_version: env!("CARGO_PKG_VERSION").into(),
            cluster_id: cluster_id.clone(),
            member_id: format!("{:x}", taken.member_id),
            source_endpoint: taken.endpoint.clone(),
            revision,
            compact_revision,
            hash_kv,
            snapshot_bytes: info.bytes_out,
            // Each chunk's SHA-256 is recorded and checked on read, in order: a hash of
            // the whole stream would be one more pass that checks nothing more.
            snapshot_sha256: None,
            snapshot_records: info.records_out,
            chunker,
            chunks: std::mem::take(&mut st.chunks),
        };
        let manifest_chunk_keys: Vec<String> = manifest
            .chunks
            .iter()
            .map(|c| chunk_key(&c.sha256, &c.object_sha256))
            .collect();
        let json = serde_json::to_vec(&manifest).expect("json");
        let obj = match seal(&json, &recipients, settings.zstd_level) {
            Ok(o) => o,
            Err(e) => {
                st.error = Some(BackupError::Manifest {
                    url: st.url.clone(),
                    backup: id.clone(),
                    detail: format!("encrypting: {e}"),
                });
                continue;
            }
        };
        st.stored_bytes += obj.len() as u64;
        st.uploaded_bytes += obj.len() as u64;
        let mut summary = Summary {
            format: "phalanx-backup-summary".into(),
            version: FORMAT_VERSION,
            id: id.clone(),
            created_at: created_at.clone(),
            created_unix_ms,
            revision,
            compact_revision,
            cluster_id: cluster_id.clone(),
            phalanx_version: env!("CARGO_PKG_VERSION").into(),
            recipients: settings
                .recipients
                .iter()
                .map(|r| r.trim().to_string())
                .collect(),
            snapshot_bytes: info.bytes_out,
            chunks,
            new_chunks: st.new_chunks,
            stored_bytes: st.stored_bytes,
            uploaded_bytes: st.uploaded_bytes,
            manifest_sha256: sha256_hex(&obj),
        };
        let summary_len = serde_json::to_vec_pretty(&summary).expect("json").len() as u64;
        summary.uploaded_bytes += summary_len;
        st.uploaded_bytes = summary.uploaded_bytes;
        let sj = serde_json::to_vec_pretty(&summary).expect("json");
        // The summary first, the manifest LAST: a backup exists once its manifest does.
        let refs = Refs {
            format: "phalanx-backup-refs".into(),
            id: id.clone(),
            revision,
            chunks: manifest_chunk_keys.clone(),
        };
        let r = async {
            d.put(
                &backup_key(&id, REFS_NAME),
                Bytes::from(serde_json::to_vec(&refs).expect("json")),
            )
            .await?;
            d.put(&backup_key(&id, SUMMARY_NAME), Bytes::from(sj))
                .await?;
            d.put(&backup_key(&id, MANIFEST_NAME), Bytes::from(obj))
                .await
        }
        .await;
        if let Err(e) = r {
            st.error = Some(e);
        }
    }
    Ok(finish_outcome(
        id,
        revision,
        compact_revision,
        info.bytes_out,
        chunks,
        started,
        dests,
    ))
}

fn finish_outcome(
    id: String,
    revision: i64,
    compact_revision: i64,
    snapshot_bytes: u64,
    chunks: u64,
    started: std::time::Instant,
    dests: Vec<DestState>,
) -> BackupOutcome {
    BackupOutcome {
        id,
        revision,
        compact_revision,
        snapshot_bytes,
        chunks,
        elapsed: started.elapsed(),
        destinations: dests
            .into_iter()
            .map(|s| DestinationOutcome {
                url: s.url,
                error: s.error,
                new_chunks: s.new_chunks,
                uploaded_bytes: s.uploaded_bytes,
                stored_bytes: s.stored_bytes,
            })
            .collect(),
    }
}
