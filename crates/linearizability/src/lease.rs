//! Lease-safety checker.
//!
//! Two properties, checked against client-observed timings (all in
//! milliseconds, see `docs/history-format.md`):
//!
//! 1. **No early loss**: a key put with lease L is not observed absent while
//!    L is provably alive — i.e. before `sent + ttl` of L's latest
//!    acknowledged grant/keepalive. The window starts at the *send* time of
//!    the acknowledged request, not at the ack: the server may have renewed
//!    at any instant in between, and measuring from the ack would blame a
//!    correct server.
//! 2. **No lingering**: a key observed attached to L after L's revoke was
//!    acknowledged, or after L must have expired (latest renewal ack + ttl +
//!    grace), is a violation. The grace absorbs the expiry loop period and
//!    the TTL extension servers grant on leader change.
//!
//! Reads must be linearizable (a serializable read may legitimately be
//! stale). Whenever another write to the key could race with the lease put,
//! the read is skipped rather than guessed about.

use std::collections::HashMap;
use std::io::BufRead;

use serde::Deserialize;

use crate::history::HistoryError;

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum Record {
    Grant {
        lease: i64,
        ttl_ms: i64,
        sent: Option<i64>,
        time: i64,
    },
    Keepalive {
        lease: i64,
        ttl_ms: i64,
        sent: Option<i64>,
        time: Option<i64>,
    },
    Revoke {
        lease: i64,
        sent: i64,
        time: Option<i64>,
    },
    Put {
        key: String,
        #[serde(default)]
        lease: i64,
        sent: i64,
        time: Option<i64>,
    },
    Delete {
        key: String,
        sent: i64,
        time: Option<i64>,
    },
    Read {
        key: String,
        sent: i64,
        time: i64,
        present: bool,
        #[serde(default)]
        lease: i64,
    },
}

/// Which lease property was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseViolationKind {
    /// A key disappeared while its lease was provably alive.
    VanishedEarly,
    /// A key of a revoked or expired lease was still present.
    Lingered,
}

/// One lease-safety violation, anchored at the read that exposed it.
#[derive(Debug, Clone)]
pub struct LeaseViolation {
    pub kind: LeaseViolationKind,
    pub key: String,
    pub lease: i64,
    pub line: usize,
    pub detail: String,
}

impl std::fmt::Display for LeaseViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: {:?}: key {:?} lease {}: {}",
            self.line, self.kind, self.key, self.lease, self.detail
        )
    }
}

/// Options for [`check_leases`].
#[derive(Debug, Clone, Copy)]
pub struct LeaseOptions {
    /// Milliseconds a key may outlive its lease's latest possible expiry.
    pub grace_ms: i64,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions { grace_ms: 1000 }
    }
}

#[derive(Default)]
struct Lease {
    /// (sent, ack, ttl) of acknowledged renewals (grant included).
    renewals: Vec<(i64, i64, i64)>,
    /// Send times of renewals that were never acknowledged.
    unacked: Vec<i64>,
    /// (sent, ack) of revokes.
    revokes: Vec<(i64, Option<i64>)>,
}

struct Write {
    line: usize,
    lease: i64,
    sent: i64,
    time: Option<i64>,
}

struct Read {
    line: usize,
    key: String,
    sent: i64,
    time: i64,
    present: bool,
    lease: i64,
}

/// Checks a lease log. Returns the violations (empty = safe), or an error for
/// malformed input.
pub fn check_leases<R: BufRead>(
    reader: R,
    opts: LeaseOptions,
) -> Result<Vec<LeaseViolation>, HistoryError> {
    let mut leases: HashMap<i64, Lease> = HashMap::new();
    let mut writes: HashMap<String, Vec<Write>> = HashMap::new();
    let mut reads: Vec<Read> = Vec::new();
    for (idx, line) in reader.lines().enumerate() {
        let line_no = idx + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: Record = serde_json::from_str(&line)
            .map_err(|e| HistoryError::at(line_no, format!("invalid lease-log record: {e}")))?;
        let order = |sent: i64, time: Option<i64>| match time {
            Some(t) if t < sent => Err(HistoryError::at(
                line_no,
                format!("time {t} is before sent {sent}"),
            )),
            _ => Ok(()),
        };
        match rec {
            Record::Grant {
                lease,
                ttl_ms,
                sent,
                time,
            } => {
                order(sent.unwrap_or(time), Some(time))?;
                if ttl_ms <= 0 {
                    return Err(HistoryError::at(line_no, "grant ttl_ms must be positive"));
                }
                leases.entry(lease).or_default().renewals.push((
                    sent.unwrap_or(time),
                    time,
                    ttl_ms,
                ));
            }
            Record::Keepalive {
                lease,
                ttl_ms,
                sent,
                time,
            } => {
                let sent = sent.or(time).ok_or_else(|| {
                    HistoryError::at(line_no, "keepalive needs \"sent\" or \"time\"")
                })?;
                order(sent, time)?;
                let l = leases.entry(lease).or_default();
                match time {
                    // ttl 0 is etcd's "lease not found": no renewal happened.
                    Some(t) if ttl_ms > 0 => l.renewals.push((sent, t, ttl_ms)),
                    Some(_) => {}
                    None => l.unacked.push(sent),
                }
            }
            Record::Revoke { lease, sent, time } => {
                order(sent, time)?;
                leases.entry(lease).or_default().revokes.push((sent, time));
            }
            Record::Put {
                key,
                lease,
                sent,
                time,
            } => {
                order(sent, time)?;
                writes.entry(key).or_default().push(Write {
                    line: line_no,
                    lease,
                    sent,
                    time,
                });
            }
            Record::Delete { key, sent, time } => {
                order(sent, time)?;
                writes.entry(key).or_default().push(Write {
                    line: line_no,
                    lease: 0,
                    sent,
                    time,
                });
            }
            Record::Read {
                key,
                sent,
                time,
                present,
                lease,
            } => {
                order(sent, Some(time))?;
                if !present && lease != 0 {
                    return Err(HistoryError::at(
                        line_no,
                        "an absent key cannot carry a lease",
                    ));
                }
                reads.push(Read {
                    line: line_no,
                    key,
                    sent,
                    time,
                    present,
                    lease,
                });
            }
        }
    }

    let empty = Lease::default();
    let mut out = Vec::new();
    for r in &reads {
        if r.present && r.lease != 0 {
            let l = leases.get(&r.lease).unwrap_or(&empty);
            if let Some((_, ack)) = l
                .revokes
                .iter()
                .filter_map(|(s, a)| a.map(|a| (*s, a)))
                .find(|(_, a)| *a < r.sent)
            {
                out.push(LeaseViolation {
                    kind: LeaseViolationKind::Lingered,
                    key: r.key.clone(),
                    lease: r.lease,
                    line: r.line,
                    detail: format!("read sent at {} still saw the key, but the revoke was acknowledged at {ack}", r.sent),
                });
                continue;
            }
            // Only renewals sent before the read finished could have kept
            // the lease alive for it; an unacknowledged one might have
            // renewed at any later moment, so then no expiry can be asserted.
            if l.unacked.iter().any(|s| *s < r.time) {
                continue;
            }
            let latest = l
                .renewals
                .iter()
                .filter(|(s, _, _)| *s < r.time)
                .map(|(_, a, ttl)| a + ttl)
                .max();
            if let Some(expiry) = latest {
                if r.sent > expiry + opts.grace_ms {
                    out.push(LeaseViolation {
                        kind: LeaseViolationKind::Lingered,
                        key: r.key.clone(),
                        lease: r.lease,
                        line: r.line,
                        detail: format!(
                            "read sent at {} still saw the key, but the lease expired by {expiry} (grace {} ms)",
                            r.sent, opts.grace_ms
                        ),
                    });
                }
            }
        } else if !r.present {
            let Some(ws) = writes.get(&r.key) else {
                continue;
            };
            // The lease put this read should observe: acknowledged before the
            // read was sent, latest such.
            let Some(p) = ws
                .iter()
                .filter(|w| w.lease != 0 && w.time.is_some_and(|t| t <= r.sent))
                .max_by_key(|w| w.time)
            else {
                continue;
            };
            // Any other write that could be ordered after `p` and before the
            // read explains the absence legitimately.
            let raced = ws.iter().any(|w| {
                !std::ptr::eq(w, p) && w.sent < r.time && w.time.is_none_or(|t| t > p.sent)
            });
            if raced {
                continue;
            }
            let l = leases.get(&p.lease).unwrap_or(&empty);
            if l.revokes.iter().any(|(s, _)| *s < r.time) {
                continue;
            }
            let guaranteed = l.renewals.iter().map(|(s, _, ttl)| s + ttl).max();
            if let Some(until) = guaranteed {
                if r.time < until {
                    out.push(LeaseViolation {
                        kind: LeaseViolationKind::VanishedEarly,
                        key: r.key.clone(),
                        lease: p.lease,
                        line: r.line,
                        detail: format!(
                            "read [{}..{}] found the key absent, but it was put (line {}) with a lease alive until at least {until}",
                            r.sent, r.time, p.line
                        ),
                    });
                }
            }
        }
    }
    Ok(out)
}
