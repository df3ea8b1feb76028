#!/usr/bin/env bash
# Anomaly detection throughput (BENCHMARKS.md, "Anomaly detection"): samples
# per second on one core and state bytes per series of every method over the
# bundled NAB subset (crates/anomaly/testdata/nab), median of the runs.
#
# Usage: bench/anomaly.sh [RUNS]   (default 7; builds `phalanx` in release
#                                   mode first)
# Environment (all optional):
#   SKIP_BUILD=1          use an existing release binary
#   CARGO_TARGET_DIR      where the release binary is (default: ./target)
#   PHALANX=/path/phalanx
#
# Pinned to CPU 0 with taskset when it is installed. On a shared machine the
# wall-clock figure also counts the time the thread waited for the core; the
# on-CPU column (from /proc/thread-self/schedstat) does not.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-7}"
target="${CARGO_TARGET_DIR:-target}"
if [ -z "${SKIP_BUILD:-}" ] && [ -z "${PHALANX:-}" ]; then
    cargo build --release -p phalanx --bin phalanx >&2
fi
phalanx="${PHALANX:-$target/release/phalanx}"
pin=()
if command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c 0)
else
    echo "taskset not found: not pinned to one core" >&2
fi
"${pin[@]}" "$phalanx" anomaly bench --runs "$runs"
