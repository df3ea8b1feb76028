//! Times the checker on a generated 10,000-operation, 16-client history.
//! Run with `cargo bench -p linearizability`. Kept out of the tests so the
//! test suite asserts correctness, not machine speed.

use std::time::Instant;

use linearizability::sim::{generate, SimConfig};
use linearizability::{check, History, Limits, Outcome};

fn main() {
    for keys in [1usize, 10] {
        let cfg = SimConfig {
            clients: 16,
            operations: 10_000,
            keys,
            info_percent: 1,
            seed: 7,
        };
        let text = generate(&cfg);
        let t0 = Instant::now();
        let history = History::parse_str(&text).expect("generated history parses");
        let parsed = t0.elapsed();
        let outcome = check(&history, &Limits::default());
        let total = t0.elapsed();
        assert!(
            matches!(outcome, Outcome::Linearizable),
            "generated history must be linearizable"
        );
        println!(
            "10k ops / 16 clients / {keys} key(s): parse {:.1} ms, parse+check {:.1} ms",
            parsed.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
    }
}
