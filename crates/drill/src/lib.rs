//! `phalanx drill`: run a checked workload against an etcd-v3 cluster while
//! injecting faults, then judge the result.
//!
//! # Main types
//!
//! * [`DrillArgs`] — the command line. Either `--local N` (the drill starts
//!   its own cluster of child `phalanx node` processes, see
//!   [`cluster::LocalCluster`]) or `--endpoints` + `--admin-endpoints` (a live
//!   cluster, faults only through its fault-injection admin API, or iptables
//!   inside network namespaces with `--netns`).
//! * [`faults::FaultKind`] — what can be injected: member faults
//!   (kill-leader, kill-follower, kill-all, partition-leader,
//!   partition-minority, partition-one-way, pause-follower, pause-leader,
//!   delay with jitter, loss), carried out by [`faults::Backend`], and backend
//!   faults (backend-kill, backend-hang, backend-slow, backend-partition),
//!   carried out by [`backends::SampleBackends`]; [`faults::FaultWindow`]
//!   records when each was in force.
//! * [`workload`] — the clients: sequential read/write/cas clients pinned
//!   round-robin to the endpoints, one resuming prefix watcher, one lease
//!   client; everything is logged by a [`recorder::Recorder`] in the formats
//!   of docs/history-format.md.
//! * [`backends`] and [`http_load`] — with backend faults (`--local` only):
//!   sample HTTP backends (child processes) behind a store-backed gateway on
//!   every member, the gateway configuration the drill writes into the store
//!   ([`backends::gateway_document`], `--gateway-profile`), and HTTP clients
//!   sending requests through the gateways for the whole run; every request
//!   is recorded and judged against `--max-gateway-error-percent`
//!   ([`http_load::GatewaySummary`]).
//! * [`report::Summary`] — the judgement: operation counts, availability,
//!   longest write gap, write latency per window, lost acknowledged writes,
//!   the linearizability, watch and lease verdicts of the `linearizability`
//!   crate's checkers, and the gateway verdict; rendered as `report.md`,
//!   `timeline.svg` and `summary.json`.
//! * [`DrillError`] — why a drill could not run (usage errors exit 2).
//!
//! [`run_blocking`] is the entry point of `phalanx drill`: exit 0 when every
//! verdict passes, 1 when one fails (or the drill could not run, or was
//! interrupted: SIGINT/SIGTERM drop the run, so the drill's child processes
//! and loopback iptables rules are cleaned up by their destructors), 2 on
//! usage errors. See docs/drill.md.

pub mod admin;
pub mod backends;
pub mod cluster;
pub mod faults;
pub mod http_load;
pub mod ports;
pub mod recorder;
pub mod report;
pub mod secure;
pub mod verdict;
pub mod workload;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backends::{GatewayProfile, SampleBackends};
use crate::faults::{Backend, FaultKind, FaultWindow};
use crate::http_load::{GatewaySetup, HttpRecorder};
use crate::recorder::{Func, OpStatus, Recorder};
use crate::report::{Summary, Verdict};
use crate::workload::{WatchProgress, WorkloadConfig};

/// Largest local cluster, in members.
pub const MAX_LOCAL_MEMBERS: usize = 9;
/// Most concurrent workload clients.
pub const MAX_CLIENTS: usize = 256;
/// Most keys in the key space.
pub const MAX_KEYS: usize = 10_000;
/// Shortest drill, in ms.
pub const MIN_DURATION_MS: u64 = 1_000;
/// Bound on the final phase (final reads, watch catch-up, lease revoke), in ms.
pub const FINAL_PHASE_TIMEOUT_MS: u64 = 30_000;
/// Bound on waiting for a leader before the workload starts, in ms.
pub const START_LEADER_TIMEOUT_MS: u64 = 30_000;
/// Largest `--delay-ms` (the members' own limit, `MAX_INJECTED_DELAY_MS`).
pub const MAX_DELAY_MS: u64 = 60_000;
/// Largest `--jitter-ms` (the members' own limit, `MAX_INJECTED_JITTER_MS`).
pub const MAX_JITTER_MS: u64 = 60_000;
/// Most sample backends (`--backends`).
pub const MAX_BACKENDS: usize = 16;
/// Largest `--backend-delay-ms`.
pub const MAX_BACKEND_DELAY_MS: u64 = 60_000;
/// Most HTTP clients (`--http-clients`).
pub const MAX_HTTP_CLIENTS: usize = 64;
/// Largest `--http-timeout-ms`.
pub const MAX_HTTP_TIMEOUT_MS: u64 = 60_000;
/// Bound on the members' gateways starting to route to the backends, in ms.
pub const GATEWAY_READY_TIMEOUT_MS: u64 = 30_000;
/// Default `--max-gateway-error-percent` (see docs/drill.md for the measurements behind it).
pub const DEFAULT_MAX_GATEWAY_ERROR_PERCENT: f64 = 0.5;

/// Why a drill could not run.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// Bad command line (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("admin API {url}: {detail}")]
    Admin { url: String, detail: String },
    #[error("fault injection: {0}")]
    Fault(String),
}

/// The settings of `phalanx drill` (the binary owns the command line and
/// converts it into these; each field is documented there).
#[derive(Debug, Clone)]
pub struct DrillArgs {
    /// Start a local cluster of N `phalanx node` child processes (free ports, temporary data) and drill it;
    /// with backend-* faults, also sample backends and a store-backed gateway on every member.
    pub local: Option<usize>,
    /// Client URLs of a live cluster to drill (comma-separated).
    pub endpoints: Option<String>,
    /// Admin (metrics) URLs of the same members, same order (comma-separated); faults go through their /fault API.
    pub admin_endpoints: Option<String>,
    /// With --endpoints: inject network faults with iptables DROP rules inside these network namespaces (one per member, same order) instead of /fault.
    pub netns: Option<String>,
    /// With --endpoints: process ids of the members (same order), if they run on this host; enables pause-* faults.
    pub pids: Option<String>,
    /// Faults to inject, in order, one window at a time (comma-separated, or `none`):
    /// kill-leader, kill-follower, kill-all, partition-leader, partition-minority, partition-one-way, pause-follower, pause-leader, delay, loss,
    /// backend-kill, backend-hang, backend-slow, backend-partition (--local only: sample backends behind the members' gateways, under HTTP load).
    pub faults: String,
    /// Length of the drill (workload period), e.g. 30s.
    pub duration: Duration,
    /// Length of each fault window in ms (default: half of each fault's share of the duration, at most 10000).
    pub fault_window_ms: Option<u64>,
    /// `delay` fault: every peer message the leader sends is delayed by this, in ms (at most 60000).
    /// From about one heartbeat interval (50 ms) on, the leader cannot commit at all: see docs/drill.md.
    pub delay_ms: u64,
    /// `delay` fault: each message is delayed by a further uniform random 0..=MS, so messages overtake each other (at most 60000).
    pub jitter_ms: u64,
    /// `loss` fault: percentage (above 0, at most 100) of the leader's peer packets dropped at random, both directions.
    pub loss_percent: f64,
    /// Backend faults (backend-*): number of sample backends started behind the members' gateways (1 to 16).
    pub backends: usize,
    /// `backend-slow`: how late the slowed backend answers (health checks included), in ms (1 to 60000).
    pub backend_delay_ms: u64,
    /// Backend faults: concurrent HTTP clients sending `GET /` through the members' gateways in turn (1 to 64).
    pub http_clients: usize,
    /// Backend faults: per-request timeout of the HTTP clients, in ms (1 to 60000); a timed-out request is an error.
    pub http_timeout_ms: u64,
    /// Backend faults: the gateway configuration the drill writes into the store: `resilient` (retries,
    /// per-try timeouts, health checks, outlier ejection) or `bare` (none of them).
    pub gateway_profile: GatewayProfile,
    /// Backend faults: the gateway verdict passes when at most this percentage of the HTTP requests failed (0 to 100).
    pub max_gateway_error_percent: f64,
    /// Directory for history.jsonl, report.md, timeline.svg and the other logs (created if missing).
    pub report: PathBuf,
    /// Concurrent workload clients (each pinned to one endpoint, round-robin).
    pub clients: usize,
    /// Size of the key space.
    pub keys: usize,
    /// Per-operation timeout in ms; a timed-out operation is indeterminate.
    pub op_timeout_ms: u64,
    /// Pause of each client between operations, in ms.
    pub think_ms: u64,
    /// TTL of the lease client's lease, in seconds.
    pub lease_ttl_secs: i64,
    /// Wall-clock budget of the linearizability check in ms (exceeded = verdict UNKNOWN).
    pub check_timeout_ms: u64,
    /// Start local members with a planted bug (skip-read-index | ack-before-fsync | torn-record-accepted), to show the drill catches it. Tests only.
    pub unsafe_planted_bug: Option<String>,
    /// With --local: client and peer TLS (a CA and certificates generated in `<report>/certs/`)
    /// and auth enabled; the workload, watch and lease clients run as user `drill` with its
    /// client certificate and password (see [`secure`]).
    pub secure: bool,
    /// With --endpoints: the clients' TLS files and user (etcdctl's --cacert, --cert, --key, --user).
    pub security: client_security::ClientSecuritySettings,
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Validated settings.
struct Plan {
    faults: Vec<FaultKind>,
    endpoints: Vec<String>,
    admin: Vec<String>,
    netns: Option<Vec<String>>,
    pids: Option<Vec<u32>>,
}

/// `value` must be in `1..=max`; the error names the flag.
fn within(flag: &str, value: u64, max: u64) -> Result<(), DrillError> {
    if value == 0 || value > max {
        return Err(DrillError::Usage(format!(
            "{flag} must be between 1 and {max}"
        )));
    }
    Ok(())
}

fn validate(args: &DrillArgs) -> Result<Plan, DrillError> {
    let u = |s: String| DrillError::Usage(s);
    let faults = faults::parse_faults(&args.faults).map_err(|e| u(format!("--faults: {e}")))?;
    if (args.duration.as_millis() as u64) < MIN_DURATION_MS {
        return Err(u(format!(
            "--duration must be at least {MIN_DURATION_MS} ms"
        )));
    }
    within("--clients", args.clients as u64, MAX_CLIENTS as u64)?;
    within("--keys", args.keys as u64, MAX_KEYS as u64)?;
    if args.op_timeout_ms == 0 {
        return Err(u("--op-timeout-ms must be positive".into()));
    }
    if args.lease_ttl_secs < 2 {
        return Err(u("--lease-ttl-secs must be at least 2".into()));
    }
    if args.delay_ms > MAX_DELAY_MS {
        return Err(u(format!("--delay-ms must be at most {MAX_DELAY_MS}")));
    }
    if args.jitter_ms > MAX_JITTER_MS {
        return Err(u(format!("--jitter-ms must be at most {MAX_JITTER_MS}")));
    }
    if !(args.loss_percent > 0.0 && args.loss_percent <= 100.0) {
        return Err(u(format!(
            "--loss-percent must be above 0 and at most 100 (got {})",
            args.loss_percent
        )));
    }
    within("--backends", args.backends as u64, MAX_BACKENDS as u64)?;
    within(
        "--backend-delay-ms",
        args.backend_delay_ms,
        MAX_BACKEND_DELAY_MS,
    )?;
    within(
        "--http-clients",
        args.http_clients as u64,
        MAX_HTTP_CLIENTS as u64,
    )?;
    within(
        "--http-timeout-ms",
        args.http_timeout_ms,
        MAX_HTTP_TIMEOUT_MS,
    )?;
    if !(0.0..=100.0).contains(&args.max_gateway_error_percent) {
        return Err(u(format!(
            "--max-gateway-error-percent must be between 0 and 100 (got {})",
            args.max_gateway_error_percent
        )));
    }
    if faults.contains(&FaultKind::BackendPartition) {
        backends::iptables_usable().map_err(|e| u(format!("fault backend-partition adds an iptables DROP rule for the backend's port on the loopback interface: {e}")))?;
    }
    let security_given = {
        let s = &args.security;
        s.cacert.is_some() || s.cert.is_some() || s.key.is_some() || s.user.is_some()
    };
    if args.secure {
        if args.local.is_none() {
            return Err(u("--secure starts a local cluster with TLS and auth: it needs --local N (for a live cluster, give --cacert/--cert/--key/--user)".into()));
        }
        if security_given {
            return Err(u("--secure makes its own CA, certificates and users: leave out --cacert/--cert/--key/--user".into()));
        }
        if let Some(k) = faults.iter().find(|k| k.backend_fault().is_some()) {
            return Err(u(format!("fault {k} runs store-backed gateways, which read their configuration without TLS or credentials: not available with --secure")));
        }
    } else if args.local.is_some() && security_given {
        return Err(u("--cacert/--cert/--key/--user are for --endpoints; a --local cluster is plain unless --secure".into()));
    }
    if let Some(b) = &args.unsafe_planted_bug {
        if ![
            "skip-read-index",
            "ack-before-fsync",
            "torn-record-accepted",
        ]
        .contains(&b.as_str())
        {
            return Err(u(format!(
                "--unsafe-planted-bug {b:?}: expected skip-read-index, ack-before-fsync or torn-record-accepted"
            )));
        }
    }
    match (args.local, &args.endpoints) {
        (Some(n), None) => {
            if n == 0 || n > MAX_LOCAL_MEMBERS {
                return Err(u(format!(
                    "--local must be between 1 and {MAX_LOCAL_MEMBERS}"
                )));
            }
            if args.admin_endpoints.is_some() {
                return Err(u(
                    "--admin-endpoints is only for --endpoints (a --local cluster has its own)"
                        .into(),
                ));
            }
            if let Some(k) = faults
                .iter()
                .find(|k| matches!(k, FaultKind::PartitionOneWay | FaultKind::Loss))
            {
                return Err(u(format!("fault {k} needs real packet filtering: use --endpoints with --netns (the /fault API cannot drop packets selectively)")));
            }
            Ok(Plan {
                faults,
                endpoints: vec![],
                admin: vec![],
                netns: None,
                pids: None,
            })
        }
        (None, Some(e)) => {
            let endpoints = split(e);
            if endpoints.is_empty() {
                return Err(u("--endpoints is empty".into()));
            }
            for ep in &endpoints {
                // Client URLs may be https:// (TLS through --cacert/--cert/--key).
                let as_http = ep.replacen("https://", "http://", 1);
                admin::host_port(&as_http).map_err(|e| u(format!("--endpoints: {e}")))?;
            }
            let admin = args
                .admin_endpoints
                .as_deref()
                .map(split)
                .unwrap_or_default();
            for a in &admin {
                admin::host_port(a).map_err(|e| u(format!("--admin-endpoints: {e}")))?;
            }
            if !admin.is_empty() && admin.len() != endpoints.len() {
                return Err(u(format!("--admin-endpoints has {} entries but --endpoints has {}: give one per member, same order", admin.len(), endpoints.len())));
            }
            let netns = args.netns.as_deref().map(split);
            if let Some(ns) = &netns {
                if ns.len() != endpoints.len() {
                    return Err(u(format!(
                        "--netns has {} entries but --endpoints has {}",
                        ns.len(),
                        endpoints.len()
                    )));
                }
            }
            let pids = match args.pids.as_deref().map(split) {
                None => None,
                Some(p) => {
                    let v: Result<Vec<u32>, _> = p.iter().map(|x| x.parse::<u32>()).collect();
                    let v = v.map_err(|e| u(format!("--pids: {e}")))?;
                    if v.len() != endpoints.len() {
                        return Err(u(format!(
                            "--pids has {} entries but --endpoints has {}",
                            v.len(),
                            endpoints.len()
                        )));
                    }
                    Some(v)
                }
            };
            let probe = Backend::Remote {
                names: vec![],
                admin: admin.clone(),
                netns: netns.clone(),
                pids: pids.clone(),
            };
            for k in &faults {
                probe.supports(*k).map_err(u)?;
            }
            Ok(Plan {
                faults,
                endpoints,
                admin,
                netns,
                pids,
            })
        }
        (Some(_), Some(_)) => Err(u("give either --local N or --endpoints, not both".into())),
        (None, None) => Err(u(
            "give --local N (start a cluster) or --endpoints URLS (drill a live one)".into(),
        )),
    }
}

/// Entry point of `phalanx drill`: runs the drill on a fresh runtime and
/// returns the process exit code (0 pass, 1 fail or error, 2 usage error).
pub fn run_blocking(args: DrillArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drill: error: starting the runtime: {e}");
            return 1;
        }
    };
    // On SIGINT / SIGTERM the run is dropped: the drill's own child
    // processes (members, sample backends) are stopped and its loopback
    // iptables rules deleted by their destructors.
    let outcome = rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = run(args) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
            _ = term => None,
        }
    });
    let Some(outcome) = outcome else {
        eprintln!("drill: interrupted: stopped the drill's child processes and removed its loopback iptables rules; no verdict");
        return 1;
    };
    match outcome {
        Ok(s) => {
            println!("{}", s.verdict_line());
            if s.passed {
                0
            } else {
                1
            }
        }
        Err(DrillError::Usage(m)) => {
            eprintln!("drill: usage error: {m}");
            2
        }
        Err(e) => {
            eprintln!("drill: error: {e}");
            1
        }
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> Result<(), DrillError> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| DrillError::Io {
        what: format!("writing {}", p.display()),
        source: e,
    })
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Run a drill and judge it (files are written to `args.report`).
pub async fn run(args: DrillArgs) -> Result<Summary, DrillError> {
    let plan = validate(&args)?;
    let mut stage = set_up(&args, &plan).await?;
    let execution = execute(&args, &plan, &mut stage).await;
    judge(&args, &plan, stage, execution)
}

/// A drill's environment, built by [`set_up`]: the cluster under test, the
/// sample backends and gateways (backend faults only), and the workload's
/// settings. Dropping it stops every child process the drill started.
struct Stage {
    dir: PathBuf,
    start: Instant,
    rec: Arc<Recorder>,
    backend: Backend,
    samples: Option<SampleBackends>,
    names: Vec<String>,
    endpoints: Vec<String>,
    cfg: Arc<WorkloadConfig>,
    /// First revision the watcher must deliver.
    start_rev: i64,
    /// The members' gateways, when backend faults run.
    gateways: Vec<std::net::SocketAddr>,
}

/// What the workload, the faults and the final phase produced ([`execute`]).
struct Execution {
    windows: Vec<FaultWindow>,
    workload_start_us: u64,
    workload_end_us: u64,
    /// Final value of every key read after the faults healed.
    finals: HashMap<String, Option<String>>,
    /// Acknowledged writes read back at their own revisions.
    at_revision: HashMap<(String, i64), workload::AtRevision>,
    /// The lease client's closing revoke-and-read check held.
    lease_final_ok: bool,
    /// Highest acknowledged revision, which the watcher must reach.
    target_rev: i64,
    /// Highest revision the watcher delivered.
    watched_rev: i64,
    http: Vec<http_load::HttpRecord>,
}

/// Plan → stage: starts (or attaches to) the cluster, sample backends and
/// gateways, waits for a leader and reads the starting revision.
async fn set_up(args: &DrillArgs, plan: &Plan) -> Result<Stage, DrillError> {
    let dir = args.report.clone();
    std::fs::create_dir_all(&dir).map_err(|e| DrillError::Io {
        what: format!("creating {}", dir.display()),
        source: e,
    })?;
    let start = Instant::now();
    let rec = Arc::new(Recorder::new(start));

    // Backend faults: sample backends, and a gateway on every member.
    let with_gateway = plan.faults.iter().any(|k| k.backend_fault().is_some());
    let mut samples: Option<SampleBackends> = None;
    let backend = match args.local {
        Some(n) => {
            let exe = std::env::current_exe().map_err(|e| DrillError::Io {
                what: "locating the phalanx binary".into(),
                source: e,
            })?;
            if with_gateway {
                samples =
                    Some(SampleBackends::start(args.backends, &exe, &dir.join("logs")).await?);
            }
            let key = with_gateway.then_some(gateway_store::DEFAULT_KEY);
            let secure = args
                .secure
                .then(|| secure::SecureFiles::generate(&dir.join("certs")))
                .transpose()?;
            let c = cluster::LocalCluster::start(
                n,
                &exe,
                &dir.join("logs"),
                args.unsafe_planted_bug.as_deref(),
                key,
                secure,
            )
            .await?;
            Backend::Local(c)
        }
        None => {
            let names = (1..=plan.endpoints.len())
                .map(|i| format!("m{i}"))
                .collect();
            Backend::Remote {
                names,
                admin: plan.admin.clone(),
                netns: plan.netns.clone(),
                pids: plan.pids.clone(),
            }
        }
    };
    let endpoints = match &backend {
        Backend::Local(c) => c.client_urls(),
        Backend::Remote { .. } => plan.endpoints.clone(),
    };
    if let Backend::Remote { admin, netns, .. } = &backend {
        let needs_api = plan.faults.iter().any(|k| {
            matches!(k, FaultKind::Delay)
                || (netns.is_none()
                    && matches!(k, FaultKind::PartitionLeader | FaultKind::PartitionMinority))
        });
        if needs_api {
            for a in admin {
                if !admin::fault_injection_enabled(a).await? {
                    return Err(DrillError::Usage(format!(
                        "{a}: /fault is disabled: start the members with --enable-fault-injection"
                    )));
                }
            }
        }
    }
    let names = backend.names();
    if !backend.admin_urls().is_empty()
        && backend
            .wait_leader(Duration::from_millis(START_LEADER_TIMEOUT_MS))
            .await
            .is_none()
    {
        return Err(DrillError::Cluster(format!(
            "no leader within {START_LEADER_TIMEOUT_MS} ms"
        )));
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let security = match &backend {
        Backend::Local(c) => match &c.secure {
            Some(s) => s.workload_security()?,
            None => client_security::ClientSecurity::plain(),
        },
        Backend::Remote { .. } => client_security::ClientSecurity::load(&args.security)
            .map_err(|e| DrillError::Usage(e.to_string()))?,
    };
    let cfg = Arc::new(WorkloadConfig {
        security,
        endpoints: endpoints.clone(),
        clients: args.clients,
        keys: args.keys,
        op_timeout: Duration::from_millis(args.op_timeout_ms),
        think: Duration::from_millis(args.think_ms),
        prefix: format!("drill/{run_id}/"),
        lease_ttl_secs: args.lease_ttl_secs,
    });
    let start_rev = workload::current_revision(
        &cfg,
        tokio::time::Instant::now() + Duration::from_millis(START_LEADER_TIMEOUT_MS),
    )
    .await
    .ok_or_else(|| DrillError::Cluster("could not read the current revision".into()))?
        + 1;
    let gateways: Vec<std::net::SocketAddr> = match (&backend, &samples) {
        (Backend::Local(c), Some(sb)) => {
            let doc = backends::gateway_document(&sb.ports(), args.gateway_profile);
            write_file(&dir, "gateway.toml", &doc)?;
            let gws: Vec<_> = c.members.iter().filter_map(|m| m.gateway_addr()).collect();
            configure_gateways(&endpoints, &doc, &gws).await?;
            gws
        }
        _ => Vec::new(),
    };
    Ok(Stage {
        dir,
        start,
        rec,
        backend,
        samples,
        names,
        endpoints,
        cfg,
        start_rev,
        gateways,
    })
}

/// Stage → execution: runs the workload (KV clients, watcher, lease client,
/// HTTP clients) for the drill's duration while the faults are injected,
/// heals everything, then runs the final phase (final reads, watch
/// catch-up, lease revoke), bounded by [`FINAL_PHASE_TIMEOUT_MS`].
async fn execute(args: &DrillArgs, plan: &Plan, stage: &mut Stage) -> Execution {
    let (rec, cfg) = (&stage.rec, &stage.cfg);
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_lease = Arc::new(AtomicBool::new(false));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(WatchProgress::default());
    let workload_start_us = rec.now_us();
    let mut clients = Vec::new();
    for i in 0..args.clients {
        clients.push(tokio::spawn(workload::run_client(
            i,
            cfg.clone(),
            rec.clone(),
            stop_clients.clone(),
        )));
    }
    let watcher = tokio::spawn(workload::run_watcher(
        cfg.clone(),
        stage.start_rev,
        rec.clone(),
        progress.clone(),
        stop_watch.clone(),
    ));
    let lease = tokio::spawn(workload::run_lease_client(
        cfg.clone(),
        rec.clone(),
        stop_lease.clone(),
        Duration::from_millis(FINAL_PHASE_TIMEOUT_MS / 2),
    ));
    let http_rec = Arc::new(HttpRecorder::new(stage.start));
    let stop_http = Arc::new(AtomicBool::new(false));
    let mut http_clients = Vec::new();
    if !stage.gateways.is_empty() {
        let gws = Arc::new(stage.gateways.clone());
        for i in 0..args.http_clients {
            let t = Duration::from_millis(args.http_timeout_ms);
            http_clients.push(tokio::spawn(http_load::run_http_client(
                i,
                gws.clone(),
                t,
                http_rec.clone(),
                stop_http.clone(),
            )));
        }
    }

    // Faults.
    let windows = run_faults(
        &mut stage.backend,
        stage.samples.as_mut(),
        &plan.faults,
        args,
        rec,
        workload_start_us,
    )
    .await;
    let run_end = Duration::from_micros(workload_start_us) + args.duration;
    if let Some(rest) = run_end.checked_sub(stage.start.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let workload_end_us = rec.now_us();
    stop_http.store(true, Ordering::Relaxed);
    for c in http_clients {
        let _ = c.await;
    }
    if let Some(sb) = stage.samples.as_mut() {
        sb.heal_everything().await;
    }
    stage.backend.heal_everything().await;
    if let Backend::Local(c) = &mut stage.backend {
        for i in 0..c.members.len() {
            let _ = c.wait_healthy(i).await;
        }
    }
    stop_clients.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    stop_lease.store(true, Ordering::Relaxed);

    // Final phase.
    let final_deadline =
        tokio::time::Instant::now() + Duration::from_millis(FINAL_PHASE_TIMEOUT_MS);
    let finals = workload::final_reads(cfg, rec, final_deadline).await;
    let at_revision = workload::revision_reads(
        cfg,
        rec.acknowledged_revisions(workload::MAX_REVISION_CHECKS),
        final_deadline,
    )
    .await;
    let lease_final_ok = lease.await.unwrap_or(false);
    let target_rev = rec.max_revision();
    while progress.last_revision.load(Ordering::Relaxed) < target_rev
        && tokio::time::Instant::now() < final_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_watch.store(true, Ordering::Relaxed);
    watcher.abort();
    let _ = watcher.await;
    Execution {
        windows,
        workload_start_us,
        workload_end_us,
        finals,
        at_revision,
        lease_final_ok,
        target_rev,
        watched_rev: progress.last_revision.load(Ordering::Relaxed),
        http: http_rec.take(),
    }
}

/// Execution → summary: checks the history, the watch log and the lease
/// log, judges the gateway's error budget, and writes the report files.
fn judge(
    args: &DrillArgs,
    plan: &Plan,
    stage: Stage,
    ex: Execution,
) -> Result<Summary, DrillError> {
    let dir = &stage.dir;
    let cfg = &stage.cfg;
    let recd = stage.rec.take();
    let finals_complete = (0..cfg.keys).all(|i| ex.finals.contains_key(&cfg.key(i)));
    let scenario = if plan.faults.is_empty() {
        "none".to_string()
    } else {
        plan.faults
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut summary = report::analyze(&report::Inputs {
        scenario,
        members: stage.names.clone(),
        ops: &recd.ops,
        workload_start_us: ex.workload_start_us,
        workload_end_us: ex.workload_end_us,
        windows: ex.windows.clone(),
        finals: finals_complete.then_some(ex.finals.clone()),
        keys: (0..cfg.keys).map(|i| cfg.key(i)).collect(),
        at_revision: ex.at_revision.clone(),
    });

    let history = recd.history.join("\n") + "\n";
    write_file(dir, "history.jsonl", &history)?;
    judge_history(&history, args, &mut summary);

    let watch_log = watch_log(&recd);
    write_file(dir, "watch.jsonl", &watch_log)?;
    summary.watch_events = recd.watch_events;
    (summary.watch, summary.watch_detail) = match linearizability::check_watch(watch_log.as_bytes()) {
        Ok(v) if v.is_empty() && ex.watched_rev >= ex.target_rev => (
            Verdict::Pass,
            format!(
                "{} events; every acknowledged change delivered once, in order",
                summary.watch_events
            ),
        ),
        Ok(v) if v.is_empty() => (
            Verdict::Fail,
            format!(
                "the watcher did not catch up: delivered up to revision {} but revision {} was acknowledged",
                ex.watched_rev, ex.target_rev
            ),
        ),
        Ok(v) => violations_verdict(&v),
        Err(e) => (Verdict::Unknown, format!("watch log malformed: {e}")),
    };

    let lease_log = recd.leases.join("\n") + "\n";
    write_file(dir, "leases.jsonl", &lease_log)?;
    summary.lease_reads = recd.lease_reads;
    (summary.leases, summary.leases_detail) = match linearizability::check_leases(
        lease_log.as_bytes(),
        linearizability::LeaseOptions::default(),
    ) {
        Ok(v) if v.is_empty() && ex.lease_final_ok && summary.lease_reads > 0 => (
            Verdict::Pass,
            format!(
                "{} reads; key present while kept alive, gone after revoke",
                summary.lease_reads
            ),
        ),
        Ok(v) if v.is_empty() => (
            Verdict::Unknown,
            "no violation seen, but the final revoke-and-read check could not be made".into(),
        ),
        Ok(v) => violations_verdict(&v),
        Err(e) => (Verdict::Unknown, format!("lease log malformed: {e}")),
    };

    if let Some(sb) = &stage.samples {
        summary.gateway = Some(http_load::analyze(
            &ex.http,
            &ex.windows,
            GatewaySetup {
                profile: args.gateway_profile.name().into(),
                backends: sb.names(),
                gateways: stage
                    .gateways
                    .iter()
                    .map(|a| format!("http://{a}"))
                    .collect(),
                http_clients: args.http_clients,
                http_timeout_ms: args.http_timeout_ms,
                max_error_percent: args.max_gateway_error_percent,
            },
        ));
    }
    summary.passed = summary.judge();
    let settings = report_settings(args, plan, &stage);
    write_file(
        dir,
        "report.md",
        &report::render_markdown(&summary, &settings),
    )?;
    let http_for_svg = stage.samples.is_some().then_some(&ex.http[..]);
    write_file(
        dir,
        "timeline.svg",
        &report::render_svg(
            &recd.ops,
            http_for_svg,
            &ex.windows,
            ex.workload_end_us,
            &format!("phalanx drill: {}", summary.scenario),
        ),
    )?;
    write_file(
        dir,
        "summary.json",
        &serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )?;
    Ok(summary)
}

/// The one verdict for a checker's violations: FAIL, with the count and the
/// first 20 of them.
fn violations_verdict<V: std::fmt::Display>(v: &[V]) -> (Verdict, String) {
    (
        Verdict::Fail,
        format!(
            "{} violations\n{}",
            v.len(),
            v.iter()
                .take(20)
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    )
}

/// The settings table at the top of report.md.
fn report_settings(args: &DrillArgs, plan: &Plan, stage: &Stage) -> Vec<(String, String)> {
    let mut settings = vec![
        (
            "cluster".to_string(),
            match args.local {
                Some(n) => format!("local, {n} members (child processes)"),
                None => format!("live: {}", stage.endpoints.join(", ")),
            },
        ),
        ("faults".into(), args.faults.clone()),
        (
            "duration".into(),
            humantime::format_duration(args.duration).to_string(),
        ),
        (
            "clients".into(),
            format!("{} (pinned round-robin to the endpoints)", args.clients),
        ),
        ("keys".into(), args.keys.to_string()),
        (
            "security".into(),
            if args.secure {
                format!("client and peer TLS (CA and certificates in certs/), client certificates required, auth on: clients run as user `{}`", secure::DRILL_USER)
            } else {
                let s = &args.security;
                let mut parts = Vec::new();
                if stage.endpoints.iter().any(|e| e.starts_with("https://")) {
                    parts.push("TLS".to_string());
                }
                if s.cert.is_some() {
                    parts.push("client certificate".into());
                }
                if let Some(u) = s.user.as_deref().and_then(|u| u.split(':').next()) {
                    parts.push(format!("user `{u}`"));
                }
                if parts.is_empty() {
                    "plain (no TLS, no auth)".into()
                } else {
                    parts.join(", ")
                }
            },
        ),
        ("op timeout".into(), format!("{} ms", args.op_timeout_ms)),
        ("lease TTL".into(), format!("{} s", args.lease_ttl_secs)),
        (
            "planted bug".into(),
            args.unsafe_planted_bug
                .clone()
                .unwrap_or_else(|| "none".into()),
        ),
    ];
    if let Some(sb) = &stage.samples {
        settings.push((
            "gateways".into(),
            format!(
                "one per member, profile `{}` (gateway.toml), {} sample backends ({}), {} HTTP clients, {} ms request timeout, error budget {} %",
                args.gateway_profile.name(),
                args.backends,
                sb.names().join(", "),
                args.http_clients,
                args.http_timeout_ms,
                args.max_gateway_error_percent
            ),
        ));
        if plan.faults.contains(&FaultKind::BackendSlow) {
            settings.push((
                "backend-slow".into(),
                format!(
                    "answers {} ms late (--backend-delay-ms)",
                    args.backend_delay_ms
                ),
            ));
        }
    }
    if plan.faults.contains(&FaultKind::Loss) {
        settings.push(("loss fault".into(), format!("{} % of the leader's peer packets dropped at random, both directions (--loss-percent)", args.loss_percent)));
    }
    if plan.faults.contains(&FaultKind::Delay) {
        settings.push((
            "delay fault".into(),
            format!(
                "leader's peer messages delayed {}..={} ms (--delay-ms, --jitter-ms)",
                args.delay_ms,
                args.delay_ms + args.jitter_ms
            ),
        ));
    }
    settings
}

/// Write the gateway document into the store (at the members' config key,
/// as `phalanx demo` does) and wait until every gateway in `gateways`
/// answers `GET /` from a sample backend, within [`GATEWAY_READY_TIMEOUT_MS`].
async fn configure_gateways(
    endpoints: &[String],
    doc: &str,
    gateways: &[std::net::SocketAddr],
) -> Result<(), DrillError> {
    let deadline = Instant::now() + Duration::from_millis(GATEWAY_READY_TIMEOUT_MS);
    let key = gateway_store::DEFAULT_KEY;
    loop {
        match gateway_store::write_document(endpoints, key, doc).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(DrillError::Cluster(format!(
                    "could not write the gateway configuration at {key}: {e:#}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    for g in gateways {
        let url = format!("http://{g}");
        loop {
            if let Ok((200, body)) = admin::request(&url, "GET", "/", None).await {
                if body.starts_with("backend-") {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(DrillError::Cluster(format!(
                    "the gateway at {url} did not route to the sample backends within {GATEWAY_READY_TIMEOUT_MS} ms; see the member logs"
                )));
            }
            tokio::time::sleep(Duration::from_millis(cluster::POLL_INTERVAL_MS)).await;
        }
    }
    Ok(())
}

fn judge_history(history: &str, args: &DrillArgs, summary: &mut Summary) {
    match linearizability::History::parse_str(history) {
        Err(e) => {
            summary.linearizable = Verdict::Unknown;
            summary.linearizable_detail = format!("history malformed: {e}");
        }
        Ok(h) => {
            let limits = linearizability::Limits {
                timeout: Some(Duration::from_millis(args.check_timeout_ms)),
            };
            match linearizability::check(&h, &limits) {
                linearizability::Outcome::Linearizable => {
                    summary.linearizable = Verdict::Pass;
                    summary.linearizable_detail =
                        format!("{} operations linearizable", h.ops.len());
                }
                linearizability::Outcome::NotLinearizable(v) => {
                    summary.linearizable = Verdict::Fail;
                    let keys: Vec<&str> = v.iter().map(|x| x.key.as_str()).collect();
                    summary.linearizable_detail = format!(
                        "not linearizable on {} key(s): {}\n{}",
                        v.len(),
                        keys.join(", "),
                        v.iter()
                            .take(3)
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
                linearizability::Outcome::Unknown {
                    key,
                    checked_keys,
                    total_keys,
                } => {
                    summary.linearizable = Verdict::Unknown;
                    summary.linearizable_detail = format!("check ran out of time ({} ms) on key {key} after {checked_keys} of {total_keys} keys", args.check_timeout_ms);
                }
            }
        }
    }
}

/// The watch log to check: commits of every acknowledged write (revision
/// from its response), then the watcher's records. A watch event carrying
/// the unique value of an *indeterminate* write of the same key is that
/// write taking effect: it becomes a commit too (revision from the event),
/// so it is not mistaken for a phantom.
fn watch_log(r: &recorder::Recorded) -> String {
    let mut lines = Vec::new();
    let mut known: HashSet<(i64, String)> = HashSet::new();
    for o in r
        .ops
        .iter()
        .filter(|o| o.status == OpStatus::Ok && matches!(o.f, Func::Write | Func::Cas))
    {
        if let (Some(rev), Some(v)) = (o.revision, &o.value) {
            if known.insert((rev, o.key.clone())) {
                lines.push(json!({"kind": "commit", "revision": rev, "key": o.key, "type": "put", "value": v}).to_string());
            }
        }
    }
    let info: HashMap<(&str, &str), ()> = r
        .ops
        .iter()
        .filter(|o| o.status == OpStatus::Info && matches!(o.f, Func::Write | Func::Cas))
        .filter_map(|o| Some(((o.key.as_str(), o.value.as_deref()?), ())))
        .collect();
    for l in &r.watch {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if v["kind"] != "event" {
            continue;
        }
        let (Some(key), Some(val), Some(rev)) = (
            v["key"].as_str(),
            v["value"].as_str(),
            v["revision"].as_i64(),
        ) else {
            continue;
        };
        if info.contains_key(&(key, val)) && known.insert((rev, key.to_string())) {
            lines.push(
                json!({"kind": "commit", "revision": rev, "key": key, "type": "put", "value": val})
                    .to_string(),
            );
        }
    }
    lines.extend(r.watch.iter().cloned());
    lines.join("\n") + "\n"
}

/// What must be undone at the end of a window.
enum Undo {
    Member(faults::Active),
    Backend(backends::Undo),
}

/// Run the fault schedule; returns the windows. The duration (after a
/// warm-up of min(1 s, D/10) and before a cool-down of min(3 s, D/10)) is
/// split into one slot per fault; each window opens at the start of its slot
/// and lasts `--fault-window-ms` or half the slot (at most 10 s); the rest of
/// the slot is recovery. A member fault waits for a leader first (skipped if
/// none); a backend fault hits the sample backends in turn (the n-th backend
/// fault hits backend n mod K) whatever the store is doing.
async fn run_faults(
    backend: &mut Backend,
    mut samples: Option<&mut SampleBackends>,
    kinds: &[FaultKind],
    args: &DrillArgs,
    rec: &Recorder,
    workload_start_us: u64,
) -> Vec<FaultWindow> {
    let mut windows = Vec::new();
    if kinds.is_empty() {
        return windows;
    }
    let d = ms(args.duration);
    let warm = (d / 10).min(1_000);
    let cool = (d / 10).min(3_000);
    let slot = (d - warm - cool) / kinds.len() as u64;
    let win = args
        .fault_window_ms
        .unwrap_or((slot / 2).min(10_000))
        .min(slot.saturating_sub(100))
        .max(100);
    let names = backend.names();
    let base_ms = workload_start_us / 1000;
    let settings = faults::FaultSettings {
        delay_ms: args.delay_ms,
        jitter_ms: args.jitter_ms,
        loss_percent: args.loss_percent,
    };
    let mut backend_faults = 0usize;
    for (i, &kind) in kinds.iter().enumerate() {
        let planned = base_ms + warm + i as u64 * slot;
        let now = rec.now_ms() as u64;
        if planned > now {
            tokio::time::sleep(Duration::from_millis(planned - now)).await;
        }
        let leader = match kind.backend_fault() {
            Some(_) => backend.leader().await,
            None => {
                backend
                    .wait_leader(Duration::from_millis(faults::LEADER_WAIT_MS))
                    .await
            }
        };
        let start_ms = rec.now_ms() as u64;
        let (targets, undo, note) = match (kind.backend_fault(), leader, samples.as_deref_mut()) {
            (Some(bf), _, Some(sb)) => {
                let t = backend_faults % sb.backends.len();
                backend_faults += 1;
                match sb.inject(bf, t, args.backend_delay_ms).await {
                    Ok(u) => (
                        vec![sb.backends[t].name.clone()],
                        Some(Undo::Backend(u)),
                        None,
                    ),
                    Err(e) => (vec![], None, Some(format!("injection failed: {e}"))),
                }
            }
            (Some(_), _, None) => (
                vec![],
                None,
                Some("injection failed: no sample backends".to_string()),
            ),
            (None, Some(l), _) => match backend.inject(kind, l, &settings).await {
                Ok((t, a)) => (
                    t.iter().map(|&t| names[t].clone()).collect(),
                    Some(Undo::Member(a)),
                    None,
                ),
                Err(e) => (vec![], None, Some(format!("injection failed: {e}"))),
            },
            (None, None, _) => {
                windows.push(FaultWindow {
                    kind,
                    targets: vec![],
                    start_ms,
                    end_ms: start_ms,
                    leader_before: None,
                    leader_during: None,
                    new_leader_elected: false,
                    note: Some(format!(
                        "skipped: no leader within {} ms",
                        faults::LEADER_WAIT_MS
                    )),
                });
                continue;
            }
        };
        let start_ms = rec.now_ms() as u64;
        let mut during = None;
        let mut new_leader = false;
        let end_at = tokio::time::Instant::now() + Duration::from_millis(win);
        while tokio::time::Instant::now() < end_at {
            let left = end_at - tokio::time::Instant::now();
            if let Ok(Some(l)) = tokio::time::timeout(left, backend.leader()).await {
                during = Some(l);
                new_leader |= leader.is_some_and(|b| l != b);
            }
            tokio::time::sleep(
                Duration::from_millis(100)
                    .min(end_at.saturating_duration_since(tokio::time::Instant::now())),
            )
            .await;
        }
        let end_ms = rec.now_ms() as u64;
        let healed = match (undo, samples.as_deref_mut()) {
            (Some(Undo::Member(a)), _) => backend.heal(a).await,
            (Some(Undo::Backend(u)), Some(sb)) => sb.heal(u).await,
            _ => Ok(()),
        };
        let heal_note = healed.err().map(|e| format!("heal failed: {e}"));
        windows.push(FaultWindow {
            kind,
            targets,
            start_ms,
            end_ms,
            leader_before: leader.map(|l| names[l].clone()),
            leader_during: during.map(|l| names[l].clone()),
            new_leader_elected: new_leader,
            note: note.or(heal_note),
        });
    }
    windows
}
