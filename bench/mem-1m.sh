#!/usr/bin/env bash
# Resident memory per member with 1M keys: a 3-member etcd 3.4 cluster and a
# 3-member phalanx cluster, each filled with KEYS (default 1,000,000) keys of
# 256-byte values through `phalanx bench kv --workload fill` (100 puts per
# txn), then RSS of every member after the load, side by side.
# Usage: bench/mem-1m.sh   (needs a release build: PHALANX=path to override)
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${PHALANX:-${CARGO_TARGET_DIR:-$ROOT/target}/release/phalanx}
ETCD=${ETCD:-/usr/bin/etcd}
KEYS=${KEYS:-1000000}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
rss() { awk '/VmRSS/ {printf "%d", $2/1024}' "/proc/$1/status"; }
run() {
  local sys=$1 base=$2
  local IC="n1=http://127.0.0.1:$((base+1)),n2=http://127.0.0.1:$((base+2)),n3=http://127.0.0.1:$((base+3))"
  local pids=()
  for i in 1 2 3; do
    local flags=(--name n$i --data-dir "$WORK/$sys/n$i"
      --listen-client-urls http://127.0.0.1:$((base+10+i)) --advertise-client-urls http://127.0.0.1:$((base+10+i))
      --listen-peer-urls http://127.0.0.1:$((base+i)) --initial-advertise-peer-urls http://127.0.0.1:$((base+i))
      --initial-cluster "$IC" --initial-cluster-state new --initial-cluster-token mem-$sys)
    if [ "$sys" = etcd ]; then "$ETCD" "${flags[@]}" >"$WORK/$sys-n$i.log" 2>&1 &
    else "$P" node "${flags[@]}" >"$WORK/$sys-n$i.log" 2>&1 &
    fi
    pids+=($!); PIDS+=($!)
  done
  local eps="http://127.0.0.1:$((base+11)),http://127.0.0.1:$((base+12)),http://127.0.0.1:$((base+13))"
  for _ in $(seq 1 100); do "$P" bench status --endpoints "$eps" 2>/dev/null | grep -q '"is_leader":true' && break; sleep 0.2; done
  local t0=$(date +%s)
  "$P" bench kv --endpoints "$eps" --clients 8 --duration 1h --workload fill --keys "$KEYS" >"$WORK/$sys-fill.out" 2>&1
  local secs=$(( $(date +%s) - t0 ))
  sleep 2
  echo "| $sys | $KEYS | ${secs}s | $(rss ${pids[0]}) / $(rss ${pids[1]}) / $(rss ${pids[2]}) | $(grep -i '^errors' "$WORK/$sys-fill.out" | head -1) |"
  # Name every error (the load generator groups them by message below the
  # count), so a failed fill says why.
  sed -n '/^errors/,$p' "$WORK/$sys-fill.out" | tail -n +2 | sed "s/^/  $sys fill error: /" >&2
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
}
echo "| system | keys | fill time | RSS per member after fill (MiB) | fill errors |"
echo "| --- | ---: | ---: | ---: | --- |"
run etcd 26000
run phalanx 26100
