//! Balance layer: picks one endpoint of a candidate set.
//!
//! Algorithms (per pool):
//! * `round-robin` — a shared counter walks the set; weights ignored.
//! * `weighted-round-robin` — smooth weighted round robin: each pick adds
//!   every candidate's effective weight (weight × slow-start factor) to its
//!   current value, picks the largest and subtracts the total from it. The
//!   sequence interleaves (a,a,b,a,c,a,...) rather than bursting.
//! * `least-conn` — fewest in-flight requests; ties broken by a rotating start.
//! * `least-request` — power of two random choices: draw two distinct
//!   candidates, keep the one with the smaller load; load is
//!   `(in_flight + 1) / slow_start_factor`, multiplied by the peak-EWMA latency
//!   when `peak_ewma` is on.
//! * `consistent-hash` — Maglev lookup table (or a ring of virtual nodes)
//!   rebuilt whenever the set changes; a key maps to the same endpoint as long
//!   as it stays in the set. On retry the next table slot / ring point is used.
//! * `random` — weighted random.
//!
//! State machine: stateless except the RR counter and the smooth-WRR current
//! weights, which live in the candidate set and are reset when it is rebuilt
//! (the set is rebuilt whenever an endpoint's availability changes).
//!
//! **Zone-aware routing.** When the pool knows its local zone (the
//! gateway's `zone`, or `zone_routing.local_zone`), `zone_routing.enabled`
//! is on and the pool has endpoints in that zone, a candidate set of
//! available endpoints is split into *local* (same zone) and *remote* (every
//! other zone, or no zone) halves, each balanced with the pool's algorithm:
//!
//! ```text
//! local_available / local_total ≥ min_local_healthy_percent / 100
//!     ─▶ every request goes to the local half               (share = 1)
//! otherwise
//!     ─▶ a request goes local with probability
//!        share = (local_available / local_total) / (min_local_healthy_percent / 100),
//!        else to the remote half (balanced over all of its endpoints, so
//!        spread over the other zones in proportion to their available endpoints)
//! local_available = 0 ─▶ everything remote                  (share = 0)
//! ```
//!
//! `local_total` counts the local zone's configured endpoints, available or
//! not. The rule keeps the load of each available local endpoint at most
//! `1 / min_local_healthy_percent` times its share when the whole zone is
//! up (with 70 %: ≤ 1.43×), and moves the excess to other zones in
//! proportion, as Envoy's zone-aware routing does (Envoy derives the local
//! share from the fleet's zone distribution; here every zone is assumed to
//! receive traffic in proportion to its endpoints, so the threshold is the
//! operator's). The draw is random, except for `consistent-hash`, where it
//! comes from the request's hash key so a key keeps its zone. A half with
//! no candidate left (all tried) falls back to the other half, so retries
//! cross zones. The split is not applied to the set of *all* endpoints that
//! panic mode balances over (as in Envoy: no zone preference in panic).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::config::{Algorithm, HashConfig, HashMethod, PoolConfig};
use crate::endpoint::Endpoint;

/// A candidate set with the derived lookup structures.
pub(crate) struct Set {
    pub eps: Vec<Arc<Endpoint>>,
    hash: Option<HashTable>,
    swrr: Mutex<Vec<i64>>,
    /// The local/remote split of zone-aware routing (None: no zone preference).
    zones: Option<Box<ZoneSplit>>,
}

/// Zone-aware split of a candidate set (see the module documentation).
struct ZoneSplit {
    local: Set,
    remote: Set,
    /// Probability that a request goes to `local` first, in [0, 1].
    local_share: f64,
}

/// The share of requests kept in the local zone: 1 while at least
/// `min_local_healthy_percent` of the zone's `local_total` endpoints are
/// available, else proportionally less (0 when none is).
pub fn local_zone_share(
    local_available: usize,
    local_total: usize,
    min_local_healthy_percent: u32,
) -> f64 {
    if local_total == 0 || local_available == 0 {
        return 0.0;
    }
    let available = local_available as f64 / local_total as f64;
    let min = f64::from(min_local_healthy_percent.clamp(1, 100)) / 100.0;
    (available / min).min(1.0)
}

impl Set {
    pub fn new(eps: Vec<Arc<Endpoint>>, cfg: &PoolConfig) -> Set {
        let zones = ZoneSplit::build(&eps, cfg).map(Box::new);
        let mut s = Set::plain(eps, cfg);
        s.zones = zones;
        s
    }

    fn plain(eps: Vec<Arc<Endpoint>>, cfg: &PoolConfig) -> Set {
        let hash = if cfg.algorithm == Algorithm::ConsistentHash && !eps.is_empty() {
            Some(HashTable::build(&eps, &cfg.hash))
        } else {
            None
        };
        let n = eps.len();
        Set {
            eps,
            hash,
            swrr: Mutex::new(vec![0; n]),
            zones: None,
        }
    }
}

impl ZoneSplit {
    fn build(eps: &[Arc<Endpoint>], cfg: &PoolConfig) -> Option<ZoneSplit> {
        let zr = &cfg.zone_routing;
        let local = zr.local_zone.as_deref().filter(|_| zr.enabled)?;
        let zone_of: std::collections::HashMap<std::net::SocketAddr, Option<&str>> = cfg
            .endpoints
            .iter()
            .filter_map(|e| Some((e.socket_addr().ok()?, e.zone())))
            .collect();
        let local_total = zone_of.values().filter(|z| **z == Some(local)).count();
        if local_total == 0 {
            return None;
        }
        // The set of all endpoints (panic mode) holds unavailable ones: no
        // zone preference there.
        let now = crate::endpoint::now_ms();
        if eps.iter().any(|e| !e.is_available(now)) {
            return None;
        }
        let (l, r): (Vec<_>, Vec<_>) = eps
            .iter()
            .cloned()
            .partition(|e| zone_of.get(&e.addr).copied().flatten() == Some(local));
        Some(ZoneSplit {
            local_share: local_zone_share(l.len(), local_total, zr.min_local_healthy_percent),
            local: Set::plain(l, cfg),
            remote: Set::plain(r, cfg),
        })
    }
}

/// Inputs of one pick.
pub(crate) struct PickCtx<'a> {
    pub hash_key: u64,
    pub exclude: &'a [Arc<Endpoint>],
    pub now: u64,
    pub rr: &'a AtomicUsize,
}

impl PickCtx<'_> {
    fn excluded(&self, e: &Arc<Endpoint>) -> bool {
        self.exclude.iter().any(|x| Arc::ptr_eq(x, e))
    }
}

/// Which half of a zone-aware split a pick came from (metric
/// `gateway_zone_requests_total{pool,locality}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// The pool's local zone.
    Local,
    /// Any other zone (or an endpoint without a zone).
    Remote,
}

impl Locality {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Locality::Local => "local",
            Locality::Remote => "remote",
        }
    }
}

/// Pick an endpoint of `set`, never one in `ctx.exclude`.
pub(crate) fn pick(set: &Set, cfg: &PoolConfig, ctx: &PickCtx<'_>) -> Option<Arc<Endpoint>> {
    pick_locality(set, cfg, ctx).map(|(e, _)| e)
}

/// [`pick`], also telling which zone half the endpoint came from (None: the
/// set has no zone-aware split).
pub(crate) fn pick_locality(
    set: &Set,
    cfg: &PoolConfig,
    ctx: &PickCtx<'_>,
) -> Option<(Arc<Endpoint>, Option<Locality>)> {
    if let Some(z) = &set.zones {
        let draw = if cfg.algorithm == Algorithm::ConsistentHash {
            // A key keeps its zone as long as the share does not change.
            (hash64(&ctx.hash_key.to_le_bytes(), 11) >> 11) as f64 / (1u64 << 53) as f64
        } else {
            rand::thread_rng().gen::<f64>()
        };
        let ((first, fl), (second, sl)) = if draw < z.local_share {
            ((&z.local, Locality::Local), (&z.remote, Locality::Remote))
        } else {
            ((&z.remote, Locality::Remote), (&z.local, Locality::Local))
        };
        return pick(first, cfg, ctx)
            .map(|e| (e, Some(fl)))
            .or_else(|| pick(second, cfg, ctx).map(|e| (e, Some(sl))));
    }
    pick_plain(set, cfg, ctx).map(|e| (e, None))
}

/// One pick inside a set, zones aside.
fn pick_plain(set: &Set, cfg: &PoolConfig, ctx: &PickCtx<'_>) -> Option<Arc<Endpoint>> {
    let n = set.eps.len();
    if n == 0 {
        return None;
    }
    match cfg.algorithm {
        Algorithm::RoundRobin => {
            let start = ctx.rr.fetch_add(1, Ordering::Relaxed);
            (0..n)
                .map(|i| &set.eps[(start + i) % n])
                .find(|e| !ctx.excluded(e))
                .cloned()
        }
        Algorithm::WeightedRoundRobin => {
            let mut cur = set.swrr.lock().unwrap();
            let mut total = 0i64;
            let mut best: Option<usize> = None;
            for (i, e) in set.eps.iter().enumerate() {
                if ctx.excluded(e) {
                    continue;
                }
                let w =
                    (e.weight() as f64 * e.slow_start_factor(cfg.slow_start_ms, ctx.now) * 100.0)
                        .round()
                        .max(1.0) as i64;
                cur[i] += w;
                total += w;
                if best.map(|b| cur[i] > cur[b]).unwrap_or(true) {
                    best = Some(i);
                }
            }
            let b = best?;
            cur[b] -= total;
            Some(set.eps[b].clone())
        }
        Algorithm::LeastConn => {
            let start = ctx.rr.fetch_add(1, Ordering::Relaxed);
            let mut best: Option<(&Arc<Endpoint>, usize)> = None;
            for i in 0..n {
                let e = &set.eps[(start + i) % n];
                if ctx.excluded(e) {
                    continue;
                }
                let a = e.active();
                if best.map(|(_, b)| a < b).unwrap_or(true) {
                    best = Some((e, a));
                }
            }
            best.map(|(e, _)| e.clone())
        }
        Algorithm::LeastRequest => {
            let load = |e: &Endpoint| {
                let mut l =
                    (e.active() as f64 + 1.0) / e.slow_start_factor(cfg.slow_start_ms, ctx.now);
                if cfg.peak_ewma {
                    l *= e.ewma_ms(cfg.ewma_decay_ms, ctx.now) + 1.0;
                }
                l
            };
            let allowed: Vec<&Arc<Endpoint>> = if ctx.exclude.is_empty() {
                set.eps.iter().collect()
            } else {
                set.eps.iter().filter(|e| !ctx.excluded(e)).collect()
            };
            match allowed.len() {
                0 => None,
                1 => Some(allowed[0].clone()),
                m => {
                    let mut rng = rand::thread_rng();
                    let a = rng.gen_range(0..m);
                    let mut b = rng.gen_range(0..m - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (ea, eb) = (allowed[a], allowed[b]);
                    Some(if load(ea) <= load(eb) {
                        ea.clone()
                    } else {
                        eb.clone()
                    })
                }
            }
        }
        Algorithm::ConsistentHash => {
            let t = set.hash.as_ref()?;
            t.lookup(ctx.hash_key, |i| !ctx.excluded(&set.eps[i]))
                .map(|i| set.eps[i].clone())
        }
        Algorithm::Random => {
            let weights: Vec<f64> = set
                .eps
                .iter()
                .map(|e| {
                    if ctx.excluded(e) {
                        0.0
                    } else {
                        e.weight() as f64 * e.slow_start_factor(cfg.slow_start_ms, ctx.now)
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total <= 0.0 {
                return None;
            }
            let mut x = rand::thread_rng().gen_range(0.0..total);
            for (i, w) in weights.iter().enumerate() {
                if *w > 0.0 {
                    if x < *w {
                        return Some(set.eps[i].clone());
                    }
                    x -= w;
                }
            }
            weights
                .iter()
                .rposition(|w| *w > 0.0)
                .map(|i| set.eps[i].clone())
        }
    }
}

/// 64-bit FNV-1a followed by a finalizer (splitmix64), seeded.
pub fn hash64(data: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Consistent-hash lookup structure over endpoint indexes.
pub enum HashTable {
    /// Maglev: `table[h % M]` is an endpoint index.
    Maglev(Vec<u32>),
    /// Ring: sorted `(point, endpoint index)`.
    Ring(Vec<(u64, u32)>),
}

impl HashTable {
    pub(crate) fn build(eps: &[Arc<Endpoint>], cfg: &HashConfig) -> HashTable {
        let items: Vec<(String, u32)> = eps
            .iter()
            .map(|e| (e.addr.to_string(), e.weight()))
            .collect();
        Self::build_named(
            &items,
            cfg.method,
            cfg.maglev_table_size,
            cfg.ring_vnodes_per_weight,
        )
    }

    /// Build from `(name, weight)` pairs.
    pub fn build_named(
        items: &[(String, u32)],
        method: HashMethod,
        m: usize,
        vnodes: u32,
    ) -> HashTable {
        match method {
            HashMethod::Maglev => {
                let n = items.len();
                let m64 = m as u64;
                let perms: Vec<(u64, u64)> = items
                    .iter()
                    .map(|(name, _)| {
                        let off = hash64(name.as_bytes(), 1) % m64;
                        let skip = hash64(name.as_bytes(), 2) % (m64 - 1) + 1;
                        (off, skip)
                    })
                    .collect();
                let maxw = items.iter().map(|(_, w)| *w).max().unwrap_or(1) as u64;
                let mut next = vec![0u64; n];
                let mut table = vec![u32::MAX; m];
                let mut filled = 0usize;
                // Weighted Maglev: in each round endpoint i takes a turn when
                // its accumulated credit reaches the max weight.
                let mut credit = vec![0u64; n];
                'outer: loop {
                    for i in 0..n {
                        credit[i] += items[i].1 as u64;
                        if credit[i] < maxw {
                            continue;
                        }
                        credit[i] -= maxw;
                        let (off, skip) = perms[i];
                        loop {
                            let c = ((off + next[i] * skip) % m64) as usize;
                            next[i] += 1;
                            if table[c] == u32::MAX {
                                table[c] = i as u32;
                                filled += 1;
                                break;
                            }
                        }
                        if filled == m {
                            break 'outer;
                        }
                    }
                }
                HashTable::Maglev(table)
            }
            HashMethod::Ring => {
                let mut ring = Vec::new();
                for (i, (name, w)) in items.iter().enumerate() {
                    for v in 0..(vnodes as u64 * *w as u64) {
                        let key = format!("{name}#{v}");
                        ring.push((hash64(key.as_bytes(), 7), i as u32));
                    }
                }
                ring.sort_unstable();
                HashTable::Ring(ring)
            }
        }
    }

    /// First index (in probe order for `key`) accepted by `ok`.
    pub fn lookup(&self, key: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            HashTable::Maglev(t) => {
                let m = t.len();
                let start = (key % m as u64) as usize;
                (0..m).map(|i| t[(start + i) % m] as usize).find(|i| ok(*i))
            }
            HashTable::Ring(r) => {
                if r.is_empty() {
                    return None;
                }
                let start = r.partition_point(|(p, _)| *p < key);
                (0..r.len())
                    .map(|i| r[(start + i) % r.len()].1 as usize)
                    .find(|i| ok(*i))
            }
        }
    }
}

/// Fraction of `keys` hash keys whose endpoint changes when endpoint `removed`
/// leaves a set of `n` equally weighted endpoints (used by tests and docs).
pub fn remap_fraction(n: usize, removed: usize, keys: u64, method: HashMethod) -> f64 {
    let names: Vec<(String, u32)> = (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect();
    let before = HashTable::build_named(&names, method, 65_537, 160);
    let mut after_names = names.clone();
    after_names.remove(removed);
    let after = HashTable::build_named(&after_names, method, 65_537, 160);
    let mut moved = 0u64;
    for k in 0..keys {
        let h = hash64(&k.to_le_bytes(), 0);
        let b = &names[before.lookup(h, |_| true).unwrap()].0;
        let a = &after_names[after.lookup(h, |_| true).unwrap()].0;
        if a != b {
            moved += 1;
        }
    }
    moved as f64 / keys as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_remap_is_near_minimal() {
        for n in [5usize, 10] {
            let f = remap_fraction(n, 2, 20_000, HashMethod::Maglev);
            let ideal = 1.0 / n as f64;
            eprintln!("maglev n={n} remapped={f:.4} ideal={ideal:.4}");
            assert!(f >= ideal * 0.9 && f <= ideal * 1.3, "n={n} f={f}");
        }
    }

    fn zoned_pool(local: &str) -> (PoolConfig, Vec<Arc<Endpoint>>) {
        use crate::config::EndpointConfig;
        let metrics = crate::metrics::Metrics::new();
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut cfg = PoolConfig {
            name: "p".into(),
            ..Default::default()
        };
        cfg.zone_routing.local_zone = Some(local.into());
        let mut eps = Vec::new();
        for (i, z) in ["a", "a", "b", "b"].iter().enumerate() {
            let addr: std::net::SocketAddr = format!("10.0.0.{i}:80").parse().unwrap();
            cfg.endpoints.push(EndpointConfig::Weighted {
                address: addr.to_string(),
                weight: 1,
                zone: Some(z.to_string()),
            });
            eps.push(Endpoint::new("p", addr, 1, epoch.clone(), &metrics));
        }
        (cfg, eps)
    }

    fn local_picks(set: &Set, cfg: &PoolConfig, exclude: &[Arc<Endpoint>], n: usize) -> usize {
        let rr = AtomicUsize::new(0);
        let ctx = PickCtx {
            hash_key: 0,
            exclude,
            now: crate::endpoint::now_ms(),
            rr: &rr,
        };
        (0..n)
            .filter(|_| match pick(set, cfg, &ctx).unwrap().addr.ip() {
                // 10.0.0.0 and 10.0.0.1 are zone a.
                std::net::IpAddr::V4(ip) => ip.octets()[3] < 2,
                std::net::IpAddr::V6(_) => false,
            })
            .count()
    }

    #[test]
    fn zone_aware_pick_stays_local_then_spills_proportionally() {
        let (cfg, eps) = zoned_pool("a");
        // Whole zone available: every pick local.
        let all = Set::new(eps.clone(), &cfg);
        assert_eq!(local_picks(&all, &cfg, &[], 1000), 1000);
        // One of the two local endpoints gone (50 % < 70 %): about 5/7 local.
        let partial = Set::new(vec![eps[0].clone(), eps[2].clone(), eps[3].clone()], &cfg);
        let l = local_picks(&partial, &cfg, &[], 4000);
        assert!(
            (2600..=3100).contains(&l),
            "local picks {l} of 4000, expected ~2857"
        );
        // No local endpoint available: every pick remote.
        let none = Set::new(eps[2..].to_vec(), &cfg);
        assert_eq!(local_picks(&none, &cfg, &[], 500), 0);
        // Retries cross zones: local endpoints already tried → remote.
        assert_eq!(local_picks(&all, &cfg, &eps[..2], 500), 0);
        // A gateway in a zone without endpoints, or zone routing off: no preference.
        let (cfg_c, eps_c) = zoned_pool("c");
        let l = local_picks(&Set::new(eps_c.clone(), &cfg_c), &cfg_c, &[], 1000);
        assert!((400..=600).contains(&l), "{l}");
        let mut off = cfg.clone();
        off.zone_routing.enabled = false;
        let l = local_picks(&Set::new(eps.clone(), &off), &off, &[], 1000);
        assert!((400..=600).contains(&l), "{l}");
    }

    #[test]
    fn local_zone_share_rule() {
        // Whole zone, or at least the threshold, available: all local.
        assert_eq!(local_zone_share(4, 4, 70), 1.0);
        assert_eq!(local_zone_share(3, 4, 75), 1.0);
        // Below: proportional (2 of 4 = 50 % against 70 % → 5/7 local).
        assert!((local_zone_share(2, 4, 70) - 0.5 / 0.7).abs() < 1e-12);
        assert!((local_zone_share(1, 4, 100) - 0.25).abs() < 1e-12);
        // None available, or no local endpoint configured: all remote.
        assert_eq!(local_zone_share(0, 4, 70), 0.0);
        assert_eq!(local_zone_share(0, 0, 70), 0.0);
    }

    #[test]
    fn ring_remap_is_near_minimal() {
        let f = remap_fraction(10, 3, 20_000, HashMethod::Ring);
        eprintln!("ring n=10 remapped={f:.4} ideal=0.1");
        assert!(f > 0.05 && f <= 0.15, "f={f}");
    }
}
