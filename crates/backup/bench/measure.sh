#!/usr/bin/env bash
# Measure `phalanx backup now` against `etcdctl snapshot save` on etcd 3.4 holding the
# same data, plus restore time and the dedup ratio of a second backup.
#
#   crates/backup/bench/measure.sh            # KEYS=100000 VALUE_BYTES=256 by default
#   PHALANX_BIN=target/release/phalanx KEYS=1000000 crates/backup/bench/measure.sh
#
# Everything listens on 127.0.0.1 and is stopped on exit. Needs /usr/bin/etcd,
# /usr/bin/etcdctl and age-keygen (Debian's etcd-server, etcd-client, age).
set -euo pipefail
BIN=${PHALANX_BIN:-target/release/phalanx}
KEYS=${KEYS:-100000}
VALUE_BYTES=${VALUE_BYTES:-256}
ETCDCTL=/usr/bin/etcdctl
export ETCDCTL_API=3
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
wait_healthy() { # endpoint
  for _ in $(seq 1 300); do
    $ETCDCTL --endpoints="$1" --command-timeout=2s endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "timed out waiting for $1" >&2; exit 1
}
fill() { "$BIN" bench kv --endpoints "$1" --workload fill --keys "$KEYS" --value-bytes "$VALUE_BYTES" --clients 4 --fill-txn-ops 100 >/dev/null; }

age-keygen -o "$tmp/key.txt" 2>/dev/null
pub=$(sed -n 's/^# public key: //p' "$tmp/key.txt")

# --- phalanx, one member
cp=$(port); pp=$(port); mp=$(port)
PHALANX_LOG=warn "$BIN" node --name m1 --data-dir "$tmp/phx" \
  --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
  --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
  --listen-metrics-urls "http://127.0.0.1:$mp" --initial-cluster "m1=http://127.0.0.1:$pp" \
  --initial-cluster-state new --initial-cluster-token bench >"$tmp/phx.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$cp"
t=$(now); fill "http://127.0.0.1:$cp"; echo "phalanx: filled $KEYS keys of $VALUE_BYTES bytes in $(since "$t")s"
t=$(now); $ETCDCTL --endpoints="http://127.0.0.1:$cp" snapshot save "$tmp/phx.snap" >/dev/null 2>&1
echo "phalanx: etcdctl snapshot save: $(since "$t")s, $(stat -c %s "$tmp/phx.snap") bytes"
t=$(now); "$BIN" backup now --endpoints "http://127.0.0.1:$cp" --to "file://$tmp/repo" --recipient "$pub" >"$tmp/b1.txt"
echo "phalanx: backup now (first, file://): $(since "$t")s"; cat "$tmp/b1.txt"
t=$(now); "$BIN" backup now --endpoints "http://127.0.0.1:$cp" --to "file://$tmp/repo" --recipient "$pub" >"$tmp/b2.txt"
echo "phalanx: backup now (second, unchanged store): $(since "$t")s"; cat "$tmp/b2.txt"
"$BIN" backup list --from "file://$tmp/repo"
t=$(now); "$BIN" backup verify --from "file://$tmp/repo" --identity "$tmp/key.txt"
echo "phalanx: backup verify: $(since "$t")s"
t=$(now); "$BIN" restore --from "file://$tmp/repo" --identity "$tmp/key.txt" --name r1 \
  --initial-cluster r1=http://127.0.0.1:1 --initial-cluster-token restored \
  --initial-advertise-peer-urls http://127.0.0.1:1 --data-dir "$tmp/restored" | head -1
echo "phalanx: restore (one member's data dir): $(since "$t")s"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

# --- etcd 3.4, one member, same data
ec=$(port); ep=$(port)
/usr/bin/etcd --name e1 --data-dir "$tmp/etcd" --listen-client-urls "http://127.0.0.1:$ec" \
  --advertise-client-urls "http://127.0.0.1:$ec" --listen-peer-urls "http://127.0.0.1:$ep" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ep" --initial-cluster "e1=http://127.0.0.1:$ep" \
  --quota-backend-bytes 8589934592 >"$tmp/etcd.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$ec"
t=$(now); fill "http://127.0.0.1:$ec"; echo "etcd 3.4: filled $KEYS keys in $(since "$t")s"
t=$(now); $ETCDCTL --endpoints="http://127.0.0.1:$ec" snapshot save "$tmp/etcd.snap" >/dev/null 2>&1
echo "etcd 3.4: etcdctl snapshot save: $(since "$t")s, $(stat -c %s "$tmp/etcd.snap") bytes"
