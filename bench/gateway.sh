#!/usr/bin/env bash
# Gateway benchmark: phalanx gateway vs HAProxy vs nginx (proxy), one core each.
#
# Usage (as root, on Debian, from the repository root):
#   CARGO_TARGET_DIR=/work/target-gw cargo build --release -p phalanx
#   PHALANX=/work/target-gw/release/phalanx bench/gateway.sh
#
# Scenarios (wrk -t1 keep-alive, DURATION each): `c32` (32 connections, small
# response), `c256` (256 connections, small response), `big` (32 connections,
# 64 KiB response). ROUNDS rounds (default 3); inside a round every scenario
# runs against HAProxy, nginx and phalanx one after the other, so slow phases
# of the shared machine hit all three alike. The summary gives per-scenario
# medians over the rounds and the ratios to HAProxy. SCENARIOS="c32 big" and
# PROXIES="haproxy phalanx" restrict the run; SKIP_KILL=1 / SKIP_RSS=1 skip
# the backend-kill scenario and the idle-RSS measurement (bench/gateway-rss.sh).
# PHALANX_BASELINE=/path/to/an/older/phalanx adds a `baseline` gateway with the
# same configuration, measured in the same rounds (before/after of a change).
# Every run also reports the backend's CPU per request and the proxy's
# involuntary context switches per request: the backend shares the
# proxies' core, so a proxy that wakes it once per request (and is
# preempted by it) pays twice, in its own CPU and in the backend's.
#
# Needs: nginx, haproxy, wrk, taskset (util-linux), curl, awk: `bash bench/install` installs them.
# Layout: all proxies and backends pinned to core 0, wrk pinned to core 1.
set -euo pipefail
ulimit -n 65536 2>/dev/null || true

PHALANX=${PHALANX:-${CARGO_TARGET_DIR:-target}/release/phalanx}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-3}
SCENARIOS=${SCENARIOS:-c32 c256 big}
PROXIES=${PROXIES:-haproxy nginx phalanx}
PHALANX_BASELINE=${PHALANX_BASELINE:-}
[ -z "$PHALANX_BASELINE" ] || PROXIES="$PROXIES baseline"
PROXY_CPU=${PROXY_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
WORK=$(mktemp -d /tmp/gwbench.XXXXXX)
PIDS=()

for t in nginx haproxy wrk taskset curl awk; do
  command -v "$t" >/dev/null || { echo "missing tool: $t (run: bash bench/install)"; exit 1; }
done
[ -x "$PHALANX" ] || { echo "phalanx binary not found at $PHALANX (build with cargo build --release -p phalanx)"; exit 1; }

# nginx master pid + its workers, from a pid file
nginx_pids() { local m; m=$(cat "$1" 2>/dev/null) || return 0; echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }
kill_nginx() { local p; p=$(nginx_pids "$1"); [ -n "$p" ] && kill -9 $p 2>/dev/null || true; }
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  for f in "$WORK"/*.pid; do [ -e "$f" ] || continue; kill_nginx "$f"; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "port $1 not ready"; return 1; }
# utime+stime in clock ticks for a list of pids
cpu_ticks() { local s=0; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $s; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
# involuntary context switches (preemptions) for a list of pids
invol_cs() { local s=0; for p in "$@"; do s=$((s + $(awk '/^nonvoluntary_ctxt_switches/{print $2}' "/proc/$p/status"))); done; echo $s; }
TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- backends
# nginx, 1 worker: a small static response at / and a 64 KiB one at /big
# (same backend for every proxy).
nginx_backend() { # name port
  local name=$1 port=$2 dir="$WORK/nginx-$1"
  mkdir -p "$dir"
  head -c 65536 /dev/zero | tr '\0' 'x' >"$dir/big.bin"
  # nginx's worker user must read the file (mktemp -d makes a 0700 directory).
  chmod 755 "$WORK" "$dir"; chmod 644 "$dir/big.bin"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx-$name.pid;
error_log $dir/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$port backlog=4096;
    location = /big { default_type application/octet-stream; alias $dir/big.bin; }
    location / { return 200 "hello from $name\n"; } }
}
EOF
  taskset -c "$PROXY_CPU" nginx -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" 2>/dev/null
  wait_port "$port"
}
BA=$(free_port); BB=$(free_port)
nginx_backend backend-a "$BA"

run_wrk() { # url conns -> prints wrk output
  taskset -c "$WRK_CPU" wrk -t1 -c"${2:-$CONNS}" -d"$DURATION" --latency "$1"
}
parse() { # wrk output file -> "rps p99_ms requests non2xx sockerr"
  awk '
    /Requests\/sec/ {rps=$2}
    /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; p99=v}
    /requests in/ {req=$1}
    /Non-2xx/ {n=$NF}
    /Socket errors/ {gsub(/,/,""); e=$4+$6+$8+$10}
    END {printf "%s %s %s %d %d\n", rps, p99, req, n, e}' "$1"
}

# Per "proxy/scenario": space-separated values, one per round.
declare -A RPS P99 CPU BCPU INV
measure() { # label scenario base-url pids...
  local label=$1 scen=$2 url=$3; shift 3
  local conns=$CONNS path=/
  case $scen in c256) conns=256 ;; big) path=/big ;; esac
  # The backend shares the proxies' core: its CPU per request and the
  # proxy's preemptions per request show how well the proxy batches its
  # upstream writes (each preemption is a switch to the backend and back).
  local be; be=$(nginx_pids "$WORK/nginx-backend-a.pid")
  # shellcheck disable=SC2086
  local c0 b0 i0; c0=$(cpu_ticks "$@"); b0=$(cpu_ticks $be); i0=$(invol_cs "$@")
  run_wrk "$url$path" "$conns" >"$WORK/$label-$scen.wrk"
  # shellcheck disable=SC2086
  local c1 b1 i1; c1=$(cpu_ticks "$@"); b1=$(cpu_ticks $be); i1=$(invol_cs "$@")
  read -r rps p99 req n2 se < <(parse "$WORK/$label-$scen.wrk")
  local cpu; cpu=$(awk -v d=$((c1 - c0)) -v r="$req" -v t="$TCK" 'BEGIN{ if (r>0) printf "%.2f", d/t*1e6/r; else print "nan"}')
  local bcpu; bcpu=$(awk -v d=$((b1 - b0)) -v r="$req" -v t="$TCK" 'BEGIN{ if (r>0) printf "%.2f", d/t*1e6/r; else print "nan"}')
  local inv; inv=$(awk -v d=$((i1 - i0)) -v r="$req" 'BEGIN{ if (r>0) printf "%.3f", d/r; else print "nan"}')
  RPS[$label/$scen]+="$rps "; P99[$label/$scen]+="$p99 "; CPU[$label/$scen]+="$cpu "
  BCPU[$label/$scen]+="$bcpu "; INV[$label/$scen]+="$inv "
  echo "$scen $label: req/s=$rps p99=${p99}ms cpu/req=${cpu}us requests=$req non2xx=$n2 socket_errors=$se backend_cpu/req=${bcpu}us preemptions/req=$inv"
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# ---------------------------------------------------------------- direct
# shellcheck disable=SC2046
measure direct c32 "http://127.0.0.1:$BA" $(nginx_pids "$WORK/nginx-backend-a.pid")

# ---------------------------------------------------------------- proxies (all running, measured in turn)
NP=$(free_port); mkdir -p "$WORK/nginx-proxy"
cat >"$WORK/nginx-proxy/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx-proxy.pid;
error_log $WORK/nginx-proxy/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream be { server 127.0.0.1:$BA; keepalive 64; }
  server { listen 127.0.0.1:$NP backlog=4096;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx-proxy/nginx.conf" -p "$WORK/nginx-proxy" 2>/dev/null
wait_port "$NP"
NPIDS=$(nginx_pids "$WORK/nginx-proxy.pid")

haproxy_cfg() { # port servers...
  local port=$1; shift
  cat <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  retries 3
  option redispatch
  retry-on all-retryable-errors
frontend fe
  bind 127.0.0.1:$port
  default_backend be
backend be
  balance roundrobin
  http-reuse always
EOF
  local i=0
  for s in "$@"; do echo "  server s$i $s check inter 1s fall 1 rise 2"; i=$((i+1)); done
}
HP=$(free_port)
haproxy_cfg "$HP" "127.0.0.1:$BA" >"$WORK/haproxy.cfg"
taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -D -p "$WORK/haproxy.pid"
wait_port "$HP"

GP=$(free_port)
# Every feature on, as in HAProxy's configuration above: an active health
# check like its `check inter 1s fall 1 rise 2`; retries, outlier detection,
# the retry budget, concurrency and connection limits and metrics are on by
# default.
cat >"$WORK/bench.toml" <<EOF
[[listeners]]
name = "web"
address = "127.0.0.1:$GP"
[[pools]]
name = "p"
endpoints = ["127.0.0.1:$BA"]
health_check = { interval_ms = 1000, fall = 1, rise = 2 }
[[routes]]
pool = "p"
EOF
taskset -c "$PROXY_CPU" "$PHALANX" gateway --config "$WORK/bench.toml" --worker-threads 1 2>"$WORK/phalanx.log" &
GPID=$!; PIDS+=("$GPID")
if [ -n "$PHALANX_BASELINE" ]; then
  BP=$(free_port)
  sed "s/127.0.0.1:$GP/127.0.0.1:$BP/" "$WORK/bench.toml" >"$WORK/baseline.toml"
  taskset -c "$PROXY_CPU" "$PHALANX_BASELINE" gateway --config "$WORK/baseline.toml" --worker-threads 1 2>"$WORK/baseline.log" &
  BPID=$!; PIDS+=("$BPID")
  wait_port "$BP"
fi
wait_port "$GP"

for round in $(seq 1 "$ROUNDS"); do
  echo "--- round $round/$ROUNDS"
  for scen in $SCENARIOS; do
    for p in $PROXIES; do
      case $p in
        # shellcheck disable=SC2086
        nginx) measure nginx "$scen" "http://127.0.0.1:$NP" $NPIDS ;;
        haproxy) measure haproxy "$scen" "http://127.0.0.1:$HP" "$(cat "$WORK/haproxy.pid")" ;;
        phalanx) measure phalanx "$scen" "http://127.0.0.1:$GP" "$GPID" ;;
        baseline) measure baseline "$scen" "http://127.0.0.1:$BP" "$BPID" ;;
      esac
    done
  done
done
kill_nginx "$WORK/nginx-proxy.pid"
kill "$(cat "$WORK/haproxy.pid")"
kill -TERM "$GPID"; wait "$GPID" 2>/dev/null || true
[ -z "$PHALANX_BASELINE" ] || { kill -TERM "$BPID"; wait "$BPID" 2>/dev/null || true; }

# ---------------------------------------------------------------- idle RSS, 1000 endpoints
RSS_LINE=""
if [ -z "${SKIP_RSS:-}" ]; then
  RSS_LINE=$(PHALANX="$PHALANX" PROXY_CPU="$PROXY_CPU" bash "$(dirname "$0")/gateway-rss.sh" | tail -1)
fi

# ---------------------------------------------------------------- kill a backend mid-load
declare -A KILL_RES
if [ -z "${SKIP_KILL:-}" ]; then
nginx_backend backend-b "$BB"
kill_scenario() { # label url
  local label=$1 url=$2
  curl -s -o /dev/null "http://127.0.0.1:$BA/" || nginx_backend backend-a "$BA"
  wait_port "$BA"; wait_port "$BB"
  taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url" >"$WORK/$label-kill.wrk" &
  local w=$!
  sleep 3
  # SIGKILL backend a (master and worker)
  kill_nginx "$WORK/nginx-backend-a.pid"
  wait $w
  read -r rps p99 req n2 se < <(parse "$WORK/$label-kill.wrk")
  echo "$label kill-a-backend: requests=$req non2xx=$n2 socket_errors=$se req/s=$rps"
  KILL_RES[$label]="$req $n2 $se"
}
HP=$(free_port)
haproxy_cfg "$HP" "127.0.0.1:$BA" "127.0.0.1:$BB" >"$WORK/haproxy2.cfg"
taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy2.cfg" -D -p "$WORK/haproxy2.pid"
wait_port "$HP"
kill_scenario haproxy "http://127.0.0.1:$HP/"
kill "$(cat "$WORK/haproxy2.pid")"

GP=$(free_port)
cat >"$WORK/kill.toml" <<EOF
[[listeners]]
name = "web"
address = "127.0.0.1:$GP"
[[pools]]
name = "p"
endpoints = ["127.0.0.1:$BA", "127.0.0.1:$BB"]
health_check = { interval_ms = 1000, fall = 1, rise = 2 }
[[routes]]
pool = "p"
EOF
taskset -c "$PROXY_CPU" "$PHALANX" gateway --config "$WORK/kill.toml" --worker-threads 1 2>>"$WORK/phalanx.log" &
GPID=$!; PIDS+=("$GPID")
wait_port "$GP"
kill_scenario phalanx "http://127.0.0.1:$GP/"
kill -TERM "$GPID"; wait "$GPID" 2>/dev/null || true
kill_nginx "$WORK/nginx-backend-b.pid"
kill_nginx "$WORK/nginx-backend-a.pid"
fi

# ---------------------------------------------------------------- summary
echo
echo "Medians over $ROUNDS rounds (wrk -t1, $DURATION each; c32/c256: connections, small response; big: $CONNS connections, 64 KiB response):"
echo
echo "| scenario | setup | req/s | p99 (ms) | CPU µs/req (proxy) | req/s vs HAProxy | p99 vs HAProxy | CPU/req vs HAProxy |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
med() { echo "${1:-}" | median; }
for scen in $SCENARIOS; do
  hr=$(med "${RPS[haproxy/$scen]:-}"); hp=$(med "${P99[haproxy/$scen]:-}"); hc=$(med "${CPU[haproxy/$scen]:-}")
  for l in direct $PROXIES; do
    [ -n "${RPS[$l/$scen]:-}" ] || continue
    r=$(med "${RPS[$l/$scen]}"); p=$(med "${P99[$l/$scen]}"); c=$(med "${CPU[$l/$scen]}")
    ratios=$(awk -v r="$r" -v p="$p" -v c="$c" -v hr="$hr" -v hp="$hp" -v hc="$hc" '
      function q(a, b) { return (b > 0) ? sprintf("%.2f×", a / b) : "n/a" }
      BEGIN { printf "%s | %s | %s", q(r, hr), q(p, hp), q(c, hc) }')
    echo "| $scen | $l | $r | $p | $c | $ratios |"
  done
done
echo
echo "Same rounds, medians: the backend's CPU per request (it shares the proxies' core) and the proxy's involuntary context switches per request:"
echo
echo "| scenario | setup | backend CPU µs/req | proxy preemptions/req |"
echo "|---|---|---:|---:|"
for scen in $SCENARIOS; do
  for l in $PROXIES; do
    [ -n "${BCPU[$l/$scen]:-}" ] || continue
    echo "| $scen | $l | $(med "${BCPU[$l/$scen]}") | $(med "${INV[$l/$scen]}") |"
  done
done
echo
echo "Per round (req/s):"
for scen in $SCENARIOS; do for l in $PROXIES; do echo "  $scen $l: ${RPS[$l/$scen]:-}"; done; done
if [ -z "${SKIP_KILL:-}" ]; then
  echo
  echo "| kill one of two backends mid-load | requests | non-2xx | socket errors |"
  echo "|---|---:|---:|---:|"
  for l in haproxy phalanx; do
    read -r a b c <<<"${KILL_RES[$l]}"
    echo "| $l | $a | $b | $c |"
  done
fi
if [ -n "$RSS_LINE" ]; then echo; echo "$RSS_LINE"; fi
