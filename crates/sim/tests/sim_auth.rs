//! The simulator with etcd auth on (`SimConfig::auth`, `phalanx sim --auth`):
//! users, roles and `auth enable` go through the replicated log; clients log
//! in and act as a permitted user, one as a user whose writes must be
//! refused; root changes auth while writes are in flight; crashes,
//! partitions, power loss and clock jumps as in every seed. Each seed must
//! stay linearizable, lose nothing, and break no permission rule: every
//! refused user's write refused when applied (so on every member alike),
//! no permitted operation refused, every member's auth state equal after
//! the run.

use sim::{run, Fault, SimConfig, SimReport, Verdict};

/// Auth CI seeds (3–5 members each, from the seed): among them a crash, a
/// power loss of every member and partitions (checked below).
const AUTH_SEEDS: [u64; 4] = [1, 2, 3, 4];
/// Simulated workload length per seed, ms (bounded so the test stays well
/// under a minute in a debug build).
const AUTH_DURATION_MS: u64 = 12_000;

fn config(seed: u64) -> SimConfig {
    SimConfig {
        duration_ms: AUTH_DURATION_MS,
        auth: true,
        ..SimConfig::new(seed)
    }
}

fn explain(report: &SimReport) -> String {
    let mut out = format!("{report}\n  schedule: {}\n", report.schedule);
    if let Verdict::Fail(v) = &report.verdict {
        out += v;
        out += "\n";
    }
    for l in report.lost.iter().take(20) {
        out += &format!("  lost: {l}\n");
    }
    for p in report.panics.iter().take(5) {
        out += &format!("  panic: {p}\n");
    }
    for v in report
        .auth
        .iter()
        .flat_map(|a| a.violations.iter())
        .take(20)
    {
        out += &format!("  auth violation: {v}\n");
    }
    out
}

#[test]
fn auth_seeds_are_linearizable_and_refuse_the_unpermitted_user_on_every_member() {
    let kinds: Vec<Fault> = AUTH_SEEDS
        .iter()
        .flat_map(|&s| sim::FaultSchedule::generate(&config(s)).episodes)
        .map(|e| e.fault)
        .collect();
    for (name, present) in [
        (
            "crash",
            kinds.iter().any(|f| matches!(f, Fault::Crash { .. })),
        ),
        ("power loss", kinds.contains(&Fault::PowerLoss)),
        (
            "partition",
            kinds.iter().any(|f| matches!(f, Fault::Partition { .. })),
        ),
    ] {
        assert!(present, "the auth seeds no longer include a {name}");
    }
    let mut failed = Vec::new();
    let (mut denied, mut logins, mut stale, mut reads, mut churn, mut ok) = (0, 0, 0, 0, 0, 0);
    for seed in AUTH_SEEDS {
        let report = run(&config(seed)).unwrap_or_else(|e| panic!("sim --auth seed={seed}: {e}"));
        println!("{report}");
        let a = report.auth.clone().expect("auth outcomes in an auth run");
        if !report.passed() {
            println!("{}", explain(&report));
            failed.push(seed);
        }
        // Every client logged in (a wrong password first, refused).
        assert_eq!(
            a.wrong_passwords_refused, 4,
            "seed {seed}: each of the 4 clients tries a wrong password once: {report}"
        );
        assert!(
            a.logins >= 4,
            "seed {seed}: not every client logged in: {report}"
        );
        denied += a.denied;
        logins += a.logins;
        stale += a.stale_revision;
        reads += a.reads_permitted;
        churn += a.churn;
        ok += report.counts.ok;
    }
    assert!(
        failed.is_empty(),
        "auth seeds {failed:?} failed (replay: cargo run -p phalanx -- sim --auth --duration-ms {AUTH_DURATION_MS} --seeds N)"
    );
    // The checks above only mean something if each case happened.
    assert!(ok > 100, "too little succeeded: {ok} ok operations");
    assert!(
        denied > 10,
        "only {denied} writes of the denied user were refused"
    );
    assert!(reads > 50, "only {reads} reads were permitted");
    assert!(churn >= 8, "root changed auth only {churn} times");
    println!("auth seeds: {logins} logins, {denied} refused writes, {stale} stale-revision refusals, {churn} auth changes");
}

/// The auth checks can fail a run: with the denied user's writes proposed as
/// plain entries (no apply-time check), a seed must fail on that user's
/// applied writes, and the violation must name them.
#[test]
fn planted_auth_bypass_is_caught() {
    let cfg = SimConfig {
        planted_auth_bypass: true,
        duration_ms: 6_000,
        ..config(1)
    };
    let report = run(&cfg).expect("run");
    println!("{}", explain(&report));
    assert!(
        !report.passed(),
        "the denied user's writes went through unnoticed"
    );
    let a = report.auth.expect("auth outcomes");
    assert!(
        a.violations.iter().any(|v| v.contains("was applied")),
        "no violation names an applied write of the denied user: {:?}",
        a.violations
    );
    assert!(
        a.violations.iter().any(|v| v.contains("history")),
        "the final history check found none of the denied user's values: {:?}",
        a.violations
    );
}

/// Auth on or off, a seed replays exactly: the setup's password hashes are
/// salted from the seed, login tokens drawn from the seeded stream.
#[test]
fn an_auth_seed_replays_its_run_exactly() {
    let cfg = SimConfig {
        duration_ms: 6_000,
        ..config(2)
    };
    let first = run(&cfg).expect("first run");
    let second = run(&cfg).expect("second run");
    assert!(first.passed(), "{}", explain(&first));
    assert_eq!(
        first.history, second.history,
        "same seed, different histories"
    );
    assert_eq!(first.auth, second.auth);
    assert_eq!(first.trace(), second.trace());
}
