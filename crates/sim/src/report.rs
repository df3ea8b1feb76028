//! The verdict of one run and its one-line summary.

#[allow(unused_imports)]
use super::*;

/// The linearizability verdict of one run.
#[derive(Debug, Clone)]
pub enum Verdict {
    Pass,
    /// The violations, rendered.
    Fail(String),
    /// The checker's wall-clock budget ran out.
    Unknown,
}

impl Verdict {
    pub fn is_fail(&self) -> bool {
        matches!(self, Verdict::Fail(_))
    }
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub members: usize,
    pub planted: Option<PlantedBug>,
    pub schedule: FaultSchedule,
    /// Episodes as applied, `leader` resolved to a member (`...=n2`).
    pub applied_faults: Vec<String>,
    pub counts: Counts,
    /// How the members batched client writes into Raft entries.
    pub batches: WriteBatchStats,
    pub verdict: Verdict,
    /// Acknowledged writes whose value is not in the healed leader's store
    /// at the revision they were acknowledged with.
    pub lost: Vec<String>,
    /// Acknowledged writes (ok write / ok cas).
    pub acked_writes: usize,
    /// Whether the healed cluster elected a leader that passed a read barrier
    /// within [`FINAL_CONVERGE_MS`]. If not, the run fails: a cluster that
    /// cannot recover once every fault is healed has lost availability for
    /// good (and `lost` could not be checked).
    pub final_check: bool,
    /// Panics inside the simulated cluster (a member's Raft core or storage
    /// tripping an invariant assertion), in order. Any panic fails the run.
    pub panics: Vec<String>,
    /// Whether this build can replay the run exactly (it needs
    /// `--cfg tokio_unstable` for a seeded `select!`).
    pub reproducible: bool,
    /// Simulated milliseconds the run covered (workload + final phase).
    pub simulated_ms: u64,
    /// The history, JSON lines (`docs/history-format.md`).
    pub history: String,
    /// With auth on: logins, refusals and rule violations
    /// ([`AuthOutcomes`]); any violation fails the run.
    pub auth: Option<AuthOutcomes>,
}

impl SimReport {
    /// Correct: linearizable (or undecided), recovered after the faults were
    /// healed, and nothing acknowledged lost.
    pub fn passed(&self) -> bool {
        !self.verdict.is_fail()
            && self.final_check
            && self.lost.is_empty()
            && self.panics.is_empty()
            && self.auth.as_ref().is_none_or(|a| a.violations.is_empty())
    }

    /// Digest of everything the run did (applied faults, the whole history
    /// with its timestamps, acknowledged writes, simulated length): two runs
    /// of one seed print the same `trace` exactly when they were the same run.
    pub fn trace(&self) -> u64 {
        // FNV-1a, 64 bit: stable across builds and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for f in &self.applied_faults {
            feed(f.as_bytes());
            feed(b"\n");
        }
        feed(self.history.as_bytes());
        feed(&(self.acked_writes as u64).to_le_bytes());
        feed(&self.simulated_ms.to_le_bytes());
        for p in &self.panics {
            feed(p.as_bytes());
        }
        if let Some(a) = &self.auth {
            feed(a.note().as_bytes());
        }
        h
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match &self.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail(_) => "FAIL",
            Verdict::Unknown => "UNKNOWN",
        };
        write!(
            f,
            "sim seed={} members={}{} faults=[{}] ops={} ok={} fail={} info={} batched={}/{}(max {}) linearizable={} lost={}{}{} trace={:016x}{}",
            self.seed,
            self.members,
            match self.planted {
                Some(PlantedBug::SkipReadIndex) => " planted=skip-read-index",
                Some(PlantedBug::AckBeforeFsync) => " planted=ack-before-fsync",
                Some(PlantedBug::TornRecordAccepted) => " planted=torn-record-accepted",
                None => "",
            },
            self.applied_faults.join(" "),
            self.counts.ok + self.counts.fail + self.counts.info,
            self.counts.ok,
            self.counts.fail,
            self.counts.info,
            self.batches.commands,
            self.batches.entries,
            self.batches.largest,
            verdict,
            if self.final_check { self.lost.len().to_string() } else { "unchecked(NOT RECOVERED: no leader after heal)".into() },
            if self.panics.is_empty() { String::new() } else { format!(" PANICS={}", self.panics.len()) },
            self.auth.as_ref().map(AuthOutcomes::note).unwrap_or_default(),
            self.trace(),
            if self.reproducible { "" } else { " (not reproducible: built without --cfg tokio_unstable)" },
        )
    }
}
