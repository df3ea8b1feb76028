//! Development aid: scores CAD variants (`key=value` overrides, see `set`)
//! on the full subset, the tuning part and the held-back part. `lookahead=1`
//! runs NAB's own setup (range = the file's min and max, rest period =
//! probation / 5), which is look-ahead and only a reference.
//!
//! `cargo run -p anomaly --release --example cad_tune -- warmup=300 rebase=0`

use std::path::Path;

use anomaly::detectors::{Cad, CadParams};
use anomaly::nab::{self, NabCorpus};
use anomaly::Detector;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nab");
    let corpus = NabCorpus::load(&root)?;
    let mut p = CadParams::default();
    let mut lookahead = false;
    for a in std::env::args().skip(1) {
        let (k, v) = a.split_once('=').expect("key=value");
        let f: f64 = v.parse()?;
        match k {
            "lookahead" => lookahead = f != 0.0,
            "base_threshold" => p.base_threshold = f,
            "rest_period" => p.rest_period = f as usize,
            "max_left" => p.max_left_semi_contexts_len = f as usize,
            "max_active" => p.max_active_neurons = f as usize,
            "bits" => p.num_norm_value_bits = f as u32,
            "warmup" => p.warmup = f as usize,
            "max_contexts" => p.max_contexts = f as usize,
            "rebase" => p.rebase = f != 0.0,
            "margin" => p.margin = f,
            _ => panic!("unknown parameter {k}"),
        }
    }
    let tuning = corpus.subset(nab::is_tuning_file);
    let held = corpus.subset(|n| !nab::is_tuning_file(n));
    for (part, c) in [("full", &corpus), ("tuning", &tuning), ("held-back", &held)] {
        let mut bytes = 0;
        let outs: Vec<Vec<f64>> = c
            .files
            .iter()
            .map(|f| {
                let mut d = if lookahead {
                    let lo = f.values.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = f.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let rest = nab::probationary_length(f.values.len()) / 5;
                    Cad::with_range(
                        CadParams {
                            rest_period: rest,
                            ..p.clone()
                        },
                        lo,
                        hi,
                    )
                } else {
                    Cad::new(p.clone())
                };
                let o =
                    f.ts.iter()
                        .zip(&f.values)
                        .map(|(&t, &v)| d.observe(t, v))
                        .collect();
                bytes = bytes.max(d.memory_bytes());
                o
            })
            .collect();
        let s = c.score(&outs)?;
        println!(
            "{part:<10} std {:6.2} (thr {:.3}, det {}, fp {}) lowFP {:6.2} lowFN {:6.2}  max bytes {bytes}",
            s.standard.normalized,
            s.standard.threshold,
            s.standard.windows_detected,
            s.standard.false_positives,
            s.reward_low_fp.normalized,
            s.reward_low_fn.normalized
        );
    }
    Ok(())
}
