# Shared by bench/kv.sh and bench/kv-secure.sh; sourced, not run. Holds what
# both set up alike: tool locations, the work directory and its cleanup, the
# release build, free ports, starting, checking and stopping a 3-member
# cluster (etcd and `phalanx node` take the same flags), report helpers.
#
# The sourcing script calls `bench_setup <log prefix> <work dir prefix>`
# first; the environment variables it reads are documented in each script.

bench_setup() {  # $1 = log prefix (the script's name), $2 = work dir prefix
    BENCH_LOG_PREFIX=$1
    ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
    PHALANX=${PHALANX:-$TARGET/release/phalanx}
    ETCD=${ETCD:-/usr/bin/etcd}
    ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}
    DURATION=${DURATION:-10s}
    WORK=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/$2.XXXXXX")
    export ETCDCTL_API=3
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# Every process started is SIGKILLed on exit, whatever ends the script.
bench_cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${KEEP:-}" = 1 ]; then echo "data and logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}

log() { echo "[$BENCH_LOG_PREFIX] $*" >&2; }

require_tools() {  # $1 = what to install, then the tools; exits 2 if one is missing
    local hint=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { log "missing $tool (install $hint)"; exit 2; }
    done
}

# `cargo build --release` unless SKIP_BUILD=1; exits 2 without a binary.
build_phalanx() {
    if [ "${SKIP_BUILD:-}" != 1 ]; then
        log "building phalanx (release)"
        (cd "$ROOT" && cargo build --release -p phalanx >&2) || { log "cargo build failed"; exit 2; }
    fi
    [ -x "$PHALANX" ] || { log "no phalanx binary at $PHALANX"; exit 2; }
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_members SCHEME TOKEN DIR CMD... [-- FLAGS...]: members n1..n3 of
# CMD (`$ETCD` or `$PHALANX node`) on free loopback ports, data and logs in
# DIR, FLAGS after the cluster flags. Sets EP and PEER (member -> client /
# peer URL), PID (member -> pid) and ENDPOINTS; adds the pids to PIDS.
start_members() {
    local scheme=$1 token=$2 dir=$3 n cluster=""
    shift 3
    local cmd=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do cmd+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    mkdir -p "$dir"
    declare -gA EP=() PEER=() PID=()
    ENDPOINTS=""
    for n in n1 n2 n3; do
        EP[$n]="$scheme://127.0.0.1:$(free_port)"
        PEER[$n]="$scheme://127.0.0.1:$(free_port)"
        cluster+="${cluster:+,}$n=${PEER[$n]}"
    done
    for n in n1 n2 n3; do
        "${cmd[@]}" --name "$n" --data-dir "$dir/$n.data" \
            --listen-client-urls "${EP[$n]}" --advertise-client-urls "${EP[$n]}" \
            --listen-peer-urls "${PEER[$n]}" --initial-advertise-peer-urls "${PEER[$n]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "$token" "$@" >"$dir/$n.log" 2>&1 &
        PID[$n]=$!
        PIDS+=("$!")
        ENDPOINTS+="${ENDPOINTS:+,}${EP[$n]}"
    done
}

members_alive() {  # $1 = system, $2 = its dir; non-zero (and the log's end) if a member exited
    local n
    for n in n1 n2 n3; do
        kill -0 "${PID[$n]}" 2>/dev/null || { log "$1 member $n exited; see $2/$n.log"; tail -5 "$2/$n.log" >&2; return 1; }
    done
}

# start_measuring SYS: start SYS's cluster (the script's start_cluster);
# STATUS[SYS] = ok, or "failed to start" with a non-zero return.
start_measuring() {
    log "starting 3-member $1 cluster in $WORK/$1"
    if ! start_cluster "$1"; then
        STATUS[$1]="failed to start"
        stop_cluster
        return 1
    fi
    STATUS[$1]=ok
}

stop_cluster() {
    local n
    for n in n1 n2 n3; do kill -9 "${PID[$n]}" 2>/dev/null; wait "${PID[$n]}" 2>/dev/null; done
}

# run_load SYS TEST CLIENTS WORKLOAD [FLAGS...]: `phalanx bench kv` against
# ENDPOINTS for DURATION; R[SYS.TEST] = its JSON report when it succeeds.
run_load() {
    local sys=$1 test=$2 clients=$3 workload=$4
    shift 4
    local out="$WORK/$sys.$test.json"
    log "$sys: $test ($clients clients, $workload, $DURATION)"
    if "$PHALANX" bench kv --endpoints "$ENDPOINTS" --clients "$clients" --workload "$workload" \
        --duration "$DURATION" --value-bytes 256 --keys 10000 --request-timeout-ms 5000 --json "$@" \
        >"$out" 2>"$out.err"; then
        R[$sys.$test]=$out
    else
        log "$sys: $test failed: $(tail -1 "$out.err")"
    fi
}

field() {  # $1 file, $2 python expression on report r
    [ -n "$1" ] && python3 -c "import json; r=json.load(open('$1')); print($2)" 2>/dev/null || echo "n/a"
}

ratio() {  # $1 / $2, or n/a
    python3 -c "
a, b = '$1', '$2'
try: print('%.2f' % (float(a) / float(b)))
except Exception: print('n/a')"
}
