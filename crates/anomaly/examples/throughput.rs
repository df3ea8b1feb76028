//! Measures samples per second on one core and bytes per series for every
//! method, over the bundled NAB subset (all 35 files, ≈ 182k samples).
//!
//! `cargo run -p anomaly --release --example throughput`

use std::path::Path;
use std::time::Instant;

use anomaly::nab::NabCorpus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nab");
    let corpus = NabCorpus::load(&root)?;
    let total: usize = corpus.files.iter().map(|f| f.values.len()).sum();
    println!("| method | samples/s (1 core) | bytes per series (max over files) |");
    println!("|---|---|---|");
    for m in anomaly::METHODS {
        let mut best = f64::INFINITY;
        let mut bytes = 0;
        let mut sink = 0.0;
        for _ in 0..3 {
            let t = Instant::now();
            for f in &corpus.files {
                let mut d = anomaly::by_name(m)?;
                for (&ts, &v) in f.ts.iter().zip(&f.values) {
                    sink += d.observe(ts, v);
                }
                bytes = bytes.max(d.memory_bytes());
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(sink);
        println!("| {m} | {:.0} | {bytes} |", total as f64 / best);
    }
    Ok(())
}
