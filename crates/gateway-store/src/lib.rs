//! `gateway-store`: gateway configuration kept in the replicated store (etcd
//! v3 API), applied live on every node. It joins the `gateway` crate (which
//! knows nothing of the store) to an etcd v3 client.
//!
//! Main types: [`StoreBackedGateway`] (a running gateway and its watcher,
//! from [`run_store_backed`]), [`StoreBackedOptions`] (node-local settings),
//! [`StoreConfigError`]; [`write_document`] validates and writes a document.
//!
//! One key (default `/phalanx/gateway/config`) holds a TOML document with the
//! schema of [`Config`]. Every node running a store-backed gateway gets the
//! key, starts its gateway, then watches the key and applies every change
//! with [`GatewayHandle::apply_config`] (no connection is dropped).
//!
//! Node-local settings override the shared document:
//! * the listener named `default` is bound to the node's own listen address
//!   (`--gateway-listen`); if the document has no `default` listener, one
//!   with default settings is added. Other listeners are bound as written.
//! * `admin_listen` is the node's own (`--gateway-admin-listen`); the value in
//!   the document is ignored.
//!
//! Key absent (or deleted) → an empty configuration: the listener answers
//! every request `503 no route`. A document that does not parse or validate,
//! or that cannot be applied (e.g. a bind error), is rejected: it is logged
//! with the field and the reason, the configuration in force stays, and the
//! outcome is written as JSON to the sibling key `<key>/status/<node-name>`
//! (`{"node", "state": "applied" | "rejected" | "empty", "revision",
//! "error", "in_force_revision"}`), where an operator can read it with
//! `etcdctl get --prefix <key>/status/`.
//!
//! State machine of the watcher task:
//!
//! ```text
//! Connect ──ok──▶ Sync (get key, apply) ──▶ Watch (from revision+1) ──event──▶ apply ─┐
//!    ▲  └─err─▶ Backoff (100 ms doubling, ≤ 5 s)                      ▲──────────────┘
//!    └────────────┘            stream error / end ─▶ Backoff ─▶ Connect ─▶ Watch (resume from last revision+1)
//!                              watch compacted     ─▶ Sync again
//! ```

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, WatchOptions};
use tokio::sync::watch;

use gateway::config::{Config, ConfigError, ListenerConfig, PoolConfig, RouteConfig};
use gateway::{Gateway, GatewayHandle};

/// Why a store-backed gateway could not start, or a watch session ended.
#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    /// The document does not parse or validate; nothing was written.
    #[error("refusing to write an invalid gateway configuration: {0}")]
    Invalid(#[source] ConfigError),
    /// A store request did not answer within its bound.
    #[error(
        "{0} timed out after {RPC_TIMEOUT:?}: is a store member reachable at the endpoints given?"
    )]
    Timeout(&'static str),
    /// The store answered with an error.
    #[error("store: {0}")]
    Store(#[from] etcd_client::Error),
    /// The gateway could not start (e.g. a bind error).
    #[error("starting the gateway: {0}")]
    Start(#[source] ConfigError),
    /// The watch stream ended without error; the watcher reconnects.
    #[error("watch stream ended")]
    WatchEnded,
    /// The store canceled the watch; the watcher reconnects (and reads the
    /// key again if history was compacted).
    #[error("watch canceled: {reason} (compact revision {compact_revision})")]
    WatchCanceled {
        reason: String,
        compact_revision: i64,
    },
}

/// A bounded store request: `what` names it in the timeout error.
async fn bounded<T>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreConfigError> {
    Ok(tokio::time::timeout(RPC_TIMEOUT, f)
        .await
        .map_err(|_| StoreConfigError::Timeout(what))??)
}

/// Default key of the shared gateway configuration.
pub const DEFAULT_KEY: &str = "/phalanx/gateway/config";

/// Name of the node-local listener bound to the node's listen address.
pub const LOCAL_LISTENER: &str = "default";

/// Node-local settings of a store-backed gateway.
#[derive(Debug, Clone)]
pub struct StoreBackedOptions {
    /// Node name, used in the status key `<key>/status/<node_name>`.
    pub node_name: String,
    /// Address of the `default` listener on this node.
    pub listen: SocketAddr,
    /// Admin endpoint of this node's gateway (overrides the document's).
    pub admin_listen: Option<SocketAddr>,
    /// This node's zone (overrides the document's `zone`, which every
    /// member shares; see the gateway's `zone_routing`).
    pub zone: Option<String>,
}

/// Outcome of the last configuration change seen in the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreStatus {
    /// Node name.
    pub node: String,
    /// `starting`, `applied`, `rejected` or `empty` (key absent: 503 to every request).
    pub state: String,
    /// Store revision of the change this status is about (0 = not yet synced).
    pub revision: i64,
    /// Why the change was rejected.
    pub error: Option<String>,
    /// Store revision of the configuration in force (0 = empty / initial).
    pub in_force_revision: i64,
}

/// A running store-backed gateway: the gateway and its watcher task.
pub struct StoreBackedGateway {
    gateway: GatewayHandle,
    status: watch::Receiver<StoreStatus>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StoreBackedGateway {
    /// The gateway.
    pub fn gateway(&self) -> &GatewayHandle {
        &self.gateway
    }

    /// Outcome of the last configuration change.
    pub fn status(&self) -> StoreStatus {
        self.status.borrow().clone()
    }

    /// Stop watching the store, then drain the gateway (bounded by `drain_timeout_ms`).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.gateway.shutdown().await;
    }
}

/// The configuration served while the key is absent: the local listener and
/// one catch-all route to a pool without endpoints (every request → 503 `no route`).
pub fn empty_config(opts: &StoreBackedOptions) -> Config {
    let mut c = Config {
        listeners: vec![ListenerConfig {
            name: LOCAL_LISTENER.into(),
            address: opts.listen,
            ..Default::default()
        }],
        pools: vec![PoolConfig {
            name: "unconfigured".into(),
            panic_threshold_percent: 0,
            ..Default::default()
        }],
        routes: vec![RouteConfig {
            pool: "unconfigured".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    c.admin_listen = opts.admin_listen;
    c
}

/// Apply the node-local overrides (listener `default` address, `admin_listen`, `zone`).
pub fn localize(mut c: Config, opts: &StoreBackedOptions) -> Config {
    match c.listeners.iter_mut().find(|l| l.name == LOCAL_LISTENER) {
        Some(l) => l.address = opts.listen,
        None => c.listeners.insert(
            0,
            ListenerConfig {
                name: LOCAL_LISTENER.into(),
                address: opts.listen,
                ..Default::default()
            },
        ),
    }
    c.admin_listen = opts.admin_listen;
    if opts.zone.is_some() {
        c.zone = opts.zone.clone();
    }
    c
}

/// Parse a document from the store, apply the node-local overrides, validate.
pub fn parse_document(text: &str, opts: &StoreBackedOptions) -> Result<Config, ConfigError> {
    let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let c = localize(c, opts);
    c.validate()?;
    Ok(c)
}

/// Check that `text` is a valid store document (as any node would see it),
/// then write it at `key`; returns the store revision of the write.
pub async fn write_document(
    endpoints: &[String],
    key: &str,
    text: &str,
) -> Result<i64, StoreConfigError> {
    let probe = StoreBackedOptions {
        node_name: String::new(),
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: None,
        zone: None,
    };
    parse_document(text, &probe).map_err(StoreConfigError::Invalid)?;
    let mut c = connect(&StoreAccess::Endpoints(endpoints.to_vec())).await?;
    let r = bounded("put", c.put(key, text, None)).await?;
    Ok(r.header().map(|h| h.revision()).unwrap_or(0))
}

fn status_key(key: &str, node: &str) -> String {
    format!("{key}/status/{node}")
}

/// Reconnect backoff: the first retry after about this long, in ms ...
const BACKOFF_BASE_MS: u64 = 100;
/// ... doubling up to this, in ms (the gateway's own full-jitter backoff,
/// `gateway::layers::retry::backoff`).
const BACKOFF_MAX_MS: u64 = 5_000;
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// How a store-backed gateway reaches the store.
#[derive(Clone, Debug)]
pub enum StoreAccess {
    /// Client URLs (plain `http://`).
    Endpoints(Vec<String>),
    /// The member's in-process channel to its own etcd API
    /// (`etcd_api::internal_channel`): no TLS material or credentials
    /// needed, whatever the member's client listeners require.
    Channel(etcd_client::Channel),
}

async fn connect(access: &StoreAccess) -> Result<Client, StoreConfigError> {
    let endpoints = match access {
        StoreAccess::Endpoints(e) => e,
        StoreAccess::Channel(ch) => {
            return bounded(
                "connecting to the store",
                Client::from_channel(ch.clone(), None),
            )
            .await
        }
    };
    // No per-request timeout on the channel: it would end the watch stream.
    // Unary calls are bounded with tokio timeouts instead; keep-alive pings
    // detect a dead connection under an idle watch.
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    bounded(
        "connecting to the store",
        Client::connect(endpoints, Some(opts)),
    )
    .await
}

/// `(value, mod_revision)` of `key` (None if absent) and the store revision.
async fn get_key(
    c: &mut Client,
    key: &str,
) -> Result<(Option<(Vec<u8>, i64)>, i64), StoreConfigError> {
    let r = bounded("get", c.get(key, None)).await?;
    let rev = r.header().map(|h| h.revision()).unwrap_or(0);
    let v = r
        .kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision()));
    Ok((v, rev))
}

/// Start a gateway whose configuration lives at `key` in the store reachable
/// at `endpoints`, and keep it in sync (see the module documentation).
///
/// `initial` (node-local overrides applied) is served until the key has been
/// read — it is replaced by [`empty_config`] if the key turns out absent; if
/// None, the gateway starts empty. The first read is attempted before the
/// gateway starts (bounded to a few seconds) so that an existing
/// configuration is served from the first request.
pub async fn run_store_backed(
    endpoints: Vec<String>,
    key: String,
    initial: Option<Config>,
    opts: StoreBackedOptions,
) -> Result<StoreBackedGateway, StoreConfigError> {
    run_store_backed_via(StoreAccess::Endpoints(endpoints), key, initial, opts).await
}

/// [`run_store_backed`], reaching the store as `access` says (a member's
/// gateway uses its in-process channel).
pub async fn run_store_backed_via(
    access: StoreAccess,
    key: String,
    initial: Option<Config>,
    opts: StoreBackedOptions,
) -> Result<StoreBackedGateway, StoreConfigError> {
    let mut st = StoreStatus {
        node: opts.node_name.clone(),
        state: "starting".into(),
        revision: 0,
        error: None,
        in_force_revision: 0,
    };
    let mut start_cfg = initial
        .map(|c| localize(c, &opts))
        .unwrap_or_else(|| empty_config(&opts));
    let mut client = None;
    let mut rev = None;
    // First read, bounded: the store may still be electing a leader.
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = connect(&access).await?;
        let r = get_key(&mut c, &key).await?;
        Ok::<_, StoreConfigError>((c, r))
    })
    .await;
    if let Ok(Ok((c, (value, header_rev)))) = first {
        client = Some(c);
        rev = Some(header_rev);
        match value {
            None => {
                start_cfg = empty_config(&opts);
                st.state = "empty".into();
                st.revision = header_rev;
            }
            Some((v, mod_rev)) => {
                st.revision = mod_rev;
                match std::str::from_utf8(&v)
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse_document(t, &opts).map_err(|e| e.to_string()))
                {
                    Ok(c) => {
                        start_cfg = c;
                        st.state = "applied".into();
                        st.in_force_revision = mod_rev;
                    }
                    Err(e) => {
                        tracing::warn!(%key, revision = mod_rev, error = %e, "gateway configuration in the store rejected; starting with the initial configuration");
                        st.state = "rejected".into();
                        st.error = Some(e);
                    }
                }
            }
        }
    }
    // A document that validates may still fail to start (bind error): fall back.
    let gateway = match Gateway::start(start_cfg).await {
        Ok(g) => g,
        Err(e) if st.state == "applied" => {
            tracing::warn!(%key, error = %e, "gateway configuration in the store cannot be started; starting empty");
            st.state = "rejected".into();
            st.error = Some(e.to_string());
            st.in_force_revision = 0;
            Gateway::start(empty_config(&opts))
                .await
                .map_err(StoreConfigError::Start)?
        }
        Err(e) => return Err(StoreConfigError::Start(e)),
    };
    if let Some(c) = client.as_mut() {
        if st.state != "starting" {
            write_status(c, &key, &st).await;
        }
    }
    let (status_tx, status_rx) = watch::channel(st.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let w = Watcher {
        access,
        key,
        opts,
        gateway: gateway.clone(),
        status: status_tx,
        st,
    };
    let task = tokio::spawn(w.run(client, rev, stop_rx));
    Ok(StoreBackedGateway {
        gateway,
        status: status_rx,
        stop: stop_tx,
        task: Mutex::new(Some(task)),
    })
}

async fn write_status(c: &mut Client, key: &str, st: &StoreStatus) {
    let k = status_key(key, &st.node);
    let v = serde_json::to_string(st).unwrap_or_default();
    match tokio::time::timeout(RPC_TIMEOUT, c.put(k.clone(), v, None)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(key = %k, error = %e, "cannot write gateway status"),
        Err(_) => tracing::debug!(key = %k, "writing gateway status timed out"),
    }
}

struct Watcher {
    access: StoreAccess,
    key: String,
    opts: StoreBackedOptions,
    gateway: GatewayHandle,
    status: watch::Sender<StoreStatus>,
    st: StoreStatus,
}

impl Watcher {
    /// Apply one change (None = key deleted) seen at store revision `rev`.
    async fn apply(&mut self, c: &mut Client, value: Option<&[u8]>, rev: i64) {
        self.st.revision = rev;
        let result = match value {
            None => self
                .gateway
                .apply_config(empty_config(&self.opts))
                .map_err(|e| e.to_string())
                .map(|_| "empty"),
            Some(v) => std::str::from_utf8(v)
                .map_err(|e| format!("invalid configuration syntax: not UTF-8: {e}"))
                .and_then(|t| parse_document(t, &self.opts).map_err(|e| e.to_string()))
                .and_then(|cfg| self.gateway.apply_config(cfg).map_err(|e| e.to_string()))
                .map(|_| "applied"),
        };
        match result {
            Ok(state) => {
                tracing::info!(key = %self.key, revision = rev, state, "gateway configuration from the store applied");
                self.st.state = state.into();
                self.st.error = None;
                self.st.in_force_revision = if value.is_some() { rev } else { 0 };
            }
            Err(e) => {
                tracing::warn!(
                    key = %self.key, revision = rev, error = %e,
                    "gateway configuration rejected; the configuration in force stays"
                );
                self.st.state = "rejected".into();
                self.st.error = Some(e);
            }
        }
        self.status.send_replace(self.st.clone());
        write_status(c, &self.key, &self.st).await;
    }

    async fn run(
        mut self,
        mut client: Option<Client>,
        mut rev: Option<i64>,
        mut stop: watch::Receiver<bool>,
    ) {
        // Failed sessions in a row; a watch that gets created resets it.
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            let step = self
                .session(&mut client, &mut rev, &mut stop, &mut failures)
                .await;
            if let Err(e) = step {
                tracing::debug!(key = %self.key, error = %format!("{e:#}"), "store watch interrupted; reconnecting");
                client = None;
            }
            if *stop.borrow() {
                return;
            }
            failures = failures.saturating_add(1);
            let pause = gateway::layers::retry::backoff(failures, BACKOFF_BASE_MS, BACKOFF_MAX_MS);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Connect (if needed), sync (if needed), then follow the watch until it
    /// breaks. `rev` is the last store revision reflected in the gateway.
    async fn session(
        &mut self,
        client: &mut Option<Client>,
        rev: &mut Option<i64>,
        stop: &mut watch::Receiver<bool>,
        failures: &mut u32,
    ) -> Result<(), StoreConfigError> {
        if client.is_none() {
            *client = Some(connect(&self.access).await?);
        }
        let c = client.as_mut().unwrap();
        if rev.is_none() {
            let (value, header_rev) = get_key(c, &self.key).await?;
            match value {
                Some((v, mod_rev)) => self.apply(c, Some(&v), mod_rev).await,
                None => self.apply(c, None, header_rev).await,
            }
            *rev = Some(header_rev);
        }
        let start = rev.unwrap() + 1;
        let mut stream = bounded(
            "creating the watch",
            c.watch(
                self.key.as_str(),
                Some(WatchOptions::new().with_start_revision(start)),
            ),
        )
        .await?;
        loop {
            let msg = tokio::select! {
                m = stream.message() => m?,
                _ = stop.changed() => return Ok(()),
            };
            let Some(resp) = msg else {
                return Err(StoreConfigError::WatchEnded);
            };
            if resp.created() {
                *failures = 0;
            }
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    // History was compacted past our revision: read the key again.
                    *rev = None;
                }
                return Err(StoreConfigError::WatchCanceled {
                    reason: resp.cancel_reason().to_string(),
                    compact_revision: resp.compact_revision(),
                });
            }
            // Only the last change of a batch matters, but each one is a
            // configuration an operator wrote: apply them in order.
            let events: Vec<_> = resp
                .events()
                .iter()
                .filter_map(|ev| {
                    let kv = ev.kv()?;
                    Some((ev.event_type(), kv.value().to_vec(), kv.mod_revision()))
                })
                .collect();
            for (ty, value, mod_rev) in events {
                if mod_rev <= rev.unwrap_or(0) {
                    continue;
                }
                match ty {
                    EventType::Put => self.apply(c, Some(&value), mod_rev).await,
                    EventType::Delete => self.apply(c, None, mod_rev).await,
                }
                *rev = Some(mod_rev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> StoreBackedOptions {
        StoreBackedOptions {
            node_name: "n1".into(),
            listen: "127.0.0.1:18080".parse().unwrap(),
            admin_listen: Some("127.0.0.1:18081".parse().unwrap()),
            zone: Some("zone-b".into()),
        }
    }

    #[test]
    fn document_without_listeners_gets_the_local_one() {
        let c = parse_document(
            "[[pools]]\nname = \"p\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\npool = \"p\"\n",
            &opts(),
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].name, LOCAL_LISTENER);
        assert_eq!(c.listeners[0].address, opts().listen);
        assert_eq!(c.admin_listen, opts().admin_listen);
    }

    #[test]
    fn default_listener_address_and_admin_are_node_local() {
        let c = parse_document(
            "admin_listen = \"10.0.0.1:1\"\n[[listeners]]\nname = \"default\"\naddress = \"10.0.0.1:80\"\nmax_connections = 7\n\
             [[pools]]\nname = \"p\"\n[[routes]]\npool = \"p\"\n",
            &opts(),
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].address, opts().listen);
        assert_eq!(c.listeners[0].max_connections, 7);
        assert_eq!(c.admin_listen, opts().admin_listen);
    }

    #[test]
    fn the_members_zone_overrides_the_documents() {
        let doc = "zone = \"zone-a\"\n[[pools]]\nname = \"p\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\npool = \"p\"\n";
        assert_eq!(
            parse_document(doc, &opts()).unwrap().zone.as_deref(),
            Some("zone-b")
        );
        let no_zone = StoreBackedOptions {
            zone: None,
            ..opts()
        };
        assert_eq!(
            parse_document(doc, &no_zone).unwrap().zone.as_deref(),
            Some("zone-a")
        );
    }

    #[test]
    fn invalid_documents_name_field_and_reason() {
        let e = parse_document(
            "[[pools]]\nname = \"p\"\nendpoints = [{ address = \"127.0.0.1:1\", weight = 0 }]\n[[routes]]\npool = \"p\"\n",
            &opts(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pools[0].endpoints[0].weight"), "{e}");
        let e = parse_document("[[pools]\n", &opts())
            .unwrap_err()
            .to_string();
        assert!(e.contains("syntax"), "{e}");
        empty_config(&opts()).validate().unwrap();
    }
}
