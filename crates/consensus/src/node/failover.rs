//! Fast failover when the leader's process is gone.
//!
//! openraft 0.9 makes a follower wait out the leader lease
//! (`election_timeout_max`) *and* its own randomised election timeout after
//! the last AppendEntries before it campaigns, and refuses votes to others
//! until that lease has run out: with the defaults a killed leader is
//! replaced 375–450 ms after its last message. The lease is what keeps a
//! live leader from being deposed by a follower that merely missed a few
//! heartbeats (it does the job of Raft's Pre-Vote), so it must stay for
//! every failure that *looks* like slowness: a partition, a paused process,
//! a slow disk.
//!
//! A crashed process on a running host is different and can be told apart:
//! its peer port refuses connections. So each follower runs this detector,
//! a small state machine:
//!
//! * **Listening** — AppendEntries arrive; nothing to do.
//! * **Suspecting** — none for [`SUSPECT_AFTER_HEARTBEATS`] heartbeat
//!   intervals: probe the leader's peer URLs with a TCP connect (bounded by
//!   one heartbeat interval).
//! * **Released** — every URL *refused* the connection (not a timeout, not
//!   unreachable): the leader's process is dead. The follower steps its
//!   Raft clock forward by the lease, once for that leader and term, so its
//!   lease is over and its ordinary randomised election timer decides when
//!   it campaigns. Both surviving followers do this on their own; their
//!   different election timeouts still keep them from splitting the vote.
//!
//! Safety does not depend on it: openraft serves no read from a lease
//! (ReadIndex always confirms leadership with a quorum), and stepping a
//! member's Raft clock forward is a legal clock behaviour the simulator
//! exercises (`MemberClock::jump_forward`). A refused connection that is not
//! a crash (a firewall REJECT rule) only shortens the wait for an election
//! that the lease would have allowed a few hundred milliseconds later.
//! The clock stepped is the Raft core's only; client lease expiry
//! (`Lessor`) keeps its own clock.

#[allow(unused_imports)]
use super::*;

use crate::runtime::MemberClock;

/// Missed heartbeat intervals after which a follower probes its leader.
pub const SUSPECT_AFTER_HEARTBEATS: u32 = 2;

impl Node {
    /// How many times this member found its leader's process gone.
    pub fn dead_leader_detections(&self) -> u64 {
        self.dead_leader_detections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Note that an AppendEntries (a heartbeat or entries) arrived.
    pub(super) fn note_leader_contact(&self) {
        *self.leader_contact.lock().expect("leader contact poisoned") = Some(Instant::now());
    }

    /// Run the detector (see the module docs) until shutdown. `raft_clock`
    /// is the clock the Raft core was started under.
    pub(super) fn spawn_leader_death_detector(self: Arc<Self>, raft_clock: MemberClock) {
        let heartbeat = Duration::from_millis(self.config.heartbeat_interval_ms.max(1));
        let lease = Duration::from_millis(self.config.election_timeout_ms * 3 / 2);
        tokio::spawn(async move {
            let mut shutdown = self.shutdown_tx.subscribe();
            let mut tick = tokio::time::interval(heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // (term, leader) whose lease this member already released.
            let mut released: Option<(u64, NodeId)> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                let (state, term, leader, urls) = {
                    let m = self.raft.metrics();
                    let m = m.borrow();
                    let urls = m.current_leader.and_then(|l| {
                        m.membership_config
                            .membership()
                            .get_node(&l)
                            .map(|n| n.peer_urls.clone())
                    });
                    (m.state, m.current_term, m.current_leader, urls)
                };
                let (Some(leader), Some(urls)) = (leader, urls) else {
                    continue;
                };
                if state != ServerState::Follower
                    || leader == self.id
                    || released == Some((term, leader))
                {
                    continue;
                }
                let silent = self
                    .leader_contact
                    .lock()
                    .expect("leader contact poisoned")
                    .is_none_or(|t| t.elapsed() >= heartbeat * SUSPECT_AFTER_HEARTBEATS);
                if !silent || urls.is_empty() {
                    continue;
                }
                if all_refuse(&urls, heartbeat).await {
                    released = Some((term, leader));
                    raft_clock.jump_forward(lease);
                    self.dead_leader_detections
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        "leader {leader:x} (term {term}) sent nothing for {} heartbeat intervals and its peer URLs {} refuse connections: its process is gone; this member no longer waits out its lease ({} ms) before electing a new leader",
                        SUSPECT_AFTER_HEARTBEATS,
                        urls.join(","),
                        lease.as_millis()
                    );
                }
            }
        });
    }
}

/// Whether a TCP connect to every URL's host:port is refused within
/// `bound` (a timeout or any other error means "maybe alive").
async fn all_refuse(urls: &[String], bound: Duration) -> bool {
    for url in urls {
        let Some(addr) = host_port(url) else {
            return false;
        };
        match tokio::time::timeout(bound, tokio::net::TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            _ => return false,
        }
    }
    true
}

/// `host:port` of a peer URL (`http://h:p`, `https://h:p/...`).
fn host_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hp = rest.split('/').next()?;
    hp.contains(':').then_some(hp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_peer_urls() {
        assert_eq!(host_port("http://127.0.0.1:2380"), Some("127.0.0.1:2380"));
        assert_eq!(host_port("https://[::1]:2380/x"), Some("[::1]:2380"));
        assert_eq!(host_port("http://nohost"), None);
    }

    #[tokio::test]
    async fn a_closed_port_refuses_an_open_one_does_not() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open_url = format!("http://{}", open.local_addr().unwrap());
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let bound = Duration::from_secs(2);
        assert!(all_refuse(std::slice::from_ref(&closed_url), bound).await);
        assert!(!all_refuse(std::slice::from_ref(&open_url), bound).await);
        assert!(!all_refuse(&[closed_url, open_url], bound).await);
    }
}
