//! `alerting`: metrics history, a PromQL subset, alerting rules,
//! Alertmanager-style notifications and the event timeline of a Phalanx
//! member (docs/alerting.md).
//!
//! Sans-I/O cores, each taking the time as an argument:
//! * [`tsdb`] — the bounded time-series store of the member's metrics, and
//!   the text exposition parser;
//! * [`promql`] — the supported PromQL subset over it (Prometheus's JSON shapes);
//! * [`anomaly_fn`] — `anomaly_score` & co.: the `anomaly` detectors as PromQL functions;
//! * [`rules`] — rule files, default rules, templates, the alert state machine;
//! * [`notify`] — alertmanager.yml subset, silences, inhibition, grouping and
//!   the notification-log dedup, webhook payloads (version 4);
//! * [`events`] — the event timeline record.
//!
//! I/O: [`store`] (the replicated store's keys, through `etcd_client`),
//! [`service`] (the member's tasks: scraping, the leader's evaluation and
//! delivery, the HTTP API).

pub mod anomaly_fn;
pub mod duration;
pub mod events;
pub mod notify;
pub mod promql;
pub mod rules;
pub mod service;
pub mod store;
pub mod targets;
pub mod tsdb;

pub use service::{start, AlertingHandle, Host, Settings};

/// A configuration document (rule file, alertmanager.yml) that cannot be
/// used; the configuration in force stays. Names the file, line and field.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{file}{}: {field}: {reason}", line.map(|l| format!(": line {l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn yaml(file: &str, e: &serde_yaml_ng::Error) -> Self {
        let reason = e.to_string();
        // serde's "unknown field `x`" / "missing field `x`" name the field.
        let field = reason
            .split('`')
            .nth(1)
            .filter(|_| reason.contains("field"))
            .unwrap_or("document")
            .to_string();
        ConfigError {
            file: file.to_string(),
            line: e.location().map(|l| l.line()),
            field,
            reason,
        }
    }
}
