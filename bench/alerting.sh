#!/usr/bin/env bash
# Alerting benchmarks (BENCHMARKS.md, "Alerting"):
#  1. kill -9 of a member → webhook POST, with defaults, RUNS trials (default 5, run side by side
#     on RUNS independent 3-member clusters, kills staggered by STAGGER_S), for phalanx's own alerting
#     (default intervals, default PhalanxMemberDown, alertmanager.yml timing defaults) and for
#     Prometheus + Alertmanager (Debian's, their defaults: 1m scrape/evaluation, group_wait 30s)
#     with the etcd mixin's etcdMembersDown rule, scraping the same members, in the same run;
#  2. CPU and RSS of members with alerting (default) vs --disable-alerting, idle and under load.
# Usage: bench/alerting.sh   (PHALANX=path to a phalanx binary; default: release build)
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${PHALANX:-${CARGO_TARGET_DIR:-$ROOT/target}/release/phalanx}
RUNS=${RUNS:-5}
STAGGER_S=${STAGGER_S:-13}
WAIT_FIRE_S=${WAIT_FIRE_S:-1000}     # Prometheus: ≤1m scrape + ≤1m eval + 10m for + 30s group_wait
LOAD_S=${LOAD_S:-60}
PART=${PART:-all}                    # latency | resources | all
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { python3 -c 'import time; print(f"{time.time():.3f}")'; }

# start_cluster TAG FLAGS... : 3 members; sets CPORT_<i>, MPORT_<i>, PID_<i>, EPS
start_cluster() {
  local tag=$1; shift
  local pp=() ic=""
  for i in 1 2 3; do pp[$i]=$(free_port); ic="$ic,n$i=http://127.0.0.1:${pp[$i]}"; done
  ic=${ic#,}; EPS=""
  for i in 1 2 3; do
    local c m; c=$(free_port); m=$(free_port)
    eval "CPORT_${tag}_$i=$c; MPORT_${tag}_$i=$m"
    "$P" node --name n$i --data-dir "$WORK/$tag/n$i" \
      --listen-client-urls http://127.0.0.1:$c --advertise-client-urls http://127.0.0.1:$c \
      --listen-peer-urls http://127.0.0.1:${pp[$i]} --initial-advertise-peer-urls http://127.0.0.1:${pp[$i]} \
      --initial-cluster "$ic" --initial-cluster-token "$tag" --listen-metrics-urls http://127.0.0.1:$m "$@" \
      >"$WORK/$tag-n$i.log" 2>&1 &
    PIDS+=($!); eval "PID_${tag}_$i=$!"
    EPS="$EPS,http://127.0.0.1:$c"
  done
  EPS=${EPS#,}; eval "EPS_${tag}=$EPS"
}
leader_of() { # TAG → member index
  local tag=$1
  for _ in $(seq 1 300); do
    for i in 1 2 3; do
      local m; eval "m=\$MPORT_${tag}_$i"
      curl -s "http://127.0.0.1:$m/metrics" | grep -q '^phalanx_server_is_leader 1' && { echo "$i"; return; }
    done
    sleep 0.1
  done
  echo 0
}

if [ "$PART" = all ] || [ "$PART" = latency ]; then
  # The webhook receiver: one line per POST: arrival time, path, body.
  RPORT=$(free_port)
  cat >"$WORK/recorder.py" <<'PY'
import http.server, sys, time
out = open(sys.argv[2], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        t = time.time()
        body = self.rfile.read(int(self.headers.get("content-length", 0))).decode().replace("\n", " ")
        out.write(f"{t:.3f} {self.path} {body}\n")
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
  python3 "$WORK/recorder.py" "$RPORT" "$WORK/posts.log" & PIDS+=($!)

  AMPORT=$(free_port); PROMPORT=$(free_port)
  mkdir -p "$WORK/am" "$WORK/prom"
  cat >"$WORK/am.yml" <<YML
route:
  receiver: hook
  group_by: [alertname, job]
receivers:
- name: hook
  webhook_configs:
  - url: http://127.0.0.1:$RPORT/prom
YML
  prometheus-alertmanager --config.file="$WORK/am.yml" --storage.path="$WORK/am" \
    --web.listen-address=127.0.0.1:$AMPORT --cluster.listen-address= >"$WORK/am.log" 2>&1 & PIDS+=($!)
  # The etcd mixin's etcdMembersDown (etcd-io/etcd contrib/mixin), verbatim.
  cat >"$WORK/etcd-mixin.yml" <<'YML'
groups:
- name: etcd
  rules:
  - alert: etcdMembersDown
    expr: |
      max without (endpoint) (
        sum without (instance) (up{job=~".*etcd.*"} == bool 0)
      or
        count without (To) (
          sum without (instance) (rate(etcd_network_peer_sent_failures_total{job=~".*etcd.*"}[120s])) > 0.01
        )
      )
      > 0
    for: 10m
    labels:
      severity: critical
YML
  {
    echo "rule_files: ['$WORK/etcd-mixin.yml']"
    echo "alerting: {alertmanagers: [{static_configs: [{targets: ['127.0.0.1:$AMPORT']}]}]}"
    echo "scrape_configs:"
  } >"$WORK/prometheus.yml"
  for k in $(seq 1 "$RUNS"); do
    start_cluster "c$k"
    echo "- job_name: etcd-c$k" >>"$WORK/prometheus.yml"
    echo "  static_configs: [{targets: [$(for i in 1 2 3; do eval "echo -n \"'127.0.0.1:\$MPORT_c${k}_$i',\""; done | sed 's/,$//')]}]" >>"$WORK/prometheus.yml"
  done
  prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom" \
    --web.listen-address=127.0.0.1:$PROMPORT >"$WORK/prom.log" 2>&1 & PIDS+=($!)
  for k in $(seq 1 "$RUNS"); do
    eval "eps=\$EPS_c$k"
    until "$P" alerting config set /dev/stdin --endpoints "$eps" >/dev/null 2>&1 <<YML
route:
  receiver: hook
  group_by: [alertname, member]
receivers:
- name: hook
  webhook_configs:
  - url: http://127.0.0.1:$RPORT/phalanx/c$k
YML
    do sleep 0.5; done
  done
  echo "waiting 90 s: Prometheus scrapes and evaluates with its defaults (1m)"
  sleep 90
  declare -A KILLED
  for k in $(seq 1 "$RUNS"); do
    l=$(leader_of "c$k"); v=$(( l % 3 + 1 ))
    eval "pid=\$PID_c${k}_$v"
    kill -9 "$pid" 2>/dev/null; KILLED[$k]=$(now)
    echo "c$k: killed n$v at ${KILLED[$k]}"
    sleep "$STAGGER_S"
  done
  deadline=$(( $(date +%s) + WAIT_FIRE_S ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    a=$(grep -c '"alertname":"PhalanxMemberDown"' "$WORK/posts.log" 2>/dev/null || true)
    b=$(grep -c '"alertname":"etcdMembersDown"' "$WORK/posts.log" 2>/dev/null || true)
    [ "${a:-0}" -ge "$RUNS" ] && [ "${b:-0}" -ge "$RUNS" ] && break
    sleep 5
  done
  ORDERED=(); for k in $(seq 1 "$RUNS"); do ORDERED+=("${KILLED[$k]}"); done  # associative arrays are unordered
  python3 - "$WORK/posts.log" "$RUNS" "${ORDERED[@]}" <<'PY'
import json, statistics, sys
path, runs, killed = sys.argv[1], int(sys.argv[2]), [float(x) for x in sys.argv[3:]]
first = {}
for line in open(path):
    t, p, body = line.split(" ", 2)
    b = json.loads(body)
    if b.get("status") != "firing" or b["groupLabels"].get("alertname") not in ("PhalanxMemberDown", "etcdMembersDown"):
        continue
    if p.startswith("/phalanx/c"):
        k = int(p.rsplit("c", 1)[1]); key = ("phalanx", k)
    else:
        k = int(b["groupLabels"]["job"].rsplit("c", 1)[1]); key = ("prometheus", k)
    if float(t) > killed[k - 1]:
        first.setdefault(key, float(t))
for who in ("phalanx", "prometheus"):
    lat = [first[(who, k)] - killed[k - 1] for k in range(1, runs + 1) if (who, k) in first]
    print(f"{who}: kill -9 → webhook POST, s: " + ", ".join(f"{x:.1f}" for x in lat)
          + (f"; median {statistics.median(lat):.1f} s ({len(lat)}/{runs} fired)" if lat else "; none fired"))
PY
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; PIDS=()
fi

if [ "$PART" = all ] || [ "$PART" = resources ]; then
  cpu_s() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
  rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
  for mode in on off; do
    flags=(); [ "$mode" = off ] && flags=(--disable-alerting)
    start_cluster "r$mode" "${flags[@]}"
    l=$(leader_of "r$mode"); eval "eps=\$EPS_r$mode"
    sleep 10
    declare -A c0; for i in 1 2 3; do eval "pid=\$PID_r${mode}_$i"; c0[$i]=$(cpu_s "$pid"); done
    sleep "$LOAD_S"
    idle=""; for i in 1 2 3; do eval "pid=\$PID_r${mode}_$i"; idle="$idle n$i$([ "$i" = "$l" ] && echo '(leader)') $(python3 -c "print(f'{($(cpu_s "$pid")-${c0[$i]})/$LOAD_S*100:.2f}')")% $(rss_mib "$pid")MiB;"; done
    echo "alerting $mode, idle ${LOAD_S}s: CPU% / RSS:$idle"
    for i in 1 2 3; do eval "pid=\$PID_r${mode}_$i"; c0[$i]=$(cpu_s "$pid"); done
    "$P" bench kv --endpoints "$eps" --clients 16 --duration "${LOAD_S}s" --workload put >"$WORK/bench-$mode.out" 2>&1
    busy=""; for i in 1 2 3; do eval "pid=\$PID_r${mode}_$i"; busy="$busy n$i$([ "$i" = "$l" ] && echo '(leader)') $(python3 -c "print(f'{($(cpu_s "$pid")-${c0[$i]})/$LOAD_S*100:.2f}')")% $(rss_mib "$pid")MiB;"; done
    echo "alerting $mode, put load 16 clients ${LOAD_S}s: CPU% / RSS:$busy ($(grep -m1 -o '[0-9.]* ops/s' "$WORK/bench-$mode.out"))"
    if [ "$mode" = on ]; then
      eval "m=\$MPORT_r${mode}_$l"
      curl -s "http://127.0.0.1:$m/metrics" >/dev/null
    fi
    for i in 1 2 3; do eval "pid=\$PID_r${mode}_$i"; kill -9 "$pid" 2>/dev/null; done
  done
fi
