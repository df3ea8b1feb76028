//! The I/O side of the cache layer ([`super::cache`] holds the state
//! machine): answers from stored entries, the decision to forward, storing
//! relayed responses as their bodies stream to the client, and the request
//! of a background refresh. Driven by [`crate::proxy`]:
//!
//! ```text
//! before(request) ─ not a cached route / method, request no-store ─▶ None (plain proxying)
//!     │ Fresh                ─▶ Answer (Cache-Status: hit)
//!     │ StaleWhileRevalidate ─▶ Revalidate: answer now + a RefreshJob (if one may start)
//!     │ else                 ─▶ Forward(pending)
//!     ▼
//! after(pending, upstream answer)
//!     500/502/503/504 and the stale entry is usable on error ─▶ the stale entry
//!         (Age, Cache-Status: fwd=stale; fwd-status=…, Warning 110 + 111)
//!     storable GET answer ─▶ relayed; its body is copied as it streams and
//!         stored when complete (≤ max_cacheable_body_bytes)
//!     POST/PUT/PATCH/DELETE answered < 400 ─▶ the URL's entry is dropped
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, SizeHint};

use crate::config::CacheConfig;
use crate::endpoint::now_ms;
use crate::layers::cache::{
    answer_headers, is_error_status, storable, Entry, Lookup, RefreshGuard, RequestPolicy,
    ResponseCache, Served,
};
use crate::metrics::{Metrics, PoolClassLabels, PoolLabels};
use crate::pool::{BoxError, ProxyBody};
use crate::proxy::full;
use crate::router::Route;

/// What to do with a request on a cached route.
pub(crate) enum Before {
    /// Answer with this (a fresh entry).
    Answer(Response<ProxyBody>),
    /// Answer with this stale entry and run `job` in the background.
    Revalidate {
        answer: Response<ProxyBody>,
        job: Box<RefreshJob>,
    },
    /// Forward; pass the answer to [`after`].
    Forward(Pending),
}

/// A forwarded request's cache context.
pub(crate) struct Pending {
    cache: Arc<ResponseCache>,
    cfg: CacheConfig,
    key: String,
    /// The request's headers (Vary values of a stored answer).
    req_headers: HeaderMap,
    authorized: bool,
    head: bool,
    /// A GET whose answer may be stored.
    store: bool,
    /// A successful unsafe method drops the URL's entry.
    invalidate: bool,
    stale: Option<Arc<Entry>>,
    /// RFC 9211 `fwd` reason.
    reason: &'static str,
    pool: String,
    /// A background refresh: no client sees the answer, nothing is counted
    /// as served.
    refresh: Option<RefreshGuard>,
}

/// A background refresh: a GET for the stale entry's URL.
pub(crate) struct RefreshJob {
    req: Request<Empty<Bytes>>,
    pending: Pending,
    host: String,
}

impl RefreshJob {
    /// The request, its cache context and the routing host.
    pub(crate) fn into_parts(self) -> (Request<Empty<Bytes>>, Pending, String) {
        (self.req, self.pending, self.host)
    }
}

fn count(m: &Metrics, pool: &str, class: &str) {
    m.cache_requests
        .get_or_create(&PoolClassLabels {
            pool: pool.to_string(),
            class: class.to_string(),
        })
        .inc();
}

fn is_unsafe(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// A response from an entry (no body for HEAD; the stored Content-Length stays).
fn answer(e: &Entry, served: Served, head: bool, now: u64) -> Response<ProxyBody> {
    let body = if head {
        full(Bytes::new())
    } else {
        full(e.body.clone())
    };
    let mut r = Response::new(body);
    *r.status_mut() = e.status;
    *r.headers_mut() = answer_headers(e, served, now);
    r
}

/// Conditional request headers are the client's business with its own
/// copy; a refresh must get a full answer to store.
const CONDITIONAL: [HeaderName; 5] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// The cache layer's decision before forwarding (see the module diagram).
pub(crate) fn before<B>(
    route: &Route,
    metrics: &Metrics,
    req: &Request<B>,
    host: &str,
    now: u64,
) -> Option<Before> {
    let (cfg, cache) = (route.cfg.cache.as_ref()?, route.cache.as_ref()?);
    let method = req.method();
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let key = ResponseCache::key(host, path_q);
    let pool = route.cfg.pool.clone();
    let pending = |stale, reason, store, invalidate| Pending {
        cache: cache.clone(),
        cfg: cfg.clone(),
        key: key.clone(),
        req_headers: req.headers().clone(),
        authorized: req.headers().contains_key(header::AUTHORIZATION),
        head: method == Method::HEAD,
        store,
        invalidate,
        stale,
        reason,
        pool: pool.clone(),
        refresh: None,
    };
    if is_unsafe(method) {
        return Some(Before::Forward(pending(None, "method", false, true)));
    }
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let policy = RequestPolicy::of(req.headers());
    if policy.bypass {
        count(metrics, &pool, "bypass");
        return None;
    }
    let head = method == Method::HEAD;
    let store = !head;
    Some(match cache.lookup(&key, req.headers(), policy, now) {
        Lookup::Fresh(e) => {
            count(metrics, &pool, "hit");
            Before::Answer(answer(&e, Served::Hit, head, now))
        }
        Lookup::StaleWhileRevalidate(e) => {
            count(metrics, &pool, "stale_while_revalidate");
            let a = answer(&e, Served::StaleWhileRevalidate, head, now);
            match cache.begin_refresh(&key, cfg.max_concurrent_revalidations) {
                None => Before::Answer(a),
                Some(guard) => {
                    let mut r = Request::new(Empty::new());
                    *r.uri_mut() = req.uri().clone();
                    *r.version_mut() = req.version();
                    let mut h = req.headers().clone();
                    for n in &CONDITIONAL {
                        h.remove(n);
                    }
                    *r.headers_mut() = h;
                    let mut p = pending(Some(e), "stale", true, false);
                    p.head = false;
                    p.refresh = Some(guard);
                    Before::Revalidate {
                        answer: a,
                        job: Box::new(RefreshJob {
                            req: r,
                            pending: p,
                            host: host.to_string(),
                        }),
                    }
                }
            }
        }
        Lookup::Forward { stale, reason } => {
            count(metrics, &pool, "miss");
            Before::Forward(pending(stale, reason, store, false))
        }
    })
}

/// The cache layer's handling of the forwarded request's answer (see the
/// module diagram).
pub(crate) fn after(
    p: Pending,
    mut resp: Response<ProxyBody>,
    metrics: &Metrics,
    now: u64,
) -> Response<ProxyBody> {
    let status = resp.status();
    if p.invalidate {
        if status.as_u16() < 400 {
            p.cache.invalidate(&p.key);
        }
        return resp;
    }
    let background = p.refresh.is_some();
    if is_error_status(status) {
        if let Some(e) = p.stale.as_ref().filter(|e| e.usable_on_error(now)) {
            if !background {
                count(metrics, &p.pool, "stale_if_error");
            }
            // Dropping the failed answer releases its slot and connection.
            drop(resp);
            return answer(e, Served::StaleIfError(status), p.head, now);
        }
    }
    let life = p
        .store
        .then(|| {
            storable(
                &p.cfg,
                status,
                resp.headers(),
                p.authorized,
                std::time::SystemTime::now(),
            )
        })
        .flatten();
    let declared_too_big = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > p.cfg.max_cacheable_body_bytes);
    let fwd = |stored: &str| {
        format!(
            "phalanx; fwd={}; fwd-status={}{stored}",
            p.reason,
            status.as_u16()
        )
    };
    if let (Some(life), false) = (life, declared_too_big) {
        let tag = fwd("; stored");
        let l = PoolLabels {
            pool: p.pool.clone(),
        };
        let stores = metrics.cache_stores.get_or_create(&l).clone();
        let evictions = metrics.cache_evictions.get_or_create(&l).clone();
        let headers = resp.headers().clone();
        let Pending {
            cache,
            cfg,
            key,
            req_headers,
            refresh,
            ..
        } = p;
        let limit = cfg.max_cacheable_body_bytes as usize;
        let on_end = Box::new(move |body: Bytes| {
            let _refresh = refresh;
            let s = cache.insert(
                &cfg,
                &key,
                &req_headers,
                status,
                headers,
                body,
                life,
                now_ms(),
            );
            if s.stored {
                stores.inc();
            }
            evictions.inc_by(s.evicted);
        });
        let (parts, body) = resp.into_parts();
        let tee = Tee {
            inner: body,
            buf: Some(BytesMut::new()),
            limit,
            on_end: Some(on_end),
        };
        let tee = tee.finish_if_ended();
        resp = Response::from_parts(parts, tee.boxed_unsync());
        set_cache_status(&mut resp, tag);
        return resp;
    }
    set_cache_status(&mut resp, fwd(""));
    resp
}

fn set_cache_status(resp: &mut Response<ProxyBody>, v: String) {
    if let Ok(v) = HeaderValue::from_str(&v) {
        resp.headers_mut()
            .insert(HeaderName::from_static("cache-status"), v);
    }
}

type OnEnd = Box<dyn FnOnce(Bytes) + Send>;

/// A response body that keeps a copy of what it relays (up to `limit`
/// bytes) and hands it to `on_end` once the body is complete; a body that
/// fails, grows past the limit or is dropped early is not handed over.
struct Tee {
    inner: ProxyBody,
    buf: Option<BytesMut>,
    limit: usize,
    on_end: Option<OnEnd>,
}

impl Tee {
    /// hyper may never poll a body that is already at its end (an empty
    /// one); hand it over at once then.
    fn finish_if_ended(mut self) -> Self {
        if self.inner.is_end_stream() {
            self.finish();
        }
        self
    }

    fn finish(&mut self) {
        if let (Some(b), Some(f)) = (self.buf.take(), self.on_end.take()) {
            f(b.freeze());
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(b)) = (f.data_ref(), this.buf.as_mut()) {
                    if b.len() + d.len() > this.limit {
                        this.buf = None;
                    } else {
                        b.extend_from_slice(d);
                    }
                }
                // hyper stops polling a body that says it has ended (all
                // of Content-Length read): hand the copy over now.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.buf = None;
                this.on_end = None;
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
