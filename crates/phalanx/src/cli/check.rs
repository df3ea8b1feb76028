//! `phalanx check`: command-line front end for the checkers.
//!
//! Exit codes: 0 = correct, 1 = violation found, 2 = malformed input or
//! unreadable file, 3 = unknown (the time limit ran out).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use linearizability::{
    check, check_leases, check_watch, History, HistoryError, LeaseOptions, Limits, Outcome,
};

/// Exit code: the history is correct.
pub const EXIT_OK: i32 = 0;
/// Exit code: a violation was found.
pub const EXIT_VIOLATION: i32 = 1;
/// Exit code: the input is malformed or cannot be read.
pub const EXIT_MALFORMED: i32 = 2;
/// Exit code: the limit ran out before a decision.
pub const EXIT_UNKNOWN: i32 = 3;

/// Arguments of `phalanx check`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Exit status: 0 correct, 1 violation, 2 malformed input, 3 unknown (limit exceeded).\n\
Formats: docs/history-format.md"
)]
pub struct CheckArgs {
    /// History file (JSON lines); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// FILE is a watch log: check delivery (no loss, duplicate or reorder).
    #[arg(long, conflicts_with = "leases")]
    pub watch: bool,
    /// FILE is a lease log: check lease safety.
    #[arg(long)]
    pub leases: bool,
    /// Wall-clock limit for the linearizability search, in milliseconds
    /// (0 = no limit). When exceeded the result is "unknown" (exit 3).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub timeout_ms: u64,
    /// Lease checking: milliseconds a key may outlive its lease's latest
    /// possible expiry before it counts as lingering.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub lease_grace_ms: u64,
}

fn open(path: &PathBuf) -> Result<Box<dyn BufRead>, HistoryError> {
    if path.as_os_str() == "-" {
        Ok(Box::new(BufReader::new(std::io::stdin())))
    } else {
        Ok(Box::new(BufReader::new(File::open(path)?)))
    }
}

/// Runs the check and prints the verdict; returns the process exit code.
pub fn run(args: CheckArgs) -> i32 {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("malformed input {}: {e}", args.file.display());
            EXIT_MALFORMED
        }
    }
}

fn run_inner(args: &CheckArgs) -> Result<i32, HistoryError> {
    let input = open(&args.file)?;
    let started = Instant::now();
    if args.watch {
        let v = check_watch(input)?;
        return Ok(report(&v, "watch streams are correct"));
    }
    if args.leases {
        let v = check_leases(
            input,
            LeaseOptions {
                grace_ms: args.lease_grace_ms as i64,
            },
        )?;
        return Ok(report(&v, "leases are safe"));
    }
    let history = History::parse(input)?;
    let limits = Limits {
        timeout: (args.timeout_ms > 0).then(|| Duration::from_millis(args.timeout_ms)),
    };
    let keys = history
        .ops
        .iter()
        .map(|o| o.key.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();
    match check(&history, &limits) {
        Outcome::Linearizable => {
            println!(
                "linearizable: {} operations on {} keys, checked in {} ms",
                history.ops.len(),
                keys,
                started.elapsed().as_millis()
            );
            Ok(EXIT_OK)
        }
        Outcome::NotLinearizable(violations) => {
            println!("NOT linearizable ({} key(s)):", violations.len());
            for v in &violations {
                print!("{v}");
            }
            Ok(EXIT_VIOLATION)
        }
        Outcome::Unknown {
            key,
            checked_keys,
            total_keys,
        } => {
            println!(
                "unknown: time limit of {} ms exceeded while checking key {key:?} ({checked_keys} of {total_keys} keys done)",
                args.timeout_ms
            );
            Ok(EXIT_UNKNOWN)
        }
    }
}

fn report<T: std::fmt::Display>(violations: &[T], ok: &str) -> i32 {
    if violations.is_empty() {
        println!("{ok}");
        EXIT_OK
    } else {
        println!("{} violation(s):", violations.len());
        for v in violations {
            println!("  {v}");
        }
        EXIT_VIOLATION
    }
}
