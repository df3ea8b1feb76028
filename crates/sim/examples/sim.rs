//! Command-line driver: run many seeds, report failures.
//!
//! ```text
//! cargo run -p sim --release --example sim -- --seeds 1..1000 [--duration-ms 20000]
//!     [--members N] [--clients N] [--keys N] [--no-faults]
//!     [--planted skip-read-index|ack-before-fsync] [--verbose]
//! ```
//! `--seeds` takes `A..B` (B excluded), `A..=B`, or a comma list `3,17,42`.
//! One verdict line per seed, ending in the run's `trace` digest; a failing
//! seed also prints its fault schedule and the violation. Re-running a seed
//! (same options) replays the run exactly: the same `trace` proves it.
//! `--verbose` prints each run's history. Exit status 1 if any seed failed
//! (not linearizable, not recovered after the faults healed, or an
//! acknowledged write lost), 2 on bad arguments or a run that could not be
//! carried out.

use std::process::ExitCode;

use consensus::PlantedBug;

fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|e| format!("bad seed {t:?}: {e}"))
    };
    if let Some((a, b)) = s.split_once("..=") {
        return Ok((num(a)?..=num(b)?).collect());
    }
    if let Some((a, b)) = s.split_once("..") {
        return Ok((num(a)?..num(b)?).collect());
    }
    s.split(',').map(num).collect()
}

const USAGE: &str = "usage: sim --seeds A..B [--duration-ms MS] [--members N] [--clients N] [--keys N] [--no-faults] [--planted skip-read-index|ack-before-fsync] [--verbose]";

fn main() -> ExitCode {
    let mut seeds = vec![1];
    let mut duration_ms = None;
    let mut members = None;
    let mut clients = None;
    let mut keys = None;
    let mut faults = true;
    let mut planted: Option<PlantedBug> = None;
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--seeds" => seeds = parse_seeds(&val("--seeds")?)?,
                "--duration-ms" | "--members" | "--clients" | "--keys" => {
                    let v = val(&a)?;
                    let n: u64 = v.parse().map_err(|e| format!("{a}: {e}"))?;
                    match a.as_str() {
                        "--duration-ms" => duration_ms = Some(n),
                        "--members" => members = Some(n as usize),
                        "--clients" => clients = Some(n as usize),
                        _ => keys = Some(n as usize),
                    }
                }
                "--planted" => {
                    planted = Some(
                        val("--planted")?
                            .parse()
                            .map_err(|e| format!("--planted: {e}"))?,
                    )
                }
                "--no-faults" => faults = false,
                "--verbose" => verbose = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}; {USAGE}")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("sim: {e}");
            return ExitCode::from(2);
        }
    }
    let started = std::time::Instant::now();
    let (mut failed, mut errors, mut ok_ops) = (Vec::new(), 0, 0);
    for &seed in &seeds {
        let mut cfg = sim::SimConfig::new(seed);
        if let Some(d) = duration_ms {
            cfg.duration_ms = d
        }
        if let Some(m) = members {
            cfg.members = m
        }
        if let Some(c) = clients {
            cfg.clients = c
        }
        if let Some(k) = keys {
            cfg.keys = k
        }
        cfg.faults = faults;
        cfg.planted = planted;
        match sim::run(&cfg) {
            Ok(r) => {
                println!("{r}");
                ok_ops += r.counts.ok;
                if !r.passed() {
                    println!("  FAILED seed={seed}: replay it with the same options and `--seeds {seed}`");
                    println!("  schedule: {}", r.schedule);
                    if let sim::Verdict::Fail(v) = &r.verdict {
                        for l in v.lines().take(40) {
                            println!("  {l}")
                        }
                    }
                    for l in r.lost.iter().take(20) {
                        println!("  lost: {l}")
                    }
                    for p in r.panics.iter().take(5) {
                        println!("  panic: {p}")
                    }
                    failed.push(seed);
                }
                if verbose {
                    println!("{}", r.history)
                }
            }
            Err(e) => {
                println!("sim seed={seed} ERROR {e}");
                errors += 1;
            }
        }
    }
    println!(
        "sim: {} seeds in {:.1}s wall, {} ok ops, {} failed {:?}, {} errors",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        ok_ops,
        failed.len(),
        failed,
        errors
    );
    if errors > 0 {
        ExitCode::from(2)
    } else if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
