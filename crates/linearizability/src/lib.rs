//! Correctness checkers for histories recorded against Phalanx (or any
//! etcd-compatible store).
//!
//! # Main types
//!
//! * [`History`] — a parsed JSON-lines operation history: each
//!   [`Operation`] pairs an invocation with its completion, carrying the
//!   process, key, [`OpData`] (read/write/delete/cas), [`Status`]
//!   (`ok`/`fail`/`info`) and the call/return times. Parse errors are
//!   [`HistoryError`]s that name the offending line.
//! * [`check`] — decides linearizability of a [`History`] against a model
//!   where every key is an independent register starting absent. It splits
//!   the history per key and runs a memoised Wing–Gong–Lowe search on each,
//!   returning an [`Outcome`]: linearizable, not linearizable (with a
//!   [`Violation`] per key naming the operations that cannot be ordered), or
//!   unknown when the [`Limits`] ran out.
//! * [`check_watch`] — checks a watch log: each watch receives every
//!   committed change in its range exactly once, in revision order, also
//!   across resumptions ([`WatchViolation`]).
//! * [`check_leases`] — checks lease safety: keys never vanish while their
//!   lease is provably alive, and never outlive a revoked or expired lease
//!   ([`LeaseViolation`]).
//! * [`sim`] — a deterministic generator of linearizable histories, used
//!   by tests and benchmarks.
//!
//! All formats are documented in `docs/history-format.md`.

pub mod checker;
pub mod history;
pub mod lease;
pub mod sim;
pub mod watch;

pub use checker::{check, Limits, Outcome, Violation};
pub use history::{Event, EventType, Function, History, HistoryError, OpData, Operation, Status};
pub use lease::{check_leases, LeaseOptions, LeaseViolation, LeaseViolationKind};
pub use watch::{check_watch, ChangeType, WatchViolation, WatchViolationKind};
