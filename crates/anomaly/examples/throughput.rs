//! Measures samples per second on one core and bytes per series for every
//! method (or the methods named), over the bundled NAB subset (all 35 files,
//! ≈ 182k samples); the same as `phalanx anomaly bench`. Pin it to a core
//! for a per-core figure.
//!
//! `taskset -c 0 cargo run -p anomaly --release --example throughput [RUNS [METHOD…]]`

use std::path::Path;

use anomaly::nab::{NabCorpus, BUNDLED_SUBSET_DIR};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let runs = match args.next() {
        Some(r) => r.parse()?,
        None => 5,
    };
    let named: Vec<String> = args.collect();
    let methods: Vec<&str> = if named.is_empty() {
        anomaly::METHODS.to_vec()
    } else {
        named.iter().map(String::as_str).collect()
    };
    let corpus = NabCorpus::load(Path::new(BUNDLED_SUBSET_DIR))?;
    let mut results = Vec::new();
    for m in methods {
        results.push(anomaly::bench::measure(&corpus, m, runs)?);
    }
    print!("{}", anomaly::bench::table(&results));
    Ok(())
}
