//! Upstream pools: endpoint membership, cached candidate sets, per-pool
//! layer state (admission, retry budget, breaker) and the upstream HTTP client.
//!
//! Membership changes (live reconfiguration) keep endpoints by address, so
//! their health state, statistics and pooled connections survive; removed
//! endpoints are marked draining: never selected again, in-flight requests
//! finish, and their idle connections expire.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use prometheus_client::metrics::counter::Counter;

use crate::balance::{self, PickCtx, Set};
use crate::config::PoolConfig;
use crate::endpoint::{now_ms, Endpoint};
use crate::layers::admission::Admission;
use crate::layers::breaker::Breaker;
use crate::layers::retry::RetryBudget;
use crate::metrics::{Metrics, PoolLabels};

use crate::upstream::{build_client, UpstreamClient};
pub use crate::upstream::{BoxError, ProxyBody};

/// Candidate sets derived from the membership at one availability epoch.
pub(crate) struct Snapshot {
    epoch: u64,
    next_expiry_ms: u64,
    pub healthy: Set,
    pub all: Set,
}

/// Cached per-pool counters.
pub(crate) struct PoolMetrics {
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub breaker_rejections: Counter,
    /// Downstream responses by class index (1xx..5xx).
    pub downstream: [Counter; 5],
    pub downstream_latency: prometheus_client::metrics::histogram::Histogram,
}

/// An upstream pool.
pub struct Pool {
    /// Pool name.
    pub name: String,
    cfg: RwLock<Arc<PoolConfig>>,
    members: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    epoch: Arc<AtomicU64>,
    cache: RwLock<Option<Arc<Snapshot>>>,
    pub(crate) rr: AtomicUsize,
    /// Rotation of hedge picks, apart from `rr`: a hedge taking a turn of
    /// `rr` would shift the rotation of first tries (with two endpoints,
    /// every first try would land on the slow one that gets hedged).
    pub(crate) hedge_rr: AtomicUsize,
    pub(crate) admission: Arc<Admission>,
    pub(crate) budget: RetryBudget,
    pub(crate) breaker: Breaker,
    client: RwLock<Arc<UpstreamClient>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pm: PoolMetrics,
}

fn client_settings_equal(a: &PoolConfig, b: &PoolConfig) -> bool {
    a.protocol == b.protocol
        && a.connect_timeout_ms == b.connect_timeout_ms
        && a.idle_connection_timeout_ms == b.idle_connection_timeout_ms
        && a.max_idle_connections_per_endpoint == b.max_idle_connections_per_endpoint
        && a.tls == b.tls
}

impl Pool {
    pub(crate) fn new(cfg: PoolConfig, metrics: &Arc<Metrics>) -> Arc<Pool> {
        let l = PoolLabels {
            pool: cfg.name.clone(),
        };
        let name = cfg.name.clone();
        let pool = Arc::new(Pool {
            name: cfg.name.clone(),
            client: RwLock::new(Arc::new(build_client(&cfg))),
            cfg: RwLock::new(Arc::new(cfg)),
            members: RwLock::new(Arc::new(Vec::new())),
            epoch: Arc::new(AtomicU64::new(1)),
            cache: RwLock::new(None),
            rr: AtomicUsize::new(0),
            hedge_rr: AtomicUsize::new(0),
            admission: Arc::new(Admission::default()),
            budget: RetryBudget::default(),
            breaker: Breaker::default(),
            metrics: metrics.clone(),
            pm: PoolMetrics {
                retries: metrics.retries.get_or_create(&l).clone(),
                budget_exhausted: metrics.budget_exhausted.get_or_create(&l).clone(),
                breaker_rejections: metrics.breaker_rejections.get_or_create(&l).clone(),
                downstream: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| {
                    let l = crate::metrics::PoolClassLabels {
                        pool: name.clone(),
                        class: c.into(),
                    };
                    metrics.downstream_responses.get_or_create(&l).clone()
                }),
                downstream_latency: metrics.downstream_latency.get_or_create(&l).clone(),
            },
        });
        let cfg = pool.cfg();
        pool.sync_members(&cfg);
        pool
    }

    /// Current configuration.
    pub fn cfg(&self) -> Arc<PoolConfig> {
        self.cfg.read().unwrap().clone()
    }

    /// Current (non-draining) endpoints.
    pub fn members(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.members.read().unwrap().clone()
    }

    pub(crate) fn client(&self) -> Arc<UpstreamClient> {
        self.client.read().unwrap().clone()
    }

    /// Apply a new configuration of the same pool (live reconfiguration).
    pub(crate) fn update(self: &Arc<Self>, cfg: PoolConfig) {
        let old = self.cfg();
        if !client_settings_equal(&old, &cfg) {
            *self.client.write().unwrap() = Arc::new(build_client(&cfg));
        }
        let cfg = Arc::new(cfg);
        *self.cfg.write().unwrap() = cfg.clone();
        self.sync_members(&cfg);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    fn sync_members(self: &Arc<Self>, cfg: &PoolConfig) {
        let cur = self.members();
        let mut by_addr: HashMap<SocketAddr, Arc<Endpoint>> =
            cur.iter().map(|e| (e.addr, e.clone())).collect();
        let mut next = Vec::with_capacity(cfg.endpoints.len());
        for e in &cfg.endpoints {
            let addr = e.socket_addr().expect("validated");
            match by_addr.remove(&addr) {
                Some(ep) => {
                    ep.set_weight(e.weight());
                    next.push(ep);
                }
                None => {
                    let ep = Endpoint::new(
                        &self.name,
                        addr,
                        e.weight(),
                        self.epoch.clone(),
                        &self.metrics,
                    );
                    crate::health::spawn_checker(
                        Arc::downgrade(self) as std::sync::Weak<dyn crate::health::CheckTarget>,
                        ep.clone(),
                    );
                    next.push(ep);
                }
            }
        }
        for (_, gone) in by_addr {
            gone.mark_removed();
        }
        *self.members.write().unwrap() = Arc::new(next);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Mark every endpoint removed (pool deleted or gateway stopped).
    pub(crate) fn retire(&self) {
        for e in self.members().iter() {
            e.mark_removed();
        }
    }

    /// Set the pool's gauges (`pool_endpoints`, `pool_available_endpoints`,
    /// `pool_available`, `pool_in_flight_requests`,
    /// `pool_max_concurrent_requests`) from its current state; called when
    /// metrics are read, so they are right even when no request flows.
    pub(crate) fn set_gauges(&self) {
        let l = PoolLabels {
            pool: self.name.clone(),
        };
        let now = now_ms();
        let members = self.members();
        let up = members.iter().filter(|e| e.is_available(now)).count();
        let m = &self.metrics;
        m.pool_endpoints.get_or_create(&l).set(members.len() as i64);
        m.pool_available_endpoints.get_or_create(&l).set(up as i64);
        let breaker_open =
            self.cfg().circuit_breaker.is_some() && self.breaker.state_name() == "open";
        m.pool_available
            .get_or_create(&l)
            .set(i64::from(up > 0 && !breaker_open));
        m.pool_in_flight
            .get_or_create(&l)
            .set(self.admission.in_flight() as i64);
        m.pool_max_concurrent
            .get_or_create(&l)
            .set(self.cfg().max_concurrent_requests as i64);
    }

    /// Candidate sets for the current availability epoch.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        let now = now_ms();
        let epoch = self.epoch.load(Ordering::Acquire);
        if let Some(s) = self.cache.read().unwrap().as_ref() {
            if s.epoch == epoch && (s.next_expiry_ms == 0 || now < s.next_expiry_ms) {
                return s.clone();
            }
        }
        let cfg = self.cfg();
        let members = self.members();
        let healthy: Vec<_> = members
            .iter()
            .filter(|e| e.is_available(now))
            .cloned()
            .collect();
        let next_expiry_ms = members
            .iter()
            .map(|e| e.ejected_until())
            .filter(|t| *t > now)
            .min()
            .unwrap_or(0);
        for e in members.iter() {
            e.metrics.healthy.set(e.is_available(now) as i64);
        }
        let snap = Arc::new(Snapshot {
            epoch,
            next_expiry_ms,
            healthy: Set::new(healthy, &cfg),
            all: Set::new(members.iter().cloned().collect(), &cfg),
        });
        *self.cache.write().unwrap() = Some(snap.clone());
        snap
    }
}

/// Outcome of endpoint selection across priority tiers.
pub(crate) struct Selected {
    pub endpoint: Arc<Endpoint>,
    pub pool: Arc<Pool>,
}

/// Select an endpoint over priority tiers `[primary, backups...]`.
///
/// A tier is used when it has a healthy endpoint not yet tried; inside that
/// tier, when the healthy share is below `panic_threshold_percent`, all its
/// endpoints are candidates (panic mode). When no tier has a healthy
/// endpoint and the primary allows panic mode, all primary endpoints are used.
pub(crate) fn select(
    tiers: &[Arc<Pool>],
    hash_key: u64,
    exclude: &[Arc<Endpoint>],
) -> Option<Selected> {
    select_turn(tiers, hash_key, exclude, false)
}

/// [`select`] for a hedge: the same rules, with the pools' hedge rotation.
pub(crate) fn select_hedge(
    tiers: &[Arc<Pool>],
    hash_key: u64,
    exclude: &[Arc<Endpoint>],
) -> Option<Selected> {
    select_turn(tiers, hash_key, exclude, true)
}

fn select_turn(
    tiers: &[Arc<Pool>],
    hash_key: u64,
    exclude: &[Arc<Endpoint>],
    hedge: bool,
) -> Option<Selected> {
    fn rotation(p: &Pool, hedge: bool) -> &AtomicUsize {
        if hedge {
            &p.hedge_rr
        } else {
            &p.rr
        }
    }
    let now = now_ms();
    for pool in tiers {
        let snap = pool.snapshot();
        let cfg = pool.cfg();
        if snap.healthy.eps.is_empty() {
            continue;
        }
        let ctx = PickCtx {
            hash_key,
            exclude,
            now,
            rr: rotation(pool, hedge),
        };
        let panic = cfg.panic_threshold_percent > 0
            && snap.healthy.eps.len() * 100
                < cfg.panic_threshold_percent as usize * snap.all.eps.len();
        let set = if panic { &snap.all } else { &snap.healthy };
        if let Some((e, locality)) = balance::pick_locality(set, &cfg, &ctx) {
            if let Some(l) = locality {
                pool.metrics
                    .zone_requests
                    .get_or_create(&crate::metrics::ZoneLabels {
                        pool: pool.name.clone(),
                        locality: l.label().to_string(),
                    })
                    .inc();
            }
            return Some(Selected {
                endpoint: e,
                pool: pool.clone(),
            });
        }
        if panic {
            continue;
        }
    }
    let primary = tiers.first()?;
    let cfg = primary.cfg();
    if cfg.panic_threshold_percent == 0 {
        return None;
    }
    let snap = primary.snapshot();
    let ctx = PickCtx {
        hash_key,
        exclude,
        now,
        rr: rotation(primary, hedge),
    };
    balance::pick(&snap.all, &cfg, &ctx).map(|e| Selected {
        endpoint: e,
        pool: primary.clone(),
    })
}

/// Health checks read the pool's current check settings and client through
/// this (health.rs does not know pools).
impl crate::health::CheckTarget for Pool {
    fn health_check(&self) -> Option<crate::config::HealthCheckConfig> {
        self.cfg().health_check.clone()
    }
    fn client(&self) -> Arc<UpstreamClient> {
        Pool::client(self)
    }
}
