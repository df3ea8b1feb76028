//! The embedded metrics history: a bounded in-memory time-series store
//! (sans-I/O: every call takes the time), and a parser of the Prometheus text
//! exposition format that feeds it.
//!
//! Bounds (all in [`TsdbSettings`]): `retention_ms` (older samples are
//! dropped on every append), `max_series` (a new series past it is refused
//! and counted in `series_refused`), `max_samples_bytes` (a sample that
//! would take the samples' memory past it is refused and counted in
//! `samples_refused`). Memory per sample is [`SAMPLE_BYTES`].

use std::collections::{BTreeMap, VecDeque};

/// A label set, sorted by name; the metric name is the label `__name__`.
pub type Labels = BTreeMap<String, String>;

/// Bytes one sample takes (timestamp ms + value).
pub const SAMPLE_BYTES: usize = 16;

/// Bounds of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct TsdbSettings {
    /// Samples older than this (ms before the newest append) are dropped.
    pub retention_ms: i64,
    /// Most series kept; a new series past it is refused and counted.
    pub max_series: usize,
    /// Most bytes of samples kept (`SAMPLE_BYTES` each); a sample past it is refused and counted.
    pub max_samples_bytes: usize,
}

impl Default for TsdbSettings {
    fn default() -> Self {
        TsdbSettings {
            retention_ms: 24 * 3600 * 1000,
            max_series: 10_000,
            max_samples_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What one append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub appended: usize,
    /// Samples of series refused because `max_series` was reached.
    pub series_refused: usize,
    /// Samples refused because `max_samples_bytes` was reached.
    pub samples_refused: usize,
    /// Samples not newer than the series' last one (ignored).
    pub out_of_order: usize,
}

#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<(i64, f64)>,
}

/// The store. Not thread-safe by itself; the service wraps it in a mutex.
#[derive(Debug)]
pub struct Tsdb {
    settings: TsdbSettings,
    series: BTreeMap<Labels, Series>,
    samples: usize,
    /// Running totals (exported as metrics).
    pub series_refused_total: u64,
    pub samples_refused_total: u64,
}

impl Tsdb {
    pub fn new(settings: TsdbSettings) -> Self {
        Tsdb {
            settings,
            series: BTreeMap::new(),
            samples: 0,
            series_refused_total: 0,
            samples_refused_total: 0,
        }
    }

    pub fn settings(&self) -> &TsdbSettings {
        &self.settings
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    pub fn samples_bytes(&self) -> usize {
        self.samples * SAMPLE_BYTES
    }

    /// Append one scrape's samples, all at `t_ms`; first drops what is past
    /// retention (and series left empty).
    pub fn append(
        &mut self,
        t_ms: i64,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) -> AppendOutcome {
        self.expire(t_ms);
        let mut out = AppendOutcome::default();
        for (labels, v) in samples {
            if !self.series.contains_key(&labels) && self.series.len() >= self.settings.max_series {
                out.series_refused += 1;
                continue;
            }
            if (self.samples + 1) * SAMPLE_BYTES > self.settings.max_samples_bytes {
                out.samples_refused += 1;
                continue;
            }
            let s = self.series.entry(labels).or_default();
            if s.samples.back().is_some_and(|(t, _)| *t >= t_ms) {
                out.out_of_order += 1;
                continue;
            }
            s.samples.push_back((t_ms, v));
            self.samples += 1;
            out.appended += 1;
        }
        self.series_refused_total += out.series_refused as u64;
        self.samples_refused_total += out.samples_refused as u64;
        out
    }

    /// Drop samples older than `now_ms - retention_ms`, and empty series.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms - self.settings.retention_ms;
        let mut dropped = 0;
        self.series.retain(|_, s| {
            while s.samples.front().is_some_and(|(t, _)| *t < cutoff) {
                s.samples.pop_front();
                dropped += 1;
            }
            !s.samples.is_empty()
        });
        self.samples -= dropped;
    }

    /// Series whose labels satisfy `matches`.
    pub fn select<'a>(
        &'a self,
        matches: impl Fn(&Labels) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a Labels, &'a VecDeque<(i64, f64)>)> + 'a {
        self.series
            .iter()
            .filter(move |(l, _)| matches(l))
            .map(|(l, s)| (l, &s.samples))
    }

    /// Samples of a series with `from_ms < t <= to_ms`.
    pub fn range(samples: &VecDeque<(i64, f64)>, from_ms: i64, to_ms: i64) -> Vec<(i64, f64)> {
        let start = samples.partition_point(|(t, _)| *t <= from_ms);
        let end = samples.partition_point(|(t, _)| *t <= to_ms);
        samples.range(start..end).copied().collect()
    }

    /// All label names.
    pub fn label_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.series.keys().flat_map(|l| l.keys().cloned()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Error of the text exposition parser, naming the line.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("metrics text line {line}: {reason}")]
pub struct ExpositionError {
    pub line: usize,
    pub reason: String,
}

/// Parse Prometheus's text exposition format (0.0.4 and the OpenMetrics
/// subset prometheus-client writes): `name{l="v",...} value [timestamp]`;
/// comments and `# EOF` are skipped. `extra` labels are added to every sample.
pub fn parse_exposition(text: &str, extra: &Labels) -> Result<Vec<(Labels, f64)>, ExpositionError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: &str| ExpositionError {
            line: i + 1,
            reason: reason.to_string(),
        };
        let (name_end, mut labels) = match line.find(['{', ' ']) {
            Some(p) => (p, Labels::new()),
            None => return Err(err("expected `name value`")),
        };
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        if rest.starts_with('{') {
            let close = find_label_end(rest).ok_or_else(|| err("unterminated label set"))?;
            parse_label_pairs(&rest[1..close], &mut labels).map_err(|e| err(&e))?;
            rest = &rest[close + 1..];
        }
        let mut parts = rest.split_whitespace();
        let value = parts.next().ok_or_else(|| err("missing value"))?;
        let value = parse_float(value).ok_or_else(|| err(&format!("bad value {value:?}")))?;
        labels.insert("__name__".into(), name.to_string());
        for (k, v) in extra {
            labels.insert(k.clone(), v.clone());
        }
        out.push((labels, value));
    }
    Ok(out)
}

fn find_label_end(s: &str) -> Option<usize> {
    let mut in_str = false;
    let mut esc = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if esc => esc = false,
            '\\' if in_str => esc = true,
            '"' => in_str = !in_str,
            '}' if !in_str => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_label_pairs(s: &str, out: &mut Labels) -> Result<(), String> {
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("label without `=`")?;
        let name = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let after = after
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut val = String::new();
        let mut end = None;
        let mut chars = after.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, c2)) => val.push(c2),
                    None => return Err("dangling escape".into()),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => val.push(c),
            }
        }
        let end = end.ok_or("unterminated label value")?;
        out.insert(name, val);
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(())
}

/// A float as Prometheus writes it (`+Inf`, `-Inf`, `NaN` included).
pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parses_exposition() {
        let text = "# HELP x y\n# TYPE a counter\na_total 3\nb{le=\"0.5\",x=\"q\\\"}\"} 1.5e3 123\nc +Inf\n# EOF\n";
        let s = parse_exposition(text, &l(&[("member", "n1")])).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].0, l(&[("__name__", "a_total"), ("member", "n1")]));
        assert_eq!(s[1].0.get("x").unwrap(), "q\"}");
        assert_eq!(s[1].1, 1500.0);
        assert!(s[2].1.is_infinite());
        let e = parse_exposition("ok 1\nbad{x=1} 2\n", &Labels::new()).unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn bounds_refuse_and_count() {
        let mut db = Tsdb::new(TsdbSettings {
            retention_ms: 1000,
            max_series: 2,
            max_samples_bytes: 5 * SAMPLE_BYTES,
        });
        let o = db.append(
            0,
            [
                (l(&[("a", "1")]), 1.0),
                (l(&[("a", "2")]), 1.0),
                (l(&[("a", "3")]), 1.0),
            ],
        );
        assert_eq!((o.appended, o.series_refused), (2, 1));
        db.append(100, [(l(&[("a", "1")]), 2.0), (l(&[("a", "2")]), 2.0)]);
        let o = db.append(200, [(l(&[("a", "1")]), 3.0), (l(&[("a", "2")]), 3.0)]);
        assert_eq!((o.appended, o.samples_refused), (1, 1));
        assert_eq!(db.samples_refused_total, 1);
        assert_eq!(db.series_refused_total, 1);
        // retention frees room
        db.append(1050, [(l(&[("a", "1")]), 4.0)]);
        assert_eq!(db.samples_bytes(), 4 * SAMPLE_BYTES);
        db.append(5000, [(l(&[("a", "3")]), 4.0)]);
        assert_eq!(db.series_count(), 1);
    }
}
