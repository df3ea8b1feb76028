//! Measures samples per second on one core and bytes per series for every
//! method, over the bundled NAB subset (all 35 files, ≈ 182k samples); the
//! same as `phalanx anomaly bench`. Pin it to a core for a per-core figure.
//!
//! `taskset -c 0 cargo run -p anomaly --release --example throughput [RUNS]`

use std::path::Path;

use anomaly::nab::{NabCorpus, BUNDLED_SUBSET_DIR};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs = match std::env::args().nth(1) {
        Some(r) => r.parse()?,
        None => 5,
    };
    let corpus = NabCorpus::load(Path::new(BUNDLED_SUBSET_DIR))?;
    let mut results = Vec::new();
    for m in anomaly::METHODS {
        results.push(anomaly::bench::measure(&corpus, m, runs)?);
    }
    print!("{}", anomaly::bench::table(&results));
    Ok(())
}
