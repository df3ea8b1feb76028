//! Prometheus metrics (prometheus-client). One [`Metrics`] registry per
//! gateway; endpoints keep cloned handles of their own series so the hot path
//! does not hash label sets.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of per-endpoint series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Pool name.
    pub pool: String,
    /// Endpoint address.
    pub endpoint: String,
}

/// Labels of per-endpoint series split by status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointClassLabels {
    /// Pool name.
    pub pool: String,
    /// Endpoint address.
    pub endpoint: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`, or an error kind (`connect_error`, `timeout`, `reset`).
    pub class: String,
}

/// Labels of per-pool series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
}

/// Labels of per-pool series split by class / reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolClassLabels {
    /// Pool name.
    pub pool: String,
    /// Status class or reason.
    pub class: String,
}

/// Labels of fallback series: the route's primary pool and the backup pool
/// that answered instead.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// Primary pool name.
    pub pool: String,
    /// Backup pool name.
    pub backup: String,
}

/// Labels of per-listener series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: String,
}

/// Labels of per-listener series with a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    /// Listener name.
    pub listener: String,
    /// `first_byte_timeout`, `header_timeout`, `keepalive_idle_timeout`, `evicted`.
    pub reason: String,
}

/// Labels of zone-aware routing decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabels {
    /// Pool name.
    pub pool: String,
    /// `local` (the pool's local zone) or `remote`.
    pub locality: String,
}

/// Labels of requests refused by load shedding.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    /// Pool name.
    pub pool: String,
    /// `critical`, `default` or `sheddable`.
    pub priority: String,
    /// `concurrency` (limit reached, no room to wait), `pending_timeout`,
    /// `displaced` (queue place taken by a higher priority), `cpu`.
    pub reason: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// All metric families of a gateway.
pub struct Metrics {
    /// The registry encoded at `/metrics`.
    pub registry: Mutex<Registry>,
    /// Upstream tries by endpoint and outcome class.
    pub upstream_requests: Family<EndpointClassLabels, Counter>,
    /// Upstream try latency (to response headers) by endpoint.
    pub upstream_latency: HistFamily<EndpointLabels>,
    /// In-flight requests per endpoint.
    pub endpoint_active: Family<EndpointLabels, Gauge>,
    /// 1 = healthy and not ejected.
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    /// Passive ejections.
    pub endpoint_ejections: Family<EndpointLabels, Counter>,
    /// Responses sent to clients by pool and status class.
    pub downstream_responses: Family<PoolClassLabels, Counter>,
    /// Client-observed latency per pool.
    pub downstream_latency: HistFamily<PoolLabels>,
    /// Retries issued.
    pub retries: Family<PoolLabels, Counter>,
    /// Retries denied by the retry budget.
    pub budget_exhausted: Family<PoolLabels, Counter>,
    /// Requests rejected by an open circuit breaker.
    pub breaker_rejections: Family<PoolLabels, Counter>,
    /// Requests rejected by overload protection (`concurrency`, `pending_timeout`, `rate_limit`, `connections`).
    pub overload_rejections: Family<PoolClassLabels, Counter>,
    /// Requests refused by load shedding, per pool, priority and reason.
    pub shed_requests: Family<ShedLabels, Counter>,
    /// The adaptive concurrency limit in force per pool (pools with `adaptive_concurrency`).
    pub adaptive_concurrency_limit: Family<PoolLabels, Gauge>,
    /// Process CPU utilization (percent of the CPUs available) last measured
    /// for CPU-triggered shedding.
    pub cpu_utilization_percent: Gauge,
    /// Open client connections per listener.
    pub listener_connections: Family<ListenerLabels, Gauge>,
    /// Accepted client connections per listener.
    pub listener_accepted: Family<ListenerLabels, Counter>,
    /// Client connections closed by the gateway (timeouts, eviction) per listener and reason.
    pub listener_closes: Family<ListenerReasonLabels, Counter>,
    /// Cache look-ups of cached routes by result (`hit`, `stale_while_revalidate`,
    /// `stale_if_error`, `miss`, `bypass`), by primary pool.
    pub cache_requests: Family<PoolClassLabels, Counter>,
    /// Responses stored in a route cache.
    pub cache_stores: Family<PoolLabels, Counter>,
    /// Entries evicted (LRU) from a route cache to respect its bounds.
    pub cache_evictions: Family<PoolLabels, Counter>,
    /// Bytes held by the route caches of a pool.
    pub cache_bytes: Family<PoolLabels, Gauge>,
    /// Entries held by the route caches of a pool.
    pub cache_entries: Family<PoolLabels, Gauge>,
    /// Hedged tries by result: `sent`, `won` (the hedge answered first),
    /// `denied` (the retry budget refused one).
    pub hedges: Family<PoolClassLabels, Counter>,
    /// Responses answered by a backup pool instead of the primary.
    pub fallback_responses: Family<FallbackLabels, Counter>,
    /// Endpoint selections (tries, hedges, TCP connections) of pools with
    /// zone-aware routing in force, by the zone half picked.
    pub zone_requests: Family<ZoneLabels, Counter>,
    /// Endpoints of a pool (set when metrics are read).
    pub pool_endpoints: Family<PoolLabels, Gauge>,
    /// Available endpoints of a pool: healthy, not ejected (set when metrics are read).
    pub pool_available_endpoints: Family<PoolLabels, Gauge>,
    /// 1 when the pool can take requests: an available endpoint and a breaker not open.
    pub pool_available: Family<PoolLabels, Gauge>,
    /// Requests in flight to a pool (its bulkhead's use; set when metrics are read).
    pub pool_in_flight: Family<PoolLabels, Gauge>,
    /// The pool's bulkhead size, `max_concurrent_requests`.
    pub pool_max_concurrent: Family<PoolLabels, Gauge>,
}

impl Metrics {
    /// Create and register every family.
    pub fn new() -> Arc<Self> {
        let mut r = Registry::with_prefix("gateway");
        let m = Metrics {
            upstream_requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            endpoint_active: Family::default(),
            endpoint_healthy: Family::default(),
            endpoint_ejections: Family::default(),
            downstream_responses: Family::default(),
            downstream_latency: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            breaker_rejections: Family::default(),
            overload_rejections: Family::default(),
            shed_requests: Family::default(),
            cpu_utilization_percent: Gauge::default(),
            adaptive_concurrency_limit: Family::default(),
            listener_connections: Family::default(),
            listener_accepted: Family::default(),
            listener_closes: Family::default(),
            cache_requests: Family::default(),
            cache_stores: Family::default(),
            cache_evictions: Family::default(),
            cache_bytes: Family::default(),
            cache_entries: Family::default(),
            hedges: Family::default(),
            fallback_responses: Family::default(),
            zone_requests: Family::default(),
            pool_endpoints: Family::default(),
            pool_available_endpoints: Family::default(),
            pool_available: Family::default(),
            pool_in_flight: Family::default(),
            pool_max_concurrent: Family::default(),
            registry: Mutex::new(Registry::default()),
        };
        r.register(
            "upstream_requests",
            "Upstream tries by endpoint and outcome class",
            m.upstream_requests.clone(),
        );
        r.register(
            "upstream_latency_seconds",
            "Upstream try latency to response headers",
            m.upstream_latency.clone(),
        );
        r.register(
            "endpoint_active_requests",
            "In-flight requests per endpoint",
            m.endpoint_active.clone(),
        );
        r.register(
            "endpoint_healthy",
            "1 when the endpoint is healthy and not ejected",
            m.endpoint_healthy.clone(),
        );
        r.register(
            "endpoint_ejections",
            "Passive outlier ejections",
            m.endpoint_ejections.clone(),
        );
        r.register(
            "downstream_responses",
            "Responses sent to clients by pool and status class",
            m.downstream_responses.clone(),
        );
        r.register(
            "downstream_latency_seconds",
            "Client-observed latency per pool",
            m.downstream_latency.clone(),
        );
        r.register("retries", "Retries issued", m.retries.clone());
        r.register(
            "retry_budget_exhausted",
            "Retries denied by the retry budget",
            m.budget_exhausted.clone(),
        );
        r.register(
            "breaker_rejections",
            "Requests rejected by an open circuit breaker",
            m.breaker_rejections.clone(),
        );
        r.register(
            "overload_rejections",
            "Requests rejected by overload protection",
            m.overload_rejections.clone(),
        );
        r.register(
            "shed_requests",
            "Requests refused by priority-aware load shedding, by pool, priority and reason",
            m.shed_requests.clone(),
        );
        r.register(
            "adaptive_concurrency_limit",
            "Adaptive concurrency limit in force per pool",
            m.adaptive_concurrency_limit.clone(),
        );
        r.register(
            "process_cpu_utilization_percent",
            "Process CPU utilization over the load-shedding window, percent of the CPUs available",
            m.cpu_utilization_percent.clone(),
        );
        r.register(
            "listener_active_connections",
            "Open client connections",
            m.listener_connections.clone(),
        );
        r.register(
            "listener_connections",
            "Accepted client connections",
            m.listener_accepted.clone(),
        );
        r.register(
            "listener_closed_connections",
            "Client connections closed by the gateway: timeouts and evictions",
            m.listener_closes.clone(),
        );
        r.register(
            "cache_requests",
            "Cache look-ups on cached routes by result",
            m.cache_requests.clone(),
        );
        r.register(
            "cache_stores",
            "Responses stored in route caches",
            m.cache_stores.clone(),
        );
        r.register(
            "cache_evictions",
            "Entries evicted from route caches (LRU, size or entry bound)",
            m.cache_evictions.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes held by route caches",
            m.cache_bytes.clone(),
        );
        r.register(
            "cache_entries",
            "Entries held by route caches",
            m.cache_entries.clone(),
        );
        r.register(
            "hedges",
            "Hedged tries: sent, won, denied by the retry budget",
            m.hedges.clone(),
        );
        r.register(
            "fallback_responses",
            "Responses answered by a backup pool instead of the primary",
            m.fallback_responses.clone(),
        );
        r.register(
            "zone_requests",
            "Endpoint selections of zone-aware pools by locality (local or remote zone)",
            m.zone_requests.clone(),
        );
        r.register(
            "pool_endpoints",
            "Endpoints of a pool",
            m.pool_endpoints.clone(),
        );
        r.register(
            "pool_available_endpoints",
            "Healthy, not ejected endpoints of a pool",
            m.pool_available_endpoints.clone(),
        );
        r.register(
            "pool_available",
            "1 when the pool has an available endpoint and its breaker is not open",
            m.pool_available.clone(),
        );
        r.register(
            "pool_in_flight_requests",
            "Requests in flight to a pool (bulkhead use)",
            m.pool_in_flight.clone(),
        );
        r.register(
            "pool_max_concurrent_requests",
            "Bulkhead size of a pool (max_concurrent_requests)",
            m.pool_max_concurrent.clone(),
        );
        *m.registry.lock().unwrap() = r;
        Arc::new(m)
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let r = self.registry.lock().unwrap();
        let _ = prometheus_client::encoding::text::encode(&mut s, &r);
        s
    }
}

/// Status class label for a status code.
pub fn class_of(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
