//! Write batching: writes proposed concurrently on a member share one Raft
//! entry (`mvcc::Command::Batch`), bounded by the batch limits in `NodeConfig`.

#[allow(unused_imports)]
use super::*;

/// How this member's proposals were batched (see [`Node::write_batch_stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteBatchStats {
    /// Raft entries this member proposed for client writes.
    pub entries: u64,
    /// Client writes those entries carried (`commands / entries` is the mean batch size).
    pub commands: u64,
    /// The most writes one entry carried.
    pub largest: u64,
}

/// Client writes waiting on this member to be proposed as one batch.
#[derive(Default)]
pub(super) struct WriteBatch {
    pub(super) stats: WriteBatchStats,
    /// Proposer tasks running (at most `max_write_batches_in_flight`).
    pub(super) proposers: usize,
    pub(super) waiting: std::collections::VecDeque<(
        Command,
        tokio::sync::oneshot::Sender<Result<ApplyOutcome, NodeError>>,
    )>,
}

impl Node {
    /// Replicate `cmd` and wait until it is applied here; returns the outcome.
    ///
    /// Concurrent proposals on this member are batched (see
    /// [`Node::write_batched`]): one leader round trip and one Raft entry
    /// carry them all, each still applied at its own revision.
    pub async fn propose(self: &Arc<Self>, cmd: Command) -> Result<ApplyOutcome, NodeError> {
        self.check_serving()?;
        let outcome = self.write_batched(cmd).await?;
        // The write is applied on the leader; make it visible here too
        // before answering, so a client reading from this member next sees
        // its own write.
        self.wait_applied_revision(outcome.revision).await?;
        Ok(outcome)
    }

    /// How the client writes proposed on this member were batched so far.
    pub fn write_batch_stats(&self) -> WriteBatchStats {
        self.write_batch.lock().expect("write batch poisoned").stats
    }

    /// Send one entry (a command or a batch) to the leader.
    pub(super) async fn propose_entry(&self, entry: Command) -> Result<ApplyOutcome, NodeError> {
        match self.leader_call(LeaderRequest::Write(entry)).await? {
            LeaderResponse::Written(outcome) => Ok(outcome),
            other => Err(NodeError::Internal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }

    pub(super) async fn wait_applied_revision(&self, revision: i64) -> Result<(), NodeError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        let mut metrics = self.raft.metrics();
        while self.store().current_revision() < revision {
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Err(_) => return Err(NodeError::Timeout),
                // The Raft core stopped: its metrics never change again, and
                // `changed()` would return at once forever (a busy loop).
                Ok(Err(_)) => return Err(NodeError::Stopped),
            }
        }
        Ok(())
    }

    /// Propose `cmd`, batched with the writes proposed concurrently on this
    /// member.
    ///
    /// State machine: a write joins the queue; if fewer than
    /// `max_write_batches_in_flight` proposer tasks run, one more starts.
    /// A proposer takes everything queued (up to the batch limits) as one
    /// Raft entry (a lone command stays a plain entry), waits for it to be
    /// applied, hands each writer its own outcome, and repeats until the
    /// queue is empty, then ends. So a lone write is proposed at once, and
    /// under load each entry carries every write that arrived while the
    /// previous ones were in flight.
    pub(super) async fn write_batched(
        self: &Arc<Self>,
        cmd: Command,
    ) -> Result<ApplyOutcome, NodeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut b = self.write_batch.lock().expect("write batch poisoned");
            b.waiting.push_back((cmd, tx));
            let start = b.proposers < self.config.max_write_batches_in_flight.max(1);
            if start {
                b.proposers += 1;
            }
            start
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.propose_write_batches().await });
        }
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// One proposer task of [`Node::write_batched`].
    pub(super) async fn propose_write_batches(self: Arc<Self>) {
        loop {
            let batch: Vec<_> = {
                let mut b = self.write_batch.lock().expect("write batch poisoned");
                let mut bytes = 0;
                let mut n = 0;
                for (cmd, _) in &b.waiting {
                    if n == self.config.max_write_batch_commands.max(1)
                        || (n > 0 && bytes + cmd.approx_len() > self.config.max_write_batch_bytes)
                    {
                        break;
                    }
                    bytes += cmd.approx_len();
                    n += 1;
                }
                if n == 0 {
                    b.proposers -= 1;
                    return;
                }
                b.stats.entries += 1;
                b.stats.commands += n as u64;
                b.stats.largest = b.stats.largest.max(n as u64);
                b.waiting.drain(..n).collect()
            };
            let (cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let single = cmds.len() == 1;
            let entry = if single {
                cmds.into_iter().next().expect("one command")
            } else {
                Command::Batch(cmds)
            };
            match self.propose_entry(entry).await {
                Ok(outcome) if single => {
                    let _ = replies
                        .into_iter()
                        .next()
                        .expect("one writer")
                        .send(Ok(outcome));
                }
                Ok(outcome) => {
                    assert_eq!(
                        outcome.batch.len(),
                        replies.len(),
                        "an outcome per batched write"
                    );
                    for (reply, outcome) in replies.into_iter().zip(outcome.batch) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}
