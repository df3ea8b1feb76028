//! `phalanx node`: run one member. Takes etcd's flags with etcd's meaning, so
//! an etcd launch line works with `etcd` replaced by `phalanx node`; the same
//! settings may come from a TOML file (`--config-file`, keys named like the
//! flags, e.g. `initial-cluster = "..."`), flags winning over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use consensus::{ClusterState, NodeConfig};
use etcd_api::ApiLimits;
use serde::Deserialize;

mod tls_flags;

#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeArgs {
    /// Human-readable name for this member.
    #[arg(long)]
    pub name: Option<String>,
    /// Path to the data directory (default: `<name>.etcd`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long)]
    pub listen_client_urls: Option<String>,
    /// Client URLs to advertise to the rest of the cluster.
    #[arg(long)]
    pub advertise_client_urls: Option<String>,
    /// URLs to listen on for peer traffic.
    #[arg(long)]
    pub listen_peer_urls: Option<String>,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long)]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster configuration: `name1=http://host:port,name2=...`.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one.
    #[arg(long)]
    pub initial_cluster_state: Option<String>,
    /// Initial cluster token, unique per cluster.
    #[arg(long)]
    pub initial_cluster_token: Option<String>,
    /// URLs for the admin listener serving /metrics, /health and /ready.
    #[arg(long)]
    pub listen_metrics_urls: Option<String>,
    /// Time (ms) of a heartbeat interval (default 50). As etcd's tuning
    /// guide says: about the peer round-trip time or more, and the election
    /// timeout at least 3 times it.
    #[arg(long)]
    pub heartbeat_interval: Option<u64>,
    /// Time (ms) of the minimum election timeout (default 150; the maximum,
    /// which is also the leader lease, is 1.5 times it).
    #[arg(long)]
    pub election_timeout: Option<u64>,
    /// Applied entries between snapshots; also the lag after which a member catches up by snapshot.
    #[arg(long)]
    pub snapshot_count: Option<u64>,
    /// Backend size (bytes) that raises the NOSPACE alarm.
    #[arg(long)]
    pub quota_backend_bytes: Option<u64>,
    /// Largest client request (bytes).
    #[arg(long)]
    pub max_request_bytes: Option<usize>,
    /// Most operations in one transaction.
    #[arg(long)]
    pub max_txn_ops: Option<usize>,
    /// Bound (ms) on waiting for a leader, a commit or a read index.
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Most concurrent client writes a member folds into one Raft entry (default 256).
    #[arg(long)]
    pub max_write_batch_commands: Option<usize>,
    /// Most bytes of client writes in one Raft entry (default 1048576); a larger single write goes alone.
    #[arg(long)]
    pub max_write_batch_bytes: Option<usize>,
    /// Batched Raft entries a member keeps in flight before further writes wait to form the next batch (default 2).
    #[arg(long)]
    pub max_write_batches_in_flight: Option<usize>,
    /// Serve the fault-injection admin API (PUT/DELETE /fault on the metrics listener). For drills only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub enable_fault_injection: Option<bool>,
    /// Deliberately break a guarantee (skip-read-index | ack-before-fsync | torn-record-accepted), to prove the checkers catch it. Tests only.
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub unsafe_planted_bug: Option<String>,
    /// Read settings from this TOML file (keys named like the flags).
    #[arg(long)]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Accepted for etcd compatibility; logging is controlled by PHALANX_LOG.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Accepted for etcd compatibility (logs go to stderr).
    #[arg(long)]
    pub logger: Option<String>,
    // --- gateway (store-backed; see crates/gateway-store/src/lib.rs) ---
    /// Run an HTTP gateway on this address; its configuration is read and
    /// watched in the replicated store at --gateway-config-key.
    #[arg(long)]
    pub gateway_listen: Option<SocketAddr>,
    /// Store key holding the gateway configuration (TOML).
    #[arg(long)]
    pub gateway_config_key: Option<String>,
    /// Admin endpoint of this node's gateway (/metrics, /pools, /config).
    #[arg(long)]
    pub gateway_admin_listen: Option<SocketAddr>,
    /// This member's zone for the store-backed gateway (overrides the stored
    /// document's `zone`; pools with `zone_routing` prefer endpoints in it).
    #[arg(long)]
    pub gateway_zone: Option<String>,
    // --- auth (see docs/security.md, "Authentication") ---
    /// Token type: `simple` (default), or
    /// `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256|ES256|...,ttl=5m` (etcd's syntax).
    #[arg(long)]
    pub auth_token: Option<String>,
    /// Lifetime (seconds) of a `simple` token, pushed ahead on each use (default 300).
    #[arg(long)]
    pub auth_token_ttl: Option<u64>,
    /// bcrypt cost (log2 rounds, 4..=31, default 10) of stored password hashes.
    #[arg(long)]
    pub bcrypt_cost: Option<u32>,
    // --- TLS and peer authentication (see docs/security.md; node_cmd/tls_flags.rs) ---
    /// Client TLS: certificate (PEM) for https:// client URLs; re-read when the file changes.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Client TLS: private key (PEM) of --cert-file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Client TLS: CA bundle that verifies client certificates.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client TLS: require a client certificate signed by --trusted-ca-file.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub client_cert_auth: Option<bool>,
    /// Client TLS: generate a self-signed certificate (in <data-dir>/fixtures/client) when none is given.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub auto_tls: Option<bool>,
    /// Peer TLS: this member's certificate (PEM), served and presented to peers.
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer TLS: private key (PEM) of --peer-cert-file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// Peer TLS: CA bundle that verifies the peers' certificates.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Peer TLS: require peers to present a certificate signed by --peer-trusted-ca-file.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub peer_client_cert_auth: Option<bool>,
    /// Peer TLS: self-signed peer certificate (in <data-dir>/fixtures/peer); peers are then not verified.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub peer_auto_tls: Option<bool>,
    /// Peer TLS: accept only peer certificates with this subject CN.
    #[arg(long)]
    pub peer_cert_allowed_cn: Option<String>,
    /// Peer TLS: serve a peer message only if the member it claims to come from is the one its verified certificate names (CN or DNS name equal to that member's --name). Needs --peer-client-cert-auth and one certificate per member.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub peer_cert_identity: Option<bool>,
    /// Metrics TLS: certificate for https:// --listen-metrics-urls (default: the client's --cert-file).
    #[arg(long)]
    pub metrics_cert_file: Option<PathBuf>,
    /// Metrics TLS: private key of --metrics-cert-file.
    #[arg(long)]
    pub metrics_key_file: Option<PathBuf>,
    /// Metrics TLS: CA bundle verifying scrapers' certificates.
    #[arg(long)]
    pub metrics_trusted_ca_file: Option<PathBuf>,
    /// Metrics TLS: require a scraper certificate signed by --metrics-trusted-ca-file.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default)]
    pub metrics_client_cert_auth: Option<bool>,
    /// TLS 1.2 cipher suites allowed (comma-separated, Go/etcd names); TLS 1.3's are always on.
    #[arg(long)]
    pub cipher_suites: Option<String>,
    /// Lowest TLS version accepted: TLS1.2 (default) or TLS1.3.
    #[arg(long)]
    pub tls_min_version: Option<String>,
    /// How often (ms, at most) a handshake checks whether certificate files changed (default 1000).
    #[arg(long)]
    pub tls_reload_check_interval_ms: Option<u64>,
    /// Bound (ms) on one TLS handshake of an accepted connection (default 10000).
    #[arg(long)]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Most leadership-transfer control messages from the leader obeyed per second (default 10).
    #[arg(long)]
    pub max_control_messages_per_s: Option<u32>,
    // --- TLS (end) ---
    // --- alerting: metrics history, rules, notifications (flags only; see docs/alerting.md) ---
    // (config-file keys `alerting-*`, `enable-alerting`, `disable-alerting`:
    // read into this struct by `with_file`)
    #[command(flatten)]
    #[serde(skip)]
    pub alerting: crate::cli::alerting::NodeAlertingArgs,
    // --- backup service: schedule, archive, retention, drills (see docs/backup.md;
    // config-file keys `backup-*`, `disable-backup-service`, read by `with_file`) ---
    #[command(flatten)]
    #[serde(skip)]
    pub backup: crate::cli::backup::NodeBackupArgs,
}

macro_rules! merge {
    ($flags:ident, $file:ident, $($f:ident),*) => {
        $( if $flags.$f.is_none() { $flags.$f = $file.$f.clone(); } )*
    };
}

impl NodeArgs {
    fn with_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = self.config_file.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading --config-file {}", path.display()))?;
        let invalid = || format!("invalid config file {}", path.display());
        let mut table: toml::Table = toml::from_str(&text).with_context(invalid)?;
        // The alerting and backup keys belong to their own flag groups, each
        // refusing keys it does not know (serde cannot flatten a struct that
        // denies unknown fields); the key prefixes cannot collide.
        let alerting = take_keys(&mut table, |k| {
            k.starts_with("alerting-") || k == "enable-alerting" || k == "disable-alerting"
        })
        .try_into::<crate::cli::alerting::NodeAlertingArgs>()
        .with_context(invalid)?;
        if alerting.disable_alerting
            && (alerting.enable_alerting.is_some() || alerting.alerting_listen.is_some())
        {
            bail!(
                "invalid config file {}: disable-alerting = true contradicts enable-alerting / alerting-listen; keep one",
                path.display()
            );
        }
        let backup = take_keys(&mut table, |k| {
            k.starts_with("backup-") || k == "disable-backup-service"
        })
        .try_into::<crate::cli::backup::NodeBackupArgs>()
        .with_context(invalid)?;
        let file: NodeArgs = table.try_into().with_context(invalid)?;
        self.merge_alerting(alerting);
        self.merge_backup(backup);
        merge!(
            self,
            file,
            name,
            data_dir,
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token,
            listen_metrics_urls,
            heartbeat_interval,
            election_timeout,
            snapshot_count,
            quota_backend_bytes,
            max_request_bytes,
            max_txn_ops,
            request_timeout_ms,
            max_write_batch_commands,
            max_write_batch_bytes,
            max_write_batches_in_flight,
            log_level,
            logger,
            enable_fault_injection,
            gateway_listen,
            gateway_config_key,
            gateway_admin_listen,
            gateway_zone,
            auth_token,
            auth_token_ttl,
            bcrypt_cost
        );
        // TLS and peer authentication
        merge!(
            self,
            file,
            cert_file,
            key_file,
            trusted_ca_file,
            client_cert_auth,
            auto_tls,
            peer_cert_file,
            peer_key_file,
            peer_trusted_ca_file,
            peer_client_cert_auth,
            peer_auto_tls,
            peer_cert_allowed_cn,
            peer_cert_identity,
            metrics_cert_file,
            metrics_key_file,
            metrics_trusted_ca_file,
            metrics_client_cert_auth,
            cipher_suites,
            tls_min_version,
            tls_reload_check_interval_ms,
            tls_handshake_timeout_ms,
            max_control_messages_per_s
        );
        Ok(self)
    }
}

impl NodeArgs {
    /// The file's alerting settings under the flags'. `disable-alerting` in
    /// the file gives way to a flag that turns alerting on (as clap refuses
    /// both on one command line).
    fn merge_alerting(&mut self, file: crate::cli::alerting::NodeAlertingArgs) {
        let a = &mut self.alerting;
        let flags_enable = a.enable_alerting.is_some() || a.alerting_listen.is_some();
        if !a.disable_alerting {
            merge!(a, file, enable_alerting);
        }
        merge!(
            a,
            file,
            alerting_listen,
            alerting_scrape_interval_ms,
            alerting_evaluation_interval_ms,
            alerting_retention_ms,
            alerting_max_series,
            alerting_max_samples_bytes,
            alerting_disable_default_rules,
            alerting_anomaly_sensitivity,
            alerting_max_events,
            alerting_event_retention_ms,
            alerting_notification_timeout_ms,
            alerting_notification_attempts,
            alerting_notification_max_backoff_ms
        );
        a.disable_alerting |= file.disable_alerting && !flags_enable;
    }

    /// The file's backup-service settings under the flags'.
    fn merge_backup(&mut self, file: crate::cli::backup::NodeBackupArgs) {
        let b = &mut self.backup;
        merge!(b, file, backup_listen, backup_archive_poll_ms);
        if b.backup_identity_files.is_empty() {
            b.backup_identity_files = file.backup_identity_files;
        }
        b.disable_backup_service |= file.disable_backup_service;
    }
}

/// Remove from `table` the keys `belongs` picks; they, as a table of their own.
fn take_keys(table: &mut toml::Table, belongs: impl Fn(&str) -> bool) -> toml::Table {
    let keys: Vec<String> = table.keys().filter(|k| belongs(k)).cloned().collect();
    keys.into_iter()
        .filter_map(|k| table.remove(&k).map(|v| (k, v)))
        .collect()
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// `http://host:port` or `https://host:port` → a socket address to bind.
fn bind_addr(flag: &str, url: &str) -> anyhow::Result<SocketAddr> {
    let rest = if let Some(r) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    {
        r
    } else if url.starts_with("unix") {
        bail!("--{flag}: {url:?}: unix sockets are not supported; use http://HOST:PORT or https://HOST:PORT");
    } else {
        bail!("--{flag}: {url:?} is not a URL; expected http://HOST:PORT or https://HOST:PORT");
    };
    let hostport = rest.trim_end_matches('/');
    let hostport = if let Some(p) = hostport.strip_prefix("localhost:") {
        format!("127.0.0.1:{p}")
    } else {
        hostport.to_string()
    };
    hostport
        .parse()
        .with_context(|| format!("--{flag}: {url:?}: expected http://IP:PORT"))
}

/// Parse `--initial-cluster`.
pub fn parse_initial_cluster(s: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .with_context(|| format!("--initial-cluster: {part:?} is not NAME=URL"))?;
        bind_addr("initial-cluster", url)?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if out.is_empty() {
        bail!("--initial-cluster is empty; expected NAME=URL[,NAME=URL...]");
    }
    Ok(out)
}

/// Exit code of a member that stopped for good while running (removed from
/// the cluster, storage fault); 1 is a refusal to start, 70 a panic.
pub const HALTED_EXIT_CODE: i32 = 2;

/// Bound on draining client connections when a member halts (watch streams
/// never end by themselves).
const HALT_DRAIN_TIMEOUT_MS: u64 = 1_000;

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let args = args.with_file()?;
    let name = args.name.clone().unwrap_or_else(|| "default".into());
    // A panic anywhere (a broken invariant, redb on a damaged page) stops
    // the member instead of leaving it serving without the task that died.
    consensus::install_fail_stop_panic_hook(&name);
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{name}.etcd")));
    let listen_client = split_urls(
        args.listen_client_urls
            .as_deref()
            .unwrap_or("http://localhost:2379"),
    );
    let advertise_client = split_urls(
        args.advertise_client_urls
            .as_deref()
            .unwrap_or("http://localhost:2379"),
    );
    let listen_peer = split_urls(
        args.listen_peer_urls
            .as_deref()
            .unwrap_or("http://localhost:2380"),
    );
    let advertise_peer = split_urls(
        args.initial_advertise_peer_urls
            .as_deref()
            .unwrap_or("http://localhost:2380"),
    );
    let initial_cluster = parse_initial_cluster(args.initial_cluster.as_deref().unwrap_or(
        &format!("{name}={}", advertise_peer.join(&format!(",{name}="))),
    ))?;
    let state = match args.initial_cluster_state.as_deref().unwrap_or("new") {
        "new" => ClusterState::New,
        "existing" => ClusterState::Existing,
        other => bail!("--initial-cluster-state: {other:?}: expected `new` or `existing`"),
    };

    let mut config = NodeConfig::with_defaults(&name, data_dir.clone());
    config.initial_cluster = initial_cluster;
    config.initial_cluster_state = state;
    if let Some(t) = &args.initial_cluster_token {
        config.initial_cluster_token = t.clone();
    }
    config.advertise_peer_urls = advertise_peer;
    config.advertise_client_urls = advertise_client;
    if let Some(v) = args.heartbeat_interval {
        config.heartbeat_interval_ms = v;
    }
    if let Some(v) = args.election_timeout {
        config.election_timeout_ms = v;
    }
    if config.election_timeout_ms < 3 * config.heartbeat_interval_ms {
        bail!(
            "--election-timeout ({} ms) must be at least 3 times --heartbeat-interval ({} ms), or followers will start needless elections",
            config.election_timeout_ms,
            config.heartbeat_interval_ms
        );
    }
    if let Some(v) = args.snapshot_count {
        if v == 0 {
            bail!("--snapshot-count must be at least 1");
        }
        config.snapshot_count = v;
    }
    if let Some(v) = args.request_timeout_ms {
        config.request_timeout_ms = v;
    }
    if let Some(v) = args.alerting.alerting_anomaly_sensitivity {
        alerting::rules::check_anomaly_sensitivity(v)
            .map_err(|e| anyhow::anyhow!("--alerting-anomaly-sensitivity: {e}"))?;
    }
    for (flag, value, field) in [
        (
            "--max-write-batch-commands",
            args.max_write_batch_commands,
            &mut config.max_write_batch_commands,
        ),
        (
            "--max-write-batch-bytes",
            args.max_write_batch_bytes,
            &mut config.max_write_batch_bytes,
        ),
        (
            "--max-write-batches-in-flight",
            args.max_write_batches_in_flight,
            &mut config.max_write_batches_in_flight,
        ),
    ] {
        match value {
            Some(0) => bail!("{flag} must be at least 1"),
            // A batch is one Raft log record (see --max-request-bytes).
            Some(v)
                if flag == "--max-write-batch-bytes"
                    && v > consensus::MAX_LOG_RECORD_BYTES as usize / 2 =>
            {
                bail!(
                    "{flag} {v} is above the most a member accepts, {} bytes: a batch is replicated as one Raft log record (at most {} bytes); lower it",
                    consensus::MAX_LOG_RECORD_BYTES / 2,
                    consensus::MAX_LOG_RECORD_BYTES
                )
            }
            Some(v) => *field = v,
            None => {}
        }
    }
    config.enable_fault_injection = args.enable_fault_injection.unwrap_or(false);
    if let Some(bug) = &args.unsafe_planted_bug {
        config.planted_bug = Some(
            bug.parse()
                .map_err(|e: String| anyhow::anyhow!("--unsafe-planted-bug: {e}"))?,
        );
        eprintln!(
            "WARNING: planted bug {bug} is active: this member violates its guarantees on purpose"
        );
    }
    let listen_metrics = args
        .listen_metrics_urls
        .as_deref()
        .map(split_urls)
        .unwrap_or_default();
    let tls_setup = tls_flags::setup(
        &args,
        &data_dir,
        &listen_client,
        &config.advertise_client_urls,
        &listen_peer,
        &config.advertise_peer_urls,
        &config.initial_cluster,
        &listen_metrics,
    )?;
    config.peer_server_tls = tls_setup.peer_server.clone();
    config.peer_client_tls = tls_setup.peer_client.clone();
    if args.peer_cert_identity.unwrap_or(false) {
        if args.peer_client_cert_auth != Some(true) || config.peer_server_tls.is_none() {
            bail!("--peer-cert-identity needs peer TLS with verified certificates: https:// --listen-peer-urls, --peer-client-cert-auth and --peer-trusted-ca-file");
        }
        if let Some(cert) = &args.peer_cert_file {
            tls::check_names("--peer-cert-file", cert, &config.name)?;
        }
        config.peer_cert_identity = true;
    }
    if let Some(v) = args.max_control_messages_per_s {
        if v == 0 {
            bail!("--max-control-messages-per-s must be at least 1 (leadership transfer needs it)");
        }
        config.max_control_messages_per_s = v;
    }
    let mut limits = ApiLimits::default();
    if let Some(v) = args.quota_backend_bytes {
        limits.quota_backend_bytes = v;
    }
    if let Some(v) = args.max_request_bytes {
        // One request becomes (at most) one Raft entry, which must fit in
        // one WAL record; half the record limit leaves room for encoding.
        let most = consensus::MAX_LOG_RECORD_BYTES as usize / 2;
        if v > most {
            bail!(
                "--max-request-bytes {v} is above the most a member accepts, {most} bytes: a request is replicated as one Raft log record (at most {} bytes); lower it",
                consensus::MAX_LOG_RECORD_BYTES
            );
        }
        limits.max_request_bytes = v;
    }
    if let Some(v) = args.max_txn_ops {
        if v == 0 {
            bail!("--max-txn-ops must be at least 1");
        }
        limits.max_txn_ops = v;
    }

    // Auth settings are checked (and JWT keys read) before anything binds.
    let auth_settings = {
        let ttl = std::time::Duration::from_secs(args.auth_token_ttl.unwrap_or(300));
        let token =
            etcd_api::auth::TokenConfig::parse(args.auth_token.as_deref().unwrap_or("simple"), ttl)
                .map_err(|e| anyhow::anyhow!("--auth-token: {e}"))?;
        let settings = etcd_api::auth::AuthSettings {
            token,
            bcrypt_cost: args.bcrypt_cost.unwrap_or(10),
        };
        // Fails early on an unreadable or mismatched JWT key.
        etcd_api::auth::validate(&settings).map_err(|e| anyhow::anyhow!("auth settings: {e}"))?;
        settings
    };

    // Bind everything first: a port conflict fails before any state changes.
    let peer_addr = bind_addr("listen-peer-urls", &listen_peer[0])?;
    let peer_listener = tokio::net::TcpListener::bind(peer_addr)
        .await
        .with_context(|| format!("binding peer listener {peer_addr}"))?;
    let mut client_listeners = Vec::new();
    for u in &listen_client {
        let a = bind_addr("listen-client-urls", u)?;
        client_listeners.push((
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding client listener {a}"))?,
            tls_flags::is_https(u)
                .then(|| tls_setup.client.clone())
                .flatten(),
        ));
    }
    let mut metrics_listeners = Vec::new();
    for u in &listen_metrics {
        let a = bind_addr("listen-metrics-urls", u)?;
        metrics_listeners.push((
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding metrics listener {a}"))?,
            tls_flags::is_https(u)
                .then(|| tls_setup.metrics.clone())
                .flatten(),
        ));
    }

    let node = consensus::Node::start(config, peer_listener)
        .await
        .with_context(|| {
            format!(
                "member {name:?} (data dir {}) refused to start",
                data_dir.display()
            )
        })?;
    let metrics = Arc::new(etcd_api::metrics::Metrics::new());
    let api = etcd_api::EtcdApi::with_auth(node.clone(), limits, metrics.clone(), &auth_settings)
        .map_err(|e| anyhow::anyhow!("auth settings: {e}"))?;
    // The member's own services (alerting, scheduled backups, the
    // store-backed gateway) reach its etcd API in-process: no TLS material
    // or password needed whatever the client listeners require; they act as
    // the member itself (docs/security.md, "Clients inside the member").
    let internal = etcd_api::internal_channel(api.clone());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for (l, tls) in client_listeners {
        let mut rx = stop_rx.clone();
        let api = api.clone();
        servers.push(tokio::spawn(async move {
            etcd_api::serve_incoming(api, tls::incoming(l, tls), async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        }));
    }
    for (l, tls) in metrics_listeners {
        tokio::spawn(etcd_api::admin::serve_admin_incoming(
            tls::incoming(l, tls),
            node.clone(),
            metrics.clone(),
        ));
    }
    eprintln!(
        "phalanx node {name} (member {:x}, cluster {:x}) serving clients on {}",
        node.id(),
        node.cluster_id(),
        listen_client.join(",")
    );

    // --- gateway: optional, configuration in the store (begin) ---
    let gateway = match args.gateway_listen {
        Some(listen) => Some(start_gateway(&args, &name, listen, internal.clone()).await?),
        None => None,
    };
    // --- gateway (end) ---

    // --- alerting (begin) ---
    let _alerting = crate::cli::alerting::start_for_node(
        &args.alerting,
        &name,
        listen_client
            .iter()
            .map(|u| u.replace("://0.0.0.0:", "://127.0.0.1:"))
            .collect(),
        args.listen_metrics_urls.as_deref(),
        args.quota_backend_bytes
            .unwrap_or(ApiLimits::default().quota_backend_bytes),
        node.clone(),
        metrics.clone(),
        gateway.as_ref().map(|g| g.gateway().clone()),
        internal.clone(),
    )
    .await?;
    // --- alerting (end) ---

    // --- backup service (begin) ---
    let _backup_service = crate::cli::backup::start_for_node(
        &args.backup,
        &name,
        listen_client
            .iter()
            .map(|u| u.replace("://0.0.0.0:", "://127.0.0.1:"))
            .collect(),
        node.clone(),
        internal,
    )
    .await?;
    if let Some(b) = &_backup_service {
        metrics.add_text_source(b.metrics_source());
    }
    // --- backup service (end) ---

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        fatal = node.halted() => {
            // Removed from the cluster or a storage fault: the node already
            // refuses every request with the reason; exit non-zero so a
            // supervisor sees it (and, for a fault, restarts it).
            eprintln!("ERROR phalanx node {name} (member {:x}) stops: {fatal}", node.id());
            let _ = stop_tx.send(true);
            let drain = std::time::Duration::from_millis(HALT_DRAIN_TIMEOUT_MS);
            let _ = tokio::time::timeout(drain, async {
                for s in servers {
                    let _ = s.await;
                }
            })
            .await;
            let _ = tokio::time::timeout(drain, node.shutdown()).await;
            std::process::exit(HALTED_EXIT_CODE);
        }
    }
    eprintln!("phalanx node {name}: shutting down");
    if let Some(g) = gateway {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), g.shutdown()).await;
    }
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    node.shutdown().await;
    Ok(())
}

/// Start this node's store-backed gateway; the store is reached through this
/// node's in-process channel to its own etcd API.
async fn start_gateway(
    args: &NodeArgs,
    name: &str,
    listen: SocketAddr,
    internal: etcd_api::InternalChannel,
) -> anyhow::Result<gateway_store::StoreBackedGateway> {
    let key = args
        .gateway_config_key
        .clone()
        .unwrap_or_else(|| gateway_store::DEFAULT_KEY.to_string());
    let opts = gateway_store::StoreBackedOptions {
        node_name: name.to_string(),
        listen,
        admin_listen: args.gateway_admin_listen,
        zone: args.gateway_zone.clone(),
    };
    let g = gateway_store::run_store_backed_via(
        gateway_store::StoreAccess::Channel(internal),
        key.clone(),
        None,
        opts,
    )
    .await
    .with_context(|| format!("starting the gateway on {listen}"))?;
    eprintln!("phalanx node {name}: gateway listening on {listen} (configuration at store key {key}, state {})", g.status().state);
    Ok(g)
}
