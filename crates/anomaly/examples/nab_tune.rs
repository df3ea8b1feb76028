//! Development aid: scores the ensemble with parameters overridden from the
//! command line (`key=value` pairs, see `set`), on the full subset, the
//! tuning part and the held-back part, and with `-v` lists per file the
//! alarms (score ≥ 0.5) inside and outside windows.
//!
//! `cargo run -p anomaly --release --example nab_tune -- [-v] fire_min=5 suppress=200`

use std::path::Path;

use anomaly::detectors::{Ensemble, EnsembleParams};
use anomaly::nab::{self, NabCorpus};

fn set(p: &mut EnsembleParams, k: &str, v: f64) {
    match k {
        "g_robust" => p.gains[0] = v,
        "g_forecast" => p.gains[1] = v,
        "g_seasonal" => p.gains[2] = v,
        "g_change" => p.gains[3] = v,
        "g_diff" => p.diff_gain = v,
        "raw_k" => p.raw_k = v,
        "avg" => p.avg = v as usize,
        "hist_alpha" => p.hist_alpha = v,
        "min_sd" => p.min_sd = v,
        "threshold" => p.threshold = v,
        "suppress" => p.suppress = v as usize,
        "warmup" => p.warmup = v as usize,
        "cad_threshold" => p.cad_threshold = v,
        "cad_after" => p.cad_after = v as usize,
        "cad" => {
            if v == 0.0 {
                p.cad = None
            }
        }
        "robust_window" => p.robust.window = v as usize,
        "f_alpha" => p.forecast.alpha = v,
        "f_beta" => p.forecast.beta = v,
        "f_scale_alpha" => p.forecast.scale_alpha = v,
        "s_min_acf" => p.seasonal.min_acf = v,
        "s_cycles" => p.seasonal.cycles = v as usize,
        "s_scale_alpha" => p.seasonal.scale_alpha = v,
        "c_recent" => p.changepoint.recent = v as usize,
        "c_reference" => p.changepoint.reference = v as usize,
        "c_level_gain" => p.changepoint.level_gain = v,
        "c_var_gain" => p.changepoint.var_gain = v,
        _ => panic!("unknown parameter {k}"),
    }
}

#[allow(clippy::needless_range_loop)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nab");
    let corpus = NabCorpus::load(&root)?;
    let mut p = EnsembleParams::default();
    let mut verbose = false;
    for a in std::env::args().skip(1) {
        if a == "-v" {
            verbose = true;
            continue;
        }
        let (k, v) = a.split_once('=').expect("key=value");
        set(&mut p, k, v.parse()?);
    }
    let tuning = corpus.subset(nab::is_tuning_file);
    let held = corpus.subset(|n| !nab::is_tuning_file(n));
    for (part, c) in [("full", &corpus), ("tuning", &tuning), ("held-back", &held)] {
        let (s, out) = c.run_and_score(|| Box::new(Ensemble::new(p.clone())))?;
        if std::env::var("BRIEF").is_ok() {
            print!(
                "{:6.2} {:6.2} {:6.2} | ",
                s.standard.normalized, s.reward_low_fp.normalized, s.reward_low_fn.normalized
            );
            continue;
        }
        println!(
            "{part:<10} std {:6.2} (thr {:.3}, det {}, fp {}) lowFP {:6.2} (thr {:.3}) lowFN {:6.2} (thr {:.3})",
            s.standard.normalized,
            s.standard.threshold,
            s.standard.windows_detected,
            s.standard.false_positives,
            s.reward_low_fp.normalized,
            s.reward_low_fp.threshold,
            s.reward_low_fn.normalized,
            s.reward_low_fn.threshold
        );
        if verbose && part == "full" {
            for (f, o) in c.files.iter().zip(&out) {
                let prob = nab::probationary_length(f.ts.len());
                let mut hits = vec![None; f.windows.len()];
                let mut fps = Vec::new();
                for i in prob..f.ts.len() {
                    if o[i] < 0.5 {
                        continue;
                    }
                    match f
                        .windows
                        .iter()
                        .position(|&(a, b)| f.ts[i] >= a && f.ts[i] <= b)
                    {
                        Some(w) => {
                            if hits[w].is_none() {
                                hits[w] = Some(i)
                            }
                        }
                        None => fps.push(i),
                    }
                }
                let wins: Vec<String> = f
                    .windows
                    .iter()
                    .zip(&hits)
                    .map(|(&(a, b), h)| {
                        let ia = f.ts.iter().position(|&t| t == a).unwrap();
                        let ib = f.ts.iter().position(|&t| t == b).unwrap();
                        format!(
                            "[{ia}-{ib}:{}]",
                            h.map_or("MISS".to_string(), |i| i.to_string())
                        )
                    })
                    .collect();
                println!(
                    "  {:<55} n={:5} prob={:4} {} fp={:?}",
                    f.name,
                    f.ts.len(),
                    prob,
                    wins.join(" "),
                    fps
                );
            }
        }
    }
    Ok(())
}
