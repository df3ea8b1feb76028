//! Showing a long operation's progress (`backup now`, `backup verify`,
//! `restore`): a progress bar on stderr when it is a terminal (`indicatif`),
//! plain lines every `--progress-interval-ms` otherwise (a log file, CI).
//! The operation counts into a `backup::progress::Progress`; this only draws.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use backup::progress::Progress;

/// How often the progress bar is redrawn, ms.
const BAR_REFRESH_MS: u64 = 100;

#[derive(clap::Args, Debug, Clone)]
pub struct ProgressArgs {
    /// When stderr is not a terminal, print a progress line this often, ms
    /// (0: none). On a terminal a progress bar is drawn instead.
    #[arg(long, default_value_t = 5_000)]
    pub progress_interval_ms: u64,
}

/// Run `op`, showing the progress it counts into `progress` on stderr.
pub async fn shown<T>(args: &ProgressArgs, progress: &Progress, op: impl Future<Output = T>) -> T {
    let terminal = std::io::stderr().is_terminal();
    if !terminal && args.progress_interval_ms == 0 {
        return op.await;
    }
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {msg}",
            )
            .expect("a valid template"),
        );
        bar
    });
    let every = Duration::from_millis(if terminal {
        BAR_REFRESH_MS
    } else {
        args.progress_interval_ms
    });
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(op);
    let out = loop {
        tokio::select! {
            out = &mut op => break out,
            _ = tick.tick() => {
                let s = progress.snapshot();
                match &bar {
                    Some(bar) => {
                        match s.total_bytes {
                            Some(t) => bar.set_length(t),
                            // Unknown until the end (a backup): the bar follows what was read.
                            None => bar.set_length(s.done_bytes),
                        }
                        bar.set_position(s.done_bytes);
                        bar.set_message(format!("{} · {} chunks", s.phase, s.chunks));
                    }
                    None => eprintln!("{}", s.line()),
                }
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    out
}
