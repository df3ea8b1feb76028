//! `phalanx sim`: runs the deterministic simulator (crates/sim) over many
//! seeds and reports failures. One verdict line per seed, ending in the
//! run's `trace` digest; a failing seed also prints its fault schedule and
//! the violation. Re-running a seed with the same options replays the run
//! exactly: the same `trace` proves it.

use consensus::PlantedBug;

/// Exit status: 1 if any seed failed (not linearizable, not recovered after
/// the faults healed, or an acknowledged write lost), 2 on bad arguments or
/// a run that could not be carried out.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Exit status: 0 all seeds passed, 1 a seed failed, 2 bad arguments or a run error.\n\
See docs/simulation.md."
)]
pub struct SimArgs {
    /// Seeds to run: `A..B` (B excluded), `A..=B`, or a comma list `3,17,42`.
    #[arg(long, default_value = "1", value_parser = parse_seeds)]
    pub seeds: Seeds,
    /// Simulated length of each run, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub duration_ms: Option<u64>,
    /// Members per simulated cluster.
    #[arg(long, value_name = "N")]
    pub members: Option<usize>,
    /// Concurrent workload clients.
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// Size of the key space.
    #[arg(long, value_name = "N")]
    pub keys: Option<usize>,
    /// Run without faults (no crashes, partitions, loss or clock jumps).
    #[arg(long)]
    pub no_faults: bool,
    /// Plant a bug the checks must catch: skip-read-index, ack-before-fsync or torn-record-accepted.
    /// Only in builds with planted bugs: `cargo run -p phalanx --features consensus/planted-bugs -- sim ...`.
    #[arg(long, value_name = "BUG")]
    pub planted: Option<PlantedBug>,
    /// Run with etcd auth on: users, roles and `auth enable` through the log,
    /// clients acting as a permitted user and one as a user whose writes
    /// must be refused on every member, root changing auth during the run.
    #[arg(long)]
    pub auth: bool,
    /// Print each run's history.
    #[arg(long)]
    pub verbose: bool,
}

/// The seeds of one `phalanx sim` run, in order.
#[derive(Debug, Clone)]
pub struct Seeds(pub Vec<u64>);

fn parse_seeds(s: &str) -> Result<Seeds, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|e| format!("bad seed {t:?}: {e}"))
    };
    let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..=") {
        (num(a)?..=num(b)?).collect()
    } else if let Some((a, b)) = s.split_once("..") {
        (num(a)?..num(b)?).collect()
    } else {
        s.split(',').map(num).collect::<Result<_, _>>()?
    };
    if seeds.is_empty() {
        return Err(format!("{s:?} holds no seed"));
    }
    Ok(Seeds(seeds))
}

/// Runs every seed and prints the verdicts; returns the process exit code.
pub fn run(args: SimArgs) -> i32 {
    let started = std::time::Instant::now();
    let (mut failed, mut errors, mut ok_ops) = (Vec::new(), 0, 0);
    for &seed in &args.seeds.0 {
        let mut cfg = sim::SimConfig::new(seed);
        if let Some(d) = args.duration_ms {
            cfg.duration_ms = d
        }
        if let Some(m) = args.members {
            cfg.members = m
        }
        if let Some(c) = args.clients {
            cfg.clients = c
        }
        if let Some(k) = args.keys {
            cfg.keys = k
        }
        cfg.faults = !args.no_faults;
        cfg.planted = args.planted;
        cfg.auth = args.auth;
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
                    for v in r.auth.iter().flat_map(|a| a.violations.iter()).take(20) {
                        println!("  auth violation: {v}")
                    }
                    failed.push(seed);
                }
                if args.verbose {
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
        args.seeds.0.len(),
        started.elapsed().as_secs_f64(),
        ok_ops,
        failed.len(),
        failed,
        errors
    );
    if errors > 0 {
        2
    } else if failed.is_empty() {
        0
    } else {
        1
    }
}
