//! [`Gateway`] (start) and [`GatewayHandle`] (inspect, reconfigure, stop).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::listener::{self, ListenerHandle, ServeCtx, Tracker};
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::router::Runtime;

/// Entry point for embedding a gateway.
pub struct Gateway;

impl Gateway {
    /// Validate `config`, bind every listener (and the admin endpoint) and
    /// start serving. Must be called inside a tokio runtime.
    pub async fn start(config: Config) -> Result<GatewayHandle, ConfigError> {
        config.validate()?;
        let metrics = Metrics::new();
        // Bind everything first: a bind error leaves nothing running.
        let mut bound = Vec::new();
        for l in &config.listeners {
            let s = listener::bind(l).map_err(|e| ConfigError::Bind {
                listener: l.name.clone(),
                address: l.address,
                source: e,
            })?;
            bound.push((l.clone(), s));
        }
        let admin_std = match config.admin_listen {
            Some(a) => Some(bind_admin(a)?),
            None => None,
        };
        let runtime = Runtime::build(config.clone(), None, &metrics);
        let shared = Arc::new(Shared {
            runtime: RwLock::new(Arc::new(runtime)),
            metrics,
        });
        let (hard_tx, hard_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            listeners: Mutex::new(Vec::new()),
            admin: Mutex::new(None),
            tracker: Arc::new(Tracker::default()),
            hard_stop: hard_tx,
            hard_rx,
            apply_lock: Mutex::new(()),
        });
        let sc = inner.serve_ctx();
        {
            let mut ls = inner.listeners.lock().unwrap();
            for (cfg, s) in bound {
                let name = cfg.name.clone();
                let addr = cfg.address;
                let h = listener::start(cfg, s, sc.clone()).map_err(|e| ConfigError::Bind {
                    listener: name,
                    address: addr,
                    source: e,
                })?;
                ls.push(h);
            }
        }
        if let (Some(a), Some(s)) = (config.admin_listen, admin_std) {
            let h = crate::admin::start(s, shared.clone()).map_err(|e| ConfigError::Bind {
                listener: "admin".into(),
                address: a,
                source: e,
            })?;
            *inner.admin.lock().unwrap() = Some((a, h));
        }
        Ok(GatewayHandle { inner })
    }
}

/// Accept queue of the admin listener (scrapes and operators, no bursts).
const ADMIN_LISTEN_BACKLOG: u32 = 128;

fn bind_admin(a: SocketAddr) -> Result<std::net::TcpListener, ConfigError> {
    crate::listener::bind_with_backlog(a, ADMIN_LISTEN_BACKLOG).map_err(|e| ConfigError::Bind {
        listener: "admin".into(),
        address: a,
        source: e,
    })
}

struct Inner {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<ListenerHandle>>,
    admin: Mutex<Option<(SocketAddr, crate::admin::AdminHandle)>>,
    tracker: Arc<Tracker>,
    hard_stop: watch::Sender<bool>,
    hard_rx: watch::Receiver<bool>,
    apply_lock: Mutex<()>,
}

impl Inner {
    fn serve_ctx(&self) -> ServeCtx {
        ServeCtx {
            shared: self.shared.clone(),
            tracker: self.tracker.clone(),
            hard_stop: self.hard_rx.clone(),
        }
    }
}

/// Handle on a running gateway. Cheap to clone.
#[derive(Clone)]
pub struct GatewayHandle {
    inner: Arc<Inner>,
}

impl GatewayHandle {
    /// Bound address of the first listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.listeners.lock().unwrap()[0].local_addr
    }

    /// `(listener name, bound address)` of every listener.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.inner
            .listeners
            .lock()
            .unwrap()
            .iter()
            .map(|l| (l.cfg.read().unwrap().name.clone(), l.local_addr))
            .collect()
    }

    /// Bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.local_addrs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// Bound address of the admin endpoint.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner
            .admin
            .lock()
            .unwrap()
            .as_ref()
            .map(|(_, h)| h.local_addr)
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.inner.shared.runtime().config.clone()
    }

    /// Prometheus text exposition of all metrics.
    pub fn metrics_text(&self) -> String {
        self.inner.shared.metrics_text()
    }

    /// JSON listing of pools, endpoints and their health (as served at `/pools`).
    pub fn pools_json(&self) -> serde_json::Value {
        crate::admin::pools_json(&self.inner.shared.runtime())
    }

    /// Open client connections (all listeners).
    pub fn open_connections(&self) -> usize {
        self.inner.tracker.count()
    }

    /// Replace the configuration without dropping any connection.
    ///
    /// Pools and endpoints are matched by name / address and keep their
    /// state; removed endpoints drain. Listeners can be added and removed
    /// (removed ones drain); changing the address or protocol of an existing
    /// listener name is rejected. On error nothing changes.
    pub fn apply_config(&self, new: Config) -> Result<(), ConfigError> {
        new.validate()?;
        let _g = self.inner.apply_lock.lock().unwrap();
        let old_rt = self.inner.shared.runtime();
        let mut ls = self.inner.listeners.lock().unwrap();
        let existing: HashMap<String, usize> = ls
            .iter()
            .enumerate()
            .map(|(i, l)| (l.cfg.read().unwrap().name.clone(), i))
            .collect();
        let mut to_bind = Vec::new();
        for (i, l) in new.listeners.iter().enumerate() {
            match existing.get(&l.name) {
                Some(&j) => {
                    let cur = ls[j].cfg.read().unwrap().clone();
                    if cur.address != l.address
                        || cur.protocol != l.protocol
                        || cur.tls_cert_path != l.tls_cert_path
                        || cur.tls_key_path != l.tls_key_path
                        || cur.tls_reload_check_interval_ms != l.tls_reload_check_interval_ms
                    {
                        return Err(ConfigError::invalid(
                            format!("listeners[{i}]"),
                            "the address, protocol, TLS files or TLS reload interval of a running listener cannot change; \
                             add a listener with a new name instead",
                        ));
                    }
                }
                None => to_bind.push(l.clone()),
            }
        }
        let mut bound = Vec::new();
        for l in to_bind {
            let s = listener::bind(&l).map_err(|e| ConfigError::Bind {
                listener: l.name.clone(),
                address: l.address,
                source: e,
            })?;
            bound.push((l, s));
        }
        let mut admin = self.inner.admin.lock().unwrap();
        let cur_admin = admin.as_ref().map(|(a, _)| *a);
        let new_admin = if new.admin_listen != cur_admin {
            match new.admin_listen {
                Some(a) => Some(Some(bind_admin(a)?)),
                None => Some(None),
            }
        } else {
            None
        };
        // Commit: nothing below can fail validation.
        let runtime = Runtime::build(new.clone(), Some(&old_rt), &self.inner.shared.metrics);
        *self.inner.shared.runtime.write().unwrap() = Arc::new(runtime);
        let sc = self.inner.serve_ctx();
        ls.retain(|l| {
            let name = l.cfg.read().unwrap().name.clone();
            match new.listeners.iter().find(|n| n.name == name) {
                Some(n) => {
                    *l.cfg.write().unwrap() = n.clone();
                    true
                }
                None => {
                    let _ = l.stop.send(true);
                    false
                }
            }
        });
        for (cfg, s) in bound {
            let name = cfg.name.clone();
            let addr = cfg.address;
            let h = listener::start(cfg, s, sc.clone()).map_err(|e| ConfigError::Bind {
                listener: name,
                address: addr,
                source: e,
            })?;
            ls.push(h);
        }
        if let Some(na) = new_admin {
            if let Some((_, h)) = admin.take() {
                h.stop();
            }
            if let (Some(a), Some(s)) = (new.admin_listen, na) {
                let h = crate::admin::start(s, self.inner.shared.clone()).map_err(|e| {
                    ConfigError::Bind {
                        listener: "admin".into(),
                        address: a,
                        source: e,
                    }
                })?;
                *admin = Some((a, h));
            }
        }
        tracing::info!("configuration applied");
        Ok(())
    }

    /// Graceful shutdown: stop accepting, let in-flight requests finish
    /// (bounded by `drain_timeout_ms`), then close everything.
    pub async fn shutdown(&self) {
        let drain = Duration::from_millis(self.inner.shared.runtime().config.drain_timeout_ms);
        for l in self.inner.listeners.lock().unwrap().iter() {
            let _ = l.stop.send(true);
        }
        if let Some((_, h)) = self.inner.admin.lock().unwrap().take() {
            h.stop();
        }
        let _ = tokio::time::timeout(drain, self.inner.tracker.wait_idle()).await;
        let _ = self.inner.hard_stop.send(true);
        self.inner.shared.runtime().retire_all();
    }
}
