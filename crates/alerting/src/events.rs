//! The event timeline: what happened in the cluster, kept in the replicated
//! store under `<prefix>/events/<ms, 16 digits>-<member>-<seq>` and bounded
//! by `max_events` and `event_retention_ms` (the leader prunes).

use serde::{Deserialize, Serialize};

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ms: i64,
    /// `leader_changed`, `member_down`, `member_up`, `alert_firing`,
    /// `alert_resolved`, `silence_added`, `silence_expired`,
    /// `rules_changed`, `config_changed`, `config_rejected`, `notification_failed`.
    pub kind: String,
    /// Member that recorded it.
    pub member: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Event {
    pub fn new(ts_ms: i64, kind: &str, member: &str, message: impl Into<String>) -> Self {
        Event {
            ts_ms,
            kind: kind.into(),
            member: member.into(),
            message: message.into(),
            labels: Default::default(),
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.ts_ms.max(0) as u64);
        format!(
            "{} {:<16} [{}] {}",
            humantime::format_rfc3339_millis(t),
            self.kind,
            self.member,
            self.message
        )
    }
}

/// Store key suffix of an event: sorts by time.
pub fn event_key(prefix: &str, e: &Event, seq: u64) -> String {
    format!("{prefix}/events/{:016}-{}-{seq}", e.ts_ms.max(0), e.member)
}
