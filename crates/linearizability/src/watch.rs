//! Watch-stream checker: every committed change matching a watch is
//! delivered exactly once, in revision order, and a watch resumed from a
//! revision continues without gaps.
//!
//! Input is a JSON-lines *watch log* (see `docs/history-format.md`) holding
//! the committed changes (`commit` records, the ground truth, typically
//! taken from the writers' responses) and what each watcher received
//! (`watch` session starts, `event`s and `progress` marks, in receipt order).

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;

use serde::Deserialize;

use crate::history::HistoryError;

/// Kind of change, as in etcd's `mvccpb.Event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    Put,
    Delete,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum Record {
    Commit {
        revision: i64,
        key: String,
        #[serde(rename = "type")]
        change: ChangeType,
        #[serde(default)]
        value: Option<String>,
    },
    Watch {
        watch: String,
        #[serde(default)]
        key: String,
        #[serde(default)]
        prefix: bool,
        start_revision: i64,
    },
    Event {
        watch: String,
        revision: i64,
        key: String,
        #[serde(rename = "type")]
        change: ChangeType,
        #[serde(default)]
        value: Option<String>,
    },
    Progress {
        watch: String,
        revision: i64,
    },
}

/// What went wrong in a watch stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchViolationKind {
    /// A committed change the watcher should have received never arrived.
    Loss,
    /// The same change arrived twice.
    Duplicate,
    /// A change arrived after a change with a higher position in the log.
    Reorder,
    /// An event that matches no committed change, or differs from it.
    Phantom,
    /// An event for a key the watch does not cover, or older than the
    /// session's start revision.
    OutOfRange,
}

/// One watch-stream violation.
#[derive(Debug, Clone)]
pub struct WatchViolation {
    pub watch: String,
    pub kind: WatchViolationKind,
    pub revision: i64,
    pub key: String,
    /// Line of the offending record (for losses, of the session start).
    pub line: usize,
    pub detail: String,
}

impl std::fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "watch {:?}: {:?} of revision {} key {:?} (line {}): {}",
            self.watch, self.kind, self.revision, self.key, self.line, self.detail
        )
    }
}

#[derive(Clone, PartialEq)]
struct Filter {
    key: String,
    prefix: bool,
}

impl Filter {
    fn matches(&self, k: &str) -> bool {
        if self.prefix {
            k.starts_with(&self.key)
        } else {
            k == self.key
        }
    }
}

struct Commit {
    change: ChangeType,
    value: Option<String>,
}

struct Watcher {
    filter: Filter,
    first_start: i64,
    session_start: i64,
    session_line: usize,
    /// Delivered (revision, key), to detect duplicates across sessions.
    delivered: HashSet<(i64, String)>,
    /// Highest position delivered so far, to detect reordering.
    high: Option<(i64, String)>,
    /// Everything at or below this revision must have been delivered.
    horizon: i64,
}

/// Checks a watch log. Returns the violations found (empty = correct), or an
/// error for malformed input.
pub fn check_watch<R: BufRead>(reader: R) -> Result<Vec<WatchViolation>, HistoryError> {
    let mut commits: BTreeMap<(i64, String), Commit> = BTreeMap::new();
    let mut watchers: BTreeMap<String, Watcher> = BTreeMap::new();
    let mut violations = Vec::new();
    // Sessions are processed after all commits are known, because commits
    // and deliveries may be interleaved arbitrarily in the file.
    let mut stream: Vec<(usize, Record)> = Vec::new();
    for (idx, line) in reader.lines().enumerate() {
        let line_no = idx + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: Record = serde_json::from_str(&line)
            .map_err(|e| HistoryError::at(line_no, format!("invalid watch-log record: {e}")))?;
        match rec {
            Record::Commit {
                revision,
                key,
                change,
                value,
            } => {
                if revision <= 0 {
                    return Err(HistoryError::at(
                        line_no,
                        "commit revision must be positive",
                    ));
                }
                check_value(line_no, change, &value)?;
                if commits
                    .insert((revision, key.clone()), Commit { change, value })
                    .is_some()
                {
                    return Err(HistoryError::at(
                        line_no,
                        format!("key {key:?} committed twice at revision {revision}"),
                    ));
                }
            }
            other => stream.push((line_no, other)),
        }
    }
    for (line_no, rec) in stream {
        match rec {
            Record::Watch {
                watch,
                key,
                prefix,
                start_revision,
            } => {
                let filter = Filter { key, prefix };
                match watchers.get_mut(&watch) {
                    None => {
                        watchers.insert(
                            watch,
                            Watcher {
                                filter,
                                first_start: start_revision,
                                session_start: start_revision,
                                session_line: line_no,
                                delivered: HashSet::new(),
                                high: None,
                                horizon: 0,
                            },
                        );
                    }
                    Some(w) => {
                        if w.filter != filter {
                            return Err(HistoryError::at(
                                line_no,
                                format!("watch {watch:?} resumed with a different key range"),
                            ));
                        }
                        // Resuming past undelivered changes loses them; the
                        // final completeness pass reports each one.
                        w.session_start = start_revision;
                        w.session_line = line_no;
                    }
                }
            }
            Record::Event {
                watch,
                revision,
                key,
                change,
                value,
            } => {
                check_value(line_no, change, &value)?;
                let w = watchers.get_mut(&watch).ok_or_else(|| {
                    HistoryError::at(
                        line_no,
                        format!("event for watch {watch:?} before its \"watch\" record"),
                    )
                })?;
                let v = |kind, detail: String| WatchViolation {
                    watch: watch.clone(),
                    kind,
                    revision,
                    key: key.clone(),
                    line: line_no,
                    detail,
                };
                if !w.filter.matches(&key) {
                    violations.push(v(
                        WatchViolationKind::OutOfRange,
                        "key is outside the watched range".into(),
                    ));
                    continue;
                }
                if revision < w.session_start {
                    violations.push(v(
                        WatchViolationKind::OutOfRange,
                        format!(
                            "revision is below the session's start revision {}",
                            w.session_start
                        ),
                    ));
                }
                match commits.get(&(revision, key.clone())) {
                    None => {
                        violations.push(v(
                            WatchViolationKind::Phantom,
                            "no such change was committed".into(),
                        ));
                        continue;
                    }
                    Some(c) if c.change != change || c.value != value => {
                        violations.push(v(
                            WatchViolationKind::Phantom,
                            format!(
                                "delivered {change:?} {value:?} but the commit was {:?} {:?}",
                                c.change, c.value
                            ),
                        ));
                        continue;
                    }
                    Some(_) => {}
                }
                let pos = (revision, key.clone());
                if !w.delivered.insert(pos.clone()) {
                    violations.push(v(
                        WatchViolationKind::Duplicate,
                        "change delivered more than once".into(),
                    ));
                    continue;
                }
                // Within one revision (one transaction) keys may arrive in
                // any order; across revisions the order must be ascending.
                if let Some((hr, hk)) = &w.high {
                    if *hr > revision {
                        violations.push(v(
                            WatchViolationKind::Reorder,
                            format!("arrived after revision {hr} key {hk:?}"),
                        ));
                    }
                }
                if w.high.as_ref().is_none_or(|h| *h < pos) {
                    w.high = Some(pos);
                }
                w.horizon = w.horizon.max(revision);
            }
            Record::Progress { watch, revision } => {
                let w = watchers.get_mut(&watch).ok_or_else(|| {
                    HistoryError::at(
                        line_no,
                        format!("progress for watch {watch:?} before its \"watch\" record"),
                    )
                })?;
                w.horizon = w.horizon.max(revision);
            }
            Record::Commit { .. } => unreachable!("commits were consumed above"),
        }
    }
    // Completeness: every matching change between the first start revision
    // and the horizon must have been delivered.
    for (name, w) in &watchers {
        for ((rev, key), _) in commits.range((w.first_start, String::new())..) {
            if *rev > w.horizon {
                break;
            }
            if w.filter.matches(key) && !w.delivered.contains(&(*rev, key.clone())) {
                violations.push(WatchViolation {
                    watch: name.clone(),
                    kind: WatchViolationKind::Loss,
                    revision: *rev,
                    key: key.clone(),
                    line: w.session_line,
                    detail: format!(
                        "committed but never delivered although the watcher reached revision {}",
                        w.horizon
                    ),
                });
            }
        }
    }
    violations.sort_by_key(|v| (v.line, v.revision));
    Ok(violations)
}

fn check_value(
    line: usize,
    change: ChangeType,
    value: &Option<String>,
) -> Result<(), HistoryError> {
    match (change, value) {
        (ChangeType::Put, None) => Err(HistoryError::at(line, "put needs a string \"value\"")),
        (ChangeType::Delete, Some(_)) => {
            Err(HistoryError::at(line, "delete must not carry a value"))
        }
        _ => Ok(()),
    }
}
