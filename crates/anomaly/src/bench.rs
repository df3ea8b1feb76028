//! Throughput of the detectors over a NAB corpus (`phalanx anomaly bench`):
//! samples per second on one thread, and state bytes per series.
//!
//! Each run feeds every file of the corpus, sample by sample, to a fresh
//! detector on the calling thread and is timed by the wall clock and, where
//! Linux exposes it (`/proc/thread-self/schedstat`), by the thread's on-CPU
//! time. On a shared machine the wall clock also counts the time the thread
//! waited for a core, so both are reported, each as the median of the runs.
//! Pin the process to one core (`taskset -c 0`) for a per-core figure.
//!
//! State bytes per series are measured in a separate, untimed pass: the peak
//! of [`Detector::memory_bytes`] sampled every [`BYTES_SAMPLE_EVERY`] samples
//! and at the end of each file, over all files.

use std::time::{Duration, Instant};

use crate::nab::NabCorpus;
use crate::{by_name, Detector, Error, MAX_BYTES_PER_SERIES};

/// How often (in samples) the untimed pass reads the state size.
pub const BYTES_SAMPLE_EVERY: usize = 100;

/// Shortest timed run: a run feeds the corpus as many times as needed to
/// last this long (the on-CPU clock is updated at scheduler ticks, so short
/// runs would be imprecise).
pub const MIN_RUN_SECONDS: f64 = 0.3;

/// One method's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodThroughput {
    /// The method name.
    pub method: String,
    /// Samples fed per run (the whole corpus, `passes` times).
    pub samples: usize,
    /// Passes over the corpus per run (see [`MIN_RUN_SECONDS`]).
    pub passes: usize,
    /// Wall-clock seconds of each run.
    pub wall_s: Vec<f64>,
    /// On-CPU seconds of each run (None where the platform does not say).
    pub cpu_s: Vec<Option<f64>>,
    /// Peak state bytes of one series (detector) over the corpus.
    pub peak_bytes: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some(0.5 * (v[n / 2 - 1] + v[n / 2])),
    }
}

impl MethodThroughput {
    /// Samples per second by the median wall-clock run.
    pub fn wall_rate(&self) -> f64 {
        median(self.wall_s.clone()).map_or(0.0, |s| self.samples as f64 / s)
    }
    /// Samples per second of the fastest and slowest wall-clock runs.
    pub fn wall_rate_range(&self) -> (f64, f64) {
        let rate = |s: f64| self.samples as f64 / s;
        let min = self.wall_s.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.wall_s.iter().copied().fold(0.0, f64::max);
        (rate(max), rate(min))
    }
    /// Samples per second by the median on-CPU run, if every run has one.
    pub fn cpu_rate(&self) -> Option<f64> {
        let cpu: Option<Vec<f64>> = self.cpu_s.iter().copied().collect();
        median(cpu?).map(|s| self.samples as f64 / s)
    }
}

/// The calling thread's on-CPU time (Linux: first field of
/// `/proc/thread-self/schedstat`, nanoseconds), if available.
pub fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn feed_all(corpus: &NabCorpus, method: &str) -> Result<f64, Error> {
    let mut sink = 0.0;
    for f in &corpus.files {
        let mut d = by_name(method)?;
        for (&ts, &v) in f.ts.iter().zip(&f.values) {
            sink += d.observe(ts, v);
        }
    }
    Ok(std::hint::black_box(sink))
}

fn peak_bytes(corpus: &NabCorpus, method: &str) -> Result<usize, Error> {
    let mut peak = 0;
    for f in &corpus.files {
        let mut d: Box<dyn Detector> = by_name(method)?;
        for (i, (&ts, &v)) in f.ts.iter().zip(&f.values).enumerate() {
            d.observe(ts, v);
            if i % BYTES_SAMPLE_EVERY == 0 {
                peak = peak.max(d.memory_bytes());
            }
        }
        peak = peak.max(d.memory_bytes());
    }
    Ok(peak)
}

/// Measures `method` over `corpus`: an untimed pass that measures the state
/// size, a timed warm-up pass that sets the passes per run (see
/// [`MIN_RUN_SECONDS`]), then `runs` timed runs (at least 1).
pub fn measure(corpus: &NabCorpus, method: &str, runs: usize) -> Result<MethodThroughput, Error> {
    let per_pass: usize = corpus.files.iter().map(|f| f.values.len()).sum();
    let peak_bytes = peak_bytes(corpus, method)?;
    let t0 = Instant::now();
    feed_all(corpus, method)?;
    let pass_s = t0.elapsed().as_secs_f64().max(1e-6);
    let passes = ((MIN_RUN_SECONDS / pass_s).ceil() as usize).clamp(1, 100_000);
    let (mut wall_s, mut cpu_s) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let (t0, c0) = (Instant::now(), thread_cpu_time());
        for _ in 0..passes {
            feed_all(corpus, method)?;
        }
        let (wall, c1) = (t0.elapsed(), thread_cpu_time());
        wall_s.push(wall.as_secs_f64());
        cpu_s.push(c0.zip(c1).map(|(a, b)| (b - a).as_secs_f64()));
    }
    Ok(MethodThroughput {
        method: method.to_string(),
        samples: per_pass * passes,
        passes,
        wall_s,
        cpu_s,
        peak_bytes,
    })
}

fn millions(x: f64) -> String {
    format!("{:.2} M", x / 1e6)
}

/// A Markdown table of the results (as BENCHMARKS.md shows them).
pub fn table(results: &[MethodThroughput]) -> String {
    let mut out = String::from(
        "| method | samples/s per core (median wall clock) | wall clock, slowest–fastest run | samples/s on-CPU (median) | bytes per series (peak) |\n|---|---:|---:|---:|---:|\n",
    );
    for r in results {
        let (lo, hi) = r.wall_rate_range();
        out.push_str(&format!(
            "| {} | {} | {}–{} | {} | {} |\n",
            r.method,
            millions(r.wall_rate()),
            millions(lo),
            millions(hi),
            r.cpu_rate().map_or("n/a".into(), millions),
            r.peak_bytes,
        ));
    }
    let (per_pass, runs) = results
        .first()
        .map_or((0, 0), |r| (r.samples / r.passes.max(1), r.wall_s.len()));
    out.push_str(&format!(
        "\n{per_pass} samples per pass over the corpus, runs of at least {MIN_RUN_SECONDS} s, {runs} runs per method, one thread; state bound {MAX_BYTES_PER_SERIES} bytes per series (MAX_BYTES_PER_SERIES).\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_use_the_median_run() {
        let r = MethodThroughput {
            method: "x".into(),
            samples: 1000,
            passes: 1,
            wall_s: vec![2.0, 1.0, 4.0],
            cpu_s: vec![Some(1.0), Some(0.5), Some(1.0)],
            peak_bytes: 10,
        };
        assert_eq!(r.wall_rate(), 500.0);
        assert_eq!(r.wall_rate_range(), (250.0, 1000.0));
        assert_eq!(r.cpu_rate(), Some(1000.0));
        let t = table(&[r]);
        assert!(t.contains("| x | 0.00 M |"), "{t}");
        assert!(t.contains("1000 samples per pass"), "{t}");
        assert!(t.contains("3 runs per method"), "{t}");
    }
}
