//! Load generators for any etcd-v3 endpoint set (real etcd or phalanx).
//!
//! # Main types
//!
//! * [`KvArgs`] — the settings of `phalanx bench kv` (the binary owns the
//!   command line and converts it into these): N clients, each with its own gRPC
//!   connection to one endpoint (round-robin over `--endpoints`), issue
//!   back-to-back requests of a [`Workload`] for a fixed duration.
//! * [`KvReport`] — throughput, latency percentiles (HdrHistogram,
//!   microseconds), errors grouped by message and, with `--report-gaps`,
//!   the longest window without a successful put (what a client sees while
//!   a leader is replaced). Printed as text or, with `--json`, as JSON.
//!
//! * [`StatusArgs`] / [`endpoint_status`] — `phalanx bench status`, a leader
//!   finder used by `bench/kv.sh`.
//!
//! TLS and auth: every client connects with [`client_security::ClientSecurity`]
//! (etcdctl's `--cacert/--cert/--key/--user`), so `https://` endpoints and
//! clusters with auth enabled are measured the same way as plain ones; the
//! `authenticate` workload measures Authenticate calls per second.
//!
//! Entry point: [`run_kv`] (async). Errors are [`BenchError`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use client_security::ClientSecurity;
use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Why `bench kv` could not run (request failures during a run are counted
/// in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting is unusable; the message names the flag.
    #[error("{0}")]
    InvalidArgument(String),
    /// A client could not connect before the run started.
    #[error("client {client}: cannot connect to {endpoint}: {source}")]
    Connect {
        client: usize,
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    /// Latency histograms could not be built or merged (a bug in the load
    /// generator: every histogram has the same bounds).
    #[error("latency histogram: {0}")]
    Histogram(String),
    /// A client task panicked (a bug in the load generator).
    #[error("client task panicked: {0}")]
    ClientPanicked(String),
}

/// `phalanx bench status`.
#[derive(Debug, Clone)]
pub struct StatusArgs {
    /// Comma-separated client URLs.
    pub endpoints: Vec<String>,
    /// Per-endpoint timeout in milliseconds (connect plus request).
    pub timeout_ms: u64,
    /// TLS and credentials.
    pub security: ClientSecurity,
}

/// Status of every endpoint, in order; unreachable ones carry an error.
pub async fn endpoint_status(args: &StatusArgs) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for ep in &args.endpoints {
        let probe = async {
            let opts = args
                .security
                .options(ConnectOptions::new(), &[ep.as_str()])?;
            let mut c = Client::connect([ep.as_str()], Some(opts)).await?;
            c.status().await
        };
        let v = match tokio::time::timeout(Duration::from_millis(args.timeout_ms), probe).await {
            Ok(Ok(s)) => {
                let member = s.header().map(|h| h.member_id()).unwrap_or_default();
                serde_json::json!({"endpoint": ep, "member_id": member, "leader": s.leader(), "is_leader": member != 0 && member == s.leader()})
            }
            Ok(Err(e)) => serde_json::json!({"endpoint": ep, "error": error_message(&e)}),
            Err(_) => {
                serde_json::json!({"endpoint": ep, "error": format!("timeout (> {} ms)", args.timeout_ms)})
            }
        };
        out.push(v);
    }
    out
}

/// What each client does in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Put a random key.
    Put,
    /// Linearizable (quorum) range read of one random key.
    GetLinearizable,
    /// Serializable (local) read of one random key.
    GetSerializable,
    /// `--put-percent` puts, the rest linearizable gets.
    Mixed,
    /// Write every key `bench/00000000 .. --keys` once, `--fill-txn-ops`
    /// puts per transaction (clients take interleaved batches), then stop:
    /// loads a large data set quickly (e.g. for memory measurements).
    Fill,
    /// Authenticate (`--user`'s name and password) in a loop: logins per
    /// second, bounded by the server's password hashing (bcrypt).
    Authenticate,
}

/// `phalanx bench kv`.
#[derive(Debug, Clone)]
pub struct KvArgs {
    /// Comma-separated client URLs; clients are assigned round-robin.
    pub endpoints: Vec<String>,
    /// Concurrent clients, each with its own gRPC connection.
    pub clients: usize,
    /// How long to run, e.g. `10s`, `500ms`, `1m`.
    pub duration: Duration,
    pub workload: Workload,
    /// Size of each written value, in bytes.
    pub value_bytes: usize,
    /// Number of distinct keys (`bench/00000000` ...) chosen uniformly.
    pub keys: u64,
    /// Fill workload: puts per transaction (etcd's default limit is 128).
    pub fill_txn_ops: u64,
    /// Mixed workload: percentage (0-100) of operations that are puts.
    pub put_percent: u8,
    /// Per-request timeout in milliseconds; a timed-out request counts as
    /// an error.
    pub request_timeout_ms: u64,
    /// Timeout for establishing each client's connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Pause after a failed request, in milliseconds, so a dead endpoint
    /// does not turn into a busy loop of instant errors.
    pub error_backoff_ms: u64,
    /// Record the longest window (ms) without any successful put.
    pub report_gaps: bool,
    /// Print the report as JSON.
    pub json: bool,
    /// TLS and credentials (`--cacert`, `--cert`, `--key`, `--user`).
    pub security: ClientSecurity,
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Result of one `bench kv` run.
#[derive(Debug, Clone, Serialize)]
pub struct KvReport {
    pub workload: Workload,
    pub clients: usize,
    pub endpoints: Vec<String>,
    pub value_bytes: usize,
    /// Measured wall-clock seconds.
    pub duration_s: f64,
    /// Successful operations.
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Latency of successful operations.
    pub latency: Latency,
    pub errors_total: u64,
    /// Error count per distinct message.
    pub errors: BTreeMap<String, u64>,
    /// Longest window without a successful put, in milliseconds (with
    /// `--report-gaps`; includes the start and end of the run).
    pub longest_put_gap_ms: Option<f64>,
}

impl std::fmt::Display for KvReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "workload {:?}, {} clients over {} endpoint(s), {}-byte values, {:.2} s",
            self.workload,
            self.clients,
            self.endpoints.len(),
            self.value_bytes,
            self.duration_s
        )?;
        writeln!(f, "ops:      {} ({:.1} ops/s)", self.ops, self.ops_per_sec)?;
        let l = &self.latency;
        writeln!(
            f,
            "latency:  p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms, mean {:.3} ms",
            l.p50_us as f64 / 1e3,
            l.p99_us as f64 / 1e3,
            l.p999_us as f64 / 1e3,
            l.max_us as f64 / 1e3,
            l.mean_us / 1e3
        )?;
        writeln!(f, "errors:   {}", self.errors_total)?;
        for (msg, n) in &self.errors {
            writeln!(f, "  {n:>8}  {msg}")?;
        }
        if let Some(g) = self.longest_put_gap_ms {
            writeln!(f, "longest window without a successful put: {g:.1} ms")?;
        }
        Ok(())
    }
}

struct ClientResult {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    /// Completion times of successful puts, relative to the run start.
    put_times: Vec<Duration>,
}

/// Small per-client PRNG: key choice only needs to be cheap and spread.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Runs `bench kv`. Fails only if the arguments are unusable or a client
/// cannot connect; request failures during the run are counted instead.
pub async fn run_kv(args: &KvArgs) -> Result<KvReport, BenchError> {
    let invalid = |s: &str| Err(BenchError::InvalidArgument(s.to_string()));
    if args.endpoints.is_empty() {
        return invalid("--endpoints is empty");
    }
    if args.clients == 0 {
        return invalid("--clients must be at least 1");
    }
    if args.keys == 0 {
        return invalid("--keys must be at least 1");
    }
    if args.put_percent > 100 {
        return invalid("--put-percent must be 0..=100");
    }
    let Some(credentials) = args.security.credentials() else {
        if args.workload == Workload::Authenticate {
            return invalid("--workload authenticate needs --user name:password");
        }
        return run_clients(args, None).await;
    };
    run_clients(args, Some(credentials)).await
}

async fn run_clients(
    args: &KvArgs,
    credentials: Option<(String, String)>,
) -> Result<KvReport, BenchError> {
    let base = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(args.connect_timeout_ms))
        .with_timeout(Duration::from_millis(args.request_timeout_ms));
    // Connect everyone before the clock starts so connection setup is not
    // measured as request latency.
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let ep = &args.endpoints[i % args.endpoints.len()];
        let connect_err = |source| BenchError::Connect {
            client: i,
            endpoint: ep.clone(),
            source,
        };
        let opts = args
            .security
            .options(base.clone(), &[ep.as_str()])
            .map_err(connect_err)?;
        let c = Client::connect([ep.as_str()], Some(opts))
            .await
            .map_err(connect_err)?;
        clients.push(c);
    }
    let value = vec![b'v'; args.value_bytes];
    let request_timeout = Duration::from_millis(args.request_timeout_ms);
    let start = Instant::now();
    let end = start + args.duration;
    let mut tasks = Vec::with_capacity(args.clients);
    for (i, client) in clients.into_iter().enumerate() {
        let a = args.clone();
        let value = value.clone();
        let credentials = credentials.clone();
        tasks.push(tokio::spawn(async move {
            let mut kv = client.kv_client();
            let mut auth = client.auth_client();
            let mut rng = XorShift(
                0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
            );
            let mut res = ClientResult {
                hist: Histogram::new_with_bounds(1, 120_000_000, 3)
                    .expect("valid histogram bounds"),
                errors: BTreeMap::new(),
                put_times: Vec::new(),
            };
            let mut fill_batch = i as u64;
            while Instant::now() < end {
                if a.workload == Workload::Fill {
                    let first = fill_batch * a.fill_txn_ops;
                    if first >= a.keys {
                        break;
                    }
                    let ops: Vec<TxnOp> = (first..(first + a.fill_txn_ops).min(a.keys))
                        .map(|k| TxnOp::put(format!("bench/{k:08}"), value.clone(), None))
                        .collect();
                    let t0 = Instant::now();
                    match tokio::time::timeout(request_timeout, kv.txn(Txn::new().and_then(ops)))
                        .await
                    {
                        Ok(Ok(_)) => {
                            res.hist
                                .saturating_record((t0.elapsed().as_micros().max(1)) as u64);
                            fill_batch += a.clients as u64;
                        }
                        Ok(Err(e)) => *res.errors.entry(error_message(&e)).or_default() += 1,
                        Err(_) => {
                            *res.errors
                                .entry(format!("request timeout (> {} ms)", a.request_timeout_ms))
                                .or_default() += 1
                        }
                    }
                    continue;
                }
                if a.workload == Workload::Authenticate {
                    let (name, password) = credentials.clone().unwrap_or_default();
                    let t0 = Instant::now();
                    match tokio::time::timeout(request_timeout, auth.authenticate(name, password))
                        .await
                    {
                        Ok(Ok(_)) => {
                            res.hist
                                .saturating_record((t0.elapsed().as_micros().max(1)) as u64);
                            continue;
                        }
                        Ok(Err(e)) => *res.errors.entry(error_message(&e)).or_default() += 1,
                        Err(_) => {
                            *res.errors
                                .entry(format!("request timeout (> {} ms)", a.request_timeout_ms))
                                .or_default() += 1
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(a.error_backoff_ms)).await;
                    continue;
                }
                let key = format!("bench/{:08}", rng.next() % a.keys);
                let is_put = match a.workload {
                    Workload::Put | Workload::Fill => true,
                    Workload::Authenticate => false,
                    Workload::GetLinearizable | Workload::GetSerializable => false,
                    Workload::Mixed => rng.next() % 100 < a.put_percent as u64,
                };
                let t0 = Instant::now();
                let outcome = tokio::time::timeout(request_timeout, async {
                    if is_put {
                        kv.put(key, value.clone(), None).await.map(|_| ())
                    } else {
                        let opts = (a.workload == Workload::GetSerializable)
                            .then(|| GetOptions::new().with_serializable());
                        kv.get(key, opts).await.map(|_| ())
                    }
                })
                .await;
                let err = match outcome {
                    Ok(Ok(())) => {
                        let done = Instant::now();
                        let us = (done - t0).as_micros().max(1) as u64;
                        res.hist.saturating_record(us);
                        if is_put && a.report_gaps {
                            res.put_times.push(done - start);
                        }
                        continue;
                    }
                    Ok(Err(e)) => error_message(&e),
                    Err(_) => format!("request timeout (> {} ms)", a.request_timeout_ms),
                };
                *res.errors.entry(err).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(a.error_backoff_ms)).await;
            }
            res
        }));
    }
    let mut hist: Histogram<u64> = Histogram::new_with_bounds(1, 120_000_000, 3)
        .map_err(|e| BenchError::Histogram(e.to_string()))?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut put_times = Vec::new();
    for t in tasks {
        let r = t
            .await
            .map_err(|e| BenchError::ClientPanicked(e.to_string()))?;
        hist.add(&r.hist)
            .map_err(|e| BenchError::Histogram(e.to_string()))?;
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
        put_times.extend(r.put_times);
    }
    let elapsed = start.elapsed();
    let longest_put_gap_ms = args
        .report_gaps
        .then(|| longest_gap(put_times, elapsed).as_secs_f64() * 1e3);
    let ops = hist.len();
    Ok(KvReport {
        workload: args.workload,
        clients: args.clients,
        endpoints: args.endpoints.clone(),
        value_bytes: args.value_bytes,
        duration_s: elapsed.as_secs_f64(),
        ops,
        ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
        latency: Latency {
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            mean_us: if ops == 0 { 0.0 } else { hist.mean() },
        },
        errors_total: errors.values().sum(),
        errors,
        longest_put_gap_ms,
    })
}

/// Longest interval between consecutive successful puts, counting the
/// run's start and end as boundaries (a run with no success is one gap).
fn longest_gap(mut times: Vec<Duration>, total: Duration) -> Duration {
    times.sort();
    let mut prev = Duration::ZERO;
    let mut best = Duration::ZERO;
    for t in times.into_iter().chain(std::iter::once(total)) {
        best = best.max(t.saturating_sub(prev));
        prev = t;
    }
    best
}

/// Groups errors by kind: gRPC errors by code and message, without the
/// per-request details that would make every error unique.
fn error_message(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("grpc {:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_includes_run_boundaries() {
        let ms = Duration::from_millis;
        assert_eq!(longest_gap(vec![ms(10), ms(20), ms(90)], ms(100)), ms(70));
        assert_eq!(longest_gap(vec![], ms(100)), ms(100));
        assert_eq!(longest_gap(vec![ms(5), ms(50)], ms(60)), ms(45));
    }
}
