//! CAD OSE: the Contextual Anomaly Detector, Open Source Edition (Mikhail
//! Smirnov, 2016; 3rd on NAB's full corpus with 69.9), re-implemented from
//! the published algorithm, with an online value range and a bounded context
//! memory.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::Detector;

/// Most contexts one [`Cad`] keeps (default parameters). When the memory is
/// full, the least recently activated quarter is forgotten (see
/// [`Cad`]). Together with the semi-context tables this bounds the state to
/// about [`CAD_MAX_BYTES`].
pub const MAX_CONTEXTS: usize = 512;

/// Upper bound of [`Cad::memory_bytes`] with default parameters (checked by
/// a test over a long series): contexts (24 B each), left semi-contexts
/// (≤ 18 facts each) with their right-context lists and the key index, the
/// warm-up buffer (freed after warm-up) and the rebasing ring.
pub const CAD_MAX_BYTES: usize = 128 * 1024;

/// Bits of the quantised value beyond which out-of-range values saturate
/// (a value at most `2⁶ − 1` steps above the range, or below it).
const MAX_SENSOR_BITS: u32 = 6;
/// The fact set when the value is below the range.
const NEG_FACT: u16 = 1 << (2 * MAX_SENSOR_BITS);

/// Parameters of [`Cad`]. The algorithm's own parameters keep NAB's
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CadParams {
    /// A raw score at or above this starts a rest period (NAB: 0.75).
    pub base_threshold: f64,
    /// Samples after a raw score ≥ `base_threshold` during which 0 is
    /// returned (NAB: probationary period / 5; 120 ≈ 600 / 5).
    pub rest_period: usize,
    /// Longest crossed left semi-context that may form a new context (7).
    pub max_left_semi_contexts_len: usize,
    /// Active contexts fed back as "neuron" facts (15).
    pub max_active_neurons: usize,
    /// Bits of the quantised value (3: 8 levels over the range).
    pub num_norm_value_bits: u32,
    /// Samples used to learn the value range before scoring; they are then
    /// replayed through the context memory (scores 0 meanwhile).
    pub warmup: usize,
    /// Most contexts kept (see [`MAX_CONTEXTS`]).
    pub max_contexts: usize,
    /// Rebase: when a value falls outside the range, widen the range past
    /// it and re-learn the contexts by replaying the last `warmup` samples
    /// (kept in a ring). The value itself is scored before, on the old
    /// range.
    pub rebase: bool,
    /// The range is padded by this fraction of its width on each side
    /// after warm-up, and on the side of a new extreme when rebasing.
    pub margin: f64,
}

impl Default for CadParams {
    fn default() -> Self {
        CadParams {
            base_threshold: 0.75,
            rest_period: 120,
            max_left_semi_contexts_len: 7,
            max_active_neurons: 15,
            num_norm_value_bits: 3,
            warmup: 300,
            max_contexts: MAX_CONTEXTS,
            rebase: true,
            margin: 0.5,
        }
    }
}

type Fixed = BuildHasherDefault<DefaultHasher>;

#[derive(Debug, Clone, Copy)]
struct Ctx {
    left: u32,
    right: u32,
    count: u32,
    uid: u32,
    last: u32,
    zero: bool,
}

#[derive(Debug, Clone, Default)]
struct LeftSemi {
    /// Sensor facts (bit i = fact i).
    mask: u16,
    /// Neuron facts: uids of contexts, sorted.
    neurons: Vec<u32>,
    /// (right semi-context, context) pairs.
    rights: Vec<(u32, u32)>,
}

/// A potential new context: left sensor mask, range in `pot_neurons`, right
/// sensor mask.
#[derive(Debug, Clone, Copy)]
struct Pot {
    lmask: u16,
    start: u32,
    len: u32,
    rmask: u16,
}

/// The context memory and one step of CAD (facts in, raw score out).
#[derive(Debug, Clone)]
pub(crate) struct CadCore {
    max_left: usize,
    max_active: usize,
    max_contexts: usize,
    ctxs: Vec<Ctx>,
    lefts: Vec<LeftSemi>,
    /// Hash of a left semi-context's facts → its index (open addressing
    /// on the hash: equal hashes with other facts probe hash + 1, …).
    left_index: HashMap<u64, u32, Fixed>,
    /// Neuron fact → left semi-contexts containing it.
    neuron_index: HashMap<u32, Vec<u32>, Fixed>,
    /// Left semi-contexts without neuron facts.
    mask_only: Vec<u32>,
    /// Per left semi-context: step stamp and neuron hits of the fast path.
    stamp: Vec<u32>,
    hits: Vec<u8>,
    touched: Vec<u32>,
    rights: Vec<u16>,
    /// The left facts group of the previous step (sensor mask, neurons).
    group_mask: u16,
    group_neurons: Vec<u32>,
    next_uid: u32,
    clock: u32,
    // Scratch, kept to avoid allocating per step.
    active: Vec<(u32, u32)>,
    pots: Vec<Pot>,
    pot_neurons: Vec<u32>,
    new_neurons: Vec<u32>,
}

fn intersect_count(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

fn intersect_into(a: &[u32], b: &[u32], out: &mut Vec<u32>) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
}

impl CadCore {
    pub(crate) fn new(max_left: usize, max_active: usize, max_contexts: usize) -> CadCore {
        CadCore {
            max_left,
            max_active,
            max_contexts: max_contexts.max(8),
            ctxs: Vec::new(),
            lefts: Vec::new(),
            left_index: HashMap::default(),
            neuron_index: HashMap::default(),
            mask_only: Vec::new(),
            stamp: Vec::new(),
            hits: Vec::new(),
            touched: Vec::new(),
            rights: Vec::new(),
            group_mask: 0,
            group_neurons: Vec::new(),
            next_uid: 0,
            clock: 0,
            active: Vec::new(),
            pots: Vec::new(),
            pot_neurons: Vec::new(),
            new_neurons: Vec::new(),
        }
    }

    /// Forgets every context (keeps the allocations).
    pub(crate) fn clear(&mut self) {
        self.ctxs.clear();
        self.lefts.clear();
        self.left_index.clear();
        self.neuron_index.clear();
        self.mask_only.clear();
        self.rights.clear();
        self.group_mask = 0;
        self.group_neurons.clear();
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        let lefts: usize = self
            .lefts
            .iter()
            .map(|l| l.neurons.capacity() * 4 + l.rights.capacity() * 8)
            .sum();
        // hashbrown: one control byte per bucket, ~8/7 buckets per
        // capacity.
        let neuron_lists: usize = self.neuron_index.values().map(|v| v.capacity() * 4).sum();
        let buckets = |cap: usize, entry: usize| cap * 8 / 7 * (entry + 1);
        self.ctxs.capacity() * std::mem::size_of::<Ctx>()
            + self.lefts.capacity() * std::mem::size_of::<LeftSemi>()
            + lefts
            + buckets(self.left_index.capacity(), 16)
            + buckets(self.neuron_index.capacity(), 32)
            + neuron_lists
            + self.mask_only.capacity() * 4
            + self.stamp.capacity() * 4
            + self.hits.capacity()
            + self.touched.capacity() * 4
            + self.rights.capacity() * 2
            + self.group_neurons.capacity() * 4
            + self.active.capacity() * 8
            + self.pots.capacity() * std::mem::size_of::<Pot>()
            + self.pot_neurons.capacity() * 4
            + self.new_neurons.capacity() * 4
    }

    /// Number of contexts held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ctxs.len()
    }

    fn right_id(&mut self, mask: u16) -> u32 {
        match self.rights.iter().position(|&m| m == mask) {
            Some(i) => i as u32,
            None => {
                self.rights.push(mask);
                (self.rights.len() - 1) as u32
            }
        }
    }

    fn left_id(&mut self, mask: u16, neurons: &[u32]) -> u32 {
        let mut h = u64::from(mask).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for &n in neurons {
            h = (h.rotate_left(23) ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        while let Some(&i) = self.left_index.get(&h) {
            let l = &self.lefts[i as usize];
            if l.mask == mask && l.neurons == neurons {
                return i;
            }
            h = h.wrapping_add(1);
        }
        let i = self.lefts.len() as u32;
        self.lefts.push(LeftSemi {
            mask,
            neurons: neurons.to_vec(),
            rights: Vec::new(),
        });
        self.left_index.insert(h, i);
        if neurons.is_empty() {
            self.mask_only.push(i);
        }
        for &n in neurons {
            self.neuron_index.entry(n).or_default().push(i);
        }
        self.stamp.push(0);
        self.hits.push(0);
        i
    }

    /// Finds or creates the context (left facts, right facts). Returns
    /// (created, index). `zero` marks a zero-level context (formed directly
    /// from consecutive inputs).
    fn get_or_insert(
        &mut self,
        lmask: u16,
        lneurons: &[u32],
        rmask: u16,
        zero: bool,
    ) -> (bool, u32) {
        if self.ctxs.len() >= self.max_contexts {
            self.compact();
        }
        let li = self.left_id(lmask, lneurons);
        let ri = self.right_id(rmask);
        if let Some(&(_, c)) = self.lefts[li as usize].rights.iter().find(|p| p.0 == ri) {
            if zero {
                self.ctxs[c as usize].zero = true;
            }
            return (false, c);
        }
        let c = self.ctxs.len() as u32;
        self.ctxs.push(Ctx {
            left: li,
            right: ri,
            count: 0,
            uid: self.next_uid,
            last: self.clock,
            zero,
        });
        self.next_uid = self.next_uid.wrapping_add(1);
        self.lefts[li as usize].rights.push((ri, c));
        (true, c)
    }

    /// Keeps the `3/4 · max_contexts` most recently activated (or created)
    /// contexts and rebuilds the tables. Semi-contexts that mention a
    /// forgotten context as a neuron fact stay valid: that fact just never
    /// fires again.
    fn compact(&mut self) {
        let keep = self.max_contexts * 3 / 4;
        let mut order: Vec<u32> = (0..self.ctxs.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (a, b) = (&self.ctxs[a as usize], &self.ctxs[b as usize]);
            b.last.cmp(&a.last).then(b.uid.cmp(&a.uid))
        });
        order.truncate(keep);
        order.sort_unstable_by_key(|&c| self.ctxs[c as usize].uid);
        let old_ctxs = std::mem::take(&mut self.ctxs);
        let old_lefts = std::mem::take(&mut self.lefts);
        let old_rights = std::mem::take(&mut self.rights);
        self.left_index.clear();
        self.neuron_index.clear();
        self.mask_only.clear();
        self.stamp.clear();
        self.hits.clear();
        self.ctxs.reserve(self.max_contexts);
        for c in order {
            let old = old_ctxs[c as usize];
            let l = &old_lefts[old.left as usize];
            let li = self.left_id(l.mask, &l.neurons);
            let ri = self.right_id(old_rights[old.right as usize]);
            let ni = self.ctxs.len() as u32;
            self.ctxs.push(Ctx {
                left: li,
                right: ri,
                ..old
            });
            self.lefts[li as usize].rights.push((ri, ni));
        }
    }

    /// One CAD step on the sensor facts `sens` of the current value; returns
    /// the raw anomaly score `(1 − predicted + added) / 2`.
    pub(crate) fn step(&mut self, sens: u16) -> f64 {
        self.clock = self.clock.wrapping_add(1);
        let has_group = self.group_mask != 0 || !self.group_neurons.is_empty();
        // 1. The zero-level context (previous left facts group → current
        //    sensor facts); new or already known?
        let mut new_ctx = None;
        if has_group && sens != 0 {
            let neurons = std::mem::take(&mut self.group_neurons);
            let (created, c) = self.get_or_insert(self.group_mask, &neurons, sens, true);
            self.group_neurons = neurons;
            if created {
                new_ctx = Some(c);
            }
        }
        let new_flag = new_ctx.is_some();
        // 2. Contexts whose left semi-context was fully predicted by the
        //    previous group: those whose right semi-context is fully present
        //    now are active; on a new pattern, crossings are candidates.
        let (gm, gn) = (self.group_mask, &self.group_neurons);
        let mut selected = 0usize;
        self.active.clear();
        self.pots.clear();
        self.pot_neurons.clear();
        if !new_flag {
            // Fast path: no candidates to form, so only the left
            // semi-contexts fully inside the previous group matter; find
            // them through the neuron index (same result as the scan below).
            let stamp = self.clock;
            self.touched.clear();
            for n in gn {
                if let Some(list) = self.neuron_index.get(n) {
                    for &li in list {
                        let i = li as usize;
                        if self.stamp[i] != stamp {
                            self.stamp[i] = stamp;
                            self.hits[i] = 0;
                            self.touched.push(li);
                        }
                        self.hits[i] = self.hits[i].saturating_add(1);
                    }
                }
            }
            for &li in self.touched.iter().chain(&self.mask_only) {
                let l = &self.lefts[li as usize];
                if l.mask & gm != l.mask
                    || usize::from(self.hits[li as usize]) != l.neurons.len()
                        && !l.neurons.is_empty()
                {
                    continue;
                }
                for &(ri, ci) in &l.rights {
                    selected += 1;
                    let rm = self.rights[ri as usize];
                    if rm & sens == rm {
                        let ctx = &mut self.ctxs[ci as usize];
                        ctx.count += 1;
                        ctx.last = self.clock;
                        self.active.push((ctx.count, ctx.uid));
                    }
                }
            }
        }
        for l in self
            .lefts
            .iter()
            .take(if new_flag { usize::MAX } else { 0 })
        {
            let cm = l.mask & gm;
            let cn = if l.neurons.is_empty() {
                0
            } else {
                intersect_count(&l.neurons, gn)
            };
            let crossed = cm.count_ones() as usize + cn;
            if crossed == 0 {
                continue;
            }
            let full = crossed == l.mask.count_ones() as usize + l.neurons.len();
            let may_grow = new_flag && crossed <= self.max_left;
            let mut pot_start = None;
            for &(ri, ci) in &l.rights {
                if Some(ci) == new_ctx {
                    continue;
                }
                let rm = self.rights[ri as usize];
                let rc = rm & sens;
                let ctx = &mut self.ctxs[ci as usize];
                if full {
                    selected += 1;
                    if rc != 0 && rc == rm {
                        ctx.count += 1;
                        ctx.last = self.clock;
                        self.active.push((ctx.count, ctx.uid));
                        continue;
                    }
                }
                if rc != 0 && ctx.zero && may_grow {
                    let (start, len) = *pot_start.get_or_insert_with(|| {
                        let s = self.pot_neurons.len();
                        intersect_into(&l.neurons, gn, &mut self.pot_neurons);
                        (s as u32, (self.pot_neurons.len() - s) as u32)
                    });
                    self.pots.push(Pot {
                        lmask: cm,
                        start,
                        len,
                        rmask: rc,
                    });
                }
            }
        }
        let predicted = if selected > 0 {
            self.active.len() as f64 / selected as f64
        } else {
            0.0
        };
        // 3. The most activated contexts become the next group's neurons.
        self.active.sort_unstable();
        let skip = self.active.len().saturating_sub(self.max_active);
        self.new_neurons.clear();
        self.new_neurons
            .extend(self.active[skip..].iter().map(|&(_, uid)| uid));
        self.new_neurons.sort_unstable();
        // 4. Learn the candidate contexts (deduplicated).
        let mut added = 0.0;
        if new_flag {
            let pn = &self.pot_neurons;
            let key = |p: &Pot| {
                (
                    p.lmask,
                    &pn[p.start as usize..(p.start + p.len) as usize],
                    p.rmask,
                )
            };
            self.pots.sort_by(|a, b| key(a).cmp(&key(b)));
            self.pots.dedup_by(|a, b| key(a) == key(b));
            let zero_key = (self.group_mask, &self.group_neurons[..], sens);
            let zero_in = self.pots.iter().any(|p| key(p) == zero_key);
            let uniq = self.pots.len() + usize::from(!zero_in);
            let pots = std::mem::take(&mut self.pots);
            let pot_neurons = std::mem::take(&mut self.pot_neurons);
            let mut num_new = 1; // the zero-level context
            for p in &pots {
                let ns = &pot_neurons[p.start as usize..(p.start + p.len) as usize];
                if self.get_or_insert(p.lmask, ns, p.rmask, false).0 {
                    num_new += 1;
                }
            }
            self.pots = pots;
            self.pot_neurons = pot_neurons;
            added = num_new as f64 / uniq as f64;
        }
        self.group_mask = sens;
        std::mem::swap(&mut self.group_neurons, &mut self.new_neurons);
        ((1.0 - predicted + added) / 2.0).clamp(0.0, 1.0)
    }
}

/// Sensor facts of a quantised value `n` (steps above the range's low end):
/// bit `s` of `|n|` gives fact `2s + bit`, over at least `bits` bits (as CAD
/// OSE's binary encoding), saturating at [`MAX_SENSOR_BITS`] bits; values
/// below the range also carry [`NEG_FACT`].
fn sensor_facts(n: i64, bits: u32) -> u16 {
    let cap = (1i64 << MAX_SENSOR_BITS) - 1;
    let m = n.unsigned_abs().min(cap as u64);
    let width = bits.max(64 - m.leading_zeros()).min(MAX_SENSOR_BITS);
    let mut mask = 0u16;
    for s in 0..width {
        let bit = ((m >> s) & 1) as u32;
        mask |= 1 << (2 * s + bit);
    }
    if n < 0 {
        mask |= NEG_FACT;
    }
    mask
}

/// CAD OSE ("Contextual Anomaly Detector, Open Source Edition", M. Smirnov,
/// 2016), online.
///
/// Each value is normalised to the learned range `[lo, hi]` and quantised to
/// `2^bits` levels (3 bits: 8 levels); its binary digits are *facts*. A
/// *context* pairs a left semi-context (facts of the previous step: its
/// sensor facts plus "neuron" facts = the most active contexts of that step)
/// with a right semi-context (the current sensor facts). Each step:
///
/// 1. the zero-level context (previous facts group → current facts) is
///    looked up and created if new;
/// 2. among the stored contexts whose left part was fully present in the
///    previous group ("predicted"), those whose right part is fully present
///    now become active; on a new pattern, partial crossings of length ≤ 7
///    are candidate new contexts;
/// 3. the 15 most often activated active contexts become the neuron facts
///    of the next group;
/// 4. raw score `(1 − active/predicted + new/candidates) / 2`;
/// 5. after a raw score ≥ 0.75, 0 is returned for `rest_period` samples
///    (one report per incident).
///
/// Online range (NAB passes the file's min and max, which is look-ahead):
/// the first `warmup` samples give `[lo, hi]` (their min and max, padded by
/// `margin` of the width on each side), then are replayed through the
/// context memory (score 0 meanwhile). With `rebase`, a value outside the
/// range is scored on the old range (its levels lie beyond the range, up to
/// 63 steps, with a sign fact below: new facts, hence anomalous), then the
/// range is widened past it by `margin` of the new width and the contexts
/// are re-learned by replaying the last `warmup` samples. Each rebase
/// widens the range by at least 5 %, so rebases stay rare (0–4 per NAB
/// file).
///
/// Memory: at most `max_contexts` contexts (the least recently activated
/// quarter is dropped when full) and the `warmup`-sample ring, bounded by
/// [`CAD_MAX_BYTES`] with default parameters. Cost per sample: when the
/// step's pattern is known, the left semi-contexts sharing a neuron fact
/// with the previous step (index); on a new pattern, all left
/// semi-contexts (≤ `max_contexts`); a rebase replays `warmup` samples.
#[derive(Debug, Clone)]
pub struct Cad {
    p: CadParams,
    core: CadCore,
    /// Warm-up samples, then (with `rebase`) the last `warmup` samples.
    buf: Vec<f64>,
    pos: usize,
    lo: f64,
    hi: f64,
    step: f64,
    ready: bool,
    n: u64,
    /// Sample index of the last raw score ≥ `base_threshold` (the history
    /// starts with one, as CAD OSE's).
    last_high: i64,
}

impl Default for Cad {
    fn default() -> Self {
        Cad::new(CadParams::default())
    }
}

impl Cad {
    /// A detector with these parameters.
    pub fn new(p: CadParams) -> Cad {
        assert!(
            (1..=MAX_SENSOR_BITS).contains(&p.num_norm_value_bits),
            "num_norm_value_bits must be in 1..={MAX_SENSOR_BITS}"
        );
        Cad {
            core: CadCore::new(
                p.max_left_semi_contexts_len,
                p.max_active_neurons,
                p.max_contexts,
            ),
            buf: Vec::with_capacity(p.warmup),
            pos: 0,
            lo: 0.0,
            hi: 0.0,
            step: 1.0,
            ready: false,
            n: 0,
            last_high: -1,
            p,
        }
    }

    /// A detector with a fixed range `[min, max]` and no warm-up: NAB's own
    /// setup, which takes the range of the whole file (look-ahead). For
    /// comparison with NAB's published figures only.
    pub fn with_range(p: CadParams, min: f64, max: f64) -> Cad {
        let mut d = Cad::new(CadParams {
            warmup: 0,
            rebase: false,
            ..p
        });
        d.set_range(min, max);
        d.hi = max;
        d.ready = true;
        d
    }

    fn max_bin(&self) -> f64 {
        ((1u64 << self.p.num_norm_value_bits) - 1) as f64
    }

    fn set_range(&mut self, lo: f64, hi: f64) {
        let mut range = hi - lo;
        if range <= 0.0 || !range.is_finite() {
            range = self.max_bin(); // as CAD OSE: one level per unit
        }
        self.lo = lo;
        self.step = range / self.max_bin();
    }

    fn level(&self, x: f64) -> i64 {
        let l = ((x - self.lo) / self.step).floor();
        l.clamp(-1e9, 1e9) as i64
    }

    /// Runs one sample through the memory and the rest period.
    fn score(&mut self, x: f64) -> f64 {
        let raw = self
            .core
            .step(sensor_facts(self.level(x), self.p.num_norm_value_bits));
        let i = self.n as i64;
        self.n += 1;
        let resting = self.last_high >= i - self.p.rest_period as i64;
        if raw >= self.p.base_threshold {
            self.last_high = i;
        }
        if resting {
            0.0
        } else {
            raw
        }
    }

    /// Sets the range to `[lo, hi]` and re-learns the contexts from the
    /// buffered samples (oldest first from `pos`); the rest period is not
    /// touched (the replayed scores are not reported).
    fn rebase_to(&mut self, lo: f64, hi: f64) {
        self.set_range(lo, hi);
        self.hi = hi;
        self.core.clear();
        for k in 0..self.buf.len() {
            let x = self.buf[(self.pos + k) % self.buf.len()];
            self.core
                .step(sensor_facts(self.level(x), self.p.num_norm_value_bits));
        }
    }
}

impl Detector for Cad {
    fn observe(&mut self, _ts: i64, value: f64) -> f64 {
        if !value.is_finite() {
            return 0.0;
        }
        if !self.ready {
            self.buf.push(value);
            if self.buf.len() >= self.p.warmup.max(1) {
                let (lo, hi) = self
                    .buf
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                        (a.min(x), b.max(x))
                    });
                let pad = self.p.margin * (hi - lo);
                self.pos = 0;
                self.set_range(lo - pad, hi + pad);
                self.hi = hi + pad;
                // Replay the warm-up; its scores fill the rest-period
                // history (which starts with a 1, as CAD OSE's).
                for k in 0..self.buf.len() {
                    let x = self.buf[k];
                    self.score(x);
                }
                self.ready = true;
                if !self.p.rebase {
                    self.buf = Vec::new();
                }
            }
            return 0.0;
        }
        let s = self.score(value);
        if self.p.rebase && !self.buf.is_empty() {
            self.buf[self.pos] = value;
            self.pos = (self.pos + 1) % self.buf.len();
            if value < self.lo || value > self.hi {
                // Extend the range past the new extreme by `margin` of the
                // new range, so that the number of rebases stays logarithmic
                // in the total span.
                let (lo, hi) = (self.lo.min(value), self.hi.max(value));
                let pad = self.p.margin.max(0.05) * (hi - lo);
                let lo = if value < self.lo { lo - pad } else { lo };
                let hi = if value > self.hi { hi + pad } else { hi };
                self.rebase_to(lo, hi);
            }
        }
        s
    }
    fn name(&self) -> &'static str {
        "cad"
    }
    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.buf.capacity() * 8 + self.core.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_facts_follow_the_binary_digits() {
        // 5 = 101b over 3 bits: facts 0·2+1, 1·2+0, 2·2+1.
        assert_eq!(sensor_facts(5, 3), (1 << 1) | (1 << 2) | (1 << 5));
        assert_eq!(sensor_facts(0, 3), (1 << 0) | (1 << 2) | (1 << 4));
        // Above the range: a fourth digit.
        assert_eq!(
            sensor_facts(8, 3),
            (1 << 0) | (1 << 2) | (1 << 4) | (1 << 7)
        );
        assert_ne!(sensor_facts(-1, 3), sensor_facts(1, 3));
        assert_eq!(sensor_facts(1_000_000, 3), sensor_facts(63, 3));
    }

    #[test]
    fn a_repeating_pattern_is_learned_and_a_new_one_is_not_predicted() {
        let mut c = CadCore::new(7, 15, MAX_CONTEXTS);
        let pattern = [0i64, 3, 7, 3];
        let mut last = 1.0;
        for i in 0..400 {
            last = c.step(sensor_facts(pattern[i % 4], 3));
        }
        assert!(last < 0.1, "learned pattern scores {last}");
        let novel = c.step(sensor_facts(5, 3));
        assert!(novel > 0.5, "novel value scores {novel}");
    }

    #[test]
    fn the_context_memory_is_capped() {
        let mut c = CadCore::new(7, 15, 64);
        let mut x: u64 = 1;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            c.step(sensor_facts((x >> 61) as i64, 3));
            assert!(c.len() <= 64);
        }
    }
}
