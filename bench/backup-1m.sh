#!/usr/bin/env bash
# Backup and restore beside etcd, in alternating rounds of one run: one etcd 3.4 member
# and one phalanx member (and, with PHALANX_BEFORE, a second phalanx member running
# another build: before/after in the same run), each filled with the same KEYS keys of
# 256-byte values by `phalanx bench kv --workload fill`. Each round times, per system:
#
#   phalanx  `phalanx backup now` (file://, age recipient) · `phalanx restore` of the
#            newest backup into a new data dir · `etcdctl snapshot save` from the member
#   etcd     `etcdctl snapshot save` · `etcdctl snapshot restore`
#
# and prints each round and the medians. The first `backup now` of a round goes to a
# fresh repository (a full upload); the dedup figure is a second backup of the unchanged
# store into the same repository (bytes uploaded / bytes stored).
#
# Usage: bench/backup-1m.sh       (builds `phalanx` in release mode first)
# Environment (all optional): KEYS=1000000, ROUNDS=3, PHALANX_BEFORE=/path/to/old/phalanx,
#   SKIP_BUILD=1, PHALANX, ETCD, ETCDCTL, BENCH_TMP, KEEP=1.
set -u -o pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup backup-1m.sh backup-bench
KEYS=${KEYS:-1000000}
ROUNDS=${ROUNDS:-3}
require_tools "etcd-server, etcd-client, python3, age" "$ETCD" "$ETCDCTL" python3 age-keygen
build_phalanx

SYSTEMS="etcd phalanx"
declare -A BIN=([phalanx]="$PHALANX")
if [ -n "${PHALANX_BEFORE:-}" ]; then
    [ -x "$PHALANX_BEFORE" ] || { log "no binary at PHALANX_BEFORE=$PHALANX_BEFORE"; exit 2; }
    SYSTEMS="etcd before phalanx"
    BIN[before]=$PHALANX_BEFORE
fi
age-keygen -o "$WORK/key.txt" 2>/dev/null
PUB=$(sed -n 's/^# public key: //p' "$WORK/key.txt")
declare -A URL=() T=()

now() { python3 -c 'import time; print("%.3f" % time.time())'; }
timed() {  # $1 = result key, then the command; T[key] = seconds, or "failed"
    local key=$1 t0 t1
    shift
    t0=$(now)
    if "$@" >"$WORK/$key.out" 2>&1; then
        t1=$(now)
        T[$key]=$(python3 -c "print('%.2f' % ($t1 - $t0))")
    else
        T[$key]=failed
        log "$key failed: $(tail -2 "$WORK/$key.out")"
    fi
}

start_one() {  # $1 = system: one member on free loopback ports
    local sys=$1 dir="$WORK/$1" cp pp
    mkdir -p "$dir"
    cp=$(free_port); pp=$(free_port)
    local cmd=("$ETCD" --quota-backend-bytes 8589934592)
    [ "$sys" != etcd ] && cmd=("${BIN[$sys]}" node)
    "${cmd[@]}" --name m1 --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
        --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
        --initial-cluster "m1=http://127.0.0.1:$pp" --initial-cluster-state new \
        --initial-cluster-token "backup-bench-$sys-$$" >"$dir/member.log" 2>&1 &
    PIDS+=("$!")
    URL[$sys]="http://127.0.0.1:$cp"
    local deadline=$((SECONDS + 120))
    until "$ETCDCTL" --endpoints="${URL[$sys]}" --command-timeout=2s endpoint health >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { log "$sys not ready within 120 s; see $dir/member.log"; exit 1; }
        sleep 0.2
    done
    log "$sys: filling $KEYS keys"
    "$PHALANX" bench kv --endpoints "${URL[$sys]}" --workload fill --keys "$KEYS" --value-bytes 256 \
        --clients 4 --fill-txn-ops 100 --duration 1h >"$dir/fill.out" 2>&1 \
        || { log "$sys: fill failed: $(tail -1 "$dir/fill.out")"; exit 1; }
}

round() {  # $1 = round number
    local r=$1 sys
    for sys in $SYSTEMS; do
        local d="$WORK/$sys/r$r"
        mkdir -p "$d"
        timed "$sys.save.$r" "$ETCDCTL" --endpoints="${URL[$sys]}" --command-timeout=600s snapshot save "$d/snap.db"
        if [ "$sys" = etcd ]; then
            timed "$sys.restore.$r" "$ETCDCTL" snapshot restore "$d/snap.db" --name r1 \
                --initial-cluster r1=http://127.0.0.1:1 --initial-advertise-peer-urls http://127.0.0.1:1 \
                --data-dir "$d/restored"
        else
            local b=${BIN[$sys]}
            timed "$sys.backup.$r" "$b" backup now --endpoints "${URL[$sys]}" --to "file://$d/repo" --recipient "$PUB"
            timed "$sys.backup2.$r" "$b" backup now --endpoints "${URL[$sys]}" --to "file://$d/repo" --recipient "$PUB"
            timed "$sys.restore.$r" "$b" restore --from "file://$d/repo" --identity "$WORK/key.txt" --name r1 \
                --initial-cluster r1=http://127.0.0.1:1 --initial-cluster-token restored \
                --initial-advertise-peer-urls http://127.0.0.1:1 --data-dir "$d/restored"
        fi
        rm -rf "$d/restored" "$d/snap.db"
    done
}

for sys in $SYSTEMS; do start_one "$sys"; done
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS"
    round "$r"
done

median() {  # $1 = result key: median over the rounds, then each round's figure
    local key=$1 r vals=()
    for r in $(seq 1 "$ROUNDS"); do vals+=("${T[$key.$r]:-n/a}"); done
    python3 -c "
import statistics, sys
v = sys.argv[1:]
ok = sorted(float(x) for x in v if x not in ('n/a', 'failed'))
print(('%.2f s' % statistics.median(ok) if ok else 'n/a') + ' (' + ' / '.join(v) + ')')" "${vals[@]}"
}
dedup() {  # uploaded/stored of the second backup, round 1
    sed -n 's/.*uploaded \(.*\) (\(.*\) new chunks), stored \(.*\)$/uploaded \1 of \3 stored/p' "$WORK/$1.backup2.1.out" | head -1
}

echo
echo "## Backup and restore: $KEYS keys x 256 B, one member each, $ROUNDS alternating rounds ($(nproc) cores)"
echo
echo "Median (each round)."
echo
echo "| operation | ${SYSTEMS// / | } |"
echo "| --- |$(for s in $SYSTEMS; do printf ' ---: |'; done)"
row() {  # $1 = label, $2 = key per system (etcd's may be "-")
    local label=$1 line="" sys
    shift
    for sys in $SYSTEMS; do
        local k=$1
        [ "$sys" = etcd ] && k=$2
        if [ "$k" = - ]; then line+=" |"; else line+=" $(median "$sys.$k") |"; fi
    done
    echo "| $label |$line"
}
row "\`phalanx backup now\` (first, file://) vs \`etcdctl snapshot save\`" backup save
row "\`phalanx backup now\`, unchanged store (dedup)" backup2 -
row "\`phalanx restore\` (one data dir) vs \`etcdctl snapshot restore\`" restore restore
row "\`etcdctl snapshot save\` from the member" save save
echo
for sys in $SYSTEMS; do
    [ "$sys" = etcd ] && continue
    echo "$sys second backup: $(dedup "$sys")"
done
