//! `phalanx`: the one binary. It only parses the command line and wires the
//! library crates together; all behaviour lives in `crates/*`.

use clap::{Parser, Subcommand};

mod cli;
mod demo;
mod node_cmd;

#[derive(Parser)]
#[command(
    name = "phalanx",
    version,
    about = "Phalanx: a high-availability platform in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // SUBCOMMANDS (each helper adds its own line here)
    /// Alerting: rules, notification configuration, silences, alerts (docs/alerting.md)
    #[command(subcommand)]
    Alerting(cli::alerting::AlertingCommand),
    /// Print the event timeline (leader changes, members down/up, alerts, silences, config changes)
    Events(cli::alerting::EventsArgs),
    /// Back up the replicated store (file://, s3://); list and verify backups
    #[command(subcommand)]
    Backup(cli::backup::BackupCommand),
    /// Write a new member's data dir from a backup (etcdutl snapshot restore's flags)
    Restore(cli::backup::RestoreArgs),
    /// Run a sample HTTP backend answering with its name (used by the demo)
    #[command(hide = true)]
    SampleBackend(demo::SampleBackendArgs),
    /// Inject faults into a cluster under load and judge the result
    Drill(cli::drill::DrillArgs),
    /// Detect anomalies in time series, or score detectors by the NAB method
    #[command(subcommand)]
    Anomaly(cli::anomaly::AnomalyCommand),
    /// Run the deterministic cluster simulator over many seeds
    Sim(cli::sim::SimArgs),
    /// Check a history for linearizability (or --watch / --leases logs)
    Check(cli::check::CheckArgs),
    /// Benchmark an etcd-v3 endpoint set (real etcd or phalanx)
    Bench(cli::bench::BenchArgs),
    /// Run one member of a replicated store cluster (takes etcd's flags)
    Node(Box<node_cmd::NodeArgs>),
    /// Start a local 3-member cluster and print how to use it
    Demo(demo::DemoArgs),
    /// Run an HTTP/TCP load balancer
    Gateway(cli::gateway::GatewayArgs),
}

fn main() {
    if let Err(e) = run() {
        // The whole context chain, one line: what failed, and why.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    // A child of `phalanx demo`, a drill or a test dies with its launcher
    // (drill::cluster::exit_with_parent); first, before any thread starts.
    drill::cluster::exit_with_parent_if_asked()?;
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let log = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colour only on a terminal: a member's stderr is often a log file.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(
                tracing_subscriber::EnvFilter::try_from_env("PHALANX_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            // openraft's per-RPC warnings: one line per call site per 10 s.
            .with_filter(consensus::log_limit::RepeatLimiter::default());
        tracing_subscriber::registry().with(log).init();
    }
    let cli = Cli::parse();
    match cli.command {
        // DISPATCH (each helper adds its own arm here)
        Command::Alerting(cmd) => cli::alerting::run(cmd),
        Command::Events(args) => cli::alerting::run_events(args),
        Command::Backup(cmd) => cli::backup::run(cmd),
        Command::Restore(args) => cli::backup::run_restore(args),
        Command::SampleBackend(args) => demo::run_sample_backend(args),
        Command::Drill(args) => std::process::exit(drill::run_blocking(args.into())),
        Command::Anomaly(cmd) => cli::anomaly::run(cmd),
        Command::Sim(args) => std::process::exit(cli::sim::run(args)),
        Command::Check(args) => std::process::exit(cli::check::run(args)),
        Command::Bench(args) => cli::bench::run(args),
        Command::Node(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(node_cmd::run(*args)),
        Command::Demo(args) => demo::run(args),
        Command::Gateway(args) => {
            let mut rt = if args.worker_threads == Some(1) {
                tokio::runtime::Builder::new_current_thread()
            } else {
                tokio::runtime::Builder::new_multi_thread()
            };
            if let Some(n) = args.worker_threads.filter(|n| *n > 1) {
                rt.worker_threads(n);
            }
            rt.enable_all().build()?.block_on(cli::gateway::run(args))
        }
    }
}
