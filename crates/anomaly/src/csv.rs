//! Reading NAB-style CSV files and the NAB label file.
//!
//! * Data files: a header line, then `timestamp,value` rows. `timestamp` is
//!   `YYYY-MM-DD HH:MM:SS` (no time zone, read as UTC; an optional fractional
//!   second `.ffffff` is accepted and truncated), `value` a finite or
//!   non-finite float as Rust parses it. CRLF line endings, a missing final
//!   newline and blank lines are accepted.
//! * Result files: `timestamp,value,anomaly_score[,more…]`; only the first
//!   three columns are read.
//! * Label files (`combined_windows.json`): a JSON object mapping
//!   `<folder>/<file>.csv` to a list of `[start, end]` timestamp strings.
//!
//! Row order: equal timestamps are always accepted (NAB repeats some). A
//! timestamp earlier than the previous row's is an [`Error::OutOfOrder`] under
//! [`Strictness::Strict`] (the default) and accepted under
//! [`Strictness::AllowBackward`], which is what the NAB loaders use (NAB's
//! `machine_temperature_system_failure.csv` steps back once).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use crate::Error;

/// How to treat a row whose timestamp is earlier than the previous row's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strictness {
    /// A backward step is an [`Error::OutOfOrder`] (equal timestamps are fine).
    #[default]
    Strict,
    /// Backward steps are accepted as they are (the NAB corpus needs this).
    AllowBackward,
}

/// One row of a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The timestamp text as written in the file (kept for echoing it back).
    pub timestamp: String,
    /// Seconds since 1970-01-01 00:00:00 UTC.
    pub ts: i64,
    /// The value.
    pub value: f64,
}

/// One row of a detector-result file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Seconds since 1970-01-01 00:00:00 UTC.
    pub ts: i64,
    /// The value (second column).
    pub value: f64,
    /// The anomaly score (third column).
    pub score: f64,
}

/// Label windows per file: `<folder>/<file>.csv` → inclusive `[start, end]`
/// pairs in unix seconds, in file order.
pub type Labels = BTreeMap<String, Vec<(i64, i64)>>;

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's algorithm, proleptic Gregorian calendar.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]` (also `T` as separator) into unix
/// seconds; the error says what is wrong.
pub fn parse_timestamp(s: &str) -> Result<i64, &'static str> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return Err("expected YYYY-MM-DD HH:MM:SS");
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, &'static str> {
        let part = &b[r];
        if part.iter().all(u8::is_ascii_digit) {
            Ok(part.iter().fold(0i64, |a, &c| a * 10 + i64::from(c - b'0')))
        } else {
            Err("expected YYYY-MM-DD HH:MM:SS")
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err("expected YYYY-MM-DD HH:MM:SS");
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b.len() > 19 && (b[19] != b'.' || b.len() == 20 || !b[20..].iter().all(u8::is_ascii_digit)) {
        return Err("unexpected text after the seconds");
    }
    if !(1..=12).contains(&mo) {
        return Err("month out of range");
    }
    let mdays = [
        31,
        if is_leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d < 1 || d > mdays[(mo - 1) as usize] {
        return Err("day out of range");
    }
    if h > 23 || mi > 59 || se > 59 {
        return Err("time of day out of range");
    }
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Formats unix seconds as `YYYY-MM-DD HH:MM:SS`.
pub fn format_timestamp(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Iterates over the data lines of a CSV: skips the header (first non-blank
/// line) and blank lines, strips CR; yields (1-based line number, line).
fn for_each_line<R: BufRead>(
    mut reader: R,
    file: &str,
    mut f: impl FnMut(usize, &str) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut buf = String::new();
    let mut lineno = 0usize;
    let mut seen_header = false;
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).map_err(|source| Error::Io {
            file: file.to_string(),
            source,
        })?;
        if n == 0 {
            return Ok(());
        }
        lineno += 1;
        let line = buf.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        if !seen_header {
            seen_header = true;
            let first = line
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"');
            if !first.eq_ignore_ascii_case("timestamp") {
                return Err(Error::BadHeader {
                    file: file.to_string(),
                    line: lineno,
                    text: line.to_string(),
                });
            }
            continue;
        }
        f(lineno, line)?;
    }
}

fn split_fields<'a>(
    file: &str,
    line_no: usize,
    line: &'a str,
    want: usize,
) -> Result<Vec<&'a str>, Error> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    if fields.len() < want {
        return Err(Error::MissingColumn {
            file: file.to_string(),
            line: line_no,
            expected: want,
            found: fields.len(),
        });
    }
    Ok(fields)
}

fn parse_ts_field(file: &str, line: usize, text: &str) -> Result<i64, Error> {
    let text = text.trim_matches('"');
    parse_timestamp(text).map_err(|why| Error::BadTimestamp {
        file: file.to_string(),
        line,
        text: text.to_string(),
        why,
    })
}

fn parse_f64_field(
    file: &str,
    line: usize,
    column: &'static str,
    text: &str,
) -> Result<f64, Error> {
    let text = text.trim_matches('"');
    text.parse::<f64>().map_err(|_| Error::BadNumber {
        file: file.to_string(),
        line,
        column,
        text: text.to_string(),
    })
}

/// Reads a `timestamp,value` data file. `file` names it in errors.
pub fn read_series<R: BufRead>(
    reader: R,
    file: &str,
    strictness: Strictness,
) -> Result<Vec<Row>, Error> {
    let mut rows: Vec<Row> = Vec::new();
    let mut prev: Option<(i64, String)> = None;
    for_each_line(reader, file, |line_no, line| {
        let f = split_fields(file, line_no, line, 2)?;
        let ts = parse_ts_field(file, line_no, f[0])?;
        let value = parse_f64_field(file, line_no, "value", f[1])?;
        if let Some((p, ptext)) = &prev {
            if ts < *p && strictness == Strictness::Strict {
                return Err(Error::OutOfOrder {
                    file: file.to_string(),
                    line: line_no,
                    text: f[0].to_string(),
                    previous: ptext.clone(),
                });
            }
        }
        let timestamp = f[0].trim_matches('"').to_string();
        prev = Some((ts, timestamp.clone()));
        rows.push(Row {
            timestamp,
            ts,
            value,
        });
        Ok(())
    })?;
    Ok(rows)
}

/// Reads a data file from disk (see [`read_series`]).
pub fn read_series_file(path: &Path, strictness: Strictness) -> Result<Vec<Row>, Error> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| Error::Io {
        file: name.clone(),
        source,
    })?;
    read_series(std::io::BufReader::new(f), &name, strictness)
}

/// Reads a detector-result file (`timestamp,value,anomaly_score[,…]`). Rows
/// are taken in file order as they are (NAB scores them in that order).
pub fn read_results<R: BufRead>(reader: R, file: &str) -> Result<Vec<ResultRow>, Error> {
    let mut rows = Vec::new();
    for_each_line(reader, file, |line_no, line| {
        let f = split_fields(file, line_no, line, 3)?;
        let ts = parse_ts_field(file, line_no, f[0])?;
        let value = parse_f64_field(file, line_no, "value", f[1])?;
        let score = parse_f64_field(file, line_no, "anomaly_score", f[2])?;
        rows.push(ResultRow { ts, value, score });
        Ok(())
    })?;
    Ok(rows)
}

/// Reads a detector-result file from disk (see [`read_results`]).
pub fn read_results_file(path: &Path) -> Result<Vec<ResultRow>, Error> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| Error::Io {
        file: name.clone(),
        source,
    })?;
    read_results(std::io::BufReader::new(f), &name)
}

/// Parses a NAB label file (`combined_windows.json`) from its text.
pub fn parse_labels(text: &str, file: &str) -> Result<Labels, Error> {
    let bad = |msg: String| Error::Labels {
        file: file.to_string(),
        msg,
    };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("expected a JSON object".into()))?;
    let mut out = Labels::new();
    for (name, windows) in obj {
        let list = windows
            .as_array()
            .ok_or_else(|| bad(format!("{name}: expected a list of windows")))?;
        let mut ws = Vec::with_capacity(list.len());
        for w in list {
            let pair = w
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| bad(format!("{name}: a window must be [start, end]")))?;
            let mut ends = [0i64; 2];
            for (i, e) in pair.iter().enumerate() {
                let s = e
                    .as_str()
                    .ok_or_else(|| bad(format!("{name}: window ends must be strings")))?;
                ends[i] = parse_timestamp(s)
                    .map_err(|why| bad(format!("{name}: bad timestamp {s:?}: {why}")))?;
            }
            if ends[1] < ends[0] {
                return Err(bad(format!("{name}: window ends before it starts")));
            }
            ws.push((ends[0], ends[1]));
        }
        out.insert(name.clone(), ws);
    }
    Ok(out)
}

/// Reads a NAB label file from disk (see [`parse_labels`]).
pub fn read_labels_file(path: &Path) -> Result<Labels, Error> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        file: name.clone(),
        source,
    })?;
    parse_labels(&text, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for s in [
            "1970-01-01 00:00:00",
            "2014-02-28 23:59:59",
            "2016-02-29 12:00:00",
            "2000-03-01 00:05:00",
        ] {
            assert_eq!(format_timestamp(parse_timestamp(s).unwrap()), s);
        }
        assert_eq!(
            parse_timestamp("2014-04-10 07:15:00.000000").unwrap(),
            parse_timestamp("2014-04-10 07:15:00").unwrap()
        );
        assert_eq!(parse_timestamp("1970-01-02 00:00:01").unwrap(), 86_401);
        assert!(parse_timestamp("2015-02-29 00:00:00").is_err());
        assert!(parse_timestamp("2015-13-01 00:00:00").is_err());
        assert!(parse_timestamp("2015-01-01 24:00:00").is_err());
        assert!(parse_timestamp("2015-01-01").is_err());
    }
}
