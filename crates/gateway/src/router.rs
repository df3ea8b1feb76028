//! Routing table: host + path prefix → priority tiers of pools.
//!
//! A [`Runtime`] is an immutable snapshot built from one validated
//! [`Config`]; live reconfiguration builds a new one (reusing pools, and
//! their endpoints, by name) and swaps it atomically. Requests already
//! routed keep their snapshot until they finish.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, RouteConfig};
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
        let routes = config
            .routes
            .iter()
            .map(|rc| {
                let primary = pools[&rc.pool].clone();
                let mut tiers = vec![primary.clone()];
                for b in &primary.cfg().backups {
                    tiers.push(pools[b].clone());
                }
                Route {
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

    /// Stop all pools (gateway shutdown).
    pub fn retire_all(&self) {
        for p in self.pools.values() {
            p.retire();
        }
    }
}
