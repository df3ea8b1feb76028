//! Routing table: host + path prefix → priority tiers of pools.
//!
//! A [`Runtime`] is an immutable snapshot built from one validated
//! [`Config`]; live reconfiguration builds a new one (reusing pools, and
//! their endpoints, by name) and swaps it atomically. Requests already
//! routed keep their snapshot until they finish.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, RouteConfig};
use crate::layers::cache::ResponseCache;
use crate::layers::hedge::LatencyWindow;
use crate::layers::ratelimit::RateLimiter;
use crate::metrics::Metrics;
use crate::pool::Pool;

/// Host matcher.
#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    Exact(String),
    Suffix(String),
}

impl HostMatch {
    fn new(h: Option<&str>) -> HostMatch {
        match h.map(|h| h.trim().to_ascii_lowercase()) {
            None => HostMatch::Any,
            Some(h) if h.is_empty() || h == "*" => HostMatch::Any,
            Some(h) => match h.strip_prefix("*.") {
                Some(s) => HostMatch::Suffix(format!(".{s}")),
                None => HostMatch::Exact(h),
            },
        }
    }
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
            HostMatch::Suffix(s) => {
                host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }
}

/// A compiled route.
pub(crate) struct Route {
    pub cfg: RouteConfig,
    host: HostMatch,
    /// `[primary, backups...]`.
    pub tiers: Vec<Arc<Pool>>,
    pub limiter: Arc<RateLimiter>,
    /// The route's response cache (`cache` table), kept across live
    /// reconfiguration like the limiter.
    pub cache: Option<Arc<ResponseCache>>,
    /// Recent try latencies (hedge delay percentile).
    pub latency: Arc<LatencyWindow>,
}

/// One immutable routing snapshot.
pub(crate) struct Runtime {
    pub config: Config,
    pub routes: Vec<Route>,
    pub pools: HashMap<String, Arc<Pool>>,
}

fn route_key(r: &RouteConfig) -> String {
    format!("{:?}|{}", r.host, r.path_prefix)
}

impl Runtime {
    /// Build from a validated config, reusing pools and limiter state of `prev`.
    pub fn build(config: Config, prev: Option<&Runtime>, metrics: &Arc<Metrics>) -> Runtime {
        let mut pools = HashMap::new();
        for pc in &config.pools {
            // Zone-aware balancing needs the gateway's own zone per pool.
            let pc = &pc.with_gateway_zone(config.zone.as_deref());
            let pool = match prev.and_then(|p| p.pools.get(&pc.name)) {
                Some(p) => {
                    p.update(pc.clone());
                    p.clone()
                }
                None => Pool::new(pc.clone(), metrics),
            };
            pools.insert(pc.name.clone(), pool);
        }
        if let Some(prev) = prev {
            for (name, p) in &prev.pools {
                if !pools.contains_key(name) {
                    p.retire();
                }
            }
        }
        let prev_limiters: HashMap<String, Arc<RateLimiter>> = prev
            .map(|p| {
                p.routes
                    .iter()
                    .map(|r| (route_key(&r.cfg), r.limiter.clone()))
                    .collect()
            })
            .unwrap_or_default();
        type RouteState = (Option<Arc<ResponseCache>>, Arc<LatencyWindow>);
        let prev_state: HashMap<String, RouteState> = prev
            .map(|p| {
                p.routes
                    .iter()
                    .map(|r| (route_key(&r.cfg), (r.cache.clone(), r.latency.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let routes = config
            .routes
            .iter()
            .map(|rc| {
                let primary = pools[&rc.pool].clone();
                let mut tiers = vec![primary.clone()];
                for b in &primary.cfg().backups {
                    tiers.push(pools[b].clone());
                }
                let (old_cache, latency) =
                    prev_state.get(&route_key(rc)).cloned().unwrap_or_default();
                // A cache survives reconfiguration; its new bounds apply
                // from the next store on.
                let cache = rc.cache.as_ref().map(|_| old_cache.unwrap_or_default());
                Route {
                    cache,
                    latency,
                    host: HostMatch::new(rc.host.as_deref()),
                    limiter: prev_limiters
                        .get(&route_key(rc))
                        .cloned()
                        .unwrap_or_default(),
                    cfg: rc.clone(),
                    tiers,
                }
            })
            .collect();
        Runtime {
            config,
            routes,
            pools,
        }
    }

    /// First route matching `host` (lowercase, no port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && path.starts_with(&r.cfg.path_prefix))
    }

    /// Tiers for a pool name (tcp listeners).
    pub fn tiers_for(&self, pool: &str) -> Option<Vec<Arc<Pool>>> {
        let p = self.pools.get(pool)?.clone();
        let mut t = vec![p.clone()];
        for b in &p.cfg().backups {
            t.push(self.pools.get(b)?.clone());
        }
        Some(t)
    }

    /// Refresh every pool's gauges (before metrics are encoded).
    pub fn refresh_pool_gauges(&self) {
        for p in self.pools.values() {
            p.set_gauges();
        }
        let mut usage: HashMap<&str, (usize, u64)> = HashMap::new();
        for r in &self.routes {
            if let Some(c) = &r.cache {
                let (n, b) = c.usage();
                let u = usage.entry(r.cfg.pool.as_str()).or_default();
                u.0 += n;
                u.1 += b;
            }
        }
        for (pool, (n, b)) in usage {
            let Some(m) = self.pools.get(pool).map(|p| &p.metrics) else {
                continue;
            };
            let l = crate::metrics::PoolLabels {
                pool: pool.to_string(),
            };
            m.cache_entries.get_or_create(&l).set(n as i64);
            m.cache_bytes.get_or_create(&l).set(b as i64);
        }
    }

    /// Stop all pools (gateway shutdown).
    pub fn retire_all(&self) {
        for p in self.pools.values() {
            p.retire();
        }
    }
}
