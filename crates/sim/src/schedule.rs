//! The seeded fault plan: base loss and delay, then non-overlapping
//! episodes of partitions, crashes, power loss, loss bursts and clock jumps.

#[allow(unused_imports)]
use super::*;

/// Which member a fault hits: fixed by the seed, or whoever leads when the
/// episode starts (resolved at run time, printed in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Node(NodeId),
    Leader,
}

impl fmt::Display for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pick::Node(id) => write!(f, "n{id}"),
            Pick::Leader => write!(f, "leader"),
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `pick` plus the first `size - 1` members of `order` (excluding it) are
    /// cut off from the rest, both ways.
    Partition { pick: Pick, size: usize },
    /// `pick`'s outgoing messages are dropped (`outgoing`), or its incoming ones.
    OneWay { pick: Pick, outgoing: bool },
    /// `pick` is the bridge: the others are split in two halves that cannot
    /// talk to each other, but both talk to the bridge.
    Bridge { pick: Pick },
    /// Power cut of one member: its unsynced writes are lost; restarted
    /// from what was synced when the episode ends.
    Crash { pick: Pick },
    /// Power cut of every member at once; all restart when the episode ends.
    PowerLoss,
    /// Message loss raised to this many percent for the episode.
    LossBurst { percent: u32 },
    /// The member's clock steps forward by `ms`: its election timer and its
    /// view of the leader's lease expire early (openraft reads time through
    /// `consensus::runtime`'s member clock).
    ClockJump { pick: Pick, ms: u64 },
}

/// A fault active from `at_ms` for `len_ms` (simulated, from the start of the workload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub at_ms: u64,
    pub len_ms: u64,
    pub fault: Fault,
}

/// The seeded fault plan of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSchedule {
    /// Probability (percent) that any one message (request or response) is lost.
    pub loss_percent: u32,
    /// Per-message one-way delay, uniform in `[min_delay_ms, max_delay_ms]`
    /// (reordering follows from unequal delays).
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Seeded permutation of the member ids, used to grow partition sides.
    pub order: Vec<NodeId>,
    pub episodes: Vec<Episode>,
}

impl FaultSchedule {
    /// The schedule for `cfg` — a function of `seed`, `members`, `duration_ms` and `faults` only.
    pub fn generate(cfg: &SimConfig) -> FaultSchedule {
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed_fa17_0000_0001);
        let mut order: Vec<NodeId> = (1..=cfg.members as u64).collect();
        order.shuffle(&mut rng);
        if !cfg.faults {
            return FaultSchedule {
                loss_percent: 0,
                min_delay_ms: 0,
                max_delay_ms: 1,
                order,
                episodes: Vec::new(),
            };
        }
        let loss_percent = rng.gen_range(0..=5);
        let min_delay_ms = rng.gen_range(0..=2);
        let max_delay_ms = min_delay_ms + rng.gen_range(1..=30);
        let mut episodes = Vec::new();
        let mut t = rng.gen_range(800..=1_500);
        let n = cfg.members;
        loop {
            let len_ms = rng.gen_range(500..=4_000);
            if t + len_ms + 500 > cfg.duration_ms {
                break;
            }
            let pick = if rng.gen_bool(0.5) {
                Pick::Leader
            } else {
                Pick::Node(rng.gen_range(1..=n as u64))
            };
            let fault = match rng.gen_range(0..7) {
                0 => Fault::Partition {
                    pick,
                    size: rng.gen_range(1..=n / 2),
                },
                1 => Fault::OneWay {
                    pick,
                    outgoing: rng.gen_bool(0.5),
                },
                2 => Fault::Bridge { pick },
                3 => Fault::Crash { pick },
                4 => Fault::LossBurst {
                    percent: rng.gen_range(20..=50),
                },
                5 => Fault::PowerLoss,
                _ => Fault::ClockJump {
                    pick,
                    ms: rng.gen_range(CLOCK_JUMP_MIN_MS..=CLOCK_JUMP_MAX_MS),
                },
            };
            let len_ms = if matches!(fault, Fault::ClockJump { .. }) {
                0
            } else {
                len_ms
            };
            episodes.push(Episode {
                at_ms: t,
                len_ms,
                fault,
            });
            t += len_ms + rng.gen_range(200..=1_500);
        }
        FaultSchedule {
            loss_percent,
            min_delay_ms,
            max_delay_ms,
            order,
            episodes,
        }
    }
}

impl fmt::Display for Episode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fault {
            Fault::Partition { pick, size } => write!(f, "partition({pick}+{})", size - 1)?,
            Fault::OneWay {
                pick,
                outgoing: true,
            } => write!(f, "mute({pick}->*)")?,
            Fault::OneWay {
                pick,
                outgoing: false,
            } => write!(f, "deaf(*->{pick})")?,
            Fault::Bridge { pick } => write!(f, "bridge({pick})")?,
            Fault::Crash { pick } => write!(f, "crash({pick})")?,
            Fault::PowerLoss => write!(f, "powerloss(all)")?,
            Fault::LossBurst { percent } => write!(f, "loss({percent}%)")?,
            Fault::ClockJump { pick, ms } => write!(f, "clockjump({pick}+{ms}ms)")?,
        }
        write!(f, "@{}+{}ms", self.at_ms, self.len_ms)
    }
}

impl fmt::Display for FaultSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss={}% delay={}..{}ms",
            self.loss_percent, self.min_delay_ms, self.max_delay_ms
        )?;
        for e in &self.episodes {
            write!(f, " {e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- network
