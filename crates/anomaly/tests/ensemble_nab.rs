//! Regression guard: the default ensemble's NAB scores on the bundled subset.
//! Reached: 66.78 / 59.70 / 71.19 (standard / low FP / low FN, with the CAD
//! OSE model); the floors are those minus about 1 point.

use std::path::Path;

use anomaly::nab::NabCorpus;

#[test]
fn default_ensemble_nab_scores_do_not_regress() {
    let corpus =
        NabCorpus::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/nab")).unwrap();
    assert_eq!(corpus.files.len(), 35);
    assert_eq!(corpus.total_windows(), 55);
    let (s, _) = corpus
        .run_and_score(|| anomaly::by_name(anomaly::DEFAULT_METHOD).unwrap())
        .unwrap();
    assert!(
        s.standard.normalized >= 65.7,
        "standard {}",
        s.standard.normalized
    );
    assert!(
        s.reward_low_fp.normalized >= 58.7,
        "low FP {}",
        s.reward_low_fp.normalized
    );
    assert!(
        s.reward_low_fn.normalized >= 70.1,
        "low FN {}",
        s.reward_low_fn.normalized
    );
    // Far above the stored windowedGaussian baseline (21.97 / 4.87 / 29.80).
    assert!(s.standard.windows_detected >= 30, "{s}");
}
