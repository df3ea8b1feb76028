//! Response cache layer: stale-if-error and stale-while-revalidate
//! (RFC 5861) for GET/HEAD on routes with a `cache` table, honouring the
//! upstream's `Cache-Control` (RFC 9111, as a shared cache).
//!
//! Sans-I/O: [`ResponseCache`] is told the time (`now_ms`, the gateway's
//! monotonic milliseconds) and never sleeps; [`crate::proxy`] does the I/O.
//!
//! Life of one stored response, from the time it is stored (`age` counts
//! from the upstream's `Age`, `fresh` = `s-maxage`, else `max-age`, else
//! `default_max_age_ms`; 0 with `no-cache`):
//!
//! ```text
//!            age < fresh             fresh ≤ age < fresh + swr        age ≥ fresh
//!   Fresh ──────────────────▶ Stale(revalidate) ──────────────────▶ Stale(error only) ──▶ Expired
//!   served from the cache     served at once; one background         forwarded; served only   age ≥ fresh + max(swr, sie):
//!   (Cache-Status: hit)       refresh per key (swr window)            when the upstream        removed at the next look-up
//!                                                                     fails (sie window)
//! ```
//!
//! A look-up ([`ResponseCache::lookup`]) gives [`Lookup`]:
//! * `Fresh(entry)` → the entry is the answer (no upstream request);
//! * `StaleWhileRevalidate(entry)` → the entry is the answer, and a refresh
//!   should start if [`ResponseCache::begin_refresh`] grants one (at most one
//!   per key, at most `max_concurrent_revalidations` in all);
//! * `Forward { stale: Some(entry) }` → ask the upstream; if the answer is
//!   an error (500, 502, 503, 504 — also the gateway's own: connect failure,
//!   timeout, open breaker, no healthy upstream, overload), and
//!   [`Entry::usable_on_error`] at that time, the entry is the answer;
//! * `Forward { stale: None }` → ask the upstream, nothing to fall back on.
//!
//! Storing ([`storable`]): GET responses with status 200, 203, 204, 300,
//! 301, 308, 404, 405, 410 or 414, without `no-store`, `private`,
//! `Set-Cookie` or `Vary: *`; for a request with `Authorization`, only with
//! `public`, `s-maxage` or `must-revalidate`. A body larger than
//! `max_cacheable_body_bytes` is not stored. `no-cache`, `must-revalidate`,
//! `proxy-revalidate` and `s-maxage` make the route's default stale windows
//! not apply (the response's own `stale-if-error` / `stale-while-revalidate`
//! still do, as RFC 5861 §4 allows); `no-cache` also turns off
//! stale-while-revalidate. Without `max-age`/`s-maxage`, `Expires` gives the
//! freshness (RFC 9111 §4.2.1): `Expires` minus `Date` (the time the
//! response was received when `Date` is missing or invalid), 0 when in the
//! past or unparsable (`Expires: 0` means already expired). `Vary` is honoured: the
//! listed request headers are stored with the entry, and a request with
//! other values does not match it (one variant per URL: the latest).
//!
//! Bounds: `max_cache_entries` entries and `max_cache_bytes` bytes (body +
//! header bytes + key); beyond either, the least recently used entries are
//! evicted (an ordered map of use ticks: O(log n), no extra dependency).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use crate::config::CacheConfig;

/// Cap of any time read from a header (one year), so arithmetic never overflows.
const MAX_DIRECTIVE_S: u64 = 365 * 24 * 3600;
/// Per-entry bookkeeping counted against `max_cache_bytes` besides key,
/// headers and body.
const ENTRY_OVERHEAD_BYTES: u64 = 128;

/// The `Cache-Control` directives the cache acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `max-age`, seconds.
    pub max_age_s: Option<u64>,
    /// `s-maxage`, seconds.
    pub s_maxage_s: Option<u64>,
    /// `stale-if-error`, seconds.
    pub stale_if_error_s: Option<u64>,
    /// `stale-while-revalidate`, seconds.
    pub stale_while_revalidate_s: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (also `no-cache="field"`, treated as plain `no-cache`).
    pub no_cache: bool,
    /// `private` (also `private="field"`, treated as plain `private`).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
}

impl Directives {
    /// Parse every `Cache-Control` field of `h`; unknown directives are
    /// ignored, a malformed number makes that directive absent.
    pub fn parse(h: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for v in h.get_all(header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                let item = item.trim();
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item, None),
                };
                let secs = || {
                    arg.and_then(|a| a.parse::<u64>().ok())
                        .map(|s| s.min(MAX_DIRECTIVE_S))
                };
                match name.to_ascii_lowercase().as_str() {
                    "max-age" => d.max_age_s = secs(),
                    "s-maxage" => d.s_maxage_s = secs(),
                    "stale-if-error" => d.stale_if_error_s = secs(),
                    "stale-while-revalidate" => d.stale_while_revalidate_s = secs(),
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    _ => {}
                }
            }
        }
        d
    }
}

/// How the request itself limits the cache (`Cache-Control` of the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPolicy {
    /// `no-store`: neither served from nor stored in the cache.
    pub bypass: bool,
    /// `no-cache` or `max-age=0`: forwarded even when a fresh entry exists
    /// (an error may still be replaced by a stale entry).
    pub forward: bool,
}

impl RequestPolicy {
    /// Read the request's `Cache-Control` (and `Pragma: no-cache`).
    pub fn of(h: &HeaderMap) -> RequestPolicy {
        let d = Directives::parse(h);
        let pragma = h
            .get_all(header::PRAGMA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-cache"));
        RequestPolicy {
            bypass: d.no_store,
            forward: d.no_cache || d.max_age_s == Some(0) || pragma,
        }
    }
}

/// Statuses stored (RFC 9111 heuristically cacheable ones, minus 501: a
/// stale copy must be a good answer to stand in for an error).
fn cacheable_status(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414
    )
}

/// Statuses that count as an error for stale-if-error (RFC 5861 §4).
pub fn is_error_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

/// Lifetimes of a response about to be stored, in ms, or None when it must
/// not be stored. `authorized`: the request carried `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Freshness lifetime.
    pub fresh_ms: u64,
    /// stale-if-error window after `fresh_ms`.
    pub stale_if_error_ms: u64,
    /// stale-while-revalidate window after `fresh_ms`.
    pub stale_while_revalidate_ms: u64,
    /// Age the response already had (upstream `Age`).
    pub initial_age_ms: u64,
}

/// Whether a GET response may be stored, and for how long (see the module
/// documentation for the rules).
/// `received`: the wall-clock time the response head arrived (for
/// `Expires` without `Date`).
pub fn storable(
    cfg: &CacheConfig,
    status: StatusCode,
    resp: &HeaderMap,
    authorized: bool,
    received: SystemTime,
) -> Option<Lifetimes> {
    if !cacheable_status(status) || resp.contains_key(header::SET_COOKIE) {
        return None;
    }
    vary_names(resp)?;
    let d = Directives::parse(resp);
    if d.no_store || d.private {
        return None;
    }
    if authorized && !(d.public || d.s_maxage_s.is_some() || d.must_revalidate) {
        return None;
    }
    // s-maxage implies proxy-revalidate (RFC 9111 §5.2.2.10).
    let strict = d.no_cache || d.must_revalidate || d.s_maxage_s.is_some();
    let fresh_ms = if d.no_cache {
        0
    } else {
        match d.s_maxage_s.or(d.max_age_s) {
            Some(s) => s * 1000,
            None => expires_freshness_ms(resp, received).unwrap_or(cfg.default_max_age_ms),
        }
    };
    let window = |explicit: Option<u64>, default: u64| match explicit {
        Some(s) => s * 1000,
        None if strict => 0,
        None => default,
    };
    let initial_age_ms = resp
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |s| s.min(MAX_DIRECTIVE_S) * 1000);
    Some(Lifetimes {
        fresh_ms,
        stale_if_error_ms: window(d.stale_if_error_s, cfg.default_stale_if_error_ms),
        stale_while_revalidate_ms: if d.no_cache {
            0
        } else {
            window(
                d.stale_while_revalidate_s,
                cfg.default_stale_while_revalidate_ms,
            )
        },
        initial_age_ms,
    })
}

/// Freshness from `Expires` (RFC 9111 §4.2.1): `Expires - Date`, with the
/// receipt time standing in for a missing or invalid `Date`; 0 for an
/// `Expires` in the past or that is not a valid HTTP-date (§5.3: "already
/// expired"). None without `Expires`. Capped at one year.
fn expires_freshness_ms(resp: &HeaderMap, received: SystemTime) -> Option<u64> {
    let date = |name: header::HeaderName| {
        resp.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    };
    let raw = resp.get(header::EXPIRES)?;
    let Some(expires) = raw
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    else {
        return Some(0);
    };
    let origin = date(header::DATE).unwrap_or(received);
    Some(
        expires
            .duration_since(origin)
            .map_or(0, |d| d.as_secs().min(MAX_DIRECTIVE_S) * 1000),
    )
}

/// The header names a response varies on (lowercase); None for `Vary: *`.
fn vary_names(resp: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in resp.get_all(header::VARY) {
        let Ok(v) = v.to_str() else { return None };
        for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if n == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(n.as_bytes()).ok()?);
        }
    }
    Some(names)
}

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    /// Status.
    pub status: StatusCode,
    /// Headers as relayed (hop-by-hop removed), without `Age`.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Request header values the response varies on.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    stored_ms: u64,
    life: Lifetimes,
    size: u64,
}

/// Where an entry stands at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within its freshness lifetime.
    Fresh,
    /// Stale, inside the stale-while-revalidate window.
    StaleWhileRevalidate,
    /// Stale, past stale-while-revalidate (only an error lets it be served).
    Stale,
}

impl Entry {
    /// Current age in ms.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        self.life.initial_age_ms + now_ms.saturating_sub(self.stored_ms)
    }

    /// `Age` header value (whole seconds).
    pub fn age_s(&self, now_ms: u64) -> u64 {
        self.age_ms(now_ms) / 1000
    }

    /// Remaining freshness in whole seconds (negative: stale since).
    pub fn ttl_s(&self, now_ms: u64) -> i64 {
        (self.life.fresh_ms as i64 - self.age_ms(now_ms) as i64).div_euclid(1000)
    }

    /// Freshness at `now_ms`.
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        let age = self.age_ms(now_ms);
        if age < self.life.fresh_ms {
            Freshness::Fresh
        } else if age < self.life.fresh_ms + self.life.stale_while_revalidate_ms {
            Freshness::StaleWhileRevalidate
        } else {
            Freshness::Stale
        }
    }

    /// May stand in for an error at `now_ms` (fresh, or stale inside the
    /// stale-if-error window).
    pub fn usable_on_error(&self, now_ms: u64) -> bool {
        self.age_ms(now_ms) < self.life.fresh_ms + self.life.stale_if_error_ms
    }

    fn expired(&self, now_ms: u64) -> bool {
        let keep = self
            .life
            .stale_if_error_ms
            .max(self.life.stale_while_revalidate_ms);
        self.age_ms(now_ms) >= self.life.fresh_ms + keep
    }

    fn matches(&self, req: &HeaderMap) -> bool {
        self.vary.iter().all(|(n, v)| req.get(n) == v.as_ref())
    }
}

/// Result of a look-up.
#[derive(Debug)]
pub enum Lookup {
    /// Serve this entry; no upstream request.
    Fresh(Arc<Entry>),
    /// Serve this entry; refresh it in the background.
    StaleWhileRevalidate(Arc<Entry>),
    /// Ask the upstream; `stale` may stand in for an error.
    Forward {
        /// The stored response, when one matches the request.
        stale: Option<Arc<Entry>>,
        /// RFC 9211 `fwd` reason: `uri-miss`, `vary-miss`, `stale`, `request`.
        reason: &'static str,
    },
}

/// Counts of a store, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Entries evicted to make room (LRU).
    pub evicted: u64,
    /// The response was stored.
    pub stored: bool,
}

struct Slot {
    entry: Arc<Entry>,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Slot>,
    /// Use tick → key; the first is the least recently used.
    lru: BTreeMap<u64, String>,
    tick: u64,
    bytes: u64,
    refreshing: HashSet<String>,
}

impl Inner {
    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let t = self.tick;
        if let Some(s) = self.map.get_mut(key) {
            self.lru.remove(&s.tick);
            s.tick = t;
            self.lru.insert(t, key.to_string());
        }
    }
    fn remove(&mut self, key: &str) {
        if let Some(s) = self.map.remove(key) {
            self.lru.remove(&s.tick);
            self.bytes -= s.entry.size;
        }
    }
}

/// A route's bounded LRU response cache.
pub struct ResponseCache {
    inner: Mutex<Inner>,
}

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache {
            inner: Mutex::new(Inner::default()),
        }
    }
}

/// Held while a background refresh of one key runs; releases the key.
pub struct RefreshGuard {
    cache: Arc<ResponseCache>,
    key: String,
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        let mut g = self.cache.inner.lock().unwrap();
        g.refreshing.remove(&self.key);
    }
}

impl ResponseCache {
    /// The cache key of a request: host (lowercase, no port) and path with query.
    pub fn key(host: &str, path_and_query: &str) -> String {
        format!("{host}\n{path_and_query}")
    }

    /// Look `key` up for a request with headers `req` at `now_ms`; an
    /// expired entry is removed.
    pub fn lookup(&self, key: &str, req: &HeaderMap, policy: RequestPolicy, now_ms: u64) -> Lookup {
        let mut g = self.inner.lock().unwrap();
        let Some(slot) = g.map.get(key) else {
            return Lookup::Forward {
                stale: None,
                reason: "uri-miss",
            };
        };
        let e = slot.entry.clone();
        if e.expired(now_ms) {
            g.remove(key);
            return Lookup::Forward {
                stale: None,
                reason: "uri-miss",
            };
        }
        if !e.matches(req) {
            return Lookup::Forward {
                stale: None,
                reason: "vary-miss",
            };
        }
        g.touch(key);
        if policy.forward {
            return Lookup::Forward {
                stale: Some(e),
                reason: "request",
            };
        }
        match e.freshness(now_ms) {
            Freshness::Fresh => Lookup::Fresh(e),
            Freshness::StaleWhileRevalidate => Lookup::StaleWhileRevalidate(e),
            Freshness::Stale => Lookup::Forward {
                stale: Some(e),
                reason: "stale",
            },
        }
    }

    /// Start a background refresh of `key`, unless one is running for it or
    /// `max_concurrent` are running in all.
    pub fn begin_refresh(
        self: &Arc<Self>,
        key: &str,
        max_concurrent: usize,
    ) -> Option<RefreshGuard> {
        let mut g = self.inner.lock().unwrap();
        if g.refreshing.len() >= max_concurrent || !g.refreshing.insert(key.to_string()) {
            return None;
        }
        Some(RefreshGuard {
            cache: self.clone(),
            key: key.to_string(),
        })
    }

    /// Store a complete response, evicting least recently used entries
    /// until both bounds hold. `req`: the request's headers (Vary values).
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        cfg: &CacheConfig,
        key: &str,
        req: &HeaderMap,
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        life: Lifetimes,
        now_ms: u64,
    ) -> Stored {
        if body.len() as u64 > cfg.max_cacheable_body_bytes {
            return Stored::default();
        }
        let Some(names) = vary_names(&headers) else {
            return Stored::default();
        };
        headers.remove(header::AGE);
        let vary = names
            .into_iter()
            .map(|n| {
                let v = req.get(&n).cloned();
                (n, v)
            })
            .collect();
        let head: u64 = headers
            .iter()
            .map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64)
            .sum();
        let size = ENTRY_OVERHEAD_BYTES + key.len() as u64 + head + body.len() as u64;
        if size > cfg.max_cache_bytes {
            return Stored::default();
        }
        let entry = Arc::new(Entry {
            status,
            headers,
            body,
            vary,
            stored_ms: now_ms,
            life,
            size,
        });
        let mut g = self.inner.lock().unwrap();
        g.remove(key);
        let mut evicted = 0;
        while g.map.len() >= cfg.max_cache_entries || g.bytes + size > cfg.max_cache_bytes {
            let Some((_, victim)) = g.lru.pop_first() else {
                break;
            };
            if let Some(s) = g.map.remove(&victim) {
                g.bytes -= s.entry.size;
                evicted += 1;
            }
        }
        g.tick += 1;
        let t = g.tick;
        g.lru.insert(t, key.to_string());
        g.bytes += size;
        g.map.insert(key.to_string(), Slot { entry, tick: t });
        Stored {
            evicted,
            stored: true,
        }
    }

    /// Drop `key` (an unsafe method succeeded on it: RFC 9111 §4.4).
    pub fn invalidate(&self, key: &str) {
        self.inner.lock().unwrap().remove(key);
    }

    /// (entries, bytes) held.
    pub fn usage(&self) -> (usize, u64) {
        let g = self.inner.lock().unwrap();
        (g.map.len(), g.bytes)
    }
}

/// How a cached answer is labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Fresh hit.
    Hit,
    /// Stale, refreshing in the background.
    StaleWhileRevalidate,
    /// Stale, standing in for an upstream error with this status.
    StaleIfError(StatusCode),
}

/// The headers of a cached answer: the stored ones plus `Age`,
/// `Cache-Status` (RFC 9211) and, when stale, `Warning: 110` (and `111`
/// when it stands in for an error).
pub fn answer_headers(e: &Entry, served: Served, now_ms: u64) -> HeaderMap {
    let mut h = e.headers.clone();
    h.insert(header::AGE, HeaderValue::from(e.age_s(now_ms)));
    let ttl = e.ttl_s(now_ms);
    let status = match served {
        Served::Hit => format!("phalanx; hit; ttl={ttl}"),
        Served::StaleWhileRevalidate => {
            format!("phalanx; hit; ttl={ttl}; detail=stale-while-revalidate")
        }
        Served::StaleIfError(s) => format!(
            "phalanx; fwd=stale; fwd-status={}; ttl={ttl}; detail=stale-if-error",
            s.as_u16()
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&status) {
        h.insert(HeaderName::from_static("cache-status"), v);
    }
    let stale = !matches!(served, Served::Hit) && e.freshness(now_ms) != Freshness::Fresh;
    if stale {
        h.append(
            header::WARNING,
            HeaderValue::from_static("110 phalanx \"Response is Stale\""),
        );
    }
    if matches!(served, Served::StaleIfError(_)) {
        h.append(
            header::WARNING,
            HeaderValue::from_static("111 phalanx \"Revalidation Failed\""),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// The receipt time of the test responses.
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
    }

    /// [`super::storable`] for a response received at [`t0`].
    fn storable(
        cfg: &CacheConfig,
        status: StatusCode,
        resp: &HeaderMap,
        authorized: bool,
    ) -> Option<Lifetimes> {
        super::storable(cfg, status, resp, authorized, t0())
    }

    #[test]
    fn expires_gives_freshness_without_max_age() {
        let c = cfg();
        let ok = StatusCode::OK;
        let date = |secs: u64| {
            httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        };
        let t = 1_700_000_000;
        // Expires - Date.
        let h = hm(&[("date", &date(t - 100)), ("expires", &date(t - 40))]);
        assert_eq!(storable(&c, ok, &h, false).unwrap().fresh_ms, 60_000);
        // No Date: from the receipt time.
        let h = hm(&[("expires", &date(t + 30))]);
        assert_eq!(storable(&c, ok, &h, false).unwrap().fresh_ms, 30_000);
        // The older formats of RFC 9110 §5.6.7 are accepted.
        let h = hm(&[
            ("date", "Sunday, 06-Nov-94 08:49:37 GMT"),
            ("expires", "Sun Nov  6 08:50:37 1994"),
        ]);
        assert_eq!(storable(&c, ok, &h, false).unwrap().fresh_ms, 60_000);
        // In the past, or invalid (`0`): already expired, not the route default.
        let long = CacheConfig {
            default_max_age_ms: 99_000,
            ..cfg()
        };
        let h = hm(&[("expires", &date(t - 5))]);
        assert_eq!(storable(&long, ok, &h, false).unwrap().fresh_ms, 0);
        let h = hm(&[("expires", "0")]);
        assert_eq!(storable(&long, ok, &h, false).unwrap().fresh_ms, 0);
        assert_eq!(
            storable(&long, ok, &HeaderMap::new(), false)
                .unwrap()
                .fresh_ms,
            99_000
        );
        // max-age and s-maxage win over Expires.
        let h = hm(&[("expires", &date(t + 30)), ("cache-control", "max-age=5")]);
        assert_eq!(storable(&c, ok, &h, false).unwrap().fresh_ms, 5_000);
        let h = hm(&[("expires", &date(t + 30)), ("cache-control", "s-maxage=7")]);
        assert_eq!(storable(&c, ok, &h, false).unwrap().fresh_ms, 7_000);
        // no-cache still means 0.
        let h = hm(&[("expires", &date(t + 30)), ("cache-control", "no-cache")]);
        assert_eq!(storable(&c, ok, &h, false).unwrap().fresh_ms, 0);
    }

    fn cfg() -> CacheConfig {
        CacheConfig {
            default_stale_if_error_ms: 10_000,
            ..CacheConfig::default()
        }
    }

    const ANY: RequestPolicy = RequestPolicy {
        bypass: false,
        forward: false,
    };

    fn put(
        c: &ResponseCache,
        cfg: &CacheConfig,
        key: &str,
        cc: &str,
        body: &str,
        now: u64,
    ) -> Stored {
        let h = hm(&[("cache-control", cc)]);
        let life = storable(cfg, StatusCode::OK, &h, false).expect("storable");
        c.insert(
            cfg,
            key,
            &HeaderMap::new(),
            StatusCode::OK,
            h,
            Bytes::from(body.to_string()),
            life,
            now,
        )
    }

    #[test]
    fn directives_parse_numbers_flags_and_quoted_forms() {
        let d = Directives::parse(&hm(&[
            (
                "cache-control",
                "max-age=60, s-maxage=\"30\", stale-if-error=600",
            ),
            (
                "cache-control",
                "Stale-While-Revalidate=5, private=\"set-cookie\", no-cache",
            ),
        ]));
        assert_eq!(d.max_age_s, Some(60));
        assert_eq!(d.s_maxage_s, Some(30));
        assert_eq!(d.stale_if_error_s, Some(600));
        assert_eq!(d.stale_while_revalidate_s, Some(5));
        assert!(d.private && d.no_cache && !d.no_store && !d.public);
        let bad = Directives::parse(&hm(&[("cache-control", "max-age=-1, max-age")]));
        assert_eq!(bad.max_age_s, None);
        let huge = Directives::parse(&hm(&[("cache-control", "max-age=99999999999999")]));
        assert_eq!(huge.max_age_s, Some(MAX_DIRECTIVE_S));
    }

    #[test]
    fn what_is_stored_and_for_how_long() {
        let c = cfg();
        let ok = StatusCode::OK;
        let life = |cc: &str| storable(&c, ok, &hm(&[("cache-control", cc)]), false);
        assert_eq!(life("no-store"), None);
        assert_eq!(life("private, max-age=60"), None);
        let l = life("max-age=60").unwrap();
        assert_eq!(
            (l.fresh_ms, l.stale_if_error_ms, l.stale_while_revalidate_ms),
            (60_000, 10_000, 0)
        );
        let l = life("max-age=60, s-maxage=5").unwrap();
        assert_eq!(l.fresh_ms, 5_000, "s-maxage wins for a shared cache");
        assert_eq!(l.stale_if_error_ms, 0, "s-maxage: no default stale window");
        let l = life("no-cache, stale-if-error=30, stale-while-revalidate=9").unwrap();
        assert_eq!(
            (l.fresh_ms, l.stale_if_error_ms, l.stale_while_revalidate_ms),
            (0, 30_000, 0)
        );
        let l = life("max-age=1, must-revalidate").unwrap();
        assert_eq!(l.stale_if_error_ms, 0);
        let l = life("max-age=1, stale-while-revalidate=7").unwrap();
        assert_eq!(l.stale_while_revalidate_ms, 7_000);
        // Defaults when the upstream says nothing.
        let l = storable(&c, ok, &HeaderMap::new(), false).unwrap();
        assert_eq!((l.fresh_ms, l.stale_if_error_ms), (0, 10_000));
        // Errors, cookies, Vary: *, Authorization without public.
        assert_eq!(
            storable(&c, StatusCode::BAD_GATEWAY, &HeaderMap::new(), false),
            None
        );
        assert_eq!(storable(&c, ok, &hm(&[("set-cookie", "a=b")]), false), None);
        assert_eq!(storable(&c, ok, &hm(&[("vary", "*")]), false), None);
        assert_eq!(life("max-age=5").map(|_| ()), Some(()));
        assert_eq!(
            storable(&c, ok, &hm(&[("cache-control", "max-age=5")]), true),
            None
        );
        assert!(storable(&c, ok, &hm(&[("cache-control", "public, max-age=5")]), true).is_some());
        // Upstream Age counts.
        let l = storable(&c, ok, &hm(&[("age", "3")]), false).unwrap();
        assert_eq!(l.initial_age_ms, 3_000);
    }

    #[test]
    fn an_entry_goes_fresh_then_stale_while_revalidate_then_error_only_then_expired() {
        let c = cfg();
        let cache = ResponseCache::default();
        let t0 = 1_000;
        put(
            &cache,
            &c,
            "k",
            "max-age=2, stale-while-revalidate=3, stale-if-error=10",
            "v",
            t0,
        );
        let req = HeaderMap::new();
        assert!(matches!(
            cache.lookup("k", &req, ANY, t0 + 1_999),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            cache.lookup("k", &req, ANY, t0 + 2_000),
            Lookup::StaleWhileRevalidate(_)
        ));
        match cache.lookup("k", &req, ANY, t0 + 5_000) {
            Lookup::Forward {
                stale: Some(e),
                reason: "stale",
            } => {
                assert!(e.usable_on_error(t0 + 11_999));
                assert!(!e.usable_on_error(t0 + 12_000));
                assert_eq!(e.age_s(t0 + 5_000), 5);
                assert_eq!(e.ttl_s(t0 + 5_000), -3);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cache.lookup("k", &req, ANY, t0 + 12_000),
            Lookup::Forward {
                stale: None,
                reason: "uri-miss"
            }
        ));
        assert_eq!(cache.usage(), (0, 0), "expired entries are dropped");
    }

    #[test]
    fn request_no_cache_forwards_but_keeps_the_stale_fallback_and_no_store_is_read() {
        let c = cfg();
        let cache = ResponseCache::default();
        put(&cache, &c, "k", "max-age=60", "v", 0);
        let p = RequestPolicy::of(&hm(&[("cache-control", "no-cache")]));
        assert!(p.forward && !p.bypass);
        assert!(matches!(
            cache.lookup("k", &HeaderMap::new(), p, 10),
            Lookup::Forward {
                stale: Some(_),
                reason: "request"
            }
        ));
        assert!(RequestPolicy::of(&hm(&[("cache-control", "no-store")])).bypass);
        assert!(RequestPolicy::of(&hm(&[("pragma", "no-cache")])).forward);
    }

    #[test]
    fn vary_keeps_variants_apart() {
        let c = cfg();
        let cache = ResponseCache::default();
        let h = hm(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]);
        let life = storable(&c, StatusCode::OK, &h, false).unwrap();
        let fr = hm(&[("accept-language", "fr")]);
        cache.insert(
            &c,
            "k",
            &fr,
            StatusCode::OK,
            h,
            Bytes::from("bonjour"),
            life,
            0,
        );
        assert!(matches!(cache.lookup("k", &fr, ANY, 1), Lookup::Fresh(_)));
        let en = hm(&[("accept-language", "en")]);
        assert!(matches!(
            cache.lookup("k", &en, ANY, 1),
            Lookup::Forward {
                stale: None,
                reason: "vary-miss"
            }
        ));
    }

    #[test]
    fn bounds_evict_the_least_recently_used() {
        let c = CacheConfig {
            max_cache_entries: 2,
            ..cfg()
        };
        let cache = ResponseCache::default();
        put(&cache, &c, "a", "max-age=60", "1", 0);
        put(&cache, &c, "b", "max-age=60", "2", 0);
        // Using `a` makes `b` the least recently used.
        assert!(matches!(
            cache.lookup("a", &HeaderMap::new(), ANY, 1),
            Lookup::Fresh(_)
        ));
        let s = put(&cache, &c, "c", "max-age=60", "3", 2);
        assert_eq!(
            s,
            Stored {
                evicted: 1,
                stored: true
            }
        );
        assert!(matches!(
            cache.lookup("b", &HeaderMap::new(), ANY, 3),
            Lookup::Forward { .. }
        ));
        assert!(matches!(
            cache.lookup("a", &HeaderMap::new(), ANY, 3),
            Lookup::Fresh(_)
        ));

        // Byte bound: each entry is ~overhead + key + header + 1000 bytes.
        let per = ENTRY_OVERHEAD_BYTES
            + 1
            + ("cache-control".len() + "max-age=60".len() + 4) as u64
            + 1_000;
        let c = CacheConfig {
            max_cache_bytes: 3 * per,
            max_cacheable_body_bytes: 1_000,
            ..cfg()
        };
        let cache = ResponseCache::default();
        let body = "x".repeat(1_000);
        for k in ["a", "b", "c"] {
            assert_eq!(put(&cache, &c, k, "max-age=60", &body, 0).evicted, 0);
        }
        assert_eq!(cache.usage(), (3, 3 * per));
        assert_eq!(put(&cache, &c, "d", "max-age=60", &body, 0).evicted, 1);
        assert_eq!(cache.usage(), (3, 3 * per));
        // Too large a body is not stored at all.
        let big = "x".repeat(1_001);
        assert!(!put(&cache, &c, "e", "max-age=60", &big, 0).stored);
    }

    #[test]
    fn one_refresh_per_key_and_a_global_bound() {
        let cache = Arc::new(ResponseCache::default());
        let g = cache.begin_refresh("a", 2).expect("first");
        assert!(cache.begin_refresh("a", 2).is_none(), "one per key");
        let h = cache.begin_refresh("b", 2).expect("second key");
        assert!(cache.begin_refresh("c", 2).is_none(), "global bound");
        drop(g);
        assert!(cache.begin_refresh("a", 2).is_some());
        drop(h);
    }

    #[test]
    fn answers_say_how_stale_they_are() {
        let c = cfg();
        let cache = ResponseCache::default();
        put(&cache, &c, "k", "max-age=1, stale-if-error=60", "v", 0);
        let Lookup::Forward { stale: Some(e), .. } =
            cache.lookup("k", &HeaderMap::new(), ANY, 4_500)
        else {
            panic!()
        };
        let h = answer_headers(&e, Served::StaleIfError(StatusCode::BAD_GATEWAY), 4_500);
        assert_eq!(h["age"], "4");
        assert_eq!(
            h["cache-status"],
            "phalanx; fwd=stale; fwd-status=502; ttl=-4; detail=stale-if-error"
        );
        let w: Vec<_> = h.get_all("warning").iter().collect();
        assert_eq!(w.len(), 2);
        assert!(w[0].to_str().unwrap().starts_with("110 "));
        assert!(w[1].to_str().unwrap().starts_with("111 "));
        let fresh = answer_headers(&e, Served::Hit, 500);
        assert_eq!(fresh["cache-status"], "phalanx; hit; ttl=0");
        assert!(fresh.get("warning").is_none());
    }
}
