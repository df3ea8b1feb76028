//! Gateway configuration: the TOML schema, its defaults and its validation.
//!
//! Every limit is a named setting whose name carries its unit (`_ms`,
//! `_bytes`, `_percent`, `_per_s`). Unknown keys are rejected. Semantic
//! validation ([`Config::validate`]) reports the exact field path (for example
//! `pools[1].endpoints[0].weight`) and the reason; a configuration that fails
//! validation is never applied, so the configuration in force stays.
//!
//! See `docs/gateway.md` for the full reference with defaults.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Errors raised while parsing, validating or applying a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML text is malformed or a value has the wrong type / unknown key.
    #[error("invalid configuration syntax: {0}")]
    Parse(String),
    /// A value is well-typed but not acceptable.
    #[error("invalid configuration: field `{field}`: {reason}")]
    Invalid {
        /// Path of the offending field, e.g. `pools[0].endpoints[2].weight`.
        field: String,
        /// Human readable reason.
        reason: String,
    },
    /// A configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A listener could not be bound while starting or reconfiguring.
    #[error("cannot bind listener `{listener}` on {address}: {source}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Complete gateway configuration (the root of the TOML document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the admin HTTP endpoint (`/metrics`, `/pools`, `/healthz`). None = disabled.
    pub admin_listen: Option<SocketAddr>,
    /// On shutdown, how long in-flight requests/connections may take to finish.
    pub drain_timeout_ms: u64,
    /// Write one JSON line per request to stdout.
    pub access_log: bool,
    /// Listening sockets.
    pub listeners: Vec<ListenerConfig>,
    /// Routing table, evaluated in order; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// Upstream pools.
    pub pools: Vec<PoolConfig>,
    /// The zone (failure domain: availability zone, rack, site) this
    /// gateway runs in; pools prefer endpoints of the same zone (see
    /// `zone_routing`). None = no zone preference. `phalanx gateway --zone`
    /// sets it.
    pub zone: Option<String>,
    /// Priority-aware load shedding (request criticality, CPU trigger).
    pub load_shedding: LoadSheddingConfig,
}

/// Priority-aware load shedding (see `layers::shedding`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadSheddingConfig {
    /// Request header naming a request's priority (`critical`, `default`,
    /// `sheddable`), read on routes with `trust_priority_header = true`.
    pub priority_header: String,
    /// `Retry-After` of a request refused by load shedding (concurrency
    /// limit, pending queue, CPU).
    pub retry_after_s: u64,
    /// How long a sheddable request may wait for a concurrency slot (within
    /// the pool's `pending_timeout_ms`); 0 = refused at once when the pool
    /// is at its limit.
    pub sheddable_max_wait_ms: u64,
    /// Process CPU utilization at or above which sheddable requests are
    /// refused; 0 = off.
    pub cpu_shed_sheddable_percent: u32,
    /// Process CPU utilization at or above which default-priority requests
    /// are refused; 0 = off. Critical requests are never refused for CPU.
    pub cpu_shed_default_percent: u32,
    /// CPU time is sampled at most this often.
    pub cpu_sample_interval_ms: u64,
    /// The CPU utilization is measured over this much recent time.
    pub cpu_window_ms: u64,
}

impl Default for LoadSheddingConfig {
    fn default() -> Self {
        LoadSheddingConfig {
            priority_header: "x-phalanx-priority".into(),
            retry_after_s: 1,
            sheddable_max_wait_ms: 0,
            cpu_shed_sheddable_percent: 90,
            cpu_shed_default_percent: 0,
            cpu_sample_interval_ms: 100,
            cpu_window_ms: 1_000,
        }
    }
}

/// Zone-aware routing of a pool (see `balance` for the rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZoneRoutingConfig {
    /// Prefer endpoints in the gateway's zone (when it has one and the pool
    /// has endpoints there).
    pub enabled: bool,
    /// All traffic stays in the local zone while at least this share of the
    /// local zone's endpoints is available; below it, the local share of
    /// requests is `available share / this`, the rest spills to the other zones.
    pub min_local_healthy_percent: u32,
    /// The zone treated as local by this pool; None = the gateway's `zone`.
    pub local_zone: Option<String>,
}

impl Default for ZoneRoutingConfig {
    fn default() -> Self {
        ZoneRoutingConfig {
            enabled: true,
            min_local_healthy_percent: 70,
            local_zone: None,
        }
    }
}

/// Adaptive concurrency limit of a pool (see `layers::adaptive`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveConcurrencyConfig {
    /// The limit never goes below this many concurrent requests.
    pub min_limit: usize,
    /// The limit before any latency has been measured.
    pub initial_limit: usize,
    /// Latency up to this percentage of its long-term average does not
    /// count as queueing (150 = 1.5×).
    pub rtt_tolerance_percent: u32,
    /// Weight of each new estimate in the limit (percent).
    pub smoothing_percent: u32,
    /// Requests over which the long-term latency average is taken.
    pub long_window_samples: usize,
}

impl Default for AdaptiveConcurrencyConfig {
    fn default() -> Self {
        AdaptiveConcurrencyConfig {
            min_limit: 4,
            initial_limit: 20,
            rtt_tolerance_percent: 150,
            smoothing_percent: 20,
            long_window_samples: 600,
        }
    }
}

/// Zone names: 1–64 characters of `A-Z a-z 0-9 . _ -`.
fn check_zone_name(z: &str) -> Result<(), String> {
    if z.is_empty() || z.len() > 64 {
        return Err(format!(
            "must be 1 to 64 characters long, got {} ({z:?})",
            z.len()
        ));
    }
    if let Some(c) = z
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "may hold only letters, digits, `.`, `_` and `-`, got {c:?} in {z:?}"
        ));
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: None,
            drain_timeout_ms: 30_000,
            access_log: false,
            listeners: Vec::new(),
            routes: Vec::new(),
            pools: Vec::new(),
            zone: None,
            load_shedding: LoadSheddingConfig::default(),
        }
    }
}

/// Protocol spoken by a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// Cleartext HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[default]
    Http,
    /// TLS, ALPN `h2` and `http/1.1`.
    Https,
    /// Plain TCP (L4) proxying to `pool`.
    Tcp,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name (used in metrics and for live reconfiguration).
    pub name: String,
    /// Socket address to bind; port 0 picks a free port.
    pub address: SocketAddr,
    /// `http`, `https` or `tcp`.
    pub protocol: ListenerProtocol,
    /// PEM certificate chain (https only).
    pub tls_cert_path: Option<PathBuf>,
    /// PEM private key (https only).
    pub tls_key_path: Option<PathBuf>,
    /// https: at most this often (at a handshake) the certificate and key
    /// files are checked for changes and, when changed and valid, reloaded
    /// (rotation without restart).
    pub tls_reload_check_interval_ms: u64,
    /// Target pool for `tcp` listeners.
    pub pool: Option<String>,
    /// Maximum concurrently open client connections. At the limit a new
    /// connection evicts the oldest one that has not sent a byte yet (else the
    /// longest-idle keep-alive one); when none is evictable it gets a 503 and is closed.
    pub max_connections: usize,
    /// Maximum concurrently open connections from one client IP address;
    /// excess get a 503 and are closed. 0 = no per-IP limit.
    pub max_connections_per_client_ip: usize,
    /// Completed connections the kernel queues for accept (`listen(2)`'s
    /// backlog; the kernel caps it at `net.core.somaxconn`). With too short
    /// a queue a burst of connects overflows it, and the kernel drops the
    /// handshake's last ACK: the client believes it is connected, the
    /// gateway sees nothing until a SYN-ACK retransmit 1-31 s later (a
    /// silent client: never). Takes effect when the listener is bound.
    pub listen_backlog: u32,
    /// Time from accept to the first byte from the client (HTTP/HTTPS);
    /// a connection that stays silent longer is closed.
    pub client_first_byte_timeout_ms: u64,
    /// Time a keep-alive connection may stay idle (no request in flight, no
    /// new request started) before it is closed (HTTP/1.1 and HTTP/2).
    pub client_keepalive_idle_timeout_ms: u64,
    /// Time from the first byte of a request head to its end (slowloris
    /// guard); for HTTPS it also covers the TLS handshake.
    pub header_read_timeout_ms: u64,
    /// Maximum size of a request head (request line + headers), HTTP/1.1.
    pub max_header_bytes: usize,
    /// Maximum concurrent HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// TCP proxy: connect timeout to the upstream endpoint.
    pub tcp_connect_timeout_ms: u64,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: String::new(),
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            protocol: ListenerProtocol::Http,
            tls_cert_path: None,
            tls_key_path: None,
            tls_reload_check_interval_ms: 1_000,
            pool: None,
            max_connections: 10_000,
            max_connections_per_client_ip: 1_000,
            listen_backlog: 4_096,
            client_first_byte_timeout_ms: 10_000,
            client_keepalive_idle_timeout_ms: 60_000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 65_536,
            http2_max_concurrent_streams: 256,
            tcp_connect_timeout_ms: 1_000,
        }
    }
}

/// A routing rule: host + path prefix → pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Host to match (case-insensitive, port ignored). `*.example.com` matches
    /// any subdomain. None or `*` matches every host.
    pub host: Option<String>,
    /// Path prefix to match.
    pub path_prefix: String,
    /// Target pool name.
    pub pool: String,
    /// Overall deadline for a request, all tries and backoff included. 0 = none.
    pub timeout_ms: u64,
    /// Requests with a larger body are answered 413.
    pub max_request_body_bytes: u64,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Optional per-client-IP token bucket.
    pub rate_limit: Option<RateLimitConfig>,
    /// Criticality of the route's requests (`critical`, `default`,
    /// `sheddable`): under overload sheddable requests are refused first,
    /// critical ones last.
    pub priority: crate::layers::shedding::Priority,
    /// Take a request's priority from the `load_shedding.priority_header`
    /// request header when it names one (only for trusted callers: a client
    /// could otherwise promote itself).
    pub trust_priority_header: bool,
    /// Response cache with stale-if-error / stale-while-revalidate (RFC 5861)
    /// for GET/HEAD; None = no caching on this route.
    pub cache: Option<CacheConfig>,
    /// Hedged requests (idempotent methods only); None = no hedging.
    pub hedge: Option<HedgeConfig>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            host: None,
            path_prefix: "/".into(),
            pool: String::new(),
            timeout_ms: 30_000,
            max_request_body_bytes: 16 * 1024 * 1024,
            retry: RetryConfig::default(),
            rate_limit: None,
            priority: crate::layers::shedding::Priority::Default,
            trust_priority_header: false,
            cache: None,
            hedge: None,
        }
    }
}

/// Retry policy of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Maximum number of retries after the first try (connect failures included).
    pub max_retries: u32,
    /// Timeout of one try (until response headers). 0 = only the route deadline.
    pub per_try_timeout_ms: u64,
    /// Response statuses that are retried (idempotent requests only).
    pub retry_on_status: Vec<u16>,
    /// Retry idempotent requests whose connection was reset / failed after connect.
    pub retry_on_reset: bool,
    /// Retry idempotent requests whose try timed out.
    pub retry_on_timeout: bool,
    /// Also retry non-idempotent methods (POST, PATCH) on status/reset/timeout.
    pub retry_non_idempotent: bool,
    /// First backoff; doubles every retry ("full jitter" is applied).
    pub backoff_base_ms: u64,
    /// Upper bound of one backoff.
    pub backoff_max_ms: u64,
    /// Request bodies up to this size are buffered so they can be replayed;
    /// larger bodies are streamed to the first endpoint and never retried.
    pub max_replay_body_bytes: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            per_try_timeout_ms: 0,
            retry_on_status: vec![502, 503, 504],
            retry_on_reset: true,
            retry_on_timeout: true,
            retry_non_idempotent: false,
            backoff_base_ms: 10,
            backoff_max_ms: 250,
            max_replay_body_bytes: 64 * 1024,
        }
    }
}

/// Per client IP token bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained rate per client IP.
    pub requests_per_s: f64,
    /// Bucket size (burst).
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests_per_s: 100.0,
            burst: 200,
        }
    }
}

/// Response cache of a route (see `layers::cache`). Times from the
/// upstream's `Cache-Control` (seconds) win over the route defaults here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Total size of stored responses (bodies + headers) before the least
    /// recently used ones are evicted.
    pub max_cache_bytes: u64,
    /// Stored responses before the least recently used ones are evicted.
    pub max_cache_entries: usize,
    /// Larger responses are relayed but not stored.
    pub max_cacheable_body_bytes: u64,
    /// Freshness of a response without `max-age`/`s-maxage` (0 = always
    /// forwarded; the stored copy is then only served stale).
    pub default_max_age_ms: u64,
    /// How long after it turns stale a response may replace an error
    /// (500/502/503/504, connect failures, timeouts, open breaker) when the
    /// upstream gives no `stale-if-error`.
    pub default_stale_if_error_ms: u64,
    /// How long after it turns stale a response is served at once while a
    /// background request refreshes it, when the upstream gives no
    /// `stale-while-revalidate` (0 = off).
    pub default_stale_while_revalidate_ms: u64,
    /// Background refreshes in flight at once over the route (one per key
    /// at most); beyond, a stale-while-revalidate hit is served without
    /// starting one.
    pub max_concurrent_revalidations: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_cache_bytes: 64 * 1024 * 1024,
            max_cache_entries: 10_000,
            max_cacheable_body_bytes: 1024 * 1024,
            default_max_age_ms: 0,
            default_stale_if_error_ms: 300_000,
            default_stale_while_revalidate_ms: 0,
            max_concurrent_revalidations: 64,
        }
    }
}

/// Hedged requests of a route (see `layers::hedge`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HedgeConfig {
    /// Send a hedge when the first try has not answered after this long
    /// (with `percentile`: until `min_samples` latencies have been seen).
    pub after_ms: u64,
    /// When > 0: hedge after this percentile of the route's recent try
    /// latencies instead (e.g. 95.0), never sooner than `min_delay_ms`.
    pub percentile: f64,
    /// Recent try latencies kept per route for `percentile`.
    pub window_samples: usize,
    /// Latencies needed before `percentile` is used.
    pub min_samples: usize,
    /// Lower bound of a percentile-derived delay.
    pub min_delay_ms: u64,
    /// Extra tries in flight beside the first one.
    pub max_hedges_per_request: u32,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            after_ms: 50,
            percentile: 0.0,
            window_samples: 1_000,
            min_samples: 20,
            min_delay_ms: 1,
            max_hedges_per_request: 1,
        }
    }
}

/// Load-balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Plain round robin (weights ignored).
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx style).
    WeightedRoundRobin,
    /// Fewest in-flight requests; ties broken round robin.
    LeastConn,
    /// Power of two random choices on in-flight requests (optionally peak EWMA latency).
    LeastRequest,
    /// Consistent hashing (see `hash`).
    ConsistentHash,
    /// Weighted random.
    Random,
}

impl Algorithm {
    /// Parse the CLI spelling (`least-conn`, `least_conn`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        let n = s.replace('_', "-").to_ascii_lowercase();
        Some(match n.as_str() {
            "round-robin" | "rr" => Algorithm::RoundRobin,
            "weighted-round-robin" | "wrr" => Algorithm::WeightedRoundRobin,
            "least-conn" | "least-connections" => Algorithm::LeastConn,
            "least-request" | "p2c" => Algorithm::LeastRequest,
            "consistent-hash" | "hash" | "maglev" => Algorithm::ConsistentHash,
            "random" => Algorithm::Random,
            _ => return None,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::WeightedRoundRobin => "weighted-round-robin",
            Algorithm::LeastConn => "least-conn",
            Algorithm::LeastRequest => "least-request",
            Algorithm::ConsistentHash => "consistent-hash",
            Algorithm::Random => "random",
        })
    }
}

/// Where the consistent-hash key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The client IP address.
    #[default]
    ClientIp,
    /// A request header (`name`).
    Header,
    /// A cookie (`name`).
    Cookie,
}

/// Consistent-hash table kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HashMethod {
    /// Maglev lookup table.
    #[default]
    Maglev,
    /// Ring hash with virtual nodes (ketama-like).
    Ring,
}

/// Consistent hashing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashConfig {
    /// `client_ip`, `header` or `cookie`.
    pub key: HashKey,
    /// Header or cookie name.
    pub name: Option<String>,
    /// `maglev` or `ring`.
    pub method: HashMethod,
    /// Maglev table size (a prime, ≥ 100 × endpoints recommended).
    pub maglev_table_size: usize,
    /// Ring: virtual nodes per unit of weight.
    pub ring_vnodes_per_weight: u32,
}

impl Default for HashConfig {
    fn default() -> Self {
        HashConfig {
            key: HashKey::ClientIp,
            name: None,
            method: HashMethod::Maglev,
            maglev_table_size: 65_537,
            ring_vnodes_per_weight: 160,
        }
    }
}

/// Protocol used towards a pool's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 cleartext with prior knowledge.
    H2c,
}

/// An endpoint: `"127.0.0.1:9001"`, `"http://127.0.0.1:9001"` or `{ address, weight, zone }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EndpointConfig {
    /// Address only (weight 1).
    Address(String),
    /// Address, weight and zone.
    Weighted {
        /// `ip:port` (an `http://` prefix is accepted).
        address: String,
        /// Relative weight, 1..=10000.
        #[serde(default = "one")]
        weight: u32,
        /// Zone of the endpoint (for zone-aware routing); None = no zone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<String>,
    },
}

fn one() -> u32 {
    1
}

impl EndpointConfig {
    /// The configured address text.
    pub fn address_str(&self) -> &str {
        match self {
            EndpointConfig::Address(a) => a,
            EndpointConfig::Weighted { address, .. } => address,
        }
    }
    /// Zone (None when not given).
    pub fn zone(&self) -> Option<&str> {
        match self {
            EndpointConfig::Address(_) => None,
            EndpointConfig::Weighted { zone, .. } => zone.as_deref(),
        }
    }
    /// Weight (1 when not given).
    pub fn weight(&self) -> u32 {
        match self {
            EndpointConfig::Address(_) => 1,
            EndpointConfig::Weighted { weight, .. } => *weight,
        }
    }
    /// Parse the address (strips an `http://` prefix and trailing `/`).
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        parse_endpoint_address(self.address_str())
    }
}

/// Parse `ip:port`, `http://ip:port` or `http://ip:port/`.
pub fn parse_endpoint_address(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let t = t.strip_prefix("http://").unwrap_or(t);
    let t = t.trim_end_matches('/');
    if t.starts_with("https://") {
        return Err("give endpoints as ip:port; TLS to endpoints is the pool's `tls` table (ca_path, cert_path, key_path, server_name)".into());
    }
    t.parse::<SocketAddr>()
        .map_err(|_| format!("`{s}` is not an ip:port socket address"))
}

/// Active health checking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http` (GET `path`, expect `expected_status`) or `tcp` (connect only).
    pub kind: HealthCheckKind,
    /// HTTP path probed.
    pub path: String,
    /// Status that counts as healthy.
    pub expected_status: u16,
    /// Time between two checks of one endpoint.
    pub interval_ms: u64,
    /// Timeout of one check.
    pub timeout_ms: u64,
    /// Consecutive successes to become healthy.
    pub rise: u32,
    /// Consecutive failures to become unhealthy.
    pub fall: u32,
    /// Random extra delay added to each interval, as a percentage of it.
    pub jitter_percent: u32,
}

/// Health check kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// HTTP GET.
    #[default]
    Http,
    /// TCP connect.
    Tcp,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: HealthCheckKind::Http,
            path: "/healthz".into(),
            expected_status: 200,
            interval_ms: 5_000,
            timeout_ms: 1_000,
            rise: 2,
            fall: 3,
            jitter_percent: 10,
        }
    }
}

/// Passive outlier detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Enable passive ejection.
    pub enabled: bool,
    /// Consecutive 5xx responses that eject an endpoint (0 = never).
    pub consecutive_5xx: u32,
    /// Consecutive connect failures that eject an endpoint (0 = never).
    pub consecutive_connect_failures: u32,
    /// Consecutive per-try timeouts that eject an endpoint (0 = never).
    pub consecutive_timeouts: u32,
    /// First ejection duration; the n-th consecutive ejection lasts n × this.
    pub base_ejection_ms: u64,
    /// Upper bound of one ejection.
    pub max_ejection_ms: u64,
    /// At most this percentage of a pool's endpoints is ejected at once.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_5xx: 5,
            consecutive_connect_failures: 1,
            consecutive_timeouts: 3,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 50,
        }
    }
}

/// Retry budget (per pool): retries allowed as a ratio of the requests seen
/// over a sliding window, plus a floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request over the window (0.2 = 20 %).
    pub ratio: f64,
    /// Retries always allowed per second of window, whatever the traffic.
    pub min_retries_per_s: u32,
    /// Sliding window length.
    pub window_ms: u64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.2,
            min_retries_per_s: 10,
            window_ms: 10_000,
        }
    }
}

/// Circuit breaker (per pool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed tries (5xx, connect failure, timeout, reset) that open the breaker.
    pub consecutive_failures: u32,
    /// How long the breaker stays open before letting probes through.
    pub open_ms: u64,
    /// Concurrent probe requests allowed while half-open.
    pub half_open_max_requests: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 20,
            open_ms: 5_000,
            half_open_max_requests: 1,
        }
    }
}

/// An upstream pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name.
    pub name: String,
    /// Endpoints.
    pub endpoints: Vec<EndpointConfig>,
    /// Balancing algorithm.
    pub algorithm: Algorithm,
    /// Consistent hashing settings (algorithm `consistent-hash`).
    pub hash: HashConfig,
    /// `least-request`: weigh in-flight requests by the peak-EWMA latency.
    pub peak_ewma: bool,
    /// `least-request` peak EWMA decay time constant.
    pub ewma_decay_ms: u64,
    /// Backup pools in priority order, used when this pool has no healthy endpoint.
    pub backups: Vec<String>,
    /// `http1` or `h2c` towards endpoints.
    pub protocol: UpstreamProtocol,
    /// TCP connect timeout to an endpoint.
    pub connect_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this.
    pub idle_connection_timeout_ms: u64,
    /// Idle keep-alive connections kept per endpoint.
    pub max_idle_connections_per_endpoint: usize,
    /// Below this percentage of healthy endpoints, balance over all endpoints
    /// of the tier (panic mode). 0 disables panic mode.
    pub panic_threshold_percent: u32,
    /// Weight ramp-up time of an endpoint that (re)joins. 0 = off.
    pub slow_start_ms: u64,
    /// Concurrent requests in flight to this pool.
    pub max_concurrent_requests: usize,
    /// Requests waiting for a concurrency slot; beyond, immediate 503.
    pub max_pending_requests: usize,
    /// Longest wait for a concurrency slot before a 503.
    pub pending_timeout_ms: u64,
    /// Active health checks (None = disabled, endpoints considered healthy).
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier detection.
    pub outlier_detection: OutlierConfig,
    /// Retry budget.
    pub retry_budget: RetryBudgetConfig,
    /// Circuit breaker (None = disabled).
    pub circuit_breaker: Option<BreakerConfig>,
    /// TLS towards the endpoints (None = cleartext).
    pub tls: Option<UpstreamTlsConfig>,
    /// Zone-aware routing (endpoints' `zone` against the gateway's).
    pub zone_routing: ZoneRoutingConfig,
    /// Adaptive concurrency limit (gradient), below `max_concurrent_requests`;
    /// None = the static limit only.
    pub adaptive_concurrency: Option<AdaptiveConcurrencyConfig>,
    /// Host header sent to this pool's endpoints (a fallback provider's own
    /// name); None = the client's Host.
    pub host_header: Option<String>,
    /// Prepended to the request path sent to this pool's endpoints (e.g.
    /// `/v2`); None = the path as received.
    pub upstream_path_prefix: Option<String>,
}

/// TLS (and mutual TLS) from a pool to its endpoints. The endpoints'
/// certificates are verified against `ca_path` and must name `server_name`
/// (or, without it, the endpoint's IP address); `cert_path`/`key_path`
/// are presented to endpoints that require a client certificate. The files
/// are read when the pool's configuration is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM CA bundle that verifies the endpoints' certificates (required).
    pub ca_path: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS; with `key_path`).
    pub cert_path: Option<PathBuf>,
    /// PEM private key of `cert_path`.
    pub key_path: Option<PathBuf>,
    /// SNI sent to every endpoint and the name their certificates must carry;
    /// None: the endpoint's IP address (no SNI, IP subject alternative name).
    pub server_name: Option<String>,
}

/// Default of `max_idle_connections_per_endpoint`: high enough that a
/// pool serving a few hundred concurrent requests keeps its upstream
/// connections between requests instead of closing and reopening the
/// excess on every response (each idle connection costs one socket and its
/// read buffer; only connections that were needed are ever kept).
pub const DEFAULT_MAX_IDLE_CONNECTIONS_PER_ENDPOINT: usize = 512;

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            name: String::new(),
            endpoints: Vec::new(),
            algorithm: Algorithm::RoundRobin,
            hash: HashConfig::default(),
            peak_ewma: false,
            ewma_decay_ms: 10_000,
            backups: Vec::new(),
            protocol: UpstreamProtocol::Http1,
            connect_timeout_ms: 1_000,
            idle_connection_timeout_ms: 90_000,
            max_idle_connections_per_endpoint: DEFAULT_MAX_IDLE_CONNECTIONS_PER_ENDPOINT,
            panic_threshold_percent: 50,
            slow_start_ms: 0,
            max_concurrent_requests: 10_000,
            max_pending_requests: 1_000,
            pending_timeout_ms: 1_000,
            health_check: None,
            outlier_detection: OutlierConfig::default(),
            retry_budget: RetryBudgetConfig::default(),
            circuit_breaker: None,
            tls: None,
            zone_routing: ZoneRoutingConfig::default(),
            adaptive_concurrency: None,
            host_header: None,
            upstream_path_prefix: None,
        }
    }
}

impl Config {
    /// Parse and validate a TOML document.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        // Numbers are range-checked on the untyped document first: a value
        // that does not fit the field's type (a negative weight, say) would
        // otherwise surface as a serde type error without the field's path,
        // or as "data did not match any variant" inside untagged enums.
        let raw: toml::Table = toml::from_str(s).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let tree = serde_json::to_value(&raw).map_err(|e| ConfigError::Parse(e.to_string()))?;
        ranges::check(&tree)?;
        let cfg: Config = toml::from_str(s).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read, parse and validate a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let s = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        Config::from_toml_str(&s)
    }

    /// Serialize back to TOML.
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Quick-start configuration: one HTTP listener, one pool, one catch-all route.
    pub fn quick_start(listen: SocketAddr, upstreams: &[String], algorithm: Algorithm) -> Config {
        Config {
            listeners: vec![ListenerConfig {
                name: "default".into(),
                address: listen,
                ..Default::default()
            }],
            pools: vec![PoolConfig {
                name: "default".into(),
                algorithm,
                endpoints: upstreams
                    .iter()
                    .map(|u| EndpointConfig::Address(u.clone()))
                    .collect(),
                ..Default::default()
            }],
            routes: vec![RouteConfig {
                pool: "default".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Check every semantic constraint; returns the first violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // The same numeric ranges as for TOML text (configurations built in
        // code go through here only).
        let tree = serde_json::to_value(self).map_err(|e| ConfigError::Parse(e.to_string()))?;
        ranges::check(&tree)?;
        if self.listeners.is_empty() {
            return Err(inv("listeners", "at least one listener is required"));
        }
        let mut pool_names = HashSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let f = |n: &str| format!("pools[{i}].{n}");
            if p.name.is_empty() {
                return Err(inv(f("name"), "must not be empty"));
            }
            if !pool_names.insert(p.name.as_str()) {
                return Err(inv(f("name"), format!("duplicate pool name `{}`", p.name)));
            }
            let mut seen = HashSet::new();
            for (j, e) in p.endpoints.iter().enumerate() {
                let addr = e
                    .socket_addr()
                    .map_err(|r| inv(format!("pools[{i}].endpoints[{j}].address"), r))?;
                if !seen.insert(addr) {
                    return Err(inv(
                        format!("pools[{i}].endpoints[{j}].address"),
                        format!("duplicate endpoint {addr}"),
                    ));
                }
            }
            if let Some(t) = &p.tls {
                crate::tls::load_client_config(t, &[])
                    .map_err(|(field, r)| inv(f(&format!("tls.{field}")), r))?;
            }
            if p.algorithm == Algorithm::ConsistentHash {
                if p.hash.key != HashKey::ClientIp
                    && p.hash.name.as_deref().map(str::is_empty).unwrap_or(true)
                {
                    return Err(inv(
                        f("hash.name"),
                        "required when hash.key is `header` or `cookie`",
                    ));
                }
                if p.hash.method == HashMethod::Maglev {
                    let m = p.hash.maglev_table_size;
                    if !(7..=10_000_019).contains(&m) || !is_prime(m) {
                        return Err(inv(
                            f("hash.maglev_table_size"),
                            "must be a prime between 7 and 10000019",
                        ));
                    }
                    if m < p.endpoints.len() {
                        return Err(inv(
                            f("hash.maglev_table_size"),
                            "must be larger than the number of endpoints",
                        ));
                    }
                }
            }
            if let Some(h) = &p.health_check {
                if h.kind == HealthCheckKind::Http && !h.path.starts_with('/') {
                    return Err(inv(f("health_check.path"), "must start with `/`"));
                }
            }
            if let Some(h) = &p.host_header {
                let ok = !h.is_empty()
                    && !h.contains('@')
                    && h.parse::<http::uri::Authority>()
                        .is_ok_and(|a| a.as_str() == h.as_str());
                if !ok {
                    return Err(inv(
                        f("host_header"),
                        format!("`{h}` is not a host name (optionally with :port)"),
                    ));
                }
            }
            if let Some(pp) = &p.upstream_path_prefix {
                let ok = pp.starts_with('/')
                    && !pp.ends_with('/')
                    && !pp.contains(['?', '#'])
                    && pp.parse::<http::uri::PathAndQuery>().is_ok();
                if !ok {
                    return Err(inv(
                        f("upstream_path_prefix"),
                        format!(
                            "`{pp}` must start with `/`, not end with `/`, and hold no `?` or `#`"
                        ),
                    ));
                }
            }
            let o = &p.outlier_detection;
            if o.enabled && o.base_ejection_ms == 0 {
                return Err(inv(f("outlier_detection.base_ejection_ms"), "must be > 0"));
            }
            if o.max_ejection_ms < o.base_ejection_ms {
                return Err(inv(
                    f("outlier_detection.max_ejection_ms"),
                    "must be >= base_ejection_ms",
                ));
            }
        }
        // Backups: must exist, not self, no cycles.
        let by_name: HashMap<&str, &PoolConfig> =
            self.pools.iter().map(|p| (p.name.as_str(), p)).collect();
        for (i, p) in self.pools.iter().enumerate() {
            for (j, b) in p.backups.iter().enumerate() {
                if !by_name.contains_key(b.as_str()) {
                    return Err(inv(
                        format!("pools[{i}].backups[{j}]"),
                        format!("unknown pool `{b}`"),
                    ));
                }
                if b == &p.name {
                    return Err(inv(
                        format!("pools[{i}].backups[{j}]"),
                        "a pool cannot back itself up",
                    ));
                }
                if !by_name[b.as_str()].backups.is_empty() {
                    return Err(inv(
                        format!("pools[{i}].backups[{j}]"),
                        format!("backup pool `{b}` has backups itself (only one level is allowed)"),
                    ));
                }
            }
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let f = |n: &str| format!("listeners[{i}].{n}");
            if l.name.is_empty() {
                return Err(inv(f("name"), "must not be empty"));
            }
            if !names.insert(l.name.as_str()) {
                return Err(inv(
                    f("name"),
                    format!("duplicate listener name `{}`", l.name),
                ));
            }
            if l.address.port() != 0 && !addrs.insert(l.address) {
                return Err(inv(
                    f("address"),
                    format!("duplicate address {}", l.address),
                ));
            }
            match l.protocol {
                ListenerProtocol::Tcp => match &l.pool {
                    None => return Err(inv(f("pool"), "required for tcp listeners")),
                    Some(p) if !pool_names.contains(p.as_str()) => {
                        return Err(inv(f("pool"), format!("unknown pool `{p}`")))
                    }
                    Some(p) if self.pools.iter().any(|x| &x.name == p && x.tls.is_some()) => {
                        return Err(inv(
                            f("pool"),
                            format!("pool `{p}` has tls: a tcp listener forwards bytes as they are and cannot originate TLS; use an http or https listener"),
                        ))
                    }
                    _ => {}
                },
                ListenerProtocol::Https => {
                    let (Some(c), Some(k)) = (&l.tls_cert_path, &l.tls_key_path) else {
                        return Err(inv(
                            f("tls_cert_path"),
                            "https listeners need tls_cert_path and tls_key_path",
                        ));
                    };
                    crate::tls::load_server_config(c, k).map_err(|r| inv(f("tls_cert_path"), r))?;
                }
                ListenerProtocol::Http => {}
            }
            if l.protocol != ListenerProtocol::Tcp && l.pool.is_some() {
                return Err(inv(
                    f("pool"),
                    "only tcp listeners take a pool; http listeners use routes",
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let f = |n: &str| format!("routes[{i}].{n}");
            if !pool_names.contains(r.pool.as_str()) {
                return Err(inv(f("pool"), format!("unknown pool `{}`", r.pool)));
            }
            if !r.path_prefix.starts_with('/') {
                return Err(inv(f("path_prefix"), "must start with `/`"));
            }
            if r.retry.backoff_max_ms < r.retry.backoff_base_ms {
                return Err(inv(f("retry.backoff_max_ms"), "must be >= backoff_base_ms"));
            }
            if let Some(c) = &r.cache {
                if c.max_cacheable_body_bytes > c.max_cache_bytes {
                    return Err(inv(
                        f("cache.max_cacheable_body_bytes"),
                        format!(
                            "must be <= cache.max_cache_bytes ({}), got {}",
                            c.max_cache_bytes, c.max_cacheable_body_bytes
                        ),
                    ));
                }
            }
            if let Some(h) = &r.hedge {
                if h.percentile > 0.0 && h.min_samples > h.window_samples {
                    return Err(inv(
                        f("hedge.min_samples"),
                        format!(
                            "must be <= hedge.window_samples ({}), got {}",
                            h.window_samples, h.min_samples
                        ),
                    ));
                }
            }
        }
        self.validate_shedding_and_zones()?;
        let has_http = self
            .listeners
            .iter()
            .any(|l| l.protocol != ListenerProtocol::Tcp);
        if has_http && self.routes.is_empty() {
            return Err(inv("routes", "http listeners need at least one route"));
        }
        Ok(())
    }
}

impl Config {
    /// Load shedding and zone settings that the ranges alone do not cover.
    fn validate_shedding_and_zones(&self) -> Result<(), ConfigError> {
        let ls = &self.load_shedding;
        if http::HeaderName::from_bytes(ls.priority_header.as_bytes()).is_err() {
            return Err(inv(
                "load_shedding.priority_header",
                format!("`{}` is not a valid header name", ls.priority_header),
            ));
        }
        if ls.cpu_window_ms < ls.cpu_sample_interval_ms {
            return Err(inv(
                "load_shedding.cpu_window_ms",
                format!(
                    "must be >= load_shedding.cpu_sample_interval_ms ({}), got {}",
                    ls.cpu_sample_interval_ms, ls.cpu_window_ms
                ),
            ));
        }
        if ls.cpu_shed_sheddable_percent > 0
            && ls.cpu_shed_default_percent > 0
            && ls.cpu_shed_default_percent < ls.cpu_shed_sheddable_percent
        {
            return Err(inv(
                "load_shedding.cpu_shed_default_percent",
                format!(
                    "must be >= load_shedding.cpu_shed_sheddable_percent ({}) so that sheddable requests are refused first, got {}",
                    ls.cpu_shed_sheddable_percent, ls.cpu_shed_default_percent
                ),
            ));
        }
        if let Some(z) = &self.zone {
            check_zone_name(z).map_err(|r| inv("zone", r))?;
        }
        for (i, p) in self.pools.iter().enumerate() {
            if let Some(a) = &p.adaptive_concurrency {
                if a.initial_limit < a.min_limit {
                    return Err(inv(
                        format!("pools[{i}].adaptive_concurrency.initial_limit"),
                        format!(
                            "must be >= adaptive_concurrency.min_limit ({}), got {} (pool `{}`)",
                            a.min_limit, a.initial_limit, p.name
                        ),
                    ));
                }
                if a.min_limit > p.max_concurrent_requests {
                    return Err(inv(
                        format!("pools[{i}].adaptive_concurrency.min_limit"),
                        format!(
                            "must be <= max_concurrent_requests ({}), got {} (pool `{}`)",
                            p.max_concurrent_requests, a.min_limit, p.name
                        ),
                    ));
                }
            }
            if let Some(z) = &p.zone_routing.local_zone {
                check_zone_name(z).map_err(|r| {
                    inv(
                        format!("pools[{i}].zone_routing.local_zone"),
                        format!("{r} (pool `{}`)", p.name),
                    )
                })?;
            }
            for (j, e) in p.endpoints.iter().enumerate() {
                if let Some(z) = e.zone() {
                    check_zone_name(z).map_err(|r| {
                        inv(
                            format!("pools[{i}].endpoints[{j}].zone"),
                            format!("{r} (pool `{}`, endpoint `{}`)", p.name, e.address_str()),
                        )
                    })?;
                }
            }
        }
        Ok(())
    }
}

impl PoolConfig {
    /// This pool's configuration as the runtime uses it: the gateway's
    /// `zone` fills `zone_routing.local_zone` when the pool names none.
    pub(crate) fn with_gateway_zone(&self, zone: Option<&str>) -> PoolConfig {
        let mut p = self.clone();
        if p.zone_routing.local_zone.is_none() {
            p.zone_routing.local_zone = zone.map(str::to_string);
        }
        p
    }
}

/// Allowed ranges of every numeric setting, checked on the configuration as
/// an untyped tree (TOML text, or a typed `Config` serialized), so that an
/// out-of-range value is reported with its field path, its owner (pool,
/// endpoint, listener, route) and the allowed range, whatever its type.
mod ranges {
    use super::{inv, ConfigError};
    use serde_json::Value;

    #[derive(Clone, Copy)]
    enum R {
        /// Integer in [min, max].
        Int(i128, i128),
        /// Number in [min, max].
        Float(f64, f64),
        /// Number in (0, max].
        PositiveFloat(f64),
    }
    use R::*;

    const HOUR_MS: i128 = 3_600_000;
    const DAY_MS: i128 = 86_400_000;
    const MILLION: i128 = 1_000_000;

    const TOP: &[(&str, R)] = &[("drain_timeout_ms", Int(0, HOUR_MS))];
    const LISTENER: &[(&str, R)] = &[
        ("max_connections", Int(1, MILLION)),
        ("max_connections_per_client_ip", Int(0, MILLION)),
        ("listen_backlog", Int(1, 65_535)),
        ("client_first_byte_timeout_ms", Int(1, HOUR_MS)),
        ("client_keepalive_idle_timeout_ms", Int(1, DAY_MS)),
        ("header_read_timeout_ms", Int(1, HOUR_MS)),
        ("max_header_bytes", Int(8_192, 1_048_576)),
        ("http2_max_concurrent_streams", Int(1, 100_000)),
        ("tcp_connect_timeout_ms", Int(1, 600_000)),
        ("tls_reload_check_interval_ms", Int(1, HOUR_MS)),
    ];
    const ROUTE: &[(&str, R)] = &[
        ("timeout_ms", Int(0, DAY_MS)),
        // Chunked bodies are buffered in memory up to this size.
        ("max_request_body_bytes", Int(0, 1 << 30)),
    ];
    const RETRY: &[(&str, R)] = &[
        ("max_retries", Int(0, 10)),
        ("per_try_timeout_ms", Int(0, DAY_MS)),
        ("backoff_base_ms", Int(0, 60_000)),
        ("backoff_max_ms", Int(0, 600_000)),
        ("max_replay_body_bytes", Int(0, 64 << 20)),
    ];
    const RATE_LIMIT: &[(&str, R)] = &[
        ("requests_per_s", PositiveFloat(1e6)),
        ("burst", Int(1, MILLION)),
    ];
    const POOL: &[(&str, R)] = &[
        ("ewma_decay_ms", Int(1, HOUR_MS)),
        ("connect_timeout_ms", Int(1, 600_000)),
        ("idle_connection_timeout_ms", Int(1, DAY_MS)),
        ("max_idle_connections_per_endpoint", Int(0, 100_000)),
        ("panic_threshold_percent", Int(0, 100)),
        ("slow_start_ms", Int(0, HOUR_MS)),
        ("max_concurrent_requests", Int(1, MILLION)),
        ("max_pending_requests", Int(0, MILLION)),
        ("pending_timeout_ms", Int(0, 600_000)),
    ];
    const CACHE: &[(&str, R)] = &[
        // Bytes are held in memory: at most 16 GiB.
        ("max_cache_bytes", Int(1, 1 << 34)),
        ("max_cache_entries", Int(1, 10 * MILLION)),
        ("max_cacheable_body_bytes", Int(0, 1 << 30)),
        ("default_max_age_ms", Int(0, 365 * DAY_MS)),
        ("default_stale_if_error_ms", Int(0, 365 * DAY_MS)),
        ("default_stale_while_revalidate_ms", Int(0, 365 * DAY_MS)),
        ("max_concurrent_revalidations", Int(1, 100_000)),
    ];
    const HEDGE: &[(&str, R)] = &[
        ("after_ms", Int(1, 600_000)),
        ("percentile", Float(0.0, 99.9)),
        ("window_samples", Int(1, 100_000)),
        ("min_samples", Int(1, 100_000)),
        ("min_delay_ms", Int(1, 600_000)),
        ("max_hedges_per_request", Int(1, 4)),
    ];
    const ENDPOINT: &[(&str, R)] = &[("weight", Int(1, 10_000))];
    const LOAD_SHEDDING: &[(&str, R)] = &[
        ("retry_after_s", Int(1, 3_600)),
        ("sheddable_max_wait_ms", Int(0, 600_000)),
        ("cpu_shed_sheddable_percent", Int(0, 100)),
        ("cpu_shed_default_percent", Int(0, 100)),
        ("cpu_sample_interval_ms", Int(10, 60_000)),
        ("cpu_window_ms", Int(100, HOUR_MS)),
    ];
    const ZONE_ROUTING: &[(&str, R)] = &[("min_local_healthy_percent", Int(1, 100))];
    const ADAPTIVE: &[(&str, R)] = &[
        ("min_limit", Int(1, MILLION)),
        ("initial_limit", Int(1, MILLION)),
        ("rtt_tolerance_percent", Int(100, 1_000)),
        ("smoothing_percent", Int(1, 100)),
        ("long_window_samples", Int(10, 100_000)),
    ];
    const HASH: &[(&str, R)] = &[
        ("maglev_table_size", Int(7, 10_000_019)),
        ("ring_vnodes_per_weight", Int(1, 10_000)),
    ];
    const HEALTH: &[(&str, R)] = &[
        ("expected_status", Int(100, 599)),
        ("interval_ms", Int(1, HOUR_MS)),
        ("timeout_ms", Int(1, 600_000)),
        ("rise", Int(1, 1_000)),
        ("fall", Int(1, 1_000)),
        ("jitter_percent", Int(0, 100)),
    ];
    const OUTLIER: &[(&str, R)] = &[
        ("consecutive_5xx", Int(0, MILLION)),
        ("consecutive_connect_failures", Int(0, MILLION)),
        ("consecutive_timeouts", Int(0, MILLION)),
        ("base_ejection_ms", Int(0, DAY_MS)),
        ("max_ejection_ms", Int(0, DAY_MS)),
        ("max_ejection_percent", Int(0, 100)),
    ];
    const BUDGET: &[(&str, R)] = &[
        ("ratio", Float(0.0, 1000.0)),
        ("min_retries_per_s", Int(0, MILLION)),
        ("window_ms", Int(1_000, 600_000)),
    ];
    const BREAKER: &[(&str, R)] = &[
        ("consecutive_failures", Int(1, MILLION)),
        ("open_ms", Int(1, DAY_MS)),
        ("half_open_max_requests", Int(1, MILLION)),
    ];

    fn describe(v: &Value) -> String {
        match v {
            Value::Null => "a non-finite number".into(),
            Value::String(s) => format!("the string {s:?}"),
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Array(_) => "an array".into(),
            Value::Object(_) => "a table".into(),
            Value::Number(n) => n.to_string(),
        }
    }

    fn one(path: &str, owner: &str, v: &Value, r: R) -> Result<(), ConfigError> {
        let (ok, want) = match r {
            Int(lo, hi) => {
                let n = v
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| v.as_u64().map(i128::from));
                (
                    n.is_some_and(|n| (lo..=hi).contains(&n)),
                    format!("an integer between {lo} and {hi}"),
                )
            }
            Float(lo, hi) => (
                v.as_f64().is_some_and(|x| x >= lo && x <= hi),
                format!("a number between {lo} and {hi}"),
            ),
            PositiveFloat(hi) => (
                v.as_f64().is_some_and(|x| x > 0.0 && x <= hi),
                format!("a number greater than 0 and at most {hi}"),
            ),
        };
        if ok {
            return Ok(());
        }
        let owner = if owner.is_empty() {
            String::new()
        } else {
            format!(" ({owner})")
        };
        Err(inv(
            path,
            format!("must be {want}, got {}{owner}", describe(v)),
        ))
    }

    /// Check the listed keys of `table` (absent keys and non-tables are left
    /// to the typed parser, which names unknown keys and wrong structure).
    fn keys(
        table: &Value,
        prefix: &str,
        owner: &str,
        spec: &[(&str, R)],
    ) -> Result<(), ConfigError> {
        let Some(t) = table.as_object() else {
            return Ok(());
        };
        for (k, r) in spec {
            if let Some(v) = t.get(*k) {
                one(&format!("{prefix}{k}"), owner, v, *r)?;
            }
        }
        Ok(())
    }

    fn name_of(v: &Value, key: &str) -> Option<String> {
        v.get(key).and_then(Value::as_str).map(str::to_string)
    }

    fn items(v: &Value, key: &str) -> Vec<Value> {
        v.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn check(root: &Value) -> Result<(), ConfigError> {
        keys(root, "", "", TOP)?;
        if let Some(t) = root.get("load_shedding") {
            keys(t, "load_shedding.", "", LOAD_SHEDDING)?;
        }
        for (i, l) in items(root, "listeners").iter().enumerate() {
            let owner = name_of(l, "name")
                .map(|n| format!("listener `{n}`"))
                .unwrap_or_default();
            keys(l, &format!("listeners[{i}]."), &owner, LISTENER)?;
        }
        for (i, r) in items(root, "routes").iter().enumerate() {
            let owner = name_of(r, "pool")
                .map(|p| format!("route to pool `{p}`"))
                .unwrap_or_default();
            let p = format!("routes[{i}].");
            keys(r, &p, &owner, ROUTE)?;
            if let Some(rt) = r.get("retry") {
                keys(rt, &format!("{p}retry."), &owner, RETRY)?;
                for (j, s) in items(rt, "retry_on_status").iter().enumerate() {
                    one(
                        &format!("{p}retry.retry_on_status[{j}]"),
                        &owner,
                        s,
                        Int(100, 599),
                    )?;
                }
            }
            if let Some(rl) = r.get("rate_limit") {
                keys(rl, &format!("{p}rate_limit."), &owner, RATE_LIMIT)?;
            }
            if let Some(c) = r.get("cache") {
                keys(c, &format!("{p}cache."), &owner, CACHE)?;
            }
            if let Some(h) = r.get("hedge") {
                keys(h, &format!("{p}hedge."), &owner, HEDGE)?;
            }
        }
        for (i, pool) in items(root, "pools").iter().enumerate() {
            let pname = name_of(pool, "name").unwrap_or_default();
            let owner = format!("pool `{pname}`");
            let p = format!("pools[{i}].");
            keys(pool, &p, &owner, POOL)?;
            for (j, e) in items(pool, "endpoints").iter().enumerate() {
                let eo = match name_of(e, "address") {
                    Some(a) => format!("pool `{pname}`, endpoint `{a}`"),
                    None => owner.clone(),
                };
                keys(e, &format!("{p}endpoints[{j}]."), &eo, ENDPOINT)?;
            }
            for (sub, spec) in [
                ("hash", HASH),
                ("health_check", HEALTH),
                ("outlier_detection", OUTLIER),
                ("retry_budget", BUDGET),
                ("circuit_breaker", BREAKER),
                ("zone_routing", ZONE_ROUTING),
                ("adaptive_concurrency", ADAPTIVE),
            ] {
                if let Some(t) = pool.get(sub) {
                    keys(t, &format!("{p}{sub}."), &owner, spec)?;
                }
            }
        }
        Ok(())
    }
}

fn inv(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(field, reason)
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_weight_with_field_path() {
        let t = r#"
            [[listeners]]
            name = "l"
            address = "127.0.0.1:0"
            [[pools]]
            name = "p"
            endpoints = [{ address = "127.0.0.1:1", weight = 0 }]
            [[routes]]
            pool = "p"
        "#;
        let e = Config::from_toml_str(t).unwrap_err().to_string();
        assert!(e.contains("pools[0].endpoints[0].weight"), "{e}");
    }

    #[test]
    fn unknown_field_rejected() {
        let e = Config::from_toml_str("bogus = 1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
