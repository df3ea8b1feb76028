//! Alerting rules in Prometheus's rule-file YAML, the default rules, the
//! `$labels`/`$value` templates, and the alert state machine (sans-I/O:
//! [`AlertState::evaluate`] takes the time and the query engine).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::promql::{self, Engine, QueryError, Value};
use crate::tsdb::Labels;
use crate::ConfigError;

/// The rules in force when none are stored: see docs/alerting.md for each threshold.
pub const DEFAULT_RULES: &str = r#"groups:
- name: phalanx-defaults
  rules:
  - alert: PhalanxMemberDown
    expr: up{member!=""} == 0
    for: 5s
    labels:
      severity: critical
    annotations:
      summary: "Member {{ $labels.member }} is down"
      description: "The leader cannot scrape the metrics endpoint of member {{ $labels.member }} ({{ $labels.instance }})."
  - alert: PhalanxNoLeader
    expr: phalanx_server_has_leader == 0
    for: 1m
    labels:
      severity: critical
    annotations:
      summary: "Member {{ $labels.member }} has no leader"
  - alert: PhalanxInsufficientMembers
    expr: count(up{member!=""} == 1) < floor(count(up{member!=""}) / 2) + 1
    for: 1m
    labels:
      severity: critical
    annotations:
      summary: "Fewer than a quorum of members answer ({{ $value }} up)"
  - alert: PhalanxHighLeaderChanges
    expr: increase(phalanx_raft_term[15m]) > 3
    for: 1m
    labels:
      severity: warning
    annotations:
      summary: "Member {{ $labels.member }} saw {{ $value | humanize }} terms in 15 minutes"
  - alert: PhalanxHighFsyncLatency
    expr: histogram_quantile(0.99, rate(phalanx_disk_wal_fsync_duration_seconds_bucket[5m])) > 0.5
    for: 10m
    labels:
      severity: warning
    annotations:
      summary: "99th percentile Raft log fsync latency of {{ $labels.member }} is {{ $value | humanize }}s"
  - alert: PhalanxHighCommitLatency
    expr: histogram_quantile(0.99, rate(phalanx_server_proposal_duration_seconds_bucket[5m])) > 0.25
    for: 10m
    labels:
      severity: warning
    annotations:
      summary: "99th percentile commit latency (proposal to commit on a quorum) of {{ $labels.member }} is {{ $value | humanize }}s"
  - alert: PhalanxHighRequestErrorRate
    expr: sum by (member) (rate(phalanx_server_proposals_total{result="failed"}[5m])) / sum by (member) (rate(phalanx_server_proposals_total[5m])) > 0.01
    for: 10m
    labels:
      severity: warning
    annotations:
      summary: "{{ $value | humanizePercentage }} of the writes proposed on {{ $labels.member }} failed in the last 5 minutes"
  - alert: PhalanxDatabaseGrowth
    expr: predict_linear(phalanx_mvcc_db_total_size_in_bytes[4h], 4 * 3600) > phalanx_server_quota_backend_bytes
    for: 10m
    labels:
      severity: warning
    annotations:
      summary: "At its growth of the last 4 hours, {{ $labels.member }}'s backend reaches its quota within 4 hours"
  - alert: PhalanxQuotaNearlyFull
    expr: phalanx_mvcc_db_total_size_in_bytes / phalanx_server_quota_backend_bytes > 0.8
    for: 1m
    labels:
      severity: warning
    annotations:
      summary: "Member {{ $labels.member }}'s backend is {{ $value | humanizePercentage }} of its quota"
  - alert: PhalanxClockSkew
    expr: abs(phalanx_clock_offset_seconds) > 1
    for: 15s
    labels:
      severity: warning
    annotations:
      summary: "Member {{ $labels.member }}'s clock is {{ $value | humanize }}s off the leader's"
      description: "Measured at each scrape: the member's phalanx_wall_clock_seconds minus the leader's clock at the middle of the scrape (error at most half the scrape's round trip; scrapes slower than 500 ms are not used)."
  - alert: PhalanxGatewayEndpointDown
    expr: gateway_endpoint_healthy == 0
    for: 10s
    labels:
      severity: warning
    annotations:
      summary: "Gateway on {{ $labels.member }}: endpoint {{ $labels.endpoint }} of pool {{ $labels.pool }} is down"
  - alert: PhalanxGatewayOnBackupPool
    expr: phalanx_gateway_pool_on_backup == 1
    for: 10s
    labels:
      severity: warning
    annotations:
      summary: "Gateway on {{ $labels.member }}: every endpoint of pool {{ $labels.pool }} is down; traffic goes to its backup pools"
  - alert: PhalanxGatewayHighErrorRate
    expr: sum by (member, pool) (rate(gateway_downstream_responses_total{class="5xx"}[1m])) / sum by (member, pool) (rate(gateway_downstream_responses_total[1m])) > 0.05
    for: 1m
    labels:
      severity: warning
    annotations:
      summary: "Gateway on {{ $labels.member }}: {{ $value | humanizePercentage }} of pool {{ $labels.pool }}'s responses are 5xx"
  - alert: PhalanxBackupStale
    expr: time() - max by (destination) (phalanx_backup_last_success_timestamp_seconds) > 90000
    for: 5m
    labels:
      severity: warning
    annotations:
      summary: "No successful backup to {{ $labels.destination }} for {{ $value | humanizeDuration }}"
  - alert: PhalanxBackupFailed
    expr: max by (destination) (increase(phalanx_backup_failures_total[1h])) > 0
    labels:
      severity: warning
    annotations:
      summary: "Backups to {{ $labels.destination }} failed {{ $value | humanize }} times in the last hour"
  - alert: PhalanxRestoreDrillFailed
    expr: max by (destination) (increase(phalanx_restore_drill_failures_total[1d])) > 0
    labels:
      severity: critical
    annotations:
      summary: "A restore drill from {{ $labels.destination }} failed in the last day: the backups may not restore"
"#;

/// One alerting rule, validated.
#[derive(Debug, Clone)]
pub struct Rule {
    pub group: String,
    pub alert: String,
    pub expr_text: String,
    pub expr: promql_parser::parser::Expr,
    pub for_ms: u64,
    pub keep_firing_for_ms: u64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFileDoc {
    groups: Vec<GroupDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDoc {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    expr: serde_yaml_ng::Value,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Line (1-based) of the first line matching `field:` at or after the
/// line that names `anchor` (`alert: NAME` or `name: NAME`).
pub(crate) fn locate(text: &str, anchor: Option<(&str, &str)>, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let key_of = |l: &str| -> Option<(String, String)> {
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        let (k, v) = t.split_once(':')?;
        Some((
            k.trim().to_string(),
            v.trim().trim_matches(['"', '\'']).to_string(),
        ))
    };
    let start = match anchor {
        None => 0,
        Some((k, v)) => lines
            .iter()
            .position(|l| key_of(l).is_some_and(|(a, b)| a == k && b == v))?,
    };
    lines[start..]
        .iter()
        .position(|l| key_of(l).is_some_and(|(a, _)| a == field))
        .map(|i| start + i + 1)
}

/// Parse and validate a rule file. `file` names it in errors.
pub fn parse_rules(file: &str, text: &str) -> Result<Vec<Rule>, ConfigError> {
    let doc: RuleFileDoc =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::yaml(file, &e))?;
    let mut out: Vec<Rule> = Vec::new();
    let mut groups = std::collections::BTreeSet::new();
    for g in doc.groups {
        let at = |field: &str, reason: String| ConfigError {
            file: file.to_string(),
            line: locate(text, Some(("name", &g.name)), field),
            field: format!("group {:?}: {field}", g.name),
            reason,
        };
        if g.name.is_empty() {
            return Err(at("name", "a group needs a name".into()));
        }
        if !groups.insert(g.name.clone()) {
            return Err(at("name", "duplicate group name".into()));
        }
        if let Some(i) = &g.interval {
            duration::parse_ms(i).map_err(|e| at("interval", e))?;
        }
        let _ = g.limit;
        for (i, r) in g.rules.into_iter().enumerate() {
            let name = r.alert.clone().or(r.record.clone()).unwrap_or_default();
            let rat = |field: &str, reason: String| {
                let anchor = if r.alert.is_some() {
                    Some(("alert", name.as_str()))
                } else {
                    Some(("name", g.name.as_str()))
                };
                ConfigError {
                    file: file.to_string(),
                    line: locate(text, anchor, field),
                    field: format!("group {:?}, rule {} ({name}): {field}", g.name, i + 1),
                    reason,
                }
            };
            if r.record.is_some() {
                return Err(rat(
                    "record",
                    "recording rules are not supported; only `alert` rules are".into(),
                ));
            }
            let Some(alert) = r.alert.clone() else {
                return Err(rat("alert", "missing `alert:` (the alert's name)".into()));
            };
            if !is_label_name(&alert) {
                return Err(rat("alert", format!("{alert:?} is not a valid alert name")));
            }
            let expr_text = match &r.expr {
                serde_yaml_ng::Value::String(s) => s.clone(),
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                _ => return Err(rat("expr", "expected a PromQL expression".into())),
            };
            let expr = promql::parse(&expr_text).map_err(|e| rat("expr", e.to_string()))?;
            let for_ms = r
                .for_
                .as_deref()
                .map(duration::parse_ms)
                .transpose()
                .map_err(|e| rat("for", e))?
                .unwrap_or(0);
            let keep_firing_for_ms = r
                .keep_firing_for
                .as_deref()
                .map(duration::parse_ms)
                .transpose()
                .map_err(|e| rat("keep_firing_for", e))?
                .unwrap_or(0);
            for (k, v) in r.labels.iter().chain(r.annotations.iter()) {
                if !is_label_name(k) {
                    return Err(rat(k, format!("{k:?} is not a valid label name")));
                }
                render(v, &Labels::new(), 0.0).map_err(|e| rat(k, e))?;
            }
            out.push(Rule {
                group: g.name.clone(),
                alert,
                expr_text,
                expr,
                for_ms,
                keep_firing_for_ms,
                labels: r.labels,
                annotations: r.annotations,
            });
        }
    }
    Ok(out)
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// The default rules, parsed, with the default anomaly sensitivity.
pub fn default_rules() -> Vec<Rule> {
    default_rules_with(crate::anomaly_fn::DEFAULT_ANOMALY_SENSITIVITY)
}

/// The default rules, parsed, the anomaly rules with the score threshold
/// `anomaly_sensitivity` (see [`check_anomaly_sensitivity`]).
pub fn default_rules_with(anomaly_sensitivity: f64) -> Vec<Rule> {
    let mut rules =
        parse_rules("<default rules>", DEFAULT_RULES).expect("the default rules are valid");
    // Anomaly rules (issue 14): latency and gateway error ratio, switched on.
    rules.extend(
        parse_rules(
            "<default anomaly rules>",
            &crate::anomaly_fn::anomaly_rules_with_sensitivity(anomaly_sensitivity),
        )
        .expect("the default anomaly rules are valid"),
    );
    rules
}

/// Refuse an anomaly sensitivity (the default anomaly rules' score
/// threshold) outside `(0, 1)`, saying what it means.
pub fn check_anomaly_sensitivity(v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(format!(
            "anomaly sensitivity {v} is not between 0 and 1 (exclusive): it is the anomaly score above which the default anomaly rules fire; higher alerts less (default {})",
            crate::anomaly_fn::DEFAULT_ANOMALY_SENSITIVITY
        ))
    }
}

/// The rules in force: the defaults not `disabled` (names, or `all`) nor
/// overridden by a stored rule of the same alert name, then the stored ones;
/// the default anomaly rules fire above `anomaly_sensitivity`.
pub fn effective_rules(
    stored: &[Rule],
    disabled: &[String],
    anomaly_sensitivity: f64,
) -> Vec<Rule> {
    let all_off = disabled.iter().any(|d| d == "all");
    let mut out: Vec<Rule> = default_rules_with(anomaly_sensitivity)
        .into_iter()
        .filter(|d| {
            !all_off && !disabled.contains(&d.alert) && !stored.iter().any(|s| s.alert == d.alert)
        })
        .collect();
    out.extend(stored.iter().cloned());
    out
}

/// Render a `{{ $labels.NAME }}` / `{{ $value }}` template (pipes:
/// `humanize`, `humanizePercentage`, `humanizeDuration`; `printf "%.Nf" $value`).
pub fn render(t: &str, labels: &Labels, value: f64) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = t;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in template {t:?}"))?;
        let inner = after[..close]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        let mut parts = inner.split('|').map(str::trim);
        let head = parts.next().unwrap_or("");
        let mut v: Result<f64, String> = Err(String::new());
        let mut s = if head == "$value" {
            v = Ok(value);
            format_float(value)
        } else if let Some(n) = head.strip_prefix("$labels.") {
            labels.get(n).cloned().unwrap_or_default()
        } else if let Some(n) = head.strip_prefix("printf ") {
            let (fmt, arg) = n
                .rsplit_once(' ')
                .ok_or_else(|| format!("template {t:?}: printf needs a format and $value"))?;
            let fmt = fmt.trim().trim_matches('"');
            let prec = fmt
                .strip_prefix("%.")
                .and_then(|p| p.strip_suffix('f'))
                .and_then(|p| p.parse::<usize>().ok());
            match (prec, arg) {
                (Some(p), "$value") => format!("{value:.p$}"),
                _ => {
                    return Err(format!(
                        "template {t:?}: only `printf \"%.Nf\" $value` is supported, not `{inner}`"
                    ))
                }
            }
        } else {
            return Err(format!("template {t:?}: unsupported `{{{{ {inner} }}}}` (supported: $value, $labels.NAME, printf \"%.Nf\" $value, | humanize, | humanizePercentage, | humanizeDuration)"));
        };
        for p in parts {
            let x = v
                .clone()
                .or_else(|_| s.parse::<f64>().map_err(|e| e.to_string()))
                .unwrap_or(f64::NAN);
            s = match p {
                "humanize" => humanize(x),
                "humanizePercentage" => format!("{}%", (x * 100.0 * 1e4).round() / 1e4),
                "humanizeDuration" => duration::format_ms((x * 1000.0).max(0.0) as u64),
                other => return Err(format!("template {t:?}: unsupported function `{other}`")),
            };
            v = Err(String::new());
        }
        out.push_str(&s);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn format_float(v: f64) -> String {
    promql::format_value(v)
}

fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || v.abs() >= 1.0 && v.abs() < 1000.0 {
        return format!("{}", (v * 1e4).round() / 1e4);
    }
    let (units_big, units_small) = (["k", "M", "G", "T", "P"], ["m", "u", "n", "p"]);
    let mut x = v;
    if v.abs() >= 1000.0 {
        for u in units_big {
            x /= 1000.0;
            if x.abs() < 1000.0 {
                return format!("{}{u}", (x * 1e4).round() / 1e4);
            }
        }
        return format!("{}P", (x * 1e4).round() / 1e4);
    }
    for u in units_small {
        x *= 1000.0;
        if x.abs() >= 1.0 {
            return format!("{}{u}", (x * 1e4).round() / 1e4);
        }
    }
    format!("{v}")
}

/// A stable fingerprint of a label set (FNV-1a 64, hex), as Alertmanager's webhook sends one.
pub fn fingerprint(labels: &Labels) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

/// State of one alert instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Pending,
    Firing,
    /// Resolved: kept for `resolved_retention_ms` so the resolve is notified.
    Inactive,
}

/// One alert instance, as kept in the replicated store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertStatus,
    /// When the expression first returned it (pending since).
    pub active_at_ms: i64,
    /// When it started firing.
    pub fired_at_ms: Option<i64>,
    /// When it was resolved.
    pub resolved_at_ms: Option<i64>,
    /// Last evaluation that returned it.
    pub last_seen_ms: i64,
    /// First evaluation that no longer returned it while `keep_firing_for` holds it firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_since_ms: Option<i64>,
    pub value: f64,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels
            .get("alertname")
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// A state change worth an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Pending(Alert),
    Firing(Alert),
    Resolved(Alert),
}

/// (fingerprint, state, active at, fired at, resolved at) of every alert.
pub type DurableView = Vec<(String, AlertStatus, i64, Option<i64>, Option<i64>)>;

/// All alert instances by fingerprint; the leader keeps it in the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub alerts: BTreeMap<String, Alert>,
    /// Time of the last evaluation.
    pub evaluated_at_ms: i64,
}

/// How long a resolved alert is kept (and re-sent as resolved), like Prometheus's 15 minutes.
pub const DEFAULT_RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

impl AlertState {
    /// Evaluate every rule at `now_ms` and advance the state machine; the
    /// per-rule errors are returned (that rule's alerts are left as they are).
    pub fn evaluate(
        &mut self,
        rules: &[Rule],
        engine: &Engine,
        now_ms: i64,
        resolved_retention_ms: i64,
    ) -> (Vec<Transition>, Vec<(String, QueryError)>) {
        let mut transitions = Vec::new();
        let mut errors = Vec::new();
        for rule in rules {
            let samples = match engine.instant(&rule.expr, now_ms) {
                Ok(Value::Vector(v)) => v,
                Ok(Value::Scalar(x)) => vec![promql::Sample {
                    labels: Labels::new(),
                    value: x,
                }],
                Ok(_) => {
                    errors.push((
                        rule.alert.clone(),
                        QueryError::Eval(
                            "an alert expression must return a vector or a scalar".into(),
                        ),
                    ));
                    continue;
                }
                Err(e) => {
                    errors.push((rule.alert.clone(), e));
                    continue;
                }
            };
            let mut seen = std::collections::BTreeSet::new();
            for s in samples {
                let mut labels = s.labels.clone();
                // Labels starting with `__` are internal (Prometheus
                // reserves them): `__name__`, and the band `anomaly_alert`
                // attaches for the annotations, which moves with every
                // evaluation and must not make a new alert. Templates below
                // still see them.
                labels.retain(|k, _| !k.starts_with("__"));
                for (k, v) in &rule.labels {
                    labels.insert(
                        k.clone(),
                        render(v, &s.labels, s.value).unwrap_or_else(|e| e),
                    );
                }
                labels.insert("alertname".into(), rule.alert.clone());
                let annotations: BTreeMap<String, String> = rule
                    .annotations
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            render(v, &s.labels, s.value).unwrap_or_else(|e| e),
                        )
                    })
                    .collect();
                let fp = fingerprint(&labels);
                seen.insert(fp.clone());
                match self.alerts.get_mut(&fp) {
                    Some(a) if a.state != AlertStatus::Inactive => {
                        a.value = s.value;
                        a.annotations = annotations;
                        a.last_seen_ms = now_ms;
                        a.keep_firing_since_ms = None;
                    }
                    _ => {
                        let a = Alert {
                            labels,
                            annotations,
                            state: AlertStatus::Pending,
                            active_at_ms: now_ms,
                            fired_at_ms: None,
                            resolved_at_ms: None,
                            last_seen_ms: now_ms,
                            keep_firing_since_ms: None,
                            value: s.value,
                        };
                        transitions.push(Transition::Pending(a.clone()));
                        self.alerts.insert(fp.clone(), a);
                    }
                }
            }
            let mine: Vec<String> = self
                .alerts
                .iter()
                .filter(|(_, a)| a.name() == rule.alert)
                .map(|(f, _)| f.clone())
                .collect();
            for fp in mine {
                let a = self.alerts.get_mut(&fp).expect("listed above");
                if !seen.contains(&fp) {
                    match a.state {
                        AlertStatus::Pending => {
                            self.alerts.remove(&fp);
                            continue;
                        }
                        AlertStatus::Firing => {
                            if rule.keep_firing_for_ms > 0 {
                                let since = *a.keep_firing_since_ms.get_or_insert(now_ms);
                                if now_ms - since < rule.keep_firing_for_ms as i64 {
                                    continue;
                                }
                            }
                            a.state = AlertStatus::Inactive;
                            a.resolved_at_ms = Some(now_ms);
                            transitions.push(Transition::Resolved(a.clone()));
                        }
                        AlertStatus::Inactive => {
                            if a.resolved_at_ms
                                .is_some_and(|r| now_ms - r > resolved_retention_ms)
                            {
                                self.alerts.remove(&fp);
                            }
                        }
                    }
                    continue;
                }
                if a.state == AlertStatus::Pending && now_ms - a.active_at_ms >= rule.for_ms as i64
                {
                    a.state = AlertStatus::Firing;
                    a.fired_at_ms = Some(now_ms);
                    transitions.push(Transition::Firing(a.clone()));
                }
            }
        }
        // Alerts of rules that no longer exist: resolve them (firing) or drop them.
        let names: std::collections::BTreeSet<&str> =
            rules.iter().map(|r| r.alert.as_str()).collect();
        let orphans: Vec<String> = self
            .alerts
            .iter()
            .filter(|(_, a)| !names.contains(a.name()))
            .map(|(f, _)| f.clone())
            .collect();
        for fp in orphans {
            let a = self.alerts.get_mut(&fp).expect("listed");
            match a.state {
                AlertStatus::Firing => {
                    a.state = AlertStatus::Inactive;
                    a.resolved_at_ms = Some(now_ms);
                    transitions.push(Transition::Resolved(a.clone()));
                }
                AlertStatus::Pending => {
                    self.alerts.remove(&fp);
                }
                AlertStatus::Inactive => {
                    if a.resolved_at_ms
                        .is_some_and(|r| now_ms - r > resolved_retention_ms)
                    {
                        self.alerts.remove(&fp);
                    }
                }
            }
        }
        self.evaluated_at_ms = now_ms;
        (transitions, errors)
    }

    /// The state without the volatile parts (values, annotations, last seen):
    /// what must reach the store for a new leader to continue.
    pub fn durable_view(&self) -> DurableView {
        self.alerts
            .iter()
            .map(|(f, a)| {
                (
                    f.clone(),
                    a.state,
                    a.active_at_ms,
                    a.fired_at_ms,
                    a.resolved_at_ms,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::{Tsdb, TsdbSettings};

    #[test]
    fn defaults_parse_and_templates_render() {
        let r = default_rules();
        assert!(r.len() >= 6);
        let mut l = Labels::new();
        l.insert("member".into(), "n2".into());
        assert_eq!(
            render("{{ $labels.member }} at {{ $value }}", &l, 0.5).unwrap(),
            "n2 at 0.5"
        );
        assert_eq!(
            render("{{ $value | humanize }}", &l, 1234.0).unwrap(),
            "1.234k"
        );
        assert_eq!(
            render("{{ printf \"%.1f\" $value }}", &l, 0.25).unwrap(),
            "0.2"
        );
        assert!(render("{{ .Foo }}", &l, 0.0).is_err());
    }

    #[test]
    fn bad_rule_files_name_line_and_field() {
        let text = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n  - alert: B\n    expr: topk(1, up)\n    for: 5s\n";
        let e = parse_rules("r.yml", text).unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(
            e.to_string().contains("expr") && e.to_string().contains("topk"),
            "{e}"
        );
        let e = parse_rules(
            "r.yml",
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    for: 5 minutes\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(
            e.to_string().contains("`for`") || e.to_string().contains("for"),
            "{e}"
        );
        let e = parse_rules(
            "r.yml",
            "groups:\n- name: g\n  rules:\n  - alert: A\n    exprr: up\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.to_string().contains("exprr"), "{e}");
    }

    #[test]
    fn state_machine_pending_firing_resolved_keep_firing() {
        let rules = parse_rules("r", "groups:\n- name: g\n  rules:\n  - alert: Down\n    expr: up == 0\n    for: 2s\n    keep_firing_for: 1s\n").unwrap();
        let mut db = Tsdb::new(TsdbSettings::default());
        let mut st = AlertState::default();
        let up = |v: f64| {
            let mut l = Labels::new();
            l.insert("__name__".into(), "up".into());
            l.insert("member".into(), "n2".into());
            [(l, v)]
        };
        let mut kinds = vec![];
        for (t, v) in [
            (0, 1.0),
            (1000, 0.0),
            (2000, 0.0),
            (3000, 0.0),
            (4000, 1.0),
            (4500, 1.0),
            (5500, 1.0),
        ] {
            db.append(t, up(v));
            let eng = Engine {
                db: &db,
                lookback_ms: 1000,
            };
            let (tr, errs) = st.evaluate(&rules, &eng, t, 60_000);
            assert!(errs.is_empty());
            for x in tr {
                kinds.push(match x {
                    Transition::Pending(_) => ("pending", t),
                    Transition::Firing(_) => ("firing", t),
                    Transition::Resolved(_) => ("resolved", t),
                });
            }
        }
        assert_eq!(
            kinds,
            vec![("pending", 1000), ("firing", 3000), ("resolved", 5500)]
        );
    }

    /// Synthetic samples at a time: (label pairs, value).
    type SeriesAt<'a> = dyn Fn(i64) -> Vec<(Vec<(&'static str, String)>, f64)> + 'a;

    /// Runs the default rules over synthetic series, every `step` ms from
    /// `from` to `to`; returns the firing alerts at the end (name, labels).
    fn fire_defaults(
        series: &SeriesAt<'_>,
        from: i64,
        to: i64,
        step: i64,
    ) -> Vec<(String, Labels)> {
        let rules = default_rules();
        let mut db = Tsdb::new(TsdbSettings::default());
        let mut st = AlertState::default();
        let mut t = from;
        while t <= to {
            let samples: Vec<(Labels, f64)> = series(t)
                .into_iter()
                .map(|(ls, v)| {
                    (
                        ls.into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect::<Labels>(),
                        v,
                    )
                })
                .collect();
            db.append(t, samples);
            let eng = Engine {
                db: &db,
                lookback_ms: crate::promql::DEFAULT_LOOKBACK_MS,
            };
            let (_, errs) = st.evaluate(&rules, &eng, t, 60_000);
            assert!(errs.is_empty(), "{errs:?}");
            t += step;
        }
        st.alerts
            .values()
            .filter(|a| a.state == AlertStatus::Firing)
            .map(|a| (a.name().to_string(), a.labels.clone()))
            .collect()
    }

    /// The store's latency, error and growth rules on synthetic series:
    /// slow fsyncs and commits, 5 % failed writes, a backend growing to
    /// its quota within 4 h; and nothing for a healthy member.
    #[test]
    fn store_latency_error_and_growth_rules_fire_on_synthetic_series() {
        const H: i64 = 3_600_000;
        let start = 1_000 * H;
        let series = |slow: bool| {
            move |t: i64| {
                let n = ((t - start) / 15_000) as f64; // one observation per scrape
                let m = || ("member", "n1".to_string());
                let mut v = vec![];
                for (name, le_slow) in [
                    ("phalanx_disk_wal_fsync_duration_seconds_bucket", "1.024"),
                    ("phalanx_server_proposal_duration_seconds_bucket", "0.512"),
                ] {
                    for le in ["0.001", "0.064", le_slow, "+Inf"] {
                        // Healthy: everything under 1 ms; slow: everything in the slow bucket.
                        let count = if !slow || le == le_slow || le == "+Inf" {
                            n
                        } else {
                            0.0
                        };
                        v.push((
                            vec![("__name__", name.into()), m(), ("le", le.into())],
                            count,
                        ));
                    }
                }
                let failed = if slow { n * 5.0 } else { 0.0 };
                v.push((
                    vec![
                        ("__name__", "phalanx_server_proposals_total".into()),
                        m(),
                        ("result", "failed".into()),
                    ],
                    failed,
                ));
                v.push((
                    vec![
                        ("__name__", "phalanx_server_proposals_total".into()),
                        m(),
                        ("result", "ok".into()),
                    ],
                    n * 100.0 - failed,
                ));
                // 1 GiB, growing 1 GiB an hour when slow; quota 2 GiB.
                let gib = 1024.0 * 1024.0 * 1024.0;
                let grow = if slow {
                    (t - start) as f64 / H as f64
                } else {
                    0.0
                };
                v.push((
                    vec![
                        ("__name__", "phalanx_mvcc_db_total_size_in_bytes".into()),
                        m(),
                    ],
                    gib * (1.0 + grow),
                ));
                v.push((
                    vec![
                        ("__name__", "phalanx_server_quota_backend_bytes".into()),
                        m(),
                    ],
                    2.0 * gib,
                ));
                v
            }
        };
        let firing = fire_defaults(&series(true), start, start + H / 2, 15_000);
        let names: Vec<&str> = firing.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "PhalanxHighFsyncLatency",
            "PhalanxHighCommitLatency",
            "PhalanxHighRequestErrorRate",
            "PhalanxDatabaseGrowth",
        ] {
            assert!(names.contains(&want), "{want} not firing: {firing:?}");
        }
        let firing = fire_defaults(&series(false), start, start + H / 2, 15_000);
        assert!(firing.is_empty(), "a healthy member fired: {firing:?}");
    }

    #[test]
    fn backup_rules_fire_on_synthetic_series() {
        const DAY_MS: i64 = 86_400_000;
        let start = 100 * DAY_MS;
        // Last success 26 h before the end (threshold 25 h); failures growing; a drill failure.
        let firing = fire_defaults(
            &|t| {
                let dest = || ("destination", "s3://b/p".to_string());
                vec![
                    (
                        vec![
                            (
                                "__name__",
                                "phalanx_backup_last_success_timestamp_seconds".into(),
                            ),
                            ("member", "n1".into()),
                            dest(),
                        ],
                        ((start - 20 * 3_600_000) / 1000) as f64,
                    ),
                    (
                        vec![
                            ("__name__", "phalanx_backup_failures_total".into()),
                            ("member", "n1".into()),
                            dest(),
                        ],
                        ((t - start) / 600_000) as f64,
                    ),
                    (
                        vec![
                            ("__name__", "phalanx_restore_drill_failures_total".into()),
                            ("member", "n1".into()),
                            dest(),
                        ],
                        if t > start + 3_600_000 { 1.0 } else { 0.0 },
                    ),
                ]
            },
            start,
            start + 7 * 3_600_000,
            60_000,
        );
        let names: Vec<&str> = firing.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "PhalanxBackupStale",
            "PhalanxBackupFailed",
            "PhalanxRestoreDrillFailed",
        ] {
            assert!(names.contains(&want), "{want} not firing: {firing:?}");
        }
        assert!(firing
            .iter()
            .all(|(_, l)| l.get("destination").map(String::as_str) == Some("s3://b/p")));

        // Healthy backups: a fresh success, no failures — nothing fires.
        let firing = fire_defaults(
            &|t| {
                vec![
                    (
                        vec![
                            (
                                "__name__",
                                "phalanx_backup_last_success_timestamp_seconds".into(),
                            ),
                            ("destination", "file:///b".into()),
                        ],
                        ((t - 3_600_000) / 1000) as f64,
                    ),
                    (
                        vec![
                            ("__name__", "phalanx_backup_failures_total".into()),
                            ("destination", "file:///b".into()),
                        ],
                        3.0,
                    ),
                ]
            },
            start,
            start + 3 * 3_600_000,
            60_000,
        );
        assert!(firing.is_empty(), "{firing:?}");
    }

    #[test]
    fn clock_skew_and_gateway_rules_fire_on_synthetic_series() {
        let firing = fire_defaults(
            &|t| {
                vec![
                    (
                        vec![
                            ("__name__", "phalanx_clock_offset_seconds".into()),
                            ("member", "n3".into()),
                        ],
                        5.02,
                    ),
                    (
                        vec![
                            ("__name__", "phalanx_clock_offset_seconds".into()),
                            ("member", "n2".into()),
                        ],
                        -0.004,
                    ),
                    (
                        vec![
                            ("__name__", "gateway_endpoint_healthy".into()),
                            ("member", "n1".into()),
                            ("pool", "api".into()),
                            ("endpoint", "127.0.0.1:9001".into()),
                        ],
                        if t >= 30_000 { 0.0 } else { 1.0 },
                    ),
                    (
                        vec![
                            ("__name__", "phalanx_gateway_pool_on_backup".into()),
                            ("member", "n1".into()),
                            ("pool", "api".into()),
                        ],
                        1.0,
                    ),
                    (
                        vec![
                            ("__name__", "gateway_downstream_responses_total".into()),
                            ("member", "n1".into()),
                            ("pool", "api".into()),
                            ("class", "5xx".into()),
                        ],
                        (t / 1000) as f64,
                    ),
                    (
                        vec![
                            ("__name__", "gateway_downstream_responses_total".into()),
                            ("member", "n1".into()),
                            ("pool", "api".into()),
                            ("class", "2xx".into()),
                        ],
                        (t / 100) as f64,
                    ),
                ]
            },
            0,
            180_000,
            1_000,
        );
        let has = |name: &str, k: &str, v: &str| {
            firing
                .iter()
                .any(|(n, l)| n == name && l.get(k).map(String::as_str) == Some(v))
        };
        assert!(has("PhalanxClockSkew", "member", "n3"), "{firing:?}");
        assert!(!has("PhalanxClockSkew", "member", "n2"), "{firing:?}");
        assert!(
            has("PhalanxGatewayEndpointDown", "endpoint", "127.0.0.1:9001"),
            "{firing:?}"
        );
        assert!(
            has("PhalanxGatewayOnBackupPool", "pool", "api"),
            "{firing:?}"
        );
        // 1 of 11 responses is a 5xx: 9 % > 5 %.
        assert!(
            has("PhalanxGatewayHighErrorRate", "pool", "api"),
            "{firing:?}"
        );
    }
}
