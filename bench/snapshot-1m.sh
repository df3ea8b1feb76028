#!/usr/bin/env bash
# Snapshot benchmark: `etcdctl snapshot save` against a 3-member etcd 3.4 cluster and
# against a 3-member phalanx cluster holding the same data, then `etcdctl snapshot
# restore` of each file, side by side in one run. Each cluster is filled with KEYS
# (default 1,000,000) keys of 256-byte values by `phalanx bench kv --workload fill`.
# A phalanx member's snapshot is an etcd snapshot (bbolt in etcd's schema + SHA-256),
# built from its store into a temporary file and streamed; the figures include that
# conversion.
#
# Usage: bench/snapshot-1m.sh        (builds `phalanx` in release mode first)
# Environment (all optional): KEYS=1000000, SKIP_BUILD=1, PHALANX, ETCD, ETCDCTL,
#   BENCH_TMP (parent of the data dirs), KEEP=1 (keep data dirs and logs).
# Prints a markdown table; exits non-zero only if etcd itself cannot be run.
set -u -o pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup snapshot-1m.sh snapshot-bench
KEYS=${KEYS:-1000000}
require_tools "etcd-server, etcd-client, python3" "$ETCD" "$ETCDCTL" python3
build_phalanx

now() { python3 -c 'import time; print("%.3f" % time.time())'; }
secs() { python3 -c "print('%.2f' % ($2 - $1))"; }
mib() { python3 -c "import os; print('%.1f' % (os.path.getsize('$1') / 1048576))"; }

declare -A SAVE=() RESTORE=() SIZE=() REV=() FILL=()

run() {  # $1 = etcd|phalanx
    local sys=$1 dir="$WORK/$1"
    local cmd=("$ETCD")
    [ "$sys" = phalanx ] && cmd=("$PHALANX" node)
    # etcd's default 2 GiB quota holds 1M keys of 256 bytes with room to spare; so does phalanx's.
    start_members http "snap-bench-$sys-$$" "$dir" "${cmd[@]}"
    local deadline=$((SECONDS + 60))
    until "$ETCDCTL" --endpoints="$ENDPOINTS" --command-timeout=2s endpoint health >/dev/null 2>&1; do
        members_alive "$sys" "$dir" || return 1
        [ $SECONDS -lt $deadline ] || { log "$sys not ready within 60 s"; return 1; }
        sleep 0.2
    done
    log "$sys: filling $KEYS keys"
    local t0 t1
    t0=$(now)
    "$PHALANX" bench kv --endpoints "$ENDPOINTS" --clients 8 --duration 1h --workload fill \
        --keys "$KEYS" --value-bytes 256 >"$dir/fill.out" 2>&1 || { log "$sys: fill failed: $(tail -1 "$dir/fill.out")"; return 1; }
    t1=$(now)
    FILL[$sys]=$(secs "$t0" "$t1")
    local snap="$dir/snapshot.db"
    log "$sys: snapshot save"
    t0=$(now)
    "$ETCDCTL" --endpoints="${EP[n1]}" --command-timeout=600s snapshot save "$snap" >"$dir/save.out" 2>&1 \
        || { log "$sys: snapshot save failed: $(tail -2 "$dir/save.out")"; return 1; }
    t1=$(now)
    SAVE[$sys]=$(secs "$t0" "$t1")
    SIZE[$sys]=$(mib "$snap")
    REV[$sys]=$("$ETCDCTL" snapshot status "$snap" -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')
    stop_cluster
    log "$sys: snapshot restore"
    t0=$(now)
    "$ETCDCTL" snapshot restore "$snap" --name r1 --initial-cluster r1=http://127.0.0.1:1 \
        --initial-advertise-peer-urls http://127.0.0.1:1 --data-dir "$dir/restored" >"$dir/restore.out" 2>&1 \
        || { log "$sys: snapshot restore failed: $(tail -2 "$dir/restore.out")"; return 1; }
    t1=$(now)
    RESTORE[$sys]=$(secs "$t0" "$t1")
    if [ "$sys" = etcd ]; then
        # Migration the other way: the same etcd file into a phalanx member's data dir.
        t0=$(now)
        "$PHALANX" restore --from-etcd-snapshot "$snap" --name m1 --initial-cluster m1=http://127.0.0.1:1 \
            --initial-cluster-token t --initial-advertise-peer-urls http://127.0.0.1:1 \
            --data-dir "$dir/phalanx-restored" >"$dir/phalanx-restore.out" 2>&1 \
            || log "phalanx restore --from-etcd-snapshot failed: $(tail -2 "$dir/phalanx-restore.out")"
        t1=$(now)
        FROM_ETCD=$(secs "$t0" "$t1")
    fi
}

FROM_ETCD=n/a
run etcd || exit 1
run phalanx || log "phalanx run failed"
echo
echo "| $KEYS keys of 256 bytes | etcd 3.4 | phalanx | phalanx/etcd |"
echo "| --- | ---: | ---: | ---: |"
echo "| fill (8 clients) | ${FILL[etcd]:-n/a} s | ${FILL[phalanx]:-n/a} s | $(ratio "${FILL[phalanx]:-}" "${FILL[etcd]:-}") |"
echo "| \`etcdctl snapshot save\` | ${SAVE[etcd]:-n/a} s | ${SAVE[phalanx]:-n/a} s | $(ratio "${SAVE[phalanx]:-}" "${SAVE[etcd]:-}") |"
echo "| snapshot file | ${SIZE[etcd]:-n/a} MiB | ${SIZE[phalanx]:-n/a} MiB | $(ratio "${SIZE[phalanx]:-}" "${SIZE[etcd]:-}") |"
echo "| revision (\`snapshot status\`) | ${REV[etcd]:-n/a} | ${REV[phalanx]:-n/a} | |"
echo "| \`etcdctl snapshot restore\` of that file | ${RESTORE[etcd]:-n/a} s | ${RESTORE[phalanx]:-n/a} s | $(ratio "${RESTORE[phalanx]:-}" "${RESTORE[etcd]:-}") |"
echo "| \`phalanx restore --from-etcd-snapshot\` (etcd's file) | ${FROM_ETCD} s | | |"
