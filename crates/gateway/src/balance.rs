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
}

impl Set {
    pub fn new(eps: Vec<Arc<Endpoint>>, cfg: &PoolConfig) -> Set {
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
        }
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

/// Pick an endpoint of `set`, never one in `ctx.exclude`.
pub(crate) fn pick(set: &Set, cfg: &PoolConfig, ctx: &PickCtx<'_>) -> Option<Arc<Endpoint>> {
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

    #[test]
    fn ring_remap_is_near_minimal() {
        let f = remap_fraction(10, 3, 20_000, HashMethod::Ring);
        eprintln!("ring n=10 remapped={f:.4} ideal=0.1");
        assert!(f > 0.05 && f <= 0.15, "f={f}");
    }
}
