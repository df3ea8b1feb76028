#!/usr/bin/env bash
# KV benchmark: a 3-member etcd cluster vs a 3-member phalanx cluster, same
# machine, same run, same load generator (`phalanx bench kv`).
#
# Usage: bench/kv.sh            (builds `phalanx` in release mode first)
# Environment (all optional):
#   DURATION=10s          length of each load run
#   SYSTEMS="etcd phalanx"  which systems to measure
#   SKIP_BUILD=1          use an existing release binary
#   CARGO_TARGET_DIR      where the release binary is (default: ./target)
#   PHALANX=/path/phalanx, ETCD=/usr/bin/etcd, ETCDCTL=/usr/bin/etcdctl
#   BENCH_TMP=/some/dir   parent of the data dirs (default: $TMPDIR or /tmp;
#                         both clusters use it, so they share a disk)
#   KEEP=1                keep data dirs and logs after the run
#
# Measures, per system: puts with 1 and 64 clients, linearizable and
# serializable gets with 64 clients (256-byte values, 10,000 keys), the
# longest window without a successful put while the leader is killed with
# SIGKILL mid-run, and RSS per node. Prints a markdown table with the
# phalanx/etcd ratios. Exits non-zero only if etcd itself cannot be run.
set -u -o pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup kv.sh kv-bench
SYSTEMS=${SYSTEMS:-"etcd phalanx"}

require_tools "etcd-server, etcd-client, python3" "$ETCD" "$ETCDCTL" python3
build_phalanx

start_cluster() {  # $1 = etcd|phalanx; returns non-zero if not ready
    local sys=$1 dir="$WORK/$1"
    local cmd=("$ETCD")
    [ "$sys" = phalanx ] && cmd=("$PHALANX" node)
    start_members http "kv-bench-$sys-$$" "$dir" "${cmd[@]}"
    # Ready = every member answers a status call and a leader is known.
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        members_alive "$sys" "$dir" || return 1
        if [ -n "$(leader_of)" ] && "$ETCDCTL" --endpoints="$ENDPOINTS" --command-timeout=2s endpoint health >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    log "$sys cluster not ready within 60 s; see $dir/*.log"
    return 1
}

leader_of() {  # prints the member name of the current leader, or nothing
    # etcdctl first; `phalanx bench status` as a fallback for servers that
    # etcdctl (grpc-go) cannot query.
    { "$ETCDCTL" --endpoints="$ENDPOINTS" --command-timeout=2s endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
try:
    for s in json.load(sys.stdin):
        st = s["Status"]
        if st["header"]["member_id"] == st["leader"]:
            print(s["Endpoint"])
except Exception:
    pass'
      "$PHALANX" bench status --endpoints "$ENDPOINTS" --timeout-ms 2000 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        s = json.loads(line)
        if s.get("is_leader"):
            print(s["endpoint"])
    except Exception:
        pass'
    } | while read -r url; do
        for n in n1 n2 n3; do [ "${EP[$n]}" = "$url" ] && echo "$n"; done
    done | head -1
}

rss_mib() {  # $1 = pid
    awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"
}

# R[<sys>.<test>] = JSON report file
declare -A R GAP RSS STATUS

TESTS="put-1:1:put put-64:64:put get-lin-64:64:get-linearizable get-ser-64:64:get-serializable"

measure() {  # $1 sys
    local sys=$1 spec name clients workload
    start_measuring "$sys" || return
    for spec in $TESTS; do
        IFS=: read -r name clients workload <<<"$spec"
        run_load "$sys" "$name" "$clients" "$workload"
    done
    local n
    RSS[$sys]=""
    for n in n1 n2 n3; do RSS[$sys]+="${RSS[$sys]:+ / }$(rss_mib "${PID[$n]}")"; done
    # Leader kill under writes: writers on every member; the leader is
    # killed a third of the way in; the report's longest put gap is the
    # client-visible unavailability.
    local leader
    leader=$(leader_of)
    if [ -z "$leader" ]; then
        log "$sys: no leader found for the kill test"
    else
        local out="$WORK/$sys.kill.json"
        "$PHALANX" bench kv --endpoints "$ENDPOINTS" --clients 6 --workload put --duration "$DURATION" \
            --value-bytes 256 --request-timeout-ms 1000 --report-gaps --json >"$out" 2>"$out.err" &
        local writer=$!
        local secs
        secs=$(python3 -c "import re,sys; d='$DURATION'; m=re.match(r'(\d+)(ms|s|m)?$',d); v=int(m.group(1)); u=m.group(2) or 's'; print({'ms':v/1000,'s':v,'m':v*60}[u]/3)")
        sleep "$secs"
        log "$sys: kill -9 leader $leader (pid ${PID[$leader]})"
        # Reap it at once, quietly: bash would otherwise report "Killed".
        { kill -9 "${PID[$leader]}"; wait "${PID[$leader]}"; } 2>/dev/null
        if wait "$writer"; then
            GAP[$sys]=$(python3 -c "import json; print('%.0f' % json.load(open('$out'))['longest_put_gap_ms'])")
        else
            log "$sys: kill-test writer failed: $(tail -1 "$out.err")"
        fi
    fi
    stop_cluster
}

for sys in $SYSTEMS; do
    measure "$sys"
done
if [ "${STATUS[etcd]:-}" = "failed to start" ]; then
    log "etcd did not start; results are meaningless"
fi

# ---- report ---------------------------------------------------------------
echo
echo "## KV benchmark: 3-member etcd ($("$ETCD" --version 2>/dev/null | head -1 | awk '{print $3}')) vs 3-member phalanx"
echo
echo "Same machine ($(nproc) cores), loopback, data dirs under $(dirname "$WORK"), 256-byte values, 10,000 keys, $DURATION per run."
for sys in $SYSTEMS; do
    [ "${STATUS[$sys]:-}" = ok ] || echo "**$sys: ${STATUS[$sys]:-not run}** (logs: $WORK/$sys)"
done
echo
echo "| test | etcd ops/s | etcd p50 / p99 / p99.9 ms | etcd errors | phalanx ops/s | phalanx p50 / p99 / p99.9 ms | phalanx errors | ops/s ratio phalanx/etcd |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for spec in $TESTS; do
    IFS=: read -r name clients workload <<<"$spec"
    e=${R[etcd.$name]:-}; p=${R[phalanx.$name]:-}
    eo=$(field "$e" "'%.0f' % r['ops_per_sec']"); po=$(field "$p" "'%.0f' % r['ops_per_sec']")
    lat='"%.2f / %.2f / %.2f" % (r["latency"]["p50_us"]/1e3, r["latency"]["p99_us"]/1e3, r["latency"]["p999_us"]/1e3)'
    echo "| $workload, $clients client(s) | $eo | $(field "$e" "$lat") | $(field "$e" "r['errors_total']") | $po | $(field "$p" "$lat") | $(field "$p" "r['errors_total']") | $(ratio "$po" "$eo") |"
done
echo
echo "| measure | etcd | phalanx | ratio phalanx/etcd |"
echo "| --- | ---: | ---: | ---: |"
echo "| longest put gap when the leader is killed (ms, 6 writers) | ${GAP[etcd]:-n/a} | ${GAP[phalanx]:-n/a} | $(ratio "${GAP[phalanx]:-}" "${GAP[etcd]:-}") |"
sum_rss() { python3 -c "
try: print(sum(int(x) for x in '$1'.split(' / ')))
except Exception: print('n/a')"; }
echo "| RSS per node after load (MiB) | ${RSS[etcd]:-n/a} | ${RSS[phalanx]:-n/a} | $(ratio "$(sum_rss "${RSS[phalanx]:-}")" "$(sum_rss "${RSS[etcd]:-}")") |"
