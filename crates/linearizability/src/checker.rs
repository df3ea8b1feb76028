//! Wing–Gong–Lowe linearizability search over a key-value register model.
//!
//! Each key is an independent register, so the history is split per key
//! (P-compositionality: a history is linearizable iff every per-key
//! sub-history is) and every key is searched separately. That turns one
//! exponential search into many small ones.
//!
//! The search keeps the not-yet-linearized operations in a doubly linked
//! list of call/return entries ordered by time. At each point it tries to
//! linearize any operation whose call precedes the first pending return;
//! reaching a return means the owning operation could not be placed, so it
//! backtracks. Configurations already explored — the set of linearized
//! operations plus the register value — are memoised, which is what keeps
//! the search practical on long histories (Lowe's improvement, as used by
//! Porcupine).
//!
//! On top of that, three sound prunings keep a single hot key with 16
//! concurrent clients tractable (each is justified where it is applied):
//! reads are linearized greedily and never branched on; a move that
//! strands pending reads of a value nobody can write again is refused;
//! and an `info` operation is only applied when its effect is wanted by
//! some remaining operation (otherwise it is postponed to the end).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::history::{History, OpData, Operation, Status};

/// Resource limits for a check.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Wall-clock budget for the whole check; `None` means unlimited.
    pub timeout: Option<Duration>,
}

/// Why a key's sub-history is not linearizable.
#[derive(Debug, Clone)]
pub struct Violation {
    pub key: String,
    /// Operations of this key that the checker had to order (after dropping
    /// failed writes/deletes and reads without a result).
    pub total: usize,
    /// Length of the longest prefix that could be linearized.
    pub linearized: usize,
    /// Register value after that prefix (`None` = key absent).
    pub state: Option<String>,
    /// The last few operations of that prefix, oldest first, for context.
    pub prefix_tail: Vec<Operation>,
    /// Operations none of which can be ordered next: the one whose
    /// completion forced backtracking plus the concurrent candidates.
    pub stuck: Vec<Operation>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "key {:?} is not linearizable", self.key)?;
        writeln!(
            f,
            "  longest linearizable prefix: {} of {} operations; register value then: {}",
            self.linearized,
            self.total,
            match &self.state {
                Some(v) => format!("{v:?}"),
                None => "absent".into(),
            }
        )?;
        if !self.prefix_tail.is_empty() {
            writeln!(f, "  last operations of that prefix:")?;
            for op in &self.prefix_tail {
                writeln!(f, "    {op}")?;
            }
        }
        writeln!(f, "  none of these operations can be ordered next:")?;
        for op in &self.stuck {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// Result of checking a whole history.
#[derive(Debug, Clone)]
pub enum Outcome {
    Linearizable,
    /// At least one key is not linearizable (all offending keys, sorted).
    NotLinearizable(Vec<Violation>),
    /// The limit ran out before a decision; `key` is where it happened.
    Unknown {
        key: String,
        checked_keys: usize,
        total_keys: usize,
    },
}

/// Register value, interned: 0 = absent, otherwise index+1 into the value table.
type State = u32;
const ABSENT: State = 0;

/// The model transition of one operation, with values interned.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// ok read: state must equal the value.
    Read(State),
    /// write / delete (ok or info): unconditional.
    Set(State),
    /// ok cas: state must equal `exp`.
    Cas { exp: State, new: State },
    /// info cas: applies if the comparison holds, otherwise is a no-op. A
    /// "matched but never took effect" outcome needs no extra branch because
    /// an info op can always be placed after every other operation.
    MaybeCas { exp: State, new: State },
    /// failed cas: a read asserting state != `exp`.
    NotEqual(State),
}

impl Step {
    /// Pure steps never change the state. An applicable pure candidate can
    /// be linearized right away without losing solutions: moving it to the
    /// front of any valid continuation keeps that continuation valid (it
    /// sees the same state, changes nothing, and no pending operation has
    /// to precede it because its call precedes every pending return). So
    /// the search never branches on reads.
    fn is_pure(self) -> bool {
        matches!(self, Step::Read(_) | Step::NotEqual(_))
    }

    #[inline]
    fn apply(self, s: State) -> Option<State> {
        match self {
            Step::Read(v) => (s == v).then_some(s),
            Step::Set(v) => Some(v),
            Step::Cas { exp, new } => (s == exp).then_some(new),
            Step::MaybeCas { exp, new } => Some(if s == exp { new } else { s }),
            Step::NotEqual(v) => (s != v).then_some(s),
        }
    }
}

/// Checks every key of `history`. Keys are searched in sorted order so the
/// output is deterministic.
pub fn check(history: &History, limits: &Limits) -> Outcome {
    let deadline = limits.timeout.map(|t| Instant::now() + t);
    let mut per_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in &history.ops {
        per_key.entry(op.key.as_str()).or_default().push(op);
    }
    let total_keys = per_key.len();
    let mut violations = Vec::new();
    for (i, (key, ops)) in per_key.into_iter().enumerate() {
        // Checked per key too, so an exhausted budget stops promptly even
        // when every key is small.
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        let result = if expired {
            KeyResult::Timeout
        } else {
            check_key(key, &ops, deadline)
        };
        match result {
            KeyResult::Ok => {}
            KeyResult::Violation(v) => violations.push(*v),
            KeyResult::Timeout => {
                // A violation found so far is a definite answer; report it
                // rather than "unknown".
                if violations.is_empty() {
                    return Outcome::Unknown {
                        key: key.to_string(),
                        checked_keys: i,
                        total_keys,
                    };
                }
                break;
            }
        }
    }
    if violations.is_empty() {
        Outcome::Linearizable
    } else {
        Outcome::NotLinearizable(violations)
    }
}

enum KeyResult {
    Ok,
    Violation(Box<Violation>),
    Timeout,
}

/// The set of linearized operations, kept so that the memo key is small.
///
/// Operations with a known outcome are numbered in call order; at any point
/// of the search all but a window of the most recent ones are linearized,
/// so the bitset is a run of all-ones words followed by a few mixed words.
/// The key stores the length of that run plus the mixed words, instead of
/// the whole bitset (which made a 10k-operation key cost ~1 KiB per memo
/// entry). Info operations may stay unlinearized forever and would stop
/// the run from growing, so they live in a separate, fully stored bitset.
struct Linearized {
    /// Per operation: (is info, bit index within its bitset).
    slot: Vec<(bool, usize)>,
    fin: Vec<u64>,
    inf: Vec<u64>,
    /// Number of leading all-ones words of `fin`.
    full: usize,
    /// `fin[end..]` is all zeros.
    end: usize,
}

impl Linearized {
    fn new(slot: Vec<(bool, usize)>) -> Self {
        let fins = slot.iter().filter(|s| !s.0).count();
        let infs = slot.len() - fins;
        Linearized {
            slot,
            fin: vec![0; fins.div_ceil(64)],
            inf: vec![0; infs.div_ceil(64)],
            full: 0,
            end: 0,
        }
    }

    fn set(&mut self, i: usize) {
        let (info, b) = self.slot[i];
        if info {
            self.inf[b / 64] |= 1 << (b % 64);
            return;
        }
        self.fin[b / 64] |= 1 << (b % 64);
        self.end = self.end.max(b / 64 + 1);
        while self.full < self.fin.len() && self.fin[self.full] == u64::MAX {
            self.full += 1;
        }
    }

    fn clear(&mut self, i: usize) {
        let (info, b) = self.slot[i];
        if info {
            self.inf[b / 64] &= !(1 << (b % 64));
            return;
        }
        self.fin[b / 64] &= !(1 << (b % 64));
        self.full = self.full.min(b / 64);
        while self.end > 0 && self.fin[self.end - 1] == 0 {
            self.end -= 1;
        }
    }

    /// Canonical memo key of (this set, `state`).
    fn key(&self, state: State) -> Box<[u64]> {
        let tail = &self.fin[self.full..self.end.max(self.full)];
        let mut k = Vec::with_capacity(2 + self.inf.len() + tail.len());
        k.push(self.full as u64);
        k.push(state as u64);
        k.extend_from_slice(&self.inf);
        k.extend_from_slice(tail);
        k.into_boxed_slice()
    }
}

struct Interner<'a>(HashMap<&'a str, State>, Vec<&'a str>);

impl<'a> Interner<'a> {
    fn get(&mut self, v: Option<&'a str>) -> State {
        match v {
            None => ABSENT,
            Some(s) => {
                if let Some(id) = self.0.get(s) {
                    return *id;
                }
                self.1.push(s);
                let id = self.1.len() as State;
                self.0.insert(s, id);
                id
            }
        }
    }
    fn name(&self, s: State) -> Option<String> {
        (s != ABSENT).then(|| self.1[s as usize - 1].to_string())
    }
}

/// Per-key search. Node `2i` is the call of op `i`, `2i+1` its return;
/// node `2n` is the list head sentinel and `2n+1` the tail sentinel.
fn check_key(key: &str, all: &[&Operation], deadline: Option<Instant>) -> KeyResult {
    let mut interner = Interner(HashMap::new(), Vec::new());
    let mut ops: Vec<&Operation> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    for op in all {
        let step = match (&op.data, op.status) {
            (OpData::Read { observed }, Status::Ok) => {
                Step::Read(interner.get(observed.as_deref()))
            }
            // A read without a result constrains nothing.
            (OpData::Read { .. }, _) => continue,
            // Failed writes/deletes did not take effect.
            (OpData::Write { .. } | OpData::Delete, Status::Fail) => continue,
            (OpData::Write { value }, _) => Step::Set(interner.get(Some(value))),
            (OpData::Delete, _) => Step::Set(ABSENT),
            (OpData::Cas { expected, new }, st) => {
                let exp = interner.get(expected.as_deref());
                let new = interner.get(Some(new));
                match st {
                    Status::Ok => Step::Cas { exp, new },
                    Status::Info => Step::MaybeCas { exp, new },
                    Status::Fail => Step::NotEqual(exp),
                }
            }
        };
        ops.push(op);
        steps.push(step);
    }
    let n = ops.len();
    if n == 0 {
        return KeyResult::Ok;
    }

    // Order entries by time; on ties, calls sort before returns so that
    // operations touching the same instant count as concurrent (we cannot
    // tell which came first).
    let mut order: Vec<usize> = (0..2 * n).collect();
    let when = |node: usize| -> (i64, u8) {
        let op = ops[node / 2];
        if node.is_multiple_of(2) {
            (op.call, 0)
        } else {
            (op.ret.unwrap_or(i64::MAX), 1)
        }
    };
    order.sort_by_key(|&node| (when(node), node));

    // The list holds calls and returns of operations with a known outcome
    // and only the calls of info operations: those never return, so they
    // never force backtracking, and they may stay unlinearized.
    let head = 2 * n;
    let tail = 2 * n + 1;
    let mut next = vec![0usize; 2 * n + 2];
    let mut prev = vec![0usize; 2 * n + 2];
    let mut last = head;
    for &node in &order {
        if node % 2 == 1 && ops[node / 2].ret.is_none() {
            continue;
        }
        next[last] = node;
        prev[node] = last;
        last = node;
    }
    next[last] = tail;
    prev[tail] = last;

    // Dancing-links removal/restoration: restoring in reverse order of
    // removal puts the list back exactly as it was.
    macro_rules! unlink {
        ($x:expr) => {{
            let x = $x;
            next[prev[x]] = next[x];
            prev[next[x]] = prev[x];
        }};
    }
    macro_rules! relink {
        ($x:expr) => {{
            let x = $x;
            next[prev[x]] = x;
            prev[next[x]] = x;
        }};
    }

    // Operations with an unknown outcome can always be linearized last
    // (their steps never fail), so once only they remain we are done.
    let mut required = ops.iter().filter(|o| o.ret.is_some()).count();
    let mut slot = vec![(false, 0); n];
    let (mut fins, mut infs) = (0, 0);
    for &node in order.iter().filter(|&&node| node % 2 == 0) {
        let i = node / 2;
        slot[i] = if ops[i].ret.is_none() {
            infs += 1;
            (true, infs - 1)
        } else {
            fins += 1;
            (false, fins - 1)
        };
    }
    let mut bits = Linearized::new(slot);
    let mut cache: HashSet<Box<[u64]>> = HashSet::new();
    // Dead-value pruning. `readers[v]`: unlinearized reads of v;
    // `producers[v]`: unlinearized operations able to set the register to
    // v. Moving the state away from v while reads of v remain and nothing
    // can write v again dooms the configuration, so that move is refused
    // at once instead of being discovered (exponentially) later. With
    // unique written values this catches most wrong orderings immediately.
    //
    // `wants[v]`: unlinearized operations that need the state to be v
    // (reads and cas expecting v); `unequal[v]`: unlinearized failed cas
    // needing the state to differ from v. An info operation is only worth
    // applying if its new value is wanted or it moves the state away from
    // a value some failed cas must not see; otherwise it can be postponed
    // to the very end (where it is harmless) without losing solutions.
    let nvals = interner.1.len() + 1;
    let mut readers = vec![0u32; nvals];
    let mut producers = vec![0u32; nvals];
    let mut wants = vec![0u32; nvals];
    let mut unequal = vec![0u32; nvals];
    let wanted = |st: Step| match st {
        Step::Read(v) | Step::Cas { exp: v, .. } | Step::MaybeCas { exp: v, .. } => Some(v),
        _ => None,
    };
    let produces = |st: Step| match st {
        Step::Set(v) | Step::Cas { new: v, .. } | Step::MaybeCas { new: v, .. } => Some(v),
        Step::Read(_) | Step::NotEqual(_) => None,
    };
    for &st in &steps {
        if let Step::Read(v) = st {
            readers[v as usize] += 1;
        }
        if let Some(v) = produces(st) {
            producers[v as usize] += 1;
        }
        if let Some(v) = wanted(st) {
            wants[v as usize] += 1;
        }
        if let Step::NotEqual(v) = st {
            unequal[v as usize] += 1;
        }
    }
    macro_rules! account {
        ($i:expr, $d:expr) => {{
            let st = steps[$i];
            if let Step::Read(v) = st {
                readers[v as usize] = readers[v as usize].wrapping_add_signed($d);
            }
            if let Some(v) = produces(st) {
                producers[v as usize] = producers[v as usize].wrapping_add_signed($d);
            }
            if let Some(v) = wanted(st) {
                wants[v as usize] = wants[v as usize].wrapping_add_signed($d);
            }
            if let Step::NotEqual(v) = st {
                unequal[v as usize] = unequal[v as usize].wrapping_add_signed($d);
            }
        }};
    }
    // (operation, state before it, forced): forced entries were pure
    // greedy moves, so there is no alternative to try at their level.
    let mut stack: Vec<(usize, State, bool)> = Vec::new();
    let mut state: State = ABSENT;
    let mut entry = next[head];
    // Deepest dead end seen: (linearized ops in order, state, stuck ops).
    let mut best: Option<(Vec<usize>, State, Vec<usize>)> = None;
    let mut iterations: u64 = 0;

    loop {
        if required == 0 {
            return KeyResult::Ok;
        }
        iterations += 1;
        if iterations.is_multiple_of(4096) {
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return KeyResult::Timeout;
                }
            }
        }
        debug_assert!(
            entry != tail,
            "a return precedes the tail while required ops remain"
        );
        let candidate = entry.is_multiple_of(2).then_some(entry);
        // Set when an applicable pure candidate was already explored from
        // here: this whole configuration is then a dead end.
        let mut dead = false;
        if let Some(call) = candidate {
            let i = call / 2;
            let pure = steps[i].is_pure();
            let applied = steps[i].apply(state).filter(|&new_state| {
                let own = u32::from(produces(steps[i]) == Some(state));
                let info = ops[i].ret.is_none();
                if info
                    && (new_state == state
                        || (wants[new_state as usize] == 0 && unequal[state as usize] == 0))
                {
                    return false;
                }
                new_state == state
                    || readers[state as usize] == 0
                    || producers[state as usize] - own > 0
            });
            if let Some(new_state) = applied {
                bits.set(i);
                if cache.insert(bits.key(new_state)) {
                    account!(i, -1);
                    stack.push((i, state, pure));
                    state = new_state;
                    unlink!(call);
                    if ops[i].ret.is_some() {
                        unlink!(call + 1);
                        required -= 1;
                    }
                    entry = next[head];
                    continue;
                }
                bits.clear(i);
                dead = pure;
            }
            if !dead {
                entry = next[call];
                continue;
            }
        }
        // The operation owning this return must have been linearized before
        // it returned, and no candidate works: undo the last choice.
        if !dead && best.as_ref().is_none_or(|b| stack.len() > b.0.len()) {
            let mut stuck = vec![entry / 2];
            let mut e = next[head];
            while e != entry {
                if e.is_multiple_of(2) && e / 2 != entry / 2 {
                    stuck.push(e / 2);
                }
                e = next[e];
            }
            best = Some((stack.iter().map(|(i, _, _)| *i).collect(), state, stuck));
        }
        // Pop past forced moves: each is implied by its predecessor.
        let popped = loop {
            match stack.pop() {
                Some((i, _, true)) => {
                    bits.clear(i);
                    account!(i, 1);
                    if ops[i].ret.is_some() {
                        required += 1;
                        relink!(2 * i + 1);
                    }
                    relink!(2 * i);
                }
                other => break other,
            }
        };
        let Some((i, prev_state, _)) = popped else {
            let (prefix, st, mut stuck) = best.unwrap_or_default();
            // Pending reads of the current value explain why no write could
            // go next (the dead-value pruning refused to strand them).
            let done: HashSet<usize> = prefix.iter().copied().collect();
            let stranded: Vec<usize> = (0..n)
                .filter(|i| !done.contains(i) && !stuck.contains(i))
                .filter(|i| matches!(steps[*i], Step::Read(v) if v == st))
                .take(3)
                .collect();
            stuck.extend(stranded);
            let mut stuck: Vec<Operation> = stuck.into_iter().map(|i| ops[i].clone()).collect();
            stuck.sort_by_key(|o| o.call_line);
            return KeyResult::Violation(Box::new(Violation {
                key: key.to_string(),
                total: n,
                linearized: prefix.len(),
                state: interner.name(st),
                prefix_tail: prefix
                    .iter()
                    .rev()
                    .take(5)
                    .rev()
                    .map(|&i| ops[i].clone())
                    .collect(),
                stuck,
            }));
        };
        state = prev_state;
        bits.clear(i);
        account!(i, 1);
        if ops[i].ret.is_some() {
            required += 1;
            relink!(2 * i + 1);
        }
        relink!(2 * i);
        entry = next[2 * i];
    }
}
