//! Faults: what each [`FaultKind`] does, the [`Backend`] that can do it
//! (a [`LocalCluster`] the drill owns, or a live cluster reached through its
//! admin API, optionally with iptables inside network namespaces and local
//! pids), and the [`FaultWindow`] record of when it was in force.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backends::BackendFault;
use crate::cluster::{self, LocalCluster};
use crate::{admin, DrillError};

/// How long to wait for a leader before a fault window, in ms.
pub const LEADER_WAIT_MS: u64 = 15_000;
/// Bound on one member's answer to a leader query ([`Backend::leader`]), ms.
pub const LEADER_QUERY_TIMEOUT_MS: u64 = 500;

/// A fault the drill can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the leader; restart it when the window ends.
    KillLeader,
    /// SIGKILL one follower; restart it when the window ends.
    KillFollower,
    /// SIGKILL every member at once; restart all when the window ends.
    KillAll,
    /// Cut the leader off from every other member (both directions).
    PartitionLeader,
    /// Cut a minority of followers off from the rest (both directions).
    PartitionMinority,
    /// Drop the traffic the leader receives from its peers (iptables only).
    PartitionOneWay,
    /// SIGSTOP one follower; SIGCONT when the window ends.
    PauseFollower,
    /// SIGSTOP the leader; SIGCONT when the window ends.
    PauseLeader,
    /// Delay every peer message the leader sends (`--delay-ms`, plus a
    /// uniform random `--jitter-ms`).
    Delay,
    /// Drop a random `--loss-percent` of the leader's peer packets, both
    /// directions (iptables `statistic` match; netns only).
    Loss,
    /// SIGKILL one sample backend; restart it when the window ends.
    BackendKill,
    /// SIGSTOP one sample backend; SIGCONT when the window ends.
    BackendHang,
    /// Make one sample backend answer `--backend-delay-ms` late (health
    /// checks included).
    BackendSlow,
    /// Drop every packet to one sample backend (iptables on loopback).
    BackendPartition,
}

pub const ALL_FAULTS: &[FaultKind] = &[
    FaultKind::KillLeader,
    FaultKind::KillFollower,
    FaultKind::KillAll,
    FaultKind::PartitionLeader,
    FaultKind::PartitionMinority,
    FaultKind::PartitionOneWay,
    FaultKind::PauseFollower,
    FaultKind::PauseLeader,
    FaultKind::Delay,
    FaultKind::Loss,
    FaultKind::BackendKill,
    FaultKind::BackendHang,
    FaultKind::BackendSlow,
    FaultKind::BackendPartition,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::KillAll => "kill-all",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionMinority => "partition-minority",
            FaultKind::PartitionOneWay => "partition-one-way",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::Delay => "delay",
            FaultKind::Loss => "loss",
            FaultKind::BackendKill => "backend-kill",
            FaultKind::BackendHang => "backend-hang",
            FaultKind::BackendSlow => "backend-slow",
            FaultKind::BackendPartition => "backend-partition",
        }
    }

    /// The backend fault this is, if it acts on a sample backend behind the
    /// gateways rather than on a member.
    pub fn backend_fault(self) -> Option<BackendFault> {
        match self {
            FaultKind::BackendKill => Some(BackendFault::Kill),
            FaultKind::BackendHang => Some(BackendFault::Hang),
            FaultKind::BackendSlow => Some(BackendFault::Slow),
            FaultKind::BackendPartition => Some(BackendFault::Partition),
            _ => None,
        }
    }

    /// Whether the fault acts on processes (only possible on this host).
    pub fn needs_processes(self) -> bool {
        matches!(
            self,
            FaultKind::KillLeader
                | FaultKind::KillFollower
                | FaultKind::KillAll
                | FaultKind::PauseFollower
                | FaultKind::PauseLeader
        )
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL_FAULTS
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown fault {s:?}; expected one of: {}",
                    ALL_FAULTS
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

/// Parse a `--faults` list (`none` or empty = no faults).
pub fn parse_faults(s: &str) -> Result<Vec<FaultKind>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "none")
        .map(str::parse)
        .collect()
}

/// Parameters of the faults (from the command line).
#[derive(Debug, Clone, Default)]
pub struct FaultSettings {
    /// `delay`: fixed part of the delay, in ms.
    pub delay_ms: u64,
    /// `delay`: uniform random extra delay, in ms.
    pub jitter_ms: u64,
    /// `loss`: share of the packets dropped, in percent.
    pub loss_percent: f64,
}

/// When a fault was in force, and what happened around it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    pub kind: FaultKind,
    /// Member names the fault was applied to.
    pub targets: Vec<String>,
    /// ms since the drill started.
    pub start_ms: u64,
    pub end_ms: u64,
    pub leader_before: Option<String>,
    /// Leader seen while the fault was in force (last observation).
    pub leader_during: Option<String>,
    /// Whether a member other than `leader_before` was leader at some point
    /// during the window.
    pub new_leader_elected: bool,
    /// Set when the fault could not be injected (the window still counts).
    pub note: Option<String>,
}

/// Who carries out faults.
pub enum Backend {
    /// The drill's own child processes.
    Local(LocalCluster),
    /// A live cluster: faults through `/fault` on `admin`, or iptables in
    /// `netns` (one network namespace per member), and SIGSTOP/SIGCONT of
    /// `pids` when given.
    Remote {
        names: Vec<String>,
        admin: Vec<String>,
        netns: Option<Vec<String>>,
        pids: Option<Vec<u32>>,
    },
}

/// What must be undone at the end of a window.
#[derive(Debug)]
pub enum Active {
    Nothing,
    Restart(Vec<usize>),
    Resume(Vec<usize>),
    ClearFaults(Vec<usize>),
    FlushIptables(Vec<usize>),
}

impl Backend {
    pub fn len(&self) -> usize {
        match self {
            Backend::Local(c) => c.members.len(),
            Backend::Remote { admin, .. } => admin.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            Backend::Local(c) => c.names(),
            Backend::Remote { names, .. } => names.clone(),
        }
    }

    pub fn admin_urls(&self) -> Vec<String> {
        match self {
            Backend::Local(c) => c.admin_urls(),
            Backend::Remote { admin, .. } => admin.clone(),
        }
    }

    /// Usage check: can this backend inject `kind`?
    pub fn supports(&self, kind: FaultKind) -> Result<(), String> {
        match self {
            Backend::Local(_) => {
                if matches!(kind, FaultKind::PartitionOneWay | FaultKind::Loss) {
                    return Err(format!("{kind} needs real packet filtering: use --netns with a live cluster (the /fault API cannot drop packets selectively)"));
                }
                Ok(())
            }
            Backend::Remote {
                netns, pids, admin, ..
            } => {
                if kind.backend_fault().is_some() {
                    return Err(format!(
                        "fault {kind} needs --local N: the drill starts the sample backends and the members' gateways itself"
                    ));
                }
                if admin.is_empty() {
                    return Err(format!(
                        "fault {kind} needs --admin-endpoints (one per --endpoints entry)"
                    ));
                }
                match kind {
                    FaultKind::KillLeader | FaultKind::KillFollower | FaultKind::KillAll => Err(format!(
                        "fault {kind} cannot be injected into a remote cluster: the drill can only restart members it started itself (use --local N)"
                    )),
                    FaultKind::PauseFollower | FaultKind::PauseLeader if pids.is_none() => Err(format!(
                        "fault {kind} cannot be injected into a remote cluster: SIGSTOP needs the members' process ids (use --local N, or --pids for members on this host)"
                    )),
                    FaultKind::PartitionOneWay | FaultKind::Loss if netns.is_none() => {
                        Err(format!("{kind} needs --netns (iptables inside each member's network namespace)"))
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    fn running(&self, i: usize) -> bool {
        match self {
            Backend::Local(c) => c.running(i),
            Backend::Remote { .. } => true,
        }
    }

    /// The member that reports itself leader with the highest term, if any. The
    /// members are asked at once, each for at most [`LEADER_QUERY_TIMEOUT_MS`]: one
    /// that is paused or cut off (what the drill does to them) neither answers nor
    /// can be the leader to report, and must not stretch every poll of a fault
    /// window by the admin timeout.
    pub async fn leader(&self) -> Option<usize> {
        let mut queries = tokio::task::JoinSet::new();
        for (i, u) in self.admin_urls().into_iter().enumerate() {
            if !self.running(i) {
                continue;
            }
            if let Backend::Local(c) = self {
                if c.members[i].paused {
                    continue;
                }
            }
            queries.spawn(async move {
                let page = tokio::time::timeout(
                    Duration::from_millis(LEADER_QUERY_TIMEOUT_MS),
                    admin::metrics_page(&u),
                )
                .await
                .ok()
                .flatten()?;
                (admin::metric_value(&page, "phalanx_server_is_leader") == Some(1.0)).then(|| {
                    let term = admin::metric_value(&page, "phalanx_raft_term").unwrap_or(0.0);
                    (term, i)
                })
            });
        }
        let mut best: Option<(f64, usize)> = None;
        while let Some(answer) = queries.join_next().await {
            if let Ok(Some((term, i))) = answer {
                if best.is_none_or(|(t, b)| term > t || (term == t && i < b)) {
                    best = Some((term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    pub async fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(cluster::POLL_INTERVAL_MS)).await;
        }
    }

    async fn ids(&self) -> Result<Vec<u64>, DrillError> {
        let mut out = Vec::new();
        for u in self.admin_urls() {
            out.push(admin::member_id(&u).await?);
        }
        Ok(out)
    }

    fn iptables(ns: &str, args: &[&str]) -> Result<(), DrillError> {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "iptables", "-w"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DrillError::Fault(format!("running ip netns exec {ns} iptables: {e}")))?;
        if !out.status.success() {
            return Err(DrillError::Fault(format!(
                "ip netns exec {ns} iptables {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Cut `group` off from everyone else: with /fault on both sides, or
    /// with iptables DROP rules in the group's namespaces (`inbound_only`:
    /// only INPUT; `loss_percent`: drop only that random share of the
    /// packets, with the `statistic` match — iptables only).
    async fn partition(
        &self,
        group: &[usize],
        inbound_only: bool,
        loss_percent: Option<f64>,
    ) -> Result<Active, DrillError> {
        let n = self.len();
        let others: Vec<usize> = (0..n).filter(|i| !group.contains(i)).collect();
        if let Backend::Remote {
            netns: Some(ns),
            admin,
            ..
        } = self
        {
            let ip = |i: usize| {
                admin::host_port(&admin[i]).map(|hp| {
                    hp.rsplit_once(':')
                        .map(|(h, _)| h.to_string())
                        .unwrap_or(hp)
                })
            };
            let probability = loss_percent.map(|p| format!("{:.4}", p / 100.0));
            let mut drop: Vec<&str> = Vec::new();
            if let Some(p) = &probability {
                drop.extend(["-m", "statistic", "--mode", "random", "--probability", p]);
            }
            drop.extend(["-j", "DROP"]);
            for &g in group {
                for &o in &others {
                    let oip = ip(o)?;
                    Self::iptables(&ns[g], &[&["-A", "INPUT", "-s", &oip][..], &drop].concat())?;
                    if !inbound_only {
                        Self::iptables(
                            &ns[g],
                            &[&["-A", "OUTPUT", "-d", &oip][..], &drop].concat(),
                        )?;
                    }
                }
            }
            return Ok(Active::FlushIptables(group.to_vec()));
        }
        if loss_percent.is_some() {
            return Err(DrillError::Fault(
                "random loss needs --netns (iptables)".into(),
            ));
        }
        let ids = self.ids().await?;
        let urls = self.admin_urls();
        let mut touched = Vec::new();
        for &g in group {
            let iso: Vec<u64> = others.iter().map(|&o| ids[o]).collect();
            admin::set_fault(&urls[g], &iso, 0, 0).await?;
            touched.push(g);
        }
        for &o in &others {
            let iso: Vec<u64> = group.iter().map(|&g| ids[g]).collect();
            admin::set_fault(&urls[o], &iso, 0, 0).await?;
            touched.push(o);
        }
        Ok(Active::ClearFaults(touched))
    }

    fn pause(&mut self, i: usize) -> Result<(), DrillError> {
        match self {
            Backend::Local(c) => c.pause(i),
            Backend::Remote { pids: Some(p), .. } => cluster::signal(p[i], "STOP"),
            Backend::Remote { .. } => Err(DrillError::Fault("pause needs --pids".into())),
        }
    }

    fn resume(&mut self, i: usize) -> Result<(), DrillError> {
        match self {
            Backend::Local(c) => c.resume(i),
            Backend::Remote { pids: Some(p), .. } => cluster::signal(p[i], "CONT"),
            Backend::Remote { .. } => Ok(()),
        }
    }

    /// Inject `kind` with `leader` as the current leader. Returns the
    /// targets and what to undo.
    pub async fn inject(
        &mut self,
        kind: FaultKind,
        leader: usize,
        p: &FaultSettings,
    ) -> Result<(Vec<usize>, Active), DrillError> {
        let n = self.len();
        let followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
        match kind {
            FaultKind::KillLeader => match self {
                Backend::Local(c) => {
                    c.kill(leader);
                    Ok((vec![leader], Active::Restart(vec![leader])))
                }
                _ => Err(DrillError::Fault("kill needs --local".into())),
            },
            FaultKind::KillFollower => match self {
                Backend::Local(c) => {
                    let f = *followers
                        .first()
                        .ok_or_else(|| DrillError::Fault("no follower to kill".into()))?;
                    c.kill(f);
                    Ok((vec![f], Active::Restart(vec![f])))
                }
                _ => Err(DrillError::Fault("kill needs --local".into())),
            },
            FaultKind::KillAll => match self {
                Backend::Local(c) => {
                    for i in 0..n {
                        c.kill(i);
                    }
                    Ok(((0..n).collect(), Active::Restart((0..n).collect())))
                }
                _ => Err(DrillError::Fault("kill needs --local".into())),
            },
            FaultKind::PartitionLeader => {
                Ok((vec![leader], self.partition(&[leader], false, None).await?))
            }
            FaultKind::PartitionOneWay => {
                Ok((vec![leader], self.partition(&[leader], true, None).await?))
            }
            FaultKind::Loss => Ok((
                vec![leader],
                self.partition(&[leader], false, Some(p.loss_percent))
                    .await?,
            )),
            FaultKind::PartitionMinority => {
                let minority: Vec<usize> = followers.iter().copied().take((n - 1) / 2).collect();
                if minority.is_empty() {
                    return Ok((vec![], Active::Nothing));
                }
                Ok((
                    minority.clone(),
                    self.partition(&minority, false, None).await?,
                ))
            }
            FaultKind::PauseFollower => {
                let f = *followers
                    .first()
                    .ok_or_else(|| DrillError::Fault("no follower to pause".into()))?;
                self.pause(f)?;
                Ok((vec![f], Active::Resume(vec![f])))
            }
            FaultKind::PauseLeader => {
                self.pause(leader)?;
                Ok((vec![leader], Active::Resume(vec![leader])))
            }
            FaultKind::BackendKill
            | FaultKind::BackendHang
            | FaultKind::BackendSlow
            | FaultKind::BackendPartition => Err(DrillError::Fault(format!(
                "{kind} acts on a sample backend, not on a member"
            ))),
            FaultKind::Delay => {
                let urls = self.admin_urls();
                admin::set_fault(&urls[leader], &[], p.delay_ms, p.jitter_ms).await?;
                Ok((vec![leader], Active::ClearFaults(vec![leader])))
            }
        }
    }

    /// Undo a fault. Restarted members are waited for (healthy) when local.
    pub async fn heal(&mut self, active: Active) -> Result<(), DrillError> {
        match active {
            Active::Nothing => Ok(()),
            Active::Restart(which) => {
                if let Backend::Local(c) = self {
                    for &i in &which {
                        c.spawn(i)?;
                    }
                    for &i in &which {
                        c.wait_healthy(i).await?;
                    }
                }
                Ok(())
            }
            Active::Resume(which) => {
                for i in which {
                    self.resume(i)?;
                }
                Ok(())
            }
            Active::ClearFaults(which) => {
                let urls = self.admin_urls();
                let mut first_err = None;
                for i in which {
                    // Retry: a member may be briefly slow to answer.
                    let mut last = Ok(());
                    for _ in 0..5 {
                        last = admin::clear_fault(&urls[i]).await;
                        if last.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if let Err(e) = last {
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            }
            Active::FlushIptables(which) => {
                if let Backend::Remote {
                    netns: Some(ns), ..
                } = self
                {
                    for i in which {
                        Self::iptables(&ns[i], &["-F", "INPUT"])?;
                        Self::iptables(&ns[i], &["-F", "OUTPUT"])?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Best-effort: undo every fault this backend may have left behind.
    pub async fn heal_everything(&mut self) {
        let n = self.len();
        match self {
            Backend::Local(c) => {
                for i in 0..n {
                    if c.members[i].paused {
                        let _ = c.resume(i);
                    }
                }
                for i in 0..n {
                    if !c.running(i) {
                        let _ = c.spawn(i);
                    }
                }
            }
            Backend::Remote { pids: Some(p), .. } => {
                for &pid in p.iter() {
                    let _ = cluster::signal(pid, "CONT");
                }
            }
            Backend::Remote { .. } => {}
        }
        if let Backend::Remote { netns: Some(_), .. } = self {
            let _ = self.heal(Active::FlushIptables((0..n).collect())).await;
        }
        for u in self.admin_urls() {
            let _ = admin::clear_fault(&u).await;
        }
    }
}
