//! `phalanx backup now|list|verify` and `phalanx restore`: the command lines of the
//! `backup` library, converted into its settings, and the printing of reports.

use std::path::PathBuf;

use anyhow::Context;

/// `phalanx backup`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BackupCommand {
    /// Take a full backup now, to every --to destination (each independent)
    Now(NowArgs),
    /// List the complete backups at a destination
    List(ListArgs),
    /// Read every object of a backup, check every hash, decrypt, replay it into a
    /// scratch store and compare HashKV with the cluster's at the backup revision
    Verify(VerifyArgs),
    /// The backup policy the cluster runs itself (leader only): scheduled full backups,
    /// continuous archive, retention, restore drills
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Apply a retention policy to a repository now (restic's `forget` rules + prune)
    Forget(ForgetArgs),
}

/// `phalanx backup schedule`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Store the policy in the replicated store (validated first; the leader applies it)
    Set(ScheduleSetArgs),
    /// Print the policy and the status the running member reports
    Show(ScheduleShowArgs),
    /// Remove the policy (scheduled backups and the archive stop)
    Clear(ScheduleShowArgs),
}

/// Retention rules (restic's forget; 0 = the rule keeps nothing; all 0 = keep all).
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
}

impl RetentionArgs {
    fn retention(&self) -> backup::Retention {
        backup::Retention {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
        }
    }
}

/// `phalanx backup schedule set`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleSetArgs {
    /// Comma-separated client URLs of the cluster.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Destination: file:///path (on every member's host) or s3://bucket/prefix (repeatable).
    #[arg(long = "to", required = true)]
    pub to: Vec<String>,
    /// age X25519 public key (repeatable, at least one).
    #[arg(long = "recipient", required = true)]
    pub recipients: Vec<String>,
    /// Interval between full backups, milliseconds.
    #[arg(long, default_value_t = 86_400_000)]
    pub backup_interval_ms: u64,
    /// Continuous archive: revisions shipped at least this often, milliseconds (0: off).
    #[arg(long, default_value_t = 1_000)]
    pub archive_interval_ms: u64,
    /// Restore drill (a full restore into a scratch dir on the running member, timed)
    /// interval, milliseconds (0: off; needs --backup-identity-file on the members).
    #[arg(long, default_value_t = 86_400_000)]
    pub drill_interval_ms: u64,
    /// Upload bandwidth cap, bytes per second (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub max_upload_bytes_per_s: u64,
    /// Next attempt after a failed backup, milliseconds (or the interval, if shorter).
    #[arg(long, default_value_t = 10_000)]
    pub failed_backup_retry_ms: u64,
    /// Chunk uploads in flight at once.
    #[arg(long, default_value_t = 4)]
    pub upload_concurrency: usize,
    /// Most events in one archive segment (a revision is never split).
    #[arg(long, default_value_t = 100_000)]
    pub max_segment_events: usize,
    /// Repository locks older than this are ignored, milliseconds.
    #[arg(long, default_value_t = backup::backup_lock_stale_ms())]
    pub lock_stale_ms: u64,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub security: super::client::SecurityArgs,
}

/// `phalanx backup schedule show|clear`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleShowArgs {
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    #[command(flatten)]
    pub security: super::client::SecurityArgs,
    /// Print JSON (`{"policy":…, "status":…}`).
    #[arg(long)]
    pub json: bool,
}

/// `phalanx backup forget`.
#[derive(Debug, Clone, clap::Args)]
pub struct ForgetArgs {
    /// Repository: file:///path or s3://bucket/prefix.
    #[arg(long)]
    pub from: String,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Repository locks older than this are ignored, milliseconds.
    #[arg(long, default_value_t = backup::backup_lock_stale_ms())]
    pub lock_stale_ms: u64,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// The member's side (`phalanx node` flags): the backup service runs on every member
/// and acts only on the leader, once a policy is stored.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeBackupArgs {
    /// Serve the backup service's /metrics and /status on this address.
    #[arg(long)]
    pub backup_listen: Option<std::net::SocketAddr>,
    /// age identity file for scheduled restore drills (repeatable; none: no drill).
    #[arg(long = "backup-identity-file")]
    #[serde(rename = "backup-identity-file", default)]
    pub backup_identity_files: Vec<PathBuf>,
    /// How often the applied revision is sampled for `restore --time`, milliseconds.
    #[arg(long)]
    pub backup_archive_poll_ms: Option<u64>,
    /// Turn the backup service off on this member.
    #[arg(long)]
    #[serde(default)]
    pub disable_backup_service: bool,
}

/// Start the member's backup service (see `backup::service`).
pub async fn start_for_node(
    a: &NodeBackupArgs,
    name: &str,
    client_endpoints: Vec<String>,
    node: std::sync::Arc<consensus::Node>,
    internal: etcd_api::InternalChannel,
) -> anyhow::Result<Option<backup::ServiceHandle>> {
    if a.disable_backup_service {
        return Ok(None);
    }
    let mut s = backup::ServiceSettings::new(name, client_endpoints);
    // The store and snapshots through the member's in-process channel
    // (works with https-only client URLs, --client-cert-auth and auth on).
    s.channel = Some(internal);
    s.listen = a.backup_listen;
    s.identity_files = a.backup_identity_files.clone();
    if let Some(v) = a.backup_archive_poll_ms {
        anyhow::ensure!(v >= 1, "--backup-archive-poll-ms must be at least 1");
        s.archive_poll_ms = v;
    }
    let n1 = node.clone();
    let host = backup::service::Host {
        store: node.store().clone(),
        is_leader: std::sync::Arc::new(move || n1.status().leader == Some(n1.id())),
    };
    let h = backup::service::start(s, host)
        .await
        .context("starting the backup service")?;
    if let Some(l) = h.listen_addr {
        eprintln!("phalanx node {name}: backup service metrics on http://{l}/metrics");
    }
    Ok(Some(h))
}

/// Destination access shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// S3 endpoint URL (for S3-compatible servers); default: $AWS_ENDPOINT_URL, else AWS.
    /// Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the region from
    /// AWS_REGION (default us-east-1).
    #[arg(long, env = "PHALANX_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Retries of one request to a destination after its first attempt.
    #[arg(long, default_value_t = 5)]
    pub max_upload_retries: u32,
    /// First retry delay in milliseconds (doubling each retry).
    #[arg(long, default_value_t = 200)]
    pub retry_initial_backoff_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub retry_max_backoff_ms: u64,
    /// Timeout of one request to an S3 destination, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub request_timeout_ms: u64,
}

impl StorageArgs {
    fn s3(&self) -> backup::S3Settings {
        backup::S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: None,
        }
    }
    fn retry(&self) -> backup::RetrySettings {
        backup::RetrySettings {
            max_upload_retries: self.max_upload_retries,
            retry_initial_backoff_ms: self.retry_initial_backoff_ms,
            retry_max_backoff_ms: self.retry_max_backoff_ms,
            request_timeout_ms: self.request_timeout_ms,
            ..Default::default()
        }
    }
}

/// `phalanx backup now`.
#[derive(Debug, Clone, clap::Args)]
pub struct NowArgs {
    /// Comma-separated client URLs; the snapshot comes from the first that answers.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Back up a snapshot file saved from a Phalanx member by `etcdctl snapshot save`
    /// instead of asking --endpoints.
    #[arg(long, conflicts_with = "endpoints")]
    pub from_snapshot_file: Option<PathBuf>,
    #[command(flatten)]
    pub security: super::client::SecurityArgs,
    /// Destination: file:///path or s3://bucket/prefix (repeatable).
    #[arg(long = "to", required = true)]
    pub to: Vec<String>,
    /// age X25519 public key (age1…) to encrypt to (repeatable, at least one).
    #[arg(long = "recipient", required = true)]
    pub recipients: Vec<String>,
    /// Chunk sizes of a NEW repository (an existing one keeps its own), in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub chunk_min_bytes: u32,
    #[arg(long, default_value_t = 256 * 1024)]
    pub chunk_avg_bytes: u32,
    #[arg(long, default_value_t = 1024 * 1024)]
    pub chunk_max_bytes: u32,
    /// zstd level of chunks and manifests.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// Chunk uploads in flight at once.
    #[arg(long, default_value_t = 4)]
    pub upload_concurrency: usize,
    /// Upload bandwidth cap over all destinations, bytes per second (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub max_upload_bytes_per_s: u64,
    /// Connect timeout to a member, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub progress: crate::cli::progress::ProgressArgs,
}

/// `phalanx backup list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Repository: file:///path or s3://bucket/prefix.
    #[arg(long)]
    pub from: String,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// `phalanx backup verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Repository: file:///path or s3://bucket/prefix.
    #[arg(long)]
    pub from: String,
    /// age identity file (AGE-SECRET-KEY-… lines, as written by age-keygen); repeatable.
    #[arg(long = "identity")]
    pub identities: Vec<PathBuf>,
    /// Backup id (default: the newest).
    #[arg(long)]
    pub backup: Option<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub progress: crate::cli::progress::ProgressArgs,
}

/// `phalanx restore` (etcdutl snapshot restore's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// Repository: file:///path or s3://bucket/prefix.
    #[arg(long, required_unless_present = "from_etcd_snapshot")]
    pub from: Option<String>,
    /// Migrate from etcd: restore a file written by `etcdctl snapshot save` against etcd
    /// 3.4/3.5 (keys with their revisions and versions, leases; same revision as etcd).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["from", "revision", "time", "identities", "bump_revision"]
    )]
    pub from_etcd_snapshot: Option<PathBuf>,
    /// With --from-etcd-snapshot: accept a file without etcd's SHA-256 trailer (a raw
    /// `member/snap/db`), as `etcdctl snapshot restore --skip-hash-check`; a trailer that
    /// is present is always verified.
    #[arg(long, requires = "from_etcd_snapshot")]
    pub skip_hash_check: bool,
    /// Restore the state as of this revision (default: the newest revision the backups
    /// and the continuous archive hold).
    #[arg(long, conflicts_with = "time")]
    pub revision: Option<i64>,
    /// Restore the newest revision applied at or before this RFC 3339 time (a backup,
    /// then the continuous archive up to that time).
    #[arg(long)]
    pub time: Option<String>,
    /// age identity file; repeatable.
    #[arg(long = "identity")]
    pub identities: Vec<PathBuf>,
    /// This member's name.
    #[arg(long)]
    pub name: String,
    /// name=peer-url,… of every member of the restored cluster.
    #[arg(long)]
    pub initial_cluster: String,
    /// Token of the restored cluster (use a new one).
    #[arg(long)]
    pub initial_cluster_token: String,
    /// This member's peer URLs (comma-separated), as listed in --initial-cluster.
    #[arg(long, value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
    /// The new member's data dir (must be empty or missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Revisions to add to the backup's revision, so that revisions never go backwards
    /// for watchers (etcd's --bump-revision); the result is also marked compacted.
    #[arg(long, default_value_t = backup::DEFAULT_BUMP_REVISION)]
    pub bump_revision: i64,
    /// Most bytes of page cache the store being restored may use (it grows only as pages
    /// are touched; 1 M keys of 256 bytes peak at about 475 MB resident). Lower it on a
    /// small machine; a restore then rereads pages from disk.
    #[arg(long, default_value_t = backup::RESTORE_STORE_CACHE_BYTES)]
    pub restore_cache_bytes: usize,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub progress: crate::cli::progress::ProgressArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn mib(b: u64) -> String {
    if b < 1024 * 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    }
}

pub fn run(cmd: BackupCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        BackupCommand::Now(a) => rt.block_on(now(a)),
        BackupCommand::List(a) => rt.block_on(list(a)),
        BackupCommand::Verify(a) => rt.block_on(verify(a)),
        BackupCommand::Schedule(c) => rt.block_on(schedule(c)),
        BackupCommand::Forget(a) => rt.block_on(forget(a)),
    }
}

async fn schedule(c: ScheduleCommand) -> anyhow::Result<()> {
    let prefix = backup::service::DEFAULT_PREFIX;
    match c {
        ScheduleCommand::Set(a) => {
            let p = backup::Policy {
                destinations: a.to.clone(),
                recipients: a.recipients.clone(),
                backup_interval_ms: a.backup_interval_ms,
                archive_interval_ms: a.archive_interval_ms,
                retention: a.retention.retention(),
                drill_interval_ms: a.drill_interval_ms,
                max_upload_retries: a.storage.max_upload_retries,
                retry_initial_backoff_ms: a.storage.retry_initial_backoff_ms,
                retry_max_backoff_ms: a.storage.retry_max_backoff_ms,
                request_timeout_ms: a.storage.request_timeout_ms,
                max_upload_bytes_per_s: a.max_upload_bytes_per_s,
                upload_concurrency: a.upload_concurrency,
                max_segment_events: a.max_segment_events,
                lock_stale_ms: a.lock_stale_ms,
                failed_backup_retry_ms: a.failed_backup_retry_ms,
                s3_endpoint: a.storage.s3_endpoint.clone(),
            };
            p.validate()
                .map_err(|e| anyhow::anyhow!("refused, nothing was written: {e}"))?;
            let rev = backup::service::set_policy(&a.endpoints, &a.security.load()?, prefix, &p)
                .await
                .context("storing the policy")?;
            println!(
                "backup policy stored at {prefix}/policy (revision {rev}): full backup every {} ms to {}, archive every {} ms, retention {:?}",
                p.backup_interval_ms,
                p.destinations.join(", "),
                p.archive_interval_ms,
                p.retention
            );
        }
        ScheduleCommand::Show(a) => {
            let (policy, status) =
                backup::service::get_policy_and_status(&a.endpoints, &a.security.load()?, prefix)
                    .await
                    .context("reading the policy")?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"policy": policy, "status": status})
                );
            } else {
                match &policy {
                    None => println!("no backup policy (phalanx backup schedule set …)"),
                    Some(p) => println!("policy:\n{}", serde_json::to_string_pretty(p)?),
                }
                if let Some(s) = &status {
                    println!("status:\n{}", serde_json::to_string_pretty(s)?);
                }
            }
        }
        ScheduleCommand::Clear(a) => {
            backup::service::clear_policy(&a.endpoints, &a.security.load()?, prefix)
                .await
                .context("removing the policy")?;
            println!("backup policy removed: scheduled backups and the archive stop");
        }
    }
    Ok(())
}

async fn forget(a: ForgetArgs) -> anyhow::Result<()> {
    let d = backup::Destination::open(&a.from, &a.storage.s3(), &a.storage.retry())?;
    let r = backup::prune(&d, &a.retention.retention(), a.lock_stale_ms)
        .await
        .context("forget")?;
    for id in &r.kept {
        println!("keep   {id}");
    }
    for id in &r.removed {
        println!("remove {id}");
    }
    println!(
        "kept {}, removed {}, deleted {} chunks and {} archive segments{}",
        r.kept.len(),
        r.removed.len(),
        r.chunks_deleted,
        r.segments_deleted,
        r.chunk_gc_skipped
            .map(|s| format!(" (chunk GC skipped: {s})"))
            .unwrap_or_default()
    );
    Ok(())
}

async fn now(a: NowArgs) -> anyhow::Result<()> {
    let settings = backup::BackupSettings {
        destinations: a.to.clone(),
        recipients: a.recipients.clone(),
        s3: a.storage.s3(),
        retry: a.storage.retry(),
        chunker: backup::ChunkerSettings {
            chunk_min_bytes: a.chunk_min_bytes,
            chunk_avg_bytes: a.chunk_avg_bytes,
            chunk_max_bytes: a.chunk_max_bytes,
        },
        zstd_level: a.zstd_level,
        upload_concurrency: a.upload_concurrency,
        connect_timeout_ms: a.connect_timeout_ms,
        max_upload_bytes_per_s: a.max_upload_bytes_per_s,
        client_security: a.security.load()?,
        ..Default::default()
    };
    let source = match a.from_snapshot_file {
        Some(f) => backup::Source::File(f),
        None => backup::Source::Endpoints(a.endpoints.clone()),
    };
    let out = crate::cli::progress::shown(
        &a.progress,
        &settings.progress,
        backup::backup_now(&source, &settings),
    )
    .await
    .context("backup")?;
    println!(
        "backup {} at revision {} (compacted at {}): snapshot {} in {} chunks, {:.2}s",
        out.id,
        out.revision,
        out.compact_revision,
        mib(out.snapshot_bytes),
        out.chunks,
        out.elapsed.as_secs_f64()
    );
    for d in &out.destinations {
        match &d.error {
            None => println!(
                "  {}: ok, uploaded {} ({} new chunks), stored {}",
                d.url,
                mib(d.uploaded_bytes),
                d.new_chunks,
                mib(d.stored_bytes)
            ),
            Some(e) => println!("  {}: FAILED: {e}", d.url),
        }
    }
    out.into_result().context("backup")?;
    Ok(())
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    let d = backup::Destination::open(&a.from, &a.storage.s3(), &a.storage.retry())?;
    let all = backup::list_backups(&d).await?;
    if a.json {
        for e in &all {
            println!(
                "{}",
                serde_json::json!({
                    "id": e.id, "revision": e.summary.revision,
                    "compact_revision": e.summary.compact_revision,
                    "created_at": e.summary.created_at,
                    "stored_bytes": e.summary.stored_bytes,
                    "uploaded_bytes": e.summary.uploaded_bytes,
                    "verified": e.verified.as_ref().map(|v| v.ok),
                })
            );
        }
        return Ok(());
    }
    println!(
        "{:<36} {:>10} {:>10} {:<24} {:>11} {:>8} VERIFIED",
        "ID", "REVISION", "COMPACTED", "TIME", "SIZE", "DEDUP"
    );
    for e in &all {
        let s = &e.summary;
        // Dedup ratio: bytes this backup references / bytes it had to upload.
        let dedup = s.stored_bytes as f64 / s.uploaded_bytes.max(1) as f64;
        let verified = match &e.verified {
            None => "never".to_string(),
            Some(v) if v.ok => format!("ok {}", v.checked_at),
            Some(v) => format!("FAILED {}", v.checked_at),
        };
        println!(
            "{:<36} {:>10} {:>10} {:<24} {:>11} {:>7.1}x {}",
            e.id,
            s.revision,
            s.compact_revision,
            s.created_at,
            mib(s.stored_bytes),
            dedup,
            verified
        );
    }
    if all.is_empty() {
        println!("(no complete backup at {})", d.url);
    }
    Ok(())
}

async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let settings = backup::ReadSettings {
        from: a.from.clone(),
        identity_files: a.identities.clone(),
        s3: a.storage.s3(),
        retry: a.storage.retry(),
        progress: Default::default(),
    };
    let r = crate::cli::progress::shown(
        &a.progress,
        &settings.progress,
        backup::verify(&settings, a.backup.as_deref()),
    )
    .await
    .context("verify")?;
    println!(
        "backup {} at revision {}: {} objects ({}) ok, HashKV {:#010x} matches the cluster's",
        r.backup,
        r.revision,
        r.objects,
        mib(r.bytes),
        r.hash_kv
    );
    Ok(())
}

pub fn run_restore(a: RestoreArgs) -> anyhow::Result<()> {
    if let Some(file) = &a.from_etcd_snapshot {
        return run_restore_from_etcd(&a, file);
    }
    let from = a
        .from
        .clone()
        .context("--from or --from-etcd-snapshot is required")?;
    let target = match (a.revision, &a.time) {
        (Some(r), _) => backup::Target::Revision(r),
        (None, Some(t)) => backup::Target::Time(t.clone()),
        (None, None) => backup::Target::Newest,
    };
    let settings = backup::RestoreSettings {
        read: backup::ReadSettings {
            from,
            identity_files: a.identities.clone(),
            s3: a.storage.s3(),
            retry: a.storage.retry(),
            progress: Default::default(),
        },
        target,
        name: a.name.clone(),
        initial_cluster: a.initial_cluster.clone(),
        initial_cluster_token: a.initial_cluster_token.clone(),
        initial_advertise_peer_urls: a.initial_advertise_peer_urls.clone(),
        data_dir: a.data_dir.clone(),
        bump_revision: a.bump_revision,
        check_page_keys: 1000,
        cache_bytes: a.restore_cache_bytes,
    };
    let r = runtime()?
        .block_on(crate::cli::progress::shown(
            &a.progress,
            &settings.read.progress,
            backup::restore(&settings),
        ))
        .context("restore")?;
    println!(
        "restored {} keys and {} leases as of revision {} from backup {} (revision {}) + {} archive segments ({} revisions) into {} in {:.2}s; the store is at revision {} (compacted there: watchers re-list)",
        r.keys,
        r.leases,
        r.revision,
        r.backup,
        r.backup_revision,
        r.segments,
        r.archived_revisions,
        a.data_dir.display(),
        r.elapsed.as_secs_f64(),
        r.new_revision
    );
    if r.detached_lease_keys > 0 {
        println!(
            "note: {} keys were attached to leases revoked after revision {}; they were restored without a lease",
            r.detached_lease_keys, r.revision
        );
    }
    println!(
        "start it with: phalanx node --name {} --data-dir {} --initial-cluster {} --initial-cluster-token {} --initial-advertise-peer-urls {} --initial-cluster-state new …",
        a.name,
        a.data_dir.display(),
        a.initial_cluster,
        a.initial_cluster_token,
        a.initial_advertise_peer_urls.join(",")
    );
    Ok(())
}

fn run_restore_from_etcd(a: &RestoreArgs, file: &std::path::Path) -> anyhow::Result<()> {
    let settings = backup::EtcdRestoreSettings {
        snapshot: file.to_path_buf(),
        skip_hash_check: a.skip_hash_check,
        name: a.name.clone(),
        initial_cluster: a.initial_cluster.clone(),
        initial_cluster_token: a.initial_cluster_token.clone(),
        initial_advertise_peer_urls: a.initial_advertise_peer_urls.clone(),
        data_dir: a.data_dir.clone(),
        progress: Default::default(),
    };
    let progress = settings.progress.clone();
    let r = runtime()?
        .block_on(crate::cli::progress::shown(
            &a.progress,
            &progress,
            async move {
                tokio::task::spawn_blocking(move || backup::restore_from_etcd_snapshot(&settings))
                    .await
            },
        ))
        .context("restore task")?
        .with_context(|| format!("restore from etcd snapshot {}", file.display()))?;
    println!(
        "restored {} keys ({} history records since compaction {}) and {} leases ({} keys attached) at revision {} from etcd snapshot {} ({}) into {} in {:.2}s",
        r.keys,
        r.history_records,
        r.compact_revision,
        r.leases,
        r.leased_keys,
        r.revision,
        file.display(),
        match &r.sha256 {
            Some(h) => format!("SHA-256 {h} verified"),
            None => "no SHA-256 trailer: not verified".into(),
        },
        a.data_dir.display(),
        r.elapsed.as_secs_f64(),
    );
    if r.detached_records > 0 {
        println!(
            "note: {} history records named a lease the snapshot does not hold; they were restored without a lease",
            r.detached_records
        );
    }
    if !r.etcd_members.is_empty() {
        println!(
            "the etcd cluster had members {}; the restored cluster has the members of --initial-cluster",
            r.etcd_members.join(" ")
        );
    }
    println!(
        "start it with: phalanx node --name {} --data-dir {} --initial-cluster {} --initial-cluster-token {} --initial-advertise-peer-urls {} --initial-cluster-state new …",
        a.name,
        a.data_dir.display(),
        a.initial_cluster,
        a.initial_cluster_token,
        a.initial_advertise_peer_urls.join(",")
    );
    Ok(())
}
