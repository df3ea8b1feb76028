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
}

impl StoreArgs {
    async fn connect(&self) -> anyhow::Result<alerting::store::Store> {
        let eps: Vec<String> = self
            .endpoints
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        alerting::store::Store::connect(&eps, &self.prefix)
            .await
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
#[serde(rename_all = "kebab-case")]
pub struct NodeAlertingArgs {
    /// Run the metrics history and alerting on this member (implied by --alerting-listen)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub enable_alerting: Option<bool>,
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
    /// Most events in the timeline (default 10000)
    #[arg(long)]
    pub alerting_max_events: Option<usize>,
    /// Age (ms) past which events are dropped (default 7 days)
    #[arg(long)]
    pub alerting_event_retention_ms: Option<i64>,
}

/// Start a member's alerting if asked (the node hook).
pub async fn start_for_node(
    a: &NodeAlertingArgs,
    name: &str,
    client_endpoints: Vec<String>,
    metrics_listen: Option<&str>,
    quota_backend_bytes: u64,
    node: Arc<consensus::Node>,
    metrics: Arc<etcd_api::metrics::Metrics>,
) -> anyhow::Result<Option<alerting::AlertingHandle>> {
    if !a.enable_alerting.unwrap_or(a.alerting_listen.is_some()) {
        return Ok(None);
    }
    let mut s = alerting::Settings::new(name, client_endpoints);
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
    if let Some(v) = a.alerting_max_events {
        s.max_events = v;
    }
    if let Some(v) = a.alerting_event_retention_ms {
        s.event_retention_ms = v;
    }
    s.quota_backend_bytes = quota_backend_bytes;
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
