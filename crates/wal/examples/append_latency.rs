//! Latency of one durable append: the WAL (append + one fdatasync) against
//! the redb commit the Raft log used before (`Durability::Immediate`, one
//! table insert per commit, as the old `LogStore` did per group).
//!
//! `cargo run --release -p wal --example append_latency [DIR] [ITERATIONS]`
//! (DIR defaults to `target/wal-append-latency`, on the disk under test:
//! not a tmpfs). Prints p50/p99/mean per durable commit and the syncs
//! counted, for single appends and for groups of 16 appends per sync.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wal::{FsDir, Wal, WalOptions};

/// Payload bytes per record: about one 256-byte put as a Raft entry.
const RECORD_BYTES: usize = 300;
/// Appends per group commit in the grouped runs.
const GROUP_APPENDS: usize = 16;
const DEFAULT_ITERATIONS: usize = 2000;

const REDB_LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("raft_log");

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name:<44} n={:<5} p50={:>8.3} ms  p99={:>8.3} ms  mean={:>8.3} ms",
        samples.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
}

fn wal_run(dir: &std::path::Path, iterations: usize, per_sync: usize) -> Vec<Duration> {
    wal_run_with(dir, iterations, per_sync, true)
}

/// `sync`: false measures the work besides the fdatasync (frame, checksum, write).
fn wal_run_with(
    dir: &std::path::Path,
    iterations: usize,
    per_sync: usize,
    sync: bool,
) -> Vec<Duration> {
    let _ = std::fs::remove_dir_all(dir);
    let fs = Arc::new(FsDir::create_all(dir).unwrap());
    let (mut w, _) = Wal::open(fs, WalOptions::default(), None).unwrap();
    let payload = vec![0x5au8; RECORD_BYTES];
    let mut index = 1u64;
    // Warm-up: creates the segment.
    w.append([(index, payload.as_slice())]).unwrap();
    w.sync().unwrap();
    index += 1;
    let syncs_before = w.data_syncs();
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        for _ in 0..per_sync {
            w.append([(index, payload.as_slice())]).unwrap();
            index += 1;
        }
        if sync {
            w.sync().unwrap();
        }
        samples.push(started.elapsed());
    }
    if !sync {
        return samples;
    }
    let syncs = w.data_syncs() - syncs_before;
    println!(
        "  wal: {} group commits, {syncs} fdatasyncs ({} appends each)",
        iterations, per_sync
    );
    assert_eq!(syncs, iterations as u64, "one fdatasync per group commit");
    samples
}

fn redb_run(dir: &std::path::Path, iterations: usize, per_commit: usize) -> Vec<Duration> {
    redb_run_with(dir, iterations, per_commit, redb::Durability::Immediate)
}

fn redb_run_with(
    dir: &std::path::Path,
    iterations: usize,
    per_commit: usize,
    durability: redb::Durability,
) -> Vec<Duration> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let db = redb::Database::create(dir.join("raft.redb")).unwrap();
    let payload = vec![0x5au8; RECORD_BYTES + 4];
    let mut index = 1u64;
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(durability).unwrap();
        {
            let mut t = txn.open_table(REDB_LOG).unwrap();
            for _ in 0..per_commit {
                t.insert(index, payload.as_slice()).unwrap();
                index += 1;
            }
        }
        txn.commit().unwrap();
        samples.push(started.elapsed());
    }
    samples
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/wal-append-latency".into()),
    );
    let iterations: usize = args
        .next()
        .map(|s| s.parse().expect("ITERATIONS is a number"))
        .unwrap_or(DEFAULT_ITERATIONS);
    println!(
        "durable append of {RECORD_BYTES}-byte records in {}, {iterations} commits each:",
        dir.display()
    );
    summary(
        "wal: 1 append + fdatasync",
        wal_run(&dir.join("wal1"), iterations, 1),
    );
    summary(
        "redb: 1 insert, commit (Durability::Immediate)",
        redb_run(&dir.join("redb1"), iterations, 1),
    );
    summary(
        &format!("wal: {GROUP_APPENDS} appends + fdatasync"),
        wal_run(&dir.join("wal16"), iterations, GROUP_APPENDS),
    );
    summary(
        &format!("redb: {GROUP_APPENDS} inserts, commit"),
        redb_run(&dir.join("redb16"), iterations, GROUP_APPENDS),
    );
    // The work besides the fdatasync: what the WAL saves on every commit.
    summary(
        "wal: 1 append, no fdatasync (CPU + write)",
        wal_run_with(&dir.join("wal1n"), iterations, 1, false),
    );
    summary(
        "redb: 1 insert, commit with Durability::None",
        redb_run_with(&dir.join("redb1n"), iterations, 1, redb::Durability::None),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
