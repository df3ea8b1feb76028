//! Operation histories (JSON lines): one [`Event`] per line, written with
//! [`Event::to_line`] (the simulator, drills and the generator in
//! [`crate::sim`] all write through it) and parsed into paired
//! [`Operation`]s by [`History::parse`].
//!
//! The format is documented in `docs/history-format.md`. Parsing is strict:
//! anything the checker would have to guess about is reported as a
//! [`HistoryError`] carrying the 1-based line number, because a checker that
//! silently "repairs" its input can turn a real bug into a pass.

use std::collections::HashMap;
use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a history could not be parsed. Every variant except [`HistoryError::Io`]
/// names the 1-based line it refers to.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The input could not be read at all.
    #[error("cannot read history: {0}")]
    Io(#[from] std::io::Error),
    /// The line is not a JSON object of the expected shape.
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: String },
}

impl HistoryError {
    pub(crate) fn at(line: usize, reason: impl Into<String>) -> Self {
        HistoryError::Malformed {
            line,
            reason: reason.into(),
        }
    }

    /// Line number the error refers to, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            HistoryError::Io(_) => None,
            HistoryError::Malformed { line, .. } => Some(*line),
        }
    }
}

/// The event type of one history line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// The operation a history line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    Read,
    Write,
    Delete,
    Cas,
}

impl std::fmt::Display for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Function::Read => "read",
            Function::Write => "write",
            Function::Delete => "delete",
            Function::Cas => "cas",
        })
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Completed and took effect.
    Ok,
    /// Did not take effect (for cas: the comparison failed).
    Fail,
    /// Indeterminate: may have taken effect at any time after its invocation,
    /// or never. Also used for invocations left open at the end of the file.
    Info,
}

/// What an operation asked for and, for reads, what it observed.
/// `None` always means "key absent".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpData {
    /// A read; `observed` is only meaningful when the status is `Ok`.
    Read {
        observed: Option<String>,
    },
    Write {
        value: String,
    },
    Delete,
    Cas {
        expected: Option<String>,
        new: String,
    },
}

/// One invocation paired with its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Position in [`History::ops`].
    pub id: usize,
    pub process: i64,
    pub key: String,
    pub data: OpData,
    pub status: Status,
    /// Invocation time.
    pub call: i64,
    /// Completion time; `None` for `info` (and unterminated) operations, which
    /// the checker treats as completing at +infinity.
    pub ret: Option<i64>,
    /// 1-based line of the invocation.
    pub call_line: usize,
    /// 1-based line of the completion, if there was one.
    pub ret_line: Option<usize>,
}

impl Operation {
    pub fn function(&self) -> Function {
        match self.data {
            OpData::Read { .. } => Function::Read,
            OpData::Write { .. } => Function::Write,
            OpData::Delete => Function::Delete,
            OpData::Cas { .. } => Function::Cas,
        }
    }
}

fn show(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "null".to_string(),
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Fail => "fail",
            Status::Info => "info",
        };
        write!(
            f,
            "line {}: process {} {} {:?} ",
            self.call_line,
            self.process,
            self.function(),
            self.key
        )?;
        match &self.data {
            OpData::Read { observed } if self.status == Status::Ok => {
                write!(f, "-> {}", show(observed))?
            }
            OpData::Read { .. } => write!(f, "-> ?")?,
            OpData::Write { value } => write!(f, "{value:?}")?,
            OpData::Delete => {}
            OpData::Cas { expected, new } => write!(f, "{} -> {new:?}", show(expected))?,
        }
        match self.ret {
            Some(r) => write!(f, " [{status}, time {}..{}]", self.call, r),
            None => write!(f, " [{status}, time {}..]", self.call),
        }
    }
}

/// A parsed history: operations in invocation order (file order).
#[derive(Debug, Clone, Default)]
pub struct History {
    pub ops: Vec<Operation>,
}

/// One line of an operation history, exactly as written and read (see
/// `docs/history-format.md` for what `value` holds per function).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// A sequential client.
    pub process: i64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: Function,
    /// Required on `invoke`; optional on the completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    /// Monotonic per process, one unit per file.
    pub time: i64,
}

impl Event {
    /// An event of `process` on `key`.
    pub fn new(
        process: i64,
        kind: EventType,
        f: Function,
        key: &str,
        value: Value,
        time: i64,
    ) -> Event {
        Event {
            process,
            kind,
            f,
            key: Some(key.to_string()),
            value,
            time,
        }
    }

    /// The `value` of a cas: `[expected, new]`, `expected` null when the key
    /// must be absent.
    pub fn cas_value(expected: Option<&str>, new: &str) -> Value {
        Value::Array(vec![
            expected.map_or(Value::Null, |e| Value::String(e.to_string())),
            Value::String(new.to_string()),
        ])
    }

    /// The JSON line (without the newline) that [`History::parse`] reads.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a history event always serializes")
    }
}

/// Values are strings; integers are accepted and compared by their decimal
/// text because many test harnesses write counters as numbers.
fn scalar(
    line: usize,
    v: &Value,
    what: &str,
    allow_null: bool,
) -> Result<Option<String>, HistoryError> {
    match v {
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Value::Null if allow_null => Ok(None),
        other => Err(HistoryError::at(
            line,
            format!(
                "{what} must be a string{}, got {other}",
                if allow_null { " or null" } else { "" }
            ),
        )),
    }
}

struct Open {
    op: usize,
    f: Function,
}

impl History {
    /// Parses a JSON-lines history. Blank lines are ignored.
    pub fn parse<R: BufRead>(reader: R) -> Result<History, HistoryError> {
        let mut ops: Vec<Operation> = Vec::new();
        let mut open: HashMap<i64, Open> = HashMap::new();
        // Last time seen per process: a sequential client cannot go back in time.
        let mut last_time: HashMap<i64, i64> = HashMap::new();
        for (idx, line) in reader.lines().enumerate() {
            let line_no = idx + 1;
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let ev: Event = serde_json::from_str(&line)
                .map_err(|e| HistoryError::at(line_no, format!("invalid event: {e}")))?;
            if let Some(prev) = last_time.get(&ev.process) {
                if ev.time < *prev {
                    return Err(HistoryError::at(
                        line_no,
                        format!(
                            "time {} is before the previous event of process {} (time {prev})",
                            ev.time, ev.process
                        ),
                    ));
                }
            }
            last_time.insert(ev.process, ev.time);
            match ev.kind {
                EventType::Invoke => {
                    if let Some(o) = open.get(&ev.process) {
                        return Err(HistoryError::at(
                            line_no,
                            format!(
                                "process {} invokes a new operation while its {} from line {} is still open",
                                ev.process, o.f, ops[o.op].call_line
                            ),
                        ));
                    }
                    let key = ev
                        .key
                        .ok_or_else(|| HistoryError::at(line_no, "invoke has no \"key\""))?;
                    let data = match ev.f {
                        Function::Read => OpData::Read { observed: None },
                        Function::Write => OpData::Write {
                            value: scalar(line_no, &ev.value, "write value", false)?
                                .unwrap_or_default(),
                        },
                        Function::Delete => {
                            if !ev.value.is_null() {
                                return Err(HistoryError::at(line_no, "delete value must be null"));
                            }
                            OpData::Delete
                        }
                        Function::Cas => {
                            let arr =
                                ev.value
                                    .as_array()
                                    .filter(|a| a.len() == 2)
                                    .ok_or_else(|| {
                                        HistoryError::at(
                                            line_no,
                                            format!(
                                                "cas value must be [expected, new], got {}",
                                                ev.value
                                            ),
                                        )
                                    })?;
                            OpData::Cas {
                                expected: scalar(line_no, &arr[0], "cas expected value", true)?,
                                new: scalar(line_no, &arr[1], "cas new value", false)?
                                    .unwrap_or_default(),
                            }
                        }
                    };
                    let id = ops.len();
                    ops.push(Operation {
                        id,
                        process: ev.process,
                        key,
                        data,
                        status: Status::Info,
                        call: ev.time,
                        ret: None,
                        call_line: line_no,
                        ret_line: None,
                    });
                    open.insert(ev.process, Open { op: id, f: ev.f });
                }
                kind => {
                    let o = open.remove(&ev.process).ok_or_else(|| {
                        HistoryError::at(
                            line_no,
                            format!(
                                "process {} completes an operation it never invoked",
                                ev.process
                            ),
                        )
                    })?;
                    let op = &mut ops[o.op];
                    if o.f != ev.f {
                        return Err(HistoryError::at(
                            line_no,
                            format!(
                                "completion f={} does not match the {} invoked on line {}",
                                ev.f, o.f, op.call_line
                            ),
                        ));
                    }
                    if let Some(k) = &ev.key {
                        if *k != op.key {
                            return Err(HistoryError::at(
                                line_no,
                                format!("completion key {k:?} does not match key {:?} invoked on line {}", op.key, op.call_line),
                            ));
                        }
                    }
                    op.ret_line = Some(line_no);
                    match kind {
                        EventType::Ok => {
                            op.status = Status::Ok;
                            op.ret = Some(ev.time);
                            if let OpData::Read { observed } = &mut op.data {
                                *observed = scalar(line_no, &ev.value, "read result", true)?;
                            }
                        }
                        EventType::Fail => {
                            op.status = Status::Fail;
                            op.ret = Some(ev.time);
                        }
                        // An indeterminate result may take effect arbitrarily
                        // late, so its completion time carries no information.
                        EventType::Info => op.status = Status::Info,
                        EventType::Invoke => unreachable!(),
                    }
                }
            }
        }
        // Operations never completed are indeterminate, exactly like `info`.
        Ok(History { ops })
    }

    /// Parses a history from a string (convenience for tests).
    pub fn parse_str(s: &str) -> Result<History, HistoryError> {
        History::parse(s.as_bytes())
    }
}
