//! Prints the NAB scores of the stored windowedGaussian results and of the
//! detectors on the bundled NAB subset: full subset, tuning part (files
//! whose name hash is even) and held-back part.
//!
//! `cargo run -p anomaly --release --example nab_score [METHOD…]`

use std::path::Path;

use anomaly::nab::{self, NabCorpus};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nab");
    let wg = nab::score_results(
        &root.join("results/windowedGaussian"),
        &root.join("combined_windows.json"),
    )?;
    println!("windowedGaussian (stored NAB results), full subset:\n{wg}");
    let corpus = NabCorpus::load(&root)?;
    let methods: Vec<String> = std::env::args().skip(1).collect();
    let methods = if methods.is_empty() {
        anomaly::METHODS.iter().map(|s| s.to_string()).collect()
    } else {
        methods
    };
    let tuning = corpus.subset(nab::is_tuning_file);
    let held = corpus.subset(|n| !nab::is_tuning_file(n));
    println!("| method | part | files | standard | reward low FP | reward low FN |");
    println!("|---|---|---|---|---|---|");
    for m in &methods {
        anomaly::by_name(m)?;
        for (part, c) in [("full", &corpus), ("tuning", &tuning), ("held-back", &held)] {
            let (s, _) = c.run_and_score(|| anomaly::by_name(m).expect("checked"))?;
            println!(
                "| {m} | {part} | {} | {:.2} | {:.2} | {:.2} |",
                c.files.len(),
                s.standard.normalized,
                s.reward_low_fp.normalized,
                s.reward_low_fn.normalized
            );
        }
    }
    Ok(())
}
