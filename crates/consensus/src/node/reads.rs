//! Linearizable reads (ReadIndex rounds shared by concurrent readers) and
//! the lease operations served by the leader.

#[allow(unused_imports)]
use super::*;

/// Readers waiting for the next ReadIndex round.
#[derive(Default)]
pub(super) struct ReadBatch {
    pub(super) in_flight: bool,
    pub(super) waiting: Vec<tokio::sync::oneshot::Sender<Result<Option<u64>, NodeError>>>,
}

impl Node {
    /// Linearizable read barrier (ReadIndex): when this returns, every write
    /// acknowledged before the call is applied on this member.
    ///
    /// Concurrent callers share leader round trips: a caller joins the next
    /// round to *start* (never one already in flight, whose read index may
    /// predate the call), so at most one round per member is in flight and
    /// a burst of N reads costs two rounds, not N.
    pub async fn read_barrier(self: &Arc<Self>) -> Result<(), NodeError> {
        self.check_serving()?;
        if PlantedBug::SkipReadIndex.is_active(self.config.planted_bug) {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start_round = {
            let mut b = self.read_batch.lock().expect("read batch poisoned");
            b.waiting.push(tx);
            !std::mem::replace(&mut b.in_flight, true)
        };
        if start_round {
            let node = self.clone();
            tokio::spawn(async move { node.run_read_rounds().await });
        }
        let index = rx.await.map_err(|_| NodeError::Stopped)??;
        let Some(index) = index else { return Ok(()) };
        tracing::debug!("read barrier: waiting to apply index {index}");
        self.raft
            .wait(Some(Duration::from_millis(self.config.request_timeout_ms)))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => NodeError::Timeout,
                openraft::metrics::WaitError::ShuttingDown => NodeError::Stopped,
            })
    }

    /// Serve ReadIndex rounds until no reader is waiting.
    pub(super) async fn run_read_rounds(&self) {
        loop {
            let waiting = {
                let mut b = self.read_batch.lock().expect("read batch poisoned");
                if b.waiting.is_empty() {
                    b.in_flight = false;
                    return;
                }
                std::mem::take(&mut b.waiting)
            };
            let started = Instant::now();
            let result = match self.leader_call(LeaderRequest::ReadIndex).await {
                Ok(LeaderResponse::ReadIndex(log_id)) => Ok(log_id.map(|l| l.index)),
                Ok(other) => Err(NodeError::Internal(format!(
                    "unexpected leader answer {other:?}"
                ))),
                Err(e) => Err(e),
            };
            tracing::debug!(
                "read index round for {} readers: {result:?} in {} ms",
                waiting.len(),
                started.elapsed().as_millis()
            );
            for w in waiting {
                let _ = w.send(result.clone());
            }
        }
    }

    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>, NodeError> {
        match self
            .leader_call(LeaderRequest::LeaseKeepAlive { id })
            .await?
        {
            LeaderResponse::LeaseTtl(t) => Ok(t),
            other => Err(NodeError::Internal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }

    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>, NodeError> {
        match self
            .leader_call(LeaderRequest::LeaseTimeToLive { id })
            .await?
        {
            LeaderResponse::LeaseRemaining(t) => Ok(t),
            other => Err(NodeError::Internal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }
}
