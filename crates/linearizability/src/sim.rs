//! Deterministic generator of linearizable histories, for tests and
//! benchmarks of the checker.
//!
//! Clients run against a simulated atomic register store: each operation is
//! invoked, takes effect at a random instant strictly inside its interval,
//! and returns later, so concurrent operations overlap in arbitrary ways
//! while the history stays linearizable by construction.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::history::{Event, EventType, Function};

/// Parameters of a simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub clients: usize,
    pub operations: usize,
    pub keys: usize,
    /// Percent (0..=100) of operations whose client gives up: the
    /// completion is recorded as `info`, and the effect happens or not.
    pub info_percent: u32,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            clients: 16,
            operations: 10_000,
            keys: 1,
            info_percent: 1,
            seed: 1,
        }
    }
}

/// Small xorshift PRNG: deterministic across platforms and dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Invoke,
    Effect,
    Return,
}

struct Pending {
    f: Function,
    key: String,
    input: serde_json::Value,
    output: serde_json::Value,
    outcome: EventType,
    drop_effect: bool,
}

/// Generates a linearizable history as JSON lines (one event per line).
pub fn generate(cfg: &SimConfig) -> String {
    let mut rng = Rng::new(cfg.seed);
    let mut store: BTreeMap<String, String> = BTreeMap::new();
    // Events ordered by (time, client): each client is sequential, so it has
    // at most one scheduled event at a time.
    let mut queue: BinaryHeap<Reverse<(u64, usize, Phase)>> = BinaryHeap::new();
    let mut pending: Vec<Option<Pending>> = (0..cfg.clients).map(|_| None).collect();
    let mut out = String::new();
    let mut invoked = 0usize;
    let mut next_value = 0u64;
    for c in 0..cfg.clients {
        queue.push(Reverse((rng.below(10), c, Phase::Invoke)));
    }
    let event = |out: &mut String,
                 c: usize,
                 kind: EventType,
                 f: Function,
                 key: &str,
                 v: &serde_json::Value,
                 t: u64| {
        out.push_str(&Event::new(c as i64, kind, f, key, v.clone(), t as i64).to_line());
        out.push('\n');
    };
    while let Some(Reverse((t, c, phase))) = queue.pop() {
        match phase {
            Phase::Invoke => {
                if invoked == cfg.operations {
                    continue;
                }
                invoked += 1;
                let key = format!("k{}", rng.below(cfg.keys as u64));
                let (f, input) = match rng.below(10) {
                    0..=3 => (Function::Read, serde_json::Value::Null),
                    4..=6 => {
                        next_value += 1;
                        (Function::Write, serde_json::json!(next_value.to_string()))
                    }
                    7 => (Function::Delete, serde_json::Value::Null),
                    _ => {
                        next_value += 1;
                        // Expect the current value half the time so both
                        // successful and failed cas operations occur.
                        let expected = if rng.below(2) == 0 {
                            store.get(&key).cloned()
                        } else {
                            Some((next_value / 2).to_string())
                        };
                        (
                            Function::Cas,
                            Event::cas_value(expected.as_deref(), &next_value.to_string()),
                        )
                    }
                };
                event(&mut out, c, EventType::Invoke, f, &key, &input, t);
                let info = rng.below(100) < cfg.info_percent as u64;
                pending[c] = Some(Pending {
                    f,
                    key,
                    input,
                    output: serde_json::Value::Null,
                    outcome: if info { EventType::Info } else { EventType::Ok },
                    drop_effect: info && rng.below(2) == 0,
                });
                queue.push(Reverse((t + 1 + rng.below(50), c, Phase::Effect)));
            }
            Phase::Effect => {
                let p = pending[c].as_mut().expect("effect of a pending op");
                if !p.drop_effect {
                    match p.f {
                        Function::Read => p.output = store.get(&p.key).cloned().into(),
                        Function::Write => {
                            store.insert(p.key.clone(), p.input.as_str().unwrap().to_string());
                        }
                        Function::Delete => {
                            store.remove(&p.key);
                        }
                        Function::Cas => {
                            let exp = p.input[0].as_str().map(str::to_string);
                            if store.get(&p.key).cloned() == exp {
                                store.insert(
                                    p.key.clone(),
                                    p.input[1].as_str().unwrap().to_string(),
                                );
                            } else if p.outcome == EventType::Ok {
                                p.outcome = EventType::Fail;
                            }
                        }
                    }
                }
                queue.push(Reverse((t + 1 + rng.below(50), c, Phase::Return)));
            }
            Phase::Return => {
                let p = pending[c].take().expect("return of a pending op");
                let v = if p.f == Function::Read {
                    p.output
                } else {
                    p.input
                };
                event(&mut out, c, p.outcome, p.f, &p.key, &v, t);
                queue.push(Reverse((t + 1 + rng.below(20), c, Phase::Invoke)));
            }
        }
    }
    out
}
