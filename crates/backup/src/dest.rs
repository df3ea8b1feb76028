//! Destinations: `file:///path` and `s3://bucket/prefix` through `object_store`, with
//! bounded retries (`max_upload_retries`, exponential backoff from
//! `retry_initial_backoff_ms` up to `retry_max_backoff_ms`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};

use crate::error::BackupError;

/// How to reach S3-compatible servers. Credentials always come from the usual AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`), the region from `AWS_REGION` (default `us-east-1`), the endpoint
/// from `endpoint` or else `AWS_ENDPOINT_URL`.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// Retry and timeout limits for every request to a destination.
#[derive(Clone, Debug)]
pub struct RetrySettings {
    /// Retries after the first attempt of one request (so `max_upload_retries + 1` attempts).
    pub max_upload_retries: u32,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    /// Per request (S3 only; local files have no timeout).
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_upload_retries: 5,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 5_000,
            request_timeout_ms: 60_000,
            connect_timeout_ms: 5_000,
        }
    }
}

/// One destination: a repository root in an object store.
#[derive(Clone)]
pub struct Destination {
    pub url: String,
    store: Arc<dyn ObjectStore>,
    retry: RetrySettings,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Destination({})", self.url)
    }
}

impl Destination {
    pub fn open(url: &str, s3: &S3Settings, retry: &RetrySettings) -> Result<Self, BackupError> {
        let bad = |detail: String| BackupError::BadDestination {
            url: url.to_string(),
            detail,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let path = parsed
                    .to_file_path()
                    .map_err(|_| bad("not an absolute local path".into()))?;
                std::fs::create_dir_all(&path)
                    .map_err(|e| bad(format!("cannot create {}: {e}", path.display())))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&path)
                        .map_err(|e| bad(e.to_string()))?,
                )
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| bad("no bucket name".into()))?;
                let prefix = parsed.path().trim_matches('/').to_string();
                let endpoint = s3
                    .endpoint
                    .clone()
                    .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                    .or_else(|| std::env::var("AWS_ENDPOINT").ok());
                let region = s3
                    .region
                    .clone()
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .unwrap_or_else(|| "us-east-1".into());
                let mut opts = object_store::ClientOptions::new()
                    .with_timeout(Duration::from_millis(retry.request_timeout_ms))
                    .with_connect_timeout(Duration::from_millis(retry.connect_timeout_ms));
                if endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"))
                {
                    opts = opts.with_allow_http(true);
                }
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_client_options(opts)
                    // Our own bounded retry (below) is the one that counts.
                    .with_retry(object_store::RetryConfig {
                        max_retries: 0,
                        ..Default::default()
                    });
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                let s3store = b.build().map_err(|e| bad(e.to_string()))?;
                if prefix.is_empty() {
                    Arc::new(s3store)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(
                        s3store,
                        prefix.as_str(),
                    ))
                }
            }
            other => return Err(bad(format!("unsupported scheme {other:?}"))),
        };
        Ok(Destination {
            url: url.trim_end_matches('/').to_string(),
            store,
            retry: retry.clone(),
        })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ms = self
            .retry
            .retry_initial_backoff_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.retry.retry_max_backoff_ms);
        Duration::from_millis(ms)
    }

    async fn retrying<T, F, Fut>(
        &self,
        op: &'static str,
        object: &str,
        mut f: F,
    ) -> Result<T, BackupError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        let mut attempt = 0u32;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e @ object_store::Error::NotFound { .. }) => {
                    return Err(self.err(op, object, attempt + 1, e.to_string()))
                }
                Err(e) if attempt >= self.retry.max_upload_retries => {
                    return Err(self.err(op, object, attempt + 1, e.to_string()))
                }
                Err(e) => {
                    tracing::warn!(
                        "destination {}: {op} {object:?} failed (attempt {}): {e}; retrying",
                        self.url,
                        attempt + 1
                    );
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    fn err(&self, op: &'static str, object: &str, attempts: u32, detail: String) -> BackupError {
        BackupError::Storage {
            url: self.url.clone(),
            op,
            object: object.to_string(),
            attempts,
            detail,
        }
    }

    /// Write `data` under `key` (atomic: a reader sees all of it or nothing).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), BackupError> {
        let path = ObjPath::from(key);
        self.retrying("upload", key, || {
            let payload = PutPayload::from(data.clone());
            let store = self.store.clone();
            let path = path.clone();
            async move { store.put(&path, payload).await.map(|_| ()) }
        })
        .await
    }

    /// Read `key`; `Ok(None)` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BackupError> {
        let path = ObjPath::from(key);
        let r = self
            .retrying("download", key, || {
                let store = self.store.clone();
                let path = path.clone();
                async move {
                    match store.get(&path).await {
                        Ok(g) => g.bytes().await.map(Some),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        Ok(r)
    }

    /// Every object under `prefix`: (key, size in bytes).
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BackupError> {
        let p = ObjPath::from(prefix);
        self.retrying("list", prefix, || {
            let store = self.store.clone();
            let p = p.clone();
            async move {
                store
                    .list(Some(&p))
                    .map_ok(|m| (m.location.to_string(), m.size))
                    .try_collect::<Vec<_>>()
                    .await
            }
        })
        .await
    }

    /// Delete `key` (tests use it to simulate a lost object).
    pub async fn delete(&self, key: &str) -> Result<(), BackupError> {
        let path = ObjPath::from(key);
        self.retrying("delete", key, || {
            let store = self.store.clone();
            let path = path.clone();
            async move { store.delete(&path).await }
        })
        .await
    }
}
