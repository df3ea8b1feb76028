//! Prints, per method and NAB file, a digest (FNV-1a over the bit patterns)
//! of every score, so an optimisation can be checked to change no score at
//! all: run before and after and `diff` the outputs.
//!
//! `cargo run -p anomaly --release --example score_digest [METHOD…]`

use std::path::Path;

use anomaly::nab::NabCorpus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nab");
    let corpus = NabCorpus::load(&root)?;
    let methods: Vec<String> = std::env::args().skip(1).collect();
    let methods = if methods.is_empty() {
        anomaly::METHODS.iter().map(|s| s.to_string()).collect()
    } else {
        methods
    };
    // Besides NAB, two long synthetic series that stress the detectors'
    // bounded memories (CAD's context memory in particular).
    let mut x = 5u64;
    let mut lcg = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let noise: Vec<(i64, f64)> = (0..60_000)
        .map(|i| (i as i64 * 60, lcg() * 100.0))
        .collect();
    let mut level = 0.0;
    let walk: Vec<(i64, f64)> = (0..60_000)
        .map(|i| {
            level += lcg() - 0.5;
            (i as i64 * 60, level)
        })
        .collect();
    let mut series: Vec<(String, Vec<(i64, f64)>)> = corpus
        .files
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                f.ts.iter().copied().zip(f.values.iter().copied()).collect(),
            )
        })
        .collect();
    series.push(("synthetic/noise".into(), noise));
    series.push(("synthetic/walk".into(), walk));
    for m in &methods {
        for (name, s) in &series {
            let mut d = anomaly::by_name(m)?;
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for &(ts, v) in s {
                for b in d.observe(ts, v).to_bits().to_le_bytes() {
                    h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            println!("{m} {name} {h:016x} {}", d.memory_bytes());
        }
    }
    Ok(())
}
