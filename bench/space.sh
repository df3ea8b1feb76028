#!/usr/bin/env bash
# Space amplification: bytes on disk per byte of live data, etcd vs phalanx,
# same workloads, same run, same load generator (`phalanx bench kv`).
#
# Usage: bench/space.sh         (builds `phalanx` in release mode first)
# Environment (all optional): SKIP_BUILD=1, PHALANX, ETCD, ETCDCTL, BENCH_TMP,
# KEEP=1, WORKLOADS (default: all of "big63 big1k small100k overwrite").
#
# Each workload runs on a fresh 3-member cluster of each system:
#   big63      63 keys of 64 KiB (the quota report's workload)
#   big1k      1,000 keys of 64 KiB
#   small100k  100,000 keys of 256 B
#   overwrite  1,000 keys of 256 B written 20 times, then compacted to the head
#              (physically), so only the newest 1,000 records are live
# Then, for member n1: Status dbSize and dbSizeInUse, and, after the cluster
# is stopped, the store file's length and its allocated blocks (`du`):
# etcd's member/snap/db, phalanx's kv.redb. Live bytes = keys × (14-byte key
# + value). Prints a markdown table with the phalanx/etcd ratios.
set -u -o pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup space.sh space-bench
WORKLOADS=${WORKLOADS:-"big63 big1k small100k overwrite"}
require_tools "etcd-server, etcd-client, python3" "$ETCD" "$ETCDCTL" python3
build_phalanx

KEY_BYTES=14  # bench/00000000

start() {  # $1 = etcd|phalanx, $2 = dir
    local sys=$1 dir=$2 cmd=("$ETCD")
    [ "$sys" = phalanx ] && cmd=("$PHALANX" node)
    start_members http "space-$sys-$$" "$dir" "${cmd[@]}" -- --quota-backend-bytes 8589934592
    local deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        members_alive "$sys" "$dir" || return 1
        "$ETCDCTL" --endpoints="$ENDPOINTS" --command-timeout=2s endpoint health >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "$sys cluster not ready; see $dir/*.log"
    return 1
}

fill() {  # $1 keys, $2 value bytes, $3 puts per txn
    "$PHALANX" bench kv --endpoints "$ENDPOINTS" --clients 4 --workload fill --keys "$1" \
        --value-bytes "$2" --fill-txn-ops "$3" --duration 10m --json >/dev/null 2>"$WORK/fill.err" \
        || { log "fill failed: $(tail -1 "$WORK/fill.err")"; return 1; }
}

status_of() {  # n1's "dbSize dbSizeInUse"
    "$ETCDCTL" --endpoints="${EP[n1]}" endpoint status -w json |
        python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; print(s["dbSize"], s.get("dbSizeInUse", 0))'
}

declare -A OUT=()
for w in $WORKLOADS; do
    case $w in
        big63) keys=63 vb=65536 ops=8 rounds=1 ;;
        big1k) keys=1000 vb=65536 ops=8 rounds=1 ;;
        small100k) keys=100000 vb=256 ops=100 rounds=1 ;;
        overwrite) keys=1000 vb=256 ops=100 rounds=20 ;;
        *) log "unknown workload $w"; exit 2 ;;
    esac
    live=$((keys * (KEY_BYTES + vb)))
    for sys in etcd phalanx; do
        dir="$WORK/$w-$sys"
        start "$sys" "$dir" || continue
        log "$sys: $w ($keys keys of $vb B, $rounds round(s))"
        ok=1
        for _ in $(seq 1 "$rounds"); do fill "$keys" "$vb" "$ops" || { ok=0; break; }; done
        if [ "$ok" = 1 ] && [ "$rounds" -gt 1 ]; then
            rev=$("$ETCDCTL" --endpoints="${EP[n1]}" get x -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
            "$ETCDCTL" --endpoints="$ENDPOINTS" compact "$rev" --physical >/dev/null
        fi
        sleep 1  # etcd commits its backend every 100 ms: let Status see the last batch
        read -r dbsize inuse < <(status_of)
        # A clean stop, so that what each system buffers is on disk when measured.
        for n in n1 n2 n3; do kill -TERM "${PID[$n]}" 2>/dev/null; done
        for n in n1 n2 n3; do wait "${PID[$n]}" 2>/dev/null; done
        if [ "$sys" = etcd ]; then f="$dir/n1.data/member/snap/db"; else f="$dir/n1.data/member/kv.redb"; fi
        [ -f "$f" ] || { log "$sys: no store file at $f"; OUT[$w.$sys]="failed"; continue; }
        read -r len blocks < <(stat -c '%s %b' "$f")
        OUT[$w.$sys]="$dbsize $inuse $len $((blocks * 512)) $live"
        [ "$ok" = 1 ] || OUT[$w.$sys]="failed"
    done
done

python3 - "$WORKLOADS" <<'PY' "$(for k in "${!OUT[@]}"; do echo "$k=${OUT[$k]}"; done)"
import sys
workloads = sys.argv[1].split()
rows = dict(l.split("=", 1) for l in sys.argv[2].splitlines() if "=" in l)
mb = lambda b: f"{int(b) / 1e6:.1f}"
print("| workload | live MB | measure | etcd MB (×live) | phalanx MB (×live) | phalanx / etcd |")
print("| --- | ---: | --- | ---: | ---: | ---: |")
for w in workloads:
    e, p = rows.get(f"{w}.etcd"), rows.get(f"{w}.phalanx")
    if not e or not p or "failed" in (e, p):
        print(f"| {w} | | failed | {e} | {p} | |")
        continue
    e, p = [list(map(int, x.split())) for x in (e, p)]
    live = e[4]
    for i, name in [(0, "Status dbSize"), (1, "dbSizeInUse"), (2, "file length"), (3, "file blocks on disk")]:
        r = f"{p[i] / e[i]:.2f}" if e[i] else "n/a"
        print(f"| {w} | {mb(live)} | {name} | {mb(e[i])} ({e[i] / live:.2f}) | {mb(p[i])} ({p[i] / live:.2f}) | {r} |")
PY
