//! `phalanx bench`: the command line of the `bench` library's load
//! generators, converted into its settings, and the printing of reports.

use std::time::Duration;

use super::client::SecurityArgs;

/// `phalanx bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// Benchmarks available under `phalanx bench`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Drive an etcd-v3 KV endpoint set and report ops/s, latency, errors
    Kv(KvArgs),
    /// Print one JSON line per endpoint: member id, leader id, is_leader
    /// (what `etcdctl endpoint status` shows; used by bench/kv.sh to find
    /// the leader when etcdctl cannot talk to an endpoint)
    Status(StatusArgs),
}

/// `phalanx bench status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Comma-separated client URLs.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Per-endpoint timeout in milliseconds (connect plus request).
    #[arg(long, default_value_t = 2_000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// What each client does in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    /// Authenticate with --user's name and password in a loop (logins per second).
    Authenticate,
}

/// `phalanx bench kv`.
#[derive(Debug, Clone, clap::Args)]
pub struct KvArgs {
    /// Comma-separated client URLs; clients are assigned round-robin.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Concurrent clients, each with its own gRPC connection.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// How long to run, e.g. `10s`, `500ms`, `1m`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,
    /// Size of each written value, in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Number of distinct keys (`bench/00000000` ...) chosen uniformly.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Fill workload: puts per transaction (etcd's default limit is 128).
    #[arg(long, default_value_t = 100)]
    pub fill_txn_ops: u64,
    /// Mixed workload: percentage (0-100) of operations that are puts.
    #[arg(long, default_value_t = 50)]
    pub put_percent: u8,
    /// Per-request timeout in milliseconds; a timed-out request counts as
    /// an error.
    #[arg(long, default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// Timeout for establishing each client's connection, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// Pause after a failed request, in milliseconds, so a dead endpoint
    /// does not turn into a busy loop of instant errors.
    #[arg(long, default_value_t = 10)]
    pub error_backoff_ms: u64,
    /// Record the longest window (ms) without any successful put.
    #[arg(long)]
    pub report_gaps: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub security: SecurityArgs,
}

impl StatusArgs {
    fn into_settings(self) -> anyhow::Result<bench::StatusArgs> {
        Ok(bench::StatusArgs {
            security: self.security.load()?,
            endpoints: self.endpoints,
            timeout_ms: self.timeout_ms,
        })
    }
}

impl From<Workload> for bench::Workload {
    fn from(a: Workload) -> Self {
        match a {
            Workload::Put => Self::Put,
            Workload::GetLinearizable => Self::GetLinearizable,
            Workload::GetSerializable => Self::GetSerializable,
            Workload::Mixed => Self::Mixed,
            Workload::Fill => Self::Fill,
            Workload::Authenticate => Self::Authenticate,
        }
    }
}

impl KvArgs {
    fn into_settings(self) -> anyhow::Result<bench::KvArgs> {
        let a = self;
        Ok(bench::KvArgs {
            security: a.security.load()?,
            endpoints: a.endpoints,
            clients: a.clients,
            duration: a.duration,
            workload: a.workload.into(),
            value_bytes: a.value_bytes,
            keys: a.keys,
            fill_txn_ops: a.fill_txn_ops,
            put_percent: a.put_percent,
            request_timeout_ms: a.request_timeout_ms,
            connect_timeout_ms: a.connect_timeout_ms,
            error_backoff_ms: a.error_backoff_ms,
            report_gaps: a.report_gaps,
            json: a.json,
        })
    }
}

/// Builds a runtime, runs the chosen benchmark and prints its report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.command {
        BenchCommand::Status(st) => {
            for line in rt.block_on(bench::endpoint_status(&st.into_settings()?)) {
                println!("{line}");
            }
        }
        BenchCommand::Kv(kv) => {
            let json = kv.json;
            let report = rt.block_on(bench::run_kv(&kv.into_settings()?))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
        }
    }
    Ok(())
}
