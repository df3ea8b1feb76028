//! CAD OSE detector: past-only scoring (also across rebases), bounded
//! memory over long series, determinism, and the basic behaviour.

use anomaly::detectors::{Cad, CadParams, CAD_MAX_BYTES, MAX_CONTEXTS};
use anomaly::Detector;

fn lcg(x: &mut u64) -> f64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*x >> 11) as f64 / (1u64 << 53) as f64
}

/// Daily cycle + noise, a level shift at 3000 and an upward trend from
/// 5000 (which forces rebases).
fn series(n: usize, seed: u64) -> Vec<(i64, f64)> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            let day = (i as f64 * std::f64::consts::TAU / 288.0).sin() * 10.0;
            let shift = if i >= 3000 { 15.0 } else { 0.0 };
            let trend = i.saturating_sub(5000) as f64 * 0.01;
            (
                1_400_000_000 + i as i64 * 300,
                50.0 + day + shift + trend + (lcg(&mut x) - 0.5) * 4.0,
            )
        })
        .collect()
}

fn run(d: &mut dyn Detector, s: &[(i64, f64)]) -> Vec<f64> {
    s.iter().map(|&(t, v)| d.observe(t, v)).collect()
}

#[test]
fn cad_scores_depend_only_on_the_past() {
    let a = series(8000, 1);
    let full = run(&mut Cad::default(), &a);
    for cut in [350, 2500, 6000] {
        let mut b = a.clone();
        for (i, p) in b.iter_mut().enumerate().skip(cut) {
            p.1 = -p.1 * 5.0 + (i % 17) as f64 * 30.0;
        }
        let changed = run(&mut Cad::default(), &b);
        assert_eq!(full[..cut], changed[..cut], "cut {cut}");
        assert_ne!(full[cut..], changed[cut..], "cut {cut}");
    }
    assert!(full.iter().all(|s| (0.0..=1.0).contains(s)));
    // Warm-up: nothing reported for the first `warmup` samples.
    assert!(full[..CadParams::default().warmup]
        .iter()
        .all(|&s| s == 0.0));
}

#[test]
fn cad_is_deterministic() {
    let a = series(6000, 9);
    assert_eq!(run(&mut Cad::default(), &a), run(&mut Cad::default(), &a));
    // A clone continues exactly as the original.
    let mut d = Cad::default();
    run(&mut d, &a[..3000]);
    let mut e = d.clone();
    assert_eq!(run(&mut d, &a[3000..]), run(&mut e, &a[3000..]));
}

#[test]
fn cad_memory_stays_bounded_on_long_series() {
    // White noise (a new pattern at most steps: the worst case for the
    // context memory), the trending series (rebases) and a random walk.
    let mut x = 5u64;
    let noise: Vec<(i64, f64)> = (0..60_000)
        .map(|i| (i as i64 * 60, lcg(&mut x) * 100.0))
        .collect();
    let mut level = 0.0;
    let walk: Vec<(i64, f64)> = (0..60_000)
        .map(|i| {
            level += lcg(&mut x) - 0.5;
            (i as i64 * 60, level)
        })
        .collect();
    for s in [noise, walk, series(60_000, 3)] {
        let mut d = Cad::default();
        let mut peak = 0;
        for (i, &(t, v)) in s.iter().enumerate() {
            d.observe(t, v);
            if i % 499 == 0 {
                peak = peak.max(d.memory_bytes());
            }
        }
        peak = peak.max(d.memory_bytes());
        assert!(peak <= CAD_MAX_BYTES, "{peak} bytes > {CAD_MAX_BYTES}");
    }
    // A smaller memory cap is honoured too.
    let mut small = Cad::new(CadParams {
        max_contexts: 64,
        ..CadParams::default()
    });
    let mut big = Cad::default();
    let s = series(20_000, 4);
    run(&mut small, &s);
    run(&mut big, &s);
    assert!(small.memory_bytes() < big.memory_bytes());
    const { assert!(MAX_CONTEXTS <= 4096) };
}

#[test]
fn cad_learns_a_cycle_and_flags_a_break_in_it() {
    // A clean square wave (period 48); after learning it, a value at the
    // wrong level scores high, the regular pattern scores low.
    let s: Vec<(i64, f64)> = (0..3000)
        .map(|i| (i as i64 * 300, if (i / 24) % 2 == 0 { 10.0 } else { 20.0 }))
        .collect();
    let mut d = Cad::default();
    let out = run(&mut d, &s);
    assert!(out[2000..].iter().all(|&c| c < 0.3), "learned cycle");
    let odd = d.observe(3000 * 300, 15.0);
    assert!(odd >= 0.75, "break in the cycle scores {odd}");
}

#[test]
fn cad_with_range_reproduces_the_nab_setup() {
    // NAB's setup (range given up front) needs no warm-up.
    let mut d = Cad::with_range(CadParams::default(), 0.0, 20.0);
    let s: Vec<(i64, f64)> = (0..300).map(|i| (i, (i % 5) as f64 * 4.0)).collect();
    let out = run(&mut d, &s);
    assert_eq!(out[0], 0.0, "rest period at the start");
    assert!(out[250..].iter().all(|&c| c < 0.3));
}
