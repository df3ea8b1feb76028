//! Notifications as Alertmanager does them (sans-I/O): the alertmanager.yml
//! subset ([`AmConfig`]: route tree, receivers with `webhook_configs`,
//! inhibit rules), silences, and the [`Dispatcher`] that groups alerts,
//! applies `group_wait`/`group_interval`/`repeat_interval` against the
//! notification log, and produces webhook payloads (version 4).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::rules::{fingerprint, Alert, AlertStatus};
use crate::tsdb::Labels;
use crate::ConfigError;

/// A label matcher: `name="v"`, `name!="v"`, `name=~"re"`, `name!~"re"`.
#[derive(Debug, Clone)]
pub struct LabelMatcher {
    pub name: String,
    pub op: MatchKind,
    pub value: String,
    re: Option<regex::Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Eq,
    Ne,
    Re,
    NotRe,
}

impl LabelMatcher {
    pub fn new(name: &str, op: MatchKind, value: &str) -> Result<Self, String> {
        let re = match op {
            MatchKind::Re | MatchKind::NotRe => Some(
                regex::Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("bad regex {value:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(LabelMatcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            re,
        })
    }

    /// Parse `name="value"` (quotes optional).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s
            .trim()
            .trim_start_matches('{')
            .trim_end_matches('}')
            .trim();
        let pos = s.find(['=', '!']).ok_or_else(|| format!("matcher {s:?}: expected name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\""))?;
        let name = s[..pos].trim();
        let rest = &s[pos..];
        let (op, v) = if let Some(v) = rest.strip_prefix("=~") {
            (MatchKind::Re, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (MatchKind::NotRe, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (MatchKind::Ne, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (MatchKind::Eq, v)
        } else {
            return Err(format!("matcher {s:?}: unknown operator"));
        };
        if name.is_empty() {
            return Err(format!("matcher {s:?}: missing label name"));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        Self::new(name, op, &v.replace("\\\"", "\""))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match self.op {
            MatchKind::Eq => v == self.value,
            MatchKind::Ne => v != self.value,
            MatchKind::Re => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchKind::NotRe => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

impl std::fmt::Display for LabelMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            MatchKind::Eq => "=",
            MatchKind::Ne => "!=",
            MatchKind::Re => "=~",
            MatchKind::NotRe => "!~",
        };
        write!(f, "{}{op}{:?}", self.name, self.value)
    }
}

// ---- alertmanager.yml ----

/// Builds a [`ConfigError`] from (field path, line anchor, reason).
type ErrFn<'a> = dyn Fn(&str, Option<(&str, &str)>, String) -> ConfigError + 'a;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmDoc {
    #[serde(default)]
    global: Option<GlobalDoc>,
    route: RouteDoc,
    #[serde(default)]
    receivers: Vec<ReceiverDoc>,
    #[serde(default)]
    inhibit_rules: Vec<InhibitDoc>,
    #[serde(default)]
    time_intervals: Vec<NamedIntervalDoc>,
    /// Alertmanager's older name for `time_intervals`; both lists share one namespace.
    #[serde(default)]
    mute_time_intervals: Vec<NamedIntervalDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalDoc {
    #[serde(default)]
    resolve_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RouteDoc {
    #[serde(default)]
    receiver: Option<String>,
    #[serde(default)]
    group_by: Option<Vec<String>>,
    #[serde(default)]
    group_wait: Option<String>,
    #[serde(default)]
    group_interval: Option<String>,
    #[serde(default)]
    repeat_interval: Option<String>,
    #[serde(default)]
    matchers: Vec<String>,
    #[serde(default, rename = "match")]
    match_: BTreeMap<String, String>,
    #[serde(default)]
    match_re: BTreeMap<String, String>,
    #[serde(default, rename = "continue")]
    continue_: bool,
    #[serde(default)]
    routes: Vec<RouteDoc>,
    #[serde(default)]
    mute_time_intervals: Vec<String>,
    #[serde(default)]
    active_time_intervals: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiverDoc {
    name: String,
    #[serde(default)]
    webhook_configs: Vec<WebhookDoc>,
    #[serde(default)]
    email_configs: Vec<EmailDoc>,
    #[serde(default)]
    slack_configs: Vec<SlackDoc>,
    #[serde(default)]
    alertmanager_configs: Vec<AlertmanagerDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookDoc {
    url: String,
    #[serde(default)]
    send_resolved: Option<bool>,
    #[serde(default)]
    max_alerts: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailDoc {
    to: String,
    from: String,
    smarthost: String,
    #[serde(default)]
    hello: Option<String>,
    #[serde(default)]
    auth_username: Option<String>,
    #[serde(default)]
    auth_password: Option<String>,
    #[serde(default)]
    require_tls: Option<bool>,
    #[serde(default)]
    send_resolved: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlackDoc {
    api_url: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    send_resolved: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertmanagerDoc {
    url: String,
    #[serde(default)]
    send_resolved: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InhibitDoc {
    #[serde(default)]
    source_matchers: Vec<String>,
    #[serde(default)]
    target_matchers: Vec<String>,
    #[serde(default)]
    source_match: BTreeMap<String, String>,
    #[serde(default)]
    target_match: BTreeMap<String, String>,
    #[serde(default)]
    equal: Vec<String>,
}

/// An SMTP endpoint of a receiver (`email_configs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    pub to: Vec<String>,
    pub from: String,
    /// `host:port` of the SMTP server.
    pub smarthost: String,
    pub hello: Option<String>,
    pub auth: Option<(String, String)>,
    /// true (Alertmanager's default): STARTTLS required (implicit TLS on port 465);
    /// false: STARTTLS when the server offers it, plain otherwise.
    pub require_tls: bool,
    /// Extra headers; `Subject` overrides the default subject. Group templates allowed.
    pub headers: BTreeMap<String, String>,
}

/// A Slack-compatible incoming webhook (`slack_configs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Slack {
    pub api_url: String,
    pub channel: Option<String>,
    pub username: Option<String>,
    /// Group templates (see [`render_group`]); None: Alertmanager's default title/text.
    pub title: Option<String>,
    pub text: Option<String>,
}

/// How one endpoint of a receiver is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Integration {
    /// POST of Alertmanager's webhook payload (version 4) to `url`.
    Webhook {
        url: String,
    },
    /// POST of the alerts to an Alertmanager's `url` + `/api/v2/alerts`.
    Alertmanager {
        url: String,
    },
    Email(Email),
    Slack(Slack),
}

impl Integration {
    /// `webhook`, `alertmanager`, `email`, `slack` (the `integration` label of counters).
    pub fn kind(&self) -> &'static str {
        match self {
            Integration::Webhook { .. } => "webhook",
            Integration::Alertmanager { .. } => "alertmanager",
            Integration::Email(_) => "email",
            Integration::Slack(_) => "slack",
        }
    }

    /// Where it goes, for logs and events.
    pub fn target(&self) -> String {
        match self {
            Integration::Webhook { url } => url.clone(),
            Integration::Alertmanager { url } => format!("{url}/api/v2/alerts"),
            Integration::Email(e) => format!("smtp://{} to {}", e.smarthost, e.to.join(",")),
            Integration::Slack(s) => s.api_url.clone(),
        }
    }
}

/// An endpoint of a receiver (`webhook_configs`, `email_configs`, `slack_configs`, `alertmanager_configs` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub integration: Integration,
    pub send_resolved: bool,
    /// 0 = all.
    pub max_alerts: usize,
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub name: String,
    pub webhooks: Vec<Webhook>,
}

/// How often alerts are pushed again to an Alertmanager receiver (Prometheus's
/// `resend_delay` is 1 m); each push says the alert ends after
/// [`ALERTMANAGER_VALIDITY_FACTOR`] × this unless pushed again.
pub const ALERTMANAGER_RESEND_MS: i64 = 60_000;
/// Prometheus sets `endsAt` of a firing alert to now + 4 × resend delay.
pub const ALERTMANAGER_VALIDITY_FACTOR: i64 = 4;

/// A URL of an HTTP receiver: `http://` or `https://` with a host.
fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .ok_or_else(|| format!("{u:?}: expected an http:// or https:// URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{u:?}: the URL has no host"));
    }
    u.parse::<hyper::Uri>()
        .map(|_| ())
        .map_err(|e| format!("{u:?}: {e}"))
}

/// A node of the route tree, with inherited settings resolved.
#[derive(Debug, Clone)]
pub struct Route {
    /// Alertmanager's route key: `{}` for the root, `{}/{matchers}` below.
    pub key: String,
    /// Position in the tree (`0`, `0/1`, …): unique even where keys repeat.
    pub id: String,
    pub receiver: String,
    /// None = `...` (group by all labels).
    pub group_by: Option<Vec<String>>,
    pub group_wait_ms: i64,
    pub group_interval_ms: i64,
    pub repeat_interval_ms: i64,
    pub matchers: Vec<LabelMatcher>,
    pub continue_: bool,
    pub routes: Vec<Route>,
    /// Names of time intervals in which this route sends nothing. Not
    /// inherited by child routes (as in Alertmanager).
    pub mute_time_intervals: Vec<String>,
    /// Names of time intervals outside all of which this route sends
    /// nothing; empty = always active. Not inherited either.
    pub active_time_intervals: Vec<String>,
}

impl Route {
    /// The routes an alert goes to (Alertmanager's `Route.Match`).
    pub fn find(&self, labels: &Labels) -> Vec<&Route> {
        if !self.matchers.iter().all(|m| m.matches(labels)) {
            return vec![];
        }
        let mut out = Vec::new();
        for c in &self.routes {
            let m = c.find(labels);
            let matched = !m.is_empty();
            out.extend(m);
            if matched && !c.continue_ {
                break;
            }
        }
        if out.is_empty() {
            out.push(self);
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct InhibitRule {
    pub source: Vec<LabelMatcher>,
    pub target: Vec<LabelMatcher>,
    pub equal: Vec<String>,
}

/// A validated alertmanager.yml.
#[derive(Debug, Clone)]
pub struct AmConfig {
    pub route: Route,
    pub receivers: BTreeMap<String, Receiver>,
    pub inhibit_rules: Vec<InhibitRule>,
    /// Named time intervals (`time_intervals` and `mute_time_intervals`).
    pub time_intervals: BTreeMap<String, Vec<TimeInterval>>,
}

pub const DEFAULT_GROUP_WAIT_MS: i64 = 5_000;
pub const DEFAULT_GROUP_INTERVAL_MS: i64 = 5 * 60_000;
pub const DEFAULT_REPEAT_INTERVAL_MS: i64 = 4 * 3_600_000;

impl AmConfig {
    /// The configuration in force when none is stored: one receiver without
    /// endpoints (alerts are evaluated, kept and listed, nothing is sent).
    pub fn empty() -> Self {
        parse_am_config(
            "<default>",
            "route:\n  receiver: none\nreceivers:\n- name: none\n",
        )
        .expect("valid")
    }

    /// Whether `route` sends nothing at `now_ms`: inside one of its
    /// `mute_time_intervals`, or outside all its `active_time_intervals`
    /// (Alertmanager's TimeMuteStage and TimeActiveStage).
    pub fn route_muted(&self, route: &Route, now_ms: i64) -> bool {
        let within = |name: &String| {
            self.time_intervals
                .get(name)
                .is_some_and(|e| in_time_interval(e, now_ms))
        };
        route.mute_time_intervals.iter().any(within)
            || (!route.active_time_intervals.is_empty()
                && !route.active_time_intervals.iter().any(within))
    }
}

/// Parse and validate an alertmanager.yml; `file` names it in errors.
pub fn parse_am_config(file: &str, text: &str) -> Result<AmConfig, ConfigError> {
    let mut doc: AmDoc = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::yaml(file, &e))?;
    let err = |field: &str, anchor: Option<(&str, &str)>, reason: String| ConfigError {
        file: file.to_string(),
        line: crate::rules::locate(text, anchor, field.rsplit('.').next().unwrap_or(field)),
        field: field.to_string(),
        reason,
    };
    if let Some(g) = &doc.global {
        if let Some(r) = &g.resolve_timeout {
            duration::parse_ms(r).map_err(|e| err("global.resolve_timeout", None, e))?;
        }
    }
    let mut receivers = BTreeMap::new();
    for r in doc.receivers {
        let mut webhooks = Vec::new();
        let name = r.name.clone();
        let at = |kind: &str, field: &str, reason: String| {
            err(
                &format!("receivers[{name}].{kind}.{field}"),
                Some(("name", &name)),
                reason,
            )
        };
        for w in r.webhook_configs {
            check_url(&w.url).map_err(|e| at("webhook_configs", "url", e))?;
            webhooks.push(Webhook {
                integration: Integration::Webhook { url: w.url },
                send_resolved: w.send_resolved.unwrap_or(true),
                max_alerts: w.max_alerts.unwrap_or(0),
            });
        }
        for a in r.alertmanager_configs {
            check_url(&a.url).map_err(|e| at("alertmanager_configs", "url", e))?;
            webhooks.push(Webhook {
                integration: Integration::Alertmanager {
                    url: a.url.trim_end_matches('/').to_string(),
                },
                send_resolved: a.send_resolved.unwrap_or(true),
                max_alerts: 0,
            });
        }
        for sl in r.slack_configs {
            check_url(&sl.api_url).map_err(|e| at("slack_configs", "api_url", e))?;
            for (f, t) in [("title", &sl.title), ("text", &sl.text)] {
                if let Some(t) = t {
                    render_group(t, &serde_json::json!({}))
                        .map_err(|e| at("slack_configs", f, e))?;
                }
            }
            webhooks.push(Webhook {
                integration: Integration::Slack(Slack {
                    api_url: sl.api_url,
                    channel: sl.channel,
                    username: sl.username,
                    title: sl.title,
                    text: sl.text,
                }),
                // Alertmanager's default for Slack and email: false.
                send_resolved: sl.send_resolved.unwrap_or(false),
                max_alerts: 0,
            });
        }
        for e in r.email_configs {
            let to: Vec<String> =
                e.to.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect();
            if to.is_empty() {
                return Err(at("email_configs", "to", "no recipient".into()));
            }
            for a in to.iter().chain(std::iter::once(&e.from)) {
                a.parse::<lettre::message::Mailbox>().map_err(|x| {
                    at(
                        "email_configs",
                        if *a == e.from { "from" } else { "to" },
                        format!("{a:?}: {x}"),
                    )
                })?;
            }
            let (host, port) = e.smarthost.rsplit_once(':').ok_or_else(|| {
                at(
                    "email_configs",
                    "smarthost",
                    format!("{:?}: expected host:port", e.smarthost),
                )
            })?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(at(
                    "email_configs",
                    "smarthost",
                    format!("{:?}: expected host:port (port 1-65535)", e.smarthost),
                ));
            }
            let auth = match (e.auth_username, e.auth_password) {
                (Some(u), Some(p)) => Some((u, p)),
                (None, None) => None,
                (u, _) => {
                    return Err(at(
                        "email_configs",
                        if u.is_some() {
                            "auth_username"
                        } else {
                            "auth_password"
                        },
                        "auth_username and auth_password go together".into(),
                    ))
                }
            };
            for (k, v) in &e.headers {
                if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(at(
                        "email_configs",
                        "headers",
                        format!("{k:?} is not a header name"),
                    ));
                }
                render_group(v, &serde_json::json!({}))
                    .map_err(|x| at("email_configs", "headers", format!("{k}: {x}")))?;
            }
            webhooks.push(Webhook {
                integration: Integration::Email(Email {
                    to,
                    from: e.from,
                    smarthost: e.smarthost,
                    hello: e.hello,
                    auth,
                    require_tls: e.require_tls.unwrap_or(true),
                    headers: e.headers,
                }),
                send_resolved: e.send_resolved.unwrap_or(false),
                max_alerts: 0,
            });
        }
        if receivers
            .insert(
                r.name.clone(),
                Receiver {
                    name: r.name.clone(),
                    webhooks,
                },
            )
            .is_some()
        {
            return Err(err(
                "receivers.name",
                Some(("name", &r.name)),
                format!("duplicate receiver {:?}", r.name),
            ));
        }
    }
    fn build(
        d: RouteDoc,
        parent: Option<&Route>,
        receivers: &BTreeMap<String, Receiver>,
        path: &str,
        err: &ErrFn,
    ) -> Result<Route, ConfigError> {
        let dur = |v: &Option<String>, name: &str, inherited: i64| -> Result<i64, ConfigError> {
            match v {
                None => Ok(inherited),
                Some(s) => duration::parse_ms(s)
                    .map(|x| x as i64)
                    .map_err(|e| err(&format!("{path}.{name}"), None, e)),
            }
        };
        let receiver = match (&d.receiver, parent) {
            (Some(r), _) => r.clone(),
            (None, Some(p)) => p.receiver.clone(),
            (None, None) => {
                return Err(err(
                    "route.receiver",
                    None,
                    "the root route needs a receiver".into(),
                ))
            }
        };
        if !receivers.contains_key(&receiver) {
            return Err(err(
                &format!("{path}.receiver"),
                Some(("receiver", &receiver)),
                format!("receiver {receiver:?} is not defined under `receivers`"),
            ));
        }
        let mut matchers = Vec::new();
        for m in &d.matchers {
            matchers.push(
                LabelMatcher::parse(m).map_err(|e| err(&format!("{path}.matchers"), None, e))?,
            );
        }
        for (k, v) in &d.match_ {
            matchers.push(
                LabelMatcher::new(k, MatchKind::Eq, v)
                    .map_err(|e| err(&format!("{path}.match"), None, e))?,
            );
        }
        for (k, v) in &d.match_re {
            matchers.push(
                LabelMatcher::new(k, MatchKind::Re, v)
                    .map_err(|e| err(&format!("{path}.match_re"), None, e))?,
            );
        }
        let group_by = match &d.group_by {
            Some(g) if g.iter().any(|x| x == "...") => None,
            Some(g) => Some(g.clone()),
            None => parent.map(|p| p.group_by.clone()).unwrap_or(Some(vec![])),
        };
        let pkey = parent.map(|p| p.key.clone());
        let key = match pkey {
            None => "{}".to_string(),
            Some(k) => format!(
                "{k}/{{{}}}",
                matchers
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let mut r = Route {
            id: match parent {
                None => "0".to_string(),
                Some(p) => format!(
                    "{}/{}",
                    p.id,
                    path.rsplit('[').next().unwrap_or("").trim_end_matches(']')
                ),
            },
            key,
            receiver,
            group_by,
            group_wait_ms: dur(
                &d.group_wait,
                "group_wait",
                parent.map_or(DEFAULT_GROUP_WAIT_MS, |p| p.group_wait_ms),
            )?,
            group_interval_ms: dur(
                &d.group_interval,
                "group_interval",
                parent.map_or(DEFAULT_GROUP_INTERVAL_MS, |p| p.group_interval_ms),
            )?,
            repeat_interval_ms: dur(
                &d.repeat_interval,
                "repeat_interval",
                parent.map_or(DEFAULT_REPEAT_INTERVAL_MS, |p| p.repeat_interval_ms),
            )?,
            matchers,
            continue_: d.continue_,
            routes: vec![],
            mute_time_intervals: d.mute_time_intervals.clone(),
            active_time_intervals: d.active_time_intervals.clone(),
        };
        if r.group_interval_ms <= 0 {
            return Err(err(
                &format!("{path}.group_interval"),
                None,
                "must be positive".into(),
            ));
        }
        let mut children = Vec::new();
        for (i, c) in d.routes.into_iter().enumerate() {
            children.push(build(
                c,
                Some(&r),
                receivers,
                &format!("{path}.routes[{i}]"),
                err,
            )?);
        }
        r.routes = children;
        Ok(r)
    }
    let time_intervals = parse_time_intervals(
        file,
        text,
        [
            (
                "mute_time_intervals",
                std::mem::take(&mut doc.mute_time_intervals),
            ),
            ("time_intervals", std::mem::take(&mut doc.time_intervals)),
        ],
    )?;
    let route_at = text
        .lines()
        .position(|l| l.starts_with("route:"))
        .unwrap_or(0);
    for (field, set) in [
        ("mute_time_intervals", &doc.route.mute_time_intervals),
        ("active_time_intervals", &doc.route.active_time_intervals),
    ] {
        if !set.is_empty() {
            return Err(ConfigError {
                file: file.to_string(),
                line: line_of(text, route_at, field, None),
                field: format!("route.{field}"),
                reason: format!("the root route must not have {field}: it receives every alert, so muting it would mute everything not routed elsewhere"),
            });
        }
    }
    check_interval_refs(file, text, route_at, &doc.route, "route", &time_intervals)?;
    let route = build(doc.route, None, &receivers, "route", &err)?;
    let mut inhibit_rules = Vec::new();
    for (i, r) in doc.inhibit_rules.into_iter().enumerate() {
        let mut source = Vec::new();
        let mut target = Vec::new();
        for m in &r.source_matchers {
            source.push(
                LabelMatcher::parse(m)
                    .map_err(|e| err(&format!("inhibit_rules[{i}].source_matchers"), None, e))?,
            );
        }
        for m in &r.target_matchers {
            target.push(
                LabelMatcher::parse(m)
                    .map_err(|e| err(&format!("inhibit_rules[{i}].target_matchers"), None, e))?,
            );
        }
        for (k, v) in &r.source_match {
            source.push(LabelMatcher::new(k, MatchKind::Eq, v).expect("equality"));
        }
        for (k, v) in &r.target_match {
            target.push(LabelMatcher::new(k, MatchKind::Eq, v).expect("equality"));
        }
        inhibit_rules.push(InhibitRule {
            source,
            target,
            equal: r.equal,
        });
    }
    Ok(AmConfig {
        route,
        receivers,
        inhibit_rules,
        time_intervals,
    })
}

/// Every interval a route names must be defined (Alertmanager refuses
/// "undefined time interval").
fn check_interval_refs(
    file: &str,
    text: &str,
    route_at: usize,
    d: &RouteDoc,
    path: &str,
    defined: &BTreeMap<String, Vec<TimeInterval>>,
) -> Result<(), ConfigError> {
    for (field, names) in [
        ("mute_time_intervals", &d.mute_time_intervals),
        ("active_time_intervals", &d.active_time_intervals),
    ] {
        if let Some(n) = names.iter().find(|n| !defined.contains_key(*n)) {
            return Err(ConfigError {
                file: file.to_string(),
                line: line_of(text, route_at, field, Some(n)),
                field: format!("{path}.{field}"),
                reason: format!("time interval {n:?} is not defined under `time_intervals` or `mute_time_intervals`"),
            });
        }
    }
    for (i, c) in d.routes.iter().enumerate() {
        check_interval_refs(
            file,
            text,
            route_at,
            c,
            &format!("{path}.routes[{i}]"),
            defined,
        )?;
    }
    Ok(())
}

// ---- time intervals ----

/// The time zone a time interval's fields are read in (`location`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntervalLocation {
    /// Alertmanager's default when `location` is absent.
    #[default]
    Utc,
    /// The time zone of the member that evaluates (the leader), as
    /// Alertmanager's `Local` is that of its process.
    Local,
}

/// One entry of a named time interval (Alertmanager's `TimeInterval`).
/// Each field: None = any value; Some(list) = at least one range must hold
/// (an explicit empty list therefore matches nothing, as in Alertmanager).
/// All fields must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeInterval {
    /// Minutes of the day, start inclusive, end exclusive (1440 = `24:00`).
    pub times: Option<Vec<(u32, u32)>>,
    /// Inclusive, 0 = Sunday … 6 = Saturday.
    pub weekdays: Option<Vec<(u32, u32)>>,
    /// Inclusive; negative values count from the month's end (-1 = last day).
    pub days_of_month: Option<Vec<(i32, i32)>>,
    /// Inclusive, 1 = January.
    pub months: Option<Vec<(u32, u32)>>,
    /// Inclusive.
    pub years: Option<Vec<(i32, i32)>>,
    pub location: IntervalLocation,
}

/// The calendar fields of an instant in some time zone.
struct Civil {
    year: i32,
    month: u32,
    day: u32,
    weekday: u32,
    minute_of_day: u32,
}

fn civil<T: chrono::Datelike + chrono::Timelike>(t: &T) -> Civil {
    Civil {
        year: t.year(),
        month: t.month(),
        day: t.day(),
        weekday: t.weekday().num_days_from_sunday(),
        minute_of_day: t.hour() * 60 + t.minute(),
    }
}

fn days_in_month(year: i32, month: u32) -> i32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

impl TimeInterval {
    /// Whether the instant `now_ms` (Unix ms) lies in this interval.
    pub fn contains(&self, now_ms: i64) -> bool {
        let Some(utc) = chrono::DateTime::from_timestamp_millis(now_ms) else {
            return false;
        };
        let c = match self.location {
            IntervalLocation::Utc => civil(&utc),
            IntervalLocation::Local => civil(&utc.with_timezone(&chrono::Local)),
        };
        fn any<T: Copy>(ranges: &Option<Vec<T>>, f: impl Fn(T) -> bool) -> bool {
            ranges.as_ref().is_none_or(|rs| rs.iter().any(|r| f(*r)))
        }
        let dim = days_in_month(c.year, c.month);
        let day_ok = |(b, e): (i32, i32)| {
            let begin = if b < 0 { dim + b + 1 } else { b };
            let end = if e < 0 { dim + e + 1 } else { e };
            // A range starting after this month's last day (e.g. `31` in
            // April) does not spill into the month's other days.
            if begin > dim {
                return false;
            }
            let (begin, end) = (begin.clamp(-dim, dim), end.clamp(-dim, dim));
            (begin..=end).contains(&(c.day as i32))
        };
        any(&self.times, |(s, e)| {
            s <= c.minute_of_day && c.minute_of_day < e
        }) && any(&self.days_of_month, day_ok)
            && any(&self.months, |(b, e)| (b..=e).contains(&c.month))
            && any(&self.weekdays, |(b, e)| (b..=e).contains(&c.weekday))
            && any(&self.years, |(b, e)| (b..=e).contains(&c.year))
    }
}

/// Whether any entry of a named interval contains `now_ms`.
pub fn in_time_interval(entries: &[TimeInterval], now_ms: i64) -> bool {
    entries.iter().any(|t| t.contains(now_ms))
}

/// A list element written as a string or a bare number (`days_of_month: [1, -1]`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedIntervalDoc {
    name: String,
    #[serde(default)]
    time_intervals: Vec<IntervalDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntervalDoc {
    #[serde(default)]
    times: Option<Vec<TimeRangeDoc>>,
    #[serde(default)]
    weekdays: Option<Vec<Scalar>>,
    #[serde(default)]
    days_of_month: Option<Vec<Scalar>>,
    #[serde(default)]
    months: Option<Vec<Scalar>>,
    #[serde(default)]
    years: Option<Vec<Scalar>>,
    #[serde(default)]
    location: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeRangeDoc {
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    end_time: Option<String>,
}

const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];
const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// `HH:MM` (00:00–23:59) or `24:00`, as minutes of the day.
fn parse_clock(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?}: expected HH:MM between 00:00 and 24:00");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if (h < 24 && m < 60) || (h == 24 && m == 0) {
        Ok(h * 60 + m)
    } else {
        Err(bad())
    }
}

/// `a` or `a:b` (case-insensitive), each member mapped by `member`.
fn parse_range<T: Copy>(
    s: &str,
    member: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, T), String> {
    let s = s.trim().to_ascii_lowercase();
    match s.split_once(':') {
        None => member(&s).map(|v| (v, v)),
        Some((a, b)) if !b.contains(':') => Ok((member(a)?, member(b)?)),
        Some(_) => Err(format!("{s:?}: expected one value or a range a:b")),
    }
}

fn parse_int(s: &str) -> Result<i32, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a whole number"))
}

fn parse_weekdays(s: &str) -> Result<(u32, u32), String> {
    let (b, e) = parse_range(s, |m| {
        WEEKDAYS
            .iter()
            .position(|d| *d == m)
            .map(|i| i as u32)
            .ok_or_else(|| format!("{m:?} is not a weekday (sunday … saturday)"))
    })?;
    if b > e {
        return Err(format!(
            "{s:?}: the range starts after it ends (weeks run sunday to saturday; write two entries to wrap)"
        ));
    }
    Ok((b, e))
}

fn parse_days_of_month(s: &str) -> Result<(i32, i32), String> {
    let (b, e) = parse_range(s, parse_int)?;
    for d in [b, e] {
        if d == 0 || !(-31..=31).contains(&d) {
            return Err(format!(
                "{s:?}: {d} is not a day of the month (1 to 31, or -1 to -31 from the end)"
            ));
        }
    }
    if b < 0 && e > 0 {
        return Err(format!("{s:?}: the end must be negative when the start is"));
    }
    // Negative days are placed in the shortest month (28 days) to catch
    // ranges that end before they start in every month.
    let abs = |d: i32| if d < 0 { 28 + d } else { d };
    if abs(b) > abs(e) {
        return Err(format!("{s:?}: the range starts after it ends"));
    }
    Ok((b, e))
}

fn parse_months(s: &str) -> Result<(u32, u32), String> {
    let (b, e) = parse_range(s, |m| {
        MONTHS
            .iter()
            .position(|x| *x == m)
            .map(|i| i as u32 + 1)
            .or_else(|| m.parse::<u32>().ok().filter(|n| (1..=12).contains(n)))
            .ok_or_else(|| format!("{m:?} is not a month (january … december or 1 … 12)"))
    })?;
    if b > e {
        return Err(format!("{s:?}: the range starts after it ends"));
    }
    Ok((b, e))
}

fn parse_years(s: &str) -> Result<(i32, i32), String> {
    let (b, e) = parse_range(s, parse_int)?;
    if b > e {
        return Err(format!("{s:?}: the range starts after it ends"));
    }
    Ok((b, e))
}

/// The 1-based line of `value` under key `field` at or after line index
/// `from`: the key's own line when written inline (`field: [a, b]`), else
/// the block-list line (`- a`) below it; the first key line if no line
/// holds the value. Finer than `rules::locate`, which stops at the key.
fn line_of(text: &str, from: usize, field: &str, value: Option<&str>) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let key_line = |l: &str| {
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        t.strip_prefix(field)
            .is_some_and(|r| r.trim_start().starts_with(':'))
    };
    let mut first = None;
    for i in (from..lines.len()).filter(|&i| key_line(lines[i])) {
        first.get_or_insert(i + 1);
        let Some(v) = value else { return Some(i + 1) };
        if lines[i].contains(v) {
            return Some(i + 1);
        }
        let indent = lines[i].len() - lines[i].trim_start().len();
        for (j, l) in lines.iter().enumerate().skip(i + 1) {
            let t = l.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            // A block list may sit at the key's indent (`key:\n- a`).
            if l.len() - t.len() < indent || !t.starts_with('-') {
                break;
            }
            if l.contains(v) {
                return Some(j + 1);
            }
        }
    }
    first
}

/// Parse the top-level `time_intervals` and `mute_time_intervals` lists.
fn parse_time_intervals(
    file: &str,
    text: &str,
    lists: [(&str, Vec<NamedIntervalDoc>); 2],
) -> Result<BTreeMap<String, Vec<TimeInterval>>, ConfigError> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for (top, list) in lists {
        // Names are looked for below the list's own top-level key, so that
        // a receiver of the same name is not taken for the interval.
        let top_at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{top}:")))
            .unwrap_or(0);
        for named in list {
            let name = named.name.clone();
            let name_at = (top_at..lines.len())
                .find(|&i| {
                    let t = lines[i].trim_start().trim_start_matches("- ").trim_start();
                    t.strip_prefix("name:")
                        .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == name)
                })
                .unwrap_or(top_at);
            let err = |field: &str, value: Option<&str>, reason: String| ConfigError {
                file: file.to_string(),
                line: line_of(
                    text,
                    name_at,
                    field.rsplit('.').next().unwrap_or(field),
                    value,
                ),
                field: format!("{top}[{name}].{field}"),
                reason,
            };
            if name.trim().is_empty() {
                return Err(ConfigError {
                    file: file.to_string(),
                    line: Some(name_at + 1),
                    field: format!("{top}.name"),
                    reason: "a time interval needs a name".into(),
                });
            }
            let mut entries = Vec::new();
            for (i, d) in named.time_intervals.into_iter().enumerate() {
                let at = |f: &str| format!("time_intervals[{i}].{f}");
                let mut ti = TimeInterval::default();
                if let Some(times) = d.times {
                    let mut v = Vec::new();
                    for (j, t) in times.into_iter().enumerate() {
                        let f = |k: &str| at(&format!("times[{j}].{k}"));
                        let (Some(s), Some(e)) = (&t.start_time, &t.end_time) else {
                            let (missing, given) = if t.start_time.is_none() {
                                ("start_time", "end_time")
                            } else {
                                ("end_time", "start_time")
                            };
                            // The line of the half that is there (or of `times`).
                            let mut e = err(
                                &f(missing),
                                None,
                                "both start_time and end_time must be given".into(),
                            );
                            e.line = line_of(text, name_at, given, None)
                                .or_else(|| line_of(text, name_at, "times", None));
                            return Err(e);
                        };
                        let s_min =
                            parse_clock(s).map_err(|x| err(&f("start_time"), Some(s), x))?;
                        let e_min = parse_clock(e).map_err(|x| err(&f("end_time"), Some(e), x))?;
                        if s_min >= e_min {
                            return Err(err(
                                &f("end_time"),
                                Some(e),
                                format!("end {e} must be after start {s} (the end is exclusive; a range over midnight is two ranges)"),
                            ));
                        }
                        v.push((s_min, e_min));
                    }
                    ti.times = Some(v);
                }
                macro_rules! ranges {
                    ($field:ident, $parse:expr) => {
                        if let Some(list) = &d.$field {
                            let mut v = Vec::new();
                            for x in list {
                                let s = x.text();
                                v.push(
                                    $parse(&s)
                                        .map_err(|e| err(&at(stringify!($field)), Some(&s), e))?,
                                );
                            }
                            ti.$field = Some(v);
                        }
                    };
                }
                ranges!(weekdays, parse_weekdays);
                ranges!(days_of_month, parse_days_of_month);
                ranges!(months, parse_months);
                ranges!(years, parse_years);
                ti.location = match d.location.as_deref().map(str::trim) {
                    // Go's LoadLocation gives UTC for "" and "UTC"; the IANA
                    // names below are fixed at offset 0, so need no database.
                    None
                    | Some(
                        "" | "UTC" | "Etc/UTC" | "UCT" | "Etc/UCT" | "GMT" | "Etc/GMT" | "Zulu"
                        | "Etc/Zulu" | "Universal" | "Etc/Universal",
                    ) => IntervalLocation::Utc,
                    Some("Local") => IntervalLocation::Local,
                    Some(other) => {
                        return Err(err(
                            &at("location"),
                            Some(other),
                            format!("time zone {other:?} is not supported: time intervals are read in UTC (also written Etc/UTC, GMT, Zulu …) or Local (the evaluating member's time zone); other IANA names would need a time zone database Phalanx does not ship"),
                        ))
                    }
                };
                entries.push(ti);
            }
            if out.insert(name.clone(), entries).is_some() {
                return Err(err("name", Some(&name), format!("time interval {name:?} is defined twice (names are shared by time_intervals and mute_time_intervals)")));
            }
        }
    }
    Ok(out)
}

// ---- silences ----

/// A silence, as kept in the replicated store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// Matchers as text (`name="value"` …).
    pub matchers: Vec<String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub created_by: String,
    pub comment: String,
}

impl Silence {
    pub fn validate(&self) -> Result<Vec<LabelMatcher>, String> {
        if self.matchers.is_empty() {
            return Err("a silence needs at least one matcher".into());
        }
        if self.created_by.trim().is_empty() {
            return Err("a silence needs a creator (created_by)".into());
        }
        if self.comment.trim().is_empty() {
            return Err("a silence needs a comment".into());
        }
        if self.ends_at_ms <= self.starts_at_ms {
            return Err("a silence must end after it starts".into());
        }
        self.matchers
            .iter()
            .map(|m| LabelMatcher::parse(m))
            .collect()
    }

    pub fn active(&self, now_ms: i64) -> bool {
        self.starts_at_ms <= now_ms && now_ms < self.ends_at_ms
    }

    pub fn state(&self, now_ms: i64) -> &'static str {
        if now_ms < self.starts_at_ms {
            "pending"
        } else if now_ms < self.ends_at_ms {
            "active"
        } else {
            "expired"
        }
    }

    pub fn silences(&self, labels: &Labels, now_ms: i64) -> bool {
        self.active(now_ms)
            && self
                .matchers
                .iter()
                .all(|m| LabelMatcher::parse(m).is_ok_and(|m| m.matches(labels)))
    }
}

/// Whether `target` is inhibited by a firing alert under `rules`.
pub fn inhibited(rules: &[InhibitRule], target: &Labels, firing: &[&Labels]) -> bool {
    rules.iter().any(|r| {
        r.target.iter().all(|m| m.matches(target))
            && firing.iter().any(|src| {
                *src != target
                    && r.source.iter().all(|m| m.matches(src))
                    && r.equal.iter().all(|l| src.get(l) == target.get(l))
            })
    })
}

// ---- dispatcher + notification log ----

/// What the notification log remembers of a group's last notification to one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NflogEntry {
    pub group_key: String,
    pub receiver: String,
    pub timestamp_ms: i64,
    pub firing: BTreeSet<String>,
    pub resolved: BTreeSet<String>,
}

/// Alertmanager's `DedupStage.needsUpdate`.
pub fn needs_update(
    entry: Option<&NflogEntry>,
    firing: &BTreeSet<String>,
    resolved: &BTreeSet<String>,
    send_resolved: bool,
    repeat_ms: i64,
    now_ms: i64,
) -> bool {
    let Some(e) = entry else {
        return !firing.is_empty();
    };
    if !firing.is_subset(&e.firing) {
        return true;
    }
    if firing.is_empty() {
        return !e.firing.is_empty();
    }
    if send_resolved && !resolved.is_subset(&e.resolved) {
        return true;
    }
    e.timestamp_ms + repeat_ms < now_ms
}

/// One notification to deliver to one webhook.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Key of this (group, receiver, endpoint) in the notification log.
    pub nflog_key: String,
    pub entry: NflogEntry,
    pub integration: Integration,
    /// None: nothing to send (e.g. only resolved alerts and `send_resolved: false`): only log it.
    pub payload: Option<serde_json::Value>,
    /// Alert count, for logs.
    pub alerts: usize,
}

#[derive(Debug)]
struct AggGroup {
    next_flush_ms: i64,
    flushed: bool,
}

/// Groups alerts and decides what to send, as Alertmanager's dispatcher,
/// against a notification log that survives leader changes.
#[derive(Debug, Default)]
pub struct Dispatcher {
    /// By (route id, group key): sibling routes with the same matchers keep separate groups.
    groups: BTreeMap<(String, String), AggGroup>,
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// An alert as Alertmanager's webhook sends it.
pub fn alert_json(a: &Alert, status: &str, generator_url: &str) -> serde_json::Value {
    serde_json::json!({
        "status": status,
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": rfc3339(a.active_at_ms),
        "endsAt": match a.resolved_at_ms { Some(r) if status == "resolved" => rfc3339(r), _ => "0001-01-01T00:00:00Z".to_string() },
        "generatorURL": generator_url,
        "fingerprint": fingerprint(&a.labels),
    })
}

/// Key of an nflog entry: stable, store-key safe.
pub fn nflog_key(group_key: &str, receiver: &str, idx: usize) -> String {
    let mut l = Labels::new();
    l.insert("g".into(), group_key.into());
    l.insert("r".into(), receiver.into());
    l.insert("i".into(), idx.to_string());
    fingerprint(&l)
}

impl Dispatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of aggregation groups.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Decide what to send at `now_ms`. `busy` are nflog keys with a send
    /// still in flight (their group waits for the next interval).
    #[allow(clippy::too_many_arguments)] // each input is a separate piece of leader state
    pub fn tick(
        &mut self,
        cfg: &AmConfig,
        alerts: &[Alert],
        silences: &[Silence],
        nflog: &BTreeMap<String, NflogEntry>,
        busy: &BTreeSet<String>,
        now_ms: i64,
        external_url: &str,
    ) -> Vec<Notification> {
        let firing_labels: Vec<&Labels> = alerts
            .iter()
            .filter(|a| a.state == AlertStatus::Firing)
            .map(|a| &a.labels)
            .collect();
        // group key -> (route, group labels, alerts)
        let mut grouped: BTreeMap<(String, String), (&Route, Labels, Vec<&Alert>)> =
            BTreeMap::new();
        for a in alerts.iter().filter(|a| a.state != AlertStatus::Pending) {
            for r in cfg.route.find(&a.labels) {
                let gl: Labels = match &r.group_by {
                    None => a.labels.clone(),
                    Some(g) => a
                        .labels
                        .iter()
                        .filter(|(k, _)| g.contains(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                };
                let gk = format!(
                    "{}:{{{}}}",
                    r.key,
                    gl.iter()
                        .map(|(k, v)| format!("{k}={v:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                grouped
                    .entry((r.id.clone(), gk))
                    .or_insert_with(|| (r, gl.clone(), vec![]))
                    .2
                    .push(a);
            }
        }
        self.groups.retain(|k, _| grouped.contains_key(k));
        let mut out = Vec::new();
        for ((rid, gk), (route, group_labels, members)) in grouped {
            let g = self.groups.entry((rid, gk.clone())).or_insert_with(|| {
                // Alertmanager flushes at once a group whose alerts are older than group_wait.
                let oldest = members
                    .iter()
                    .map(|a| a.active_at_ms)
                    .min()
                    .unwrap_or(now_ms);
                let wait_end = if oldest + route.group_wait_ms <= now_ms {
                    now_ms
                } else {
                    now_ms + route.group_wait_ms
                };
                AggGroup {
                    next_flush_ms: wait_end,
                    flushed: false,
                }
            });
            if now_ms < g.next_flush_ms {
                continue;
            }
            let Some(receiver) = cfg.receivers.get(&route.receiver) else {
                continue;
            };
            // An Alertmanager receiver is pushed again before its alerts' endsAt passes.
            let pushes = receiver
                .webhooks
                .iter()
                .any(|w| matches!(w.integration, Integration::Alertmanager { .. }));
            let interval = if pushes {
                route.group_interval_ms.min(ALERTMANAGER_RESEND_MS)
            } else {
                route.group_interval_ms
            };
            if cfg.route_muted(route, now_ms) {
                // As Alertmanager's time stages: this flush sends nothing and
                // leaves the notification log as it is, so the first flush
                // after the interval sends what is due then.
                g.next_flush_ms = now_ms + interval;
                g.flushed = true;
                continue;
            }
            let muted = |a: &Alert| {
                silences.iter().any(|s| s.silences(&a.labels, now_ms))
                    || inhibited(&cfg.inhibit_rules, &a.labels, &firing_labels)
            };
            let firing: Vec<&Alert> = members
                .iter()
                .copied()
                .filter(|a| a.state == AlertStatus::Firing && !muted(a))
                .collect();
            let resolved: Vec<&Alert> = members
                .iter()
                .copied()
                .filter(|a| a.state == AlertStatus::Inactive)
                .collect();
            let firing_fp: BTreeSet<String> =
                firing.iter().map(|a| fingerprint(&a.labels)).collect();
            let resolved_fp: BTreeSet<String> =
                resolved.iter().map(|a| fingerprint(&a.labels)).collect();
            let mut any_busy = false;
            for (i, w) in receiver.webhooks.iter().enumerate() {
                let key = nflog_key(&gk, &receiver.name, i);
                if busy.contains(&key) {
                    any_busy = true;
                    continue;
                }
                let repeat_ms = match w.integration {
                    Integration::Alertmanager { .. } => {
                        route.repeat_interval_ms.min(ALERTMANAGER_RESEND_MS)
                    }
                    _ => route.repeat_interval_ms,
                };
                if !needs_update(
                    nflog.get(&key),
                    &firing_fp,
                    &resolved_fp,
                    w.send_resolved,
                    repeat_ms,
                    now_ms,
                ) {
                    continue;
                }
                let mut list: Vec<serde_json::Value> = firing
                    .iter()
                    .map(|a| alert_json(a, "firing", external_url))
                    .collect();
                if w.send_resolved {
                    list.extend(
                        resolved
                            .iter()
                            .map(|a| alert_json(a, "resolved", external_url)),
                    );
                }
                let total = list.len();
                let truncated = if w.max_alerts > 0 && total > w.max_alerts {
                    total - w.max_alerts
                } else {
                    0
                };
                list.truncate(total - truncated);
                let common =
                    |f: &dyn Fn(&Alert) -> &BTreeMap<String, String>| -> BTreeMap<String, String> {
                        let sent: Vec<&Alert> = firing
                            .iter()
                            .copied()
                            .chain(resolved.iter().copied().filter(|_| w.send_resolved))
                            .collect();
                        let mut c = sent.first().map(|a| f(a).clone()).unwrap_or_default();
                        c.retain(|k, v| sent.iter().all(|a| f(a).get(k) == Some(v)));
                        c
                    };
                let payload = (!list.is_empty()).then(|| {
                    serde_json::json!({
                        "version": "4",
                        "groupKey": gk,
                        "truncatedAlerts": truncated,
                        "status": if firing.is_empty() { "resolved" } else { "firing" },
                        "receiver": receiver.name,
                        "groupLabels": group_labels,
                        "commonLabels": common(&|a| &a.labels),
                        "commonAnnotations": common(&|a| &a.annotations),
                        "externalURL": external_url,
                        "alerts": list,
                    })
                });
                out.push(Notification {
                    nflog_key: key,
                    entry: NflogEntry {
                        group_key: gk.clone(),
                        receiver: receiver.name.clone(),
                        timestamp_ms: now_ms,
                        firing: firing_fp.clone(),
                        resolved: resolved_fp.clone(),
                    },
                    integration: w.integration.clone(),
                    payload,
                    alerts: total - truncated,
                });
            }
            // A group with a send in flight is looked at again next tick.
            if !any_busy {
                g.next_flush_ms = now_ms + interval;
                g.flushed = true;
            }
        }
        out
    }
}

// ---- bodies of the other integrations, from the webhook payload ----

/// Render a group template (Alertmanager's notification data, a subset):
/// `{{ .Status }}`, `{{ .Receiver }}`, `{{ .ExternalURL }}`,
/// `{{ .GroupLabels.NAME }}`, `{{ .CommonLabels.NAME }}`,
/// `{{ .CommonAnnotations.NAME }}`, `{{ .Alerts | len }}`, and the pipe
/// `| toUpper`. Anything else is refused naming it.
pub fn render_group(t: &str, payload: &serde_json::Value) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = t;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in template {t:?}"))?;
        let inner = after[..close].trim();
        let mut parts = inner.split('|').map(str::trim);
        let head = parts.next().unwrap_or("");
        let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        let mut v = match head {
            ".Status" => str_of(&payload["status"]),
            ".Receiver" => str_of(&payload["receiver"]),
            ".ExternalURL" => str_of(&payload["externalURL"]),
            ".Alerts" => String::new(),
            h => {
                let (map, name) = [
                    (".GroupLabels.", "groupLabels"),
                    (".CommonLabels.", "commonLabels"),
                    (".CommonAnnotations.", "commonAnnotations"),
                ]
                .iter()
                .find_map(|(p, k)| h.strip_prefix(p).map(|n| (*k, n)))
                .ok_or_else(|| format!("template {t:?}: unsupported `{{{{ {inner} }}}}` (supported: .Status, .Receiver, .ExternalURL, .GroupLabels.NAME, .CommonLabels.NAME, .CommonAnnotations.NAME, .Alerts | len, | toUpper)"))?;
                str_of(&payload[map][name])
            }
        };
        let mut seen_len = false;
        for p in parts {
            v = match (p, head) {
                ("toUpper", _) => v.to_uppercase(),
                ("len", ".Alerts") => {
                    seen_len = true;
                    payload["alerts"]
                        .as_array()
                        .map_or(0, |a| a.len())
                        .to_string()
                }
                (other, _) => {
                    return Err(format!(
                        "template {t:?}: unsupported function `{other}` in `{{{{ {inner} }}}}`"
                    ))
                }
            };
        }
        if head == ".Alerts" && !seen_len {
            return Err(format!(
                "template {t:?}: `.Alerts` is only supported as `.Alerts | len`"
            ));
        }
        out.push_str(&v);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn label_values(m: &serde_json::Value) -> Vec<String> {
    m.as_object()
        .map(|o| {
            o.values()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Alertmanager's default subject/title: `[FIRING:2] <group label values> (<other common label values>)`.
pub fn default_title(payload: &serde_json::Value) -> String {
    let status = payload["status"].as_str().unwrap_or("").to_uppercase();
    let firing = payload["alerts"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|x| x["status"] == "firing").count());
    let mut t = if status == "FIRING" {
        format!("[{status}:{firing}] ")
    } else {
        format!("[{status}] ")
    };
    t.push_str(&label_values(&payload["groupLabels"]).join(" "));
    let extra: Vec<String> = payload["commonLabels"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| payload["groupLabels"].get(k.as_str()).is_none())
                .map(|(_, v)| v.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    if !extra.is_empty() {
        t.push_str(&format!(" ({})", extra.join(" ")));
    }
    t
}

/// One line per alert: status, summary (or description), labels.
pub fn default_text(payload: &serde_json::Value) -> String {
    let mut out = String::new();
    for a in payload["alerts"].as_array().into_iter().flatten() {
        let labels: Vec<String> = a["labels"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        let what = a["annotations"]["summary"]
            .as_str()
            .or(a["annotations"]["description"].as_str())
            .unwrap_or("");
        out.push_str(&format!(
            "[{}] {what} {{{}}} since {}\n",
            a["status"].as_str().unwrap_or(""),
            labels.join(", "),
            a["startsAt"].as_str().unwrap_or("")
        ));
    }
    out
}

/// The body of Alertmanager's `POST /api/v2/alerts` (postableAlerts) for a
/// webhook payload: firing alerts end at `now + validity` unless pushed again;
/// resolved ones at their resolve time.
pub fn alertmanager_body(payload: &serde_json::Value, now_ms: i64) -> serde_json::Value {
    let ends_firing = rfc3339(now_ms + ALERTMANAGER_VALIDITY_FACTOR * ALERTMANAGER_RESEND_MS);
    serde_json::Value::Array(
        payload["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                serde_json::json!({
                    "labels": a["labels"],
                    "annotations": a["annotations"],
                    "startsAt": a["startsAt"],
                    "endsAt": if a["status"] == "firing" { serde_json::json!(ends_firing) } else { a["endsAt"].clone() },
                    "generatorURL": a["generatorURL"],
                })
            })
            .collect(),
    )
}

/// A Slack incoming-webhook message (Alertmanager's shape: one attachment).
pub fn slack_body(s: &Slack, payload: &serde_json::Value) -> serde_json::Value {
    let title = match &s.title {
        Some(t) => render_group(t, payload).unwrap_or_else(|e| e),
        None => default_title(payload),
    };
    let text = match &s.text {
        Some(t) => render_group(t, payload).unwrap_or_else(|e| e),
        None => default_text(payload),
    };
    let mut v = serde_json::json!({
        "attachments": [{
            "title": title,
            "text": text,
            "fallback": format!("{title} | {}", payload["externalURL"].as_str().unwrap_or("")),
            "color": if payload["status"] == "firing" { "danger" } else { "good" },
            "mrkdwn_in": ["fallback", "pretext", "text"],
        }]
    });
    if let Some(c) = &s.channel {
        v["channel"] = c.clone().into();
    }
    if let Some(u) = &s.username {
        v["username"] = u.clone().into();
    }
    v
}

/// Subject, extra headers and plain-text body of an email.
pub fn email_parts(
    e: &Email,
    payload: &serde_json::Value,
) -> (String, Vec<(String, String)>, String) {
    let mut subject = default_title(payload);
    let mut headers = Vec::new();
    for (k, v) in &e.headers {
        let v = render_group(v, payload).unwrap_or_else(|x| x);
        if k.eq_ignore_ascii_case("subject") {
            subject = v;
        } else {
            headers.push((k.clone(), v));
        }
    }
    let mut body = format!(
        "{subject}\n\nReceiver: {}\nStatus: {}\n\n",
        payload["receiver"].as_str().unwrap_or(""),
        payload["status"].as_str().unwrap_or("")
    );
    body.push_str(&default_text(payload));
    for a in payload["alerts"].as_array().into_iter().flatten() {
        if let Some(d) = a["annotations"]["description"].as_str() {
            body.push_str(&format!("\n{d}\n"));
        }
    }
    (subject, headers, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, member: &str, state: AlertStatus, at: i64) -> Alert {
        let mut labels = Labels::new();
        labels.insert("alertname".into(), name.into());
        labels.insert("member".into(), member.into());
        labels.insert("severity".into(), "critical".into());
        Alert {
            labels,
            annotations: BTreeMap::new(),
            state,
            active_at_ms: at,
            fired_at_ms: Some(at),
            resolved_at_ms: (state == AlertStatus::Inactive).then_some(at + 1),
            last_seen_ms: at,
            keep_firing_since_ms: None,
            value: 0.0,
        }
    }

    const CFG: &str = "route:\n  receiver: hook\n  group_by: [alertname, member]\n  group_wait: 1s\n  group_interval: 2s\n  repeat_interval: 1h\n  routes:\n  - matchers: ['severity=\"info\"']\n    receiver: other\nreceivers:\n- name: hook\n  webhook_configs:\n  - url: http://127.0.0.1:1/x\n- name: other\ninhibit_rules:\n- source_matchers: [alertname=\"NoQuorum\"]\n  target_matchers: [alertname=\"Down\"]\n";

    #[test]
    fn groups_wait_dedup_repeat_and_resolve() {
        let cfg = parse_am_config("am.yml", CFG).unwrap();
        let mut d = Dispatcher::new();
        let mut log = BTreeMap::new();
        let none = BTreeSet::new();
        let firing = vec![alert("Down", "n2", AlertStatus::Firing, 10_000)];
        assert!(
            d.tick(&cfg, &firing, &[], &log, &none, 10_000, "")
                .is_empty(),
            "group_wait"
        );
        let n = d.tick(&cfg, &firing, &[], &log, &none, 11_000, "");
        assert_eq!(n.len(), 1);
        let p = n[0].payload.as_ref().unwrap();
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        assert_eq!(p["groupLabels"]["member"], "n2");
        log.insert(n[0].nflog_key.clone(), n[0].entry.clone());
        // nothing new within repeat_interval, even for a new dispatcher (a new leader)
        assert!(d
            .tick(&cfg, &firing, &[], &log, &none, 14_000, "")
            .is_empty());
        let mut d2 = Dispatcher::new();
        assert!(d2
            .tick(&cfg, &firing, &[], &log, &none, 20_000, "")
            .is_empty());
        // repeat
        assert_eq!(
            d2.tick(&cfg, &firing, &[], &log, &none, 11_000 + 3_600_001, "")
                .len(),
            1
        );
        // resolved: sent once
        let resolved = vec![alert("Down", "n2", AlertStatus::Inactive, 10_000)];
        let n = d.tick(&cfg, &resolved, &[], &log, &none, 30_000, "");
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].payload.as_ref().unwrap()["status"], "resolved");
        log.insert(n[0].nflog_key.clone(), n[0].entry.clone());
        assert!(d
            .tick(&cfg, &resolved, &[], &log, &none, 40_000, "")
            .is_empty());
    }

    #[test]
    fn silences_and_inhibition_mute() {
        let cfg = parse_am_config("am.yml", CFG).unwrap();
        let log = BTreeMap::new();
        let none = BTreeSet::new();
        let firing = vec![alert("Down", "n2", AlertStatus::Firing, 0)];
        let s = Silence {
            id: "1".into(),
            matchers: vec!["member=\"n2\"".into()],
            starts_at_ms: 0,
            ends_at_ms: 100_000,
            created_by: "me".into(),
            comment: "maintenance".into(),
        };
        assert!(Dispatcher::new()
            .tick(
                &cfg,
                &firing,
                std::slice::from_ref(&s),
                &log,
                &none,
                50_000,
                ""
            )
            .is_empty());
        assert_eq!(
            Dispatcher::new()
                .tick(&cfg, &firing, &[s], &log, &none, 100_000, "")
                .len(),
            1
        );
        let mut both = firing.clone();
        both.push(alert("NoQuorum", "n1", AlertStatus::Firing, 0));
        let n = Dispatcher::new().tick(&cfg, &both, &[], &log, &none, 50_000, "");
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[0].payload.as_ref().unwrap()["groupLabels"]["alertname"],
            "NoQuorum"
        );
    }

    #[test]
    fn bad_config_names_field_and_line() {
        let e = parse_am_config(
            "am.yml",
            "route:\n  receiver: nope\nreceivers:\n- name: hook\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope") && e.line == Some(2), "{e}");
        let e = parse_am_config(
            "am.yml",
            "route:\n  receiver: hook\n  group_wait: soon\nreceivers:\n- name: hook\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("group_wait") && e.line == Some(3),
            "{e}"
        );
        let e = parse_am_config(
            "am.yml",
            "route:\n  receiver: hook\nreceivers:\n- name: hook\n  pagerduty_configs:\n  - routing_key: x\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("pagerduty_configs") && e.line == Some(5),
            "{e}"
        );
    }

    #[test]
    fn other_receivers_parse_render_and_refuse_bad_fields() {
        let cfg = parse_am_config("am.yml", "route:\n  receiver: r\nreceivers:\n- name: r\n  email_configs:\n  - to: 'a@example.com, b@example.com'\n    from: p@example.com\n    smarthost: mail:587\n    headers:\n      Subject: '{{ .Status | toUpper }} {{ .CommonLabels.alertname }}'\n  slack_configs:\n  - api_url: https://hooks.example.com/x\n  alertmanager_configs:\n  - url: http://am:9093/\n").unwrap();
        let w = &cfg.receivers["r"].webhooks;
        assert_eq!(w.len(), 3);
        let kinds: Vec<&str> = w.iter().map(|x| x.integration.kind()).collect();
        assert_eq!(kinds, ["alertmanager", "slack", "email"]);
        assert!(!w[1].send_resolved && !w[2].send_resolved && w[0].send_resolved);
        let Integration::Email(e) = &w[2].integration else {
            panic!()
        };
        assert!(e.require_tls);
        assert_eq!(e.to.len(), 2);
        let a = alert("Down", "n2", AlertStatus::Firing, 0);
        let payload = serde_json::json!({"status": "firing", "receiver": "r", "groupLabels": {"alertname": "Down"},
            "commonLabels": a.labels, "commonAnnotations": {}, "alerts": [alert_json(&a, "firing", "")]});
        let (subject, _, body) = email_parts(e, &payload);
        assert_eq!(subject, "FIRING Down");
        assert!(body.contains("member=n2"), "{body}");
        assert_eq!(default_title(&payload), "[FIRING:1] Down (n2 critical)");
        let Integration::Slack(sl) = &w[1].integration else {
            panic!()
        };
        assert_eq!(
            slack_body(sl, &payload)["attachments"][0]["color"],
            "danger"
        );
        let am = alertmanager_body(&payload, 1_000);
        assert_eq!(am[0]["labels"]["member"], "n2");
        assert_eq!(
            am[0]["endsAt"],
            rfc3339(1_000 + ALERTMANAGER_VALIDITY_FACTOR * ALERTMANAGER_RESEND_MS)
        );

        for (doc, field, line, what) in [
            ("  email_configs:\n  - to: a@example.com\n    from: p@example.com\n    smarthost: mail\n", "smarthost", 8, "host:port"),
            ("  email_configs:\n  - to: not an address\n    from: p@example.com\n    smarthost: mail:25\n", "to", 6, "not an address"),
            ("  email_configs:\n  - to: a@example.com\n    from: p@example.com\n    smarthost: mail:25\n    auth_username: u\n", "auth_username", 9, "go together"),
            ("  slack_configs:\n  - api_url: ftp://x/y\n", "api_url", 6, "http:// or https://"),
            ("  slack_configs:\n  - api_url: http://x/y\n    title: '{{ .Alerts.Firing }}'\n", "title", 7, ".Alerts"),
            ("  alertmanager_configs:\n  - url: http:///x\n", "url", 6, "no host"),
            ("  slack_configs:\n  - api_url: http://x/y\n    icon_emoji: ':fire:'\n", "icon_emoji", 7, "unknown field"),
        ] {
            let text = format!("route:\n  receiver: r\nreceivers:\n- name: r\n{doc}");
            let e = parse_am_config("am.yml", &text).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(field) && msg.contains(what), "{doc}: {msg}");
            assert!(e.line.is_some_and(|l| l >= 5 && l <= line + 1), "{doc}: line {:?}: {msg}", e.line);
        }
    }

    // ---- time intervals ----

    /// Unix ms of a UTC wall-clock time.
    fn ts(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|x| x.and_hms_opt(h, mi, 0))
            .expect("valid date")
            .and_utc()
            .timestamp_millis()
    }

    const TI_CFG: &str = "route:
  receiver: hook
  group_by: [alertname]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
  routes:
  - matchers: ['alertname=\"Nightly\"']
    mute_time_intervals: [night]
    routes:
    - matchers: ['member=\"n9\"']
  - matchers: ['alertname=\"Office\"']
    active_time_intervals:
    - business
receivers:
- name: hook
  webhook_configs:
  - url: http://127.0.0.1:1/x
time_intervals:
- name: business
  time_intervals:
  - weekdays: ['Monday:friday']
    times:
    - start_time: '09:00'
      end_time: '17:00'
- name: night
  time_intervals:
  - times:
    - start_time: '22:00'
      end_time: '24:00'
    - start_time: '00:00'
      end_time: '06:00'
mute_time_intervals:
- name: calendar
  time_intervals:
  - days_of_month: ['1:5', -1, '-3:-2']
    months: ['January:march', 12, 'july']
    years: ['2025:2027', 2030]
    location: Local
  - days_of_month: []
";

    #[test]
    fn time_intervals_parse() {
        let cfg = parse_am_config("am.yml", TI_CFG).unwrap();
        assert_eq!(
            cfg.time_intervals.keys().collect::<Vec<_>>(),
            ["business", "calendar", "night"]
        );
        let b = &cfg.time_intervals["business"][0];
        assert_eq!(b.weekdays, Some(vec![(1, 5)]));
        assert_eq!(b.times, Some(vec![(540, 1020)]));
        assert_eq!(b.days_of_month, None);
        assert_eq!(b.location, IntervalLocation::Utc);
        assert_eq!(
            cfg.time_intervals["night"][0].times,
            Some(vec![(1320, 1440), (0, 360)])
        );
        let c = &cfg.time_intervals["calendar"];
        assert_eq!(c[0].days_of_month, Some(vec![(1, 5), (-1, -1), (-3, -2)]));
        assert_eq!(c[0].months, Some(vec![(1, 3), (12, 12), (7, 7)]));
        assert_eq!(c[0].years, Some(vec![(2025, 2027), (2030, 2030)]));
        assert_eq!(c[0].location, IntervalLocation::Local);
        assert_eq!(c[1].days_of_month, Some(vec![]));
        let nightly = &cfg.route.routes[0];
        assert_eq!(nightly.mute_time_intervals, ["night"]);
        // Not inherited, as in Alertmanager.
        assert!(nightly.routes[0].mute_time_intervals.is_empty());
        assert_eq!(cfg.route.routes[1].active_time_intervals, ["business"]);
        assert!(cfg.route.mute_time_intervals.is_empty());
    }

    #[test]
    fn time_intervals_refused_with_field_and_line() {
        let base = "route:\n  receiver: hook\nreceivers:\n- name: hook\n";
        let one = |entry: &str| {
            format!("{base}time_intervals:\n- name: t\n  time_intervals:\n  - {entry}\n")
        };
        // (document, field named, reason part, line)
        let cases: Vec<(String, &str, &str, usize)> = vec![
            (one("times:\n    - start_time: '10:00'\n      end_time: '09:00'"), "time_intervals[t].time_intervals[0].times[0].end_time", "after start", 10),
            (one("times:\n    - start_time: '10:00'\n      end_time: '10:00'"), "times[0].end_time", "after start", 10),
            (one("times:\n    - start_time: '25:00'\n      end_time: '26:00'"), "times[0].start_time", "HH:MM", 9),
            (one("times:\n    - start_time: '9:00'\n      end_time: '10:00'"), "times[0].start_time", "HH:MM", 9),
            (one("times:\n    - start_time: '24:01'\n      end_time: '24:00'"), "times[0].start_time", "HH:MM", 9),
            (one("times:\n    - start_time: '09:00'"), "times[0].end_time", "both start_time and end_time", 9),
            (one("weekdays: ['saturday:sunday']"), "time_intervals[0].weekdays", "starts after it ends", 8),
            (one("weekdays: [monday, funday]"), "weekdays", "\"funday\" is not a weekday", 8),
            (one("weekdays: ['monday:tuesday:friday']"), "weekdays", "range a:b", 8),
            (one("days_of_month: [0]"), "days_of_month", "0 is not a day of the month", 8),
            (one("days_of_month: ['1:32']"), "days_of_month", "32 is not a day", 8),
            (one("days_of_month: ['-1:5']"), "days_of_month", "end must be negative", 8),
            (one("days_of_month: ['10:2']"), "days_of_month", "starts after it ends", 8),
            (one("days_of_month: ['-1:-5']"), "days_of_month", "starts after it ends", 8),
            (one("days_of_month: ['x']"), "days_of_month", "not a whole number", 8),
            (one("months: ['13']"), "months", "not a month", 8),
            (one("months: ['march:january']"), "months", "starts after it ends", 8),
            (one("months: [smarch]"), "months", "not a month", 8),
            (one("years: ['2027:2025']"), "years", "starts after it ends", 8),
            (one("years: ['20x']"), "years", "not a whole number", 8),
            (one("location: Europe/Berlin"), "time_intervals[0].location", "\"Europe/Berlin\" is not supported", 8),
            (one("weekday: [monday]"), "weekday", "unknown field", 8),
            // A block list: the line of the bad element.
            (one("months:\n    - may\n    - 0"), "months", "not a month", 10),
            (format!("{base}time_intervals:\n- name: t\n  time_intervals: []\nmute_time_intervals:\n- name: t\n  time_intervals: []\n"), "time_intervals[t].name", "defined twice", 6),
            (format!("{base}time_intervals:\n- name: ''\n"), "time_intervals.name", "needs a name", 6),
            ("route:\n  receiver: hook\n  routes:\n  - receiver: hook\n    mute_time_intervals: [weekends]\nreceivers:\n- name: hook\n".into(), "route.routes[0].mute_time_intervals", "\"weekends\" is not defined", 5),
            ("route:\n  receiver: hook\n  routes:\n  - receiver: hook\n    active_time_intervals:\n    - t\n    - nope\nreceivers:\n- name: hook\ntime_intervals:\n- name: t\n".into(), "route.routes[0].active_time_intervals", "\"nope\" is not defined", 7),
            (format!("{base}time_intervals:\n- name: t\n  time_intervals: []\n").replace("  receiver: hook\n", "  receiver: hook\n  mute_time_intervals: [t]\n"), "route.mute_time_intervals", "root route", 3),
            (format!("{base}time_intervals:\n- name: t\n").replace("  receiver: hook\n", "  receiver: hook\n  active_time_intervals: [t]\n"), "route.active_time_intervals", "root route", 3),
        ];
        for (doc, field, reason, line) in cases {
            let e = parse_am_config("am.yml", &doc).unwrap_err();
            let msg = e.to_string();
            assert!(
                e.field.contains(field) && e.reason.contains(reason),
                "{doc}\n=> {msg}"
            );
            assert_eq!(e.line, Some(line), "{doc}\n=> {msg}");
        }
    }

    fn interval(entry: &str) -> Vec<TimeInterval> {
        let doc = format!(
            "route:\n  receiver: hook\nreceivers:\n- name: hook\ntime_intervals:\n- name: t\n  time_intervals:\n  - {entry}\n"
        );
        parse_am_config("am.yml", &doc)
            .unwrap_or_else(|e| panic!("{entry}: {e}"))
            .time_intervals
            .remove("t")
            .unwrap()
    }

    #[test]
    fn time_interval_fields_match() {
        let within = |entry: &str, t: i64| in_time_interval(&interval(entry), t);
        // 2026-11-29 is a Sunday, 2026-11-30 a Monday, 2026-12-05 a Saturday.
        let wd = "weekdays: ['monday:friday']";
        assert!(!within(wd, ts(2026, 11, 29, 12, 0)));
        assert!(within(wd, ts(2026, 11, 30, 0, 0)));
        assert!(within(wd, ts(2026, 12, 4, 23, 59)));
        assert!(!within(wd, ts(2026, 12, 5, 0, 0)));
        let weekend = "weekdays: [Saturday, 'sunday']";
        assert!(within(weekend, ts(2026, 11, 29, 12, 0)));
        assert!(within(weekend, ts(2026, 12, 5, 12, 0)));
        assert!(!within(weekend, ts(2026, 12, 2, 12, 0)));

        // Negative days count from the month's end, whatever its length.
        let last = "days_of_month: [-1]";
        assert!(within(last, ts(2024, 2, 29, 10, 0)));
        assert!(!within(last, ts(2024, 2, 28, 10, 0)));
        assert!(within(last, ts(2025, 2, 28, 10, 0)));
        assert!(within(last, ts(2026, 4, 30, 10, 0)));
        assert!(within(last, ts(2026, 12, 31, 10, 0)));
        let last3 = "days_of_month: ['-3:-1']";
        assert!(within(last3, ts(2026, 11, 28, 0, 0)));
        assert!(!within(last3, ts(2026, 11, 27, 23, 59)));
        let to_end = "days_of_month: ['25:-1']";
        assert!(within(to_end, ts(2025, 2, 28, 0, 0)));
        assert!(!within(to_end, ts(2025, 2, 24, 0, 0)));
        // Day 31 does not exist in April: no day matches; 28:31 clamps to the month.
        assert!(!(1..=30).any(|d| within("days_of_month: [31]", ts(2026, 4, d, 12, 0))));
        assert!(within("days_of_month: ['28:31']", ts(2026, 4, 30, 12, 0)));

        let months = "months: ['March:May', december, 8]";
        assert!(within(months, ts(2026, 3, 1, 0, 0)));
        assert!(within(months, ts(2026, 5, 31, 23, 59)));
        assert!(!within(months, ts(2026, 6, 1, 0, 0)));
        assert!(within(months, ts(2026, 8, 15, 0, 0)));
        assert!(within(months, ts(2026, 12, 15, 0, 0)));
        assert!(!within(months, ts(2026, 1, 15, 0, 0)));

        // The end is exclusive; 24:00 reaches the last minute of the day.
        let evening = "times:\n    - start_time: '17:30'\n      end_time: '24:00'";
        assert!(!within(evening, ts(2026, 11, 30, 17, 29)));
        assert!(within(evening, ts(2026, 11, 30, 17, 30)));
        assert!(within(evening, ts(2026, 11, 30, 23, 59)));
        assert!(!within(evening, ts(2026, 12, 1, 0, 0)));
        let morning = "times:\n    - start_time: '00:00'\n      end_time: '09:00'";
        assert!(within(morning, ts(2026, 11, 30, 8, 59)));
        assert!(!within(morning, ts(2026, 11, 30, 9, 0)));

        let years = "years: ['2025:2026']";
        assert!(within(years, ts(2025, 1, 1, 0, 0)));
        assert!(within(years, ts(2026, 12, 31, 23, 59)));
        assert!(!within(years, ts(2027, 1, 1, 0, 0)));

        // Every field must hold: Mondays in January 2027 between 09:00 and 10:00.
        let all = "weekdays: [monday]\n    months: [january]\n    years: [2027]\n    times:\n    - start_time: '09:00'\n      end_time: '10:00'";
        assert!(within(all, ts(2027, 1, 4, 9, 30)));
        assert!(!within(all, ts(2027, 1, 5, 9, 30)));
        assert!(!within(all, ts(2027, 1, 4, 10, 0)));
        assert!(!within(all, ts(2026, 1, 5, 9, 30)));

        // An entry without fields is always; an explicit empty list never (as in Alertmanager).
        assert!(within("location: UTC", ts(2026, 11, 30, 3, 0)));
        assert!(within("location: Etc/UTC", ts(2026, 11, 30, 3, 0)));
        assert!(!within("weekdays: []", ts(2026, 11, 30, 3, 0)));

        // Local: read in the member's time zone.
        let now = ts(2026, 11, 30, 12, 0);
        let local = chrono::DateTime::from_timestamp_millis(now)
            .unwrap()
            .with_timezone(&chrono::Local);
        let hour = chrono::Timelike::hour(&local);
        let entry = format!(
            "location: Local\n    times:\n    - start_time: '{hour:02}:00'\n      end_time: '{:02}:00'",
            hour + 1
        );
        assert!(within(&entry, now));
        assert!(!within(&entry, now + 3_600_000));
    }

    fn named(name: &str, at: i64) -> Alert {
        alert(name, "n1", AlertStatus::Firing, at)
    }

    #[test]
    fn muted_route_sends_nothing_until_the_interval_ends() {
        let cfg = parse_am_config("am.yml", TI_CFG).unwrap();
        let mut d = Dispatcher::new();
        let mut log = BTreeMap::new();
        let none = BTreeSet::new();
        // Night runs to 06:00 UTC; the alerts fire at 05:58.
        let t0 = ts(2026, 11, 30, 5, 58);
        let alerts = vec![named("Nightly", t0), named("Other", t0)];
        assert!(d.tick(&cfg, &alerts, &[], &log, &none, t0, "").is_empty());
        // The unmuted group is sent; the muted one is not, nor logged.
        let n = d.tick(&cfg, &alerts, &[], &log, &none, t0 + 1_000, "");
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].entry.firing.len(), 1);
        assert_eq!(
            n[0].payload.as_ref().unwrap()["groupLabels"]["alertname"],
            "Other"
        );
        for x in n {
            log.insert(x.nflog_key, x.entry);
        }
        // Every flush inside the interval sends nothing.
        let mut t = t0 + 3_000;
        while t < ts(2026, 11, 30, 6, 0) {
            assert!(
                d.tick(&cfg, &alerts, &[], &log, &none, t, "").is_empty(),
                "{t}"
            );
            t += 2_000;
        }
        // The first flush at or after 06:00 sends the muted group.
        let n = d.tick(&cfg, &alerts, &[], &log, &none, t, "");
        assert_eq!(n.len(), 1, "at {t}");
        assert_eq!(
            n[0].payload.as_ref().unwrap()["groupLabels"]["alertname"],
            "Nightly"
        );
        // The child route under the muted one is not muted (no inheritance).
        let mut d = Dispatcher::new();
        let mut child = named("Nightly", t0);
        child.labels.insert("member".into(), "n9".into());
        let child = [child];
        assert!(d.tick(&cfg, &child, &[], &log, &none, t0, "").is_empty());
        let n = d.tick(&cfg, &child, &[], &BTreeMap::new(), &none, t0 + 1_000, "");
        assert_eq!(n.len(), 1, "the child route is not muted");
    }

    #[test]
    fn active_route_sends_only_inside_its_intervals() {
        let cfg = parse_am_config("am.yml", TI_CFG).unwrap();
        let mut d = Dispatcher::new();
        let log = BTreeMap::new();
        let none = BTreeSet::new();
        // Sunday evening: outside business hours.
        let t0 = ts(2026, 11, 29, 20, 0);
        let alerts = vec![named("Office", t0)];
        let mut t = t0;
        while t < ts(2026, 11, 30, 9, 0) {
            assert!(
                d.tick(&cfg, &alerts, &[], &log, &none, t, "").is_empty(),
                "{t}"
            );
            t += 60_000;
        }
        // Monday 09:00: the next flush sends it.
        let n = d.tick(&cfg, &alerts, &[], &log, &none, t, "");
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[0].payload.as_ref().unwrap()["groupLabels"]["alertname"],
            "Office"
        );
        assert_eq!(n[0].entry.timestamp_ms, ts(2026, 11, 30, 9, 0));
        // After 17:00 it is muted again: nothing is repeated.
        let mut log = BTreeMap::new();
        for x in n {
            log.insert(x.nflog_key, x.entry);
        }
        let late = ts(2026, 11, 30, 17, 0) + 2 * 3_600_000;
        assert!(d.tick(&cfg, &alerts, &[], &log, &none, late, "").is_empty());
    }
}
