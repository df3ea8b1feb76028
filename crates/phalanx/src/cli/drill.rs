//! `phalanx drill`: the command line of the `drill` library, converted into
//! its settings.

use std::path::PathBuf;
use std::time::Duration;

use drill::DEFAULT_MAX_GATEWAY_ERROR_PERCENT;

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 2m)"))
}

/// Gateway configuration profile the drill writes into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GatewayProfile {
    /// Up to 2 retries on another backend (connect failure, reset, 250 ms per-try timeout, 502/503/504),
    /// health checks every 200 ms, outlier ejection: one failing backend should cost no client request.
    Resilient,
    /// No retry, no per-try timeout, no health check, no ejection: every failure of a backend reaches
    /// the client (shows the gateway verdict can fail).
    Bare,
}

/// `phalanx drill`.
#[derive(clap::Args, Debug, Clone)]
pub struct DrillArgs {
    /// Start a local cluster of N `phalanx node` child processes (free ports, temporary data) and drill it;
    /// with backend-* faults, also sample backends and a store-backed gateway on every member.
    #[arg(long, value_name = "N", conflicts_with = "endpoints")]
    pub local: Option<usize>,
    /// Client URLs of a live cluster to drill (comma-separated).
    #[arg(long, value_name = "URLS")]
    pub endpoints: Option<String>,
    /// Admin (metrics) URLs of the same members, same order (comma-separated); faults go through their /fault API.
    #[arg(long, value_name = "URLS")]
    pub admin_endpoints: Option<String>,
    /// With --endpoints: inject network faults with iptables DROP rules inside these network namespaces (one per member, same order) instead of /fault.
    #[arg(long, value_name = "NAMES", requires = "endpoints")]
    pub netns: Option<String>,
    /// With --endpoints: process ids of the members (same order), if they run on this host; enables pause-* faults.
    #[arg(long, value_name = "PIDS", requires = "endpoints")]
    pub pids: Option<String>,
    /// Faults to inject, in order, one window at a time (comma-separated, or `none`):
    /// kill-leader, kill-follower, kill-all, partition-leader, partition-minority, partition-one-way, pause-follower, pause-leader, delay, loss,
    /// backend-kill, backend-hang, backend-slow, backend-partition (--local only: sample backends behind the members' gateways, under HTTP load).
    #[arg(long, default_value = "kill-leader,partition-leader,pause-follower")]
    pub faults: String,
    /// Length of the drill (workload period), e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Length of each fault window in ms (default: half of each fault's share of the duration, at most 10000).
    #[arg(long, value_name = "MS")]
    pub fault_window_ms: Option<u64>,
    /// `delay` fault: every peer message the leader sends is delayed by this, in ms (at most 60000).
    /// From about one heartbeat interval (50 ms) on, the leader cannot commit at all: see docs/drill.md.
    #[arg(long, value_name = "MS", default_value_t = 25)]
    pub delay_ms: u64,
    /// `delay` fault: each message is delayed by a further uniform random 0..=MS, so messages overtake each other (at most 60000).
    #[arg(long, value_name = "MS", default_value_t = 15)]
    pub jitter_ms: u64,
    /// `loss` fault: percentage (above 0, at most 100) of the leader's peer packets dropped at random, both directions.
    #[arg(long, value_name = "PERCENT", default_value_t = 30.0)]
    pub loss_percent: f64,
    /// Backend faults (backend-*): number of sample backends started behind the members' gateways (1 to 16).
    #[arg(long, value_name = "K", default_value_t = 3)]
    pub backends: usize,
    /// `backend-slow`: how late the slowed backend answers (health checks included), in ms (1 to 60000).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub backend_delay_ms: u64,
    /// Backend faults: concurrent HTTP clients sending `GET /` through the members' gateways in turn (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub http_clients: usize,
    /// Backend faults: per-request timeout of the HTTP clients, in ms (1 to 60000); a timed-out request is an error.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub http_timeout_ms: u64,
    /// Backend faults: the gateway configuration the drill writes into the store: `resilient` (retries,
    /// per-try timeouts, health checks, outlier ejection) or `bare` (none of them).
    #[arg(long, value_enum, value_name = "PROFILE", default_value = "resilient")]
    pub gateway_profile: GatewayProfile,
    /// Backend faults: the gateway verdict passes when at most this percentage of the HTTP requests failed (0 to 100).
    #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_MAX_GATEWAY_ERROR_PERCENT)]
    pub max_gateway_error_percent: f64,
    /// Directory for history.jsonl, report.md, timeline.svg and the other logs (created if missing).
    #[arg(long, value_name = "DIR")]
    pub report: PathBuf,
    /// Concurrent workload clients (each pinned to one endpoint, round-robin).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Size of the key space.
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    /// Per-operation timeout in ms; a timed-out operation is indeterminate.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub op_timeout_ms: u64,
    /// Pause of each client between operations, in ms.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub think_ms: u64,
    /// TTL of the lease client's lease, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub lease_ttl_secs: i64,
    /// Wall-clock budget of the linearizability check in ms (exceeded = verdict UNKNOWN).
    #[arg(long, value_name = "MS", default_value_t = 120_000)]
    pub check_timeout_ms: u64,
    /// Start local members with a planted bug (skip-read-index | ack-before-fsync | torn-record-accepted), to show the drill catches it. Tests only.
    #[arg(long, hide = true, requires = "local")]
    pub unsafe_planted_bug: Option<String>,
    /// With --local: start the cluster with client and peer TLS (CA and certificates generated in
    /// <report>/certs/, client certificates required) and auth enabled; the workload, watch and lease
    /// clients authenticate as user `drill` (read-write on drill/ only).
    #[arg(long, requires = "local")]
    pub secure: bool,
    /// With --endpoints: the clients' TLS and credentials, as etcdctl takes them.
    #[command(flatten)]
    pub security: super::client::SecurityArgs,
}
impl From<GatewayProfile> for drill::backends::GatewayProfile {
    fn from(a: GatewayProfile) -> Self {
        match a {
            GatewayProfile::Resilient => Self::Resilient,
            GatewayProfile::Bare => Self::Bare,
        }
    }
}

impl From<DrillArgs> for drill::DrillArgs {
    fn from(a: DrillArgs) -> Self {
        Self {
            local: a.local,
            endpoints: a.endpoints,
            admin_endpoints: a.admin_endpoints,
            netns: a.netns,
            pids: a.pids,
            faults: a.faults,
            duration: a.duration,
            fault_window_ms: a.fault_window_ms,
            delay_ms: a.delay_ms,
            jitter_ms: a.jitter_ms,
            loss_percent: a.loss_percent,
            backends: a.backends,
            backend_delay_ms: a.backend_delay_ms,
            http_clients: a.http_clients,
            http_timeout_ms: a.http_timeout_ms,
            gateway_profile: a.gateway_profile.into(),
            max_gateway_error_percent: a.max_gateway_error_percent,
            report: a.report,
            clients: a.clients,
            keys: a.keys,
            op_timeout_ms: a.op_timeout_ms,
            think_ms: a.think_ms,
            lease_ttl_secs: a.lease_ttl_secs,
            check_timeout_ms: a.check_timeout_ms,
            unsafe_planted_bug: a.unsafe_planted_bug,
            secure: a.secure,
            security: a.security.settings(),
        }
    }
}
