//! The alerting keys in the replicated store, reached through `etcd_client`.
//!
//! Layout under the prefix (default `/phalanx/alerting`):
//! `rules` (rule file YAML), `alertmanager` (alertmanager.yml), `state`
//! (alert states, JSON, written by the leader), `nflog/<key>` (notification
//! log), `silences/<id>`, `events/<ms>-<member>-<seq>`, `members/<name>`
//! (each member's scrape target).

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions, SortOrder, SortTarget};
use serde::{Deserialize, Serialize};

use crate::events::{event_key, Event};
use crate::notify::Silence;
use crate::ConfigError;

pub const DEFAULT_PREFIX: &str = "/phalanx/alerting";
/// Bound on one store request.
pub const RPC_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} timed out after {RPC_TIMEOUT_MS} ms: is a store member reachable at the endpoints given?")]
    Timeout(&'static str),
    #[error("store: {0}")]
    Store(#[from] etcd_client::Error),
    #[error("refused, nothing was written: {0}")]
    Invalid(#[from] ConfigError),
    #[error("refused, nothing was written: {0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("store key {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// What a member publishes so the leader can scrape it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub member: String,
    /// `http://host:port/metrics`, if the member has a metrics listener.
    pub metrics_url: Option<String>,
    /// Base URL of its alerting HTTP API.
    pub api_url: Option<String>,
    pub quota_backend_bytes: u64,
}

async fn bounded<T>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    Ok(
        tokio::time::timeout(Duration::from_millis(RPC_TIMEOUT_MS), f)
            .await
            .map_err(|_| StoreError::Timeout(what))??,
    )
}

/// A connection to the alerting keys.
#[derive(Clone)]
pub struct Store {
    client: Client,
    pub prefix: String,
}

impl Store {
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Store, StoreError> {
        Self::connect_with(endpoints, prefix, Ok).await
    }

    /// The member's alerting store: through its in-process channel when it
    /// has one (`Settings::channel`), else through `Settings::endpoints`.
    pub async fn connect_settings(s: &crate::service::Settings) -> Result<Store, StoreError> {
        match &s.channel {
            Some(channel) => {
                let client = bounded(
                    "connecting to the store",
                    Client::from_channel(channel.clone(), None),
                )
                .await?;
                Ok(Store {
                    client,
                    prefix: s.prefix.trim_end_matches('/').to_string(),
                })
            }
            None => Self::connect(&s.endpoints, &s.prefix).await,
        }
    }

    /// [`Store::connect`] with the connect options passed through `secure`
    /// first (the command line's TLS and credentials, `--cacert/--cert/--key/--user`).
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        secure: impl FnOnce(ConnectOptions) -> Result<ConnectOptions, etcd_client::Error>,
    ) -> Result<Store, StoreError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let opts = secure(opts)?;
        let client = bounded(
            "connecting to the store",
            Client::connect(endpoints, Some(opts)),
        )
        .await?;
        Ok(Store {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    pub fn key(&self, k: &str) -> String {
        format!("{}/{k}", self.prefix)
    }

    /// `(value, mod_revision)`.
    pub async fn get(&mut self, k: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let r = bounded("get", self.client.get(self.key(k), None)).await?;
        Ok(r.kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// `(key without the prefix, value, mod_revision)` of every key under `k/`.
    pub async fn get_prefix(&mut self, k: &str) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        let full = self.key(k) + "/";
        let r = bounded(
            "get",
            self.client
                .get(full.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key()[full.len()..]).to_string(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                )
            })
            .collect())
    }

    pub async fn put(&mut self, k: &str, v: impl Into<Vec<u8>>) -> Result<i64, StoreError> {
        let r = bounded("put", self.client.put(self.key(k), v.into(), None)).await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    pub async fn delete(&mut self, k: &str) -> Result<i64, StoreError> {
        let r = bounded("delete", self.client.delete(self.key(k), None)).await?;
        Ok(r.deleted())
    }

    /// Append an event (best effort is the caller's choice).
    pub async fn record_event(&mut self, e: &Event) -> Result<(), StoreError> {
        let key = event_key(&self.prefix, e, rand::random::<u32>() as u64);
        let v = serde_json::to_vec(e).expect("event encodes");
        bounded("put event", self.client.put(key, v, None)).await?;
        Ok(())
    }

    /// Events at or after `since_ms`, oldest first, at most `limit`.
    pub async fn events_since(
        &mut self,
        since_ms: i64,
        limit: i64,
    ) -> Result<(Vec<Event>, i64), StoreError> {
        let from = format!("{}/events/{:016}", self.prefix, since_ms.max(0));
        let end = format!("{}/events0", self.prefix);
        let opts = GetOptions::new()
            .with_range(end)
            .with_limit(limit)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let r = bounded("get events", self.client.get(from, Some(opts))).await?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok((
            r.kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect(),
            rev,
        ))
    }

    /// Drop events older than `retention_ms` and the oldest past `max_events`. Returns how many went.
    pub async fn prune_events(
        &mut self,
        now_ms: i64,
        max_events: usize,
        retention_ms: i64,
    ) -> Result<i64, StoreError> {
        let start = format!("{}/events/", self.prefix);
        let cutoff = format!(
            "{}/events/{:016}",
            self.prefix,
            (now_ms - retention_ms).max(0)
        );
        let r = bounded(
            "prune events",
            self.client
                .delete(start.clone(), Some(DeleteOptions::new().with_range(cutoff))),
        )
        .await?;
        let mut deleted = r.deleted();
        let end = format!("{}/events0", self.prefix);
        let count = bounded(
            "count events",
            self.client.get(
                start.clone(),
                Some(GetOptions::new().with_range(end.clone()).with_count_only()),
            ),
        )
        .await?
        .count() as usize;
        if count > max_events {
            let excess = (count - max_events) as i64;
            let keys = bounded(
                "list events",
                self.client.get(
                    start.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end)
                            .with_keys_only()
                            .with_limit(excess)
                            .with_sort(SortTarget::Key, SortOrder::Ascend),
                    ),
                ),
            )
            .await?;
            if let Some(last) = keys.kvs().last() {
                let mut upto = last.key().to_vec();
                upto.push(0);
                let r = bounded(
                    "prune events",
                    self.client
                        .delete(start, Some(DeleteOptions::new().with_range(upto))),
                )
                .await?;
                deleted += r.deleted();
            }
        }
        Ok(deleted)
    }

    /// Watch events from `revision` on, calling `f` for each.
    pub async fn follow_events(
        &mut self,
        revision: i64,
        mut f: impl FnMut(Event),
    ) -> Result<(), StoreError> {
        let key = format!("{}/events/", self.prefix);
        let mut stream = self
            .client
            .watch(
                key,
                Some(
                    etcd_client::WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision),
                ),
            )
            .await?;
        while let Some(resp) = stream.message().await? {
            for ev in resp.events() {
                if ev.event_type() == etcd_client::EventType::Put {
                    if let Some(e) = ev
                        .kv()
                        .and_then(|kv| serde_json::from_slice(kv.value()).ok())
                    {
                        f(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Store a validated document at `key` and record `kind` with
    /// `what` (it is told the revision) in the event timeline.
    async fn store_doc(
        &mut self,
        key: &str,
        text: &str,
        by: &str,
        kind: &str,
        what: impl FnOnce(i64) -> String,
    ) -> Result<i64, StoreError> {
        let rev = self.put(key, text).await?;
        let _ = self
            .record_event(&Event::new(now_ms(), kind, by, what(rev)))
            .await;
        Ok(rev)
    }

    /// Validate a rule file (as every leader would) and store it; records an event.
    pub async fn set_rules(&mut self, file: &str, text: &str, by: &str) -> Result<i64, StoreError> {
        let n = crate::rules::parse_rules(file, text)?.len();
        self.store_doc("rules", text, by, "rules_changed", |rev| {
            format!("rule file {file} stored ({n} alerting rules, revision {rev})")
        })
        .await
    }

    /// Validate a scrape-targets document (`crate::targets`) and store it;
    /// records an event.
    pub async fn set_targets(
        &mut self,
        file: &str,
        text: &str,
        by: &str,
    ) -> Result<i64, StoreError> {
        let n = crate::targets::parse_targets(file, text)?.len();
        self.store_doc("targets", text, by, "config_changed", |rev| {
            format!("scrape targets {file} stored ({n} targets, revision {rev})")
        })
        .await
    }

    /// Validate an alertmanager.yml and store it; records an event.
    pub async fn set_am_config(
        &mut self,
        file: &str,
        text: &str,
        by: &str,
    ) -> Result<i64, StoreError> {
        let n = crate::notify::parse_am_config(file, text)?.receivers.len();
        self.store_doc("alertmanager", text, by, "config_changed", |rev| {
            format!("alertmanager configuration {file} stored ({n} receivers, revision {rev})")
        })
        .await
    }

    pub async fn silences(&mut self) -> Result<Vec<Silence>, StoreError> {
        let mut out = Vec::new();
        for (k, v, _) in self.get_prefix("silences").await? {
            out.push(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: format!("silences/{k}"),
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Store a new silence (its id is chosen here); records an event.
    pub async fn add_silence(&mut self, mut s: Silence, by: &str) -> Result<String, StoreError> {
        s.validate().map_err(StoreError::BadRequest)?;
        s.id = format!("{:016x}", rand::random::<u64>());
        self.put(
            &format!("silences/{}", s.id),
            serde_json::to_vec(&s).expect("encodes"),
        )
        .await?;
        let _ = self
            .record_event(&Event::new(
                now_ms(),
                "silence_added",
                by,
                format!(
                    "silence {} by {} until {}: {} ({})",
                    s.id,
                    s.created_by,
                    crate::events::Event::new(s.ends_at_ms, "", "", "")
                        .line()
                        .split(' ')
                        .next()
                        .unwrap_or(""),
                    s.matchers.join(","),
                    s.comment
                ),
            ))
            .await;
        Ok(s.id)
    }

    /// Expire a silence now; records an event.
    pub async fn expire_silence(&mut self, id: &str, by: &str) -> Result<Silence, StoreError> {
        let key = format!("silences/{id}");
        let (v, _) = self
            .get(&key)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("silence {id}")))?;
        let mut s: Silence = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let now = now_ms();
        if s.ends_at_ms > now {
            s.ends_at_ms = now;
            if s.starts_at_ms > now {
                s.starts_at_ms = now;
            }
            self.put(&key, serde_json::to_vec(&s).expect("encodes"))
                .await?;
        }
        let _ = self
            .record_event(&Event::new(
                now,
                "silence_expired",
                by,
                format!("silence {id} expired ({})", s.matchers.join(",")),
            ))
            .await;
        Ok(s)
    }

    /// The alert states the leader keeps.
    pub async fn alert_state(&mut self) -> Result<crate::rules::AlertState, StoreError> {
        match self.get("state").await? {
            None => Ok(Default::default()),
            Some((v, _)) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: self.key("state"),
                reason: e.to_string(),
            }),
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
