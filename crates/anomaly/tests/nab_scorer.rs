//! The NAB scorer reproduces NAB's published figures for the stored
//! windowedGaussian results on the bundled subset.

use std::path::Path;

use anomaly::nab;

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nab")
}

#[test]
fn windowed_gaussian_scores_match_nab() {
    let r = root();
    let s = anomaly::score_results(
        &r.join("results/windowedGaussian"),
        &r.join("combined_windows.json"),
    )
    .unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 0.01;
    assert!(
        close(s.standard.normalized, 21.97),
        "standard {}",
        s.standard.normalized
    );
    assert!(
        close(s.reward_low_fp.normalized, 4.87),
        "low FP {}",
        s.reward_low_fp.normalized
    );
    assert!(
        close(s.reward_low_fn.normalized, 29.80),
        "low FN {}",
        s.reward_low_fn.normalized
    );
    for p in s.all() {
        assert!(
            (p.threshold - 1.0).abs() < 1e-9,
            "{} {}",
            p.profile.name,
            p.threshold
        );
    }
    // 55 windows: null = -55·fn, perfect = 55·tp.
    assert_eq!(s.standard.perfect, 55.0);
    assert_eq!(s.standard.null, -55.0);
    assert_eq!(s.reward_low_fn.null, -110.0);
}

#[test]
fn perfect_and_null_detectors_score_100_and_0() {
    let corpus = nab::NabCorpus::load(&root()).unwrap();
    let zeros: Vec<Vec<f64>> = corpus.files.iter().map(|f| vec![0.0; f.ts.len()]).collect();
    let s = corpus.score(&zeros).unwrap();
    for p in s.all() {
        assert!(
            p.normalized.abs() < 1e-9,
            "{} {}",
            p.profile.name,
            p.normalized
        );
    }
    // A detector firing exactly at each window start.
    let perfect: Vec<Vec<f64>> = corpus
        .files
        .iter()
        .map(|f| {
            f.ts.iter()
                .map(|t| {
                    if f.windows.iter().any(|w| w.0 == *t) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    let s = corpus.score(&perfect).unwrap();
    for p in s.all() {
        assert!(
            (p.normalized - 100.0).abs() < 1e-6,
            "{} {}",
            p.profile.name,
            p.normalized
        );
    }
}

#[test]
fn sweep_semantics_on_a_small_file() {
    // 100 rows, probation 15; one window [50, 59].
    let ts: Vec<i64> = (0..100).map(|i| i * 300).collect();
    let windows = [(50 * 300, 59 * 300)];
    let score = |s: &[f64]| {
        nab::score_corpus(
            &[nab::FileScores {
                name: "t",
                ts: &ts,
                scores: s,
                windows: &windows,
            }],
            1,
        )
        .unwrap()
    };
    // Detection at the window's first row: full credit.
    let mut s = vec![0.0; 100];
    s[50] = 1.0;
    assert!((score(&s).standard.raw - 1.0).abs() < 1e-12);
    // Two detections in the window: only the earliest counts.
    s[55] = 1.0;
    assert!((score(&s).standard.raw - 1.0).abs() < 1e-12);
    // A false positive before any window costs the full fp weight, but the
    // optimiser then prefers the threshold that keeps the better total.
    let mut s = vec![0.0; 100];
    s[50] = 0.9;
    s[30] = 0.8;
    let r = score(&s);
    assert_eq!(r.standard.threshold, 0.9);
    assert!((r.standard.raw - 1.0).abs() < 1e-12);
    s[30] = 1.0;
    let r = score(&s);
    assert!(
        (r.standard.raw - (1.0 - 0.11)).abs() < 1e-12,
        "{}",
        r.standard.raw
    );
    // A detection in the probationary period is ignored.
    let mut s = vec![0.0; 100];
    s[5] = 1.0;
    assert_eq!(score(&s).standard.raw, -1.0);
    // A false positive right after a window costs (almost) nothing; far
    // after it costs the full weight.
    let mut s = vec![0.0; 100];
    s[50] = 1.0;
    s[60] = 1.0;
    let near = score(&s).standard.raw;
    assert!(near > 1.0 - 0.11 * 0.6, "{near}");
    s[60] = 0.0;
    s[99] = 1.0;
    let far = score(&s).standard.raw;
    assert!((far - (1.0 - 0.11)).abs() < 1e-3, "{far}");
}

#[test]
fn missing_result_file_is_an_error() {
    let dir = std::env::temp_dir().join(format!("anomaly-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = anomaly::score_results(&dir, &root().join("combined_windows.json")).unwrap_err();
    assert!(e.to_string().contains("no result file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
