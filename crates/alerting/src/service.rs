//! A member's alerting tasks: the scraper filling the metrics history, the
//! leader's loop (scrape every member for `up`, evaluate the rules, keep the
//! alert state in the store, dispatch notifications with retries), and the
//! HTTP API (Prometheus's `/api/v1/query`, `query_range`, `series`,
//! `labels`; alerts, rules, silences, events; own `/metrics`).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::events::Event;
use crate::notify::{AmConfig, Dispatcher, Integration, NflogEntry, Notification, Silence};
use crate::promql::{self, Engine};
use crate::rules::{self, AlertState, Rule, Transition};
use crate::store::{now_ms, MemberRecord, Store, StoreError};
use crate::tsdb::{parse_exposition, Labels, Tsdb, TsdbSettings};

/// Gauge every member exports at scrape time (`SystemTime::now()`, seconds).
pub const WALL_CLOCK_METRIC: &str = "phalanx_wall_clock_seconds";
/// Series the leader derives per member from it: member's clock − leader's clock.
pub const CLOCK_OFFSET_METRIC: &str = "phalanx_clock_offset_seconds";

/// The member's wall clock as a text-format gauge (read at every scrape).
pub fn wall_clock_text() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    format!("# HELP {WALL_CLOCK_METRIC} This member's wall clock when scraped (Unix seconds)\n# TYPE {WALL_CLOCK_METRIC} gauge\n{WALL_CLOCK_METRIC} {now:.3}\n")
}

/// Settings of a member's alerting (every bound named with its unit).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This member's name (the `member` label of its series).
    pub member: String,
    /// This member's client URLs (the store is reached through them).
    pub endpoints: Vec<String>,
    /// The member's in-process channel to its own etcd API
    /// (`etcd_api::internal_channel`); when given, the store is reached
    /// through it instead of `endpoints`, needing no TLS material or
    /// credentials whatever the client listeners require.
    pub channel: Option<etcd_client::Channel>,
    /// Store prefix of the alerting keys.
    pub prefix: String,
    /// Address of the HTTP API (None: no API).
    pub listen: Option<SocketAddr>,
    /// This member's `/metrics` URL, published for the leader's `up` scrapes.
    pub metrics_url: Option<String>,
    /// How often the member records its own metrics.
    pub scrape_interval_ms: u64,
    /// How often the leader scrapes every member and evaluates the rules.
    pub evaluation_interval_ms: u64,
    /// Bound on one scrape of a member by the leader.
    pub scrape_timeout_ms: u64,
    /// Scrapes with a longer round trip give no clock offset (its error is up to half the round trip).
    pub max_clock_rtt_ms: i64,
    pub tsdb: TsdbSettings,
    /// Lookback of instant selectors.
    pub lookback_ms: i64,
    /// How long resolved alerts are kept (and notified as resolved).
    pub resolved_retention_ms: i64,
    /// Default rules switched off (alert names, or `all`).
    pub disabled_default_rules: Vec<String>,
    /// The default anomaly rules fire above this anomaly score, in (0, 1):
    /// higher alerts less (`--alerting-anomaly-sensitivity`).
    pub anomaly_sensitivity: f64,
    /// Bound on the event timeline: count…
    pub max_events: usize,
    /// …and age.
    pub event_retention_ms: i64,
    /// Bound on one webhook POST.
    pub webhook_timeout_ms: u64,
    /// Attempts of one notification (backoff `min_backoff_ms` doubling to `max_backoff_ms`) before it is given up until the next group interval.
    pub max_notification_attempts: u32,
    /// First retry delay of a failed notification.
    pub min_backoff_ms: u64,
    /// Largest retry delay of a failed notification.
    pub max_backoff_ms: u64,
    /// Exported as `phalanx_server_quota_backend_bytes` (for PhalanxQuotaNearlyFull).
    pub quota_backend_bytes: u64,
}

impl Settings {
    pub fn new(member: &str, endpoints: Vec<String>) -> Self {
        Settings {
            member: member.to_string(),
            endpoints,
            channel: None,
            prefix: crate::store::DEFAULT_PREFIX.to_string(),
            listen: None,
            metrics_url: None,
            scrape_interval_ms: 5_000,
            evaluation_interval_ms: 5_000,
            scrape_timeout_ms: 2_000,
            max_clock_rtt_ms: 500,
            tsdb: TsdbSettings::default(),
            lookback_ms: promql::DEFAULT_LOOKBACK_MS,
            resolved_retention_ms: rules::DEFAULT_RESOLVED_RETENTION_MS,
            disabled_default_rules: vec![],
            anomaly_sensitivity: crate::anomaly_fn::DEFAULT_ANOMALY_SENSITIVITY,
            max_events: 10_000,
            event_retention_ms: 7 * 24 * 3_600_000,
            webhook_timeout_ms: 5_000,
            max_notification_attempts: 8,
            min_backoff_ms: 100,
            max_backoff_ms: 5_000,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

type Probe<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// What the member gives its alerting: its metrics text and whether it leads.
#[derive(Clone)]
pub struct Host {
    pub local_metrics: Probe<String>,
    pub is_leader: Probe<bool>,
}

/// Counters exported on `/metrics` of the API and into the history.
#[derive(Default)]
struct Stats {
    scrapes: AtomicU64,
    scrape_failures: AtomicU64,
    evaluations: AtomicU64,
    evaluation_failures: AtomicU64,
    notifications: AtomicU64,
    notification_failures: AtomicU64,
    store_failures: AtomicU64,
    last_scrape_us: AtomicU64,
    last_eval_us: AtomicU64,
}

struct Shared {
    settings: Settings,
    host: Host,
    tsdb: Mutex<Tsdb>,
    stats: Stats,
    http: HttpClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    nflog: Mutex<BTreeMap<String, NflogEntry>>,
    busy: Mutex<BTreeSet<String>>,
    rules_in_force: Mutex<Vec<Rule>>,
    /// (integration, receiver) -> (delivered, failed attempts).
    per_integration: Mutex<BTreeMap<(String, String), (u64, u64)>>,
}

impl Shared {
    fn count_integration(&self, kind: &str, receiver: &str, ok: bool) {
        let mut m = self.per_integration.lock().unwrap();
        let e = m
            .entry((kind.to_string(), receiver.to_string()))
            .or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
}

/// The running alerting of a member.
pub struct AlertingHandle {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The API's bound address.
    pub api_addr: Option<SocketAddr>,
}

impl AlertingHandle {
    pub fn series(&self) -> usize {
        self.shared.tsdb.lock().unwrap().series_count()
    }
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for AlertingHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the alerting API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Settings(String),
}

/// Start the member's alerting tasks (binding the API first).
pub async fn start(settings: Settings, host: Host) -> Result<AlertingHandle, StartError> {
    for (name, v) in [
        ("scrape_interval_ms", settings.scrape_interval_ms),
        ("evaluation_interval_ms", settings.evaluation_interval_ms),
        ("scrape_timeout_ms", settings.scrape_timeout_ms),
    ] {
        if v == 0 {
            return Err(StartError::Settings(format!("{name} must be at least 1")));
        }
    }
    if settings.tsdb.max_series == 0 || settings.tsdb.max_samples_bytes == 0 {
        return Err(StartError::Settings(
            "max_series and max_samples_bytes must be at least 1".into(),
        ));
    }
    // The anomaly functions evaluate their inner expression on the history's
    // grid: this member's scrape interval (one alerting service per process).
    crate::anomaly_fn::configure_global(crate::anomaly_fn::AnomalySettings {
        step_ms: settings.scrape_interval_ms as i64,
        ..Default::default()
    });
    let listener = match settings.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    let api_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let shared = Arc::new(Shared {
        tsdb: Mutex::new(Tsdb::new(settings.tsdb.clone())),
        settings,
        host,
        stats: Stats::default(),
        http: HttpClient::builder(TokioExecutor::new()).build(https_connector()),
        nflog: Mutex::new(BTreeMap::new()),
        busy: Mutex::new(BTreeSet::new()),
        rules_in_force: Mutex::new(rules::effective_rules(
            &[],
            &[],
            crate::anomaly_fn::DEFAULT_ANOMALY_SENSITIVITY,
        )),
        per_integration: Mutex::new(BTreeMap::new()),
    });
    *shared.rules_in_force.lock().unwrap() = rules::effective_rules(
        &[],
        &shared.settings.disabled_default_rules,
        shared.settings.anomaly_sensitivity,
    );
    let mut tasks = vec![
        tokio::spawn(scrape_loop(shared.clone())),
        tokio::spawn(leader_loop(shared.clone(), api_addr)),
    ];
    if let Some(l) = listener {
        tasks.push(tokio::spawn(serve_api(l, shared.clone())));
    }
    Ok(AlertingHandle {
        shared,
        tasks,
        api_addr,
    })
}

/// http:// and https:// (rustls on ring, the system trust store; without a
/// readable store, https:// requests fail with the reason and http:// works).
fn https_connector(
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "alerting: no system trust store; https:// receivers will fail");
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg)
        }
    };
    builder.https_or_http().enable_http1().build()
}

fn own_metrics(s: &Shared) -> String {
    let db = s.tsdb.lock().unwrap();
    let st = &s.stats;
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, help: &str, v: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    line(
        "phalanx_alerting_series",
        "gauge",
        "Series in the metrics history",
        db.series_count() as f64,
    );
    line(
        "phalanx_alerting_samples_bytes",
        "gauge",
        "Bytes of samples in the metrics history",
        db.samples_bytes() as f64,
    );
    line(
        "phalanx_alerting_series_refused_total",
        "counter",
        "Samples of new series refused because max_series was reached",
        db.series_refused_total as f64,
    );
    line(
        "phalanx_alerting_samples_refused_total",
        "counter",
        "Samples refused because max_samples_bytes was reached",
        db.samples_refused_total as f64,
    );
    drop(db);
    line(
        "phalanx_alerting_scrapes_total",
        "counter",
        "Scrapes of this member's own metrics",
        st.scrapes.load(Ordering::Relaxed) as f64,
    );
    line(
        "phalanx_alerting_scrape_failures_total",
        "counter",
        "Failed scrapes (own or, on the leader, of members)",
        st.scrape_failures.load(Ordering::Relaxed) as f64,
    );
    line(
        "phalanx_alerting_evaluations_total",
        "counter",
        "Rule evaluation rounds (leader)",
        st.evaluations.load(Ordering::Relaxed) as f64,
    );
    line(
        "phalanx_alerting_evaluation_failures_total",
        "counter",
        "Rules whose evaluation failed",
        st.evaluation_failures.load(Ordering::Relaxed) as f64,
    );
    line(
        "phalanx_alerting_notifications_total",
        "counter",
        "Notifications delivered",
        st.notifications.load(Ordering::Relaxed) as f64,
    );
    line(
        "phalanx_alerting_notification_failures_total",
        "counter",
        "Failed notification attempts",
        st.notification_failures.load(Ordering::Relaxed) as f64,
    );
    line(
        "phalanx_alerting_store_failures_total",
        "counter",
        "Failed store requests of the alerting tasks",
        st.store_failures.load(Ordering::Relaxed) as f64,
    );
    line(
        "phalanx_alerting_last_scrape_seconds",
        "gauge",
        "Duration of the last own scrape and append",
        st.last_scrape_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    line(
        "phalanx_alerting_last_evaluation_seconds",
        "gauge",
        "Duration of the last evaluation round",
        st.last_eval_us.load(Ordering::Relaxed) as f64 / 1e6,
    );
    let per = s.per_integration.lock().unwrap().clone();
    if !per.is_empty() {
        for (name, idx, help) in [
            (
                "phalanx_alerting_integration_notifications_total",
                0,
                "Notifications delivered, by integration and receiver",
            ),
            (
                "phalanx_alerting_integration_notification_failures_total",
                1,
                "Failed notification attempts, by integration and receiver",
            ),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for ((kind, recv), v) in &per {
                let n = if idx == 0 { v.0 } else { v.1 };
                out.push_str(&format!(
                    "{name}{{integration=\"{kind}\",receiver=\"{}\"}} {n}\n",
                    recv.replace('\\', "\\\\").replace('"', "\\\"")
                ));
            }
        }
    }
    let mut line = |name: &str, kind: &str, help: &str, v: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        ));
    };
    line(
        "phalanx_server_quota_backend_bytes",
        "gauge",
        "Backend quota (--quota-backend-bytes)",
        s.settings.quota_backend_bytes as f64,
    );
    out
}

fn member_labels(member: &str) -> Labels {
    let mut l = Labels::new();
    l.insert("member".into(), member.into());
    l
}

/// Append samples, logging (rate-limited) what the bounds refused.
fn ingest(s: &Shared, t: i64, samples: Vec<(Labels, f64)>, last_warn: &mut Option<Instant>) {
    let o = s.tsdb.lock().unwrap().append(t, samples);
    if (o.series_refused > 0 || o.samples_refused > 0)
        && last_warn.is_none_or(|w| w.elapsed() > Duration::from_secs(60))
    {
        *last_warn = Some(Instant::now());
        let st = s.tsdb.lock().unwrap();
        tracing::warn!(
            member = %s.settings.member,
            series_refused = o.series_refused,
            samples_refused = o.samples_refused,
            max_series = st.settings().max_series,
            max_samples_bytes = st.settings().max_samples_bytes,
            "metrics history is full: samples refused (counted in phalanx_alerting_series_refused_total / phalanx_alerting_samples_refused_total)"
        );
    }
}

async fn scrape_loop(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(s.settings.scrape_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_warn = None;
    let extra = member_labels(&s.settings.member);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let host = s.host.clone();
        let text = match tokio::task::spawn_blocking(move || (host.local_metrics)()).await {
            Ok(t) => t,
            Err(_) => continue,
        };
        let text = text + &own_metrics(&s);
        match parse_exposition(&text, &extra) {
            Ok(samples) => {
                ingest(&s, now_ms(), samples, &mut last_warn);
                s.stats.scrapes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                s.stats.scrape_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "own metrics did not parse");
            }
        }
        s.stats
            .last_scrape_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

async fn http_request(
    s: &Shared,
    method: hyper::Method,
    url: &str,
    body: Option<Vec<u8>>,
    timeout_ms: u64,
) -> Result<(u16, Bytes), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("user-agent", "phalanx-alerting");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = s
            .http
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let b = http_body_util::Limited::new(resp.into_body(), 16 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        Ok((status, b))
    };
    tokio::time::timeout(Duration::from_millis(timeout_ms), fut)
        .await
        .map_err(|_| format!("{url}: timed out after {timeout_ms} ms"))?
}

/// The leader's view of the configuration in the store.
struct Config {
    rules_rev: i64,
    am_rev: i64,
    am: AmConfig,
    targets_rev: i64,
    /// The user's own scrape targets (`<prefix>/targets`).
    targets: Vec<crate::targets::Target>,
    rejected: BTreeSet<(String, i64)>,
}

struct Leader {
    store: Option<Store>,
    leading: bool,
    state: AlertState,
    persisted: rules::DurableView,
    dispatcher: Dispatcher,
    prev_up: BTreeMap<String, bool>,
    cfg: Config,
    ticks: u64,
    last_warn: Option<Instant>,
}

async fn leader_loop(s: Arc<Shared>, api_addr: Option<SocketAddr>) {
    let mut tick = tokio::time::interval(Duration::from_millis(s.settings.evaluation_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut l = Leader {
        store: None,
        leading: false,
        state: AlertState::default(),
        persisted: vec![],
        dispatcher: Dispatcher::new(),
        prev_up: BTreeMap::new(),
        cfg: Config {
            rules_rev: -1,
            am_rev: -1,
            am: AmConfig::empty(),
            targets_rev: -1,
            targets: vec![],
            rejected: BTreeSet::new(),
        },
        ticks: 0,
        last_warn: None,
    };
    let mut published = false;
    // Rules are evaluated at the tick's scheduled time, not when the round
    // happens to run: `for: 5s` then fires exactly one interval after it went
    // pending, however long the store reads before the evaluation took (as
    // Prometheus evaluates at its scheduled timestamps).
    let origin = (tokio::time::Instant::now(), now_ms());
    loop {
        let scheduled = tick.tick().await;
        let eval_now_ms = origin.1 + (scheduled - origin.0).as_millis() as i64;
        if l.store.is_none() {
            match Store::connect_settings(&s.settings).await {
                Ok(st) => l.store = Some(st),
                Err(e) => {
                    tracing::debug!(error = %e, "alerting: store not reachable yet");
                    continue;
                }
            }
        }
        let store = l.store.as_mut().expect("connected above");
        if !published {
            let rec = MemberRecord {
                member: s.settings.member.clone(),
                metrics_url: s.settings.metrics_url.clone(),
                api_url: api_addr.map(|a| format!("http://{a}")),
                quota_backend_bytes: s.settings.quota_backend_bytes,
            };
            published = store
                .put(
                    &format!("members/{}", s.settings.member),
                    serde_json::to_vec(&rec).expect("encodes"),
                )
                .await
                .is_ok();
        }
        if !(s.host.is_leader)() {
            if l.leading {
                tracing::info!(member = %s.settings.member, "alerting: no longer the leader; stopping evaluation");
            }
            l.leading = false;
            l.dispatcher = Dispatcher::new();
            continue;
        }
        let started = Instant::now();
        if let Err(e) = leader_tick(&s, &mut l, eval_now_ms).await {
            s.stats.store_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(member = %s.settings.member, error = %e, "alerting: evaluation round failed; retrying next interval");
            if matches!(e, StoreError::Timeout(_) | StoreError::Store(_)) {
                l.store = None;
            }
        }
        s.stats
            .last_eval_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

async fn event(store: &mut Store, s: &Shared, kind: &str, msg: String, labels: Labels) {
    let mut e = Event::new(now_ms(), kind, &s.settings.member, msg);
    e.labels = labels;
    if let Err(err) = store.record_event(&e).await {
        tracing::warn!(error = %err, kind, "alerting: event not recorded");
    }
}

async fn leader_tick(s: &Arc<Shared>, l: &mut Leader, now: i64) -> Result<(), StoreError> {
    let store = l.store.as_mut().expect("connected");
    if !l.leading {
        // Take over: continue the alert state and notification log where the last leader left them.
        l.state = store.alert_state().await?;
        l.persisted = l.state.durable_view();
        let mut log = BTreeMap::new();
        for (k, v, _) in store.get_prefix("nflog").await? {
            if let Ok(e) = serde_json::from_slice::<NflogEntry>(&v) {
                log.insert(k, e);
            }
        }
        *s.nflog.lock().unwrap() = log;
        s.busy.lock().unwrap().clear();
        l.prev_up.clear();
        l.leading = true;
        let term = s
            .tsdb
            .lock()
            .unwrap()
            .select(|x| {
                x.get("__name__").map(String::as_str) == Some("phalanx_raft_term")
                    && x.get("member") == Some(&s.settings.member)
            })
            .filter_map(|(_, v)| v.back().map(|p| p.1))
            .next()
            .unwrap_or(0.0);
        event(
            store,
            s,
            "leader_changed",
            format!(
                "{} is the leader (term {term}); it evaluates the alerting rules",
                s.settings.member
            ),
            member_labels(&s.settings.member),
        )
        .await;
        tracing::info!(member = %s.settings.member, alerts = l.state.alerts.len(), "alerting: leader; continuing the alert state from the store");
    }
    // Configuration (re-parsed only when its revision changes; a bad document keeps the one in force).
    let rules_doc = store.get("rules").await?;
    let rules_rev = rules_doc.as_ref().map_or(0, |x| x.1);
    if rules_rev != l.cfg.rules_rev {
        let parsed = match &rules_doc {
            None => Ok(vec![]),
            Some((v, _)) => rules::parse_rules(&store.key("rules"), &String::from_utf8_lossy(v)),
        };
        match parsed {
            Ok(r) => {
                *s.rules_in_force.lock().unwrap() = rules::effective_rules(
                    &r,
                    &s.settings.disabled_default_rules,
                    s.settings.anomaly_sensitivity,
                )
            }
            Err(e) => {
                if l.cfg.rejected.insert(("rules".into(), rules_rev)) {
                    tracing::warn!(error = %e, "alerting: stored rule file rejected; the rules in force stay");
                    event(
                        store,
                        s,
                        "config_rejected",
                        format!(
                            "rule file at revision {rules_rev} rejected, rules in force kept: {e}"
                        ),
                        Labels::new(),
                    )
                    .await;
                }
            }
        }
        l.cfg.rules_rev = rules_rev;
    }
    let am_doc = store.get("alertmanager").await?;
    let am_rev = am_doc.as_ref().map_or(0, |x| x.1);
    if am_rev != l.cfg.am_rev {
        let parsed = match &am_doc {
            None => Ok(AmConfig::empty()),
            Some((v, _)) => crate::notify::parse_am_config(
                &store.key("alertmanager"),
                &String::from_utf8_lossy(v),
            ),
        };
        match parsed {
            Ok(c) => l.cfg.am = c,
            Err(e) => {
                if l.cfg.rejected.insert(("alertmanager".into(), am_rev)) {
                    tracing::warn!(error = %e, "alerting: stored alertmanager configuration rejected; the one in force stays");
                    event(store, s, "config_rejected", format!("alertmanager configuration at revision {am_rev} rejected, configuration in force kept: {e}"), Labels::new()).await;
                }
            }
        }
        l.cfg.am_rev = am_rev;
    }
    let targets_doc = store.get("targets").await?;
    let targets_rev = targets_doc.as_ref().map_or(0, |x| x.1);
    if targets_rev != l.cfg.targets_rev {
        let parsed = match &targets_doc {
            None => Ok(vec![]),
            Some((v, _)) => {
                crate::targets::parse_targets(&store.key("targets"), &String::from_utf8_lossy(v))
            }
        };
        match parsed {
            Ok(t) => l.cfg.targets = t,
            Err(e) => {
                if l.cfg.rejected.insert(("targets".into(), targets_rev)) {
                    tracing::warn!(error = %e, "alerting: stored scrape targets rejected; the ones in force stay");
                    event(store, s, "config_rejected", format!("scrape targets at revision {targets_rev} rejected, targets in force kept: {e}"), Labels::new()).await;
                }
            }
        }
        l.cfg.targets_rev = targets_rev;
    }
    let silences: Vec<Silence> = store.silences().await.unwrap_or_default();
    let members: Vec<MemberRecord> = store
        .get_prefix("members")
        .await?
        .into_iter()
        .filter_map(|(_, v, _)| serde_json::from_slice(&v).ok())
        .collect();

    // Scrape every member (concurrently, bounded): `up`, and their metrics into the history.
    let mut scrapes = Vec::new();
    for m in members {
        let s2 = s.clone();
        scrapes.push(tokio::spawn(async move {
            if m.member == s2.settings.member {
                return (m, Some(String::new()), 0i64, now_ms());
            }
            let Some(url) = m.metrics_url.clone() else {
                return (m, None, 0, 0);
            };
            let t0 = now_ms();
            let r = http_request(
                &s2,
                hyper::Method::GET,
                &url,
                None,
                s2.settings.scrape_timeout_ms,
            )
            .await;
            let t1 = now_ms();
            match r {
                Ok((200, body)) => (
                    m,
                    Some(String::from_utf8_lossy(&body).to_string()),
                    t1 - t0,
                    t0 + (t1 - t0) / 2,
                ),
                _ => (m, None, t1 - t0, 0),
            }
        }));
    }
    let mut samples = Vec::new();
    let mut up_now = BTreeMap::new();
    for j in scrapes {
        let Ok((m, text, rtt_ms, mid_ms)) = j.await else {
            continue;
        };
        let mut l2 = member_labels(&m.member);
        let instance = m
            .metrics_url
            .as_deref()
            .unwrap_or("")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
        l2.insert("instance".into(), instance);
        let up = match &text {
            Some(t) if m.member != s.settings.member => {
                match parse_exposition(t, &member_labels(&m.member)) {
                    Ok(v) => {
                        // Clock offset: the member's wall clock read during the scrape minus
                        // the leader's at the scrape's middle (error at most rtt/2).
                        let wall = v
                            .iter()
                            .find(|(l, _)| {
                                l.get("__name__").map(String::as_str) == Some(WALL_CLOCK_METRIC)
                            })
                            .map(|(_, x)| *x);
                        if let Some(w) = wall {
                            if rtt_ms <= s.settings.max_clock_rtt_ms {
                                let mut o = member_labels(&m.member);
                                o.insert("__name__".into(), CLOCK_OFFSET_METRIC.into());
                                samples.push((o, w - mid_ms as f64 / 1000.0));
                            }
                        }
                        samples.extend(v);
                        let mut q = member_labels(&m.member);
                        q.insert(
                            "__name__".into(),
                            "phalanx_server_quota_backend_bytes".into(),
                        );
                        samples.push((q, m.quota_backend_bytes as f64));
                        true
                    }
                    Err(_) => false,
                }
            }
            Some(_) => {
                let _ = mid_ms;
                let mut o = member_labels(&m.member);
                o.insert("__name__".into(), CLOCK_OFFSET_METRIC.into());
                samples.push((o, 0.0));
                true
            }
            None => m.metrics_url.is_none(),
        };
        if !up {
            s.stats.scrape_failures.fetch_add(1, Ordering::Relaxed);
        }
        let mut ul = l2.clone();
        ul.insert("__name__".into(), "up".into());
        samples.push((ul, if up { 1.0 } else { 0.0 }));
        up_now.insert(m.member.clone(), (up, l2));
    }
    // The user's own targets, scraped like members (concurrently, each
    // bounded by scrape_timeout_ms), labelled job and instance.
    let mut user = Vec::new();
    for t in l.cfg.targets.clone() {
        let s2 = s.clone();
        user.push(tokio::spawn(async move {
            let r = http_request(
                &s2,
                hyper::Method::GET,
                &t.url,
                None,
                s2.settings.scrape_timeout_ms,
            )
            .await;
            (t, r)
        }));
    }
    for j in user {
        let Ok((t, r)) = j.await else { continue };
        let mut labels = Labels::new();
        labels.insert("job".into(), t.job.clone());
        labels.insert("instance".into(), t.instance.clone());
        let parsed = match r {
            Ok((200, body)) => parse_exposition(&String::from_utf8_lossy(&body), &labels).ok(),
            _ => None,
        };
        let up = parsed.is_some();
        if !up {
            s.stats.scrape_failures.fetch_add(1, Ordering::Relaxed);
        }
        samples.extend(parsed.unwrap_or_default());
        let mut ul = labels;
        ul.insert("__name__".into(), "up".into());
        samples.push((ul, if up { 1.0 } else { 0.0 }));
    }
    ingest(s, now, samples, &mut l.last_warn);
    for (m, (up, labels)) in &up_now {
        let before = l.prev_up.insert(m.clone(), *up);
        match (before, up) {
            (Some(true), false) | (None, false) => {
                event(
                    store,
                    s,
                    "member_down",
                    format!("member {m} does not answer its metrics endpoint"),
                    labels.clone(),
                )
                .await
            }
            (Some(false), true) => {
                event(
                    store,
                    s,
                    "member_up",
                    format!("member {m} answers again"),
                    labels.clone(),
                )
                .await
            }
            _ => {}
        }
    }

    // Evaluate.
    let rules_now = s.rules_in_force.lock().unwrap().clone();
    let (transitions, errors) = {
        let db = s.tsdb.lock().unwrap();
        let eng = Engine {
            db: &db,
            lookback_ms: s.settings.lookback_ms,
        };
        l.state
            .evaluate(&rules_now, &eng, now, s.settings.resolved_retention_ms)
    };
    s.stats.evaluations.fetch_add(1, Ordering::Relaxed);
    for (rule, e) in &errors {
        s.stats.evaluation_failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(rule, error = %e, "alerting: rule evaluation failed");
    }
    let view = l.state.durable_view();
    if view != l.persisted {
        store
            .put(
                "state",
                serde_json::to_vec(&l.state).expect("state encodes"),
            )
            .await?;
        l.persisted = view;
    }
    for t in transitions {
        match t {
            Transition::Firing(a) => {
                event(
                    store,
                    s,
                    "alert_firing",
                    format!(
                        "{} firing: {}",
                        a.name(),
                        a.annotations.get("summary").cloned().unwrap_or_default()
                    ),
                    a.labels.clone(),
                )
                .await
            }
            Transition::Resolved(a) => {
                event(
                    store,
                    s,
                    "alert_resolved",
                    format!("{} resolved", a.name()),
                    a.labels.clone(),
                )
                .await
            }
            Transition::Pending(_) => {}
        }
    }

    // Notify.
    let alerts: Vec<rules::Alert> = l.state.alerts.values().cloned().collect();
    let nflog = s.nflog.lock().unwrap().clone();
    let busy = s.busy.lock().unwrap().clone();
    let notes = l
        .dispatcher
        .tick(&l.cfg.am, &alerts, &silences, &nflog, &busy, now, "");
    for n in notes {
        if n.payload.is_none() {
            store
                .put(
                    &format!("nflog/{}", n.nflog_key),
                    serde_json::to_vec(&n.entry).expect("encodes"),
                )
                .await?;
            s.nflog
                .lock()
                .unwrap()
                .insert(n.nflog_key.clone(), n.entry.clone());
            continue;
        }
        s.busy.lock().unwrap().insert(n.nflog_key.clone());
        tokio::spawn(deliver(s.clone(), store.clone(), n));
    }

    l.ticks += 1;
    if l.ticks % 20 == 1 {
        match store
            .prune_events(now, s.settings.max_events, s.settings.event_retention_ms)
            .await
        {
            Ok(n) if n > 0 => tracing::debug!(pruned = n, "alerting: event timeline pruned"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "alerting: pruning the event timeline failed"),
        }
    }
    Ok(())
}

/// Send one notification once, by its integration.
async fn send_once(s: &Shared, n: &Notification) -> Result<(), String> {
    let payload = n.payload.as_ref().expect("checked");
    match &n.integration {
        Integration::Webhook { url } => post_json(s, url, payload).await,
        Integration::Alertmanager { url } => {
            post_json(
                s,
                &format!("{url}/api/v2/alerts"),
                &crate::notify::alertmanager_body(payload, now_ms()),
            )
            .await
        }
        Integration::Slack(sl) => {
            post_json(s, &sl.api_url, &crate::notify::slack_body(sl, payload)).await
        }
        Integration::Email(e) => send_email(s, e, payload).await,
    }
}

async fn post_json(s: &Shared, url: &str, body: &serde_json::Value) -> Result<(), String> {
    let body = serde_json::to_vec(body).expect("encodes");
    match http_request(
        s,
        hyper::Method::POST,
        url,
        Some(body),
        s.settings.webhook_timeout_ms,
    )
    .await?
    {
        (code, _) if (200..300).contains(&code) => Ok(()),
        (code, b) => Err(format!(
            "{url}: HTTP {code}: {}",
            String::from_utf8_lossy(&b[..b.len().min(200)])
        )),
    }
}

/// One email over SMTP (lettre), bounded by `webhook_timeout_ms` as a whole.
async fn send_email(
    s: &Shared,
    e: &crate::notify::Email,
    payload: &serde_json::Value,
) -> Result<(), String> {
    use lettre::message::header::{ContentType, HeaderName, HeaderValue};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::transport::smtp::extension::ClientId;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let (subject, headers, body) = crate::notify::email_parts(e, payload);
    let (host, port) = e
        .smarthost
        .rsplit_once(':')
        .ok_or_else(|| format!("smarthost {:?}: expected host:port", e.smarthost))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("smarthost {:?}: bad port", e.smarthost))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let timeout = Duration::from_millis(s.settings.webhook_timeout_ms);
    let tls = TlsParameters::new(host.to_string())
        .map_err(|x| format!("smtp://{host}:{port}: TLS: {x}"))?;
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .timeout(Some(timeout))
        .tls(match (e.require_tls, port) {
            (true, 465) => Tls::Wrapper(tls),
            (true, _) => Tls::Required(tls),
            (false, _) => Tls::Opportunistic(tls),
        });
    if let Some(h) = &e.hello {
        b = b.hello_name(ClientId::Domain(h.clone()));
    }
    if let Some((u, p)) = &e.auth {
        b = b.credentials(Credentials::new(u.clone(), p.clone()));
    }
    let transport = b.build();
    let mut m = Message::builder()
        .from(
            e.from
                .parse()
                .map_err(|x| format!("from {:?}: {x}", e.from))?,
        )
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for to in &e.to {
        m = m.to(to.parse().map_err(|x| format!("to {to:?}: {x}"))?);
    }
    for (k, v) in headers {
        let name =
            HeaderName::new_from_ascii(k.clone()).map_err(|x| format!("header {k:?}: {x}"))?;
        m = m.raw_header(HeaderValue::new(name, v));
    }
    let msg = m
        .body(body)
        .map_err(|x| format!("building the email: {x}"))?;
    match tokio::time::timeout(timeout, transport.send(msg)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(x)) => Err(format!("smtp://{host}:{port}: {x}")),
        Err(_) => Err(format!(
            "smtp://{host}:{port}: timed out after {} ms",
            s.settings.webhook_timeout_ms
        )),
    }
}

/// Send one notification with retries and backoff (each attempt bounded);
/// log it in the store once delivered. Runs in its own task: a failing
/// receiver never delays the others.
async fn deliver(s: Arc<Shared>, mut store: Store, n: Notification) {
    let mut backoff = s.settings.min_backoff_ms.max(1);
    let mut delivered = false;
    let mut last_err = String::new();
    let kind = n.integration.kind();
    let target = n.integration.target();
    for attempt in 1..=s.settings.max_notification_attempts {
        match send_once(&s, &n).await {
            Ok(()) => {
                delivered = true;
                break;
            }
            Err(e) => last_err = e,
        }
        s.stats
            .notification_failures
            .fetch_add(1, Ordering::Relaxed);
        s.count_integration(kind, &n.entry.receiver, false);
        tracing::warn!(integration = kind, receiver = %n.entry.receiver, target = %target, attempt, error = %last_err, "alerting: notification failed; retrying");
        if !(s.host.is_leader)() || attempt == s.settings.max_notification_attempts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(backoff)).await;
        backoff = (backoff * 2).min(s.settings.max_backoff_ms);
    }
    if delivered {
        s.stats.notifications.fetch_add(1, Ordering::Relaxed);
        s.count_integration(kind, &n.entry.receiver, true);
        s.nflog
            .lock()
            .unwrap()
            .insert(n.nflog_key.clone(), n.entry.clone());
        // Sent first, logged second: a leader dying between the two sends it once more (never zero times).
        for _ in 0..3 {
            if store
                .put(
                    &format!("nflog/{}", n.nflog_key),
                    serde_json::to_vec(&n.entry).expect("encodes"),
                )
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        let mut labels = Labels::new();
        labels.insert("receiver".into(), n.entry.receiver.clone());
        labels.insert("integration".into(), kind.into());
        let mut e = Event::new(
            now_ms(),
            "notification_failed",
            &s.settings.member,
            format!(
                "group {} to {kind} {target} failed after {} attempts: {last_err}",
                n.entry.group_key, s.settings.max_notification_attempts
            ),
        );
        e.labels = labels;
        let _ = store.record_event(&e).await;
    }
    s.busy.lock().unwrap().remove(&n.nflog_key);
}

// ---- HTTP API ----

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(x)) => {
                out.push(x);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn params(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn param<'a>(ps: &'a [(String, String)], k: &str) -> Option<&'a str> {
    ps.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

/// A Prometheus API time: unix seconds (float) or RFC 3339.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        return Ok((f * 1000.0).round() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
        .map_err(|_| format!("cannot parse {s:?} to a valid timestamp"))
}

fn parse_step(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        return Ok((f * 1000.0).round() as i64);
    }
    crate::duration::parse_ms(s).map(|x| x as i64)
}

type Reply = Response<Full<Bytes>>;

fn json(status: StatusCode, v: serde_json::Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("valid response")
}

fn ok(data: serde_json::Value) -> Reply {
    json(
        StatusCode::OK,
        serde_json::json!({"status": "success", "data": data}),
    )
}

fn bad(kind: &str, msg: impl std::fmt::Display) -> Reply {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"status": "error", "errorType": kind, "error": msg.to_string()}),
    )
}

async fn serve_api(listener: tokio::net::TcpListener, s: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let s = s.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let s = s.clone();
                async move { Ok::<_, Infallible>(handle(s, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Largest request body of the API.
pub const MAX_API_BODY_BYTES: usize = 1024 * 1024;

async fn handle(s: Arc<Shared>, req: Request<hyper::body::Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let mut ps = params(req.uri().query().unwrap_or(""));
    let body = match http_body_util::Limited::new(req.into_body(), MAX_API_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return bad(
                "bad_data",
                format!("body rejected (max {MAX_API_BODY_BYTES} bytes): {e}"),
            )
        }
    };
    if method == hyper::Method::POST
        && path.starts_with("/api/v1/")
        && !path.starts_with("/api/v1/silences")
    {
        ps.extend(params(&String::from_utf8_lossy(&body)));
    }
    let now = now_ms();
    match (method.as_str(), path.as_str()) {
        ("GET", "/metrics") => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(own_metrics(&s))))
            .expect("valid"),
        (_, "/api/v1/query") => {
            let Some(q) = param(&ps, "query") else {
                return bad("bad_data", "missing parameter `query`");
            };
            let t = match param(&ps, "time").map(parse_time).transpose() {
                Ok(t) => t.unwrap_or(now),
                Err(e) => return bad("bad_data", format!("invalid parameter `time`: {e}")),
            };
            let e = match promql::parse(q) {
                Ok(e) => e,
                Err(e) => return bad("bad_data", e),
            };
            let db = s.tsdb.lock().unwrap();
            match (Engine {
                db: &db,
                lookback_ms: s.settings.lookback_ms,
            })
            .instant(&e, t)
            {
                Ok(v) => ok(promql::value_json(&v, t)),
                Err(e) => bad("execution", e),
            }
        }
        (_, "/api/v1/query_range") => {
            let Some(q) = param(&ps, "query") else {
                return bad("bad_data", "missing parameter `query`");
            };
            let get = |k: &str, f: fn(&str) -> Result<i64, String>| -> Result<i64, String> {
                f(param(&ps, k).ok_or_else(|| format!("missing parameter `{k}`"))?)
                    .map_err(|e| format!("invalid parameter `{k}`: {e}"))
            };
            let (start, end, step) = match (
                get("start", parse_time),
                get("end", parse_time),
                get("step", parse_step),
            ) {
                (Ok(a), Ok(b), Ok(c)) => (a, b, c),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad("bad_data", e),
            };
            let e = match promql::parse(q) {
                Ok(e) => e,
                Err(e) => return bad("bad_data", e),
            };
            let db = s.tsdb.lock().unwrap();
            match (Engine {
                db: &db,
                lookback_ms: s.settings.lookback_ms,
            })
            .range(&e, start, end, step)
            {
                Ok(m) => ok(promql::matrix_json(&m)),
                Err(e) => bad("execution", e),
            }
        }
        (_, "/api/v1/series") => {
            let sels: Vec<&str> = ps
                .iter()
                .filter(|(k, _)| k == "match[]")
                .map(|(_, v)| v.as_str())
                .collect();
            if sels.is_empty() {
                return bad("bad_data", "no match[] parameter provided");
            }
            let start = param(&ps, "start")
                .map(parse_time)
                .transpose()
                .unwrap_or(None)
                .unwrap_or(i64::MIN);
            let end = param(&ps, "end")
                .map(parse_time)
                .transpose()
                .unwrap_or(None)
                .unwrap_or(i64::MAX);
            let mut selectors = Vec::new();
            for sel in sels {
                match promql::parse(sel) {
                    Ok(promql_parser::parser::Expr::VectorSelector(vs)) => selectors.push(vs),
                    Ok(_) => {
                        return bad(
                            "bad_data",
                            format!("match[] {sel:?}: expected a series selector"),
                        )
                    }
                    Err(e) => return bad("bad_data", e),
                }
            }
            let db = s.tsdb.lock().unwrap();
            let out: Vec<&Labels> = db
                .select(|l| {
                    selectors.iter().any(|vs| {
                        vs.name
                            .as_ref()
                            .is_none_or(|n| l.get("__name__") == Some(n))
                            && vs.matchers.matchers.iter().all(|m| {
                                m.is_match(l.get(&m.name).map(String::as_str).unwrap_or(""))
                            })
                    })
                })
                .filter(|(_, smp)| smp.iter().any(|(t, _)| *t >= start && *t <= end))
                .map(|(l, _)| l)
                .collect();
            ok(serde_json::json!(out))
        }
        (_, "/api/v1/labels") => ok(serde_json::json!(s.tsdb.lock().unwrap().label_names())),
        ("GET", p) if p.starts_with("/api/v1/label/") && p.ends_with("/values") => {
            let name = &p["/api/v1/label/".len()..p.len() - "/values".len()];
            let db = s.tsdb.lock().unwrap();
            let mut v: Vec<String> = db
                .select(|l| l.contains_key(name))
                .map(|(l, _)| l[name].clone())
                .collect();
            v.sort();
            v.dedup();
            ok(serde_json::json!(v))
        }
        ("GET", "/api/v1/rules") => {
            let rules = s.rules_in_force.lock().unwrap().clone();
            ok(
                serde_json::json!({"groups": [{"name": "in force", "rules": rules.iter().map(|r| serde_json::json!({
                "type": "alerting", "name": r.alert, "group": r.group, "query": r.expr_text, "duration": r.for_ms as f64 / 1000.0,
                "keepFiringFor": r.keep_firing_for_ms as f64 / 1000.0, "labels": r.labels, "annotations": r.annotations
            })).collect::<Vec<_>>()}]}),
            )
        }
        ("GET", "/api/v1/alerts")
        | ("GET", "/api/v1/silences")
        | ("POST", "/api/v1/silences")
        | ("GET", "/api/v1/events") => store_api(&s, method.as_str(), &path, &ps, &body, now).await,
        ("DELETE", p) if p.starts_with("/api/v1/silence/") => {
            store_api(&s, "DELETE", p, &ps, &body, now).await
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"status": "error", "errorType": "not_found", "error": format!("{method} {path}: try /api/v1/query, /api/v1/query_range, /api/v1/series, /api/v1/labels, /api/v1/alerts, /api/v1/rules, /api/v1/silences, /api/v1/events, /metrics")}),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SilenceRequest {
    matchers: Vec<String>,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default)]
    duration: Option<String>,
    created_by: String,
    comment: String,
}

/// Build a silence from the API/CLI request fields.
pub fn silence_from(
    matchers: Vec<String>,
    starts_at_ms: Option<i64>,
    ends_at_ms: Option<i64>,
    duration_ms: Option<u64>,
    created_by: String,
    comment: String,
    now: i64,
) -> Result<Silence, String> {
    let starts = starts_at_ms.unwrap_or(now);
    let ends = match (ends_at_ms, duration_ms) {
        (Some(e), _) => e,
        (None, Some(d)) => starts + d as i64,
        (None, None) => return Err("a silence needs endsAt or duration".into()),
    };
    let s = Silence {
        id: String::new(),
        matchers,
        starts_at_ms: starts,
        ends_at_ms: ends,
        created_by,
        comment,
    };
    s.validate()?;
    Ok(s)
}

async fn store_api(
    s: &Shared,
    method: &str,
    path: &str,
    ps: &[(String, String)],
    body: &[u8],
    now: i64,
) -> Reply {
    let mut store = match Store::connect_settings(&s.settings).await {
        Ok(st) => st,
        Err(e) => {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "error", "errorType": "unavailable", "error": e.to_string()}),
            )
        }
    };
    let unavailable = |e: StoreError| {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "error", "errorType": "unavailable", "error": e.to_string()}),
        )
    };
    match (method, path) {
        ("GET", "/api/v1/alerts") => match store.alert_state().await {
            Ok(st) => ok(
                serde_json::json!({"alerts": st.alerts.values().map(|a| serde_json::json!({
                "labels": a.labels, "annotations": a.annotations, "state": a.state, "activeAt": a.active_at_ms as f64 / 1000.0,
                "firedAt": a.fired_at_ms.map(|x| x as f64 / 1000.0), "resolvedAt": a.resolved_at_ms.map(|x| x as f64 / 1000.0),
                "value": promql::format_value(a.value), "fingerprint": rules::fingerprint(&a.labels)
            })).collect::<Vec<_>>(), "evaluatedAt": st.evaluated_at_ms as f64 / 1000.0}),
            ),
            Err(e) => unavailable(e),
        },
        ("GET", "/api/v1/silences") => match store.silences().await {
            Ok(list) => ok(serde_json::json!(list
                .iter()
                .map(|x| {
                    let mut v = serde_json::to_value(x).expect("encodes");
                    v["state"] = x.state(now).into();
                    v
                })
                .collect::<Vec<_>>())),
            Err(e) => unavailable(e),
        },
        ("POST", "/api/v1/silences") => {
            let r: SilenceRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => return bad("bad_data", format!("silence: {e}")),
            };
            let t = |v: &Option<String>, f: &str| {
                v.as_deref()
                    .map(parse_time)
                    .transpose()
                    .map_err(|e| format!("field `{f}`: {e}"))
            };
            let d = r
                .duration
                .as_deref()
                .map(crate::duration::parse_ms)
                .transpose()
                .map_err(|e| format!("field `duration`: {e}"));
            let sil = match (t(&r.starts_at, "startsAt"), t(&r.ends_at, "endsAt"), d) {
                (Ok(a), Ok(b), Ok(d)) => {
                    silence_from(r.matchers, a, b, d, r.created_by, r.comment, now)
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
            };
            let sil = match sil {
                Ok(x) => x,
                Err(e) => return bad("bad_data", e),
            };
            match store.add_silence(sil, &s.settings.member).await {
                Ok(id) => ok(serde_json::json!({"silenceID": id})),
                Err(StoreError::BadRequest(e)) => bad("bad_data", e),
                Err(e) => unavailable(e),
            }
        }
        ("DELETE", p) => match store
            .expire_silence(&p["/api/v1/silence/".len()..], &s.settings.member)
            .await
        {
            Ok(_) => ok(serde_json::json!({})),
            Err(StoreError::NotFound(e)) => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"status": "error", "errorType": "not_found", "error": e}),
            ),
            Err(e) => unavailable(e),
        },
        ("GET", "/api/v1/events") => {
            let since = match param(ps, "since")
                .map(|x| crate::duration::parse_since(x, now))
                .transpose()
            {
                Ok(x) => x.unwrap_or(0),
                Err(e) => return bad("bad_data", e),
            };
            let limit = param(ps, "limit")
                .and_then(|x| x.parse().ok())
                .unwrap_or(1000i64);
            match store.events_since(since, limit).await {
                Ok((ev, _)) => ok(serde_json::json!(ev)),
                Err(e) => unavailable(e),
            }
        }
        _ => bad("bad_data", "unknown endpoint"),
    }
}
