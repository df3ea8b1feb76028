//! Prometheus metrics of a member (names follow etcd's where one exists).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: std::sync::Mutex<Registry>,
    proposals: Family<ResultLabel, Counter>,
    proposal_seconds: Histogram,
    has_leader: Gauge,
    is_leader: Gauge,
    term: Gauge<u64, AtomicU64>,
    applied_index: Gauge<u64, AtomicU64>,
    snapshot_index: Gauge<u64, AtomicU64>,
    purged_index: Gauge<u64, AtomicU64>,
    revision: Gauge,
    db_size_bytes: Gauge,
    batched_entries: Counter,
    batched_commands: Counter,
    largest_batch: Gauge,
    tls_expiry: Family<ListenerLabel, Gauge>,
    tls_handshake_failures: Family<ListenerLabel, Counter>,
    peer_rejected: Family<ReasonLabel, Counter>,
    dead_leader_detections: Counter,
    /// Extra text-format series appended at every render (the alerting's
    /// `phalanx_wall_clock_seconds` and the member's gateway series).
    extra_text: std::sync::Mutex<Vec<TextSource>>,
    /// etcd's un-prefixed gRPC series (`grpc_server_*`).
    grpc_registry: std::sync::Mutex<Registry>,
    grpc: std::sync::Arc<crate::grpc_metrics::GrpcMetrics>,
    leader_changes: Counter,
}

/// A producer of Prometheus text-format lines, called at every scrape.
pub type TextSource = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("phalanx");
        let proposals = Family::<ResultLabel, Counter>::default();
        registry.register(
            "server_proposals",
            "Client write proposals by result",
            proposals.clone(),
        );
        let proposal_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "server_proposal_duration_seconds",
            "Time from proposal to applied outcome",
            proposal_seconds.clone(),
        );
        let has_leader = Gauge::default();
        registry.register(
            "server_has_leader",
            "1 if this member knows a leader",
            has_leader.clone(),
        );
        let is_leader = Gauge::default();
        registry.register(
            "server_is_leader",
            "1 if this member is the leader",
            is_leader.clone(),
        );
        let term = Gauge::<u64, AtomicU64>::default();
        registry.register("raft_term", "Current Raft term", term.clone());
        let applied_index = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "raft_applied_index",
            "Last applied Raft log index",
            applied_index.clone(),
        );
        let snapshot_index = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "raft_snapshot_index",
            "Last log index covered by this member's latest snapshot",
            snapshot_index.clone(),
        );
        let purged_index = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "raft_purged_index",
            "Log entries up to this index were compacted away",
            purged_index.clone(),
        );
        registry.register(
            "disk_wal_fsync_duration_seconds",
            "Raft log group commits: write plus fsync (etcd_disk_wal_fsync_duration_seconds)",
            consensus::log_store::WAL_FSYNC.clone(),
        );
        let revision = Gauge::default();
        registry.register("mvcc_revision", "Current store revision", revision.clone());
        let db_size_bytes = Gauge::default();
        registry.register(
            "mvcc_db_total_size_in_bytes",
            "Backend file size",
            db_size_bytes.clone(),
        );
        let batched_entries = Counter::default();
        registry.register(
            "server_proposal_entries",
            "Raft entries this member proposed for client writes (concurrent writes share an entry)",
            batched_entries.clone(),
        );
        let batched_commands = Counter::default();
        registry.register(
            "server_proposal_commands",
            "Client writes carried by those entries; commands / entries is the mean batch size",
            batched_commands.clone(),
        );
        let largest_batch = Gauge::default();
        registry.register(
            "server_proposal_largest_batch",
            "The most client writes one proposed entry carried",
            largest_batch.clone(),
        );
        let tls_expiry = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "tls_certificate_expiry_seconds",
            "notAfter (Unix seconds) of the certificate a TLS listener (client, peer, metrics) or the peer client (peer-client) uses now; alert on it minus time()",
            tls_expiry.clone(),
        );
        let tls_handshake_failures = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "Connections refused by a TLS listener's handshake (not TLS, no or untrusted client certificate, timeout)",
            tls_handshake_failures.clone(),
        );
        let peer_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "peer_rejected",
            "Peer messages refused: foreign_cluster, not_member, removed, control_not_from_leader, control_rate_limited",
            peer_rejected.clone(),
        );
        let dead_leader_detections = Counter::default();
        registry.register(
            "raft_dead_leader_detections",
            "Times this member found its leader's process gone (its peer port refused connections after missed heartbeats) and stopped waiting out the leader lease",
            dead_leader_detections.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "server_leader_changes_seen",
            "Times this member saw a new leader (etcd_server_leader_changes_seen_total)",
            leader_changes.clone(),
        );
        let mut grpc_registry = Registry::default();
        let grpc = std::sync::Arc::new(crate::grpc_metrics::GrpcMetrics::new(&mut grpc_registry));
        Metrics {
            extra_text: std::sync::Mutex::new(Vec::new()),
            grpc_registry: std::sync::Mutex::new(grpc_registry),
            grpc,
            leader_changes,
            tls_expiry,
            tls_handshake_failures,
            peer_rejected,
            dead_leader_detections,
            registry: std::sync::Mutex::new(registry),
            batched_entries,
            batched_commands,
            largest_batch,
            proposals,
            proposal_seconds,
            has_leader,
            is_leader,
            term,
            applied_index,
            snapshot_index,
            purged_index,
            revision,
            db_size_bytes,
        }
    }

    pub fn observe_proposal(&self, took: Duration, ok: bool) {
        self.proposals
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
        self.proposal_seconds.observe(took.as_secs_f64());
    }

    /// Refresh the point-in-time gauges from the node and encode everything.
    pub fn render(&self, node: &consensus::Node) -> String {
        let st = node.status();
        self.has_leader.set(st.leader.is_some() as i64);
        self.is_leader.set((st.leader == Some(node.id())) as i64);
        self.term.set(st.term);
        self.applied_index.set(st.applied_index);
        self.snapshot_index.set(st.snapshot_index);
        self.purged_index.set(st.purged_index);
        self.revision.set(node.store().current_revision());
        self.db_size_bytes.set(node.store().db_size_bytes() as i64);
        // The node keeps running totals; counters only move forward, so add
        // what is new since the last scrape.
        let b = node.write_batch_stats();
        self.batched_entries
            .inc_by(b.entries.saturating_sub(self.batched_entries.get()));
        self.batched_commands
            .inc_by(b.commands.saturating_sub(self.batched_commands.get()));
        self.largest_batch.set(b.largest as i64);
        for (listener, not_after) in tls::certificate_expiries() {
            self.tls_expiry
                .get_or_create(&ListenerLabel { listener })
                .set(not_after);
        }
        for (listener, n) in tls::handshake_failures() {
            let c = self
                .tls_handshake_failures
                .get_or_create(&ListenerLabel { listener });
            c.inc_by(n.saturating_sub(c.get()));
        }
        for (reason, n) in node.peer_rejections() {
            let c = self.peer_rejected.get_or_create(&ReasonLabel { reason });
            c.inc_by(n.saturating_sub(c.get()));
        }
        let c = &self.dead_leader_detections;
        c.inc_by(node.dead_leader_detections().saturating_sub(c.get()));
        let c = &self.leader_changes;
        c.inc_by(node.leader_changes_seen().saturating_sub(c.get()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("registry poisoned"),
        )
        .expect("writing to a String cannot fail");
        let mut extra = String::new();
        prometheus_client::encoding::text::encode(
            &mut extra,
            &self.grpc_registry.lock().expect("registry poisoned"),
        )
        .expect("writing to a String cannot fail");
        extra.truncate(extra.rfind("# EOF").unwrap_or(extra.len()));
        let sources = self.extra_text.lock().expect("sources poisoned").clone();
        for f in sources {
            extra.push_str(&f());
        }
        // Before OpenMetrics' `# EOF` terminator, which must stay last.
        let eof = out.rfind("# EOF").unwrap_or(out.len());
        out.insert_str(eof, &extra);
        out
    }

    /// The per-method gRPC series, for [`crate::grpc_metrics::Metered`].
    pub fn grpc(&self) -> &std::sync::Arc<crate::grpc_metrics::GrpcMetrics> {
        &self.grpc
    }

    /// Append `f()` (Prometheus text format, complete lines) to every render.
    pub fn add_text_source(&self, f: TextSource) {
        self.extra_text.lock().expect("sources poisoned").push(f);
    }
}
