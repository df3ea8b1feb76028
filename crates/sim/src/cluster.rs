//! Members on simulated disks: start, crash, restart, power loss, and the
//! execution of the fault schedule against them.

#[allow(unused_imports)]
use super::*;

/// A member's storage on the simulated disk: its Raft log's WAL directory
/// and its `kv.redb`.
#[derive(Clone)]
pub(crate) struct MemberDisks {
    pub(crate) log: disk::SimDir,
    pub(crate) kv: SimFile,
}

impl MemberDisks {
    fn new(id: NodeId) -> Self {
        MemberDisks {
            log: disk::SimDir::new(&format!("sim://n{id}/wal")),
            kv: SimFile::new(),
        }
    }

    /// What a power cut leaves: the synced images as fresh files; the WAL
    /// directory as of its last sync, with torn writes chosen by `rng`.
    /// (redb's `kv.redb` gets no torn writes: redb relies on its own commit
    /// protocol, which the simulator takes as given.)
    pub(crate) fn after_crash(&self, rng: &mut StdRng) -> MemberDisks {
        MemberDisks {
            log: self.log.after_crash(rng),
            kv: self.kv.after_crash(),
        }
    }
}

/// Simulated time the disk takes to sync a WAL group commit, ms: a power cut
/// may land while a group is written but not yet synced (torn writes).
pub const SIM_FSYNC_LATENCY_MS: u64 = 5;
/// Size of a simulated WAL segment, bytes: small, so runs roll and purge
/// segments.
pub const SIM_WAL_SEGMENT_BYTES: u64 = 64 * 1024;

/// Start member `id` on `disks` (formatted if empty), on its own `clock`.
pub(crate) async fn start_member(
    id: NodeId,
    disks: &MemberDisks,
    clock: &MemberClock,
    net: &Arc<Net>,
    planted: Option<PlantedBug>,
) -> Result<Live, SimError> {
    let start_err = |detail: String| SimError::Start { id, detail };
    let options = LogStoreOptions {
        io: IoMode::Inline,
        unsafe_no_fsync: PlantedBug::AckBeforeFsync.is_active(planted),
        unsafe_accept_torn_records: PlantedBug::TornRecordAccepted.is_active(planted),
        segment_bytes: SIM_WAL_SEGMENT_BYTES,
        simulated_fsync_latency: Duration::from_millis(SIM_FSYNC_LATENCY_MS),
    };
    let log = LogStore::open_dir(
        Arc::new(disks.log.clone()),
        &format!("sim://n{id}/wal"),
        options,
    )
    .map_err(|e| start_err(e.to_string()))?;
    let kv_label = format!("sim://n{id}/kv.redb");
    let store = Arc::new(
        Store::open_backend(disks.kv.clone(), Path::new(&kv_label))
            .map_err(|e| start_err(e.to_string()))?,
    );
    // Leases expire by this member's clock, jumps included.
    let lessor = Arc::new(Lessor::new(clock.clone()));
    lessor.reload(&store);
    let applier = Applier::new(store.clone(), lessor.clone()).with_io(IoMode::Inline);
    let config = openraft::Config {
        cluster_name: "sim".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MIN_MS * 3 / 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
        max_in_snapshot_log_to_keep: SNAPSHOT_EVERY_ENTRIES / 3,
        install_snapshot_timeout: 2_000,
        max_payload_entries: 256,
        ..Default::default()
    }
    .validate()
    .map_err(|e| start_err(format!("raft config: {e}")))?;
    let network = SimNetwork {
        from: id,
        net: net.clone(),
    };
    // Every task openraft spawns for this member inherits its clock.
    let raft = clock
        .clone()
        .scope(Raft::new(
            id,
            Arc::new(config),
            network,
            log,
            applier.clone(),
        ))
        .await
        .map_err(|e| start_err(e.to_string()))?;
    let mut node_config =
        NodeConfig::with_defaults(&format!("n{id}"), format!("sim://n{id}").into());
    node_config.request_timeout_ms = OP_TIMEOUT_MS;
    node_config.planted_bug = planted;
    let node = Node::from_parts(NodeParts {
        id,
        cluster_id: SIM_CLUSTER_ID,
        config: node_config,
        raft: raft.clone(),
        applier,
        lessor,
        transport: Arc::new(SimTransport {
            from: id,
            net: net.clone(),
        }),
        faults: Arc::new(Faults::new(false)),
    });
    Ok(Live { node, raft, store })
}

pub(crate) struct Cluster {
    pub(crate) net: Arc<Net>,
    pub(crate) planted: Option<PlantedBug>,
    pub(crate) disks: Mutex<BTreeMap<NodeId, MemberDisks>>,
    /// One clock per machine: it keeps its jumps across restarts.
    pub(crate) clocks: BTreeMap<NodeId, MemberClock>,
    /// Seeds the torn writes of power cuts (with the member and the cut's number).
    pub(crate) disk_seed: u64,
    /// Power cuts so far, across members.
    pub(crate) power_cuts: std::sync::atomic::AtomicU64,
}

impl Cluster {
    pub(crate) async fn start(&self, id: NodeId) -> Result<(), SimError> {
        let disks = self
            .disks
            .lock()
            .expect("disks poisoned")
            .entry(id)
            .or_insert_with(|| MemberDisks::new(id))
            .clone();
        let live = start_member(id, &disks, &self.clocks[&id], &self.net, self.planted).await?;
        self.net
            .live
            .lock()
            .expect("net live poisoned")
            .insert(id, live);
        Ok(())
    }

    /// Power cut: the member vanishes from the network and its disks keep
    /// only what was synced at this instant.
    pub(crate) async fn crash(&self, id: NodeId) -> bool {
        let Some(live) = self.net.live.lock().expect("net live poisoned").remove(&id) else {
            return false;
        };
        {
            let cut = self
                .power_cuts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut rng = StdRng::seed_from_u64(
                self.disk_seed ^ 0xd15c_0000_0000 ^ (id << 40) ^ cut.wrapping_mul(0x9e37_79b9),
            );
            let mut disks = self.disks.lock().expect("disks poisoned");
            let d = disks.get_mut(&id).expect("a live member has disks");
            *d = d.after_crash(&mut rng);
        }
        // Stop the dead member's tasks; whatever they still write goes to the
        // old files, which nothing reads again.
        self.net.retire(&live).await;
        true
    }

    pub(crate) fn resolve(&self, pick: Pick, rng: &mut StdRng, members: usize) -> NodeId {
        match pick {
            Pick::Node(id) => id,
            Pick::Leader => match self.net.leaders().first() {
                Some((id, _)) => *id,
                None => rng.gen_range(1..=members as u64),
            },
        }
    }
}

/// Applies the schedule; returns the episodes as applied (with `leader` resolved).
pub(crate) async fn run_faults(
    cluster: Arc<Cluster>,
    schedule: FaultSchedule,
    members: usize,
    seed: u64,
    t0: Instant,
) -> Result<Vec<String>, SimError> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7e50_1e00_0003);
    let mut applied = Vec::new();
    let ids: Vec<NodeId> = (1..=members as u64).collect();
    for ep in &schedule.episodes {
        tokio::time::sleep_until(t0 + Duration::from_millis(ep.at_ms)).await;
        let pick = match &ep.fault {
            Fault::Partition { pick, .. }
            | Fault::OneWay { pick, .. }
            | Fault::Bridge { pick }
            | Fault::Crash { pick }
            | Fault::ClockJump { pick, .. } => Some(*pick),
            Fault::LossBurst { .. } | Fault::PowerLoss => None,
        };
        let target = pick.map(|p| cluster.resolve(p, &mut rng, members));
        let t = target.unwrap_or(0);
        let others: Vec<NodeId> = schedule.order.iter().copied().filter(|&o| o != t).collect();
        let mut crashed = Vec::new();
        match &ep.fault {
            Fault::Partition { size, .. } => {
                let side: BTreeSet<NodeId> = std::iter::once(t)
                    .chain(others.iter().copied().take(size - 1))
                    .collect();
                for &a in &ids {
                    for &b in &ids {
                        if side.contains(&a) != side.contains(&b) {
                            cluster.net.block(a, b);
                        }
                    }
                }
            }
            Fault::OneWay { outgoing, .. } => {
                for &o in &others {
                    if *outgoing {
                        cluster.net.block(t, o)
                    } else {
                        cluster.net.block(o, t)
                    }
                }
            }
            Fault::Bridge { .. } => {
                let (a, b) = others.split_at(others.len() / 2);
                for &x in a {
                    for &y in b {
                        cluster.net.block(x, y);
                        cluster.net.block(y, x);
                    }
                }
            }
            Fault::Crash { .. } => {
                if cluster.crash(t).await {
                    crashed.push(t);
                }
            }
            Fault::PowerLoss => {
                // Every disk is cut at the same simulated instant, before any
                // member gets to run again.
                let live: Vec<NodeId> = cluster.net.all().into_iter().map(|(id, _)| id).collect();
                for id in live {
                    if cluster.crash(id).await {
                        crashed.push(id);
                    }
                }
            }
            Fault::LossBurst { percent } => cluster.net.set_loss(*percent),
            Fault::ClockJump { ms, .. } => {
                cluster.clocks[&t].jump_forward(Duration::from_millis(*ms))
            }
        }
        applied.push(match target {
            Some(t) => format!("{ep}=n{t}"),
            None => ep.to_string(),
        });
        tokio::time::sleep_until(t0 + Duration::from_millis(ep.at_ms + ep.len_ms)).await;
        cluster.net.heal();
        cluster.net.set_loss(schedule.loss_percent);
        for id in crashed {
            cluster.start(id).await?;
        }
    }
    Ok(applied)
}

// ---------------------------------------------------------------- workload
