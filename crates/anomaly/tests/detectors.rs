//! Detector properties: past-only scoring, bounded memory, determinism.

use anomaly::{by_name, Detector, MAX_BYTES_PER_SERIES, METHODS};

/// A deterministic test series: daily cycle + noise + a few events.
fn series(n: usize, seed: u64) -> Vec<(i64, f64)> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = ((x >> 11) as f64 / (1u64 << 53) as f64) - 0.5;
            let day = (i as f64 * std::f64::consts::TAU / 288.0).sin() * 10.0;
            let event = if i % 1500 == 1400 { 40.0 } else { 0.0 };
            (
                1_400_000_000 + i as i64 * 300,
                50.0 + day + noise * 2.0 + event,
            )
        })
        .collect()
}

fn run(d: &mut dyn Detector, s: &[(i64, f64)]) -> Vec<f64> {
    s.iter().map(|&(t, v)| d.observe(t, v)).collect()
}

#[test]
fn scores_depend_only_on_the_past() {
    let a = series(3000, 1);
    for m in METHODS {
        let full = run(by_name(m).unwrap().as_mut(), &a);
        // Change every value from 2000 on: scores before 2000 must not move.
        let mut b = a.clone();
        for (i, p) in b.iter_mut().enumerate().skip(2000) {
            p.1 = p.1 * 3.0 + (i % 13) as f64 * 100.0;
        }
        let changed = run(by_name(m).unwrap().as_mut(), &b);
        assert_eq!(full[..2000], changed[..2000], "{m}");
        assert_ne!(
            full[2000..],
            changed[2000..],
            "{m}: future values should matter for future scores"
        );
        assert!(
            full.iter().all(|s| (0.0..=1.0).contains(s)),
            "{m}: scores in [0, 1]"
        );
    }
}

#[test]
fn detectors_are_deterministic() {
    let a = series(2000, 7);
    for m in METHODS {
        assert_eq!(
            run(by_name(m).unwrap().as_mut(), &a),
            run(by_name(m).unwrap().as_mut(), &a),
            "{m}"
        );
    }
}

#[test]
fn memory_stays_bounded() {
    let a = series(40_000, 3);
    for m in METHODS {
        let mut d = by_name(m).unwrap();
        let mut peak = 0;
        for (i, &(t, v)) in a.iter().enumerate() {
            d.observe(t, v);
            if i % 997 == 0 {
                peak = peak.max(d.memory_bytes());
            }
        }
        peak = peak.max(d.memory_bytes());
        assert!(
            peak <= MAX_BYTES_PER_SERIES,
            "{m}: {peak} bytes > {MAX_BYTES_PER_SERIES}"
        );
        assert!(peak > 0);
    }
}

/// A sustained level shift (an incident, not a lone spike) is flagged within
/// a few samples, and only once thanks to the suppression window. A lone
/// one-sample spike is a known blind spot of the 20-sample averaging stage
/// (docs/anomaly.md, open problems); the NAB labels reward windows, not
/// points, which is what the default is tuned for.
#[test]
fn ensemble_flags_a_level_shift_once_and_not_the_daily_cycle() {
    let mut a = series(4000, 11);
    for p in a.iter_mut().skip(2600).take(120) {
        p.1 += 40.0;
    }
    let out = run(by_name("ensemble").unwrap().as_mut(), &a);
    let alarms: Vec<usize> = (0..out.len()).filter(|&i| out[i] >= 0.5).collect();
    let in_shift: Vec<usize> = alarms
        .iter()
        .copied()
        .filter(|&i| (2600..2640).contains(&i))
        .collect();
    assert_eq!(
        in_shift.len(),
        1,
        "one alarm early in the shift: {alarms:?}"
    );
    assert!(
        alarms
            .iter()
            .all(|&i| (1400..=1402).contains(&i) || (2600..2900).contains(&i)),
        "alarms outside the events: {alarms:?}"
    );
}

#[test]
fn ensemble_does_not_alarm_on_the_daily_cycle() {
    let a = series(4000, 11);
    let out = run(by_name("ensemble").unwrap().as_mut(), &a);
    let near_spike = |i: usize| [1400, 2900].iter().any(|&s| (s..=s + 2).contains(&i));
    let alarms: Vec<usize> = (0..out.len()).filter(|&i| out[i] >= 0.5).collect();
    assert!(alarms.iter().all(|&i| near_spike(i)), "alarms {alarms:?}");
}

#[test]
fn non_finite_values_are_ignored() {
    for m in METHODS {
        let mut d = by_name(m).unwrap();
        let a = series(600, 5);
        let before = run(d.as_mut(), &a[..500]);
        assert_eq!(d.observe(1_500_000_000, f64::NAN), 0.0, "{m}");
        let mut e = by_name(m).unwrap();
        let again = run(e.as_mut(), &a[..500]);
        assert_eq!(before, again);
        // NaN did not disturb the state: the next score is the same as without it.
        assert_eq!(
            d.observe(a[500].0, a[500].1),
            e.observe(a[500].0, a[500].1),
            "{m}"
        );
    }
}

#[test]
fn unknown_method_is_an_error_listing_the_methods() {
    let e = by_name("magic").err().expect("error");
    let s = e.to_string();
    assert!(
        s.contains("magic") && s.contains("ensemble") && s.contains("seasonal"),
        "{s}"
    );
}
