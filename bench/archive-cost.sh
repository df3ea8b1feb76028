#!/usr/bin/env bash
# Cost of the continuous archive: put throughput at 64 clients on one 3-member phalanx
# cluster with a backup schedule running (a full backup, then the archive shipping
# every revision at least every ARCHIVE_INTERVAL_MS to a file:// destination) vs
# without one, in alternating rounds of the same run (off/on, then on/off, ...), and
# the archive lag under that load: `phalanx_backup_archive_lag_seconds` of the member
# running the schedule (the RPO right now), sampled every LAG_SAMPLE_MS from every
# member's /metrics while the load runs.
#
# Usage: bench/archive-cost.sh        (builds `phalanx` in release mode first)
# Environment (all optional): ROUNDS=3, DURATION=10s (each load run),
#   ARCHIVE_INTERVAL_MS=1000, LAG_SAMPLE_MS=100, SKIP_BUILD=1, PHALANX, ETCDCTL,
#   BENCH_TMP (parent of the data dirs and of the destination), KEEP=1.
# Prints a markdown table (medians over the rounds) and each round's figures.
set -u -o pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup archive-cost.sh archive-cost
ROUNDS=${ROUNDS:-3}
ARCHIVE_INTERVAL_MS=${ARCHIVE_INTERVAL_MS:-1000}
LAG_SAMPLE_MS=${LAG_SAMPLE_MS:-100}
require_tools "etcd-client, python3, age, curl" "$ETCDCTL" python3 age-keygen curl
build_phalanx

declare -A R=()
DIR="$WORK/phalanx"
REPO="file://$WORK/repo"
age-keygen -o "$WORK/key.txt" 2>/dev/null
PUB=$(sed -n 's/^# public key: //p' "$WORK/key.txt")

# metric NAME: the value of NAME (first series) on the member running the schedule,
# or nothing when no member runs it.
metric() {
    local n
    for n in n1 n2 n3; do
        curl -s --max-time 2 "${EP[$n]}/metrics" | python3 -c '
import sys
name = sys.argv[1]
lines = sys.stdin.read().splitlines()
if "phalanx_backup_running_here 1" not in lines:
    sys.exit(1)
for l in lines:
    if l.startswith(name + "{") or l.startswith(name + " "):
        print(l.rsplit(" ", 1)[1]); sys.exit(0)
sys.exit(1)  # no such series yet (e.g. no destination before the first backup)
' "$1" && return 0
    done
    return 1
}

wait_until() {  # $1 = seconds, $2 = what, then the test command
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@"; do
        members_alive phalanx "$DIR" || exit 1
        [ $SECONDS -lt $deadline ] || { log "timed out waiting for: $what"; return 1; }
        sleep 0.2
    done
}

# A full backup done, the archive running (its revision set) and no revision waiting
# longer than one archive interval (the service's own status writes are archived too,
# so the lag need not reach 0 exactly).
archive_caught_up() {
    local ok rev lag
    ok=$(metric phalanx_backup_last_success_timestamp_seconds) || return 1
    rev=$(metric phalanx_backup_archive_revision) || return 1
    lag=$(metric phalanx_backup_archive_lag_seconds) || return 1
    python3 -c "import sys; sys.exit(0 if float('$ok') > 0 and float('$rev') > 0 and float('$lag') <= $ARCHIVE_INTERVAL_MS / 1000 else 1)"
}

schedule_on() {
    "$PHALANX" backup schedule set --endpoints "$ENDPOINTS" --to "$REPO" --recipient "$PUB" \
        --archive-interval-ms "$ARCHIVE_INTERVAL_MS" --drill-interval-ms 0 >/dev/null \
        || { log "backup schedule set failed"; exit 1; }
    wait_until 300 "the first full backup and an archive that has caught up" archive_caught_up
}

# The archive loop stops at its next tick once the policy is gone (it reads the policy
# every tick). `phalanx_backup_running_here` stays 1 on the leader after a clear, so it
# is not waited on.
schedule_off() {
    "$PHALANX" backup schedule clear --endpoints "$ENDPOINTS" >/dev/null \
        || { log "backup schedule clear failed"; exit 1; }
}

# Samples the runner's archive lag into $1 (one value per line) until killed. Run it
# with `&`: `exec` makes the background job the sampler itself, so killing the job's
# pid stops the sampling.
sample_lag() {
    exec python3 - "$1" "$LAG_SAMPLE_MS" "${EP[n1]}" "${EP[n2]}" "${EP[n3]}" <<'PY'
import sys, time, urllib.request
out, every, eps = sys.argv[1], int(sys.argv[2]) / 1000.0, sys.argv[3:]
with open(out, "w") as f:
    while True:
        t = time.time()
        for ep in eps:
            try:
                lines = urllib.request.urlopen(ep + "/metrics", timeout=2).read().decode().splitlines()
            except Exception:
                continue
            if "phalanx_backup_running_here 1" in lines:
                for l in lines:
                    if l.startswith("phalanx_backup_archive_lag_seconds{"):
                        f.write(l.rsplit(" ", 1)[1] + "\n"); f.flush(); break
                break
        time.sleep(max(0.0, every - (time.time() - t)))
PY
}

log "starting 3-member phalanx cluster in $DIR"
start_members http "archive-cost-$$" "$DIR" "$PHALANX" node
wait_until 60 "the cluster to be healthy" \
    "$ETCDCTL" --endpoints="$ENDPOINTS" --command-timeout=2s endpoint health >/dev/null 2>&1 || exit 1

# CPU seconds (user + system) the three members have used so far.
cluster_cpu() {
    local n t=0
    for n in n1 n2 n3; do
        t=$(python3 -c "import os; f=open('/proc/${PID[$n]}/stat').read().rsplit(')',1)[1].split(); print($t + (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK'))")
    done
    echo "$t"
}

# The load, with the members' CPU seconds over it in $WORK/cpu.$1 (the archive's cost
# in CPU per put resolves far smaller differences than throughput on a shared machine).
measured_load() {  # $1 = result key
    local c0 c1
    c0=$(cluster_cpu)
    run_load phalanx "$1" 64 put
    c1=$(cluster_cpu)
    python3 -c "print($c1 - $c0)" >"$WORK/cpu.$1"
}

round() {  # $1 = round, $2 = on|off
    local r=$1 mode=$2
    if [ "$mode" = on ]; then
        schedule_on || exit 1
        sample_lag "$WORK/lag.$r" &
        local sampler=$!
        measured_load "put64.on.$r"
        kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
        schedule_off
    else
        measured_load "put64.off.$r"
    fi
}

for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then round "$r" off; round "$r" on; else round "$r" on; round "$r" off; fi
done
stop_cluster

ops() { field "${R[phalanx.put64.$1.$2]:-}" "'%.0f' % r['ops_per_sec']"; }
echo
echo "## Continuous archive cost: 3-member phalanx, put, 64 clients, $DURATION per run, archive_interval_ms=$ARCHIVE_INTERVAL_MS, file:// destination"
echo
echo "| round | ops/s without schedule | ops/s with schedule | cost | members' CPU µs per put, without / with (cost) | archive lag p50 / p99 / max (s, samples) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
cpu_per_put() {  # $1 = off|on, $2 = round: the members' CPU µs per put
    python3 -c "
import json
ops = json.load(open('$WORK/phalanx.put64.$1.$2.json'))['ops']
print('%.0f' % (float(open('$WORK/cpu.put64.$1.$2').read()) * 1e6 / ops))" 2>/dev/null || echo n/a
}
for r in $(seq 1 "$ROUNDS"); do
    off=$(ops off "$r"); on=$(ops on "$r")
    coff=$(cpu_per_put off "$r"); con=$(cpu_per_put on "$r")
    lag=$(python3 -c "
import statistics
v = sorted(float(x) for x in open('$WORK/lag.$r') if x.strip())
q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
print('%.2f / %.2f / %.2f (%d)' % (q(0.5), q(0.99), v[-1], len(v)) if v else 'n/a')" 2>/dev/null || echo n/a)
    echo "| $r | $off | $on | $(python3 -c "
try: print('%.1f %%' % (100 * (1 - float('$on') / float('$off'))))
except Exception: print('n/a')") | $coff / $con ($(python3 -c "
try: print('%+.1f %%' % (100 * (float('$con') / float('$coff') - 1)))
except Exception: print('n/a')")) | $lag |"
done
python3 - "$WORK" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def ops(mode):
    v = []
    for r in range(1, rounds + 1):
        try: v.append(json.load(open(f"{work}/phalanx.put64.{mode}.{r}.json"))["ops_per_sec"])
        except Exception: pass
    return v
off, on = ops("off"), ops("on")
def cpu(mode):
    v = []
    for r in range(1, rounds + 1):
        try:
            n = json.load(open(f"{work}/phalanx.put64.{mode}.{r}.json"))["ops"]
            v.append(float(open(f"{work}/cpu.put64.{mode}.{r}").read()) * 1e6 / n)
        except Exception: pass
    return v
coff, con = cpu("off"), cpu("on")
lags = []
for r in range(1, rounds + 1):
    try: lags += [float(x) for x in open(f"{work}/lag.{r}") if x.strip()]
    except Exception: pass
lags.sort()
if off and on:
    mo, mn = statistics.median(off), statistics.median(on)
    print(f"| median | {mo:.0f} | {mn:.0f} | {100 * (1 - mn / mo):.1f} % | ", end="")
    if coff and con:
        co, cn = statistics.median(coff), statistics.median(con)
        print(f"{co:.0f} / {cn:.0f} ({100 * (cn / co - 1):+.1f} %) | ", end="")
    else:
        print("n/a | ", end="")
    if lags:
        q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]
        print(f"{q(0.5):.2f} / {q(0.99):.2f} / {lags[-1]:.2f} (all rounds, {len(lags)}) |")
    else:
        print("n/a |")
PY
