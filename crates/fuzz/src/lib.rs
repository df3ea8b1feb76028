//! A small mutation fuzzer that runs on the stable toolchain inside
//! `cargo test`, for the parsers that face the network or the disk.
//!
//! cargo-fuzz needs a nightly compiler, which this project's machines do not
//! have, so each target in `tests/` calls [`fuzz`]: it replays the target's
//! regression inputs (`regressions/<target>/*`, every input that ever
//! crashed it), then mutates its seed inputs (bit flips, interesting bytes,
//! inserted, deleted, duplicated and spliced ranges) for a time budget,
//! calling the target on each. The target's property is checked by the
//! target itself (it panics when it does not hold; at the least: no panic,
//! bounded work).
//!
//! A failing input is written to `target/fuzz-crashes/<target>-<crc>.bin`
//! and the test fails naming that file and the seed that reproduces the
//! run; copy the file into `regressions/<target>/` with the fix so it is
//! replayed forever after.
//!
//! Settings (environment): `PHALANX_FUZZ_MS`, the budget per target in
//! milliseconds (default [`DEFAULT_BUDGET_MS`]); `PHALANX_FUZZ_SEED`, the
//! RNG seed (default: derived from the clock, printed).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Time budget of each target in CI, in milliseconds.
pub const DEFAULT_BUDGET_MS: u64 = 3_000;
/// Largest input the mutator produces, in bytes.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// xorshift64*: a fast, seedable generator (quality is not a concern here).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'\n', b'=', b'[', b']', b'-', b'9',
];

/// Applies 1 to 8 random mutations to `input`, drawing splices from `corpus`.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(8) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                input.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - i);
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            6 if len > 0 => {
                // Truncate: torn writes and short reads.
                input.truncate(rng.below(len));
            }
            _ if len > 0 => {
                // Overwrite a 1-, 2-, 4- or 8-byte run with an extreme value.
                let w = 1 << rng.below(4);
                let i = rng.below(len);
                let v: u8 = if rng.below(2) == 0 { 0xff } else { 0 };
                for b in input.iter_mut().skip(i).take(w) {
                    *b = v;
                }
            }
            _ => input.push(rng.byte()),
        }
    }
    input.truncate(MAX_INPUT_BYTES);
}

/// What one [`fuzz`] run did.
#[derive(Debug)]
pub struct FuzzReport {
    pub target: String,
    pub seed: u64,
    pub executions: u64,
    pub regressions: usize,
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn regression_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = crate_dir().join("regressions").join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = crate_dir().join("../../target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{target}-{:08x}.bin", crc32fast::hash(input)));
    let _ = std::fs::write(&p, input);
    p
}

fn run_one(target: &str, input: &[u8], f: &dyn Fn(&[u8]), origin: &dyn Fn() -> String) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(input))) {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let path = save_crash(target, input);
        panic!(
            "fuzz target `{target}` failed on {} ({} bytes, saved to {}): {msg}\n\
             Fix it, then copy the file into crates/fuzz/regressions/{target}/ so it is replayed in every run.",
            origin(),
            input.len(),
            path.display()
        );
    }
}

fn budget() -> Duration {
    let ms = std::env::var("PHALANX_FUZZ_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BUDGET_MS);
    Duration::from_millis(ms)
}

fn seed() -> u64 {
    std::env::var("PHALANX_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Runs `f` on the regression inputs of `target`, on each seed, then on
/// mutations of the seeds for the time budget. Panics (failing the test)
/// with the input's saved path when `f` panics.
pub fn fuzz(target: &str, seeds: &[Vec<u8>], f: impl Fn(&[u8])) -> FuzzReport {
    assert!(
        !seeds.is_empty(),
        "fuzz target `{target}` has no seed input"
    );
    let regressions = regression_inputs(target);
    for (path, input) in &regressions {
        run_one(target, input, &f, &|| {
            format!("regression input {}", path.display())
        });
    }
    for (i, s) in seeds.iter().enumerate() {
        run_one(target, s, &f, &|| format!("seed input #{i}"));
    }
    let seed = seed();
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let budget = budget();
    let mut executions = 0u64;
    let mut input = Vec::new();
    while started.elapsed() < budget {
        input.clear();
        input.extend_from_slice(&seeds[rng.below(seeds.len())]);
        mutate(&mut rng, &mut input, seeds);
        executions += 1;
        let n = executions;
        run_one(target, &input, &f, &|| {
            format!("mutation #{n} (reproduce: PHALANX_FUZZ_SEED={seed})")
        });
    }
    let report = FuzzReport {
        target: target.to_string(),
        seed,
        executions,
        regressions: regressions.len(),
    };
    println!(
        "fuzz {target}: {executions} inputs in {:?} (seed {seed}), {} regression inputs replayed",
        budget, report.regressions
    );
    report
}

/// Reads every file in `dir` (relative to the workspace root) as a seed.
pub fn seeds_from_dir(dir: &str, ext: &str) -> Vec<Vec<u8>> {
    let root = crate_dir().join("../..");
    let mut out = Vec::new();
    collect(&root.join(dir), ext, &mut out);
    out
}

fn collect(dir: &Path, ext: &str, out: &mut Vec<Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            collect(&p, ext, out);
        } else if p.extension().is_some_and(|e| e == ext) {
            if let Ok(b) = std::fs::read(&p) {
                out.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_target_fails_and_saves_the_input() {
        let r = catch_unwind(|| {
            fuzz("selftest", &[b"abc".to_vec()], |input| {
                assert!(!input.contains(&b'z'), "found z");
            })
        });
        // With a budget of a few ms the mutator may not produce a `z`; a
        // seed that contains one always fails.
        let r2 = catch_unwind(|| {
            fuzz("selftest", &[b"xyz".to_vec()], |i| {
                assert!(!i.contains(&b'z'))
            })
        });
        let msg = r2.expect_err("a crashing seed must fail the run");
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("seed input #0") && msg.contains("fuzz-crashes"),
            "{msg}"
        );
        let _ = r;
    }

    #[test]
    fn mutation_is_bounded_and_deterministic_per_seed() {
        let corpus = vec![vec![7u8; 100]];
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..1000 {
            let (mut x, mut y) = (corpus[0].clone(), corpus[0].clone());
            mutate(&mut a, &mut x, &corpus);
            mutate(&mut b, &mut y, &corpus);
            assert_eq!(x, y);
            assert!(x.len() <= MAX_INPUT_BYTES);
        }
    }
}
