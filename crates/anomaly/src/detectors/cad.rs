//! CAD OSE: the Contextual Anomaly Detector, Open Source Edition (Mikhail
//! Smirnov, 2016; 3rd on NAB's full corpus with 69.9), re-implemented from
//! the published algorithm, with an online value range and a bounded context
//! memory.

use super::Detector;

/// Most contexts one [`Cad`] keeps (default parameters). When the memory is
/// full, the least recently activated quarter is forgotten (see
/// [`Cad`]). Together with the semi-context tables this bounds the state to
/// about [`CAD_MAX_BYTES`].
pub const MAX_CONTEXTS: usize = 512;

/// Largest accepted `max_contexts` (left semi-contexts, never more than the
/// contexts, are numbered in 16 bits in the caches).
const MAX_CONTEXTS_LIMIT: usize = 1 << 16;

/// Upper bound of [`Cad::memory_bytes`] with default parameters (checked by
/// a test over a long series): contexts (24 B each), left semi-contexts
/// (36-B records, ≤ 18 facts each in a shared pool, a 32-B bitset each),
/// the index by facts and the neuron dictionary (4 KiB each), the cache of
/// predicted contexts (≤ [`WITHIN_CACHE_ENTRIES`] × 2 B), step scratch, the
/// warm-up buffer (freed after warm-up) and the rebasing ring.
pub const CAD_MAX_BYTES: usize = 128 * 1024;

/// Largest accepted `max_active_neurons` (larger values are clamped): the
/// neuron facts a candidate context takes from the previous step's group
/// are a subset of the group's ≤ 32 neurons, held as a 32-bit mask whose
/// rank in the lexicographic order of such subsets fits the 32 middle bits
/// of the candidate's 64-bit sort key (see docs/anomaly.md, "Speed").
pub const MAX_ACTIVE_NEURONS_LIMIT: usize = 32;

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
    /// Active contexts fed back as "neuron" facts (15; at most 32, see
    /// [`MAX_ACTIVE_NEURONS_LIMIT`]).
    pub max_active_neurons: usize,
    /// Bits of the quantised value (3: 8 levels over the range).
    pub num_norm_value_bits: u32,
    /// Samples used to learn the value range before scoring; they are then
    /// replayed through the context memory (scores 0 meanwhile).
    pub warmup: usize,
    /// Most contexts kept (see [`MAX_CONTEXTS`]; at least 8, at most
    /// 65,536: left semi-contexts are numbered in 16 bits).
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

/// Neuron facts (context uids) that get a bit of their own in the left
/// semi-contexts' bitsets, so that testing a left semi-context against the
/// previous step's group (contained? how many facts crossed?) is a few word
/// operations instead of a list merge or a hash look-up per fact. A uid
/// beyond this many (none on NAB, where at most 203 are referenced at once)
/// is still matched exactly, through the sorted fact list, only slower.
/// Slots are reassigned when the memory is compacted.
pub const NEURON_SLOTS: usize = 256;
const NEURON_WORDS: usize = NEURON_SLOTS / 64;
type Bits = [u64; NEURON_WORDS];

/// End of a context list / empty hash slot.
const NONE: u32 = u32::MAX;
/// Empty slot of the neuron dictionary.
const NO_SLOT: u16 = u16::MAX;
/// Multiplier of the owned multiplicative hashes (2⁶⁴ / golden ratio):
/// the tables are keyed by small integers and fact lists this crate
/// produces itself, so no DoS-resistant hasher is needed.
const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Debug, Clone, Copy)]
struct Ctx {
    /// Left semi-context (index in `lefts`).
    left: u32,
    /// Next context with the same left semi-context ([`NONE`] ends it).
    next: u32,
    /// `count << 32 | uid`: activations, then the never-reused id; one
    /// integer orders contexts for the neuron selection.
    key: u64,
    last: u32,
    /// Right semi-context: sensor facts.
    rmask: u16,
    zero: bool,
}

#[derive(Debug, Clone, Copy)]
struct LeftSemi {
    /// Sensor facts (bit i = fact i).
    mask: u16,
    /// Neuron facts: uids of contexts, sorted, in `pool[start..start + len]`.
    start: u32,
    len: u32,
    /// How many of those have no neuron slot (then the bitset is partial
    /// and the sorted list is used).
    unslotted: u32,
    /// First context with this left semi-context (list through
    /// [`Ctx::next`]).
    head: u32,
    /// Whether one of those is a zero-level context (only those form
    /// candidates).
    has_zero: bool,
    /// As a group: the contexts of the left semi-contexts inside it, among
    /// the first `cache_upto` contexts ([`NONE`]: not cached), are
    /// `cache[cache_start..][..cache_len]`.
    cache_upto: u32,
    cache_start: u32,
    cache_len: u32,
    /// High half of the facts' hash, checked before the facts.
    tag: u32,
}

impl LeftSemi {
    fn neurons(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// The context memory and one step of CAD (facts in, raw score out).
///
/// Layout (chosen for speed, see docs/anomaly.md): flat arrays only, no
/// per-context allocation. Contexts of one left semi-context are chained;
/// left semi-contexts keep their neuron facts in one pool and as a bitset
/// over [`NEURON_SLOTS`] dictionary slots; a left semi-context is found by
/// its facts through an open-addressing table with a multiplicative hash.
/// Every step scans the left semi-contexts (≤ `max_contexts`) with word
/// operations.
#[derive(Debug, Clone)]
pub(crate) struct CadCore {
    max_left: usize,
    max_active: usize,
    max_contexts: usize,
    ctxs: Vec<Ctx>,
    lefts: Vec<LeftSemi>,
    /// Per left semi-context: its sensor facts (a dense copy, scanned 64 at
    /// a time).
    lmasks: Vec<u16>,
    /// Per left semi-context: its neuron facts as dictionary slots.
    bits: Vec<Bits>,
    /// One bit per left semi-context: [`LeftSemi::has_zero`], and whether
    /// some neuron fact has no slot (a dense copy for the branch-free
    /// scan of a new pattern, 64 left semi-contexts a word).
    lzero: Vec<u64>,
    lunslotted: Vec<u64>,
    /// Neuron facts of all left semi-contexts, and their slots
    /// ([`NO_SLOT`] for none).
    pool: Vec<u32>,
    pool_slots: Vec<u16>,
    /// Cached lists of the contexts predicted by a group (see
    /// [`LeftSemi::cache_upto`]), at most [`WITHIN_CACHE_ENTRIES`].
    cache: Vec<u16>,
    /// Scratch: the contexts predicted by this step's group, and the left
    /// semi-contexts inside it.
    within: Vec<u16>,
    within_lefts: Vec<u16>,
    /// Scratch: the contexts of `within` that are active.
    hits: Vec<u16>,
    /// Facts hash → left semi-context (linear probing; at most half full:
    /// there are never more left semi-contexts than contexts).
    lindex: Vec<u32>,
    lshift: u32,
    /// Neuron dictionary: uid → slot (linear probing, at most half full).
    dict: Vec<(u32, u16)>,
    dict_len: usize,
    dshift: u32,
    /// The left facts group of the previous step (sensor mask, neurons).
    group_mask: u16,
    group_neurons: Vec<u32>,
    next_uid: u32,
    clock: u32,
    // Scratch, kept to avoid allocating per step.
    /// Active contexts as `count << 32 | uid` (one integer compare orders
    /// them by count, then uid); one entry per context (a context is
    /// visited at most once per step), so it is written without checks.
    active: Vec<u64>,
    /// Candidates as sortable keys `lmask << 48 | rank << 16 | rmask`:
    /// left sensor facts, the [`subset_rank`] of the left neuron facts
    /// (a subset of the group's), right sensor facts; so sorting the keys
    /// sorts the candidates by (left sensor facts, left neuron facts,
    /// right sensor facts) and equal candidates have equal keys.
    pot_keys: Vec<u64>,
    new_neurons: Vec<u32>,
    /// Dictionary slot → position among the previous step's group
    /// neurons (valid for the group's slotted neurons only; set on a new
    /// pattern).
    slot_pos: [u8; NEURON_SLOTS],
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

/// The positions in `b` of the values both sorted lists hold, as a mask
/// (`b` has at most 32 values).
fn intersect_positions(a: &[u32], b: &[u32]) -> u32 {
    let (mut i, mut j, mut mask) = (0, 0, 0u32);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                mask |= 1 << j;
                i += 1;
                j += 1;
            }
        }
    }
    mask
}

/// The rank of the subset `mask` of `n` (≤ 32) sorted values in the
/// lexicographic order of the subsets' sorted value lists (a list before
/// its extensions): `[] < [0] < [0, 1] < [0, 1, 2] < [0, 2] < [1] < …` for
/// `n = 3`. It is the subset's position in a pre-order walk of the tree
/// whose children of a list append one larger value; the subtree of a list
/// ending in position `q` has `2^(n−1−q)` lists. So comparing ranks
/// compares the value lists, without the lists (< 2ⁿ ≤ 2³², a `u32`).
fn subset_rank(mask: u32, n: u32) -> u32 {
    debug_assert!(n as usize <= MAX_ACTIVE_NEURONS_LIMIT);
    debug_assert!(n == 32 || mask >> n == 0);
    let mut rank = 0u64;
    // 2^(n − 1 − previous position); 2^n before the first.
    let mut prev_size = 1u64 << n;
    let mut m = mask;
    while m != 0 {
        let q = m.trailing_zeros();
        m &= m - 1;
        // This list, after the subtrees of the skipped siblings
        // q' in (previous, q), which hold 2^(n−1−q') lists each.
        let size = 1u64 << (n - 1 - q);
        rank += 1 + (prev_size - 2 * size);
        prev_size = size;
    }
    rank as u32
}

/// The subset of `n` (≤ 32) values whose [`subset_rank`] is `rank`.
fn subset_unrank(rank: u32, n: u32) -> u32 {
    let mut r = u64::from(rank);
    let (mut mask, mut q) = (0u32, 0u32);
    while r > 0 {
        r -= 1; // past this list, into its children's subtrees
        loop {
            let size = 1u64 << (n - 1 - q);
            if r < size {
                mask |= 1 << q;
                q += 1;
                break;
            }
            r -= size;
            q += 1;
        }
    }
    mask
}

/// Hash of a left semi-context's facts (the neuron list is a sorted set, so
/// a sum of independently mixed terms suffices; unlike a chained hash it
/// has no serial multiply latency per fact).
fn facts_hash(mask: u16, neurons: &[u32]) -> u64 {
    let mut h = (u64::from(mask) + 1).wrapping_mul(HASH_MUL);
    for &n in neurons {
        h = h.wrapping_add(
            (u64::from(n) ^ 0x5851_f42d_4c95_7f2d).wrapping_mul(0xd6e8_feb8_6659_fd93),
        );
    }
    (h ^ (h >> 31)).wrapping_mul(HASH_MUL)
}

/// The `k` largest values of `v` (moved to its front, in no particular
/// order): a min-heap of `k` (`k` = 15 active neurons of ~75 active
/// contexts per step on NAB; faster than a selection or a sort).
fn top_k(v: &mut [u64], k: usize) -> &[u64] {
    if v.len() <= k {
        return v;
    }
    if k == 0 {
        return &[];
    }
    let (heap, rest) = v.split_at_mut(k);
    for i in (0..k / 2).rev() {
        sift_down(heap, i);
    }
    for &x in rest.iter() {
        if x > heap[0] {
            heap[0] = x;
            sift_down(heap, 0);
        }
    }
    heap
}

/// Restores the min-heap property below `i`.
fn sift_down(h: &mut [u64], mut i: usize) {
    loop {
        let l = 2 * i + 1;
        if l >= h.len() {
            return;
        }
        let r = l + 1;
        let m = if r < h.len() && h[r] < h[l] { r } else { l };
        if h[m] >= h[i] {
            return;
        }
        h.swap(m, i);
        i = m;
    }
}

/// Sorts a short slice (the 15 new neuron facts; a plain insertion sort
/// beats the general sort at this size).
fn insertion_sort(v: &mut [u32]) {
    for i in 1..v.len() {
        let x = v[i];
        let mut j = i;
        while j > 0 && v[j - 1] > x {
            v[j] = v[j - 1];
            j -= 1;
        }
        v[j] = x;
    }
}

/// Most entries (u16 each) of [`Cad`]'s cache of the contexts each group
/// predicts; when full it is dropped and rebuilt as groups recur.
pub const WITHIN_CACHE_ENTRIES: usize = 4096;

/// The per-left-semi-context arrays a scan reads.
struct ScanLists<'a> {
    masks: &'a [u16],
    bits: &'a [Bits],
    lefts: &'a [LeftSemi],
    pool: &'a [u32],
    /// Words of the bitsets in use.
    words: usize,
}

/// Appends to `out` the left semi-contexts in `range` whose facts are all in
/// the group (sensor facts `gm`, neuron facts `gn`, as slots `g`): 64 at a
/// time into a bitmap without a branch per left semi-context, then the
/// unslotted ones are checked on their lists.
fn scan_within(
    t: ScanLists<'_>,
    gm: u16,
    g: &Bits,
    gn: &[u32],
    range: std::ops::Range<usize>,
    out: &mut Vec<u16>,
) {
    let mut base = range.start;
    while base < range.end {
        let end = (base + 64).min(range.end);
        let (masks, bits) = (&t.masks[base..end], &t.bits[base..end]);
        let mut cand = match t.words {
            0 | 1 => within_bitmap::<1>(masks, bits, gm, g),
            2 => within_bitmap::<2>(masks, bits, gm, g),
            3 => within_bitmap::<3>(masks, bits, gm, g),
            _ => within_bitmap::<NEURON_WORDS>(masks, bits, gm, g),
        };
        while cand != 0 {
            let li = base + cand.trailing_zeros() as usize;
            cand &= cand - 1;
            let l = t.lefts[li];
            if l.unslotted == 0 || intersect_count(&t.pool[l.neurons()], gn) == l.len as usize {
                out.push(li as u16);
            }
        }
        base = end;
    }
}

/// `a ⊆ b` as bitsets, over the first `N` words (the dictionary's slots are
/// handed out from 0, so the words past the used slots are 0 everywhere).
fn bits_within<const N: usize>(a: &Bits, b: &Bits) -> bool {
    let mut acc = 0;
    for w in 0..N {
        acc |= a[w] & !b[w];
    }
    acc == 0
}

/// Bitmap of the left semi-contexts `base..base + masks.len()` (≤ 64)
/// whose facts are all in the group (sensor facts `gm`, neuron slots `g`;
/// those with unslotted neurons pass on the bitset and are checked on their
/// list by the caller). No branch per left semi-context.
fn within_bitmap<const N: usize>(masks: &[u16], bits: &[Bits], gm: u16, g: &Bits) -> u64 {
    let mut cand = 0u64;
    for (k, (&m, b)) in masks.iter().zip(bits).enumerate() {
        let within = (m & !gm == 0) & bits_within::<N>(b, g);
        cand |= u64::from(within) << k;
    }
    cand
}

/// Bitmap of the left semi-contexts `base..base + masks.len()` (≤ 64)
/// that a new pattern's scan must look at: those crossed by the group
/// (sensor facts `gm`, neuron slots `g`) that are fully inside it or have
/// a zero-level context (bit in `zero`). The scan's first tests, without a
/// branch per left semi-context (the scan then tests the length of the
/// crossing: a population count, which is a long instruction sequence on
/// the baseline x86-64 target); those with unslotted neurons are added by
/// the caller.
fn new_bitmap<const N: usize>(masks: &[u16], bits: &[Bits], zero: u64, gm: u16, g: &Bits) -> u64 {
    let mut cand = 0u64;
    for (k, (&m, b)) in masks.iter().zip(bits).enumerate() {
        let cm = m & gm;
        let (mut any, mut missing) = (0, 0);
        for w in 0..N {
            any |= b[w] & g[w];
            missing |= b[w] & !g[w];
        }
        let crossing = (cm != 0) | (any != 0);
        let full = (cm == m) & (missing == 0);
        let has_zero = (zero >> k) & 1 != 0;
        cand |= u64::from(crossing & (full | has_zero)) << k;
    }
    cand
}

/// If `hit`, counts an activation of `ctx` at `clock`; returns `hit` as
/// 0 or 1. Branch-free: the flag goes through `black_box` so that the
/// compiler sees a number, not a condition (it would turn the updates into
/// a select and then into a branch, which mispredicts on about a third of
/// the contexts).
fn activate(ctx: &mut Ctx, hit: bool, clock: u32) -> usize {
    let inc = std::hint::black_box(u64::from(hit));
    ctx.key += inc << 32;
    let m = (inc as u32).wrapping_neg();
    ctx.last = (clock & m) | (ctx.last & !m);
    inc as usize
}

/// The `keep` most recently activated (or created) contexts, then the
/// highest uids, as `uid << 32 | index` in uid order (which a compaction
/// keeps).
///
/// As plain integers (no comparator through the contexts): by age, most
/// recent `last` first, then highest uid, of which the first `keep` are
/// selected (not sorted). Contexts are appended with increasing uids and a
/// compaction keeps their order, so the uid order is the index order
/// (unless the 32-bit uids wrapped, then they are sorted). Temporary
/// vectors: one compaction per ~128 new contexts.
fn kept_order(ctxs: &[Ctx], keep: usize) -> Vec<u64> {
    let mut by_age: Vec<u128> = ctxs
        .iter()
        .enumerate()
        .map(|(i, c)| u128::from(!c.last) << 96 | u128::from(!(c.key as u32)) << 64 | i as u128)
        .collect();
    if keep < by_age.len() {
        by_age.select_nth_unstable(keep);
        by_age.truncate(keep);
    }
    let by_index = ctxs
        .windows(2)
        .all(|w| (w[0].key as u32) < (w[1].key as u32));
    if by_index {
        let mut kept = vec![false; ctxs.len()];
        for &k in &by_age {
            kept[k as u32 as usize] = true;
        }
        (0..ctxs.len())
            .filter(|&i| kept[i])
            .map(|i| u64::from(ctxs[i].key as u32) << 32 | i as u64)
            .collect()
    } else {
        let mut order: Vec<u64> = by_age
            .iter()
            .map(|&k| u64::from(!((k >> 64) as u32)) << 32 | (k as u32 as u64))
            .collect();
        order.sort_unstable();
        order
    }
}

/// Counts an activation at `clock` of each context of `list` (all
/// predicted) whose right semi-context is in `sens`, and writes their keys
/// to `active`; returns how many. Those contexts are listed in `hits`
/// first without a branch (about a third of them miss), then counted
/// without a test (through slices, so their bounds stay in registers).
fn count_active(
    ctxs: &mut [Ctx],
    active: &mut [u64],
    hits: &mut [u16],
    list: &[u16],
    sens: u16,
    clock: u32,
) -> usize {
    let mut n_hits = 0;
    for &c in list {
        let rm = ctxs[usize::from(c)].rmask;
        hits[n_hits] = c;
        n_hits += usize::from(rm & sens == rm);
    }
    for (a, &c) in active.iter_mut().zip(&hits[..n_hits]) {
        let ctx = &mut ctxs[usize::from(c)];
        ctx.key += 1 << 32;
        ctx.last = clock;
        *a = ctx.key;
    }
    n_hits
}

/// A power-of-two table of at least `2 · n` slots, and the shift that maps
/// a 64-bit multiplicative hash to a slot (its high bits).
fn table_size(n: usize) -> (usize, u32) {
    let size = (2 * n).next_power_of_two().max(2);
    (size, 64 - size.trailing_zeros())
}

impl CadCore {
    pub(crate) fn new(max_left: usize, max_active: usize, max_contexts: usize) -> CadCore {
        let max_contexts = max_contexts.clamp(8, MAX_CONTEXTS_LIMIT);
        let (lsize, lshift) = table_size(max_contexts);
        let (dsize, dshift) = table_size(NEURON_SLOTS);
        CadCore {
            max_left,
            max_active: max_active.min(MAX_ACTIVE_NEURONS_LIMIT),
            max_contexts,
            ctxs: Vec::new(),
            lefts: Vec::new(),
            lmasks: Vec::new(),
            lzero: Vec::new(),
            lunslotted: Vec::new(),
            bits: Vec::new(),
            pool: Vec::new(),
            pool_slots: Vec::new(),
            cache: Vec::new(),
            within: Vec::new(),
            within_lefts: Vec::new(),
            hits: Vec::new(),
            lindex: vec![NONE; lsize],
            lshift,
            dict: vec![(0, NO_SLOT); dsize],
            dict_len: 0,
            dshift,
            group_mask: 0,
            group_neurons: Vec::new(),
            next_uid: 0,
            clock: 0,
            active: Vec::new(),
            pot_keys: Vec::new(),
            new_neurons: Vec::new(),
            slot_pos: [0; NEURON_SLOTS],
        }
    }

    /// Empties the left semi-context tables (not the contexts).
    fn clear_lefts(&mut self) {
        self.lefts.clear();
        self.lmasks.clear();
        self.lzero.clear();
        self.lunslotted.clear();
        self.bits.clear();
        self.pool.clear();
        self.pool_slots.clear();
        self.cache.clear();
        self.lindex.fill(NONE);
        self.dict.fill((0, NO_SLOT));
        self.dict_len = 0;
    }

    /// Forgets every context (keeps the allocations).
    pub(crate) fn clear(&mut self) {
        self.ctxs.clear();
        self.clear_lefts();
        self.group_mask = 0;
        self.group_neurons.clear();
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.ctxs.capacity() * size_of::<Ctx>()
            + self.lefts.capacity() * size_of::<LeftSemi>()
            + self.lmasks.capacity() * 2
            + (self.lzero.capacity() + self.lunslotted.capacity()) * 8
            + self.bits.capacity() * size_of::<Bits>()
            + self.pool.capacity() * 4
            + self.pool_slots.capacity() * 2
            + self.cache.capacity() * 2
            + self.within.capacity() * 2
            + self.within_lefts.capacity() * 2
            + self.hits.capacity() * 2
            + self.lindex.capacity() * 4
            + self.dict.capacity() * size_of::<(u32, u16)>()
            + self.group_neurons.capacity() * 4
            + self.active.capacity() * 8
            + self.pot_keys.capacity() * 8
            + self.new_neurons.capacity() * 4
    }

    /// Number of contexts held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ctxs.len()
    }

    /// The dictionary slot of neuron `uid`, if it has one.
    fn slot(&self, uid: u32) -> Option<usize> {
        let m = self.dict.len() - 1;
        let mut i = (u64::from(uid).wrapping_mul(HASH_MUL) >> self.dshift) as usize;
        loop {
            let (k, s) = self.dict[i];
            if s == NO_SLOT {
                return None;
            }
            if k == uid {
                return Some(usize::from(s));
            }
            i = (i + 1) & m;
        }
    }

    /// The slot of `uid`, given one if it has none and slots are left.
    fn slot_or_insert(&mut self, uid: u32) -> Option<usize> {
        let m = self.dict.len() - 1;
        let mut i = (u64::from(uid).wrapping_mul(HASH_MUL) >> self.dshift) as usize;
        loop {
            let (k, s) = self.dict[i];
            if s == NO_SLOT {
                break;
            }
            if k == uid {
                return Some(usize::from(s));
            }
            i = (i + 1) & m;
        }
        if self.dict_len >= NEURON_SLOTS {
            return None;
        }
        let s = self.dict_len;
        self.dict[i] = (uid, s as u16);
        self.dict_len += 1;
        Some(s)
    }

    /// The group's neuron facts as a bitset of dictionary slots (facts
    /// without a slot are in no slotted left semi-context).
    fn group_bits(&self) -> Bits {
        let mut g = [0u64; NEURON_WORDS];
        for &n in &self.group_neurons {
            if let Some(s) = self.slot(n) {
                g[s / 64] |= 1 << (s % 64);
            }
        }
        g
    }

    /// [`Self::group_bits`], also noting each slotted group neuron's
    /// position in `slot_pos`.
    fn group_bits_and_slots(&mut self) -> Bits {
        let mut g = [0u64; NEURON_WORDS];
        for i in 0..self.group_neurons.len() {
            if let Some(s) = self.slot(self.group_neurons[i]) {
                g[s / 64] |= 1 << (s % 64);
                self.slot_pos[s] = i as u8;
            }
        }
        g
    }

    fn left_id(&mut self, mask: u16, neurons: &[u32]) -> u32 {
        let h = facts_hash(mask, neurons);
        let tag = (h >> 32) as u32;
        let m = self.lindex.len() - 1;
        let mut i = (h >> self.lshift) as usize;
        loop {
            let li = self.lindex[i];
            if li == NONE {
                break;
            }
            let l = self.lefts[li as usize];
            if l.tag == tag && l.mask == mask && self.pool[l.neurons()] == *neurons {
                return li;
            }
            i = (i + 1) & m;
        }
        let li = self.lefts.len() as u32;
        self.lindex[i] = li;
        self.append_left(mask, neurons, tag);
        li
    }

    /// Adds a left semi-context known not to exist yet (`tag`: the high
    /// half of its facts' hash), with its index entry.
    fn push_left(&mut self, mask: u16, neurons: &[u32], tag: u32) -> u32 {
        let m = self.lindex.len() - 1;
        // The slot is the hash's top bits, which the tag holds.
        let mut i = ((u64::from(tag) << 32) >> self.lshift) as usize;
        while self.lindex[i] != NONE {
            i = (i + 1) & m;
        }
        let li = self.lefts.len() as u32;
        self.lindex[i] = li;
        self.append_left(mask, neurons, tag);
        li
    }

    /// Appends the left semi-context's record, facts and bitset.
    fn append_left(&mut self, mask: u16, neurons: &[u32], tag: u32) {
        let start = self.pool.len() as u32;
        self.pool.extend_from_slice(neurons);
        let mut bits = [0u64; NEURON_WORDS];
        let mut unslotted = 0;
        for &n in neurons {
            match self.slot_or_insert(n) {
                Some(s) => {
                    bits[s / 64] |= 1 << (s % 64);
                    self.pool_slots.push(s as u16);
                }
                None => {
                    unslotted += 1;
                    self.pool_slots.push(NO_SLOT);
                }
            }
        }
        if unslotted > 0 {
            // Partial bitsets are never used: such a left semi-context
            // passes the bitset filters and is checked on its list.
            bits = [0; NEURON_WORDS];
        }
        self.lefts.push(LeftSemi {
            mask,
            start,
            len: neurons.len() as u32,
            unslotted,
            head: NONE,
            has_zero: false,
            cache_upto: NONE,
            cache_start: 0,
            cache_len: 0,
            tag,
        });
        let li = self.lmasks.len();
        self.lmasks.push(mask);
        self.bits.push(bits);
        if li.is_multiple_of(64) {
            self.lzero.push(0);
            self.lunslotted.push(0);
        }
        self.lunslotted[li / 64] |= u64::from(unslotted > 0) << (li % 64);
    }

    /// Notes that left semi-context `li` has a zero-level context.
    fn set_has_zero(&mut self, li: usize) {
        self.lefts[li].has_zero = true;
        self.lzero[li / 64] |= 1 << (li % 64);
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
        self.insert_right(li, rmask, zero)
    }

    /// [`Self::get_or_insert`] once the left semi-context `li` is known
    /// (and the memory has room for one more context).
    fn insert_right(&mut self, li: u32, rmask: u16, zero: bool) -> (bool, u32) {
        let mut c = self.lefts[li as usize].head;
        while c != NONE {
            let ctx = &mut self.ctxs[c as usize];
            if ctx.rmask == rmask {
                if zero {
                    ctx.zero = true;
                    self.set_has_zero(li as usize);
                }
                return (false, c);
            }
            c = ctx.next;
        }
        let c = self.ctxs.len() as u32;
        if zero {
            self.set_has_zero(li as usize);
        }
        let head = &mut self.lefts[li as usize].head;
        self.ctxs.push(Ctx {
            left: li,
            next: *head,
            key: u64::from(self.next_uid),
            last: self.clock,
            rmask,
            zero,
        });
        *head = c;
        self.next_uid = self.next_uid.wrapping_add(1);
        (true, c)
    }

    /// Keeps the `3/4 · max_contexts` most recently activated (or created)
    /// contexts and rebuilds the tables. Semi-contexts that mention a
    /// forgotten context as a neuron fact stay valid: that fact just never
    /// fires again.
    fn compact(&mut self) {
        let keep = self.max_contexts * 3 / 4;
        let order = kept_order(&self.ctxs, keep);
        let old_ctxs = std::mem::replace(&mut self.ctxs, Vec::with_capacity(self.max_contexts));
        let old_lefts = std::mem::replace(&mut self.lefts, Vec::with_capacity(keep + 1));
        let pool_len = self.pool.len();
        let old_pool = std::mem::replace(&mut self.pool, Vec::with_capacity(pool_len));
        self.pool_slots = Vec::with_capacity(pool_len);
        self.clear_lefts();
        // Old left semi-context → new one (they are unique, so a kept one
        // is re-created once, without a look-up by facts).
        let mut remap = vec![NONE; old_lefts.len()];
        for &k in &order {
            let old = old_ctxs[k as u32 as usize];
            let li = match remap[old.left as usize] {
                NONE => {
                    let l = old_lefts[old.left as usize];
                    let li = self.push_left(l.mask, &old_pool[l.neurons()], l.tag);
                    remap[old.left as usize] = li;
                    li
                }
                li => li,
            };
            let ni = self.ctxs.len() as u32;
            if old.zero {
                self.set_has_zero(li as usize);
            }
            let head = &mut self.lefts[li as usize].head;
            self.ctxs.push(Ctx {
                left: li,
                next: *head,
                ..old
            });
            *head = ni;
        }
    }

    /// The arrays [`scan_within`] reads.
    fn scan_lists(&self) -> ScanLists<'_> {
        ScanLists {
            masks: &self.lmasks,
            bits: &self.bits,
            lefts: &self.lefts,
            pool: &self.pool,
            words: self.dict_len.div_ceil(64),
        }
    }

    /// Whether left semi-context `li`'s facts are all in the group
    /// (sensor facts `gm`, neuron slots `g`).
    fn left_within(&self, li: usize, gm: u16, g: &Bits) -> bool {
        let l = self.lefts[li];
        if l.mask & !gm != 0 {
            return false;
        }
        if l.unslotted > 0 {
            intersect_count(&self.pool[l.neurons()], &self.group_neurons) == l.len as usize
        } else {
            bits_within::<NEURON_WORDS>(&self.bits[li], g)
        }
    }

    /// Caches `within` as group `gl`'s list (appended; the old copy is
    /// garbage until the cache is dropped, at the latest when it is full).
    /// False if it does not fit at all.
    fn store_cached(&mut self, gl: u32, within: &[u16]) -> bool {
        if self.cache.len() + within.len() > WITHIN_CACHE_ENTRIES {
            self.cache.clear();
            for l in &mut self.lefts {
                l.cache_upto = NONE;
            }
            if within.len() > WITHIN_CACHE_ENTRIES {
                return false;
            }
        }
        let l = &mut self.lefts[gl as usize];
        l.cache_start = self.cache.len() as u32;
        l.cache_len = within.len() as u32;
        self.cache.extend_from_slice(within);
        true
    }

    /// One CAD step on the sensor facts `sens` of the current value; returns
    /// the raw anomaly score `(1 − predicted + added) / 2`.
    pub(crate) fn step(&mut self, sens: u16) -> f64 {
        self.clock = self.clock.wrapping_add(1);
        let has_group = self.group_mask != 0 || !self.group_neurons.is_empty();
        // 1. The zero-level context (previous left facts group → current
        //    sensor facts); new or already known?
        let mut new_ctx = None;
        let mut group_left = None;
        if has_group && sens != 0 {
            let neurons = std::mem::take(&mut self.group_neurons);
            let (created, c) = self.get_or_insert(self.group_mask, &neurons, sens, true);
            self.group_neurons = neurons;
            group_left = Some(self.ctxs[c as usize].left);
            if created {
                new_ctx = Some(c);
            }
        }
        let new_flag = new_ctx.is_some();
        // 2. Contexts whose left semi-context was fully predicted by the
        //    previous group: those whose right semi-context is fully present
        //    now are active; on a new pattern, crossings are candidates.
        let gm = self.group_mask;
        // On a new pattern: the group's neuron slots (also noted per
        // neuron, to read crossed neuron facts off the bitsets).
        let new_g = if new_flag {
            self.group_bits_and_slots()
        } else {
            [0; NEURON_WORDS]
        };
        let gn = &self.group_neurons;
        let clock = self.clock;
        let mut selected = 0usize;
        // Each context is visited at most once per step.
        if self.active.len() <= self.ctxs.len() {
            self.active.resize(self.ctxs.len() + 1, 0);
        }
        let mut n_active = 0;
        // Candidates, likewise at most one per context.
        let mut n_pots = 0;
        if !new_flag {
            // Known pattern (most steps): no candidates to form, so only
            // the contexts of the left semi-contexts fully inside the
            // previous group matter. The group is itself a left
            // semi-context (that of the zero-level context); the list of
            // those contexts is cached per group and extended with the
            // contexts added since (contexts and their facts only change at
            // a compaction, which drops the cache). On NAB a group recurs
            // within the same compaction period ~96 % of the time.
            let n = self.ctxs.len();
            let mut within = std::mem::take(&mut self.within);
            within.clear();
            let cached = group_left.map(|gl| self.lefts[gl as usize]);
            let (from, r) = match cached {
                Some(l) if l.cache_upto != NONE => (
                    l.cache_upto as usize,
                    l.cache_start as usize..(l.cache_start + l.cache_len) as usize,
                ),
                _ => (0, 0..0),
            };
            if from >= n {
                // Fully cached (most steps): counted in place.
                if self.hits.len() < r.len() {
                    self.hits.resize(r.len(), 0);
                }
                selected = r.len();
                n_active = count_active(
                    &mut self.ctxs,
                    &mut self.active,
                    &mut self.hits,
                    &self.cache[r],
                    sens,
                    clock,
                );
            } else {
                within.extend_from_slice(&self.cache[r]);
                let old = within.len();
                let g = self.group_bits();
                if from == 0 {
                    // Not cached: scan the left semi-contexts, take their
                    // contexts.
                    let mut lefts = std::mem::take(&mut self.within_lefts);
                    lefts.clear();
                    scan_within(
                        self.scan_lists(),
                        gm,
                        &g,
                        gn,
                        0..self.lefts.len(),
                        &mut lefts,
                    );
                    for &li in &lefts {
                        let mut c = self.lefts[usize::from(li)].head;
                        while c != NONE {
                            within.push(c as u16);
                            c = self.ctxs[c as usize].next;
                        }
                    }
                    self.within_lefts = lefts;
                } else {
                    for c in from..n {
                        let li = self.ctxs[c].left as usize;
                        if self.left_within(li, gm, &g) {
                            within.push(c as u16);
                        }
                    }
                }
                if let Some(gl) = group_left {
                    let stored = if within.len() > old || from == 0 {
                        self.store_cached(gl, &within)
                    } else {
                        true // no new ones: the cached list stands
                    };
                    self.lefts[gl as usize].cache_upto = if stored { n as u32 } else { NONE };
                }
                if self.hits.len() < within.len() {
                    self.hits.resize(within.len(), 0);
                }
                n_active = count_active(
                    &mut self.ctxs,
                    &mut self.active,
                    &mut self.hits,
                    &within,
                    sens,
                    clock,
                );
                selected = within.len();
            }
            self.within = within;
        } else {
            let g = new_g;
            let words = self.dict_len.div_ceil(64);
            if self.pot_keys.len() <= self.ctxs.len() {
                self.pot_keys.resize(self.ctxs.len() + 1, 0);
            }
            let new_ci = new_ctx.unwrap_or(NONE);
            // The left semi-contexts that may count or form candidates,
            // found 64 at a time without a branch per left semi-context
            // (the tests below decide exactly).
            let mut lefts = std::mem::take(&mut self.within_lefts);
            lefts.clear();
            let n_lefts = self.lefts.len();
            let mut base = 0;
            while base < n_lefts {
                let end = (base + 64).min(n_lefts);
                let (masks, bits) = (&self.lmasks[base..end], &self.bits[base..end]);
                let zero = self.lzero[base / 64];
                let mut cand = match words {
                    0 | 1 => new_bitmap::<1>(masks, bits, zero, gm, &g),
                    2 => new_bitmap::<2>(masks, bits, zero, gm, &g),
                    3 => new_bitmap::<3>(masks, bits, zero, gm, &g),
                    _ => new_bitmap::<NEURON_WORDS>(masks, bits, zero, gm, &g),
                };
                cand |= self.lunslotted[base / 64];
                while cand != 0 {
                    lefts.push((base + cand.trailing_zeros() as usize) as u16);
                    cand &= cand - 1;
                }
                base = end;
            }
            for &li in &lefts {
                let li = usize::from(li);
                let l = self.lefts[li];
                let cm = l.mask & gm;
                // Facts crossed (in the group), all of them (full), and
                // whether the crossing may form a candidate; counted only
                // when needed.
                let (full, may_grow) = if l.unslotted == 0 {
                    let b = &self.bits[li][..words];
                    let (mut any, mut missing) = (0, 0);
                    for (x, y) in b.iter().zip(&g) {
                        any |= x & y;
                        missing |= x & !y;
                    }
                    if cm == 0 && any == 0 {
                        continue;
                    }
                    let full = cm == l.mask && missing == 0;
                    if !full && !l.has_zero {
                        continue; // nothing to count, nothing to form
                    }
                    // The crossing's length matters for candidates only,
                    // which need a zero-level context.
                    let may_grow = l.has_zero && {
                        let cn: u32 = b.iter().zip(&g).map(|(x, y)| (x & y).count_ones()).sum();
                        (cm.count_ones() + cn) as usize <= self.max_left
                    };
                    (full, may_grow)
                } else {
                    let cn = intersect_count(&self.pool[l.neurons()], gn);
                    let crossed = cm.count_ones() as usize + cn;
                    if crossed == 0 {
                        continue;
                    }
                    let full = crossed == l.mask.count_ones() as usize + l.len as usize;
                    (full, crossed <= self.max_left)
                };
                if !full && !may_grow {
                    continue; // nothing to count, nothing to form
                }
                // Candidates form only from zero-level contexts (so the
                // left semi-context has one) with a short enough crossing.
                let grow = may_grow && l.has_zero;
                // Sort-key bits of the crossed facts (see `pot_keys`).
                let facts_bits = if grow {
                    // The crossed neuron facts, as positions in the group
                    // (≤ `max_left` of them).
                    let crossed = if l.unslotted == 0 {
                        let b = &self.bits[li];
                        let mut mask = 0u32;
                        for w in 0..words {
                            let mut x = b[w] & g[w];
                            while x != 0 {
                                let slot = w * 64 + x.trailing_zeros() as usize;
                                mask |= 1 << self.slot_pos[slot];
                                x &= x - 1;
                            }
                        }
                        mask
                    } else {
                        intersect_positions(&self.pool[l.neurons()], gn)
                    };
                    u64::from(cm) << 48 | u64::from(subset_rank(crossed, gn.len() as u32)) << 16
                } else {
                    0
                };
                // Branch-free over the contexts: the counts, activations
                // and candidates are written unconditionally and kept by
                // advancing their lengths (the tests are data-dependent).
                let (ctxs, active, pots) = (
                    &mut self.ctxs[..],
                    &mut self.active[..],
                    &mut self.pot_keys[..],
                );
                let mut c = l.head;
                while c != NONE {
                    let fresh = c != new_ci;
                    let ctx = &mut ctxs[c as usize];
                    c = ctx.next;
                    let rm = ctx.rmask;
                    let rc = rm & sens;
                    let hit = full & fresh & (rc != 0) & (rc == rm);
                    selected += usize::from(full & fresh);
                    n_active += activate(ctx, hit, clock);
                    active[n_active - usize::from(hit)] = ctx.key;
                    pots[n_pots] = facts_bits | u64::from(rc);
                    n_pots += usize::from(!hit & fresh & (rc != 0) & ctx.zero & grow);
                }
            }
            self.within_lefts = lefts;
        }
        let predicted = if selected > 0 {
            n_active as f64 / selected as f64
        } else {
            0.0
        };
        // 3. The most activated contexts (by count, then uid: a strict
        //    order, so selecting the top ones equals sorting) become the
        //    next group's neurons.
        let top = top_k(&mut self.active[..n_active], self.max_active);
        self.new_neurons.clear();
        self.new_neurons.extend(top.iter().map(|&k| k as u32));
        insertion_sort(&mut self.new_neurons);
        // 4. Learn the candidate contexts (deduplicated), in the order of
        //    (left sensor facts, left neuron facts, right sensor facts).
        let mut added = 0.0;
        if new_flag {
            let keys = &mut self.pot_keys[..n_pots];
            keys.sort_unstable();
            let mut n_keys = 0; // deduplicated in place
            for i in 0..keys.len() {
                if i == 0 || keys[i] != keys[i - 1] {
                    keys[n_keys] = keys[i];
                    n_keys += 1;
                }
            }
            let n = self.group_neurons.len() as u32;
            // The zero-level context: the whole group → the current facts.
            let all = if n == 32 { u32::MAX } else { (1 << n) - 1 };
            let zero_key = u64::from(self.group_mask) << 48
                | u64::from(subset_rank(all, n)) << 16
                | u64::from(sens);
            let keys = std::mem::take(&mut self.pot_keys);
            let keys_used = &keys[..n_keys];
            let zero_in = keys_used.contains(&zero_key);
            let uniq = n_keys + usize::from(!zero_in);
            let group = std::mem::take(&mut self.group_neurons);
            let mut ns = [0u32; MAX_ACTIVE_NEURONS_LIMIT];
            let mut num_new = 1; // the zero-level context
                                 // Sorted keys with the same left facts are adjacent: their
                                 // left semi-context is looked up once (again after a
                                 // compaction, which renumbers them).
            let mut last_left: Option<(u64, u32)> = None;
            for &k in keys_used {
                if self.ctxs.len() >= self.max_contexts {
                    self.compact();
                    last_left = None;
                }
                let (facts, rmask) = (k >> 16, k as u16);
                let li = match last_left {
                    Some((f, li)) if f == facts => li,
                    _ => {
                        let (lmask, rank) = ((k >> 48) as u16, (k >> 16) as u32);
                        let mut len = 0;
                        let mut m = subset_unrank(rank, n);
                        while m != 0 {
                            ns[len] = group[m.trailing_zeros() as usize];
                            len += 1;
                            m &= m - 1;
                        }
                        let li = self.left_id(lmask, &ns[..len]);
                        last_left = Some((facts, li));
                        li
                    }
                };
                if self.insert_right(li, rmask, false).0 {
                    num_new += 1;
                }
            }
            self.pot_keys = keys;
            self.group_neurons = group;
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
/// step's pattern is known, the contexts the previous step's group predicts
/// (cached per group; on a miss, a scan of the left semi-contexts with word
/// operations); on a new pattern, all left semi-contexts (≤
/// `max_contexts`); then the 15 most active of the active contexts (a
/// heap); a rebase replays `warmup` samples.
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
    fn subset_ranks_follow_the_order_of_the_value_lists() {
        for n in 0..=6u32 {
            let mut subsets: Vec<(Vec<u32>, u32)> = (0..1u32 << n)
                .map(|m| ((0..n).filter(|&i| m >> i & 1 != 0).collect(), m))
                .collect();
            subsets.sort();
            for (rank, (_, mask)) in subsets.iter().enumerate() {
                assert_eq!(subset_rank(*mask, n), rank as u32, "n {n} mask {mask:b}");
                assert_eq!(subset_unrank(rank as u32, n), *mask);
            }
        }
        // The largest sizes: round trips and order at the extremes.
        for n in [31u32, 32] {
            let all = if n == 32 { u32::MAX } else { (1 << n) - 1 };
            for mask in [0, 1, all, all ^ 1, 1 << (n - 1), 0x5555_5555 & all] {
                assert_eq!(subset_unrank(subset_rank(mask, n), n), mask);
            }
            assert!(subset_rank(all, n) < subset_rank(1 << 1, n));
            assert_eq!(subset_rank(1 << (n - 1), n), u32::MAX >> (32 - n));
        }
    }

    #[test]
    fn kept_order_matches_sorting_by_age_then_uid() {
        let mut x: u64 = 7;
        let mut rnd = move |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        for wrapped in [false, true] {
            for _ in 0..50 {
                let n = 1 + rnd(600) as usize;
                // Increasing uids, or ones that wrap past u32::MAX midway.
                let first = if wrapped {
                    u32::MAX - rnd(n as u64) as u32
                } else {
                    rnd(1000) as u32
                };
                let ctxs: Vec<Ctx> = (0..n)
                    .map(|i| Ctx {
                        left: 0,
                        next: NONE,
                        key: rnd(50) << 32 | u64::from(first.wrapping_add(i as u32 * 2)),
                        last: rnd(40) as u32, // many ties, broken by uid
                        rmask: 1,
                        zero: false,
                    })
                    .collect();
                let keep = rnd(n as u64 + 1) as usize;
                let mut want: Vec<(u32, u32, usize)> = ctxs
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (!c.last, !(c.key as u32), i))
                    .collect();
                want.sort();
                let mut want: Vec<u64> = want[..keep.min(n)]
                    .iter()
                    .map(|&(_, uid, i)| u64::from(!uid) << 32 | i as u64)
                    .collect();
                want.sort();
                assert_eq!(
                    kept_order(&ctxs, keep),
                    want,
                    "n {n} keep {keep} wrapped {wrapped}"
                );
            }
        }
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
