//! Command-line driver: run many seeds, report failures.
//!
//! ```text
//! cargo run -p sim --release --example sim -- --seeds 1..1000 [--duration-ms 20000]
//!     [--members N] [--clients N] [--keys N] [--no-faults] [--stale-reads] [--verbose]
//! ```
//! `--seeds` takes `A..B` (B excluded), `A..=B`, or a comma list `3,17,42`.
//! One verdict line per seed; a failing seed also prints its fault schedule
//! and the violation, so it can be re-run with `--seeds N`. Exit status 1 if
//! any seed failed (not linearizable, or an acknowledged write lost), 2 on
//! bad arguments or a run that could not be carried out.
//!
//! Every started member leaks its log writer thread and open redb file until
//! the process exits (see docs/simulation.md, "Restart"), so more than
//! [`SEEDS_PER_PROCESS`] seeds are run in child processes of this driver, that
//! many each, one after the other (`--in-process` turns that off).

use std::process::ExitCode;

fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let num = |t: &str| t.trim().parse::<u64>().map_err(|e| format!("bad seed {t:?}: {e}"));
    if let Some((a, b)) = s.split_once("..=") {
        return Ok((num(a)?..=num(b)?).collect());
    }
    if let Some((a, b)) = s.split_once("..") {
        return Ok((num(a)?..num(b)?).collect());
    }
    s.split(',').map(num).collect()
}

/// Seeds one process runs before the driver starts a fresh child process.
const SEEDS_PER_PROCESS: usize = 20;

/// Run `seeds` in child processes, `SEEDS_PER_PROCESS` at a time; returns
/// (failed seeds, child errors).
fn run_in_children(seeds: &[u64], passthrough: &[String]) -> (Vec<u64>, usize) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("sim: cannot find own executable to start child runs: {e}");
            return (Vec::new(), 1);
        }
    };
    let (mut failed, mut errors) = (Vec::new(), 0);
    for chunk in seeds.chunks(SEEDS_PER_PROCESS) {
        let list = chunk.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
        let out = std::process::Command::new(&exe)
            .args(passthrough)
            .args(["--in-process", "--seeds", &list])
            .stderr(std::process::Stdio::inherit())
            .output();
        match out {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                for line in text.lines() {
                    if let Some(rest) = line.strip_prefix("  FAILED seed=") {
                        failed.extend(rest.split(':').next().and_then(|s| s.parse::<u64>().ok()));
                    }
                    if line.contains(" ERROR ") {
                        errors += 1;
                    }
                    if !line.starts_with("sim: ") {
                        println!("{line}");
                    }
                }
                if !matches!(out.status.code(), Some(0) | Some(1)) {
                    println!("sim: child run of seeds {list} ended with {}", out.status);
                    errors += 1;
                }
            }
            Err(e) => {
                println!("sim: cannot start child run of seeds {list}: {e}");
                errors += 1;
            }
        }
    }
    (failed, errors)
}

fn main() -> ExitCode {
    let mut seeds = vec![1];
    let mut duration_ms = None;
    let mut members = None;
    let mut clients = None;
    let mut keys = None;
    let mut faults = true;
    let mut stale_reads = false;
    let mut verbose = false;
    let mut in_process = false;
    let mut passthrough = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--seeds" => seeds = parse_seeds(&val("--seeds")?)?,
                "--in-process" => in_process = true,
                "--duration-ms" | "--members" | "--clients" | "--keys" => {
                    let v = val(&a)?;
                    let n: u64 = v.parse().map_err(|e| format!("{a}: {e}"))?;
                    match a.as_str() {
                        "--duration-ms" => duration_ms = Some(n),
                        "--members" => members = Some(n as usize),
                        "--clients" => clients = Some(n as usize),
                        _ => keys = Some(n as usize),
                    }
                    passthrough.extend([a.clone(), v]);
                }
                "--no-faults" | "--stale-reads" | "--verbose" => {
                    match a.as_str() {
                        "--no-faults" => faults = false,
                        "--stale-reads" => stale_reads = true,
                        _ => verbose = true,
                    }
                    passthrough.push(a.clone());
                }
                "-h" | "--help" => {
                    println!("usage: sim --seeds A..B [--duration-ms MS] [--members N] [--clients N] [--keys N] [--no-faults] [--stale-reads] [--verbose]");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?} (see --help)")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("sim: {e}");
            return ExitCode::from(2);
        }
    }
    let started = std::time::Instant::now();
    if !in_process && seeds.len() > SEEDS_PER_PROCESS {
        let (failed, errors) = run_in_children(&seeds, &passthrough);
        println!(
            "sim: {} seeds in {:.1}s wall, {} failed {:?}, {} errors",
            seeds.len(), started.elapsed().as_secs_f64(), failed.len(), failed, errors
        );
        return if errors > 0 { ExitCode::from(2) } else if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    let (mut failed, mut errors, mut ok_ops) = (Vec::new(), 0, 0);
    for &seed in &seeds {
        let mut cfg = sim::SimConfig::new(seed);
        if let Some(d) = duration_ms { cfg.duration_ms = d }
        if let Some(m) = members { cfg.members = m }
        if let Some(c) = clients { cfg.clients = c }
        if let Some(k) = keys { cfg.keys = k }
        cfg.faults = faults;
        cfg.stale_reads = stale_reads;
        match sim::run(&cfg) {
            Ok(r) => {
                println!("{r}");
                ok_ops += r.counts.ok;
                if !r.passed() {
                    println!("  FAILED seed={seed}: re-run with `--seeds {seed}`{}", if stale_reads { " --stale-reads" } else { "" });
                    println!("  schedule: {}", r.schedule);
                    if let sim::Verdict::Fail(v) = &r.verdict {
                        for l in v.lines().take(40) { println!("  {l}") }
                    }
                    for l in r.lost.iter().take(20) { println!("  lost: {l}") }
                    failed.push(seed);
                }
                if verbose { println!("{}", r.history) }
            }
            Err(e) => {
                println!("sim seed={seed} ERROR {e}");
                errors += 1;
            }
        }
    }
    println!(
        "sim: {} seeds in {:.1}s wall, {} ok ops, {} failed {:?}, {} errors",
        seeds.len(), started.elapsed().as_secs_f64(), ok_ops, failed.len(), failed, errors
    );
    if errors > 0 { ExitCode::from(2) } else if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
