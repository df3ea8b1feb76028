#!/usr/bin/env bash
# Leader-kill write gap of a 3-member phalanx cluster on loopback.
# Usage: bench/failover-gap.sh [RUNS] [extra `phalanx node` flags...]
# Starts the cluster, runs 6 writers (`phalanx bench kv --report-gaps`),
# SIGKILLs the leader 2.5 s in, prints the longest window without a
# successful put. Needs a release build (PHALANX=path to override).
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${PHALANX:-${CARGO_TARGET_DIR:-$ROOT/target}/release/phalanx}
RUNS=${1:-3}; shift || true
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
for run in $(seq 1 "$RUNS"); do
  base=$((24000 + run * 20))
  IC="n1=http://127.0.0.1:$((base+1)),n2=http://127.0.0.1:$((base+2)),n3=http://127.0.0.1:$((base+3))"
  PIDS=()
  for i in 1 2 3; do
    "$P" node --name n$i --data-dir "$WORK/r$run/n$i" \
      --listen-client-urls http://127.0.0.1:$((base+10+i)) --advertise-client-urls http://127.0.0.1:$((base+10+i)) \
      --listen-peer-urls http://127.0.0.1:$((base+i)) --initial-advertise-peer-urls http://127.0.0.1:$((base+i)) \
      --initial-cluster "$IC" --initial-cluster-token gap$run --listen-metrics-urls http://127.0.0.1:$((base+15+i)) "$@" \
      >"$WORK/n$i.log" 2>&1 &
    PIDS+=($!)
  done
  leader=""
  for _ in $(seq 1 100); do
    for i in 1 2 3; do
      curl -s "http://127.0.0.1:$((base+15+i))/metrics" | grep -q '^phalanx_server_is_leader 1' && leader=$i
    done
    [ -n "$leader" ] && break
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "run $run: no leader"; continue; }
  eps="http://127.0.0.1:$((base+11)),http://127.0.0.1:$((base+12)),http://127.0.0.1:$((base+13))"
  "$P" bench kv --endpoints "$eps" --clients 6 --duration 6s --workload put --report-gaps >"$WORK/bench.out" 2>&1 &
  b=$!
  sleep 2.5
  kill -9 "${PIDS[$((leader-1))]}"
  wait "$b"
  echo "run $run: $(grep -i 'longest window' "$WORK/bench.out")"
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
done
