//! The NAB scoring method (Numenta Anomaly Benchmark, `nab/sweeper.py` and
//! `nab/runner.py` at NAB v1.x), reproduced exactly:
//!
//! * **Probationary period**: the first `min(floor(0.15·n), 0.15·5000)` rows
//!   of a file are not scored (and a window's rows inside it do not count).
//! * **Windows**: a row is inside a window from the row whose timestamp equals
//!   the window start to the row whose timestamp equals its end. Widths and
//!   positions use the *first* row carrying the start/end timestamp (NAB uses
//!   `list.index`), which matters for files with repeated timestamps.
//! * **Sweep score** of a row: inside a window, `σ(−(right − i + 1)/width) ·
//!   tp / σ(−1)` with the scaled sigmoid `σ(x) = 2/(1+e^{5x}) − 1` (−1 for
//!   `x > 3`); outside, `σ((i − prevRight)/(prevWidth − 1)) · fp` if a window
//!   precedes the row in the file, else `−fp`. So a false positive shortly
//!   after a window costs less.
//! * **Score at a threshold**: rows with `score ≥ threshold` are detections;
//!   each window with a scored row starts at `−fn` and becomes the best
//!   (= earliest) sweep score among its detected rows; every detection outside
//!   windows adds its (negative) sweep score.
//! * **Threshold optimisation**: over the whole corpus at once, for every
//!   distinct score value (and 1.1 = "nothing"), in decreasing order; the
//!   first (highest) threshold with the best total wins.
//! * **Normalisation**: `100 · (raw − null) / (perfect − null)`, where `null`
//!   is the optimised score of a detector that always outputs 0 and `perfect`
//!   is `tp ×` the number of windows in the label file.

use std::path::{Path, PathBuf};

use crate::csv::{self, Labels, Strictness};
use crate::Error;

/// NAB's probationary fraction.
pub const PROBATIONARY_PERCENT: f64 = 0.15;

/// An application profile: the weights of a true positive, a false positive
/// and a false negative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// NAB's profile name.
    pub name: &'static str,
    /// Weight of a detected window.
    pub tp: f64,
    /// Weight of a false positive.
    pub fp: f64,
    /// Weight of a missed window.
    pub fn_: f64,
}

/// NAB's "standard" profile.
pub const STANDARD: Profile = Profile {
    name: "standard",
    tp: 1.0,
    fp: 0.11,
    fn_: 1.0,
};
/// NAB's "reward_low_FP_rate" profile.
pub const REWARD_LOW_FP: Profile = Profile {
    name: "reward_low_FP_rate",
    tp: 1.0,
    fp: 0.22,
    fn_: 1.0,
};
/// NAB's "reward_low_FN_rate" profile.
pub const REWARD_LOW_FN: Profile = Profile {
    name: "reward_low_FN_rate",
    tp: 1.0,
    fp: 0.11,
    fn_: 2.0,
};
/// The three profiles, in NAB's order of reporting.
pub const PROFILES: [Profile; 3] = [STANDARD, REWARD_LOW_FP, REWARD_LOW_FN];

/// NAB's probationary length for a file of `n` rows.
pub fn probationary_length(n: usize) -> usize {
    let p = (PROBATIONARY_PERCENT * n as f64)
        .floor()
        .min(PROBATIONARY_PERCENT * 5000.0);
    p as usize
}

/// NAB's scaled sigmoid.
pub fn scaled_sigmoid(x: f64) -> f64 {
    if x > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * x).exp()) - 1.0
    }
}

/// One file to score: its timestamps, the detector's scores (same length)
/// and its label windows (inclusive unix-second pairs, in order).
#[derive(Debug, Clone, Copy)]
pub struct FileScores<'a> {
    /// Name used in errors.
    pub name: &'a str,
    /// Row timestamps, in file order.
    pub ts: &'a [i64],
    /// Anomaly scores, one per row.
    pub scores: &'a [f64],
    /// Label windows.
    pub windows: &'a [(i64, i64)],
}

/// The result for one profile.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileScore {
    /// The profile.
    pub profile: Profile,
    /// The optimised threshold (detection when `score >= threshold`).
    pub threshold: f64,
    /// The raw (un-normalised) corpus score at that threshold.
    pub raw: f64,
    /// The null detector's raw score.
    pub null: f64,
    /// The perfect detector's raw score.
    pub perfect: f64,
    /// `100 · (raw − null) / (perfect − null)`.
    pub normalized: f64,
    /// Windows with at least one detection (after the probationary period).
    pub windows_detected: usize,
    /// Scored windows without detection.
    pub windows_missed: usize,
    /// Detections outside windows (after the probationary period).
    pub false_positives: usize,
}

/// Scores for the three NAB profiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Standard profile.
    pub standard: ProfileScore,
    /// Reward-low-FP profile.
    pub reward_low_fp: ProfileScore,
    /// Reward-low-FN profile.
    pub reward_low_fn: ProfileScore,
}

impl Scores {
    /// The three results in NAB's order.
    pub fn all(&self) -> [&ProfileScore; 3] {
        [&self.standard, &self.reward_low_fp, &self.reward_low_fn]
    }
}

impl std::fmt::Display for Scores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<20} {:>8} {:>10} {:>9} {:>8} {:>6}",
            "profile", "score", "threshold", "detected", "missed", "FP"
        )?;
        for p in self.all() {
            writeln!(
                f,
                "{:<20} {:>8.2} {:>10.4} {:>9} {:>8} {:>6}",
                p.profile.name,
                p.normalized,
                p.threshold,
                p.windows_detected,
                p.windows_missed,
                p.false_positives
            )?;
        }
        Ok(())
    }
}

const PROBATIONARY: u32 = u32::MAX;
const OUTSIDE: u32 = u32::MAX - 1;

/// Per-row sweep data, profile independent: `unweighted` is the scaled
/// sigmoid value; `tag` is a corpus-wide window id, OUTSIDE or PROBATIONARY.
struct Point {
    score: f64,
    unweighted: f64,
    tag: u32,
}

fn sweep_file(
    file: &FileScores<'_>,
    first_window_id: u32,
    out: &mut Vec<Point>,
) -> Result<u32, Error> {
    if file.ts.len() != file.scores.len() {
        return Err(Error::Scoring(format!(
            "{}: {} timestamps but {} scores",
            file.name,
            file.ts.len(),
            file.scores.len()
        )));
    }
    let index_of = |t: i64| -> Result<usize, Error> {
        file.ts.iter().position(|&x| x == t).ok_or_else(|| {
            Error::Scoring(format!(
                "{}: label window end {} is not a timestamp of the file",
                file.name,
                csv::format_timestamp(t)
            ))
        })
    };
    // Check every window up front, as NAB would fail on it.
    for &(s, e) in file.windows {
        index_of(s)?;
        index_of(e)?;
    }
    let probation = probationary_length(file.ts.len());
    let max_tp = scaled_sigmoid(-1.0);
    let mut pending = file.windows.iter().peekable();
    let mut next_id = first_window_id;
    // (id, end timestamp, right index, width)
    let mut cur: Option<(u32, i64, usize, f64)> = None;
    let mut prev: Option<(usize, f64)> = None;
    for (i, (&t, &score)) in file.ts.iter().zip(file.scores).enumerate() {
        if let Some(&&(s, e)) = pending.peek() {
            if t == s {
                pending.next();
                let right = index_of(e)?;
                let left = index_of(s)?;
                let width = right as f64 - left as f64 + 1.0;
                cur = Some((next_id, e, right, width));
                next_id += 1;
            }
        }
        let (unweighted, tag) = match cur {
            Some((id, _, right, width)) => {
                let pos = -(right as f64 - i as f64 + 1.0) / width;
                (scaled_sigmoid(pos) / max_tp, id)
            }
            None => match prev {
                None => (-1.0, OUTSIDE),
                Some((pr, pw)) => {
                    let pos = (pr as f64 - i as f64).abs() / (pw - 1.0);
                    (scaled_sigmoid(pos), OUTSIDE)
                }
            },
        };
        let tag = if i >= probation { tag } else { PROBATIONARY };
        out.push(Point {
            score,
            unweighted,
            tag,
        });
        if let Some((_, e, _, width)) = cur {
            if t == e {
                prev = Some((i, width));
                cur = None;
            }
        }
    }
    Ok(next_id.max(first_window_id + file.windows.len() as u32))
}

struct Sweep {
    points: Vec<Point>,
    order: Vec<u32>,
    n_windows: usize,
}

impl Sweep {
    fn new(files: &[FileScores<'_>]) -> Result<Sweep, Error> {
        let mut points = Vec::with_capacity(files.iter().map(|f| f.ts.len()).sum());
        let mut next = 0u32;
        for f in files {
            next = sweep_file(f, next, &mut points)?;
        }
        if let Some(p) = points.iter().find(|p| p.score.is_nan()) {
            let _ = p;
            return Err(Error::Scoring("an anomaly score is NaN".into()));
        }
        let mut order: Vec<u32> = (0..points.len() as u32).collect();
        // Stable: equal scores keep file order, like Python's sorted(reverse=True).
        order.sort_by(|&a, &b| {
            points[b as usize]
                .score
                .total_cmp(&points[a as usize].score)
        });
        Ok(Sweep {
            points,
            order,
            n_windows: next as usize,
        })
    }

    /// Returns (threshold, raw score, detected, missed, fps) at the optimum.
    fn optimise(&self, p: &Profile) -> (f64, f64, usize, usize, usize) {
        let mut parts = vec![f64::NAN; self.n_windows];
        for pt in &self.points {
            if pt.tag < OUTSIDE {
                parts[pt.tag as usize] = -p.fn_;
            }
        }
        let scored = parts.iter().filter(|x| !x.is_nan()).count();
        let mut fp_part = 0.0f64;
        let mut windows_total: f64 = parts.iter().filter(|x| !x.is_nan()).sum();
        let (mut detected, mut fps) = (0usize, 0usize);
        let mut hit = vec![false; self.n_windows];
        let mut cur_threshold = 1.1f64;
        let mut best = (cur_threshold, windows_total + fp_part, 0, scored, 0);
        for &ix in &self.order {
            let pt = &self.points[ix as usize];
            if pt.score != cur_threshold {
                let total = windows_total + fp_part;
                if total > best.1 {
                    best = (cur_threshold, total, detected, scored - detected, fps);
                }
                cur_threshold = pt.score;
            }
            if pt.tag == OUTSIDE {
                fp_part += pt.unweighted * p.fp;
                fps += 1;
            } else if pt.tag != PROBATIONARY {
                let w = pt.tag as usize;
                let s = pt.unweighted * p.tp;
                if s > parts[w] {
                    windows_total += s - parts[w];
                    parts[w] = s;
                }
                if !hit[w] {
                    hit[w] = true;
                    detected += 1;
                }
            }
        }
        let total = windows_total + fp_part;
        if total > best.1 {
            best = (cur_threshold, total, detected, scored - detected, fps);
        }
        best
    }
}

/// Scores a corpus by NAB's method. `total_windows` is the number of windows
/// in the label file (NAB's perfect score counts all of them, even windows
/// lying in a probationary period).
pub fn score_corpus(files: &[FileScores<'_>], total_windows: usize) -> Result<Scores, Error> {
    let sweep = Sweep::new(files)?;
    let zeros: Vec<Vec<f64>> = files.iter().map(|f| vec![0.0; f.ts.len()]).collect();
    let null_files: Vec<FileScores<'_>> = files
        .iter()
        .zip(&zeros)
        .map(|(f, z)| FileScores { scores: z, ..*f })
        .collect();
    let null_sweep = Sweep::new(&null_files)?;
    let one = |p: &Profile| {
        let (threshold, raw, windows_detected, windows_missed, false_positives) = sweep.optimise(p);
        let null = null_sweep.optimise(p).1;
        let perfect = total_windows as f64 * p.tp;
        ProfileScore {
            profile: *p,
            threshold,
            raw,
            null,
            perfect,
            normalized: 100.0 * (raw - null) / (perfect - null),
            windows_detected,
            windows_missed,
            false_positives,
        }
    };
    Ok(Scores {
        standard: one(&STANDARD),
        reward_low_fp: one(&REWARD_LOW_FP),
        reward_low_fn: one(&REWARD_LOW_FN),
    })
}

/// One file of the NAB corpus, loaded.
#[derive(Debug, Clone)]
pub struct NabFile {
    /// `<folder>/<file>.csv`, as in the label file.
    pub name: String,
    /// Timestamps (unix seconds), in file order.
    pub ts: Vec<i64>,
    /// Timestamp texts.
    pub timestamps: Vec<String>,
    /// Values.
    pub values: Vec<f64>,
    /// Label windows.
    pub windows: Vec<(i64, i64)>,
}

/// A loaded NAB corpus: every file named in the label file.
#[derive(Debug, Clone)]
pub struct NabCorpus {
    /// The files, in label-file (sorted) order.
    pub files: Vec<NabFile>,
}

/// The NAB subset bundled with this crate (`testdata/nab`: data, labels and
/// stored results), as a path of the source tree this was built from.
pub const BUNDLED_SUBSET_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/nab");

impl NabCorpus {
    /// Loads `<root>/data/<name>` for every name in `<root>/combined_windows.json`
    /// (backward timestamp steps allowed, as NAB has one).
    pub fn load(root: &Path) -> Result<NabCorpus, Error> {
        let labels = csv::read_labels_file(&root.join("combined_windows.json"))?;
        NabCorpus::load_with_labels(&root.join("data"), &labels)
    }

    /// Loads `<data_dir>/<name>` for every name in `labels`.
    pub fn load_with_labels(data_dir: &Path, labels: &Labels) -> Result<NabCorpus, Error> {
        let mut files = Vec::with_capacity(labels.len());
        for (name, windows) in labels {
            let rows = csv::read_series_file(&data_dir.join(name), Strictness::AllowBackward)?;
            files.push(NabFile {
                name: name.clone(),
                ts: rows.iter().map(|r| r.ts).collect(),
                timestamps: rows.iter().map(|r| r.timestamp.clone()).collect(),
                values: rows.iter().map(|r| r.value).collect(),
                windows: windows.clone(),
            });
        }
        Ok(NabCorpus { files })
    }

    /// Total number of label windows.
    pub fn total_windows(&self) -> usize {
        self.files.iter().map(|f| f.windows.len()).sum()
    }

    /// Scores per-file detector outputs (`scores[i]` belongs to `files[i]`);
    /// normalised over this corpus.
    pub fn score(&self, scores: &[Vec<f64>]) -> Result<Scores, Error> {
        let fs: Vec<FileScores<'_>> = self
            .files
            .iter()
            .zip(scores)
            .map(|(f, s)| FileScores {
                name: &f.name,
                ts: &f.ts,
                scores: s,
                windows: &f.windows,
            })
            .collect();
        score_corpus(&fs, self.total_windows())
    }

    /// Runs a fresh detector per file (`make` builds one) and scores the
    /// outputs. Returns the per-file scores too.
    pub fn run_and_score(
        &self,
        mut make: impl FnMut() -> Box<dyn crate::Detector>,
    ) -> Result<(Scores, Vec<Vec<f64>>), Error> {
        let outputs: Vec<Vec<f64>> = self
            .files
            .iter()
            .map(|f| {
                let mut d = make();
                f.ts.iter()
                    .zip(&f.values)
                    .map(|(&t, &v)| d.observe(t, v))
                    .collect()
            })
            .collect();
        Ok((self.score(&outputs)?, outputs))
    }

    /// The sub-corpus of the files for which `keep(name)` holds (normalised
    /// over itself when scored).
    pub fn subset(&self, keep: impl Fn(&str) -> bool) -> NabCorpus {
        NabCorpus {
            files: self
                .files
                .iter()
                .filter(|f| keep(&f.name))
                .cloned()
                .collect(),
        }
    }
}

/// The tuning/held-back split used during development: a file belongs to the
/// tuning part when the FNV-1a hash of its name is even.
pub fn is_tuning_file(name: &str) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    #[allow(clippy::manual_is_multiple_of)] // MSRV 1.85
    let even = h % 2 == 0;
    even
}

fn result_path(results_dir: &Path, name: &str) -> Option<PathBuf> {
    let direct = results_dir.join(name);
    if direct.is_file() {
        return Some(direct);
    }
    // NAB's own layout: <dir>/<folder>/<detector>_<file>.csv
    let detector = results_dir.file_name()?.to_str()?;
    let (folder, file) = name.rsplit_once('/').unwrap_or(("", name));
    let p = results_dir.join(folder).join(format!("{detector}_{file}"));
    p.is_file().then_some(p)
}

/// Scores a directory of detector results (`<dir>/<folder>/<file>.csv`, or
/// NAB's `<dir>/<folder>/<detector>_<file>.csv`) against a label file, for
/// every file the label file names.
pub fn score_results(results_dir: &Path, labels_file: &Path) -> Result<Scores, Error> {
    let labels = csv::read_labels_file(labels_file)?;
    let mut loaded = Vec::with_capacity(labels.len());
    for name in labels.keys() {
        let path = result_path(results_dir, name).ok_or_else(|| {
            Error::Scoring(format!(
                "{}: no result file for {name}",
                results_dir.display()
            ))
        })?;
        let rows = csv::read_results_file(&path)?;
        loaded.push((
            name.as_str(),
            rows.iter().map(|r| r.ts).collect::<Vec<_>>(),
            rows.iter().map(|r| r.score).collect::<Vec<_>>(),
        ));
    }
    let files: Vec<FileScores<'_>> = loaded
        .iter()
        .map(|(name, ts, scores)| FileScores {
            name,
            ts,
            scores,
            windows: &labels[*name],
        })
        .collect();
    score_corpus(&files, labels.values().map(Vec::len).sum())
}
