#!/usr/bin/env bash
# Idle RSS of `phalanx gateway` with 1,000 endpoints configured and active
# health checks running against them (issue 16 target: <= 30 MB).
#
# Usage (from the repository root):
#   CARGO_TARGET_DIR=/work/target-gw cargo build --release -p phalanx
#   PHALANX=/work/target-gw/release/phalanx bench/gateway-rss.sh
#
# ENDPOINTS (default 1000), KIND (health check kind: http (default) or tcp),
# INTERVAL_MS (check interval, default 1000), IDLE_S (default 10): the gateway
# runs idle (no client traffic) for IDLE_S seconds while its checks run; RSS
# is sampled every second and the largest sample is reported. The endpoints
# are closed ports on 127.0.0.2-5, so every check fails fast (connection
# refused) and the endpoints go unhealthy, as on a real outage.
set -euo pipefail

PHALANX=${PHALANX:-${CARGO_TARGET_DIR:-target}/release/phalanx}
ENDPOINTS=${ENDPOINTS:-1000}
KIND=${KIND:-http}
INTERVAL_MS=${INTERVAL_MS:-1000}
IDLE_S=${IDLE_S:-10}
PROXY_CPU=${PROXY_CPU:-0}
[ -x "$PHALANX" ] || { echo "phalanx binary not found at $PHALANX (build with cargo build --release -p phalanx)"; exit 1; }
WORK=$(mktemp -d /tmp/gwrss.XXXXXX)
GPID=""
cleanup() { [ -n "$GPID" ] && kill -9 "$GPID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CFG="$WORK/gateway.toml"
{
  echo "admin_listen = \"127.0.0.1:$admin\""
  echo '[[listeners]]'; echo 'name = "web"'; echo "address = \"127.0.0.1:$port\""
  echo '[[pools]]'; echo 'name = "big"'
  echo "health_check = { kind = \"$KIND\", interval_ms = $INTERVAL_MS, timeout_ms = 500 }"
  echo -n 'endpoints = ['
  for i in $(seq 1 "$ENDPOINTS"); do echo -n "\"127.0.0.$((i / 250 + 2)):$((20000 + i))\", "; done
  echo ']'
  echo '[[routes]]'; echo 'pool = "big"'
} >"$CFG"
taskset -c "$PROXY_CPU" "$PHALANX" gateway --config "$CFG" --worker-threads 1 2>"$WORK/gateway.log" &
GPID=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$admin/healthz" && break; sleep 0.1; done
max=0
for _ in $(seq 1 "$IDLE_S"); do
  sleep 1
  kb=$(awk '/VmRSS/{print $2}' "/proc/$GPID/status")
  [ "$kb" -gt "$max" ] && max=$kb
done
checks=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^gateway_endpoint_healthy/ {n++; if ($NF == 0) d++} END {printf "%d endpoints, %d unhealthy", n, d}')
kill -TERM "$GPID"; wait "$GPID" 2>/dev/null || true; GPID=""
echo "phalanx idle RSS with $ENDPOINTS endpoints ($KIND health checks every ${INTERVAL_MS} ms; $checks after ${IDLE_S} s): $((max / 1024)) MB (${max} kB, largest 1 s sample)"
