//! Per-method gRPC server metrics, under etcd's names (go-grpc-prometheus):
//! `grpc_server_started_total`, `grpc_server_handled_total` (by
//! `grpc_code`) and `grpc_server_handling_seconds`, each labelled
//! `grpc_type`, `grpc_service`, `grpc_method`. They give the request rate,
//! error ratio and latency of every store method to the metrics history,
//! the alerting rules and the anomaly functions (docs/anomaly.md).
//!
//! [`Metered`] wraps one tonic service. A call's outcome is known either
//! from the response head (a "trailers-only" error carries `grpc-status`
//! there) or from the trailers at the end of the response body, which
//! [`MeteredBody`] watches; a body dropped before its end (the client went
//! away) counts as `Canceled`. The handling time runs from the request to
//! that outcome, so for streams (Watch, LeaseKeepAlive, Snapshot) it is the
//! stream's life, as in etcd.
//!
//! Cost per call: one read-locked map lookup by path and no allocation once
//! a method has been seen; series exist only for methods and codes that
//! occurred. The number of methods is bounded by the services served
//! (unknown paths share one `unknown` entry).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::codegen::http;

/// Labels of a method's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub grpc_type: &'static str,
    pub grpc_service: String,
    pub grpc_method: String,
}

/// Labels of a method's outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub grpc_type: &'static str,
    pub grpc_service: String,
    pub grpc_method: String,
    pub grpc_code: &'static str,
}

/// gRPC status code names, by number (as go-grpc-prometheus writes them).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CODE_CANCELED: usize = 1;
const CODE_UNKNOWN: usize = 2;

/// Most distinct method paths given series of their own; further paths
/// (only a client calling methods no service serves) share `unknown`.
pub const MAX_METERED_METHODS: usize = 128;

/// Streaming methods of the served services (all others are unary).
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot")
        | ("etcdserverpb.KV", "RangeStream")
        | ("v3electionpb.Election", "Observe") => "server_stream",
        _ => "unary",
    }
}

/// One method's series.
struct MethodMetrics {
    labels: MethodLabels,
    started: Counter,
    handling: Histogram,
    /// Created on a code's first occurrence.
    handled: [OnceLock<Counter>; 17],
}

/// The registry of the gRPC series and the per-method handles.
pub struct GrpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<CodeLabels, Counter>,
    handling: Family<MethodLabels, Histogram>,
    methods: RwLock<HashMap<String, Arc<MethodMetrics>>>,
}

impl GrpcMetrics {
    /// Register the families in `registry` (which should carry no prefix:
    /// the names are etcd's).
    pub fn new(registry: &mut Registry) -> Self {
        let started = Family::<MethodLabels, Counter>::default();
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            started.clone(),
        );
        let handled = Family::<CodeLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by gRPC status code",
            handled.clone(),
        );
        // 100 µs .. about 15 s.
        let handling = Family::<MethodLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.5, 14))) as fn() -> Histogram,
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from an RPC's request to its final status (a stream's whole life)",
            handling.clone(),
        );
        GrpcMetrics {
            started,
            handled,
            handling,
            methods: RwLock::new(HashMap::new()),
        }
    }

    fn method(&self, path: &str) -> Arc<MethodMetrics> {
        if let Some(m) = self.methods.read().expect("methods poisoned").get(path) {
            return m.clone();
        }
        let mut methods = self.methods.write().expect("methods poisoned");
        let key = if methods.len() >= MAX_METERED_METHODS {
            "unknown"
        } else {
            path
        };
        if let Some(m) = methods.get(key) {
            return m.clone();
        }
        let (service, method) = match key.trim_start_matches('/').split_once('/') {
            Some((s, m)) if !s.is_empty() && !m.is_empty() => (s, m),
            _ => ("unknown", "unknown"),
        };
        let labels = MethodLabels {
            grpc_type: grpc_type(service, method),
            grpc_service: service.to_string(),
            grpc_method: method.to_string(),
        };
        let m = Arc::new(MethodMetrics {
            started: self.started.get_or_create(&labels).clone(),
            handling: self.handling.get_or_create(&labels).clone(),
            handled: Default::default(),
            labels,
        });
        methods.insert(key.to_string(), m.clone());
        m
    }

    fn finish(&self, m: &MethodMetrics, code: usize, started: Instant) {
        let code = if code < CODE_NAMES.len() {
            code
        } else {
            CODE_UNKNOWN
        };
        m.handling.observe(started.elapsed().as_secs_f64());
        m.handled[code]
            .get_or_init(|| {
                self.handled
                    .get_or_create(&CodeLabels {
                        grpc_type: m.labels.grpc_type,
                        grpc_service: m.labels.grpc_service.clone(),
                        grpc_method: m.labels.grpc_method.clone(),
                        grpc_code: CODE_NAMES[code],
                    })
                    .clone()
            })
            .inc();
    }
}

/// The status code a `grpc-status` header or trailer names (`Unknown` if
/// it is missing or not a number).
fn code_of(headers: &http::HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(CODE_UNKNOWN),
    )
}

/// A tonic service with its calls counted and timed (see the module docs).
#[derive(Clone)]
pub struct Metered<S> {
    metrics: Arc<GrpcMetrics>,
    inner: S,
}

impl<S> Metered<S> {
    pub fn new(metrics: Arc<GrpcMetrics>, inner: S) -> Self {
        Metered { metrics, inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for Metered<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let method = metrics.method(req.uri().path());
        method.started.inc();
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Err(e) => {
                    metrics.finish(&method, CODE_UNKNOWN, started);
                    Err(e)
                }
                Ok(resp) => {
                    if let Some(code) = code_of(resp.headers()) {
                        // Trailers-only: the outcome is in the head.
                        metrics.finish(&method, code, started);
                        return Ok(resp);
                    }
                    Ok(resp.map(|body| {
                        tonic::body::Body::new(MeteredBody {
                            inner: body,
                            pending: Some(Pending {
                                metrics,
                                method,
                                started,
                            }),
                        })
                    }))
                }
            }
        })
    }
}

/// What a response body still has to record.
struct Pending {
    metrics: Arc<GrpcMetrics>,
    method: Arc<MethodMetrics>,
    started: Instant,
}

impl Pending {
    fn finish(self, code: usize) {
        self.metrics.finish(&self.method, code, self.started);
    }
}

/// A response body that records the call's outcome from its trailers, or
/// `Canceled` when dropped before its end.
pub struct MeteredBody {
    inner: tonic::body::Body,
    pending: Option<Pending>,
}

impl http_body::Body for MeteredBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let out = Pin::new(&mut self.inner).poll_frame(cx);
        match &out {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = code_of(trailers).unwrap_or(CODE_UNKNOWN);
                    if let Some(p) = self.pending.take() {
                        p.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(p) = self.pending.take() {
                    p.finish(CODE_UNKNOWN);
                }
            }
            Poll::Ready(None) => {
                // Ended without trailers: no status was sent.
                if let Some(p) = self.pending.take() {
                    p.finish(CODE_UNKNOWN);
                }
            }
            Poll::Pending => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.finish(CODE_CANCELED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_split_and_typed_and_bounded() {
        let mut reg = Registry::default();
        let g = GrpcMetrics::new(&mut reg);
        let m = g.method("/etcdserverpb.KV/Range");
        assert_eq!(m.labels.grpc_service, "etcdserverpb.KV");
        assert_eq!(m.labels.grpc_method, "Range");
        assert_eq!(m.labels.grpc_type, "unary");
        assert_eq!(
            g.method("/etcdserverpb.Watch/Watch").labels.grpc_type,
            "bidi_stream"
        );
        assert!(Arc::ptr_eq(&m, &g.method("/etcdserverpb.KV/Range")));
        for i in 0..(MAX_METERED_METHODS * 2) {
            g.method(&format!("/x.Y/M{i}"));
        }
        assert!(g.methods.read().unwrap().len() <= MAX_METERED_METHODS + 1);
        assert_eq!(g.method("/x.Y/Mlast").labels.grpc_method, "unknown");
    }

    #[test]
    fn outcomes_are_counted_by_code() {
        let mut reg = Registry::default();
        let g = GrpcMetrics::new(&mut reg);
        let m = g.method("/etcdserverpb.KV/Put");
        g.finish(&m, 0, Instant::now());
        g.finish(&m, 14, Instant::now());
        g.finish(&m, 14, Instant::now());
        g.finish(&m, 99, Instant::now());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(text.contains(
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put",grpc_code="Unavailable"} 2"#
        ), "{text}");
        assert!(text.contains(r#"grpc_code="OK"} 1"#), "{text}");
        assert!(text.contains(r#"grpc_code="Unknown"} 1"#), "{text}");
        assert!(text.contains(
            r#"grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="etcdserverpb.KV",grpc_method="Put"} 4"#
        ), "{text}");
    }
}
