//! `phalanx anomaly`: run a streaming anomaly detector over a CSV file, score
//! a directory of detector results by the NAB method, or measure the
//! detectors' throughput. All behaviour lives in the `anomaly` crate; this
//! only parses arguments and prints.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

/// `phalanx anomaly …` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AnomalyCommand {
    /// Score every row of a `timestamp,value` CSV; prints
    /// `timestamp,value,anomaly_score` CSV (NAB's result format) on stdout
    Detect {
        /// Detection method: ensemble (default), robust, seasonal, forecast, changepoint, cad
        #[arg(long, short, default_value = anomaly::DEFAULT_METHOD)]
        method: String,
        /// Accept rows whose timestamp is earlier than the previous row's
        /// (by default that is an error naming the line)
        #[arg(long)]
        allow_backward: bool,
        /// The input CSV (`-` for stdin)
        file: PathBuf,
    },
    /// Score NAB-style detector results against NAB label windows; prints the
    /// standard, reward-low-FP and reward-low-FN scores
    Score {
        /// Directory holding `<folder>/<file>.csv` result files
        #[arg(long)]
        results: PathBuf,
        /// NAB label file (`combined_windows.json`)
        #[arg(long)]
        labels: PathBuf,
    },
    /// Measure samples per second (one thread; run it under `taskset -c 0`
    /// for a per-core figure) and state bytes per series of each method over
    /// a NAB corpus; prints a Markdown table (median of the runs)
    Bench {
        /// NAB directory (`combined_windows.json` and `data/`); by default
        /// the subset bundled in the source tree this binary was built from
        #[arg(long, default_value = anomaly::nab::BUNDLED_SUBSET_DIR)]
        data: PathBuf,
        /// Methods to measure (repeatable; by default all)
        #[arg(long, short)]
        method: Vec<String>,
        /// Timed runs per method (the median is reported)
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
}

/// Runs one `phalanx anomaly` subcommand.
pub fn run(cmd: AnomalyCommand) -> anyhow::Result<()> {
    match cmd {
        AnomalyCommand::Detect {
            method,
            allow_backward,
            file,
        } => {
            let strictness = if allow_backward {
                anomaly::Strictness::AllowBackward
            } else {
                anomaly::Strictness::Strict
            };
            anomaly::by_name(&method)?; // reject an unknown method before reading
            let name = file.display().to_string();
            let rows = if name == "-" {
                anomaly::detect_csv(std::io::stdin().lock(), "<stdin>", &method, strictness)?
            } else {
                let f = std::fs::File::open(&file).with_context(|| format!("opening {name}"))?;
                anomaly::detect_csv(std::io::BufReader::new(f), &name, &method, strictness)?
            };
            let out = std::io::stdout().lock();
            let mut out = std::io::BufWriter::new(out);
            anomaly::write_detections(&mut out, &rows).context("writing output")?;
            out.flush().context("writing output")?;
            Ok(())
        }
        AnomalyCommand::Bench { data, method, runs } => {
            let methods: Vec<String> = if method.is_empty() {
                anomaly::METHODS.iter().map(|m| m.to_string()).collect()
            } else {
                method
            };
            for m in &methods {
                anomaly::by_name(m)?; // reject an unknown method before loading
            }
            let corpus = anomaly::nab::NabCorpus::load(&data)
                .with_context(|| format!("loading the NAB corpus in {}", data.display()))?;
            let mut results = Vec::new();
            for m in &methods {
                results.push(anomaly::bench::measure(&corpus, m, runs)?);
            }
            print!("{}", anomaly::bench::table(&results));
            Ok(())
        }
        AnomalyCommand::Score { results, labels } => {
            let scores = anomaly::score_results(&results, &labels)
                .with_context(|| format!("scoring {}", results.display()))?;
            print!("{scores}");
            Ok(())
        }
    }
}
