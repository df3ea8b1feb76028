//! `phalanx alerting …` and `phalanx events`: the alerting keys in the
//! replicated store (rules, alertmanager.yml, silences, alerts, the event
//! timeline), and the member hook that starts a node's alerting
//! (`--enable-alerting`, `--alerting-*` flags of `phalanx node`). All
//! behaviour lives in the `alerting` crate (docs/alerting.md).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

/// Where the store is.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Client URLs of the store (comma-separated)
    #[arg(
        long,
        env = "PHALANX_ENDPOINTS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: String,
    /// Store prefix of the alerting keys
    #[arg(long, default_value = alerting::store::DEFAULT_PREFIX)]
    pub prefix: String,
    #[command(flatten)]
    pub security: super::client::SecurityArgs,
}

impl StoreArgs {
    async fn connect(&self) -> anyhow::Result<alerting::store::Store> {
        let eps: Vec<String> = self
            .endpoints
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let security = self.security.load()?;
        if security.user().is_none() {
            return alerting::store::Store::connect_with(&eps, &self.prefix, |o| {
                security.options(o, &eps)
            })
            .await
            .with_context(|| format!("connecting to {}", self.endpoints));
        }
        // With a user: one member at a time (simple tokens are member-local,
        // see client_security::ClientSecurity::connect).
        let mut last = None;
        for ep in &eps {
            let one = [ep.clone()];
            match alerting::store::Store::connect_with(&one, &self.prefix, |o| {
                security.options(o, &one)
            })
            .await
            {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("--endpoints is empty")))
        .with_context(|| format!("connecting to {}", self.endpoints))
    }
}

/// `phalanx alerting …` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AlertingCommand {
    /// Alerting rules (Prometheus rule-file YAML)
    #[command(subcommand)]
    Rules(DocCommand),
    /// Notification configuration (alertmanager.yml subset)
    #[command(subcommand)]
    Config(DocCommand),
    /// Your own services' metrics endpoints, scraped by the leader into the
    /// history (Prometheus `scrape_configs` with `static_configs`)
    #[command(subcommand)]
    Targets(DocCommand),
    /// Silences: add, expire, list
    #[command(subcommand)]
    Silence(SilenceCommand),
    /// List the alerts the leader keeps (pending, firing, recently resolved)
    Alerts {
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

/// Commands on one configuration document.
#[derive(clap::Subcommand, Debug)]
pub enum DocCommand {
    /// Validate FILE and store it (refused with line and field if invalid; the one in force stays)
    Set {
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the stored document (or say the defaults are in force)
    Show {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Validate FILE without storing it
    Check { file: PathBuf },
}

#[derive(clap::Subcommand, Debug)]
pub enum SilenceCommand {
    /// Add a silence
    Add {
        /// Label matcher, e.g. `member="n2"` or `alertname=~"Phalanx.*"` (repeatable)
        #[arg(long = "matcher", required = true)]
        matchers: Vec<String>,
        /// How long it lasts (e.g. 2h)
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Who adds it
        #[arg(long, env = "USER")]
        creator: String,
        /// Why
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Expire a silence now
    Expire {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List silences
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
}

/// `phalanx events`: the event timeline.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Only events since: a duration ago (`10m`), unix ms or RFC 3339
    #[arg(long)]
    pub since: Option<String>,
    /// Keep printing new events as they are recorded
    #[arg(long)]
    pub follow: bool,
    /// Print one JSON object per line
    #[arg(long)]
    pub json: bool,
    /// Most events printed (before following)
    #[arg(long, default_value_t = 10_000)]
    pub limit: i64,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn read(file: &PathBuf) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok((file.display().to_string(), text))
}

fn who() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".into())
}

/// Runs one `phalanx alerting` subcommand.
pub fn run(cmd: AlertingCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match cmd {
            AlertingCommand::Rules(DocCommand::Check { file }) => {
                let (name, text) = read(&file)?;
                let r = alerting::rules::parse_rules(&name, &text)?;
                println!("{name}: {} alerting rules, valid", r.len());
            }
            AlertingCommand::Rules(DocCommand::Set { file, store }) => {
                let (name, text) = read(&file)?;
                let rev = store.connect().await?.set_rules(&name, &text, &who()).await?;
                println!("rules stored at {}/rules (revision {rev})", store.prefix);
            }
            AlertingCommand::Rules(DocCommand::Show { store }) => match store.connect().await?.get("rules").await? {
                Some((v, _)) => print!("{}", String::from_utf8_lossy(&v)),
                None => print!("# no rule file stored: the default rules are in force\n{}", alerting::rules::DEFAULT_RULES),
            },
            AlertingCommand::Config(DocCommand::Check { file }) => {
                let (name, text) = read(&file)?;
                let c = alerting::notify::parse_am_config(&name, &text)?;
                println!("{name}: {} receivers, valid", c.receivers.len());
            }
            AlertingCommand::Config(DocCommand::Set { file, store }) => {
                let (name, text) = read(&file)?;
                let rev = store.connect().await?.set_am_config(&name, &text, &who()).await?;
                println!("alertmanager configuration stored at {}/alertmanager (revision {rev})", store.prefix);
            }
            AlertingCommand::Config(DocCommand::Show { store }) => match store.connect().await?.get("alertmanager").await? {
                Some((v, _)) => print!("{}", String::from_utf8_lossy(&v)),
                None => println!("# no alertmanager configuration stored: alerts are kept and listed, nothing is sent"),
            },
            AlertingCommand::Targets(DocCommand::Check { file }) => {
                let (name, text) = read(&file)?;
                let t = alerting::targets::parse_targets(&name, &text)?;
                println!("{name}: {} scrape targets, valid", t.len());
            }
            AlertingCommand::Targets(DocCommand::Set { file, store }) => {
                let (name, text) = read(&file)?;
                let rev = store.connect().await?.set_targets(&name, &text, &who()).await?;
                println!("scrape targets stored at {}/targets (revision {rev})", store.prefix);
            }
            AlertingCommand::Targets(DocCommand::Show { store }) => match store.connect().await?.get("targets").await? {
                Some((v, _)) => print!("{}", String::from_utf8_lossy(&v)),
                None => println!("# no scrape targets stored: only the members are scraped"),
            },
            AlertingCommand::Silence(SilenceCommand::Add { matchers, duration, creator, comment, store }) => {
                let d = alerting::duration::parse_ms(&duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
                let now = alerting::store::now_ms();
                let s = alerting::service::silence_from(matchers, None, None, Some(d), creator.clone(), comment, now).map_err(|e| anyhow::anyhow!("{e}"))?;
                let id = store.connect().await?.add_silence(s, &creator).await?;
                println!("{id}");
            }
            AlertingCommand::Silence(SilenceCommand::Expire { id, store }) => {
                store.connect().await?.expire_silence(&id, &who()).await?;
                println!("silence {id} expired");
            }
            AlertingCommand::Silence(SilenceCommand::List { store, json }) => {
                let now = alerting::store::now_ms();
                for s in store.connect().await?.silences().await? {
                    if json {
                        println!("{}", serde_json::to_string(&s)?);
                    } else {
                        println!("{} {:<8} until {} by {}: {} ({})", s.id, s.state(now), alerting::events::Event::new(s.ends_at_ms, "", "", "").line().split(' ').next().unwrap_or(""), s.created_by, s.matchers.join(","), s.comment);
                    }
                }
            }
            AlertingCommand::Alerts { store, json } => {
                let st = store.connect().await?.alert_state().await?;
                for a in st.alerts.values() {
                    if json {
                        println!("{}", serde_json::to_string(a)?);
                    } else {
                        let labels: Vec<String> = a.labels.iter().filter(|(k, _)| *k != "alertname").map(|(k, v)| format!("{k}={v}")).collect();
                        println!("{:<8} {} {{{}}} {}", format!("{:?}", a.state).to_lowercase(), a.name(), labels.join(","), a.annotations.get("summary").cloned().unwrap_or_default());
                    }
                }
            }
        }
        Ok(())
    })
}

/// Runs `phalanx events`.
pub fn run_events(args: EventsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let now = alerting::store::now_ms();
        let since = match &args.since {
            Some(s) => alerting::duration::parse_since(s, now)
                .map_err(|e| anyhow::anyhow!("--since: {e}"))?,
            None => 0,
        };
        let mut store = args.store.connect().await?;
        let (events, rev) = store.events_since(since, args.limit).await?;
        let print = |e: &alerting::events::Event| {
            if args.json {
                println!("{}", serde_json::to_string(e).expect("encodes"));
            } else {
                println!("{}", e.line());
            }
        };
        events.iter().for_each(print);
        if args.follow {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            store
                .follow_events(rev + 1, |e| {
                    print(&e);
                    let _ = std::io::stdout().flush();
                })
                .await?;
        }
        Ok(())
    })
}

/// `phalanx node`'s alerting flags.
#[derive(clap::Args, Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeAlertingArgs {
    /// Run the metrics history and alerting on this member (the default; `=false` turns it off)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub enable_alerting: Option<bool>,
    /// Run no metrics history and no alerting on this member (alerting is on by default)
    #[arg(long, conflicts_with_all = ["enable_alerting", "alerting_listen"])]
    #[serde(default)]
    pub disable_alerting: bool,
    /// Address of the alerting HTTP API (Prometheus /api/v1/query…, alerts, silences, events)
    #[arg(long)]
    pub alerting_listen: Option<std::net::SocketAddr>,
    /// How often (ms) the member records its own metrics (default 5000)
    #[arg(long)]
    pub alerting_scrape_interval_ms: Option<u64>,
    /// How often (ms) the leader scrapes every member and evaluates the rules (default 5000)
    #[arg(long)]
    pub alerting_evaluation_interval_ms: Option<u64>,
    /// Metrics history retention (ms, default 24 h)
    #[arg(long)]
    pub alerting_retention_ms: Option<i64>,
    /// Most series in the metrics history (default 10000); new series past it are refused and counted
    #[arg(long)]
    pub alerting_max_series: Option<usize>,
    /// Most bytes of samples in the metrics history (default 256 MiB; 16 bytes a sample)
    #[arg(long)]
    pub alerting_max_samples_bytes: Option<usize>,
    /// Default rules to switch off (comma-separated alert names, or `all`)
    #[arg(long)]
    pub alerting_disable_default_rules: Option<String>,
    /// Anomaly score (between 0 and 1) above which the default anomaly rules fire; higher alerts less (default 0.9)
    #[arg(long)]
    pub alerting_anomaly_sensitivity: Option<f64>,
    /// Most events in the timeline (default 10000)
    #[arg(long)]
    pub alerting_max_events: Option<usize>,
    /// Age (ms) past which events are dropped (default 7 days)
    #[arg(long)]
    pub alerting_event_retention_ms: Option<i64>,
    /// Bound (ms) on one notification attempt: an HTTP POST or a whole SMTP exchange (default 5000)
    #[arg(long)]
    pub alerting_notification_timeout_ms: Option<u64>,
    /// Attempts of one notification before it is given up until the group's next interval (default 8)
    #[arg(long)]
    pub alerting_notification_attempts: Option<u32>,
    /// Largest delay (ms) between attempts; the first is 100 ms, doubling (default 5000)
    #[arg(long)]
    pub alerting_notification_max_backoff_ms: Option<u64>,
}

/// Start a member's alerting if asked (the node hook).
#[allow(clippy::too_many_arguments)] // wiring: one argument per node setting it needs
pub async fn start_for_node(
    a: &NodeAlertingArgs,
    name: &str,
    client_endpoints: Vec<String>,
    metrics_listen: Option<&str>,
    quota_backend_bytes: u64,
    node: Arc<consensus::Node>,
    metrics: Arc<etcd_api::metrics::Metrics>,
    gateway: Option<gateway::GatewayHandle>,
    internal: etcd_api::InternalChannel,
) -> anyhow::Result<Option<alerting::AlertingHandle>> {
    if a.enable_alerting == Some(false) && a.alerting_listen.is_some() {
        anyhow::bail!("--enable-alerting=false conflicts with --alerting-listen: the API needs the alerting on");
    }
    if a.disable_alerting || a.enable_alerting == Some(false) {
        return Ok(None);
    }
    let mut s = alerting::Settings::new(name, client_endpoints);
    // The store through the member's in-process channel (works with
    // https-only client URLs, --client-cert-auth and auth enabled).
    s.channel = Some(internal);
    s.listen = a.alerting_listen;
    s.metrics_url = metrics_listen.and_then(|m| m.split(',').next()).map(|u| {
        let u = u
            .trim()
            .trim_end_matches('/')
            .replace("://0.0.0.0:", "://127.0.0.1:")
            .replace("://localhost:", "://127.0.0.1:");
        format!("{u}/metrics")
    });
    if let Some(v) = a.alerting_scrape_interval_ms {
        s.scrape_interval_ms = v;
    }
    if let Some(v) = a.alerting_evaluation_interval_ms {
        s.evaluation_interval_ms = v;
        s.scrape_timeout_ms = s.scrape_timeout_ms.min(v.max(100));
    }
    if let Some(v) = a.alerting_retention_ms {
        s.tsdb.retention_ms = v;
    }
    if let Some(v) = a.alerting_max_series {
        s.tsdb.max_series = v;
    }
    if let Some(v) = a.alerting_max_samples_bytes {
        s.tsdb.max_samples_bytes = v;
    }
    if let Some(v) = &a.alerting_disable_default_rules {
        s.disabled_default_rules = v
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        let known: Vec<String> = alerting::rules::default_rules()
            .into_iter()
            .map(|r| r.alert)
            .collect();
        if let Some(bad) = s
            .disabled_default_rules
            .iter()
            .find(|d| *d != "all" && !known.contains(d))
        {
            anyhow::bail!(
                "--alerting-disable-default-rules: {bad:?} is not a default rule (known: all, {})",
                known.join(", ")
            );
        }
    }
    if let Some(v) = a.alerting_anomaly_sensitivity {
        // Checked before the member starts (node_cmd).
        s.anomaly_sensitivity = v;
    }
    if let Some(v) = a.alerting_max_events {
        s.max_events = v;
    }
    if let Some(v) = a.alerting_event_retention_ms {
        s.event_retention_ms = v;
    }
    for (flag, v) in [
        (
            "--alerting-notification-timeout-ms",
            a.alerting_notification_timeout_ms,
        ),
        (
            "--alerting-notification-attempts",
            a.alerting_notification_attempts.map(u64::from),
        ),
        (
            "--alerting-notification-max-backoff-ms",
            a.alerting_notification_max_backoff_ms,
        ),
    ] {
        if v == Some(0) {
            anyhow::bail!("{flag}: must be at least 1");
        }
    }
    if let Some(v) = a.alerting_notification_timeout_ms {
        s.webhook_timeout_ms = v;
    }
    if let Some(v) = a.alerting_notification_attempts {
        s.max_notification_attempts = v;
    }
    if let Some(v) = a.alerting_notification_max_backoff_ms {
        s.max_backoff_ms = v;
    }
    s.quota_backend_bytes = quota_backend_bytes;
    // Series the rules need on the member's /metrics (so the leader, and any
    // Prometheus, scrape them): its wall clock, and its gateway's series.
    metrics.add_text_source(Arc::new(move || {
        let mut out = alerting::service::wall_clock_text();
        if let Some(g) = &gateway {
            out.push_str(&gateway_text(g));
        }
        out
    }));
    let n1 = node.clone();
    let host = alerting::Host {
        local_metrics: Arc::new(move || metrics.render(&node)),
        is_leader: Arc::new(move || n1.status().leader == Some(n1.id())),
    };
    let listen = s.listen;
    let h = alerting::start(s, host)
        .await
        .context("starting alerting")?;
    eprintln!(
        "phalanx node {name}: alerting on{}",
        listen
            .map(|l| format!(", API on http://{l}"))
            .unwrap_or_default()
    );
    Ok(Some(h))
}

/// The gateway's series, plus `phalanx_gateway_pool_on_backup{pool}`: 1 when
/// a pool with backup pools has no available endpoint of its own while a
/// backup pool has one (its traffic goes to the backups).
fn gateway_text(g: &gateway::GatewayHandle) -> String {
    let mut out: String = g
        .metrics_text()
        .lines()
        .filter(|l| !l.starts_with("# EOF"))
        .map(|l| format!("{l}\n"))
        .collect();
    let pools = g.pools_json();
    let list = pools["pools"].as_array().cloned().unwrap_or_default();
    let available = |name: &str| {
        list.iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["endpoints"].as_array())
            .is_some_and(|e| e.iter().any(|x| x["available"] == true))
    };
    let name = "phalanx_gateway_pool_on_backup";
    out.push_str(&format!("# HELP {name} 1 when none of the pool's endpoints is available and a backup pool serves its traffic\n# TYPE {name} gauge\n"));
    for p in &list {
        let backups: Vec<&str> = p["backups"]
            .as_array()
            .map(|b| b.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if backups.is_empty() {
            continue;
        }
        let pool = p["name"].as_str().unwrap_or("");
        let on = !available(pool) && backups.iter().any(|b| available(b));
        out.push_str(&format!(
            "{name}{{pool=\"{}\"}} {}\n",
            pool.replace('\\', "\\\\").replace('"', "\\\""),
            u8::from(on)
        ));
    }
    out
}
