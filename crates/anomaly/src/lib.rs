//! `anomaly`: streaming anomaly detection for time series, sans-I/O and
//! deterministic, plus an exact implementation of the NAB (Numenta Anomaly
//! Benchmark) scoring method to measure it.
//!
//! Main types:
//!
//! * [`Detector`]: the trait every method implements. A detector is fed one
//!   sample at a time (`observe(ts_unix_s, value)`) and answers with an
//!   anomaly score in `[0, 1]` computed from that sample and the past only.
//!   Each detector keeps a bounded amount of state per series (see
//!   [`Detector::memory_bytes`] and [`MAX_BYTES_PER_SERIES`]).
//! * [`detectors`]: the methods — [`detectors::Robust`] (rolling median +
//!   MAD), [`detectors::Seasonal`] (period found by autocorrelation, residual
//!   against the same phase), [`detectors::Forecast`] (Holt/EWMA forecasting
//!   band), [`detectors::ChangePoint`] (level and variance shifts),
//!   [`detectors::Cad`] (CAD OSE, contextual pattern memory) and
//!   [`detectors::Ensemble`] (the default: all of them, an adaptive threshold
//!   and suppression of repeated alarms). [`by_name`] builds one by name.
//! * [`csv`]: reading NAB-style `timestamp,value` files, detector-result
//!   files and the NAB label file, with typed errors naming file and line.
//! * [`nab`]: NAB scoring ([`nab::score_corpus`], [`nab::score_results`],
//!   [`nab::NabCorpus`]) with the three NAB profiles.
//! * [`bench`](mod@bench): throughput (samples per second on one thread) and state
//!   bytes per series over a NAB corpus (`phalanx anomaly bench`).
//! * [`detect_csv`] / [`score_results`]: the entry points the `phalanx
//!   anomaly` command uses.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod csv;
pub mod detectors;
pub mod nab;

use std::io::BufRead;
use std::path::Path;

pub use csv::Strictness;
pub use detectors::{by_name, Detector, DEFAULT_METHOD, MAX_BYTES_PER_SERIES, METHODS};
pub use nab::{score_results, ProfileScore, Scores};

/// Errors of this crate. Input errors name the file and the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The first line is not a `timestamp,…` header.
    #[error("{file}:{line}: expected a header line starting with \"timestamp\", found {text:?}")]
    BadHeader {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A row has too few columns.
    #[error("{file}:{line}: expected at least {expected} comma-separated columns, found {found}")]
    MissingColumn {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Columns needed.
        expected: usize,
        /// Columns found.
        found: usize,
    },
    /// A timestamp could not be parsed.
    #[error("{file}:{line}: bad timestamp {text:?} ({why})")]
    BadTimestamp {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The field.
        text: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A numeric column is not a number.
    #[error("{file}:{line}: {column} {text:?} is not a number")]
    BadNumber {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Which column.
        column: &'static str,
        /// The field.
        text: String,
    },
    /// A timestamp is earlier than the previous row's (under
    /// [`Strictness::Strict`]).
    #[error("{file}:{line}: rows out of order: timestamp {text} is earlier than the previous row's {previous}")]
    OutOfOrder {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// This row's timestamp.
        text: String,
        /// The previous row's timestamp.
        previous: String,
    },
    /// The label file is malformed.
    #[error("{file}: invalid label file: {msg}")]
    Labels {
        /// The file.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// Scoring could not be done (missing result file, window not found…).
    #[error("scoring: {0}")]
    Scoring(String),
    /// [`by_name`] got a name it does not know.
    #[error("unknown anomaly detection method {0:?} (known: {known})", known = METHODS.join(", "))]
    UnknownMethod(String),
}

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One output row of [`detect_csv`].
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The timestamp text, as in the input.
    pub timestamp: String,
    /// The value.
    pub value: f64,
    /// The anomaly score in `[0, 1]`.
    pub score: f64,
}

/// Reads a `timestamp,value` CSV from `reader` (`file` names it in errors)
/// and runs the detector `method` over it (see [`METHODS`]).
pub fn detect_csv<R: BufRead>(
    reader: R,
    file: &str,
    method: &str,
    strictness: Strictness,
) -> Result<Vec<Detection>> {
    let mut det = by_name(method)?;
    let rows = csv::read_series(reader, file, strictness)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let score = det.observe(r.ts, r.value);
            Detection {
                timestamp: r.timestamp,
                value: r.value,
                score,
            }
        })
        .collect())
}

/// Writes detections as NAB's `timestamp,value,anomaly_score` CSV.
pub fn write_detections<W: std::io::Write>(mut w: W, rows: &[Detection]) -> std::io::Result<()> {
    writeln!(w, "timestamp,value,anomaly_score")?;
    for r in rows {
        writeln!(w, "{},{},{}", r.timestamp, r.value, r.score)?;
    }
    Ok(())
}

/// Scores a results directory against a label file (see
/// [`nab::score_results`]).
pub fn score_results_dir(results_dir: &Path, labels_file: &Path) -> Result<Scores> {
    nab::score_results(results_dir, labels_file)
}
