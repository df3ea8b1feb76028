//! `phalanx`: the one binary. It only parses the command line and wires the
//! library crates together; all behaviour lives in `crates/*`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "phalanx", version, about = "Phalanx: a high-availability platform in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // SUBCOMMANDS (each helper adds its own line here)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHALANX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        // DISPATCH (each helper adds its own arm here)
    }
}
